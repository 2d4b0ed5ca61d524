//! TLS flags of `greet-server` and `greet-client` (feature `tls`, on by
//! default).

use std::path::{Path, PathBuf};

use clap::Args;
use fyerrpc::tls::{ClientTlsConfig, TlsError};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Why TLS flags could not be turned into settings.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read.
    #[error("cannot read {flag} {path}: {source}")]
    Read {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The client's certificates or key are unusable.
    #[error(transparent)]
    Client(#[from] TlsError),
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// `greet-server`'s TLS flags: serve TLS with `--tls-cert` and `--tls-key`,
/// mutual TLS with `--tls-client-ca` too.
#[derive(Debug, Clone, Default, Args)]
pub struct ServerTlsArgs {
    /// PEM certificate chain of the server; with --tls-key, serves TLS only.
    #[arg(long, env = "FYERRPC_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "FYERRPC_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that clients' certificates must chain to:
    /// requires a client certificate (mutual TLS).
    #[arg(long, env = "FYERRPC_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    /// The server's TLS settings, or `None` for plaintext.
    pub fn config(&self) -> Result<Option<ServerTlsConfig>, TlsSetupError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let identity = Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?);
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.tls_client_ca {
            config = config.client_ca_root(Certificate::from_pem(read("--tls-client-ca", ca)?));
        }
        Ok(Some(config))
    }
}

/// `greet-client`'s TLS flags: TLS with `--tls-ca`, a client certificate
/// for mutual TLS with `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientTlsArgs {
    /// PEM CA certificate(s) the servers' certificates must chain to:
    /// connects over TLS.
    #[arg(long, env = "FYERRPC_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate chain, for servers that require one.
    #[arg(long, env = "FYERRPC_TLS_CLIENT_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "FYERRPC_TLS_CLIENT_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Name to verify every server's certificate against [default: the
    /// host of its address, or its tls_server_name metadata].
    #[arg(long, env = "FYERRPC_TLS_DOMAIN", requires = "tls_ca")]
    pub tls_domain: Option<String>,
}

impl ClientTlsArgs {
    /// The client's TLS settings, or `None` for plaintext.
    pub fn config(&self) -> Result<Option<ClientTlsConfig>, TlsSetupError> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let mut config = ClientTlsConfig::new().ca_pem(read("--tls-ca", ca)?)?;
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config = config.identity_pem(read("--tls-cert", cert)?, read("--tls-key", key)?)?;
        }
        if let Some(domain) = &self.tls_domain {
            config = config.domain(domain);
        }
        Ok(Some(config))
    }
}
