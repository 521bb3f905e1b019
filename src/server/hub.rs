//! Who is connected: nicks (unique case-insensitively), rooms and private delivery.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::bus::ConnId;
use crate::protocol::{ErrorCode, Mode, Rejection, RoomInfo};

/// How many private messages may wait for one connection.
pub const DIRECT_CAPACITY: usize = 64;

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
}

impl Mailbox {
    /// Leaves a message; gives it back if `DIRECT_CAPACITY` already wait.
    pub fn post(&self, text: String) -> Result<(), String> {
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.len() >= DIRECT_CAPACITY {
                return Err(text);
            }
            queue.push_back(text);
        }
        self.posted.notify_one();
        Ok(())
    }

    /// Takes every waiting message, oldest first.
    pub fn take(&self) -> VecDeque<String> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
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
}

/// The registry of connected peers.
#[derive(Debug, Default)]
pub struct Hub {
    state: Mutex<HubState>,
}

#[derive(Debug, Default)]
struct HubState {
    /// Lower-cased nick to connection.
    by_nick: HashMap<String, ConnId>,
    members: HashMap<ConnId, Member>,
    /// Members per room, kept so a room's size costs no scan.
    room_sizes: HashMap<Arc<str>, usize>,
}

impl HubState {
    fn enter(&mut self, room: &Arc<str>) {
        *self.room_sizes.entry(room.clone()).or_default() += 1;
    }

    fn exit(&mut self, room: &Arc<str>) {
        if let Some(size) = self.room_sizes.get_mut(room) {
            *size -= 1;
            if *size == 0 {
                self.room_sizes.remove(room);
            }
        }
    }
}

impl Hub {
    /// Adds a connection under its initial name (its `IP:PORT`).
    pub fn register(&self, id: ConnId, member: Member) {
        let mut state = self.lock();
        state.by_nick.insert(member.nick.to_ascii_lowercase(), id);
        state.enter(&member.room);
        state.members.insert(id, member);
    }

    /// Removes a connection, freeing its nick.
    pub fn unregister(&self, id: ConnId) {
        let mut state = self.lock();
        if let Some(member) = state.members.remove(&id) {
            state.by_nick.remove(&member.nick.to_ascii_lowercase());
            state.exit(&member.room);
        }
    }

    /// Gives connection `id` the nick `new` (already validated); returns the old one.
    pub fn rename(&self, id: ConnId, new: &str) -> Result<Arc<str>, Rejection> {
        let mut state = self.lock();
        let key = new.to_ascii_lowercase();
        if state.by_nick.get(&key).is_some_and(|&owner| owner != id) {
            return Err(Rejection::new(
                ErrorCode::NickTaken,
                format!("nickname {new} is already in use"),
            ));
        }
        let member = state
            .members
            .get_mut(&id)
            .ok_or_else(|| Rejection::new(ErrorCode::Internal, "connection is not registered"))?;
        let old = std::mem::replace(&mut member.nick, new.into());
        state.by_nick.remove(&old.to_ascii_lowercase());
        state.by_nick.insert(key, id);
        Ok(old)
    }

    /// Records that connection `id` moved to `room`.
    pub fn set_room(&self, id: ConnId, room: Arc<str>) {
        let mut state = self.lock();
        let Some(member) = state.members.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut member.room, room.clone());
        state.exit(&old);
        state.enter(&room);
    }

    /// How many connections are in `room`.
    pub fn room_size(&self, room: &str) -> usize {
        self.lock().room_sizes.get(room).copied().unwrap_or(0)
    }

    /// The connection holding `nick` (any case), if any.
    pub fn find(&self, nick: &str) -> Option<Member> {
        let state = self.lock();
        let id = state.by_nick.get(&nick.to_ascii_lowercase())?;
        state.members.get(id).cloned()
    }

    /// The nicks in `room`, sorted.
    pub fn who(&self, room: &str) -> Vec<String> {
        let state = self.lock();
        let mut nicks: Vec<String> = state
            .members
            .values()
            .filter(|m| &*m.room == room)
            .map(|m| m.nick.to_string())
            .collect();
        nicks.sort_by_key(|n| n.to_ascii_lowercase());
        nicks
    }

    /// Every room with someone in it, by name.
    pub fn rooms(&self) -> Vec<RoomInfo> {
        let state = self.lock();
        let sorted: BTreeMap<&str, usize> = state
            .room_sizes
            .iter()
            .map(|(name, &size)| (&**name, size))
            .collect();
        sorted
            .into_iter()
            .map(|(name, members)| RoomInfo {
                name: name.to_owned(),
                members,
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
