//! [`ConsulConfig`]: where the Consul agent is and how to talk to it.

use std::path::PathBuf;
use std::time::Duration;

/// Default HTTP address of the local Consul agent.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8500";
/// Default wait of a blocking query. It also bounds how long a watch takes to
/// notice a restarted agent: the agent starts its index sequence over, and a
/// query blocked on an index from before the restart only returns at the end
/// of its wait (then the index is seen going backwards and reset).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// Default timeout of one HTTP request (above [`DEFAULT_WAIT`] plus Consul's
/// jitter, so that blocking queries can run their full wait).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Default interval of the optional HTTP check: a process that stopped
/// answering fails it within this long (its timeout is the same, capped at
/// [`MAX_HTTP_TIMEOUT`]).
pub const DEFAULT_HTTP_INTERVAL: Duration = Duration::from_secs(2);
/// Longest timeout of one HTTP check poll.
pub const MAX_HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Default timeout of the deregistration at shutdown: short, so that a hung
/// agent does not hold a stopping server (the entry then expires with its
/// checks).
pub const DEFAULT_DEREGISTER_TIMEOUT: Duration = Duration::from_secs(3);
/// Default `DeregisterCriticalServiceAfter`: Consul's minimum (its reaper runs
/// every 30 seconds, so removal happens up to half a minute later).
pub const DEFAULT_DEREGISTER_CRITICAL_AFTER: Duration = Duration::from_secs(60);

/// Why a [`ConsulConfig`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The address is not an `http[s]://host:port[/path]` URI.
    #[error("invalid Consul address {address:?}: {reason}")]
    InvalidAddress {
        /// The rejected address.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request timeout does not leave room for a blocking query's wait.
    #[error(
        "request timeout {request_timeout:?} must exceed the blocking wait {wait:?} \
         plus Consul's jitter of wait/16"
    )]
    TimeoutBelowWait {
        /// The configured request timeout.
        request_timeout: Duration,
        /// The configured wait.
        wait: Duration,
    },
    /// A duration that must be positive is zero.
    #[error("{0} must be positive")]
    ZeroDuration(&'static str),
    /// A TLS file could not be read, or holds no usable certificate or key.
    #[error("Consul TLS: {0}")]
    Tls(String),
    /// The token or datacenter holds characters that cannot be sent.
    #[error("invalid {field}: {reason}")]
    InvalidValue {
        /// Which option.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The health checks attached to every registration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckConfig {
    /// Attach a TTL check (TTL = [`RegisterOptions::ttl`]) that the
    /// registration handle keeps passing. On by default: it is what removes
    /// an instance whose process died.
    ///
    /// [`RegisterOptions::ttl`]: fyerrpc::RegisterOptions::ttl
    pub ttl_check: bool,
    /// URL of an HTTP check the agent polls itself (e.g. the server's
    /// `/health`). [`RegisterOptions::health_url`] takes precedence.
    ///
    /// [`RegisterOptions::health_url`]: fyerrpc::RegisterOptions::health_url
    pub http_url: Option<String>,
    /// Interval of the HTTP check. Default [`DEFAULT_HTTP_INTERVAL`].
    pub http_interval: Duration,
    /// How long a check may stay critical before the agent removes the
    /// service. Default [`DEFAULT_DEREGISTER_CRITICAL_AFTER`].
    pub deregister_critical_service_after: Duration,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            ttl_check: true,
            http_url: None,
            http_interval: DEFAULT_HTTP_INTERVAL,
            deregister_critical_service_after: DEFAULT_DEREGISTER_CRITICAL_AFTER,
        }
    }
}

/// TLS to the Consul agent's HTTPS port: which CA to trust, the client
/// certificate to present (agents with `verify_incoming`), and the name to
/// check the agent's certificate against. The counterparts of Consul's own
/// `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY` and
/// `CONSUL_TLS_SERVER_NAME`.
///
/// Used when the address is `https://...`.
///
/// ```
/// use fyerrpc_registry_consul::{ConsulConfig, TlsConfig};
///
/// let tls = TlsConfig::default()
///     .with_ca_file("/etc/consul.d/consul-agent-ca.pem")
///     .with_client_cert("/etc/consul.d/client.pem", "/etc/consul.d/client-key.pem")
///     .with_server_name("localhost");
/// let config = ConsulConfig::from_address("https://127.0.0.1:8501").with_tls(tls);
/// assert!(config.validate().is_ok()); // the files are read when the client is built
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TlsConfig {
    /// PEM file of the CA(s) that signed the agent's certificate. The
    /// system's roots when `None`.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, presented to the agent.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of [`cert_file`](Self::cert_file).
    pub key_file: Option<PathBuf>,
    /// Name the agent's certificate must hold; the address's host when
    /// `None`.
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// Trusts the CA(s) in this PEM file instead of the system's roots.
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }
    /// Presents this client certificate (PEM chain and PEM key).
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert_file = Some(cert.into());
        self.key_file = Some(key.into());
        self
    }
    /// Checks the agent's certificate against this name.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }
}

