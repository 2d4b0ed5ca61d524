//! # fyerrpc-registry-consul
//!
//! A [`Registry`](fyerrpc::Registry) on [Consul](https://developer.hashicorp.com/consul):
//! servers register as Consul services with health checks, clients find the
//! passing instances with blocking queries.
//!
//! ```no_run
//! use std::time::Duration;
//! use fyerrpc::registry::RegisterOptions;
//! use fyerrpc::{Instance, Registry};
//! use fyerrpc_registry_consul::{ConsulConfig, ConsulRegistry};
//! use futures_util::StreamExt;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ConsulConfig::from_address("http://127.0.0.1:8500")
//!     .with_token("my-acl-token")
//!     .with_datacenter("dc1");
//! let registry = ConsulRegistry::new(config)?.into_dyn();
//!
//! // Server side: register, with a TTL check kept passing and an HTTP check.
//! let me = Instance::new("server-A", "GreetService", "127.0.0.1:8001")?
//!     .with_weight(50)?
//!     .with_metadata("tags", "grpc,eu");
//! let options = RegisterOptions::default()
//!     .with_ttl(Duration::from_secs(10))
//!     .with_health_url("http://127.0.0.1:9001/health");
//! let registration = registry.register(me, options).await?;
//!
//! // Client side: the passing instances now, and after every change.
//! let now = registry.discover("GreetService", Some("v1")).await?;
//! let mut changes = registry.watch("GreetService", None).await?;
//! while let Some(set) = changes.next().await {
//!     println!("{} instances", set?.len());
//! #   break;
//! }
//!
//! registration.shutdown().await?; // deregisters
//! # let _ = now;
//! # Ok(())
//! # }
//! ```
//!
//! ## Why a thin client over the HTTP API
//!
//! The crate talks to the Consul HTTP API through a small typed client
//! ([`ConsulClient`]) on hyper 1 and hyper-util, the HTTP stack tonic already
//! brings into every fyerrpc build, rather than through `rs-consul`:
//!
//! * registration is the agent's job (`/v1/agent/service/register`, TTL
//!   check updates, `/v1/agent/service/deregister`): Consul's anti-entropy
//!   keeps the catalog in line with the agent, and checks only run on an
//!   agent. `rs-consul` covers the catalog and health endpoints but none of
//!   `/v1/agent`, so an agent wrapper would be needed anyway;
//! * `rs-consul` uses one timeout (5 s by default) both as the request
//!   timeout and as the bound of blocking queries; here a blocking query's
//!   `wait` and the request timeout are separate options and the
//!   configuration refuses a timeout that would cut a blocking query short;
//! * the endpoints needed are few (six) and stable since Consul 1.3, so a
//!   typed wrapper is small, adds no dependency, and gives one error type
//!   ([`ApiError`]) with the distinctions the keeper needs ("unknown check"
//!   means the agent lost the registration).
//!
//! Only plain `http` is spoken: Consul's model is a local agent on every
//! host, reached on its client address, which talks to the servers (over
//! TLS if configured). `https` addresses are refused with a clear error.
//!
//! ## How an instance is stored
//!
//! | instance | Consul service |
//! |---|---|
//! | id | `ID` (unique on the agent) |
//! | service | `Name` |
//! | host, port | `Address`, `Port` (an empty `Address` reads as the node's) |
//! | version | `Meta.version`, and a tag equal to the version (so DNS `v1.GreetService.service.consul` works) |
//! | weight | `Meta.weight` and `Weights.Passing` (`Weights.Warning` = 1) |
//! | status | `Meta.status`: `enabled` or `disabled` |
//! | metadata | `Meta`; the `tags` metadata (comma separated) also becomes `Tags` |
//!
//! Consul accepts meta keys matching `[A-Za-z0-9_-]{1,64}`, values up to
//! 512 bytes, at most 64 pairs, and reserves the `consul-` prefix; metadata
//! that breaks these rules (or reuses `version`, `weight`, `status`) is left
//! out of the registration with a warning.
//!
//! Reading is lenient, so services registered by other tools (for example
//! `consul services register -name=web -address=10.0.0.5 -port=80`) are
//! found: a missing version reads as `v1`; a missing weight as
//! `Weights.Passing`, unless that is Consul's default `{1, 1}`, then as 100.
//! A malformed version, weight or status is ignored (the default applies)
//! and an entry that cannot be an instance at all (bad id, no address, no
//! port) is skipped; both are logged once per watch and counted in
//! [`metrics::INVALID_ENTRIES_TOTAL`].
//!
//! ## Health checks and the registration's life
//!
//! [`register`](fyerrpc::Registry::register) registers the service on the
//! agent with:
//!
//! * a TTL check `service:<id>` of [`RegisterOptions::ttl`], initially
//!   passing, that the returned [`Registration`] passes every TTL/3: if the
//!   process dies the check turns critical after the TTL and the instance
//!   leaves the passing set (switch off with [`CheckConfig::ttl_check`]);
//! * optionally an HTTP check `service:<id>:http` that the agent polls
//!   itself, at [`RegisterOptions::health_url`] or [`CheckConfig::http_url`]
//!   every [`CheckConfig::http_interval`] (it starts critical, so the
//!   instance shows once the first poll passed);
//! * `DeregisterCriticalServiceAfter` on every check, so the agent removes a
//!   dead instance altogether.
//!
//! When the agent answers a TTL pass with "unknown check" (it restarted and
//! forgot the service, or someone deregistered it), the registration
//! registers the service again, with backoff while the agent is down, and
//! counts it in [`metrics::REREGISTRATIONS_TOTAL`].
//! [`Registration::shutdown`] deregisters; [`Registration::abandon`] just
//! stops renewing.
//!
//! ## Discovery
//!
//! [`discover`](fyerrpc::Registry::discover) and
//! [`watch`](fyerrpc::Registry::watch) read
//! `/v1/health/service/<name>?passing`: only instances whose node and
//! service checks all pass. The watch uses blocking queries (`index` and
//! [`ConsulConfig::wait`]), follows Consul's rules for the index (a
//! backwards step starts over from 0, an index of 0 is raised to 1, and any
//! failed query starts over, since the agent may have restarted), backs off
//! on errors (reporting each as an `Err` item), and yields the whole set
//! first and after each change.
//!
//! The ACL token goes in `X-Consul-Token` on every request; the datacenter
//! (`?dc=`) applies to health and catalog reads (agent endpoints always act
//! on the configured agent). Consul answers a read the token may not see
//! with an empty set rather than an error; a write it may not make fails
//! with [`RegistryError::Refused`](fyerrpc::RegistryError::Refused).
//!
//! [`RegisterOptions::ttl`]: fyerrpc::RegisterOptions::ttl
//! [`RegisterOptions::health_url`]: fyerrpc::RegisterOptions::health_url
//! [`Registration`]: fyerrpc::Registration
//! [`Registration::shutdown`]: fyerrpc::Registration::shutdown
//! [`Registration::abandon`]: fyerrpc::Registration::abandon

#![warn(missing_docs)]

mod client;
mod codec;
mod config;
mod discovery;
mod keeper;
pub mod metrics;
mod registry;
mod transport;
pub mod wire;

pub use client::{ConsulClient, Indexed};
pub use codec::{
    http_check_id, ttl_check_id, METADATA_TAGS, META_STATUS, META_VERSION, META_WEIGHT,
};
pub use config::{
    CheckConfig, ConfigError, ConsulConfig, DEFAULT_ADDRESS, DEFAULT_DEREGISTER_CRITICAL_AFTER,
    DEFAULT_HTTP_INTERVAL, DEFAULT_REQUEST_TIMEOUT, DEFAULT_WAIT,
};
pub use registry::ConsulRegistry;
pub use transport::ApiError;
