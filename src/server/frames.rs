//! Incoming WebSocket frames (RFC 6455, client to server), checked and put
//! together into messages.
//!
//! The server reads with a buffer on the stack and parses frames straight
//! out of it; only the start of a frame that has not fully arrived is kept,
//! so a connection between messages holds no read buffer at all (a codec
//! with its own buffer would keep several KiB per connection for ever).
//! Everything a client may get wrong ends the connection with the close
//! code the RFC asks for: 1002 for a broken frame, 1007 for text that is not
//! UTF-8, 1009 for a frame or message over `--max-frame-bytes`.

use std::collections::VecDeque;

/// One complete thing the peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary,
    /// A ping, with the payload its pong must carry.
    Ping(Vec<u8>),
    Pong,
    /// A close frame, with its code and reason if it had one.
    Close(Option<(u16, String)>),
    /// A fragment with nothing in it that does not end its message. It is
    /// handed out so the sender pays for it against flood control: empty
    /// fragments could otherwise keep a core busy for nothing.
    EmptyFragment,
}

/// Why the peer's input cannot be read any further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("frame or message of {0} bytes is over the limit")]
    TooBig(u64),
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
}

impl Violation {
    /// The close code that answers it.
    pub fn close_code(&self) -> u16 {
        match self {
            Violation::Protocol(_) => 1002,
            Violation::TooBig(_) => 1009,
            Violation::InvalidUtf8 => 1007,
        }
    }
}

/// Frame opcodes (RFC 6455, section 5.2), for both directions.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xa;
}

use opcode::{BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT};

/// What one fragment of a message costs at least against the message's size
/// limit, whatever its length (see [`FrameReader`]).
pub const FRAGMENT_COST: u64 = 16;

/// Parses the frames of one connection as its bytes arrive.
///
/// A violation does not take back what came before it: messages completed
/// earlier in the same read are handed out first, then the violation (RFC
/// 6455 7.1.7: failing the connection stops processing what follows).
#[derive(Debug)]
pub struct FrameReader {
    /// Largest frame payload, and largest message, accepted.
    max_bytes: usize,
    /// The start of a frame that has not fully arrived.
    partial: Vec<u8>,
    /// A fragmented message being put together: whether it is text, and its bytes.
    message: Option<(bool, Vec<u8>)>,
    /// What the message's fragments have cost so far, each at least
    /// [`FRAGMENT_COST`] (so endless empty fragments are a message too big).
    charged: u64,
    /// Parsed and not yet taken.
    ready: VecDeque<Incoming>,
    /// Why the input cannot be read any further, once it cannot; handed
    /// out after everything in `ready`.
    broken: Option<Violation>,
    /// Whether `broken` has been handed out (nothing more will be parsed).
    ended: bool,
}

