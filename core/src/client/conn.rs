//! An endpoint's connection slot: opened on first use, handed to calls
//! without a clone per attempt, and closed after a long idle period.
//!
//! ```text
//!                first use (call, health check, probe)
//!     Closed ----------------------------------------> Open, used
//!       ^                                               |      ^
//!       |                                      sweep:   |      | a call
//!       |                                  clear flag   v      |
//!       +------------------------------------------ Open, unused
//!          sweep: still unused, nothing in flight,
//!          no health checker holding the connection
//! ```
//!
//! The connection is hyper's HTTP/2 connection, used directly (see
//! [`http2`](super::http2), whose own diagram shows dialing and redialing),
//! or, when the user's endpoint hook configures one, a tonic `Channel`.
//!
//! The idle sweep runs every half idle timeout (see
//! [`ClientBuilder::idle_timeout`](super::ClientBuilder::idle_timeout)), so a
//! connection closes between one and one and a half timeouts after its last
//! call. Calls only set the `used` flag (a load and, once per sweep period, a
//! store): no clock is read on the call path. An endpoint under active
//! health checking keeps its connection, since its checker calls it every
//! interval.
//!
//! A tonic `Channel` is a handle on a buffer in front of the connection, and
//! a freshly cloned handle allocates twice before its first call (the
//! sender's reusable future). So each channel keeps a few spare handles in
//! a lock-free queue: an attempt takes one, waits for the buffer to accept,
//! hands the request over and gives the handle back before awaiting the
//! response. A handle is held only for that short hand-over, so a few
//! spares serve any number of calls in flight.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;
use futures_util::future::Either;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

use super::connect::LazyConnect;
use super::http2::Http2;
use super::BoxError;

/// Spare channel handles kept per open connection.
const SPARE_HANDLES: usize = 8;

/// An open tonic channel and its spare handles.
#[derive(Debug)]
struct Open {
    channel: Channel,
    spare: ArrayQueue<Channel>,
    /// Set by calls, cleared by the idle sweep.
    used: AtomicBool,
}

/// The connection slot of an endpoint: closed until first use.
#[derive(Debug)]
pub(crate) struct Conn {
    kind: Kind,
    /// [`transport_print`](super::connect::transport_print) of the instance
    /// it was prepared for.
    print: u64,
}

#[derive(Debug)]
enum Kind {
    /// hyper's HTTP/2 connection, used directly (the default).
    Http2(Arc<Http2>),
    /// A tonic channel (when the user's endpoint hook configures one).
    Channel(Box<ChannelSlot>),
}

/// How to open a tonic channel, and the open one.
#[derive(Debug)]
struct ChannelSlot {
    connect: LazyConnect,
    open: ArcSwapOption<Open>,
}

impl Conn {
    pub(crate) fn new(connect: LazyConnect) -> Self {
        let print = connect.print();
        let kind = match connect.into_http2() {
            Ok(h2) => Kind::Http2(Arc::new(h2)),
            Err(connect) => Kind::Channel(Box::new(ChannelSlot {
                connect: *connect,
                open: ArcSwapOption::empty(),
            })),
        };
        Self { kind, print }
    }

    /// The open tonic channel, opening it (lazily connecting) when closed.
    fn open(connect: &LazyConnect, slot: &ArcSwapOption<Open>) -> Arc<Open> {
        if let Some(open) = slot.load_full() {
            return open;
        }
        let fresh = Arc::new(Open {
            channel: connect.channel(),
            spare: ArrayQueue::new(SPARE_HANDLES),
            used: AtomicBool::new(true),
        });
        // Two first uses at once: the first one stored wins.
        let previous = slot.compare_and_swap(&None::<Arc<Open>>, Some(fresh.clone()));
        match &*previous {
            Some(winner) => Arc::clone(winner),
            None => fresh,
        }
    }

    /// A service over the connection, for health checks and probes (which
    /// keep it for a whole check).
    pub(crate) fn service(&self) -> ConnService {
        match &self.kind {
            Kind::Http2(h2) => ConnService::Http2(Arc::clone(h2)),
            Kind::Channel(slot) => {
                ConnService::Channel(Self::open(&slot.connect, &slot.open).channel.clone())
            }
        }
    }

