//! The retry budget: retries as a fraction of recent requests.

use std::fmt;
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

/// Limits retries to `ratio` × requests over a sliding `ttl`, plus
/// `min_per_sec` retries per second always allowed (tower's token bucket,
/// as in Finagle and linkerd). Every request deposits; every retry withdraws.
///
/// ```
/// use std::time::Duration;
/// use fyerrpc::failover::RetryBudget;
///
/// let budget = RetryBudget::new(0.2, 0, Duration::from_secs(10));
/// for _ in 0..10 {
///     budget.deposit();
/// }
/// assert!(budget.withdraw());
/// assert!(budget.withdraw());
/// assert!(!budget.withdraw()); // 20% of 10 requests
/// ```
pub struct RetryBudget {
    inner: TpsBudget,
    ratio: f32,
}

impl RetryBudget {
    /// A budget of `ratio` retries per request (clamped to `0..=1000`) plus
    /// `min_per_sec`, over `ttl` (clamped to `1s..=60s`).
    pub fn new(ratio: f32, min_per_sec: u32, ttl: Duration) -> Self {
        let ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        Self {
            inner: TpsBudget::new(ttl, min_per_sec, ratio),
            ratio,
        }
    }

    /// Records a request.
    pub fn deposit(&self) {
        self.inner.deposit();
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        self.inner.withdraw()
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.ratio)
            .finish_non_exhaustive()
    }
}
