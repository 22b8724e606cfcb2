//! A/B experiments: `jobs/<name>.experiment.toml` names a salt and variants (tables) with
//! traffic shares. A read of `<name>:<user>` answers with the user's variant's list, and
//! `HGET <name>:<user> variant` tells the app which variant that is.
//!
//! A user's variant is that of their **bucket**: one of [`BUCKETS`], from a hash of the salt
//! and the user id (the same on every host and after every restart). Which variant each
//! bucket belongs to is kept in the store, so that a change of shares moves only as many
//! buckets as the arithmetic requires: a variant that shrinks gives up its highest
//! buckets, one that grows takes the lowest free ones; every other bucket stays where it
//! was. A new salt starts over.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::job::{JobError, valid_name};

/// Buckets of traffic: shares are kept to 1 in 10,000.
pub const BUCKETS: usize = 10_000;
/// The file name ending of an experiment in the jobs folder.
pub const SUFFIX: &str = ".experiment.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExperiment {
    /// Mixed into the hash of each user id: a new salt draws every user again.
    salt: String,
    description: Option<String>,
    #[serde(default)]
    variant: Vec<RawVariant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariant {
    /// Default: the table's name.
    name: Option<String>,
    table: String,
    /// Of the traffic, in (0, 1]; the shares add up to 1.
    share: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    pub table: String,
    pub share: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub name: String,
    pub file: String,
    pub salt: String,
    pub description: Option<String>,
    pub variants: Vec<Variant>,
}

/// The buckets' variants (by name) for one salt: what the store keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub salt: String,
    pub variants: Vec<String>,
    /// Each variant's table, beside its name: a variant renamed keeps its buckets.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Per bucket, an index into `variants`.
    pub buckets: Vec<u16>,
}

/// The experiment's name: its file's name without [`SUFFIX`].
pub fn name_of(file: &Path) -> String {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.strip_suffix(SUFFIX).unwrap_or(&name).to_string()
}

/// Parses and validates an experiment file; errors name the file, line and field.
pub fn parse(text: &str, file: &str, name: &str) -> Result<Experiment, JobError> {
    let raw: RawExperiment = toml::from_str(text).map_err(|e| {
        let (line, column) = crate::config::line_col(text, e.span().map(|s| s.start).unwrap_or(0));
        JobError::Syntax { file: file.into(), line, column, message: e.message().trim().to_string() }
    })?;
    let invalid = |field: &str, message: String| JobError::Invalid {
        file: file.into(),
        line: crate::job::line_of_key(text, field),
        field: field.into(),
        message,
    };
    if !valid_name(name) {
        return Err(invalid(
            "name",
            format!("experiment name {name:?} (the file name) must be letters, digits, '-' or '_'"),
        ));
    }
    if raw.salt.trim().is_empty() {
        return Err(invalid("salt", "must not be empty".into()));
    }
    if raw.variant.len() < 2 {
        return Err(invalid(
            "variant",
            format!("an experiment has at least two [[variant]]s, this one {}", raw.variant.len()),
        ));
    }
    let mut variants: Vec<Variant> = Vec::new();
    for v in raw.variant {
        let name = v.name.unwrap_or_else(|| v.table.clone());
        if !valid_name(&v.table) {
            return Err(invalid("variant.table", format!("{:?} is not a table name", v.table)));
        }
        if !valid_name(&name) || variants.iter().any(|o| o.name == name) {
            return Err(invalid(
                "variant.name",
                format!("{name:?}: each variant needs its own name (letters, digits, '-' or '_')"),
            ));
        }
        // At least one bucket each (which also bounds the number of variants).
        if !(v.share * BUCKETS as f64 >= 1.0 && v.share <= 1.0) {
            return Err(invalid("variant.share", format!("variant {name:?}: must be in [0.0001, 1], got {}", v.share)));
        }
        variants.push(Variant { name, table: v.table, share: v.share });
    }
    let total: f64 = variants.iter().map(|v| v.share).sum();
    if (total - 1.0).abs() > 1e-6 {
        return Err(invalid("variant.share", format!("the shares add up to {total}, not 1")));
    }
    Ok(Experiment { name: name.into(), file: file.into(), salt: raw.salt, description: raw.description, variants })
}

