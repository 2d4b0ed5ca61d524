//! [`RetryBackoff`]: the delays of a backend's reconnect loops.

use std::time::Duration;

use crate::failover::Backoff;

/// Delays between a backend's attempts to reach its registry again (a watch
/// re-established, a keep-alive restored): `initial` doubling up to `max`
/// (a [`Backoff`] without jitter), each drawn uniformly in `[d/2, d)` so that
/// many clients do not retry in step.
///
/// Unlike [`Backoff`], it counts the retries itself: each
/// [`next_delay`](Self::next_delay) is the next retry, and
/// [`reset`](Self::reset) starts over after a success.
///
/// ```
/// use std::time::Duration;
/// use fyerrpc::registry::RetryBackoff;
///
/// let mut backoff = RetryBackoff::new(Duration::from_millis(100), Duration::from_secs(2));
/// let first = backoff.next_delay();
/// assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(100));
/// let second = backoff.next_delay();
/// assert!(second >= Duration::from_millis(100) && second < Duration::from_millis(200));
/// backoff.reset();
/// assert!(backoff.next_delay() < Duration::from_millis(100));
/// ```
#[derive(Debug, Clone)]
pub struct RetryBackoff {
    ceiling: Backoff,
    retry: u32,
}

impl RetryBackoff {
    /// Delays from `initial` doubling up to `max` (at least `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            ceiling: Backoff::new(initial, 2.0, max.max(initial), 0.0),
            retry: 0,
        }
    }

    /// The delay before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        self.retry = self.retry.saturating_add(1);
        let ceiling = self.ceiling.base_delay(self.retry);
        ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    /// Starts over after a success: the next delay is the first again.
    pub fn reset(&mut self) {
        self.retry = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = RetryBackoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(100));
        for _ in 0..40 {
            assert!(b.next_delay() < Duration::from_secs(1));
        }
        assert!(b.next_delay() >= Duration::from_millis(500));
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(100));
    }

    #[test]
    fn max_below_initial_is_initial() {
        let mut b = RetryBackoff::new(Duration::from_millis(100), Duration::from_millis(10));
        for _ in 0..10 {
            assert!(b.next_delay() < Duration::from_millis(100));
        }
    }
}
