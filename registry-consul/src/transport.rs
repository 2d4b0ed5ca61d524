//! HTTP/1.1 requests to the Consul HTTP API over hyper, plain or over TLS
//! (rustls): base URI, ACL header, timeouts, size limit, and the error type
//! of every call.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fyerrpc::RegistryError;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::{ConfigError, TlsConfig};

/// Largest response body accepted (a health listing of a big service).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Longest part of an error body kept in an [`ApiError`].
const MAX_MESSAGE: usize = 512;
/// Timeout of establishing a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call to the Consul HTTP API failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request could not be sent or the answer not read.
    #[error("cannot reach Consul at {uri}: {reason}")]
    Transport {
        /// The request URI (without the token).
        uri: String,
        /// What failed.
        reason: String,
    },
    /// No answer within the request timeout.
    #[error("Consul did not answer {uri} within {timeout:?}")]
    Timeout {
        /// The request URI.
        uri: String,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// Consul answered with an error status.
    #[error("Consul answered {uri} with {status}: {message}")]
    Status {
        /// The request URI.
        uri: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body.
        message: String,
    },
    /// The answer is not the JSON the endpoint documents.
    #[error("unexpected answer from Consul to {uri}: {reason}")]
    Decode {
        /// The request URI.
        uri: String,
        /// What did not decode.
        reason: String,
    },
}

impl ApiError {
    /// The HTTP status of a [`ApiError::Status`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether Consul says the named service or check does not exist: 404,
    /// or the 500 of older agents ("Unknown check", "CheckID ... does not
    /// have associated TTL" from Consul 1.8 for a check it forgot).
    pub fn is_unknown(&self) -> bool {
        match self {
            Self::Status {
                status, message, ..
            } => {
                let message = message.to_ascii_lowercase();
                *status == 404
                    || (*status == 500
                        && (message.contains("unknown")
                            || message.contains("does not have associated ttl")))
            }
            _ => false,
        }
    }
}

impl From<ApiError> for RegistryError {
    fn from(e: ApiError) -> Self {
        match e.status() {
            None => match e {
                ApiError::Decode { .. } => RegistryError::Other(e.to_string()),
                _ => RegistryError::Unavailable(e.to_string()),
            },
            Some(401 | 403) => RegistryError::Refused(e.to_string()),
            Some(400) => RegistryError::InvalidArgument(e.to_string()),
            Some(429 | 502..=504) => RegistryError::Unavailable(e.to_string()),
            Some(_) => RegistryError::Other(e.to_string()),
        }
    }
}

/// The scheme, authority and path prefix of the Consul HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseUri {
    https: bool,
    authority: String,
    prefix: String,
}

impl BaseUri {
    /// Parses `http[s]://host[:port][/prefix]`; a missing scheme means
    /// `http`.
    pub(crate) fn parse(address: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::InvalidAddress {
            address: address.to_owned(),
            reason: reason.to_owned(),
        };
        let full = if address.contains("://") {
            address.to_owned()
        } else {
            format!("http://{address}")
        };
        let uri: Uri = full
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(invalid("the scheme must be http or https")),
        };
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("credentials belong in the token option"));
        }
        let port = authority
            .as_str()
            .get(authority.host().len()..)
            .and_then(|rest| rest.strip_prefix(':'));
        if port.is_some_and(|p| !p.parse::<u16>().is_ok_and(|p| p != 0)) {
            return Err(invalid("the port must be in 1..=65535"));
        }
        if uri.query().is_some() {
            return Err(invalid("a query string is not allowed"));
        }
        Ok(Self {
            https,
            authority: authority.as_str().to_owned(),
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// Whether the API is reached over TLS.
    pub(crate) fn is_https(&self) -> bool {
        self.https
    }

    /// The URI of `path` (starting with `/`) with `query` pairs, encoded.
    fn uri(&self, path: &str, query: &[(&str, String)]) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let mut s = format!("{scheme}://{}{}{}", self.authority, self.prefix, path);
        for (i, (k, v)) in query.iter().enumerate() {
            s.push(if i == 0 { '?' } else { '&' });
            s.push_str(k);
            if !v.is_empty() {
                s.push('=');
                s.push_str(&encode(v));
            }
        }
        s
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters and `:`.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// One answer: `X-Consul-Index`, whether ACLs filtered it, and the body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) index: Option<u64>,
    pub(crate) filtered_by_acls: bool,
    pub(crate) body: Bytes,
}

/// One request to send.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: Vec<(&'a str, String)>,
    pub(crate) body: Option<Vec<u8>>,
}

impl<'a> Call<'a> {
    pub(crate) fn new(method: Method, path: String) -> Self {
        Self {
            method,
            path,
            query: Vec::new(),
            body: None,
        }
    }
    pub(crate) fn query(mut self, key: &'a str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }
    pub(crate) fn json(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }
}

/// Sends requests to one Consul agent; cheap to clone (pooled connections).
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: BaseUri,
    token: Option<HeaderValue>,
    timeout: Duration,
}