impl Experiment {
    /// Whole buckets per variant, adding up to [`BUCKETS`]: each share's floor, then the
    /// largest remainders one more (ties to the earlier variant).
    fn quotas(&self) -> Vec<usize> {
        let exact: Vec<f64> = self.variants.iter().map(|v| v.share * BUCKETS as f64).collect();
        let mut quotas: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
        let mut order: Vec<usize> = (0..exact.len()).collect();
        order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b)));
        let short = BUCKETS.saturating_sub(quotas.iter().sum());
        for &i in order.iter().cycle().take(short) {
            quotas[i] += 1;
        }
        quotas
    }

    /// The buckets' variants after this experiment replaces `previous` (none: a first
    /// assignment; another salt: a fresh one). Moves the fewest buckets that reach the
    /// new quotas.
    pub fn assign(&self, previous: Option<&Assignment>) -> Assignment {
        let names: Vec<String> = self.variants.iter().map(|v| v.name.clone()).collect();
        let tables: Vec<String> = self.variants.iter().map(|v| v.table.clone()).collect();
        let quotas = self.quotas();
        // Each bucket's variant by index in the new list; None: free. An old variant is
        // the new one of its name, else the one of its table that no old variant names
        // (a rename keeps the users).
        let mut owner: Vec<Option<usize>> = match previous.filter(|p| p.salt == self.salt) {
            Some(p) => {
                let map: Vec<Option<usize>> = (0..p.variants.len())
                    .map(|i| {
                        names.iter().position(|m| *m == p.variants[i]).or_else(|| {
                            let by_table = tables.iter().position(|t| Some(t) == p.tables.get(i))?;
                            (!p.variants.contains(&names[by_table])).then_some(by_table)
                        })
                    })
                    .collect();
                p.buckets.iter().map(|&b| map.get(b as usize).copied().flatten()).collect()
            }
            None => vec![None; BUCKETS],
        };
        owner.resize(BUCKETS, None);
        let mut counts = vec![0usize; names.len()];
        for o in owner.iter().flatten() {
            counts[*o] += 1;
        }
        // Shrinking variants give up their highest buckets.
        for b in (0..BUCKETS).rev() {
            if let Some(v) = owner[b]
                && counts[v] > quotas[v]
            {
                counts[v] -= 1;
                owner[b] = None;
            }
        }
        // Growing variants take the lowest free buckets, in the order of the file.
        let mut free = (0..BUCKETS).filter(|b| owner[*b].is_none()).collect::<Vec<_>>().into_iter();
        for (v, quota) in quotas.iter().enumerate() {
            while counts[v] < *quota {
                let b = free.next().expect("the quotas add up to the buckets");
                owner[b] = Some(v);
                counts[v] += 1;
            }
        }
        let buckets = owner.into_iter().map(|o| o.expect("every bucket assigned") as u16).collect();
        Assignment { salt: self.salt.clone(), variants: names, tables, buckets }
    }
}

/// The bucket of `user` under `salt`: FNV-1a of (salt, 0xff, user), mixed (splitmix64's
/// finaliser, so every bit of the hash counts) and reduced to [`BUCKETS`].
pub fn bucket(salt: &str, user: &[u8]) -> usize {
    let mut h = crate::shard::Fnv64::new();
    h.write(salt.as_bytes());
    h.write(&[0xff]);
    h.write(user);
    let mut x = h.finish();
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    ((u128::from(x) * BUCKETS as u128) >> 64) as usize
}

/// An experiment as the read path uses it: each bucket's variant.
#[derive(Debug, Clone)]
pub struct Live {
    pub experiment: Experiment,
    pub assignment: Assignment,
}

impl Live {
    /// The variant `user` sees.
    pub fn variant(&self, user: &[u8]) -> &Variant {
        let index = self.assignment.buckets[bucket(&self.experiment.salt, user)] as usize;
        &self.experiment.variants[index]
    }
}

