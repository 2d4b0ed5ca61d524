//! Choosing a registry backend from flags: `static` (built in), `file` (the
//! default feature `file`), `etcd` and `consul` (when built with the feature
//! of that name).

use std::sync::Arc;

use fyerrpc::Registry;
use fyerrpc_registry_static::{StaticError, StaticRegistry};

/// Default etcd endpoint.
pub const DEFAULT_ETCD_ADDR: &str = "http://127.0.0.1:2379";
/// Default Consul agent address.
pub const DEFAULT_CONSUL_ADDR: &str = "http://127.0.0.1:8500";
/// Default Consul agent address with `--consul-https`.
pub const DEFAULT_CONSUL_HTTPS_ADDR: &str = "https://127.0.0.1:8501";
/// File name of the default registry file, in the system's temporary
/// directory.
pub const DEFAULT_FILE_NAME: &str = "fyerrpc-registry.json";

/// Which registry backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RegistryKind {
    /// A fixed list of addresses; servers register in-process only.
    #[default]
    Static,
    /// etcd (leases with keep-alive).
    Etcd,
    /// Consul (agent services with TTL checks).
    Consul,
    /// A JSON file of instances, watched for changes (`--registry-addr` is
    /// its path).
    File,
}

impl RegistryKind {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Etcd => "etcd",
            Self::Consul => "consul",
            Self::File => "file",
        }
    }
}

/// The registry flags shared by `greet-server` and `greet-client`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryArgs {
    /// Registry backend.
    #[arg(long, value_enum, default_value_t = RegistryKind::Static, env = "FYERRPC_REGISTRY")]
    pub registry: RegistryKind,
    /// etcd endpoints (comma-separated), Consul agent address or registry
    /// file path [default: the backend's local default; for `file`,
    /// fyerrpc-registry.json in the temporary directory].
    #[arg(long, env = "FYERRPC_REGISTRY_ADDR")]
    pub registry_addr: Option<String>,
    /// etcd user name (with --etcd-password).
    #[arg(long, env = "FYERRPC_ETCD_USER", requires = "etcd_password")]
    pub etcd_user: Option<String>,
    /// etcd password.
    #[arg(
        long,
        env = "FYERRPC_ETCD_PASSWORD",
        hide_env_values = true,
        requires = "etcd_user"
    )]
    pub etcd_password: Option<String>,
    /// PEM file of the CA that signed the etcd members' certificates (turns on TLS).
    #[arg(long)]
    pub etcd_ca: Option<std::path::PathBuf>,
    /// PEM client certificate for etcd mutual TLS (with --etcd-key).
    #[arg(long, requires = "etcd_key")]
    pub etcd_cert: Option<std::path::PathBuf>,
    /// PEM private key of --etcd-cert.
    #[arg(long, requires = "etcd_cert")]
    pub etcd_key: Option<std::path::PathBuf>,
    /// Name to verify the etcd members' certificates against.
    #[arg(long)]
    pub etcd_domain: Option<String>,
    /// Consul ACL token.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    pub consul_token: Option<String>,
    /// Consul datacenter.
    #[arg(long)]
    pub consul_datacenter: Option<String>,
    /// Talk HTTPS to the Consul agent (an address without a scheme, and the
    /// default address, become https://...:8501).
    #[arg(long, env = "CONSUL_HTTP_SSL")]
    pub consul_https: bool,
    /// PEM file of the CA that signed the Consul agent's certificate
    /// [default: the system's roots].
    #[arg(long, env = "CONSUL_CACERT")]
    pub consul_ca: Option<std::path::PathBuf>,
    /// PEM client certificate for a Consul agent with verify_incoming (with
    /// --consul-key).
    #[arg(long, env = "CONSUL_CLIENT_CERT", requires = "consul_key")]
    pub consul_cert: Option<std::path::PathBuf>,
    /// PEM private key of --consul-cert.
    #[arg(long, env = "CONSUL_CLIENT_KEY", requires = "consul_cert")]
    pub consul_key: Option<std::path::PathBuf>,
    /// Name to verify the Consul agent's certificate against [default: the
    /// address's host].
    #[arg(long, env = "CONSUL_TLS_SERVER_NAME")]
    pub consul_tls_server_name: Option<String>,
}

