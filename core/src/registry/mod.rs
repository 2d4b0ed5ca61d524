//! The service registry plug-in: where instances announce themselves and where
//! clients find them.
//!
//! ```
//! use std::sync::Arc;
//! use fyerrpc::registry::{MemoryRegistry, RegisterOptions, Registry};
//! use fyerrpc::Instance;
//! use futures_util::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
//! let mut changes = registry.watch("GreetService", None).await?;
//! assert!(changes.next().await.unwrap()?.is_empty()); // the current set comes first
//!
//! let inst = Instance::new("server-A", "GreetService", "127.0.0.1:8001")?;
//! let registration = registry.register(inst, RegisterOptions::default()).await?;
//! assert_eq!(changes.next().await.unwrap()?.len(), 1);
//! assert_eq!(registry.discover("GreetService", None).await?.len(), 1);
//!
//! registration.shutdown().await?; // deregisters
//! assert!(changes.next().await.unwrap()?.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! A backend implements [`Registry`]; [`Registration`] is the handle that keeps
//! one registration alive (lease keep-alive, TTL check) until
//! [`Registration::shutdown`] deregisters it.
//!
//! To write one for another store, read [the guide](guide): what each method
//! must do, the helpers to reuse, and how to run the conformance suite.

mod background;
mod backoff;
mod memory;
mod registration;
mod shared;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
#[cfg(any(test, feature = "testing"))]
pub mod feed;
pub mod guide;

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures_core::Stream;

use crate::instance::{Instance, InstanceError};

pub use background::register_in_background;
pub use backoff::RetryBackoff;
pub use memory::{channel_stream, MemoryRegistry};
pub use registration::{Registration, StopMode, StopSignal};
pub use shared::{SharedWatches, DEFAULT_SHARED_BUFFER};

/// Default time-to-live of a registration whose keep-alive stops.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Shortest TTL a backend accepts: the keep-alive runs every TTL/3, so a
/// shorter one would keep the registry busy for nothing.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest TTL a backend accepts: an instance whose process died stays
/// visible for up to its TTL, and a day of that is already absurd.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A stream of instance sets: the current set first, then the whole new set
/// after every change. An `Err` item reports a transient problem (the backend
/// keeps trying); the stream ends only when the registry is dropped.
pub type WatchStream =
    Pin<Box<dyn Stream<Item = Result<Vec<Instance>, RegistryError>> + Send + 'static>>;

/// One change of a watched instance set, as [`Registry::watch_changes`]
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The whole set: it replaces whatever was known.
    Full(Vec<Instance>),
    /// What changed since the previous event: instances that joined or whose
    /// entry changed (by id), and the ids of instances that left. A watcher
    /// applies it in time proportional to the change, not to the set:
    /// removals first, then upserts (the last entry of an id counts).
    Delta {
        /// Instances added, or replacing the entry with the same id.
        upserted: Vec<Instance>,
        /// Ids of instances that left.
        removed: Vec<String>,
    },
}

/// A stream of [`WatchEvent`]s: a [`WatchEvent::Full`] set first, then
/// either kind after every change. Errors as in [`WatchStream`].
pub type ChangeStream =
    Pin<Box<dyn Stream<Item = Result<WatchEvent, RegistryError>> + Send + 'static>>;

/// What went wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The backend cannot be reached or did not answer in time.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// An entry read from the backend is not a valid instance.
    #[error("invalid registry entry {key:?}: {source}")]
    InvalidEntry {
        /// Where the entry was found.
        key: String,
        /// Why it was rejected.
        #[source]
        source: InstanceError,
    },
    /// An argument (instance, option) is not acceptable to this backend.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// This backend does not support the operation.
    #[error("operation not supported by the {backend} registry: {operation}")]
    NotSupported {
        /// The backend's name.
        backend: &'static str,
        /// The operation.
        operation: &'static str,
    },
    /// The backend refused the request (authentication, permission).
    #[error("registry refused the request: {0}")]
    Refused(String),
    /// The registration was already stopped.
    #[error("registration already stopped")]
    Stopped,
    /// Anything else the backend reported.
    #[error("registry error: {0}")]
    Other(String),
}

