//! What each request does: say, `/nick`, `/join`, `/msg`, `/who`, `/rooms`,
//! `/help`, one function each.
//!
//! A command gets the connection's chat state ([`Conn`]), the shared state,
//! and a list to put its answers for this connection in; it never sees the
//! socket. Events for the whole room (a message, `joined`, `renamed`) go out
//! through the backends and reach this connection through its room feed,
//! like everyone else's.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;
use tracing::debug;

use super::fanout::{Delivery, RoomFeed};
use super::handshake::Hello;
use super::history::{Appended, NewMessage, Page, Since};
use super::presence::{Mailbox, Member, PrivateMessage};
use super::{ConnId, Shared};
use crate::limit::TokenBucket;
use crate::protocol::{
    DEFAULT_ROOM, ErrorCode, GUEST_PREFIX, HELP, Mode, Rejection, Request, RoomInfo, ServerFrame,
    cap_list, clean_text, normalize_room, now_ms, validate_nick,
};

/// Answers for the connection that sent a command, in order.
pub(super) type Replies = Vec<ServerFrame>;

/// What storing a chat message came to: its id (its acknowledgement comes
/// through the room feed), the acknowledgement itself (a retry of a message
/// stored before: nothing comes through the feed), or the error to send back.
pub(super) type Stored = Result<Acknowledgement, ServerFrame>;

/// How a stored chat message is acknowledged to its sender.
#[derive(Debug)]
pub(super) enum Acknowledgement {
    /// Stored under this id: its own copy, with its cid, comes through the feed.
    ThroughFeed(u64),
    /// A retry of a message stored before: this frame (the original, with
    /// the cid) answers it, as nothing comes through the feed.
    Now(ServerFrame),
}

/// A chat message being stored.
pub(super) type Storing = Pin<Box<dyn Future<Output = Stored> + Send>>;

/// Stored messages whose acknowledgement a connection may wait for at once;
/// past that the oldest is no longer waited for (it still arrives if it
/// comes through the feed).
const MAX_AWAITING: usize = 1024;

/// The most messages replayed in one go; a longer replay goes out a page at
/// a time as the peer reads it.
const PAGE: usize = 512;

/// `rate_limited` refusals in a row after which a connection is closed.
pub(super) const FLOODING_AFTER: u32 = 100;

/// What a replayed message's frame adds to its text and sender, at most
/// (JSON field names, id, room, timestamp), for a replay's byte budget.
const REPLAY_FRAME_OVERHEAD: usize = 128;

/// Bytes of replayed messages queued at once, at most about: a quarter of
/// `--max-lag-bytes` (more follows as the peer reads).
fn page_budget(shared: &Shared) -> usize {
    shared.config.max_lag_bytes / 4
}

/// What `message` adds to a page, as a replay frame (see [`page_budget`]).
fn replayed_bytes(message: &crate::server::history::Stored) -> usize {
    message.text.len() + message.from.len() + REPLAY_FRAME_OVERHEAD
}

/// One connection's place in the chat: who it is, where it is, what it follows.
pub(super) struct Conn {
    pub id: ConnId,
    pub peer: SocketAddr,
    pub mode: Mode,
    /// Its nick, or `IP:PORT` until it chose one.
    pub nick: Arc<str>,
    /// The room it is in.
    pub room: Arc<str>,
    /// The room's live events.
    pub feed: RoomFeed,
    /// A replay of stored messages still to send: the last id sent.
    pub replay: Option<u64>,
    /// An `older` answer still to send, a page at a time as the peer reads.
    pub older: Option<OlderAnswer>,
    /// Flood control (`None` with `--rate 0`).
    bucket: Option<TokenBucket>,
    /// Requests refused by flood control since the last one let through.
    refused_in_a_row: u32,
    /// Present while the connection is registered; dropping it leaves.
    seat: Option<Seat>,
    /// Its stored messages whose acknowledgement has not arrived yet.
    pub acks: Acks,
}

/// A JSON connection's stored messages whose acknowledgement (its own copy,
/// through the room feed) has not reached it yet.
///
/// In memory and SQLite a message is in the feed by the time its store
/// returns; through Redis it arrives a little later, by pub/sub. Before the
/// connection leaves its room or closes, it waits for these (bounded), and
/// reads from history whichever did not come, so no acknowledgement of a
/// stored message is ever lost.
#[derive(Debug, Default)]
pub(super) struct Acks {
    /// Ids still to be acknowledged, oldest first.
    awaiting: std::collections::VecDeque<u64>,
    /// Own messages up to this id have been acknowledged.
    through: u64,
}

