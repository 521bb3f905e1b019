//! A room's channel: one ring of events that every feed of the room reads
//! in order, bounded in frames and in bytes.
//!
//! It works like `tokio::sync::broadcast` (one buffer, a cursor per feed, a
//! feed that falls off the end learns how many events it missed), with two
//! differences that bound what a room costs: an event is dropped as soon as
//! every feed has read it (or the feed that had not is gone), and the ring
//! holds at most `--max-lag` events *and* `--max-lag-bytes` of encoded
//! frames, so one reader that stops cannot make a room keep a thousand
//! large messages alive.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::Delivery;
use crate::protocol::ServerFrame;
use crate::server::lock;

/// Why a [`RoomFeed`] has no next event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedError {
    /// The subscriber fell this many events behind; they are gone.
    Lagged(u64),
}

/// How much a room's channel may hold for its slowest feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Events (at least one).
    pub frames: usize,
    /// Bytes of encoded frames (the newest event is kept whatever its size).
    pub bytes: usize,
}

/// One room's events on their way to the feeds that follow it.
#[derive(Debug)]
pub(super) struct Channel {
    ring: Mutex<Ring>,
    /// Wakes the feeds waiting for an event.
    published: Notify,
    /// The id of the last message published (0: none yet).
    last: AtomicU64,
}

#[derive(Debug)]
struct Ring {
    /// Events some feed has still to read; `slots[0]` is number `head`.
    slots: VecDeque<Slot>,
    head: u64,
    /// The encoded size of every event in `slots`.
    bytes: usize,
    /// Feeds following the channel.
    feeds: usize,
    bounds: Bounds,
}

#[derive(Debug)]
struct Slot {
    event: Arc<Delivery>,
    /// Feeds that have still to read it.
    unread: usize,
}

impl Ring {
    /// The number the next event will get.
    fn tail(&self) -> u64 {
        self.head + self.slots.len() as u64
    }

    /// Drops the oldest events every feed has read. A feed reads in order,
    /// so once the oldest is read by all, so is everything before the next
    /// unread one.
    fn release_read(&mut self) {
        while self.slots.front().is_some_and(|slot| slot.unread == 0) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(slot) = self.slots.pop_front() {
            self.bytes -= slot.event.encoded_len();
            self.head += 1;
        }
    }

    fn push(&mut self, event: Arc<Delivery>) {
        self.bytes += event.encoded_len();
        let unread = self.feeds;
        self.slots.push_back(Slot { event, unread });
        // Whoever has not read the oldest by now falls behind.
        while self.slots.len() > self.bounds.frames
            || (self.bytes > self.bounds.bytes && self.slots.len() > 1)
        {
            self.pop_front();
        }
    }
}

impl Channel {
    /// A channel nobody follows yet.
    pub(super) fn new(bounds: Bounds) -> Arc<Self> {
        Arc::new(Self {
            ring: Mutex::new(Ring {
                slots: VecDeque::new(),
                head: 0,
                bytes: 0,
                feeds: 0,
                bounds: Bounds {
                    frames: bounds.frames.max(1),
                    bytes: bounds.bytes,
                },
            }),
            published: Notify::new(),
            last: AtomicU64::new(0),
        })
    }

    /// Sends `event` to every feed following the channel now; with none it
    /// is dropped (its id is still noted).
    pub(super) fn publish(&self, event: Arc<Delivery>) {
        if let Some(id) = event.id() {
            self.last.fetch_max(id, Ordering::Relaxed);
        }
        {
            let mut ring = lock(&self.ring);
            if ring.feeds == 0 {
                return;
            }
            ring.push(event);
        }
        self.published.notify_waiters();
    }

    /// The id of the last message published, if any.
    pub(super) fn last_id(&self) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        (last > 0).then_some(last)
    }

    /// A feed of every event published from now on.
    pub(super) fn follow(self: &Arc<Self>) -> RoomFeed {
        let mut ring = lock(&self.ring);
        ring.feeds += 1;
        let next = ring.tail();
        drop(ring);
        RoomFeed {
            channel: self.clone(),
            next,
            seen_through: 0,
        }
    }

    /// Events held for feeds that have not read them, and their bytes.
    #[cfg(test)]
    pub(super) fn held(&self) -> (usize, usize) {
        let ring = lock(&self.ring);
        (ring.slots.len(), ring.bytes)
    }
}

