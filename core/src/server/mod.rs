//! Server lifecycle: register, serve, and shut down in order.
//!
//! [`Lifecycle`] runs a tonic [`Router`] on a listener bound beforehand with
//! [`bind`] (so "address in use" is reported before anything is registered),
//! registers the instance in any [`Registry`] while the server already
//! accepts connections, and when the shutdown future resolves:
//!
//! 1. deregisters the instance ([`Registration::shutdown`]), so clients stop
//!    picking it while it still answers;
//! 2. sets the `grpc.health.v1` status of its services to `NOT_SERVING`;
//! 3. keeps serving for the lame-duck delay ([`DEFAULT_LAME_DUCK`]), so that
//!    clients learn of the departure from their registry watch (or health
//!    checks) before the connection goes away;
//! 4. stops accepting connections (HTTP/2 `GOAWAY`) and drains in-flight
//!    calls, for at most the drain timeout; each finished connection
//!    lingers ([`Linger`]): it reads what the client still sends until the
//!    client closes, so that a request sent just after the `GOAWAY` is
//!    refused cleanly (and goes elsewhere), not cut off by a connection
//!    reset;
//! 5. returns a [`Stopped`] report.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use fyerrpc::registry::{MemoryRegistry, RegisterOptions};
//! use fyerrpc::server::{bind, Lifecycle};
//! use fyerrpc::{Instance, Registry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
//! let listener = bind("127.0.0.1:0".parse()?).await?;
//! let address = listener.local_addr()?.to_string();
//! let instance = Instance::new("server-A", "GreetService", address)?;
//!
//! let (reporter, health_service) = tonic_health::server::health_reporter();
//! let router = tonic::transport::Server::builder().add_service(health_service);
//! // In a real server: `fyerrpc::server::shutdown_signal()?`.
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//!
//! let lifecycle = Lifecycle::new(registry.clone(), instance)
//!     .register_options(RegisterOptions::default().with_ttl(Duration::from_secs(5)))
//!     .health(reporter, ["GreetService"])
//!     .drain_timeout(Duration::from_secs(2));
//! let server = tokio::spawn(lifecycle.serve(router, listener, stopped));
//!
//! // ... serve until asked to stop:
//! # while registry.discover("GreetService", None).await?.is_empty() {
//! #     tokio::time::sleep(Duration::from_millis(5)).await;
//! # }
//! stop.send(()).ok();
//! let report = server.await??;
//! assert!(report.drained && report.deregister_error.is_none());
//! assert!(registry.discover("GreetService", None).await?.is_empty());
//! # Ok(())
//! # }
//! ```

mod health;
mod linger;
mod signal;
#[cfg(feature = "tls")]
mod tls;

pub use health::HealthFlag;
pub use linger::{Linger, Lingering, DEFAULT_LINGER};
pub use signal::{shutdown_signal, Signal};

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::body::Body;
use tonic::service::Routes;
use tonic::transport::server::{Router, TcpIncoming};
use tonic_health::server::HealthReporter;
use tower::{Layer, Service};

use crate::instance::Instance;
use crate::registry::{RegisterOptions, Registration, Registry, RegistryError};

/// Default limit on how long in-flight calls may take to finish at shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a deregistered server keeps serving before it stops
/// accepting: about one registry watch propagation.
pub const DEFAULT_LAME_DUCK: Duration = Duration::from_secs(1);

/// Why a server could not start or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound (in use, not local, no
    /// permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// The instance could not be registered; nothing was served.
    #[error("cannot register {instance}: {source}")]
    Register {
        /// The instance, as `service/version/id@address`.
        instance: String,
        /// The registry's reason.
        #[source]
        source: RegistryError,
    },
    /// The gRPC server failed while serving.
    #[error("gRPC server failed: {0}")]
    Transport(#[source] tonic::transport::Error),
    /// The TLS settings were rejected (unreadable certificate or key).
    #[error("invalid server TLS settings: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// The server stopped accepting connections before shutdown was asked.
    #[error("the server stopped accepting connections before shutdown was requested")]
    EndedEarly,
}

