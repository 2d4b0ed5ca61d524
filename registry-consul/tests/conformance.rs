//! The core registry conformance suite against a real Consul agent.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::ConsulAgent;
use fyerrpc::registry::conformance::{run, Harness, InvalidWriter};
use fyerrpc_registry_consul::metrics::INVALID_ENTRIES_TOTAL;
use fyerrpc_registry_consul::wire::ServiceRegistration;
use fyerrpc_registry_consul::ConsulClient;

/// Registers, the way a broken or foreign tool would, services that cannot
/// be instances: one without a port (and with a malformed weight), one whose
/// id holds a space. Neither has checks, so both are passing.
fn invalid_writer(client: ConsulClient) -> InvalidWriter {
    Arc::new(move |service: String| {
        let client = client.clone();
        Box::pin(async move {
            let no_port = ServiceRegistration {
                id: format!("{service}-no-port"),
                name: service.clone(),
                address: "127.0.0.1".into(),
                meta: BTreeMap::from([("weight".into(), "abc".into())]),
                ..Default::default()
            };
            let bad_id = ServiceRegistration {
                id: "bad id".into(),
                name: service,
                address: "127.0.0.1".into(),
                port: 7599,
                ..Default::default()
            };
            for reg in [no_port, bad_id] {
                client
                    .register_service(&reg)
                    .await
                    .expect("register garbage");
            }
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_passes_the_conformance_suite() {
    let agent = ConsulAgent::start().await;
    let invalid_before = common::counter(INVALID_ENTRIES_TOTAL);
    let harness = Harness::new(agent.registry().into_dyn())
        .with_ttl(Duration::from_secs(2))
        .with_invalid_writer(invalid_writer(agent.client()));
    run(&harness).await;
    assert!(
        common::counter(INVALID_ENTRIES_TOTAL) > invalid_before,
        "skipped entries are counted"
    );
}