impl Acks {
    /// Message `id` was stored.
    pub fn stored(&mut self, id: u64) {
        if id <= self.through {
            return;
        }
        if self.awaiting.len() >= MAX_AWAITING {
            self.awaiting.pop_front();
        }
        self.awaiting.push_back(id);
    }

    /// Own message `id` came through the feed: whether its acknowledgement
    /// is still to be sent (not when it was already read back).
    pub fn arrived(&mut self, id: u64) -> bool {
        if id <= self.through {
            return false;
        }
        self.through = id;
        while self.awaiting.front().is_some_and(|&waiting| waiting <= id) {
            self.awaiting.pop_front();
        }
        true
    }

    /// Forgets what was acknowledged and awaited: the room's ids start
    /// again (a new history, whose loss took the awaited messages with it,
    /// or another room).
    pub fn restart(&mut self) {
        *self = Self::default();
    }

    /// Whether a stored message's acknowledgement has not arrived yet.
    pub fn pending(&self) -> bool {
        !self.awaiting.is_empty()
    }
}

/// An `older` answer under way: the messages with ids in `(after, before)`
/// still to send, at most `left` of them, and how many were sent.
#[derive(Debug, Clone, Copy)]
pub struct OlderAnswer {
    after: u64,
    before: u64,
    left: usize,
    sent: usize,
}

/// A registered connection. Dropping it frees the nick and tells the room
/// the connection left, however the session ends (a panic included).
struct Seat {
    id: ConnId,
    shared: Arc<Shared>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some((nick, room)) = self.shared.presence.unregister(self.id) {
            tell_left(&self.shared, self.id, &nick, &room);
        }
    }
}

/// Tells `room` that `nick` left it, unless the room is over
/// `--announce-limit` or `--notice-rate`.
fn tell_left(shared: &Shared, id: ConnId, nick: &str, room: &str) {
    if !quiet(shared, room) {
        let left = ServerFrame::Left {
            room: room.to_owned(),
            nick: nick.to_owned(),
        };
        notify(shared, id, room, left);
    }
}

/// Publishes a notice (joined, left, renamed) caused by connection `id` to `room`.
fn notify(shared: &Shared, id: ConnId, room: &str, frame: ServerFrame) {
    shared
        .fanout
        .publish(room, Arc::new(Delivery::new(id, frame, None)));
}

/// Whether a notice to `room` goes unannounced: the room is over
/// `--announce-limit`, or has announced as many as `--notice-rate` allows
/// for now (then the notice is counted as dropped).
fn quiet(shared: &Shared, room: &str) -> bool {
    if shared.presence.room_size(room) > shared.config.announce_limit {
        return true;
    }
    let spent = shared
        .notices
        .as_ref()
        .is_some_and(|budget| !budget.try_take(room));
    if spent {
        shared.metrics.notices_dropped_total.inc();
    }
    spent
}

