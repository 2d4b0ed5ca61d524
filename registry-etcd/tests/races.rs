//! Races made deterministic with the registry's test hooks: a shutdown that
//! interrupts a recovery, and a compaction between a watch's read and its
//! watch.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fyerrpc::registry::RegisterOptions;
use fyerrpc::Registry;
use fyerrpc_registry_etcd::testing::{Hook, Hooks};
use tokio::sync::{Notify, Semaphore};

use common::{
    connect, discover_until, init_tracing, instance, key_state, leases, watch_until, EtcdServer,
};

const TTL: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_secs(10);

/// Which hook a [`Gate`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    Reregistered,
    WatchRead,
}

/// Holds the first task that reaches its point until released; lets every
/// later one through.
#[derive(Debug)]
struct Gate {
    point: Point,
    reached: Notify,
    release: Semaphore,
    held: std::sync::atomic::AtomicBool,
}

impl Gate {
    fn new(point: Point) -> Arc<Self> {
        Arc::new(Self {
            point,
            reached: Notify::new(),
            release: Semaphore::new(0),
            held: false.into(),
        })
    }

    /// Waits until a task is held at the gate.
    async fn reached(&self) {
        tokio::time::timeout(SETTLE, self.reached.notified())
            .await
            .expect("a task reaches the hook");
    }

    fn release(&self) {
        self.release.add_permits(1);
    }
}

#[async_trait]
impl Hooks for Gate {
    async fn reached(&self, hook: Hook<'_>) {
        let point = match hook {
            Hook::Reregistered { .. } => Point::Reregistered,
            Hook::WatchRead { .. } => Point::WatchRead,
            _ => return,
        };
        if point != self.point || self.held.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        self.reached.notify_one();
        if let Ok(permit) = self.release.acquire().await {
            permit.forget();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_that_interrupts_a_recovery_leaves_nothing_behind() {
    init_tracing();
    let etcd = EtcdServer::start();
    let gate = Gate::new(Point::Reregistered);
    let registry = connect(&etcd.endpoint()).await.with_hooks(gate.clone());
    let a = instance("Greet", "a");
    let registration = registry
        .register(a.clone(), RegisterOptions::default().with_ttl(TTL))
        .await
        .expect("register");
    let first = leases(&registry).await;
    assert_eq!(first.len(), 1, "one lease: {first:?}");

    // The lease is lost: the keeper grants a new one, writes the key under
    // it and is held right there.
    let mut lease_client = registry.client().lease_client();
    lease_client.revoke(first[0]).await.expect("revoke");
    gate.reached().await;
    let (lease, _) = key_state(&registry, &a)
        .await
        .expect("the key is back under the new lease");
    assert_ne!(lease, first[0]);

    // Shut down while the recovery is still under way.
    tokio::time::timeout(SETTLE, registration.shutdown())
        .await
        .expect("shutdown returns")
        .expect("shutdown");
    gate.release();
    assert_eq!(key_state(&registry, &a).await, None, "the key is gone");
    assert_eq!(leases(&registry).await, Vec::<i64>::new(), "no lease left");
    // ... and stays gone.
    tokio::time::sleep(TTL).await;
    assert_eq!(key_state(&registry, &a).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_between_read_and_watch_ends_in_the_current_set() {
    init_tracing();
    let etcd = EtcdServer::start();
    let gate = Gate::new(Point::WatchRead);
    let watching = connect(&etcd.endpoint()).await.with_hooks(gate.clone());
    let registry = connect(&etcd.endpoint()).await;
    let options = RegisterOptions::default();
    let a = registry
        .register(instance("Greet", "a"), options.clone())
        .await
        .expect("register a");
    let b = registry
        .register(instance("Greet", "b"), options.clone())
        .await
        .expect("register b");

    // The watch read {a, b} and is held before watching on.
    let mut watch = watching.watch("Greet", None).await.expect("watch");
    gate.reached().await;

    // Meanwhile b goes, c comes, and the history is compacted away.
    b.shutdown().await.expect("shutdown b");
    let c = registry
        .register(instance("Greet", "c"), options)
        .await
        .expect("register c");
    let mut kv = registry.client().kv_client();
    let revision = kv
        .get("/", None)
        .await
        .expect("read the revision")
        .header()
        .map(|h| h.revision())
        .expect("header");
    kv.compact(
        revision,
        Some(fyerrpc_registry_etcd::etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .expect("compact");

    gate.release();
    watch_until(&mut watch, &["a", "c"], SETTLE).await;
    discover_until(&watching, "Greet", &["a", "c"], SETTLE).await;

    // The watch follows later changes.
    a.shutdown().await.expect("shutdown a");
    watch_until(&mut watch, &["c"], SETTLE).await;
    c.shutdown().await.expect("shutdown c");
    watch_until(&mut watch, &[], SETTLE).await;
}
