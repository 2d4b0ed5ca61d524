//! The core registry conformance suite against the file registry.

use std::sync::Arc;
use std::time::Duration;

use fyerrpc::registry::conformance::{run, Harness};
use fyerrpc_registry_file::FileRegistry;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    common::init_tracing();
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("instances.json");
    let registry = FileRegistry::create(&path).expect("registry file");
    let writer_path = path.clone();
    let harness = Harness::new(registry.into_dyn())
        .with_ttl(Duration::from_secs(2))
        .with_invalid_writer(Arc::new(move |service| {
            let path = writer_path.clone();
            Box::pin(async move {
                // An entry under the service whose address is garbage, added
                // the way a cooperating outside tool would: under the lock.
                let bad = format!(r#"{{"id":"broken","service":"{service}","address":"no port"}}"#);
                tokio::task::spawn_blocking(move || common::append_locked(&path, &bad))
                    .await
                    .expect("writer task");
            })
        }));
    run(&harness).await;
}
