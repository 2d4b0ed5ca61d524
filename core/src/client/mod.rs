//! The resilient client: a cloneable `tower::Service` that tonic-generated
//! clients use unchanged.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use fyerrpc::{Client, Registry};
//! use fyerrpc_registry_static::StaticRegistry;
//! // Any tonic-generated client works; here, the standard health service's.
//! use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let registry: Arc<dyn Registry> = Arc::new(StaticRegistry::from_addresses(
//!     "grpc.health.v1.Health",
//!     "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003",
//! )?);
//! let client = Client::builder("grpc.health.v1.Health", registry)
//!     .request_timeout(Duration::from_secs(2))
//!     .build()
//!     .await?;
//! client.ready(Duration::from_secs(5)).await?;
//!
//! let mut health = HealthClient::new(client.clone());
//! let reply = health
//!     .check(HealthCheckRequest { service: String::new() })
//!     .await?;
//! println!("{:?} {:?}", reply.into_inner().status, client.stats());
//! # Ok(())
//! # }
//! ```
//!
//! The path of one call: the request body is buffered when small (so it can
//! be sent again); for each attempt the current snapshot of endpoints is
//! loaded without locking, the balancer picks among endpoints that are
//! neither tried by this call nor ejected (open breaker, failed health
//! check), the endpoint's breaker grants a slot, and the request goes out on
//! that instance's own lazily connected channel with the remaining deadline.
//! The outcome feeds the breaker, the balancer's load figures and the
//! metrics; failures that are safe to retry are retried on another instance
//! after a jittered backoff, within the retry budget and the deadline.

mod body;
mod builder;
mod call;
mod connect;
mod endpoint;
mod handles;
mod snapshot;

pub use builder::{ClientBuilder, ClientError, DEFAULT_HASH_HEADER};
pub use call::BoxError;
pub use connect::{
    ChannelError, ConnectFailure, EndpointHook, TransportMismatch, TLS_METADATA_KEY,
    TLS_SERVER_NAME_METADATA_KEY,
};

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::body::Body;

use crate::breaker::Transition;
use crate::failover::{Backoff, RetryBudget};
use crate::metrics::{self as m, ClientCounters, InstanceCounters, InstanceStats, Stats};
use crate::registry::Registry;
use builder::Config;
use endpoint::{Ejections, EndpointCore};
use snapshot::Snapshot;

/// State shared by all clones of a client.
pub(crate) struct Shared {
    service: Arc<str>,
    registry: Arc<dyn Registry>,
    config: Config,
    snapshot: ArcSwap<Snapshot>,
    ejections: Arc<Ejections>,
    budget: RetryBudget,
    backoff: Backoff,
    counters: ClientCounters,
    instances: Mutex<HashMap<String, (String, Arc<InstanceCounters>)>>,
    ready: watch::Sender<usize>,
    method_metrics: handles::MethodTable,
}

impl Shared {
    fn instance_counters(&self, id: &str, address: &str) -> Arc<InstanceCounters> {
        let mut map = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map
            .entry(id.to_owned())
            .or_insert_with(|| (address.to_owned(), Arc::default()));
        entry.0 = address.to_owned();
        Arc::clone(&entry.1)
    }

    fn on_transition(&self, core: &EndpointCore, t: Transition) {
        core.count_transition(t);
        if t.to == crate::breaker::BreakerState::Open {
            ClientCounters::incr(&self.counters.breaker_trips);
            tracing::warn!(service = %self.service, instance = %core.id, from = %t.from,
                "circuit breaker opened: instance ejected");
        } else {
            tracing::info!(service = %self.service, instance = %core.id, from = %t.from,
                to = %t.to, "circuit breaker state changed");
        }
        metrics::counter!(m::CLIENT_BREAKER_TRANSITIONS, "service" => self.service.to_string(),
            "instance" => core.id.clone(), "to" => t.to.as_str())
        .increment(1);
        metrics::gauge!(m::CLIENT_BREAKER_STATE, "service" => self.service.to_string(),
            "instance" => core.id.clone())
        .set(t.to.gauge());
        metrics::gauge!(m::CLIENT_ENDPOINTS, "service" => self.service.to_string(),
            "state" => "ejected")
        .set(
            self.ejections
                .open
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        );
    }
}

/// Aborts the discovery task when the last client clone goes away.
struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A resilient gRPC client for one service: discovery, balancing, failover,
/// circuit breaking and health checks behind a `tower::Service` that tonic
/// clients take as their transport. Cloning is cheap and clones share all
/// state. See the [module docs](self).
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    _task: Arc<TaskGuard>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("service", &self.shared.service)
            .field("endpoints", &self.shared.snapshot.load().endpoints.len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts building a client for `service`, discovered in `registry`.
    pub fn builder(service: impl Into<String>, registry: Arc<dyn Registry>) -> ClientBuilder {
        ClientBuilder::new(service.into(), registry)
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// Waits until the registry has reported at least one instance.
    pub async fn ready(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut rx = self.shared.ready.subscribe();
        let seen = tokio::time::timeout(timeout, rx.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok());
        if seen {
            Ok(())
        } else {
            Err(ClientError::NoInstances {
                service: self.shared.service.to_string(),
                waited: timeout,
            })
        }
    }

    /// The instances currently in use, in snapshot order.
    pub fn instances(&self) -> Vec<crate::Instance> {
        self.shared
            .snapshot
            .load()
            .endpoints
            .iter()
            .map(|e| (*e.instance).clone())
            .collect()
    }

    /// A snapshot of the client's counters: totals, retries, failovers,
    /// breaker trips, latency, and per-instance counts.
    pub fn stats(&self) -> Stats {
        let snap = self.shared.snapshot.load();
        let live: HashMap<&str, &EndpointCore> = snap
            .endpoints
            .iter()
            .map(|e| (e.core.id.as_str(), &*e.core))
            .collect();
        let map = self
            .shared
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut instances: Vec<InstanceStats> = map
            .iter()
            .map(|(id, (address, c))| {
                let get =
                    |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                let core = live.get(id.as_str());
                InstanceStats {
                    id: id.clone(),
                    address: address.clone(),
                    attempts: get(&c.attempts),
                    successes: get(&c.successes),
                    failures: get(&c.failures),
                    breaker: core.map_or("removed".to_owned(), |c| {
                        c.breaker.state().as_str().to_owned()
                    }),
                    healthy: core.is_some_and(|c| c.is_healthy()),
                }
            })
            .collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        self.shared.counters.snapshot(instances)
    }
}

impl tower::Service<Request<Body>> for Client {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is per instance and decided at pick time.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(call::call(Arc::clone(&self.shared), req))
    }
}
