//! How long a serving thread keeps looking for requests before it sleeps.
//!
//! Why look at all: a request that finds the serving thread asleep makes the *client's*
//! write wake it, and where an idle CPU halts (a VM: halting and its wake-up both exit to
//! the host) that wake-up is the dearest part of a small request. Measured under
//! redis-benchmark (GET and ZREVRANGE, 50 clients, pinned), recd's serving thread slept
//! 0.08-0.22 times per request against Redis's 0.005-0.08 (recd answers faster, so it runs
//! out of work more often), and redis-benchmark's `send` spent 11% of its time waking recd
//! against 6% waking Redis (GET): the client, the bottleneck, served fewer requests.
//!
//! Why adaptive: looking costs a core while it lasts. The window follows the gaps between
//! requests, as KVM's halt polling does: a sleep that ended within `max` of the last work
//! would have been caught by a longer window, so the window doubles; a longer sleep means
//! traffic is sparse, so it halves, and goes to zero below [`MIN_WINDOW`]. A socket read
//! now and then costs nothing; a busy one is answered without a wake-up between requests.

use std::time::Duration;

/// The window a grow starts from (or `max`, if smaller), and under which a shrink stops
/// looking at all.
pub const MIN_WINDOW: Duration = Duration::from_micros(2);

#[derive(Debug)]
pub struct BusyPoll {
    window: Duration,
    max: Duration,
}

impl BusyPoll {
    /// `max` zero: never look.
    pub fn new(max: Duration) -> BusyPoll {
        BusyPoll { window: Duration::ZERO, max }
    }

    /// Whether a thread whose last work was `since_work` ago still looks for requests
    /// instead of sleeping.
    pub fn looking(&self, since_work: Duration) -> bool {
        since_work < self.window
    }

    /// A sleep ended `since_work` after the thread's last work.
    pub fn slept(&mut self, since_work: Duration) {
        if since_work <= self.max {
            self.window = (self.window * 2).clamp(MIN_WINDOW.min(self.max), self.max);
        } else {
            self.window /= 2;
            if self.window < MIN_WINDOW {
                self.window = Duration::ZERO;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(50);

    fn micros(d: Duration) -> u128 {
        d.as_micros()
    }

    #[test]
    fn short_gaps_grow_the_window_to_max_and_no_further() {
        let mut busy = BusyPoll::new(MAX);
        let mut seen = Vec::new();
        for _ in 0..8 {
            busy.slept(Duration::from_micros(30));
            seen.push(micros(busy.window));
        }
        assert_eq!(seen, [2, 4, 8, 16, 32, 50, 50, 50]);
    }

    #[test]
    fn long_gaps_shrink_the_window_to_nothing() {
        let mut busy = BusyPoll::new(MAX);
        for _ in 0..6 {
            busy.slept(Duration::from_micros(10));
        }
        let mut seen = Vec::new();
        for _ in 0..6 {
            busy.slept(Duration::from_millis(3));
            seen.push(micros(busy.window));
        }
        assert_eq!(seen, [25, 12, 6, 3, 0, 0]);
    }

    #[test]
    fn a_gap_of_exactly_max_still_grows_and_one_past_it_shrinks() {
        let mut busy = BusyPoll::new(MAX);
        busy.slept(MAX);
        assert_eq!(busy.window, MIN_WINDOW);
        busy.slept(MAX + Duration::from_nanos(1));
        assert_eq!(busy.window, Duration::ZERO);
    }

    #[test]
    fn the_thread_looks_until_the_window_has_passed_since_its_last_work() {
        let mut busy = BusyPoll::new(MAX);
        assert!(!busy.looking(Duration::ZERO), "a fresh thread sleeps at once");
        busy.slept(Duration::from_micros(10));
        busy.slept(Duration::from_micros(10));
        assert!(busy.looking(Duration::from_nanos(3_999)));
        assert!(!busy.looking(Duration::from_micros(4)));
    }

    #[test]
    fn a_max_of_zero_never_looks_and_one_under_the_minimum_looks_that_long() {
        let mut off = BusyPoll::new(Duration::ZERO);
        for gap in [0, 1, 1_000_000] {
            off.slept(Duration::from_nanos(gap));
            assert!(!off.looking(Duration::ZERO));
        }
        let tiny = Duration::from_micros(1);
        let mut busy = BusyPoll::new(tiny);
        busy.slept(Duration::ZERO);
        busy.slept(Duration::ZERO);
        assert_eq!(busy.window, tiny);
        busy.slept(tiny * 2);
        assert_eq!(busy.window, Duration::ZERO);
    }
}
