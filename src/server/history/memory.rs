//! In-memory history: a bounded ring of recent messages per room, and a
//! bound on all of them together (`--max-history-bytes`): past it, the
//! rooms written to least recently lose their kept messages first (their
//! ids go on; a client resuming there is told of the gap).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Appended, BoxFuture, History, HistoryError, NewMessage, Page, Since, Stamp, Stored};
use crate::protocol::now_ms;
use crate::server::fanout::{Delivery, Fanout};
use crate::server::lock;

/// History that lives as long as the process.
#[derive(Debug)]
pub struct MemoryHistory {
    rooms: Mutex<Logs>,
    /// Messages kept per room.
    capacity: usize,
    /// Every room's epoch: the process's start time, because ids start
    /// again with the process.
    epoch: u64,
    fanout: Arc<dyn Fanout>,
    /// What every room's kept messages may cost together, in bytes.
    max_bytes: usize,
    /// Messages let go of to stay within `max_bytes`.
    evicted: AtomicU64,
}

/// What one kept message costs in memory, about: its strings and the
/// bookkeeping around them (the record, the allocations' headers).
fn cost(message: &Stored) -> usize {
    const OVERHEAD: usize = 160;
    message.text.len() + message.from.len() + message.cid.as_ref().map_or(0, String::len) + OVERHEAD
}

/// One room's messages. Once forgotten (idle and empty) only `last_id`
/// remains, so ids never start again within the epoch.
///
/// A message is kept once, as its text and sender: the encoded frames that
/// went out live are shared by its readers and let go of once they have
/// read them; a replay renders what it sends from this.
#[derive(Debug)]
struct Log {
    kept: VecDeque<Stored>,
    /// What `kept` costs (see [`cost`]).
    bytes: usize,
    last_id: u64,
    last_append: Instant,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            kept: VecDeque::new(),
            bytes: 0,
            last_id: 0,
            last_append: Instant::now(),
        }
    }
}

impl Log {
    /// Lets go of every kept message; returns how many and what they cost.
    fn clear(&mut self) -> (usize, usize) {
        let dropped = (self.kept.len(), self.bytes);
        self.kept = VecDeque::new();
        self.bytes = 0;
        dropped
    }
}

/// Every room's log, and what their kept messages cost together.
#[derive(Debug, Default)]
struct Logs {
    by_room: HashMap<Arc<str>, Log>,
    bytes: usize,
}

impl MemoryHistory {
    /// Keeps `capacity` messages per room and publishes to `fanout`.
    pub fn new(capacity: usize, fanout: Arc<dyn Fanout>) -> Self {
        Self {
            rooms: Mutex::new(Logs::default()),
            capacity,
            epoch: now_ms(),
            fanout,
            max_bytes: usize::MAX,
            evicted: AtomicU64::new(0),
        }
    }

    /// Keeps every room's messages together within `max_bytes`.
    #[must_use]
    pub fn with_budget(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Back within the budget after `room` grew: the rooms written to least
    /// recently lose their kept messages, then, if `room` alone is over it,
    /// its oldest ones.
    fn keep_within_budget(&self, logs: &mut Logs, room: &str) {
        let mut evicted = 0;
        while logs.bytes > self.max_bytes {
            let stalest = logs
                .by_room
                .iter()
                .filter(|(name, log)| &***name != room && !log.kept.is_empty())
                .min_by_key(|(_, log)| log.last_append)
                .map(|(name, _)| name.clone());
            let freed = match stalest {
                Some(name) => logs.by_room.get_mut(&name).map(Log::clear),
                None => logs.by_room.get_mut(room).and_then(|log| {
                    // The newest message stays, whatever it costs.
                    if log.kept.len() <= 1 {
                        return None;
                    }
                    let oldest = log.kept.pop_front()?;
                    let freed = cost(&oldest);
                    log.bytes -= freed;
                    Some((1, freed))
                }),
            };
            let Some((messages, bytes)) = freed else {
                break;
            };
            logs.bytes -= bytes;
            evicted += messages as u64;
        }
        if evicted > 0 {
            self.evicted.fetch_add(evicted, Ordering::Relaxed);
        }
    }
}

/// What is kept of a message just stored.
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
        let logs = &mut *rooms;
        let log = logs.by_room.entry(message.room.clone()).or_default();
        if message.cid.is_some() {
            // Newest first: a retry comes soon after its original.
            let original = log
                .kept
                .iter()
                .rev()
                .find(|kept| kept.retried_by(&message))
                .cloned();
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
        if self.capacity > 0
            && let Some(kept) = stored(&delivery)
        {
            if log.kept.len() == self.capacity
                && let Some(oldest) = log.kept.pop_front()
            {
                let freed = cost(&oldest);
                log.bytes -= freed;
                logs.bytes -= freed;
            }
            let added = cost(&kept);
            log.bytes += added;
            logs.bytes += added;
            log.kept.push_back(kept);
            self.keep_within_budget(logs, &room);
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
        let newest = rooms.by_room.get(room).map(|log| log.last_id);
        let kept = rooms.by_room.get(room).map(|log| &log.kept);
        let messages = kept.map_or_else(Vec::new, |kept| {
            let id_at_most = |bound: u64| kept.partition_point(|message| message.id <= bound);
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
                .cloned()
                .collect()
        });
        let page = Page {
            epoch: self.epoch,
            messages,
            newest,
        };
        Box::pin(std::future::ready(Ok(page)))
    }

    fn trouble(&self) -> Option<String> {
        None
    }

    fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    fn keeps(&self, room: &str) -> bool {
        lock(&self.rooms)
            .by_room
            .get(room)
            .is_some_and(|log| !log.kept.is_empty())
    }

    fn kept_unoccupied(&self, occupied: &dyn Fn(&str) -> bool) -> usize {
        // Presence is asked without this lock held, as in `forget_idle`.
        let kept: Vec<Arc<str>> = lock(&self.rooms)
            .by_room
            .iter()
            .filter(|(_, log)| !log.kept.is_empty())
            .map(|(room, _)| room.clone())
            .collect();
        kept.iter().filter(|room| !occupied(room)).count()
    }

    fn forget_idle(&self, idle: Duration, occupied: &dyn Fn(&str) -> bool) {
        // Presence is asked without this lock held: appends wait for neither.
        let idle_rooms: Vec<Arc<str>> = lock(&self.rooms)
            .by_room
            .iter()
            .filter(|(_, log)| !log.kept.is_empty() && log.last_append.elapsed() >= idle)
            .map(|(room, _)| room.clone())
            .collect();
        let empty: Vec<Arc<str>> = idle_rooms.into_iter().filter(|r| !occupied(r)).collect();
        let mut rooms = lock(&self.rooms);
        for room in empty {
            if let Some(log) = rooms.by_room.get_mut(&room)
                && log.last_append.elapsed() >= idle
            {
                let (_, bytes) = log.clear();
                rooms.bytes -= bytes;
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
