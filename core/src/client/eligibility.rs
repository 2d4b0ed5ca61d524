//! Whether an endpoint may take a call: one state per endpoint, with every
//! cause that can keep it out of balancing as a field, and one client-wide
//! tally that counts each endpoint once.
//!
//! This is where to look for "why was this instance not picked".
//!
//! ```text
//!                 causes (any combination; each is set and cleared on its own)
//!   +----------------------------------------------------------------------------+
//!   | UNREACHABLE  hard evidence   connect refused / reset / timed out / TLS     |
//!   |                              failed; cleared by any answer (a reconnect    |
//!   |                              probe driven by a timer, a health check)      |
//!   | BREAKER      statistical     the breaker is open and the ejection cap let  |
//!   |                              it eject the instance (half-open with no free |
//!   |                              probe slot is read from the breaker itself)   |
//!   | (spared)     none            the breaker is open, but ejecting one more    |
//!   |                              instance would pass max_ejection_ratio of the |
//!   |                              reachable ones: it keeps taking calls         |
//!   | UNHEALTHY    statistical     grpc.health.v1 says NOT_SERVING               |
//!   | (disabled)   operator        the registry says so: filtered out of the     |
//!   |                              snapshot before it gets here, counted apart   |
//!   +----------------------------------------------------------------------------+
//!
//!   no cause ............................. eligible
//!   UNREACHABLE (whatever else) .......... never picked; counts as unreachable
//!   BREAKER and/or UNHEALTHY only ........ ejected (counted once), unless the
//!                                          client is in panic mode
//!
//!   ejection cap: a breaker that opens ejects its instance only while at most
//!   max_ejection_ratio of the reachable endpoints are ejected for statistical
//!   causes, the new one included; later ones are spared (first come, first
//!   ejected). Failing health is not capped: the instance itself says so.
//!
//!   panic mode, the safety net when the reachable set shrinks under the
//!   ejections already made, in two steps (the breaker still decides which calls are its
//!   probes; unreachable endpoints are never picked, panic or not):
//!     Panic::Breaker  more than max_ejection_ratio of the *reachable*
//!                     endpoints are ejected for statistical causes ->
//!                     open breakers are ignored, failing health is not
//!     Panic::All      more than max_ejection_ratio of the reachable
//!                     endpoints fail their health checks -> both are ignored
//!   (an instance that says it is not serving is the last to get traffic
//!   back; one whose breaker opened on a run of errors comes before it).
//!
//!   retired: the endpoint left the snapshot; it no longer counts anywhere.
//! ```
//!
//! Every change of cause is one atomic read-modify-write of the endpoint's
//! flags, and the tally moves by the difference between the old and the new
//! flags, so concurrent changes never count an endpoint twice.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use crate::breaker::Breaker;

/// The instance could not be connected to.
pub(crate) const UNREACHABLE: u8 = 1;
/// The instance's circuit breaker is open.
pub(crate) const BREAKER_OPEN: u8 = 2;
/// The instance fails its active health checks.
pub(crate) const UNHEALTHY: u8 = 4;
/// The instance's circuit breaker is open, but the ejection cap spared it:
/// it stays eligible (its calls carry no breaker permit).
pub(crate) const BREAKER_SPARED: u8 = 8;
/// The endpoint left the snapshot.
const RETIRED: u8 = 128;

const STATISTICAL: u8 = BREAKER_OPEN | UNHEALTHY;
/// The causes that keep an endpoint out of balancing.
const CAUSES: u8 = UNREACHABLE | BREAKER_OPEN | UNHEALTHY;

/// Which statistical causes a pick ignores (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Panic {
    /// Every cause counts.
    Off,
    /// Open breakers are ignored.
    Breaker,
    /// Open breakers and failing health are ignored.
    All,
}

impl Panic {
    /// The next, more permissive level.
    pub(crate) fn escalate(self) -> Option<Self> {
        match self {
            Self::Off => Some(Self::Breaker),
            Self::Breaker => Some(Self::All),
            Self::All => None,
        }
    }
}

/// The causes that keep one endpoint out of balancing.
#[derive(Debug, Default)]
pub(crate) struct EndpointState {
    flags: AtomicU8,
}

/// What a cause change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    /// The flags before.
    pub before: u8,
    /// The flags after.
    pub after: u8,
}

impl Change {
    /// Whether `cause` went from clear to set.
    pub(crate) fn raised(self, cause: u8) -> bool {
        self.before & cause == 0 && self.after & cause != 0
    }
    /// Whether `cause` went from set to clear.
    pub(crate) fn cleared(self, cause: u8) -> bool {
        self.before & cause != 0 && self.after & cause == 0
    }
}

