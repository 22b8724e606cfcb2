//! Serving fallback: a ranking table that declares `fallback = ["cold-start"]` answers
//! every user: the model's list if it has one, else the user's cold-start list, else the
//! cold-start default, for a user never seen.

use std::collections::HashSet;

use crate::oracle::{purchases, vocab_ids};
use crate::util::{TestDaemon, ranking_job, shipped_job};

type List = Vec<(String, f64)>;

fn read(conn: &mut redis::Connection, key: &str) -> List {
    redis::cmd("ZREVRANGE").arg(key).arg(0).arg(-1).arg("WITHSCORES").query(conn).unwrap()
}

#[test]
fn every_user_gets_a_non_empty_list() {
    let d = TestDaemon::start(&[("ranking", &ranking_job("")), ("cold-start", &shipped_job("cold-start"))]);
    d.run_job("cold-start");
    d.run_job("ranking");
    let mut conn = d.redis();

    // never seen: the global default
    let default = read(&mut conn, "cold-start:__default__");
    assert_eq!(default.len(), 10);
    assert_eq!(read(&mut conn, "ranking:no-such-customer-42"), default);
    let json: String = redis::cmd("GET").arg("ranking:no-such-customer-42").query(&mut conn).unwrap();
    assert!(json.starts_with(&format!("[{{\"item\":\"{}\"", default[0].0)), "{json}");

    // customers in the data whom the model does not know: their own cold-start list
    let in_model: HashSet<String> = vocab_ids("users.csv").into_iter().collect();
    let bought = purchases();
    let mut outside: Vec<&String> = bought.keys().filter(|u| !in_model.contains(*u)).collect();
    outside.sort();
    assert!(!outside.is_empty());
    for u in outside.iter().take(5) {
        let own = read(&mut conn, &format!("cold-start:{u}"));
        assert!(!own.is_empty());
        assert_eq!(read(&mut conn, &format!("ranking:{u}")), own, "customer {u}");
        assert!(own.iter().all(|(i, _)| !bought[*u].contains(i)), "{u} is offered something bought");
    }

    // customers the model knows keep the model's list
    let known = in_model.iter().next().unwrap();
    let ranked = read(&mut conn, &format!("ranking:{known}"));
    assert_ne!(ranked, read(&mut conn, &format!("cold-start:{known}")));
    assert_eq!(ranked.len(), 10);
    // a table without fallback still answers nothing for a stranger
    assert!(read(&mut conn, "cold-start:no-such-customer-42").is_empty());
}

#[test]
fn a_cold_start_table_with_known_users_falls_back_to_its_own_default() {
    // known_users checks the real users; `__default__` and the segments' defaults are
    // default lists, not users. And a table may be its own fallback: strangers get its
    // `__default__`.
    let job =
        format!("known_users = \"interactions.user_id\"\nfallback = [\"cold-start\"]\n{}", shipped_job("cold-start"));
    let d = TestDaemon::start(&[("cold-start", &job)]);
    let report = d.run_job("cold-start");
    assert!(report.contains("published table cold-start"), "{report}");
    let mut conn = d.redis();
    let default = read(&mut conn, "cold-start:__default__");
    assert_eq!(default.len(), 10);
    assert_eq!(read(&mut conn, "cold-start:no-such-customer-42"), default);
    // A customer who bought the default's first item has a list of their own without it.
    let bought = purchases();
    let known = bought.iter().filter(|(_, items)| items.contains(&default[0].0)).map(|(u, _)| u).min().unwrap();
    let own = read(&mut conn, &format!("cold-start:{known}"));
    assert!(!own.is_empty() && own.iter().all(|(i, _)| *i != default[0].0), "{known}: {own:?}");
}
