//! Request bodies that can be sent again, and response bodies that report
//! how the call ended.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::{Code, Status};

/// A request body prepared for attempts: buffered when small and complete
/// (so it can be re-sent), or passed through once.
#[derive(Debug)]
pub(crate) enum Replay {
    /// The whole body, re-sendable.
    Buffered(Bytes),
    /// A body sent once (too large, or still streaming); `None` once taken.
    Once(Option<Body>),
}

impl Replay {
    /// Buffers what the body has ready now, up to `limit` bytes. A body that
    /// is not complete right away (a client stream) or is larger than `limit`
    /// is passed through once, with what was read put back in front.
    ///
    /// A body of one data frame (a unary request as tonic encodes it) is
    /// kept as that frame's bytes, not copied.
    pub(crate) fn prepare(mut body: Body, limit: usize) -> Result<Self, Status> {
        let mut buf = Gathered::default();
        loop {
            if body.is_end_stream() {
                return Ok(Self::Buffered(buf.freeze()));
            }
            match body.frame().now_or_never() {
                None => return Ok(Self::once(buf.freeze(), body)),
                Some(None) => return Ok(Self::Buffered(buf.freeze())),
                Some(Some(Err(status))) => return Err(status),
                Some(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        buf.push(data);
                        if buf.len() > limit {
                            return Ok(Self::once(buf.freeze(), body));
                        }
                    }
                    Err(frame) => {
                        // Request trailers: rare in gRPC; send as they are.
                        let trailers = frame.into_trailers().unwrap_or_default();
                        return Ok(Self::once(
                            buf.freeze(),
                            Body::new(Chain {
                                prefix: None,
                                trailers: Some(trailers),
                                rest: body,
                            }),
                        ));
                    }
                },
            }
        }
    }

    fn once(prefix: Bytes, rest: Body) -> Self {
        let body = if prefix.is_empty() {
            rest
        } else {
            Body::new(Chain {
                prefix: Some(prefix),
                trailers: None,
                rest,
            })
        };
        Self::Once(Some(body))
    }

    /// Whether another attempt can be sent.
    pub(crate) fn can_replay(&self) -> bool {
        matches!(self, Self::Buffered(_))
    }

    /// The body of the next attempt, `None` when a once-only body was taken.
    pub(crate) fn next_body(&mut self) -> Option<Body> {
        match self {
            Self::Buffered(bytes) if bytes.is_empty() => Some(Body::empty()),
            Self::Buffered(bytes) => Some(Body::new(Resent(Some(bytes.clone())))),
            Self::Once(body) => body.take(),
        }
    }
}

/// A buffered request body sent again: its bytes as one data frame.
///
/// Its size hint is left open, as tonic's own request bodies leave it:
/// with an exact size, hyper would add a `content-length` header to every
/// request (an allocation on each side, and a header tonic does not send).
struct Resent(Option<Bytes>);

impl HttpBody for Resent {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

/// Data frames read so far: the first one as it came, copied together only
/// when a second one follows.
#[derive(Debug, Default)]
enum Gathered {
    #[default]
    Nothing,
    One(Bytes),
    Many(BytesMut),
}

impl Gathered {
    fn push(&mut self, data: Bytes) {
        *self = match std::mem::take(self) {
            Self::Nothing => Self::One(data),
            Self::One(first) => {
                let mut buf = BytesMut::with_capacity(first.len() + data.len());
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&data);
                Self::Many(buf)
            }
            Self::Many(mut buf) => {
                buf.extend_from_slice(&data);
                Self::Many(buf)
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Nothing => 0,
            Self::One(b) => b.len(),
            Self::Many(b) => b.len(),
        }
    }

    fn freeze(self) -> Bytes {
        match self {
            Self::Nothing => Bytes::new(),
            Self::One(b) => b,
            Self::Many(b) => b.freeze(),
        }
    }
}

/// Bytes already read, then optional trailers, then the rest of a body.
struct Chain {
    prefix: Option<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Body,
}

impl HttpBody for Chain {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        if let Some(t) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.trailers.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut h = self.rest.size_hint();
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        h.set_lower(h.lower() + extra);
        if let Some(u) = h.upper() {
            h.set_upper(u + extra);
        }
        h
    }
}

/// How an observed response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    /// Trailers (or the end) carried this status.
    Status(Code),
    /// The stream broke.
    Error,
    /// The caller dropped the body before its end.
    Dropped,
}

