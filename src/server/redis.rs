//! What the Redis backends of one node share: the command connection, the
//! names of keys and channels, the format of events on pub/sub, the outbox
//! that writes presence and publishes notices in order, and the node's health.
//!
//! Keys of a room carry the room in a hash tag (`PREFIX:{room}:log`) so they
//! stay in one slot should Redis ever be a cluster.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::warn;

use super::ConnId;
use super::lock;
use super::metrics::BackendMetrics;
use crate::error::Error;
use crate::protocol::ServerFrame;

/// How long one Redis command may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Commands that may wait to be written to Redis.
const PIPELINE_BUFFER: usize = 8192;
/// Notices that may wait to be published; more are dropped (and logged).
const OUTBOX_CAPACITY: usize = 16 * 1024;

/// A node's connection to the Redis the chat shares.
pub struct RedisLink {
    /// For pub/sub connections, which are opened apart.
    pub client: redis::Client,
    /// One multiplexed connection for every command; reconnects by itself.
    pub commands: ConnectionManager,
    /// This node's id, as in its connections' [`ConnId`]s.
    pub node: u64,
    prefix: String,
    /// Why the last command failed, until one succeeds.
    command_trouble: Mutex<Option<String>>,
    /// Whether `command_trouble` holds anything, so a success (every
    /// message's append) costs no lock while all is well.
    troubled: AtomicBool,
    /// Set while the pub/sub connection is down.
    pubsub_down: AtomicBool,
    /// Notices and presence changes on their way to Redis.
    pub outbox: Outbox,
    /// Append latency and failed commands, for `/metrics`.
    pub metrics: BackendMetrics,
}

