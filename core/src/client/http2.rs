//! The HTTP/2 connection to one instance, driven by hyper directly.
//!
//! ```text
//!            a call, health check or probe finds no live connection
//!     Idle ---------------------------------------------------------> Dialing
//!      ^  ^                                                           |    |
//!      |  |  the dial failed: it and every caller that waited          |    |
//!      |  +--- on it get its error (one dial, not one per caller) -----+    |
//!      |                                                                    | TCP (TLS) and the
//!      |                                                                    v HTTP/2 handshake
//!      +---- the connection ended (GOAWAY, EOF, I/O error, ------------- Ready
//!            closed as idle): the next call dials again            each call clones
//!                                                                  the request sender
//! ```
//!
//! A request that a closing connection gave back unsent is sent once more,
//! on a fresh connection (dialing, or waiting for the dial under way), so a
//! call or a reachability check made just after the instance went away
//! learns that it is gone (the dial fails) rather than that its old
//! connection is.
//!
//! Why not tonic's `Channel`: a `Channel` is a handle on a buffer whose
//! worker task makes every call, so each call wakes that task and waits for
//! it, one more task hop (and, on a multi-threaded runtime, often one more
//! thread wake-up) than the call needs. Here a call hands its request
//! straight to hyper's connection task, as tonic's channel does from its
//! worker. What the channel's layers add is done here or above: the origin
//! (scheme and authority) and user agent are set on each request, the
//! deadline is the client's own attempt timer, and reconnecting is the dial
//! above. The connection's writes are coalesced unless
//! `coalesce_writes(false)` (`connect::coalesce`): its task yields once
//! before a write under 4 KiB, so the requests of calls made at nearly the
//! same moment share one write. A client given an endpoint hook
//! ([`ClientBuilder::endpoint_config`](super::ClientBuilder::endpoint_config))
//! uses tonic's channel instead, since the hook configures one.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::client::conn::http2::SendRequest;
use tonic::body::Body;

use super::connect::How;
use super::BoxError;

/// The user agent the client's requests carry (unless they have one).
static USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("fyerrpc/", env!("CARGO_PKG_VERSION")));

/// HTTP/2 keep-alive: a PING after this long without frames received, on a
/// connection with calls in flight.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// One instance's HTTP/2 connection: dialed on first use, redialed on the
/// first use after it ends.
pub(crate) struct Http2 {
    how: How,
    scheme: Scheme,
    authority: Authority,
    connect_timeout: Duration,
    /// Whether the connection's writes are coalesced (see
    /// `connect::coalesce`).
    coalesce_writes: bool,
    /// The request sender of the live connection, if any.
    live: ArcSwapOption<SendRequest<Body>>,
    /// One dial at a time, and the outcome of the last one.
    dialing: tokio::sync::Mutex<LastDial>,
    /// Dials finished so far (read without the lock).
    dials: AtomicU64,
    /// Set by calls, cleared by the idle sweep.
    used: AtomicBool,
}

/// What the last dial left for the callers that waited on it.
#[derive(Default)]
struct LastDial {
    failure: Option<Arc<dyn StdError + Send + Sync>>,
}

impl fmt::Debug for Http2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http2")
            .field("authority", &self.authority)
            .field("live", &self.is_open())
            .finish()
    }
}

impl Http2 {
    pub(crate) fn new(
        how: How,
        tls: bool,
        authority: Authority,
        connect_timeout: Duration,
        coalesce_writes: bool,
    ) -> Self {
        Self {
            coalesce_writes,
            how,
            scheme: if tls { Scheme::HTTPS } else { Scheme::HTTP },
            authority,
            connect_timeout,
            live: ArcSwapOption::empty(),
            dialing: tokio::sync::Mutex::new(LastDial::default()),
            dials: AtomicU64::new(0),
            used: AtomicBool::new(false),
        }
    }

