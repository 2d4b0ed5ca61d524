//! Behaviour of the breakers under paused tokio time.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::advance;

use super::*;

const BASE: Duration = Duration::from_secs(30);
const MS: Duration = Duration::from_millis(1);

fn t(from: BreakerState, to: BreakerState) -> Option<Transition> {
    Some(Transition { from, to })
}

use BreakerState::{Closed, HalfOpen, Open};

const CLOSED: Permit = Permit::Closed;

fn consecutive(threshold: u32) -> StateMachine<ConsecutiveCount> {
    ConsecutiveFailures::new(threshold).breaker()
}

/// Claims a permit, asserting one is granted.
fn acquire(b: &(impl Breaker + ?Sized)) -> Permit {
    b.try_acquire().0.expect("a permit")
}

/// Fails `n` calls in a row; returns the last transition.
fn fail(b: &(impl Breaker + ?Sized), n: u32) -> Option<Transition> {
    (0..n).fold(None, |_, _| {
        let p = acquire(b);
        b.record(p, false)
    })
}

/// Waits out the open time, expires the breaker, and claims one probe.
async fn to_half_open(b: &StateMachine<ConsecutiveCount>) -> Permit {
    advance(b.open_duration()).await;
    assert_eq!(b.open_remaining(), Some(Duration::ZERO));
    assert_eq!(b.expire(), t(Open, HalfOpen));
    let p = acquire(b);
    assert!(matches!(p, Permit::Probe { .. }), "{p:?}");
    p
}

/// From open: waits, then closes with successful probes (2 of 3 suffice).
async fn close_via_probes(b: &StateMachine<ConsecutiveCount>) {
    let p = to_half_open(b).await;
    assert_eq!(b.record(p, true), None);
    let p = acquire(b);
    assert_eq!(b.record(p, true), t(HalfOpen, Closed));
}

#[tokio::test(start_paused = true)]
async fn consecutive_trips_exactly_at_the_threshold() {
    let b = consecutive(5);
    assert_eq!(fail(&b, 4), None);
    assert_eq!(b.state(), Closed);
    assert_eq!(b.record(CLOSED, true), None, "a success resets the run");
    assert_eq!(fail(&b, 4), None);
    assert_eq!(b.state(), Closed);
    assert_eq!(fail(&b, 1), t(Closed, Open));
    assert_eq!(b.state(), Open);
    assert_eq!(b.trips(), 1);
}

#[tokio::test(start_paused = true)]
async fn time_moves_open_to_half_open_then_the_probes_are_admitted() {
    let b = consecutive(1);
    fail(&b, 1);
    assert!(!b.is_available());
    assert_eq!(b.try_acquire(), (None, None));
    assert_eq!(b.open_remaining(), Some(BASE));
    advance(BASE - MS).await;
    assert_eq!(b.expire(), None, "not yet");
    assert_eq!(b.open_remaining(), Some(MS));
    assert_eq!(b.try_acquire(), (None, None));
    advance(MS).await;
    assert!(!b.is_available(), "no clock read: open until expired");
    assert_eq!(b.expire(), t(Open, HalfOpen));
    assert_eq!(b.expire(), None, "once");
    assert_eq!(b.open_remaining(), None);
    assert_eq!(b.state(), HalfOpen);
    assert!(b.is_available());
    for _ in 0..3 {
        assert!(matches!(acquire(&b), Permit::Probe { .. }));
    }
    assert!(!b.is_available(), "all 3 probes granted");
    assert_eq!(b.try_acquire(), (None, None));
}

#[tokio::test(start_paused = true)]
async fn a_late_try_acquire_also_expires_an_open_breaker() {
    let b = consecutive(1);
    fail(&b, 1);
    advance(BASE).await;
    let (permit, transition) = b.try_acquire();
    assert!(matches!(permit, Some(Permit::Probe { .. })));
    assert_eq!(transition, t(Open, HalfOpen));
}

