//! TLS and mutual TLS between the client and real tonic servers on loopback,
//! with certificates made here.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fyerrpc::balance::RoundRobin;
use fyerrpc::failover::FailoverConfig;
use fyerrpc::health::HealthCheckConfig;
use fyerrpc::registry::{MemoryRegistry, RegisterOptions};
use fyerrpc::server::{bind, Lifecycle};
use fyerrpc::tls::ClientTlsConfig;
use fyerrpc::{Client, ClientBuilder, Instance, Registry};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use support::{check, METHOD};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::Code;

const SERVICE: &str = "grpc.health.v1.Health";

/// A throw-away CA that signs leaf certificates.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn certificate(&self) -> Certificate {
        Certificate::from_pem(&self.pem)
    }

    /// A leaf certificate and key for `names` (DNS names or IP addresses),
    /// in PEM.
    fn leaf_pem(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        for n in names {
            params.subject_alt_names.push(match n.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().unwrap()),
            });
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn leaf(&self, names: &[&str]) -> Identity {
        let (cert, key) = self.leaf_pem(names);
        Identity::from_pem(cert, key)
    }

    /// Client settings trusting this CA.
    fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_pem(&self.pem).unwrap()
    }
}

/// A TLS (or plaintext) health server in its own runtime, so that `kill`
/// drops it with its connections like a crashed process.
struct Server {
    address: String,
    calls: Arc<AtomicU64>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Server {
    fn start(tls: Option<ServerTlsConfig>) -> Arc<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let calls = Arc::new(AtomicU64::new(0));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let counted = Arc::clone(&calls);
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                builder = builder.tls_config(tls).unwrap();
            }
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = builder
                .layer(tower::layer::layer_fn(move |inner| Counted {
                    inner,
                    calls: Arc::clone(&counted),
                }))
                .add_service(health)
                .serve_with_incoming(incoming)
                .await;
        });
        Arc::new(Self {
            address,
            calls,
            runtime: Mutex::new(Some(rt)),
        })
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn kill(&self) {
        if let Some(rt) = self.runtime.lock().unwrap().take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Counts requests that reached the service (past TLS and HTTP/2).
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    calls: Arc<AtomicU64>,
}

impl<S, R> tower::Service<R> for Counted<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.call(req)
    }
}

fn instance(id: &str, server: &Server, meta: &[(&str, &str)]) -> Instance {
    let mut inst = Instance::new(id, SERVICE, server.address.clone()).unwrap();
    for (k, v) in meta {
        inst = inst.with_metadata(*k, *v);
    }
    inst
}

async fn client(
    registry: Arc<MemoryRegistry>,
    f: impl FnOnce(ClientBuilder) -> ClientBuilder,
) -> Client {
    support::init_tracing();
    let builder = Client::builder(SERVICE, registry as Arc<dyn Registry>)
        .request_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2));
    let client = f(builder).build().await.unwrap();
    client.ready(Duration::from_secs(5)).await.unwrap();
    client
}

fn attempts(client: &Client) -> u64 {
    client.stats().instances.iter().map(|i| i.attempts).sum()
}

fn server_tls(ca: &Ca, names: &[&str]) -> ServerTlsConfig {
    ServerTlsConfig::new().identity(ca.leaf(names))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_fails_over_a_killed_instance_without_failed_calls() {
    let ca = Ca::new("test CA");
    let servers: Vec<_> = (0..3)
        .map(|_| Server::start(Some(server_tls(&ca, &["localhost", "127.0.0.1"]))))
        .collect();
    let registry = Arc::new(MemoryRegistry::new());
    for (i, s) in servers.iter().enumerate() {
        registry.insert(instance(&format!("s{i}"), s, &[("tls", "true")]));
    }
    let client = client(registry, |b| {
        b.tls(ca.client_tls())
            .balancer(Arc::new(RoundRobin))
            .failover(FailoverConfig::default().with_idempotent_methods([METHOD]))
            .health_check(
                HealthCheckConfig::default()
                    .with_interval(Duration::from_millis(100))
                    .with_timeout(Duration::from_secs(1)),
            )
    })
    .await;

    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..150 {
                if let Err(e) = check(c.clone()).await {
                    failures.push(e.to_string());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            failures
        }));
    }
    // Kill one server once calls flow through all three.
    while servers.iter().any(|s| s.calls() < 20) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    servers[1].kill();
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    let stats = client.stats();
    assert_eq!(stats.successes, 600, "{stats:?}");
    // Health checks ran over the same TLS channels: the survivors answered
    // more requests than the client's calls alone.
    let survivors_attempts: u64 = stats
        .instances
        .iter()
        .filter(|i| i.id != "s1")
        .map(|i| i.successes)
        .sum();
    let survivors_calls = servers[0].calls() + servers[2].calls();
    assert!(
        survivors_calls > survivors_attempts,
        "health checks reached the servers: {survivors_calls} requests, {survivors_attempts} call successes"
    );
}

