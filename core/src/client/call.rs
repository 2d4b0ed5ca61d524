//! One call through the client: pick, attempt, classify, retry elsewhere.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::ServiceExt;

use super::body::{BodyEnd, Observed, Replay};
use super::endpoint::{Endpoint, EndpointCore};
use super::snapshot::Snapshot;
use super::Shared;
use crate::balance::{Feedback, PickContext};
use crate::failover::classify::{self, Outcome};
use crate::failover::Strategy;
use crate::metrics::{self as m, ClientCounters};

/// The error type of the client service. Calls end with a gRPC status in the
/// response (synthesized when no instance answered), so this is only used for
/// failures of the client itself.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Endpoints this call has tried, by core identity.
struct Tried(Vec<Arc<EndpointCore>>);

impl Tried {
    fn contains(&self, core: &Arc<EndpointCore>) -> bool {
        self.0.iter().any(|c| Arc::ptr_eq(c, core))
    }
}

/// An endpoint of a snapshot, by index.
#[derive(Clone, Copy)]
struct At<'a> {
    snap: &'a Arc<Snapshot>,
    index: usize,
}

impl At<'_> {
    fn endpoint(&self) -> &Endpoint {
        &self.snap.endpoints[self.index]
    }
}

/// The per-call facts every attempt needs.
struct CallCtx {
    method: String,
    hash: Option<u64>,
    /// When the call must end (`None`: no deadline).
    deadline: Option<Instant>,
    started: Instant,
    idempotent: bool,
}

pub(crate) async fn call(
    shared: Arc<Shared>,
    req: Request<Body>,
) -> Result<Response<Body>, BoxError> {
    let started = Instant::now();
    ClientCounters::incr(&shared.counters.requests);
    shared.budget.deposit();
    let (parts, body) = req.into_parts();
    let method = parts.uri.path().to_owned();
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
        idempotent: shared.config.failover.is_idempotent(&method),
        method,
        hash,
        deadline: timeout.map(|t| started + t),
        started,
    };
    let mut replay = match Replay::prepare(body, shared.config.failover.max_buffered_body) {
        Ok(r) => r,
        Err(status) => return Ok(finish_call(&shared, &ctx, status.into_http())),
    };

    let max_attempts = shared.config.failover.max_attempts();
    let mut tried = Tried(Vec::new());
    let mut prev: Option<Arc<EndpointCore>> = None;
    let mut attempt = 0u32;
    loop {
        let snap = shared.snapshot.load_full();
        let Some((index, ep)) = acquire(&shared, &snap, &ctx, &tried, prev.as_ref(), attempt)
        else {
            let status = if snap.endpoints.is_empty() {
                Status::unavailable(format!("no instance of {} is known", shared.service))
            } else {
                Status::unavailable(format!(
                    "no available instance of {} (all tried or ejected)",
                    shared.service
                ))
            };
            return Ok(finish_call(&shared, &ctx, status.into_http()));
        };
        if attempt > 0 {
            note_retry(&shared, &ctx, prev.as_ref(), &ep);
        }
        let remaining = ctx
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        if remaining.is_some_and(|r| r.is_zero()) {
            ep.core.breaker.release();
            let status = Status::deadline_exceeded("deadline exceeded before the call was sent");
            return Ok(finish_call(&shared, &ctx, status.into_http()));
        }
        let attempt_timeout = match (shared.config.failover.attempt_timeout, remaining) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        };
        let Some(body) = replay.next_body() else {
            ep.core.breaker.release();
            return Ok(finish_call(
                &shared,
                &ctx,
                Status::internal("request body already sent").into_http(),
            ));
        };
        let req = attempt_request(&parts, body, attempt_timeout);
        let at = At { snap: &snap, index };
        let (outcome, resp) = send(&shared, &ctx, at, req, attempt_timeout).await;
        let Some(outcome) = outcome else {
            // A response whose status comes in trailers: return it, observed.
            let resp = resp.unwrap_or_else(|| Status::internal("missing response").into_http());
            return Ok(resp);
        };
        attempt += 1;

        let retry = !outcome.is_success()
            && attempt < max_attempts
            && replay.can_replay()
            && is_retryable(&shared, &ctx, outcome);
        if !retry {
            let resp = resp.unwrap_or_else(|| status_for(outcome, &ep).into_http());
            return Ok(finish_call(&shared, &ctx, resp));
        }
        if !shared.budget.withdraw() {
            ClientCounters::incr(&shared.counters.budget_exhausted);
            metrics::counter!(m::CLIENT_BUDGET_EXHAUSTED, "service" => shared.service.to_string())
                .increment(1);
            tracing::debug!(service = %shared.service, method = %ctx.method, "retry budget spent");
            let resp = resp.unwrap_or_else(|| status_for(outcome, &ep).into_http());
            return Ok(finish_call(&shared, &ctx, resp));
        }
        tried.0.push(Arc::clone(&ep.core));
        prev = Some(Arc::clone(&ep.core));
        let delay = shared.backoff.delay(attempt);
        if ctx.deadline.is_some_and(|d| Instant::now() + delay >= d) {
            let status = Status::deadline_exceeded(format!(
                "deadline exceeded before retry {attempt} (last error: {})",
                status_for(outcome, &ep).message()
            ));
            return Ok(finish_call(&shared, &ctx, status.into_http()));
        }
        tokio::time::sleep(delay).await;
    }
}

