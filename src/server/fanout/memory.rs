//! The in-process fan-out: one `tokio::sync::broadcast` channel per room.
//!
//! A room's channel exists only while someone follows it: each feed holds
//! the sending side, the map only a weak reference, so the last feed to go
//! frees the channel and its buffer. What is left in the map (a name and a
//! dead reference) is swept out as new rooms are opened.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::broadcast;

use super::{Delivery, Fanout, RoomFeed};
use crate::server::history::BoxFuture;
use crate::server::lock;

/// A room's channel, shared by the feeds that follow it.
#[derive(Debug)]
pub(super) struct Channel {
    tx: broadcast::Sender<Arc<Delivery>>,
    /// The id of the last message published (0: none yet).
    last: AtomicU64,
}

/// Rooms' channels, created on first use and gone with their last follower.
#[derive(Debug)]
pub struct MemoryFanout {
    rooms: Mutex<Rooms>,
    /// Events a subscriber may fall behind before it counts as lagging.
    capacity: usize,
}

#[derive(Debug, Default)]
struct Rooms {
    channels: HashMap<Arc<str>, Weak<Channel>>,
    /// The map's size at which dead entries are swept out next.
    sweep_at: usize,
}

/// The least number of rooms between sweeps.
const SWEEP_MIN: usize = 64;

impl MemoryFanout {
    /// A fan-out whose subscribers may fall `capacity` events behind.
    pub fn new(capacity: usize) -> Self {
        Self {
            rooms: Mutex::new(Rooms::default()),
            capacity: capacity.max(1),
        }
    }

    /// Rooms that have a channel (someone follows them).
    #[cfg(test)]
    fn open_rooms(&self) -> usize {
        lock(&self.rooms)
            .channels
            .values()
            .filter(|weak| weak.strong_count() > 0)
            .count()
    }
}

impl Fanout for MemoryFanout {
    fn publish(&self, room: &str, event: Arc<Delivery>) {
        let channel = lock(&self.rooms).channels.get(room).and_then(Weak::upgrade);
        if let Some(channel) = channel {
            if let Some(id) = event.id() {
                channel.last.fetch_max(id, Ordering::Relaxed);
            }
            // An error only means nobody is subscribed right now.
            let _ = channel.tx.send(event);
        }
    }

    fn last_id(&self, room: &str) -> Option<u64> {
        let channel = lock(&self.rooms)
            .channels
            .get(room)
            .and_then(Weak::upgrade)?;
        let last = channel.last.load(Ordering::Relaxed);
        (last > 0).then_some(last)
    }

    fn subscribe(&self, room: &str) -> BoxFuture<'_, RoomFeed> {
        Box::pin(std::future::ready(self.follow(room)))
    }
}

impl MemoryFanout {
    /// Whether anyone on this node follows `room`.
    pub fn followed(&self, room: &str) -> bool {
        lock(&self.rooms)
            .channels
            .get(room)
            .is_some_and(|weak| weak.strong_count() > 0)
    }

    /// Follows `room` from now on.
    pub fn follow(&self, room: &str) -> RoomFeed {
        let mut rooms = lock(&self.rooms);
        if let Some(channel) = rooms.channels.get(room).and_then(Weak::upgrade) {
            let rx = channel.tx.subscribe();
            return RoomFeed::new(rx, channel);
        }
        if rooms.channels.len() >= rooms.sweep_at {
            rooms.channels.retain(|_, weak| weak.strong_count() > 0);
            rooms.sweep_at = (rooms.channels.len() * 2).max(SWEEP_MIN);
        }
        let (tx, rx) = broadcast::channel(self.capacity);
        let channel = Arc::new(Channel {
            tx,
            last: AtomicU64::new(0),
        });
        rooms.channels.insert(room.into(), Arc::downgrade(&channel));
        RoomFeed::new(rx, channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_is_freed_with_its_last_follower() {
        let fanout = MemoryFanout::new(16);
        let a = fanout.follow("one");
        let b = fanout.follow("one");
        let c = fanout.follow("two");
        assert_eq!(fanout.open_rooms(), 2);
        drop(a);
        assert_eq!(fanout.open_rooms(), 2);
        drop(b);
        assert_eq!(fanout.open_rooms(), 1);
        drop(c);
        assert_eq!(fanout.open_rooms(), 0);
        // Dead entries do not pile up as rooms come and go.
        for n in 0..10_000 {
            drop(fanout.follow(&format!("room{n}")));
        }
        assert!(lock(&fanout.rooms).channels.len() <= 2 * SWEEP_MIN);
    }
}
