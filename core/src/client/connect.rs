//! How the client reaches one instance: how it is dialed (plaintext or TLS,
//! or not at all when its metadata declares the other protocol), for the
//! client's own HTTP/2 connection ([`http2`](super::http2)) or, when the
//! user's endpoint hook applies, for a lazily connected tonic channel.
//!
//! # Instance metadata read here
//!
//! | key | value | meaning |
//! |---|---|---|
//! | [`TLS_METADATA_KEY`] (`tls`) | `true` / `false` | whether the instance serves TLS; [`Lifecycle::tls`](crate::server::Lifecycle) records `true` |
//! | [`TLS_SERVER_NAME_METADATA_KEY`] (`tls_server_name`) | a DNS name | the name the instance's certificate is verified against |
//!
//! The name a TLS client verifies an instance's certificate against is, in
//! order: the instance's `tls_server_name` metadata, the fixed domain of the
//! client's TLS settings (`ClientTlsConfig::domain_name`), and the host of
//! the instance's address.
//!
//! Both connectors read the instance's first bytes before HTTP/2 starts, so
//! that a refused TLS handshake, a refused client certificate, or a server
//! speaking the other protocol fails the connection attempt with a
//! [`ConnectFailure`] that names the instance and says why (see the `io`
//! and `tls` submodules).
//!
//! When the metadata says the instance speaks the other protocol (TLS
//! instance, plaintext client, or the reverse), nothing is dialed: every
//! attempt on that instance fails at connect time with a
//! [`TransportMismatch`] naming the instance, so the attempt counts as "not
//! sent" (retried elsewhere, the instance counted unreachable) rather than
//! as a failure of a call the instance received.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::instance::Instance;

/// Instance metadata key that says whether the instance serves TLS
/// (`"true"` or `"false"`). Absent: unknown, the client's own setting is
/// used as is.
pub const TLS_METADATA_KEY: &str = "tls";

/// Instance metadata key naming the DNS name the instance's certificate is
/// verified against, when it is not the host of its address.
pub const TLS_SERVER_NAME_METADATA_KEY: &str = "tls_server_name";

/// A function applied to the tonic [`Endpoint`] of every instance before its
/// channel is created: window sizes, user agent, keep-alive, concurrency
/// limits and the like. See [`ClientBuilder::endpoint_config`](super::ClientBuilder::endpoint_config).
pub type EndpointHook = Arc<dyn Fn(Endpoint, &Instance) -> Endpoint + Send + Sync>;

/// How the client connects to instances: the settings shared by every
/// channel it creates.
#[derive(Clone)]
pub(crate) struct TransportConfig {
    /// TLS settings and the rustls configuration built from them (or why it
    /// could not be built); `None`: plaintext (h2c).
    #[cfg(feature = "tls")]
    tls: Option<Result<tls::Prepared, String>>,
    /// The user's endpoint settings, applied last.
    pub hook: Option<EndpointHook>,
    /// Whether the client's own connections coalesce writes (see
    /// [`coalesce`]).
    pub coalesce_writes: bool,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            #[cfg(feature = "tls")]
            tls: None,
            hook: None,
            coalesce_writes: true,
        }
    }
}

impl fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The TLS settings hold the client's private key: not printed.
        f.debug_struct("TransportConfig")
            .field("tls", &self.tls_enabled())
            .field("endpoint_hook", &self.hook.is_some())
            .field("coalesce_writes", &self.coalesce_writes)
            .finish()
    }
}

impl TransportConfig {
    /// Uses TLS with these settings (checked by [`tls_error`](Self::tls_error)).
    #[cfg(feature = "tls")]
    pub(crate) fn set_tls(&mut self, config: crate::tls::ClientTlsConfig) {
        self.tls = Some(tls::Prepared::new(config).map_err(|e| e.to_string()));
    }

    /// Why the TLS settings are unusable, if they are.
    pub(crate) fn tls_error(&self) -> Option<&str> {
        #[cfg(feature = "tls")]
        if let Some(Err(e)) = &self.tls {
            return Some(e);
        }
        None
    }

