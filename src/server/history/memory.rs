//! In-memory history: a bounded ring of recent messages per room.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::{BoxFuture, History, HistoryError, NewMessage, Page, Since, Stamp, Stored};
use crate::protocol::now_ms;
use crate::server::fanout::{Delivery, Fanout};
use crate::server::lock;

/// History that lives as long as the process.
#[derive(Debug)]
pub struct MemoryHistory {
    rooms: Mutex<HashMap<Arc<str>, Log>>,
    /// Messages kept per room.
    capacity: usize,
    /// Every room's epoch: the process's start time, because ids start
    /// again with the process.
    epoch: u64,
    fanout: Arc<dyn Fanout>,
}

#[derive(Debug, Default)]
struct Log {
    kept: VecDeque<Arc<Delivery>>,
    last_id: u64,
}

impl MemoryHistory {
    /// Keeps `capacity` messages per room and publishes to `fanout`.
    pub fn new(capacity: usize, fanout: Arc<dyn Fanout>) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            capacity,
            epoch: now_ms(),
            fanout,
        }
    }
}

fn stored(delivery: &Delivery) -> Option<Stored> {
    match &delivery.frame {
        crate::protocol::ServerFrame::Message {
            id, ts, from, text, ..
        } => Some(Stored {
            id: *id,
            ts: *ts,
            from: from.clone(),
            text: text.clone(),
            cid: delivery.cid.clone(),
        }),
        _ => None,
    }
}

impl History for MemoryHistory {
    fn append(&self, message: NewMessage) -> BoxFuture<'_, Result<Stamp, HistoryError>> {
        let mut rooms = lock(&self.rooms);
        let log = rooms.entry(message.room.clone()).or_default();
        log.last_id += 1;
        let stamp = Stamp {
            id: log.last_id,
            ts: now_ms(),
        };
        let room = message.room.clone();
        let delivery = message.delivery(stamp);
        if self.capacity > 0 {
            if log.kept.len() == self.capacity {
                log.kept.pop_front();
            }
            log.kept.push_back(delivery.clone());
        }
        // Published under the lock, so the room's messages go out in id order.
        self.fanout.publish(&room, delivery);
        Box::pin(std::future::ready(Ok(stamp)))
    }

    fn read(
        &self,
        room: &str,
        since: Since,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, HistoryError>> {
        let rooms = lock(&self.rooms);
        let kept = rooms.get(room).map(|log| &log.kept);
        let messages = kept.map_or_else(Vec::new, |kept| {
            let start = match since {
                Since::Recent => kept.len().saturating_sub(limit),
                Since::After(after) => {
                    kept.partition_point(|d| d.id().is_some_and(|id| id <= after))
                }
            };
            kept.iter()
                .skip(start)
                .take(limit)
                .filter_map(|d| stored(d))
                .collect()
        });
        let page = Page {
            epoch: self.epoch,
            messages,
        };
        Box::pin(std::future::ready(Ok(page)))
    }

    fn trouble(&self) -> Option<String> {
        None
    }
}