    /// Sends one request over the connection, dialing first when there is
    /// none. A failed dial fails with a `tonic::ConnectError` (the request
    /// was not sent).
    pub(crate) fn call(
        self: &Arc<Self>,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, BoxError>> + Send + 'static {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
        let ready = self.ready_sender();
        let this = Arc::clone(self);
        async move {
            let mut send = match ready {
                Some(send) => send,
                // Boxed: the dial's future (TCP, TLS and HTTP/2 handshakes)
                // is large, and every call's future would carry its space.
                None => Box::pin(this.dial_or_wait()).await?,
            };
            let req = this.with_origin(req)?;
            match send.try_send_request(req).await {
                Ok(resp) => Ok(resp.map(Body::new)),
                // Boxed: the rarely taken path would otherwise make every
                // call's future larger (it is moved whole on every call).
                Err(e) => Box::pin(this.resend(e)).await,
            }
        }
    }

    /// A request the connection gave back unsent (it was closing) goes once
    /// more, on a fresh connection; any other failure is returned.
    async fn resend(
        &self,
        mut e: hyper::client::conn::TrySendError<Request<Body>>,
    ) -> Result<Response<Body>, BoxError> {
        match e.take_message() {
            Some(req) => {
                let mut send = Box::pin(self.dial_or_wait()).await?;
                Ok(send.send_request(req).await?.map(Body::new))
            }
            None => Err(Box::new(e.into_error()) as BoxError),
        }
    }

    /// A clone of the live connection's sender, if it is still open.
    fn ready_sender(&self) -> Option<SendRequest<Body>> {
        let live = self.live.load();
        live.as_deref().filter(|s| !s.is_closed()).cloned()
    }

    /// Dials, or waits for the dial under way and shares its outcome.
    async fn dial_or_wait(&self) -> Result<SendRequest<Body>, BoxError> {
        let seen = self.dials.load(Ordering::Acquire);
        let mut last = self.dialing.lock().await;
        if let Some(send) = self.ready_sender() {
            return Ok(send);
        }
        if self.dials.load(Ordering::Acquire) != seen {
            if let Some(failure) = &last.failure {
                // Another caller's dial failed while this one waited.
                return Err(Box::new(tonic::ConnectError(Box::new(SharedFailure(
                    Arc::clone(failure),
                )))));
            }
        }
        let result = tokio::time::timeout(
            self.connect_timeout,
            self.how.handshake(self.coalesce_writes),
        )
        .await;
        self.dials.fetch_add(1, Ordering::AcqRel);
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(Box::new(tonic::ConnectError(Box::new(DialTimedOut(
                self.connect_timeout,
            )))) as BoxError),
        };
        match result {
            Ok(send) => {
                last.failure = None;
                self.live.store(Some(Arc::new(send.clone())));
                Ok(send)
            }
            Err(e) => {
                let shared: Arc<dyn StdError + Send + Sync> = Arc::from(e);
                last.failure = Some(Arc::clone(&shared));
                self.live.store(None);
                Err(Box::new(SharedFailure(shared)))
            }
        }
    }

    /// The request with this instance's scheme and authority (tonic's
    /// generated clients send the path only) and a user agent.
    fn with_origin(&self, req: Request<Body>) -> Result<Request<Body>, BoxError> {
        let (mut parts, body) = req.into_parts();
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        parts.uri = Uri::from_parts(uri)?;
        if !parts.headers.contains_key(http::header::USER_AGENT) {
            parts
                .headers
                .insert(http::header::USER_AGENT, USER_AGENT.clone());
        }
        Ok(Request::from_parts(parts, body))
    }

    /// Whether a connection is live (dialed and not ended).
    pub(crate) fn is_open(&self) -> bool {
        self.live.load().as_deref().is_some_and(|s| !s.is_closed())
    }

    /// One step of the idle sweep (see [`conn`](super::conn)): drops the
    /// connection when no call used it since the previous step and none is
    /// in flight. Returns whether it was closed.
    pub(crate) fn sweep_idle(&self, in_flight: u32) -> bool {
        if self.used.swap(false, Ordering::Relaxed) || in_flight > 0 {
            return false;
        }
        // Dropping the last sender lets hyper close the connection.
        self.live.swap(None).is_some()
    }
}

