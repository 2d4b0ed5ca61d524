//! Hedged calls: copies of a slow call sent to other instances, the first
//! answer kept, the others cancelled (gRPC A6 hedging; the policy is
//! [`HedgingPolicy`]).
//!
//! ```text
//!              send the first attempt, arm the timer (the hedging delay)
//!                               |
//!                               v
//!   +--------------------> WAITING (attempts in flight) <---------------+
//!   |                       |     |      |                              |
//!   |          timer fires  |     |      | an attempt ends              |
//!   |                       v     |      v                              |
//!   |  attempts < max, an untried |   answered (headers without a       |
//!   |  eligible instance, budget  |   status, or OK) or fatal status    |
//!   |  withdrawn, before deadline |      |                              |
//!   |      |              |       |      v                              |
//!   |      | yes          | no    |   DONE: that answer is the call's;  |
//!   |      v              v       |   the others are dropped (their     |
//!   +-- send a copy,   stop the   |   streams reset): "cancelled"       |
//!   |   re-arm timer   timer -----+                                     |
//!   |                                 non-fatal status, transport error |
//!   |                                 or time-out: keep it as the last  |
//!   |                                 failure; never reached a server:  |
//!   +--- send the next copy at once ---- (no budget, transparent) ------+
//!        (as the timer would)         nothing in flight and nothing
//!                                     more to send: DONE with the last
//!                                     failure's status
//! ```
//!
//! A copy goes only to an instance this call has not tried, so a call makes
//! at most one attempt per instance. Every copy after the first (except one
//! replacing an attempt that never reached a server) withdraws a retry from
//! the client's budget; when the budget is spent, no copy is sent and the
//! attempts in flight are waited for.
//!
//! An attempt cancelled because one started after it answered first lost a
//! race it had a head start in: its instance is reported slow to the
//! balancer and failed to its (closed) breaker, as an attempt that timed out
//! would be. A stalled instance thus trips its breaker after a few calls and
//! is passed by, instead of costing every call it is picked for the delay.
//!
//! The adaptive delay follows a [`LatencyWindow`] of the method's recent
//! answers: the winning attempts' own latencies, so a stalled instance whose
//! attempts are cancelled does not drag the delay up.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use http::request::Parts;
use http::{Request, Response};
use metrics::Counter;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::Status;

use super::body::Replay;
use super::call::{
    acquire, finish_call, has_untried_eligible, no_pick_status, observe, release, send,
    set_timeout, wait_for_eligible, CallCtx, KeptHead, LastFailure, NoPick, Picked, Tried,
};
use super::endpoint::EndpointCore;
use super::Shared;
use crate::balance::{Feedback, Picker};
use crate::breaker::Permit;
use crate::failover::classify::Outcome;
use crate::failover::hedge::ADAPTIVE_MIN_SAMPLES;
use crate::failover::{HedgeDelay, HedgingPolicy};
use crate::metrics::{self as m, ClientCounters};

/// The hedging state of one method of one client: its policy, its recent
/// latency (adaptive delay only) and its metric handles.
#[derive(Debug)]
pub(crate) struct MethodHedge {
    policy: HedgingPolicy,
    window: Option<LatencyWindow>,
    service: Arc<str>,
    method: Arc<str>,
    sent: OnceLock<Counter>,
    won: OnceLock<Counter>,
    cancelled: OnceLock<Counter>,
}

impl MethodHedge {
    pub(crate) fn new(service: Arc<str>, method: &str, policy: HedgingPolicy) -> Self {
        let window = match policy.delay {
            HedgeDelay::Adaptive { percentile, .. } => Some(LatencyWindow::new(percentile)),
            HedgeDelay::Fixed(_) => None,
        };
        Self {
            policy,
            window,
            service,
            method: Arc::from(method),
            sent: OnceLock::new(),
            won: OnceLock::new(),
            cancelled: OnceLock::new(),
        }
    }

    /// How long to wait for an answer before the next copy.
    pub(crate) fn delay(&self) -> Duration {
        match (self.policy.delay, &self.window) {
            (HedgeDelay::Adaptive { floor, .. }, Some(w)) => {
                w.delay().map_or(floor, |d| d.max(floor))
            }
            (HedgeDelay::Fixed(d), _) | (HedgeDelay::Adaptive { floor: d, .. }, None) => d,
        }
    }

    fn count(&self, cell: &OnceLock<Counter>, outcome: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        cell.get_or_init(|| {
            metrics::counter!(m::CLIENT_HEDGES, "service" => self.service.to_string(),
                "method" => self.method.to_string(), "outcome" => outcome)
        })
        .increment(n);
    }
}

