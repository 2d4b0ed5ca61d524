//! One call through the client: pick, attempt, classify, retry elsewhere.
//!
//! ```text
//!   pick an eligible endpoint this call has not tried (breaker permit)
//!     |            none reachable: fail fast UNAVAILABLE naming them
//!     |                            (or wait for one, with wait-for-ready)
//!     v
//!   attempt --ok / not retryable------------------------------> done
//!     |
//!     +-- never reached a server (unreachable, refused, GOAWAY) -> again at once,
//!     |     no budget, no retry count (at most once per endpoint)
//!     |
//!     +-- retryable failure --budget spent / deadline / attempts--> done with
//!           |                                          this attempt's status
//!           +-- an untried eligible endpoint exists --> again at once
//!           +-- otherwise ---------------------------> backoff, then again
//!                                                      (tried endpoints allowed)
//! ```

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};

use super::body::{BodyEnd, Observed, Replay};
use super::eligibility::Panic;
use super::endpoint::{Endpoint, EndpointCore};
use super::handles::MethodEntry;
use super::snapshot::Snapshot;
use super::Shared;
use crate::balance::{Feedback, PickContext, Picker};
use crate::breaker::Permit;
use crate::failover::classify::{self, Outcome};
use crate::failover::Strategy;
use crate::metrics::{self as m, ClientCounters};

/// The error type of the client service. Calls end with a gRPC status in the
/// response (synthesized when no instance answered), so this is only used for
/// failures of the client itself.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request extension asking the client to wait, within the call's
/// deadline, for an instance to become reachable when none is, instead of
/// failing at once with `UNAVAILABLE` (gRPC's wait-for-ready).
///
/// ```
/// let mut request = tonic::Request::new(());
/// request.extensions_mut().insert(fyerrpc::client::WaitForReady);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WaitForReady;

/// Endpoints this call has tried, by core identity.
pub(super) struct Tried(pub(super) Vec<Arc<EndpointCore>>);

impl Tried {
    pub(super) fn contains(&self, core: &Arc<EndpointCore>) -> bool {
        self.0.iter().any(|c| Arc::ptr_eq(c, core))
    }
}

/// The per-call facts every attempt needs.
pub(super) struct CallCtx {
    /// The interned method (its path, idempotence and metric handles).
    pub(super) method: Arc<MethodEntry>,
    hash: Option<u64>,
    /// When the call must end (`None`: no deadline).
    pub(super) deadline: Option<Instant>,
    pub(super) started: Instant,
    idempotent: bool,
    pub(super) wait_for_ready: bool,
}

/// The last failed attempt, whose real status ends the call if no other
/// attempt is made.
pub(super) struct LastFailure {
    pub(super) outcome: Outcome,
    pub(super) response: Option<Response<Body>>,
    pub(super) core: Arc<EndpointCore>,
}

impl LastFailure {
    pub(super) fn into_response(self) -> Response<Body> {
        self.response.unwrap_or_else(|| {
            Status::new(
                self.outcome.code(),
                failure_message(self.outcome, &self.core.id, &self.core.address),
            )
            .into_http()
        })
    }
}

/// What went wrong with an attempt on instance `id` at `address`.
fn failure_message(outcome: Outcome, id: &str, address: &str) -> String {
    let what = match outcome {
        Outcome::Unreachable => "could not connect to",
        Outcome::NotSent => "request refused by",
        Outcome::TransportError => "connection failed to",
        Outcome::TimedOut => "timed out waiting for",
        Outcome::Status(_) => "error from",
    };
    format!("{what} instance {id} ({address})")
}

/// A picked endpoint and what its breaker granted (`None`: picked in panic
/// mode past a breaker that granted nothing).
pub(super) struct Picked {
    pub(super) endpoint: Endpoint,
    pub(super) index: usize,
    pub(super) permit: Option<Permit>,
}

/// Why no endpoint was picked.
pub(super) enum NoPick {
    /// The snapshot is empty.
    NoneKnown,
    /// Every known endpoint is unreachable.
    AllUnreachable,
    /// Reachable endpoints exist, but none is eligible for this attempt.
    NoneEligible,
}

