//! Shards of a run's users: shard `index` of `count` holds the users whose stable hash
//! (FNV-1a, 64-bit, of the id's UTF-8 bytes) is `index` modulo `count`. The hash is fixed
//! by this format, never seeded, so every process, host and build agrees on who is where.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// The variable that declares how many shards a Kubernetes Indexed Job has (its
/// `completions`); Kubernetes itself sets only the index, in `JOB_COMPLETION_INDEX`.
pub const COUNT_VAR: &str = "RECD_SHARDS";
pub const INDEX_VAR: &str = "JOB_COMPLETION_INDEX";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ShardError {
    #[error("--shard {0:?}: expected I/N with 0 <= I < N, e.g. 0/4")]
    Syntax(String),
    #[error("{INDEX_VAR}={index:?} is set but {COUNT_VAR} is not: set it to the job's completions")]
    NoCount { index: String },
    #[error("{INDEX_VAR}={index:?} and {COUNT_VAR}={count:?}: expected 0 <= index < count")]
    BadEnv { index: String, count: String },
}

impl Default for Shard {
    fn default() -> Shard {
        Shard::WHOLE
    }
}

impl Shard {
    /// The whole run: one shard of one.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn parse(text: &str) -> Result<Shard, ShardError> {
        let bad = || ShardError::Syntax(text.to_string());
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        Shard::new(i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?).ok_or_else(bad)
    }

    fn new(index: u32, count: u32) -> Option<Shard> {
        (index < count).then_some(Shard { index, count })
    }

    /// The shard a Kubernetes Indexed Job's pod is: None when `JOB_COMPLETION_INDEX` is not
    /// set. `var` reads the environment (a parameter, for tests).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Shard>, ShardError> {
        let Some(index) = var(INDEX_VAR) else { return Ok(None) };
        let count = var(COUNT_VAR).ok_or_else(|| ShardError::NoCount { index: index.clone() })?;
        let bad = || ShardError::BadEnv { index: index.clone(), count: count.clone() };
        let shard = Shard::new(index.trim().parse().map_err(|_| bad())?, count.trim().parse().map_err(|_| bad())?);
        shard.ok_or_else(bad).map(Some)
    }

    pub fn contains(&self, user: &str) -> bool {
        self.count == 1 || shard_hash(user.as_bytes()) % u64::from(self.count) == u64::from(self.index)
    }

    pub fn is_whole(&self) -> bool {
        self.count == 1
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// FNV-1a, 64-bit (the store's checksum hash).
pub fn shard_hash(bytes: &[u8]) -> u64 {
    let mut h = Fnv64::new();
    h.write(bytes);
    h.finish()
}

/// FNV-1a, 64-bit: tiny, stable across builds, good enough to detect a changed version
/// (and, in the store, to checksum a version).
pub(crate) struct Fnv64(u64);

impl Fnv64 {
    pub(crate) fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv1a_and_every_user_is_in_exactly_one_shard() {
        // FNV-1a 64 test vectors (the empty string is the offset basis).
        assert_eq!(shard_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(shard_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(shard_hash(b"foobar"), 0x8594_4171_f739_67e8);
        let shards: Vec<Shard> = (0..4).map(|i| Shard { index: i, count: 4 }).collect();
        let mut sizes = [0usize; 4];
        for u in 0..10_000 {
            let user = format!("u{u:05}");
            let holders: Vec<usize> = (0..4).filter(|&i| shards[i].contains(&user)).collect();
            assert_eq!(holders.len(), 1, "{user} is in shards {holders:?}");
            sizes[holders[0]] += 1;
        }
        assert!(sizes.iter().all(|&n| (2_200..2_800).contains(&n)), "unbalanced shards {sizes:?}");
        assert!(Shard::WHOLE.contains("anyone"));
    }

    #[test]
    fn shards_come_from_the_flag_or_from_an_indexed_jobs_environment() {
        assert_eq!(Shard::parse("2/4"), Ok(Shard { index: 2, count: 4 }));
        for bad in ["4/4", "1", "a/2", "1/0", "-1/3", ""] {
            assert_eq!(Shard::parse(bad), Err(ShardError::Syntax(bad.to_string())), "{bad}");
        }
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(name, _)| *name == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(Shard::from_env(env(&[])), Ok(None));
        assert_eq!(Shard::from_env(env(&[(INDEX_VAR, "3"), (COUNT_VAR, "8")])), Ok(Some(Shard { index: 3, count: 8 })));
        let no_count = Shard::from_env(env(&[(INDEX_VAR, "3")])).unwrap_err();
        assert!(no_count.to_string().contains("RECD_SHARDS is not"), "{no_count}");
        let bad = Shard::from_env(env(&[(INDEX_VAR, "8"), (COUNT_VAR, "8")])).unwrap_err();
        assert!(bad.to_string().contains("JOB_COMPLETION_INDEX=\"8\""), "{bad}");
    }
}