/// A response body that calls `on_end` once, when the stream ends, fails or
/// is dropped.
pub(crate) struct Observed<F: FnOnce(BodyEnd) + Send + 'static> {
    inner: Body,
    on_end: Option<F>,
}

impl<F: FnOnce(BodyEnd) + Send + 'static> Observed<F> {
    pub(crate) fn new(inner: Body, on_end: F) -> Self {
        Self {
            inner,
            on_end: Some(on_end),
        }
    }

    fn finish(&mut self, end: BodyEnd) {
        if let Some(f) = self.on_end.take() {
            f(end);
        }
    }
}

impl<F: FnOnce(BodyEnd) + Send + 'static> Unpin for Observed<F> {}

impl<F: FnOnce(BodyEnd) + Send + 'static> HttpBody for Observed<F> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code =
                        crate::failover::classify::grpc_status(trailers).unwrap_or(Code::Unknown);
                    this.finish(BodyEnd::Status(code));
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(BodyEnd::Error),
            // A stream that ends without trailers carries no status.
            Poll::Ready(None) => this.finish(BodyEnd::Status(Code::Unknown)),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(BodyEnd) + Send + 'static> Drop for Observed<F> {
    fn drop(&mut self) {
        self.finish(BodyEnd::Dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_complete_bodies_replay() {
        let body = Body::new(http_body_util::Full::new(Bytes::from_static(b"hello")));
        let mut r = Replay::prepare(body, 1024).unwrap();
        assert!(r.can_replay());
        for _ in 0..2 {
            let b = r.next_body().unwrap().collect().await.unwrap().to_bytes();
            assert_eq!(&b[..], b"hello");
        }
    }

    #[tokio::test]
    async fn one_frame_is_kept_without_a_copy_and_frames_are_joined() {
        let data = Bytes::from(vec![1u8, 2, 3]);
        let body = Body::new(http_body_util::Full::new(data.clone()));
        let Replay::Buffered(kept) = Replay::prepare(body, 1024).unwrap() else {
            panic!("a small complete body is buffered");
        };
        assert_eq!(kept.as_ptr(), data.as_ptr(), "the same bytes, not a copy");

        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Status>>(2);
        tx.send(Ok(Frame::data(Bytes::from_static(b"ab"))))
            .await
            .unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"cd"))))
            .await
            .unwrap();
        drop(tx);
        let body = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let mut r = Replay::prepare(body, 1024).unwrap();
        assert!(r.can_replay());
        let b = r.next_body().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(&b[..], b"abcd");
    }

    #[tokio::test]
    async fn resent_bodies_announce_no_length() {
        let body = Body::new(http_body_util::Full::new(Bytes::from_static(b"hello")));
        let mut r = Replay::prepare(body, 1024).unwrap();
        let b = r.next_body().unwrap();
        assert_eq!(b.size_hint().exact(), None, "no content-length added");
        assert_eq!(&b.collect().await.unwrap().to_bytes()[..], b"hello");
    }

    #[tokio::test]
    async fn large_bodies_are_sent_once_and_whole() {
        let body = Body::new(http_body_util::Full::new(Bytes::from(vec![7u8; 100])));
        let mut r = Replay::prepare(body, 10).unwrap();
        assert!(!r.can_replay());
        let b = r.next_body().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(b.len(), 100);
        assert!(r.next_body().is_none());
    }

    #[tokio::test]
    async fn streaming_bodies_are_not_waited_for() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Status>>(1);
        let body = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let mut r = Replay::prepare(body, 1024).unwrap();
        assert!(!r.can_replay());
        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .unwrap();
        drop(tx);
        let b = r.next_body().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(&b[..], b"x");
    }

    #[tokio::test]
    async fn observed_bodies_report_their_end() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let inner = Body::new(
            http_body_util::Full::new(Bytes::from_static(b"abc"))
                .with_trailers(async move { Some(Ok(trailers)) }),
        );
        let obs = Observed::new(inner, move |end| tx.send(end).unwrap());
        let _ = obs.collect().await.unwrap();
        assert_eq!(rx.recv().unwrap(), BodyEnd::Status(Code::Ok));

        let (tx, rx) = std::sync::mpsc::channel();
        drop(Observed::new(Body::empty(), move |end| {
            tx.send(end).unwrap()
        }));
        assert_eq!(rx.recv().unwrap(), BodyEnd::Dropped);
    }
}
