//! Choosing a registry backend from flags: `static` (built in), `etcd` and
//! `consul` (when built with the feature of that name).

use std::sync::Arc;

use fyerrpc::Registry;
use fyerrpc_registry_static::{StaticError, StaticRegistry};

/// Default etcd endpoint.
pub const DEFAULT_ETCD_ADDR: &str = "http://127.0.0.1:2379";
/// Default Consul agent address.
pub const DEFAULT_CONSUL_ADDR: &str = "http://127.0.0.1:8500";

/// Which registry backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistryKind {
    /// A fixed list of addresses; servers register in-process only.
    Static,
    /// etcd (leases with keep-alive).
    Etcd,
    /// Consul (agent services with TTL checks).
    Consul,
}

impl RegistryKind {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Etcd => "etcd",
            Self::Consul => "consul",
        }
    }
}

/// Why a registry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RegistrySetupError {
    /// The backend was not compiled in.
    #[error("the {0} registry is not built into this binary: rebuild with `--features {0}`")]
    NotBuilt(&'static str),
    /// The static server list is invalid.
    #[error(transparent)]
    Static(#[from] StaticError),
    /// The backend could not be reached or configured.
    #[error("cannot use the {kind} registry at {addr}: {reason}")]
    Connect {
        /// The backend.
        kind: &'static str,
        /// The address tried.
        addr: String,
        /// What went wrong.
        reason: String,
    },
}

/// Opens the registry `kind` at `addr` (or its default address).
///
/// For `static`, `servers` is the comma-separated `host:port` list of
/// `service` (clients); `None` gives an empty in-process list (servers,
/// whose registration is then local to the process).
pub async fn open(
    kind: RegistryKind,
    addr: Option<&str>,
    service: &str,
    servers: Option<&str>,
) -> Result<Arc<dyn Registry>, RegistrySetupError> {
    match kind {
        RegistryKind::Static => Ok(match servers {
            Some(list) => StaticRegistry::from_addresses(service, list)?.into_dyn(),
            None => StaticRegistry::new().into_dyn(),
        }),
        RegistryKind::Etcd => etcd(addr.unwrap_or(DEFAULT_ETCD_ADDR)).await,
        RegistryKind::Consul => consul(addr.unwrap_or(DEFAULT_CONSUL_ADDR)).await,
    }
}

#[cfg(feature = "etcd")]
async fn etcd(addr: &str) -> Result<Arc<dyn Registry>, RegistrySetupError> {
    use fyerrpc_registry_etcd::{EtcdConfig, EtcdRegistry};
    let failed = |e: &dyn std::error::Error| RegistrySetupError::Connect {
        kind: "etcd",
        addr: addr.to_owned(),
        reason: crate::error_chain(e),
    };
    let config = EtcdConfig::from_endpoints(addr).map_err(|e| failed(&e))?;
    let registry = EtcdRegistry::connect(config)
        .await
        .map_err(|e| failed(&e))?;
    Ok(Arc::new(registry))
}

#[cfg(not(feature = "etcd"))]
async fn etcd(_addr: &str) -> Result<Arc<dyn Registry>, RegistrySetupError> {
    Err(RegistrySetupError::NotBuilt("etcd"))
}

#[cfg(feature = "consul")]
async fn consul(addr: &str) -> Result<Arc<dyn Registry>, RegistrySetupError> {
    use fyerrpc_registry_consul::{ConsulConfig, ConsulRegistry};
    let registry = ConsulRegistry::new(ConsulConfig::from_address(addr)).map_err(|e| {
        RegistrySetupError::Connect {
            kind: "consul",
            addr: addr.to_owned(),
            reason: crate::error_chain(&e),
        }
    })?;
    Ok(Arc::new(registry))
}

#[cfg(not(feature = "consul"))]
async fn consul(_addr: &str) -> Result<Arc<dyn Registry>, RegistrySetupError> {
    Err(RegistrySetupError::NotBuilt("consul"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_lists_are_parsed_and_checked() {
        let r = open(RegistryKind::Static, None, "S", Some("a:1,b:2"))
            .await
            .unwrap();
        assert_eq!(r.discover("S", None).await.unwrap().len(), 2);
        assert!(open(RegistryKind::Static, None, "S", Some("nope"))
            .await
            .is_err());
        let empty = open(RegistryKind::Static, None, "S", None).await.unwrap();
        assert!(empty.discover("S", None).await.unwrap().is_empty());
    }

    #[cfg(not(feature = "etcd"))]
    #[tokio::test]
    async fn missing_backends_say_how_to_get_them() {
        let err = open(RegistryKind::Etcd, None, "S", None)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("--features etcd"), "{err}");
    }
}
