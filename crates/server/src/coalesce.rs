//! A client connection that gathers the HTTP/2 frames of many responses into one socket write.
//!
//! An HTTP/2 server (hyper's, and h2's connection driven directly, as [`crate::etcd::serve`]
//! does) flushes each time its connection task runs, and with one task per request the
//! connection task runs once or twice per response: a profile of serializable gets
//! at 64 clients showed 1.6 `writev` calls per response and a third of the node's CPU in the
//! kernel's TCP send path. Go's gRPC server, which etcd uses, flushes only when its writer has
//! nothing more queued. [`CoalescedStream`] does the same under h2. Writes go to a buffer, and
//! the first flush of a buffer yields to the runtime once (`tokio::task::yield_now`, which runs
//! the worker's other ready tasks first: the requests of other streams finishing their
//! responses) before the gathered bytes go out in one write. Under load one write then carries
//! many responses; an idle connection pays one task switch per flush.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes gathered before a write goes out without waiting for the flush.
const BUFFER_BYTES_MAX: usize = 256 * 1024;

type Yield = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A TCP connection whose writes are gathered until a flush (see the module documentation).
pub struct CoalescedStream {
    inner: TcpStream,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already written to the socket.
    written: usize,
    /// The yield of the flush under way; once done, the flush writes without yielding again.
    yielding: Option<Yield>,
    yielded: bool,
}

impl CoalescedStream {
    pub fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            buffer: Vec::new(),
            written: 0,
            yielding: None,
            yielded: false,
        }
    }

    /// Writes the buffer out, as far as the socket takes it.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buffer.len() {
            let written =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buffer[self.written..]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += written;
        }
        self.buffer.clear();
        self.written = 0;
        self.yielded = false;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `incoming` bytes: a full buffer goes out first.
    fn poll_room(&mut self, cx: &mut Context<'_>, incoming: usize) -> Poll<io::Result<()>> {
        if !self.buffer.is_empty() && self.buffer.len() + incoming > BUFFER_BYTES_MAX {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for CoalescedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CoalescedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_room(cx, buf.len()))?;
        if this.buffer.is_empty() && buf.len() >= BUFFER_BYTES_MAX {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.buffer.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let total: usize = bufs.iter().map(|buf| buf.len()).sum();
        ready!(this.poll_room(cx, total))?;
        if this.buffer.is_empty() && total >= BUFFER_BYTES_MAX {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for buf in bufs {
            this.buffer.extend_from_slice(buf);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.buffer.is_empty() && !this.yielded {
            let yielding = this
                .yielding
                .get_or_insert_with(|| Box::pin(tokio::task::yield_now()));
            ready!(yielding.as_mut().poll(cx));
            this.yielding = None;
            this.yielded = true;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (CoalescedStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(address), listener.accept());
        (CoalescedStream::new(server.unwrap().0), client.unwrap())
    }

    #[tokio::test]
    async fn writes_reach_the_peer_in_order_after_a_flush() {
        let (mut stream, mut peer) = pair().await;
        stream.write_all(b"one ").await.unwrap();
        let taken = stream
            .write_vectored(&[IoSlice::new(b"two "), IoSlice::new(b"three")])
            .await
            .unwrap();
        assert_eq!(taken, 9, "a vectored write is buffered whole");
        assert_eq!(stream.buffer.len(), 13, "nothing goes out before a flush");
        stream.flush().await.unwrap();
        assert!(stream.buffer.is_empty());
        let mut received = [0u8; 13];
        peer.read_exact(&mut received).await.unwrap();
        assert_eq!(&received, b"one two three");
    }

    #[tokio::test]
    async fn large_writes_go_through_whole_and_in_order() {
        let (mut stream, mut peer) = pair().await;
        let big: Vec<u8> = (0..3 * BUFFER_BYTES_MAX).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut received = vec![0u8; 3 * BUFFER_BYTES_MAX + 5];
            peer.read_exact(&mut received).await.unwrap();
            received
        });
        stream.write_all(b"head:").await.unwrap();
        stream.write_all(&big).await.unwrap();
        stream.flush().await.unwrap();
        let received = reader.await.unwrap();
        assert_eq!(&received[..5], b"head:");
        assert!(received[5..] == big[..], "the bytes arrive as written");
    }

    #[tokio::test]
    async fn shutdown_sends_what_is_buffered() {
        let (mut stream, mut peer) = pair().await;
        stream.write_all(b"last words").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut received = Vec::new();
        peer.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"last words");
    }
}
