//! Which key each request reads: uniform over the keys, Zipf by rank (key 0 the hottest),
//! or key 0 alone.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_distr::{Distribution, Uniform, Zipf};

#[derive(Clone)]
pub enum KeyChoice {
    Uniform(Uniform<u64>),
    Zipf(Zipf<f64>),
    One,
}

impl KeyChoice {
    pub fn parse(text: &str, keys: u64) -> anyhow::Result<KeyChoice> {
        anyhow::ensure!(keys > 0, "--keys must be at least 1");
        Ok(match text {
            "uniform" => KeyChoice::Uniform(Uniform::new(0, keys)?),
            "one" => KeyChoice::One,
            _ => {
                let s: f64 = text
                    .strip_prefix("zipf:")
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("--dist {text:?}: expected uniform, one or zipf:S"))?;
                KeyChoice::Zipf(Zipf::new(keys as f64, s)?)
            }
        })
    }

    /// A sampler of its own for one connection (seeded: runs repeat).
    pub fn sampler(&self, seed: u64) -> Sampler {
        Sampler { choice: self.clone(), rng: ChaCha8Rng::seed_from_u64(seed) }
    }
}

pub struct Sampler {
    choice: KeyChoice,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn next_key(&mut self) -> u64 {
        match &self.choice {
            KeyChoice::Uniform(u) => u.sample(&mut self.rng),
            // ranks are 1..=n: rank 1 is key 0
            KeyChoice::Zipf(z) => z.sample(&mut self.rng) as u64 - 1,
            KeyChoice::One => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_gives_the_hottest_key_its_harmonic_share() {
        // s = 1 over 1,000 keys: key 0 has 1 / H(1000) = 13.4% of reads, key 9 a tenth of that
        let choice = KeyChoice::parse("zipf:1", 1000).unwrap();
        let mut sampler = choice.sampler(7);
        let n = 200_000;
        let mut counts = vec![0u32; 1000];
        (0..n).for_each(|_| counts[sampler.next_key() as usize] += 1);
        let harmonic: f64 = (1..=1000).map(|r| 1.0 / r as f64).sum();
        let share = |k: usize| f64::from(counts[k]) / n as f64;
        assert!((share(0) - 1.0 / harmonic).abs() < 0.005, "{}", share(0));
        assert!((share(9) - 0.1 / harmonic).abs() < 0.002, "{}", share(9));
    }

    #[test]
    fn uniform_covers_every_key_and_one_reads_key_zero() {
        let choice = KeyChoice::parse("uniform", 10).unwrap();
        let mut sampler = choice.sampler(1);
        let seen: std::collections::HashSet<u64> = (0..1000).map(|_| sampler.next_key()).collect();
        assert_eq!(seen.len(), 10);
        assert!(seen.iter().all(|k| *k < 10));
        let one = KeyChoice::parse("one", 10).unwrap();
        assert_eq!(one.sampler(1).next_key(), 0);
        assert!(KeyChoice::parse("zipf:x", 10).is_err());
    }
}
