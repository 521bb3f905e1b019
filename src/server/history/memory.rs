//! In-memory history: a bounded ring of recent messages per room.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Appended, BoxFuture, History, HistoryError, NewMessage, Page, Since, Stamp, Stored};
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

/// One room's messages. Once forgotten (idle and empty) only `last_id`
/// remains, so ids never start again within the epoch.
#[derive(Debug)]
struct Log {
    kept: VecDeque<Arc<Delivery>>,
    last_id: u64,
    last_append: Instant,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            kept: VecDeque::new(),
            last_id: 0,
            last_append: Instant::now(),
        }
    }
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
            origin: Some(delivery.origin),
        }),
        _ => None,
    }
}

impl History for MemoryHistory {
    fn append(&self, message: NewMessage) -> BoxFuture<'_, Result<Appended, HistoryError>> {
        let mut rooms = lock(&self.rooms);
        let log = rooms.entry(message.room.clone()).or_default();
        if message.cid.is_some() {
            // Newest first: a retry comes soon after its original.
            let original = log
                .kept
                .iter()
                .rev()
                .filter(|d| d.cid == message.cid)
                .find_map(|d| stored(d).filter(|s| s.retried_by(&message)));
            if let Some(original) = original {
                return Box::pin(std::future::ready(Ok(Appended::Repeat(original))));
            }
        }
        log.last_id += 1;
        log.last_append = Instant::now();
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
        Box::pin(std::future::ready(Ok(Appended::New(stamp))))
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
            let id_at_most =
                |bound: u64| kept.partition_point(|d| d.id().is_some_and(|id| id <= bound));
            let (start, end) = match since {
                Since::Recent => (kept.len().saturating_sub(limit), kept.len()),
                Since::After(after) => (id_at_most(after), kept.len()),
                Since::Before(before) => {
                    let end = id_at_most(before.saturating_sub(1));
                    (end.saturating_sub(limit), end)
                }
            };
            kept.iter()
                .take(end)
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

    fn keeps(&self, room: &str) -> bool {
        lock(&self.rooms)
            .get(room)
            .is_some_and(|log| !log.kept.is_empty())
    }

    fn kept_unoccupied(&self, occupied: &dyn Fn(&str) -> bool) -> usize {
        // Presence is asked without this lock held, as in `forget_idle`.
        let kept: Vec<Arc<str>> = lock(&self.rooms)
            .iter()
            .filter(|(_, log)| !log.kept.is_empty())
            .map(|(room, _)| room.clone())
            .collect();
        kept.iter().filter(|room| !occupied(room)).count()
    }

    fn forget_idle(&self, idle: Duration, occupied: &dyn Fn(&str) -> bool) {
        // Presence is asked without this lock held: appends wait for neither.
        let idle_rooms: Vec<Arc<str>> = lock(&self.rooms)
            .iter()
            .filter(|(_, log)| !log.kept.is_empty() && log.last_append.elapsed() >= idle)
            .map(|(room, _)| room.clone())
            .collect();
        let empty: Vec<Arc<str>> = idle_rooms.into_iter().filter(|r| !occupied(r)).collect();
        let mut rooms = lock(&self.rooms);
        for room in empty {
            if let Some(log) = rooms.get_mut(&room)
                && log.last_append.elapsed() >= idle
            {
                log.kept = VecDeque::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ConnId;
    use crate::server::fanout::MemoryFanout;
    use crate::server::history::NewMessage;

    fn message(room: &str, text: &str) -> NewMessage {
        NewMessage {
            origin: ConnId { node: 1, seq: 1 },
            room: room.into(),
            from: "ann".into(),
            text: text.into(),
            cid: None,
        }
    }

    #[tokio::test]
    async fn idle_empty_rooms_are_forgotten_but_their_ids_go_on() {
        let history = MemoryHistory::new(
            10,
            Arc::new(MemoryFanout::new(crate::server::fanout::Bounds {
                frames: 16,
                bytes: 1 << 20,
            })),
        );
        for room in ["quiet", "busy"] {
            history.append(message(room, "one")).await.expect("stored");
        }
        history.forget_idle(Duration::ZERO, &|room| room == "busy");
        let quiet = history
            .read("quiet", Since::Recent, 10)
            .await
            .expect("read");
        assert!(quiet.messages.is_empty());
        let busy = history.read("busy", Since::Recent, 10).await.expect("read");
        assert_eq!(busy.messages.len(), 1);
        let stamp = history
            .append(message("quiet", "two"))
            .await
            .expect("stored");
        assert_eq!(stamp.id(), 2);
        // Not idle long enough: kept.
        history.forget_idle(Duration::from_secs(3600), &|_| false);
        let quiet = history
            .read("quiet", Since::Recent, 10)
            .await
            .expect("read");
        assert_eq!(quiet.messages.len(), 1);
    }
}