/// A dial's failure, shared by the callers that waited on it. Displays and
/// chains as the failure itself, so classification and messages see it.
#[derive(Debug)]
struct SharedFailure(Arc<dyn StdError + Send + Sync>);

impl fmt::Display for SharedFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for SharedFailure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        let inner: &(dyn StdError + 'static) = &*self.0;
        Some(inner)
    }
}

/// The dial took longer than the connect timeout.
#[derive(Debug)]
struct DialTimedOut(Duration);

impl fmt::Display for DialTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connecting timed out after {:?}", self.0)
    }
}

impl StdError for DialTimedOut {}

/// The executor of the tasks hyper spawns for a connection (for every
/// request, the one that waits for its response, and one more for a body
/// not sent in one go): it boxes the future before spawning it. A spawned
/// future is moved into its task by value, and hyper's HTTP/2 futures are
/// large, so spawning them unboxed copies their bytes several times (into
/// the spawn call, the task cell, its stage); one allocation costs less.
#[derive(Clone, Copy, Debug)]
struct BoxedExecutor;

impl<F> hyper::rt::Executor<F> for BoxedExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Box::pin(fut));
    }
}

/// Starts HTTP/2 on a connected stream and spawns the task that drives the
/// connection; returns its request sender.
pub(crate) async fn start<T>(io: T) -> Result<SendRequest<Body>, BoxError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::Builder::new(BoxedExecutor)
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_while_idle(false)
        .handshake(io)
        .await
        .map_err(|e| Box::new(tonic::ConnectError(Box::new(e))) as BoxError)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
        }
    });
    Ok(send)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::classify::{classify_error, Outcome};

    fn refused() -> Arc<Http2> {
        // A port nothing listens on: bound, then closed.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let instance = crate::instance::Instance::new("a", "greet", addr.to_string())
            .expect("a valid instance");
        let connect = super::super::connect::prepare(
            &super::super::connect::TransportConfig::default(),
            Duration::from_secs(1),
            &instance,
        )
        .expect("a valid address");
        Arc::new(connect.into_http2().expect("no endpoint hook"))
    }

    #[tokio::test]
    async fn callers_waiting_on_a_failed_dial_share_its_error() {
        let h2 = refused();
        let calls = (0..8).map(|_| h2.call(Request::new(Body::empty())));
        let results = futures_util::future::join_all(calls).await;
        for r in results {
            let e = r.expect_err("nothing listens");
            assert_eq!(classify_error(&*e), Outcome::Unreachable, "{e}");
            assert!(e.to_string().contains("cannot connect"), "{e}");
        }
        assert_eq!(h2.dials.load(Ordering::Relaxed), 1, "one dial for all");
        assert!(!h2.is_open());
        // A later call dials again.
        let _ = h2.call(Request::new(Body::empty())).await;
        assert_eq!(h2.dials.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn requests_get_the_instance_origin_and_a_user_agent() {
        let h2 = refused();
        let req = Request::builder()
            .uri("/greet.GreetService/SayHello")
            .body(Body::empty())
            .expect("a valid request");
        let req = h2.with_origin(req).expect("a valid origin");
        assert_eq!(req.uri().scheme(), Some(&Scheme::HTTP));
        assert_eq!(req.uri().authority(), Some(&h2.authority));
        assert_eq!(req.uri().path(), "/greet.GreetService/SayHello");
        let ua = req.headers()[http::header::USER_AGENT]
            .to_str()
            .unwrap_or("");
        assert!(ua.starts_with("fyerrpc/"), "{ua}");
    }
}
