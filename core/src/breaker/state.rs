//! The breaker state machine shared by every trip condition, and its
//! [`OpenPolicy`] (how long to stay open, how to probe, when to close).
//!
//! ```text
//!            trip condition met                   open time elapsed
//!  Closed ---------------------------> Open ------------------------> HalfOpen
//!    ^     (Permit::Closed outcomes)    ^    (expire(), driven by a     |  (Permit::Probe
//!    |                                  |     timer; no call needed)    |   outcomes only)
//!    |                                  |                               |
//!    |                                  |  success ratio can no longer  |
//!    |                                  +-------- be reached -----------+
//!    |                                                                  |
//!    |      success ratio reached (certain, even if the rest fail)      |
//!    +------------------------------------------------------------------+
//! ```
//!
//! Outcomes are reported with the [`Permit`] their call was admitted under:
//! closed-time outcomes count only while closed, probe outcomes only in
//! their own half-open period. Everything else is a late report and is
//! ignored, so a call the breaker never admitted cannot decide a probe.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::error::{check_count, check_duration, check_multiplier, check_ratio};
use super::{Breaker, BreakerConfigError, BreakerState, Permit, Transition};

/// Default time a breaker stays open after its first trip.
pub const DEFAULT_BASE_OPEN: Duration = Duration::from_secs(30);
/// Default growth of the open time when a breaker trips again soon after closing.
pub const DEFAULT_TRIP_MULTIPLIER: f64 = 2.0;
/// Default growth of the open time when the half-open probes fail.
pub const DEFAULT_PROBE_FAILURE_MULTIPLIER: f64 = 1.5;
/// Default cap of the open time, as a multiple of the base open time.
pub const DEFAULT_MAX_MULTIPLIER: f64 = 10.0;
/// Default number of half-open probe calls.
pub const DEFAULT_HALF_OPEN_CALLS: u32 = 3;
/// Default success ratio of the half-open probes that closes the breaker.
pub const DEFAULT_CLOSE_RATIO: f64 = 0.5;

/// How long a breaker stays open, and how it probes its way back to closed.
///
/// * The first trip opens the breaker for `base_open`.
/// * When the half-open probes fail, the breaker opens again for the last
///   open time × `probe_failure_multiplier`.
/// * When the breaker trips again while still on probation after closing
///   (closed for less than its last open time: the instance is flapping), it
///   opens for the last open time × `trip_multiplier`. Once it has stayed
///   closed that long, the open time is back to `base_open`.
/// * Open times never exceed `base_open × max_multiplier`.
/// * Half-open admits `half_open_calls` probes and decides as soon as the
///   verdict is certain: closed once at least `close_ratio` of the
///   `half_open_calls` probes have succeeded (whatever the others do), open
///   again as soon as that ratio can no longer be reached.
///
/// The defaults are the reference framework's: 30 s, ×2.0, ×1.5, 10×,
/// 3 probes, ratio 0.5.
///
/// ```
/// use std::time::Duration;
/// use fyerrpc::breaker::OpenPolicy;
///
/// let policy = OpenPolicy::default()
///     .with_base_open(Duration::from_secs(5))
///     .with_half_open_calls(5)
///     .with_close_ratio(0.8);
/// policy.validate()?;
/// assert_eq!(policy.max_open(), Duration::from_secs(50));
/// assert!(policy.with_trip_multiplier(0.5).validate().is_err());
/// # Ok::<(), fyerrpc::breaker::BreakerConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenPolicy {
    /// Open time of a first trip (default 30 s).
    pub base_open: Duration,
    /// Growth of the open time on a trip during probation (default 2.0).
    pub trip_multiplier: f64,
    /// Growth of the open time when the half-open probes fail (default 1.5).
    pub probe_failure_multiplier: f64,
    /// Cap of the open time as a multiple of `base_open` (default 10.0).
    pub max_multiplier: f64,
    /// Number of half-open probe calls (default 3).
    pub half_open_calls: u32,
    /// Success ratio of the probes that closes the breaker, in `(0, 1]`
    /// (default 0.5).
    pub close_ratio: f64,
}

