//! Publish gates: what a staged version must satisfy, compared with itself and with the
//! version current now, before it is made current. A version that fails one is kept as
//! *held* (stored, listed, not served) until `recd promote` or `recd discard` settles it.
//!
//! Checked in bounded memory: the counts come with the staged version; the list checks
//! read the current version twice (a sample of its scores, at most [`SAMPLE`], for the
//! deciles, then its histogram) and the new version once, looking each user up in the
//! current one. A holdout check looks each holdout user up in both versions; the
//! holdout itself is held in memory (loaded by the run, not here).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use super::codec::decode_list;
use super::{StoreError, TableKind, VersionInfo};
use crate::quality::ListMetric;

/// Scores of the current version sampled for the score distribution's bins.
const SAMPLE: usize = 100_000;
/// Bins of the score distribution: deciles of the current version's scores.
const BINS: usize = 10;

/// A job's `[gate]` for a table (see docs/jobs.md).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gate {
    pub min_users: Option<u64>,
    pub min_rows: Option<u64>,
    /// Of the current version's users / rows.
    pub min_users_ratio: Option<f64>,
    pub min_rows_ratio: Option<f64>,
    /// Most of the users in both versions whose list changed: the Jaccard similarity of
    /// its items with the current list below `changed_jaccard`.
    pub max_changed_share: Option<f64>,
    pub changed_jaccard: f64,
    /// Largest population stability index of the scores against the current version's.
    pub max_score_psi: Option<f64>,
    /// The lists' quality on interactions the job did not see.
    pub holdout: Option<HoldoutGate>,
}

/// `holdout` in a job's `[gate]`: `metric` of the new version's lists, scored against
/// each holdout user's items, may fall below the current version's (scored the same way
/// on the same users) by at most `max_drop`.
#[derive(Debug, Clone)]
pub struct HoldoutGate {
    pub path: PathBuf,
    pub user_column: String,
    pub item_column: String,
    pub metric: ListMetric,
    pub max_drop: f64,
    /// The holdout as read at the start of a run (None in a job as loaded).
    pub truth: Option<Arc<HoldoutTruth>>,
}

/// Jobs compare by what they say, not by what a run read.
impl PartialEq for HoldoutGate {
    fn eq(&self, other: &Self) -> bool {
        (&self.path, &self.user_column, &self.item_column, self.metric, self.max_drop)
            == (&other.path, &other.user_column, &other.item_column, other.metric, other.max_drop)
    }
}

/// A holdout's users (sorted, so the metric's sum is the same on every run) with the
/// items each interacted with.
#[derive(Default)]
pub struct HoldoutTruth {
    pub users: Vec<(String, HashSet<String>)>,
}

impl std::fmt::Debug for HoldoutTruth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HoldoutTruth {{ {} users }}", self.users.len())
    }
}

impl Gate {
    pub fn is_empty(&self) -> bool {
        self.min_users.is_none()
            && self.min_rows.is_none()
            && self.min_users_ratio.is_none()
            && self.min_rows_ratio.is_none()
            && self.max_changed_share.is_none()
            && self.max_score_psi.is_none()
            && self.holdout.is_none()
    }

    fn compares_lists(&self) -> bool {
        self.max_changed_share.is_some() || self.max_score_psi.is_some()
    }
}

/// What the gate measured of a version, and the reasons it failed (empty: it passed).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GateResult {
    /// Share of the users in both versions whose list changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_share: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_psi: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<HoldoutResult>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

/// The holdout metric of the new version and of the version current when it was checked.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HoldoutResult {
    /// e.g. `ndcg@10`.
    pub metric: String,
    /// Holdout users scored (each counts, with or without a list).
    pub users: usize,
    pub value: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<f64>,
    /// The version `current` was measured on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// The value fell below the current one by more than the gate allows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dropped: bool,
}