/// How a server stopped after its shutdown future resolved.
#[derive(Debug)]
#[non_exhaustive]
pub struct Stopped {
    /// Why deregistration failed, if it did (the entry then expires with its
    /// TTL).
    pub deregister_error: Option<RegistryError>,
    /// Whether every in-flight call finished within the drain timeout.
    pub drained: bool,
}

/// Binds a TCP listener for a server, with the error naming the address.
///
/// Bind before building anything else, so that a port in use is the first
/// thing reported.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Registers an instance, serves a tonic router, and shuts down in order.
/// See the [module docs](self).
pub struct Lifecycle {
    registry: Arc<dyn Registry>,
    instance: Instance,
    options: RegisterOptions,
    drain_timeout: Duration,
    lame_duck: Duration,
    linger: Duration,
    reporter: Option<HealthReporter>,
    services: Vec<String>,
    flag: Option<HealthFlag>,
    background: bool,
    #[cfg(feature = "tls")]
    tls: Option<tonic::transport::ServerTlsConfig>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("instance", &self.instance)
            .field("options", &self.options)
            .field("drain_timeout", &self.drain_timeout)
            .field("lame_duck", &self.lame_duck)
            .field("linger", &self.linger)
            .field("services", &self.services)
            .field("flag", &self.flag)
            .field("background", &self.background)
            .finish_non_exhaustive()
    }
}