pub(crate) async fn call(
    shared: Arc<Shared>,
    req: Request<Body>,
) -> Result<Response<Body>, BoxError> {
    let started = Instant::now();
    ClientCounters::incr(&shared.counters.requests);
    shared.budget.deposit();
    let (parts, body) = req.into_parts();
    let failover = &shared.config.failover;
    let method = shared
        .method_metrics
        .entry(parts.uri.path(), |path| failover.is_idempotent(path));
    let caller = parts
        .headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(classify::parse_grpc_timeout);
    let timeout = match (caller, shared.config.request_timeout) {
        (Some(c), Some(d)) => Some(c.min(d)),
        (Some(t), None) | (None, Some(t)) => Some(t),
        (None, None) => None,
    };
    let hash = parts
        .headers
        .get(&shared.config.hash_header)
        .map(|v| crate::balance::hash_key(v.as_bytes()));
    let ctx = CallCtx {
        idempotent: method.idempotent(),
        wait_for_ready: shared.config.wait_for_ready
            || parts.extensions.get::<WaitForReady>().is_some(),
        method,
        hash,
        deadline: timeout.map(|t| started + t),
        started,
    };
    let mut replay = match Replay::prepare(body, shared.config.failover.max_buffered_body) {
        Ok(r) => r,
        Err(status) => return Ok(finish_call(&shared, &ctx, status.into_http())),
    };
    // Hedged methods take their own path; every other call pays one
    // emptiness check for it.
    if !shared.hedges.is_empty() && replay.can_replay() {
        if let Some(hedge) = shared.hedges.get(ctx.method.path()) {
            let hedge = Arc::clone(hedge);
            let hedged = super::hedge::call(shared, ctx, parts, replay, hedge);
            return Ok(Box::pin(hedged).await);
        }
    }

    let max_attempts = shared.config.failover.max_attempts();
    let mut tried = Tried(Vec::new());
    let mut prev: Option<Arc<EndpointCore>> = None;
    let mut last: Option<LastFailure> = None;
    // Attempts that count against `max_retries` (transparent ones do not).
    let mut counted = 0u32;
    let mut transparent = 0usize;
    // After a backoff, a retry may go back to an endpoint already tried.
    let mut allow_tried = false;
    // The request head: the original goes out with the first attempt; a
    // copy is kept for the attempts that may follow it.
    let mut first_head = Some(parts);
    let mut kept: Option<KeptHead> = None;
    loop {
        let snap = shared.snapshot.load_full();
        let picked = match acquire(&shared, &snap, &ctx, &tried, prev.as_ref(), allow_tried) {
            Ok(p) => p,
            Err(why) => {
                if matches!(why, NoPick::NoneKnown | NoPick::AllUnreachable)
                    && ctx.wait_for_ready
                    && wait_for_eligible(&shared, &ctx).await
                {
                    // What was tried may be back: it may be tried again.
                    allow_tried = true;
                    continue;
                }
                let resp = match last {
                    Some(last) => last.into_response(),
                    None => no_pick_status(&shared, &snap, why).into_http(),
                };
                return Ok(finish_call(&shared, &ctx, resp));
            }
        };
        let ep = &picked.endpoint;
        if prev.is_some() {
            note_retry(&shared, &ctx, prev.as_ref(), ep);
        }
        let remaining = ctx
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        if remaining.is_some_and(|r| r.is_zero()) {
            release(&ep.core, picked.permit);
            let resp = match last {
                Some(last) => last.into_response(),
                None => Status::deadline_exceeded("deadline exceeded before the call was sent")
                    .into_http(),
            };
            return Ok(finish_call(&shared, &ctx, resp));
        }
        let attempt_timeout = match (shared.config.failover.attempt_timeout, remaining) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        };
        let Some(body) = replay.next_body() else {
            release(&ep.core, picked.permit);
            let resp = match last {
                Some(last) => last.into_response(),
                None => Status::internal("request body already sent").into_http(),
            };
            return Ok(finish_call(&shared, &ctx, resp));
        };
        let req = match first_head.take() {
            Some(parts) => {
                // Another attempt may follow the first: a counted retry, or
                // a transparent one to an endpoint not tried yet. Only then
                // is a copy of the head kept.
                let n = snap.endpoints.len();
                let may_follow = replay.can_replay() && (max_attempts > 1 || n > 1);
                if may_follow {
                    kept = Some(KeptHead::keep(&parts));
                }
                let mut req = Request::from_parts(parts, body);
                set_timeout(&mut req, attempt_timeout);
                req
            }
            None => match &kept {
                Some(head) => head.request(body, attempt_timeout),
                None => {
                    // Unreachable: no attempt follows one that kept no head.
                    release(&ep.core, picked.permit);
                    let resp = match last {
                        Some(last) => last.into_response(),
                        None => Status::internal("request head already sent").into_http(),
                    };
                    return Ok(finish_call(&shared, &ctx, resp));
                }
            },
        };
        let (outcome, resp, t0) = send(&shared, &picked, &snap.picker, req, attempt_timeout).await;
        let Some(outcome) = outcome else {
            // A response whose status comes in trailers: return it, observed.
            return Ok(match resp {
                Some(resp) => observe(shared, ctx, picked, &snap.picker, resp, t0),
                None => Status::internal("missing response").into_http(),
            });
        };
        if outcome.is_success() {
            let resp = resp.unwrap_or_else(|| Status::internal("missing response").into_http());
            return Ok(finish_call(&shared, &ctx, resp));
        }
        let core = Arc::clone(&ep.core);
        let failure = LastFailure {
            outcome,
            response: resp,
            core: Arc::clone(&core),
        };
        tried.0.push(Arc::clone(&core));
        prev = Some(core);
        let can_replay = replay.can_replay() && kept.is_some();

        // Transparent retry: the request never reached a server, and
        // another instance can take it now.
        if outcome.never_processed()
            && can_replay
            && transparent < snap.endpoints.len()
            && has_untried_eligible(&shared, &shared.snapshot.load(), &tried)
        {
            transparent += 1;
            ClientCounters::incr(&shared.counters.transparent_retries);
            shared.method_metrics.transparent_retry();
            last = Some(failure);
            allow_tried = false;
            continue;
        }

        counted += 1;
        let retry = counted < max_attempts && can_replay && is_retryable(&shared, &ctx, outcome);
        if !retry {
            return Ok(finish_call(&shared, &ctx, failure.into_response()));
        }
        if !shared.budget.withdraw() {
            ClientCounters::incr(&shared.counters.budget_exhausted);
            shared.method_metrics.budget_exhausted();
            tracing::debug!(service = %shared.service, method = %ctx.method.path(),
                "retry budget spent");
            return Ok(finish_call(&shared, &ctx, failure.into_response()));
        }
        last = Some(failure);
        // Immediate failover: an untried eligible endpoint takes the retry
        // now; going back to a tried one waits for the backoff first.
        if has_untried_eligible(&shared, &shared.snapshot.load(), &tried) {
            allow_tried = false;
            continue;
        }
        let delay = shared.backoff.delay(counted);
        if ctx.deadline.is_some_and(|d| Instant::now() + delay >= d) {
            let last = last.take().map(LastFailure::into_response);
            let resp = last.unwrap_or_else(|| Status::deadline_exceeded("deadline").into_http());
            return Ok(finish_call(&shared, &ctx, resp));
        }
        tokio::time::sleep(delay).await;
        allow_tried = true;
    }
}

