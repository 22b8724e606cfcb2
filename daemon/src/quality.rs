//! Offline quality metrics for published lists against held-out interactions, and for
//! churn probabilities against observed churn. Pure functions here; `recd eval` and a
//! gate's holdout check feed them.
//!
//! Conventions (stated in `recd eval`'s output): a user counts when they have at least one
//! relevant item; @k metrics use the first k items of the list (fewer if the list is
//! shorter); relevance is binary.

use std::collections::{HashMap, HashSet};

/// Per-user ranking metrics at k.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AtK {
    pub precision: f64,
    pub recall: f64,
    pub ndcg: f64,
    /// Average precision at k, normalised by min(k, |relevant|).
    pub ap: f64,
    pub hit: f64,
}

/// One of the [`AtK`] metrics at a given k, as a job's gate names it: `ndcg@10`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListMetric {
    pub kind: MetricKind,
    pub k: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Precision,
    Recall,
    Ndcg,
    Map,
    HitRate,
}

const METRIC_NAMES: [(&str, MetricKind); 5] = [
    ("precision", MetricKind::Precision),
    ("recall", MetricKind::Recall),
    ("ndcg", MetricKind::Ndcg),
    ("map", MetricKind::Map),
    ("hit_rate", MetricKind::HitRate),
];

impl std::str::FromStr for ListMetric {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expected = || {
            let names: Vec<&str> = METRIC_NAMES.iter().map(|(n, _)| *n).collect();
            format!(
                "expected <metric>@<k> with a metric of {} and k at least 1, e.g. ndcg@10; got {text:?}",
                names.join(", ")
            )
        };
        let (name, k) = text.split_once('@').ok_or_else(expected)?;
        let kind = METRIC_NAMES.iter().find(|(n, _)| *n == name).map(|(_, kind)| *kind).ok_or_else(expected)?;
        let k: usize = k.parse().ok().filter(|k| *k > 0).ok_or_else(expected)?;
        Ok(ListMetric { kind, k })
    }
}

impl std::fmt::Display for ListMetric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = METRIC_NAMES.iter().find(|(_, kind)| *kind == self.kind).map_or("?", |(n, _)| *n);
        write!(f, "{name}@{}", self.k)
    }
}

impl ListMetric {
    /// This metric of one list against one user's relevant items.
    pub fn of(&self, list: &[&str], relevant: &HashSet<&str>) -> f64 {
        let m = at_k(list, relevant, self.k);
        match self.kind {
            MetricKind::Precision => m.precision,
            MetricKind::Recall => m.recall,
            MetricKind::Ndcg => m.ndcg,
            MetricKind::Map => m.ap,
            MetricKind::HitRate => m.hit,
        }
    }
}

/// Metrics of one list against one user's relevant items.
pub fn at_k(list: &[&str], relevant: &HashSet<&str>, k: usize) -> AtK {
    if relevant.is_empty() || k == 0 {
        return AtK::default();
    }
    let top = &list[..list.len().min(k)];
    let mut hits = 0usize;
    let (mut dcg, mut ap_sum) = (0.0, 0.0);
    for (rank, item) in top.iter().enumerate() {
        if relevant.contains(item) {
            hits += 1;
            dcg += 1.0 / (rank as f64 + 2.0).log2();
            ap_sum += hits as f64 / (rank as f64 + 1.0);
        }
    }
    let ideal: f64 = (0..relevant.len().min(k)).map(|r| 1.0 / (r as f64 + 2.0).log2()).sum();
    AtK {
        precision: hits as f64 / k as f64,
        recall: hits as f64 / relevant.len() as f64,
        ndcg: dcg / ideal,
        ap: ap_sum / relevant.len().min(k) as f64,
        hit: if hits > 0 { 1.0 } else { 0.0 },
    }
}

