//! The in-process fan-out: one [`Channel`] per room.
//!
//! A room's channel exists only while someone follows it: each feed holds
//! the sending side, the map only a weak reference, so the last feed to go
//! frees the channel and its buffer. What is left in the map (a name and a
//! dead reference) is swept out as new rooms are opened.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::channel::Channel;
use super::{Bounds, Delivery, Fanout, RoomFeed};
use crate::server::history::BoxFuture;
use crate::server::lock;

/// Rooms' channels, created on first use and gone with their last follower.
#[derive(Debug)]
pub struct MemoryFanout {
    rooms: Mutex<Rooms>,
    /// What a room may hold for its slowest subscriber before it lags.
    bounds: Bounds,
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
    /// A fan-out whose subscribers may fall `bounds` behind.
    pub fn new(bounds: Bounds) -> Self {
        Self {
            rooms: Mutex::new(Rooms::default()),
            bounds,
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
            channel.publish(event);
        }
    }

    fn last_id(&self, room: &str) -> Option<u64> {
        lock(&self.rooms)
            .channels
            .get(room)
            .and_then(Weak::upgrade)?
            .last_id()
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
            return channel.follow();
        }
        if rooms.channels.len() >= rooms.sweep_at {
            rooms.channels.retain(|_, weak| weak.strong_count() > 0);
            rooms.sweep_at = (rooms.channels.len() * 2).max(SWEEP_MIN);
        }
        let channel = Channel::new(self.bounds);
        rooms.channels.insert(room.into(), Arc::downgrade(&channel));
        channel.follow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_is_freed_with_its_last_follower() {
        let fanout = MemoryFanout::new(Bounds {
            frames: 16,
            bytes: 1 << 20,
        });
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
