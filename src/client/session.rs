//! The client's state across connections, and one connection from connect
//! to its end: greeting, resume behind a ping barrier, sending (paced by the
//! server's announced rate), receiving, and the end-of-input handshake.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_websockets::{
    ClientBuilder, CloseCode, Connector, MaybeTlsStream, Message, WebSocketStream,
};

use super::render::{
    Failure, describe_close, describe_ws_error, failure, timestamped, websocket_url,
};
use super::{CONNECT_TIMEOUT, EOF, EOF_GRACE, OUTBOX_LIMIT, Output, SYNC, backoff};
use crate::config::ClientConfig;
use crate::limit::TokenBucket;
use crate::protocol::{
    ClientFrame, DEFAULT_ROOM, ErrorCode, HELP, Request, SUBPROTOCOL, ServerFrame, normalize_room,
    parse_plain, validate_nick, visible,
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How one connection ended.
enum SessionEnd {
    /// The user asked to quit (or input ended and everything was delivered).
    Finished,
    /// The connection dropped; the text says why.
    Lost(Option<String>),
    /// Input ended and the grace period ran out with messages unconfirmed.
    GaveUp,
}
/// The client's state across connections.
pub(super) struct Client<'o> {
    config: ClientConfig,
    out: &'o mut dyn Output,
    input: mpsc::Receiver<String>,
    input_open: bool,
    /// The nick to claim on every connection.
    nick: Option<String>,
    /// The name the server knows this connection by right now.
    me: String,
    /// The room to be in.
    room: String,
    /// Per room, the highest message id shown (or skipped as our own).
    last_seen: HashMap<String, u64>,
    /// Frames waiting for a connection (typed while away, or during resume).
    outbox: VecDeque<ClientFrame>,
    /// Messages sent but not yet acknowledged, by cid, oldest first.
    unacked: Vec<(String, ClientFrame)>,
    /// Cids of messages the server could not store yet, already told: they
    /// are sent again (with the same cid, so one that was stored after all
    /// is not stored twice) without saying so again.
    retrying: std::collections::HashSet<String>,
    cid_prefix: String,
    next_cid: u64,
    /// Set at end of input: when to give up waiting for acknowledgements.
    eof_deadline: Option<Instant>,
    welcomed: bool,
    /// The `epoch` of the server history the ids in `last_seen` belong to.
    epoch: Option<u64>,
    /// Messages of our room received while resuming, by id.
    held: BTreeMap<u64, ServerFrame>,
    /// The server's flood control as announced in `welcome`, mirrored so the
    /// client paces itself instead of having messages refused.
    bucket: Option<TokenBucket>,
    /// When the next paced message may go.
    pace_at: Option<Instant>,
    /// Whether this connection has sent its end-of-input ping.
    eof_sent: bool,
    /// TLS setup for wss:// URLs.
    connector: Option<Connector>,
    /// The room the server put this connection in (its `welcome`).
    welcomed_in: String,
    /// The secret of the last connection (its `welcome`'s `resume`): the
    /// next handshake sends it so the server hands the nick over even
    /// before it notices the old connection is gone. `None` from servers
    /// that do not apply `?nick=` and `?room=` themselves.
    resume: Option<String>,
    /// Which of the configured servers is in use.
    current: usize,
}

impl<'o> Client<'o> {
    pub(super) fn new(
        config: ClientConfig,
        input: mpsc::Receiver<String>,
        out: &'o mut dyn Output,
    ) -> Self {
        let room = config
            .room
            .as_deref()
            .and_then(|r| normalize_room(r).ok())
            .unwrap_or_else(|| DEFAULT_ROOM.to_owned());
        Self {
            nick: config.nick.clone(),
            config,
            out,
            input,
            input_open: true,
            me: String::new(),
            room,
            last_seen: HashMap::new(),
            outbox: VecDeque::new(),
            unacked: Vec::new(),
            retrying: std::collections::HashSet::new(),
            cid_prefix: format!("{:08x}", fastrand::u32(..)),
            next_cid: 0,
            eof_deadline: None,
            welcomed: false,
            epoch: None,
            held: BTreeMap::new(),
            bucket: None,
            pace_at: None,
            eof_sent: false,
            connector: None,
            welcomed_in: String::new(),
            resume: None,
            current: 0,
        }
    }

