//! Write coalescing: the frames of calls made at nearly the same moment go
//! out in one write instead of one write each.
//!
//! ```text
//!                HTTP/2 has frames to write, less than WRITE_AT_ONCE
//!     Passing ---------------------------------------------> Deferred
//!      ^  |    (the write is held back: the connection's        |
//!      |  |     task wakes itself and yields, so the tasks      |
//!      |  |     already queued run first and add their          |
//!      |  |     requests to HTTP/2's buffer)                    |
//!      |  |                                                     |
//!      |  +-- WRITE_AT_ONCE or more, or a DATA frame passed     |
//!      |      by reference: written now                         |
//!      |                                                        |
//!      +--------------------------------------------------------+
//!             HTTP/2 writes again and the stream takes it:
//!             everything buffered by now goes out together
//! ```
//!
//! HTTP/2 writes what it has buffered each time its connection task runs.
//! A caller handing a request to the connection wakes that task (through
//! hyper's dispatch), and the runtime tends to run it right away, before the other callers that are
//! ready to send: each request then costs one `writev` (and, on the
//! instance's side, one read and one wake-up). Yielding once before
//! writing lets those callers go first, so a busy connection writes the
//! requests of many calls at once, as a single connection shared by many
//! tasks does by itself. grpc-go's writer yields the same way when it has
//! little to write.
//!
//! The cost is one more poll of the connection task per held write, and
//! on a multi-threaded runtime with an idle worker the yield may wake that
//! worker (which may then take the task over). A connection with one call
//! at a time pays it and gains nothing; the client's benchmarks measure
//! both (see `benches/README.md`). A write of [`WRITE_AT_ONCE`] bytes or
//! more already spreads its system call over enough bytes and goes out
//! without waiting, and so does a write whose last piece is a DATA frame
//! HTTP/2 passes by reference (256 bytes or more: HTTP/2 adds nothing to
//! the write after it). grpc-go's cutoff is about 1,000 bytes.
//! [`ClientBuilder::coalesce_writes`](crate::client::ClientBuilder::coalesce_writes)
//! turns it off.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes of at least this many bytes are not held back.
pub(crate) const WRITE_AT_ONCE: usize = 4096;

/// A stream whose writes wait for one turn of the scheduler (see the
/// module docs). Reads, flushes and shutdown pass straight through.
pub(crate) struct Coalesce<T> {
    inner: T,
    /// Off: every write passes straight through.
    enabled: bool,
    /// `true` in the `Deferred` state: the next write goes out.
    deferred: bool,
}

impl<T> Coalesce<T> {
    pub(crate) fn new(inner: T, enabled: bool) -> Self {
        Self {
            inner,
            enabled,
            deferred: false,
        }
    }

    /// Whether a write of `len` bytes in `pieces` slices waits: the first of
    /// a batch does (and the task is woken to come back for it), the next
    /// one goes out. An empty or large write goes out at once, and so does
    /// one in more than one slice: HTTP/2 hands a DATA frame of 256 bytes or
    /// more over as a second slice, and buffers nothing after it until it
    /// is written, so waiting could not add to it.
    fn hold_back(&mut self, cx: &Context<'_>, len: usize, pieces: usize) -> bool {
        if !self.enabled || self.deferred || len == 0 || len >= WRITE_AT_ONCE || pieces > 1 {
            return false;
        }
        self.deferred = true;
        cx.waker().wake_by_ref();
        true
    }

