//! One task per connection: the handshake, then one `select!` loop that reads
//! requests, forwards room events and private messages, pings, and closes.
//!
//! Incoming frames are parsed by a [`FrameReader`]; outgoing frames are queued
//! on the connection's [`Wire`] without flushing, and the loop drains
//! everything the room channel already holds and then writes it all with one
//! (vectored) write. The socket keeps being read while a flush is pending, so
//! pings and close frames are still answered, and a peer that stops reading
//! only ever delays itself: once more than `--max-lag` frames wait for it, it
//! is closed with 1013.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::ReadBuf;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{OwnedSemaphorePermit, broadcast};
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Shared;
use super::bus::{ConnId, Delivery, Replay, Room};
use super::frames::{FrameReader, Incoming, Violation};
use super::handshake::{self, Decision};
use super::hub::{Mailbox, Member};
use super::wire::{Transport, Wire};
use crate::limit::TokenBucket;
use crate::protocol::{
    Allowance, DEFAULT_ROOM, ErrorCode, HELP, Mode, Rejection, Request, ServerFrame, WELCOME,
    normalize_room, now_ms, parse_json, parse_plain, validate_nick,
};

/// How long a closing connection waits for its close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long a connection closed for being too slow gets to read what is
/// already queued for it plus the 1013 close frame behind it.
const TOO_SLOW_GRACE: Duration = Duration::from_secs(10);
/// Most room events taken in one go before they are written out.
const DRAIN_BATCH: usize = 1024;
/// The most read from the socket at once (into a buffer on the stack).
const READ_CHUNK: usize = 8192;
/// Close codes the server sends.
const GOING_AWAY: u16 = 1001;
const TRY_AGAIN_LATER: u16 = 1013;

/// Serves one accepted TCP connection from handshake to close.
///
/// `slot` is this connection's share of `--max-connections`; without one the
/// handshake is answered with 503.
pub(super) async fn serve<S: Transport>(
    mut stream: S,
    peer: SocketAddr,
    slot: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let within = shared.config.handshake_within();
    let head = tokio::select! {
        () = shutdown.cancelled() => return,
        head = timeout(within, handshake::read_head(&mut stream)) => head,
    };
    let head = match head {
        Ok(Ok(head)) => head,
        Ok(Err(err)) => {
            debug!("{peer}: handshake failed: {err}");
            return;
        }
        Err(_) => {
            debug!("{peer}: handshake timed out");
            return;
        }
    };
    let Some(slot) = slot else {
        info!("Refused {peer}: connection limit reached (HTTP 503)");
        let response = handshake::text_response(503, "Service Unavailable", "", "server is full\n");
        let _ = timeout(within, handshake::send(&mut stream, &response)).await;
        return;
    };
    let decision = handshake::decide(&head, &shared.policy);
    // The request head is not needed past here; the session outlives it.
    drop(head);
    let mode = match decision {
        Decision::Respond { status, response } => {
            debug!("{peer}: answered HTTP {status}");
            let _ = timeout(within, handshake::send(&mut stream, &response)).await;
            return;
        }
        Decision::Upgrade { mode, response } => {
            match timeout(within, handshake::send(&mut stream, &response)).await {
                Ok(Ok(())) => mode,
                _ => return,
            }
        }
    };

    info!("New connection from {peer}");
    let mut session = Session::start(Wire::new(stream), peer, mode, shared);
    let ended = session.run(&shutdown).await;
    session.leave();
    drop(slot);
    match ended {
        Ended::Clean => info!("Client {peer} disconnected"),
        Ended::Because(reason) => info!("Client {peer} disconnected: {reason}"),
    }
}

/// How a session ended.
enum Ended {
    /// The peer closed the WebSocket properly.
    Clean,
    /// Anything else, in words for the log.
    Because(String),
}

/// What woke the session loop.
enum Wake {
    Shutdown,
    Socket(SocketEvent),
    Room(Result<Arc<Delivery>, RecvError>),
    Mail,
    Tick,
}

/// Progress on the socket.
enum SocketEvent {
    /// A frame or message from the peer.
    Incoming(Incoming),
    /// The peer closed the TCP connection.
    Eof,
    /// The peer broke the protocol.
    Violation(Violation),
    Failed(io::Error),
    /// Everything queued has been written.
    Flushed,
}