/// Mean of `at_k` over users (the lists of users without relevant items are skipped).
pub fn mean_at_k<'a>(
    lists: &HashMap<&'a str, Vec<&'a str>>,
    relevant: &HashMap<&'a str, HashSet<&'a str>>,
    k: usize,
) -> (AtK, usize) {
    let mut sum = AtK::default();
    let mut users = 0;
    // In user order: float sums in hash order would differ in the last bits run to run.
    let mut ordered: Vec<(&&str, &HashSet<&str>)> = relevant.iter().collect();
    ordered.sort_unstable_by_key(|(u, _)| **u);
    for (user, rel) in ordered {
        if rel.is_empty() {
            continue;
        }
        let list = lists.get(user).map(Vec::as_slice).unwrap_or(&[]);
        let m = at_k(list, rel, k);
        sum.precision += m.precision;
        sum.recall += m.recall;
        sum.ndcg += m.ndcg;
        sum.ap += m.ap;
        sum.hit += m.hit;
        users += 1;
    }
    if users > 0 {
        let n = users as f64;
        sum = AtK {
            precision: sum.precision / n,
            recall: sum.recall / n,
            ndcg: sum.ndcg / n,
            ap: sum.ap / n,
            hit: sum.hit / n,
        };
    }
    (sum, users)
}

/// Share of the catalogue that appears in at least one list's top k.
pub fn coverage<'a>(lists: impl IntoIterator<Item = &'a Vec<&'a str>>, k: usize, catalogue: usize) -> f64 {
    if catalogue == 0 {
        return 0.0;
    }
    let shown: HashSet<&str> = lists.into_iter().flat_map(|l| l.iter().take(k).copied()).collect();
    shown.len() as f64 / catalogue as f64
}

/// Intra-list diversity: mean over pairs in the top k of `distance(a, b)` (0 = same, 1 =
/// unrelated). Lists with fewer than two items have none.
pub fn intra_list_diversity(list: &[&str], k: usize, distance: impl Fn(&str, &str) -> f64) -> Option<f64> {
    let top = &list[..list.len().min(k)];
    if top.len() < 2 {
        return None;
    }
    let mut sum = 0.0;
    let mut pairs = 0;
    for i in 0..top.len() {
        for j in i + 1..top.len() {
            sum += distance(top[i], top[j]);
            pairs += 1;
        }
    }
    Some(sum / pairs as f64)
}

/// (1 - cosine similarity) / 2 of two embeddings, in [0, 1]: 0 for the same direction, 1/2
/// for unrelated (orthogonal), 1 for opposite. A zero vector is unrelated to anything.
pub fn cosine_distance(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.5;
    }
    ((1.0 - dot / (na.sqrt() * nb.sqrt())) / 2.0).clamp(0.0, 1.0)
}

/// Calibration miscalibration (Steck, "Calibrated Recommendations", RecSys 2018):
/// KL(p || q~) between the category mix p of the items a user had and the mix q of their top
/// k, with q~ = 0.99 q + 0.01 p so that a category missing from the list costs a finite
/// amount. 0 when the list's mix is the history's; larger is less calibrated. An item with n
/// categories counts 1/n towards each (Steck's p(g|i)); items without one share one "no
/// category". None without history or list.
pub fn calibration_kl<'a>(
    history: impl IntoIterator<Item = &'a str>,
    list: &[&'a str],
    k: usize,
    categories: impl Fn(&str) -> &'a [String],
) -> Option<f64> {
    const ALPHA: f64 = 0.01;
    let mix = |items: &mut dyn Iterator<Item = &'a str>| {
        let mut counts: HashMap<Option<&str>, f64> = HashMap::new();
        let mut n = 0.0;
        for i in items {
            match categories(i) {
                [] => *counts.entry(None).or_default() += 1.0,
                cats => {
                    cats.iter().for_each(|c| *counts.entry(Some(c.as_str())).or_default() += 1.0 / cats.len() as f64)
                }
            }
            n += 1.0;
        }
        (n > 0.0).then(|| counts.into_iter().map(|(c, v)| (c, v / n)).collect::<HashMap<_, _>>())
    };
    let p = mix(&mut history.into_iter())?;
    let q = mix(&mut list.iter().take(k).copied())?;
    // summed in category order: hash order would change the last bits run to run
    let mut terms: Vec<(Option<&str>, f64)> = p.into_iter().collect();
    terms.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Some(
        terms
            .into_iter()
            .map(|(c, pc)| pc * (pc / ((1.0 - ALPHA) * q.get(&c).copied().unwrap_or(0.0) + ALPHA * pc)).ln())
            .sum(),
    )
}