/// Checks a version of `users` and `rows` whose lists are in `new` against `gate`;
/// `current` is the version served now (none: the comparisons pass, there is nothing to
/// compare with).
pub(super) fn check(
    gate: &Gate,
    kind: TableKind,
    (users, rows): (u64, u64),
    new: &sled::Tree,
    current: Option<(&VersionInfo, &sled::Tree)>,
) -> Result<GateResult, StoreError> {
    let mut result = GateResult::default();
    let mut fail = |m: String| result.failed.push(m);
    if let Some(min) = gate.min_users.filter(|m| users < *m) {
        fail(format!("{users} users, fewer than min_users {min}"));
    }
    if let Some(min) = gate.min_rows.filter(|m| rows < *m) {
        fail(format!("{rows} rows, fewer than min_rows {min}"));
    }
    if let Some(h) = gate.holdout.as_ref().filter(|_| kind == TableKind::Lists) {
        let started = std::time::Instant::now();
        check_holdout(h, new, current, &mut result)?;
        tracing::info!("gate: holdout checked in {:.2}s", started.elapsed().as_secs_f64());
    }
    let Some((info, old)) = current else { return Ok(result) };
    let ratio = |what: &str, new: u64, old: u64, min: Option<f64>| {
        let min = min?;
        // 100 * 0.55 is 55.000000000000007 in floating point: 55 of 100 passes 0.55.
        let needed = (old as f64 * min - 1e-9).ceil() as u64;
        (new < needed).then(|| {
            format!(
                "{new} {what}, fewer than min_{what}_ratio {min} of the current version's {old} (at least {needed})"
            )
        })
    };
    if let Some(m) = ratio("users", users, info.users, gate.min_users_ratio) {
        result.failed.push(m);
    }
    if let Some(m) = ratio("rows", rows, info.rows, gate.min_rows_ratio) {
        result.failed.push(m);
    }
    if kind == TableKind::Lists && gate.compares_lists() {
        let started = std::time::Instant::now();
        compare_lists(gate, new, old, &mut result)?;
        tracing::info!("gate: lists compared in {:.2}s", started.elapsed().as_secs_f64());
    }
    Ok(result)
}

/// The holdout metric of both versions, the new one's checked against the current one's.
fn check_holdout(
    h: &HoldoutGate,
    new: &sled::Tree,
    current: Option<(&VersionInfo, &sled::Tree)>,
    result: &mut GateResult,
) -> Result<(), StoreError> {
    let Some(truth) = &h.truth else {
        result.failed.push(format!("holdout {} was not read for this version", h.path.display()));
        return Ok(());
    };
    let (value, listed) = holdout_metric(h.metric, truth, new)?;
    let mut measured =
        HoldoutResult { metric: h.metric.to_string(), users: truth.users.len(), value, ..HoldoutResult::default() };
    let mut listed_before = 0;
    if let Some((info, old)) = current {
        let (before, listed) = holdout_metric(h.metric, truth, old)?;
        listed_before = listed;
        measured.current = Some(before);
        measured.current_version = Some(info.version);
        // A tolerance for the float sums: the same lists pass whatever max_drop is.
        if value < before - h.max_drop - 1e-12 {
            measured.dropped = true;
            result.failed.push(format!(
                "{} {value:.6} on holdout {} ({} users) is {:.6} below the current version {}'s {before:.6}, more than max_metric_drop {}",
                h.metric,
                h.path.display(),
                truth.users.len(),
                before - value,
                info.version,
                h.max_drop
            ));
        }
    }
    if listed == 0 && listed_before == 0 {
        // Nothing was measured: the ids differ in form (17850 and 017850), or the
        // holdout is another table's.
        result.failed.push(format!(
            "none of the {} users of holdout {} has a list in this version{}: are they this table's user ids?",
            truth.users.len(),
            h.path.display(),
            if current.is_some() { " or the current one" } else { "" }
        ));
    }
    result.holdout = Some(measured);
    Ok(())
}