impl Lifecycle {
    /// A lifecycle that registers `instance` in `registry`, with default
    /// [`RegisterOptions`] and [`DEFAULT_DRAIN_TIMEOUT`].
    pub fn new(registry: Arc<dyn Registry>, instance: Instance) -> Self {
        Self {
            registry,
            instance,
            options: RegisterOptions::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            lame_duck: DEFAULT_LAME_DUCK,
            linger: DEFAULT_LINGER,
            reporter: None,
            services: Vec::new(),
            flag: None,
            background: false,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Registers in the background
    /// ([`register_in_background`](crate::registry::register_in_background)):
    /// the server starts serving even while the registry is down, and the
    /// registration is retried with backoff, logged, until it succeeds.
    /// Off by default: a registry that is down at start-up is an error.
    pub fn register_in_background(mut self, on: bool) -> Self {
        self.background = on;
        self
    }

    /// How to register (TTL, health URL).
    pub fn register_options(mut self, options: RegisterOptions) -> Self {
        self.options = options;
        self
    }

    /// How long in-flight calls may take to finish once the server stops
    /// accepting connections.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long the server keeps serving after it deregistered and reported
    /// `NOT_SERVING`, before it stops accepting and drains (default
    /// [`DEFAULT_LAME_DUCK`]; zero skips the wait).
    pub fn lame_duck(mut self, delay: Duration) -> Self {
        self.lame_duck = delay;
        self
    }

    /// How long a finished connection keeps reading what its client still
    /// sends, until the client closes (default [`DEFAULT_LINGER`]; zero
    /// closes at once). See [`Linger`]. The lingering is part of the drain
    /// (and of its timeout).
    pub fn linger(mut self, timeout: Duration) -> Self {
        self.linger = timeout;
        self
    }

    /// The gRPC health reporter of the router, and the service names whose
    /// status this lifecycle manages. The whole server (`""`) is always
    /// managed too; all of them are set to `NOT_SERVING` at shutdown.
    pub fn health<S: Into<String>>(
        mut self,
        reporter: HealthReporter,
        services: impl IntoIterator<Item = S>,
    ) -> Self {
        self.services = std::iter::once(String::new())
            .chain(services.into_iter().map(Into::into))
            .collect();
        self.reporter = Some(reporter);
        self
    }

    /// A flag whose every change is copied into the managed gRPC health
    /// statuses while the server runs (needs [`health`](Self::health)).
    pub fn health_flag(mut self, flag: HealthFlag) -> Self {
        self.flag = Some(flag);
        self
    }

    /// Serves `router` on `listener` until `shutdown` resolves, then
    /// deregisters, reports `NOT_SERVING`, stops accepting and drains.
    ///
    /// Returns an error if registration fails (nothing is served then) or
    /// if the server fails on its own (the instance is deregistered first).
    pub async fn serve<L, ResBody>(
        self,
        router: Router<L>,
        listener: TcpListener,
        shutdown: impl Future,
    ) -> Result<Stopped, ServeError>
    where
        L: Layer<Routes>,
        L::Service: Service<http::Request<Body>, Response = http::Response<ResBody>>
            + Clone
            + Send
            + 'static,
        <L::Service as Service<http::Request<Body>>>::Future: Send,
        <L::Service as Service<http::Request<Body>>>::Error: Into<tonic::codegen::StdError> + Send,
        ResBody: http_body::Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<tonic::codegen::StdError>,
    {
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let (drain_tx, drain_rx) = oneshot::channel::<()>();
        let mut server = pin!(router.serve_with_incoming_shutdown(
            Linger::new(self.linger).incoming(TcpIncoming::from(listener)),
            async {
                // A dropped sender also means "stop".
                let _ = drain_rx.await;
            },
        ));
        tracing::info!(instance = %self.instance, listen = %local, "serving");
        let mirror = self.start_health().await;

        let register_error = |source| ServeError::Register {
            instance: self.instance.to_string(),
            source,
        };
        let registration = if self.background {
            let registration = crate::registry::register_in_background(
                Arc::clone(&self.registry),
                self.instance.clone(),
                self.options.clone(),
            )
            .map_err(register_error)?;
            tracing::info!(instance = %self.instance, ttl = ?self.options.ttl, "registering in the background");
            registration
        } else {
            let registration = tokio::select! {
                registered = self.registry.register(self.instance.clone(), self.options.clone()) => {
                    registered.map_err(register_error)?
                }
                ended = &mut server => return Err(ended_early(ended)),
            };
            tracing::info!(instance = %self.instance, ttl = ?self.options.ttl, "registered");
            registration
        };

        let mut shutdown = pin!(shutdown);
        let ended = tokio::select! {
            _ = &mut shutdown => None,
            ended = &mut server => Some(ended),
        };

        let deregister_error = self.deregister(registration).await;
        if let Some(task) = mirror {
            task.abort();
            let _ = task.await;
        }
        if let Some(reporter) = &self.reporter {
            health::report(reporter, &self.services, false).await;
        }
        if let Some(ended) = ended {
            return Err(ended_early(ended));
        }

        if !self.lame_duck.is_zero() {
            tracing::info!(instance = %self.instance, delay = ?self.lame_duck,
                "lame duck: still serving while clients learn of the departure");
            let ended = tokio::select! {
                () = tokio::time::sleep(self.lame_duck) => None,
                ended = &mut server => Some(ended),
            };
            if let Some(ended) = ended {
                return Err(ended_early(ended));
            }
        }

        tracing::info!(instance = %self.instance, timeout = ?self.drain_timeout, "draining");
        let _ = drain_tx.send(());
        let drained = match tokio::time::timeout(self.drain_timeout, server).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => return Err(ServeError::Transport(e)),
            Err(_) => {
                tracing::warn!(instance = %self.instance, "drain timed out; dropping calls");
                false
            }
        };
        tracing::info!(instance = %self.instance, drained, "stopped");
        Ok(Stopped {
            deregister_error,
            drained,
        })
    }

    /// Reports the managed services as serving (or as the flag says, and
    /// then mirrors the flag in a task, returned).
    async fn start_health(&self) -> Option<tokio::task::JoinHandle<()>> {
        let reporter = self.reporter.as_ref()?;
        match &self.flag {
            Some(flag) => Some(tokio::spawn(health::mirror(
                flag.subscribe(),
                reporter.clone(),
                self.services.clone(),
            ))),
            None => {
                health::report(reporter, &self.services, true).await;
                None
            }
        }
    }

    async fn deregister(&self, registration: Registration) -> Option<RegistryError> {
        match registration.shutdown().await {
            Ok(()) => {
                tracing::info!(instance = %self.instance, "deregistered");
                None
            }
            Err(error) => {
                tracing::warn!(instance = %self.instance, %error, "deregistration failed; the entry expires with its TTL");
                Some(error)
            }
        }
    }
}

/// The error for a server that stopped before it was asked to.
fn ended_early(ended: Result<(), tonic::transport::Error>) -> ServeError {
    match ended {
        Err(e) => ServeError::Transport(e),
        Ok(()) => ServeError::EndedEarly,
    }
}

#[cfg(test)]
mod tests;