/// The rustls client configuration of `tls`: its CA (or the system's
/// roots), its client certificate if any.
fn tls_client_config(tls: &TlsConfig) -> Result<rustls::ClientConfig, ConfigError> {
    let fail = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        ConfigError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| fail("cannot read the CA file", path, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail("invalid PEM in the CA file", path, &e))?;
            if certs.is_empty() {
                return Err(ConfigError::Tls(format!(
                    "no certificate in the CA file {}",
                    path.display()
                )));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| fail("unusable CA certificate in", path, &e))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "cannot load a system root certificate");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(ConfigError::Tls(
                    "no CA file given and no system root certificates found".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| fail("cannot read the client certificate", cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail("invalid PEM in the client certificate", cert, &e))?;
            if chain.is_empty() {
                return Err(ConfigError::Tls(format!(
                    "no certificate in {}",
                    cert.display()
                )));
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| fail("cannot read a private key from", key, &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ConfigError::Tls(format!("client certificate and key: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

impl Transport {
    pub(crate) fn new(
        base: BaseUri,
        token: Option<&str>,
        timeout: Duration,
        tls: &TlsConfig,
    ) -> Result<Self, ConfigError> {
        let token = token
            .map(|t| {
                let mut v = HeaderValue::from_str(t).map_err(|_| ConfigError::InvalidValue {
                    field: "token",
                    reason: "must be printable ASCII without spaces",
                })?;
                v.set_sensitive(true);
                Ok::<_, ConfigError>(v)
            })
            .transpose()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.enforce_http(false);
        // Plain HTTP needs no TLS setup (and no system roots).
        let tls_config = if base.is_https() {
            tls_client_config(tls)?
        } else {
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::Tls(e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
        };
        let builder = HttpsConnectorBuilder::new().with_tls_config(tls_config);
        let builder = if base.is_https() {
            builder.https_only()
        } else {
            builder.https_or_http()
        };
        let builder = match &tls.server_name {
            Some(name) => {
                let name = ServerName::try_from(name.clone())
                    .map_err(|e| ConfigError::Tls(format!("invalid server name {name:?}: {e}")))?;
                builder.with_server_name_resolver(FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        let connector = builder.enable_http1().wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self {
            client,
            base,
            token,
            timeout,
        })
    }

    /// The same transport with another request timeout.
    pub(crate) fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `call` and returns a 2xx answer, or the error.
    pub(crate) async fn send(&self, call: Call<'_>) -> Result<Reply, ApiError> {
        let uri = self.base.uri(&call.path, &call.query);
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(&uri, call)).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::Timeout { uri, timeout }),
        }
    }

    async fn exchange(&self, uri: &str, call: Call<'_>) -> Result<Reply, ApiError> {
        let transport = |reason: String| ApiError::Transport {
            uri: uri.to_owned(),
            reason,
        };
        let mut builder = Request::builder().method(call.method).uri(uri);
        if let Some(token) = &self.token {
            builder = builder.header("X-Consul-Token", token.clone());
        }
        if call.body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let body = Full::new(Bytes::from(call.body.unwrap_or_default()));
        let request = builder.body(body).map_err(|e| transport(e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| transport(error_chain(&e)))?;
        let status = response.status();
        let index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let filtered_by_acls = response
            .headers()
            .get("X-Consul-Results-Filtered-By-ACLs")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| transport(format!("reading the answer: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(status_error(uri, status, &body));
        }
        Ok(Reply {
            index,
            filtered_by_acls,
            body,
        })
    }
}

fn status_error(uri: &str, status: StatusCode, body: &[u8]) -> ApiError {
    let text = String::from_utf8_lossy(body);
    let message: String = text.trim().chars().take(MAX_MESSAGE).collect();
    ApiError::Status {
        uri: uri.to_owned(),
        status: status.as_u16(),
        message,
    }
}

/// `e` and its sources, joined: hyper's top-level errors say little.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let _ = write!(s, ": {inner}");
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_uris() {
        let b = BaseUri::parse("127.0.0.1:8500").unwrap();
        assert!(BaseUri::parse("http://[::1]:8500").is_ok());
        assert!(BaseUri::parse("http://consul").is_ok());
        assert_eq!(b.uri("/v1/x", &[]), "http://127.0.0.1:8500/v1/x");
        let b = BaseUri::parse("http://consul.local:8500/api/").unwrap();
        assert_eq!(
            b.uri("/v1/x", &[("passing", String::new()), ("dc", "d c".into())]),
            "http://consul.local:8500/api/v1/x?passing&dc=d%20c"
        );
        let b = BaseUri::parse("https://h:8501").unwrap();
        assert!(b.is_https());
        assert_eq!(b.uri("/v1/x", &[]), "https://h:8501/v1/x");
        assert!(BaseUri::parse("http://h:1?x=1").is_err());
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode("service:a b/c?"), "service:a%20b%2Fc%3F");
        assert_eq!(encode("ü"), "%C3%BC");
    }

    #[test]
    fn classifies_errors() {
        let e = |status, message: &str| ApiError::Status {
            uri: "u".into(),
            status,
            message: message.into(),
        };
        assert!(e(404, "Unknown check ID").is_unknown());
        assert!(e(500, "Unknown check \"service:a\"").is_unknown());
        assert!(e(500, "CheckID \"service:a\" does not have associated TTL").is_unknown());
        assert!(!e(500, "rpc error").is_unknown());
        assert!(matches!(
            RegistryError::from(e(403, "Permission denied")),
            RegistryError::Refused(_)
        ));
        assert!(matches!(
            RegistryError::from(ApiError::Timeout {
                uri: "u".into(),
                timeout: Duration::from_secs(1)
            }),
            RegistryError::Unavailable(_)
        ));
    }
}