fn is_retryable(shared: &Shared, ctx: &CallCtx, outcome: Outcome) -> bool {
    match outcome {
        Outcome::Unreachable | Outcome::NotSent => true,
        Outcome::Status(code) => {
            let failover = &shared.config.failover;
            failover.is_retryable_code(code)
                || (ctx.idempotent && failover.idempotent_codes.contains(&code))
        }
        Outcome::TransportError | Outcome::TimedOut => ctx.idempotent,
    }
}

pub(super) fn release(core: &EndpointCore, permit: Option<Permit>) {
    if let Some(p) = permit {
        core.breaker.release(p);
    }
}

/// The status of a call that found no endpoint to try.
pub(super) fn no_pick_status(shared: &Shared, snap: &Snapshot, why: NoPick) -> Status {
    match why {
        NoPick::NoneKnown => {
            Status::unavailable(format!("no instance of {} is known", shared.service))
        }
        NoPick::AllUnreachable => {
            let names: Vec<String> = snap
                .endpoints
                .iter()
                .map(|e| format!("{} ({})", e.core.id, e.core.address))
                .collect();
            Status::unavailable(format!(
                "every instance of {} is unreachable: {}",
                shared.service,
                names.join(", ")
            ))
        }
        NoPick::NoneEligible => {
            let why: Vec<String> = snap
                .endpoints
                .iter()
                .map(|e| {
                    let causes = e.core.state.causes(&*e.core.breaker);
                    if causes.is_empty() {
                        format!("{}: tried", e.core.id)
                    } else {
                        format!("{}: {}", e.core.id, causes.join("+"))
                    }
                })
                .collect();
            Status::unavailable(format!(
                "no eligible instance of {} ({})",
                shared.service,
                why.join(", ")
            ))
        }
    }
}