/// Mean of `metric` over the holdout's users, each user's list read from `tree` (a user
/// without a list scores 0; fallbacks are not consulted), and how many had a list.
fn holdout_metric(metric: ListMetric, truth: &HoldoutTruth, tree: &sled::Tree) -> Result<(f64, usize), StoreError> {
    if truth.users.is_empty() {
        return Ok((0.0, 0));
    }
    let (mut sum, mut listed) = (0.0, 0);
    for (user, items) in &truth.users {
        let relevant: HashSet<&str> = items.iter().map(String::as_str).collect();
        let Some(value) = tree.get(user.as_bytes())? else { continue };
        listed += 1;
        let list: Vec<&str> =
            decode_list(&value).into_iter().map(|(item, _)| std::str::from_utf8(item).unwrap_or("")).collect();
        sum += metric.of(&list, &relevant);
    }
    Ok((sum / truth.users.len() as f64, listed))
}

/// The changed share and the scores' PSI, each checked against its limit. (A merge join of
/// the two trees in key order measured no faster than a lookup per user on a table of a
/// million users, `make bench-gate`: the time is sled's reads and the decoding.)
fn compare_lists(gate: &Gate, new: &sled::Tree, old: &sled::Tree, result: &mut GateResult) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let edges = decile_edges(old)?;
    tracing::debug!("gate: deciles sampled in {:.2}s", started.elapsed().as_secs_f64());
    let (mut old_bins, mut new_bins) = ([0u64; BINS], [0u64; BINS]);
    for entry in old.iter() {
        let (_, value) = entry?;
        for (_, score) in decode_list(&value) {
            old_bins[bin(&edges, score)] += 1;
        }
    }
    let (mut both, mut changed) = (0u64, 0u64);
    for entry in new.iter() {
        let (user, value) = entry?;
        let list = decode_list(&value);
        for (_, score) in &list {
            new_bins[bin(&edges, *score)] += 1;
        }
        if let Some(before) = old.get(&user)? {
            both += 1;
            if jaccard(&decode_list(&before), &list) < gate.changed_jaccard {
                changed += 1;
            }
        }
    }
    let share = if both == 0 { 0.0 } else { changed as f64 / both as f64 };
    result.changed_share = Some(share);
    if let Some(max) = gate.max_changed_share.filter(|m| share > *m) {
        result.failed.push(format!(
            "{changed} of the {both} users in both versions ({:.1}%) have a changed list (Jaccard below {}), more than max_changed_share {max}",
            share * 100.0,
            gate.changed_jaccard
        ));
    }
    let psi = psi(&old_bins, &new_bins);
    result.score_psi = Some(psi);
    if let Some(max) = gate.max_score_psi.filter(|m| psi > *m) {
        result.failed.push(format!(
            "score distribution PSI {psi:.4} against the current version's, more than max_score_psi {max}"
        ));
    }
    Ok(())
}

/// The 9 inner edges of the deciles of the current version's scores, from a uniform sample
/// of at most [`SAMPLE`] of them (reservoir sampling with a fixed seed, so a gate gives the
/// same verdict on the same versions).
fn decile_edges(old: &sled::Tree) -> Result<Vec<f32>, StoreError> {
    let (mut sample, mut seen) = (Vec::with_capacity(SAMPLE), 0u64);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for entry in old.iter() {
        let (_, value) = entry?;
        for (_, score) in decode_list(&value) {
            seen += 1;
            if sample.len() < SAMPLE {
                sample.push(score);
                continue;
            }
            // xorshift64*
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            let at = rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % seen;
            if let Some(slot) = sample.get_mut(at as usize) {
                *slot = score;
            }
        }
    }
    sample.sort_by(f32::total_cmp);
    if sample.is_empty() {
        return Ok(Vec::new());
    }
    Ok((1..BINS).map(|b| sample[b * (sample.len() - 1) / BINS]).collect())
}

fn bin(edges: &[f32], score: f32) -> usize {
    edges.partition_point(|e| *e < score).min(BINS - 1)
}

