//! Fan-out: publish an event to a room; subscribe to a room.
//!
//! Every event is rendered and encoded into a WebSocket frame once per
//! protocol mode when it is published ([`Delivery`]); each recipient then
//! gets a copy of the same bytes. A subscriber holds a [`RoomFeed`], which
//! reports falling behind as [`FeedError::Lagged`] and never shows which
//! channel carries the events.

mod channel;
mod memory;
mod redis;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

pub use channel::{Bounds, FeedError, RoomFeed};
pub use memory::MemoryFanout;
pub use redis::RedisFanout;
pub(crate) use redis::parse_entry;

use super::ConnId;
use super::history::BoxFuture;
use super::wire::text_frame;
use crate::protocol::{Mode, ServerFrame};

/// Publishing to and subscribing to rooms.
///
/// In memory this is one channel per room (a ring bounded in frames and
/// bytes, read by every member's feed); a shared
/// backend feeds the same local channels from its own subscription, so what
/// a connection does per event is the same in every mode.
pub trait Fanout: Send + Sync + fmt::Debug {
    /// Sends `event` to everyone subscribed to `room` (on every node).
    /// Never blocks; an event for a room nobody follows is dropped.
    fn publish(&self, room: &str, event: Arc<Delivery>);

    /// Follows `room`: every event published after this returns reaches
    /// the feed (a shared backend waits here until its node follows the room).
    fn subscribe(&self, room: &str) -> BoxFuture<'_, RoomFeed>;

    /// The id of the last message published to `room` since it last had
    /// followers, if known (for unread counts in `rooms` answers).
    fn last_id(&self, room: &str) -> Option<u64>;
}

/// One event on its way to a room's members, pre-rendered for both modes.
#[derive(Debug)]
pub struct Delivery {
    /// The connection that caused it.
    pub origin: ConnId,
    /// The structured event (used for the sender's acknowledgement).
    pub frame: ServerFrame,
    /// The sender's client id, for chat messages that carried one.
    pub cid: Option<String>,
    /// The plain-mode line, as a whole frame.
    plain: Bytes,
    /// The JSON-mode object, as a whole frame.
    json: Bytes,
}

impl Delivery {
    /// Renders `frame` for both modes, once.
    pub fn new(origin: ConnId, frame: ServerFrame, cid: Option<String>) -> Self {
        Self {
            origin,
            plain: text_frame(frame.render(Mode::Plain).as_bytes()),
            json: text_frame(frame.render(Mode::Json).as_bytes()),
            frame,
            cid,
        }
    }

    /// The encoded frame to send to a connection in `mode`.
    pub fn wire(&self, mode: Mode) -> &Bytes {
        match mode {
            Mode::Plain => &self.plain,
            Mode::Json => &self.json,
        }
    }

    /// The sender's copy of a chat message that carried a cid: the same
    /// message with its cid, which is the sender's acknowledgement.
    pub fn acknowledgement(&self) -> Option<ServerFrame> {
        let cid = self.cid.as_ref()?;
        let mut frame = self.frame.clone();
        let ServerFrame::Message { cid: slot, .. } = &mut frame else {
            return None;
        };
        *slot = Some(cid.clone());
        Some(frame)
    }

    /// The bytes of both encodings, which is what a room's channel holds
    /// for the event while some feed has still to read it.
    pub fn encoded_len(&self) -> usize {
        self.plain.len() + self.json.len()
    }

    /// The id of a stored chat message, `None` for notices.
    pub fn id(&self) -> Option<u64> {
        match self.frame {
            ServerFrame::Message { id, .. } => Some(id),
            _ => None,
        }
    }
}
