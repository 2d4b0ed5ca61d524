//! [`ClientBuilder`]: every knob of the client, with documented defaults.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::atomic::AtomicUsize;

use arc_swap::ArcSwap;
use http::HeaderName;
use tokio::sync::{broadcast, watch, Notify};

use super::connect::{EndpointHook, TransportConfig};
use super::snapshot::{run_discovery, Snapshot};
use super::{Client, Shared, TaskGuard};
use crate::balance::{Balancer, LeastRequest};
use crate::breaker::{BreakerPolicy, ConsecutiveFailures};
use crate::discovery::Selector;
use crate::failover::classify::FailureClassifier;
use crate::failover::{FailoverConfig, FailoverConfigError, RetryBudget};
use crate::health::HealthCheckConfig;
use crate::metrics::ClientCounters;
use crate::registry::Registry;

/// Default metadata header whose value is the consistent-hashing key.
pub const DEFAULT_HASH_HEADER: &str = "x-fyerrpc-hash-key";

/// Why a client could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The failover settings cannot work.
    #[error(transparent)]
    Failover(#[from] FailoverConfigError),
    /// Another setting is out of range.
    #[error("invalid client setting {name}: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No instance was reported within the wait.
    #[error("no instance of {service} was discovered within {waited:?}")]
    NoInstances {
        /// The service.
        service: String,
        /// How long [`Client::ready`] waited.
        waited: Duration,
    },
    /// `build` was called outside a tokio runtime.
    #[error("the client must be built inside a tokio runtime")]
    NoRuntime,
}

/// The client's settings, fixed at build time.
#[derive(Debug)]
pub(crate) struct Config {
    pub balancer: Arc<dyn Balancer>,
    pub breaker: Arc<dyn BreakerPolicy>,
    pub failover: FailoverConfig,
    pub classifier: FailureClassifier,
    pub connect_timeout: Duration,
    pub request_timeout: Option<Duration>,
    pub health_check: Option<HealthCheckConfig>,
    pub version: Option<String>,
    pub selector: Option<Arc<dyn Selector>>,
    pub hash_header: HeaderName,
    pub max_ejection_ratio: f64,
    pub wait_for_ready: bool,
    pub reconnect_base: Duration,
    pub reconnect_max: Duration,
    pub stats_retention: Duration,
    pub transport: TransportConfig,
    pub instance_label: bool,
    pub idle_timeout: Option<Duration>,
}

/// Default time after which the connection to an instance that takes no
/// calls is closed (gRPC's channel idle timeout).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Default time the counters of an instance that left are kept.
pub const DEFAULT_STATS_RETENTION: Duration = Duration::from_secs(300);

/// Builds a [`Client`]. Defaults:
///
/// | setting | default |
/// |---|---|
/// | balancer | least request, power of two choices |
/// | breaker | 5 consecutive failures, open 30 s (growing, capped) |
/// | failover | [`FailoverConfig::default`]: 3 retries, 100 ms ×2.0, jitter 0.2 |
/// | failure codes | [`FailureClassifier::default`] |
/// | connect timeout | 1 s |
/// | request timeout | none (only the caller's deadline) |
/// | health checks | off |
/// | max ejection ratio | 0.5: breakers eject at most half the reachable instances; panic mode beyond |
/// | wait for ready | off: when every instance is unreachable, calls fail at once |
/// | reconnect probes | from 200 ms, ×1.6, at most 5 s apart |
/// | stats retention | 5 min: counters of instances gone for longer are dropped |
/// | instance label | on: per-instance metric series carry the instance id |
/// | idle timeout | 30 min: the connection to an instance without calls is closed, reopened on the next call |
/// | hash header | [`DEFAULT_HASH_HEADER`] |
/// | transport | plaintext HTTP/2 (h2c); TLS with `tls(...)` (feature `tls`) |
/// | endpoint settings | TCP no-delay, HTTP/2 keep-alive every 30 s while calls are open |
/// | write coalescing | on: a connection yields once before a write under 4 KiB, so concurrent calls share writes |
#[must_use]
pub struct ClientBuilder {
    service: String,
    registry: Arc<dyn Registry>,
    config: Config,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("service", &self.service)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    pub(crate) fn new(service: String, registry: Arc<dyn Registry>) -> Self {
        Self {
            service,
            registry,
            config: Config {
                balancer: Arc::new(LeastRequest),
                breaker: Arc::new(ConsecutiveFailures::default()),
                failover: FailoverConfig::default(),
                classifier: FailureClassifier::default(),
                connect_timeout: Duration::from_secs(1),
                request_timeout: None,
                health_check: None,
                version: None,
                selector: None,
                hash_header: HeaderName::from_static(DEFAULT_HASH_HEADER),
                max_ejection_ratio: 0.5,
                wait_for_ready: false,
                reconnect_base: super::DEFAULT_RECONNECT_BASE,
                reconnect_max: super::DEFAULT_RECONNECT_MAX,
                stats_retention: DEFAULT_STATS_RETENTION,
                transport: TransportConfig::default(),
                instance_label: true,
                idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            },
        }
    }