    /// Whether channels use TLS.
    pub(crate) fn tls_enabled(&self) -> bool {
        #[cfg(feature = "tls")]
        {
            self.tls.is_some()
        }
        #[cfg(not(feature = "tls"))]
        {
            false
        }
    }
}

/// Why no channel could be made for an instance (nothing is dialed then,
/// and the instance is left out of the client's snapshot).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The address does not make a valid URI.
    #[error("instance {id} has an unusable address {address:?}: {source}")]
    Address {
        /// The instance id.
        id: String,
        /// Its address.
        address: String,
        /// Why the URI is invalid.
        #[source]
        source: tonic::transport::Error,
    },
    /// The TLS settings cannot be used for this instance (e.g. its
    /// `tls_server_name` is not a valid name).
    #[cfg(feature = "tls")]
    #[error("instance {id} ({address}): unusable TLS settings: {source}")]
    Tls {
        /// The instance id.
        id: String,
        /// Its address.
        address: String,
        /// The reason.
        #[source]
        source: crate::tls::TlsError,
    },
}

/// The instance speaks another protocol than the client: the error of every
/// connection attempt to it. It reaches callers inside tonic's
/// `ConnectError`, so the attempt classifies as not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportMismatch {
    /// The instance serves TLS, the client is plaintext.
    #[error("instance {id} ({address}) requires TLS but the client is configured for plaintext")]
    InstanceRequiresTls {
        /// The instance id.
        id: String,
        /// Its address.
        address: String,
    },
    /// The instance serves plaintext, the client requires TLS.
    #[error("instance {id} ({address}) serves plaintext but the client is configured for TLS")]
    InstanceIsPlaintext {
        /// The instance id.
        id: String,
        /// Its address.
        address: String,
    },
}

/// A connection to an instance could not be set up: TCP failed, the TLS
/// handshake failed, the instance refused the client's certificate, or it
/// answered in another protocol than the client speaks. It reaches callers
/// inside tonic's `ConnectError`, so the attempt classifies as not sent.
#[derive(Debug, thiserror::Error)]
#[error("instance {id} ({address}): {reason}")]
pub struct ConnectFailure {
    /// The instance id.
    pub id: String,
    /// Its address.
    pub address: String,
    /// What went wrong, in words.
    pub reason: String,
    /// The underlying error (for TLS, rustls' own inside an I/O error), if
    /// any.
    #[source]
    pub source: Option<std::io::Error>,
}

/// Whether the instance's metadata says it serves TLS (`None`: not said).
fn declares_tls(inst: &Instance) -> Option<bool> {
    match inst.meta(TLS_METADATA_KEY)?.trim() {
        v if v.eq_ignore_ascii_case("true") || v == "1" => Some(true),
        v if v.eq_ignore_ascii_case("false") || v == "0" => Some(false),
        _ => None,
    }
}

/// A digest of the metadata that decide how an instance is connected to,
/// besides its address (whether it serves TLS, the name its certificate is
/// checked against). An instance whose digest changes gets a new endpoint,
/// as one whose address changes does.
pub(crate) fn transport_print(inst: &Instance) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    inst.meta(TLS_METADATA_KEY).hash(&mut h);
    inst.meta(TLS_SERVER_NAME_METADATA_KEY).hash(&mut h);
    h.finish()
}

/// How to open one instance's channel, decided and checked on discovery;
/// the channel itself is created on first use (a call or a health check),
/// so that an idle instance costs no channel and no task.
#[derive(Clone)]
pub(crate) struct LazyConnect {
    endpoint: Endpoint,
    how: How,
    /// [`transport_print`] of the instance it was prepared for.
    print: u64,
    /// The user's endpoint hook applies: connect through a tonic channel.
    hooked: bool,
    connect_timeout: Duration,
    /// Whether the direct connection coalesces writes.
    coalesce_writes: bool,
}

/// How an instance is dialed.
#[derive(Clone)]
pub(crate) enum How {
    /// The metadata declares the other protocol: every connection attempt
    /// fails with this.
    Mismatch(TransportMismatch),
    Plain(io::PlainConnector),
    #[cfg(feature = "tls")]
    Tls(tls::Connector),
}