/// Waits until an endpoint may have become eligible, within the deadline.
/// Returns false when the deadline passed first.
pub(super) async fn wait_for_eligible(shared: &Shared, ctx: &CallCtx) -> bool {
    let notified = shared.became_eligible.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    // Re-check after registering: a change may have come in between.
    let snap = shared.snapshot.load();
    let n = snap.endpoints.len();
    if n > 0 && shared.tally.unreachable() < n {
        return true;
    }
    match ctx.deadline {
        Some(d) => tokio::time::timeout_at(d, notified).await.is_ok(),
        None => {
            notified.await;
            true
        }
    }
}

/// Whether some reachable, eligible endpoint has not been tried by this call.
pub(super) fn has_untried_eligible(shared: &Shared, snap: &Snapshot, tried: &Tried) -> bool {
    let panic = shared
        .tally
        .panic(snap.endpoints.len(), shared.config.max_ejection_ratio);
    snap.endpoints
        .iter()
        .any(|e| !tried.contains(&e.core) && e.core.state.admits(panic, &*e.core.breaker))
}

/// Picks an eligible endpoint and claims a breaker permit on it.
pub(super) fn acquire(
    shared: &Arc<Shared>,
    snap: &Snapshot,
    ctx: &CallCtx,
    tried: &Tried,
    prev: Option<&Arc<EndpointCore>>,
    allow_tried: bool,
) -> Result<Picked, NoPick> {
    let n = snap.endpoints.len();
    if n == 0 {
        return Err(NoPick::NoneKnown);
    }
    if shared.tally.unreachable() >= n && snap.endpoints.iter().all(|e| !e.core.is_reachable()) {
        return Err(NoPick::AllUnreachable);
    }
    let ratio = shared.config.max_ejection_ratio;
    let mut panic = shared.tally.panic(n, ratio);
    loop {
        if let Some(p) = pick_pass(shared, snap, ctx, tried, prev, allow_tried, panic) {
            return Ok(p);
        }
        // Nothing eligible at this level (say the remaining instances are
        // all half-open with their probes out): rather than fail, ignore
        // one more kind of statistical cause for this pick, as panic mode
        // does, unless panic mode is turned off.
        match panic.escalate() {
            Some(next) if ratio < 1.0 => panic = next,
            _ => break,
        }
    }
    if snap.endpoints.iter().all(|e| !e.core.is_reachable()) {
        Err(NoPick::AllUnreachable)
    } else {
        Err(NoPick::NoneEligible)
    }
}

/// One pick over the snapshot, untried endpoints first.
fn pick_pass(
    shared: &Arc<Shared>,
    snap: &Snapshot,
    ctx: &CallCtx,
    tried: &Tried,
    prev: Option<&Arc<EndpointCore>>,
    allow_tried: bool,
    panic: Panic,
) -> Option<Picked> {
    let passes: &[bool] = if allow_tried {
        &[false, true]
    } else {
        &[false]
    };
    let first = tried.0.is_empty();
    for &again in passes {
        let eligible = |i: usize| {
            let core = &snap.endpoints[i].core;
            (again || !tried.contains(core)) && core.state.admits(panic, &*core.breaker)
        };
        if let Some(found) = pick_available(shared, snap, ctx, prev, first, panic, &eligible) {
            if panic != Panic::Off {
                ClientCounters::incr(&shared.counters.panic_picks);
                shared.method_metrics.panic_pick();
            }
            return Some(found);
        }
    }
    None
}

