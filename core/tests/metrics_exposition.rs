//! The client's metrics as Prometheus scrapes them.
//!
//! Installs the Prometheus recorder of `metrics-exporter-prometheus` as the
//! global recorder (this test binary holds this one test, so nothing else
//! records into it), drives clients against real tonic servers on loopback
//! through successful calls, retries and failovers, a breaker trip and
//! recovery, a health-check ejection, a spent retry budget, panic mode and a
//! failed registry watch, renders the exposition text and checks it:
//!
//! - every metric `core/src/metrics.rs` documents appears, with exactly the
//!   labels its doc names and label values within the documented sets;
//! - the docs name no label or value the client does not emit;
//! - names follow the Prometheus conventions (`_total` counters, base units).
//!
//! The registry metrics (`fyerrpc_registry_*`) are emitted only by the etcd
//! and Consul backends, which this crate does not depend on; here their docs
//! are checked against their contract (names, kind, the `backend` label and
//! its values), and the backends' own tests count them through a recorder.

#[path = "support/prometheus.rs"]
mod prometheus;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fyerrpc::balance::RoundRobin;
use fyerrpc::breaker::{ConsecutiveFailures, OpenPolicy};
use fyerrpc::failover::FailoverConfig;
use fyerrpc::health::HealthCheckConfig;
use fyerrpc::metrics as m;
use fyerrpc::registry::{
    MemoryRegistry, RegisterOptions, Registration, RegistryError, WatchStream,
};
use fyerrpc::{Client, Instance, Registry};
use metrics_exporter_prometheus::PrometheusBuilder;
use prometheus::{Kind, Label, Metric};
use support::{check, TestServer, METHOD};

/// The service name of the main client.
const SERVICE: &str = "grpc.health.v1.Health";
/// The service name of the client whose servers all fail.
const FAILING: &str = "failing.Service";
/// The service name of the client that runs health checks.
const CHECKED: &str = "checked.Service";

/// Attempt outcomes: a gRPC code, or the call never got a status.
const OUTCOMES: &[&str] = &[
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
    "unreachable",
    "not_sent",
    "transport_error",
    "timed_out",
];

/// The states of `fyerrpc_client_endpoints`.
const ENDPOINT_STATES: &[&str] = &[
    "known",
    "eligible",
    "ejected",
    "unreachable",
    "breaker_open",
    "unhealthy",
    "disabled",
];

