//! The in-process fan-out: one `tokio::sync::broadcast` channel per room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::{Delivery, Fanout, RoomFeed};
use crate::server::lock;

/// Rooms' channels, created on first use.
#[derive(Debug)]
pub struct MemoryFanout {
    rooms: Mutex<HashMap<Arc<str>, broadcast::Sender<Arc<Delivery>>>>,
    /// Events a subscriber may fall behind before it counts as lagging.
    capacity: usize,
}

impl MemoryFanout {
    /// A fan-out whose subscribers may fall `capacity` events behind.
    pub fn new(capacity: usize) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }
}

impl Fanout for MemoryFanout {
    fn publish(&self, room: &str, event: Arc<Delivery>) {
        if let Some(tx) = lock(&self.rooms).get(room) {
            // An error only means nobody is subscribed right now.
            let _ = tx.send(event);
        }
    }

    fn subscribe(&self, room: &str) -> RoomFeed {
        let mut rooms = lock(&self.rooms);
        let rx = match rooms.get(room) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(self.capacity);
                rooms.insert(room.into(), tx);
                rx
            }
        };
        RoomFeed::new(rx)
    }
}