impl FrameReader {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            partial: Vec::new(),
            message: None,
            charged: 0,
            ready: VecDeque::new(),
            broken: None,
            ended: false,
        }
    }

    /// The next parsed item, if any: a message or control frame, or, after
    /// all of those, the violation that ended the input.
    pub fn take(&mut self) -> Option<Result<Incoming, Violation>> {
        if let Some(item) = self.ready.pop_front() {
            if self.ready.is_empty() && self.ready.capacity() > 0 {
                // Nothing waits: give the memory back.
                self.ready = VecDeque::new();
            }
            return Some(Ok(item));
        }
        let violation = self.broken.take()?;
        self.ended = true;
        Some(Err(violation))
    }

    /// Takes bytes as they arrived and parses every whole frame in them.
    /// After a violation, further bytes are ignored.
    pub fn feed(&mut self, data: &[u8]) {
        if self.broken.is_some() || self.ended {
            return;
        }
        let result = if self.partial.is_empty() {
            self.parse(data)
                .map(|used| self.partial.extend_from_slice(&data[used..]))
        } else {
            let mut joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(data);
            self.parse(&joined).map(|used| {
                if used < joined.len() {
                    joined.drain(..used);
                    self.partial = joined;
                }
            })
        };
        if let Err(violation) = result {
            self.partial = Vec::new();
            self.message = None;
            self.broken = Some(violation);
        }
    }

    /// Parses whole frames off the front of `data`; returns the bytes used.
    fn parse(&mut self, data: &[u8]) -> Result<usize, Violation> {
        let mut at = 0;
        while let Some(used) = self.frame(&data[at..])? {
            at += used;
        }
        Ok(at)
    }

    /// Parses one frame if it has fully arrived; returns its length.
    fn frame(&mut self, data: &[u8]) -> Result<Option<usize>, Violation> {
        let [first, second, ..] = *data else {
            return Ok(None);
        };
        let fin = first & 0x80 != 0;
        if first & 0x70 != 0 {
            return Err(Violation::Protocol("reserved bits set"));
        }
        let opcode = first & 0x0f;
        let control = opcode >= CLOSE;
        if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
            return Err(Violation::Protocol("reserved opcode"));
        }
        if second & 0x80 == 0 {
            return Err(Violation::Protocol("client frames must be masked"));
        }
        let (len, header) = match second & 0x7f {
            126 => match data.get(2..4) {
                Some(bytes) => (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4),
                None => return Ok(None),
            },
            127 => match data.get(2..10) {
                Some(bytes) => {
                    let mut len = [0u8; 8];
                    len.copy_from_slice(bytes);
                    (u64::from_be_bytes(len), 10)
                }
                None => return Ok(None),
            },
            len => (u64::from(len), 2),
        };
        if control && (!fin || len > 125) {
            return Err(Violation::Protocol(
                "control frames must be whole and short",
            ));
        }
        // A fragment of a message (not a whole one, not a control frame)
        // costs at least FRAGMENT_COST: parsing a frame costs something
        // whatever it carries, and empty fragments could otherwise go on
        // for ever without the message growing.
        let fragment = !control && (!fin || opcode == CONTINUATION);
        let charged = if fragment {
            let before = if opcode == CONTINUATION {
                self.charged
            } else {
                0
            };
            before.saturating_add(len.max(FRAGMENT_COST))
        } else {
            len
        };
        // Saturating: a 64-bit length may be anything up to u64::MAX.
        let buffered = self
            .message
            .as_ref()
            .map_or(0, |(_, bytes)| bytes.len() as u64);
        let total = buffered.saturating_add(len);
        if total > self.max_bytes as u64 {
            return Err(Violation::TooBig(total));
        }
        if charged > self.max_bytes as u64 {
            return Err(Violation::TooBig(charged));
        }
        if fragment {
            self.charged = charged;
        }
        let len = len as usize;
        let Some(frame) = data.get(header..header + 4 + len) else {
            return Ok(None);
        };
        let (mask, masked) = frame.split_at(4);
        let payload: Vec<u8> = masked
            .iter()
            .zip(mask.iter().cycle())
            .map(|(byte, key)| byte ^ key)
            .collect();
        self.take_frame(opcode, fin, payload)?;
        Ok(Some(header + 4 + len))
    }

    fn take_frame(&mut self, opcode: u8, fin: bool, payload: Vec<u8>) -> Result<(), Violation> {
        match opcode {
            PING => self.ready.push_back(Incoming::Ping(payload)),
            PONG => self.ready.push_back(Incoming::Pong),
            CLOSE => self
                .ready
                .push_back(Incoming::Close(close_payload(&payload)?)),
            CONTINUATION => {
                let Some((_, bytes)) = &mut self.message else {
                    return Err(Violation::Protocol("continuation without a message"));
                };
                bytes.extend_from_slice(&payload);
                if payload.is_empty() && !fin {
                    self.ready.push_back(Incoming::EmptyFragment);
                }
                if fin {
                    let (text, bytes) = self.message.take().unwrap_or_default();
                    self.finish(text, bytes)?;
                }
            }
            _ => {
                if self.message.is_some() {
                    return Err(Violation::Protocol("new message inside a fragmented one"));
                }
                if fin {
                    self.finish(opcode == TEXT, payload)?;
                } else {
                    if payload.is_empty() {
                        self.ready.push_back(Incoming::EmptyFragment);
                    }
                    self.message = Some((opcode == TEXT, payload));
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, text: bool, bytes: Vec<u8>) -> Result<(), Violation> {
        let item = if text {
            Incoming::Text(String::from_utf8(bytes).map_err(|_| Violation::InvalidUtf8)?)
        } else {
            Incoming::Binary
        };
        self.ready.push_back(item);
        Ok(())
    }
}

/// Checks a close frame's payload: empty, or a code a peer may send plus UTF-8.
fn close_payload(payload: &[u8]) -> Result<Option<(u16, String)>, Violation> {
    let (code, reason) = match payload {
        [] => return Ok(None),
        [_] => return Err(Violation::Protocol("close frame of one byte")),
        [high, low, reason @ ..] => (u16::from_be_bytes([*high, *low]), reason),
    };
    let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !allowed {
        return Err(Violation::Protocol("close code not allowed on the wire"));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| Violation::InvalidUtf8)?;
    Ok(Some((code, reason.to_owned())))
}
