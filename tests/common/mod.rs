//! Shared test helpers: a real server on 127.0.0.1 port 0, real WebSocket
//! peers, spawned binaries, and a bounded wait on every await.
#![allow(dead_code)]

pub mod redis;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};
use wschat::config::ServerConfig;
use wschat::protocol::{SUBPROTOCOL, ServerFrame, WELCOME};
use wschat::server;

/// The longest any single expected event may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// Awaits `future` or fails the test naming what was awaited.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Starts a helper program (redis-server, chromedriver), waits until its
/// standard output shows `ready`, then keeps reading it so the program never
/// blocks on a full pipe. The program is killed when the `Child` is dropped.
pub async fn start_helper(command: &mut Command, name: &str, ready: &str) -> Child {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("start {name}: {err}"));
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    within(&format!("{name} to start"), async {
        while let Some(line) = lines.next_line().await.expect("read its output") {
            if line.contains(ready) {
                return;
            }
        }
        panic!("{name} ended before it was ready");
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// A server with default settings on a free port.
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    /// A server with adjusted settings on a free port.
    pub async fn with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::on_port(0, tweak).await
    }

    /// A server on a given port (0 for any).
    pub async fn on_port(port: u16, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::listening("127.0.0.1", port, tweak).await
    }

    /// A server listening on `host` (such as `0.0.0.0`, to be off
    /// loopback), reached by the tests at 127.0.0.1.
    pub async fn listening(host: &str, port: u16, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut config = ServerConfig::default();
        tweak(&mut config);
        let listener = server::bind(host, port).await.expect("bind");
        let mut addr = listener.local_addr().expect("local addr");
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            server::run(listener, config, shutdown)
                .await
                .expect("server run");
        });
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Shuts the server down gracefully and waits until it has finished.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("server shutdown", &mut self.task)
            .await
            .expect("server task");
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The TCP stream under a `ws://` connection.
// With TLS enabled `MaybeTlsStream` has more variants; these peers use ws://.
#[allow(irrefutable_let_patterns)]
fn plain_tcp(ws: &Socket) -> &TcpStream {
    let MaybeTlsStream::Plain(tcp) = ws.get_ref() else {
        unreachable!("test peers connect with ws://")
    };
    tcp
}

/// A WebSocket peer, written like the exercise's own client.
pub struct Peer {
    ws: Socket,
    /// The peer's own address, as the server sees it.
    pub addr: SocketAddr,
}

impl Peer {
    async fn connect(url: &str, json: bool) -> Self {
        let mut builder = ClientBuilder::new().uri(url).expect("uri");
        if json {
            builder = builder
                .add_header(
                    SEC_WEBSOCKET_PROTOCOL,
                    HeaderValue::from_static(SUBPROTOCOL),
                )
                .expect("header");
        }
        let (ws, _) = within("websocket connect", builder.connect())
            .await
            .expect("connect");
        let addr = plain_tcp(&ws).local_addr().expect("local addr");
        Self { ws, addr }
    }

    /// A plain-mode peer, past its welcome line and its own join notice.
    ///
    /// Notices about others may come before its own: a peer whose end the
    /// server notices while this one is joining leaves in between.
    pub async fn plain(url: &str) -> Self {
        let mut peer = Self::connect(url, false).await;
        peer.expect(WELCOME).await;
        let own = format!("* {} joined lobby", peer.addr);
        loop {
            let line = peer.text().await;
            if line == own {
                return peer;
            }
            assert!(
                line.starts_with("* ") && line.ends_with(" left lobby"),
                "expected {own:?}, got {line:?}"
            );
        }
    }

    /// A plain-mode peer straight after the handshake (nothing read yet).
    pub async fn plain_raw(url: &str) -> Self {
        Self::connect(url, false).await
    }

    /// A JSON-mode peer straight after the handshake (nothing read yet).
    pub async fn json(url: &str) -> Self {
        Self::connect(url, true).await
    }

