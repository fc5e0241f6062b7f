//! A client connection whose URL-form `:authority` header values are repaired before h2 reads
//! them.
//!
//! etcdctl 3.4 dials some members itself (`endpoint status`, `endpoint hashkv`, `defrag`,
//! `move-leader`, every `--cluster` form) as the gRPC target `passthrough:///http://HOST:PORT`,
//! and grpc-go then sends `:authority: http://HOST:PORT`. Go's HTTP/2 server takes any
//! authority; h2's parses it as a URI authority and resets the stream with PROTOCOL_ERROR
//! (`malformed authority`), with no setting to relax it. [`AuthorityRepair`] sits between the
//! socket and h2 and rewrites such a value, in the bytes h2 is about to read, into a valid
//! authority of the same length (`http://127.0.0.1:2379` becomes `http-x-127.0.0.1:2379`; see
//! [`scan`] for why the length must not change). Nothing in ballot reads the authority.
//!
//! The common case costs a walk over each read's frame headers and the few octets of each
//! request's header block, with no copy: the read goes straight into h2's buffer and is
//! repaired there. Only while an `:authority` value is split across reads are the bytes from
//! its start kept back (in `spill`), until the rest arrives. Writes pass straight through.

pub mod huffman;
mod huffman_table;
pub mod scan;

use scan::Scanner;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Octets read at a time while a value is held back.
const SPILL_READ_BYTES: usize = 4096;

/// A byte stream whose client `:authority` values are repaired (see the module documentation).
pub struct AuthorityRepair<S> {
    inner: S,
    scanner: Scanner,
    /// Bytes read since an `:authority` value began and could not yet be repaired, then what
    /// followed them; empty in the common case.
    spill: Vec<u8>,
    /// Octets of `spill` already handed to the reader.
    delivered: usize,
    /// Octets of `spill` that may be handed on (scanned and not held back).
    releasable: usize,
}

impl<S> AuthorityRepair<S> {
    pub fn new(inner: S) -> Self {
        AuthorityRepair {
            inner,
            scanner: Scanner::new(),
            spill: Vec::new(),
            delivered: 0,
            releasable: 0,
        }
    }

    /// Hands on what `spill` may give; true if it gave anything.
    fn deliver_spill(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let ready = &self.spill[self.delivered..self.releasable];
        if ready.is_empty() {
            return false;
        }
        let taken = ready.len().min(buf.remaining());
        buf.put_slice(&ready[..taken]);
        self.delivered += taken;
        if self.delivered == self.spill.len() {
            self.spill.clear();
            self.delivered = 0;
            self.releasable = 0;
        }
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRepair<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.spill.is_empty() {
                // The common case: read into the caller's buffer and repair there.
                let start = buf.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let end = buf.filled().len();
                if end == start {
                    return Poll::Ready(Ok(())); // end of stream
                }
                let Some(held) = this.scanner.scan(&mut buf.filled_mut()[start..end], 0) else {
                    return Poll::Ready(Ok(()));
                };
                this.spill
                    .extend_from_slice(&buf.filled()[start + held..end]);
                this.scanner.rebase(held);
                buf.set_filled(start + held);
                if held > 0 {
                    return Poll::Ready(Ok(()));
                }
                // Nothing may go on yet, and an empty read would mean the end: read on.
                continue;
            }
            if this.deliver_spill(buf) {
                return Poll::Ready(Ok(()));
            }
            // Everything from `releasable` on is held back; what came before it is gone.
            if this.delivered > 0 {
                this.spill.drain(..this.delivered);
                this.scanner.rebase(this.delivered);
                this.releasable -= this.delivered;
                this.delivered = 0;
            }
            let scanned = this.spill.len();
            this.spill.resize(scanned + SPILL_READ_BYTES, 0);
            let mut read = ReadBuf::new(&mut this.spill[scanned..]);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut read);
            let got = read.filled().len();
            this.spill.truncate(scanned + got);
            ready!(polled)?;
            if got == 0 {
                // The connection ended inside a value: hand on what there is.
                this.scanner.give_up();
                this.releasable = this.spill.len();
                continue;
            }
            this.releasable = this
                .scanner
                .scan(&mut this.spill, scanned)
                .unwrap_or(this.spill.len());
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRepair<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
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
mod tests;
