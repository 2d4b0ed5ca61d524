//! Watches shared through one registry handle, against a real etcd: 100
//! watchers, one etcd watch, every change delivered to all of them as a
//! delta that carries only the changed instance.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use fyerrpc::registry::conformance::watchers_see_one_change;
use fyerrpc::registry::{ChangeStream, RegisterOptions, WatchEvent};
use fyerrpc::{Instance, Registry};
use fyerrpc_registry_etcd::EtcdRegistry;

use common::{connect, init_tracing, instance, EtcdServer};

const WATCHERS: usize = 100;
/// Generous: the goal is 1 s, but the machine running the tests may be busy.
const DELIVERY_BOUND: Duration = Duration::from_secs(5);
/// How long one watcher waits for one event before the test fails.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

async fn next(stream: &mut ChangeStream) -> WatchEvent {
    loop {
        match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(event))) => return event,
            Ok(Some(Err(e))) => eprintln!("watch error (skipped): {e}"),
            Ok(None) => panic!("the watch ended"),
            Err(_) => panic!("no event within {EVENT_TIMEOUT:?}"),
        }
    }
}

fn ids(set: &[Instance]) -> Vec<&str> {
    let mut ids: Vec<&str> = set.iter().map(Instance::id).collect();
    ids.sort_unstable();
    ids
}

