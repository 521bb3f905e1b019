//! Presence: who is connected under which nick, who is in which room, and
//! delivery of private messages to a nick wherever it is connected.

mod memory;
mod redis;

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

pub use memory::MemoryPresence;
pub use redis::RedisPresence;

use super::ConnId;
use super::history::BoxFuture;
use super::lock;
use crate::protocol::{Mode, Rejection, RoomInfo, ServerFrame};

/// How many private messages may wait for one connection.
pub const DIRECT_CAPACITY: usize = 64;

/// The registry of connected peers.
///
/// Registering, moving and leaving never wait (a shared backend queues them);
/// what answers a question or may be refused is async and fallible.
pub trait Presence: Send + Sync + fmt::Debug {
    /// Adds a connection under its initial name (its `IP:PORT`).
    fn register(&self, id: ConnId, member: Member);

    /// Removes a connection, freeing its nick; returns its last nick and room.
    fn unregister(&self, id: ConnId) -> Option<(Arc<str>, Arc<str>)>;

    /// Records that connection `id` moved to `room`.
    fn set_room(&self, id: ConnId, room: Arc<str>);

    /// How many connections are in `room`, as far as this node knows.
    fn room_size(&self, room: &str) -> usize;

    /// How many rooms have members, as far as this node knows.
    fn room_count(&self) -> usize;

    /// Takes connection `holder`'s place away if it holds `nick` and its
    /// resume secret is `secret`: it is unregistered at once (so its end
    /// announces nothing) and its mailbox is returned, to tell it it was
    /// replaced. `None` when `nick` is free or held by anyone else.
    fn hand_over(&self, nick: &str, secret: u128) -> Option<Arc<Mailbox>>;

    /// Gives connection `id` the nick `nick` (already validated), taking
    /// it from its holder if `secret` is the holder's resume secret (the
    /// holder is then told it was replaced); returns the old nick.
    ///
    /// # Errors
    /// `nick_taken` when another connection holds it.
    fn take_nick(
        &self,
        id: ConnId,
        nick: &str,
        secret: Option<u128>,
    ) -> BoxFuture<'_, Result<Arc<str>, Rejection>> {
        if let Some(previous) = secret.and_then(|secret| self.hand_over(nick, secret)) {
            previous.replace();
        }
        self.rename(id, nick)
    }

    /// Gives connection `id` the nick `new` (already validated); returns the old one.
    ///
    /// # Errors
    /// `nick_taken` when another connection holds it (in any case).
    fn rename(&self, id: ConnId, new: &str) -> BoxFuture<'_, Result<Arc<str>, Rejection>>;

    /// The nicks in `room`, sorted case-insensitively.
    fn who(&self, room: &str) -> BoxFuture<'_, Result<Vec<String>, Rejection>>;

    /// Every room with someone in it, by name.
    fn rooms(&self) -> BoxFuture<'_, Result<Vec<RoomInfo>, Rejection>>;

    /// Called once at shutdown, after every connection is gone: a shared
    /// backend writes what it has queued and takes this node out.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Delivers a private message to whoever holds nick `to`; returns the
    /// recipient's nick as it is spelled.
    ///
    /// # Errors
    /// `no_such_user`, or `internal` when the recipient's mailbox is full.
    fn send_private(
        &self,
        to: &str,
        message: PrivateMessage,
    ) -> BoxFuture<'_, Result<String, Rejection>>;
}

/// A private message before it is addressed (the recipient's spelling of its
/// nick is filled in on delivery).
#[derive(Debug, Clone)]
pub struct PrivateMessage {
    /// The sender's nick.
    pub from: String,
    /// The text.
    pub text: String,
    /// When it was sent, in ms since the Unix epoch.
    pub ts: u64,
}

impl PrivateMessage {
    /// The frame as addressed to `to`.
    pub fn frame(&self, to: &str, cid: Option<String>) -> ServerFrame {
        ServerFrame::Private {
            from: self.from.clone(),
            to: to.to_owned(),
            text: self.text.clone(),
            ts: self.ts,
            cid,
        }
    }
}

/// One connected peer as the rest of the server sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its nick, or `IP:PORT` until it chose one.
    pub nick: Arc<str>,
    /// The room it is in.
    pub room: Arc<str>,
    /// How it talks.
    pub mode: Mode,
    /// Where private messages for it go.
    pub mailbox: Arc<Mailbox>,
    /// The secret that lets a new connection of the same client take over
    /// its nick (`resume` in the welcome).
    pub secret: u128,
}

/// Private messages waiting for one connection, rendered for its mode.
///
/// A lock and a `Notify` rather than a channel: every connection has one and
/// almost all stay empty, and an empty one costs about 100 bytes where a
/// tokio channel allocates over 1 KiB up front.
#[derive(Debug, Default)]
pub struct Mailbox {
    queue: Mutex<VecDeque<String>>,
    /// Signalled after each post; holds one permit if nobody waits.
    pub posted: Notify,
    /// Set when a new connection took this one's place.
    replaced: AtomicBool,
    /// Set when this connection's nick turned out to be another's.
    usurped: AtomicBool,
}

impl Mailbox {
    /// Leaves a message; gives it back if `DIRECT_CAPACITY` already wait.
    pub fn post(&self, text: String) -> Result<(), String> {
        {
            let mut queue = lock(&self.queue);
            if queue.len() >= DIRECT_CAPACITY {
                return Err(text);
            }
            queue.push_back(text);
        }
        self.posted.notify_one();
        Ok(())
    }

    /// Tells the connection a new one took its place (it then closes).
    pub fn replace(&self) {
        self.replaced.store(true, Ordering::Relaxed);
        self.posted.notify_one();
    }

    /// Whether a new connection took this one's place.
    pub fn replaced(&self) -> bool {
        self.replaced.load(Ordering::Relaxed)
    }

    /// Tells the connection its nick was not free after all: an earlier
    /// holder, whose lease Redis had lost, claimed it again (it then closes).
    pub fn usurp(&self) {
        self.usurped.store(true, Ordering::Relaxed);
        self.posted.notify_one();
    }

    /// Whether the connection's nick turned out to be another's.
    pub fn usurped(&self) -> bool {
        self.usurped.load(Ordering::Relaxed)
    }

    /// Takes every waiting message, oldest first.
    pub fn take(&self) -> VecDeque<String> {
        std::mem::take(&mut *lock(&self.queue))
    }
}