fn is_retryable(shared: &Shared, ctx: &CallCtx, outcome: Outcome) -> bool {
    match outcome {
        Outcome::NotSent => true,
        Outcome::Status(code) => shared.config.failover.may_retry_code(&ctx.method, code),
        Outcome::TransportError | Outcome::TimedOut => ctx.idempotent,
    }
}

fn status_for(outcome: Outcome, ep: &Endpoint) -> Status {
    let what = match outcome {
        Outcome::NotSent => "could not reach",
        Outcome::TransportError => "connection failed to",
        Outcome::TimedOut => "timed out waiting for",
        Outcome::Status(_) => "error from",
    };
    Status::new(
        outcome.code(),
        format!("{what} instance {} ({})", ep.core.id, ep.core.address),
    )
}

/// Picks an eligible endpoint and claims a breaker slot on it.
fn acquire(
    shared: &Shared,
    snap: &Snapshot,
    ctx: &CallCtx,
    tried: &Tried,
    prev: Option<&Arc<EndpointCore>>,
    attempt: u32,
) -> Option<(usize, Endpoint)> {
    let n = snap.endpoints.len();
    if n == 0 {
        return None;
    }
    let ejected = shared.ejections.total();
    let panic = ejected as f64 > shared.config.max_ejection_ratio * n as f64;
    if panic {
        metrics::counter!(m::CLIENT_PANIC_PICKS, "service" => shared.service.to_string())
            .increment(1);
    }
    // First only endpoints this call has not tried; when every endpoint has
    // been tried, a retry may go back to one (a single-instance service).
    let passes: &[bool] = if attempt == 0 {
        &[false]
    } else {
        &[false, true]
    };
    for &allow_tried in passes {
        let eligible = |i: usize| {
            let core = &snap.endpoints[i].core;
            (allow_tried || !tried.contains(core)) && (panic || core.is_available())
        };
        if let Some(found) = pick_available(shared, snap, ctx, prev, attempt, panic, &eligible) {
            return Some(found);
        }
    }
    // Nothing eligible: rather than fail, try the endpoint that failed least
    // recently, breaker or not, preferring one this call has not tried.
    snap.endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| e.core.is_healthy())
        .min_by_key(|(_, e)| (tried.contains(&e.core), e.core.last_failure()))
        .map(|(i, e)| (i, e.clone()))
}

/// Picks among eligible endpoints and claims a breaker slot on the pick.
fn pick_available(
    shared: &Shared,
    snap: &Snapshot,
    ctx: &CallCtx,
    prev: Option<&Arc<EndpointCore>>,
    attempt: u32,
    panic: bool,
    eligible: &(dyn Fn(usize) -> bool + Sync),
) -> Option<(usize, Endpoint)> {
    for _ in 0..snap.endpoints.len() {
        let pick = if attempt == 0 {
            let pctx = PickContext {
                method: &ctx.method,
                hash: ctx.hash,
                attempt,
                eligible,
            };
            snap.picker.pick(&pctx)
        } else {
            pick_retry(shared.config.failover.strategy, snap, prev, eligible)
        };
        let i = pick?;
        let ep = &snap.endpoints[i];
        if panic {
            return Some((i, ep.clone()));
        }
        let (granted, transition) = ep.core.breaker.try_acquire();
        if let Some(t) = transition {
            shared.on_transition(&ep.core, t);
        }
        if granted {
            return Some((i, ep.clone()));
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

fn attempt_request(
    parts: &http::request::Parts,
    body: Body,
    timeout: Option<Duration>,
) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    *req.extensions_mut() = parts.extensions.clone();
    if let Some(timeout) = timeout {
        if let Ok(v) = HeaderValue::from_str(&classify::format_grpc_timeout(timeout)) {
            req.headers_mut().insert(GRPC_TIMEOUT.clone(), v);
        }
    }
    req
}

/// Sends one attempt. Returns the outcome when it is known from the headers
/// (with the response, if any); `None` with an observed response when the
/// status will come in trailers.
async fn send(
    shared: &Arc<Shared>,
    ctx: &CallCtx,
    at: At<'_>,
    req: Request<Body>,
    timeout: Option<Duration>,
) -> (Option<Outcome>, Option<Response<Body>>) {
    let core = &at.endpoint().core;
    core.load.start();
    metrics_attempt_start(core);
    let t0 = Instant::now();
    let guard = Cancelled(Some(core));
    let call = core.channel.clone().oneshot(req);
    let result = match timeout {
        Some(t) => tokio::time::timeout(t, call).await,
        None => Ok(call.await),
    };
    guard.disarm();
    let (outcome, resp) = match result {
        Err(_) => (Outcome::TimedOut, None),
        Ok(Err(e)) => {
            let outcome = classify::classify_error(&e);
            // Why the instance could not be reached (refused certificate,
            // protocol mismatch, ...) goes into the caller's status.
            let resp = (outcome != Outcome::TimedOut).then(|| {
                let message = format!(
                    "{}: {}",
                    status_for(outcome, at.endpoint()).message(),
                    super::connect::describe(&e)
                );
                Status::new(outcome.code(), message).into_http()
            });
            (outcome, resp)
        }
        Ok(Ok(resp)) => match classify::grpc_status(resp.headers()) {
            Some(code) => (Outcome::Status(code), Some(resp)),
            None => return (None, Some(observe(shared, ctx, at, resp, t0))),
        },
    };
    record_attempt(shared, at, outcome, t0.elapsed());
    (Some(outcome), resp)
}

/// Undoes an attempt's start when the caller drops the call mid-attempt:
/// the load goes back down and a half-open probe slot is given back.
struct Cancelled<'a>(Option<&'a EndpointCore>);

impl Cancelled<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Cancelled<'_> {
    fn drop(&mut self) {
        if let Some(core) = self.0.take() {
            core.load.cancel();
            core.breaker.release();
        }
    }
}