/// Novelty: mean self-information -log2(p(item)) of the top k, where p(item) is the share
/// of users who interacted with the item in the training period. Unseen items count as
/// seen by one user (the rarest possible).
pub fn novelty(list: &[&str], k: usize, popularity: &HashMap<&str, usize>, users: usize) -> Option<f64> {
    let top = &list[..list.len().min(k)];
    if top.is_empty() || users == 0 {
        return None;
    }
    let sum: f64 = top
        .iter()
        .map(|i| {
            let p = (*popularity.get(i).unwrap_or(&1)).max(1) as f64 / users as f64;
            -p.log2()
        })
        .sum();
    Some(sum / top.len() as f64)
}

/// ROC AUC of scores against binary labels (ties count one half): the probability that a
/// random positive scores above a random negative. None without both classes.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let mut pairs: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // Rank-sum (Mann-Whitney U) with average ranks for ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            j += 1;
        }
        let avg_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += avg_rank * pairs[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    let u = rank_sum - (positives * (positives + 1)) as f64 / 2.0;
    Some(u / (positives * negatives) as f64)
}

/// Brier score: the mean squared difference between probability and outcome (0 or 1).
pub fn brier(probabilities: &[f64], labels: &[bool]) -> Option<f64> {
    if probabilities.is_empty() {
        return None;
    }
    let sum: f64 = probabilities.iter().zip(labels).map(|(&p, &y)| (p - f64::from(u8::from(y))).powi(2)).sum();
    Some(sum / probabilities.len() as f64)
}

/// One bin of a reliability curve: predictions in [lo, hi), their mean and the observed
/// rate of positives.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    pub mean_predicted: f64,
    pub observed: f64,
}

/// Reliability curve over `bins` equal-width bins of [0, 1] (the last one includes 1);
/// empty bins are left out. A calibrated model has observed ≈ mean_predicted in every bin.
pub fn reliability(probabilities: &[f64], labels: &[bool], bins: usize) -> Vec<ReliabilityBin> {
    let bins = bins.max(1);
    let mut sums = vec![(0usize, 0.0f64, 0usize); bins];
    for (&p, &y) in probabilities.iter().zip(labels) {
        let b = ((p.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        sums[b].0 += 1;
        sums[b].1 += p;
        sums[b].2 += usize::from(y);
    }
    sums.into_iter()
        .enumerate()
        .filter(|(_, s)| s.0 > 0)
        .map(|(b, (count, p_sum, positives))| ReliabilityBin {
            lo: b as f64 / bins as f64,
            hi: (b + 1) as f64 / bins as f64,
            count,
            mean_predicted: p_sum / count as f64,
            observed: positives as f64 / count as f64,
        })
        .collect()
}

/// The ROC curve as (false positive rate, true positive rate) points, one per distinct
/// score from the highest down, starting at (0, 0) and ending at (1, 1). Empty without
/// both classes.
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return Vec::new();
    }
    let mut pairs: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < pairs.len() {
        // every pair with this score crosses the threshold together
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            if pairs[j].1 {
                tp += 1
            } else {
                fp += 1
            }
            j += 1;
        }
        points.push((fp as f64 / negatives as f64, tp as f64 / positives as f64));
        i = j;
    }
    points
}