/// Log-scale buckets of the latency window: 4 per octave from 10 µs, the
/// last one open (about 2.8 minutes and up).
const BUCKETS: usize = 96;
const BUCKET_BASE_NANOS: f64 = 10_000.0;
/// One half of the window: samples count for one to two of these.
const HALF_WINDOW: Duration = Duration::from_secs(5);
/// The delay is recomputed every this many samples.
const RECOMPUTE_EVERY: u64 = 8;
/// No delay computed yet (too few samples).
const NONE: u64 = u64::MAX;

/// One half of a [`LatencyWindow`]: the samples of one period.
#[derive(Debug)]
struct Half {
    /// The period these buckets count (`NONE`: never used).
    epoch: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// A method's recent latencies, for the adaptive hedging delay: two halves
/// of atomic log-scale buckets (about 19 % wide), each counting one period
/// of [`HALF_WINDOW`]; a half is cleared when its period comes round again,
/// so samples count for 5 to 10 s. Recording is a few relaxed atomic
/// operations and never locks; every few samples the percentile is
/// recomputed (a scan of the buckets) and kept in an atomic for the calls to
/// read.
///
/// A sample recorded while its half is being cleared by another thread may
/// be lost: the estimate is approximate by design.
#[derive(Debug)]
pub(crate) struct LatencyWindow {
    /// The quantile, `0..1`.
    quantile: f64,
    start: Instant,
    halves: [Half; 2],
    samples: AtomicU64,
    /// The current delay in nanoseconds, `NONE` until enough samples.
    delay_nanos: AtomicU64,
}

impl LatencyWindow {
    /// A window estimating the `percentile` (`0..100`) of its samples.
    pub(crate) fn new(percentile: f64) -> Self {
        Self {
            quantile: (percentile / 100.0).clamp(0.0, 1.0),
            start: Instant::now(),
            halves: std::array::from_fn(|_| Half {
                epoch: AtomicU64::new(NONE),
                buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            }),
            samples: AtomicU64::new(0),
            delay_nanos: AtomicU64::new(NONE),
        }
    }

    fn epoch(&self) -> u64 {
        let nanos = self.start.elapsed().as_nanos() / HALF_WINDOW.as_nanos();
        u64::try_from(nanos).unwrap_or(NONE - 1)
    }

    fn index(d: Duration) -> usize {
        let nanos = d.as_nanos() as f64;
        if nanos <= BUCKET_BASE_NANOS {
            return 0;
        }
        let i = ((nanos / BUCKET_BASE_NANOS).log2() * 4.0).ceil();
        (i as usize).min(BUCKETS - 1)
    }

    fn upper_bound(index: usize) -> Duration {
        Duration::from_nanos((BUCKET_BASE_NANOS * 2f64.powf(index as f64 / 4.0)) as u64)
    }

    /// Records one answer's latency.
    pub(crate) fn record(&self, latency: Duration) {
        let epoch = self.epoch();
        let half = &self.halves[(epoch % 2) as usize];
        let seen = half.epoch.load(Ordering::Acquire);
        if seen != epoch
            && half
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for b in &half.buckets {
                b.store(0, Ordering::Relaxed);
            }
        }
        half.buckets[Self::index(latency)].fetch_add(1, Ordering::Relaxed);
        if self.samples.fetch_add(1, Ordering::Relaxed) % RECOMPUTE_EVERY == 0 {
            self.recompute(epoch);
        }
    }

