//! TLS settings of the client (feature `tls`).
//!
//! [`ClientTlsConfig`] holds what a client needs to talk TLS to every instance:
//! the CA roots that instance certificates must chain to (PEM certificates,
//! and/or the system's roots), an optional client identity for mutual TLS,
//! and an optional fixed name to verify certificates against. Pass it to
//! [`ClientBuilder::tls`](crate::ClientBuilder::tls).
//!
//! Servers use tonic's `ServerTlsConfig` through
//! [`Lifecycle::tls`](crate::server::Lifecycle::tls).
//!
//! The name an instance's certificate is verified against is, in order: the
//! instance's `tls_server_name` metadata
//! ([`TLS_SERVER_NAME_METADATA_KEY`](crate::client::TLS_SERVER_NAME_METADATA_KEY)),
//! the fixed [`domain`](ClientTlsConfig::domain), and the host of the
//! instance's address (a DNS name or an IP address).
//!
//! ```no_run
//! use fyerrpc::tls::ClientTlsConfig;
//! # fn demo() -> Result<(), fyerrpc::tls::TlsError> {
//! let tls = ClientTlsConfig::new()
//!     .ca_file("certs/ca.pem")?
//!     // mutual TLS:
//!     .identity_files("certs/client.pem", "certs/client.key")?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Why TLS settings could not be read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {what} from {path}: {source}")]
    Read {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// PEM text holds no usable item of the expected kind, or a bad one.
    #[error("invalid {what}: {reason}")]
    Pem {
        /// What the text should hold.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A name to verify certificates against is not a DNS name or an IP
    /// address.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// rustls rejected the settings (e.g. a key that does not match the
    /// certificate, or no root at all).
    #[error("TLS settings rejected: {0}")]
    Rustls(String),
}

/// The TLS settings of a client: roots, optional identity, optional fixed
/// server name. See the [module docs](self).
#[derive(Clone, Default)]
pub struct ClientTlsConfig {
    roots: Vec<CertificateDer<'static>>,
    native_roots: bool,
    identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    domain: Option<String>,
}

impl fmt::Debug for ClientTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never prints the private key.
        f.debug_struct("ClientTlsConfig")
            .field("roots", &self.roots.len())
            .field("native_roots", &self.native_roots)
            .field("identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn certificates(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            reason: "no PEM certificate found".to_owned(),
        });
    }
    Ok(certs)
}

impl ClientTlsConfig {
    /// Settings with no root yet: add some with [`ca_pem`](Self::ca_pem),
    /// [`ca_file`](Self::ca_file) or [`with_native_roots`](Self::with_native_roots).
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the CA certificates in `pem` (one or more PEM blocks).
    pub fn ca_pem(mut self, pem: impl AsRef<[u8]>) -> Result<Self, TlsError> {
        self.roots
            .extend(certificates("CA certificate", pem.as_ref())?);
        Ok(self)
    }

    /// Trusts the CA certificates in the PEM file at `path`.
    pub fn ca_file(self, path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let pem = read("CA certificate", path.as_ref())?;
        self.ca_pem(pem)
    }

    /// Also trusts the operating system's root certificates.
    pub fn with_native_roots(mut self) -> Self {
        self.native_roots = true;
        self
    }

    /// Presents this certificate chain and private key (PEM) to instances
    /// that ask for one (mutual TLS).
    pub fn identity_pem(
        mut self,
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Result<Self, TlsError> {
        let chain = certificates("client certificate", cert_pem.as_ref())?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_ref()).map_err(|e| TlsError::Pem {
            what: "client private key",
            reason: e.to_string(),
        })?;
        self.identity = Some((chain, Arc::new(key)));
        Ok(self)
    }

    /// Like [`identity_pem`](Self::identity_pem), from PEM files.
    pub fn identity_files(
        self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let cert = read("client certificate", cert.as_ref())?;
        let key = read("client private key", key.as_ref())?;
        self.identity_pem(cert, key)
    }

    /// Verifies every instance's certificate against this name instead of
    /// the host of its address (an instance's `tls_server_name` metadata
    /// still wins).
    pub fn domain(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }

    /// The fixed name certificates are verified against, if any.
    pub fn domain_name(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// Whether a client identity is set (mutual TLS).
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// The rustls configuration: roots, identity, ALPN `h2`, ring provider.
    pub(crate) fn build(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut store = rustls::RootCertStore::empty();
        for cert in &self.roots {
            store.add(cert.clone()).map_err(|e| TlsError::Pem {
                what: "CA certificate",
                reason: e.to_string(),
            })?;
        }
        if self.native_roots {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "could not load some system root certificates");
            }
            let (_added, ignored) = store.add_parsable_certificates(found.certs);
            if ignored > 0 {
                tracing::debug!(ignored, "system root certificates rustls cannot use");
            }
        }
        if store.is_empty() {
            return Err(TlsError::Rustls(
                "no CA root: add a CA certificate or the system roots".to_owned(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_root_certificates(store);
        let mut config = match &self.identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| TlsError::Rustls(e.to_string()))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The name to verify `host`'s certificate against, as rustls wants it.
pub(crate) fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    let trimmed = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(trimmed.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unusable_settings() {
        assert!(matches!(
            ClientTlsConfig::new().ca_pem("not a certificate"),
            Err(TlsError::Pem { .. })
        ));
        assert!(matches!(
            ClientTlsConfig::new().ca_file("/nonexistent/ca.pem"),
            Err(TlsError::Read { .. })
        ));
        assert!(matches!(
            ClientTlsConfig::new().build(),
            Err(TlsError::Rustls(_))
        ));
        assert!(matches!(
            server_name("bad name!"),
            Err(TlsError::ServerName(_))
        ));
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("[::1]").is_ok());
        assert!(server_name("greet.internal").is_ok());
        let dbg = format!("{:?}", ClientTlsConfig::new().domain("x"));
        assert!(dbg.contains("identity: false"), "{dbg}");
    }
}
