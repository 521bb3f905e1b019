//! Presence across nodes, in Redis.
//!
//! Each node keeps its own connections in a [`MemoryPresence`] (their
//! mailboxes, modes and secrets never leave it) and mirrors who is where
//! into Redis through its outbox: a hash of members per room and one per
//! node. Nicks are leases (`SET NX PX`) owned by a connection of a node and
//! refreshed by the node's heartbeat, which also keeps the node in a sorted
//! set of live nodes. A node that stops beating is cleaned up by the first
//! other node to notice: its members leave their rooms (with `left`
//! notices) and its nicks are freed. Private messages to a nick on another
//! node go to that node's inbox channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::memory::sorted;
use super::{Mailbox, Member, MemoryPresence, Presence, PrivateMessage};
use crate::protocol::{ErrorCode, Rejection, RoomInfo, ServerFrame};
use crate::server::fanout::{Delivery, Fanout};
use crate::server::history::BoxFuture;
use crate::server::redis::{RedisLink, node_name};
use crate::server::{ConnId, lock};

/// Takes a nick. KEYS: the nick, the live nodes, the recovery mark. ARGV:
/// the lease's start (`NODE SEQ SECRET `), the nick, ttl ms, the owner
/// prefix (`NODE SEQ `), the secret given, the node, now (ms).
///
/// Returns `{0, holder}` when another connection holds it (and the secret
/// does not match); `{-1}` when the nick is free but Redis may have lost
/// who held it (this node is not in the live set, or a recovery is under
/// way): the holder's node has yet to claim it again; otherwise
/// `{1, previous or '', lease}`. A lease records when its nick was claimed;
/// the same client taking it over (the secret) keeps that time.
const CLAIM: &str = r"
local cur = redis.call('GET', KEYS[1])
local since = ARGV[7]
if cur then
  local secret, held = string.match(cur, '^%S+ %S+ (%S+) (%d+) ')
  if string.sub(cur, 1, #ARGV[4]) ~= ARGV[4] and (ARGV[5] == '' or secret ~= ARGV[5]) then
    return {0, cur}
  end
  since = held or since
elseif not redis.call('ZSCORE', KEYS[2], ARGV[6]) or redis.call('EXISTS', KEYS[3]) == 1 then
  return {-1, ''}
end
local lease = ARGV[1] .. since .. ' ' .. ARGV[2]
redis.call('SET', KEYS[1], lease, 'PX', ARGV[3])
return {1, cur or '', lease}
";

/// Frees a nick if its lease is still the owner's: KEYS nick; ARGV owner
/// prefix. Returns 1 if freed, 0 if there was no lease, -1 if another
/// connection holds it now.
const RELEASE: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if string.sub(cur, 1, #ARGV[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return -1
";

/// Extends a lease if it is still ours, or takes it again if it lapsed
/// (or Redis lost it): KEYS nick; ARGV lease, ttl ms. Returns 1 then. A
/// lease another connection holds is taken back if that one claimed the
/// nick later than ours did (after Redis lost our lease): its lease is
/// returned, for its node to be told. Otherwise 0: ours is the later claim.
const REFRESH: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
local ours = tonumber(string.match(ARGV[1], '^%S+ %S+ %S+ (%d+) '))
local theirs = tonumber(string.match(cur, '^%S+ %S+ %S+ (%d+) '))
if ours and theirs and ours < theirs then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return cur
end
return 0
";

/// Forgets rooms nobody is in: KEYS the rooms set; ARGV prefix, names.
const FORGET_EMPTY: &str = r"
for i = 2, #ARGV do
  if redis.call('HLEN', ARGV[1] .. ':{' .. ARGV[i] .. '}:members') == 0 then
    redis.call('SREM', KEYS[1], ARGV[i])
  end
end
return 0
";

/// A nick lease's value: `NODE SEQ SECRET SINCE Nick`, SINCE being when
/// the nick was claimed (ms since the Unix epoch).
struct Lease<'a> {
    node: &'a str,
    seq: u64,
    secret: &'a str,
    nick: &'a str,
}

impl<'a> Lease<'a> {
    fn parse(value: &'a str) -> Option<Self> {
        let mut parts = value.splitn(5, ' ');
        Some(Self {
            node: parts.next()?,
            seq: parts.next()?.parse().ok()?,
            secret: parts.next()?,
            nick: parts.nth(1)?,
        })
    }
}

/// What goes to another node's inbox.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
enum Letter {
    /// A private message for the connection holding `to`.
    Private {
        to: String,
        from: String,
        text: String,
        ts: u64,
    },
    /// Connection `seq` lost its nick to a resumed connection elsewhere.
    Replaced { seq: u64 },
    /// Connection `seq` took a nick that was not free after all (Redis had
    /// lost its lease, and its holder claimed it again): it is closed.
    Usurped { seq: u64 },
}

/// Presence shared by every node through Redis.
#[derive(Debug)]
pub struct RedisPresence {
    local: MemoryPresence,
    link: Arc<RedisLink>,
    fanout: Arc<dyn Fanout>,
    /// How long a lease lasts without a heartbeat.
    ttl: Duration,
    /// Nick leases this node's connections hold: connection -> (key, value).
    leases: std::sync::Mutex<HashMap<ConnId, (String, String)>>,
    /// Members on other nodes per room, as of the last heartbeat (for
    /// `--announce-limit`).
    sizes: std::sync::Mutex<HashMap<Arc<str>, usize>>,
    claim: redis::Script,
    release: redis::Script,
    /// Asks the writer for its last flush at shutdown.
    close: std::sync::Mutex<Option<mpsc::Sender<oneshot::Sender<()>>>>,
}

impl RedisPresence {
    /// Starts the node's presence: puts the node in the set of live nodes
    /// (claims need it there), then starts its heartbeat, its outbox
    /// writer, and the reader of its inbox.
    pub async fn start(
        link: Arc<RedisLink>,
        fanout: Arc<dyn Fanout>,
        inbox: mpsc::Receiver<Vec<u8>>,
        ttl: Duration,
    ) -> Arc<Self> {
        let presence = Arc::new(Self {
            local: MemoryPresence::default(),
            link,
            fanout,
            ttl: ttl.max(Duration::from_secs(1)),
            leases: std::sync::Mutex::new(HashMap::new()),
            sizes: std::sync::Mutex::new(HashMap::new()),
            close: std::sync::Mutex::new(None),
            claim: redis::Script::new(CLAIM),
            release: redis::Script::new(RELEASE),
        });
        let (close, closing) = mpsc::channel(1);
        *lock(&presence.close) = Some(close);
        // Failing, it is tried again at the first beat.
        let live = presence.stay_live().await.is_ok();
        tokio::spawn(presence.clone().write(closing));
        tokio::spawn(presence.clone().beat(live));
        tokio::spawn(presence.clone().read_inbox(inbox));
        presence
    }

    /// `NODE SEQ `: how this connection's leases begin.
    fn owner(&self, id: ConnId) -> String {
        format!("{} {} ", node_name(id.node), id.seq)
    }

    /// The field naming a connection in a room's member hash.
    fn field(id: ConnId) -> String {
        format!("{}:{}", node_name(id.node), id.seq)
    }

    fn taken(nick: &str) -> Rejection {
        Rejection::new(
            ErrorCode::NickTaken,
            format!("nickname {nick} is already in use"),
        )
    }

    fn unavailable(err: &redis::RedisError) -> Rejection {
        Rejection::new(
            ErrorCode::Unavailable,
            format!("Redis is unavailable: {err}"),
        )
    }

    async fn take_now(
        &self,
        id: ConnId,
        nick: String,
        secret: Option<u128>,
    ) -> Result<Arc<str>, Rejection> {
        let lower = nick.to_ascii_lowercase();
        // Another connection of this node: the local registry decides.
        if let Some(previous) = secret.and_then(|secret| self.local.hand_over(&nick, secret)) {
            previous.replace();
        }
        let key = self.link.nick(&lower);
        let secret_hex = secret.map(|s| format!("{s:032x}")).unwrap_or_default();
        let own_secret = self.local_secret(id);
        let start = format!("{}{own_secret:032x} ", self.owner(id));
        let mut conn = self.link.conn();
        let mut previous = self.claim(&key, &start, &nick, id, &secret_hex).await?;
        if previous.is_none() {
            // Held by a connection of this node that has left (its lease
            // is released by the writer, which may not have run yet).
            let holder: Option<String> = self
                .link
                .note(conn.get(&key).await)
                .map_err(|err| Self::unavailable(&err))?;
            let gone = match holder.as_deref() {
                // Freed meanwhile.
                None => Some(String::new()),
                Some(holder) => Lease::parse(holder)
                    .filter(|lease| {
                        let here = ConnId {
                            node: self.link.node,
                            seq: lease.seq,
                        };
                        lease.node == self.link.node_name() && self.local.place(here).is_none()
                    })
                    .map(|lease| lease.secret.to_owned()),
            };
            if let Some(secret) = gone {
                previous = self.claim(&key, &start, &nick, id, &secret).await?;
            }
        }
        let Some((previous, value)) = previous else {
            return Err(Self::taken(&nick));
        };
        // Taken over from a connection on another node: tell it.
        if let Some(lease) = Lease::parse(&previous).filter(|l| l.node != self.link.node_name()) {
            let letter = Letter::Replaced { seq: lease.seq };
            let letter = serde_json::to_string(&letter).unwrap_or_default();
            let inbox = self.link.inbox(lease.node);
            let sent: redis::RedisResult<usize> = conn.publish(inbox, letter).await;
            let _ = self.link.note(sent);
        }
        let old = match self.local.rename_now(id, &nick) {
            Ok(old) => old,
            Err(rejection) => {
                self.release_lease(&key, id).await;
                return Err(rejection);
            }
        };
        let earlier = lock(&self.leases).insert(id, (key.clone(), value));
        if let Some((earlier, _)) = earlier.filter(|(earlier, _)| *earlier != key) {
            self.release_lease(&earlier, id).await;
        }
        self.link.outbox.changed(id);
        Ok(old)
    }

    /// Runs the claim script: `None` when another connection holds the
    /// nick, else the previous lease (`""` if none) and the new one.
    ///
    /// # Errors
    /// `unavailable` when Redis does not answer, or when the nick is free
    /// but Redis may have lost who held it (see [`CLAIM`]).
    async fn claim(
        &self,
        key: &str,
        start: &str,
        nick: &str,
        id: ConnId,
        secret: &str,
    ) -> Result<Option<(String, String)>, Rejection> {
        let mut conn = self.link.conn();
        let answer: Vec<redis::Value> = self
            .link
            .note(
                self.claim
                    .key(key)
                    .key(self.link.nodes())
                    .key(self.link.recovering())
                    .arg(start)
                    .arg(nick)
                    .arg(self.ttl_ms())
                    .arg(self.owner(id))
                    .arg(secret)
                    .arg(self.link.node_name())
                    .arg(crate::protocol::now_ms())
                    .invoke_async(&mut conn)
                    .await,
            )
            .map_err(|err| Self::unavailable(&err))?;
        let text = |at: usize| match answer.get(at) {
            Some(redis::Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            _ => String::new(),
        };
        match answer.first() {
            Some(redis::Value::Int(1)) => Ok(Some((text(1), text(2)))),
            Some(redis::Value::Int(-1)) => Err(Rejection::new(
                ErrorCode::Unavailable,
                "Redis lost who holds which nick and the servers are claiming theirs again: \
                 try again in a few seconds",
            )),
            _ => Ok(None),
        }
    }

    /// The secret of a local connection (its lease carries it, so a
    /// resuming client can take the nick over on any node).
    fn local_secret(&self, id: ConnId) -> u128 {
        self.local.secret(id).unwrap_or(0)
    }

    async fn release_lease(&self, key: &str, id: ConnId) {
        let mut conn = self.link.conn();
        let released: redis::RedisResult<u64> = self
            .release
            .key(key)
            .arg(self.owner(id))
            .invoke_async(&mut conn)
            .await;
        let _ = self.link.note(released);
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    async fn who_now(&self, room: &str) -> Result<Vec<String>, Rejection> {
        let mut conn = self.link.conn();
        let everyone: HashMap<String, String> = self
            .link
            .note(conn.hgetall(self.link.members(room)).await)
            .map_err(|err| Self::unavailable(&err))?;
        // This node's own members as it knows them now (its writes to
        // Redis may still be on their way).
        let me = format!("{}:", self.link.node_name());
        let mut nicks = self.local.nicks_in(room);
        nicks.extend(
            everyone
                .into_iter()
                .filter(|(field, _)| !field.starts_with(&me))
                .map(|(_, nick)| Arc::from(nick)),
        );
        Ok(sorted(nicks))
    }

    async fn rooms_now(&self) -> Result<Vec<RoomInfo>, Rejection> {
        let mut conn = self.link.conn();
        let names: Vec<String> = self
            .link
            .note(conn.smembers(self.link.rooms()).await)
            .map_err(|err| Self::unavailable(&err))?;
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.hkeys(self.link.members(name))
                .hget(self.link.meta(name), "last");
        }
        // Redis refuses an empty pipeline ("empty command").
        let found: Vec<(Vec<String>, Option<u64>)> = if names.is_empty() {
            Vec::new()
        } else {
            self.link
                .note(pipe.query_async(&mut conn).await)
                .map_err(|err| Self::unavailable(&err))?
        };
        // Members on other nodes as Redis has them, this node's as it
        // knows them now.
        let me = format!("{}:", self.link.node_name());
        let mut rooms: HashMap<String, RoomInfo> = names
            .into_iter()
            .zip(found)
            .map(|(name, (fields, last))| {
                let members = fields.iter().filter(|f| !f.starts_with(&me)).count();
                let info = RoomInfo {
                    name: name.clone(),
                    members,
                    last,
                };
                (name, info)
            })
            .collect();
        for (name, size) in self.local.room_sizes() {
            rooms
                .entry(name.to_string())
                .or_insert_with(|| RoomInfo {
                    name: name.to_string(),
                    members: 0,
                    last: None,
                })
                .members += size;
        }
        let empty: Vec<&str> = rooms
            .values()
            .filter(|info| info.members == 0)
            .map(|info| info.name.as_str())
            .collect();
        if !empty.is_empty() {
            let forgotten: redis::RedisResult<u64> = redis::cmd("EVAL")
                .arg(FORGET_EMPTY)
                .arg(1)
                .arg(self.link.rooms())
                .arg(self.link.prefix())
                .arg(&empty)
                .query_async(&mut conn)
                .await;
            let _ = self.link.note(forgotten);
        }
        let mut rooms: Vec<RoomInfo> = rooms
            .into_values()
            .filter(|info| info.members > 0)
            .collect();
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rooms)
    }

    async fn send_now(&self, to: &str, message: PrivateMessage) -> Result<String, Rejection> {
        match self.local.send_now(to, &message) {
            Err(rejection) if rejection.code == ErrorCode::NoSuchUser => {}
            done => return done,
        }
        let mut conn = self.link.conn();
        let lease: Option<String> = self
            .link
            .note(conn.get(self.link.nick(&to.to_ascii_lowercase())).await)
            .map_err(|err| Self::unavailable(&err))?;
        let no_such_user = || Rejection::new(ErrorCode::NoSuchUser, format!("no such user: {to}"));
        let Some(lease) = lease else {
            return Err(no_such_user());
        };
        let Some(Lease { node, nick, .. }) = Lease::parse(&lease) else {
            return Err(no_such_user());
        };
        let letter = Letter::Private {
            to: nick.to_owned(),
            from: message.from,
            text: message.text,
            ts: message.ts,
        };
        let letter = serde_json::to_string(&letter).unwrap_or_default();
        let heard: usize = self
            .link
            .note(conn.publish(self.link.inbox(node), letter).await)
            .map_err(|err| Self::unavailable(&err))?;
        if heard == 0 {
            return Err(no_such_user());
        }
        Ok(nick.to_owned())
    }

    /// Closes connection `seq` of this node, which holds a nick whose
    /// earlier holder claimed it again: its lease is no longer its own
    /// (so it is not released), and the connection ends with its nick.
    fn usurped(&self, seq: u64) {
        let id = ConnId {
            node: self.link.node,
            seq,
        };
        if lock(&self.leases).remove(&id).is_some()
            && let Some(mailbox) = self.local.mailbox(id)
        {
            warn!(
                "connection {seq} loses its nick to an earlier holder (Redis had lost the lease)"
            );
            mailbox.usurp();
        }
    }

    /// Reads what other nodes send to this one.
    async fn read_inbox(self: Arc<Self>, mut inbox: mpsc::Receiver<Vec<u8>>) {
        while let Some(payload) = inbox.recv().await {
            match serde_json::from_slice::<Letter>(&payload) {
                Ok(Letter::Private { to, from, text, ts }) => {
                    let message = PrivateMessage { from, text, ts };
                    if let Err(rejection) = self.local.send_now(&to, &message) {
                        debug!(
                            "private message from another node not delivered: {}",
                            rejection.text
                        );
                    }
                }
                Ok(Letter::Replaced { seq }) => {
                    let id = ConnId {
                        node: self.link.node,
                        seq,
                    };
                    if let Some(mailbox) = self.local.evict(id) {
                        lock(&self.leases).remove(&id);
                        self.link.outbox.changed(id);
                        mailbox.replace();
                    }
                }
                Ok(Letter::Usurped { seq }) => self.usurped(seq),
                Err(err) => debug!("unreadable inbox message: {err}"),
            }
        }
    }

    /// Writes presence changes and publishes notices, in order (see
    /// [`crate::server::redis::Outbox`]).
    ///
    /// Asked to close, it writes what is left, takes the node out of the
    /// set of live nodes, and answers.
    async fn write(self: Arc<Self>, mut close: mpsc::Receiver<oneshot::Sender<()>>) {
        // What Redis holds for each of this node's connections.
        let mut mirror: HashMap<ConnId, (Arc<str>, Arc<str>)> = HashMap::new();
        let node = self.link.node_name();
        loop {
            let closing = tokio::select! {
                () = self.link.outbox.wake.notified() => None,
                asked = close.recv() => asked,
            };
            if self
                .link
                .outbox
                .resync
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                mirror.clear();
                for id in self.local.ids() {
                    self.link.outbox.changed(id);
                }
            }
            let pending = self.link.outbox.take();
            let mut pipe = redis::pipe();
            let mut next = Vec::new();
            for &id in &pending.changed {
                let now = self.local.place(id);
                let before = mirror.get(&id);
                if now.as_ref() == before {
                    continue;
                }
                let field = Self::field(id);
                if let Some((_, room)) = before {
                    pipe.hdel(self.link.members(room), &field).ignore();
                    // A room left empty leaves nothing behind.
                    eval(
                        &mut pipe,
                        FORGET_EMPTY,
                        &self.link.rooms(),
                        &[self.link.prefix(), room],
                    );
                }
                match &now {
                    Some((nick, room)) => {
                        pipe.hset(self.link.members(room), &field, &**nick)
                            .ignore()
                            .sadd(self.link.rooms(), &**room)
                            .ignore()
                            .hset(
                                self.link.node_members(&node),
                                id.seq,
                                format!("{room}\t{nick}"),
                            )
                            .ignore();
                    }
                    None => {
                        pipe.hdel(self.link.node_members(&node), id.seq).ignore();
                    }
                }
                next.push((id, now));
            }
            for (key, owner) in &pending.releases {
                eval(&mut pipe, RELEASE, key, &[owner]);
            }
            for (channel, payload) in &pending.notices {
                pipe.publish(channel, payload).ignore();
            }
            let idle = next.is_empty() && pending.releases.is_empty() && pending.notices.is_empty();
            if !idle {
                let mut conn = self.link.conn();
                let written: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
                match self.link.note(written) {
                    Ok(()) => {
                        for (id, now) in next {
                            match now {
                                Some(place) => mirror.insert(id, place),
                                None => mirror.remove(&id),
                            };
                        }
                    }
                    Err(_) if closing.is_none() => {
                        // Try the changes again once Redis is back (the
                        // heartbeat wakes this); the notices are lost.
                        self.link.outbox.retry(pending.changed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(_) => {}
                }
            }
            if let Some(done) = closing {
                self.leave(&node).await;
                let _ = done.send(());
                return;
            }
        }
    }

    /// Takes this node out of the chat at shutdown, so the others need not
    /// wait for its heartbeat to run out.
    async fn leave(&self, node: &str) {
        let mut pipe = redis::pipe();
        pipe.zrem(self.link.nodes(), node)
            .ignore()
            .del(self.link.node_members(node))
            .ignore();
        let mut conn = self.link.conn();
        let left: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
        let _ = self.link.note(left);
    }

    /// The node's heartbeat: stays in the set of live nodes, refreshes its
    /// nick leases, and cleans up after nodes that stopped beating. `live`:
    /// the node is in the set already, so finding it missing means Redis
    /// lost it.
    async fn beat(self: Arc<Self>, live: bool) {
        let mut tick = tokio::time::interval(self.ttl / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = !live;
        loop {
            tick.tick().await;
            let now = crate::protocol::now_ms();
            let mut conn = self.link.conn();
            match self.stay_live().await {
                Ok(1) if !first => {
                    // This node was given up for dead, or Redis lost its
                    // data: write everything again.
                    warn!("this node was missing from Redis; registering its users again");
                    // No free nick is given out until every node had a beat
                    // to claim its own again (they beat every ttl/4).
                    let marked: redis::RedisResult<()> = redis::cmd("SET")
                        .arg(self.link.recovering())
                        .arg(1)
                        .arg("PX")
                        .arg(self.ttl_ms() / 2)
                        .arg("NX")
                        .query_async(&mut conn)
                        .await;
                    let _ = self.link.note(marked);
                    self.link
                        .outbox
                        .resync
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => continue,
            }
            first = false;
            // Wake the writer: it retries what failed while Redis was away.
            self.link.outbox.wake.notify_one();
            self.refresh_leases().await;
            self.count_members().await;
            self.reap(now).await;
        }
    }

    /// Extends this node's leases, claiming again those Redis lost; a
    /// lease taken meanwhile by a later claimant is taken back (and the
    /// claimant's node told), and a connection that is itself the later
    /// claimant is closed.
    /// Puts the node in the set of live nodes until three quarters of a
    /// TTL from now; `Ok(1)` if it was not there.
    async fn stay_live(&self) -> redis::RedisResult<u64> {
        let until = crate::protocol::now_ms() + self.ttl_ms() * 3 / 4;
        let mut conn = self.link.conn();
        let added = conn
            .zadd(self.link.nodes(), self.link.node_name(), until)
            .await;
        self.link.note(added)
    }

    async fn refresh_leases(&self) {
        let leases: Vec<(ConnId, String, String)> = lock(&self.leases)
            .iter()
            .map(|(id, (key, value))| (*id, key.clone(), value.clone()))
            .collect();
        if leases.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        let ttl = self.ttl_ms().to_string();
        for (_, key, value) in &leases {
            // Each answer is wanted (not `eval`, which ignores it).
            pipe.cmd("EVAL")
                .arg(REFRESH)
                .arg(1)
                .arg(key)
                .arg(value)
                .arg(&ttl);
        }
        let mut conn = self.link.conn();
        let refreshed: redis::RedisResult<Vec<redis::Value>> = pipe.query_async(&mut conn).await;
        let Ok(refreshed) = self.link.note(refreshed) else {
            return;
        };
        for ((id, _, _), answer) in leases.into_iter().zip(refreshed) {
            match answer {
                redis::Value::Int(0) => self.usurped(id.seq),
                redis::Value::BulkString(displaced) => {
                    let displaced = String::from_utf8_lossy(&displaced).into_owned();
                    let Some(lease) = Lease::parse(&displaced) else {
                        continue;
                    };
                    if lease.node == self.link.node_name() {
                        self.usurped(lease.seq);
                        continue;
                    }
                    let letter = Letter::Usurped { seq: lease.seq };
                    let letter = serde_json::to_string(&letter).unwrap_or_default();
                    let sent: redis::RedisResult<usize> =
                        conn.publish(self.link.inbox(lease.node), letter).await;
                    let _ = self.link.note(sent);
                }
                _ => {}
            }
        }
    }

    /// Counts every room's members on other nodes: exactly for the rooms
    /// this node has members in (its own entries are left out), by the
    /// size of the member hash for the rest.
    async fn count_members(&self) {
        let mut conn = self.link.conn();
        let names: redis::RedisResult<Vec<String>> = conn.smembers(self.link.rooms()).await;
        let Ok(names) = self.link.note(names) else {
            return;
        };
        if names.is_empty() {
            // Nothing to count, and Redis refuses an empty pipeline.
            return;
        }
        let mine: HashMap<Arc<str>, usize> = self.local.room_sizes().into_iter().collect();
        let mut pipe = redis::pipe();
        for name in &names {
            if mine.contains_key(name.as_str()) {
                pipe.hkeys(self.link.members(name));
            } else {
                pipe.hlen(self.link.members(name));
            }
        }
        let counts: redis::RedisResult<Vec<redis::Value>> = pipe.query_async(&mut conn).await;
        let Ok(counts) = self.link.note(counts) else {
            return;
        };
        let me = format!("{}:", self.link.node_name());
        let elsewhere = |count: redis::Value| -> usize {
            match count {
                redis::Value::Int(n) => usize::try_from(n).unwrap_or(0),
                redis::Value::Array(fields) => fields
                    .iter()
                    .filter(|field| {
                        !matches!(field, redis::Value::BulkString(f) if f.starts_with(me.as_bytes()))
                    })
                    .count(),
                _ => 0,
            }
        };
        *lock(&self.sizes) = names
            .into_iter()
            .zip(counts)
            .map(|(name, count)| (Arc::from(name), elsewhere(count)))
            .filter(|(_, n)| *n > 0)
            .collect();
    }

    /// Cleans up after every node whose heartbeat stopped before `now`.
    async fn reap(&self, now: u64) {
        let mut conn = self.link.conn();
        let dead: Vec<String> = match conn.zrangebyscore(self.link.nodes(), "-inf", now).await {
            Ok(dead) => dead,
            Err(err) => return self.link.failed(&err),
        };
        for node in dead {
            // Only the node that removes it cleans up after it.
            let won: redis::RedisResult<u64> = conn.zrem(self.link.nodes(), &node).await;
            if !matches!(won, Ok(1)) {
                continue;
            }
            let members: HashMap<u64, String> = conn
                .hgetall(self.link.node_members(&node))
                .await
                .unwrap_or_default();
            info!(
                "node {node} stopped answering; {} of its connection(s) leave",
                members.len()
            );
            let mut pipe = redis::pipe();
            let mut left = Vec::new();
            for (seq, place) in &members {
                let Some((room, nick)) = place.split_once('\t') else {
                    continue;
                };
                pipe.hdel(self.link.members(room), format!("{node}:{seq}"))
                    .ignore();
                let key = self.link.nick(&nick.to_ascii_lowercase());
                let owner = format!("{node} {seq} ");
                pipe.cmd("EVAL").arg(RELEASE).arg(1).arg(key).arg(owner);
                left.push((room.to_owned(), nick.to_owned(), *seq));
            }
            pipe.del(self.link.node_members(&node)).ignore();
            let released: redis::RedisResult<Vec<i64>> = pipe.query_async(&mut conn).await;
            let Ok(released) = self.link.note(released) else {
                continue;
            };
            let node_id = u64::from_str_radix(&node, 16).unwrap_or(0);
            for ((room, nick, seq), released) in left.into_iter().zip(released) {
                if released < 0 {
                    // Another connection holds the nick now: the same client,
                    // resumed on another node. It did not leave.
                    continue;
                }
                let frame = ServerFrame::Left {
                    room: room.clone(),
                    nick,
                };
                let origin = ConnId { node: node_id, seq };
                self.fanout
                    .publish(&room, Arc::new(Delivery::new(origin, frame, None)));
            }
        }
    }
}

/// Adds a script with one key to a pipeline. EVAL, not EVALSHA: a
/// pipeline cannot load a script Redis does not know (it does not after a
/// restart), and Redis caches the compiled script either way.
fn eval(pipe: &mut redis::Pipeline, script: &str, key: &str, args: &[&str]) {
    pipe.cmd("EVAL")
        .arg(script)
        .arg(1)
        .arg(key)
        .arg(args)
        .ignore();
}

impl Presence for RedisPresence {
    fn register(&self, id: ConnId, member: Member) {
        self.local.register(id, member);
        self.link.outbox.changed(id);
    }

    fn unregister(&self, id: ConnId) -> Option<(Arc<str>, Arc<str>)> {
        let gone = self.local.unregister(id);
        if let Some((key, _)) = lock(&self.leases).remove(&id) {
            self.link.outbox.release(key, self.owner(id));
        }
        self.link.outbox.changed(id);
        gone
    }

    fn set_room(&self, id: ConnId, room: Arc<str>) {
        self.local.set_room(id, room);
        self.link.outbox.changed(id);
    }

    /// This node's members now, plus other nodes' as of the last heartbeat.
    fn room_size(&self, room: &str) -> usize {
        let elsewhere = lock(&self.sizes).get(room).copied().unwrap_or(0);
        self.local.room_size(room) + elsewhere
    }

    fn room_count(&self) -> usize {
        self.local.room_count()
    }

    fn hand_over(&self, nick: &str, secret: u128) -> Option<Arc<Mailbox>> {
        self.local.hand_over(nick, secret)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        let close = lock(&self.close).take();
        Box::pin(async move {
            let Some(close) = close else { return };
            let (done, flushed) = oneshot::channel();
            if close.send(done).await.is_ok() {
                let _ = flushed.await;
            }
        })
    }

    fn take_nick(
        &self,
        id: ConnId,
        nick: &str,
        secret: Option<u128>,
    ) -> BoxFuture<'_, Result<Arc<str>, Rejection>> {
        Box::pin(self.take_now(id, nick.to_owned(), secret))
    }

    fn rename(&self, id: ConnId, new: &str) -> BoxFuture<'_, Result<Arc<str>, Rejection>> {
        Box::pin(self.take_now(id, new.to_owned(), None))
    }

    fn who(&self, room: &str) -> BoxFuture<'_, Result<Vec<String>, Rejection>> {
        let room = room.to_owned();
        Box::pin(async move { self.who_now(&room).await })
    }

    fn rooms(&self) -> BoxFuture<'_, Result<Vec<RoomInfo>, Rejection>> {
        Box::pin(self.rooms_now())
    }

    fn send_private(
        &self,
        to: &str,
        message: PrivateMessage,
    ) -> BoxFuture<'_, Result<String, Rejection>> {
        let to = to.to_owned();
        Box::pin(async move { self.send_now(&to, message).await })
    }
}
