//! [`ErrorRate`]: trips when the share of failed calls over a sliding window
//! is too high.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::error::{check_count, check_duration, check_ratio};
use super::state::{OpenPolicy, StateMachine, TripCondition};
use super::window::RollingCounts;
use super::{Breaker, BreakerConfigError, BreakerPolicy};

/// Default length of the sliding window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// Default number of buckets the window slides by.
pub const DEFAULT_BUCKETS: u32 = 10;
/// Default number of calls in the window below which the breaker never trips.
pub const DEFAULT_MIN_REQUESTS: u32 = 20;
/// Default failure ratio that trips the breaker.
pub const DEFAULT_ERROR_THRESHOLD: f64 = 0.5;
/// Largest accepted number of buckets.
pub const MAX_BUCKETS: u32 = 3_600;

/// A breaker policy that trips when, over the last `window`, at least
/// `min_requests` calls were made and at least `threshold` of them failed.
///
/// The window is a ring of `buckets` time buckets: it slides one bucket
/// (`window / buckets`) at a time, forgetting the oldest.
///
/// ```
/// use std::time::Duration;
/// use fyerrpc::breaker::{Breaker, BreakerPolicy, BreakerState, ErrorRate, Permit};
///
/// let policy = ErrorRate::default()
///     .with_window(Duration::from_secs(30))
///     .with_min_requests(4)
///     .with_threshold(0.5);
/// policy.validate()?;
/// let breaker = policy.build();
/// breaker.record(Permit::Closed, true);
/// breaker.record(Permit::Closed, false);
/// breaker.record(Permit::Closed, true);
/// assert_eq!(breaker.state(), BreakerState::Closed); // 3 calls < min_requests
/// breaker.record(Permit::Closed, false); // 2 of 4 failed
/// assert_eq!(breaker.state(), BreakerState::Open);
/// # Ok::<(), fyerrpc::breaker::BreakerConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorRate {
    /// Length of the sliding window (default 10 s).
    pub window: Duration,
    /// Buckets in the window (default 10, at most [`MAX_BUCKETS`]).
    pub buckets: u32,
    /// Calls in the window needed before the breaker may trip (default 20).
    pub min_requests: u32,
    /// Failure ratio that trips the breaker, in `(0, 1]` (default 0.5).
    pub threshold: f64,
    /// Open time and half-open probing.
    pub open: OpenPolicy,
}

impl Default for ErrorRate {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            buckets: DEFAULT_BUCKETS,
            min_requests: DEFAULT_MIN_REQUESTS,
            threshold: DEFAULT_ERROR_THRESHOLD,
            open: OpenPolicy::default(),
        }
    }
}

impl ErrorRate {
    /// Trips at `threshold` failures over at least `min_requests` calls,
    /// with the default window and [`OpenPolicy`].
    pub fn new(threshold: f64, min_requests: u32) -> Self {
        Self::default()
            .with_threshold(threshold)
            .with_min_requests(min_requests)
    }
    /// Sets the window length.
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }
    /// Sets the number of buckets.
    pub fn with_buckets(mut self, buckets: u32) -> Self {
        self.buckets = buckets;
        self
    }
    /// Sets the minimum number of calls in the window.
    pub fn with_min_requests(mut self, min_requests: u32) -> Self {
        self.min_requests = min_requests;
        self
    }
    /// Sets the failure ratio that trips.
    pub fn with_threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold;
        self
    }
    /// Sets the open policy.
    pub fn with_open(mut self, open: OpenPolicy) -> Self {
        self.open = open;
        self
    }

    /// Checks every field: window > 0, buckets in `1..=MAX_BUCKETS`,
    /// `min_requests >= 1`, threshold in `(0, 1]`, and the open policy.
    pub fn validate(&self) -> Result<(), BreakerConfigError> {
        check_duration("window", self.window)?;
        check_count("buckets", self.buckets, 1, MAX_BUCKETS)?;
        check_count("min_requests", self.min_requests, 1, u32::MAX)?;
        check_ratio("threshold", self.threshold)?;
        self.open.validate()
    }

    /// A new closed breaker, with its concrete type (see
    /// [`BreakerPolicy::build`] for the boxed one).
    pub fn breaker(&self) -> StateMachine<WindowedErrorRate> {
        StateMachine::new(WindowedErrorRate::new(self), self.open)
    }
}

impl BreakerPolicy for ErrorRate {
    fn build(&self) -> Box<dyn Breaker> {
        Box::new(self.breaker())
    }
}

/// The trip condition of [`ErrorRate`]: the failure ratio over a sliding
/// window of time buckets (behind its own short lock).
#[derive(Debug)]
pub struct WindowedErrorRate {
    counts: Mutex<RollingCounts>,
    min_requests: u64,
    threshold: f64,
}

impl WindowedErrorRate {
    /// The condition of `policy`. Out-of-range values are clamped: at least
    /// one bucket and one request; a threshold that fails validation is the
    /// default.
    pub fn new(policy: &ErrorRate) -> Self {
        let threshold = if check_ratio("", policy.threshold).is_ok() {
            policy.threshold
        } else {
            DEFAULT_ERROR_THRESHOLD
        };
        Self {
            counts: Mutex::new(RollingCounts::new(
                policy.window,
                policy.buckets.min(MAX_BUCKETS),
            )),
            min_requests: u64::from(policy.min_requests.max(1)),
            threshold,
        }
    }

    /// `(requests, failures)` in the window now.
    pub fn totals(&self) -> (u64, u64) {
        self.counts().totals(Instant::now())
    }

    fn counts(&self) -> MutexGuard<'_, RollingCounts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Clone for WindowedErrorRate {
    fn clone(&self) -> Self {
        Self {
            counts: Mutex::new(self.counts().clone()),
            min_requests: self.min_requests,
            threshold: self.threshold,
        }
    }
}

impl TripCondition for WindowedErrorRate {
    fn on_success(&self) {
        self.counts().record(Instant::now(), false);
    }

    fn on_failure(&self) -> bool {
        let now = Instant::now();
        let mut counts = self.counts();
        counts.record(now, true);
        let (requests, failures) = counts.totals(now);
        requests >= self.min_requests && failures as f64 >= self.threshold * requests as f64
    }

    fn reset(&self) {
        self.counts().clear();
    }
}
