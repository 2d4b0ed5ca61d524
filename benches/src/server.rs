//! A cluster of greet servers on loopback, inside the benchmark process.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use fyerrpc_demo::proto::greet_service_server::{GreetService, GreetServiceServer};
use fyerrpc_demo::proto::{HelloRequest, HelloResponse, StatsRequest, StatsResponse};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// The greet service as the benchmarks need it: `SayHello` answers at once,
/// with the work a real handler does (format a message, read the clock).
#[derive(Debug, Clone, Default)]
pub struct Greeter {
    id: usize,
}

#[tonic::async_trait]
impl GreetService for Greeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloResponse>, Status> {
        let req = request.into_inner();
        let greeting = if req.greeting.is_empty() {
            "Hello"
        } else {
            req.greeting.as_str()
        };
        let greet_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        Ok(Response::new(HelloResponse {
            message: format!("{greeting}, {}! (from server {})", req.name, self.id),
            greet_time,
        }))
    }

    async fn get_greet_stats(
        &self,
        _request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        Ok(Response::new(StatsResponse::default()))
    }
}

/// Greet servers listening on free loopback ports; they stop when the
/// cluster is dropped.
#[derive(Debug)]
pub struct Cluster {
    addrs: Vec<SocketAddr>,
    ca_pem: Option<String>,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Cluster {
    /// Starts `n` servers on `127.0.0.1`, each on a port the OS picks. Must be
    /// called inside a tokio runtime; the servers run on it.
    pub fn start(n: usize) -> std::io::Result<Self> {
        Self::start_with(n, None, None)
    }

    /// Like [`start`](Self::start), serving TLS with a certificate for
    /// `127.0.0.1` signed by a CA made for the run ([`ca_pem`](Self::ca_pem)).
    pub fn start_tls(n: usize) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "bench CA");
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(Vec::<String>::new())?;
        leaf.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = leaf.signed_by(&key, &issuer)?;
        let tls =
            ServerTlsConfig::new().identity(Identity::from_pem(cert.pem(), key.serialize_pem()));
        Ok(Self::start_with(n, Some(tls), Some(ca_pem))?)
    }

    /// The cluster the examples measure: `SERVERS` greeter servers from the
    /// environment (three when unset, at least one), serving TLS when `tls`.
    pub fn start_from_env(tls: bool) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let servers = crate::env_count("SERVERS", "servers")?.unwrap_or(3);
        if tls {
            Self::start_tls(servers.max(1))
        } else {
            Ok(Self::start(servers.max(1))?)
        }
    }

    fn start_with(
        n: usize,
        tls: Option<ServerTlsConfig>,
        ca_pem: Option<String>,
    ) -> std::io::Result<Self> {
        let mut cluster = Self {
            ca_pem,
            addrs: Vec::with_capacity(n),
            stops: Vec::with_capacity(n),
            tasks: Vec::with_capacity(n),
        };
        for id in 0..n {
            let incoming =
                TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?.with_nodelay(Some(true));
            cluster.addrs.push(incoming.local_addr()?);
            let (stop, stopped) = oneshot::channel::<()>();
            let mut builder = Server::builder();
            if let Some(tls) = &tls {
                builder = builder
                    .tls_config(tls.clone())
                    .map_err(std::io::Error::other)?;
            }
            let serve = builder
                .add_service(GreetServiceServer::new(Greeter { id }))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                });
            cluster.stops.push(stop);
            cluster.tasks.push(tokio::spawn(async move {
                if let Err(e) = serve.await {
                    eprintln!("greet server {id} failed: {e}");
                }
            }));
        }
        Ok(cluster)
    }

    /// The CA certificate (PEM) of a TLS cluster.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The servers' addresses.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The servers' addresses as `host:port,host:port,...`.
    pub fn address_list(&self) -> String {
        self.addrs
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}
