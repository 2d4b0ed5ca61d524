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
//!                       │ it shuts the connection down (poll_shutdown)
//!                       ▼
//!                  ┌───────────┐
//!                  │ Lingering │  write side shut (FIN sent); whatever the
//!                  └─────┬─────┘  peer sends is read and dropped; the
//!                        │        shutdown is not finished yet
//!                        │ peer closes (end of stream) | read error | timeout
//!                        ▼
//!                  ┌────────┐
//!                  │  Shut  │  shutdown finished: HTTP/2 drops the
//!                  └────────┘  connection, no unread data, no reset
//! ```
//!
//! The lingering happens inside the connection's shutdown, so a server
//! that waits for its connections to finish (tonic's graceful shutdown)
//! waits for it too, at most the linger timeout. A connection that ends
//! without a shutdown (an error, a dropped runtime) closes at once, as a
//! crash would. It needs a Tokio runtime with time enabled.
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
//! let incoming = Linger::new(Duration::from_secs(2))
//!     .incoming(tonic::transport::server::TcpIncoming::from(listener));
//! let (reporter, health) = tonic_health::server::health_reporter();
//! # drop(reporter);
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tonic::transport::Server::builder()
//!     .add_service(health)
//!     .serve_with_incoming_shutdown(incoming, async { stopped.await.ok(); });
//! # stop.send(()).ok();
//! // Returns once every connection has finished, lingering included.
//! server.await?;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a closed connection reads its peer's leftovers by default.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(2);

/// Reads per poll while lingering before yielding to other tasks.
const READS_PER_POLL: usize = 16;

/// Wraps server connections so that each lingers when shut down.
///
/// A connection HTTP/2 is done with shuts its write side and reads (and
/// drops) what the client still sends, until the client closes or the
/// timeout passes; only then does its shutdown finish. Closed at once
/// instead, a socket holding unread data resets the connection, and a
/// client that wrote a request just after the server's `GOAWAY` fails it as
/// a transport error (broken pipe) before it reads the `GOAWAY` that would
/// have told it the request was not processed and may go elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linger {
    timeout: Duration,
}

impl Linger {
    /// Connections shut down through this wrapper read their peer's
    /// leftovers for at most `timeout` (zero: close at once, as without it).
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }

    /// How long a connection may linger.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Wraps one connection.
    pub fn wrap<T>(&self, io: T) -> Lingering<T> {
        Lingering {
            io,
            timeout: self.timeout,
            state: State::Serving,
        }
    }

    /// Wraps every connection a listener stream yields (errors pass as
    /// they are).
    pub fn incoming<S, T, E>(&self, incoming: S) -> impl Stream<Item = Result<Lingering<T>, E>>
    where
        S: Stream<Item = Result<T, E>>,
    {
        let this = *self;
        incoming.map(move |conn| conn.map(|io| this.wrap(io)))
    }
}

impl Default for Linger {
    /// With [`DEFAULT_LINGER`].
    fn default() -> Self {
        Self::new(DEFAULT_LINGER)
    }
}

/// Where a connection is in its shutdown (see the module's diagram).
#[derive(Debug)]
enum State {
    Serving,
    Lingering(Pin<Box<tokio::time::Sleep>>),
    Shut,
}

/// A server connection that lingers when shut down: see [`Linger`].
#[derive(Debug)]
pub struct Lingering<T> {
    io: T,
    timeout: Duration,
    state: State,
}