impl Conn {
    /// Registers a new connection: in the room and under the nick its
    /// handshake asked for (taking the nick over from the same client's
    /// previous connection with `resume`), else the default room and its
    /// address. Then the welcome, the room's recent history, any refusal
    /// of what was asked, and one `joined` notice.
    pub async fn start(
        id: ConnId,
        peer: SocketAddr,
        mode: Mode,
        hello: Hello,
        shared: &Arc<Shared>,
        mailbox: Arc<Mailbox>,
        out: &mut Replies,
    ) -> Self {
        let mut refusals = Vec::new();
        // What a handshake asks for costs a request from its address's
        // budget, as the commands it stands for would: reconnecting with
        // `?nick=` in a loop cannot make notices faster than commands could.
        let asks = hello.nick.is_some() || hello.room.is_some();
        let hello = if asks && !shared.admission.spend(peer.ip()) {
            refusals.push(Rejection::new(
                ErrorCode::RateLimited,
                "rate limited: too many requests from your address; the nick and room \
                 asked for in the handshake were not applied",
            ));
            Hello {
                resume: hello.resume,
                ..Hello::default()
            }
        } else {
            hello
        };
        let room: Arc<str> = match hello.room.as_deref().map(|room| open_room(room, shared)) {
            Some(Ok(room)) => room.into(),
            Some(Err(rejection)) => {
                refusals.push(rejection);
                DEFAULT_ROOM.into()
            }
            None => DEFAULT_ROOM.into(),
        };
        let secret = resume_secret();
        let mut nick: Arc<str> = if shared.guest_names {
            guest_name().into()
        } else {
            peer.to_string().into()
        };
        shared.presence.register(
            id,
            Member {
                nick: nick.clone(),
                room: room.clone(),
                mode,
                mailbox,
                secret,
            },
        );
        if let Some(wanted) = &hello.nick {
            match claim(id, wanted, hello.resume.as_deref(), shared).await {
                Ok(()) => nick = wanted.as_str().into(),
                Err(rejection) => refusals.push(rejection),
            }
        }
        let mut conn = Self {
            id,
            peer,
            mode,
            nick,
            feed: shared.fanout.subscribe(&room).await,
            room,
            replay: None,
            older: None,
            bucket: TokenBucket::new(shared.config.rate, shared.config.rate_burst),
            refused_in_a_row: 0,
            seat: Some(Seat {
                id,
                shared: shared.clone(),
            }),
            acks: Acks::default(),
        };
        let page = read(
            shared,
            &conn.room,
            Since::Recent,
            shared.config.history_on_join,
        )
        .await;
        let config = &shared.config;
        out.push(ServerFrame::Welcome {
            text: crate::protocol::WELCOME.into(),
            nick: conn.nick.to_string(),
            room: conn.room.to_string(),
            epoch: page.as_ref().map_or(0, |p| p.epoch),
            limits: Some(crate::protocol::Allowance {
                rate: config.rate,
                rate_burst: config.rate_burst,
                max_message_bytes: config.max_message_bytes,
            }),
            resume: (mode == Mode::Json).then(|| format!("{secret:032x}")),
        });
        match page {
            Ok(page) => conn.replay_page(page, None, shared, out),
            Err(rejection) => out.push(ServerFrame::error(rejection, None)),
        }
        out.extend(refusals.into_iter().map(|r| ServerFrame::error(r, None)));
        conn.announce(shared, joined(&conn), out);
        conn
    }

    /// Leaves the room and frees the nick now rather than when dropped;
    /// the room's channel keeps nothing more for this connection.
    pub fn leave(&mut self) {
        self.seat = None;
        self.feed = RoomFeed::none();
    }

    /// Tells the room about this connection (it gets its own copy through
    /// its feed); in a room over `--announce-limit` or `--notice-rate` only
    /// this connection is told.
    fn announce(&self, shared: &Shared, frame: ServerFrame, out: &mut Replies) {
        if quiet(shared, &self.room) {
            return out.push(frame);
        }
        notify(shared, self.id, &self.room, frame);
    }

    /// Queues a page of stored messages as history replay. When the page
    /// is full, or more than a quarter of `--max-lag-bytes` of it has been
    /// queued, more may follow: the session asks for it once this much has
    /// been written, so a replay never waits whole in memory.
    fn replay_page(
        &mut self,
        page: Page,
        full_at: Option<usize>,
        shared: &Shared,
        out: &mut Replies,
    ) {
        let budget = page_budget(shared);
        let mut bytes = 0;
        let mut last = None;
        let mut cut = false;
        for message in &page.messages {
            if bytes >= budget && last.is_some() {
                cut = true;
                break;
            }
            bytes += replayed_bytes(message);
            out.push(message.frame(&self.room, self.id));
            last = Some(message.id);
        }
        self.replay = match (full_at, last) {
            (_, Some(last)) if cut => Some(last),
            (Some(limit), Some(last)) if page.messages.len() >= limit => Some(last),
            _ => None,
        };
        if let Some(last) = last {
            self.feed.seen_through(last);
        }
    }

