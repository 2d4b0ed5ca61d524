//! # fyerrpc-registry-static
//!
//! A [`Registry`] over a fixed list of addresses: no external service needed.
//!
//! ```
//! use std::sync::Arc;
//! use fyerrpc::Registry;
//! use fyerrpc_registry_static::StaticRegistry;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = StaticRegistry::from_addresses(
//!     "GreetService",
//!     "localhost:8001,localhost:8002,localhost:8003",
//! )?;
//! let registry: Arc<dyn Registry> = Arc::new(registry);
//! let set = registry.discover("GreetService", None).await?;
//! assert_eq!(set.len(), 3);
//! assert_eq!(set[0].id(), "localhost:8001"); // the address is the id
//! # Ok(())
//! # }
//! ```
//!
//! ## What `register` means here
//!
//! The list lives in the process. [`Registry::register`] adds an instance to
//! this process's view (with the usual TTL semantics: the returned
//! [`Registration`] keeps it alive until shut down),
//! so servers and clients that share a process, or a `StaticRegistry`
//! value, see each other. Other processes do not: in a multi-process
//! cluster each client is given the servers' addresses, and each server's
//! registration is a local no-op that succeeds. The fixed entries never
//! expire; `deregister` removes them from this process's view.

#![warn(missing_docs)]

use std::sync::Arc;

use async_trait::async_trait;
use fyerrpc::registry::{MemoryRegistry, RegisterOptions, Registration, WatchStream};
use fyerrpc::{Instance, InstanceError, Registry, RegistryError};

/// Why a static list was rejected.
#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    /// The list names no address.
    #[error("the server list is empty")]
    Empty,
    /// One entry is not a valid `host:port`.
    #[error("invalid server {entry:?} in the list: {source}")]
    Invalid {
        /// The rejected entry.
        entry: String,
        /// Why.
        #[source]
        source: InstanceError,
    },
}

/// A registry over a fixed list of instances. See the [crate docs](crate).
#[derive(Debug, Clone, Default)]
pub struct StaticRegistry {
    inner: MemoryRegistry,
}

impl StaticRegistry {
    /// An empty registry (instances can still be registered in-process).
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry listing `instances`, which never expire.
    pub fn from_instances(instances: impl IntoIterator<Item = Instance>) -> Self {
        let inner = MemoryRegistry::new();
        for i in instances {
            inner.insert(i);
        }
        Self { inner }
    }

    /// A registry of `service` at the comma-separated `host:port` addresses;
    /// each instance's id is its address. Blank entries are ignored.
    pub fn from_addresses(service: &str, addresses: &str) -> Result<Self, StaticError> {
        let mut instances = Vec::new();
        for entry in addresses
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let inst =
                Instance::new(entry, service, entry).map_err(|source| StaticError::Invalid {
                    entry: entry.to_owned(),
                    source,
                })?;
            instances.push(inst);
        }
        if instances.is_empty() {
            return Err(StaticError::Empty);
        }
        Ok(Self::from_instances(instances))
    }

    /// Adds a fixed instance.
    pub fn add(&self, instance: Instance) {
        self.inner.insert(instance);
    }

    /// This registry as a shared trait object.
    pub fn into_dyn(self) -> Arc<dyn Registry> {
        Arc::new(self)
    }
}

#[async_trait]
impl Registry for StaticRegistry {
    async fn register(
        &self,
        instance: Instance,
        options: RegisterOptions,
    ) -> Result<Registration, RegistryError> {
        self.inner.register(instance, options).await
    }

    async fn deregister(&self, instance: &Instance) -> Result<(), RegistryError> {
        self.inner.deregister(instance).await
    }

    async fn discover(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<Vec<Instance>, RegistryError> {
        self.inner.discover(service, version).await
    }

    async fn watch(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<WatchStream, RegistryError> {
        self.inner.watch(service, version).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use fyerrpc::registry::conformance::{run, Harness};

    #[test]
    fn parses_address_lists() {
        assert!(StaticRegistry::from_addresses("S", " a:1 , b:2,").is_ok());
        assert!(matches!(
            StaticRegistry::from_addresses("S", " , "),
            Err(StaticError::Empty)
        ));
        let err = StaticRegistry::from_addresses("S", "a:1,nope").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(StaticRegistry::from_addresses("S", "a:99999").is_err());
    }

    #[tokio::test]
    async fn fixed_entries_are_discovered_and_watched() {
        let r = StaticRegistry::from_addresses("S", "a:1,b:2").unwrap();
        assert_eq!(r.discover("S", None).await.unwrap().len(), 2);
        assert!(r.discover("T", None).await.unwrap().is_empty());
        let mut w = r.watch("S", None).await.unwrap();
        assert_eq!(w.next().await.unwrap().unwrap().len(), 2);
        let b = Instance::new("b:2", "S", "b:2").unwrap();
        r.deregister(&b).await.unwrap();
        assert_eq!(w.next().await.unwrap().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        run(&Harness::new(StaticRegistry::new().into_dyn())).await;
    }
}