impl<T> Lingering<T> {
    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Lingering<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Serving => {
                    let shut = match Pin::new(&mut this.io).poll_shutdown(cx) {
                        Poll::Ready(r) => r,
                        Poll::Pending => return Poll::Pending,
                    };
                    if shut.is_err() || this.timeout.is_zero() {
                        this.state = State::Shut;
                        return Poll::Ready(shut);
                    }
                    this.state = State::Lingering(Box::pin(tokio::time::sleep(this.timeout)));
                }
                State::Lingering(deadline) => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        this.state = State::Shut;
                        return Poll::Ready(Ok(()));
                    }
                    return match drain(&mut this.io, cx) {
                        Poll::Ready(()) => {
                            this.state = State::Shut;
                            Poll::Ready(Ok(()))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
                State::Shut => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Reads and drops what the peer sends: ready when it has closed (or the
/// read failed); pending while it may send more.
fn drain<T: AsyncRead + Unpin>(io: &mut T, cx: &mut Context<'_>) -> Poll<()> {
    let mut buf = [0u8; 2048];
    for _ in 0..READS_PER_POLL {
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut *io).poll_read(cx, &mut read) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(()),
            Poll::Ready(Ok(())) => {}
        }
    }
    // A peer that keeps sending: let other tasks run, then read on.
    cx.waker().wake_by_ref();
    Poll::Pending
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Lingering<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_plain_close_with_unread_data_resets_and_fails_a_late_write() {
        // Why lingering exists: the kernel resets the connection, and the
        // client's next write fails (in an HTTP/2 client: before it has read
        // the GOAWAY waiting in its buffer, so every open stream fails).
        let (mut client, mut server) = pair().await;
        client.write_all(&[7u8; 64]).await.expect("first write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        server.write_all(b"bye").await.expect("goodbye");
        server.shutdown().await.expect("shut down");
        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let err = client
            .write(&[8u8; 64])
            .await
            .expect_err("the reset fails the late write");
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_lingering_shutdown_reads_until_the_client_closes() {
        let (mut client, server) = pair().await;
        client.write_all(&[7u8; 64]).await.expect("first write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut server = Linger::new(Duration::from_secs(30)).wrap(server);
        server.write_all(b"bye").await.expect("goodbye");
        let shutdown = tokio::spawn(async move { server.shutdown().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Like a request sent before the goodbye was read: accepted.
        client.write_all(&[8u8; 64]).await.expect("late write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!shutdown.is_finished(), "lingers while the client is there");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("no reset");
        assert_eq!(got, b"bye", "the goodbye, then the end");
        drop(client);
        let done = tokio::time::timeout(Duration::from_secs(5), shutdown)
            .await
            .expect("shutdown ends when the client closes")
            .expect("the task ran");
        assert!(done.is_ok(), "{done:?}");
    }

    #[tokio::test]
    async fn a_silent_client_is_let_go_after_the_timeout() {
        let (_client, server) = pair().await;
        let mut server = Linger::new(Duration::from_millis(100)).wrap(server);
        let t0 = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), server.shutdown())
            .await
            .expect("let go after the timeout")
            .expect("a clean shutdown");
        assert!(
            t0.elapsed() >= Duration::from_millis(90),
            "held until the timeout: {:?}",
            t0.elapsed()
        );
    }

    #[tokio::test]
    async fn the_connection_info_is_the_wrapped_connections() {
        use tonic::transport::server::{Connected, TcpConnectInfo};
        let (client, server) = pair().await;
        // The same type as unwrapped: tonic's `Request::remote_addr` and
        // `peer_certs` look it up by type.
        let info: TcpConnectInfo = Linger::default().wrap(server).connect_info();
        assert_eq!(info.remote_addr(), client.local_addr().ok());
    }

    #[tokio::test]
    async fn a_client_that_keeps_sending_is_let_go_after_the_timeout() {
        let (mut client, server) = pair().await;
        let mut server = Linger::new(Duration::from_millis(200)).wrap(server);
        let sender = tokio::spawn(async move {
            while client.write_all(&[1u8; 4096]).await.is_ok() {
                tokio::task::yield_now().await;
            }
        });
        tokio::time::timeout(Duration::from_secs(5), server.shutdown())
            .await
            .expect("let go after the timeout")
            .expect("a clean shutdown");
        sender.abort();
    }

    #[tokio::test]
    async fn no_linger_shuts_down_at_once() {
        let (_client, server) = pair().await;
        let mut server = Linger::new(Duration::ZERO).wrap(server);
        tokio::time::timeout(Duration::from_secs(1), server.shutdown())
            .await
            .expect("at once")
            .expect("a clean shutdown");
    }
}