    /// Sends what of `messages` (the next ones of an `older` answer, oldest
    /// first) fits in a page's bytes; the rest, if any, is read again and
    /// sent once the peer has read this (see [`Conn::continue_paging`]),
    /// then the closing `older` frame. So an answer never waits whole in
    /// memory for a peer that does not read.
    fn older_page(
        &mut self,
        messages: &[crate::server::history::Stored],
        mut answer: OlderAnswer,
        shared: &Shared,
        out: &mut Replies,
    ) {
        let budget = page_budget(shared);
        let mut bytes = 0;
        let mut cut = false;
        for message in messages {
            if message.id >= answer.before || answer.left == 0 {
                answer.left = 0;
                break;
            }
            if bytes >= budget && answer.sent > 0 {
                cut = true;
                break;
            }
            bytes += replayed_bytes(message);
            out.push(message.frame(&self.room, self.id));
            answer.after = message.id;
            answer.left -= 1;
            answer.sent += 1;
        }
        let more = cut && answer.left > 0;
        self.older = more.then_some(answer);
        if !more {
            out.push(ServerFrame::Older {
                room: self.room.to_string(),
                before: answer.before,
                count: answer.sent,
            });
        }
    }

    /// Whether a replay or an `older` answer is still going out: requests
    /// and live events wait until it has.
    pub fn paging(&self) -> bool {
        self.replay.is_some() || self.older.is_some()
    }

    /// Sends the next page of what is going out: an `older` answer, else
    /// a replay.
    pub async fn continue_paging(&mut self, shared: &Shared, out: &mut Replies) {
        if self.older.is_some() {
            self.continue_older(shared, out).await;
        } else {
            self.continue_replay(shared, out).await;
        }
    }

    /// Sends the next page of an `older` answer in progress.
    async fn continue_older(&mut self, shared: &Shared, out: &mut Replies) {
        let Some(answer) = self.older.take() else {
            return;
        };
        let limit = answer.left.min(PAGE);
        match read(shared, &self.room, Since::After(answer.after), limit).await {
            Ok(page) if page.messages.is_empty() => {
                let done = OlderAnswer { left: 0, ..answer };
                self.older_page(&[], done, shared, out);
            }
            Ok(page) => self.older_page(&page.messages, answer, shared, out),
            Err(rejection) => out.push(ServerFrame::error(rejection, None)),
        }
    }

    /// Sends the next page of a replay in progress.
    async fn continue_replay(&mut self, shared: &Shared, out: &mut Replies) {
        let Some(after) = self.replay else { return };
        match read(shared, &self.room, Since::After(after), PAGE).await {
            Ok(page) => self.replay_page(page, Some(PAGE), shared, out),
            Err(rejection) => {
                self.replay = None;
                out.push(ServerFrame::error(rejection, None));
            }
        }
    }

    /// Carries out one request.
    pub async fn apply(&mut self, request: Request, shared: &Shared, out: &mut Replies) {
        match request {
            Request::Say { text, cid } => {
                if let Some(storing) = self.say(text, cid, shared, out) {
                    let stored = storing.await;
                    self.on_stored(stored, out);
                }
            }
            Request::Nick { nick } => self.rename(&nick, shared, out).await,
            Request::Join { room, after, epoch } => {
                self.join(&room, after, epoch, shared, out).await;
            }
            Request::Private { to, text, cid } => self.private(&to, text, cid, shared, out).await,
            Request::Who => match shared.presence.who(&self.room).await {
                Ok(mut nicks) => out.push(ServerFrame::Members {
                    room: self.room.to_string(),
                    more: cap_list(&mut nicks),
                    nicks,
                }),
                Err(rejection) => out.push(ServerFrame::error(rejection, None)),
            },
            Request::Rooms => match shared.presence.rooms().await {
                Ok(mut rooms) => out.push(ServerFrame::Rooms {
                    more: cap_list(&mut rooms),
                    rooms: rooms
                        .into_iter()
                        .map(|info| RoomInfo {
                            last: shared.fanout.last_id(&info.name).or(info.last),
                            ..info
                        })
                        .collect(),
                }),
                Err(rejection) => out.push(ServerFrame::error(rejection, None)),
            },
            Request::Older { before, limit } => {
                match read(shared, &self.room, Since::Before(before), limit).await {
                    Ok(page) => {
                        let answer = OlderAnswer {
                            after: 0,
                            before,
                            left: limit,
                            sent: 0,
                        };
                        self.older_page(&page.messages, answer, shared, out);
                    }
                    Err(rejection) => out.push(ServerFrame::error(rejection, None)),
                }
            }
            Request::Help => out.extend(HELP.iter().map(|line| ServerFrame::Notice {
                text: (*line).to_owned(),
            })),
        }
    }

