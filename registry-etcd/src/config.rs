//! [`EtcdConfig`]: where etcd is and how to talk to it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use fyerrpc::instance::{split_host_port, DEFAULT_PREFIX};

use crate::error::EtcdError;

/// Default time allowed to open a connection to an etcd member.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time allowed for one etcd request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default interval of HTTP/2 pings that detect a dead connection.
pub const DEFAULT_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// etcd's default `--grpc-keepalive-min-time`: a client that pings more
/// often has its connection closed ("too many pings").
const ETCD_MIN_PING_INTERVAL: Duration = Duration::from_secs(5);

/// How to reach an etcd cluster.
///
/// ```
/// use std::time::Duration;
/// use fyerrpc_registry_etcd::EtcdConfig;
///
/// let config = EtcdConfig::from_endpoints("http://10.0.0.1:2379, http://10.0.0.2:2379")?
///     .with_prefix("/myorg/services")
///     .with_user("fyerrpc", "secret")
///     .with_request_timeout(Duration::from_secs(3));
/// assert_eq!(config.endpoints.len(), 2);
/// # Ok::<(), fyerrpc_registry_etcd::EtcdError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// Client URLs of the cluster's members: `http://host:port`,
    /// `https://host:port` or `host:port`. Requests are balanced over all of
    /// them, so a cluster keeps working while one member is down.
    pub endpoints: Vec<String>,
    /// Key prefix of the registry (see the [crate docs](crate)); default
    /// [`DEFAULT_PREFIX`].
    pub prefix: String,
    /// User name for etcd authentication (needs [`password`](Self::password)).
    pub user: Option<String>,
    /// Password of [`user`](Self::user).
    pub password: Option<String>,
    /// TLS settings; endpoints must then use `https://` (or no scheme).
    /// `https://` endpoints without TLS settings trust the system's CAs.
    pub tls: Option<TlsConfig>,
    /// Time allowed to open a connection to a member.
    pub connect_timeout: Duration,
    /// Time allowed for one request (get, put, grant, revoke ...).
    pub request_timeout: Duration,
    /// Interval of HTTP/2 pings on connections with open streams; a member
    /// that does not answer one within
    /// [`request_timeout`](Self::request_timeout) is taken as dead and its
    /// streams are re-established elsewhere. etcd closes connections that
    /// ping more often than its `--grpc-keepalive-min-time` (5 s unless
    /// changed), so keep this at 5 s or more. Idle connections are not
    /// pinged (etcd counts that as abuse too).
    pub keep_alive_interval: Duration,
}

/// TLS settings for talking to etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// PEM file of the CA that signed the members' certificates; without
    /// one, the system's trusted CAs are used.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (with [`key_file`](Self::key_file)) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of [`cert_file`](Self::cert_file).
    pub key_file: Option<PathBuf>,
    /// Name to verify the members' certificates against, when it differs from
    /// the endpoint host.
    pub domain: Option<String>,
}

impl TlsConfig {
    /// TLS trusting the CA in `ca_file`.
    pub fn with_ca_file(mut self, ca_file: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(ca_file.into());
        self
    }

    /// Presents a client certificate (mutual TLS).
    pub fn with_client_cert(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.cert_file = Some(cert_file.into());
        self.key_file = Some(key_file.into());
        self
    }

    /// Verifies the members' certificates against `domain`.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Reads the files into the client's TLS options.
    fn load(&self) -> Result<TlsOptions, EtcdError> {
        let mut tls = match &self.ca_file {
            Some(ca) => TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?)),
            None => TlsOptions::new().with_native_roots(),
        };
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(EtcdError::InvalidConfig(
                    "a TLS client certificate needs both a cert file and a key file".into(),
                ))
            }
        }
        if let Some(domain) = &self.domain {
            tls = tls.domain_name(domain.clone());
        }
        Ok(tls)
    }
}

/// Checks one endpoint, `[http[s]://]host:port[/]`; returns its scheme.
fn parse_endpoint(endpoint: &str) -> Result<Option<&str>, EtcdError> {
    let invalid = |reason: &str| EtcdError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => (Some(scheme), rest),
        Some(_) => return Err(invalid("the scheme must be http or https")),
        None => (None, endpoint),
    };
    split_host_port(rest.trim_end_matches('/'))
        .map(|_| scheme)
        .ok_or_else(|| invalid("expected host:port"))
}

