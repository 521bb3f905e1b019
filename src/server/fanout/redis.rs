//! Fan-out across nodes through Redis pub/sub.
//!
//! Each node follows a room's channel once, however many of its connections
//! are in the room, and feeds what arrives into the same per-room
//! channels as memory mode ([`MemoryFanout`]): no Redis work per recipient.
//! Every event, this node's own included, comes back through pub/sub, so
//! every node delivers a room's messages in the order Redis gave them ids.
//!
//! One task per node owns the pub/sub connection. It delivers each room's
//! messages in id order without gaps: a message that arrives after a hole
//! first has the hole filled from the room's stream; after a reconnect, and
//! every [`REPAIR_EVERY`], it compares each room's last id with the last it
//! delivered. A ping it publishes to itself every [`PING_EVERY`] tells it
//! when the connection has silently stopped delivering; it is then replaced.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{PubSubSink, PubSubStream};
use redis::streams::StreamRangeReply;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{Bounds, Delivery, Fanout, MemoryFanout, RoomFeed};
use crate::protocol::ServerFrame;
use crate::server::history::BoxFuture;
use crate::server::lock;
use crate::server::redis::{Body, Event, RedisLink, parse_origin};

/// How often the node pings itself through pub/sub; a ping not back by the
/// next one means the connection stopped delivering.
const PING_EVERY: Duration = Duration::from_secs(3);
/// How often every followed room is checked for messages not delivered.
const REPAIR_EVERY: Duration = Duration::from_secs(30);
/// Longest wait between attempts to reconnect pub/sub.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The most messages one repair fetches for a room.
const REPAIR_MAX: usize = 10_000;
/// The longest wait for the pub/sub connection to open or to confirm a
/// subscription.
const PUBSUB_TIMEOUT: Duration = Duration::from_secs(3);
/// Inbox messages (private messages, take-overs) that may wait for presence.
const INBOX_CAPACITY: usize = 4096;

/// Rooms followed through Redis pub/sub, delivered through local channels.
#[derive(Debug)]
pub struct RedisFanout {
    local: Arc<MemoryFanout>,
    link: Arc<RedisLink>,
    /// Rooms whose channel this node follows (or will, once reconnected).
    followed: Arc<Mutex<HashSet<Arc<str>>>>,
    requests: mpsc::Sender<(Arc<str>, oneshot::Sender<()>)>,
}

impl RedisFanout {
    /// Starts the node's pub/sub task; `inbox` receives what other nodes
    /// send to this one (private messages, take-overs).
    pub fn start(link: Arc<RedisLink>, bounds: Bounds) -> (Arc<Self>, mpsc::Receiver<Vec<u8>>) {
        let local = Arc::new(MemoryFanout::new(bounds));
        let followed = Arc::new(Mutex::new(HashSet::new()));
        let (requests, incoming) = mpsc::channel(1024);
        let (inbox, inbox_rx) = mpsc::channel(INBOX_CAPACITY);
        let task = NodeTask {
            local: local.clone(),
            link: link.clone(),
            followed: followed.clone(),
            incoming,
            inbox,
            rooms: HashMap::new(),
            sink: None,
            ping: Ping::default(),
        };
        tokio::spawn(task.run());
        let fanout = Arc::new(Self {
            local,
            link,
            followed,
            requests,
        });
        (fanout, inbox_rx)
    }
}

impl Fanout for RedisFanout {
    fn publish(&self, room: &str, event: Arc<Delivery>) {
        // Stored messages are published by the append script itself.
        let payload = Event::notice(event.origin, &event.frame);
        self.link.outbox.publish(self.link.channel(room), payload);
    }

    fn subscribe(&self, room: &str) -> BoxFuture<'_, RoomFeed> {
        // The local feed first: once the node follows the room, whatever
        // arrives reaches it (see NodeTask::sweep for the other side).
        let feed = self.local.follow(room);
        if lock(&self.followed).contains(room) {
            return Box::pin(std::future::ready(feed));
        }
        let room: Arc<str> = room.into();
        Box::pin(async move {
            let (done, answer) = oneshot::channel();
            if self.requests.send((room, done)).await.is_ok() {
                let _ = answer.await;
            }
            feed
        })
    }

    fn last_id(&self, room: &str) -> Option<u64> {
        self.local.last_id(room)
    }
}

