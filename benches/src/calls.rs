//! End to end: unary `SayHello` calls through the three transports compared.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fyerrpc::breaker::{ConsecutiveFailures, OpenPolicy};
use fyerrpc::failover::{FailoverConfig, Strategy};
use fyerrpc::{balance, Client, Registry};
use fyerrpc_demo::proto::greet_service_client::GreetServiceClient;
use fyerrpc_demo::proto::HelloRequest;
use fyerrpc_registry_static::StaticRegistry;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Status;

use crate::server::Cluster;

/// The service name, as registered and as in the method paths.
pub const SERVICE: &str = "GreetService";

/// How long any one benchmark call may take before the run is declared
/// broken (a bound on the benchmark, not a deadline sent to the server).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A way of calling the greet cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A plain tonic `Channel` to the first server.
    Tonic,
    /// A plain tonic `Channel` to each server, the calls spread over them
    /// in turn by the benchmark itself (no balancer, no failover): plain
    /// tonic doing the same three-server job.
    TonicEach,
    /// tonic's own balanced channel (`Channel::balance_list`, tower p2c) over
    /// every server.
    TonicBalanced,
    /// The fyerrpc client over every server: p2c (least request), circuit
    /// breaker and failover on.
    Fyerrpc,
    /// A plain tonic `Channel` to the first server of a TLS cluster (tonic's
    /// rustls).
    TonicTls,
    /// tonic's balanced channel, as [`Target::TonicBalanced`], over every
    /// server of a TLS cluster.
    TonicTlsBalanced,
    /// The fyerrpc client, as [`Target::Fyerrpc`], over a TLS cluster.
    FyerrpcTls,
}

impl Target {
    /// Every target, in table order.
    pub const ALL: [Target; 4] = [
        Target::Tonic,
        Target::TonicEach,
        Target::TonicBalanced,
        Target::Fyerrpc,
    ];

    /// The targets that need a TLS cluster ([`Cluster::start_tls`]).
    pub const TLS: [Target; 3] = [
        Target::TonicTls,
        Target::TonicTlsBalanced,
        Target::FyerrpcTls,
    ];

    /// Whether the target talks TLS.
    pub fn is_tls(self) -> bool {
        matches!(
            self,
            Target::TonicTls | Target::TonicTlsBalanced | Target::FyerrpcTls
        )
    }

    /// The target's name in benchmark ids and tables.
    pub fn name(self) -> &'static str {
        match self {
            Target::Tonic => "tonic",
            Target::TonicEach => "tonic_each",
            Target::TonicBalanced => "tonic_balanced",
            Target::Fyerrpc => "fyerrpc",
            Target::TonicTls => "tonic_tls",
            Target::TonicTlsBalanced => "tonic_tls_balanced",
            Target::FyerrpcTls => "fyerrpc_tls",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A connected greet client of one [`Target`]. Cloning is cheap; clones
/// share connections.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Through a tonic channel (plain or balanced).
    Channel(GreetServiceClient<Channel>),
    /// Through one plain tonic channel per server, taken in turn.
    Each {
        /// A client per server.
        clients: Vec<GreetServiceClient<Channel>>,
        /// The one the next call uses.
        next: usize,
    },
    /// Through the fyerrpc client.
    Fyerrpc(GreetServiceClient<Client>),
}

fn endpoint(addr: std::net::SocketAddr) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?.connect_timeout(Duration::from_secs(1)))
}