impl fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLink")
            .field("node", &format_args!("{:016x}", self.node))
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// `url` with any password hidden, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl RedisLink {
    /// Connects to Redis at `url` and checks that it answers and is new enough.
    ///
    /// # Errors
    /// [`Error::Redis`] naming the URL when it cannot be used.
    pub async fn connect(
        url: &str,
        prefix: &str,
        node: u64,
        metrics: BackendMetrics,
    ) -> Result<Arc<Self>, Error> {
        let fail = |source| Error::Redis {
            url: redact(url),
            source,
        };
        let client = redis::Client::open(url).map_err(fail)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1))
            // The driver drains this queue once per turn of the runtime,
            // which under load is every few ms: the default 50 would cap the
            // whole node at 50 commands per turn.
            .set_pipeline_buffer_size(PIPELINE_BUFFER);
        let mut commands = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(fail)?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut commands)
            .await
            .map_err(fail)?;
        check_version(&info).map_err(fail)?;
        Ok(Arc::new(Self {
            client,
            commands,
            node,
            prefix: prefix.to_owned(),
            command_trouble: Mutex::new(None),
            troubled: AtomicBool::new(false),
            pubsub_down: AtomicBool::new(false),
            outbox: Outbox::default(),
            metrics,
        }))
    }

    /// A handle for commands (cheap: the connection is shared).
    pub fn conn(&self) -> ConnectionManager {
        self.commands.clone()
    }

    /// The prefix of every key and channel.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The room's meta hash: `epoch` and `last` (the last id given out).
    pub fn meta(&self, room: &str) -> String {
        format!("{}:{{{room}}}:meta", self.prefix)
    }

    /// A room's recent messages' senders and cids (`NICK\nCID`, scored by
    /// id), to know a retry from a new message.
    pub fn cids(&self, room: &str) -> String {
        format!("{}:{{{room}}}:cids", self.prefix)
    }

    /// The chat's epoch, which every room's meta takes when created.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// The room's history stream.
    pub fn log(&self, room: &str) -> String {
        format!("{}:{{{room}}}:log", self.prefix)
    }

    /// The room's members on every node: `NODE:SEQ` -> nick.
    pub fn members(&self, room: &str) -> String {
        format!("{}:{{{room}}}:members", self.prefix)
    }

    /// The room's pub/sub channel.
    pub fn channel(&self, room: &str) -> String {
        format!("{}:{{{room}}}:events", self.prefix)
    }

    /// The room a channel name from [`Self::channel`] belongs to.
    pub fn room_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix("}:events")
    }

    /// Rooms that have (or had) members: a set of names.
    pub fn rooms(&self) -> String {
        format!("{}:rooms", self.prefix)
    }

    /// The lease on a nick (lower-cased): `NODE SEQ SECRET Nick`.
    pub fn nick(&self, lower: &str) -> String {
        format!("{}:nick:{lower}", self.prefix)
    }

    /// Live nodes: a sorted set scored by when each is given up for dead (ms).
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// A node's connections: `SEQ` -> `room\tnick`, for cleaning up after it.
    /// Set for a while after a node found Redis had lost its data: no free
    /// nick is given out until every node has claimed its own again.
    pub fn recovering(&self) -> String {
        format!("{}:recovering", self.prefix)
    }

    pub fn node_members(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// A node's own channel: private messages, take-overs, liveness pings.
    pub fn inbox(&self, node: &str) -> String {
        format!("{}:inbox:{node}", self.prefix)
    }

    /// This node's name in keys and fields.
    pub fn node_name(&self) -> String {
        node_name(self.node)
    }

    /// Records that a command failed (for `/healthz` and `/metrics`) and
    /// logs it once.
    pub fn failed(&self, err: &redis::RedisError) {
        self.metrics.errors.inc();
        let mut trouble = lock(&self.command_trouble);
        if trouble.is_none() {
            warn!("Redis command failed: {err}");
        }
        *trouble = Some(format!("Redis is unavailable: {err}"));
        self.troubled.store(true, Ordering::Relaxed);
    }

    /// Records that a command succeeded.
    pub fn succeeded(&self) {
        if !self.troubled.load(Ordering::Relaxed) {
            return;
        }
        let mut trouble = lock(&self.command_trouble);
        self.troubled.store(false, Ordering::Relaxed);
        if trouble.take().is_some() {
            tracing::info!("Redis answers again");
        }
    }

    /// Records whether the pub/sub connection is up.
    pub fn set_pubsub_up(&self, up: bool) {
        self.pubsub_down.store(!up, Ordering::Relaxed);
    }

    /// `None` while Redis works; otherwise why it does not.
    pub fn trouble(&self) -> Option<String> {
        if let Some(trouble) = lock(&self.command_trouble).clone() {
            return Some(trouble);
        }
        self.pubsub_down
            .load(Ordering::Relaxed)
            .then(|| "the Redis pub/sub connection is down".to_owned())
    }

    /// Notes the outcome of a command for [`Self::trouble`] and passes it on.
    pub fn note<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        match &result {
            Ok(_) => self.succeeded(),
            Err(err) => self.failed(err),
        }
        result
    }
}

/// A node id as it appears in keys, fields and events.
pub fn node_name(node: u64) -> String {
    format!("{node:016x}")
}

/// Refuses a Redis older than 6.2 (exclusive stream ranges, `SET ... GET`).
fn check_version(info: &str) -> redis::RedisResult<()> {
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or("0")
        .trim();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) >= (6, 2) {
        Ok(())
    } else {
        Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "Redis is too old",
            format!("version {version}; wschat needs 6.2 or newer"),
        )))
    }
}

/// What a chat message carries besides its id, as stored in the stream and
/// published (serialised once, in JSON, by the node that stores it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Body {
    /// The sender's nick.
    pub from: String,
    /// The text.
    pub text: String,
    /// When it was stored, in ms since the Unix epoch.
    pub ts: u64,
    /// The sender's client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
}

/// An event as it travels on a room's channel.
#[derive(Debug)]
pub enum Event {
    /// A stored chat message: `m ID EPOCH NODE SEQ BODY` (written by the
    /// append script).
    Message {
        id: u64,
        epoch: u64,
        origin: ConnId,
        body: Body,
    },
    /// Anything else for the room (joined, left, renamed): `n NODE SEQ FRAME`.
    Notice { origin: ConnId, frame: ServerFrame },
}

