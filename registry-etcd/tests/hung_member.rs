//! A three-member cluster where the member carrying a registration's
//! keep-alive hangs (SIGSTOP) for twice the TTL: the keeper gives the silent
//! stream up and renews through another member before the lease runs out, so
//! nothing is registered again and no watcher on a healthy member sees the
//! instance leave.
//!
//! Alone in its binary: it installs the process-wide metrics recorder.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use fyerrpc::registry::RegisterOptions;
use fyerrpc::Registry;
use fyerrpc_registry_etcd::metrics::REREGISTRATIONS_TOTAL;
use fyerrpc_registry_etcd::testing::{Hook, Hooks};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::sync::Notify;

use common::{connect, discover_until, ids, init_tracing, instance, watch_until, EtcdCluster};

const TTL: Duration = Duration::from_secs(3);
const SETTLE: Duration = Duration::from_secs(10);

/// The endpoints keep-alive streams were opened on, in order.
#[derive(Debug, Default)]
struct KeepAlives {
    endpoints: Mutex<Vec<String>>,
    opened: Notify,
}

impl KeepAlives {
    fn endpoints(&self) -> Vec<String> {
        self.endpoints.lock().expect("lock").clone()
    }
}

#[async_trait]
impl Hooks for KeepAlives {
    async fn reached(&self, hook: Hook<'_>) {
        if let Hook::KeepAliveOpened { endpoint, .. } = hook {
            self.endpoints
                .lock()
                .expect("lock")
                .push(endpoint.to_owned());
            self.opened.notify_waiters();
        }
    }
}

/// The etcd backend's re-registration count so far.
fn reregistrations(snapshotter: &Snapshotter) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == REREGISTRATIONS_TOTAL)
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freezing_the_keep_alive_member_costs_no_registration() {
    init_tracing();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("install the metrics recorder");

    let mut cluster = EtcdCluster::start(3);
    let keep_alives = Arc::new(KeepAlives::default());
    let registry = connect(&cluster.endpoints())
        .await
        .with_hooks(keep_alives.clone());
    let registration = registry
        .register(
            instance("Greet", "a"),
            RegisterOptions::default().with_ttl(TTL),
        )
        .await
        .expect("register");
    tokio::time::timeout(SETTLE, async {
        while keep_alives.endpoints().is_empty() {
            keep_alives.opened.notified().await;
        }
    })
    .await
    .expect("a keep-alive stream opens");
    let carrier = keep_alives.endpoints()[0].clone();
    let frozen = cluster
        .members
        .iter()
        .position(|m| m.endpoint() == carrier)
        .expect("the carrier is a member");

    // Watchers on the healthy members, each on that member alone.
    let left = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    for (i, member) in cluster.members.iter().enumerate() {
        if i == frozen {
            continue;
        }
        let observer = connect(&member.endpoint()).await;
        let mut watch = observer.watch("Greet", None).await.expect("watch");
        watch_until(&mut watch, &["a"], SETTLE).await;
        let left = left.clone();
        watchers.push(tokio::spawn(async move {
            while let Some(item) = watch.next().await {
                if let Ok(set) = item {
                    if ids(&set) != ["a"] {
                        tracing::error!(set = ?ids(&set), "a watcher saw the instance leave");
                        left.store(true, Ordering::SeqCst);
                    }
                }
            }
            drop(observer);
        }));
    }

    let before = reregistrations(&snapshotter);
    cluster.members[frozen].freeze();
    tokio::time::sleep(TTL * 2).await;
    cluster.members[frozen].thaw();

    let opened = keep_alives.endpoints();
    assert!(
        opened.len() >= 2 && opened[1..].iter().all(|e| *e != carrier),
        "the keep-alive moved off the frozen member: {opened:?}"
    );
    discover_until(&registry, "Greet", &["a"], SETTLE).await;
    // A little longer, for anything late to show.
    tokio::time::sleep(TTL).await;
    assert_eq!(
        reregistrations(&snapshotter),
        before,
        "no re-registration while the member was frozen"
    );
    assert!(
        !left.load(Ordering::SeqCst),
        "a watcher on a healthy member saw the instance leave"
    );

    registration.shutdown().await.expect("shutdown");
    discover_until(&registry, "Greet", &[], SETTLE).await;
    for watcher in watchers {
        watcher.abort();
    }
}
