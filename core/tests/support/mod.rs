//! Real tonic servers on loopback for client tests.
//!
//! Each server runs the standard gRPC health service behind a fault layer
//! that counts calls and, on command, answers `Unavailable` or delays. Every
//! server has its own runtime thread, so `kill` drops it abruptly, with its
//! open connections, like a crashed process.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// What a server does with calls.
#[derive(Debug, Default)]
pub struct Faults {
    /// Calls that reached the server.
    pub calls: AtomicU64,
    /// Answer every call with `Unavailable`.
    pub failing: AtomicBool,
    /// Delay before answering, milliseconds.
    pub delay_ms: AtomicU64,
    /// Answer this many more calls with `Unavailable`.
    pub fail_next: AtomicU64,
    /// Share of calls answered `Unavailable` at random, per mille.
    pub fail_permille: AtomicU64,
    /// A failure window: after this many calls (0: never) ...
    pub fail_after: AtomicU64,
    /// ... answer `Unavailable` for this long (milliseconds).
    pub fail_for_ms: AtomicU64,
    /// The end of the current failure window.
    pub fail_until: Mutex<Option<std::time::Instant>>,
    /// Calls whose handling was dropped before it answered (the client
    /// cancelled them: the stream was reset).
    pub cancelled: AtomicU64,
}

/// Counts a call as cancelled when dropped before it is disarmed.
struct CancelGuard(Option<Arc<Faults>>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Faults {
    /// Whether this call (the `n`-th, from 1) fails.
    fn fails(&self, n: u64) -> bool {
        let after = self.fail_after.load(Ordering::SeqCst);
        let mut until = self.fail_until.lock().unwrap();
        if after > 0 && n == after {
            let d = Duration::from_millis(self.fail_for_ms.load(Ordering::SeqCst));
            *until = Some(std::time::Instant::now() + d);
        }
        if until.is_some_and(|u| std::time::Instant::now() < u) {
            return true;
        }
        drop(until);
        let permille = self.fail_permille.load(Ordering::SeqCst);
        if permille > 0 && fastrand::u64(..1000) < permille {
            return true;
        }
        let fail_once = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        fail_once || self.failing.load(Ordering::SeqCst)
    }
}

/// How a test server is put together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The health service behind the fault layer.
    Health,
    /// No service at all: every call is `UNIMPLEMENTED`.
    Empty,
}

/// The running part of a server, replaced on restart.
struct Running {
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<std::sync::mpsc::Receiver<()>>,
    reporter: Option<tonic_health::server::HealthReporter>,
}

/// A server in its own runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    pub faults: Arc<Faults>,
    kind: Kind,
    running: Mutex<Option<Running>>,
}

impl TestServer {
    /// Starts a server on a free loopback port.
    pub fn start() -> Arc<Self> {
        Self::start_kind(Kind::Health)
    }

    /// Starts a server on `addr` (a port reserved by the test).
    pub fn start_at(addr: SocketAddr) -> Arc<Self> {
        let listener = std::net::TcpListener::bind(addr).expect("bind the given address");
        let server = Arc::new(Self {
            addr,
            faults: Arc::new(Faults::default()),
            kind: Kind::Health,
            running: Mutex::new(None),
        });
        server.serve(listener);
        server
    }

    /// Starts a server without any service, health included.
    pub fn start_without_health() -> Arc<Self> {
        Self::start_kind(Kind::Empty)
    }

