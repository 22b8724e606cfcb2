//! A plugin that makes up a table, for the serving benchmark (`make bench-serving`). No
//! inputs, no model. Params:
//! - `users` (default 100000): users `000000000000`, `000000000001`, ... named as
//!   redis-benchmark renders its `__rand_int__` placeholder (12-digit zero-padded decimal),
//!   so `-r <users>` hits every user and only them;
//! - `items` (default 100): items per user, distinct, `item-<n>` drawn from a catalogue
//!   of `catalogue` (default 10000) by a xorshift generator seeded with `seed`;
//! - `seed` (default 1): the same seed gives the same table;
//! - `big_users` (default 0) more users, `big-0`, `big-1`, ..., with `big_items` items
//!   each (`big-item-0` scored `big_items`, `big-item-1` scored one less, ...): the huge
//!   lists of the serving fairness benchmark (`scripts/bench_fairness.py`).
//!
//! Scores strictly decrease down each list and are multiples of 1/16 (e.g. `873.4375`):
//! exact in f32 and in f64, so recd and Redis write the very same score text.

use recd_plugin_api::{OutputRows, PluginError, RunContext, Strategy, export_plugin};
use serde::Deserialize;

/// Rows per emitted batch (a batch always ends at the end of a user's list).
const BATCH_ROWS: usize = 65_536;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "default_users")]
    users: u64,
    #[serde(default = "default_items")]
    items: u32,
    #[serde(default = "default_catalogue")]
    catalogue: u32,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default)]
    big_users: u32,
    #[serde(default)]
    big_items: u32,
}

fn default_users() -> u64 {
    100_000
}
fn default_items() -> u32 {
    100
}
fn default_catalogue() -> u32 {
    10_000
}
fn default_seed() -> u64 {
    1
}

struct Synthetic {
    params: Params,
}

/// xorshift64* (Vigna): small, fast, and the same sequence on every platform.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // a zero state would stay zero; mix the seed so nearby seeds diverge at once
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in 0..n for a benchmark (n is small against 2^64).
    fn below(&mut self, n: u64) -> u64 {
        (self.next() >> 11) % n
    }
}

impl Strategy for Synthetic {
    fn new(params_json: &str) -> Result<Self, PluginError> {
        let params: Params =
            serde_json::from_str(params_json).map_err(|e| PluginError::params(format!("params: {e}")))?;
        if params.users == 0 || params.users > 999_999_999_999 {
            return Err(PluginError::params("params.users: must be between 1 and 999999999999"));
        }
        if params.catalogue == 0 {
            return Err(PluginError::params("params.catalogue: must be at least 1"));
        }
        if params.items == 0 || params.items > params.catalogue {
            return Err(PluginError::params(format!(
                "params.items: must be between 1 and the catalogue size ({})",
                params.catalogue
            )));
        }
        // scores are n/16 with n >= 1, starting below 16000 and going down by at most 8
        if params.items > 1000 {
            return Err(PluginError::params("params.items: at most 1000"));
        }
        // Scores are whole numbers up to big_items: exact in f32 up to 2^24.
        if params.big_items > 1 << 24 || (params.big_users > 0 && params.big_items == 0) {
            return Err(PluginError::params("params.big_items: between 1 and 16777216 when big_users is set"));
        }
        Ok(Synthetic { params })
    }

    fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
        let Params { users, items, catalogue, seed, big_users, big_items } = self.params;
        let mut rng = XorShift::new(seed);
        let names: Vec<String> = (0..catalogue).map(|n| format!("item-{n}")).collect();
        // taken[n] == user + 1: item n is already in this user's list
        let mut taken = vec![0u64; catalogue as usize];
        let mut rows = OutputRows::new();
        for user in 0..users {
            let name = format!("{user:012}");
            // 8000..16000 sixteenths (500 to 1000), then down by 1 to 8 sixteenths each
            let mut units = 8000 + rng.below(8000);
            for _ in 0..items {
                let item = loop {
                    let n = rng.below(u64::from(catalogue)) as usize;
                    if taken[n] != user + 1 {
                        taken[n] = user + 1;
                        break n;
                    }
                };
                rows.push(&name, &names[item], units as f32 / 16.0);
                units -= 1 + rng.below(8);
            }
            if rows.len() >= BATCH_ROWS || user + 1 == users {
                if ctx.is_cancelled() {
                    return Err(PluginError::cancelled());
                }
                ctx.emit(std::mem::take(&mut rows).into_batch()?)?;
                ctx.progress(user + 1, users);
            }
        }
        for big in 0..big_users {
            let name = format!("big-{big}");
            let mut rows = OutputRows::new();
            for item in 0..big_items {
                rows.push(&name, &format!("big-item-{item}"), (big_items - item) as f32);
            }
            ctx.emit(rows.into_batch()?)?;
        }
        Ok(())
    }
}

