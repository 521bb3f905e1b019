//! One task per connection: after the handshake, one `select!` loop that
//! reads requests, forwards room events and private messages, pings, and
//! closes.
//!
//! Incoming frames are parsed by a [`FrameReader`]; outgoing frames are queued
//! on the connection's [`Wire`] without flushing, and the loop drains
//! everything the room feed already holds and then writes it all with one
//! (vectored) write. The socket keeps being read while a flush is pending, so
//! pings and close frames are still answered, and a peer that stops reading
//! only ever delays itself: once more than `--max-lag` frames wait for it, it
//! is closed with 1013. What a request does is in [`super::commands`].

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::ReadBuf;
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::QueuedBytes;
use super::Shared;
use super::admission::Arriving;
use super::commands::{Conn, FLOODING_AFTER, Replies, Stored, Storing};
use super::fanout::{Delivery, FeedError};
use super::frames::{FrameReader, Incoming, Violation};
use super::handshake::{self, Hello};
use super::metrics::Tally;
use super::presence::Mailbox;
use super::wire::{Transport, Wire};
use crate::protocol::{ErrorCode, Mode, Rejection, Request, ServerFrame, parse_json, parse_plain};

/// How long a closing connection waits for its close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long a connection closed for being too slow gets to read what is
/// already queued for it plus the 1013 close frame behind it.
const TOO_SLOW_GRACE: Duration = Duration::from_secs(10);
/// Most room events taken in one go before they are written out.
const DRAIN_BATCH: usize = 1024;
/// The most read from the socket at once (into a buffer on the stack).
const READ_CHUNK: usize = 8192;
/// Messages one connection may have on their way into history at once;
/// past that its socket is not read until one is stored.
const MAX_STORING: usize = 32;
/// How long a request waits for the acknowledgements of the messages sent
/// before it to come through the room feed before they are read back.
const ACK_WAIT: Duration = Duration::from_secs(2);
/// Close codes the server sends.
const GOING_AWAY: u16 = 1001;
const NORMAL: u16 = 1000;
const POLICY_VIOLATION: u16 = 1008;
const TRY_AGAIN_LATER: u16 = 1013;