/// Picks among eligible endpoints and claims a breaker permit on the pick.
fn pick_available(
    shared: &Arc<Shared>,
    snap: &Snapshot,
    ctx: &CallCtx,
    prev: Option<&Arc<EndpointCore>>,
    first: bool,
    panic: Panic,
    eligible: &(dyn Fn(usize) -> bool + Sync),
) -> Option<Picked> {
    for _ in 0..snap.endpoints.len() {
        let pick = if first {
            let pctx = PickContext {
                method: ctx.method.path(),
                hash: ctx.hash,
                attempt: 0,
                eligible,
            };
            snap.picker.pick(&pctx)
        } else {
            pick_retry(shared.config.failover.strategy, snap, prev, eligible)
        };
        let index = pick?;
        let endpoint = &snap.endpoints[index];
        let (permit, transition) = endpoint.core.breaker.try_acquire();
        if let Some(t) = transition {
            shared.on_transition(&endpoint.core, t);
        }
        let spared = endpoint.core.state.has(super::eligibility::BREAKER_SPARED);
        if permit.is_some() || panic != Panic::Off || spared {
            // In panic mode, or when the ejection cap spared the instance,
            // a breaker that grants nothing is passed by; the call then
            // holds no permit and reports nothing to it.
            return Some(Picked {
                endpoint: endpoint.clone(),
                index,
                permit,
            });
        }
        // Lost a race for the last half-open slot: pick again.
    }
    None
}

fn pick_retry(
    strategy: Strategy,
    snap: &Snapshot,
    prev: Option<&Arc<EndpointCore>>,
    eligible: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    let n = snap.endpoints.len();
    match strategy {
        Strategy::Next => {
            let start = prev
                .and_then(|p| snap.endpoints.iter().position(|e| Arc::ptr_eq(&e.core, p)))
                .map_or(0, |i| i + 1);
            (0..n).map(|k| (start + k) % n).find(|&i| eligible(i))
        }
        Strategy::Random => {
            let start = fastrand::usize(..n);
            (0..n).map(|k| (start + k) % n).find(|&i| eligible(i))
        }
        Strategy::Best => (0..n).filter(|&i| eligible(i)).min_by(|&a, &b| {
            let cost = |i: usize| {
                let e = &snap.endpoints[i];
                e.core.load.peak_ewma_cost() / f64::from(e.instance.weight())
            };
            cost(a).total_cmp(&cost(b))
        }),
    }
}

/// The `grpc-timeout` header name, parsed once.
static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Headers kept inline, without allocating, when a request has no more.
const INLINE_HEADERS: usize = 8;

/// A copy of the request head for the attempts after the first, kept
/// without allocating when the request has at most [`INLINE_HEADERS`]
/// header values (tonic's own are two or three), and turned into a request
/// only when a retry is actually sent.
///
/// The copy has no extensions. Request extensions never reach the wire and
/// nothing below the client reads them: the instance's channel is the
/// client's own, and of its layers only hyper looks at an extension,
/// `Protocol`, for extended `CONNECT`, which gRPC does not use. Copying them
/// (tonic-generated clients always add `GrpcMethod`) would cost three
/// allocations per call for nothing, so only the first attempt carries them.
pub(super) struct KeptHead {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: KeptHeaders,
}

// Large on purpose: the inline copy lives in the call's future (allocated
// once per call anyway) so that keeping it allocates nothing.
#[allow(clippy::large_enum_variant)]
enum KeptHeaders {
    Inline([Option<(http::HeaderName, HeaderValue)>; INLINE_HEADERS]),
    Map(http::HeaderMap),
}