impl std::fmt::Debug for LazyConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match &self.how {
            How::Mismatch(m) => return write!(f, "LazyConnect(mismatch: {m})"),
            How::Plain(_) => "plaintext",
            #[cfg(feature = "tls")]
            How::Tls(_) => "tls",
        };
        write!(f, "LazyConnect({how} {})", self.endpoint.uri())
    }
}

impl How {
    /// Dials the instance and starts HTTP/2 on the connection (hyper
    /// directly, no tonic channel), its writes coalesced when
    /// `coalesce_writes` is set. Failures come as a `tonic::ConnectError`.
    pub(crate) async fn handshake(
        &self,
        coalesce_writes: bool,
    ) -> Result<hyper::client::conn::http2::SendRequest<tonic::body::Body>, super::BoxError> {
        let connect_error =
            |e: ConnectFailure| Box::new(tonic::ConnectError(Box::new(e))) as super::BoxError;
        match self {
            How::Mismatch(m) => Err(Box::new(tonic::ConnectError(Box::new(m.clone())))),
            How::Plain(c) => {
                let io = tower::Service::call(&mut c.clone(), http::Uri::default())
                    .await
                    .map_err(connect_error)?;
                let io = Coalesce::new(io.into_inner(), coalesce_writes);
                super::http2::start(TokioIo::new(io)).await
            }
            #[cfg(feature = "tls")]
            How::Tls(c) => {
                let io = tower::Service::call(&mut c.clone(), http::Uri::default())
                    .await
                    .map_err(connect_error)?;
                let io = Coalesce::new(io.into_inner(), coalesce_writes);
                super::http2::start(TokioIo::new(io)).await
            }
        }
    }
}

impl LazyConnect {
    /// [`transport_print`] of the instance it was prepared for.
    pub(crate) fn print(&self) -> u64 {
        self.print
    }

    /// The direct HTTP/2 connection for this instance, unless the user's
    /// endpoint hook applies (then `Err(self)`: use tonic's channel).
    pub(crate) fn into_http2(self) -> Result<super::http2::Http2, Box<Self>> {
        if self.hooked {
            return Err(Box::new(self));
        }
        let Some(authority) = self.endpoint.uri().authority().cloned() else {
            return Err(Box::new(self));
        };
        let tls = match &self.how {
            How::Mismatch(_) | How::Plain(_) => false,
            #[cfg(feature = "tls")]
            How::Tls(_) => true,
        };
        Ok(super::http2::Http2::new(
            self.how,
            tls,
            authority,
            self.connect_timeout,
            self.coalesce_writes,
        ))
    }

    /// A lazily connected tonic channel: nothing is dialed before its first
    /// use.
    pub(crate) fn channel(&self) -> Channel {
        let endpoint = self.endpoint.clone();
        match &self.how {
            How::Mismatch(mismatch) => {
                let mismatch = mismatch.clone();
                endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                    let mismatch = mismatch.clone();
                    async move { Err::<TokioIo<TcpStream>, _>(mismatch) }
                }))
            }
            How::Plain(connector) => endpoint.connect_with_connector_lazy(connector.clone()),
            #[cfg(feature = "tls")]
            How::Tls(connector) => endpoint.connect_with_connector_lazy(connector.clone()),
        }
    }
}