    /// Recomputes the delay from the halves of this period and the last.
    fn recompute(&self, epoch: u64) {
        let live = self.halves.each_ref().map(|h| {
            let e = h.epoch.load(Ordering::Acquire);
            e == epoch || e.checked_add(1) == Some(epoch)
        });
        let count = |i: usize| -> u64 {
            self.halves
                .iter()
                .zip(live)
                .filter(|(_, live)| *live)
                .map(|(h, _)| h.buckets[i].load(Ordering::Relaxed))
                .sum()
        };
        let total: u64 = (0..BUCKETS).map(count).sum();
        if total < ADAPTIVE_MIN_SAMPLES {
            self.delay_nanos.store(NONE, Ordering::Relaxed);
            return;
        }
        let rank = ((self.quantile * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for i in 0..BUCKETS {
            seen += count(i);
            if seen >= rank {
                let nanos = u64::try_from(Self::upper_bound(i).as_nanos()).unwrap_or(NONE - 1);
                self.delay_nanos.store(nanos, Ordering::Relaxed);
                return;
            }
        }
    }

    /// The current estimate, `None` until enough samples were seen.
    pub(crate) fn delay(&self) -> Option<Duration> {
        match self.delay_nanos.load(Ordering::Relaxed) {
            NONE => None,
            n => Some(Duration::from_nanos(n)),
        }
    }
}

/// An attempt of a hedged call still in flight.
struct Pending {
    id: usize,
    core: Arc<EndpointCore>,
    index: usize,
    permit: Option<Permit>,
    picker: Arc<dyn Picker>,
    started: Instant,
}

/// How one attempt of a hedged call ended.
struct Done {
    id: usize,
    picked: Picked,
    picker: Arc<dyn Picker>,
    outcome: Option<Outcome>,
    response: Option<Response<Body>>,
    t0: Instant,
    /// Whether the attempt was a hedged copy (not the first attempt, nor a
    /// replacement of an attempt that never reached a server).
    copy: bool,
}

type Attempt = Pin<Box<dyn Future<Output = Done> + Send>>;

/// Why an attempt was started.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    First,
    Copy,
    /// Replaces an attempt that never reached a server.
    Replacement,
}

/// The attempts of one hedged call and what they need to start another.
struct Hedged<'a> {
    shared: &'a Arc<Shared>,
    ctx: &'a CallCtx,
    hedge: &'a MethodHedge,
    replay: Replay,
    kept: KeptHead,
    first_head: Option<Parts>,
    tried: Tried,
    prev: Option<Arc<EndpointCore>>,
    in_flight: FuturesUnordered<Attempt>,
    /// What the client knows of the attempts in flight.
    pending: Vec<Pending>,
    /// Attempts started so far (their ids).
    started: usize,
    /// Attempts counted against `max_attempts` (replacements are not).
    counted: u32,
    /// The budget refused a copy: none is sent any more.
    spent: bool,
}

impl Hedged<'_> {
    fn may_send_copy(&self) -> bool {
        !self.spent
            && self.counted < self.hedge.policy.max_attempts
            && self.ctx.deadline.is_none_or(|d| Instant::now() < d)
    }

    /// Starts an attempt on an untried eligible instance.
    fn start(&mut self, kind: Kind) -> Result<(), NoPick> {
        let shared = self.shared;
        let snap = shared.snapshot.load_full();
        let picked = acquire(
            shared,
            &snap,
            self.ctx,
            &self.tried,
            self.prev.as_ref(),
            false,
        )?;
        if kind == Kind::Copy && !shared.budget.withdraw() {
            release(&picked.endpoint.core, picked.permit);
            self.spent = true;
            ClientCounters::incr(&shared.counters.budget_exhausted);
            shared.method_metrics.budget_exhausted();
            tracing::debug!(service = %shared.service, method = %self.ctx.method.path(),
                "retry budget spent: no hedged copy sent");
            return Err(NoPick::NoneEligible);
        }
        let Some(body) = self.replay.next_body() else {
            // A buffered body can always be sent again.
            release(&picked.endpoint.core, picked.permit);
            return Err(NoPick::NoneEligible);
        };
        let remaining = self
            .ctx
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        let timeout = match (shared.config.failover.attempt_timeout, remaining) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        };
        let req = match self.first_head.take() {
            Some(parts) => {
                let mut req = Request::from_parts(parts, body);
                set_timeout(&mut req, timeout);
                req
            }
            None => self.kept.request(body, timeout),
        };
        let core = Arc::clone(&picked.endpoint.core);
        self.tried.0.push(Arc::clone(&core));
        self.prev = Some(core);
        match kind {
            Kind::First => self.counted += 1,
            Kind::Copy => {
                self.counted += 1;
                ClientCounters::incr(&shared.counters.hedges_sent);
                self.hedge.count(&self.hedge.sent, "sent", 1);
                tracing::debug!(service = %shared.service, method = %self.ctx.method.path(),
                    instance = %picked.endpoint.core.id, "sending a hedged copy");
            }
            Kind::Replacement => {
                ClientCounters::incr(&shared.counters.transparent_retries);
                shared.method_metrics.transparent_retry();
            }
        }
        let shared = Arc::clone(shared);
        let picker = Arc::clone(&snap.picker);
        drop(snap);
        let id = self.started;
        self.started += 1;
        self.pending.push(Pending {
            id,
            core: Arc::clone(&picked.endpoint.core),
            index: picked.index,
            permit: picked.permit,
            picker: Arc::clone(&picker),
            started: Instant::now(),
        });
        self.in_flight.push(Box::pin(async move {
            let (outcome, response, t0) = send(&shared, &picked, &picker, req, timeout).await;
            Done {
                id,
                picked,
                picker,
                outcome,
                response,
                t0,
                copy: kind == Kind::Copy,
            }
        }));
        Ok(())
    }

    /// Forgets a finished attempt.
    fn finished(&mut self, id: usize) {
        self.pending.retain(|p| p.id != id);
    }

    /// Cancels the attempts still in flight (dropping them resets their
    /// streams) and counts them. Those started before `winner` (the start
    /// of the attempt that answered) lost a race they had a head start in:
    /// their instance is told slow to the balancer and, as an attempt that
    /// timed out would be, failed to its breaker (a closed one; probes are
    /// only released), so a stalled instance is soon passed by instead of
    /// costing every call the hedging delay.
    fn cancel_rest(&mut self, winner: Option<Instant>) {
        let n = self.in_flight.len() as u64;
        self.in_flight = FuturesUnordered::new();
        for lost in std::mem::take(&mut self.pending) {
            if winner.is_none_or(|w| lost.started >= w) {
                continue;
            }
            let latency = lost.started.elapsed();
            lost.picker.feedback(
                lost.index,
                &Feedback {
                    latency,
                    success: false,
                },
            );
            if lost.permit == Some(Permit::Closed) {
                if let Some(t) = lost.core.breaker.record(Permit::Closed, false) {
                    self.shared.on_transition(&lost.core, t);
                }
            }
            tracing::debug!(service = %self.shared.service, instance = %lost.core.id,
                ?latency, "hedged attempt lost the race");
        }
        if n > 0 {
            self.shared
                .counters
                .hedges_cancelled
                .fetch_add(n, Ordering::Relaxed);
            self.hedge.count(&self.hedge.cancelled, "cancelled", n);
        }
    }
}

