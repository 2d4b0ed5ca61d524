//! Lingering close: a server connection that has finished reads what its
//! peer still sends before it closes.
//!
//! Closing a TCP socket that holds unread data makes the kernel answer with
//! a reset instead of a plain close, and the reset fails the peer's next
//! write with "connection reset" or "broken pipe". An HTTP/2
//! client writing a request just after the server's `GOAWAY` then fails the
//! whole connection on that write, before it reads the `GOAWAY` waiting in
//! its buffer: a transport failure it cannot tell from a crash mid-request,
//! so a call that is not idempotent fails although the server never
//! processed it. Read to the end instead, and the client's write succeeds,
//! it reads the `GOAWAY`, learns which requests were not processed and
//! sends them elsewhere.
//!
//! ```text
//!            wrapped by Linger::incoming
//!                       │
//!                       ▼
//!                  ┌─────────┐
//!                  │ Serving │  HTTP/2 runs on the connection
//!                  └────┬────┘
//!                       │ HTTP/2 done (GOAWAY sent, streams drained):
//!                       │ the connection is dropped
//!                       ▼
//!                  ┌───────────┐
//!                  │ Lingering │  write side shut (FIN sent);
//!                  └─────┬─────┘  whatever the peer sends is read and dropped
//!                        │ peer closes (end of stream) | read error | timeout
//!                        ▼
//!                  ┌────────┐
//!                  │ Closed │  socket closed: no reset for the peer
//!                  └────────┘
//! ```
//!
//! [`Lifecycle`](super::Lifecycle) wraps its connections this way; servers
//! built by hand can use [`Linger`] with tonic's `serve_with_incoming*`:
//!
//! ```
//! use std::time::Duration;
//! use fyerrpc::server::Linger;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let linger = Linger::new(Duration::from_secs(2));
//! let incoming = linger.incoming(tonic::transport::server::TcpIncoming::from(listener));
//! let (reporter, health) = tonic_health::server::health_reporter();
//! # drop(reporter);
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tonic::transport::Server::builder()
//!     .add_service(health)
//!     .serve_with_incoming_shutdown(incoming, async { stopped.await.ok(); });
//! # stop.send(()).ok();
//! server.await?;
//! // Let the closed connections finish lingering before the process exits.
//! tokio::time::timeout(Duration::from_secs(3), linger.closed()).await.ok();
//! # Ok(())
//! # }
//! ```

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;

/// How long a closed connection reads its peer's leftovers by default.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(2);

/// Wraps server connections so that each lingers when closed, and tells
/// when every one of them has closed. Cloning gives another handle to the
/// same set.
///
/// A connection HTTP/2 is done with shuts its write side and reads (and
/// drops) what the client still sends, until the client closes or the
/// timeout passes. Closed at once instead, a socket holding unread data
/// resets the connection, and a client that wrote a request just after the
/// server's `GOAWAY` fails it as a transport error (broken pipe) before it
/// reads the `GOAWAY` that would have told it the request was not
/// processed and may go elsewhere.
#[derive(Debug, Clone)]
pub struct Linger {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    timeout: Duration,
    /// Connections not closed yet (serving or lingering).
    open: AtomicUsize,
    all_closed: Notify,
}

