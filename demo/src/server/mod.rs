//! `greet-server`: a [`GreetServer`] on tonic, registered with
//! [`fyerrpc::server::Lifecycle`], with the health port beside it.
//!
//! [`BoundServer::bind`] takes both ports first (a port in use is the first
//! error reported), then [`BoundServer::run`] registers, serves until the
//! shutdown future resolves, deregisters, drains and returns.

pub mod config;
pub mod detector;
pub mod greet;
pub mod http;
pub mod metrics;
pub mod service;

use std::future::{Future, IntoFuture};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fyerrpc::registry::RegisterOptions;
use fyerrpc::server::{bind, HealthFlag, Lifecycle, ServeError, Stopped};
use fyerrpc::{Instance, InstanceError, Registry};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use config::{ConfigError, ServerArgs};
pub use detector::{FaultConfig, HealthDetector};
pub use greet::GreetServer;
pub use metrics::ServerMetrics;
pub use service::GreetServiceImpl;

use crate::proto::{GreetServiceServer, SERVICE_NAME};
use crate::registry::{self, RegistrySetupError};

/// How often histogram buffers are drained.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Why a greet server could not start or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The flags do not fit together.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Binding, registering or serving failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The registry could not be set up.
    #[error(transparent)]
    Registry(#[from] RegistrySetupError),
    /// The id or the advertised address is not valid for an instance.
    #[error("invalid instance: {0}")]
    Instance(#[from] InstanceError),
    /// The health port's listener could not be read.
    #[error("health port: {0}")]
    Http(#[source] std::io::Error),
    /// The TLS flags do not give usable settings.
    #[cfg(feature = "tls")]
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsSetupError),
}

/// A greet server whose ports are bound but which serves nothing yet.
#[derive(Debug)]
pub struct BoundServer {
    args: ServerArgs,
    instance: Instance,
    grpc: TcpListener,
    http: TcpListener,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
}

impl BoundServer {
    /// Validates `args` and binds the gRPC and health ports.
    pub async fn bind(args: ServerArgs) -> Result<Self, ServerError> {
        let health_port = args.health_port()?;
        let grpc = bind(args.grpc_addr()).await?;
        let http = bind(SocketAddr::new(args.health_host, health_port)).await?;
        let grpc_addr = grpc.local_addr().map_err(|e| {
            ServerError::Serve(ServeError::Bind {
                addr: args.grpc_addr(),
                source: e,
            })
        })?;
        let http_addr = http.local_addr().map_err(ServerError::Http)?;
        let id = args
            .id
            .clone()
            .unwrap_or_else(|| format!("server-{}", grpc_addr.port()));
        let instance = Instance::new(id, SERVICE_NAME, args.advertised(grpc_addr))?;
        Ok(Self {
            args,
            instance,
            grpc,
            http,
            grpc_addr,
            http_addr,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound health port address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The instance to register: id `--id` (or `server-<port>`) at the
    /// advertised address.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Opens the registry chosen by the flags, then [`serve`](Self::serve)s.
    pub async fn run(self, shutdown: impl Future) -> Result<Stopped, ServerError> {
        let registry = registry::open(&self.args.registry, SERVICE_NAME, None).await?;
        self.serve(registry, shutdown).await
    }

    /// Registers in `registry`, serves until `shutdown` resolves, then
    /// deregisters, drains in-flight calls and stops the health port.
    pub async fn serve(
        self,
        registry: Arc<dyn Registry>,
        shutdown: impl Future,
    ) -> Result<Stopped, ServerError> {
        let instance = self.instance;
        let id = instance.id().to_owned();

        let flag = HealthFlag::default();
        let detector = HealthDetector::new(self.args.faults(), flag.clone());
        let metrics = ServerMetrics::new(&id);
        let service = Arc::new(GreetServiceImpl::new(id.as_str()));
        let greet = GreetServer::new(&id, service.clone(), detector.clone(), metrics.clone());
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health_url = health_url(
            self.args.health_host,
            instance.host(),
            self.http_addr.port(),
        );
        let options = RegisterOptions::default()
            .with_ttl(self.args.ttl)
            .with_health_url(health_url);
        let lifecycle = Lifecycle::new(registry, instance.clone())
            .register_options(options)
            .health(reporter, [SERVICE_NAME])
            .health_flag(flag.clone())
            .register_in_background(self.args.register_in_background)
            .drain_timeout(self.args.drain_timeout)
            .lame_duck(self.args.lame_duck)
            .linger(self.args.linger);
        #[cfg(feature = "tls")]
        let (lifecycle, builder) = match self.args.tls.config()? {
            Some(tls) => {
                let lifecycle = lifecycle.tls(tls);
                let builder = lifecycle.server_builder()?;
                (lifecycle, builder)
            }
            None => (lifecycle, tonic::transport::Server::builder()),
        };
        #[cfg(not(feature = "tls"))]
        let builder = tonic::transport::Server::builder();
        let mut builder = builder;
        let router = builder
            .add_service(health_service)
            .add_service(GreetServiceServer::new(greet));

        let watcher = tokio::spawn(watch_health(flag.clone(), metrics.clone()));
        let state = http::HttpState {
            id: id.as_str().into(),
            address: instance.address().into(),
            detector,
            service,
            metrics,
            started: Instant::now(),
        };
        let (http_stop, http_stopped) = oneshot::channel::<()>();
        let http_task = tokio::spawn(
            axum::serve(self.http, http::router(state))
                .with_graceful_shutdown(async {
                    let _ = http_stopped.await;
                })
                .into_future(),
        );

        let result = lifecycle.serve(router, self.grpc, shutdown).await;

        let _ = http_stop.send(());
        if let Err(error) = http_task.await {
            tracing::warn!(%error, "health port task failed");
        }
        watcher.abort();
        Ok(result?)
    }
}

/// The URL of `/health`: on the health port's interface, or on the
/// advertised host when that interface is unspecified; IPv6 bracketed.
fn health_url(health_host: IpAddr, advertised: &str, port: u16) -> String {
    let host = if health_host.is_unspecified() {
        advertised.to_owned()
    } else {
        health_host.to_string()
    };
    if host.contains(':') {
        format!("http://[{host}]:{port}/health")
    } else {
        format!("http://{host}:{port}/health")
    }
}

/// Keeps the health gauge in step with the flag and drains histogram
/// buffers now and then.
async fn watch_health(flag: HealthFlag, metrics: ServerMetrics) {
    let mut changes = flag.subscribe();
    let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        metrics.healthy(*changes.borrow_and_update());
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = upkeep.tick() => metrics.upkeep(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn health_urls_bracket_ipv6_hosts() {
        let any = std::net::IpAddr::from([0, 0, 0, 0]);
        assert_eq!(super::health_url(any, "::1", 9), "http://[::1]:9/health");
        assert_eq!(
            super::health_url(any, "localhost", 9),
            "http://localhost:9/health"
        );
        assert_eq!(
            super::health_url(std::net::IpAddr::from([127, 0, 0, 1]), "localhost", 9),
            "http://127.0.0.1:9/health"
        );
    }
}