/// The experiments of a jobs folder by name.
pub type Experiments = BTreeMap<String, std::sync::Arc<Live>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(shares: &[(&str, f64)]) -> Experiment {
        let variants =
            shares.iter().map(|(t, s)| format!("[[variant]]\ntable = \"{t}\"\nshare = {s}\n")).collect::<String>();
        parse(&format!("salt = \"s1\"\n{variants}"), "jobs/e.experiment.toml", "e").unwrap()
    }

    fn moved(a: &Assignment, b: &Assignment) -> usize {
        a.buckets.iter().zip(&b.buckets).filter(|(x, y)| a.variants[**x as usize] != b.variants[**y as usize]).count()
    }

    #[test]
    fn users_split_by_the_shares_and_a_change_moves_only_what_it_must() {
        let e = experiment(&[("a", 0.5), ("b", 0.3), ("c", 0.2)]);
        let first = e.assign(None);
        let live = Live { experiment: e.clone(), assignment: first.clone() };
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for u in 0..100_000 {
            *seen.entry(live.variant(format!("user{u}").as_bytes()).name.clone()).or_default() += 1;
        }
        for v in &e.variants {
            let share = seen[&v.name] as f64 / 100_000.0;
            assert!((share - v.share).abs() < 0.01, "{}: {share} for {}", v.name, v.share);
        }
        // b gives 0.1 to c: exactly 1,000 of 10,000 buckets move, all from b to c.
        let changed = experiment(&[("a", 0.5), ("b", 0.2), ("c", 0.3)]);
        let second = changed.assign(Some(&first));
        assert_eq!(moved(&first, &second), 1000);
        // The same shares again move nothing; a new salt draws everyone again.
        assert_eq!(moved(&second, &changed.assign(Some(&second))), 0);
        let resalted = Experiment { salt: "s2".into(), ..changed.clone() };
        let (before, after) = (
            Live { experiment: changed.clone(), assignment: second.clone() },
            Live { assignment: resalted.assign(Some(&second)), experiment: resalted },
        );
        let redrawn = (0..10_000)
            .filter(|u| before.variant(format!("{u}").as_bytes()).name != after.variant(format!("{u}").as_bytes()).name)
            .count();
        assert!(redrawn > 5000, "a new salt redraws the users: {redrawn} of 10,000 moved");
        // Variants renamed keep their users (matched by table).
        let renamed = parse(
            "salt = \"s1\"\n[[variant]]\nname = \"x\"\ntable = \"a\"\nshare = 0.5\n[[variant]]\nname = \"y\"\ntable = \"b\"\nshare = 0.2\n[[variant]]\nname = \"z\"\ntable = \"c\"\nshare = 0.3\n",
            "jobs/e.experiment.toml",
            "e",
        )
        .unwrap();
        let after_rename = renamed.assign(Some(&second));
        let same_tables = second
            .buckets
            .iter()
            .zip(&after_rename.buckets)
            .all(|(a, b)| second.tables[*a as usize] == after_rename.tables[*b as usize]);
        assert!(same_tables, "a rename moves nobody");
        // A variant dropped: its buckets, and only those, go to the others.
        let dropped = experiment(&[("a", 0.6), ("b", 0.4)]);
        let third = dropped.assign(Some(&second));
        assert_eq!(moved(&second, &third), 3000);
    }

    #[test]
    fn the_bucket_of_a_user_depends_only_on_salt_and_user() {
        assert_eq!(bucket("s", b"17850"), bucket("s", b"17850"));
        let differ = (0..1000)
            .filter(|u| bucket("s", format!("{u}").as_bytes()) != bucket("t", format!("{u}").as_bytes()))
            .count();
        assert!(differ > 990, "{differ}");
    }

    #[test]
    fn bad_files_are_refused_naming_the_field() {
        let bad = |text: &str| parse(text, "jobs/e.experiment.toml", "e").unwrap_err().to_string();
        assert_eq!(
            bad("salt = \"s\"\n[[variant]]\ntable = \"a\"\nshare = 0.5\n[[variant]]\ntable = \"b\"\nshare = 0.6\n"),
            "jobs/e.experiment.toml:4: field `variant.share`: the shares add up to 1.1, not 1"
        );
        assert_eq!(
            bad("salt = \"s\"\n[[variant]]\ntable = \"a\"\nshare = 1.0\n"),
            "jobs/e.experiment.toml:2: field `variant`: an experiment has at least two [[variant]]s, this one 1"
        );
        assert!(bad("salt = \"s\"\nsalts = 1\n").contains("unknown field `salts`"));
    }
}