    /// After a write passed: once the inner stream took it, the next batch
    /// starts (a write the socket refused keeps its pass for the retry).
    fn passed<R>(&mut self, result: Poll<R>) -> Poll<R> {
        if result.is_ready() {
            self.deferred = false;
        }
        result
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.hold_back(cx, buf.len(), 1) {
            return Poll::Pending;
        }
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.passed(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        let pieces = bufs.iter().filter(|b| !b.is_empty()).count();
        if self.hold_back(cx, len, pieces) {
            return Poll::Pending;
        }
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.passed(result)
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
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Records every write it is given, one entry per call.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Writes {
        fn taken(&self) -> Vec<Vec<u8>> {
            self.0.lock().map(|w| w.clone()).unwrap_or_default()
        }
    }

    impl AsyncWrite for Writes {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if let Ok(mut w) = self.0.lock() {
                w.push(buf.to_vec());
            }
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Like HTTP/2's writer: each poll writes whatever is buffered by then.
    async fn write_buffered(io: &mut Coalesce<Writes>, buffered: &Mutex<Vec<u8>>) -> usize {
        std::future::poll_fn(|cx| {
            let now = buffered.lock().map(|b| b.clone()).unwrap_or_default();
            Pin::new(&mut *io).poll_write(cx, &now)
        })
        .await
        .unwrap_or(0)
    }

    /// The connection task writes one request; another task, ready at the
    /// same moment, adds its own before the write goes out.
    async fn one_turn(enabled: bool) -> Vec<Vec<u8>> {
        let writes = Writes::default();
        let buffered = Arc::new(Mutex::new(b"first".to_vec()));
        let mut io = Coalesce::new(writes.clone(), enabled);
        let other = Arc::clone(&buffered);
        let conn = tokio::spawn(async move { write_buffered(&mut io, &buffered).await });
        let caller = tokio::spawn(async move {
            if let Ok(mut b) = other.lock() {
                b.extend_from_slice(b"+second");
            }
        });
        let written = conn.await.unwrap_or(0);
        let _ = caller.await;
        let taken = writes.taken();
        assert_eq!(written, taken.concat().len());
        taken
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_queued_during_the_deferral_joins_the_write() {
        assert_eq!(one_turn(true).await, vec![b"first+second".to_vec()]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn turned_off_every_write_goes_out_at_once() {
        assert_eq!(one_turn(false).await, vec![b"first".to_vec()]);
    }

    #[tokio::test]
    async fn every_byte_arrives_in_order_and_reads_pass_through() {
        let (a, b) = tokio::io::duplex(64);
        let (mut a, mut b) = (Coalesce::new(a, true), Coalesce::new(b, true));
        let sent: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            for chunk in sent.chunks(333) {
                a.write_all(chunk).await?;
            }
            a.flush().await?;
            a.shutdown().await
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap_or(0);
        assert!(matches!(writer.await, Ok(Ok(()))));
        assert_eq!(got, expected);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn vectored_writes_are_held_once_and_a_chained_frame_is_not() {
        let writes = Writes::default();
        let mut io = Coalesce::new(writes.clone(), true);
        let (head, payload) = (&b"head"[..], &b"payload"[..]);
        // One slice: held once, then written (the recorder takes the first).
        let mut polls = 0;
        let n = std::future::poll_fn(|cx| {
            polls += 1;
            Pin::new(&mut io).poll_write_vectored(cx, &[io::IoSlice::new(head)])
        })
        .await;
        assert!(matches!(n, Ok(4)));
        assert_eq!(polls, 2, "held once");
        // Two slices (a DATA frame passed by reference): written at once.
        let slices = [io::IoSlice::new(head), io::IoSlice::new(payload)];
        let mut polls = 0;
        let n = std::future::poll_fn(|cx| {
            polls += 1;
            Pin::new(&mut io).poll_write_vectored(cx, &slices)
        })
        .await;
        assert!(matches!(n, Ok(4)));
        assert_eq!(polls, 1, "not held");
        assert_eq!(writes.taken(), vec![head.to_vec(), head.to_vec()]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn empty_and_large_writes_are_not_held_back() {
        let writes = Writes::default();
        let mut io = Coalesce::new(writes.clone(), true);
        let large = vec![7u8; WRITE_AT_ONCE];
        for buf in [&[][..], &large[..]] {
            let n =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut io).poll_write(cx, buf))).await;
            assert!(matches!(n, Poll::Ready(Ok(k)) if k == buf.len()));
        }
        assert_eq!(writes.taken(), vec![Vec::new(), large]);
    }
}
