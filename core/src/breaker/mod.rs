//! Circuit breakers: one per instance, ejecting it from balancing while open.
//!
//! A [`Breaker`] sits below the balancer and acts through readiness: the
//! client asks [`Breaker::is_available`] when it builds the set of eligible
//! endpoints for a pick, claims a call slot with [`Breaker::try_acquire`]
//! (a half-open breaker admits only a few probes) and reports each admitted
//! call's outcome with [`Breaker::record`].
//!
//! Policies ([`BreakerPolicy`]) build one breaker per instance.
//! This module holds the trait and the shared state machine; the trip
//! conditions live in [`consecutive`] and [`error_rate`].

pub mod consecutive;
mod error;
pub mod error_rate;
pub mod state;
#[cfg(test)]
mod tests;
mod window;

pub use consecutive::{ConsecutiveCount, ConsecutiveFailures};
pub use error::BreakerConfigError;
pub use error_rate::{ErrorRate, WindowedErrorRate};
pub use state::{OpenPolicy, StateMachine, TripCondition};

use std::fmt;

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls flow; outcomes are counted.
    Closed,
    /// The instance is ejected until the open time has passed.
    Open,
    /// A limited number of probe calls decide between Closed and Open.
    HalfOpen,
}

impl BreakerState {
    /// Lower-case name for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
    /// The value of the breaker-state gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of state caused by a call or by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
}

/// A per-instance circuit breaker. Implementations are lock-light and cheap
/// to query: `is_available` runs for every endpoint considered by a pick.
pub trait Breaker: Send + Sync + fmt::Debug + 'static {
    /// Whether the instance may be picked now: closed, half-open with a free
    /// probe slot, or open with its open time elapsed (the next
    /// `try_acquire` moves it to half-open). Does not change state.
    fn is_available(&self) -> bool;
    /// Claims one call. Closed: always granted. Open past its open time:
    /// moves to half-open and grants a probe. Half-open: grants while probe
    /// slots remain. Returns the grant and the transition it caused, if any.
    fn try_acquire(&self) -> (bool, Option<Transition>);
    /// Records the outcome of a granted call; returns the transition it
    /// caused, if any (Closed -> Open is a trip).
    fn record(&self, success: bool) -> Option<Transition>;
    /// Gives back a granted slot whose call was never made (for example it
    /// was cancelled before sending): neither success nor failure.
    fn release(&self);
    /// The current state (an open breaker whose time has passed still
    /// reports `Open` until the next `try_acquire`).
    fn state(&self) -> BreakerState;
    /// How many times this breaker has tripped (Closed/HalfOpen -> Open).
    fn trips(&self) -> u64;
}

/// Builds one [`Breaker`] per instance.
pub trait BreakerPolicy: Send + Sync + fmt::Debug + 'static {
    /// A new breaker, closed.
    fn build(&self) -> Box<dyn Breaker>;
}