/// Polls the socket for whichever comes first: a pending flush finishing or
/// something from the peer.
fn poll_socket<S: Transport>(
    wire: &mut Wire<S>,
    reader: &mut FrameReader,
    flushing: bool,
    cx: &mut Context<'_>,
) -> Poll<SocketEvent> {
    if flushing {
        match wire.poll_flush(cx) {
            Poll::Ready(Ok(())) => return Poll::Ready(SocketEvent::Flushed),
            Poll::Ready(Err(err)) => return Poll::Ready(SocketEvent::Failed(err)),
            Poll::Pending => {}
        }
    }
    loop {
        if let Some(item) = reader.take() {
            return Poll::Ready(SocketEvent::Incoming(item));
        }
        // Uninitialised: this runs on every wake-up, and zeroing 8 KiB each
        // time would cost more than the read.
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        if let Err(err) = ready!(wire.poll_read(cx, &mut buf)) {
            return Poll::Ready(SocketEvent::Failed(err));
        }
        if buf.filled().is_empty() {
            return Poll::Ready(SocketEvent::Eof);
        }
        if let Err(violation) = reader.feed(buf.filled()) {
            return Poll::Ready(SocketEvent::Violation(violation));
        }
    }
}

/// One connected peer.
struct Session<S> {
    id: ConnId,
    peer: SocketAddr,
    mode: Mode,
    shared: Arc<Shared>,
    wire: Wire<S>,
    reader: FrameReader,
    nick: Arc<str>,
    room: Arc<Room>,
    live: broadcast::Receiver<Arc<Delivery>>,
    mailbox: Arc<Mailbox>,
    last_heard: Instant,
    /// Set once the peer has been removed from the hub and its room.
    left: bool,
    /// Flood control (`None` with `--rate 0`).
    bucket: Option<TokenBucket>,
    /// Events lost to lag outside the loop's own receive (the receiver
    /// reports a lag only once), for the loop to act on.
    lagged: Option<u64>,
}

impl<S: Transport> Session<S> {
    /// Registers the peer, greets it, and puts it in the default room.
    fn start(wire: Wire<S>, peer: SocketAddr, mode: Mode, shared: Arc<Shared>) -> Self {
        let id = shared.next_conn_id();
        let nick: Arc<str> = peer.to_string().into();
        let room = shared.bus.room(DEFAULT_ROOM);
        let mailbox = Arc::new(Mailbox::default());
        shared.hub.register(
            id,
            Member {
                nick: nick.clone(),
                room: room.name().clone(),
                mode,
                mailbox: mailbox.clone(),
            },
        );
        let sub = room.subscribe(Replay::Recent(shared.config.history_on_join));
        let bucket = TokenBucket::new(shared.config.rate, shared.config.rate_burst);
        let limits = Allowance {
            rate: shared.config.rate,
            rate_burst: shared.config.rate_burst,
            max_message_bytes: shared.config.max_message_bytes,
        };
        let mut session = Self {
            id,
            peer,
            mode,
            reader: FrameReader::new(shared.config.max_frame_bytes),
            shared,
            wire,
            nick,
            room,
            live: sub.live,
            mailbox,
            last_heard: Instant::now(),
            left: false,
            bucket,
            lagged: None,
        };
        session.reply(ServerFrame::Welcome {
            text: WELCOME.into(),
            nick: session.nick.to_string(),
            room: session.room.name().to_string(),
            epoch: session.shared.epoch,
            limits: Some(limits),
        });
        session.replay(&sub.backlog);
        session.announce(ServerFrame::Joined {
            room: session.room.name().to_string(),
            nick: session.nick.to_string(),
        });
        session
    }

    /// Tells this connection's room about it and queues this connection's
    /// own copy right away, so it precedes any later reply. In a room over
    /// `--announce-limit` only this connection is told.
    fn announce(&mut self, frame: ServerFrame) {
        if self.quiet(&self.room) {
            return self.reply(frame);
        }
        self.room.publish_notice(self.id, frame);
        if let Err(skipped) = self.drain_room() {
            self.lagged = Some(skipped);
        }
    }

    /// Tells this connection's current room that it left (unless the room is quiet).
    fn tell_left(&self) {
        if !self.quiet(&self.room) {
            let left = ServerFrame::Left {
                room: self.room.name().to_string(),
                nick: self.nick.to_string(),
            };
            self.room.publish_notice(self.id, left);
        }
    }

    /// Whether `room` is over `--announce-limit`, so arrivals and departures
    /// are no longer announced to everyone in it.
    fn quiet(&self, room: &Room) -> bool {
        self.shared.hub.room_size(room.name()) > self.shared.config.announce_limit
    }