impl Default for OpenPolicy {
    fn default() -> Self {
        Self {
            base_open: DEFAULT_BASE_OPEN,
            trip_multiplier: DEFAULT_TRIP_MULTIPLIER,
            probe_failure_multiplier: DEFAULT_PROBE_FAILURE_MULTIPLIER,
            max_multiplier: DEFAULT_MAX_MULTIPLIER,
            half_open_calls: DEFAULT_HALF_OPEN_CALLS,
            close_ratio: DEFAULT_CLOSE_RATIO,
        }
    }
}

impl OpenPolicy {
    /// Sets the open time of a first trip.
    pub fn with_base_open(mut self, base_open: Duration) -> Self {
        self.base_open = base_open;
        self
    }
    /// Sets the growth of the open time on a trip during probation.
    pub fn with_trip_multiplier(mut self, multiplier: f64) -> Self {
        self.trip_multiplier = multiplier;
        self
    }
    /// Sets the growth of the open time when the half-open probes fail.
    pub fn with_probe_failure_multiplier(mut self, multiplier: f64) -> Self {
        self.probe_failure_multiplier = multiplier;
        self
    }
    /// Sets the cap of the open time, as a multiple of the base open time.
    pub fn with_max_multiplier(mut self, multiplier: f64) -> Self {
        self.max_multiplier = multiplier;
        self
    }
    /// Sets the number of half-open probe calls.
    pub fn with_half_open_calls(mut self, calls: u32) -> Self {
        self.half_open_calls = calls;
        self
    }
    /// Sets the success ratio of the probes that closes the breaker.
    pub fn with_close_ratio(mut self, ratio: f64) -> Self {
        self.close_ratio = ratio;
        self
    }

    /// Checks every field: multipliers finite and `>= 1`, `close_ratio` in
    /// `(0, 1]`, `half_open_calls >= 1`, `base_open > 0`.
    pub fn validate(&self) -> Result<(), BreakerConfigError> {
        check_duration("base_open", self.base_open)?;
        check_multiplier("trip_multiplier", self.trip_multiplier)?;
        check_multiplier("probe_failure_multiplier", self.probe_failure_multiplier)?;
        check_multiplier("max_multiplier", self.max_multiplier)?;
        check_count("half_open_calls", self.half_open_calls, 1, u32::MAX)?;
        check_ratio("close_ratio", self.close_ratio)
    }

    /// The longest open time: `base_open × max_multiplier`.
    pub fn max_open(&self) -> Duration {
        scale(self.base_open, self.max_multiplier, Duration::MAX)
    }

    /// The policy with every field that fails validation replaced by its
    /// default, so that a breaker built from an unchecked policy still
    /// behaves sensibly (and never panics).
    pub(crate) fn sanitized(self) -> Self {
        let d = Self::default();
        let pick = |ok: bool, value: f64, default: f64| if ok { value } else { default };
        Self {
            base_open: if self.base_open.is_zero() {
                d.base_open
            } else {
                self.base_open
            },
            trip_multiplier: pick(
                check_multiplier("", self.trip_multiplier).is_ok(),
                self.trip_multiplier,
                d.trip_multiplier,
            ),
            probe_failure_multiplier: pick(
                check_multiplier("", self.probe_failure_multiplier).is_ok(),
                self.probe_failure_multiplier,
                d.probe_failure_multiplier,
            ),
            max_multiplier: pick(
                check_multiplier("", self.max_multiplier).is_ok(),
                self.max_multiplier,
                d.max_multiplier,
            ),
            half_open_calls: if self.half_open_calls == 0 {
                d.half_open_calls
            } else {
                self.half_open_calls
            },
            close_ratio: pick(
                check_ratio("", self.close_ratio).is_ok(),
                self.close_ratio,
                d.close_ratio,
            ),
        }
    }

    /// Whether the half-open probes have decided: `Some(true)` to close,
    /// `Some(false)` to open again, `None` while undecided.
    fn verdict(&self, successes: u32, failures: u32) -> Option<bool> {
        let calls = f64::from(self.half_open_calls);
        let outstanding = self
            .half_open_calls
            .saturating_sub(successes.saturating_add(failures));
        let worst = f64::from(successes) / calls;
        let best = f64::from(successes.saturating_add(outstanding)) / calls;
        if worst >= self.close_ratio {
            Some(true)
        } else if best < self.close_ratio {
            Some(false)
        } else {
            None
        }
    }
}

