//! Compound faults against real tonic servers on loopback: killed and
//! restarted servers, failure windows, random failures, failing health,
//! servers without a health service. Every case is bounded in time and
//! asserts counts, not timings.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fyerrpc::balance::RoundRobin;
use fyerrpc::breaker::{ConsecutiveFailures, OpenPolicy};
use fyerrpc::failover::FailoverConfig;
use fyerrpc::health::HealthCheckConfig;
use fyerrpc::registry::MemoryRegistry;
use fyerrpc::{Client, Registry};
use support::{check, TestServer, METHOD};

use support::instance;

fn cluster(n: usize) -> (Vec<Arc<TestServer>>, Arc<MemoryRegistry>) {
    support::cluster_of(n)
}

/// The breaker the cases use: trips after 3 failures in a row, short open time.
fn breaker(open: Duration) -> Arc<ConsecutiveFailures> {
    Arc::new(ConsecutiveFailures::new(3).with_open(OpenPolicy::default().with_base_open(open)))
}

async fn client(
    registry: Arc<MemoryRegistry>,
    f: impl FnOnce(fyerrpc::ClientBuilder) -> fyerrpc::ClientBuilder,
) -> Client {
    support::client_of(registry, f).await
}

/// Calls made by a load run, and the failures among them.
#[derive(Debug, Default)]
struct Load {
    calls: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Load {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
    fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }
}

/// Starts `workers` tasks calling in a loop until `load.stop` is set (or
/// `max_calls` calls were made in all).
fn start_load(
    client: &Client,
    workers: usize,
    max_calls: u64,
) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
    let load = Arc::new(Load::default());
    let tasks = (0..workers)
        .map(|_| {
            let (c, load) = (client.clone(), Arc::clone(&load));
            tokio::spawn(async move {
                while !load.stop.load(Ordering::SeqCst) && load.calls() < max_calls {
                    let result = check(c.clone()).await;
                    load.calls.fetch_add(1, Ordering::SeqCst);
                    if let Err(e) = result {
                        load.failed.fetch_add(1, Ordering::SeqCst);
                        let mut errors = load.errors.lock().unwrap();
                        if errors.len() < 10 {
                            errors.push(format!("{:?}: {}", e.code(), e.message()));
                        }
                    }
                }
            })
        })
        .collect();
    (load, tasks)
}

async fn stop_load(load: &Load, tasks: Vec<tokio::task::JoinHandle<()>>) {
    load.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
}