    /// A message finished storing: its acknowledgement is awaited (JSON
    /// mode), or its error answered.
    pub fn on_stored(&mut self, stored: Stored, out: &mut Replies) {
        match stored {
            Ok(Acknowledgement::ThroughFeed(id)) if self.mode == Mode::Json => {
                self.acks.stored(id);
            }
            Ok(Acknowledgement::Now(frame)) if self.mode == Mode::Json => out.push(frame),
            Ok(_) => {}
            Err(reply) => out.push(reply),
        }
    }

    /// Reads back from history the stored messages whose acknowledgement
    /// did not come through the feed, and answers each with its own copy.
    pub async fn recover_acks(&mut self, shared: &Shared, out: &mut Replies) {
        let awaiting = std::mem::take(&mut self.acks.awaiting);
        let (Some(&first), Some(&last)) = (awaiting.front(), awaiting.back()) else {
            return;
        };
        self.acks.through = self.acks.through.max(last);
        let span = usize::try_from(last - first + 1).unwrap_or(PAGE).min(PAGE);
        if let Ok(page) = read(shared, &self.room, Since::After(first - 1), span).await {
            let acked = page
                .messages
                .iter()
                .filter(|m| awaiting.contains(&m.id) && m.origin == Some(self.id));
            out.extend(acked.map(|m| m.frame(&self.room, self.id)));
        }
    }

    /// A chat message: stored, then published by the history (which is how
    /// the sender gets its acknowledgement: its own copy, with its cid).
    ///
    /// Returns the store still under way, if it did not finish at once (a
    /// disk or network backend): the session goes on meanwhile, and the
    /// future yields its id, or the error to send back if it was not stored.
    pub fn say(
        &mut self,
        mut text: String,
        cid: Option<String>,
        shared: &Shared,
        out: &mut Replies,
    ) -> Option<Storing> {
        if let Err(rejection) = Self::check_text(&mut text, shared) {
            out.push(ServerFrame::error(rejection, cid));
            return None;
        }
        debug!(peer = %self.peer, room = %self.room, "{}: {text}", self.nick);
        let message = NewMessage {
            origin: self.id,
            room: self.room.clone(),
            from: self.nick.clone(),
            text,
            cid: cid.clone(),
        };
        let history = shared.history.clone();
        let room = self.room.clone();
        let stored = shared.metrics.messages_total.clone();
        let mut storing: Storing = Box::pin(async move {
            match history.append(message).await {
                Ok(Appended::New(stamp)) => {
                    stored.inc();
                    Ok(Acknowledgement::ThroughFeed(stamp.id))
                }
                // The sender's acknowledgement, as the original's would have been.
                Ok(Appended::Repeat(original)) => Ok(Acknowledgement::Now(ServerFrame::Message {
                    id: original.id,
                    room: room.to_string(),
                    from: original.from,
                    text: original.text,
                    ts: original.ts,
                    cid: original.cid,
                    history: false,
                })),
                Err(err) => {
                    let rejection = Rejection::new(
                        ErrorCode::Unavailable,
                        format!("{err}; the message was not delivered"),
                    );
                    Err(ServerFrame::error(rejection, cid))
                }
            }
        });
        match (&mut storing).now_or_never() {
            Some(outcome) => {
                self.on_stored(outcome, out);
                None
            }
            None => Some(storing),
        }
    }

    /// Readies a message's text and checks it against the limits (flood
    /// control is [`Self::spend`]'s, for every request alike).
    fn check_text(text: &mut String, shared: &Shared) -> Result<(), Rejection> {
        clean_text(text)?;
        let config = &shared.config;
        let max = config.max_message_bytes;
        if text.len() > max {
            return Err(Rejection::new(
                ErrorCode::TooLong,
                format!("message too long: {} bytes, the limit is {max}", text.len()),
            ));
        }
        if text.trim().is_empty() {
            return Err(Rejection::new(ErrorCode::Empty, "empty message"));
        }
        Ok(())
    }

