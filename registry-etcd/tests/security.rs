//! Authentication and TLS against a real etcd.

mod common;

use std::path::Path;
use std::time::Duration;

use etcd_client::Permission;
use fyerrpc::registry::RegisterOptions;
use fyerrpc::{Registry, RegistryError};
use fyerrpc_registry_etcd::{EtcdConfig, EtcdError, EtcdRegistry, TlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

use common::{connect, ids, init_tracing, instance, watch_until, EtcdServer, ServerTls};

const SETTLE: Duration = Duration::from_secs(5);

fn config(endpoint: &str) -> EtcdConfig {
    EtcdConfig::from_endpoints(endpoint)
        .expect("endpoint")
        .with_connect_timeout(Duration::from_secs(1))
        .with_request_timeout(Duration::from_secs(2))
}

/// Watches, registers, discovers and deregisters one instance.
async fn round_trip(registry: &EtcdRegistry) {
    let mut watch = registry.watch("Greet", None).await.expect("watch");
    watch_until(&mut watch, &[], SETTLE).await;
    let r = registry
        .register(instance("Greet", "a"), RegisterOptions::default())
        .await
        .expect("register");
    watch_until(&mut watch, &["a"], SETTLE).await;
    let set = registry.discover("Greet", None).await.expect("discover");
    assert_eq!(ids(&set), ["a"]);
    r.shutdown().await.expect("shutdown");
    watch_until(&mut watch, &[], SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticates_with_a_user_limited_to_the_prefix() {
    init_tracing();
    let etcd = EtcdServer::start();
    let admin = connect(&etcd.endpoint()).await;
    let mut client = admin.client().clone();
    client
        .user_add("root", "root-pw", None)
        .await
        .expect("add root");
    let _ = client.role_add("root").await; // built in on some versions
    client
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    client.role_add("registry").await.expect("add role");
    let registry_range = Permission::read_write("/fyerrpc/services/").with_prefix();
    client
        .role_grant_permission("registry", registry_range)
        .await
        .expect("grant permission");
    client
        .user_add("fyerrpc", "s3cret", None)
        .await
        .expect("add user");
    client
        .user_grant_role("fyerrpc", "registry")
        .await
        .expect("grant role");
    client.auth_enable().await.expect("enable auth");

    let registry = EtcdRegistry::connect(config(&etcd.endpoint()).with_user("fyerrpc", "s3cret"))
        .await
        .expect("connect with the right password");
    round_trip(&registry).await;

    let wrong = EtcdRegistry::connect(config(&etcd.endpoint()).with_user("fyerrpc", "wrong")).await;
    assert!(
        matches!(
            wrong,
            Err(EtcdError::Connect {
                source: RegistryError::Refused(_),
                ..
            })
        ),
        "wrong password: {wrong:?}"
    );
    let anonymous = EtcdRegistry::connect(config(&etcd.endpoint())).await;
    assert!(anonymous.is_err(), "no credentials: {anonymous:?}");
}

/// A CA, a server certificate for `etcd.test` only, and a client certificate.
fn write_certificates(dir: &Path) -> (ServerTls, TlsConfig) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "fyerrpc test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::from_params(&ca, &ca_key);

    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("etcd.test", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf("fyerrpc-client", ExtendedKeyUsagePurpose::ClientAuth);
    let files = [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", server_cert),
        ("server-key.pem", server_key),
        ("client.pem", client_cert),
        ("client-key.pem", client_key),
    ];
    for (name, pem) in files {
        std::fs::write(dir.join(name), pem).expect("write PEM");
    }
    let server = ServerTls {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
    };
    let client = TlsConfig::default()
        .with_ca_file(dir.join("ca.pem"))
        .with_client_cert(dir.join("client.pem"), dir.join("client-key.pem"))
        .with_domain("etcd.test");
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talks_tls_with_a_client_certificate() {
    init_tracing();
    let dir = tempfile::tempdir().expect("temp dir");
    let (server_tls, client_tls) = write_certificates(dir.path());
    let etcd = EtcdServer::start_tls(server_tls);

    let registry = EtcdRegistry::connect(config(&etcd.endpoint()).with_tls(client_tls.clone()))
        .await
        .expect("connect over TLS");
    round_trip(&registry).await;

    let mut no_client_cert = client_tls;
    no_client_cert.cert_file = None;
    no_client_cert.key_file = None;
    let refused = EtcdRegistry::connect(config(&etcd.endpoint()).with_tls(no_client_cert)).await;
    assert!(refused.is_err(), "connected without a client certificate");
}
