//! # fyerrpc-registry-etcd
//!
//! A [`Registry`] on [etcd] v3: servers register themselves under a lease
//! that a background task keeps alive, clients read and watch a key prefix.
//!
//! ```no_run
//! use std::sync::Arc;
//! use futures_util::StreamExt;
//! use fyerrpc::registry::RegisterOptions;
//! use fyerrpc::{Instance, Registry};
//! use fyerrpc_registry_etcd::{EtcdConfig, EtcdRegistry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = EtcdConfig::from_endpoints("http://127.0.0.1:2379")?;
//! let registry: Arc<dyn Registry> = Arc::new(EtcdRegistry::connect(config).await?);
//!
//! // Server side: register, and stay registered until shutdown.
//! let me = Instance::new("server-A", "GreetService", "127.0.0.1:8001")?;
//! let registration = registry.register(me, RegisterOptions::default()).await?;
//!
//! // Client side: the current set, then the whole set after every change.
//! let mut changes = registry.watch("GreetService", None).await?;
//! while let Some(set) = changes.next().await {
//!     println!("{} instance(s)", set?.len());
//! #   break;
//! }
//!
//! registration.shutdown().await?; // deletes the key, revokes the lease
//! # Ok(())
//! # }
//! ```
//!
//! ## Key layout
//!
//! One key per instance, holding the instance as the shared JSON object of
//! [`fyerrpc::instance`]:
//!
//! ```text
//! {prefix}/{service}/{version}/{instance-id}   e.g. /fyerrpc/services/GreetService/v1/server-A
//! ```
//!
//! The prefix defaults to [`DEFAULT_PREFIX`] (`/fyerrpc/services`) and is set
//! with [`EtcdConfig::with_prefix`]. Discovery of a service reads
//! `{prefix}/{service}/`, of one version `{prefix}/{service}/{version}/`.
//! Entries that do not decode, or whose key disagrees with their value, are
//! skipped with a warning and counted; they never stop discovery.
//!
//! ## Staying registered
//!
//! [`Registry::register`] grants a lease (the [`RegisterOptions::ttl`], whole
//! seconds, 1 s to 1 day, default 10 s), writes the key under it and returns
//! a [`Registration`] whose task keeps it (the `keeper` module's state
//! diagram has the details):
//!
//! * **Renewal.** Every keep-alive period, TTL/4, the task renews the lease
//!   on a keep-alive stream it drives itself. A stream silent for TTL/2 (a
//!   hung member, a dead connection) is given up and reopened on another
//!   member while the lease still has half its TTL to live, so a hung member
//!   costs neither the lease nor a re-registration.
//! * **Deleted from outside.** Every keep-alive period the task also checks
//!   the key; one deleted from outside (`etcdctl del`,
//!   [`Registry::deregister`] of a live registration) is written again, so it
//!   is back within the period. The key is only ever written when missing (or
//!   held by an earlier lease of the same registration), by a transaction
//!   that compares before it writes: a keep-alive hiccup creates no revision
//!   and no watch event.
//! * **Lost lease.** When etcd lost the lease (unreachable past the TTL,
//!   restarted on an empty data dir) the task grants a new one and writes the
//!   key again as soon as etcd answers, retrying with backoff (100 ms
//!   doubling up to 2 s). Re-writing a lost key counts in
//!   [`metrics::REREGISTRATIONS_TOTAL`] and is logged.
//! * **Replaced.** Registering the same instance again (the next process
//!   during a quick restart) replaces the key; the earlier registration
//!   notices within its keep-alive period, stands down and revokes its lease,
//!   leaving the newer key alone.
//!
//! [`Registration::shutdown`] revokes every lease the registration asked for,
//! which deletes its key, even when it interrupts a recovery (if etcd is
//! unreachable it reports that after the request timeout, and the key expires
//! with its lease); [`Registration::abandon`] just stops, and the key
//! disappears when its lease expires: a crashed server stays visible for at
//! most its TTL (plus up to 500 ms, etcd's expiry sweep).
//!
//! ## Watching
//!
//! [`Registry::watch`] reads the prefix, yields the set, then watches from the
//! next revision, so no change between the read and the watch is missed. When
//! the watch breaks (etcd restarted, a member died or hung, the revision was
//! compacted) it reads the prefix again and watches on from there, with
//! backoff; meanwhile the stream yields an `Err` per failed attempt and then
//! the current set once etcd answers. A watch silent for a request timeout
//! asks etcd for a progress report, and one silent for twice that is taken
//! as hung and moved to another member.
//!
//! ### Changes, and one watch shared by many clients
//!
//! [`Registry::watch_changes`], which the fyerrpc client uses, hands out
//! what changed rather than whole sets: each etcd watch event is one key
//! written or deleted, and becomes a
//! [`WatchEvent::Delta`](fyerrpc::WatchEvent::Delta) carrying just that
//! instance (or just its id), applied in time proportional to the change.
//! After a re-read (a broken stream, a compacted revision, a restarted
//! etcd) the new set is compared with the one already handed out, by
//! instance id, and only the difference goes out.
//!
//! One etcd watch per (service, version) serves the registry handle and
//! **every clone of it**, however many clients follow that service: each
//! subscriber gets the whole set first, then the changes, and the whole set
//! again only if it falls more than 256 changes behind (a slow client never
//! holds the others up). The etcd watch is closed when the last subscriber
//! goes; [`EtcdRegistry::watch_count`] tells how many are open.
//!
//! To share, connect once and hand clones (or one `Arc<dyn Registry>`) to
//! every client; registries connected separately each open their own
//! watches:
//!
//! ```no_run
//! use fyerrpc_registry_etcd::{EtcdConfig, EtcdRegistry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = EtcdRegistry::connect(EtcdConfig::from_endpoints("http://127.0.0.1:2379")?).await?;
//! let for_orders = registry.clone().into_dyn(); // give each client a clone
//! let for_billing = registry.clone().into_dyn();
//! // Both clients' watches of "GreetService" share one etcd watch.
//! # let _ = (for_orders, for_billing);
//! # Ok(())
//! # }
//! ```
//!
//! [`Registry::watch`] (whole sets) is not shared: each call opens an etcd
//! watch of its own.
//!
//! ## Clusters, authentication, TLS
//!
//! [`EtcdConfig`] takes every member's client URL. Each member gets its own
//! client, and requests go to the healthy members in turn; a member that
//! failed, lost a race or whose stream fell silent is tried after the others
//! for a while (1 s, doubling up to 30 s). A request left unanswered for an
//! eighth of the request timeout (50 ms to 1 s) is *hedged*: sent to the next
//! member too, while the first attempt keeps running, and the first answer
//! wins. So a slow but healthy request still completes, a hung member is
//! skipped, and every request has the same effect when sent twice (leases get
//! IDs chosen by the registry; writes are compare-and-write transactions).
//! It also takes a user and password (a user whose role may only read and
//! write `{prefix}/` is enough) and TLS files ([`TlsConfig`]: CA, client
//! certificate for mutual TLS, server name); `https://` endpoints without TLS
//! files trust the system's CAs.
//!
//! ## Metrics
//!
//! Counters in [`metrics`], labelled `backend="etcd"`: re-registrations,
//! invalid entries skipped, watch restarts.
//!
//! ## Building and testing
//!
//! The etcd client's build compiles etcd's protobuf files and needs `protoc`
//! (Debian/Ubuntu: `apt-get install protobuf-compiler`; elsewhere install
//! the protobuf compiler or set `PROTOC`). The tests start real etcd
//! processes: `scripts/fetch-etcd.sh` installs `protoc` when missing and
//! provides an etcd binary (from the PATH, or the Debian package `etcd-server`
//! unpacked into `.cache/`), then `cargo test -p fyerrpc-registry-etcd
//! --all-features` (the `testing` feature adds the test hooks of the
//! `testing` module and the tests that use them).
//!
//! [etcd]: https://etcd.io
//! [`DEFAULT_PREFIX`]: fyerrpc::instance::DEFAULT_PREFIX
//! [`RegisterOptions::ttl`]: fyerrpc::registry::RegisterOptions::ttl
//! [`Registration`]: fyerrpc::Registration
//! [`Registration::shutdown`]: fyerrpc::Registration::shutdown
//! [`Registration::abandon`]: fyerrpc::Registration::abandon

