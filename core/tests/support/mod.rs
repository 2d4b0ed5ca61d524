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
}

/// A server in its own runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    pub faults: Arc<Faults>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl TestServer {
    /// Starts a server on a free loopback port.
    pub fn start() -> Arc<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let faults = Arc::new(Faults::default());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let f = Arc::clone(&faults);
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(FaultService {
                    inner: health,
                    faults: f,
                })
                .serve_with_incoming(incoming)
                .await;
        });
        Arc::new(Self {
            addr,
            faults,
            runtime: Mutex::new(Some(rt)),
        })
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Calls that reached this server.
    pub fn calls(&self) -> u64 {
        self.faults.calls.load(Ordering::SeqCst)
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

    /// Stops the server abruptly: listener and connections are dropped.
    pub fn kill(&self) {
        if let Some(rt) = self.runtime.lock().unwrap().take() {
            rt.shutdown_background();
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
            faults.calls.fetch_add(1, Ordering::SeqCst);
            let delay = faults.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let fail_once = faults
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if fail_once || faults.failing.load(Ordering::SeqCst) {
                return Ok(Status::unavailable("injected failure").into_http());
            }
            inner.call(req).await
        })
    }
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