/// How to reach `inst`: the one place a channel's settings are decided. A
/// protocol mismatch declared in the metadata gives a channel whose every
/// connection attempt fails with a [`TransportMismatch`].
pub(crate) fn prepare(
    config: &TransportConfig,
    connect_timeout: Duration,
    inst: &Instance,
) -> Result<LazyConnect, ChannelError> {
    let address_error = |source| ChannelError::Address {
        id: inst.id().to_owned(),
        address: inst.address().to_owned(),
        source,
    };
    // Always the plain scheme: TLS, when used, is this module's connector's
    // business, not tonic's.
    let endpoint =
        Endpoint::from_shared(format!("http://{}", inst.address())).map_err(address_error)?;
    let mismatch = match (declares_tls(inst), config.tls_enabled()) {
        (Some(true), false) => Some(TransportMismatch::InstanceRequiresTls {
            id: inst.id().to_owned(),
            address: inst.address().to_owned(),
        }),
        (Some(false), true) => Some(TransportMismatch::InstanceIsPlaintext {
            id: inst.id().to_owned(),
            address: inst.address().to_owned(),
        }),
        _ => None,
    };
    if let Some(mismatch) = mismatch {
        tracing::warn!(instance = %inst, error = %mismatch, "instance not usable by this client");
        return Ok(LazyConnect {
            endpoint,
            how: How::Mismatch(mismatch),
            print: transport_print(inst),
            hooked: config.hook.is_some(),
            connect_timeout,
            coalesce_writes: config.coalesce_writes,
        });
    }
    let mut endpoint = endpoint
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(false);
    if let Some(hook) = &config.hook {
        endpoint = hook(endpoint, inst);
    }
    #[cfg(feature = "tls")]
    if let Some(prepared) = &config.tls {
        let connector = match prepared {
            Ok(p) => p.connector(inst, connect_timeout),
            Err(reason) => Err(crate::tls::TlsError::Rustls(reason.clone())),
        }
        .map_err(|source| ChannelError::Tls {
            id: inst.id().to_owned(),
            address: inst.address().to_owned(),
            source,
        })?;
        return Ok(LazyConnect {
            endpoint,
            how: How::Tls(connector),
            print: transport_print(inst),
            hooked: config.hook.is_some(),
            connect_timeout,
            coalesce_writes: config.coalesce_writes,
        });
    }
    Ok(LazyConnect {
        endpoint,
        how: How::Plain(io::PlainConnector::new(inst, connect_timeout)),
        print: transport_print(inst),
        hooked: config.hook.is_some(),
        connect_timeout,
        coalesce_writes: config.coalesce_writes,
    })
}

mod coalesce;
mod io;
#[cfg(feature = "tls")]
mod tls;

use coalesce::Coalesce;

/// The reason an attempt failed, for the caller's status message: every
/// distinct message of the error's source chain, outermost first.
pub(crate) fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(meta: &[(&str, &str)]) -> Instance {
        let mut inst = Instance::new("s1", "Svc", "127.0.0.1:9").unwrap();
        for (k, v) in meta {
            inst = inst.with_metadata(*k, *v);
        }
        inst
    }

    #[test]
    fn reads_the_tls_metadata() {
        assert_eq!(declares_tls(&instance(&[])), None);
        assert_eq!(declares_tls(&instance(&[("tls", "true")])), Some(true));
        assert_eq!(declares_tls(&instance(&[("tls", "FALSE")])), Some(false));
        assert_eq!(declares_tls(&instance(&[("tls", "maybe")])), None);
    }

    #[test]
    fn describes_each_cause_once() {
        let io = std::io::Error::other("tls handshake eof");
        let e = tonic::ConnectError(Box::new(io));
        assert_eq!(describe(&e), "tls handshake eof");
        let m = TransportMismatch::InstanceRequiresTls {
            id: "s1".into(),
            address: "127.0.0.1:9".into(),
        };
        assert_eq!(
            m.to_string(),
            "instance s1 (127.0.0.1:9) requires TLS but the client is configured for plaintext"
        );
    }

    #[tokio::test]
    async fn a_declared_mismatch_fails_at_connect_time() {
        let config = TransportConfig::default();
        let ch = prepare(
            &config,
            Duration::from_secs(1),
            &instance(&[("tls", "true")]),
        )
        .unwrap()
        .channel();
        let err = tower::ServiceExt::oneshot(ch, http::Request::new(tonic::body::Body::empty()))
            .await
            .unwrap_err();
        assert_eq!(
            crate::failover::classify::classify_error(&err),
            crate::failover::classify::Outcome::Unreachable
        );
        assert!(
            describe(&err).contains("requires TLS"),
            "{}",
            describe(&err)
        );
    }
}