/// How to reach Consul. Build it with [`ConsulConfig::from_address`] or
/// [`Default`] and the `with_*` methods.
///
/// ```
/// use std::time::Duration;
/// use fyerrpc_registry_consul::ConsulConfig;
///
/// let config = ConsulConfig::from_address("http://127.0.0.1:8500")
///     .with_token("s3cr3t")
///     .with_datacenter("dc1")
///     .with_wait(Duration::from_secs(10));
/// assert!(config.validate().is_ok());
/// assert!(ConsulConfig::from_address("ftp://x").validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsulConfig {
    /// The agent's HTTP API, `http://host:port` or `https://host:port` (a
    /// path prefix is kept; a missing scheme means `http`). Default
    /// [`DEFAULT_ADDRESS`].
    pub address: String,
    /// TLS settings for an `https` address (ignored for `http`).
    pub tls: TlsConfig,
    /// ACL token, sent as `X-Consul-Token` on every request.
    pub token: Option<String>,
    /// Datacenter of catalog and health queries (`?dc=`); the agent's own
    /// by default. Registration always goes to the configured agent.
    pub datacenter: Option<String>,
    /// How long a blocking query waits for a change. Default
    /// [`DEFAULT_WAIT`].
    pub wait: Duration,
    /// Timeout of one HTTP request; must exceed `wait + wait/16` (Consul adds
    /// up to wait/16 of jitter). Default [`DEFAULT_REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// Timeout of the deregistration at shutdown (and of
    /// [`Registry::deregister`](fyerrpc::Registry::deregister)). Default
    /// [`DEFAULT_DEREGISTER_TIMEOUT`].
    pub deregister_timeout: Duration,
    /// Health checks attached to registrations.
    pub check: CheckConfig,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            address: DEFAULT_ADDRESS.to_owned(),
            token: None,
            datacenter: None,
            wait: DEFAULT_WAIT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            tls: TlsConfig::default(),
            deregister_timeout: DEFAULT_DEREGISTER_TIMEOUT,
            check: CheckConfig::default(),
        }
    }
}

impl ConsulConfig {
    /// The defaults with another agent address.
    pub fn from_address(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            ..Self::default()
        }
    }
    /// Sets the ACL token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
    /// Sets the datacenter of queries.
    pub fn with_datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.datacenter = Some(datacenter.into());
        self
    }
    /// Sets the blocking-query wait, raising the request timeout if it would
    /// no longer cover the wait.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self.request_timeout = self.request_timeout.max(min_request_timeout(wait));
        self
    }
    /// Sets the request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
    /// Sets the TLS settings (for an `https` address).
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = tls;
        self
    }
    /// Sets the timeout of deregistrations.
    pub fn with_deregister_timeout(mut self, timeout: Duration) -> Self {
        self.deregister_timeout = timeout;
        self
    }
    /// Sets the health checks.
    pub fn with_check(mut self, check: CheckConfig) -> Self {
        self.check = check;
        self
    }

    /// Checks the options without contacting Consul.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::transport::BaseUri::parse(&self.address)?;
        if self.wait.is_zero() {
            return Err(ConfigError::ZeroDuration("wait"));
        }
        if self.request_timeout <= self.wait + self.wait / 16 {
            return Err(ConfigError::TimeoutBelowWait {
                request_timeout: self.request_timeout,
                wait: self.wait,
            });
        }
        if self.deregister_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration("deregister_timeout"));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(ConfigError::Tls(
                "a client certificate needs its key, and a key its certificate".into(),
            ));
        }
        check_value("tls server name", self.tls.server_name.as_deref())?;
        if self.check.http_interval.is_zero() {
            return Err(ConfigError::ZeroDuration("http check interval"));
        }
        if self.check.deregister_critical_service_after.is_zero() {
            return Err(ConfigError::ZeroDuration(
                "deregister_critical_service_after",
            ));
        }
        check_value("token", self.token.as_deref())?;
        check_value("datacenter", self.datacenter.as_deref())?;
        Ok(())
    }
}

/// The smallest request timeout that covers a blocking query of `wait`.
fn min_request_timeout(wait: Duration) -> Duration {
    wait + wait / 16 + Duration::from_secs(5)
}

fn check_value(field: &'static str, value: Option<&str>) -> Result<(), ConfigError> {
    let Some(value) = value else { return Ok(()) };
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if !value.bytes().all(|b| b.is_ascii_graphic()) {
        Some("must be printable ASCII without spaces")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ConfigError::InvalidValue { field, reason }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(ConsulConfig::default().validate().is_ok());
        let c = ConsulConfig::from_address("127.0.0.1:8500");
        assert!(c.validate().is_ok());
        assert!(c.check.ttl_check);
        assert_eq!(
            c.check.deregister_critical_service_after,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn request_timeout_must_cover_the_wait() {
        let c = ConsulConfig::default().with_request_timeout(Duration::from_secs(10));
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TimeoutBelowWait { .. })
        ));
        let c = ConsulConfig::default().with_wait(Duration::from_secs(120));
        assert!(c.validate().is_ok(), "with_wait raises the timeout");
        assert!(ConsulConfig::default()
            .with_wait(Duration::ZERO)
            .validate()
            .is_err());
    }

    #[test]
    fn rejects_bad_values() {
        assert!(ConsulConfig::from_address("https://h:8501")
            .validate()
            .is_ok());
        let half = TlsConfig {
            cert_file: Some("c.pem".into()),
            ..TlsConfig::default()
        };
        assert!(ConsulConfig::default().with_tls(half).validate().is_err());
        for bad in [
            "ftp://h",
            "http://",
            "http://h:notaport",
            "http://h:0",
            "http://u:p@h:1",
            "h p:1",
        ] {
            assert!(ConsulConfig::from_address(bad).validate().is_err(), "{bad}");
        }
        assert!(ConsulConfig::default()
            .with_token("a b")
            .validate()
            .is_err());
        assert!(ConsulConfig::default().with_token("").validate().is_err());
        assert!(ConsulConfig::default()
            .with_datacenter("dc\n1")
            .validate()
            .is_err());
    }
}