/// Runs a call of a hedged method (its body buffered). See the module docs.
pub(super) async fn call(
    shared: Arc<Shared>,
    ctx: CallCtx,
    parts: Parts,
    replay: Replay,
    hedge: Arc<MethodHedge>,
) -> Response<Body> {
    let kept = KeptHead::keep(&parts);
    let mut h = Hedged {
        shared: &shared,
        ctx: &ctx,
        hedge: &hedge,
        replay,
        kept,
        first_head: Some(parts),
        tried: Tried(Vec::new()),
        prev: None,
        in_flight: FuturesUnordered::new(),
        pending: Vec::new(),
        started: 0,
        counted: 0,
        spent: false,
    };
    loop {
        match h.start(Kind::First) {
            Ok(()) => break,
            Err(NoPick::NoneKnown | NoPick::AllUnreachable)
                if ctx.wait_for_ready && wait_for_eligible(&shared, &ctx).await => {}
            Err(why) => {
                drop(h);
                let snap = shared.snapshot.load();
                let status = no_pick_status(&shared, &snap, why);
                return finish_call(&shared, &ctx, status.into_http());
            }
        }
    }
    let delay = hedge.delay();
    let mut next_copy = Some(Instant::now() + delay);
    let mut last: Option<LastFailure> = None;
    let mut transparent = 0usize;
    loop {
        if h.in_flight.is_empty() {
            break;
        }
        let timer = async {
            match next_copy {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = h.in_flight.next(), if !h.in_flight.is_empty() => {
                let Some(done) = done else { continue };
                let Done { id, picked, picker, outcome, response, t0, copy } = done;
                h.finished(id);
                let won = match outcome {
                    None => true,
                    Some(o) => o.is_success(),
                };
                let fatal = match outcome {
                    Some(Outcome::Status(code)) => !won && !hedge.policy.is_non_fatal(code),
                    _ => false,
                };
                if won || fatal {
                    h.cancel_rest(won.then_some(t0));
                    drop(h);
                    if won {
                        if let Some(w) = &hedge.window {
                            w.record(t0.elapsed());
                        }
                        if copy {
                            ClientCounters::incr(&shared.counters.hedges_won);
                            hedge.count(&hedge.won, "won", 1);
                        }
                    }
                    let resp = response
                        .unwrap_or_else(|| Status::internal("missing response").into_http());
                    return match outcome {
                        // The status comes in trailers: observe the body.
                        None => observe(Arc::clone(&shared), ctx, picked, &picker, resp, t0),
                        Some(_) => finish_call(&shared, &ctx, resp),
                    };
                }
                let Some(outcome) = outcome else { continue };
                let core = Arc::clone(&picked.endpoint.core);
                last = Some(LastFailure { outcome, response, core });
                // The attempt failed without deciding the call: send the
                // next one now, if one may go.
                let n = shared.snapshot.load().endpoints.len();
                let started = if outcome.never_processed() && transparent < n {
                    transparent += 1;
                    h.start(Kind::Replacement).is_ok()
                } else {
                    false
                };
                if !started && h.may_send_copy() && h.start(Kind::Copy).is_ok() {
                    next_copy = Some(Instant::now() + delay);
                }
            }
            () = timer => {
                let more = h.may_send_copy()
                    && has_untried_eligible(&shared, &shared.snapshot.load(), &h.tried)
                    && h.start(Kind::Copy).is_ok();
                next_copy = (more && h.may_send_copy()).then(|| Instant::now() + delay);
            }
        }
    }
    drop(h);
    let resp = match last {
        Some(last) => last.into_response(),
        None => Status::internal("hedged call ended without an attempt").into_http(),
    };
    finish_call(&shared, &ctx, resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_window_follows_the_percentile() {
        let w = LatencyWindow::new(95.0);
        for ms in 1..ADAPTIVE_MIN_SAMPLES {
            w.record(Duration::from_millis(ms));
        }
        assert_eq!(w.delay(), None, "too few samples");
        let w = LatencyWindow::new(95.0);
        for _ in 0..3 {
            for ms in 1..=100 {
                w.record(Duration::from_millis(ms));
            }
        }
        let d = w.delay().expect("enough samples").as_secs_f64();
        assert!((0.095..=0.095 * 1.2).contains(&d), "p95 {d}");
        let median = LatencyWindow::new(50.0);
        for ms in 1..=100 {
            median.record(Duration::from_millis(ms));
        }
        let d = median.delay().expect("enough samples").as_secs_f64();
        assert!((0.045..=0.050 * 1.2).contains(&d), "p50 {d}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_forgets_old_samples() {
        let w = LatencyWindow::new(90.0);
        for _ in 0..100 {
            w.record(Duration::from_millis(500));
        }
        assert!(w.delay().is_some_and(|d| d >= Duration::from_millis(500)));
        // Two half-windows later the slow samples are gone.
        tokio::time::advance(HALF_WINDOW * 2).await;
        for _ in 0..=100 {
            w.record(Duration::from_millis(2));
        }
        let d = w.delay().expect("enough samples");
        assert!(d < Duration::from_millis(3), "{d:?}");
        // One half-window later, both periods still count.
        tokio::time::advance(HALF_WINDOW).await;
        for _ in 0..=8 {
            w.record(Duration::from_millis(2));
        }
        assert!(w.delay().expect("enough samples") < Duration::from_millis(3));
    }

    #[tokio::test(start_paused = true)]
    async fn the_adaptive_delay_keeps_its_floor() {
        let floor = Duration::from_millis(20);
        let h = MethodHedge::new(Arc::from("S"), "/S/M", HedgingPolicy::adaptive(95.0, floor));
        assert_eq!(h.delay(), floor, "no samples yet");
        let w = h.window.as_ref().expect("an adaptive window");
        for _ in 0..100 {
            w.record(Duration::from_millis(1));
        }
        assert_eq!(h.delay(), floor, "fast answers: the floor");
        for _ in 0..1000 {
            w.record(Duration::from_millis(100));
        }
        assert!(h.delay() >= Duration::from_millis(100));
        let fixed = MethodHedge::new(
            Arc::from("S"),
            "/S/M",
            HedgingPolicy::fixed(Duration::from_millis(7)),
        );
        assert_eq!(fixed.delay(), Duration::from_millis(7));
        assert!(fixed.window.is_none());
    }

    #[test]
    fn buckets_cover_their_range() {
        assert_eq!(LatencyWindow::index(Duration::ZERO), 0);
        assert_eq!(
            LatencyWindow::index(Duration::from_secs(100_000)),
            BUCKETS - 1
        );
        for ms in [1u64, 7, 50, 999] {
            let d = Duration::from_millis(ms);
            let i = LatencyWindow::index(d);
            assert!(LatencyWindow::upper_bound(i) >= d);
            assert!(i == 0 || LatencyWindow::upper_bound(i - 1) < d);
        }
    }
}