    /// A JSON-mode peer past its welcome and its own `joined`; with the
    /// welcome's epoch.
    pub async fn json_joined(url: &str) -> (Self, u64) {
        let mut peer = Self::json(url).await;
        let ServerFrame::Welcome { epoch, .. } = peer.frame().await else {
            panic!("expected welcome");
        };
        let own = peer.name();
        loop {
            if let ServerFrame::Joined { nick, .. } = peer.frame().await
                && nick == own
            {
                return (peer, epoch);
            }
        }
    }

    /// The peer's name before it picks a nick.
    pub fn name(&self) -> String {
        self.addr.to_string()
    }

    pub async fn send(&mut self, text: &str) {
        within("send", self.ws.send(Message::text(text.to_owned())))
            .await
            .expect("send");
    }

    pub async fn send_message(&mut self, message: Message) {
        within("send", self.ws.send(message)).await.expect("send");
    }

    /// The next frame other than ping/pong; `None` once the stream ended.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            let message = within("a frame", self.ws.next()).await?;
            let message = message.expect("frame");
            if !message.is_ping() && !message.is_pong() {
                return Some(message);
            }
        }
    }

    /// The next frame other than ping/pong; `None` once the stream ended
    /// or broke (a server killed mid-stream resets the connection).
    pub async fn next_or_end(&mut self) -> Option<Message> {
        loop {
            let message = within("a frame", self.ws.next()).await?.ok()?;
            if !message.is_ping() && !message.is_pong() {
                return Some(message);
            }
        }
    }

    /// The next frame of any kind, pings included.
    pub async fn next_any(&mut self) -> Message {
        within("a frame", self.ws.next())
            .await
            .expect("stream ended")
            .expect("frame")
    }

    /// The next text frame.
    pub async fn text(&mut self) -> String {
        let message = self
            .next()
            .await
            .expect("stream ended, expected a text frame");
        if let Some((code, reason)) = message.as_close() {
            panic!(
                "expected a text frame, got close {} {reason}",
                u16::from(code)
            );
        }
        message.as_text().expect("text frame").to_owned()
    }

    /// Asserts the next text frame is exactly `line`.
    pub async fn expect(&mut self, line: &str) {
        assert_eq!(self.text().await, line);
    }

    /// The next frame, parsed as a JSON-mode server frame.
    pub async fn frame(&mut self) -> ServerFrame {
        let text = self.text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON {text:?}: {e}"))
    }

    /// Sends `join` for `room` with the resume point `after` of `epoch`,
    /// then `who`; returns every frame up to the `who` answer (requests are
    /// answered in order, so the replay is complete by then).
    pub async fn resume_room(&mut self, room: &str, after: u64, epoch: u64) -> Vec<ServerFrame> {
        self.send(&format!(
            r#"{{"type":"join","room":"{room}","after":{after},"epoch":{epoch}}}"#
        ))
        .await;
        self.send(r#"{"type":"who"}"#).await;
        let mut frames = Vec::new();
        loop {
            match self.frame().await {
                ServerFrame::Members { .. } => return frames,
                frame => frames.push(frame),
            }
        }
    }

    /// Reads until the server's close frame; returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        while let Some(message) = self.next().await {
            if let Some((code, reason)) = message.as_close() {
                return (u16::from(code), reason.to_owned());
            }
        }
        panic!("stream ended without a close frame");
    }

    /// Drops the connection with a TCP reset: no close frame, as a killed client would.
    pub fn reset(self) {
        plain_tcp(&self.ws).set_zero_linger().expect("SO_LINGER 0");
    }

    /// Sends a close frame and waits for the server's reply.
    pub async fn close(mut self) {
        let _ = within("close", self.ws.close()).await;
    }
}

/// The whole answer (head and Prometheus text) to `GET /metrics`.
pub async fn metrics(addr: SocketAddr) -> String {
    let mut stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    within("metrics", stream.read_to_string(&mut answer))
        .await
        .expect("read");
    answer
}

