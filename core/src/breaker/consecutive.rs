//! [`ConsecutiveFailures`]: trips after a run of failed calls.

use std::sync::atomic::{AtomicU32, Ordering};

use super::error::check_count;
use super::state::{OpenPolicy, StateMachine, TripCondition};
use super::{Breaker, BreakerConfigError, BreakerPolicy};

/// Default number of consecutive failures that trips a breaker.
pub const DEFAULT_THRESHOLD: u32 = 5;

/// A breaker policy that trips after `threshold` consecutive failed calls;
/// any success resets the count. The reference framework's default breaker.
///
/// ```
/// use fyerrpc::breaker::{Breaker, BreakerPolicy, BreakerState, ConsecutiveFailures, Permit};
///
/// let policy = ConsecutiveFailures::new(3);
/// policy.validate()?;
/// let breaker = policy.build();
/// for _ in 0..2 {
///     assert_eq!(breaker.record(Permit::Closed, false), None);
/// }
/// breaker.record(Permit::Closed, true); // resets the run
/// for _ in 0..2 {
///     breaker.record(Permit::Closed, false);
/// }
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// assert!(breaker.record(Permit::Closed, false).is_some());
/// assert_eq!(breaker.state(), BreakerState::Open);
/// # Ok::<(), fyerrpc::breaker::BreakerConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConsecutiveFailures {
    /// Consecutive failures that trip the breaker (default 5, at least 1).
    pub threshold: u32,
    /// Open time and half-open probing.
    pub open: OpenPolicy,
}

impl Default for ConsecutiveFailures {
    fn default() -> Self {
        Self::new(DEFAULT_THRESHOLD)
    }
}

impl ConsecutiveFailures {
    /// Trips after `threshold` consecutive failures, with the default
    /// [`OpenPolicy`].
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold,
            open: OpenPolicy::default(),
        }
    }

    /// Sets the open policy.
    pub fn with_open(mut self, open: OpenPolicy) -> Self {
        self.open = open;
        self
    }

    /// Checks the threshold (at least 1) and the open policy.
    pub fn validate(&self) -> Result<(), BreakerConfigError> {
        check_count("threshold", self.threshold, 1, u32::MAX)?;
        self.open.validate()
    }

    /// A new closed breaker, with its concrete type (see
    /// [`BreakerPolicy::build`] for the boxed one).
    pub fn breaker(&self) -> StateMachine<ConsecutiveCount> {
        StateMachine::new(ConsecutiveCount::new(self.threshold), self.open)
    }
}

impl BreakerPolicy for ConsecutiveFailures {
    fn build(&self) -> Box<dyn Breaker> {
        Box::new(self.breaker())
    }
}

/// The trip condition of [`ConsecutiveFailures`]: a run of failures, kept
/// in one atomic counter so that a closed breaker counts without a lock (a
/// success while no failure is counted is a single load, no write).
#[derive(Debug)]
pub struct ConsecutiveCount {
    threshold: u32,
    failures: AtomicU32,
}

impl Clone for ConsecutiveCount {
    fn clone(&self) -> Self {
        Self {
            threshold: self.threshold,
            failures: AtomicU32::new(self.failures()),
        }
    }
}

impl PartialEq for ConsecutiveCount {
    fn eq(&self, other: &Self) -> bool {
        self.threshold == other.threshold && self.failures() == other.failures()
    }
}

impl Eq for ConsecutiveCount {}

impl ConsecutiveCount {
    /// Trips on the `threshold`-th consecutive failure (a threshold of 0
    /// counts as 1).
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold: threshold.max(1),
            failures: AtomicU32::new(0),
        }
    }

    /// The current run of failures.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }
}

impl TripCondition for ConsecutiveCount {
    fn on_success(&self) {
        // Read first: while calls succeed the counter's cache line stays
        // shared between cores instead of bouncing on every call.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    fn on_failure(&self) -> bool {
        let before = self
            .failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(1))
            })
            .unwrap_or(u32::MAX);
        before.saturating_add(1) >= self.threshold
    }

    fn reset(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }
}
