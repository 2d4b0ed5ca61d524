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
//! loaded without locking, the balancer picks among endpoints that this call
//! has not tried and that are eligible (see below), the endpoint's breaker
//! grants a permit, and the request goes out on that instance's own HTTP/2
//! connection (dialed on first use) with the remaining deadline. The outcome feeds the
//! breaker, the balancer's load figures and the metrics.
//!
//! Then, when the attempt failed:
//! * an attempt that never reached a server's application (no connection,
//!   refused stream, above a `GOAWAY`'s last stream) is sent again at once
//!   to another instance, for every method, outside the retry budget and the
//!   retry count (gRPC's transparent retries), at most once per instance;
//! * a failure that is safe to retry is retried within the retry budget and
//!   the deadline: at once on an untried eligible instance when there is
//!   one (immediate failover), after the jittered backoff otherwise;
//! * when retries stop, the call ends with the last attempt's real status.
//!
//! A method with a [hedging policy](crate::failover::hedge) takes another
//! path: when its first attempt is slow to answer, copies go to other
//! instances and the first answer wins (the others are cancelled). Calls of
//! other methods pay nothing for it.
//!
//! Eligibility has one owner per endpoint, with its causes as fields:
//! unreachable (hard evidence: never picked), breaker open, failing health
//! checks (statistical: ignored in panic mode — open breakers when more than
//! `max_ejection_ratio` of the reachable instances are ejected, failing
//! health too when more than that share fail their checks), disabled by the
//! registry. [`Stats::instances`] says for each instance why it is not
//! eligible, and `fyerrpc_client_endpoints{state}` counts them. When every
//! known instance is unreachable, calls fail at once with `UNAVAILABLE`
//! naming them, unless they asked to [wait for ready](WaitForReady).

mod body;
mod builder;
mod call;
mod conn;
mod connect;
mod eligibility;
mod endpoint;
mod events;
mod handles;
mod hedge;
mod http2;
mod reconnect;
mod snapshot;

pub use builder::{
    ClientBuilder, ClientError, DEFAULT_HASH_HEADER, DEFAULT_IDLE_TIMEOUT, DEFAULT_STATS_RETENTION,
};

/// The `instance` label of per-instance metric series when the client is
/// built with [`ClientBuilder::instance_label`] off.
pub const AGGREGATE_INSTANCE_LABEL: &str = "*";
pub use call::{BoxError, WaitForReady};
pub use connect::{
    ChannelError, ConnectFailure, EndpointHook, TransportMismatch, TLS_METADATA_KEY,
    TLS_SERVER_NAME_METADATA_KEY,
};
pub use events::BreakerEvent;
pub use reconnect::{DEFAULT_RECONNECT_BASE, DEFAULT_RECONNECT_MAX};

use std::collections::{HashMap, VecDeque};

use foldhash::HashMap as FastMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::body::Body;

use crate::failover::{Backoff, RetryBudget};
use crate::metrics::{ClientCounters, InstanceCounters, InstanceStats, Stats};
use crate::registry::Registry;
use builder::Config;
use eligibility::Tally;
use endpoint::EndpointCore;
use events::EndpointGauges;
use snapshot::Snapshot;

/// The per-instance counters of one instance id, kept while it is known and
/// for a grace period after it left.
#[derive(Debug)]
struct InstanceEntry {
    address: String,
    counters: Arc<InstanceCounters>,
    /// When the instance left the snapshot (`None` while it is in it).
    gone_since: Option<Instant>,
}

/// The per-instance counters by instance id, and the instances that left in
/// the order they left, so that forgetting those gone for longer than the
/// retention costs nothing for the instances that stay.
#[derive(Debug, Default)]
pub(crate) struct InstanceBook {
    map: FastMap<String, InstanceEntry>,
    /// `(when it left, id)`, oldest first; an entry whose instance came back
    /// (or left again later) is skipped when it comes up.
    gone: VecDeque<(Instant, String)>,
}