    fn start_kind(kind: Kind) -> Arc<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = Arc::new(Self {
            addr,
            faults: Arc::new(Faults::default()),
            kind,
            running: Mutex::new(None),
        });
        server.serve(listener);
        server
    }

    fn serve(&self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let f = Arc::clone(&self.faults);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (reporter, health) = tonic_health::server::health_reporter();
        let kind = self.kind;
        let r = reporter.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            // Closed connections linger, as under `Lifecycle`: a request
            // sent just after the GOAWAY is refused, not reset.
            let linger = fyerrpc::server::Linger::new(Duration::from_secs(2));
            let incoming =
                linger.incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
            let shutdown = async {
                let _ = stop_rx.await;
            };
            match kind {
                Kind::Health => {
                    r.set_service_status("", tonic_health::ServingStatus::Serving)
                        .await;
                    let _ = tonic::transport::Server::builder()
                        .add_service(FaultService {
                            inner: health,
                            faults: f,
                        })
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await;
                }
                Kind::Empty => {
                    let _ = tonic::transport::Server::builder()
                        .add_routes(tonic::service::Routes::default())
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await;
                }
            }
            let _ = done_tx.send(());
        });
        *self.running.lock().unwrap() = Some(Running {
            runtime: rt,
            stop: Some(stop_tx),
            done: Some(done_rx),
            reporter: Some(reporter),
        });
    }

    /// Stops gracefully (GOAWAY, in-flight calls finish), stays down for
    /// `down`, and serves again on the same port.
    pub fn restart_gracefully(&self, down: Duration) {
        let running = self.running.lock().unwrap().take();
        if let Some(mut r) = running {
            if let Some(stop) = r.stop.take() {
                let _ = stop.send(());
            }
            if let Some(done) = r.done.take() {
                let _ = done.recv_timeout(Duration::from_secs(10));
            }
            r.runtime.shutdown_background();
        }
        std::thread::sleep(down);
        let listener = std::net::TcpListener::bind(self.addr).expect("bind the same port again");
        self.serve(listener);
    }

    /// Sets what the health service answers (`SERVING` or `NOT_SERVING`).
    pub fn set_serving(&self, serving: bool) {
        let guard = self.running.lock().unwrap();
        let Some(r) = guard.as_ref() else { return };
        let Some(reporter) = r.reporter.clone() else {
            return;
        };
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        r.runtime
            .spawn(async move { reporter.set_service_status("", status).await });
    }

    /// Fails calls at random, `permille` of them.
    pub fn set_fail_permille(&self, permille: u64) {
        self.faults.fail_permille.store(permille, Ordering::SeqCst);
    }

    /// After `calls` calls, fails every call for `window`.
    pub fn set_failure_window(&self, calls: u64, window: Duration) {
        self.faults
            .fail_for_ms
            .store(window.as_millis() as u64, Ordering::SeqCst);
        self.faults.fail_after.store(calls, Ordering::SeqCst);
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Calls that reached this server.
    pub fn calls(&self) -> u64 {
        self.faults.calls.load(Ordering::SeqCst)
    }

    /// Calls the server stopped handling because the client cancelled them.
    pub fn cancelled(&self) -> u64 {
        self.faults.cancelled.load(Ordering::SeqCst)
    }

    /// Makes the server answer `Unavailable` (or heals it).
    pub fn set_failing(&self, failing: bool) {
        self.faults.failing.store(failing, Ordering::SeqCst);
    }

    /// Answers the next `n` calls with `Unavailable`.
    pub fn fail_next(&self, n: u64) {
        self.faults.fail_next.store(n, Ordering::SeqCst);
    }

    /// Delays every answer.
    pub fn set_delay(&self, d: Duration) {
        self.faults
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Stops the server abruptly: listener and connections are dropped. The
    /// server's runtime stops in the background: a request one of its
    /// workers is handling at that moment may still complete its step.
    pub fn kill(&self) {
        if let Some(r) = self.running.lock().unwrap().take() {
            r.runtime.shutdown_background();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Counts and injects faults in front of an inner gRPC service.
#[derive(Clone)]
struct FaultService<S> {
    inner: S,
    faults: Arc<Faults>,
}

impl<S: NamedService> NamedService for FaultService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<Request<Body>> for FaultService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let faults = Arc::clone(&self.faults);
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let n = faults.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let mut guard = CancelGuard(Some(Arc::clone(&faults)));
            let delay = faults.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            guard.0 = None;
            if faults.fails(n) {
                return Ok(Status::unavailable("injected failure").into_http());
            }
            inner.call(req).await
        })
    }
}

/// The service the test servers serve (the standard health service).
pub const SERVICE: &str = "grpc.health.v1.Health";

/// An instance of [`SERVICE`] at `server`'s address.
pub fn instance(id: &str, server: &TestServer) -> fyerrpc::Instance {
    fyerrpc::Instance::new(id, SERVICE, server.address()).expect("a valid instance")
}

/// `n` servers, and a memory registry listing them as `s0`, `s1`, ...
pub fn cluster_of(n: usize) -> (Vec<Arc<TestServer>>, Arc<fyerrpc::registry::MemoryRegistry>) {
    let servers: Vec<_> = (0..n).map(|_| TestServer::start()).collect();
    let registry = Arc::new(fyerrpc::registry::MemoryRegistry::new());
    for (i, s) in servers.iter().enumerate() {
        registry.insert(instance(&format!("s{i}"), s));
    }
    (servers, registry)
}

/// A client of [`SERVICE`] over `registry` (5 s request timeout, `f` for
/// the rest), once it has discovered an instance.
pub async fn client_of(
    registry: Arc<fyerrpc::registry::MemoryRegistry>,
    f: impl FnOnce(fyerrpc::ClientBuilder) -> fyerrpc::ClientBuilder,
) -> fyerrpc::Client {
    init_tracing();
    let builder = fyerrpc::Client::builder(SERVICE, registry as Arc<dyn fyerrpc::Registry>)
        .request_timeout(Duration::from_secs(5));
    let client = f(builder).build().await.expect("client");
    client.ready(Duration::from_secs(5)).await.expect("ready");
    client
}

/// A loopback address where nothing listens (yet).
pub fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// The method the tests call.
pub const METHOD: &str = "/grpc.health.v1.Health/Check";

/// One call through a client service, as a tonic-generated client makes it.
pub async fn check<T>(client: T) -> Result<(), Status>
where
    T: tonic::client::GrpcService<Body> + Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    HealthClient::new(client)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
}

/// The same, with a deadline.
pub async fn check_within<T>(client: T, timeout: Duration) -> Result<(), Status>
where
    T: tonic::client::GrpcService<Body> + Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.set_timeout(timeout);
    HealthClient::new(client).check(req).await.map(|_| ())
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
