//! The core registry conformance suite against a real etcd.

mod common;

use std::sync::Arc;
use std::time::Duration;

use fyerrpc::registry::conformance::{run, Harness};

use common::{connect, init_tracing, shared, write_garbage, EtcdServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    init_tracing();
    let etcd = EtcdServer::start();
    let registry = connect(&etcd.endpoint()).await;
    let writer = registry.clone();
    let harness = Harness::new(shared(&registry))
        .with_ttl(Duration::from_secs(2))
        .with_invalid_writer(Arc::new(move |service| {
            let registry = writer.clone();
            Box::pin(async move { write_garbage(&registry, &service).await })
        }));
    run(&harness).await;
}
