//! Circuit breakers: one per instance, ejecting it from balancing while open.
//!
//! A [`Breaker`] sits below the balancer and acts through eligibility: the
//! client asks [`Breaker::is_available`] when it decides which endpoints a
//! pick may return, claims a [`Permit`] with [`Breaker::try_acquire`] (a
//! half-open breaker admits only a few probes) and reports each admitted
//! call's outcome with [`Breaker::record`] and that permit. An open breaker
//! is moved on by time: its owner calls [`Breaker::expire`] once
//! [`Breaker::open_remaining`] has elapsed.
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
use std::time::Duration;

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

/// What [`Breaker::try_acquire`] granted a call: how its outcome counts.
///
/// Only the holder of a permit reports an outcome, with that permit, so a
/// breaker can tell a probe's verdict from a late report of a call admitted
/// before it tripped, and from a call it never admitted (the client's panic
/// mode sends calls past open breakers without a permit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permit {
    /// Admitted while closed: the outcome feeds the trip condition if the
    /// breaker is still closed when it is reported, and is ignored otherwise.
    Closed,
    /// One probe slot of a half-open period (numbered, so that a report that
    /// arrives after the period ended is ignored).
    Probe {
        /// The half-open period the slot belongs to.
        period: u32,
    },
}

/// A per-instance circuit breaker. Implementations are lock-light and cheap
/// to query: `is_available` runs for every endpoint considered by a pick.
///
/// Time moves an open breaker, not the next call: when it trips, its owner
/// (the client) waits [`open_remaining`](Breaker::open_remaining) and then
/// calls [`expire`](Breaker::expire), which moves it to half-open whether or
/// not any call is being made.
pub trait Breaker: Send + Sync + fmt::Debug + 'static {
    /// Whether the instance may be picked now: closed, or half-open with a
    /// free probe slot. An open breaker is not available, even past its open
    /// time, until [`expire`](Breaker::expire) has moved it to half-open.
    /// Reads no clock and changes no state.
    fn is_available(&self) -> bool;
    /// Claims one call. Closed: always granted ([`Permit::Closed`]).
    /// Half-open: a [`Permit::Probe`] while probe slots remain. Open: denied
    /// (an open breaker past its open time first moves to half-open).
    /// Returns the permit, if any, and the transition it caused, if any.
    fn try_acquire(&self) -> (Option<Permit>, Option<Transition>);
    /// Records the outcome of a call made under `permit`; returns the
    /// transition it caused, if any (Closed -> Open is a trip). Reports
    /// that no longer match the state (a closed-time call ending after the
    /// trip, a probe of an earlier half-open period) are ignored.
    fn record(&self, permit: Permit, success: bool) -> Option<Transition>;
    /// Gives back a permit whose call was never made (for example it was
    /// cancelled before sending): neither success nor failure. A probe slot
    /// becomes free again.
    fn release(&self, permit: Permit);
    /// The current state.
    fn state(&self) -> BreakerState;
    /// How many times this breaker has tripped (Closed/HalfOpen -> Open).
    fn trips(&self) -> u64;
    /// While open: the time left until the open time has passed (zero once
    /// it has). `None` when not open.
    fn open_remaining(&self) -> Option<Duration>;
    /// Moves an open breaker whose open time has passed to half-open and
    /// returns that transition; does nothing (and returns `None`) otherwise.
    fn expire(&self) -> Option<Transition>;
}

/// Builds one [`Breaker`] per instance.
pub trait BreakerPolicy: Send + Sync + fmt::Debug + 'static {
    /// A new breaker, closed.
    fn build(&self) -> Box<dyn Breaker>;
}
