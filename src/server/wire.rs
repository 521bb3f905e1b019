//! The server's side of a socket: one ordered queue of outgoing bytes.
//!
//! Everything the server sends is encoded here and appended as bytes. A
//! broadcast is encoded into a complete WebSocket frame once per protocol
//! mode when it is published. A recipient gets a small frame as a copy
//! appended to its queue (chat lines are small, and copying them is cheaper
//! than keeping one buffer per frame) and a large one as a shared reference,
//! so a peer that stops reading costs little memory before `--max-lag`
//! closes it. Whatever has queued up goes out with one vectored write when
//! the connection flushes, and the queue's memory is let go, so an idle
//! connection holds none.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::frames::opcode::{CLOSE, PING, PONG, TEXT};

/// The first allocation for small frames: enough for a few dozen chat lines.
const FIRST_CAPACITY: usize = 4096;
/// Frames up to this size are copied; larger ones are shared.
const COPY_MAX: usize = 512;
/// Most buffers handed to one vectored write.
const MAX_SLICES: usize = 64;

/// A connected stream the server can send batches of bytes on.
pub trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// Writes from `bufs` in order; like `poll_write_vectored`.
    fn poll_send(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write_vectored(cx, bufs)
    }
}

/// Plain TCP sends with `sendmsg`, which skips the file layer that `writev`
/// goes through (about 5% of the server's time when every delivery is its
/// own write).
impl Transport for TcpStream {
    #[cfg(unix)]
    fn poll_send(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        use nix::sys::socket::{MsgFlags, UnixAddr, sendmsg};
        use std::os::fd::AsRawFd;
        use tokio::io::Interest;

        let fd = self.as_raw_fd();
        loop {
            ready!(self.poll_write_ready(cx))?;
            let sent = self.try_io(Interest::WRITABLE, || {
                sendmsg(fd, bufs, &[], MsgFlags::MSG_NOSIGNAL, None::<&UnixAddr>)
                    .map_err(io::Error::from)
            });
            match sent {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                sent => return Poll::Ready(sent),
            }
        }
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {}

/// A stream whose writes are queued until it is flushed.
#[derive(Debug)]
pub struct Wire<S> {
    io: S,
    /// Buffers to send, oldest first; the first `sent` bytes of the front
    /// one are gone already.
    chunks: VecDeque<Bytes>,
    sent: usize,
    /// Small frames copied together, to become one chunk.
    tail: BytesMut,
    /// Frames queued since the queue was last written out completely.
    queued: usize,
    /// Bytes waiting to be written (exact: written bytes are taken off).
    queued_bytes: usize,
    /// Bytes written since the stream was opened.
    written: u64,
}

impl<S> Wire<S> {
    /// Wraps a connected stream.
    pub fn new(io: S) -> Self {
        Self {
            io,
            chunks: VecDeque::new(),
            sent: 0,
            tail: BytesMut::new(),
            queued: 0,
            queued_bytes: 0,
            written: 0,
        }
    }

    /// Bytes written since the stream was opened: whether the peer reads
    /// shows in whether this moves.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Queues bytes that are one or more whole frames.
    fn push_frame(&mut self, frame: &[u8]) {
        self.reserve(frame.len());
        self.tail.extend_from_slice(frame);
        self.queued += 1;
        self.queued_bytes += frame.len();
    }

    /// Queues a whole frame shared with other connections.
    pub fn push_shared(&mut self, frame: &Bytes) {
        if frame.len() <= COPY_MAX {
            return self.push_frame(frame);
        }
        self.seal();
        self.chunks.push_back(frame.clone());
        self.queued += 1;
        self.queued_bytes += frame.len();
    }

    /// Queues a text frame carrying `text`.
    pub fn push_text(&mut self, text: &[u8]) {
        self.reserve(text.len() + MAX_HEADER);
        let before = self.tail.len();
        put_header(&mut self.tail, TEXT, text.len());
        self.tail.extend_from_slice(text);
        self.queued += 1;
        self.queued_bytes += self.tail.len() - before;
    }

    /// Queues an empty ping frame.
    pub fn push_ping(&mut self) {
        self.push_control(PING, &[]);
    }

    /// Queues a pong answering a ping's payload (at most 125 bytes).
    pub fn push_pong(&mut self, payload: &[u8]) {
        self.push_control(PONG, payload);
    }

    /// Queues a close frame: with a code and as much of `reason` as fits,
    /// or empty without a code.
    pub fn push_close(&mut self, code: Option<u16>, reason: &str) {
        let Some(code) = code else {
            return self.push_control(CLOSE, &[]);
        };
        // Control frames carry at most 125 bytes: the code plus 123 of reason.
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        self.push_control(CLOSE, &payload);
    }

    fn push_control(&mut self, opcode: u8, payload: &[u8]) {
        self.reserve(payload.len() + 2);
        let before = self.tail.len();
        put_header(&mut self.tail, opcode, payload.len());
        self.tail.extend_from_slice(payload);
        self.queued += 1;
        self.queued_bytes += self.tail.len() - before;
    }

    /// Whether anything waits to be written.
    pub fn has_pending(&self) -> bool {
        !self.tail.is_empty() || !self.chunks.is_empty()
    }

    /// Frames queued since the queue was last written out completely: how
    /// far behind the peer is, for `--max-lag`.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Bytes waiting to be written (shared frames in full), for
    /// `--max-lag-bytes`.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    fn reserve(&mut self, more: usize) {
        if self.tail.capacity() - self.tail.len() < more {
            self.tail.reserve(more.max(FIRST_CAPACITY));
        }
    }

    /// Moves the copied frames into the chunk queue, keeping their order.
    fn seal(&mut self) {
        if !self.tail.is_empty() {
            self.chunks.push_back(self.tail.split().freeze());
        }
    }
}

/// The longest header of an unmasked frame.
const MAX_HEADER: usize = 10;

/// Appends the header of a final, unmasked frame.
fn put_header(out: &mut impl BufMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | opcode);
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=0xffff => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
}