#![warn(missing_docs)]

mod backoff;
mod config;
mod entry;
mod error;
mod hooks;
mod keeper;
mod members;
pub mod metrics;
mod snapshot;
mod watcher;

/// Test hooks (the `testing` feature): points in the registry's background
/// tasks where a test can look on or hold them.
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::hooks::{Hook, Hooks};
}

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, GetOptions};
use fyerrpc::instance::{instance_key, service_prefix};
use fyerrpc::registry::{
    channel_stream, ChangeStream, RegisterOptions, Registration, SharedWatches, WatchStream,
};
use fyerrpc::{Instance, Registry, RegistryError};

pub use config::{
    EtcdConfig, TlsConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEP_ALIVE_INTERVAL,
    DEFAULT_REQUEST_TIMEOUT,
};
pub use error::EtcdError;
/// The etcd client crate this backend is built on.
pub use etcd_client;

use crate::hooks::Probe;
use crate::keeper::Keeper;
use crate::members::{Members, Patience};
use crate::watcher::{Sink, Watcher};

/// A [`Registry`] on etcd. See the [crate docs](crate).
///
/// Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct EtcdRegistry {
    client: Client,
    members: Members,
    prefix: Arc<str>,
    timeout: Duration,
    probe: Probe,
    /// One etcd watch per (service, version), shared by the clones.
    watches: SharedWatches,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl EtcdRegistry {
    /// Connects to the cluster and checks that it answers (one read of the
    /// prefix), so that a wrong address, password or certificate fails here
    /// rather than at the first registration. Once connected, the registry
    /// rides out etcd outages by itself.
    pub async fn connect(config: EtcdConfig) -> Result<Self, EtcdError> {
        config.validate()?;
        let options = config.connect_options()?;
        let endpoints = config.client_endpoints();
        let failed = |source| EtcdError::Connect {
            endpoints: endpoints.join(","),
            source,
        };
        let members = Members::new(endpoints.clone(), options);
        let timeout = config.request_timeout;
        let prefix: Arc<str> = config.prefix.into();
        // `{prefix}/`: the range a user limited to the registry may read.
        let root = format!("{}/", prefix.trim_end_matches('/'));
        let root = root.as_str();
        // The first request also connects (and authenticates); allow for it.
        let patience = Patience::request(config.connect_timeout + timeout);
        let probe = members
            .call(patience, |client: Client| async move {
                let options = GetOptions::new().with_prefix().with_count_only();
                client.kv_client().get(root, Some(options)).await?;
                Ok(client)
            })
            .await
            .map_err(failed)?;
        Ok(Self {
            client: probe.value,
            members,
            prefix,
            timeout,
            probe: Probe::default(),
            watches: SharedWatches::new(),
        })
    }

    /// An etcd client connected to the member that answered first, for
    /// anything this API does not cover. The registry's own requests go
    /// through one client per member and skip members that fail or hang;
    /// this one does not.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many etcd watches [`Registry::watch_changes`] keeps open now:
    /// one per watched (service, version), however many clients (of this
    /// handle and its clones) follow it.
    pub fn watch_count(&self) -> usize {
        self.watches.upstream_count()
    }

    /// How many [`Registry::watch_changes`] streams of this handle and its
    /// clones are open now.
    pub fn watcher_count(&self) -> usize {
        self.watches.subscriber_count()
    }

    /// This registry as a shared trait object.
    pub fn into_dyn(self) -> Arc<dyn Registry> {
        Arc::new(self)
    }

    /// This registry, calling `hooks` at the points of [`testing::Hook`].
    #[cfg(feature = "testing")]
    pub fn with_hooks(mut self, hooks: Arc<dyn testing::Hooks>) -> Self {
        self.probe = Probe { hooks: Some(hooks) };
        self
    }

    fn watcher(&self, service: &str, version: Option<&str>) -> Watcher {
        Watcher {
            members: self.members.clone(),
            prefix: self.prefix.to_string(),
            range: service_prefix(&self.prefix, service, version),
            timeout: self.timeout,
            probe: self.probe.clone(),
        }
    }
}

