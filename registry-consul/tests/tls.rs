//! HTTPS to a Consul agent that requires client certificates
//! (`verify_incoming`), with certificates made by the test.

mod common;

use std::time::Duration;

use common::ConsulAgent;
use fyerrpc::registry::conformance::{run, Harness};
use fyerrpc::registry::RegisterOptions;
use fyerrpc::{Instance, Registry, RegistryError};
use fyerrpc_registry_consul::{ConfigError, ConsulConfig, ConsulRegistry, TlsConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_over_https_with_a_client_certificate() {
    let agent = ConsulAgent::start_with_tls().await;
    let registry = ConsulRegistry::new(agent.https_config(true)).expect("https config");
    run(&Harness::new(registry.into_dyn()).with_ttl(Duration::from_secs(2))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_certificate_is_refused() {
    let agent = ConsulAgent::start_with_tls().await;
    let registry = ConsulRegistry::new(agent.https_config(false)).expect("https config");
    let err = registry
        .discover("anything", None)
        .await
        .expect_err("no client certificate: refused");
    assert!(matches!(err, RegistryError::Unavailable(_)), "{err}");
    let inst = Instance::new("a", "S", "127.0.0.1:1").expect("instance");
    let err = registry
        .register(inst, RegisterOptions::default())
        .await
        .expect_err("no client certificate: refused");
    assert!(matches!(err, RegistryError::Unavailable(_)), "{err}");

    // Plain HTTP to the HTTPS port is no way around it either.
    let plain = ConsulRegistry::new(ConsulConfig::from_address(
        agent.https_address().replace("https://", "http://"),
    ))
    .expect("config");
    assert!(plain.discover("anything", None).await.is_err());

    // A certificate for another name is not trusted.
    let files = agent.tls_files();
    let tls = TlsConfig::default()
        .with_ca_file(files.ca.clone())
        .with_client_cert(files.client_cert.clone(), files.client_key.clone())
        .with_server_name("consul.elsewhere.test");
    let wrong_name =
        ConsulRegistry::new(ConsulConfig::from_address(agent.https_address()).with_tls(tls))
            .expect("config");
    let err = wrong_name
        .discover("anything", None)
        .await
        .expect_err("wrong server name");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[test]
fn unreadable_tls_files_are_a_config_error() {
    let tls = TlsConfig::default().with_ca_file("/nonexistent/ca.pem");
    let err =
        ConsulRegistry::new(ConsulConfig::from_address("https://127.0.0.1:8501").with_tls(tls))
            .expect_err("missing CA file");
    assert!(matches!(err, ConfigError::Tls(_)), "{err}");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