    /// Sets the balancing policy.
    pub fn balancer(mut self, balancer: Arc<dyn Balancer>) -> Self {
        self.config.balancer = balancer;
        self
    }
    /// Sets the per-instance circuit breaker policy.
    pub fn breaker(mut self, breaker: Arc<dyn BreakerPolicy>) -> Self {
        self.config.breaker = breaker;
        self
    }
    /// Sets the failover (retry) policy.
    pub fn failover(mut self, failover: FailoverConfig) -> Self {
        self.config.failover = failover;
        self
    }
    /// Sets which outcomes count as instance failures.
    pub fn failure_classifier(mut self, classifier: FailureClassifier) -> Self {
        self.config.classifier = classifier;
        self
    }
    /// Sets the time limit for connecting to an instance.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }
    /// Whether the client's connections coalesce writes (on by default):
    /// a connection's task yields once before it writes less than 4 KiB,
    /// so the requests of calls made at nearly the same moment go out in
    /// one write instead of one each. Under concurrent load this saves
    /// system calls on both sides of the connection; with one call at a
    /// time it costs one more poll of the connection's task per write (and
    /// may wake an idle worker thread). Connections made through an
    /// [`endpoint_config`](Self::endpoint_config) hook (tonic's channel)
    /// are not affected.
    pub fn coalesce_writes(mut self, on: bool) -> Self {
        self.config.transport.coalesce_writes = on;
        self
    }
    /// Sets the deadline of calls whose caller sets none (a caller's shorter
    /// `grpc-timeout` still wins).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = Some(timeout);
        self
    }
    /// Turns on active `grpc.health.v1` checks of every instance.
    pub fn health_check(mut self, config: HealthCheckConfig) -> Self {
        self.config.health_check = Some(config);
        self
    }
    /// Uses only instances of this version (asked of the registry).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.config.version = Some(version.into());
        self
    }
    /// Uses only instances the selector accepts (applied to every snapshot).
    pub fn selector(mut self, selector: Arc<dyn Selector>) -> Self {
        self.config.selector = Some(selector);
        self
    }
    /// Sets the metadata header whose value is the consistent-hashing key.
    pub fn hash_header(mut self, header: HeaderName) -> Self {
        self.config.hash_header = header;
        self
    }
    /// Sets the largest share of the reachable instances that may be
    /// ejected for statistical causes at once (`0.0..=1.0`, like Envoy's
    /// maximum ejection percent): a breaker that opens ejects its instance
    /// only within that share, first come first ejected; later ones keep
    /// taking calls. Should membership shrink under the ejections made,
    /// panic mode ignores open breakers, and failing health too when more
    /// than that share fail their checks. Unreachable instances are never
    /// picked, whatever the ratio. `1.0` lets every breaker eject and turns
    /// panic mode off.
    pub fn max_ejection_ratio(mut self, ratio: f64) -> Self {
        self.config.max_ejection_ratio = ratio;
        self
    }
    /// Makes calls wait (within their deadline) for an instance to become
    /// reachable when none is, instead of failing at once with
    /// `UNAVAILABLE`. One call can ask for it with the [`WaitForReady`]
    /// request extension.
    ///
    /// [`WaitForReady`]: super::WaitForReady
    pub fn wait_for_ready(mut self, wait: bool) -> Self {
        self.config.wait_for_ready = wait;
        self
    }
    /// Sets how often an unreachable instance is probed: first after `base`,
    /// then ×1.6 each time, at most `max` apart.
    pub fn reconnect_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.config.reconnect_base = base;
        self.config.reconnect_max = max;
        self
    }

    /// Closes the connection to an instance that took no call for `timeout`
    /// (checked every half timeout, so it closes within 1.5 × `timeout`);
    /// the next call reopens it. `None` keeps connections open for as long
    /// as the instance is registered. Instances under active health checks
    /// keep their connection. Default [`DEFAULT_IDLE_TIMEOUT`].
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Sets how long the counters of an instance that left the registry are
    /// kept (in [`Client::stats`]) before they are dropped.
    pub fn stats_retention(mut self, retention: Duration) -> Self {
        self.config.stats_retention = retention;
        self
    }

    /// Connects to every instance over TLS (feature `tls`): CA roots (PEM
    /// certificates, or the system's roots), an optional client identity
    /// for mutual TLS, and optionally a fixed name to verify certificates
    /// against. See [`crate::tls`].
    ///
    /// Each instance's certificate is verified against, in order, its
    /// `tls_server_name` metadata ([`TLS_SERVER_NAME_METADATA_KEY`](super::TLS_SERVER_NAME_METADATA_KEY)),
    /// the fixed domain, or the host of its address. Health checks use the
    /// same channel, so they run over TLS too. A failed handshake, or a
    /// refused client certificate, fails the connection attempt with a
    /// [`ConnectFailure`](super::ConnectFailure) naming the instance
    /// and the reason. An instance whose metadata says it serves plaintext
    /// ([`TLS_METADATA_KEY`](super::TLS_METADATA_KEY) `= false`) is not
    /// dialed: attempts on it fail with [`TransportMismatch`](super::TransportMismatch).
    ///
    /// ```no_run
    /// # async fn demo(registry: std::sync::Arc<dyn fyerrpc::Registry>) -> Result<(), Box<dyn std::error::Error>> {
    /// use fyerrpc::tls::ClientTlsConfig;
    /// let tls = ClientTlsConfig::new()
    ///     .ca_file("certs/ca.pem")?
    ///     .identity_files("certs/client.pem", "certs/client.key")?; // mutual TLS
    /// let client = fyerrpc::Client::builder("GreetService", registry)
    ///     .tls(tls)
    ///     .build()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::ClientTlsConfig) -> Self {
        self.config.transport.set_tls(tls);
        self
    }

    /// Applies `configure` to the tonic [`Endpoint`](tonic::transport::Endpoint)
    /// of every instance before its channel is created, after the client's
    /// own settings (connect timeout, TCP no-delay, keep-alive, TLS): window
    /// sizes, user agent, keep-alive, concurrency limits, etc.
    ///
    /// With a hook, each instance is called through a tonic `Channel` built
    /// from that endpoint. Without one (the default), the client drives
    /// hyper's HTTP/2 connection itself, which saves the channel's buffer
    /// task a hop on every call; the settings are then the client's own:
    /// TCP no-delay, a keep-alive PING after 30 s without frames while calls
    /// are in flight, hyper's default windows, and a `fyerrpc/VERSION` user
    /// agent.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use std::time::Duration;
    /// # fn demo(registry: Arc<dyn fyerrpc::Registry>) -> fyerrpc::ClientBuilder {
    /// fyerrpc::Client::builder("GreetService", registry).endpoint_config(Arc::new(
    ///     |endpoint: tonic::transport::Endpoint, _instance: &fyerrpc::Instance| {
    ///         endpoint
    ///             .initial_stream_window_size(1 << 20)
    ///             .http2_keep_alive_interval(Duration::from_secs(10))
    ///             .concurrency_limit(256)
    ///     },
    /// ))
    /// # }
    /// ```
    pub fn endpoint_config(mut self, configure: EndpointHook) -> Self {
        self.config.transport.hook = Some(configure);
        self
    }

    /// Whether per-instance metric series (attempts, health checks, breaker
    /// transitions and state, failovers) carry the instance id in their
    /// `instance` label (the default), or the constant
    /// [`AGGREGATE_INSTANCE_LABEL`](super::AGGREGATE_INSTANCE_LABEL), which
    /// sums them per service. Turn it off for very large or fast-changing
    /// sets, where a series per instance id would grow the scrape without
    /// bound. [`Client::stats`] keeps per-instance counts either way.
    ///
    /// The `metrics` facade cannot delete a series: with the label on, a
    /// series of an instance that left stays in the recorder until the
    /// recorder drops it (the Prometheus exporter does with its idle
    /// timeout, `PrometheusBuilder::idle_timeout`).
    pub fn instance_label(mut self, on: bool) -> Self {
        self.config.instance_label = on;
        self
    }

    fn validate(&self) -> Result<(), ClientError> {
        self.config.failover.validate()?;
        let invalid = |name, reason: &str| {
            Err(ClientError::Invalid {
                name,
                reason: reason.to_owned(),
            })
        };
        if self.service.is_empty() {
            return invalid("service", "must not be empty");
        }
        if !(0.0..=1.0).contains(&self.config.max_ejection_ratio) {
            return invalid("max_ejection_ratio", "must be within 0..=1");
        }
        if self.config.connect_timeout.is_zero() {
            return invalid("connect_timeout", "must be positive");
        }
        if self.config.request_timeout.is_some_and(|t| t.is_zero()) {
            return invalid("request_timeout", "must be positive");
        }
        if self.config.reconnect_base.is_zero()
            || self.config.reconnect_max < self.config.reconnect_base
        {
            return invalid(
                "reconnect_backoff",
                "base must be positive and max not below base",
            );
        }
        if let Some(hc) = &self.config.health_check {
            if hc.interval.is_zero() || hc.timeout.is_zero() {
                return invalid("health_check", "interval and timeout must be positive");
            }
        }
        if self.config.idle_timeout.is_some_and(|t| t.is_zero()) {
            return invalid(
                "idle_timeout",
                "must be positive (None keeps connections open)",
            );
        }
        if let Some(reason) = self.config.transport.tls_error() {
            return invalid("tls", reason);
        }
        Ok(())
    }

    /// Validates the settings, starts watching the registry, and returns the
    /// client. Instances become usable as the registry reports them; see
    /// [`Client::ready`].
    pub async fn build(self) -> Result<Client, ClientError> {
        self.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        let f = &self.config.failover;
        let budget = RetryBudget::new(f.budget_ratio, f.budget_min_per_sec, f.budget_ttl);
        let backoff = f.backoff();
        let reconnect =
            super::reconnect::backoff(self.config.reconnect_base, self.config.reconnect_max);
        let empty = Snapshot::empty(&*self.config.balancer);
        let service: Arc<str> = Arc::from(self.service);
        let hedges = if f.enabled {
            f.hedging
                .iter()
                .map(|(method, policy)| {
                    let hedge = super::hedge::MethodHedge::new(
                        Arc::clone(&service),
                        method,
                        policy.clone(),
                    );
                    (Box::from(method.as_str()), Arc::new(hedge))
                })
                .collect()
        } else {
            Default::default()
        };
        let shared = Arc::new(Shared {
            hedges,
            method_metrics: super::handles::MethodTable::new(Arc::clone(&service)),
            gauges: super::events::EndpointGauges::new(Arc::clone(&service)),
            service,
            registry: self.registry,
            config: self.config,
            snapshot: ArcSwap::from_pointee(empty),
            tally: super::eligibility::Tally::default(),
            disabled: AtomicUsize::new(0),
            became_eligible: Notify::new(),
            events: broadcast::channel(super::events::EVENT_BUFFER).0,
            budget,
            backoff,
            reconnect,
            counters: ClientCounters::default(),
            instances: Mutex::new(super::InstanceBook::default()),
            ready: watch::channel(0).0,
        });
        let mut tasks = vec![runtime.spawn(run_discovery(Arc::downgrade(&shared)))];
        if let Some(timeout) = shared.config.idle_timeout {
            tasks.push(super::conn::spawn_idle_sweep(
                &runtime,
                Arc::downgrade(&shared),
                timeout,
            ));
        }
        Ok(Client {
            shared,
            _task: Arc::new(TaskGuard(tasks)),
        })
    }
}