#[async_trait]
impl Registry for EtcdRegistry {
    async fn register(
        &self,
        instance: Instance,
        options: RegisterOptions,
    ) -> Result<Registration, RegistryError> {
        let ttl = options.checked_ttl()?;
        let keeper = Keeper::new(
            self.members.clone(),
            &self.prefix,
            instance.clone(),
            ttl,
            self.timeout,
            self.probe.clone(),
        )?;
        let lease = keeper.register().await?;
        Ok(Registration::spawn(instance, move |stop| {
            keeper.run(lease, stop)
        }))
    }

    async fn deregister(&self, instance: &Instance) -> Result<(), RegistryError> {
        let key = instance_key(&self.prefix, instance);
        let key = key.as_str();
        self.members
            .call(
                Patience::request(self.timeout),
                |client: Client| async move { client.kv_client().delete(key, None).await },
            )
            .await
            .map(drop)
    }

    async fn discover(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<Vec<Instance>, RegistryError> {
        Ok(self.watcher(service, version).read().await?.instances())
    }

    async fn watch(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<WatchStream, RegistryError> {
        let watcher = self.watcher(service, version);
        let first = watcher.read().await?;
        Ok(channel_stream(move |tx| watcher.run(first, Sink::Sets(tx))))
    }

    async fn watch_changes(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<ChangeStream, RegistryError> {
        let watcher = self.watcher(service, version);
        self.watches
            .subscribe(service, version, move || async move {
                let first = watcher.read().await?;
                let (tx, rx) = tokio::sync::mpsc::channel(16);
                tokio::spawn(watcher.run(first, Sink::Changes(tx)));
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                });
                Ok(Box::pin(stream) as ChangeStream)
            })
            .await
    }
}