    /// Flood control: every request (message or command) takes a token
    /// from this connection's bucket and from its address's budget.
    ///
    /// # Errors
    /// `rate_limited` when either is spent; the request is then dropped.
    pub fn spend(&mut self, shared: &Shared) -> Result<(), Rejection> {
        let config = &shared.config;
        let refused = if self.bucket.as_mut().is_some_and(|b| !b.try_take()) {
            format!(
                "rate limited: at most {} requests per 10 s (bursts of {}); this one was not carried out",
                config.rate, config.rate_burst
            )
        } else if !shared.admission.spend(self.peer.ip()) {
            format!(
                "rate limited: your address may send at most {} requests per 10 s over all its connections; this one was not carried out",
                config.budget_per_ip().0
            )
        } else {
            self.refused_in_a_row = 0;
            return Ok(());
        };
        self.refused_in_a_row += 1;
        shared.metrics.rate_limited_total.inc();
        Err(Rejection::new(ErrorCode::RateLimited, refused))
    }

    /// Whether the peer kept sending through [`FLOODING_AFTER`] refusals
    /// in a row: it is then closed (1008).
    pub fn flooding(&self) -> bool {
        self.refused_in_a_row >= FLOODING_AFTER
    }

    async fn rename(&mut self, nick: &str, shared: &Shared, out: &mut Replies) {
        if let Err(rejection) = validate_nick(nick) {
            return out.push(ServerFrame::error(rejection, None));
        }
        if *self.nick == *nick {
            return out.push(ServerFrame::Notice {
                text: format!("you are already {nick}"),
            });
        }
        match shared.presence.rename(self.id, nick).await {
            Ok(old) => {
                self.nick = nick.into();
                let renamed = ServerFrame::Renamed {
                    old: old.to_string(),
                    new: nick.to_owned(),
                };
                self.announce(shared, renamed, out);
            }
            Err(rejection) => out.push(ServerFrame::error(rejection, None)),
        }
    }

    /// Moves to `room` (or re-enters it), replaying what the client missed.
    ///
    /// The new feed is opened before history is read, and the feed then
    /// skips what the replay covered: whatever is stored while the read runs
    /// arrives through the feed, so the seam has no gap and no duplicate.
    async fn join(
        &mut self,
        room: &str,
        after: Option<u64>,
        epoch: Option<u64>,
        shared: &Shared,
        out: &mut Replies,
    ) {
        let name: Arc<str> = match normalize_room(room) {
            Ok(name) => name.into(),
            Err(rejection) => return out.push(ServerFrame::error(rejection, None)),
        };
        let same = self.room == name;
        if same && after.is_none() {
            return out.push(ServerFrame::Notice {
                text: format!("you are already in {name}"),
            });
        }
        if !same && let Err(rejection) = room_for(&name, shared) {
            return out.push(ServerFrame::error(rejection, None));
        }
        let feed = shared.fanout.subscribe(&name).await;
        let recent = Since::Recent;
        let on_join = shared.config.history_on_join;
        let (since, limit) = match after {
            Some(after) => (Since::After(after), PAGE),
            None => (recent, on_join),
        };
        let mut page = match read(shared, &name, since, limit).await {
            Ok(page) => page,
            Err(rejection) => return out.push(ServerFrame::error(rejection, None)),
        };
        let mut gap = None;
        // A replay after an id may go on past its first page.
        let mut full_at = after.map(|_| PAGE);
        if let Some(after) = after {
            if epoch.is_some_and(|epoch| epoch != page.epoch) {
                // Ids from another history mean nothing here: start afresh.
                gap = Some(ServerFrame::Gap {
                    room: name.to_string(),
                    epoch: page.epoch,
                    after: None,
                    first: None,
                });
                page = match read(shared, &name, recent, on_join).await {
                    Ok(page) => page,
                    Err(rejection) => return out.push(ServerFrame::error(rejection, None)),
                };
                full_at = None;
            } else if let Some(first) = page
                .messages
                .first()
                .map(|m| m.id)
                // Nothing kept after `after`, though newer ids were given
                // out: everything up to the newest is gone.
                .or_else(|| page.newest.filter(|&n| n > after).map(|n| n + 1))
                && first > after + 1
            {
                gap = Some(ServerFrame::Gap {
                    room: name.to_string(),
                    epoch: page.epoch,
                    after: Some(after),
                    first: Some(first),
                });
            }
        }
        self.feed = feed;
        if let (Some(after), None) = (after, &gap) {
            self.feed.seen_through(after);
        }
        if !same {
            shared.presence.set_room(self.id, name.clone());
            tell_left(shared, self.id, &self.nick, &self.room);
            self.room = name;
            // Ids of another room: nothing of this one is acknowledged yet.
            self.acks.restart();
        }
        out.extend(gap);
        self.replay_page(page, full_at, shared, out);
        if !same {
            self.announce(shared, joined(self), out);
        }
    }