/// One call's error through a fresh client of a single-instance registry.
async fn refusal(
    server: &Server,
    meta: &[(&str, &str)],
    f: impl FnOnce(ClientBuilder) -> ClientBuilder,
) -> (tonic::Status, Client) {
    let registry = Arc::new(MemoryRegistry::new());
    registry.insert(instance("s1", server, meta));
    let client = client(registry, |b| {
        f(b.failover(FailoverConfig::default().with_retry_interval(Duration::from_millis(10))))
    })
    .await;
    let err = check(client.clone()).await.expect_err("the call must fail");
    (err, client)
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_of_the_ca() {
    let ca = Ca::new("cluster CA");
    let other = Ca::new("another CA");
    let server = Server::start(Some(
        server_tls(&ca, &["127.0.0.1"]).client_ca_root(ca.certificate()),
    ));
    let base = || ca.client_tls();

    // No client certificate.
    let (err, _c) = refusal(&server, &[], |b| b.tls(base())).await;
    let msg = err.message().to_owned();
    assert!(msg.contains("could not connect to instance s1"), "{msg}");
    assert!(
        msg.contains("requires a client certificate"),
        "the error says why: {msg}"
    );

    // A certificate from another CA.
    let (err, _c) = refusal(&server, &[], |b| {
        b.tls({
            let (cert, key) = other.leaf_pem(&["client"]);
            base().identity_pem(cert, key).unwrap()
        })
    })
    .await;
    let msg = err.message().to_owned();
    assert!(msg.contains("could not connect to instance s1"), "{msg}");
    assert!(
        msg.contains("refused the client certificate"),
        "the error says why: {msg}"
    );
    assert_eq!(server.calls(), 0, "no refused call reached the service");

    // The CA's own client certificate passes.
    let registry = Arc::new(MemoryRegistry::new());
    registry.insert(instance("s1", &server, &[]));
    let client = client(registry, |b| {
        b.tls({
            let (cert, key) = ca.leaf_pem(&["client"]);
            base().identity_pem(cert, key).unwrap()
        })
    })
    .await;
    check(client).await.unwrap();
    assert_eq!(server.calls(), 1);
}

#[tokio::test]
async fn a_certificate_for_another_name_needs_a_domain_override() {
    let ca = Ca::new("test CA");
    let server = Server::start(Some(server_tls(&ca, &["greet.internal"])));
    let base = || ca.client_tls();

    let (err, _c) = refusal(&server, &[], |b| b.tls(base())).await;
    let msg = err.message().to_owned();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(msg.contains("s1"), "{msg}");
    assert!(
        msg.contains("not valid for the name 127.0.0.1"),
        "the error says why: {msg}"
    );

    // A fixed domain for every instance.
    let registry = Arc::new(MemoryRegistry::new());
    registry.insert(instance("s1", &server, &[]));
    let c = client(registry, |b| b.tls(base().domain("greet.internal"))).await;
    check(c).await.unwrap();

    // The name in the instance's metadata.
    let registry = Arc::new(MemoryRegistry::new());
    registry.insert(instance(
        "s1",
        &server,
        &[("tls", "true"), ("tls_server_name", "greet.internal")],
    ));
    let c = client(registry, |b| b.tls(base())).await;
    check(c).await.unwrap();
    assert_eq!(server.calls(), 2);
}

/// Calls sent to a service whose every instance is unusable stay bounded:
/// at most `max_attempts` attempts per call, no panic.
async fn assert_bounded(client: &Client, calls: u64) -> Vec<String> {
    let before = attempts(client);
    let mut messages = Vec::new();
    for _ in 0..calls {
        let err = check(client.clone()).await.expect_err("must fail");
        messages.push(err.message().to_owned());
    }
    let max = calls * u64::from(FailoverConfig::default().max_attempts());
    let n = attempts(client) - before;
    assert!(n <= max, "{n} attempts for {calls} calls");
    messages
}

#[tokio::test]
async fn a_plaintext_client_is_told_the_instance_requires_tls() {
    let ca = Ca::new("test CA");
    let server = Server::start(Some(server_tls(&ca, &["127.0.0.1"])));
    // Registered with its TLS flag: known before dialing.
    let (err, client) = refusal(&server, &[("tls", "true")], |b| b).await;
    let expected = format!(
        "instance s1 ({}) requires TLS but the client is configured for plaintext",
        server.address
    );
    assert!(err.message().contains(&expected), "{}", err.message());
    assert_eq!(err.code(), Code::Unavailable);
    let messages = assert_bounded(&client, 10).await;
    assert!(messages
        .iter()
        .all(|m| m.contains("requires TLS") || m.contains("s1")));

    // Without the flag: the instance's answer to the HTTP/2 preface tells.
    let (err, client) = refusal(&server, &[], |b| b).await;
    let msg = err.message().to_owned();
    assert!(msg.contains("could not connect to instance s1"), "{msg}");
    assert!(
        msg.contains("requires TLS") || msg.contains("does it require TLS?"),
        "{msg}"
    );
    assert_bounded(&client, 10).await;
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn a_tls_client_is_told_the_instance_is_plaintext() {
    let ca = Ca::new("test CA");
    let server = Server::start(None);
    let tls = || ca.client_tls();
    // Registered as plaintext: known before dialing.
    let (err, client) = refusal(&server, &[("tls", "false")], |b| b.tls(tls())).await;
    let expected = format!(
        "instance s1 ({}) serves plaintext but the client is configured for TLS",
        server.address
    );
    assert!(err.message().contains(&expected), "{}", err.message());
    assert_bounded(&client, 10).await;

    // Without the flag: the handshake fails at connect time.
    let (err, client) = refusal(&server, &[], |b| b.tls(tls())).await;
    let msg = err.message().to_owned();
    assert!(msg.contains("could not connect to instance s1"), "{msg}");
    assert!(msg.contains("does it serve plaintext?"), "{msg}");
    assert_bounded(&client, 10).await;
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn a_change_of_the_tls_flag_alone_gives_the_instance_a_new_connection() {
    let server = Server::start(None);
    let registry = Arc::new(MemoryRegistry::new());
    // Wrongly registered as TLS: this plaintext client will not dial it.
    registry.insert(instance("s1", &server, &[("tls", "true")]));
    let client = client(registry.clone(), |b| {
        b.failover(FailoverConfig::default().with_retry_interval(Duration::from_millis(10)))
    })
    .await;
    let err = check(client.clone()).await.expect_err("mismatch");
    assert!(err.message().contains("requires TLS"), "{}", err.message());
    // Corrected in the registry, same id and address: the client must not
    // keep the connector it prepared for the old flag.
    registry.insert(instance("s1", &server, &[("tls", "false")]));
    let mut last = None;
    for _ in 0..100 {
        match check(client.clone()).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(last.is_none(), "still failing: {last:?}");
    assert!(server.calls() >= 1);
}

#[tokio::test]
async fn bad_tls_settings_fail_the_build() {
    assert!(ClientTlsConfig::new().ca_pem("not a certificate").is_err());
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    // No root at all.
    let err = Client::builder(SERVICE, registry)
        .tls(ClientTlsConfig::new())
        .build()
        .await
        .expect_err("no root");
    assert!(err.to_string().contains("no CA root"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_lifecycle_registers_its_tls_flag_and_serves_tls() {
    let ca = Ca::new("test CA");
    let registry = Arc::new(MemoryRegistry::new());
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let inst = Instance::new("s1", SERVICE, address).unwrap();
    let lifecycle = Lifecycle::new(registry.clone() as Arc<dyn Registry>, inst)
        .register_options(RegisterOptions::default())
        .tls(server_tls(&ca, &["127.0.0.1"]));
    let (reporter, health) = tonic_health::server::health_reporter();
    let router = lifecycle.server_builder().unwrap().add_service(health);
    let lifecycle = lifecycle.health(reporter, [SERVICE]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(lifecycle.serve(router, listener, stopped));

    let tls_client = client(registry.clone(), |b| b.tls(ca.client_tls())).await;
    let registered = tls_client.instances();
    assert_eq!(registered[0].meta("tls"), Some("true"));
    check(tls_client).await.unwrap();

    let plain = client(registry, |b| b).await;
    let err = check(plain).await.unwrap_err();
    assert!(err.message().contains("requires TLS"), "{}", err.message());

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
