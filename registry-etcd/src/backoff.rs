//! Capped exponential backoff with jitter, for reconnecting to etcd.

use std::time::Duration;

use fyerrpc::registry::RetryBackoff;

/// First retry delay.
const INITIAL: Duration = Duration::from_millis(100);
/// Largest retry delay: how late, at most, a recovery notices that etcd is
/// back.
const MAX: Duration = Duration::from_secs(2);
/// A run (watch, keep-alive) that lasted this long was healthy: the next failure starts the
/// delays over.
const STABLE: Duration = Duration::from_secs(5);

/// Delays between attempts: 100 ms doubling up to 2 s, each drawn in
/// `[d/2, d)` so that many clients do not retry in lockstep; a healthy run
/// starts them over.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    delays: RetryBackoff,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            delays: RetryBackoff::new(INITIAL, MAX),
        }
    }
}

impl Backoff {
    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.delays.next_delay()
    }

    /// Notes how long the last run (watch, keep-alive) lasted; a healthy
    /// one resets the delays.
    pub(crate) fn run_ended(&mut self, lasted: Duration) {
        if lasted >= STABLE {
            self.delays.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets_after_a_stable_run() {
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] <= INITIAL && delays[0] >= INITIAL / 2);
        assert!(delays.iter().all(|d| *d <= MAX));
        assert!(delays[9] >= MAX / 2);
        b.run_ended(Duration::from_millis(10));
        assert!(b.next_delay() >= MAX / 2, "a short run keeps backing off");
        b.run_ended(STABLE);
        assert!(b.next_delay() <= INITIAL);
    }
}