impl RegistryArgs {
    /// The Consul agent address these flags name: `--registry-addr` (with
    /// `https://` added under `--consul-https` when it has no scheme), or
    /// the default for the scheme.
    pub fn consul_address(&self) -> String {
        match (&self.registry_addr, self.consul_https) {
            (Some(a), true) if !a.contains("://") => format!("https://{a}"),
            (Some(a), _) => a.clone(),
            (None, true) => DEFAULT_CONSUL_HTTPS_ADDR.to_owned(),
            (None, false) => DEFAULT_CONSUL_ADDR.to_owned(),
        }
    }

    /// The registry file these flags name: `--registry-addr`, or
    /// [`DEFAULT_FILE_NAME`] in the temporary directory.
    pub fn file_path(&self) -> std::path::PathBuf {
        match &self.registry_addr {
            Some(path) => path.into(),
            None => std::env::temp_dir().join(DEFAULT_FILE_NAME),
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

/// Opens the registry chosen by `args` (at its address, or the backend's
/// default).
///
/// For `static`, `servers` is the comma-separated `host:port` list of
/// `service` (clients); `None` gives an empty in-process list (servers,
/// whose registration is then local to the process).
pub async fn open(
    args: &RegistryArgs,
    service: &str,
    servers: Option<&str>,
) -> Result<Arc<dyn Registry>, RegistrySetupError> {
    match args.registry {
        RegistryKind::Static => Ok(match servers {
            Some(list) => StaticRegistry::from_addresses(service, list)?.into_dyn(),
            None => StaticRegistry::new().into_dyn(),
        }),
        RegistryKind::Etcd => etcd(args).await,
        RegistryKind::Consul => consul(args).await,
        RegistryKind::File => file(args),
    }
}

#[cfg(feature = "file")]
fn file(args: &RegistryArgs) -> Result<Arc<dyn Registry>, RegistrySetupError> {
    use fyerrpc_registry_file::FileRegistry;
    let path = args.file_path();
    // Created when missing, so that a client may start before any server.
    let registry = FileRegistry::create(&path).map_err(|e| RegistrySetupError::Connect {
        kind: "file",
        addr: path.display().to_string(),
        reason: crate::error_chain(&e),
    })?;
    Ok(registry.into_dyn())
}

#[cfg(not(feature = "file"))]
fn file(_args: &RegistryArgs) -> Result<Arc<dyn Registry>, RegistrySetupError> {
    Err(RegistrySetupError::NotBuilt("file"))
}

#[cfg(feature = "etcd")]
async fn etcd(args: &RegistryArgs) -> Result<Arc<dyn Registry>, RegistrySetupError> {
    use fyerrpc_registry_etcd::{EtcdConfig, EtcdRegistry, TlsConfig};
    let addr = args.registry_addr.as_deref().unwrap_or(DEFAULT_ETCD_ADDR);
    let failed = |e: &dyn std::error::Error| RegistrySetupError::Connect {
        kind: "etcd",
        addr: addr.to_owned(),
        reason: crate::error_chain(e),
    };
    let mut config = EtcdConfig::from_endpoints(addr).map_err(|e| failed(&e))?;
    if let (Some(user), Some(password)) = (&args.etcd_user, &args.etcd_password) {
        config = config.with_user(user.clone(), password.clone());
    }
    if args.etcd_ca.is_some() || args.etcd_cert.is_some() || args.etcd_domain.is_some() {
        let mut tls = TlsConfig::default();
        if let Some(ca) = &args.etcd_ca {
            tls = tls.with_ca_file(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&args.etcd_cert, &args.etcd_key) {
            tls = tls.with_client_cert(cert.clone(), key.clone());
        }
        if let Some(domain) = &args.etcd_domain {
            tls = tls.with_domain(domain.clone());
        }
        config = config.with_tls(tls);
    }
    let registry = EtcdRegistry::connect(config)
        .await
        .map_err(|e| failed(&e))?;
    Ok(Arc::new(registry))
}

#[cfg(not(feature = "etcd"))]
async fn etcd(_args: &RegistryArgs) -> Result<Arc<dyn Registry>, RegistrySetupError> {
    Err(RegistrySetupError::NotBuilt("etcd"))
}

#[cfg(feature = "consul")]
async fn consul(args: &RegistryArgs) -> Result<Arc<dyn Registry>, RegistrySetupError> {
    use fyerrpc_registry_consul::{ConsulConfig, ConsulRegistry, TlsConfig};
    let addr = args.consul_address();
    let mut config = ConsulConfig::from_address(addr.as_str());
    let mut tls = TlsConfig::default();
    if let Some(ca) = &args.consul_ca {
        tls = tls.with_ca_file(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&args.consul_cert, &args.consul_key) {
        tls = tls.with_client_cert(cert.clone(), key.clone());
    }
    if let Some(name) = &args.consul_tls_server_name {
        tls = tls.with_server_name(name.clone());
    }
    config = config.with_tls(tls);
    if let Some(token) = &args.consul_token {
        config = config.with_token(token.clone());
    }
    if let Some(dc) = &args.consul_datacenter {
        config = config.with_datacenter(dc.clone());
    }
    let registry = ConsulRegistry::new(config).map_err(|e| RegistrySetupError::Connect {
        kind: "consul",
        addr: addr.clone(),
        reason: crate::error_chain(&e),
    })?;
    Ok(Arc::new(registry))
}

#[cfg(not(feature = "consul"))]
async fn consul(_args: &RegistryArgs) -> Result<Arc<dyn Registry>, RegistrySetupError> {
    Err(RegistrySetupError::NotBuilt("consul"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_lists_are_parsed_and_checked() {
        let r = open(&RegistryArgs::default(), "S", Some("a:1,b:2"))
            .await
            .unwrap();
        assert_eq!(r.discover("S", None).await.unwrap().len(), 2);
        assert!(open(&RegistryArgs::default(), "S", Some("nope"))
            .await
            .is_err());
        let empty = open(&RegistryArgs::default(), "S", None).await.unwrap();
        assert!(empty.discover("S", None).await.unwrap().is_empty());
    }

    #[test]
    fn consul_addresses_follow_the_https_flag() {
        let mut args = RegistryArgs::default();
        assert_eq!(args.consul_address(), DEFAULT_CONSUL_ADDR);
        args.consul_https = true;
        assert_eq!(args.consul_address(), DEFAULT_CONSUL_HTTPS_ADDR);
        args.registry_addr = Some("consul.local:8501".into());
        assert_eq!(args.consul_address(), "https://consul.local:8501");
        args.registry_addr = Some("http://consul.local:8500".into());
        assert_eq!(args.consul_address(), "http://consul.local:8500");
    }

    #[cfg(feature = "file")]
    #[tokio::test]
    async fn the_file_registry_opens_the_named_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("instances.json");
        let args = RegistryArgs {
            registry: RegistryKind::File,
            registry_addr: Some(path.display().to_string()),
            ..RegistryArgs::default()
        };
        let r = open(&args, "S", Some("ignored:1")).await.unwrap();
        assert!(r.discover("S", None).await.unwrap().is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), "[\n]");
        let args = RegistryArgs {
            registry_addr: Some(dir.path().join("nope/x.json").display().to_string()),
            ..args
        };
        let err = open(&args, "S", None).await.err().unwrap();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn the_default_registry_file_is_in_the_temporary_directory() {
        let args = RegistryArgs::default();
        assert_eq!(
            args.file_path(),
            std::env::temp_dir().join(DEFAULT_FILE_NAME)
        );
    }

    #[cfg(not(feature = "etcd"))]
    #[tokio::test]
    async fn missing_backends_say_how_to_get_them() {
        let args = RegistryArgs {
            registry: RegistryKind::Etcd,
            ..RegistryArgs::default()
        };
        let err = open(&args, "S", None).await.err().unwrap();
        assert!(err.to_string().contains("--features etcd"), "{err}");
    }
}