/// etcd's own count of open watchers (`etcd_debugging_mvcc_watcher_total`),
/// read from its metrics endpoint.
fn etcd_watchers(endpoint: &str) -> Option<u64> {
    let addr = endpoint.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
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
async fn a_hundred_watchers_share_one_etcd_watch_and_get_each_change_as_a_delta() {
    init_tracing();
    let etcd = EtcdServer::start();
    let registry = connect(&etcd.endpoint()).await;
    let base_watchers = etcd_watchers(&etcd.endpoint()).expect("etcd reports its watchers");
    let base = registry
        .register(instance("Greet", "base"), RegisterOptions::default())
        .await
        .expect("register base");

    // 100 watchers, each through its own clone of the handle, as 100 clients
    // built on clones of one registry would be.
    let mut streams = Vec::with_capacity(WATCHERS);
    for _ in 0..WATCHERS {
        let handle: EtcdRegistry = registry.clone();
        streams.push(handle.watch_changes("Greet", None).await.expect("watch"));
    }
    assert_eq!(registry.watch_count(), 1, "one etcd watch for all");
    assert_eq!(registry.watcher_count(), WATCHERS);
    assert_eq!(
        etcd_watchers(&etcd.endpoint()),
        Some(base_watchers + 1),
        "etcd itself sees one watcher more"
    );

    let (slowest, mut streams) = watchers_see_one_change(
        streams,
        EVENT_TIMEOUT,
        registry.register(instance("Greet", "added"), RegisterOptions::default()),
    )
    .await;
    eprintln!(
        "etcd, {WATCHERS} watchers: added delivered to all within {:?}, removed within {:?}",
        slowest.added, slowest.removed
    );
    for d in [slowest.added, slowest.removed] {
        assert!(d < DELIVERY_BOUND, "delivery took {d:?}");
    }

    // The etcd watch stays while any watcher does, and closes with the last.
    assert_eq!(registry.watch_count(), 1);
    streams.truncate(1);
    assert_eq!(registry.watch_count(), 1);
    drop(streams);
    until(Duration::from_secs(5), "the etcd watch closes", || {
        registry.watch_count() == 0
    })
    .await;
    let endpoint = etcd.endpoint();
    until(Duration::from_secs(5), "etcd drops the watcher", || {
        etcd_watchers(&endpoint) == Some(base_watchers)
    })
    .await;
    base.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_etcd_restarts_watchers_get_only_what_changed() {
    init_tracing();
    let mut etcd = EtcdServer::start();
    let registry = connect(&etcd.endpoint()).await;
    let mut regs = Vec::new();
    for id in ["a", "b"] {
        regs.push(
            registry
                .register(instance("Greet", id), RegisterOptions::default())
                .await
                .expect("register"),
        );
    }
    let mut watch = registry.watch_changes("Greet", None).await.expect("watch");
    match next(&mut watch).await {
        WatchEvent::Full(set) => assert_eq!(ids(&set), ["a", "b"]),
        other => panic!("expected the whole set first, got {other:?}"),
    }

    // The watch stream breaks; the watcher reads the range again. The set
    // did not change, so nothing but errors may reach the subscriber.
    etcd.restart();
    let c = registry
        .register(instance("Greet", "c"), RegisterOptions::default())
        .await
        .expect("register after the restart");
    match next(&mut watch).await {
        WatchEvent::Delta { upserted, removed } => {
            assert_eq!(ids(&upserted), ["c"]);
            assert!(removed.is_empty(), "{removed:?}");
        }
        other => panic!("expected a delta with c only, got {other:?}"),
    }
    assert_eq!(registry.watch_count(), 1);
    c.shutdown().await.expect("shutdown");
    for r in regs {
        r.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_built_on_clones_of_one_handle_share_one_etcd_watch() {
    init_tracing();
    let etcd = EtcdServer::start();
    let registry = connect(&etcd.endpoint()).await;
    let before = etcd_watchers(&etcd.endpoint()).expect("etcd reports its watchers");
    let mut clients = Vec::new();
    for _ in 0..10 {
        let client = fyerrpc::Client::builder("Greet", registry.clone().into_dyn())
            .build()
            .await
            .expect("client");
        clients.push(client);
    }
    let added = registry
        .register(instance("Greet", "a"), RegisterOptions::default())
        .await
        .expect("register");
    until(Duration::from_secs(10), "every client knows a", || {
        clients
            .iter()
            .all(|c| c.stats().instances.iter().any(|i| i.id == "a"))
    })
    .await;
    assert_eq!(registry.watch_count(), 1, "one etcd watch for ten clients");
    assert_eq!(registry.watcher_count(), 10);
    assert_eq!(etcd_watchers(&etcd.endpoint()), Some(before + 1));
    drop(clients);
    until(Duration::from_secs(5), "the etcd watch closes", || {
        registry.watch_count() == 0
    })
    .await;
    added.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_id_in_two_versions_is_not_lost_when_one_of_them_goes() {
    init_tracing();
    let etcd = EtcdServer::start();
    let registry = connect(&etcd.endpoint()).await;
    let v1 = instance("Greet", "a").with_version("v1").expect("version");
    let v2 = instance("Greet", "a").with_version("v2").expect("version");
    let mut watch = registry.watch_changes("Greet", None).await.expect("watch");
    assert_eq!(next(&mut watch).await, WatchEvent::Full(vec![]));
    let r1 = registry
        .register(v1.clone(), RegisterOptions::default())
        .await
        .expect("register v1");
    assert_eq!(
        next(&mut watch).await,
        WatchEvent::Delta {
            upserted: vec![v1.clone()],
            removed: vec![]
        }
    );
    let r2 = registry
        .register(v2.clone(), RegisterOptions::default())
        .await
        .expect("register v2");
    assert_eq!(
        next(&mut watch).await,
        WatchEvent::Delta {
            upserted: vec![v2],
            removed: vec![]
        }
    );
    // v2 goes: the id stays, standing for v1 again (not removed).
    r2.shutdown().await.expect("shutdown v2");
    assert_eq!(
        next(&mut watch).await,
        WatchEvent::Delta {
            upserted: vec![v1],
            removed: vec![]
        }
    );
    r1.shutdown().await.expect("shutdown v1");
    assert_eq!(
        next(&mut watch).await,
        WatchEvent::Delta {
            upserted: vec![],
            removed: vec!["a".into()]
        }
    );
}
