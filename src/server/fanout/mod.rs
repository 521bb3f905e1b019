//! Fan-out: publish an event to a room; subscribe to a room.
//!
//! Every event is rendered and encoded into a WebSocket frame once per
//! protocol mode when it is published ([`Delivery`]); each recipient then
//! gets a copy of the same bytes. A subscriber holds a [`RoomFeed`], which
//! reports falling behind as [`FeedError::Lagged`] and never shows which
//! channel carries the events.

mod memory;
mod redis;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

pub use memory::MemoryFanout;
pub use redis::RedisFanout;
pub(crate) use redis::parse_entry;

use super::ConnId;
use super::history::BoxFuture;
use super::wire::text_frame;
use crate::protocol::{Mode, ServerFrame};

/// Publishing to and subscribing to rooms.
///
/// In memory this is one `tokio::sync::broadcast` channel per room; a shared
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

    /// The id of a stored chat message, `None` for notices.
    pub fn id(&self) -> Option<u64> {
        match self.frame {
            ServerFrame::Message { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// Why a [`RoomFeed`] has no next event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedError {
    /// The subscriber fell this many events behind; they are gone.
    Lagged(u64),
    /// The room's channel is gone.
    Closed,
}

/// A live subscription to one room: its events in publishing order.
#[derive(Debug)]
pub struct RoomFeed {
    rx: broadcast::Receiver<Arc<Delivery>>,
    /// Keeps the room's channel open while this feed follows it.
    _channel: Arc<memory::Channel>,
    /// Messages with ids up to this one were already shown from history.
    seen_through: u64,
}

impl RoomFeed {
    fn new(rx: broadcast::Receiver<Arc<Delivery>>, channel: Arc<memory::Channel>) -> Self {
        Self {
            rx,
            _channel: channel,
            seen_through: 0,
        }
    }

    /// Skips messages with ids up to `id` from now on: they were replayed
    /// from history after this feed was opened. This is what makes the seam
    /// between history and live events exact in every backend.
    pub fn seen_through(&mut self, id: u64) {
        self.seen_through = self.seen_through.max(id);
    }

    fn fresh(&mut self, event: &Delivery) -> bool {
        if let ServerFrame::Gap { after: None, .. } = event.frame {
            // The room's history started again: so do its ids.
            self.seen_through = 0;
        }
        event.id().is_none_or(|id| id > self.seen_through)
    }

    /// Waits for the next event.
    pub async fn next(&mut self) -> Result<Arc<Delivery>, FeedError> {
        loop {
            match self.rx.recv().await {
                Ok(event) if self.fresh(&event) => return Ok(event),
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => return Err(FeedError::Lagged(n)),
                Err(RecvError::Closed) => return Err(FeedError::Closed),
            }
        }
    }

    /// The next event if one is already waiting.
    pub fn try_next(&mut self) -> Result<Option<Arc<Delivery>>, FeedError> {
        loop {
            match self.rx.try_recv() {
                Ok(event) if self.fresh(&event) => return Ok(Some(event)),
                Ok(_) => {}
                Err(TryRecvError::Empty) => return Ok(None),
                Err(TryRecvError::Lagged(n)) => return Err(FeedError::Lagged(n)),
                Err(TryRecvError::Closed) => return Err(FeedError::Closed),
            }
        }
    }
}