/// How to register an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegisterOptions {
    /// How long the registration outlives its last keep-alive (an etcd lease
    /// TTL, a Consul TTL check). Default [`DEFAULT_TTL`].
    pub ttl: Duration,
    /// An HTTP health URL the registry may poll itself (Consul HTTP check).
    pub health_url: Option<String>,
}

impl Default for RegisterOptions {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            health_url: None,
        }
    }
}

impl RegisterOptions {
    /// Options with the given TTL.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
    /// Options with an HTTP health URL.
    pub fn with_health_url(mut self, url: impl Into<String>) -> Self {
        self.health_url = Some(url.into());
        self
    }

    /// The TTL, checked: [`RegistryError::InvalidArgument`] when it is
    /// outside [`MIN_TTL`]`..=`[`MAX_TTL`]. Every backend calls this before
    /// registering (the conformance suite checks that they do).
    ///
    /// ```
    /// use std::time::Duration;
    /// use fyerrpc::registry::{RegisterOptions, RegistryError};
    ///
    /// let options = RegisterOptions::default().with_ttl(Duration::from_secs(5));
    /// assert_eq!(options.checked_ttl().unwrap(), Duration::from_secs(5));
    /// for absurd in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
    ///     let err = options.clone().with_ttl(absurd).checked_ttl().unwrap_err();
    ///     assert!(matches!(err, RegistryError::InvalidArgument(_)));
    /// }
    /// ```
    pub fn checked_ttl(&self) -> Result<Duration, RegistryError> {
        if !(MIN_TTL..=MAX_TTL).contains(&self.ttl) {
            return Err(RegistryError::InvalidArgument(format!(
                "ttl {:?} is outside {MIN_TTL:?}..={MAX_TTL:?}",
                self.ttl
            )));
        }
        Ok(self.ttl)
    }

    /// The keep-alive period of a registration with these options: TTL/3
    /// (of the [checked](Self::checked_ttl) TTL, so at least a third of
    /// [`MIN_TTL`]). A registration renews itself this often, and a live
    /// registration deleted from outside is back within this period (see
    /// [the contract](Registry#the-life-of-a-registration)).
    pub fn keepalive_period(&self) -> Duration {
        self.ttl.clamp(MIN_TTL, MAX_TTL) / 3
    }
}