/// `NODE SEQ`: a connection as the append script and stream entries name it.
pub fn origin_field(origin: ConnId) -> String {
    format!("{} {}", node_name(origin.node), origin.seq)
}

/// Reads `NODE SEQ` back.
pub fn parse_origin(node: &str, seq: &str) -> Option<ConnId> {
    Some(ConnId {
        node: u64::from_str_radix(node, 16).ok()?,
        seq: seq.parse().ok()?,
    })
}

impl Event {
    /// The payload of a notice.
    pub fn notice(origin: ConnId, frame: &ServerFrame) -> Vec<u8> {
        let json = serde_json::to_string(frame).unwrap_or_default();
        format!("n {} {json}", origin_field(origin)).into_bytes()
    }

    /// Reads a payload from a room's channel.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok()?;
        let (kind, rest) = text.split_once(' ')?;
        match kind {
            "m" => {
                let mut parts = rest.splitn(5, ' ');
                let id = parts.next()?.parse().ok()?;
                let epoch = parts.next()?.parse().ok()?;
                let origin = parse_origin(parts.next()?, parts.next()?)?;
                let body = serde_json::from_str(parts.next()?).ok()?;
                Some(Self::Message {
                    id,
                    epoch,
                    origin,
                    body,
                })
            }
            "n" => {
                let mut parts = rest.splitn(3, ' ');
                let origin = parse_origin(parts.next()?, parts.next()?)?;
                let frame = serde_json::from_str(parts.next()?).ok()?;
                Some(Self::Notice { origin, frame })
            }
            _ => None,
        }
    }
}

/// Writes a node's presence changes and publishes its notices, in the order
/// they happened: a `joined` is published only after the membership it
/// announces is in Redis, so whoever hears it and asks `/who` sees it.
///
/// Bounded: changes are kept as a set of connections (their state is read
/// when written, so a change of mind costs nothing); notices beyond
/// [`OUTBOX_CAPACITY`] are dropped.
#[derive(Debug, Default)]
pub struct Outbox {
    pending: Mutex<Pending>,
    /// Wakes the writer.
    pub wake: Notify,
    /// Set when everything must be written again (Redis lost it).
    pub resync: AtomicBool,
    warned_full: AtomicBool,
}

/// What waits in the [`Outbox`].
#[derive(Debug, Default)]
pub struct Pending {
    /// Connections whose presence changed.
    pub changed: HashSet<ConnId>,
    /// Notices to publish: channel and payload.
    pub notices: VecDeque<(String, Vec<u8>)>,
    /// Nick leases to free: key and owner (`NODE SEQ `).
    pub releases: Vec<(String, String)>,
}

impl Outbox {
    /// Queues a notice for `channel`.
    pub fn publish(&self, channel: String, payload: Vec<u8>) {
        {
            let mut pending = lock(&self.pending);
            if pending.notices.len() >= OUTBOX_CAPACITY {
                if !self.warned_full.swap(true, Ordering::Relaxed) {
                    warn!("Redis is not keeping up: notices are being dropped");
                }
                return;
            }
            pending.notices.push_back((channel, payload));
        }
        self.wake.notify_one();
    }

    /// Frees the nick lease `key` if `owner` still holds it.
    pub fn release(&self, key: String, owner: String) {
        lock(&self.pending).releases.push((key, owner));
        self.wake.notify_one();
    }

    /// Notes that connection `id`'s presence changed.
    pub fn changed(&self, id: ConnId) {
        lock(&self.pending).changed.insert(id);
        self.wake.notify_one();
    }

    /// Takes what waits: the notices first, then the changes, so every
    /// change made before a notice was queued is written before it goes out.
    pub fn take(&self) -> Pending {
        let mut pending = lock(&self.pending);
        self.warned_full.store(false, Ordering::Relaxed);
        std::mem::take(&mut *pending)
    }

    /// Puts back changes that could not be written.
    pub fn retry(&self, changed: HashSet<ConnId>) {
        lock(&self.pending).changed.extend(changed);
    }
}