/// State shared by all clones of a client.
pub(crate) struct Shared {
    service: Arc<str>,
    registry: Arc<dyn Registry>,
    config: Config,
    snapshot: ArcSwap<Snapshot>,
    /// Eligibility counts over the snapshot's endpoints.
    tally: Tally,
    /// Instances the registry lists as disabled.
    disabled: AtomicUsize,
    /// Woken when an endpoint may have become eligible, or the instance set
    /// changed (wait-for-ready calls wait on it).
    became_eligible: Notify,
    events: broadcast::Sender<BreakerEvent>,
    gauges: EndpointGauges,
    budget: RetryBudget,
    backoff: Backoff,
    reconnect: Backoff,
    counters: ClientCounters,
    instances: Mutex<InstanceBook>,
    ready: watch::Sender<usize>,
    method_metrics: handles::MethodTable,
    /// The hedged methods, by path (empty: no call looks further).
    hedges: FastMap<Box<str>, Arc<hedge::MethodHedge>>,
}

impl Shared {
    fn instance_counters(&self, id: &str, address: &str) -> Arc<InstanceCounters> {
        let mut book = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        let entry = book
            .map
            .entry(id.to_owned())
            .or_insert_with(|| InstanceEntry {
                address: address.to_owned(),
                counters: Arc::default(),
                gone_since: None,
            });
        address.clone_into(&mut entry.address);
        entry.gone_since = None;
        Arc::clone(&entry.counters)
    }

    /// Marks instances that left the snapshot, and forgets the counters of
    /// those gone for longer than the retention period. Costs time in
    /// proportion to the instances that left (now and long enough ago).
    fn sweep_instances<'a>(&self, left: impl IntoIterator<Item = &'a str>) {
        let now = Instant::now();
        let mut book = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        for id in left {
            if let Some(entry) = book.map.get_mut(id) {
                if entry.gone_since.is_none() {
                    entry.gone_since = Some(now);
                    book.gone.push_back((now, id.to_owned()));
                }
            }
        }
        Self::expire(&mut book, now, self.config.stats_retention);
    }

    fn expire(book: &mut InstanceBook, now: Instant, retention: Duration) {
        while let Some((since, _)) = book.gone.front() {
            if now.saturating_duration_since(*since) < retention {
                break;
            }
            let Some((since, id)) = book.gone.pop_front() else {
                break;
            };
            if book
                .map
                .get(&id)
                .is_some_and(|e| e.gone_since == Some(since))
            {
                book.map.remove(&id);
            }
        }
    }
}

/// Aborts the client's background tasks (discovery, idle sweep) when the
/// last client clone goes away.
struct TaskGuard(Vec<JoinHandle<()>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
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

    /// How many instances are in use (enabled and selected): the length of
    /// [`instances`](Self::instances), without copying them.
    pub fn instance_count(&self) -> usize {
        self.shared.snapshot.load().endpoints.len()
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
        let mut book = self
            .shared
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Shared::expire(
            &mut book,
            Instant::now(),
            self.shared.config.stats_retention,
        );
        let mut instances: Vec<InstanceStats> = book
            .map
            .iter()
            .map(|(id, entry)| {
                let c = &entry.counters;
                let get =
                    |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                let core = live.get(id.as_str());
                InstanceStats {
                    id: id.clone(),
                    address: entry.address.clone(),
                    attempts: get(&c.attempts),
                    successes: get(&c.successes),
                    failures: get(&c.failures),
                    breaker: core.map_or("removed".to_owned(), |c| {
                        c.breaker.state().as_str().to_owned()
                    }),
                    healthy: core.is_some_and(|c| c.is_healthy()),
                    reachable: core.is_some_and(|c| c.is_reachable()),
                    connected: core.is_some_and(|c| c.conn.is_open()),
                    ejected_for: core.map_or_else(Vec::new, |c| {
                        c.state
                            .causes(&*c.breaker)
                            .into_iter()
                            .map(str::to_owned)
                            .collect()
                    }),
                }
            })
            .collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        self.shared.counters.snapshot(instances)
    }

    /// Subscribes to circuit breaker state changes of this client's
    /// instances, from now on (the last 256 are kept for a slow receiver).
    ///
    /// ```no_run
    /// # async fn demo(client: fyerrpc::Client) {
    /// let mut events = client.breaker_events();
    /// while let Ok(e) = events.recv().await {
    ///     println!("{} {} -> {}", e.instance, e.from, e.to);
    /// }
    /// # }
    /// ```
    pub fn breaker_events(&self) -> broadcast::Receiver<BreakerEvent> {
        self.shared.events.subscribe()
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
