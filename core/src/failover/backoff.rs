//! Exponential backoff with jitter between attempts.

use std::time::Duration;

/// Exponential backoff: the n-th retry waits
/// `min(initial × multiplier^(n-1), max)`, spread by ± `jitter` (a fraction).
///
/// ```
/// use std::time::Duration;
/// use fyerrpc::failover::Backoff;
///
/// let b = Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(1), 0.0);
/// assert_eq!(b.delay(1), Duration::from_millis(100));
/// assert_eq!(b.delay(3), Duration::from_millis(400));
/// assert_eq!(b.delay(10), Duration::from_secs(1)); // capped
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Growth factor per retry (>= 1).
    pub multiplier: f64,
    /// Largest delay.
    pub max: Duration,
    /// Random spread as a fraction of the delay, in `0..=1`.
    pub jitter: f64,
}

impl Backoff {
    /// A backoff policy.
    pub fn new(initial: Duration, multiplier: f64, max: Duration, jitter: f64) -> Self {
        Self {
            initial,
            multiplier,
            max,
            jitter,
        }
    }

    /// The delay before retry number `retry` (1 for the first retry), without
    /// jitter.
    pub fn base_delay(&self, retry: u32) -> Duration {
        let exp = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs.max(0.0))
        }
    }

    /// The delay before retry number `retry`, with jitter applied: uniformly
    /// within `base × (1 ± jitter)`, never above `max`.
    pub fn delay(&self, retry: u32) -> Duration {
        let base = self.base_delay(retry).as_secs_f64();
        let j = self.jitter.clamp(0.0, 1.0);
        if j == 0.0 {
            return Duration::from_secs_f64(base);
        }
        let factor = 1.0 + j * (2.0 * fastrand::f64() - 1.0);
        Duration::from_secs_f64((base * factor).max(0.0)).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_bounds() {
        let b = Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(5), 0.2);
        for _ in 0..1000 {
            let d = b.delay(2).as_secs_f64();
            assert!((0.16..=0.24).contains(&d), "{d}");
        }
        assert!(b.delay(60) <= Duration::from_secs(5));
    }
}
