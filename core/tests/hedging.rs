//! Hedged requests against real tonic servers on loopback: a stalled
//! instance, methods that may not be hedged, the retry budget, cancellation.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fyerrpc::balance::RoundRobin;
use fyerrpc::client::ClientError;
use fyerrpc::failover::{FailoverConfig, FailoverConfigError, HedgingPolicy, HedgingPolicyError};
use fyerrpc::Client;
use support::{check, TestServer, METHOD};

/// The health service's other method: hedged in some tests, never called.
const WATCH: &str = "/grpc.health.v1.Health/Watch";
const DELAY: Duration = Duration::from_millis(50);
const STALL: Duration = Duration::from_secs(10);

fn hedged(policy: HedgingPolicy) -> FailoverConfig {
    FailoverConfig::default()
        .with_idempotent_methods([METHOD])
        .with_hedging(METHOD, policy)
}

fn total_calls(servers: &[Arc<TestServer>]) -> u64 {
    servers.iter().map(|s| s.calls()).sum()
}

/// Waits (up to 5 s) until `done` holds.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

async fn stalled_cluster(policy: HedgingPolicy) -> (Vec<Arc<TestServer>>, Client) {
    let (servers, registry) = support::cluster_of(3);
    servers[0].set_delay(STALL);
    let client = support::client_of(registry, |b| {
        b.balancer(Arc::new(RoundRobin)).failover(hedged(policy))
    })
    .await;
    (servers, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_instance_does_not_stall_hedged_calls() {
    let (servers, client) = stalled_cluster(HedgingPolicy::fixed(DELAY)).await;
    let mut slowest = Duration::ZERO;
    for i in 0..12 {
        let t = Instant::now();
        check(client.clone())
            .await
            .unwrap_or_else(|e| panic!("call {i} failed: {e}"));
        slowest = slowest.max(t.elapsed());
    }
    // The stall is 10 s; a hedged call takes the delay plus a normal call.
    assert!(slowest < Duration::from_secs(1), "slowest call {slowest:?}");
    let stats = client.stats();
    assert!(servers[0].calls() >= 1, "the stalled instance was tried");
    assert!(stats.hedges_sent >= servers[0].calls(), "{stats:?}");
    assert!(stats.hedges_won >= 1, "{stats:?}");
    assert_eq!(stats.successes, 12);
    assert_eq!(stats.failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_losing_attempt_is_cancelled_and_the_server_sees_it() {
    let (servers, client) = stalled_cluster(HedgingPolicy::fixed(DELAY)).await;
    for _ in 0..6 {
        check(client.clone()).await.expect("a hedged call");
    }
    let stalled = servers[0].calls();
    assert!(stalled >= 1, "the stalled instance was tried");
    // Every attempt the stalled server took was cancelled, long before its
    // 10 s stall ended: its handler was dropped when the stream was reset.
    assert!(
        eventually(|| servers[0].cancelled() == stalled).await,
        "{} of {stalled} cancelled",
        servers[0].cancelled()
    );
    let stats = client.stats();
    assert!(stats.hedges_cancelled >= stalled, "{stats:?}");
    // The fast servers answered every call they took.
    assert_eq!(servers[1].cancelled() + servers[2].cancelled(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_delay_hedges_a_stalled_instance() {
    let policy = HedgingPolicy::adaptive(95.0, Duration::from_millis(20));
    let (servers, client) = stalled_cluster(policy).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..45 {
        let t = Instant::now();
        check(client.clone()).await.expect("a hedged call");
        slowest = slowest.max(t.elapsed());
    }
    assert!(slowest < Duration::from_secs(1), "slowest call {slowest:?}");
    let stats = client.stats();
    assert!(stats.hedges_won >= servers[0].calls().saturating_sub(1));
    // Its attempts lost the race again and again: its breaker opened (5
    // consecutive failures by default), and it took no more calls.
    assert!(stats.breaker_trips >= 1, "{stats:?}");
    assert!(servers[0].calls() < 15, "{} calls", servers[0].calls());
}

#[tokio::test]
async fn a_method_not_declared_idempotent_cannot_be_hedged() {
    let (_servers, registry) = support::cluster_of(1);
    let config =
        FailoverConfig::default().with_hedging(METHOD, HedgingPolicy::fixed(Duration::ZERO));
    let built = Client::builder(support::SERVICE, registry as Arc<dyn fyerrpc::Registry>)
        .failover(config)
        .build()
        .await;
    match built {
        Err(ClientError::Failover(FailoverConfigError::Hedging { method, source })) => {
            assert_eq!(method, METHOD);
            assert_eq!(source, HedgingPolicyError::NotHedgeable(METHOD.into()));
        }
        other => panic!("expected a hedging error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_without_a_hedging_policy_is_never_sent_twice() {
    let (servers, registry) = support::cluster_of(3);
    for s in &servers {
        s.set_delay(Duration::from_millis(300));
    }
    // Another method is hedged at once; the called one is not hedgeable.
    let config = FailoverConfig::default()
        .with_idempotent_methods([WATCH])
        .with_hedging(
            WATCH,
            HedgingPolicy::fixed(Duration::ZERO).with_max_attempts(3),
        );
    let client = support::client_of(registry, |b| b.failover(config)).await;
    let calls: Vec<_> = (0..6)
        .map(|_| tokio::spawn(check(client.clone())))
        .collect();
    for c in calls {
        c.await.expect("task").expect("a call");
    }
    assert_eq!(
        total_calls(&servers),
        6,
        "each call reached one server once"
    );
    let stats = client.stats();
    assert_eq!((stats.hedges_sent, stats.retries), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_bounds_the_hedges() {
    let (servers, registry) = support::cluster_of(3);
    for s in &servers {
        s.set_delay(Duration::from_millis(200));
    }
    // Every call is slow enough to be hedged twice, but the budget allows
    // one extra attempt per 10 calls, and nothing more.
    let config = hedged(HedgingPolicy::fixed(Duration::from_millis(10)).with_max_attempts(3))
        .with_budget(0.1, 0);
    let client = support::client_of(registry, |b| b.failover(config)).await;
    let calls: u64 = 40;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..calls / 8 {
                check(c.clone()).await.expect("a call");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let stats = client.stats();
    let attempts = total_calls(&servers);
    assert!(stats.hedges_sent <= calls / 10, "{stats:?}");
    assert!(stats.hedges_sent >= 1, "some hedges went out: {stats:?}");
    // Each call reached one server, plus one attempt per hedge at most.
    assert!(
        (calls..=calls + stats.hedges_sent).contains(&attempts),
        "{attempts} attempts: {stats:?}"
    );
    assert!(stats.budget_exhausted > 0, "{stats:?}");
    assert_eq!(stats.successes, calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_fatal_status_sends_the_next_copy_at_once() {
    let (servers, registry) = support::cluster_of(2);
    servers[0].set_failing(true);
    servers[1].set_failing(true);
    let client = support::client_of(registry, |b| {
        b.balancer(Arc::new(RoundRobin))
            .failover(hedged(HedgingPolicy::fixed(STALL)))
    })
    .await;
    let t = Instant::now();
    let err = check(client.clone()).await.expect_err("both fail");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    // The 10 s delay was not waited for: Unavailable is non-fatal.
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(total_calls(&servers), 2, "one attempt per instance");
    // A fatal status ends the call at once, with no copy.
    let (servers, registry) = support::cluster_of(2);
    servers[0].set_failing(true);
    servers[1].set_failing(true);
    let policy = HedgingPolicy::fixed(Duration::from_millis(500)).with_non_fatal_codes([]);
    let client = support::client_of(registry, |b| b.failover(hedged(policy))).await;
    let err = check(client.clone()).await.expect_err("fails");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(total_calls(&servers), 1, "a fatal status sends no copy");
}

#[tokio::test]
async fn hedges_are_counted_in_metrics_and_stats() {
    // A recorder for this thread only; the client runs on it (a
    // current-thread runtime), the servers on their own.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (servers, client) = stalled_cluster(HedgingPolicy::fixed(DELAY)).await;
    for _ in 0..6 {
        check(client.clone()).await.expect("a hedged call");
    }
    let stats = client.stats();
    assert!(stats.hedges_sent >= 1 && stats.hedges_won >= 1, "{stats:?}");
    assert!(stats.hedges_cancelled >= servers[0].calls(), "{stats:?}");
    let text = handle.render();
    let value = |outcome: &str| -> u64 {
        let prefix = format!(
            "fyerrpc_client_hedges_total{{service=\"{}\",method=\"{METHOD}\",outcome=\"{outcome}\"}} ",
            support::SERVICE
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {outcome} series in\n{text}"))
    };
    assert_eq!(value("sent"), stats.hedges_sent);
    assert_eq!(value("won"), stats.hedges_won);
    assert_eq!(value("cancelled"), stats.hedges_cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_call_can_wait_for_ready() {
    let server = TestServer::start();
    let registry = Arc::new(fyerrpc::registry::MemoryRegistry::new());
    let client = Client::builder(
        support::SERVICE,
        Arc::clone(&registry) as Arc<dyn fyerrpc::Registry>,
    )
    .failover(hedged(HedgingPolicy::fixed(DELAY)))
    .request_timeout(Duration::from_secs(5))
    .wait_for_ready(true)
    .build()
    .await
    .expect("client");
    let late = {
        let registry = Arc::clone(&registry);
        let instance = support::instance("late", &server);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            registry.insert(instance);
        })
    };
    check(client.clone())
        .await
        .expect("waited for the instance");
    late.await.expect("task");
    assert_eq!(server.calls(), 1);
}
