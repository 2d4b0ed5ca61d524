//! A three-member etcd cluster on loopback: losing one member (the leader)
//! does not stop registration or discovery.

mod common;

use std::time::Duration;

use fyerrpc::registry::RegisterOptions;
use fyerrpc::Registry;

use common::{
    connect, discover_until, init_tracing, instance, register_a_and_watch, shut_down_in_turn,
    EtcdCluster,
};

const TTL: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_secs(10);

/// The index of the member that leads the cluster.
async fn leader(cluster: &EtcdCluster) -> usize {
    for (i, member) in cluster.members.iter().enumerate() {
        let registry = connect(&member.endpoint()).await;
        let mut maintenance = registry.client().maintenance_client();
        let status = maintenance.status().await.expect("member status");
        let me = status
            .header()
            .map(|h| h.member_id())
            .expect("status header");
        if status.leader() == me {
            return i;
        }
    }
    panic!("the cluster has no leader");
}

/// How a member is lost.
#[derive(Clone, Copy)]
enum Loss {
    /// The process dies: connections are refused.
    Killed,
    /// The process hangs: connections stay open, nothing answers.
    Frozen,
}

async fn survives_losing_the_leader(loss: Loss) {
    init_tracing();
    let mut cluster = EtcdCluster::start(3);
    let registry = connect(&cluster.endpoints()).await;
    let options = RegisterOptions::default().with_ttl(TTL);
    let (a, mut watch) = register_a_and_watch(&registry, options.clone(), SETTLE).await;

    let lost = leader(&cluster).await;
    match loss {
        Loss::Killed => cluster.members[lost].stop(),
        Loss::Frozen => cluster.members[lost].freeze(),
    }

    // The registration is kept alive through the other members ...
    tokio::time::sleep(TTL * 2).await;
    discover_until(&registry, "Greet", &["a"], SETTLE).await;
    // ... new registrations work, and the watch still follows changes.
    let b = registry
        .register(instance("Greet", "b"), options)
        .await
        .expect("register b with one member down");
    shut_down_in_turn(&mut watch, a, b, SETTLE).await;
    if let Loss::Frozen = loss {
        cluster.members[lost].thaw();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_discovery_survive_the_leader_dying() {
    survives_losing_the_leader(Loss::Killed).await;
}

// A hung member keeps its connections open and answers nothing: requests to
// it are hedged to the others, and it is tried last afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_discovery_survive_the_leader_hanging() {
    survives_losing_the_leader(Loss::Frozen).await;
}