impl Linger {
    /// Connections closed through this handle read their peer's leftovers
    /// for at most `timeout` (zero: close at once, as without it).
    pub fn new(timeout: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                timeout,
                open: AtomicUsize::new(0),
                all_closed: Notify::new(),
            }),
        }
    }

    /// Wraps one connection.
    pub fn wrap<T>(&self, io: T) -> Lingering<T>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.shared.open.fetch_add(1, Ordering::AcqRel);
        Lingering {
            io: Some(io),
            open: Some(Open(Arc::clone(&self.shared))),
        }
    }

    /// Wraps every connection a listener stream yields (errors pass as
    /// they are).
    pub fn incoming<S, T, E>(&self, incoming: S) -> impl Stream<Item = Result<Lingering<T>, E>>
    where
        S: Stream<Item = Result<T, E>>,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        incoming.map(move |conn| conn.map(|io| this.wrap(io)))
    }

    /// Connections wrapped and not closed yet.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Resolves once every wrapped connection has closed: none is serving
    /// or lingering. Bound it with a timeout: a connection still serving
    /// keeps it waiting.
    pub async fn closed(&self) {
        loop {
            let notified = self.shared.all_closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Default for Linger {
    /// With [`DEFAULT_LINGER`].
    fn default() -> Self {
        Self::new(DEFAULT_LINGER)
    }
}

/// Counts one connection as open until dropped.
#[derive(Debug)]
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}

/// A server connection that lingers when dropped: see [`Linger`].
#[derive(Debug)]
pub struct Lingering<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// `None` only while being dropped.
    io: Option<T>,
    open: Option<Open>,
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<T> {
    /// The wrapped connection.
    pub fn get_ref(&self) -> Option<&T> {
        self.io.as_ref()
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection already closed")
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_read(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl<T> tonic::transport::server::Connected for Lingering<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static + tonic::transport::server::Connected,
{
    type ConnectInfo = Option<T::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.as_ref().map(|io| io.connect_info())
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<T> {
    fn drop(&mut self) {
        let (Some(io), Some(open)) = (self.io.take(), self.open.take()) else {
            return;
        };
        if open.0.timeout.is_zero() {
            return;
        }
        // Outside a runtime (or in one shutting down) the connection just
        // closes, as it would without lingering.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let timeout = open.0.timeout;
            runtime.spawn(async move {
                let _ = tokio::time::timeout(timeout, read_to_end(io)).await;
                drop(open);
            });
        }
    }
}

/// Shuts the write side (if not shut already) and reads until the peer
/// closes.
async fn read_to_end<T: AsyncRead + AsyncWrite + Unpin>(mut io: T) {
    let _ = io.shutdown().await;
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = io.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// A client that has sent bytes the server never read, then the server
    /// says goodbye and closes. Returns what the client reads afterwards,
    /// after writing once more.
    async fn goodbye(linger: Option<&Linger>) -> (io::Result<usize>, io::Result<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        client.write_all(&[7u8; 64]).await.expect("first write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        match linger {
            Some(l) => {
                let mut server = l.wrap(server);
                server.write_all(b"bye").await.expect("goodbye");
                drop(server);
            }
            None => {
                let mut server = server;
                server.write_all(b"bye").await.expect("goodbye");
                drop(server);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Like a request sent before the goodbye was read.
        let wrote = client.write(&[8u8; 64]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut got = Vec::new();
        let read = client.read_to_end(&mut got).await.map(|_| got);
        (wrote, read)
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_plain_close_with_unread_data_resets_and_fails_a_late_write() {
        // Why lingering exists: the kernel resets the connection, and the
        // client's next write fails (in an HTTP/2 client: before it has read
        // the GOAWAY waiting in its buffer, so every open stream fails).
        let (wrote, _) = goodbye(None).await;
        let err = wrote.expect_err("the reset fails the late write");
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_lingering_close_delivers_the_goodbye_and_the_end() {
        let linger = Linger::new(Duration::from_secs(5));
        let (wrote, read) = goodbye(Some(&linger)).await;
        assert!(wrote.is_ok(), "a late write is read and dropped: {wrote:?}");
        assert_eq!(read.expect("no reset"), b"bye");
        // The client has closed (dropped in `goodbye`): lingering ends.
        tokio::time::timeout(Duration::from_secs(2), linger.closed())
            .await
            .expect("every connection closed");
        assert_eq!(linger.open(), 0);
    }

    #[tokio::test]
    async fn a_silent_peer_is_let_go_after_the_timeout() {
        let linger = Linger::new(Duration::from_millis(100));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        drop(linger.wrap(server));
        assert_eq!(linger.open(), 1, "lingering while the client stays");
        tokio::time::timeout(Duration::from_secs(2), linger.closed())
            .await
            .expect("let go after the timeout");
    }

    #[tokio::test]
    async fn no_linger_closes_at_once() {
        let linger = Linger::new(Duration::ZERO);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        drop(linger.wrap(server));
        assert_eq!(linger.open(), 0);
    }
}