/// A complete text frame carrying `text`, to share between many recipients.
pub fn text_frame(text: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(text.len() + MAX_HEADER);
    put_header(&mut frame, TEXT, text.len());
    frame.extend_from_slice(text);
    frame.freeze()
}

impl<S: Transport> Wire<S> {
    /// Reads from the socket.
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }

    /// Writes everything queued, then lets go of the buffers.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.seal();
        while !self.chunks.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (index, chunk) in self.chunks.iter().take(MAX_SLICES).enumerate() {
                let skip = if index == 0 { self.sent } else { 0 };
                slices[index] = IoSlice::new(&chunk[skip..]);
                count += 1;
            }
            let mut n = ready!(self.io.poll_send(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.queued_bytes = self.queued_bytes.saturating_sub(n);
            self.written += n as u64;
            while n > 0 {
                let Some(front) = self.chunks.front() else {
                    break;
                };
                let left = front.len() - self.sent;
                if n < left {
                    self.sent += n;
                    break;
                }
                n -= left;
                self.sent = 0;
                self.chunks.pop_front();
            }
        }
        self.tail = BytesMut::new();
        self.chunks = VecDeque::new();
        self.queued = 0;
        self.queued_bytes = 0;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Writes everything queued, then closes the sending side.
    pub fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flush(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_frames_fit_in_a_control_frame() {
        let mut wire = Wire::new(());
        wire.push_close(Some(1013), "too slow");
        wire.push_close(None, "");
        // 200 bytes of reason: cut to what fits, on a character boundary.
        wire.push_close(Some(1002), &"é".repeat(100));
        let bytes = &wire.tail[..];
        assert_eq!(&bytes[..12], b"\x88\x0a\x03\xf5too slow");
        assert_eq!(&bytes[12..14], b"\x88\x00");
        assert_eq!(&bytes[14..18], &[0x88, 2 + 122, 0x03, 0xea]);
        assert_eq!(
            std::str::from_utf8(&bytes[18..]),
            Ok("é".repeat(61).as_str())
        );
    }

    #[test]
    fn queued_bytes_count_whole_frames() {
        let mut wire = Wire::new(());
        wire.push_text(b"hello");
        wire.push_ping();
        wire.push_shared(&text_frame(&[b'a'; 1000]));
        assert_eq!(wire.queued(), 3);
        assert_eq!(wire.queued_bytes(), 7 + 2 + 1004);
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        assert_eq!(&text_frame(b"hi")[..], b"\x81\x02hi");
        let medium = text_frame(&[b'a'; 126]);
        assert_eq!(&medium[..4], &[0x81, 126, 0, 126]);
        assert_eq!(medium.len(), 4 + 126);
        let long = text_frame(&[b'a'; 70_000]);
        assert_eq!(&long[..2], &[0x81, 127]);
        assert_eq!(&long[2..10], &70_000u64.to_be_bytes());
        assert_eq!(long.len(), 10 + 70_000);
    }
}