/// The value of the sample named `name` (with its labels, if any) in a
/// `/metrics` answer.
pub fn metric(answer: &str, name: &str) -> Option<f64> {
    answer
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Reads a raw HTTP response head (status line and headers) from a TCP stream.
pub async fn http_status(stream: &mut TcpStream) -> u16 {
    read_response_head(stream).await.0
}

/// Reads a response head; returns its status and any bytes read past it.
pub async fn read_response_head(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = within("http response", stream.read(&mut chunk))
            .await
            .expect("read");
        if n == 0 {
            break buf.len();
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(end);
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status.parse().expect("numeric status"), rest)
}

/// Sends a raw HTTP request and returns the response status.
pub async fn http_request(addr: SocketAddr, request: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    http_status(&mut stream).await
}

/// A spawned binary with its output read line by line.
///
/// Its stdout and stderr are drained continuously by background tasks: a
/// child whose pipe fills up would block in a write and stall.
pub struct Proc {
    pub child: Child,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
}

/// Forwards every line of a child's output to a channel until it closes.
fn drain<R: AsyncRead + Unpin + Send + 'static>(pipe: R) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Proc {
    /// Spawns one of this package's binaries with piped stdio.
    pub fn spawn(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(bin);
        command
            .args(args)
            .env_remove("WSCHAT_HOST")
            .env_remove("WSCHAT_PORT")
            .env_remove("WSCHAT_URL")
            .env_remove("RUST_LOG")
            .env_remove("WSCHAT_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn");
        let stdout = drain(child.stdout.take().expect("stdout"));
        let stderr = drain(child.stderr.take().expect("stderr"));
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Every stderr line still to come, until the process closes it.
    pub async fn err_rest(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(line) = within("stderr to close", self.stderr.recv()).await {
            lines.push(line);
        }
        lines
    }

    /// Writes one line to the process's stdin.
    pub async fn type_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin open");
        within(
            "stdin write",
            stdin.write_all(format!("{line}\n").as_bytes()),
        )
        .await
        .expect("write stdin");
    }

    /// Closes the process's stdin (end of input).
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// The next stdout line; `None` once stdout is closed.
    pub async fn out_line(&mut self) -> Option<String> {
        within("a stdout line", self.stdout.recv()).await
    }

    /// Reads stderr until a line containing `needle`; returns that line.
    pub async fn err_until(&mut self, needle: &str) -> String {
        within(&format!("stderr line containing {needle:?}"), async {
            loop {
                match self.stderr.recv().await {
                    Some(line) if line.contains(needle) => return line,
                    Some(_) => {}
                    None => panic!("stderr ended before a line containing {needle:?}"),
                }
            }
        })
        .await
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn exit_code(&mut self) -> i32 {
        let status = within("process exit", self.child.wait())
            .await
            .expect("wait");
        status.code().expect("exited normally")
    }

    /// Waits for the process to end, by exit or by signal.
    pub async fn ended(&mut self) -> std::process::ExitStatus {
        within("process end", self.child.wait())
            .await
            .expect("wait")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends a signal by name (TERM, INT, KILL).
    pub fn signal(&self, name: &str) {
        send_signal(self.pid(), name);
    }
}

/// Sends process `pid` a signal by name (TERM, STOP, CONT...).
pub fn send_signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Sends `count` JSON messages of `text` (numbered) from `peer` and waits
/// for every acknowledgement.
pub async fn say_many(peer: &mut Peer, count: usize, text: &str) {
    for n in 1..=count {
        peer.send(&format!(
            r#"{{"type":"say","text":"{n} {text}","cid":"fill{n}"}}"#
        ))
        .await;
    }
    let mut acked = 0;
    while acked < count {
        if let ServerFrame::Message { cid: Some(_), .. } = peer.frame().await {
            acked += 1;
        }
    }
}

/// The server binary, started on a free port; returns it and its URL.
pub async fn spawn_server(args: &[&str]) -> (Proc, String) {
    let mut all = vec!["--port", "0"];
    all.extend_from_slice(args);
    let mut proc = Proc::spawn(env!("CARGO_BIN_EXE_server"), &all, &[]);
    let line = proc.err_until("listening on ").await;
    let url = line
        .split("listening on ")
        .nth(1)
        .expect("url after 'listening on'")
        .trim()
        .to_owned();
    (proc, url)
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A hand-made WebSocket connection on a raw TCP socket, for sending what a
/// well-behaved client library would refuse to send.
pub struct RawPeer {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A frame from the server as the raw peer reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum RawFrame {
    Text(String),
    Ping,
    Pong(Vec<u8>),
    Close(u16, String),
}

impl RawPeer {
    /// Sends an upgrade request with extra header lines; returns the HTTP status
    /// and, for 101, the upgraded connection.
    pub async fn upgrade(addr: SocketAddr, target: &str, headers: &[&str]) -> (u16, Option<Self>) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::upgrade_over(stream, addr, target, headers).await
    }

    /// [`Self::upgrade`] over a TCP connection already made (from an
    /// address of the test's choosing).
    pub async fn upgrade_over(
        mut stream: TcpStream,
        addr: SocketAddr,
        target: &str,
        headers: &[&str],
    ) -> (u16, Option<Self>) {
        let mut request = format!(
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        );
        for header in headers {
            request.push_str(header);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let (status, buf) = read_response_head(&mut stream).await;
        let peer = (status == 101).then_some(Self { stream, buf });
        (status, peer)
    }

    /// Sends one masked frame with the given opcode (1 text, 2 binary, 8 close).
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let frame = client_frame(true, 0, opcode, payload, [0x12, 0x34, 0x56, 0x78]);
        self.send_bytes(&frame).await;
    }

    /// Writes bytes as they are (any frames, well-formed or not).
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        within("raw write", self.stream.write_all(bytes))
            .await
            .expect("write bytes");
    }

    /// Reads the next server frame; `None` at end of stream.
    pub async fn frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            let n = within("a raw frame", self.stream.read(&mut chunk))
                .await
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until a close frame; returns its code and reason.
    pub async fn close_frame(&mut self) -> (u16, String) {
        loop {
            match self.frame().await {
                Some(RawFrame::Close(code, reason)) => return (code, reason),
                Some(_) => {}
                None => panic!("stream ended without a close frame"),
            }
        }
    }
}

/// A client frame: `fin`, the reserved bits `rsv` (0-7), `opcode`, masked
/// with `mask`, its length in the shortest form.
pub fn client_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

/// Parses one unmasked server frame from the front of `buf`.
fn parse_server_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0F;
    let (len, header) = match buf[1] & 0x7F {
        126 => (
            usize::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (usize::from(n), 2),
    };
    let payload = buf.get(header..header + len)?;
    let frame = match opcode {
        1 => RawFrame::Text(String::from_utf8_lossy(payload).into_owned()),
        9 => RawFrame::Ping,
        10 => RawFrame::Pong(payload.to_vec()),
        8 => {
            let code = payload
                .get(..2)
                .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
            let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
            RawFrame::Close(code, reason)
        }
        other => RawFrame::Text(format!("<opcode {other}>")),
    };
    Some((frame, header + len))
}

/// `N` plain-mode peers in the lobby, each past the join notices of the ones
/// that came after it, so all of them start from the same point.
pub async fn plain_peers<const N: usize>(url: &str) -> [Peer; N] {
    let mut peers: Vec<Peer> = Vec::with_capacity(N);
    for _ in 0..N {
        let newcomer = Peer::plain(url).await;
        let joined = format!("* {} joined lobby", newcomer.name());
        for peer in &mut peers {
            peer.expect(&joined).await;
        }
        peers.push(newcomer);
    }
    match peers.try_into() {
        Ok(peers) => peers,
        Err(_) => unreachable!("exactly N peers"),
    }
}

/// Property-test settings: `n` cases, unless PROPTEST_CASES asks for a longer run.
pub fn cases(n: u32) -> proptest::test_runner::Config {
    let mut config = proptest::test_runner::Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = n;
    }
    config
}