/// What `core/src/metrics.rs` documents, metric by metric.
const CONTRACT: &[Metric] = &[
    Metric {
        name: m::CLIENT_REQUESTS,
        kind: Kind::Counter,
        labels: &[
            Label::free("service"),
            Label::free("method"),
            Label::one_of("code", prometheus::CODES)
                .documenting(&["ok"])
                .requiring(&["ok", "unavailable"]),
        ],
        emitted: true,
    },
    Metric {
        name: m::CLIENT_REQUEST_DURATION,
        kind: Kind::Histogram,
        labels: &[Label::free("service"), Label::free("method")],
        emitted: true,
    },
    Metric {
        name: m::CLIENT_ATTEMPTS,
        kind: Kind::Counter,
        labels: &[
            Label::free("service"),
            Label::free("instance"),
            Label::one_of("outcome", OUTCOMES)
                .documenting(&[
                    "ok",
                    "unreachable",
                    "not_sent",
                    "transport_error",
                    "timed_out",
                ])
                .requiring(&["ok", "unavailable"]),
        ],
        emitted: true,
    },
    Metric {
        name: m::CLIENT_RETRIES,
        kind: Kind::Counter,
        labels: &[Label::free("service"), Label::free("method")],
        emitted: true,
    },
    Metric {
        name: m::CLIENT_FAILOVERS,
        kind: Kind::Counter,
        labels: &[
            Label::free("service"),
            Label::free("from_instance"),
            Label::free("to_instance"),
        ],
        emitted: true,
    },
    Metric {
        name: m::CLIENT_BUDGET_EXHAUSTED,
        kind: Kind::Counter,
        labels: &[Label::free("service")],
        emitted: true,
    },
    Metric {
        name: m::CLIENT_BREAKER_TRANSITIONS,
        kind: Kind::Counter,
        labels: &[
            Label::free("service"),
            Label::free("instance"),
            Label::one_of("to", &["closed", "open", "half_open"]).requiring(&[
                "closed",
                "open",
                "half_open",
            ]),
        ],
        emitted: true,
    },
    Metric {
        name: m::CLIENT_BREAKER_STATE,
        kind: Kind::Gauge,
        labels: &[Label::free("service"), Label::free("instance")],
        emitted: true,
    },
    // The `state` values are checked on their own at the end of the test.
    Metric {
        name: m::CLIENT_ENDPOINTS,
        kind: Kind::Gauge,
        labels: &[Label::free("service"), Label::free("state")],
        emitted: true,
    },
    Metric {
        name: m::CLIENT_PANIC_PICKS,
        kind: Kind::Counter,
        labels: &[Label::free("service")],
        emitted: true,
    },
    Metric {
        name: m::CLIENT_TRANSPARENT_RETRIES,
        kind: Kind::Counter,
        labels: &[Label::free("service")],
        // Emitted only when an attempt never reached a server; the chaos
        // suite makes that happen, this scenario does not.
        emitted: false,
    },
    Metric {
        name: m::CLIENT_HEDGES,
        kind: Kind::Counter,
        labels: &[
            Label::free("service"),
            Label::free("method"),
            Label::one_of("outcome", &["sent", "won", "cancelled"]),
        ],
        // Emitted only for methods with a hedging policy; the hedging
        // suite makes hedges, this scenario does not.
        emitted: false,
    },
    Metric {
        name: m::CLIENT_HEALTH_CHECKS,
        kind: Kind::Counter,
        labels: &[
            Label::free("service"),
            Label::free("instance"),
            Label::one_of(
                "result",
                &[
                    "serving",
                    "not_serving",
                    "unknown_service",
                    "unimplemented",
                    "unreachable",
                    "failed",
                ],
            )
            .requiring(&["serving", "failed"]),
        ],
        emitted: true,
    },
    Metric {
        name: m::CLIENT_DISCOVERY_ERRORS,
        kind: Kind::Counter,
        labels: &[Label::free("service")],
        emitted: true,
    },
    Metric {
        name: m::REGISTRY_REREGISTRATIONS,
        kind: Kind::Counter,
        labels: &[Label::one_of("backend", &["etcd", "consul"])],
        emitted: false,
    },
    Metric {
        name: m::REGISTRY_INVALID_ENTRIES,
        kind: Kind::Counter,
        labels: &[Label::one_of("backend", &["etcd", "consul"])],
        emitted: false,
    },
    Metric {
        name: m::REGISTRY_WATCH_RESTARTS,
        kind: Kind::Counter,
        labels: &[Label::one_of("backend", &["etcd"])],
        emitted: false,
    },
];

/// A registry whose first `watch` fails, like a backend that is down when
/// the client starts; then the memory registry behind it.
struct FirstWatchFails {
    inner: Arc<MemoryRegistry>,
    failures: AtomicU32,
}

#[async_trait]
impl Registry for FirstWatchFails {
    async fn register(
        &self,
        instance: Instance,
        options: RegisterOptions,
    ) -> Result<Registration, RegistryError> {
        self.inner.register(instance, options).await
    }

    async fn deregister(&self, instance: &Instance) -> Result<(), RegistryError> {
        self.inner.deregister(instance).await
    }

