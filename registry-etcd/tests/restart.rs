//! An etcd restart (with its data, and on an empty data dir) while a
//! registration and a watch are running: both come back by themselves.

mod common;

use std::time::Duration;

use fyerrpc::registry::RegisterOptions;
use fyerrpc::Registry;

use common::{
    connect, discover_until, init_tracing, instance, key_state, register_a_and_watch,
    shut_down_in_turn, EtcdServer,
};

const TTL: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
enum Restart {
    SameDataDir,
    EmptyDataDir,
}

async fn survives(restart: Restart) {
    init_tracing();
    let mut etcd = EtcdServer::start();
    let registry = connect(&etcd.endpoint()).await;
    let options = RegisterOptions::default().with_ttl(TTL);
    let (a, mut watch) = register_a_and_watch(&registry, options.clone(), SETTLE).await;
    let before = key_state(&registry, a.instance()).await;

    etcd.stop();
    // Stay down past the TTL: the keeper's keep-alives fail meanwhile.
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    match restart {
        Restart::SameDataDir => etcd.restart(),
        Restart::EmptyDataDir => etcd.restart_fresh(),
    }

    // The registration comes back without being restarted ...
    discover_until(&registry, "Greet", &["a"], SETTLE).await;
    // ... and stays, renewed, past a few TTLs.
    tokio::time::sleep(TTL * 2).await;
    discover_until(&registry, "Greet", &["a"], Duration::from_millis(100)).await;
    if let Restart::SameDataDir = restart {
        // The lease survived: the keeper renewed it and left the key alone
        // (no new revision, no watch event).
        assert_eq!(
            key_state(&registry, a.instance()).await,
            before,
            "the key was not written again"
        );
    }

    // The watch resumed: it sees new changes.
    let b = registry
        .register(instance("Greet", "b"), options)
        .await
        .expect("register b");
    shut_down_in_turn(&mut watch, a, b, SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_watch_survive_a_restart_with_the_same_data_dir() {
    survives(Restart::SameDataDir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_watch_survive_a_restart_with_an_empty_data_dir() {
    survives(Restart::EmptyDataDir).await;
}
