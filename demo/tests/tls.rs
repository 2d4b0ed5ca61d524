//! The greet cluster over mutual TLS, through the binaries' flags, with
//! certificates made here.

mod common;

use std::path::Path;
use std::time::Duration;

use clap::Parser;
use common::{server_list, start, TestServer};
use fyerrpc_demo::client::{self, ClientArgs, Console, Report};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// Writes ca.pem, server.pem/.key (for 127.0.0.1) and client.pem/.key.
fn write_certificates(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "demo CA");
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    for (name, san) in [
        ("server", SanType::IpAddress([127, 0, 0, 1].into())),
        (
            "client",
            SanType::DnsName("greet-client".try_into().unwrap()),
        ),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names.push(san);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

async fn run_client(servers: &[TestServer], args: &[String]) -> Report {
    let list = server_list(&servers.iter().collect::<Vec<_>>());
    let argv = ["greet-client", "--servers", list.as_str()]
        .into_iter()
        .map(str::to_owned)
        .chain(args.iter().cloned());
    let args = ClientArgs::try_parse_from(argv).expect("valid flags");
    tokio::time::timeout(
        Duration::from_secs(120),
        client::run(args, Console::new(true)),
    )
    .await
    .expect("the client finishes")
    .expect("the client runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutual_tls_cluster_serves_the_client_with_a_certificate_only() {
    let dir = tempfile::tempdir().unwrap();
    write_certificates(dir.path());
    let p = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let (cert, key, ca) = (p("server.pem"), p("server.key"), p("ca.pem"));
    let tls = [
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "--tls-client-ca",
        ca.as_str(),
    ];
    let mut servers = Vec::new();
    for id in ["server-A", "server-B", "server-C"] {
        let args: Vec<&str> = ["--id", id].into_iter().chain(tls).collect();
        servers.push(start(&args).await);
    }

    let load = [
        "--scenario",
        "load",
        "--requests",
        "200",
        "--concurrency",
        "8",
    ];
    let mut args: Vec<String> = load.iter().map(|s| s.to_string()).collect();
    args.extend(
        [
            "--tls-ca",
            &ca,
            "--tls-cert",
            &p("client.pem"),
            "--tls-key",
            &p("client.key"),
        ]
        .map(String::from),
    );
    let report = run_client(&servers, &args).await;
    assert_eq!(report.greetings.ok, 200, "{:?}", report.greetings);
    assert_eq!(report.greetings.failed, 0);
    assert_eq!(report.stats.instances.len(), 3);
    assert!(report.stats.instances.iter().all(|i| i.successes > 0));

    // Without a client certificate: refused, every call fails, none hangs.
    let mut args: Vec<String> = ["--scenario", "basic", "--no-health-check"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--tls-ca".to_owned(), ca.clone()]);
    let report = run_client(&servers, &args).await;
    assert_eq!(report.greetings.ok, 0, "{:?}", report.greetings);
    assert_eq!(report.greetings.failed, report.greetings.calls);
}