    /// Sends one request over the connection.
    pub(crate) fn call(
        &self,
        req: http::Request<Body>,
    ) -> impl Future<Output = Result<http::Response<Body>, BoxError>> + Send + 'static {
        match &self.kind {
            Kind::Http2(h2) => Either::Left(h2.call(req)),
            Kind::Channel(slot) => {
                let open = Self::open(&slot.connect, &slot.open);
                if !open.used.load(Ordering::Relaxed) {
                    open.used.store(true, Ordering::Relaxed);
                }
                // A spare handle when one is free: no channel clone.
                let mut handle = open.spare.pop().unwrap_or_else(|| open.channel.clone());
                Either::Right(async move {
                    handle.ready().await?;
                    let response = handle.call(req);
                    // Full queue: this handle is one too many and is dropped.
                    let _ = open.spare.push(handle);
                    Ok(response.await?)
                })
            }
        }
    }

    /// One step of the idle sweep: closes the connection when no call used
    /// it since the previous step and none is in flight. Returns whether it
    /// was closed.
    pub(crate) fn sweep_idle(&self, in_flight: u32) -> bool {
        match &self.kind {
            Kind::Http2(h2) => h2.sweep_idle(in_flight),
            Kind::Channel(slot) => {
                let Some(open) = slot.open.load_full() else {
                    return false;
                };
                if open.used.swap(false, Ordering::Relaxed) || in_flight > 0 {
                    return false;
                }
                let previous = slot.open.compare_and_swap(&Some(open), None::<Arc<Open>>);
                previous.is_some()
            }
        }
    }

    /// Whether `inst` is connected to the way this connection was prepared
    /// (same TLS metadata).
    pub(crate) fn same_transport(&self, inst: &crate::instance::Instance) -> bool {
        self.print == super::connect::transport_print(inst)
    }

    /// Whether the connection is open (a live HTTP/2 connection, or a tonic
    /// channel created and not closed as idle).
    pub(crate) fn is_open(&self) -> bool {
        match &self.kind {
            Kind::Http2(h2) => h2.is_open(),
            Kind::Channel(slot) => slot.open.load().is_some(),
        }
    }
}

/// A connection as a tower service, for health checks and probes.
#[derive(Debug, Clone)]
pub(crate) enum ConnService {
    Http2(Arc<Http2>),
    Channel(Channel),
}

impl tower::Service<http::Request<Body>> for ConnService {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            ConnService::Http2(_) => Poll::Ready(Ok(())),
            ConnService::Channel(ch) => ch.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self {
            ConnService::Http2(h2) => Box::pin(h2.call(req)),
            ConnService::Channel(ch) => {
                let f = ch.call(req);
                Box::pin(async move { Ok(f.await?) })
            }
        }
    }
}

/// Starts the idle sweep of a client: every half `timeout`, each endpoint's
/// connection takes one [`Conn::sweep_idle`] step. Ends with the client.
pub(crate) fn spawn_idle_sweep(
    runtime: &tokio::runtime::Handle,
    shared: std::sync::Weak<super::Shared>,
    timeout: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    let period = (timeout / 2).max(std::time::Duration::from_millis(1));
    runtime.spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let snapshot = shared.snapshot.load_full();
            let mut closed = 0usize;
            for endpoint in snapshot.endpoints.iter() {
                let core = &endpoint.core;
                if core.health_task.get().is_some() {
                    continue;
                }
                if core.conn.sweep_idle(core.load.in_flight()) {
                    closed += 1;
                }
            }
            if closed > 0 {
                tracing::debug!(service = %shared.service, closed, "closed idle connections");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection through a tonic channel (an endpoint hook is set), so
    /// that opening it dials nothing.
    fn conn() -> Conn {
        let instance =
            crate::instance::Instance::new("a", "greet", "127.0.0.1:1").expect("a valid instance");
        let hook: super::super::connect::EndpointHook = Arc::new(|e, _| e);
        let mut config = super::super::connect::TransportConfig::default();
        config.hook = Some(hook);
        let connect = super::super::connect::prepare(
            &config,
            std::time::Duration::from_millis(100),
            &instance,
        )
        .expect("a valid address");
        Conn::new(connect)
    }

    #[tokio::test]
    async fn opens_on_first_use_and_closes_after_two_idle_sweeps() {
        let c = conn();
        assert!(!c.is_open());
        let _channel = c.service();
        assert!(c.is_open());
        // Used since opening: the first sweep only clears the flag.
        assert!(!c.sweep_idle(0));
        assert!(c.is_open());
        assert!(c.sweep_idle(0));
        assert!(!c.is_open());
        // Reopened on demand.
        let _channel = c.service();
        assert!(c.is_open());
    }

    #[tokio::test]
    async fn a_call_or_one_in_flight_keeps_it_open() {
        let c = conn();
        let _channel = c.service();
        assert!(!c.sweep_idle(0));
        drop(c.call(http::Request::new(Body::empty())));
        assert!(!c.sweep_idle(0), "used since the last sweep");
        assert!(!c.sweep_idle(1), "a call in flight");
        assert!(c.sweep_idle(0));
    }
}