impl EndpointState {
    /// Sets or clears `cause`, keeping `tally` in step. Returns the change
    /// (equal before and after when nothing changed).
    pub(crate) fn set(&self, cause: u8, on: bool, tally: &Tally) -> Change {
        let before = if on {
            self.flags.fetch_or(cause, Ordering::AcqRel)
        } else {
            self.flags.fetch_and(!cause, Ordering::AcqRel)
        };
        let after = if on { before | cause } else { before & !cause };
        if before & RETIRED == 0 && before != after {
            tally.apply(before, after);
        }
        Change { before, after }
    }

    /// Takes the endpoint out of the tally for good (it left the snapshot).
    pub(crate) fn retire(&self, tally: &Tally) {
        let before = self.flags.fetch_or(RETIRED, Ordering::AcqRel);
        if before & RETIRED == 0 {
            tally.apply(before, 0);
        }
    }

    /// Whether `cause` is set.
    pub(crate) fn has(&self, cause: u8) -> bool {
        self.flags.load(Ordering::Acquire) & cause != 0
    }

    /// Whether a first attempt may go to this endpoint. `panic` says which
    /// statistical causes to ignore; nothing ignores unreachability.
    #[inline]
    pub(crate) fn admits(&self, panic: Panic, breaker: &dyn Breaker) -> bool {
        let flags = self.flags.load(Ordering::Acquire);
        if flags & UNREACHABLE != 0 {
            return false;
        }
        match panic {
            Panic::Off => {
                flags & UNHEALTHY == 0 && (flags & BREAKER_SPARED != 0 || breaker.is_available())
            }
            Panic::Breaker => flags & UNHEALTHY == 0,
            Panic::All => true,
        }
    }

    /// The causes set now, as labels (for stats and error messages).
    pub(crate) fn causes(&self, breaker: &dyn Breaker) -> Vec<&'static str> {
        let flags = self.flags.load(Ordering::Acquire);
        let mut causes = Vec::new();
        if flags & UNREACHABLE != 0 {
            causes.push("unreachable");
        }
        if flags & BREAKER_OPEN != 0 {
            causes.push("breaker_open");
        } else if flags & BREAKER_SPARED == 0 && !breaker.is_available() {
            causes.push("breaker_half_open_busy");
        }
        if flags & UNHEALTHY != 0 {
            causes.push("unhealthy");
        }
        causes
    }
}

/// Client-wide counts over the endpoints of the current snapshot, each
/// endpoint counted once per line.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Endpoints with at least one cause.
    ejected: AtomicUsize,
    /// Endpoints that cannot be connected to.
    unreachable: AtomicUsize,
    /// Endpoints whose breaker is open.
    breaker_open: AtomicUsize,
    /// Endpoints failing health checks.
    unhealthy: AtomicUsize,
    /// Reachable endpoints ejected for a statistical cause (the panic rule's
    /// numerator).
    statistical: AtomicUsize,
    /// Reachable endpoints failing health checks (the second panic step's).
    unhealthy_reachable: AtomicUsize,
}

fn adjust(counter: &AtomicUsize, before: bool, after: bool) {
    match (before, after) {
        (false, true) => {
            counter.fetch_add(1, Ordering::AcqRel);
        }
        (true, false) => {
            let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
        }
        _ => {}
    }
}

impl Tally {
    fn apply(&self, before: u8, after: u8) {
        let has = |f: u8, c: u8| f & c != 0;
        adjust(&self.ejected, has(before, CAUSES), has(after, CAUSES));
        adjust(
            &self.unreachable,
            has(before, UNREACHABLE),
            has(after, UNREACHABLE),
        );
        adjust(
            &self.breaker_open,
            has(before, BREAKER_OPEN),
            has(after, BREAKER_OPEN),
        );
        adjust(
            &self.unhealthy,
            has(before, UNHEALTHY),
            has(after, UNHEALTHY),
        );
        let statistical = |f: u8| has(f, STATISTICAL) && !has(f, UNREACHABLE);
        adjust(&self.statistical, statistical(before), statistical(after));
        let sick = |f: u8| has(f, UNHEALTHY) && !has(f, UNREACHABLE);
        adjust(&self.unhealthy_reachable, sick(before), sick(after));
    }

    /// Endpoints that cannot be connected to.
    pub(crate) fn unreachable(&self) -> usize {
        self.unreachable.load(Ordering::Acquire)
    }

    /// Whether one more reachable endpoint may be ejected for a statistical
    /// cause without passing `ratio` of the reachable ones among `known`.
    pub(crate) fn may_eject(&self, known: usize, ratio: f64) -> bool {
        let reachable = known.saturating_sub(self.unreachable()) as f64;
        let after = self.statistical.load(Ordering::Acquire) + 1;
        after as f64 <= ratio * reachable
    }

