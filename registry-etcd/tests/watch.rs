//! Discovery against a real etcd: changes reach a watch quickly, dead
//! registrations expire, garbage is skipped.

mod common;

use std::time::{Duration, Instant};

use fyerrpc::instance::{instance_key, service_prefix};
use fyerrpc::registry::RegisterOptions;
use fyerrpc::Registry;

use common::{
    connect, discover_until, ids, init_tracing, instance, key_state, watch_until, write_garbage,
    EtcdServer,
};

const TTL: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_an_added_and_a_removed_instance_within_one_second() {
    init_tracing();
    let etcd = EtcdServer::start();
    let registry = connect(&etcd.endpoint()).await;
    let mut watch = registry.watch("Greet", None).await.expect("watch");
    watch_until(&mut watch, &[], SETTLE).await;

    let registration = registry
        .register(instance("Greet", "a"), RegisterOptions::default())
        .await
        .expect("register");
    watch_until(&mut watch, &["a"], Duration::from_secs(1)).await;

    registration.shutdown().await.expect("shutdown");
    watch_until(&mut watch, &[], Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_registration_disappears_within_its_ttl() {
    init_tracing();
    let etcd = EtcdServer::start();
    let registry = connect(&etcd.endpoint()).await;
    let registration = registry
        .register(
            instance("Greet", "mortal"),
            RegisterOptions::default().with_ttl(TTL),
        )
        .await
        .expect("register");
    let mut watch = registry.watch("Greet", None).await.expect("watch");
    watch_until(&mut watch, &["mortal"], SETTLE).await;

    // The process "dies": no more keep-alives, no deregistration.
    registration.abandon().await.expect("abandon");
    let abandoned = Instant::now();
    // etcd expires leases on a 500 ms sweep, after the TTL counted from the
    // last renewal (at most TTL/3 before the abandon).
    watch_until(&mut watch, &[], TTL + Duration::from_secs(1)).await;
    assert!(
        abandoned.elapsed() >= TTL / 2,
        "removed too early for an expiry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_under_the_prefix_is_skipped() {
    init_tracing();
    let etcd = EtcdServer::start();
    let registry = connect(&etcd.endpoint()).await;
    let good = registry
        .register(instance("Greet", "good"), RegisterOptions::default())
        .await
        .expect("register");
    write_garbage(&registry, "Greet").await;

    // Present before the read: discover and the watch's first set skip it.
    let set = registry.discover("Greet", None).await.expect("discover");
    assert_eq!(ids(&set), ["good"]);
    let mut watch = registry.watch("Greet", None).await.expect("watch");
    watch_until(&mut watch, &["good"], SETTLE).await;

    // Written while watching: skipped, and later changes still arrive.
    let mut kv = registry.client().kv_client();
    let base = service_prefix(registry.prefix(), "Greet", Some("v1"));
    kv.put(format!("{base}late"), "truncated {\"id\":", None)
        .await
        .expect("put garbage");
    let other = registry
        .register(instance("Greet", "other"), RegisterOptions::default())
        .await
        .expect("register");
    watch_until(&mut watch, &["good", "other"], SETTLE).await;

    // An instance overwritten with garbage drops out of the set.
    let key = instance_key(registry.prefix(), other.instance());
    kv.put(key, "garbage", None).await.expect("overwrite");
    watch_until(&mut watch, &["good"], SETTLE).await;
    discover_until(&registry, "Greet", &["good"], SETTLE).await;

    good.shutdown().await.expect("shutdown");
    watch_until(&mut watch, &[], SETTLE).await;
    drop(other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_during_a_watch_ends_in_the_full_current_set() {
    init_tracing();
    let etcd = EtcdServer::start();
    let registry = connect(&etcd.endpoint()).await;
    let options = RegisterOptions::default();
    let a = registry
        .register(instance("Greet", "a"), options.clone())
        .await
        .expect("register a");
    let mut watch = registry.watch("Greet", None).await.expect("watch");
    watch_until(&mut watch, &["a"], SETTLE).await;

    let b = registry
        .register(instance("Greet", "b"), options.clone())
        .await
        .expect("register b");
    let c = registry
        .register(instance("Greet", "c"), options.clone())
        .await
        .expect("register c");
    b.shutdown().await.expect("shutdown b");
    // Compact the whole history up to now, while the watch runs.
    let mut kv = registry.client().kv_client();
    let revision = kv
        .get("/", None)
        .await
        .expect("read the revision")
        .header()
        .map(|h| h.revision())
        .expect("header");
    let physical = fyerrpc_registry_etcd::etcd_client::CompactionOptions::new().with_physical();
    kv.compact(revision, Some(physical)).await.expect("compact");
    let d = registry
        .register(instance("Greet", "d"), options)
        .await
        .expect("register d");
    watch_until(&mut watch, &["a", "c", "d"], SETTLE).await;
    discover_until(&registry, "Greet", &["a", "c", "d"], SETTLE).await;

    for r in [a, c, d] {
        r.shutdown().await.expect("shutdown");
    }
    watch_until(&mut watch, &[], SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_live_key_is_back_within_the_keep_alive_period() {
    init_tracing();
    let etcd = EtcdServer::start();
    let registry = connect(&etcd.endpoint()).await;
    let options = RegisterOptions::default().with_ttl(Duration::from_secs(6));
    let period = options.keepalive_period();
    let a = instance("Greet", "a");
    let registration = registry
        .register(a.clone(), options)
        .await
        .expect("register");
    let mut watch = registry.watch("Greet", None).await.expect("watch");
    watch_until(&mut watch, &["a"], SETTLE).await;

    // Deleted as `etcdctl del` would: the watch sees it go, then come back.
    let mut kv = registry.client().kv_client();
    let key = instance_key(registry.prefix(), &a);
    let deleted = kv.delete(key.as_str(), None).await.expect("delete");
    assert_eq!(deleted.deleted(), 1);
    watch_until(&mut watch, &[], SETTLE).await;
    let back = watch_until(&mut watch, &["a"], period + SETTLE).await;
    tracing::info!(?back, ?period, "the deleted key is back");
    assert!(registration.is_active());

    // Back under the registration's lease: its shutdown removes it.
    registration.shutdown().await.expect("shutdown");
    watch_until(&mut watch, &[], SETTLE).await;
    assert_eq!(key_state(&registry, &a).await, None);
}
