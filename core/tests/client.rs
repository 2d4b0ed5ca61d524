//! The resilient client against real tonic servers on loopback.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fyerrpc::balance::RoundRobin;
use fyerrpc::breaker::{ConsecutiveFailures, OpenPolicy};
use fyerrpc::failover::FailoverConfig;
use fyerrpc::health::HealthCheckConfig;
use fyerrpc::registry::{MemoryRegistry, RegisterOptions};
use fyerrpc::{Client, Instance, Registry};
use support::{check, check_within, TestServer, METHOD};
use tonic::Code;

use support::{instance, SERVICE};

/// Three servers and a registry that lists them.
fn cluster() -> (Vec<Arc<TestServer>>, Arc<MemoryRegistry>) {
    support::cluster_of(3)
}

async fn client(
    registry: Arc<MemoryRegistry>,
    f: impl FnOnce(fyerrpc::ClientBuilder) -> fyerrpc::ClientBuilder,
) -> Client {
    support::client_of(registry, f).await
}

#[tokio::test]
async fn an_unavailable_instance_fails_no_call() {
    let (servers, registry) = cluster();
    servers[1].set_failing(true);
    let client = client(registry, |b| b.balancer(Arc::new(RoundRobin))).await;
    for i in 0..150 {
        check(client.clone())
            .await
            .unwrap_or_else(|e| panic!("call {i} failed: {e}"));
    }
    let stats = client.stats();
    assert_eq!(stats.successes, 150);
    assert_eq!(stats.failures, 0);
    assert!(servers[1].calls() > 0, "the failing instance was tried");
    assert!(stats.failovers > 0, "failures went elsewhere: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_stream_fails_no_call() {
    let (servers, registry) = cluster();
    let client = client(registry, |b| {
        b.balancer(Arc::new(RoundRobin))
            .failover(FailoverConfig::default().with_idempotent_methods([METHOD]))
    })
    .await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..150 {
                if let Err(e) = check(c.clone()).await {
                    failures.push(e.to_string());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            failures
        }));
    }
    // Let traffic flow to all three, then kill one while calls are in flight.
    while servers[2].calls() < 40 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    servers[2].kill();
    // The server's runtime stops in the background: a request one of its
    // workers was already handling may still be counted. Only what comes
    // after that must not reach it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed_at = servers[2].calls();
    for t in tasks {
        let failures = t.await.unwrap();
        assert!(failures.is_empty(), "calls failed: {failures:?}");
    }
    assert_eq!(client.stats().successes, 600);
    assert_eq!(
        servers[2].calls(),
        killed_at,
        "a dead server takes no calls"
    );
}

#[tokio::test]
async fn a_failing_instance_is_ejected_then_probed_back() {
    let (servers, registry) = cluster();
    servers[0].set_failing(true);
    // Long enough that the calls below all fall inside it on a busy machine.
    let open = Duration::from_secs(3);
    let client = client(registry, |b| {
        b.balancer(Arc::new(RoundRobin)).breaker(Arc::new(
            ConsecutiveFailures::new(3).with_open(OpenPolicy::default().with_base_open(open)),
        ))
    })
    .await;
    for _ in 0..30 {
        check(client.clone()).await.unwrap();
    }
    let tripped_at = servers[0].calls();
    assert_eq!(
        tripped_at, 3,
        "exactly the threshold reached it before it opened"
    );
    let stats = client.stats();
    assert_eq!(stats.breaker_trips, 1);
    let s0 = stats.instances.iter().find(|i| i.id == "s0").unwrap();
    assert_eq!(s0.breaker, "open");
    for _ in 0..100 {
        check(client.clone()).await.unwrap();
    }
    assert_eq!(
        servers[0].calls(),
        tripped_at,
        "an open breaker ejects the instance"
    );

    // Heal it; after the open time a half-open probe brings it back.
    servers[0].set_failing(false);
    tokio::time::sleep(open + Duration::from_millis(100)).await;
    for _ in 0..60 {
        check(client.clone()).await.unwrap();
    }
    assert!(
        servers[0].calls() > tripped_at + 10,
        "healed instance takes traffic again"
    );
    let s0 = client
        .stats()
        .instances
        .into_iter()
        .find(|i| i.id == "s0")
        .unwrap();
    assert_eq!(s0.breaker, "closed");
}

