//! Presence within one process.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Mailbox, Member, Presence, PrivateMessage};
use crate::protocol::{ErrorCode, Rejection, RoomInfo};
use crate::server::ConnId;
use crate::server::history::BoxFuture;
use crate::server::lock;

/// The registry of this process's connected peers.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Lower-cased nick to connection.
    by_nick: HashMap<String, ConnId>,
    members: HashMap<ConnId, Member>,
    /// Members per room, kept so a room's size costs no scan.
    room_sizes: HashMap<Arc<str>, usize>,
}

impl State {
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

impl MemoryPresence {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(super) fn rename_now(&self, id: ConnId, new: &str) -> Result<Arc<str>, Rejection> {
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

    /// The room's nicks, sorted without regard to case. Only the nicks are
    /// taken under the lock (shared, not copied); sorting them, without an
    /// allocation per comparison, happens after it is released.
    pub(super) fn who_now(&self, room: &str) -> Vec<String> {
        sorted(self.nicks_in(room))
    }

    /// The nicks in `room`, shared, not copied.
    pub(super) fn nicks_in(&self, room: &str) -> Vec<Arc<str>> {
        let state = self.lock();
        state
            .members
            .values()
            .filter(|m| &*m.room == room)
            .map(|m| m.nick.clone())
            .collect()
    }

    /// Connection `id`'s nick and room, if it is registered here.
    pub(super) fn place(&self, id: ConnId) -> Option<(Arc<str>, Arc<str>)> {
        let state = self.lock();
        let member = state.members.get(&id)?;
        Some((member.nick.clone(), member.room.clone()))
    }

    /// Connection `id`'s mailbox, if it is registered here.
    pub(super) fn mailbox(&self, id: ConnId) -> Option<Arc<Mailbox>> {
        self.lock().members.get(&id).map(|m| m.mailbox.clone())
    }

    /// Connection `id`'s resume secret.
    pub(super) fn secret(&self, id: ConnId) -> Option<u128> {
        self.lock().members.get(&id).map(|m| m.secret)
    }

    /// Every connection registered here.
    pub(super) fn ids(&self) -> Vec<ConnId> {
        self.lock().members.keys().copied().collect()
    }

    /// Removes connection `id` (another took its place) and returns its mailbox.
    pub(super) fn evict(&self, id: ConnId) -> Option<Arc<Mailbox>> {
        let mut state = self.lock();
        let member = state.members.remove(&id)?;
        if state.by_nick.get(&member.nick.to_ascii_lowercase()) == Some(&id) {
            state.by_nick.remove(&member.nick.to_ascii_lowercase());
        }
        state.exit(&member.room);
        Some(member.mailbox)
    }

    /// Rooms with members here and how many.
    pub(super) fn room_sizes(&self) -> Vec<(Arc<str>, usize)> {
        let state = self.lock();
        state
            .room_sizes
            .iter()
            .map(|(name, &size)| (name.clone(), size))
            .collect()
    }

    fn rooms_now(&self) -> Vec<RoomInfo> {
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
                last: None,
            })
            .collect()
    }

    pub(super) fn send_now(&self, to: &str, message: &PrivateMessage) -> Result<String, Rejection> {
        let target = {
            let state = self.lock();
            state
                .by_nick
                .get(&to.to_ascii_lowercase())
                .and_then(|id| state.members.get(id))
                .cloned()
        };
        let Some(target) = target else {
            return Err(Rejection::new(
                ErrorCode::NoSuchUser,
                format!("no such user: {to}"),
            ));
        };
        let frame = message.frame(&target.nick, None);
        if target.mailbox.post(frame.render(target.mode)).is_err() {
            return Err(Rejection::new(
                ErrorCode::Internal,
                format!("{} cannot receive messages right now", target.nick),
            ));
        }
        Ok(target.nick.to_string())
    }
}

/// Nicks sorted without regard to case (and without an allocation per
/// comparison), then copied out.
pub(super) fn sorted(mut nicks: Vec<Arc<str>>) -> Vec<String> {
    nicks.sort_unstable_by(|a, b| {
        a.bytes()
            .map(|c| c.to_ascii_lowercase())
            .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
            .then_with(|| a.cmp(b))
    });
    nicks.iter().map(|n| n.to_string()).collect()
}

impl Presence for MemoryPresence {
    fn register(&self, id: ConnId, member: Member) {
        let mut state = self.lock();
        state.by_nick.insert(member.nick.to_ascii_lowercase(), id);
        state.enter(&member.room);
        state.members.insert(id, member);
    }

    fn unregister(&self, id: ConnId) -> Option<(Arc<str>, Arc<str>)> {
        let mut state = self.lock();
        let member = state.members.remove(&id)?;
        state.by_nick.remove(&member.nick.to_ascii_lowercase());
        state.exit(&member.room);
        Some((member.nick, member.room))
    }

    fn set_room(&self, id: ConnId, room: Arc<str>) {
        let mut state = self.lock();
        let Some(member) = state.members.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut member.room, room.clone());
        state.exit(&old);
        state.enter(&room);
    }

    fn room_size(&self, room: &str) -> usize {
        self.lock().room_sizes.get(room).copied().unwrap_or(0)
    }

    fn hand_over(&self, nick: &str, secret: u128) -> Option<Arc<Mailbox>> {
        let mut state = self.lock();
        let holder = *state.by_nick.get(&nick.to_ascii_lowercase())?;
        if state.members.get(&holder)?.secret != secret {
            return None;
        }
        let member = state.members.remove(&holder)?;
        state.by_nick.remove(&member.nick.to_ascii_lowercase());
        state.exit(&member.room);
        Some(member.mailbox)
    }

    fn room_count(&self) -> usize {
        self.lock().room_sizes.len()
    }

    fn rename(&self, id: ConnId, new: &str) -> BoxFuture<'_, Result<Arc<str>, Rejection>> {
        Box::pin(std::future::ready(self.rename_now(id, new)))
    }

    fn who(&self, room: &str) -> BoxFuture<'_, Result<Vec<String>, Rejection>> {
        Box::pin(std::future::ready(Ok(self.who_now(room))))
    }

    fn rooms(&self) -> BoxFuture<'_, Result<Vec<RoomInfo>, Rejection>> {
        Box::pin(std::future::ready(Ok(self.rooms_now())))
    }

    fn send_private(
        &self,
        to: &str,
        message: PrivateMessage,
    ) -> BoxFuture<'_, Result<String, Rejection>> {
        Box::pin(std::future::ready(self.send_now(to, &message)))
    }
}