    pub(super) async fn run(&mut self) -> i32 {
        for url in &mut self.config.urls {
            match websocket_url(url) {
                Ok(full) => *url = full,
                Err(reason) => {
                    self.out.status(&format!("error: {reason}"));
                    return 2;
                }
            }
        }
        if let Some(nick) = &self.config.nick
            && let Err(rejection) = validate_nick(nick)
        {
            self.status(&format!("error: {}", rejection.text));
            return 2;
        }
        if let Some(room) = &self.config.room
            && let Err(rejection) = normalize_room(room)
        {
            self.status(&format!("error: {}", rejection.text));
            return 2;
        }
        let any_tls = self.config.urls.iter().any(|url| url.starts_with("wss://"));
        if any_tls || self.config.ca_cert.is_some() {
            match crate::tls::connector(self.config.ca_cert.as_deref()) {
                Ok(connector) => self.connector = Some(connector),
                Err(err) => {
                    self.out
                        .status(&format!("error: {}", crate::error::report(&err)));
                    return 2;
                }
            }
        }
        let mut attempt: u32 = 0;
        // Servers tried in a row without getting through.
        let mut failed_in_a_row = 0;
        loop {
            let lost = match self.connect().await {
                Ok(ws) => {
                    attempt = 0;
                    failed_in_a_row = 0;
                    self.out.status(&format!("connected to {}", self.url()));
                    match self.session(ws).await {
                        SessionEnd::Finished => return 0,
                        SessionEnd::GaveUp => return self.give_up(),
                        SessionEnd::Lost(reason) => {
                            if let Some(reason) = reason {
                                self.status(&reason);
                            }
                            true
                        }
                    }
                }
                Err(failure) => {
                    let url = self.url();
                    self.status(&format!("cannot connect to {url}: {}", failure.reason));
                    if failure.permanent {
                        return 2;
                    }
                    false
                }
            };
            // The next server of the list, at once while some are untried.
            failed_in_a_row += 1;
            self.current = (self.current + 1) % self.config.urls.len();
            if failed_in_a_row < self.config.urls.len() && !(lost && self.config.no_reconnect) {
                if lost {
                    self.out
                        .status(&format!("connection lost, trying {}", self.url()));
                }
                continue;
            }
            failed_in_a_row = 0;
            if self.config.no_reconnect {
                if lost {
                    self.status("connection lost");
                }
                return 1;
            }
            if self.finished_input() {
                return 0;
            }
            let delay = backoff(attempt);
            attempt = attempt.saturating_add(1);
            let secs = delay.as_secs_f64().round().max(1.0);
            if lost {
                self.out
                    .status(&format!("connection lost, reconnecting in {secs}s"));
            } else {
                self.status(&format!("reconnecting in {secs}s"));
            }
            if !self.wait_offline(delay).await {
                return 0;
            }
            if self.eof_deadline.is_some_and(|d| Instant::now() >= d) {
                return self.give_up();
            }
        }
    }

    /// The server being connected to.
    fn url(&self) -> &str {
        &self.config.urls[self.current]
    }

    /// True when input has ended and nothing is left to deliver.
    fn finished_input(&self) -> bool {
        !self.input_open && self.outbox.is_empty() && self.unacked.is_empty()
    }

    fn give_up(&mut self) -> i32 {
        let left = self.outbox.len() + self.unacked.len();
        self.status(&format!(
            "gave up: {left} message(s) not confirmed by the server"
        ));
        1
    }