    async fn discover(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<Vec<Instance>, RegistryError> {
        self.inner.discover(service, version).await
    }

    async fn watch(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<WatchStream, RegistryError> {
        if self.failures.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(RegistryError::Unavailable("down for the test".into()));
        }
        self.inner.watch(service, version).await
    }
}

fn instance(service: &str, id: &str, server: &TestServer) -> Instance {
    Instance::new(id, service, server.address()).unwrap()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: not within 10 s");
}

fn breaker_of(client: &Client, id: &str) -> String {
    client
        .stats()
        .instances
        .into_iter()
        .find(|i| i.id == id)
        .map(|i| i.breaker)
        .unwrap_or_default()
}

fn healthy(client: &Client, id: &str) -> bool {
    client
        .stats()
        .instances
        .iter()
        .any(|i| i.id == id && i.healthy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exposition_matches_the_documented_metrics() {
    support::init_tracing();
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");

    // The main client: three servers and a disabled instance.
    let servers: Vec<_> = (0..3).map(|_| TestServer::start()).collect();
    let memory = Arc::new(MemoryRegistry::new());
    for (i, s) in servers.iter().enumerate() {
        memory.insert(instance(SERVICE, &format!("s{i}"), s));
    }
    memory.insert(instance(SERVICE, "off", &servers[2]).with_status(fyerrpc::Status::Disabled));
    // The same servers, for the client that runs health checks.
    for (i, s) in servers.iter().take(2).enumerate() {
        memory.insert(instance(CHECKED, &format!("c{i}"), s));
    }
    // A service whose servers all fail.
    let failing: Vec<_> = (0..2).map(|_| TestServer::start()).collect();
    for (i, s) in failing.iter().enumerate() {
        s.set_failing(true);
        memory.insert(instance(FAILING, &format!("f{i}"), s));
    }
    let registry = Arc::new(FirstWatchFails {
        inner: Arc::clone(&memory),
        failures: AtomicU32::new(0),
    });

    let open = Duration::from_millis(300);
    let client = Client::builder(SERVICE, registry as Arc<dyn Registry>)
        .balancer(Arc::new(RoundRobin))
        .request_timeout(Duration::from_secs(5))
        .failover(FailoverConfig::default().with_retry_interval(Duration::from_millis(1)))
        .breaker(Arc::new(
            ConsecutiveFailures::new(3).with_open(OpenPolicy::default().with_base_open(open)),
        ))
        .build()
        .await
        .unwrap();
    // The first watch failed; the client watches again and finds the servers.
    client.ready(Duration::from_secs(10)).await.unwrap();

    // Success.
    for _ in 0..10 {
        check(client.clone()).await.unwrap();
    }

    // Retries, failovers and a breaker trip: s0 fails every call; its calls
    // are retried elsewhere until its breaker opens.
    servers[0].set_failing(true);
    for i in 0.. {
        check(client.clone())
            .await
            .unwrap_or_else(|e| panic!("call {i} failed: {e}"));
        if breaker_of(&client, "s0") == "open" {
            break;
        }
        assert!(i < 200, "s0's breaker did not open: {:?}", client.stats());
    }
    let stats = client.stats();
    assert!(stats.retries > 0 && stats.failovers > 0, "{stats:?}");
    // Recovery: half-open after the open time, closed after a good probe.
    servers[0].set_failing(false);
    tokio::time::sleep(open).await;
    for i in 0.. {
        check(client.clone()).await.unwrap();
        if breaker_of(&client, "s0") == "closed" {
            break;
        }
        assert!(i < 400, "s0 did not come back: {:?}", client.stats());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // Health ejection, by a client that checks every 50 ms: c1 (the server
    // of s1) fails its health checks.
    let checked = Client::builder(CHECKED, Arc::clone(&memory) as Arc<dyn Registry>)
        .health_check(
            HealthCheckConfig::default()
                .with_interval(Duration::from_millis(50))
                .with_unhealthy_threshold(1),
        )
        .build()
        .await
        .unwrap();
    checked.ready(Duration::from_secs(10)).await.unwrap();
    // The checker's first verdicts are in (an instance is healthy until
    // checked, so wait for the checks themselves).
    wait_for("health checks pass", || {
        let text = handle.render();
        ["c0", "c1"].iter().all(|c| {
            text.lines().any(|l| {
                l.starts_with(m::CLIENT_HEALTH_CHECKS)
                    && l.contains(&format!("instance=\"{c}\""))
                    && l.contains("result=\"serving\"")
            })
        }) && healthy(&checked, "c0")
            && healthy(&checked, "c1")
    })
    .await;
    servers[1].set_failing(true);
    wait_for("c1 unhealthy", || !healthy(&checked, "c1")).await;

    // Retries over budget, and panic mode: every instance of the failing
    // service fails its health checks, so more are ejected than allowed.
    let doomed = Client::builder(FAILING, Arc::clone(&memory) as Arc<dyn Registry>)
        .request_timeout(Duration::from_secs(5))
        .failover(
            FailoverConfig::default()
                .with_retry_interval(Duration::from_millis(1))
                .with_budget(0.0, 0),
        )
        .breaker(Arc::new(ConsecutiveFailures::new(1)))
        // Both fail their health checks too: more than half of the
        // reachable instances are ejected, which is panic mode.
        .health_check(
            HealthCheckConfig::default()
                .with_interval(Duration::from_millis(50))
                .with_unhealthy_threshold(1),
        )
        .build()
        .await
        .unwrap();
    doomed.ready(Duration::from_secs(10)).await.unwrap();
    wait_for("f0 and f1 unhealthy", || {
        !healthy(&doomed, "f0") && !healthy(&doomed, "f1")
    })
    .await;
    for _ in 0..10 {
        let err = check(doomed.clone()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
    assert!(doomed.stats().budget_exhausted > 0, "{:?}", doomed.stats());

    // The scrape, while s1 is ejected.
    let text = handle.render();
    let expo = prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    let conventions: Vec<String> = prometheus::convention_problems(&expo)
        .into_iter()
        .filter(|p| p.starts_with("fyerrpc_"))
        .collect();
    prometheus::assert_none("Prometheus naming conventions", &conventions, &text);

    let docs = prometheus::documented(include_str!("../src/metrics.rs"));
    assert_eq!(
        docs.len(),
        CONTRACT.len(),
        "one contract per documented metric"
    );
    let runtime: BTreeMap<&str, BTreeSet<String>> = {
        let ids = ["s0", "s1", "s2", "c0", "c1", "f0", "f1"].map(String::from);
        [
            (
                "service",
                [SERVICE, CHECKED, FAILING].map(String::from).into(),
            ),
            ("method", BTreeSet::from([METHOD.to_owned()])),
            ("instance", ids.clone().into()),
            ("from_instance", ids.clone().into()),
            ("to_instance", ids.into()),
        ]
        .into()
    };
    let problems = prometheus::contract_problems(CONTRACT, &docs, &[], &runtime, &expo);
    // The `state` values of the endpoints gauge are checked below, apart.
    let problems: Vec<String> = problems
        .into_iter()
        .filter(|p| !p.starts_with(m::CLIENT_ENDPOINTS))
        .collect();
    prometheus::assert_none("documented metrics vs the exposition", &problems, &text);

    // Values that the scenario fixes.
    let requests = &expo[m::CLIENT_REQUESTS];
    let ok = [("service", SERVICE), ("method", METHOD), ("code", "ok")];
    assert!(
        requests.value(m::CLIENT_REQUESTS, &ok) >= Some(10.0),
        "{text}"
    );
    let states = &expo[m::CLIENT_BREAKER_STATE];
    for s in &states.samples {
        assert!([0.0, 1.0, 2.0].contains(&s.value), "{s:?}");
    }
    for name in [m::CLIENT_PANIC_PICKS, m::CLIENT_BUDGET_EXHAUSTED] {
        let v = expo[name].value(name, &[("service", FAILING)]);
        assert!(v > Some(0.0), "{name}: {v:?}\n{text}");
    }
    let discovery = expo[m::CLIENT_DISCOVERY_ERRORS].value(m::CLIENT_DISCOVERY_ERRORS, &[]);
    assert!(discovery >= Some(1.0), "{text}");

    // The contract of `fyerrpc_client_endpoints`: labels `service` and
    // `state`, states known, eligible, ejected (counted once per endpoint),
    // unreachable, breaker_open, unhealthy (per cause) and disabled.
    let endpoint_problems = endpoints_problems(&expo, &docs);
    prometheus::assert_none(
        "fyerrpc_client_endpoints contract",
        &endpoint_problems,
        &text,
    );

    drop(client);
    drop(checked);
    drop(doomed);
}

/// Where `fyerrpc_client_endpoints` breaks its contract: its docs list
/// exactly the states, and the main client's gauge shows every state, with
/// three known endpoints, one disabled instance, and `eligible + ejected =
/// known`.
fn endpoints_problems(
    expo: &prometheus::Exposition,
    docs: &[prometheus::Documented],
) -> Vec<String> {
    const CONTRACT: [Metric; 1] = [Metric {
        name: m::CLIENT_ENDPOINTS,
        kind: Kind::Gauge,
        labels: &[
            Label::free("service"),
            Label::one_of("state", ENDPOINT_STATES).requiring(ENDPOINT_STATES),
        ],
        emitted: true,
    }];
    let docs: Vec<_> = docs
        .iter()
        .filter(|d| d.name == m::CLIENT_ENDPOINTS)
        .cloned()
        .collect();
    let services = [SERVICE, CHECKED, FAILING].map(String::from);
    let runtime = BTreeMap::from([("service", BTreeSet::from(services))]);
    let mut problems = prometheus::contract_problems(&CONTRACT, &docs, &[], &runtime, expo);
    let Some(family) = expo.get(m::CLIENT_ENDPOINTS) else {
        return problems;
    };
    let state = |s: &str| family.value(m::CLIENT_ENDPOINTS, &[("service", SERVICE), ("state", s)]);
    if state("known") != Some(3.0) {
        problems.push(format!("known is {:?}, not 3", state("known")));
    }
    if state("disabled") != Some(1.0) {
        problems.push(format!("disabled is {:?}, not 1", state("disabled")));
    }
    if let (Some(e), Some(x), Some(k)) = (state("eligible"), state("ejected"), state("known")) {
        if e + x != k {
            problems.push(format!("eligible {e} + ejected {x} != known {k}"));
        }
    }
    problems
}

#[test]
fn the_exposition_checks_catch_what_they_should() {
    let expo = prometheus::parse(
        "# TYPE a_seconds summary\na_seconds{quantile=\"0.5\"} 1\na_seconds_sum 2\n\
         a_seconds_count 3\n# TYPE b counter\nb{x=\"1\"} 1\n# TYPE c_total gauge\nc_total 1\n\
         # TYPE d_milliseconds histogram\nd_milliseconds_bucket{le=\"+Inf\"} 1\n",
    )
    .unwrap();
    assert_eq!(expo["a_seconds"].samples.len(), 3);
    let problems = prometheus::convention_problems(&expo);
    assert_eq!(problems.len(), 4, "{problems:?}");
    for bad in [
        "b{x=1} 1",
        "# TYPE b dunno",
        "b 1",
        "# TYPE b counter\nb{x=\"1\" 1",
    ] {
        assert!(prometheus::parse(bad).is_err(), "{bad}");
    }
    let docs = prometheus::documented(
        "/// Counter: things, by `kind` (`red`, `blue`); see [`Other`].\n\
         pub const THINGS: &str = \"things_total\";\n",
    );
    assert_eq!(docs[0].name, "things_total");
    assert_eq!(
        docs[0].tokens(),
        ["blue", "kind", "red"].map(String::from).into()
    );
    assert_eq!(docs[0].kind(), Some(Kind::Counter));
}