/// A live subscription to one room: its events in publishing order.
#[derive(Debug)]
pub struct RoomFeed {
    channel: Arc<Channel>,
    /// The number of the next event to read.
    next: u64,
    /// Messages with ids up to this one were already shown from history.
    seen_through: u64,
}

impl RoomFeed {
    /// A feed of no room: nothing ever arrives. What a connection that left
    /// its room holds, so the room keeps nothing for it.
    pub fn none() -> Self {
        let least = Bounds {
            frames: 1,
            bytes: 0,
        };
        Channel::new(least).follow()
    }

    /// Skips messages with ids up to `id` from now on: they were replayed
    /// from history after this feed was opened. This is what makes the seam
    /// between history and live events exact in every backend.
    pub fn seen_through(&mut self, id: u64) {
        self.seen_through = self.seen_through.max(id);
    }

    /// Waits for the next event.
    pub async fn next(&mut self) -> Result<Arc<Delivery>, FeedError> {
        let Self {
            channel,
            next,
            seen_through,
        } = self;
        loop {
            // Registered before looking, so a publish in between wakes it.
            let mut published = pin!(channel.published.notified());
            published.as_mut().enable();
            if let Some(event) = take_one(channel, next, seen_through)? {
                return Ok(event);
            }
            published.await;
        }
    }

    /// The next event if one is already waiting.
    pub fn try_next(&mut self) -> Result<Option<Arc<Delivery>>, FeedError> {
        take_one(&self.channel, &mut self.next, &mut self.seen_through)
    }

    /// Moves up to `max` of the events already waiting into `batch`, with
    /// one look at the ring.
    ///
    /// # Errors
    /// [`FeedError::Lagged`] when the oldest events this feed had still to
    /// read were dropped to make room; the feed then goes on from the oldest
    /// one left (after what `batch` got).
    pub fn take_waiting(
        &mut self,
        max: usize,
        batch: &mut Vec<Arc<Delivery>>,
    ) -> Result<(), FeedError> {
        let Self {
            channel,
            next,
            seen_through,
        } = self;
        take(channel, next, seen_through, max, &mut |event| {
            batch.push(event)
        })
        .map(drop)
    }
}

/// The next waiting event of `channel` that the feed shows, passing over
/// those it skips (already shown from history).
fn take_one(
    channel: &Channel,
    next: &mut u64,
    seen_through: &mut u64,
) -> Result<Option<Arc<Delivery>>, FeedError> {
    let mut event = None;
    while event.is_none() && take(channel, next, seen_through, 1, &mut |e| event = Some(e))? > 0 {}
    Ok(event)
}

/// Hands up to `max` waiting events of `channel` to `sink`, from number
/// `next` on, and moves `next` past them (see [`RoomFeed::take_waiting`]);
/// returns how many it moved past, shown or skipped.
fn take(
    channel: &Channel,
    next: &mut u64,
    seen_through: &mut u64,
    max: usize,
    sink: &mut dyn FnMut(Arc<Delivery>),
) -> Result<usize, FeedError> {
    let mut ring = lock(&channel.ring);
    if *next < ring.head {
        let missed = ring.head - *next;
        *next = ring.head;
        return Err(FeedError::Lagged(missed));
    }
    let start = (*next - ring.head) as usize;
    let end = ring.slots.len().min(start.saturating_add(max));
    for index in start..end {
        let slot = &mut ring.slots[index];
        slot.unread -= 1;
        if fresh(seen_through, &slot.event) {
            sink(slot.event.clone());
        }
    }
    *next += (end - start) as u64;
    ring.release_read();
    Ok(end - start)
}

/// Whether a feed that has shown ids up to `seen_through` from history
/// should pass `event` on.
fn fresh(seen_through: &mut u64, event: &Delivery) -> bool {
    if let ServerFrame::Gap { after: None, .. } = event.frame {
        // The room's history started again: so do its ids.
        *seen_through = 0;
    }
    event.id().is_none_or(|id| id > *seen_through)
}

