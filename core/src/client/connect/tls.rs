//! The TLS connector of a client channel: TCP, the TLS handshake, and a
//! look at the instance's first bytes, so that a refused handshake or a
//! refused client certificate is a connect-time error naming the instance.
//!
//! With TLS 1.3 a client finishes its side of the handshake before the
//! server has checked the client's certificate; a server that refuses it
//! answers with an alert afterwards. Reading the server's first record
//! (its HTTP/2 settings, or that alert) before handing the connection to
//! HTTP/2 turns the refusal into an error of the connection attempt, with
//! the reason, instead of an unexplained "connection closed" on the call.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, pki_types::ServerName, AlertDescription, CertificateError};
use tokio_rustls::TlsConnector;

use super::io::Prefixed;
use super::ConnectFailure;
use crate::instance::Instance;
use crate::tls::{server_name, ClientTlsConfig, TlsError};

/// The client's TLS settings with the rustls configuration built once.
#[derive(Clone)]
pub(crate) struct Prepared {
    settings: ClientTlsConfig,
    rustls: Arc<rustls::ClientConfig>,
}

impl Prepared {
    pub(crate) fn new(settings: ClientTlsConfig) -> Result<Self, TlsError> {
        let rustls = settings.build()?;
        Ok(Self { settings, rustls })
    }

    /// The connector for one instance: its certificate is verified against
    /// its `tls_server_name` metadata, the fixed domain, or its host.
    pub(crate) fn connector(
        &self,
        inst: &Instance,
        connect_timeout: Duration,
    ) -> Result<Connector, TlsError> {
        let name = inst
            .meta(super::TLS_SERVER_NAME_METADATA_KEY)
            .or(self.settings.domain_name())
            .unwrap_or(inst.host());
        Ok(Connector(Arc::new(Target {
            id: inst.id().to_owned(),
            address: inst.address().to_owned(),
            name: server_name(name)?,
            tls: TlsConnector::from(Arc::clone(&self.rustls)),
            has_identity: self.settings.has_identity(),
            // Leaves half of the connect timeout (which covers the whole
            // attempt) for TCP and the handshake.
            probe: connect_timeout / 2,
        })))
    }
}

struct Target {
    id: String,
    address: String,
    name: ServerName<'static>,
    tls: TlsConnector,
    has_identity: bool,
    probe: Duration,
}

/// A `tower::Service<Uri>` that tonic calls for every connection attempt.
#[derive(Clone)]
pub(crate) struct Connector(Arc<Target>);

type Io = TokioIo<Prefixed<TlsStream<TcpStream>>>;

impl tower::Service<http::Uri> for Connector {
    type Response = Io;
    type Error = ConnectFailure;
    type Future = Pin<Box<dyn Future<Output = Result<Io, ConnectFailure>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let target = Arc::clone(&self.0);
        Box::pin(async move { connect(&target).await })
    }
}

async fn connect(t: &Target) -> Result<Io, ConnectFailure> {
    let fail = |reason: String, source: Option<io::Error>| ConnectFailure {
        id: t.id.clone(),
        address: t.address.clone(),
        reason,
        source,
    };
    let tcp = TcpStream::connect(t.address.as_str())
        .await
        .map_err(|e| fail("cannot connect".to_owned(), Some(e)))?;
    let _ = tcp.set_nodelay(true);
    let mut tls = t
        .tls
        .connect(t.name.clone(), tcp)
        .await
        .map_err(|e| fail(handshake_reason(t, &e), Some(e)))?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(fail(
            "TLS handshake done, but HTTP/2 was not negotiated (ALPN h2)".to_owned(),
            None,
        ));
    }
    // The server speaks first in HTTP/2 (its settings): read that, or the
    // alert of a refused client certificate.
    let mut first = vec![0u8; 4096];
    let prefix = match tokio::time::timeout(t.probe, tls.read(&mut first)).await {
        Ok(Ok(0)) => {
            return Err(fail(
                "the instance closed the connection right after the TLS handshake".to_owned(),
                None,
            ))
        }
        Ok(Ok(n)) => {
            first.truncate(n);
            first
        }
        Ok(Err(e)) => return Err(fail(handshake_reason(t, &e), Some(e))),
        Err(_) => Vec::new(),
    };
    Ok(TokioIo::new(Prefixed::new(prefix, tls, 0)))
}

/// What a TLS failure means, in words.
fn handshake_reason(t: &Target, e: &io::Error) -> String {
    let name = match &t.name {
        ServerName::DnsName(n) => n.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    };
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
                "the instance closed the connection during the TLS handshake (does it serve plaintext?)".to_owned()
            }
            _ => "TLS handshake failed".to_owned(),
        };
    };
    use rustls::Error as E;
    match tls {
        E::InvalidCertificate(CertificateError::NotValidForName)
        | E::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => format!(
            "the instance's certificate is not valid for the name {name} (set the client's TLS \
             domain, or the instance's tls_server_name metadata, to a name it is valid for)"
        ),
        E::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the instance's certificate is not signed by a CA the client trusts".to_owned()
        }
        E::InvalidCertificate(_) => "the instance's certificate was refused".to_owned(),
        E::AlertReceived(AlertDescription::CertificateRequired) => {
            "the instance requires a client certificate (mutual TLS) and the client presented none"
                .to_owned()
        }
        E::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied,
        ) if t.has_identity => {
            "the instance refused the client certificate (not signed by a CA it trusts?)".to_owned()
        }
        E::AlertReceived(AlertDescription::HandshakeFailure) if !t.has_identity => {
            "the instance refused the TLS handshake (does it require a client certificate?)"
                .to_owned()
        }
        E::AlertReceived(_) => "the instance refused the TLS handshake".to_owned(),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            "the instance does not answer in TLS (does it serve plaintext?)".to_owned()
        }
        _ => "TLS handshake failed".to_owned(),
    }
}
