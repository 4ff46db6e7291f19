//! A stream that can be cut from outside: once its token is cancelled,
//! every read and write fails with `TimedOut`. The front end wraps each
//! client socket in one so a client that never finishes its SSH handshake
//! (or never asks for a session) is dropped even while russh waits inside a
//! key exchange, where it would not look at a disconnect request; channel
//! writers are wrapped too, because russh's wait for window space does not
//! end when the connection does.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pub struct Cuttable<S> {
    inner: S,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    reason: &'static str,
}

impl<S> Cuttable<S> {
    pub fn new(inner: S, cut: CancellationToken) -> Self {
        Self::because(inner, cut, "connection cut: deadline passed")
    }

    /// A cut stream whose errors say `reason`.
    pub fn because(inner: S, cut: CancellationToken, reason: &'static str) -> Self {
        Cuttable {
            inner,
            cut: Box::pin(cut.cancelled_owned()),
            reason,
        }
    }

    /// Ready (with the error to return) once the token is cancelled; also
    /// registers the waker, so a cut wakes a task blocked on the socket.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let reason = self.reason;
        self.cut
            .as_mut()
            .poll(cx)
            .map(|()| io::Error::new(io::ErrorKind::TimedOut, reason))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Cuttable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(e) = this.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Cuttable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Poll::Ready(e) = this.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(e) = this.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_blocked_read_fails_once_the_token_is_cancelled() {
        let (_peer, ours) = tokio::io::duplex(64);
        let cut = CancellationToken::new();
        let mut s = Cuttable::new(ours, cut.clone());
        let reader = tokio::spawn(async move { s.read_u8().await });
        tokio::task::yield_now().await;
        assert!(!reader.is_finished());
        cut.cancel();
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn bytes_flow_until_cut_and_writes_fail_after() {
        let (mut peer, ours) = tokio::io::duplex(64);
        let cut = CancellationToken::new();
        let mut s = Cuttable::new(ours, cut.clone());
        peer.write_all(b"hi").await.unwrap();
        let mut two = [0u8; 2];
        s.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"hi");
        s.write_all(b"ok").await.unwrap();
        cut.cancel();
        let err = s.write_all(b"more").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
