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
//!   typed wrapper is small (hyper-rustls adds HTTPS), and gives one error type
//!   ([`ApiError`]) with the distinctions the keeper needs ("unknown check"
//!   means the agent lost the registration).
//!
//! ## HTTPS
//!
//! An `https://` address speaks TLS (rustls, the stack tonic already brings)
//! to the agent's HTTPS port. [`TlsConfig`] names the CA to trust (the
//! system's roots by default), the client certificate and key for agents with
//! `verify_incoming`, and the name to check the agent's certificate against
//! (the counterparts of `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`,
//! `CONSUL_CLIENT_KEY` and `CONSUL_TLS_SERVER_NAME`). The files are read when
//! the registry is built, so a missing or broken file is a [`ConfigError`].
//!
//! ```no_run
//! use fyerrpc_registry_consul::{ConsulConfig, ConsulRegistry, TlsConfig};
//!
//! let tls = TlsConfig::default()
//!     .with_ca_file("/etc/consul.d/consul-agent-ca.pem")
//!     .with_client_cert("/etc/consul.d/dc1-client-consul-0.pem",
//!                       "/etc/consul.d/dc1-client-consul-0-key.pem");
//! let registry = ConsulRegistry::new(
//!     ConsulConfig::from_address("https://127.0.0.1:8501").with_tls(tls),
//! )?;
//! # Ok::<(), fyerrpc_registry_consul::ConfigError>(())
//! ```
//!
//! ## How an instance is stored
//!
//! | instance | Consul service |
//! |---|---|
//! | service, version, id | `ID` = `<service>:<version>:<id>` ([`service_id`]): a service id is unique per agent only, so it is qualified |
//! | id | `Meta.fyerrpc_id` |
//! | service | `Name` |
//! | host, port | `Address`, `Port` (an empty `Address` reads as the node's) |
//! | version | `Meta.version`, and a tag equal to the version (so DNS `v1.GreetService.service.consul` works) |
//! | weight | `Meta.weight` and `Weights.Passing` (`Weights.Warning` = 1) |
//! | status | `Meta.status`: `enabled` or `disabled` |
//! | metadata | `Meta`; the `tags` metadata (comma separated) also becomes `Tags` |
//! | (the registration) | `Meta.fyerrpc_nonce`: a random value of each registration |
//!
//! Consul accepts meta keys matching `[A-Za-z0-9_-]{1,64}`, values up to
//! 512 bytes, at most 64 pairs, and reserves the `consul-` prefix; metadata
//! that breaks these rules (or reuses `version`, `weight`, `status`,
//! `fyerrpc_id`, `fyerrpc_nonce`) is left out of the registration with a
//! warning.
//!
//! ## Identity across the datacenter
//!
//! A discovered instance's id is its `Meta.fyerrpc_id`. Services registered
//! by other tools have none; their id is `<service id>@<node>`, because a
//! Consul service id is unique on one agent only and most often is just the
//! service name: ten nodes each running `web` are ten instances
//! (`web@node-1`, ...), not one. If two nodes hold the same fyerrpc id (two
//! processes given the same `--id`), both are kept, as `<id>@<node>` each.
//! [`Registry::deregister`](fyerrpc::Registry::deregister) takes an instance
//! as it was registered (service, version and fyerrpc id) and removes it
//! from the configured agent.
//!
//! Reading is lenient, so services registered by other tools (for example
//! `consul services register -name=web -address=10.0.0.5 -port=80`) are
//! found: the version is `Meta.version`, else a `version=X` (or `version:X`)
//! tag, else the one tag that looks like a version (`v2`, `v1.4.0`), else
//! `v1`; a missing weight reads as `Weights.Passing`, unless that is Consul's
//! default `{1, 1}`, then as 100. A malformed version, weight or status is
//! ignored (the default applies) and an entry that cannot be an instance at
//! all (bad id, no address, no port) is skipped; both are logged once per
//! watch and counted in [`metrics::INVALID_ENTRIES_TOTAL`].
//!
//! ## Health checks and the registration's life
//!
//! [`register`](fyerrpc::Registry::register) registers the service on the
//! agent with:
//!
//! * a TTL check `service:<service id>` of [`RegisterOptions::ttl`] that the
//!   returned [`Registration`] passes every TTL/3: if the process dies the
//!   check turns critical after the TTL and the instance leaves the passing
//!   set (switch off with [`CheckConfig::ttl_check`]);
//! * optionally an HTTP check `service:<service id>:http` that the agent
//!   polls itself, at [`RegisterOptions::health_url`] or
//!   [`CheckConfig::http_url`] every [`CheckConfig::http_interval`] (2 s by
//!   default, with a timeout of the same, at most 5 s);
//! * `DeregisterCriticalServiceAfter` on every check, so the agent removes a
//!   dead instance altogether.
//!
//! Every check starts **passing**: a server registers once it is ready, so
//! it is in `/v1/health/service/<name>?passing` (and in every watch) as soon
//! as `register` returns. A registration with no check at all (TTL check
//! off and no health URL) would stay passing after its process died, so it
//! is refused with [`RegistryError::InvalidArgument`](fyerrpc::RegistryError::InvalidArgument).
//!
//! **How long a crashed instance stays visible**: with the TTL check, at
//! most the TTL (the last pass was at most TTL/3 before the crash, so
//! between 2/3 of the TTL and the TTL); with an HTTP check, at most one
//! HTTP interval plus its timeout if the process no longer answers (a
//! refused connection fails at once). It then stays in the catalog, as
//! critical and so invisible to discovery, until
//! `DeregisterCriticalServiceAfter` (1 minute by default, plus up to 30 s
//! for Consul's reaper). A process that shuts down cleanly deregisters at
//! once.
//!
//! Each round of the keeper (every TTL/3) first asks the agent for the
//! service (`GET /v1/agent/service/<id>`) and compares the nonce in its
//! `Meta` with its own, following the
//! [registry contract](fyerrpc::Registry#the-life-of-a-registration):
//!
//! * its own: the TTL check is passed;
//! * none (the agent restarted and forgot it, someone deregistered it): the
//!   service is registered again at once, with backoff while the agent is
//!   down, and counted in [`metrics::REREGISTRATIONS_TOTAL`];
//! * another nonce (a newer process registered the same service, version
//!   and id on this agent, e.g. during a quick restart): the keeper stands
//!   down, and its shutdown leaves the newer registration alone.
//!
//! [`Registration::shutdown`] deregisters the service if the agent still
//! holds *this* registration, within [`ConsulConfig::deregister_timeout`]
//! (3 s by default, so a hung agent does not hold a stopping server; the
//! entry then expires with its checks). A recovery in progress is finished
//! before, so a shutdown racing a recovery leaves nothing behind.
//! [`Registration::abandon`] just stops renewing. (Consul offers no
//! compare-and-delete for agent services: a newer process registering in
//! the instant between the check and the deregistration loses its entry,
//! and its keeper puts it back within its keep-alive period.)
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
//! first and after each change. An answer without `X-Consul-Index` (a proxy
//! that drops it) cannot block: the watch warns once and polls with backoff
//! (up to every 2 s) instead of asking again at once.
//!
//! ### Changes, and one watch shared by many clients
//!
//! [`watch_changes`](fyerrpc::Registry::watch_changes), which the fyerrpc
//! client uses, runs one blocking-query loop per (service, version) for the
//! registry handle and **every clone of it**, however many clients follow
//! that service. Each answer is compared with the set the subscribers
//! already have, by instance id, and only what changed goes out (a
//! [`WatchEvent::Delta`](fyerrpc::WatchEvent::Delta)); each subscriber gets
//! the whole set first, and again only if it falls more than 256 changes
//! behind. The loop stops when the last subscriber goes.
//! [`ConsulRegistry::watch_count`] tells how many loops run.
//!
//! To share, build the registry once and hand clones (or one
//! `Arc<dyn Registry>`) to every client; registries built separately from
//! the same configuration each run their own loops:
//!
//! ```no_run
//! use fyerrpc_registry_consul::{ConsulConfig, ConsulRegistry};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = ConsulRegistry::new(ConsulConfig::from_address("http://127.0.0.1:8500"))?;
//! let for_orders = registry.clone().into_dyn(); // give each client a clone
//! let for_billing = registry.clone().into_dyn();
//! // Both clients' watches of "GreetService" share one blocking-query loop.
//! # let _ = (for_orders, for_billing);
//! # Ok(())
//! # }
//! ```
//!
//! [`watch`](fyerrpc::Registry::watch) (whole sets) is not shared: each call
//! runs a loop of its own.
//!
//! The ACL token goes in `X-Consul-Token` on every request; the datacenter
//! (`?dc=`) applies to health and catalog reads (agent endpoints always act
//! on the configured agent). Consul answers a read the token may not see
//! with an empty (or partial) set rather than an error, marked with
//! `X-Consul-Results-Filtered-By-ACLs`: that is logged once as a warning. A
//! write the token may not make fails with
//! [`RegistryError::Refused`](fyerrpc::RegistryError::Refused).
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
    http_check_id, service_id, ttl_check_id, METADATA_TAGS, META_ID, META_NONCE, META_STATUS,
    META_VERSION, META_WEIGHT,
};
pub use config::{
    CheckConfig, ConfigError, ConsulConfig, TlsConfig, DEFAULT_ADDRESS,
    DEFAULT_DEREGISTER_CRITICAL_AFTER, DEFAULT_DEREGISTER_TIMEOUT, DEFAULT_HTTP_INTERVAL,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_WAIT, MAX_HTTP_TIMEOUT,
};
pub use registry::ConsulRegistry;
pub use transport::ApiError;