impl Drop for RoomFeed {
    fn drop(&mut self) {
        let mut ring = lock(&self.channel.ring);
        ring.feeds -= 1;
        let start = self.next.saturating_sub(ring.head) as usize;
        for index in start..ring.slots.len() {
            ring.slots[index].unread -= 1;
        }
        ring.release_read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ConnId;

    fn event(text: &str) -> Arc<Delivery> {
        let frame = ServerFrame::Notice { text: text.into() };
        Arc::new(Delivery::new(ConnId { node: 1, seq: 1 }, frame, None))
    }

    fn unbounded() -> Bounds {
        Bounds {
            frames: 1024,
            bytes: usize::MAX,
        }
    }

    #[test]
    fn an_event_every_feed_has_read_is_dropped() {
        let channel = Channel::new(unbounded());
        let mut a = channel.follow();
        let mut b = channel.follow();
        let sent = event("one");
        channel.publish(sent.clone());
        assert_eq!(channel.held().0, 1);
        assert!(a.try_next().expect("not lagged").is_some());
        assert_eq!(channel.held().0, 1, "b has still to read it");
        assert!(b.try_next().expect("not lagged").is_some());
        assert_eq!(channel.held(), (0, 0));
        drop((a, b));
        assert_eq!(Arc::strong_count(&sent), 1, "only the test holds it");
    }

    #[test]
    fn a_feed_that_goes_away_releases_what_it_had_not_read() {
        let channel = Channel::new(unbounded());
        let mut reader = channel.follow();
        let idle = channel.follow();
        for n in 0..10 {
            channel.publish(event(&n.to_string()));
        }
        let mut batch = Vec::new();
        reader.take_waiting(100, &mut batch).expect("not lagged");
        assert_eq!(batch.len(), 10);
        assert_eq!(channel.held().0, 10, "the idle feed holds them");
        drop(idle);
        assert_eq!(channel.held(), (0, 0));
    }

    #[test]
    fn the_ring_is_bounded_in_bytes_and_the_slowest_feed_lags() {
        let size = event("0123456789").encoded_len();
        let channel = Channel::new(Bounds {
            frames: 1024,
            bytes: 5 * size,
        });
        let mut slow = channel.follow();
        let mut quick = channel.follow();
        for _ in 0..8 {
            channel.publish(event("0123456789"));
            assert!(quick.try_next().expect("keeps up").is_some());
        }
        assert_eq!(channel.held(), (5, 5 * size));
        assert!(matches!(slow.try_next(), Err(FeedError::Lagged(3))));
        let mut batch = Vec::new();
        slow.take_waiting(100, &mut batch).expect("caught up");
        assert_eq!(batch.len(), 5);
        assert_eq!(channel.held(), (0, 0));
    }

    #[test]
    fn nobody_following_keeps_nothing() {
        let channel = Channel::new(unbounded());
        channel.publish(event("lost"));
        assert_eq!(channel.held(), (0, 0));
        let mut late = channel.follow();
        assert!(matches!(late.try_next(), Ok(None)));
    }

    #[tokio::test]
    async fn a_feed_passes_over_what_history_showed_without_waiting() {
        let channel = Channel::new(unbounded());
        let mut feed = channel.follow();
        feed.seen_through(2);
        for id in 1..=3 {
            let frame = ServerFrame::Message {
                id,
                room: "lobby".into(),
                from: "ann".into(),
                text: "hi".into(),
                ts: 0,
                cid: None,
                history: false,
            };
            channel.publish(Arc::new(Delivery::new(
                ConnId { node: 1, seq: 1 },
                frame,
                None,
            )));
        }
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), feed.next())
            .await
            .expect("already waiting")
            .expect("not lagged");
        assert_eq!(event.id(), Some(3));
        assert_eq!(channel.held(), (0, 0));
    }

    #[tokio::test]
    async fn a_waiting_feed_wakes_for_the_next_event() {
        let channel = Channel::new(unbounded());
        let mut feed = channel.follow();
        let waiting = tokio::spawn(async move { feed.next().await.map(|e| e.frame.clone()) });
        tokio::task::yield_now().await;
        channel.publish(event("hello"));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(
            got,
            Ok(ServerFrame::Notice {
                text: "hello".into()
            })
        );
    }
}