/// Mean binary cross-entropy, probabilities clipped to [1e-15, 1 - 1e-15].
pub fn log_loss(probabilities: &[f64], labels: &[bool]) -> Option<f64> {
    if probabilities.is_empty() {
        return None;
    }
    let sum: f64 = probabilities
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = p.clamp(1e-15, 1.0 - 1e-15);
            if y { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum();
    Some(sum / probabilities.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    fn set<'a>(items: &[&'a str]) -> HashSet<&'a str> {
        items.iter().copied().collect()
    }

    #[test]
    fn a_list_metric_is_named_metric_at_k_and_picks_its_value() {
        let m: ListMetric = "ndcg@4".parse().unwrap();
        assert_eq!(m, ListMetric { kind: MetricKind::Ndcg, k: 4 });
        assert_eq!(m.to_string(), "ndcg@4");
        let list = ["a", "b", "c", "d", "e"];
        let relevant = set(&["b", "d", "z"]);
        close(m.of(&list, &relevant), at_k(&list, &relevant, 4).ndcg);
        let hit: ListMetric = "hit_rate@1".parse().unwrap();
        assert_eq!(hit.of(&list, &relevant), 0.0, "b is second");
        assert_eq!("map@2".parse::<ListMetric>().unwrap().to_string(), "map@2");
        for bad in ["ndcg", "ndcg@0", "auc@10", "@10", "ndcg@x"] {
            assert!(bad.parse::<ListMetric>().unwrap_err().contains(&format!("{bad:?}")), "{bad}");
        }
    }

    #[test]
    fn ranking_metrics_match_hand_computed_values() {
        // list a b c d e, relevant {b, d, z}, k = 4: hits at ranks 2 and 4
        let m = at_k(&["a", "b", "c", "d", "e"], &set(&["b", "d", "z"]), 4);
        close(m.precision, 2.0 / 4.0);
        close(m.recall, 2.0 / 3.0);
        // DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3) + 1/2
        close(m.ndcg, (1.0 / 3f64.log2() + 1.0 / 5f64.log2()) / (1.0 + 1.0 / 3f64.log2() + 0.5));
        // AP = (1/2 + 2/4) / min(4, 3)
        close(m.ap, (0.5 + 0.5) / 3.0);
        close(m.hit, 1.0);
        // a perfect list, and one that misses
        let perfect = at_k(&["b", "d"], &set(&["b", "d"]), 2);
        close(perfect.ndcg, 1.0);
        close(perfect.ap, 1.0);
        let miss = at_k(&["x", "y"], &set(&["b"]), 2);
        assert_eq!(miss, AtK::default());
        // a list shorter than k still divides precision by k
        close(at_k(&["b"], &set(&["b", "c"]), 5).precision, 0.2);
    }

    #[test]
    fn means_skip_users_without_relevant_items_and_count_missing_lists_as_empty() {
        let lists: HashMap<&str, Vec<&str>> = [("u1", vec!["a", "b"]), ("u2", vec!["c"])].into_iter().collect();
        let relevant: HashMap<&str, HashSet<&str>> =
            [("u1", set(&["a"])), ("u2", set(&[])), ("u3", set(&["c"]))].into_iter().collect();
        let (m, users) = mean_at_k(&lists, &relevant, 2);
        assert_eq!(users, 2);
        close(m.hit, 0.5);
        close(m.precision, (0.5 + 0.0) / 2.0);
    }

    #[test]
    fn coverage_diversity_and_novelty() {
        let (l1, l2) = (vec!["a", "b", "c"], vec!["a", "d"]);
        close(coverage([&l1, &l2], 2, 8), 3.0 / 8.0); // a, b, d of 8
        let category = |i: &str| if i == "a" || i == "b" { "toys" } else { "books" };
        let distance = |x: &str, y: &str| if category(x) == category(y) { 0.0 } else { 1.0 };
        // pairs ab=0, ac=1, bc=1
        close(intra_list_diversity(&l1, 3, distance).unwrap(), 2.0 / 3.0);
        assert_eq!(intra_list_diversity(&["a"], 3, distance), None);
        let pop: HashMap<&str, usize> = [("a", 8), ("b", 2)].into_iter().collect();
        // 8 users: a -> -log2(1) = 0, b -> -log2(1/4) = 2
        close(novelty(&["a", "b"], 2, &pop, 8).unwrap(), 1.0);
        // an item never seen counts as seen once: -log2(1/8) = 3
        close(novelty(&["zzz"], 1, &pop, 8).unwrap(), 3.0);
    }

    #[test]
    fn calibration_kl_matches_hand_computed_values() {
        let (toys, books, both) =
            (vec!["toys".to_string()], vec!["books".to_string()], vec!["books".into(), "toys".into()]);
        let category = |i: &str| -> &[String] {
            match i {
                "t1" | "t2" | "t3" => &toys,
                "b1" | "b2" => &books,
                "tb" => &both,
                _ => &[],
            }
        };
        // history: toys 2/3, books 1/3; list t3 b2: q = (1/2, 1/2)
        let kl = calibration_kl(["t1", "t2", "b1"], &["t3", "b2"], 10, category).unwrap();
        let want = 2.0 / 3.0 * (2.0f64 / 3.0 / (0.99 * 0.5 + 0.01 * 2.0 / 3.0)).ln()
            + 1.0 / 3.0 * (1.0f64 / 3.0 / (0.99 * 0.5 + 0.01 / 3.0)).ln();
        close(kl, want);
        // the same mix: 0; k cuts the list (t3 only: books get 0.01 * 1/3)
        close(calibration_kl(["t1", "b1"], &["t3", "b2"], 10, category).unwrap(), 0.0);
        let only_toys = calibration_kl(["t1", "b1"], &["t3", "b2"], 1, category).unwrap();
        close(only_toys, 0.5 * (0.5f64 / (0.99 + 0.005)).ln() + 0.5 * (0.5f64 / 0.005).ln());
        // items without a category share one; no history or no list: none
        close(calibration_kl(["x", "y"], &["z"], 10, category).unwrap(), 0.0);
        assert_eq!(calibration_kl([], &["t1"], 10, category), None);
        assert_eq!(calibration_kl(["t1"], &[], 10, category), None);
        // an item in two categories counts half in each: history tb = (1/2, 1/2) is t3 b2's mix
        close(calibration_kl(["tb"], &["t3", "b2"], 10, category).unwrap(), 0.0);
        let half = calibration_kl(["t1", "b1"], &["tb"], 10, category).unwrap();
        close(half, 0.0);
    }

    #[test]
    fn cosine_distance_is_zero_for_one_direction_and_one_for_opposite() {
        close(cosine_distance(&[1.0, 2.0], &[2.0, 4.0]), 0.0);
        close(cosine_distance(&[1.0, 0.0], &[0.0, 3.0]), 0.5);
        close(cosine_distance(&[1.0, 1.0], &[-1.0, -1.0]), 1.0);
        close(cosine_distance(&[0.0, 0.0], &[1.0, 1.0]), 0.5);
        // cosine 24/25
        close(cosine_distance(&[3.0, 4.0], &[4.0, 3.0]), 0.02);
    }

    #[test]
    fn brier_reliability_and_roc_curve_match_hand_computed_values() {
        let p = [0.9, 0.8, 0.4, 0.3, 0.4];
        let y = [true, false, true, false, false];
        // (0.1^2 + 0.8^2 + 0.6^2 + 0.3^2 + 0.4^2) / 5
        close(brier(&p, &y).unwrap(), (0.01 + 0.64 + 0.36 + 0.09 + 0.16) / 5.0);
        assert_eq!(brier(&[], &[]), None);
        // 2 bins: [0, 0.5) holds 0.4 (+), 0.3, 0.4; [0.5, 1] holds 0.9 (+), 0.8
        let bins = reliability(&p, &y, 2);
        assert_eq!(bins.len(), 2);
        assert_eq!((bins[0].count, bins[1].count), (3, 2));
        close(bins[0].mean_predicted, 1.1 / 3.0);
        close(bins[0].observed, 1.0 / 3.0);
        close(bins[1].mean_predicted, 0.85);
        close(bins[1].observed, 0.5);
        // a probability of exactly 1 lands in the last bin; empty bins are left out
        let bins = reliability(&[1.0, 0.05], &[true, false], 10);
        assert_eq!(bins.iter().map(|b| (b.lo, b.count)).collect::<Vec<_>>(), [(0.0, 1), (0.9, 1)]);
        // thresholds 0.9, 0.8, 0.4 (one + and one - together), 0.3
        let roc = roc_curve(&p, &y);
        assert_eq!(roc, [(0.0, 0.0), (0.0, 0.5), (1.0 / 3.0, 0.5), (2.0 / 3.0, 1.0), (1.0, 1.0)]);
        // the area under it is the AUC
        let area: f64 = roc.windows(2).map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0).sum();
        close(area, roc_auc(&p, &y).unwrap());
        assert!(roc_curve(&[0.1], &[true]).is_empty());
    }

    #[test]
    fn auc_and_log_loss_match_hand_computed_values() {
        // positives 0.9, 0.4; negatives 0.8, 0.3, 0.4 (a tie with a positive)
        // pairs won by the positive: 0.9 beats all 3; 0.4 beats 0.3, ties 0.4 (1/2), loses to 0.8
        let scores = [0.9, 0.8, 0.4, 0.3, 0.4];
        let labels = [true, false, true, false, false];
        close(roc_auc(&scores, &labels).unwrap(), (3.0 + 1.5) / 6.0);
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
        close(roc_auc(&[0.1, 0.9], &[false, true]).unwrap(), 1.0);
        // log-loss of p = 0.8 for a positive and 0.25 for a negative
        close(log_loss(&[0.8, 0.25], &[true, false]).unwrap(), (-(0.8f64.ln()) - 0.75f64.ln()) / 2.0);
    }
}
