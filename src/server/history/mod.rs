//! History: append a message (which also makes it live), read the recent
//! ones or everything after an id, and the epoch that tells a client whether
//! the ids it holds still mean anything.
//!
//! [`MemoryHistory`] keeps a ring per room and starts afresh with every
//! process; [`SqliteHistory`] keeps everything in one SQLite file.

mod files;
mod memory;
mod redis;
mod sqlite;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use memory::MemoryHistory;
pub use redis::RedisHistory;
pub use sqlite::SqliteHistory;

use super::ConnId;
use super::fanout::Delivery;
use crate::protocol::ServerFrame;

/// A boxed future, as the history and presence interfaces return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where chat messages are kept.
///
/// A backend publishes every message it stores to the room's fan-out itself,
/// after the message is stored and in id order, so no one ever receives a
/// message that is not stored and every member sees a room's messages in order.
pub trait History: Send + Sync + fmt::Debug {
    /// Stores `message`, gives it the room's next id, then publishes it;
    /// unless it is a retry: a message with the `cid` of one its sender
    /// (the same nick, in any case) stored in the room before, still kept,
    /// which is stored and published no second time.
    ///
    /// # Errors
    /// [`HistoryError::Unavailable`] when it could not be stored; nothing is
    /// published then.
    fn append(&self, message: NewMessage) -> BoxFuture<'_, Result<Appended, HistoryError>>;

    /// The room's stored messages: the most recent ones, or those after an
    /// id (at most `limit`), oldest first, with the room's epoch.
    ///
    /// # Errors
    /// [`HistoryError::Unavailable`] when the store cannot be read.
    fn read(
        &self,
        room: &str,
        since: Since,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, HistoryError>>;

    /// `None` while the store works; otherwise why it does not.
    fn trouble(&self) -> Option<String>;

    /// Called once at shutdown, after every connection is gone: a store
    /// lets go of its file for the next server.
    fn close(&self) {}

    /// Stored messages let go of before their time to keep the store within
    /// its memory budget (`--max-history-bytes`); stores that keep nothing
    /// in memory let go of none.
    fn evicted(&self) -> u64 {
        0
    }

    /// Lets go of the messages kept in memory for rooms that have had none
    /// for `idle` and that `occupied` says have no members; their ids go on
    /// where they were. Stores that keep nothing in memory do nothing.
    fn forget_idle(&self, idle: std::time::Duration, occupied: &dyn Fn(&str) -> bool) {
        let _ = (idle, occupied);
    }

    /// Whether `room`'s messages are kept in this process's memory, so the
    /// room costs memory even with nobody in it (for `--max-rooms`).
    fn keeps(&self, room: &str) -> bool {
        let _ = room;
        false
    }

    /// How many rooms whose messages are kept in memory `occupied` says
    /// have no members. Stores that keep nothing in memory have none.
    fn kept_unoccupied(&self, occupied: &dyn Fn(&str) -> bool) -> usize {
        let _ = occupied;
        0
    }
}

/// A chat message on its way into history.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The connection that sent it.
    pub origin: ConnId,
    /// Its room (normalised).
    pub room: Arc<str>,
    /// The sender's nick.
    pub from: Arc<str>,
    /// The text.
    pub text: String,
    /// The sender's client id, echoed on its acknowledgement.
    pub cid: Option<String>,
}

impl NewMessage {
    /// The live event for this message once it has `id` and `ts`.
    pub fn delivery(self, stamp: Stamp) -> Arc<Delivery> {
        let frame = ServerFrame::Message {
            id: stamp.id,
            room: self.room.to_string(),
            from: self.from.to_string(),
            text: self.text,
            ts: stamp.ts,
            cid: None,
            history: false,
        };
        Arc::new(Delivery::new(self.origin, frame, self.cid))
    }
}

/// What came of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored and published under this stamp.
    New(Stamp),
    /// A retry of a message stored before (same sender, same cid): this
    /// is the original, and nothing was stored or published.
    Repeat(Stored),
}

impl Appended {
    /// The message's id, new or original.
    pub fn id(&self) -> u64 {
        match self {
            Appended::New(stamp) => stamp.id,
            Appended::Repeat(original) => original.id,
        }
    }
}

/// What storing a message gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Its id: the room's previous id plus one, never reused.
    pub id: u64,
    /// When it was stored, in ms since the Unix epoch.
    pub ts: u64,
}

/// A message read back from history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its id in the room.
    pub id: u64,
    /// When it was stored, in ms since the Unix epoch.
    pub ts: u64,
    /// The sender's nick at the time.
    pub from: String,
    /// The text.
    pub text: String,
    /// The sender's client id.
    pub cid: Option<String>,
    /// The connection that sent it, where the store keeps it: only that
    /// connection is given the cid back.
    pub origin: Option<ConnId>,
}

impl Stored {
    /// Whether `message` is a retry of this one: the same cid from the same
    /// sender (nicks compare without case, as they are unique so).
    pub fn retried_by(&self, message: &NewMessage) -> bool {
        message.cid.is_some()
            && self.cid == message.cid
            && self.from.eq_ignore_ascii_case(&message.from)
    }

    /// The message as a history replay frame for `room`, as connection
    /// `reader` gets it: with its cid only if it sent the message, which is
    /// how a client learns which of its sends were stored, and no one
    /// else's cids.
    pub fn frame(&self, room: &str, reader: ConnId) -> ServerFrame {
        let own = self.origin == Some(reader);
        ServerFrame::Message {
            id: self.id,
            room: room.to_owned(),
            from: self.from.clone(),
            text: self.text.clone(),
            ts: self.ts,
            cid: if own { self.cid.clone() } else { None },
            history: true,
        }
    }
}

/// Which stored messages to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// The most recent ones.
    Recent,
    /// Those with an id greater than this one.
    After(u64),
    /// The last ones with an id smaller than this one (scroll-back).
    Before(u64),
}

/// Stored messages of one room, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The room's history generation: ids from another epoch mean nothing here.
    pub epoch: u64,
    /// The messages.
    pub messages: Vec<Stored>,
    /// The room's newest id, where the store knows it without asking: a
    /// read after an id that finds nothing though newer ids were given out
    /// means those messages are no longer kept.
    pub newest: Option<u64>,
}

/// Why history could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The store cannot take or give messages right now.
    #[error("history is unavailable: {0}")]
    Unavailable(String),
    /// The file was written by a newer wschat.
    #[error("its schema version {found} is newer than this server's ({supported}); upgrade wschat")]
    NewerSchema {
        /// The version in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// SQLite refused the file or an operation on it.
    #[error("{}", sqlite::describe(.0))]
    Sqlite(rusqlite::Error),
    /// The file (or its lock file beside it) cannot be opened or made.
    #[error("cannot open the file (does its directory exist, and may the server write there?)")]
    CannotOpen,
    /// Another server uses the file.
    #[error(
        "it is in use by another wschat server{} (it holds {})",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        lock.display()
    )]
    InUse {
        /// The running server's process id, as its lock file names it.
        pid: Option<u32>,
        /// The lock file beside the database.
        lock: std::path::PathBuf,
    },
    /// The file or its directory cannot be used.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<rusqlite::Error> for HistoryError {
    fn from(err: rusqlite::Error) -> Self {
        Self::Sqlite(err)
    }
}