#[tokio::test(start_paused = true)]
async fn successful_probes_close_and_the_open_time_resets() {
    let b = consecutive(1);
    fail(&b, 1);
    close_via_probes(&b).await;
    assert_eq!(b.state(), Closed);
    assert!(b.is_available());
    assert_eq!(b.try_acquire(), (Some(CLOSED), None));
    // A flapping instance trips again at once: x2.
    fail(&b, 1);
    assert_eq!(b.open_duration(), BASE * 2);
    close_via_probes(&b).await;
    // Closed for as long as it was last open: back to the base open time.
    advance(BASE * 2).await;
    fail(&b, 1);
    assert_eq!(b.open_duration(), BASE);
    assert_eq!(b.trips(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_failed_half_open_reopens_for_one_and_a_half_times_longer() {
    let b = consecutive(1);
    fail(&b, 1);
    let first = to_half_open(&b).await;
    assert_eq!(
        b.record(first, false),
        None,
        "2 successes of 3 still possible"
    );
    let second = acquire(&b);
    let third = acquire(&b);
    assert_eq!(
        b.record(second, false),
        t(HalfOpen, Open),
        "ratio unreachable"
    );
    assert_eq!(b.open_duration(), BASE.mul_f64(1.5));
    assert_eq!(b.trips(), 2);
    advance(BASE.mul_f64(1.5) - MS).await;
    assert_eq!(b.expire(), None);
    advance(MS).await;
    assert_eq!(b.expire(), t(Open, HalfOpen));
    // The third probe of the earlier period reports late: not counted.
    assert_eq!(b.record(third, true), None);
    assert_eq!(b.probes(), Some((0, 0, 0)));
}

#[tokio::test(start_paused = true)]
async fn the_verdict_comes_as_soon_as_it_is_certain() {
    let b = consecutive(1);
    fail(&b, 1);
    let p1 = to_half_open(&b).await;
    let p2 = acquire(&b);
    let p3 = acquire(&b);
    assert_eq!(b.record(p1, true), None, "1 of 3: undecided");
    assert_eq!(
        b.record(p2, false),
        None,
        "1 of 3, one outstanding: undecided"
    );
    assert_eq!(b.record(p3, true), t(HalfOpen, Closed), "2 of 3 >= 0.5");

    // Certain before every probe has reported: 2 successes of 3 close it.
    fail(&b, 1);
    let p1 = to_half_open(&b).await;
    let p2 = acquire(&b);
    let _p3 = acquire(&b);
    assert_eq!(b.record(p1, true), None);
    assert_eq!(b.record(p2, true), t(HalfOpen, Closed));

    let strict = ConsecutiveFailures::new(1)
        .with_open(
            OpenPolicy::default()
                .with_half_open_calls(5)
                .with_close_ratio(0.8),
        )
        .breaker();
    fail(&strict, 1);
    advance(BASE).await;
    strict.expire();
    let probes: Vec<Permit> = (0..5).map(|_| acquire(&strict)).collect();
    assert_eq!(
        strict.record(probes[0], false),
        None,
        "4 of 5 still possible"
    );
    assert_eq!(strict.record(probes[1], false), t(HalfOpen, Open));
}

#[tokio::test(start_paused = true)]
async fn only_probe_permits_decide_a_half_open_breaker() {
    let b = consecutive(1);
    let before_trip = acquire(&b);
    fail(&b, 1);
    // A call admitted while closed ends while open: ignored.
    assert_eq!(b.record(before_trip, false), None);
    let probe = to_half_open(&b).await;
    // ... and while half-open: still not a probe.
    for _ in 0..3 {
        assert_eq!(b.record(before_trip, true), None);
    }
    assert_eq!(b.probes(), Some((1, 0, 0)));
    assert_eq!(b.state(), HalfOpen);
    assert_eq!(b.record(probe, true), None);
    assert_eq!(b.probes(), Some((1, 1, 0)));
}

#[tokio::test(start_paused = true)]
async fn repeated_trips_grow_twofold_up_to_ten_times() {
    let b = consecutive(1);
    fail(&b, 1);
    let mut expected = vec![BASE];
    let mut seen = vec![b.open_duration()];
    for _ in 0..5 {
        close_via_probes(&b).await;
        fail(&b, 1);
        seen.push(b.open_duration());
        expected.push((*expected.last().unwrap() * 2).min(BASE * 10));
    }
    assert_eq!(seen, expected);
    assert_eq!(seen.last(), Some(&(BASE * 10)));
    assert_eq!(b.trips(), 6);
}

#[tokio::test(start_paused = true)]
async fn failed_probes_grow_the_open_time_up_to_the_cap() {
    let b = consecutive(1);
    fail(&b, 1);
    let mut open = BASE;
    for _ in 0..8 {
        let p1 = to_half_open(&b).await;
        let p2 = acquire(&b);
        b.record(p1, false);
        assert_eq!(b.record(p2, false), t(HalfOpen, Open));
        open = open.mul_f64(1.5).min(BASE * 10);
        assert_eq!(b.open_duration(), open);
    }
    assert_eq!(open, BASE * 10);
}

#[tokio::test(start_paused = true)]
async fn release_frees_a_probe_slot() {
    let b = consecutive(1);
    b.release(CLOSED); // closed: nothing to give back
    assert_eq!(b.try_acquire(), (Some(CLOSED), None));
    fail(&b, 1);
    let p1 = to_half_open(&b).await;
    let p2 = acquire(&b);
    let p3 = acquire(&b);
    assert!(!b.is_available());
    b.release(p3);
    assert!(b.is_available());
    let p3 = acquire(&b);
    assert_eq!(b.try_acquire(), (None, None));
    assert_eq!(b.record(p1, false), None);
    // Released permits of another period free nothing.
    b.release(Permit::Probe { period: 99 });
    assert!(!b.is_available());
    b.release(p2);
    assert!(b.is_available());
    let p2 = acquire(&b);
    assert!(!b.is_available());
    assert_eq!(b.record(p2, true), None);
    assert_eq!(b.record(p3, true), t(HalfOpen, Closed));
}

#[tokio::test(start_paused = true)]
async fn policies_build_closed_boxed_breakers() {
    let policies: Vec<Arc<dyn BreakerPolicy>> = vec![
        Arc::new(ConsecutiveFailures::default()),
        Arc::new(ErrorRate::default()),
    ];
    for p in policies {
        let b = p.build();
        assert_eq!(b.state(), Closed);
        assert!(b.is_available());
        assert_eq!(b.trips(), 0);
        assert_eq!(fail(&*b, 4), None);
    }
}

fn error_rate() -> StateMachine<WindowedErrorRate> {
    ErrorRate::default().breaker()
}

#[tokio::test(start_paused = true)]
async fn error_rate_does_not_trip_below_min_requests() {
    let b = error_rate();
    assert_eq!(fail(&b, 19), None);
    assert_eq!(b.state(), Closed);
    assert_eq!(fail(&b, 1), t(Closed, Open));
    assert_eq!(b.trips(), 1);
}

#[tokio::test(start_paused = true)]
async fn error_rate_trips_at_the_ratio() {
    let b = error_rate();
    for _ in 0..11 {
        b.record(CLOSED, true);
    }
    assert_eq!(fail(&b, 9), None, "9 of 20");
    assert_eq!(fail(&b, 1), None, "10 of 21");
    assert_eq!(fail(&b, 1), t(Closed, Open), "11 of 22 = 0.5");
}

#[tokio::test(start_paused = true)]
async fn error_rate_forgets_old_buckets_as_the_window_slides() {
    let b = error_rate();
    fail(&b, 15);
    advance(Duration::from_secs(10)).await;
    assert_eq!(fail(&b, 10), None, "the first 15 left the window");
    assert_eq!(totals(&b), (10, 10), "only the recent bucket counts");
    advance(Duration::from_secs(5)).await;
    assert_eq!(fail(&b, 9), None, "19 in the window");
    assert_eq!(fail(&b, 1), t(Closed, Open), "20 in the window");
}

#[tokio::test(start_paused = true)]
async fn error_rate_starts_afresh_after_closing() {
    let policy = ErrorRate::new(0.5, 4);
    let b = policy.breaker();
    fail(&b, 4);
    assert_eq!(b.state(), Open);
    advance(BASE).await;
    b.expire();
    let probes: Vec<Permit> = (0..3).map(|_| acquire(&b)).collect();
    assert_eq!(b.record(probes[0], false), None);
    assert_eq!(b.record(probes[1], true), None);
    assert_eq!(b.record(probes[2], true), t(HalfOpen, Closed));
    assert_eq!(totals(&b), (0, 0));
    assert_eq!(fail(&b, 3), None);
}

fn totals(b: &StateMachine<WindowedErrorRate>) -> (u64, u64) {
    b.with_condition(WindowedErrorRate::totals)
}

#[test]
fn open_policy_validation() {
    let ok = OpenPolicy::default();
    assert_eq!(ok.validate(), Ok(()));
    let bad = [
        (ok.with_base_open(Duration::ZERO), "base_open"),
        (ok.with_trip_multiplier(0.9), "trip_multiplier"),
        (ok.with_trip_multiplier(f64::NAN), "trip_multiplier"),
        (
            ok.with_probe_failure_multiplier(-1.0),
            "probe_failure_multiplier",
        ),
        (ok.with_max_multiplier(f64::INFINITY), "max_multiplier"),
        (ok.with_half_open_calls(0), "half_open_calls"),
        (ok.with_close_ratio(0.0), "close_ratio"),
        (ok.with_close_ratio(1.01), "close_ratio"),
        (ok.with_close_ratio(f64::NAN), "close_ratio"),
    ];
    for (policy, field) in bad {
        let err = policy.validate().unwrap_err();
        assert!(err.to_string().starts_with(field), "{err}");
    }
    assert_eq!(ok.with_close_ratio(1.0).validate(), Ok(()));
    assert_eq!(
        ConsecutiveFailures::new(0).validate(),
        Err(BreakerConfigError::Count {
            field: "threshold",
            value: 0,
            min: 1,
            max: u64::from(u32::MAX),
        })
    );
}

#[test]
fn error_rate_validation() {
    let ok = ErrorRate::default();
    assert_eq!(ok.validate(), Ok(()));
    for bad in [
        ok.with_window(Duration::ZERO),
        ok.with_buckets(0),
        ok.with_buckets(error_rate::MAX_BUCKETS + 1),
        ok.with_min_requests(0),
        ok.with_threshold(0.0),
        ok.with_threshold(2.0),
        ok.with_open(OpenPolicy::default().with_half_open_calls(0)),
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn unchecked_policies_fall_back_to_defaults_without_panicking() {
    let wild = OpenPolicy {
        base_open: Duration::ZERO,
        trip_multiplier: f64::NAN,
        probe_failure_multiplier: -3.0,
        max_multiplier: 0.0,
        half_open_calls: 0,
        close_ratio: 7.0,
    };
    let b = ConsecutiveFailures::new(0).with_open(wild).breaker();
    assert_eq!(*b.policy(), OpenPolicy::default());
    assert_eq!(fail(&b, 1), t(Closed, Open));

    let huge = OpenPolicy::default()
        .with_base_open(Duration::MAX)
        .with_max_multiplier(f64::MAX);
    let b = ConsecutiveFailures::new(1).with_open(huge).breaker();
    fail(&b, 1);
    assert!(!b.is_available());
    assert_eq!(b.try_acquire(), (None, None));
    assert_eq!(b.expire(), None);

    let b = ErrorRate::new(f64::NAN, 0)
        .with_buckets(0)
        .with_window(Duration::ZERO)
        .breaker();
    assert_eq!(fail(&b, 1), t(Closed, Open));
}

/// Several threads hammer one breaker; the transitions they observe must
/// form one consistent history ending in the final state.
#[test]
fn concurrent_use_keeps_the_state_consistent() {
    let b = Arc::new(
        ConsecutiveFailures::new(3)
            .with_open(
                OpenPolicy::default()
                    .with_base_open(Duration::from_micros(20))
                    .with_max_multiplier(4.0),
            )
            .breaker(),
    );
    let threads: Vec<_> = (0..4u64)
        .map(|seed| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(seed);
                let mut seen = Vec::new();
                for _ in 0..20_000 {
                    let _ = b.is_available();
                    seen.extend(b.expire());
                    let (permit, tr) = b.try_acquire();
                    seen.extend(tr);
                    let Some(permit) = permit else {
                        continue;
                    };
                    match rng.u8(..10) {
                        0 => b.release(permit),
                        n => seen.extend(b.record(permit, n > 4)),
                    }
                }
                seen
            })
        })
        .collect();
    let seen: Vec<Transition> = threads
        .into_iter()
        .flat_map(|h| h.join().expect("thread panicked"))
        .collect();

    let count = |f: &dyn Fn(&Transition) -> bool| seen.iter().filter(|t| f(t)).count() as i64;
    for s in [Closed, Open, HalfOpen] {
        let net = count(&|t| t.to == s) - count(&|t| t.from == s);
        let expected = i64::from(b.state() == s) - i64::from(s == Closed);
        assert_eq!(net, expected, "{s}: in - out");
    }
    for t in &seen {
        assert!(
            matches!(
                (t.from, t.to),
                (Closed, Open) | (Open, HalfOpen) | (HalfOpen, Open) | (HalfOpen, Closed)
            ),
            "{t:?}"
        );
    }
    assert!(b.trips() > 0, "the load trips the breaker");
    assert_eq!(b.trips(), count(&|t| t.to == Open) as u64);
    if let Some((granted, successes, failures)) = b.probes() {
        assert!(granted <= 3 && successes + failures <= granted);
    }
    assert!(b.open_duration() <= Duration::from_micros(80));
}
