//! The diversity job re-ranks the ranking table (a published table as its input), runs by
//! itself after ranking publishes, and spreads product types: every list is drawn from
//! the customer's ranking list, holds at most two items of a type, and the mean
//! intra-list diversity of the top 5 goes up.

use std::collections::{HashMap, HashSet};

use crate::util::{TestDaemon, ranking_job, root, shipped_job};

fn categories() -> HashMap<String, String> {
    let text = std::fs::read_to_string(root().join("data/demo/items.csv")).unwrap();
    text.lines()
        .skip(1)
        .filter_map(|l| Some((l.split(',').next()?.to_string(), l.rsplit(',').next()?.to_string())))
        .collect()
}

/// Mean over pairs: 1 when the categories differ.
fn ild(list: &[String], cat: &HashMap<String, String>) -> f64 {
    let mut pairs = 0.0;
    let mut differ = 0.0;
    for i in 0..list.len() {
        for j in i + 1..list.len() {
            pairs += 1.0;
            if cat.get(&list[i]) != cat.get(&list[j]) {
                differ += 1.0;
            }
        }
    }
    differ / pairs
}

#[test]
fn diversity_reranks_ranking_after_it_publishes() {
    let d = TestDaemon::start(&[("ranking", &ranking_job("")), ("diversity", &shipped_job("diversity"))]);
    d.run_job("ranking");
    d.wait_for("the chained diversity run", 30, || {
        d.history("diversity").first().filter(|r| r["status"] == "ok").cloned()
    });
    let cat = categories();
    let users: Vec<String> = crate::oracle::vocab_ids("users.csv").into_iter().step_by(41).collect();
    let mut conn = d.redis();
    let (mut before, mut after) = (0.0, 0.0);
    for u in &users {
        let ranked: Vec<String> =
            redis::cmd("ZREVRANGE").arg(format!("ranking:{u}")).arg(0).arg(-1).query(&mut conn).unwrap();
        let diverse: Vec<String> =
            redis::cmd("ZREVRANGE").arg(format!("diversity:{u}")).arg(0).arg(-1).query(&mut conn).unwrap();
        // the cap of two per type may leave fewer than 5 to choose from
        let mut in_pool: HashMap<&String, usize> = HashMap::new();
        for i in &ranked {
            *in_pool.entry(&cat[i]).or_default() += 1;
        }
        let possible: usize = in_pool.values().map(|&n| n.min(2)).sum();
        assert_eq!(diverse.len(), possible.min(5), "{u}: {diverse:?} from {ranked:?}");
        let pool: HashSet<&String> = ranked.iter().collect();
        assert!(diverse.iter().all(|i| pool.contains(i)), "{u}: {diverse:?} not from {ranked:?}");
        let mut per_type: HashMap<&String, usize> = HashMap::new();
        for i in &diverse {
            *per_type.entry(&cat[i]).or_default() += 1;
        }
        assert!(per_type.values().all(|&n| n <= 2), "{u}: {diverse:?}");
        before += ild(&ranked[..5], &cat);
        after += if diverse.len() > 1 { ild(&diverse, &cat) } else { 0.0 };
    }
    let n = users.len() as f64;
    assert!(after / n > before / n, "intra-list diversity {:.3} -> {:.3}", before / n, after / n);
    eprintln!(
        "top-5 intra-list diversity over {} users: ranking {:.3}, diversity {:.3}",
        users.len(),
        before / n,
        after / n
    );
}
