//! Watches shared through one registry handle, against a real Consul agent:
//! 100 watchers, one blocking-query loop, every change delivered to all of
//! them as a delta that carries only the changed instance.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fyerrpc::registry::conformance::watchers_see_one_change;
use fyerrpc::registry::RegisterOptions;
use fyerrpc::{Instance, Registry};
use fyerrpc_registry_consul::{ConsulConfig, ConsulRegistry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::ConsulAgent;

const WATCHERS: usize = 100;
/// Generous: the goal is 1 s, but the machine running the tests may be busy.
const DELIVERY_BOUND: Duration = Duration::from_secs(5);
/// How long one watcher waits for one event before the test fails.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

fn instance(service: &str, id: &str, port: u16) -> Instance {
    Instance::new(id, service, format!("127.0.0.1:{port}")).expect("valid instance")
}

/// A TCP proxy in front of the agent at `agent` (`http://host:port`) that
/// counts the health queries of `service` going through it. Returns its
/// address and the count.
async fn counting_proxy(agent: &str, service: &str) -> (String, Arc<AtomicUsize>) {
    let upstream = agent.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let count = Arc::new(AtomicUsize::new(0));
    let needle = format!("GET /v1/health/service/{service}").into_bytes();
    let counter = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                continue;
            };
            let (counter, needle) = (Arc::clone(&counter), needle.clone());
            tokio::spawn(async move {
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                let requests = async move {
                    // Keeps the tail of the previous read, so that a request
                    // line split across reads is still seen once.
                    let mut window: Vec<u8> = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let n = match client_rx.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if server_tx.write_all(&chunk[..n]).await.is_err() {
                            break;
                        }
                        window.extend_from_slice(&chunk[..n]);
                        let found = window
                            .windows(needle.len())
                            .filter(|w| *w == needle)
                            .count();
                        counter.fetch_add(found, Ordering::SeqCst);
                        let keep = if found > 0 { 0 } else { needle.len() - 1 };
                        let cut = window.len().saturating_sub(keep);
                        window.drain(..cut);
                    }
                    let _ = server_tx.shutdown().await;
                };
                let answers = async move {
                    let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                    let _ = client_tx.shutdown().await;
                };
                tokio::join!(requests, answers);
            });
        }
    });
    (address, count)
}

/// Waits until `f` holds; panics after `within`.
async fn until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_watchers_share_one_consul_watch_and_get_each_change_as_a_delta() {
    common::init_tracing();
    let agent = ConsulAgent::start().await;
    // Server side: registrations straight to the agent.
    let servers = agent.registry();
    // Client side: watches through a proxy that counts the health queries.
    let (proxy, queries) = counting_proxy(&agent.address(), "Greet").await;
    let registry = ConsulRegistry::new(ConsulConfig::from_address(proxy)).expect("config");
    let base = servers
        .register(instance("Greet", "base", 7001), RegisterOptions::default())
        .await
        .expect("register base");

    // 100 watchers, each through its own clone of the handle, as 100 clients
    // built on clones of one registry would be.
    let mut streams = Vec::with_capacity(WATCHERS);
    for _ in 0..WATCHERS {
        let handle: ConsulRegistry = registry.clone();
        streams.push(handle.watch_changes("Greet", None).await.expect("watch"));
    }
    assert_eq!(registry.watch_count(), 1, "one blocking-query loop for all");
    assert_eq!(registry.watcher_count(), WATCHERS);

    let (slowest, mut streams) = watchers_see_one_change(
        streams,
        EVENT_TIMEOUT,
        servers.register(instance("Greet", "added", 7002), RegisterOptions::default()),
    )
    .await;
    eprintln!(
        "Consul, {WATCHERS} watchers: added delivered to all within {:?}, removed within {:?}",
        slowest.added, slowest.removed
    );
    for d in [slowest.added, slowest.removed] {
        assert!(d < DELIVERY_BOUND, "delivery took {d:?}");
    }
    // One loop: a query to start, one per change, and a few more (an
    // answer with nothing new, a wait that ran out). A hundred loops would
    // have asked at least a hundred times.
    let asked = queries.load(Ordering::SeqCst);
    eprintln!("Consul, {WATCHERS} watchers: {asked} health queries sent to the agent");
    assert!((1..=20).contains(&asked), "{asked} health queries");

    // The blocking-query loop stays while any watcher does, and closes with the last.
    assert_eq!(registry.watch_count(), 1);
    streams.truncate(1);
    assert_eq!(registry.watch_count(), 1);
    drop(streams);
    until(
        Duration::from_secs(5),
        "the blocking-query loop stops",
        || registry.watch_count() == 0,
    )
    .await;
    base.shutdown().await.expect("shutdown");
}