    /// Waits before reconnecting while still taking typed lines.
    /// Returns false if the user quit.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let mut until = Instant::now() + delay;
        if let Some(deadline) = self.eof_deadline {
            until = until.min(deadline);
        }
        loop {
            tokio::select! {
                () = sleep_until(until) => return true,
                line = self.input.recv(), if self.input_open && self.outbox.len() < OUTBOX_LIMIT => match line {
                    Some(line) => match self.on_line(&line) {
                        LineAction::Quit => return false,
                        LineAction::Send(frame) => self.enqueue(frame),
                        LineAction::Nothing => {}
                    },
                    None => {
                        self.end_of_input();
                        if self.finished_input() {
                            return false;
                        }
                        if let Some(deadline) = self.eof_deadline {
                            until = until.min(deadline);
                        }
                    }
                },
            }
        }
    }

    fn end_of_input(&mut self) {
        self.input_open = false;
        self.eof_deadline = Some(Instant::now() + EOF_GRACE);
    }

    /// Queues a frame to send. Input is not read while the queue is full, so
    /// it never grows past [`OUTBOX_LIMIT`] and nothing typed is dropped.
    fn enqueue(&mut self, frame: ClientFrame) {
        self.outbox.push_back(frame);
    }

    /// Notes progress towards delivering everything (extends the end-of-input wait).
    fn progress(&mut self) {
        if let Some(deadline) = &mut self.eof_deadline {
            *deadline = Instant::now() + EOF_GRACE;
        }
    }

    async fn connect(&mut self) -> Result<Socket, Failure> {
        let permanent = |reason: String| Failure {
            reason,
            permanent: true,
        };
        let mut builder = ClientBuilder::new()
            .uri(&self.handshake_url())
            .map_err(|e| permanent(format!("invalid URL: {e}")))?
            .add_header(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(SUBPROTOCOL),
            )
            .map_err(|e| permanent(e.to_string()))?;
        if let Some(token) = &self.config.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| permanent("the token must be printable ASCII".into()))?;
            builder = builder
                .add_header(AUTHORIZATION, value)
                .map_err(|e| permanent(e.to_string()))?;
        }
        if let Some(connector) = &self.connector {
            builder = builder.connector(connector);
        }
        let tls = self.url().starts_with("wss://");
        match timeout(CONNECT_TIMEOUT, builder.connect()).await {
            Ok(Ok((ws, _response))) => Ok(ws),
            Ok(Err(err)) => Err(failure(&err, tls)),
            Err(_) => Err(Failure {
                reason: "timed out".into(),
                permanent: false,
            }),
        }
    }

    /// The URL with what the server should apply before its welcome: the
    /// nick, the room, and the previous connection's secret.
    fn handshake_url(&self) -> String {
        let mut params = Vec::new();
        if let Some(nick) = &self.nick {
            params.push(format!("nick={nick}"));
        }
        if self.room != DEFAULT_ROOM {
            params.push(format!("room={}", self.room));
        }
        if let Some(secret) = &self.resume {
            params.push(format!("resume={secret}"));
        }
        let url = self.url();
        if params.is_empty() {
            return url.to_owned();
        }
        let joiner = if url.contains('?') { '&' } else { '?' };
        format!("{url}{joiner}{}", params.join("&"))
    }

    /// One connection, from resume to its end.
    async fn session(&mut self, mut ws: Socket) -> SessionEnd {
        let mut syncing = true;
        let mut lost_reason = None;
        // Anything held from a connection that dropped mid-resume is replayed again.
        self.held.clear();
        self.eof_sent = false;
        self.pace_at = None;
        if let Err(end) = self.greeting(&mut ws).await {
            return end;
        }
        if let Err(end) = self.resume(&mut ws).await {
            return end;
        }
        loop {
            let deadline = self.eof_deadline;
            let pace_at = self.pace_at.filter(|_| !syncing);
            let room_for_input = self.input_open && self.outbox.len() < OUTBOX_LIMIT;
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(message)) => {
                        if message.is_pong() {
                            let payload: &[u8] = message.as_payload();
                            if payload == SYNC {
                                syncing = false;
                                let (me, room) = (self.me.clone(), self.room.clone());
                                self.status(&format!("* you are {me} in {room}"));
                                if let Err(end) = self.flush_after_resume(&mut ws).await {
                                    return end;
                                }
                            } else if payload == EOF && !syncing {
                                if self.outbox.is_empty() {
                                    // Everything sent before the ping has been processed.
                                    self.unacked.clear();
                                    let _ = timeout(Duration::from_secs(2), ws.close()).await;
                                    return SessionEnd::Finished;
                                }
                                // Something was refused for its rate and queued
                                // again: ask once more after it has gone out.
                                self.eof_sent = false;
                            }
                        } else if let Some((code, reason)) = message.as_close() {
                            lost_reason = Some(describe_close(code, reason));
                        } else if let Some(text) = message.as_text() {
                            match serde_json::from_str::<ServerFrame>(text) {
                                Ok(frame) => self.on_event(frame, syncing),
                                Err(_) => self.print(text),
                            }
                        }
                    }
                    Some(Err(err)) => return lost(&err),
                    None => return SessionEnd::Lost(lost_reason),
                },
                line = self.input.recv(), if room_for_input => match line {
                    Some(line) => match self.on_line(&line) {
                        LineAction::Quit => {
                            let _ = ws.send(Message::close(Some(CloseCode::NORMAL_CLOSURE), "bye")).await;
                            let _ = timeout(Duration::from_secs(2), ws.close()).await;
                            return SessionEnd::Finished;
                        }
                        LineAction::Send(frame) => {
                            self.enqueue(frame);
                            // During a resume the barrier handler sends it, after the resends.
                            if !syncing && self.pace_at.is_none()
                                && let Err(end) = self.pump(&mut ws).await {
                                    return end;
                                }
                        }
                        LineAction::Nothing => {}
                    },
                    None => {
                        self.end_of_input();
                        if !syncing && self.pace_at.is_none()
                            && let Err(end) = self.pump(&mut ws).await {
                                return end;
                            }
                    }
                },
                () = sleep_until(pace_at.unwrap_or_else(Instant::now)), if pace_at.is_some() => {
                    self.pace_at = None;
                    if let Err(end) = self.pump(&mut ws).await {
                        return end;
                    }
                }
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    return SessionEnd::GaveUp;
                }
            }
        }
    }

    /// Reads the server's `welcome`, which comes first.
    async fn greeting(&mut self, ws: &mut Socket) -> Result<(), SessionEnd> {
        let first = match timeout(CONNECT_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(err))) => return Err(lost(&err)),
            Ok(None) => return Err(SessionEnd::Lost(None)),
            Err(_) => return Err(SessionEnd::Lost(Some("no welcome from the server".into()))),
        };
        match first.as_text().map(serde_json::from_str::<ServerFrame>) {
            Some(Ok(frame @ ServerFrame::Welcome { .. })) => {
                self.on_event(frame, true);
                Ok(())
            }
            _ => Err(SessionEnd::Lost(Some(
                "the server did not speak the wschat.v1 protocol".into(),
            ))),
        }
    }

    /// Claims the nick and room and asks for what was missed, then the barrier ping.
    async fn resume(&mut self, ws: &mut Socket) -> Result<(), SessionEnd> {
        // A server that gave a resume secret applied the nick and room of
        // the handshake itself (and said so if it could not).
        let applied = self.resume.is_some();
        if let Some(nick) = self.nick.clone().filter(|_| !applied) {
            self.spend_token();
            send_raw(ws, json(&ClientFrame::Nick { nick })).await?;
        }
        let after = self.last_seen.get(&self.room).copied();
        let moved = if applied {
            self.room != self.welcomed_in
        } else {
            self.room != DEFAULT_ROOM
        };
        if moved || after.is_some() {
            let frame = ClientFrame::Join {
                room: self.room.clone(),
                after,
                // Which history `after` belongs to: if the server's differs,
                // it says so with a `gap` and replays afresh.
                epoch: after.and(self.epoch),
            };
            self.spend_token();
            send_raw(ws, json(&frame)).await?;
        }
        send_raw(ws, Message::ping(SYNC)).await
    }

    /// Counts a request sent outside [`Self::pump`] against the bucket, as
    /// the server does (it is sent whatever the bucket says).
    fn spend_token(&mut self) {
        if let Some(bucket) = &mut self.bucket {
            let _ = bucket.try_take();
        }
    }

    /// After the replay: show what was held, resend what was not stored, then
    /// send what was typed meanwhile.
    async fn flush_after_resume(&mut self, ws: &mut Socket) -> Result<(), SessionEnd> {
        for (_, frame) in std::mem::take(&mut self.held) {
            self.on_event(frame, false);
        }
        // Unconfirmed messages go first, in their original order.
        for (_, frame) in self.unacked.drain(..).rev() {
            self.outbox.push_front(frame);
        }
        self.pump(ws).await
    }

    /// Sends queued frames as far as the rate allows; once input has ended and
    /// everything is out, sends the end-of-input ping.
    async fn pump(&mut self, ws: &mut Socket) -> Result<(), SessionEnd> {
        // Every request counts against the server's flood control, commands too.
        while !self.outbox.is_empty() {
            if let Some(bucket) = &mut self.bucket
                && !bucket.try_take()
            {
                self.pace_at = Some(Instant::now() + bucket.wait());
                return Ok(());
            }
            if let Some(frame) = self.outbox.pop_front() {
                self.send(ws, frame).await?;
                self.progress();
            }
        }
        if !self.input_open && !self.eof_sent {
            self.eof_sent = true;
            send_raw(ws, Message::ping(EOF)).await?;
        }
        Ok(())
    }

    /// Sends a frame, remembering messages until they are acknowledged.
    async fn send(&mut self, ws: &mut Socket, frame: ClientFrame) -> Result<(), SessionEnd> {
        let message = json(&frame);
        match &frame {
            ClientFrame::Say { cid: Some(cid), .. }
            | ClientFrame::Private { cid: Some(cid), .. } => {
                self.unacked.push((cid.clone(), frame.clone()));
            }
            _ => {}
        }
        if let Err(end) = send_raw(ws, message).await {
            // Not delivered: keep it for the next connection (messages are in `unacked`).
            if !matches!(frame, ClientFrame::Say { .. } | ClientFrame::Private { .. }) {
                self.outbox.push_front(frame);
            }
            return Err(end);
        }
        Ok(())
    }

    fn new_cid(&mut self) -> String {
        self.next_cid += 1;
        format!("{}-{}", self.cid_prefix, self.next_cid)
    }

    /// Turns one typed line into what to do.
    fn on_line(&mut self, line: &str) -> LineAction {
        let line = line.trim_end_matches(['\r', '\n']);
        match line.trim() {
            "" => return LineAction::Nothing,
            "/quit" => return LineAction::Quit,
            _ => {}
        }
        match parse_plain(line) {
            Ok(Request::Say { text, .. }) => LineAction::Send(ClientFrame::Say {
                text,
                cid: Some(self.new_cid()),
            }),
            Ok(Request::Private { to, text, .. }) => LineAction::Send(ClientFrame::Private {
                to,
                text,
                cid: Some(self.new_cid()),
            }),
            Ok(Request::Nick { nick }) => LineAction::Send(ClientFrame::Nick { nick }),
            Ok(Request::Join { room, .. }) => match normalize_room(&room) {
                Ok(room) => {
                    self.room.clone_from(&room);
                    let after = None;
                    LineAction::Send(ClientFrame::Join {
                        room,
                        after,
                        epoch: None,
                    })
                }
                Err(rejection) => {
                    self.print(&format!("! {}", rejection.text));
                    LineAction::Nothing
                }
            },
            Ok(Request::Who) => LineAction::Send(ClientFrame::Who),
            Ok(Request::Rooms) => LineAction::Send(ClientFrame::Rooms),
            Ok(Request::Older { before, limit }) => LineAction::Send(ClientFrame::Older {
                before,
                limit: Some(limit),
            }),
            Ok(Request::Help) => {
                for line in HELP {
                    self.print(&format!("* {line}"));
                }
                self.print("* /quit             leave (Ctrl+D too)");
                LineAction::Nothing
            }
            Err(rejection) => {
                self.print(&format!("! {}", rejection.text));
                LineAction::Nothing
            }
        }
    }

    /// Renders one server event, dropping duplicates and our own echoes.
    fn on_event(&mut self, frame: ServerFrame, syncing: bool) {
        match &frame {
            ServerFrame::Welcome {
                nick,
                room,
                epoch,
                limits,
                resume,
                ..
            } => {
                self.me.clone_from(nick);
                self.welcomed_in.clone_from(room);
                self.resume.clone_from(resume);
                self.bucket = limits.and_then(|l| TokenBucket::new(l.rate, l.rate_burst));
                if self.epoch != Some(*epoch) {
                    // Another history: ids seen elsewhere mean nothing now.
                    // The room being resumed keeps its id, and the old
                    // epoch goes with it in the `join`, so the server can
                    // answer with a `gap` (ids start again) or, if it was only
                    // this node that changed, resume exactly.
                    let resuming = self.last_seen.get(&self.room).copied();
                    self.last_seen.clear();
                    match resuming {
                        Some(after) if self.epoch.is_some() => {
                            self.last_seen.insert(self.room.clone(), after);
                        }
                        _ => self.epoch = Some(*epoch),
                    }
                }
                if self.welcomed {
                    return;
                }
                self.welcomed = true;
            }
            ServerFrame::Message {
                id,
                room,
                from,
                cid,
                history,
                ..
            } => {
                if let Some(cid) = cid {
                    self.unacked.retain(|(c, _)| c != cid);
                    self.retrying.remove(cid);
                    self.progress();
                }
                if syncing {
                    // Until the resume is complete, messages may arrive ahead
                    // of the replay that fills the gap before them: hold our
                    // room's by id and show them, in order, at the barrier.
                    if *room == self.room {
                        self.held.insert(*id, frame);
                    }
                    return;
                }
                if *history && *room != self.room {
                    return;
                }
                let seen = self.last_seen.entry(room.clone()).or_insert(0);
                if *id <= *seen {
                    return;
                }
                *seen = *id;
                if from.eq_ignore_ascii_case(&self.me) {
                    return;
                }
            }
            ServerFrame::Private { from, to, cid, .. } => {
                if let Some(cid) = cid {
                    self.unacked.retain(|(c, _)| c != cid);
                    self.progress();
                }
                if from.eq_ignore_ascii_case(&self.me) && !to.eq_ignore_ascii_case(&self.me) {
                    return;
                }
            }
            ServerFrame::Gap {
                room, epoch, first, ..
            } => {
                self.epoch = Some(*epoch);
                if first.is_none() {
                    // A new history: its ids start again.
                    self.last_seen.insert(room.clone(), 0);
                }
            }
            ServerFrame::Joined { nick, .. } | ServerFrame::Left { nick, .. }
                if syncing && nick.eq_ignore_ascii_case(&self.me) =>
            {
                return;
            }
            ServerFrame::Renamed { old, new } if old.eq_ignore_ascii_case(&self.me) => {
                self.me.clone_from(new);
                self.nick = Some(new.clone());
                if syncing {
                    return;
                }
            }
            ServerFrame::Error {
                code: code @ (ErrorCode::RateLimited | ErrorCode::Unavailable),
                cid: Some(cid),
                text,
            } => {
                // Sent too fast after all, or not stored: queue it again and
                // wait a moment. The same cid makes a retry of a message that
                // was stored after all its acknowledgement, not a copy.
                if let Some(at) = self.unacked.iter().position(|(c, _)| c == cid) {
                    let (_, frame) = self.unacked.remove(at);
                    self.outbox.push_front(frame);
                    self.pace_at = Some(Instant::now() + Duration::from_secs(1));
                    if *code == ErrorCode::Unavailable && self.retrying.insert(cid.clone()) {
                        self.print_at(&format!("! {text} yet; sending it again"), None);
                    }
                    return;
                }
            }
            ServerFrame::Error { cid: Some(cid), .. } => {
                // Refused: it will not be stored, so it must not be resent.
                self.unacked.retain(|(c, _)| c != cid);
            }
            _ => {}
        }
        let line = frame.to_plain();
        let ts = match &frame {
            ServerFrame::Message { ts, .. } | ServerFrame::Private { ts, .. } => Some(*ts),
            _ => None,
        };
        self.print_at(&line, ts);
    }

    fn print(&mut self, line: &str) {
        self.print_at(line, None);
    }

    /// Prints a transcript line. What the server sent is shown, never
    /// obeyed: control characters are made visible (an older server may
    /// pass them on).
    fn print_at(&mut self, line: &str, ts: Option<u64>) {
        let line = timestamped(&visible(line), ts, self.config.timestamps);
        self.out.line(&line);
    }

    /// Prints a status line (stderr), control characters made visible.
    fn status(&mut self, line: &str) {
        self.out.status(&visible(line));
    }
}

/// What a typed line asks for.
enum LineAction {
    Quit,
    Send(ClientFrame),
    Nothing,
}

fn json(frame: &ClientFrame) -> Message {
    Message::text(serde_json::to_string(frame).unwrap_or_default())
}

async fn send_raw(ws: &mut Socket, message: Message) -> Result<(), SessionEnd> {
    ws.send(message).await.map_err(|err| lost(&err))
}

/// A connection that failed with `err`.
fn lost(err: &tokio_websockets::Error) -> SessionEnd {
    SessionEnd::Lost(Some(format!(
        "connection error: {}",
        describe_ws_error(err)
    )))
}