/// When the backoff would pass the deadline, the call ends at once with the
/// last attempt's real status (not a synthetic DEADLINE_EXCEEDED hiding it).
#[tokio::test]
async fn a_deadline_shorter_than_the_backoff_ends_the_call_in_time() {
    let (servers, registry) = cluster();
    for s in &servers {
        s.set_failing(true);
    }
    let client = client(registry, |b| {
        b.failover(
            FailoverConfig::default()
                .with_retry_interval(Duration::from_secs(5))
                .with_jitter(0.0),
        )
    })
    .await;
    let started = std::time::Instant::now();
    let err = check_within(client.clone(), Duration::from_millis(1_500))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(err.message(), "injected failure", "the real status");
    assert!(
        took < Duration::from_millis(4_000),
        "returned after {took:?}: it waited for a backoff that passes the deadline"
    );
}

#[tokio::test]
async fn retries_stay_within_the_budget() {
    let (servers, registry) = cluster();
    for s in &servers {
        s.set_failing(true);
    }
    let client = client(registry, |b| {
        b.failover(
            FailoverConfig::default()
                .with_retry_interval(Duration::from_millis(1))
                .with_max_retry_delay(Duration::from_millis(2))
                .with_budget(0.2, 5),
        )
        // Keep breakers out of the way: this test is about the budget.
        .breaker(Arc::new(ConsecutiveFailures::new(1_000_000)))
    })
    .await;
    let requests = 200u64;
    for _ in 0..requests {
        let err = check(client.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }
    let attempts: u64 = servers.iter().map(|s| s.calls()).sum();
    // The budget's floor is 5 retries per second over its 10 s window.
    let bound = (requests as f64 * 1.2) as u64 + 5 * 10;
    assert!(
        attempts <= bound,
        "{attempts} attempts for {requests} requests (bound {bound})"
    );
    assert!(attempts > requests, "some retries were made");
    assert!(client.stats().budget_exhausted > 0);
}

#[tokio::test]
async fn watch_adds_and_removes_instances() {
    let servers: Vec<_> = (0..3).map(|_| TestServer::start()).collect();
    let registry = Arc::new(MemoryRegistry::new());
    let r0 = registry
        .register(instance("s0", &servers[0]), RegisterOptions::default())
        .await
        .unwrap();
    let r1 = registry
        .register(instance("s1", &servers[1]), RegisterOptions::default())
        .await
        .unwrap();
    let client = client(Arc::clone(&registry), |b| b.balancer(Arc::new(RoundRobin))).await;
    for _ in 0..20 {
        check(client.clone()).await.unwrap();
    }
    assert_eq!(servers[2].calls(), 0);

    let _r2 = registry
        .register(instance("s2", &servers[2]), RegisterOptions::default())
        .await
        .unwrap();
    wait_for(|| client.instances().len() == 3).await;
    for _ in 0..30 {
        check(client.clone()).await.unwrap();
    }
    assert!(servers[2].calls() >= 5, "a new instance takes traffic");

    r0.shutdown().await.unwrap();
    wait_for(|| client.instances().len() == 2).await;
    let before = servers[0].calls();
    for _ in 0..30 {
        check(client.clone()).await.unwrap();
    }
    assert_eq!(
        servers[0].calls(),
        before,
        "a removed instance takes no traffic"
    );
    drop(r1);
}

#[tokio::test]
async fn health_checks_eject_and_restore() {
    let (servers, registry) = cluster();
    let client = client(registry, |b| {
        b.balancer(Arc::new(RoundRobin)).health_check(
            HealthCheckConfig::default()
                .with_interval(Duration::from_millis(50))
                .with_unhealthy_threshold(1),
        )
    })
    .await;
    servers[1].set_failing(true);
    wait_for(|| {
        client
            .stats()
            .instances
            .iter()
            .any(|i| i.id == "s1" && !i.healthy)
    })
    .await;
    servers[1].set_failing(false);
    wait_for(|| client.stats().instances.iter().all(|i| i.healthy)).await;
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not met within 5 s");
}

#[tokio::test]
async fn selectors_and_disabled_instances_narrow_the_set() {
    let servers: Vec<_> = (0..3).map(|_| TestServer::start()).collect();
    let registry = Arc::new(MemoryRegistry::new());
    registry.insert(instance("a", &servers[0]).with_metadata("zone", "z1"));
    registry.insert(instance("b", &servers[1]).with_metadata("zone", "z2"));
    registry.insert(
        instance("c", &servers[2])
            .with_metadata("zone", "z1")
            .with_status(fyerrpc::Status::Disabled),
    );
    let selector = fyerrpc::discovery::parse_selector("zone=z1").unwrap();
    let client = client(Arc::clone(&registry), |b| b.selector(selector)).await;
    for _ in 0..20 {
        check(client.clone()).await.unwrap();
    }
    assert_eq!(
        servers[0].calls(),
        20,
        "only the selected, enabled instance"
    );
    assert_eq!(servers[1].calls() + servers[2].calls(), 0);
}

#[tokio::test]
async fn a_single_instance_is_retried_in_place() {
    let server = TestServer::start();
    let registry = Arc::new(MemoryRegistry::new());
    registry.insert(instance("only", &server));
    let client = client(registry, |b| {
        b.failover(FailoverConfig::default().with_retry_interval(Duration::from_millis(5)))
    })
    .await;
    server.fail_next(2);
    check(client.clone()).await.unwrap();
    let stats = client.stats();
    assert_eq!(server.calls(), 3);
    assert_eq!((stats.retries, stats.failovers), (2, 0));
}

#[tokio::test]
async fn when_every_instance_is_unreachable_calls_fail_fast_naming_them() {
    let registry = Arc::new(MemoryRegistry::new());
    let (a, b) = (support::free_address(), support::free_address());
    registry.insert(Instance::new("a", SERVICE, a.to_string()).unwrap());
    registry.insert(Instance::new("b", SERVICE, b.to_string()).unwrap());
    let client = client(registry, |b| b).await;
    // The first call finds out, trying each once.
    let first = check(client.clone()).await.unwrap_err();
    assert_eq!(first.code(), Code::Unavailable, "{first}");
    assert!(first.message().contains("could not connect"), "{first}");
    // Then calls fail at once, naming every instance.
    let started = std::time::Instant::now();
    let err = check(client.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("every instance"), "{err}");
    for addr in [a, b] {
        assert!(err.message().contains(&addr.to_string()), "{err}");
    }
    assert!(started.elapsed() < Duration::from_millis(500));
    let stats = client.stats();
    assert!(stats
        .instances
        .iter()
        .all(|i| !i.reachable && i.breaker == "closed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_ready_waits_for_an_instance_to_come_up() {
    let registry = Arc::new(MemoryRegistry::new());
    let addr = support::free_address();
    registry.insert(Instance::new("late", SERVICE, addr.to_string()).unwrap());
    let client = client(registry, |b| {
        b.wait_for_ready(true)
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
    })
    .await;
    let starter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tokio::task::spawn_blocking(move || TestServer::start_at(addr))
            .await
            .unwrap()
    });
    // Within its deadline, the call waits for the server instead of failing.
    check_within(client.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let server = starter.await.unwrap();
    assert!(server.calls() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_that_never_reached_a_server_spend_no_retry_budget() {
    let (servers, registry) = cluster();
    let client = client(registry, |b| {
        b.balancer(Arc::new(RoundRobin))
            .failover(FailoverConfig::default().with_budget(0.0, 0))
    })
    .await;
    for _ in 0..30 {
        check(client.clone()).await.unwrap();
    }
    servers[1].kill();
    // Let the client's connection see the close: a request written to a
    // connection the peer had just dropped may have reached it (a broken
    // pipe proves nothing), so it is not a transparent retry.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..300 {
        check(client.clone())
            .await
            .unwrap_or_else(|e| panic!("call {i} failed: {e}"));
    }
    let stats = client.stats();
    assert_eq!(stats.budget_exhausted, 0, "{stats:?}");
    assert!(stats.transparent_retries >= 1, "{stats:?}");
}

#[tokio::test]
async fn counters_of_instances_gone_past_the_retention_are_dropped() {
    let (servers, registry) = cluster();
    let client = client(registry.clone(), |b| {
        b.stats_retention(Duration::from_millis(100))
    })
    .await;
    for _ in 0..6 {
        check(client.clone()).await.unwrap();
    }
    registry
        .deregister(&instance("s2", &servers[2]))
        .await
        .unwrap();
    wait_for(|| client.instances().len() == 2).await;
    let ids =
        |c: &Client| -> Vec<String> { c.stats().instances.into_iter().map(|i| i.id).collect() };
    assert_eq!(
        ids(&client),
        ["s0", "s1", "s2"],
        "kept for the retention period"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The next change of the instance set sweeps them.
    registry.insert(instance("s3", &servers[2]));
    wait_for(|| client.instances().len() == 3).await;
    assert_eq!(ids(&client), ["s0", "s1", "s3"]);
}

#[tokio::test]
async fn a_health_check_of_an_unknown_service_name_counts_as_not_serving() {
    let (_servers, registry) = cluster();
    // The servers know only "" (the whole server): the checked name is a
    // configuration error, reported (logged) and counted as not serving.
    let client = client(registry, |b| {
        b.health_check(
            HealthCheckConfig::default()
                .with_interval(Duration::from_millis(50))
                .with_service("no.such.Service"),
        )
    })
    .await;
    wait_for(|| client.stats().instances.iter().all(|i| !i.healthy)).await;
    let s0 = client.stats().instances.swap_remove(0);
    assert!(s0.reachable, "{s0:?}");
    assert_eq!(s0.ejected_for, ["unhealthy"]);
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_reopened_by_the_next_call() {
    let (_servers, registry) = cluster();
    // Swept every 500 ms: a connection closes at the earliest one sweep
    // period after its last call, which leaves the checks below a margin.
    let client = client(registry, |b| b.idle_timeout(Some(Duration::from_secs(1)))).await;
    let connected = |c: &Client| -> Vec<bool> {
        c.stats()
            .instances
            .into_iter()
            .map(|i| i.connected)
            .collect()
    };
    assert_eq!(
        connected(&client),
        [false; 3],
        "no connection before first use"
    );
    for _ in 0..6 {
        check(client.clone()).await.unwrap();
    }
    // (Which instances the six calls went to is the balancer's choice.)
    assert!(connected(&client).iter().any(|c| *c), "opened on first use");
    // Closed between one and one and a half idle timeouts after the last call.
    wait_for(|| connected(&client) == [false; 3]).await;
    for _ in 0..6 {
        check(client.clone()).await.unwrap();
    }
    assert!(connected(&client).iter().any(|c| *c), "reopened on demand");
    let stats = client.stats();
    assert_eq!(stats.failures, 0, "{stats:?}");
}

#[tokio::test]
async fn a_client_with_an_endpoint_hook_calls_through_tonic_channels_and_fails_over() {
    // With a hook, each instance gets a tonic channel configured by it
    // instead of the client's own HTTP/2 connection: same behaviour.
    let (servers, registry) = cluster();
    servers[2].set_failing(true);
    let hooked = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&hooked);
    let client = client(registry, move |b| {
        b.balancer(Arc::new(RoundRobin)).endpoint_config(Arc::new(
            move |endpoint, _instance: &Instance| {
                seen.fetch_add(1, Ordering::Relaxed);
                endpoint.user_agent("hooked").expect("a valid user agent")
            },
        ))
    })
    .await;
    for i in 0..30 {
        check(client.clone())
            .await
            .unwrap_or_else(|e| panic!("call {i} failed: {e}"));
    }
    assert_eq!(
        hooked.load(Ordering::Relaxed),
        3,
        "the hook saw each instance"
    );
    assert!(servers[2].calls() > 0, "the failing instance was tried");
    assert_eq!(client.stats().failures, 0);
}

/// Coalesced writes (the default) and writes sent at once both carry
/// concurrent calls, every one answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_succeed_with_writes_coalesced_or_not() {
    for coalesce in [true, false] {
        let (servers, registry) = cluster();
        let client = client(registry, |b| b.coalesce_writes(coalesce)).await;
        let calls = (0..64).map(|_| check(client.clone()));
        for (i, r) in futures_util::future::join_all(calls)
            .await
            .into_iter()
            .enumerate()
        {
            r.unwrap_or_else(|e| panic!("coalesce {coalesce}: call {i} failed: {e}"));
        }
        assert_eq!(client.stats().successes, 64, "coalesce {coalesce}");
        let served: u64 = servers.iter().map(|s| s.calls()).sum();
        assert_eq!(served, 64, "coalesce {coalesce}: one attempt per call");
    }
}