/// `d × factor`, at most `cap`; never panics (a non-finite or negative
/// product gives `cap`).
fn scale(d: Duration, factor: f64, cap: Duration) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).map_or(cap, |d| d.min(cap))
}

/// What makes a closed breaker trip. The [`StateMachine`] feeds it the
/// outcome of every call made while closed, and resets it on every state
/// change.
///
/// The methods take `&self` and are called without the breaker's lock, so
/// that a condition can count on atomics and keep a closed breaker's hot
/// path free of locks ([`ConsecutiveCount`](super::ConsecutiveCount) is one
/// atomic counter); a condition with more state keeps its own lock
/// ([`WindowedErrorRate`](super::WindowedErrorRate) does). Outcomes may
/// arrive concurrently, and a report racing a state change may land just
/// after a reset: a condition only has to stay consistent, not exact, then.
///
/// ```
/// use fyerrpc::breaker::{Breaker, BreakerState, OpenPolicy, Permit, StateMachine, TripCondition};
///
/// /// Trips on the first failure.
/// #[derive(Debug, Default)]
/// struct AnyFailure;
///
/// impl TripCondition for AnyFailure {
///     fn on_success(&self) {}
///     fn on_failure(&self) -> bool { true }
///     fn reset(&self) {}
/// }
///
/// let breaker = StateMachine::new(AnyFailure, OpenPolicy::default());
/// breaker.record(Permit::Closed, true);
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// breaker.record(Permit::Closed, false);
/// assert_eq!(breaker.state(), BreakerState::Open);
/// ```
pub trait TripCondition: Send + Sync + fmt::Debug + 'static {
    /// A call made while closed succeeded.
    fn on_success(&self);
    /// A call made while closed failed; returns whether the breaker trips.
    fn on_failure(&self) -> bool;
    /// Forgets everything counted so far.
    fn reset(&self);
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// The authoritative state, behind the mutex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        period: u32,
        granted: u32,
        successes: u32,
        failures: u32,
    },
}

impl Phase {
    fn state(self) -> BreakerState {
        match self {
            Self::Closed => BreakerState::Closed,
            Self::Open { .. } => BreakerState::Open,
            Self::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// The open time of the current or last open period.
    open_for: Duration,
    /// When the breaker last closed after being open.
    closed_at: Option<Instant>,
    /// Number of the last half-open period (probe permits carry it).
    period: u32,
}

/// A [`Breaker`] over any [`TripCondition`], with the open / half-open
/// behaviour of an [`OpenPolicy`].
///
/// The hot paths are lock-free: [`is_available`](Breaker::is_available)
/// reads atomics only (no clock), [`try_acquire`](Breaker::try_acquire) on a
/// closed breaker is a single atomic load, and recording a closed-time
/// outcome is an atomic load plus whatever the [`TripCondition`] does (for
/// [`ConsecutiveCount`](super::ConsecutiveCount), a success is one atomic
/// load while no failure is counted). Half-open probes and every state
/// change take a short mutex. Time is [`tokio::time::Instant`], so tests can
/// pause and advance it.
///
/// ```
/// use std::time::Duration;
/// use fyerrpc::breaker::{Breaker, BreakerState, ConsecutiveFailures, OpenPolicy, Permit};
///
/// let breaker = ConsecutiveFailures::new(2)
///     .with_open(OpenPolicy::default().with_base_open(Duration::from_secs(10)))
///     .breaker();
/// assert_eq!(breaker.try_acquire(), (Some(Permit::Closed), None));
/// breaker.record(Permit::Closed, false);
/// let trip = breaker.record(Permit::Closed, false).expect("the second failure trips");
/// assert_eq!((trip.from, trip.to), (BreakerState::Closed, BreakerState::Open));
/// assert!(!breaker.is_available());
/// assert_eq!(breaker.open_duration(), Duration::from_secs(10));
/// assert_eq!(breaker.trips(), 1);
/// ```
#[derive(Debug)]
pub struct StateMachine<T> {
    policy: OpenPolicy,
    /// Mirror of `inner.phase` for lock-free reads.
    state: AtomicU8,
    /// Mirror of the free half-open probe slots.
    probes_free: AtomicU32,
    trips: AtomicU64,
    /// Fed without the lock (see [`TripCondition`]).
    condition: T,
    inner: Mutex<Inner>,
}

impl<T: TripCondition> StateMachine<T> {
    /// A closed breaker. A policy that fails [`OpenPolicy::validate`] is used
    /// with its invalid fields replaced by their defaults.
    pub fn new(condition: T, policy: OpenPolicy) -> Self {
        let policy = policy.sanitized();
        Self {
            policy,
            state: AtomicU8::new(CLOSED),
            probes_free: AtomicU32::new(0),
            trips: AtomicU64::new(0),
            condition,
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                open_for: policy.base_open,
                closed_at: None,
                period: 0,
            }),
        }
    }