/// Serves one accepted connection from handshake to close.
///
/// `arriving` holds the connection's handshake place; a successful
/// handshake trades it for a connection slot.
pub(super) async fn serve<S: Transport>(
    mut stream: S,
    peer: SocketAddr,
    local: Option<std::net::IpAddr>,
    arriving: Arriving,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    // Boxed: the handshake's state would otherwise be part of the task's
    // size for as long as the connection lasts.
    let accepting = Box::pin(handshake::accept(
        &mut stream,
        peer,
        local,
        arriving,
        &shared,
        &shutdown,
    ));
    let Some((mode, hello, slot)) = accepting.await else {
        return;
    };
    info!("New connection from {peer}");
    shared.metrics.connections_total.inc();
    // Boxed, like every command below: a future is part of the task for as
    // long as the task lives, and idle connections should not carry the
    // size of the largest command.
    let mut session = Box::pin(Session::start(Wire::new(stream), peer, mode, hello, shared)).await;
    let ended = session.run(&shutdown).await;
    session.count_deliveries();
    drop(session);
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
    Room(Result<Arc<Delivery>, FeedError>),
    /// A message finished storing (or failed to).
    Stored(Stored),
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
/// (when `read`) something from the peer.
fn poll_socket<S: Transport>(
    wire: &mut Wire<S>,
    reader: &mut FrameReader,
    flushing: bool,
    read: bool,
    cx: &mut Context<'_>,
) -> Poll<SocketEvent> {
    if flushing {
        match wire.poll_flush(cx) {
            Poll::Ready(Ok(())) => return Poll::Ready(SocketEvent::Flushed),
            Poll::Ready(Err(err)) => return Poll::Ready(SocketEvent::Failed(err)),
            Poll::Pending => {}
        }
    }
    if !read {
        return Poll::Pending;
    }
    loop {
        match reader.take() {
            Some(Ok(item)) => return Poll::Ready(SocketEvent::Incoming(item)),
            Some(Err(violation)) => return Poll::Ready(SocketEvent::Violation(violation)),
            None => {}
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
        reader.feed(buf.filled());
    }
}

/// Polls the oldest message still being stored; once it is done, takes it
/// off the queue and gives its outcome.
fn poll_oldest(storing: &mut VecDeque<Storing>, cx: &mut Context<'_>) -> Poll<Stored> {
    let Some(oldest) = storing.front_mut() else {
        return Poll::Pending;
    };
    let reply = ready!(oldest.as_mut().poll(cx));
    storing.pop_front();
    Poll::Ready(reply)
}

/// One connected peer.
struct Session<S> {
    conn: Conn,
    shared: Arc<Shared>,
    wire: Wire<S>,
    reader: FrameReader,
    mailbox: Arc<Mailbox>,
    last_heard: Instant,
    /// Answers a command produced, reused between commands.
    replies: Replies,
    /// This connection's messages still being stored, oldest first. A
    /// plain queue (empty, it allocates nothing): stores finish in the
    /// order they were asked for, so only the oldest needs polling.
    storing: VecDeque<Storing>,
    /// Events delivered, for `/metrics`.
    delivered: Tally,
    /// Room events taken from the feed and not yet queued, reused.
    batch: Vec<Arc<Delivery>>,
    /// What this connection's queue adds to the server-wide count of
    /// queued bytes (0 while it keeps up).
    counted: usize,
    /// Bytes written by the last ping tick, and ticks since with bytes
    /// waiting and none written.
    written_at_tick: u64,
    stalled_ticks: u32,
}

impl<S> Drop for Session<S> {
    fn drop(&mut self) {
        self.shared.queued.change(self.counted, 0);
    }
}

impl<S: Transport> Session<S> {
    /// Registers the peer, greets it, and puts it in the default room.
    async fn start(
        wire: Wire<S>,
        peer: SocketAddr,
        mode: Mode,
        hello: Hello,
        shared: Arc<Shared>,
    ) -> Self {
        let mailbox = Arc::new(Mailbox::default());
        let mut replies = Replies::new();
        let id = shared.next_conn_id();
        let conn = Conn::start(
            id,
            peer,
            mode,
            hello,
            &shared,
            mailbox.clone(),
            &mut replies,
        )
        .await;
        let mut session = Self {
            conn,
            delivered: Tally::new(id.seq),
            reader: FrameReader::new(shared.config.max_frame_bytes),
            shared,
            wire,
            mailbox,
            last_heard: Instant::now(),
            replies,
            storing: VecDeque::new(),
            batch: Vec::new(),
            counted: 0,
            written_at_tick: 0,
            stalled_ticks: 0,
        };
        session.send_replies();
        session
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
        if let Err(lag) = self.drain_room() {
            return self.too_slow(lag, shutdown).await;
        }
        loop {
            // A replay or an `older` answer goes out a page at a time, each
            // once the one before has been written. Meanwhile requests wait
            // (they are answered in order) and so do live events (they come
            // after it).
            while self.conn.paging() && !self.wire.has_pending() {
                Box::pin(self.conn.continue_paging(&self.shared, &mut self.replies)).await;
                self.send_replies();
                if let Err(err) = self.try_flush().await {
                    return Ended::Because(err.to_string());
                }
            }
            let wake = {
                let flushing = self.wire.has_pending();
                let replaying = self.conn.paging();
                let reading = !replaying && self.storing.len() < MAX_STORING;
                let wire = &mut self.wire;
                let reader = &mut self.reader;
                let feed = &mut self.conn.feed;
                let storing = &mut self.storing;
                tokio::select! {
                    biased;
                    () = &mut cancelled => Wake::Shutdown,
                    event = poll_fn(|cx| poll_socket(wire, reader, flushing, reading, cx)) => Wake::Socket(event),
                    reply = poll_fn(|cx| poll_oldest(storing, cx)), if !storing.is_empty() => Wake::Stored(reply),
                    event = feed.next(), if !replaying => Wake::Room(event),
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
                        // What the peer sent before is answered first; then
                        // echo its code and hang up (the server closes the
                        // TCP connection first, as RFC 6455 asks).
                        self.settle_before_close().await;
                        self.wire.push_close(code.map(|(code, _)| code), "");
                        let _ = timeout(CLOSE_GRACE, self.hang_up()).await;
                        return Ended::Clean;
                    }
                    // A peer that keeps sending keeps this branch ready;
                    // the room must not wait for it to stop.
                    let handled = self.on_incoming(item).await;
                    if let Err(lag) = handled.and_then(|()| self.drain_room()) {
                        return self.too_slow(lag, shutdown).await;
                    }
                    if self.conn.flooding() {
                        // Not waiting for its close handshake: it would go
                        // on being read (and parsed) meanwhile.
                        self.shared.admission.misbehaved(self.conn.peer.ip());
                        self.wire.push_close(Some(POLICY_VIOLATION), "flooding");
                        let _ = timeout(CLOSE_GRACE, self.hang_up()).await;
                        return Ended::Because(format!(
                            "kept flooding through {FLOODING_AFTER} rate_limited errors"
                        ));
                    }
                }
                Wake::Socket(SocketEvent::Eof) => {
                    // The peer may only have stopped writing: it still gets
                    // the answers to what it sent.
                    self.settle_before_close().await;
                    let _ = timeout(CLOSE_GRACE, self.hang_up()).await;
                    return Ended::Clean;
                }
                Wake::Socket(SocketEvent::Violation(violation)) => {
                    let reason = violation.to_string();
                    self.shared.admission.misbehaved(self.conn.peer.ip());
                    self.wire.push_close(Some(violation.close_code()), &reason);
                    let _ = timeout(CLOSE_GRACE, self.hang_up()).await;
                    return Ended::Because(reason);
                }
                Wake::Socket(SocketEvent::Failed(err)) => return Ended::Because(err.to_string()),
                Wake::Socket(SocketEvent::Flushed) => {}
                Wake::Room(Ok(delivery)) => {
                    self.deliver(&delivery);
                    if let Err(lag) = self.drain_room() {
                        return self.too_slow(lag, shutdown).await;
                    }
                }
                Wake::Room(Err(lag)) => return self.too_slow(lag, shutdown).await,
                Wake::Stored(stored) => {
                    self.conn.on_stored(stored, &mut self.replies);
                    self.send_replies();
                    // The acknowledgement may be in the room feed by now.
                    if let Err(lag) = self.drain_room() {
                        return self.too_slow(lag, shutdown).await;
                    }
                }
                Wake::Mail => {
                    if mailbox.replaced() {
                        // Its nick went to a new connection of the same client.
                        self.close(NORMAL, "replaced by a new connection").await;
                        return Ended::Because("replaced by a new connection".into());
                    }
                    if mailbox.usurped() {
                        // Redis had lost the lease of its nick's earlier
                        // holder, who claimed it again: a client that comes
                        // back finds the nick taken.
                        let why = "your nick is held by an earlier connection";
                        self.close(TRY_AGAIN_LATER, why).await;
                        return Ended::Because(why.into());
                    }
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
                    if self.reads_nothing() {
                        // Answering pings or not, a peer that takes none of
                        // what waits for it holds its queue for nothing.
                        self.shared.metrics.queue_closes_total.inc();
                        return self.too_slow(FeedError::Lagged(0), shutdown).await;
                    }
                    self.wire.push_ping();
                }
            }
            if self.behind() || self.over_the_servers_budget() {
                return self.too_slow(FeedError::Lagged(0), shutdown).await;
            }
            self.count_deliveries();
            if let Err(err) = self.try_flush().await {
                return Ended::Because(err.to_string());
            }
        }
    }

    /// Adds the deliveries counted since the last call to `/metrics`' total.
    fn count_deliveries(&mut self) {
        self.shared.metrics.add_deliveries(&mut self.delivered);
    }

    /// Whether bytes have waited for the peer, none of them written, for
    /// `--idle-timeout` (counted in ping ticks).
    fn reads_nothing(&mut self) -> bool {
        let written = self.wire.written();
        if self.wire.queued_bytes() > 0 && written == self.written_at_tick {
            self.stalled_ticks += 1;
        } else {
            self.stalled_ticks = 0;
        }
        self.written_at_tick = written;
        let config = &self.shared.config;
        config.ping_every() * self.stalled_ticks >= config.idle_after()
    }

    /// Counts this connection's queue in the server-wide total, once it is
    /// far behind; whether the total is over `--max-queued-bytes` with this
    /// connection among those furthest behind (at least the average of
    /// those counted), so it must go.
    fn over_the_servers_budget(&mut self) -> bool {
        let queued = self.wire.queued_bytes();
        let now = if queued >= QueuedBytes::COUNTED_FROM {
            queued
        } else {
            0
        };
        if now == self.counted {
            return false;
        }
        let (total, laggards) = self.shared.queued.change(self.counted, now);
        self.counted = now;
        let over = now > 0
            && total > self.shared.config.max_queued_bytes
            && now >= total / laggards.max(1);
        if over {
            self.shared.metrics.queue_closes_total.inc();
        }
        over
    }

    /// Whether more waits for the peer than `--max-lag` frames or
    /// `--max-lag-bytes` bytes.
    fn behind(&self) -> bool {
        let config = &self.shared.config;
        self.wire.queued() > config.max_lag || self.wire.queued_bytes() > config.max_lag_bytes
    }

    /// Writes now what is queued, if the socket takes it; what it does not
    /// take is finished by the loop as the socket drains.
    async fn try_flush(&mut self) -> io::Result<()> {
        if self.wire.has_pending() {
            let flushed = poll_fn(|cx| Poll::Ready(self.wire.poll_flush(cx))).await;
            if let Poll::Ready(Err(err)) = flushed {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Takes whatever the room feed already holds, up to a batch (none
    /// while a replay or an `older` answer is still going out: live events
    /// come after it).
    fn drain_room(&mut self) -> Result<(), FeedError> {
        if self.conn.paging() {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.batch);
        let taken = self.conn.feed.take_waiting(DRAIN_BATCH, &mut batch);
        for delivery in batch.drain(..) {
            self.deliver(&delivery);
        }
        self.batch = batch;
        taken
    }

    /// Closes a connection that fell too far behind (1013), and says so.
    ///
    /// The peer leaves its room at once; the close frame queues behind what
    /// the peer has not read yet, so it gets a longer grace to arrive.
    async fn too_slow(&mut self, lag: FeedError, shutdown: &CancellationToken) -> Ended {
        let FeedError::Lagged(skipped) = lag;
        let behind = self.wire.queued() as u64 + skipped;
        self.shared.metrics.slow_closes_total.inc();
        self.conn.leave();
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
                poll_fn(|cx| poll_socket(&mut self.wire, &mut self.reader, !flushed, true, cx))
                    .await;
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

    /// Queues the answers the last command produced, for this connection only.
    fn send_replies(&mut self) {
        for frame in self.replies.drain(..) {
            self.wire.push_text(frame.render(self.conn.mode).as_bytes());
        }
    }

    /// Queues one room event, using the shared pre-rendered bytes where it can.
    fn deliver(&mut self, delivery: &Delivery) {
        if let ServerFrame::Gap { after: None, .. } = delivery.frame {
            // The room's history started again, and so do its ids.
            self.conn.acks.restart();
        }
        if delivery.origin == self.conn.id
            && let Some(id) = delivery.id()
        {
            match self.conn.mode {
                // Plain mode never echoes a message to its sender.
                Mode::Plain => return,
                // Acknowledged already, read back from history.
                Mode::Json if !self.conn.acks.arrived(id) => return,
                Mode::Json => {
                    if let Some(ack) = delivery.acknowledgement() {
                        self.delivered.add();
                        return self.wire.push_text(ack.to_json().as_bytes());
                    }
                }
            }
        }
        self.delivered.add();
        self.queue(delivery.wire(self.conn.mode));
    }

    /// Queues an encoded frame shared with other connections.
    fn queue(&mut self, frame: &Bytes) {
        self.wire.push_shared(frame);
    }

    /// Waits until this connection's messages are stored (or refused) and
    /// their acknowledgements (or errors) are queued.
    ///
    /// An acknowledgement comes through the room feed, in its place among
    /// the room's messages; one that has not come within [`ACK_WAIT`] (a
    /// shared backend's delivery stalled) is read back from history.
    async fn settle(&mut self) -> Result<(), FeedError> {
        while !self.storing.is_empty() {
            let stored = poll_fn(|cx| poll_oldest(&mut self.storing, cx)).await;
            self.conn.on_stored(stored, &mut self.replies);
        }
        self.drain_room()?;
        let deadline = Instant::now() + ACK_WAIT;
        // (No replay is ever under way here: a request is read only once
        // its connection's replay is out, and live events come after it.)
        while self.conn.acks.pending() && self.conn.replay.is_none() {
            match tokio::time::timeout_at(deadline, self.conn.feed.next()).await {
                Ok(event) => {
                    let event = event?;
                    self.deliver(&event);
                    self.drain_room()?;
                }
                Err(_) => {
                    Box::pin(self.conn.recover_acks(&self.shared, &mut self.replies)).await;
                }
            }
        }
        Ok(())
    }

    /// Settles (bounded) and queues the answers, before the connection
    /// closes: an acknowledged message is never left unacknowledged.
    async fn settle_before_close(&mut self) {
        let _ = timeout(ACK_WAIT + CLOSE_GRACE, self.settle()).await;
        self.send_replies();
    }

    /// Handles one message or control frame from the peer (not close).
    ///
    /// A chat message may still be being stored when this returns; any
    /// other request first waits for those, and for their acknowledgements
    /// to be queued, so everything is answered in order (a `/join` must not
    /// leave the room before its messages' acknowledgements have come).
    async fn on_incoming(&mut self, item: Incoming) -> Result<(), FeedError> {
        match item {
            Incoming::Text(text) => {
                let parsed = match self.conn.mode {
                    Mode::Plain => parse_plain(&text),
                    Mode::Json => parse_json(&text),
                };
                if let Err(rejection) = self.conn.spend(&self.shared) {
                    let cid = match parsed {
                        Ok(Request::Say { cid, .. } | Request::Private { cid, .. }) => cid,
                        _ => None,
                    };
                    self.replies.push(ServerFrame::error(rejection, cid));
                    self.send_replies();
                    return Ok(());
                }
                match parsed {
                    Ok(Request::Say { text, cid }) => {
                        let storing = self.conn.say(text, cid, &self.shared, &mut self.replies);
                        self.storing.extend(storing);
                    }
                    Ok(request) => {
                        self.settle().await?;
                        Box::pin(self.conn.apply(request, &self.shared, &mut self.replies)).await;
                    }
                    Err(rejection) => self.replies.push(ServerFrame::error(rejection, None)),
                }
                self.send_replies();
            }
            Incoming::Binary => {
                let rejection = self.conn.spend(&self.shared).err().unwrap_or_else(|| {
                    Rejection::new(
                        ErrorCode::BinaryUnsupported,
                        "binary frames are not supported: send text",
                    )
                });
                self.replies.push(ServerFrame::error(rejection, None));
                self.send_replies();
            }
            // A pong counts against --max-lag like any other frame, so a peer
            // that pings and never reads is closed rather than piling them up.
            // Answered in order too: a client may send a ping behind its
            // messages to learn that all of them were handled.
            Incoming::Ping(payload) => {
                self.settle().await?;
                self.send_replies();
                self.wire.push_pong(&payload);
            }
            // Parsed for nothing, so it costs a request's token; refused
            // silently (there is nothing to answer), and a stream of them
            // is closed as flooding.
            Incoming::EmptyFragment => {
                let _ = self.conn.spend(&self.shared);
            }
            Incoming::Pong | Incoming::Close(_) => {}
        }
        Ok(())
    }
}