fn metrics_attempt_start(core: &EndpointCore) {
    core.counters.attempts.fetch_add(1, Ordering::Relaxed);
}

/// Wraps a streaming response so that its end records the attempt and the call.
fn observe(
    shared: &Arc<Shared>,
    ctx: &CallCtx,
    at: At<'_>,
    resp: Response<Body>,
    t0: Instant,
) -> Response<Body> {
    let shared = Arc::clone(shared);
    let snap = Arc::clone(at.snap);
    let index = at.index;
    let core = Arc::clone(&at.endpoint().core);
    let method = ctx.method.clone();
    let started = ctx.started;
    resp.map(move |body| {
        Body::new(Observed::new(body, move |end| {
            let latency = t0.elapsed();
            let code = match end {
                BodyEnd::Status(code) => code,
                BodyEnd::Error => Code::Unavailable,
                BodyEnd::Dropped => {
                    // The caller went away: neither success nor failure.
                    core.load.cancel();
                    core.breaker.release();
                    record_call(&shared, &method, started, Code::Cancelled);
                    return;
                }
            };
            let outcome = if end == BodyEnd::Error {
                Outcome::TransportError
            } else {
                Outcome::Status(code)
            };
            record_attempt(&shared, At { snap: &snap, index }, outcome, latency);
            record_call(&shared, &method, started, outcome.code());
        }))
    })
}

/// Feeds one attempt's outcome to the breaker, the load, counters and metrics.
fn record_attempt(shared: &Shared, at: At<'_>, outcome: Outcome, latency: Duration) {
    let core = &at.endpoint().core;
    let failure = shared.config.classifier.is_failure(outcome);
    core.load.end(latency);
    if let Some(t) = core.breaker.record(!failure) {
        shared.on_transition(core, t);
    }
    let counter = if failure {
        core.mark_failure();
        &core.counters.failures
    } else {
        &core.counters.successes
    };
    counter.fetch_add(1, Ordering::Relaxed);
    at.snap.picker.feedback(
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
    shared.method_metrics.retry(&ctx.method);
    if let Some(prev) = prev.filter(|p| !Arc::ptr_eq(p, &ep.core)) {
        ClientCounters::incr(&shared.counters.failovers);
        metrics::counter!(m::CLIENT_FAILOVERS, "service" => shared.service.to_string(),
            "from_instance" => prev.id.clone(), "to_instance" => ep.core.id.clone())
        .increment(1);
        tracing::debug!(service = %shared.service, method = %ctx.method,
            from = %prev.id, to = %ep.core.id, "failing over");
    }
}

/// Records a finished call whose status is in the response headers.
fn finish_call(shared: &Shared, ctx: &CallCtx, resp: Response<Body>) -> Response<Body> {
    let code = classify::grpc_status(resp.headers()).unwrap_or(Code::Ok);
    record_call(shared, &ctx.method, ctx.started, code);
    resp
}

fn record_call(shared: &Shared, method: &str, started: Instant, code: Code) {
    let elapsed = started.elapsed();
    let c = &shared.counters;
    ClientCounters::incr(if code == Code::Ok {
        &c.successes
    } else {
        &c.failures
    });
    c.latency.record(elapsed);
    shared
        .method_metrics
        .call(method, code, elapsed.as_secs_f64());
}