export_plugin!(Synthetic, name = "synthetic", version = env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::Synthetic;
    use recd_plugin_api::abi::code;
    use recd_plugin_api::testing::Harness;

    #[test]
    fn every_user_gets_distinct_items_with_decreasing_scores() {
        let out = Harness::new(r#"{"users": 1500, "items": 100, "seed": 7}"#).run::<Synthetic>().unwrap();
        let rows = out.rows();
        assert_eq!(rows.len(), 150_000);
        // batches end at a user's end: ~64k rows each, so three here
        assert_eq!(out.batches.len(), 3);
        assert!(out.batches.iter().all(|b| b.num_rows() % 100 == 0));
        let mut lists: BTreeMap<&str, Vec<(&str, f32)>> = BTreeMap::new();
        for (u, i, s) in &rows {
            lists.entry(u.as_str()).or_default().push((i.as_str(), *s));
        }
        assert_eq!(lists.len(), 1500);
        assert_eq!(lists.keys().next(), Some(&"000000000000"));
        assert_eq!(lists.keys().last(), Some(&"000000001499"));
        for (user, list) in &lists {
            assert_eq!(list.len(), 100, "{user}");
            let items: HashSet<&str> = list.iter().map(|(i, _)| *i).collect();
            assert_eq!(items.len(), 100, "{user}: duplicate items");
            assert!(list.iter().all(|(i, _)| {
                i.strip_prefix("item-").and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n < 10_000)
            }));
            assert!(list.windows(2).all(|w| w[0].1 > w[1].1), "{user}: scores not strictly decreasing");
            assert!(list.iter().all(|(_, s)| *s > 0.0 && (s * 16.0).fract() == 0.0));
        }
        // one user's rows are contiguous
        let mut seen = HashSet::new();
        let mut last = "";
        for (u, _, _) in &rows {
            if u != last {
                assert!(seen.insert(u.as_str()), "{u} appears twice");
                last = u;
            }
        }
        assert_eq!(out.progress.last(), Some(&(1500, 1500)));
    }

    #[test]
    fn the_same_seed_gives_the_same_table_and_another_seed_another() {
        let run = |seed: u64| {
            Harness::new(&format!(r#"{{"users": 50, "items": 20, "catalogue": 30, "seed": {seed}}}"#))
                .run::<Synthetic>()
                .unwrap()
                .rows()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn bad_params_are_refused_and_a_whole_catalogue_can_be_used() {
        let err = Harness::new(r#"{"user": 3}"#).run::<Synthetic>().unwrap_err();
        assert_eq!(err.code, code::INVALID_PARAMS);
        assert!(err.message.contains("unknown field `user`"), "{}", err.message);
        let err = Harness::new(r#"{"items": 11, "catalogue": 10}"#).run::<Synthetic>().unwrap_err();
        assert_eq!(err.code, code::INVALID_PARAMS);
        let err = Harness::new(r#"{"users": 0}"#).run::<Synthetic>().unwrap_err();
        assert_eq!(err.code, code::INVALID_PARAMS);
        // every item of the catalogue, once each
        let out = Harness::new(r#"{"users": 2, "items": 10, "catalogue": 10}"#).run::<Synthetic>().unwrap();
        assert_eq!(out.rows().len(), 20);
    }

    #[test]
    fn cancellation_stops_the_run() {
        let err = Harness::new(r#"{"users": 2000}"#).cancel_after(1).run::<Synthetic>().unwrap_err();
        assert_eq!(err.code, code::CANCELLED);
    }
}