    /// The open policy in use.
    pub fn policy(&self) -> &OpenPolicy {
        &self.policy
    }

    /// The open time of the current open period, or of the last one (the
    /// base open time before the first trip).
    pub fn open_duration(&self) -> Duration {
        self.lock().open_for
    }

    /// Runs `f` on the trip condition (for example to read its counts).
    pub fn with_condition<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.condition)
    }

    /// `(granted, successes, failures)` of the half-open period, if any.
    #[cfg(test)]
    pub(super) fn probes(&self) -> Option<(u32, u32, u32)> {
        match self.lock().phase {
            Phase::HalfOpen {
                granted,
                successes,
                failures,
                ..
            } => Some((granted, successes, failures)),
            _ => None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies the authoritative phase into the lock-free mirrors. The state
    /// is stored last (release) so that a reader seeing it sees the rest.
    fn publish(&self, phase: Phase) {
        let state = match phase {
            Phase::Closed => CLOSED,
            Phase::Open { .. } => OPEN,
            Phase::HalfOpen { granted, .. } => {
                let free = self.policy.half_open_calls.saturating_sub(granted);
                self.probes_free.store(free, Ordering::Relaxed);
                HALF_OPEN
            }
        };
        self.state.store(state, Ordering::Release);
    }

    /// Moves to `to`, publishing it, and returns the transition.
    fn enter(&self, inner: &mut Inner, to: Phase) -> Option<Transition> {
        let from = inner.phase.state();
        inner.phase = to;
        self.publish(to);
        Some(Transition {
            from,
            to: to.state(),
        })
    }

    /// Opens the breaker at `now`, from closed (a trip) or half-open (failed
    /// probes), growing the open time as the policy says.
    fn open(&self, inner: &mut Inner, now: Instant) -> Option<Transition> {
        let p = &self.policy;
        inner.open_for = match inner.phase {
            Phase::HalfOpen { .. } => {
                scale(inner.open_for, p.probe_failure_multiplier, p.max_open())
            }
            _ if self.on_probation(inner, now) => {
                scale(inner.open_for, p.trip_multiplier, p.max_open())
            }
            _ => p.base_open.min(p.max_open()),
        };
        let until = now
            .checked_add(inner.open_for)
            .unwrap_or_else(|| far_future(now));
        self.condition.reset();
        self.trips.fetch_add(1, Ordering::Relaxed);
        self.enter(inner, Phase::Open { until })
    }

    /// Whether a closed breaker is still on probation: it closed less than
    /// its last open time ago.
    fn on_probation(&self, inner: &Inner, now: Instant) -> bool {
        inner
            .closed_at
            .is_some_and(|at| now.saturating_duration_since(at) < inner.open_for)
    }

    fn close(&self, inner: &mut Inner, now: Instant) -> Option<Transition> {
        inner.closed_at = Some(now);
        self.condition.reset();
        self.enter(inner, Phase::Closed)
    }

    /// Counts one half-open probe outcome and applies the verdict, if any.
    fn record_probe(&self, inner: &mut Inner, period: u32, success: bool) -> Option<Transition> {
        let Phase::HalfOpen {
            period: current,
            granted,
            mut successes,
            mut failures,
        } = inner.phase
        else {
            return None;
        };
        if current != period || successes.saturating_add(failures) >= granted {
            // A probe of an earlier half-open period.
            return None;
        }
        if success {
            successes += 1;
        } else {
            failures += 1;
        }
        inner.phase = Phase::HalfOpen {
            period,
            granted,
            successes,
            failures,
        };
        let now = Instant::now();
        match self.policy.verdict(successes, failures) {
            Some(true) => self.close(inner, now),
            Some(false) => self.open(inner, now),
            None => None,
        }
    }

    /// Counts an outcome of a call admitted while closed. Takes the lock
    /// only when the condition says to trip.
    fn record_closed(&self, success: bool) -> Option<Transition> {
        if self.state.load(Ordering::Acquire) != CLOSED {
            // A late report: the call was admitted before a trip.
            return None;
        }
        if success {
            self.condition.on_success();
            return None;
        }
        if !self.condition.on_failure() {
            return None;
        }
        let mut inner = self.lock();
        // Another report may have tripped the breaker meanwhile.
        if inner.phase == Phase::Closed {
            self.open(&mut inner, Instant::now())
        } else {
            None
        }
    }
}

/// A time that will not come: the open-until of an open time too long to
/// represent.
fn far_future(now: Instant) -> Instant {
    const THIRTY_YEARS: Duration = Duration::from_secs(86_400 * 365 * 30);
    now.checked_add(THIRTY_YEARS).unwrap_or(now)
}

impl<T: TripCondition> StateMachine<T> {
    /// Moves an open phase whose time has passed to half-open.
    fn expire_locked(&self, inner: &mut Inner, now: Instant) -> Option<Transition> {
        match inner.phase {
            Phase::Open { until } if now >= until => {
                inner.period = inner.period.wrapping_add(1);
                let probing = Phase::HalfOpen {
                    period: inner.period,
                    granted: 0,
                    successes: 0,
                    failures: 0,
                };
                self.enter(inner, probing)
            }
            _ => None,
        }
    }
}

impl<T: TripCondition> Breaker for StateMachine<T> {
    fn is_available(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => false,
            _ => self.probes_free.load(Ordering::Relaxed) > 0,
        }
    }

    fn try_acquire(&self) -> (Option<Permit>, Option<Transition>) {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return (Some(Permit::Closed), None);
        }
        let mut inner = self.lock();
        let transition = if matches!(inner.phase, Phase::Open { .. }) {
            match self.expire_locked(&mut inner, Instant::now()) {
                Some(t) => Some(t),
                None => return (None, None),
            }
        } else {
            None
        };
        let permit = match inner.phase {
            Phase::Closed => Some(Permit::Closed),
            Phase::HalfOpen {
                period,
                granted,
                successes,
                failures,
            } if granted < self.policy.half_open_calls => {
                let phase = Phase::HalfOpen {
                    period,
                    granted: granted + 1,
                    successes,
                    failures,
                };
                inner.phase = phase;
                self.publish(phase);
                Some(Permit::Probe { period })
            }
            _ => None,
        };
        (permit, transition)
    }

    fn record(&self, permit: Permit, success: bool) -> Option<Transition> {
        match permit {
            Permit::Closed => self.record_closed(success),
            Permit::Probe { period } => {
                let mut inner = self.lock();
                match inner.phase {
                    Phase::HalfOpen { .. } => self.record_probe(&mut inner, period, success),
                    // A probe of an earlier period.
                    _ => None,
                }
            }
        }
    }

    fn release(&self, permit: Permit) {
        let Permit::Probe { period } = permit else {
            return;
        };
        let mut inner = self.lock();
        if let Phase::HalfOpen {
            period: current,
            granted,
            successes,
            failures,
        } = inner.phase
        {
            if current == period && granted > successes.saturating_add(failures) {
                let phase = Phase::HalfOpen {
                    period,
                    granted: granted - 1,
                    successes,
                    failures,
                };
                inner.phase = phase;
                self.publish(phase);
            }
        }
    }

    fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    fn open_remaining(&self) -> Option<Duration> {
        if self.state.load(Ordering::Acquire) != OPEN {
            return None;
        }
        match self.lock().phase {
            Phase::Open { until } => Some(until.saturating_duration_since(Instant::now())),
            _ => None,
        }
    }

    fn expire(&self) -> Option<Transition> {
        if self.state.load(Ordering::Acquire) != OPEN {
            return None;
        }
        let mut inner = self.lock();
        self.expire_locked(&mut inner, Instant::now())
    }
}