impl KeptHead {
    pub(super) fn keep(parts: &http::request::Parts) -> Self {
        let headers = if parts.headers.len() <= INLINE_HEADERS {
            let mut inline: [Option<(http::HeaderName, HeaderValue)>; INLINE_HEADERS] =
                std::array::from_fn(|_| None);
            for (slot, (name, value)) in inline.iter_mut().zip(parts.headers.iter()) {
                *slot = Some((name.clone(), value.clone()));
            }
            KeptHeaders::Inline(inline)
        } else {
            KeptHeaders::Map(parts.headers.clone())
        };
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers,
        }
    }

    /// The request of a later attempt.
    pub(super) fn request(&self, body: Body, timeout: Option<Duration>) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = match &self.headers {
            KeptHeaders::Map(map) => map.clone(),
            KeptHeaders::Inline(inline) => {
                let mut map = http::HeaderMap::with_capacity(INLINE_HEADERS);
                // Values of one name come together and in order, so
                // appending them rebuilds the same map.
                for (name, value) in inline.iter().flatten() {
                    map.append(name.clone(), value.clone());
                }
                map
            }
        };
        set_timeout(&mut req, timeout);
        req
    }
}

pub(super) fn set_timeout(req: &mut Request<Body>, timeout: Option<Duration>) {
    if let Some(v) = timeout.and_then(grpc_timeout_value) {
        req.headers_mut().insert(GRPC_TIMEOUT.clone(), v);
    }
}

/// A duration as `grpc-timeout` digits and unit: the coarsest unit that
/// keeps at least three digits (rounding down), as
/// [`classify::format_grpc_timeout`] writes it.
fn grpc_timeout_parts(d: Duration) -> (u64, u8) {
    const UNITS: [(u8, u128); 5] = [
        (b'H', 3_600_000_000_000),
        (b'M', 60_000_000_000),
        (b'S', 1_000_000_000),
        (b'm', 1_000_000),
        (b'u', 1_000),
    ];
    let nanos = d.as_nanos();
    for (unit, per) in UNITS {
        let v = nanos / per;
        if (100..=99_999_999).contains(&v) {
            return (u64::try_from(v).unwrap_or(99_999_999), unit);
        }
    }
    (u64::try_from(nanos.clamp(1, 99_999_999)).unwrap_or(1), b'n')
}

thread_local! {
    /// The last `grpc-timeout` value made on this thread: the values are
    /// coarse, so calls close in time reuse it (a clone shares its bytes).
    static LAST_TIMEOUT: RefCell<Option<(u64, u8, HeaderValue)>> = const { RefCell::new(None) };
}

/// The `grpc-timeout` header value of `d`, written without formatting
/// machinery (and reused from the last call on this thread when equal).
fn grpc_timeout_value(d: Duration) -> Option<HeaderValue> {
    let (v, unit) = grpc_timeout_parts(d);
    let cached = LAST_TIMEOUT
        .try_with(|last| match &*last.borrow() {
            Some((lv, lu, value)) if (*lv, *lu) == (v, unit) => Some(value.clone()),
            _ => None,
        })
        .ok()
        .flatten();
    if cached.is_some() {
        return cached;
    }
    // At most 8 digits and the unit.
    let mut buf = [0u8; 9];
    let mut digits = [0u8; 8];
    let mut n = 0;
    let mut rest = v;
    loop {
        digits[n] = b'0' + (rest % 10) as u8;
        n += 1;
        rest /= 10;
        if rest == 0 || n == digits.len() {
            break;
        }
    }
    for (i, d) in digits[..n].iter().rev().enumerate() {
        buf[i] = *d;
    }
    buf[n] = unit;
    let value = HeaderValue::from_bytes(&buf[..=n]).ok()?;
    let _ = LAST_TIMEOUT.try_with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            *last = Some((v, unit, value.clone()));
        }
    });
    Some(value)
}

