//! The fan-out seam: publish to a room, subscribe to a room, read history after an id.
//!
//! This first implementation keeps everything in process: one
//! `tokio::sync::broadcast` channel and one ring buffer of recent messages per
//! room. A shared backend (Redis) slots in behind the same three operations.
//!
//! Every event is rendered and encoded into a WebSocket frame once per
//! protocol mode when it is published; each recipient then gets a copy of the
//! same bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::broadcast;

use super::wire::text_frame;
use crate::protocol::{Mode, ServerFrame, now_ms};

/// Identifies one connection on this server.
pub type ConnId = u64;

/// One event on its way to a room's members, pre-rendered for both modes.
#[derive(Debug)]
pub struct Delivery {
    /// The connection that caused it.
    pub origin: ConnId,
    /// The structured event (used for the sender's acknowledgement and replays).
    pub frame: ServerFrame,
    /// The sender's client id, for chat messages that carried one.
    pub cid: Option<String>,
    /// The plain-mode line, as a whole frame.
    plain: Bytes,
    /// The JSON-mode object, as a whole frame.
    json: Bytes,
}

impl Delivery {
    fn new(origin: ConnId, frame: ServerFrame, cid: Option<String>) -> Self {
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

    /// The id of a stored chat message, `None` for notices.
    pub fn id(&self) -> Option<u64> {
        match self.frame {
            ServerFrame::Message { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Whether this is a chat message (as opposed to a notice).
    pub fn is_message(&self) -> bool {
        self.id().is_some()
    }
}

/// Where a new subscriber starts reading a room's history.
#[derive(Debug, Clone, Copy)]
pub enum Replay {
    /// The most recent messages, at most this many.
    Recent(usize),
    /// Every stored message with an id greater than this.
    After(u64),
}

/// All rooms of this server.
#[derive(Debug)]
pub struct Bus {
    rooms: Mutex<HashMap<Arc<str>, Arc<Room>>>,
    history: usize,
    channel: usize,
}

impl Bus {
    /// A bus whose rooms keep `history` messages and let a subscriber fall
    /// `channel` events behind before it counts as lagging.
    pub fn new(history: usize, channel: usize) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            history,
            channel: channel.max(1),
        }
    }

    /// The room called `name` (already normalised), created on first use.
    pub fn room(&self, name: &str) -> Arc<Room> {
        let mut rooms = lock(&self.rooms);
        if let Some(room) = rooms.get(name) {
            return room.clone();
        }
        let name: Arc<str> = name.into();
        let room = Arc::new(Room {
            name: name.clone(),
            history: self.history,
            state: Mutex::new(RoomState {
                tx: broadcast::channel(self.channel).0,
                stored: VecDeque::new(),
                next_id: 1,
            }),
        });
        rooms.insert(name, room.clone());
        room
    }
}

/// One room: its live channel and its recent history.
#[derive(Debug)]
pub struct Room {
    name: Arc<str>,
    history: usize,
    /// One lock orders id assignment, storage and sending, so a subscriber
    /// that snapshots history under it sees no gap and no duplicate at the seam.
    /// It is never held across an `.await`.
    state: Mutex<RoomState>,
}

#[derive(Debug)]
struct RoomState {
    tx: broadcast::Sender<Arc<Delivery>>,
    stored: VecDeque<Arc<Delivery>>,
    next_id: u64,
}

/// A live subscription to a room plus the history to replay before it.
pub struct Subscription {
    /// Events published after the snapshot, in order.
    pub live: broadcast::Receiver<Arc<Delivery>>,
    /// Stored messages to show first, oldest first.
    pub backlog: Vec<Arc<Delivery>>,
}

impl Room {
    /// The room's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Subscribes and snapshots history in one step.
    pub fn subscribe(&self, replay: Replay) -> Subscription {
        let state = lock(&self.state);
        let backlog = match replay {
            Replay::Recent(n) => {
                let skip = state.stored.len().saturating_sub(n);
                state.stored.iter().skip(skip).cloned().collect()
            }
            Replay::After(after) => {
                let start = state
                    .stored
                    .partition_point(|d| d.id().is_some_and(|id| id <= after));
                state.stored.iter().skip(start).cloned().collect()
            }
        };
        Subscription {
            live: state.tx.subscribe(),
            backlog,
        }
    }

    /// Stores and sends a chat message; returns it with its id and timestamp.
    pub fn publish_message(
        &self,
        origin: ConnId,
        from: &str,
        text: String,
        cid: Option<String>,
    ) -> Arc<Delivery> {
        let mut state = lock(&self.state);
        let id = state.next_id;
        state.next_id += 1;
        let frame = ServerFrame::Message {
            id,
            room: self.name.to_string(),
            from: from.to_owned(),
            text,
            ts: now_ms(),
            cid: None,
            history: false,
        };
        let delivery = Arc::new(Delivery::new(origin, frame, cid));
        if self.history > 0 {
            if state.stored.len() == self.history {
                state.stored.pop_front();
            }
            state.stored.push_back(delivery.clone());
        }
        // An error only means nobody is subscribed right now.
        let _ = state.tx.send(delivery.clone());
        delivery
    }

    /// Sends a notice (joined, left, renamed) to the room's current members.
    pub fn publish_notice(&self, origin: ConnId, frame: ServerFrame) {
        let delivery = Arc::new(Delivery::new(origin, frame, None));
        let state = lock(&self.state);
        let _ = state.tx.send(delivery);
    }
}

/// Locks a mutex, recovering the data if another thread panicked while holding it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(backlog: &[Arc<Delivery>]) -> Vec<u64> {
        backlog.iter().filter_map(|d| d.id()).collect()
    }

    #[test]
    fn history_is_bounded_and_replayed_in_order() {
        let bus = Bus::new(3, 16);
        let room = bus.room("lobby");
        for i in 0..5 {
            room.publish_message(1, "a", format!("m{i}"), None);
        }
        assert_eq!(ids(&room.subscribe(Replay::Recent(10)).backlog), [3, 4, 5]);
        assert_eq!(ids(&room.subscribe(Replay::Recent(2)).backlog), [4, 5]);
        assert_eq!(ids(&room.subscribe(Replay::After(3)).backlog), [4, 5]);
        assert_eq!(ids(&room.subscribe(Replay::After(0)).backlog), [3, 4, 5]);
        assert!(room.subscribe(Replay::After(5)).backlog.is_empty());
    }

    #[test]
    fn subscription_seam_has_no_gap_or_duplicate() {
        let bus = Bus::new(100, 16);
        let room = bus.room("lobby");
        room.publish_message(1, "a", "one".into(), None);
        let mut sub = room.subscribe(Replay::After(0));
        room.publish_message(1, "a", "two".into(), None);
        assert_eq!(ids(&sub.backlog), [1]);
        let live = sub.live.try_recv().expect("live message");
        assert_eq!(live.id(), Some(2));
        assert!(sub.live.try_recv().is_err());
    }

    #[test]
    fn rooms_are_separate() {
        let bus = Bus::new(10, 16);
        let lobby = bus.room("lobby");
        let rust = bus.room("rust");
        let mut sub = rust.subscribe(Replay::Recent(10));
        lobby.publish_message(1, "a", "hi".into(), None);
        assert!(sub.live.try_recv().is_err());
        assert_eq!(rust.publish_message(1, "a", "x".into(), None).id(), Some(1));
        assert!(Arc::ptr_eq(&bus.room("rust"), &rust));
    }
}