/// Where delivery of a room's messages stands on this node.
#[derive(Debug, Clone, Copy, Default)]
struct Sequence {
    epoch: u64,
    /// The last id delivered (or known to be covered by history reads).
    last: u64,
}

#[derive(Debug, Default)]
struct Ping {
    sent: u64,
    /// When the ping not yet back was sent.
    waiting_since: Option<Instant>,
}

/// The task that owns a node's pub/sub connection.
struct NodeTask {
    local: Arc<MemoryFanout>,
    link: Arc<RedisLink>,
    followed: Arc<Mutex<HashSet<Arc<str>>>>,
    incoming: mpsc::Receiver<(Arc<str>, oneshot::Sender<()>)>,
    inbox: mpsc::Sender<Vec<u8>>,
    rooms: HashMap<Arc<str>, Sequence>,
    sink: Option<PubSubSink>,
    ping: Ping,
}

impl NodeTask {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut repair = tokio::time::interval(REPAIR_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        repair.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let connected = tokio::time::timeout(PUBSUB_TIMEOUT, self.connect()).await;
            let mut stream = match connected.unwrap_or_else(|_| Err(timed_out())) {
                Ok(stream) => {
                    backoff = Duration::from_millis(100);
                    stream
                }
                Err(err) => {
                    debug!("Redis pub/sub: cannot connect: {err}");
                    self.link.set_pubsub_up(false);
                    // Meanwhile, answer joins (they are followed once back).
                    let wait = tokio::time::sleep(backoff);
                    tokio::pin!(wait);
                    loop {
                        tokio::select! {
                            () = &mut wait => break,
                            request = self.incoming.recv() => match request {
                                Some((room, done)) => {
                                    self.follow(&room).await;
                                    let _ = done.send(());
                                }
                                None => return,
                            },
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            self.link.set_pubsub_up(true);
            self.repair_all().await;
            loop {
                tokio::select! {
                    message = stream.next() => match message {
                        Some(message) => self.received(&message).await,
                        None => {
                            warn!("Redis pub/sub connection lost; reconnecting");
                            break;
                        }
                    },
                    request = self.incoming.recv() => match request {
                        Some((room, done)) => {
                            let followed = self.follow(&room).await;
                            let _ = done.send(());
                            if !followed {
                                warn!("Redis pub/sub does not answer; replacing the connection");
                                break;
                            }
                        }
                        None => return,
                    },
                    _ = ping.tick() => {
                        if !self.ping().await {
                            warn!("Redis pub/sub stopped delivering; replacing the connection");
                            break;
                        }
                    }
                    _ = repair.tick() => {
                        self.sweep().await;
                        self.repair_all().await;
                    }
                }
            }
            self.sink = None;
            self.ping.waiting_since = None;
            self.link.set_pubsub_up(false);
        }
    }

    /// Opens a pub/sub connection following the node's inbox and every
    /// followed room.
    async fn connect(&mut self) -> redis::RedisResult<PubSubStream> {
        let pubsub = self.link.client.get_async_pubsub().await?;
        let (mut sink, stream) = pubsub.split();
        sink.subscribe(self.link.inbox(&self.link.node_name()))
            .await?;
        let rooms: Vec<String> = lock(&self.followed)
            .iter()
            .map(|room| self.link.channel(room))
            .collect();
        for chunk in rooms.chunks(256) {
            sink.subscribe(chunk).await?;
        }
        self.sink = Some(sink);
        Ok(stream)
    }

    fn note_followed(&self, room: &Arc<str>) {
        lock(&self.followed).insert(room.clone());
    }

    /// Follows `room`'s channel; false when the connection failed (the
    /// room is then followed once it is back).
    async fn follow(&mut self, room: &Arc<str>) -> bool {
        if lock(&self.followed).contains(room) {
            return true;
        }
        self.note_followed(room);
        let channel = self.link.channel(room);
        let subscribed = match self.sink.as_mut() {
            // Bounded: a connection that went quiet never confirms.
            Some(sink) => match tokio::time::timeout(PUBSUB_TIMEOUT, sink.subscribe(channel)).await
            {
                Ok(Ok(())) => true,
                Ok(Err(err)) => {
                    debug!("Redis pub/sub: cannot subscribe: {err}");
                    false
                }
                Err(_) => false,
            },
            None => false,
        };
        // Messages stored up to now are for history reads to deliver; the
        // ones after it arrive here.
        let at = self.meta(room).await.unwrap_or_default();
        self.rooms.insert(room.clone(), at);
        subscribed
    }

    /// The room's epoch and last id as Redis has them (0, 0 if it has none).
    async fn meta(&self, room: &str) -> redis::RedisResult<Sequence> {
        let mut conn = self.link.conn();
        let (epoch, last): (Option<u64>, Option<u64>) = self
            .link
            .note(conn.hmget(self.link.meta(room), &["epoch", "last"]).await)?;
        Ok(Sequence {
            epoch: epoch.unwrap_or(0),
            last: last.unwrap_or(0),
        })
    }

    async fn received(&mut self, message: &redis::Msg) {
        let channel = message.get_channel_name();
        let payload = message.get_payload_bytes();
        let Some(room) = self.link.room_of(channel) else {
            // The node's inbox.
            if payload.starts_with(b"k ") {
                self.ping.waiting_since = None;
            } else if self.inbox.try_send(payload.to_vec()).is_err() {
                debug!("inbox full: a private message was dropped");
            }
            return;
        };
        let Some((room, _)) = self.rooms.get_key_value(room) else {
            return;
        };
        let room = room.clone();
        match Event::parse(payload) {
            Some(Event::Message {
                id,
                epoch,
                origin,
                body,
            }) => self.deliver_in_order(&room, id, epoch, origin, body).await,
            Some(Event::Notice { origin, frame }) => {
                self.local
                    .publish(&room, Arc::new(Delivery::new(origin, frame, None)));
            }
            None => debug!("unreadable event on {channel}"),
        }
    }

    /// Delivers message `id` of `room`, first filling any hole before it
    /// from the stream; drops what was delivered already.
    async fn deliver_in_order(
        &mut self,
        room: &Arc<str>,
        id: u64,
        epoch: u64,
        origin: crate::server::ConnId,
        body: Body,
    ) {
        let mut at = self.rooms.get(room).copied().unwrap_or_default();
        if at.epoch == 0 {
            // The room had no history when this node began to follow it.
            at = Sequence { epoch, last: 0 };
        } else if at.epoch != epoch {
            self.new_epoch(room, epoch);
            at = Sequence { epoch, last: 0 };
        }
        if id <= at.last {
            return;
        }
        if id > at.last + 1 && self.fill(room, at, id - 1).await.is_none() {
            // Left for the next repair, which fetches this one too.
            return;
        }
        self.local.publish(room, message(room, id, origin, body));
        // Followed rooms always have an entry (see `received`).
        if let Some(at) = self.rooms.get_mut(room) {
            *at = Sequence { epoch, last: id };
        }
    }

    /// Tells the room's local members that its history started again.
    fn new_epoch(&self, room: &Arc<str>, epoch: u64) {
        info!(room = %room, "room history started again (new epoch {epoch})");
        let gap = ServerFrame::Gap {
            room: room.to_string(),
            epoch,
            after: None,
            first: None,
        };
        let origin = crate::server::ConnId {
            node: self.link.node,
            seq: 0,
        };
        self.local
            .publish(room, Arc::new(Delivery::new(origin, gap, None)));
    }

    /// Delivers the room's stored messages after `at.last` up to `upto`;
    /// `None` if the stream could not be read.
    async fn fill(&mut self, room: &Arc<str>, at: Sequence, upto: u64) -> Option<Sequence> {
        let count = usize::try_from(upto - at.last)
            .unwrap_or(REPAIR_MAX)
            .min(REPAIR_MAX);
        let mut conn = self.link.conn();
        let reply: StreamRangeReply = self
            .link
            .note(
                conn.xrange_count(
                    self.link.log(room),
                    format!("{}-0", at.last + 1),
                    format!("{upto}-0"),
                    count,
                )
                .await,
            )
            .ok()?;
        let mut last = at.last;
        for entry in reply.ids {
            let Some((id, origin, body)) = parse_entry(&entry) else {
                continue;
            };
            if id <= last {
                continue;
            }
            if id > last + 1 && last > 0 {
                // Trimmed from the stream before this node could deliver them.
                let gap = ServerFrame::Gap {
                    room: room.to_string(),
                    epoch: at.epoch,
                    after: Some(last),
                    first: Some(id),
                };
                self.local
                    .publish(room, Arc::new(Delivery::new(origin, gap, None)));
            }
            self.local.publish(room, message(room, id, origin, body));
            last = id;
        }
        let at = Sequence {
            epoch: at.epoch,
            last: last.max(if count < REPAIR_MAX { upto } else { last }),
        };
        self.rooms.insert(room.clone(), at);
        Some(at)
    }

    /// Compares every followed room's last id with the last delivered and
    /// fills what is missing.
    async fn repair_all(&mut self) {
        let rooms: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        for room in rooms {
            let Ok(meta) = self.meta(&room).await else {
                return;
            };
            let at = self.rooms.get(&room).copied().unwrap_or_default();
            if meta.epoch == 0 {
                continue;
            }
            if at.epoch == 0 {
                // Nothing was stored when this node began to follow the
                // room, so every message is for it to deliver.
                if meta.last > 0 {
                    self.fill(&room, at_epoch(meta.epoch), meta.last).await;
                }
            } else if at.epoch != meta.epoch {
                self.new_epoch(&room, meta.epoch);
                let at = Sequence {
                    epoch: meta.epoch,
                    last: 0,
                };
                self.rooms.insert(room.clone(), at);
                if meta.last > 0 {
                    self.fill(&room, at, meta.last).await;
                }
            } else if meta.last > at.last {
                debug!(room = %room, "repairing ids {}..={}", at.last + 1, meta.last);
                self.fill(&room, at, meta.last).await;
            }
        }
    }

    /// Stops following rooms nobody on this node is in any more.
    async fn sweep(&mut self) {
        let idle: Vec<Arc<str>> = self
            .rooms
            .keys()
            .filter(|room| !self.local.followed(room))
            .cloned()
            .collect();
        for room in idle {
            lock(&self.followed).remove(&room);
            // A connection may have started following it meanwhile: it
            // opened its local feed before looking at `followed`.
            if self.local.followed(&room) {
                self.note_followed(&room);
                continue;
            }
            self.rooms.remove(&room);
            if let Some(sink) = self.sink.as_mut() {
                let channel = self.link.channel(&room);
                let _ = tokio::time::timeout(PUBSUB_TIMEOUT, sink.unsubscribe(channel)).await;
            }
        }
    }

    /// Publishes the next ping to this node's inbox; false if the last one
    /// never came back.
    async fn ping(&mut self) -> bool {
        if self.ping.waiting_since.is_some() {
            return false;
        }
        self.ping.sent += 1;
        let mut conn = self.link.conn();
        let sent: redis::RedisResult<usize> = conn
            .publish(
                self.link.inbox(&self.link.node_name()),
                format!("k {}", self.ping.sent),
            )
            .await;
        if self.link.note(sent).is_ok() {
            self.ping.waiting_since = Some(Instant::now());
        }
        true
    }
}

/// What a pub/sub operation that took too long failed with.
fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis pub/sub did not answer in time",
    ))
}

/// The start of an epoch: nothing delivered yet.
fn at_epoch(epoch: u64) -> Sequence {
    Sequence { epoch, last: 0 }
}

/// A stream entry's id, origin and body.
pub(crate) fn parse_entry(
    entry: &redis::streams::StreamId,
) -> Option<(u64, crate::server::ConnId, Body)> {
    let id = entry.id.split_once('-')?.0.parse().ok()?;
    let text = |field: &str| -> Option<String> {
        match entry.map.get(field)? {
            redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
            _ => None,
        }
    };
    let origin = text("o")?;
    let (node, seq) = origin.split_once(' ')?;
    let origin = parse_origin(node, seq)?;
    let body = serde_json::from_str(&text("b")?).ok()?;
    Some((id, origin, body))
}

/// The live event for a stored message.
fn message(room: &str, id: u64, origin: crate::server::ConnId, body: Body) -> Arc<Delivery> {
    let frame = ServerFrame::Message {
        id,
        room: room.to_owned(),
        from: body.from,
        text: body.text,
        ts: body.ts,
        cid: None,
        history: false,
    };
    Arc::new(Delivery::new(origin, frame, body.cid))
}