/// Waits (bounded) until `cond` holds; returns whether it did.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// Waits until at least `n` calls have been made.
async fn calls_reach(load: &Load, n: u64) {
    assert!(
        eventually(Duration::from_secs(20), || load.calls() >= n).await,
        "the load made only {} calls",
        load.calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_fails_no_idempotent_call() {
    let (servers, registry) = cluster(3);
    let client = client(registry, |b| {
        b.failover(FailoverConfig::default().with_idempotent_methods([METHOD]))
    })
    .await;
    let (load, tasks) = start_load(&client, 16, u64::MAX);
    calls_reach(&load, 500).await;
    servers[2].kill();
    let killed_at = load.calls();
    calls_reach(&load, killed_at + 1_500).await;
    stop_load(&load, tasks).await;
    assert_eq!(load.failed(), 0, "{:?}", load.errors.lock().unwrap());
    let stats = client.stats();
    let dead = stats.instances.iter().find(|i| i.id == "s2").unwrap();
    // The broken connection made the client check: it is known unreachable.
    assert!(
        eventually(Duration::from_secs(5), || !client.stats().instances[2]
            .reachable)
        .await,
        "{dead:?}"
    );
    // Only the calls in flight when it died failed on it; every later one
    // found it unreachable.
    assert!(dead.failures <= 32, "{dead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_fails_at_most_the_calls_in_flight_on_it() {
    let (servers, registry) = cluster(3);
    // The method is not declared idempotent: a call cut off mid-flight is
    // not sent again.
    let client = client(registry, |b| b).await;
    let workers = 16;
    let (load, tasks) = start_load(&client, workers, u64::MAX);
    calls_reach(&load, 500).await;
    servers[1].kill();
    let killed_at = load.calls();
    calls_reach(&load, killed_at + 1_500).await;
    stop_load(&load, tasks).await;
    assert!(
        load.failed() <= workers as u64,
        "{} failed: {:?}",
        load.failed(),
        load.errors.lock().unwrap()
    );
    // After the kill, only the calls in flight can have failed: every later
    // call found the instance unreachable and went elsewhere at once.
    assert!(client.stats().transparent_retries > 0 || load.failed() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_each_server_in_turn_fails_no_call() {
    let (servers, registry) = cluster(3);
    // Not idempotent either: a graceful restart loses nothing.
    let client = client(registry.clone(), |b| b).await;
    let (load, tasks) = start_load(&client, 16, u64::MAX);
    calls_reach(&load, 300).await;
    for (i, server) in servers.iter().enumerate() {
        let id = format!("s{i}");
        // The lifecycle of a well-behaved server: leave the registry, keep
        // serving for a moment (lame duck), drain, come back.
        registry.deregister(&instance(&id, server)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = Arc::clone(server);
        tokio::task::spawn_blocking(move || s.restart_gracefully(Duration::from_millis(200)))
            .await
            .unwrap();
        registry.insert(instance(&id, server));
        let at = load.calls();
        calls_reach(&load, at + 300).await;
    }
    stop_load(&load, tasks).await;
    assert_eq!(load.failed(), 0, "{:?}", load.errors.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_each_server_in_turn_without_deregistering_fails_no_call() {
    let (servers, registry) = cluster(3);
    let client = client(registry, |b| b).await;
    let (load, tasks) = start_load(&client, 16, u64::MAX);
    calls_reach(&load, 300).await;
    for server in &servers {
        // GOAWAY with calls arriving: streams above its last id were not
        // processed and go elsewhere; while down, the instance is unreachable.
        let s = Arc::clone(server);
        tokio::task::spawn_blocking(move || s.restart_gracefully(Duration::from_millis(200)))
            .await
            .unwrap();
        let at = load.calls();
        calls_reach(&load, at + 300).await;
    }
    stop_load(&load, tasks).await;
    // A request written just after the server's GOAWAY is read by the
    // lingering connection (not reset), so the client reads the GOAWAY,
    // learns the request was not processed and sends it elsewhere.
    assert_eq!(load.failed(), 0, "{:?}", load.errors.lock().unwrap());
    assert!(
        eventually(Duration::from_secs(10), || client
            .stats()
            .instances
            .iter()
            .all(|i| i.reachable))
        .await,
        "restarted servers are reachable again: {:?}",
        client.stats().instances
    );
}

/// The race behind the test above, made frequent: a server restarted forty
/// times at once, under 32 callers. Without lingering closes on the server,
/// about ten calls fail with "broken pipe" here: requests written just after
/// the GOAWAY meet a connection reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_quick_graceful_restarts_fail_no_call() {
    let (servers, registry) = cluster(3);
    let client = client(registry, |b| b).await;
    let (load, tasks) = start_load(&client, 32, u64::MAX);
    calls_reach(&load, 300).await;
    for _ in 0..40 {
        let s = Arc::clone(&servers[0]);
        tokio::task::spawn_blocking(move || s.restart_gracefully(Duration::ZERO))
            .await
            .unwrap();
        let at = load.calls();
        calls_reach(&load, at + 100).await;
    }
    stop_load(&load, tasks).await;
    assert_eq!(load.failed(), 0, "{:?}", load.errors.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_faults_plus_a_killed_server_fail_almost_nothing_and_breakers_close() {
    let (servers, registry) = cluster(3);
    let open = Duration::from_millis(300);
    let client = client(registry, |b| {
        b.failover(FailoverConfig::default().with_idempotent_methods([METHOD]))
            .breaker(breaker(open))
    })
    .await;
    // The client first runs fault-free for a while, as a client in service
    // has: its retry budget holds the deposits of recent requests (a client
    // started into these faults has only the budget's floor, 100 retries,
    // and can spend it on A's window: tens of calls then fail for want of a
    // retry, as the budget intends).
    let (load, tasks) = start_load(&client, 16, u64::MAX);
    calls_reach(&load, 1_000).await;
    // A: a failure window after 100 more calls; B: 10 % random failures;
    // C: killed under load.
    servers[0].set_failure_window(servers[0].calls() + 100, Duration::from_millis(1_500));
    servers[1].set_fail_permille(100);
    let at = load.calls();
    calls_reach(&load, at + 1_000).await;
    servers[2].kill();
    let at = load.calls();
    calls_reach(&load, at + 4_000).await;
    // A's window is over by now or soon: let the load run past it.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    servers[1].set_fail_permille(0);
    let at = load.calls();
    calls_reach(&load, at + 1_000).await;
    stop_load(&load, tasks).await;
    let (calls, failed) = (load.calls(), load.failed());
    assert!(
        failed * 1_000 <= calls,
        "{failed} of {calls} calls failed: {:?} {:?}",
        load.errors.lock().unwrap(),
        client.stats()
    );
    let stats = client.stats();
    assert!(
        stats.breaker_trips > 0,
        "A's window trips its breaker: {stats:?}"
    );
    // Faults cleared: every breaker of a live instance closes within its
    // open time plus the probes (which calls carry). The killed one stays
    // unreachable, whatever its breaker says.
    let mut closed = false;
    for _ in 0..200 {
        let _ = check(client.clone()).await;
        let stats = client.stats();
        let live: Vec<_> = stats.instances.iter().filter(|i| i.id != "s2").collect();
        if live.len() == 2 && live.iter().all(|i| i.breaker == "closed") {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "breakers: {:?}", client.stats().instances);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_breakers_open_then_healed_servers_close_them_again() {
    let (servers, registry) = cluster(3);
    let open = Duration::from_millis(1_000);
    let client = client(registry, |b| {
        b.balancer(Arc::new(RoundRobin)).breaker(breaker(open))
    })
    .await;
    for s in &servers {
        s.set_failing(true);
    }
    // Every breaker trips (the first ejects its instance; the ejection cap
    // spares the others, which keep taking calls).
    for _ in 0..60 {
        let _ = check(client.clone()).await;
        if client
            .stats()
            .instances
            .iter()
            .all(|i| i.breaker != "closed")
        {
            break;
        }
    }
    let stats = client.stats();
    assert!(
        stats.instances.iter().all(|i| i.breaker != "closed"),
        "every breaker tripped: {:?}",
        stats.instances
    );
    for s in &servers {
        s.set_failing(false);
    }
    // Spared instances take the calls meanwhile; time half-opens the
    // breakers and the probes among those calls close them (within the
    // longest open time, 10 x the base, on a machine slow enough to make
    // them flap while failing).
    let mut failed = 0;
    let mut closed = false;
    for _ in 0..700 {
        if check(client.clone()).await.is_err() {
            failed += 1;
        }
        if client
            .stats()
            .instances
            .iter()
            .all(|i| i.breaker == "closed")
        {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "breakers: {:?}", client.stats().instances);
    assert_eq!(failed, 0, "healed servers answer");
    // Closed breakers: no more panic-mode picks.
    let panics = client.stats().panic_picks;
    for _ in 0..30 {
        check(client.clone()).await.unwrap();
    }
    assert_eq!(client.stats().panic_picks, panics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_without_a_health_service_is_never_ejected_by_health_checks() {
    let plain = TestServer::start_without_health();
    let (servers, registry) = cluster(2);
    registry.insert(instance("plain", &plain));
    let client = client(registry, |b| {
        b.health_check(
            HealthCheckConfig::default()
                .with_interval(Duration::from_millis(50))
                .with_timeout(Duration::from_millis(500)),
        )
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = client.stats();
    let p = stats.instances.iter().find(|i| i.id == "plain").unwrap();
    assert!(
        p.healthy && p.reachable && p.ejected_for.is_empty(),
        "{p:?}"
    );
    assert!(
        servers.iter().all(|s| s.calls() >= 2),
        "the others are checked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_both_open_and_unhealthy_gets_no_first_attempts() {
    let (servers, registry) = cluster(3);
    let client = client(registry, |b| {
        b.balancer(Arc::new(RoundRobin))
            .breaker(Arc::new(ConsecutiveFailures::new(1).with_open(
                OpenPolicy::default().with_base_open(Duration::from_secs(60)),
            )))
            .health_check(
                // Slow enough that calls trip the breaker before the
                // second failed check ejects the instance.
                HealthCheckConfig::default()
                    .with_interval(Duration::from_millis(500))
                    .with_timeout(Duration::from_millis(500)),
            )
    })
    .await;
    servers[0].set_failing(true);
    // Its breaker trips on the calls that reach it ...
    for _ in 0..100 {
        let _ = check(client.clone()).await;
        if client.stats().instances[0].breaker == "open" {
            break;
        }
    }
    // ... and its health checks fail too.
    servers[0].set_serving(false);
    let both = eventually(Duration::from_secs(5), || {
        !client.stats().instances[0].healthy
    })
    .await;
    let s0 = client.stats().instances.swap_remove(0);
    assert!(both, "{s0:?}");
    assert_eq!(s0.id, "s0");
    assert_eq!(s0.ejected_for, ["breaker_open", "unhealthy"], "{s0:?}");
    let before = s0.attempts;
    for _ in 0..300 {
        check(client.clone()).await.unwrap();
    }
    let after = client.stats().instances[0].attempts;
    assert_eq!(after, before, "the ejected instance got no attempts");
    assert_eq!(
        client.stats().panic_picks,
        0,
        "one of three ejected: no panic"
    );
}