/// Sends one attempt. Returns the outcome when it is known from the headers
/// (with the response, if any, recorded); `None` with the response when the
/// status will come in trailers (the caller observes it).
pub(super) async fn send(
    shared: &Arc<Shared>,
    picked: &Picked,
    picker: &Arc<dyn Picker>,
    req: Request<Body>,
    timeout: Option<Duration>,
) -> (Option<Outcome>, Option<Response<Body>>, Instant) {
    let core = &picked.endpoint.core;
    core.load.start();
    core.counters.attempts.fetch_add(1, Ordering::Relaxed);
    let t0 = Instant::now();
    let guard = Cancelled(Some((core, picked.permit)));
    let call = core.conn.call(req);
    let result = match timeout {
        Some(t) => tokio::time::timeout(t, call).await,
        None => Ok(call.await),
    };
    guard.disarm();
    let (outcome, resp) = match result {
        Err(_) => (Outcome::TimedOut, None),
        Ok(Err(e)) => {
            let outcome = classify::classify_error(&*e);
            tracing::debug!(instance = %core.id, outcome = outcome.label(), error = ?e,
                "attempt failed in transport");
            // Why the instance could not be reached (refused certificate,
            // protocol mismatch, ...) goes into the caller's status.
            let resp = (outcome != Outcome::TimedOut).then(|| {
                let message = format!(
                    "{}: {}",
                    failure_message(outcome, &core.id, &core.address),
                    super::connect::describe(&*e)
                );
                Status::new(outcome.code(), message).into_http()
            });
            (outcome, resp)
        }
        Ok(Ok(resp)) => match classify::grpc_status(resp.headers()) {
            Some(code) => (Outcome::Status(code), Some(resp)),
            None => {
                shared.mark_reachable(core);
                return (None, Some(resp), t0);
            }
        },
    };
    record_attempt(shared, core, picked, picker, outcome, t0.elapsed());
    (Some(outcome), resp, t0)
}

/// Undoes an attempt's start when the caller drops the call mid-attempt:
/// the load goes back down and a probe permit is given back.
struct Cancelled<'a>(Option<(&'a EndpointCore, Option<Permit>)>);

impl Cancelled<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Cancelled<'_> {
    fn drop(&mut self) {
        if let Some((core, permit)) = self.0.take() {
            core.load.cancel();
            release(core, permit);
        }
    }
}

/// Wraps a streaming response so that its end records the attempt and the
/// call. It keeps only its own endpoint (and the picker for feedback) alive,
/// not the snapshot.
pub(super) fn observe(
    shared: Arc<Shared>,
    ctx: CallCtx,
    picked: Picked,
    picker: &Arc<dyn Picker>,
    resp: Response<Body>,
    t0: Instant,
) -> Response<Body> {
    let picker = Arc::clone(picker);
    let (index, permit) = (picked.index, picked.permit);
    let core = picked.endpoint.core;
    let CallCtx {
        method, started, ..
    } = ctx;
    resp.map(move |body| {
        Body::new(Observed::new(body, move |end| {
            let latency = t0.elapsed();
            let code = match end {
                BodyEnd::Status(code) => code,
                BodyEnd::Error => Code::Unavailable,
                BodyEnd::Dropped => {
                    // The caller went away: neither success nor failure.
                    core.load.cancel();
                    release(&core, permit);
                    record_call(&shared, &method, started, Code::Cancelled);
                    return;
                }
            };
            let outcome = if end == BodyEnd::Error {
                Outcome::TransportError
            } else {
                Outcome::Status(code)
            };
            let picked = Attempted {
                core: &core,
                index,
                permit,
            };
            record_outcome(&shared, picked, &picker, outcome, latency);
            record_call(&shared, &method, started, outcome.code());
        }))
    })
}

/// What [`record_outcome`] needs of an attempt.
struct Attempted<'a> {
    core: &'a Arc<EndpointCore>,
    index: usize,
    permit: Option<Permit>,
}

fn record_attempt(
    shared: &Arc<Shared>,
    core: &Arc<EndpointCore>,
    picked: &Picked,
    picker: &Arc<dyn Picker>,
    outcome: Outcome,
    latency: Duration,
) {
    let attempted = Attempted {
        core,
        index: picked.index,
        permit: picked.permit,
    };
    record_outcome(shared, attempted, picker, outcome, latency);
}