/// A service registry: etcd, Consul, a static list, a file, or your own
/// ([how to write one](guide)).
///
/// # The life of a registration
///
/// Every backend keeps the same promises; the conformance suite
/// (`fyerrpc::registry::conformance`, feature `testing`) checks each of
/// them, so a custom backend is held to them too.
///
/// * **TTL.** [`register`](Self::register) refuses a TTL outside
///   [`MIN_TTL`]`..=`[`MAX_TTL`] with [`RegistryError::InvalidArgument`]
///   ([`RegisterOptions::checked_ttl`]) and registers nothing.
/// * **Keep-alive.** While its [`Registration`] lives, the entry stays; the
///   handle renews it every [keep-alive period](RegisterOptions::keepalive_period)
///   (TTL/3). When the process dies (or [`Registration::abandon`] is called)
///   the entry goes after the TTL, plus whatever the backend adds to notice
///   it (documented per backend).
/// * **Deleted from outside.** When the entry of a live registration is
///   removed by someone else ([`deregister`](Self::deregister), an operator's
///   tool, a registry that restarted and forgot it), the registration puts
///   it back **within one keep-alive period** (plus the time the backend
///   needs to answer). To take an instance away for good, shut its
///   registration down.
/// * **Replaced.** Registering the same service, version and id again (in
///   this process or another, e.g. the next process during a quick restart)
///   replaces the entry: the newer registration wins. The earlier handle
///   notices within a keep-alive period, stops renewing and does not put its
///   entry back, and its [`shutdown`](Registration::shutdown) leaves the
///   newer entry in place.
/// * **Shutdown.** [`Registration::shutdown`] removes the registration's own
///   entry and nothing else; when it returns, no renewal or recovery of that
///   registration is still under way, so the entry does not come back.
///
/// Object safe: `Arc<dyn Registry>` is how the client and the server helpers
/// take one.
///
/// ```
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use fyerrpc::registry::{
///     RegisterOptions, Registration, Registry, RegistryError, StopMode, WatchStream,
/// };
/// use fyerrpc::Instance;
///
/// /// A registry that always knows exactly one instance and accepts nothing.
/// struct One(Instance);
///
/// #[async_trait]
/// impl Registry for One {
///     async fn register(&self, _: Instance, _: RegisterOptions) -> Result<Registration, RegistryError> {
///         Err(RegistryError::NotSupported { backend: "one", operation: "register" })
///     }
///     async fn deregister(&self, _: &Instance) -> Result<(), RegistryError> {
///         Err(RegistryError::NotSupported { backend: "one", operation: "deregister" })
///     }
///     async fn discover(&self, service: &str, _: Option<&str>) -> Result<Vec<Instance>, RegistryError> {
///         Ok(if service == self.0.service() { vec![self.0.clone()] } else { vec![] })
///     }
///     async fn watch(&self, service: &str, version: Option<&str>) -> Result<WatchStream, RegistryError> {
///         let set = self.discover(service, version).await?;
///         // The current set, then nothing ever changes.
///         Ok(Box::pin(futures_util::stream::iter([Ok(set)]).chain(futures_util::stream::pending())))
///     }
/// }
/// # use futures_util::StreamExt;
/// let registry: Arc<dyn Registry> = Arc::new(One(Instance::new("a", "S", "127.0.0.1:1").unwrap()));
/// # let _ = registry;
/// ```
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Registers `instance` and keeps it registered (lease keep-alive, TTL
    /// check pass) until the returned handle is shut down. Registering the same
    /// service and id again replaces the earlier entry (see
    /// [the contract](Self#the-life-of-a-registration)). A TTL outside
    /// [`MIN_TTL`]`..=`[`MAX_TTL`] is refused with
    /// [`RegistryError::InvalidArgument`].
    async fn register(
        &self,
        instance: Instance,
        options: RegisterOptions,
    ) -> Result<Registration, RegistryError>;

    /// Removes an instance's entry now, whoever registered it. Removing an
    /// unknown instance is not an error. A live [`Registration`] of the
    /// instance puts it back within its keep-alive period (see
    /// [the contract](Self#the-life-of-a-registration)).
    async fn deregister(&self, instance: &Instance) -> Result<(), RegistryError>;

    /// The instances of `service` now (of one version, if given). Entries that
    /// fail to decode are skipped with a warning.
    async fn discover(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<Vec<Instance>, RegistryError>;

    /// A stream that yields the current set of instances of `service` first,
    /// then the whole set after every change.
    async fn watch(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<WatchStream, RegistryError>;

    /// Like [`watch`](Self::watch), but a backend that learns of changes one
    /// by one (a key written or deleted) may report them as
    /// [`WatchEvent::Delta`]s, which a client of 100,000 instances applies
    /// without looking at the instances that did not change. The default
    /// reports every set of [`watch`](Self::watch) as a
    /// [`WatchEvent::Full`]; the client then finds the change itself, with
    /// one lookup per instance.
    async fn watch_changes(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<ChangeStream, RegistryError> {
        use futures_util::StreamExt;
        let stream = self.watch(service, version).await?;
        Ok(Box::pin(stream.map(|set| set.map(WatchEvent::Full))))
    }
}

/// Sorts a set of instances by (version, id) and drops duplicates of one id,
/// keeping the last: the canonical order in which registries report sets.
pub fn canonicalize(mut set: Vec<Instance>) -> Vec<Instance> {
    set.reverse();
    set.sort_by(|a, b| (a.version(), a.id()).cmp(&(b.version(), b.id())));
    set.dedup_by(|a, b| a.id() == b.id() && a.version() == b.version());
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_order_keeps_the_last_duplicate() {
        let a1 = Instance::new("a", "S", "h:1").unwrap();
        let b = Instance::new("b", "S", "h:2").unwrap();
        let a2 = Instance::new("a", "S", "h:3").unwrap();
        let set = canonicalize(vec![a1, b.clone(), a2.clone()]);
        assert_eq!(set, vec![a2, b]);
    }
}