    /// The session loop; returns how it ended (after closing the socket).
    async fn run(&mut self, shutdown: &CancellationToken) -> Ended {
        let every = self.shared.config.ping_every();
        let mut ping = tokio::time::interval_at(Instant::now() + every, every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Made once: a fresh one per turn would join and leave the token's
        // waiter list every time.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mailbox = self.mailbox.clone();
        let mail = mailbox.posted.notified();
        tokio::pin!(mail);
        loop {
            let wake = {
                let flushing = self.wire.has_pending();
                let wire = &mut self.wire;
                let reader = &mut self.reader;
                let live = &mut self.live;
                tokio::select! {
                    biased;
                    () = &mut cancelled => Wake::Shutdown,
                    event = poll_fn(|cx| poll_socket(wire, reader, flushing, cx)) => Wake::Socket(event),
                    event = live.recv() => Wake::Room(event),
                    () = &mut mail => Wake::Mail,
                    _ = ping.tick() => Wake::Tick,
                }
            };
            match wake {
                Wake::Shutdown => {
                    self.close(GOING_AWAY, "server shutting down").await;
                    return Ended::Because("server shutting down".into());
                }
                Wake::Socket(SocketEvent::Incoming(item)) => {
                    self.last_heard = Instant::now();
                    if let Incoming::Close(code) = item {
                        // Echo the peer's code, then hang up (the server
                        // closes the TCP connection first, as RFC 6455 asks).
                        self.wire.push_close(code.map(|(code, _)| code), "");
                        let _ = timeout(CLOSE_GRACE, self.hang_up()).await;
                        return Ended::Clean;
                    }
                    self.on_incoming(item);
                    // A peer that keeps sending keeps this branch ready;
                    // the room must not wait for it to stop.
                    if let Err(skipped) = self.drain_room() {
                        return self.too_slow(skipped, shutdown).await;
                    }
                }
                Wake::Socket(SocketEvent::Eof) => return Ended::Clean,
                Wake::Socket(SocketEvent::Violation(violation)) => {
                    let reason = violation.to_string();
                    self.wire.push_close(Some(violation.close_code()), &reason);
                    let _ = timeout(CLOSE_GRACE, self.hang_up()).await;
                    return Ended::Because(reason);
                }
                Wake::Socket(SocketEvent::Failed(err)) => return Ended::Because(err.to_string()),
                Wake::Socket(SocketEvent::Flushed) => {}
                Wake::Room(Ok(delivery)) => {
                    self.deliver(&delivery);
                    if let Err(skipped) = self.drain_room() {
                        return self.too_slow(skipped, shutdown).await;
                    }
                }
                Wake::Room(Err(RecvError::Lagged(skipped))) => {
                    return self.too_slow(skipped, shutdown).await;
                }
                Wake::Room(Err(RecvError::Closed)) => {
                    return Ended::Because("room closed".into());
                }
                Wake::Mail => {
                    mail.set(mailbox.posted.notified());
                    for text in mailbox.take() {
                        self.wire.push_text(text.as_bytes());
                    }
                }
                Wake::Tick => {
                    if self.last_heard.elapsed() >= self.shared.config.idle_after() {
                        self.close(GOING_AWAY, "idle timeout").await;
                        return Ended::Because("idle timeout".into());
                    }
                    self.wire.push_ping();
                }
            }
            if let Some(skipped) = self.lagged.take() {
                return self.too_slow(skipped, shutdown).await;
            }
            if self.wire.queued() > self.shared.config.max_lag {
                return self.too_slow(0, shutdown).await;
            }
            // Write now what this turn queued, if the socket takes it; what
            // it does not take is finished by the loop as the socket drains.
            if self.wire.has_pending() {
                let flushed = poll_fn(|cx| Poll::Ready(self.wire.poll_flush(cx))).await;
                if let Poll::Ready(Err(err)) = flushed {
                    return Ended::Because(err.to_string());
                }
            }
        }
    }

    /// Takes whatever the room channel already holds, up to a batch.
    /// `Err` carries how many events were lost to lag.
    fn drain_room(&mut self) -> Result<(), u64> {
        for _ in 0..DRAIN_BATCH {
            match self.live.try_recv() {
                Ok(delivery) => self.deliver(&delivery),
                Err(TryRecvError::Lagged(skipped)) => return Err(skipped),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        Ok(())
    }

    /// Closes a connection that fell too far behind (1013), and says so.
    ///
    /// The peer leaves its room at once; the close frame queues behind what
    /// the peer has not read yet, so it gets a longer grace to arrive.
    async fn too_slow(&mut self, skipped: u64, shutdown: &CancellationToken) -> Ended {
        let behind = self.wire.queued() as u64 + skipped;
        self.leave();
        self.wire.push_close(Some(TRY_AGAIN_LATER), "too slow");
        tokio::select! {
            _ = timeout(TOO_SLOW_GRACE, self.close_handshake()) => {}
            () = shutdown.cancelled() => {}
        }
        Ended::Because(format!("too slow ({behind} messages behind)"))
    }

    /// Sends a close frame and waits (bounded) for the close handshake.
    async fn close(&mut self, code: u16, reason: &str) {
        self.wire.push_close(Some(code), reason);
        let _ = timeout(CLOSE_GRACE, self.close_handshake()).await;
    }

    /// Writes what is queued (our close frame last), waits for the peer's
    /// close frame (or for it to hang up), then hangs up. The peer is read
    /// all along, so one that writes without reading cannot stall it.
    async fn close_handshake(&mut self) {
        let mut flushed = false;
        loop {
            let event =
                poll_fn(|cx| poll_socket(&mut self.wire, &mut self.reader, !flushed, cx)).await;
            match event {
                SocketEvent::Flushed => flushed = true,
                SocketEvent::Incoming(Incoming::Close(_)) | SocketEvent::Eof => break,
                SocketEvent::Violation(_) | SocketEvent::Failed(_) => return,
                SocketEvent::Incoming(_) => {}
            }
        }
        let _ = poll_fn(|cx| self.wire.poll_shutdown(cx)).await;
    }

    /// Writes what is queued (a close frame last) and closes our side.
    async fn hang_up(&mut self) {
        if poll_fn(|cx| self.wire.poll_flush(cx)).await.is_ok() {
            let _ = poll_fn(|cx| self.wire.poll_shutdown(cx)).await;
        }
    }

    /// Removes the peer from the hub and tells its room (once).
    fn leave(&mut self) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        self.shared.hub.unregister(self.id);
        self.tell_left();
    }

    /// Queues an encoded frame shared with other connections; it is
    /// written at the next flush.
    fn queue(&mut self, frame: &Bytes) {
        self.wire.push_shared(frame);
    }

    /// Queues a frame meant for this connection only.
    fn reply(&mut self, frame: ServerFrame) {
        self.wire.push_text(frame.render(self.mode).as_bytes());
    }

    fn reject(&mut self, rejection: Rejection, cid: Option<String>) {
        self.reply(ServerFrame::error(rejection, cid));
    }

    /// Queues one room event, using the shared pre-rendered bytes where it can.
    fn deliver(&mut self, delivery: &Delivery) {
        if delivery.origin == self.id && delivery.is_message() {
            match (self.mode, &delivery.cid) {
                // Plain mode never echoes a message to its sender.
                (Mode::Plain, _) => return,
                // The sender's copy carries its cid: that is its acknowledgement.
                (Mode::Json, Some(cid)) => {
                    let mut frame = delivery.frame.clone();
                    if let ServerFrame::Message { cid: slot, .. } = &mut frame {
                        *slot = Some(cid.clone());
                    }
                    return self.reply(frame);
                }
                (Mode::Json, None) => {}
            }
        }
        self.queue(delivery.wire(self.mode));
    }

    /// Queues stored messages as history.
    fn replay(&mut self, backlog: &[Arc<Delivery>]) {
        for delivery in backlog {
            match self.mode {
                Mode::Plain => self.queue(delivery.wire(Mode::Plain)),
                Mode::Json => {
                    let mut frame = delivery.frame.clone();
                    if let ServerFrame::Message {
                        history, cid, from, ..
                    } = &mut frame
                    {
                        *history = true;
                        // Own messages carry their cid back, so a resuming
                        // client knows which of its sends were stored.
                        if from.eq_ignore_ascii_case(&self.nick) {
                            cid.clone_from(&delivery.cid);
                        }
                    }
                    self.reply(frame);
                }
            }
        }
    }

    /// Handles one message or control frame from the peer (not close).
    fn on_incoming(&mut self, item: Incoming) {
        match item {
            Incoming::Text(text) => {
                let parsed = match self.mode {
                    Mode::Plain => parse_plain(&text),
                    Mode::Json => parse_json(&text),
                };
                match parsed {
                    Ok(request) => self.handle(request),
                    Err(rejection) => self.reject(rejection, None),
                }
            }
            Incoming::Binary => self.reject(
                Rejection::new(
                    ErrorCode::BinaryUnsupported,
                    "binary frames are not supported: send text",
                ),
                None,
            ),
            // A pong counts against --max-lag like any other frame, so a peer
            // that pings and never reads is closed rather than piling them up.
            Incoming::Ping(payload) => self.wire.push_pong(&payload),
            Incoming::Pong | Incoming::Close(_) => {}
        }
    }

    /// Carries out one request.
    fn handle(&mut self, request: Request) {
        match request {
            Request::Say { text, cid } => {
                if let Err(rejection) = self.check_text(&text) {
                    return self.reject(rejection, cid);
                }
                debug!(peer = %self.peer, room = %self.room.name(), "{}: {text}", self.nick);
                self.room.publish_message(self.id, &self.nick, text, cid);
            }
            Request::Nick { nick } => self.rename(&nick),
            Request::Join { room, after } => self.join(&room, after),
            Request::Private { to, text, cid } => self.private(&to, text, cid),
            Request::Who => {
                let nicks = self.shared.hub.who(self.room.name());
                let room = self.room.name().to_string();
                self.reply(ServerFrame::Members { room, nicks });
            }
            Request::Rooms => {
                let rooms = self.shared.hub.rooms();
                self.reply(ServerFrame::Rooms { rooms });
            }
            Request::Help => {
                for line in HELP {
                    self.reply(ServerFrame::Notice {
                        text: (*line).to_owned(),
                    });
                }
            }
        }
    }

    /// Checks a message against the limits (taking a rate token if it passes).
    fn check_text(&mut self, text: &str) -> Result<(), Rejection> {
        let max = self.shared.config.max_message_bytes;
        if text.len() > max {
            return Err(Rejection::new(
                ErrorCode::TooLong,
                format!("message too long: {} bytes, the limit is {max}", text.len()),
            ));
        }
        if text.trim().is_empty() {
            return Err(Rejection::new(ErrorCode::Empty, "empty message"));
        }
        if let Some(bucket) = &mut self.bucket {
            if !bucket.try_take() {
                let config = &self.shared.config;
                return Err(Rejection::new(
                    ErrorCode::RateLimited,
                    format!(
                        "rate limited: at most {} messages per 10 s (bursts of {}); this one was not delivered",
                        config.rate, config.rate_burst
                    ),
                ));
            }
        }
        Ok(())
    }

    fn rename(&mut self, nick: &str) {
        if let Err(rejection) = validate_nick(nick) {
            return self.reject(rejection, None);
        }
        if *self.nick == *nick {
            return;
        }
        match self.shared.hub.rename(self.id, nick) {
            Ok(old) => {
                self.nick = nick.into();
                self.announce(ServerFrame::Renamed {
                    old: old.to_string(),
                    new: nick.to_owned(),
                });
            }
            Err(rejection) => self.reject(rejection, None),
        }
    }

    fn join(&mut self, room: &str, after: Option<u64>) {
        let name = match normalize_room(room) {
            Ok(name) => name,
            Err(rejection) => return self.reject(rejection, None),
        };
        let same = **self.room.name() == *name;
        let target = if same {
            self.room.clone()
        } else {
            self.shared.bus.room(&name)
        };
        let replay = match after {
            Some(after) => Replay::After(after),
            None => Replay::Recent(self.shared.config.history_on_join),
        };
        // Resubscribing and snapshotting under one room lock is what makes
        // the seam between replayed and live messages exact.
        let sub = target.subscribe(replay);
        self.live = sub.live;
        if !same {
            self.shared.hub.set_room(self.id, target.name().clone());
            self.tell_left();
            self.room = target;
        }
        self.replay(&sub.backlog);
        if !same {
            self.announce(ServerFrame::Joined {
                room: self.room.name().to_string(),
                nick: self.nick.to_string(),
            });
        }
    }

    fn private(&mut self, to: &str, text: String, cid: Option<String>) {
        if let Err(rejection) = self.check_text(&text) {
            return self.reject(rejection, cid);
        }
        let Some(target) = self.shared.hub.find(to) else {
            let rejection = Rejection::new(ErrorCode::NoSuchUser, format!("no such user: {to}"));
            return self.reject(rejection, cid);
        };
        let frame = ServerFrame::Private {
            from: self.nick.to_string(),
            to: target.nick.to_string(),
            text,
            ts: now_ms(),
            cid: None,
        };
        if target.mailbox.post(frame.render(target.mode)).is_err() {
            let rejection = Rejection::new(
                ErrorCode::Internal,
                format!("{} cannot receive messages right now", target.nick),
            );
            return self.reject(rejection, cid);
        }
        if self.mode == Mode::Json {
            let mut ack = frame;
            if let ServerFrame::Private { cid: slot, .. } = &mut ack {
                *slot = cid;
            }
            self.reply(ack);
        }
    }
}