/// Population stability index of the new scores' bins against the current ones':
/// sum of (new share - old share) * ln(new share / old share); an empty bin counts as a
/// share of 0.0001, so the index stays finite.
fn psi(old: &[u64; BINS], new: &[u64; BINS]) -> f64 {
    let (old_total, new_total) = (old.iter().sum::<u64>().max(1) as f64, new.iter().sum::<u64>().max(1) as f64);
    old.iter()
        .zip(new)
        .map(|(&o, &n)| {
            let (p, q) = ((o as f64 / old_total).max(1e-4), (n as f64 / new_total).max(1e-4));
            (q - p) * (q / p).ln()
        })
        .sum()
}

/// Jaccard similarity of two lists' items (each list's items are distinct: the output
/// contract refuses a repeated item). Short lists are compared pairwise, which is faster
/// than hashing their items.
fn jaccard(before: &[(&[u8], f32)], after: &[(&[u8], f32)]) -> f64 {
    let common = if before.len() * after.len() <= 4096 {
        before.iter().filter(|(b, _)| after.iter().any(|(a, _)| a == b)).count()
    } else {
        let after: HashSet<&[u8]> = after.iter().map(|(a, _)| *a).collect();
        before.iter().filter(|(b, _)| after.contains(b)).count()
    };
    let union = before.len() + after.len() - common;
    if union == 0 { 1.0 } else { common as f64 / union as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_is_zero_for_the_same_distribution_and_grows_with_a_shift() {
        let even = [100u64; BINS];
        assert!(psi(&even, &even).abs() < 1e-12);
        let mut shifted = [0u64; BINS];
        shifted[..5].copy_from_slice(&[200; 5]);
        // Half the bins doubled, half emptied: 5 * (0.1 * ln 2) + 5 * ((0.0001 - 0.1) * ln(0.001)).
        let want = 5.0 * 0.1 * 2f64.ln() + 5.0 * (0.0001 - 0.1) * (0.0001f64 / 0.1).ln();
        assert!((psi(&even, &shifted) - want).abs() < 1e-9);
    }

    #[test]
    fn the_ratio_threshold_takes_exact_shares() {
        let gate = Gate { min_users_ratio: Some(0.55), ..Gate::default() };
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let info = |users| VersionInfo {
            version: 1,
            published_at: String::new(),
            job: String::new(),
            run_id: 0,
            users,
            rows: 0,
            checksum: 0,
            held: false,
            gate: None,
            lineage: None,
            eval: None,
        };
        let verdict = |users| check(&gate, TableKind::Lists, (users, 0), &tree, Some((&info(100), &tree))).unwrap();
        assert!(verdict(55).failed.is_empty(), "55 of 100 is 0.55");
        assert_eq!(verdict(54).failed.len(), 1);
    }

    #[test]
    fn the_holdout_check_scores_both_versions_on_the_same_users() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = |name: &str, lists: &[(&str, &[&str])]| {
            let t = db.open_tree(name).unwrap();
            for (user, items) in lists {
                let mut list: Vec<(String, f32)> =
                    items.iter().enumerate().map(|(r, i)| (i.to_string(), 10.0 - r as f32)).collect();
                t.insert(user.as_bytes(), super::super::codec::encode_list(&mut list)).unwrap();
            }
            t
        };
        // u1 bought x, u2 bought y, u3 bought z (and has no list anywhere).
        let truth = HoldoutTruth {
            users: ["u1", "u2", "u3"]
                .iter()
                .zip(["x", "y", "z"])
                .map(|(u, i)| (u.to_string(), HashSet::from([i.to_string()])))
                .collect(),
        };
        let old = tree("old", &[("u1", &["x", "a"]), ("u2", &["y", "b"])]);
        let new = tree("new", &[("u1", &["x", "a"]), ("u2", &["b", "c"])]);
        let gate = |max_drop| Gate {
            holdout: Some(HoldoutGate {
                path: "h.csv".into(),
                user_column: "user_id".into(),
                item_column: "item_id".into(),
                metric: "hit_rate@1".parse().unwrap(),
                max_drop,
                truth: Some(Arc::new(HoldoutTruth { users: truth.users.clone() })),
            }),
            ..Gate::default()
        };
        let info = VersionInfo {
            version: 4,
            published_at: String::new(),
            job: String::new(),
            run_id: 0,
            users: 2,
            rows: 4,
            checksum: 0,
            held: false,
            gate: None,
            lineage: None,
            eval: None,
        };
        let verdict = |max_drop| check(&gate(max_drop), TableKind::Lists, (2, 4), &new, Some((&info, &old))).unwrap();
        // hit@1: old 2 of 3 users, new 1 of 3.
        let r = verdict(0.1);
        let h = r.holdout.clone().unwrap();
        assert_eq!((h.metric.as_str(), h.users), ("hit_rate@1", 3));
        assert!((h.value - 1.0 / 3.0).abs() < 1e-12 && (h.current.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!(h.dropped);
        assert_eq!(h.current_version, Some(4));
        assert_eq!(
            r.failed,
            [
                "hit_rate@1 0.333333 on holdout h.csv (3 users) is 0.333333 below the current version 4's 0.666667, more than max_metric_drop 0.1"
            ]
        );
        assert!(verdict(0.34).failed.is_empty(), "a drop within max_metric_drop passes");
        // The first version has nothing to compare with: measured, passed.
        let first = check(&gate(0.0), TableKind::Lists, (2, 4), &new, None).unwrap();
        assert!(first.failed.is_empty() && first.holdout.unwrap().current.is_none());
        // A holdout whose users no version has measures nothing, and says so.
        let empty = db.open_tree("empty").unwrap();
        let none = check(&gate(1.0), TableKind::Lists, (0, 0), &empty, Some((&info, &empty))).unwrap();
        assert_eq!(
            none.failed,
            [
                "none of the 3 users of holdout h.csv has a list in this version or the current one: are they this table's user ids?"
            ]
        );
    }

    #[test]
    fn deciles_sample_every_rank_of_long_tables() {
        // 50,000 users with lists of 64 (3.2 million scores, past the sample): user u's item
        // at rank r scores r, so each rank is a 64th of the scores and the deciles fall
        // near 6.4, 12.8, ... whatever the sampling.
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        for u in 0..50_000u32 {
            let mut list: Vec<(String, f32)> = (0..64).map(|r| (format!("i{r}"), r as f32)).collect();
            tree.insert(u.to_be_bytes(), super::super::codec::encode_list(&mut list)).unwrap();
        }
        let edges = decile_edges(&tree).unwrap();
        for (b, e) in edges.iter().enumerate() {
            let want = 64.0 * (b + 1) as f32 / 10.0;
            assert!((e - want).abs() <= 1.5, "edge {b}: {e}, want about {want}: {edges:?}");
        }
    }

    #[test]
    fn jaccard_and_bins_follow_their_definitions() {
        let list = |items: &[&'static str]| -> Vec<(&'static [u8], f32)> {
            items.iter().map(|i| (i.as_bytes(), 0.0)).collect()
        };
        assert_eq!(jaccard(&list(&["x", "y", "z"]), &list(&["x", "y", "w"])), 2.0 / 4.0);
        assert_eq!(jaccard(&[], &[]), 1.0);
        // Long lists (hashed): 100 items against 100 sharing 50.
        let names: Vec<&'static str> = (0..150).map(|i| &*format!("i{i}").leak()).collect();
        assert_eq!(jaccard(&list(&names[..100]), &list(&names[50..])), 50.0 / 150.0);
        let edges: Vec<f32> = (1..10).map(|e| e as f32).collect();
        assert_eq!(bin(&edges, 0.5), 0);
        assert_eq!(bin(&edges, 1.0), 0);
        assert_eq!(bin(&edges, 9.5), 9);
    }
}