    /// Which statistical ejections are to be ignored, given `known`
    /// endpoints and the maximum ejection `ratio` of the reachable ones.
    #[inline]
    pub(crate) fn panic(&self, known: usize, ratio: f64) -> Panic {
        let reachable = known.saturating_sub(self.unreachable()) as f64;
        let over = |n: usize| n > 0 && n as f64 > ratio * reachable;
        if !over(self.statistical.load(Ordering::Acquire)) {
            Panic::Off
        } else if over(self.unhealthy_reachable.load(Ordering::Acquire)) {
            Panic::All
        } else {
            Panic::Breaker
        }
    }

    /// The counts, for metrics and stats.
    pub(crate) fn counts(&self) -> Counts {
        let get = |c: &AtomicUsize| c.load(Ordering::Acquire);
        Counts {
            ejected: get(&self.ejected),
            unreachable: get(&self.unreachable),
            breaker_open: get(&self.breaker_open),
            unhealthy: get(&self.unhealthy),
        }
    }
}

/// A reading of the [`Tally`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counts {
    pub ejected: usize,
    pub unreachable: usize,
    pub breaker_open: usize,
    pub unhealthy: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::{BreakerPolicy, ConsecutiveFailures};

    #[test]
    fn an_endpoint_with_two_causes_is_ejected_once() {
        let tally = Tally::default();
        let a = EndpointState::default();
        let b = EndpointState::default();
        let c = EndpointState::default();
        a.set(BREAKER_OPEN, true, &tally);
        a.set(UNHEALTHY, true, &tally);
        let counts = tally.counts();
        assert_eq!(counts.ejected, 1);
        assert_eq!((counts.breaker_open, counts.unhealthy), (1, 1));
        // One of three ejected: no panic at the default ratio.
        assert_eq!(tally.panic(3, 0.5), Panic::Off);
        b.set(UNHEALTHY, true, &tally);
        assert_eq!(tally.panic(3, 0.5), Panic::All, "two of three unhealthy");
        assert_eq!(tally.panic(3, 1.0), Panic::Off, "ratio 1 never panics");
        b.set(UNHEALTHY, false, &tally);
        b.set(BREAKER_OPEN, true, &tally);
        assert_eq!(
            tally.panic(3, 0.5),
            Panic::Breaker,
            "two of three ejected, one of them unhealthy: breakers are ignored, health is not"
        );
        a.retire(&tally);
        a.set(UNREACHABLE, true, &tally);
        assert_eq!(
            tally.counts().ejected,
            1,
            "a retired endpoint counts nowhere"
        );
        let _ = c;
    }

    #[test]
    fn the_ejection_cap_spares_breakers_past_the_ratio() {
        let tally = Tally::default();
        let breaker = ConsecutiveFailures::default().build();
        let (a, b) = (EndpointState::default(), EndpointState::default());
        assert!(tally.may_eject(3, 0.5), "one of three");
        a.set(BREAKER_OPEN, true, &tally);
        assert!(!tally.may_eject(3, 0.5), "a second would be two of three");
        assert!(!tally.may_eject(1, 0.5), "a lone instance is never ejected");
        b.set(BREAKER_SPARED, true, &tally);
        // Spared: eligible although its breaker refuses permits.
        let open = ConsecutiveFailures::new(1).build();
        let p = open.try_acquire().0.unwrap();
        open.record(p, false);
        assert!(!open.is_available());
        assert!(b.admits(Panic::Off, &*open));
        assert!(b.causes(&*open).is_empty());
        assert!(!a.admits(Panic::Off, &*open));
        assert!(b.admits(Panic::Off, &*breaker));
        assert_eq!(tally.counts().ejected, 1);
        assert_eq!(tally.panic(3, 0.5), Panic::Off);
    }

    #[test]
    fn unreachable_endpoints_are_never_admitted_and_leave_the_panic_ratio() {
        let tally = Tally::default();
        let breaker = ConsecutiveFailures::default().build();
        let dead = EndpointState::default();
        let open = EndpointState::default();
        dead.set(UNREACHABLE, true, &tally);
        dead.set(BREAKER_OPEN, true, &tally);
        open.set(BREAKER_OPEN, true, &tally);
        assert!(
            !dead.admits(Panic::All, &*breaker),
            "not even in panic mode"
        );
        // Reachable: two; statistically ejected among them: one.
        assert_eq!(tally.panic(3, 0.5), Panic::Off);
        assert_eq!(tally.unreachable(), 1);
        let change = dead.set(UNREACHABLE, false, &tally);
        assert!(change.cleared(UNREACHABLE));
        assert_eq!(
            tally.panic(3, 0.5),
            Panic::Breaker,
            "now two of three reachable are ejected"
        );
        let sick = EndpointState::default();
        sick.set(UNHEALTHY, true, &tally);
        assert!(!sick.admits(Panic::Breaker, &*breaker));
        assert!(sick.admits(Panic::All, &*breaker));
        assert!(!dead.set(UNREACHABLE, false, &tally).cleared(UNREACHABLE));
    }
}
