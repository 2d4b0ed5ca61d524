//! The plaintext connector, and the stream wrapper both connectors use to
//! look at an instance's first bytes before HTTP/2 takes the connection.
//!
//! A plaintext HTTP/2 client speaks first (its connection preface), and a
//! TLS server answers that with an alert or by closing the connection. To
//! tell this apart from an HTTP/2 server at connect time, the plaintext
//! connector sends the preface itself and reads the answer: HTTP/2 settings
//! go on to HTTP/2 (which then skips its own copy of the preface), a TLS
//! record or a closed connection is a connect-time error naming the
//! instance.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::ConnectFailure;
use crate::instance::Instance;

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The plaintext (h2c) connector of one instance.
#[derive(Clone)]
pub(crate) struct PlainConnector(Arc<PlainTarget>);

struct PlainTarget {
    id: String,
    address: String,
    probe: Duration,
}

impl PlainConnector {
    pub(crate) fn new(inst: &Instance, connect_timeout: Duration) -> Self {
        Self(Arc::new(PlainTarget {
            id: inst.id().to_owned(),
            address: inst.address().to_owned(),
            probe: connect_timeout / 2,
        }))
    }
}

type PlainIo = TokioIo<Prefixed<TcpStream>>;

impl tower::Service<http::Uri> for PlainConnector {
    type Response = PlainIo;
    type Error = ConnectFailure;
    type Future = Pin<Box<dyn Future<Output = Result<PlainIo, ConnectFailure>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let t = Arc::clone(&self.0);
        Box::pin(async move { connect_plain(&t).await })
    }
}

async fn connect_plain(t: &PlainTarget) -> Result<PlainIo, ConnectFailure> {
    let fail = |reason: &str, source: Option<io::Error>| ConnectFailure {
        id: t.id.clone(),
        address: t.address.clone(),
        reason: reason.to_owned(),
        source,
    };
    let mut tcp = TcpStream::connect(t.address.as_str())
        .await
        .map_err(|e| fail("cannot connect", Some(e)))?;
    let _ = tcp.set_nodelay(true);
    tcp.write_all(PREFACE)
        .await
        .map_err(|e| fail("cannot send the HTTP/2 preface", Some(e)))?;
    let mut first = vec![0u8; 4096];
    let prefix = match tokio::time::timeout(t.probe, tcp.read(&mut first)).await {
        Ok(Ok(0)) => return Err(fail(
            "the instance closed the connection instead of starting HTTP/2 (does it require TLS? \
                 the client is configured for plaintext)",
            None,
        )),
        Ok(Ok(n)) => {
            first.truncate(n);
            if looks_like_tls(&first) {
                return Err(fail(
                    "the instance answered in TLS: it requires TLS but the client is configured \
                     for plaintext",
                    None,
                ));
            }
            first
        }
        Ok(Err(e)) => {
            return Err(fail(
                "the instance dropped the connection instead of starting HTTP/2 (does it require \
                 TLS? the client is configured for plaintext)",
                Some(e),
            ))
        }
        // A slow server: HTTP/2 will tell.
        Err(_) => Vec::new(),
    };
    Ok(TokioIo::new(Prefixed::new(prefix, tcp, PREFACE.len())))
}

/// Whether bytes start like a TLS record (handshake or alert, TLS 1.x).
fn looks_like_tls(b: &[u8]) -> bool {
    b.len() >= 3 && matches!(b[0], 0x15 | 0x16) && b[1] == 0x03 && b[2] <= 0x04
}

/// A stream that first yields bytes already read from it, and drops the
/// first `skip` bytes written to it (the preface sent before).
pub(crate) struct Prefixed<T> {
    prefix: Vec<u8>,
    pos: usize,
    skip: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    pub(crate) fn new(prefix: Vec<u8>, inner: T, skip: usize) -> Self {
        Self {
            prefix,
            pos: 0,
            skip,
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.skip > 0 && !buf.is_empty() {
            // Reported as written: these bytes went out before.
            let n = self.skip.min(buf.len());
            self.skip -= n;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.skip > 0 {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefixed_streams_replay_reads_and_skip_the_sent_preface() {
        let (a, mut b) = tokio::io::duplex(256);
        let mut p = Prefixed::new(b"hello ".to_vec(), a, 4);
        p.write_all(b"PRE-payload").await.unwrap();
        p.flush().await.unwrap();
        b.write_all(b"world").await.unwrap();
        let mut got = [0u8; 7];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"payload");
        drop(b);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[test]
    fn tells_tls_records() {
        assert!(looks_like_tls(&[0x15, 0x03, 0x03, 0x00, 0x02]));
        assert!(looks_like_tls(&[0x16, 0x03, 0x01]));
        // An HTTP/2 SETTINGS frame header.
        assert!(!looks_like_tls(&[0x00, 0x00, 0x12, 0x04, 0x00]));
        assert!(!looks_like_tls(&[0x15]));
    }
}