/// Feeds one attempt's outcome to eligibility, the breaker, the load,
/// counters and metrics.
fn record_outcome(
    shared: &Arc<Shared>,
    at: Attempted<'_>,
    picker: &Arc<dyn Picker>,
    outcome: Outcome,
    latency: Duration,
) {
    let core = at.core;
    let failure = shared.config.classifier.is_failure(outcome);
    core.load.end(latency);
    match outcome {
        // No connection: the instance is unreachable, which is its own
        // cause; the breaker neither gains nor loses evidence.
        Outcome::Unreachable => {
            release(core, at.permit);
            shared.mark_unreachable(core);
        }
        // Reached, but the request was not processed (draining server):
        // no evidence about the instance's health either.
        Outcome::NotSent => release(core, at.permit),
        _ => {
            if outcome == Outcome::TransportError {
                // The connection broke: find out at once whether the
                // instance is still there.
                shared.check_reachability(core);
            } else {
                shared.mark_reachable(core);
            }
            if let Some(permit) = at.permit {
                if let Some(t) = core.breaker.record(permit, !failure) {
                    shared.on_transition(core, t);
                }
            }
        }
    }
    let counter = if failure {
        &core.counters.failures
    } else {
        &core.counters.successes
    };
    counter.fetch_add(1, Ordering::Relaxed);
    picker.feedback(
        at.index,
        &Feedback {
            latency,
            success: !failure,
        },
    );
    core.handles.attempt(outcome);
}

fn note_retry(shared: &Shared, ctx: &CallCtx, prev: Option<&Arc<EndpointCore>>, ep: &Endpoint) {
    ClientCounters::incr(&shared.counters.retries);
    ctx.method.retry();
    if let Some(prev) = prev.filter(|p| !Arc::ptr_eq(p, &ep.core)) {
        ClientCounters::incr(&shared.counters.failovers);
        metrics::counter!(m::CLIENT_FAILOVERS, "service" => shared.service.to_string(),
            "from_instance" => prev.label.to_string(), "to_instance" => ep.core.label.to_string())
        .increment(1);
        tracing::debug!(service = %shared.service, method = %ctx.method.path(),
            from = %prev.id, to = %ep.core.id, "failing over");
    }
}

/// Records a finished call whose status is in the response headers.
pub(super) fn finish_call(shared: &Shared, ctx: &CallCtx, resp: Response<Body>) -> Response<Body> {
    let code = classify::grpc_status(resp.headers()).unwrap_or(Code::Ok);
    record_call(shared, &ctx.method, ctx.started, code);
    resp
}

fn record_call(shared: &Shared, method: &MethodEntry, started: Instant, code: Code) {
    let elapsed = started.elapsed();
    let c = &shared.counters;
    ClientCounters::incr(if code == Code::Ok {
        &c.successes
    } else {
        &c.failures
    });
    c.latency.record(elapsed);
    method.call(code, elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_head_rebuilds_the_same_request_head() {
        for extra in [2usize, 20] {
            let mut req = Request::builder()
                .method("POST")
                .uri("http://a.example/pkg.S/M")
                .header("te", "trailers")
                .header("x-multi", "one")
                .header("x-multi", "two");
            for i in 0..extra {
                req = req.header(format!("x-h{i}"), i.to_string());
            }
            let req = req
                .extension(WaitForReady)
                .body(())
                .expect("a valid request");
            let (parts, ()) = req.into_parts();
            let kept = KeptHead::keep(&parts);
            assert_eq!(
                matches!(kept.headers, KeptHeaders::Inline(_)),
                parts.headers.len() <= INLINE_HEADERS
            );
            let again = kept.request(Body::empty(), Some(Duration::from_secs(2)));
            assert_eq!(again.method(), parts.method);
            assert_eq!(again.uri(), &parts.uri);
            let multi: Vec<_> = again.headers().get_all("x-multi").iter().collect();
            assert_eq!(multi, ["one", "two"]);
            let mut expected = parts.headers.clone();
            expected.insert("grpc-timeout", HeaderValue::from_static("2000m"));
            assert_eq!(again.headers(), &expected);
            assert!(again.extensions().get::<WaitForReady>().is_none());
        }
    }

    #[test]
    fn timeout_values_match_the_formatter() {
        let mut nanos = 1u64;
        while nanos < 400_000_000_000_000 {
            for d in [nanos, nanos + 7, nanos * 3 / 2] {
                let d = Duration::from_nanos(d);
                let v = grpc_timeout_value(d).expect("a valid header value");
                assert_eq!(v.to_str().ok(), Some(&*classify::format_grpc_timeout(d)));
                // Again, from the cache.
                let again = grpc_timeout_value(d).expect("a valid header value");
                assert_eq!(again, v);
            }
            nanos = nanos * 10 + 3;
        }
    }
}