fn read(path: &Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

impl EtcdConfig {
    /// A configuration for the given endpoints, with the defaults: prefix
    /// [`DEFAULT_PREFIX`], no authentication, no TLS, timeouts
    /// [`DEFAULT_CONNECT_TIMEOUT`] and [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: DEFAULT_PREFIX.to_owned(),
            user: None,
            password: None,
            tls: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            keep_alive_interval: DEFAULT_KEEP_ALIVE_INTERVAL,
        }
    }

    /// A configuration from a comma-separated endpoint list, as given on a
    /// command line: `"http://a:2379,http://b:2379"`. Blank entries are
    /// ignored; each entry is checked.
    pub fn from_endpoints(list: &str) -> Result<Self, EtcdError> {
        let endpoints: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(EtcdError::InvalidConfig("no etcd endpoint given".into()));
        }
        for endpoint in &endpoints {
            parse_endpoint(endpoint)?;
        }
        Ok(Self::new(endpoints))
    }

    /// Sets the key prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Authenticates as `user` with `password`.
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Talks TLS with the given settings.
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the HTTP/2 keep-alive interval (5 s or more, see
    /// [`keep_alive_interval`](Self::keep_alive_interval)).
    pub fn with_keep_alive_interval(mut self, interval: Duration) -> Self {
        self.keep_alive_interval = interval;
        self
    }

    /// Checks the configuration without connecting.
    pub fn validate(&self) -> Result<(), EtcdError> {
        if self.endpoints.is_empty() {
            return Err(EtcdError::InvalidConfig("no etcd endpoint given".into()));
        }
        let tls = self.uses_tls()?;
        if let Some(plain) = self
            .endpoints
            .iter()
            .find(|e| e.starts_with("http://") && tls)
        {
            return Err(EtcdError::InvalidEndpoint {
                endpoint: plain.clone(),
                reason: "TLS is on: use https:// for every endpoint".into(),
            });
        }
        if !self.prefix.starts_with('/') {
            return Err(EtcdError::InvalidConfig(format!(
                "the key prefix {:?} must start with '/'",
                self.prefix
            )));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(EtcdError::InvalidConfig(
                "etcd authentication needs both a user and a password".into(),
            ));
        }
        let zero = [
            ("connect timeout", self.connect_timeout),
            ("request timeout", self.request_timeout),
            ("keep-alive interval", self.keep_alive_interval),
        ];
        match zero.iter().find(|(_, d)| d.is_zero()) {
            Some((what, _)) => Err(EtcdError::InvalidConfig(format!(
                "the {what} must be positive"
            ))),
            None => Ok(()),
        }
    }

    /// Whether the client talks TLS: TLS settings are given or an endpoint
    /// is `https://`.
    fn uses_tls(&self) -> Result<bool, EtcdError> {
        let mut https = false;
        for endpoint in &self.endpoints {
            https |= parse_endpoint(endpoint)? == Some("https");
        }
        Ok(https || self.tls.is_some())
    }

    /// The etcd client options this configuration stands for.
    pub(crate) fn connect_options(&self) -> Result<ConnectOptions, EtcdError> {
        if self.keep_alive_interval < ETCD_MIN_PING_INTERVAL {
            tracing::warn!(interval = ?self.keep_alive_interval,
                "etcd closes connections that ping more often than every 5 s \
                 (--grpc-keepalive-min-time) unless told otherwise");
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_keep_alive(self.keep_alive_interval, self.request_timeout)
            // etcd does not permit pings without streams.
            .with_keep_alive_while_idle(false)
            // A member cut off from the cluster's leader fails watches and
            // keep-alives instead of holding them silently.
            .with_require_leader(true);
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if self.uses_tls()? {
            let tls = self.tls.clone().unwrap_or_default();
            options = options.with_tls(tls.load()?);
        }
        Ok(options)
    }

    /// The endpoints as the client takes them (no trailing slash).
    pub(crate) fn client_endpoints(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .map(|e| e.trim_end_matches('/').to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoint_lists() {
        let c =
            EtcdConfig::from_endpoints(" http://a:2379, ,127.0.0.1:2380,http://[::1]:1/ ").unwrap();
        assert_eq!(
            c.endpoints,
            ["http://a:2379", "127.0.0.1:2380", "http://[::1]:1/"]
        );
        assert_eq!(c.client_endpoints()[2], "http://[::1]:1");
        assert_eq!(c.prefix, DEFAULT_PREFIX);
    }

    #[test]
    fn rejects_bad_endpoints() {
        for bad in [
            "",
            " , ",
            "http://",
            "http://a",
            "ftp://a:1",
            "a:0",
            "a b:1",
        ] {
            assert!(EtcdConfig::from_endpoints(bad).is_err(), "{bad:?}");
        }
        let tls = EtcdConfig::new(["http://a:1"]).with_tls(TlsConfig::default());
        assert!(tls.validate().is_err(), "TLS over http://");
        let mixed = EtcdConfig::new(["https://a:1", "http://b:1"]);
        assert!(mixed.validate().is_err(), "https:// and http:// mixed");
        let tls = EtcdConfig::new(["https://a:1", "b:1"]).with_tls(TlsConfig::default());
        assert!(tls.validate().is_ok());
        let system_roots = EtcdConfig::from_endpoints("https://a:1").unwrap();
        assert!(system_roots.validate().is_ok());
        assert!(system_roots.connect_options().is_ok());
    }

    #[test]
    fn rejects_half_credentials_and_zero_timeouts() {
        let mut c = EtcdConfig::new(["a:1"]);
        c.user = Some("u".into());
        assert!(c.validate().is_err());
        let c = EtcdConfig::new(["a:1"]).with_request_timeout(Duration::ZERO);
        assert!(c.validate().is_err());
        let c = EtcdConfig::new(["a:1"]).with_prefix("relative");
        assert!(c.validate().is_err());
    }

    #[test]
    fn reports_missing_tls_files() {
        let tls = TlsConfig::default().with_ca_file("/nonexistent/ca.pem");
        let c = EtcdConfig::new(["https://a:1"]).with_tls(tls);
        assert!(matches!(
            c.connect_options(),
            Err(EtcdError::ReadFile { .. })
        ));
        let half = TlsConfig {
            cert_file: Some("c.pem".into()),
            ..TlsConfig::default()
        };
        let c = EtcdConfig::new(["https://a:1"]).with_tls(half);
        assert!(matches!(
            c.connect_options(),
            Err(EtcdError::InvalidConfig(_))
        ));
    }
}