/// A TLS endpoint of `cluster`'s server at `addr`, trusting the cluster's CA.
fn tls_endpoint(
    cluster: &Cluster,
    addr: std::net::SocketAddr,
) -> Result<Endpoint, tonic::transport::Error> {
    let ca = cluster.ca_pem().unwrap_or_default();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    Endpoint::from_shared(format!("https://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .tls_config(tls)
}

/// The fyerrpc client as the end-to-end benchmark runs it: p2c, a
/// consecutive-failure breaker and failover with the default retry policy.
/// Like the tonic targets, it sets no deadline of its own (every benchmark
/// call is bounded by [`Caller::say_hello`] instead).
pub async fn fyerrpc_client(cluster: &Cluster) -> Result<Client, Box<dyn Error + Send + Sync>> {
    let registry: Arc<dyn Registry> = Arc::new(StaticRegistry::from_addresses(
        SERVICE,
        &cluster.address_list(),
    )?);
    let mut builder = Client::builder(SERVICE, registry);
    if let Some(ca) = cluster.ca_pem() {
        builder = builder.tls(fyerrpc::tls::ClientTlsConfig::new().ca_pem(ca)?);
    }
    let client = builder
        .balancer(balance::by_name("p2c")?)
        .breaker(Arc::new(ConsecutiveFailures::new(5).with_open(
            OpenPolicy::default().with_base_open(Duration::from_secs(5)),
        )))
        .failover(
            FailoverConfig::default()
                .with_max_retries(3)
                .with_strategy(Strategy::Next),
        )
        .connect_timeout(Duration::from_secs(1))
        .build()
        .await?;
    client.ready(Duration::from_secs(5)).await?;
    Ok(client)
}

impl Caller {
    /// Connects a client of `target` to `cluster` and warms it up (every
    /// connection established).
    pub async fn connect(
        target: Target,
        cluster: &Cluster,
    ) -> Result<Self, Box<dyn Error + Send + Sync>> {
        let first = *cluster.addrs().first().ok_or("the cluster has no server")?;
        if target.is_tls() != cluster.ca_pem().is_some() {
            return Err(format!("{target} needs a cluster with TLS {}", target.is_tls()).into());
        }
        let caller = match target {
            Target::Tonic => {
                Caller::Channel(GreetServiceClient::new(endpoint(first)?.connect().await?))
            }
            Target::TonicEach => {
                let mut clients = Vec::new();
                for addr in cluster.addrs() {
                    clients.push(GreetServiceClient::new(endpoint(*addr)?.connect().await?));
                }
                Caller::Each { clients, next: 0 }
            }
            Target::TonicBalanced => {
                let endpoints = cluster
                    .addrs()
                    .iter()
                    .map(|a| endpoint(*a))
                    .collect::<Result<Vec<_>, _>>()?;
                Caller::Channel(GreetServiceClient::new(Channel::balance_list(
                    endpoints.into_iter(),
                )))
            }
            Target::Fyerrpc | Target::FyerrpcTls => {
                Caller::Fyerrpc(GreetServiceClient::new(fyerrpc_client(cluster).await?))
            }
            Target::TonicTls => Caller::Channel(GreetServiceClient::new(
                tls_endpoint(cluster, first)?.connect().await?,
            )),
            Target::TonicTlsBalanced => {
                let endpoints = cluster
                    .addrs()
                    .iter()
                    .map(|a| tls_endpoint(cluster, *a))
                    .collect::<Result<Vec<_>, _>>()?;
                Caller::Channel(GreetServiceClient::new(Channel::balance_list(
                    endpoints.into_iter(),
                )))
            }
        };
        // Enough concurrent calls that every server gets some.
        caller.run(64, 16).await?;
        Ok(caller)
    }

    /// One `SayHello`.
    pub async fn say_hello(&mut self) -> Result<(), Status> {
        let req = HelloRequest {
            name: "bench".to_owned(),
            greeting: String::new(),
        };
        let call = async {
            match self {
                Caller::Channel(c) => c.say_hello(req).await.map(drop),
                Caller::Each { clients, next } => {
                    let k = *next % clients.len().max(1);
                    *next = next.wrapping_add(1);
                    match clients.get_mut(k) {
                        Some(c) => c.say_hello(req).await.map(drop),
                        None => Err(Status::internal("no server")),
                    }
                }
                Caller::Fyerrpc(c) => c.say_hello(req).await.map(drop),
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| Status::deadline_exceeded("benchmark call timed out"))?
    }

    /// Makes `calls` calls spread over `concurrency` tasks (each calling in
    /// a loop) and returns the wall time from the first call to the last
    /// answer. Fails on the first failed call.
    pub async fn run(&self, calls: u64, concurrency: usize) -> Result<Duration, Status> {
        let concurrency = concurrency.max(1);
        let per_task = calls / concurrency as u64;
        let extra = calls % concurrency as u64;
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for k in 0..concurrency as u64 {
            let n = per_task + u64::from(k < extra);
            let mut caller = self.clone();
            if let Caller::Each { next, .. } = &mut caller {
                // Tasks start on different servers.
                *next = k as usize;
            }
            tasks.spawn(async move {
                for _ in 0..n {
                    caller.say_hello().await?;
                }
                Ok::<(), Status>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| Status::internal(format!("benchmark task failed: {e}")))??;
        }
        Ok(started.elapsed())
    }
}