    async fn private(
        &mut self,
        to: &str,
        mut text: String,
        cid: Option<String>,
        shared: &Shared,
        out: &mut Replies,
    ) {
        if let Err(rejection) = Self::check_text(&mut text, shared) {
            return out.push(ServerFrame::error(rejection, cid));
        }
        let message = PrivateMessage {
            from: self.nick.to_string(),
            text,
            ts: now_ms(),
        };
        if to.eq_ignore_ascii_case(&self.nick) {
            // A note to oneself arrives once: as its own acknowledgement.
            let cid = if self.mode == Mode::Json { cid } else { None };
            return out.push(message.frame(&self.nick, cid));
        }
        match shared.presence.send_private(to, message.clone()).await {
            // The sender's copy is its acknowledgement (JSON mode only).
            Ok(to) if self.mode == Mode::Json => out.push(message.frame(&to, cid)),
            Ok(_) => {}
            Err(rejection) => out.push(ServerFrame::error(rejection, cid)),
        }
    }
}

/// A name for a connection without a nick off loopback, where its address
/// is nobody else's business: `guest-` and four digits. Nobody can choose
/// such a nick (see [`validate_nick`]), so it impersonates no one.
fn guest_name() -> String {
    format!("{GUEST_PREFIX}{}", fastrand::u16(1000..10000))
}

/// A fresh, unguessable resume secret (0, which no client can send back
/// as a match, if the system has no randomness to give).
fn resume_secret() -> u128 {
    let mut bytes = [0u8; 16];
    match getrandom::getrandom(&mut bytes) {
        Ok(()) => u128::from_le_bytes(bytes),
        Err(_) => 0,
    }
}

/// A room a connection may enter: its name checked, and room for it
/// under `--max-rooms`.
fn open_room(room: &str, shared: &Shared) -> Result<String, Rejection> {
    let name = normalize_room(room)?;
    room_for(&name, shared)?;
    Ok(name)
}

/// Whether room `name` may be entered under `--max-rooms`: it holds memory
/// already (it has members, or history kept in memory), or the rooms that
/// do are fewer than the cap.
///
/// # Errors
/// `too_many_rooms` when it would be one room too many.
fn room_for(name: &str, shared: &Shared) -> Result<(), Rejection> {
    let presence = &shared.presence;
    if presence.room_size(name) > 0 || shared.history.keeps(name) {
        return Ok(());
    }
    let max_rooms = shared.config.max_rooms;
    let mut in_use = presence.room_count();
    if in_use < max_rooms {
        in_use += shared
            .history
            .kept_unoccupied(&|room| presence.room_size(room) > 0);
    }
    if in_use < max_rooms {
        return Ok(());
    }
    Err(Rejection::new(
        ErrorCode::TooManyRooms,
        format!("cannot open room {name}: the server has its limit of {max_rooms} rooms in use"),
    ))
}

/// Takes nick `wanted` for connection `id` as its handshake asked: from the
/// same client's previous connection if `resume` is that connection's
/// secret (which is then closed), else only if it is free.
async fn claim(
    id: ConnId,
    wanted: &str,
    resume: Option<&str>,
    shared: &Shared,
) -> Result<(), Rejection> {
    validate_nick(wanted)?;
    let secret = resume
        .and_then(|s| u128::from_str_radix(s, 16).ok())
        .filter(|&s| s != 0);
    shared
        .presence
        .take_nick(id, wanted, secret)
        .await
        .map(drop)
}

/// The `joined` notice for a connection's current room.
fn joined(conn: &Conn) -> ServerFrame {
    ServerFrame::Joined {
        room: conn.room.to_string(),
        nick: conn.nick.to_string(),
    }
}

/// Reads history, turning a failure into the `unavailable` answer.
async fn read(shared: &Shared, room: &str, since: Since, limit: usize) -> Result<Page, Rejection> {
    shared
        .history
        .read(room, since, limit)
        .await
        .map_err(|err| Rejection::new(ErrorCode::Unavailable, err.to_string()))
}
