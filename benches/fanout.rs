//! The fan-out benchmark: a load generator that drives any WebSocket
//! broadcast server by URL and reports delivery, loss, latency and cost.
//!
//!     cargo bench --bench fanout -- --url ws://127.0.0.1:2000 --clients 1000 --senders 10 --rate 50 --duration 10 --pid PID
//!     cargo bench --bench fanout -- --scenario a --pid PID        (named scenarios: a-h)
//!
//! N clients connect (one at a time); S of them send text messages open-loop
//! at a total rate R for D seconds. Every message carries a token
//! `~W<step><sender><seq><micros>` that receivers find by substring in
//! whatever frame arrives, so the generator works against plain mode, JSON
//! mode and other servers alike.
//!
//! The generator must not be the bottleneck, so it is one thread running one
//! event loop (mio, edge-triggered) over every socket: a ready socket is read
//! with one large `read` into a shared scratch buffer, whole frames are parsed
//! in place and searched for tokens without allocating, and a short read
//! counts as drained. Pin it to its own core with taskset; it reports its own
//! CPU next to every figure. Only loopback servers are accepted.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use clap::Parser;
use memchr::memmem;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

#[derive(Debug, Clone, Parser)]
#[command(name = "fanout", about = "WebSocket broadcast load generator")]
struct Args {
    /// Server to drive; give it several times (nodes of one chat) to spread
    /// the clients over them round-robin.
    #[arg(long = "url", default_value = "ws://127.0.0.1:2000")]
    urls: Vec<String>,
    /// Connected clients (N) [default: 100, or the scenario's].
    #[arg(long)]
    clients: Option<usize>,
    /// Clients that send (S), the first S of N [default: 10, or the scenario's].
    #[arg(long)]
    senders: Option<usize>,
    /// Messages per second, all senders together (R).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of sending per measurement (D).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Approximate payload size in bytes.
    #[arg(long, default_value_t = 30)]
    size: usize,
    /// Speak the wschat.v1 JSON subprotocol (senders then get their own messages back).
    #[arg(long)]
    json: bool,
    /// The server sends every message back to its sender too.
    #[arg(long)]
    echo: bool,
    /// The server's process id: report its CPU time per delivery and its RSS;
    /// give it several times (the nodes of one chat and their Redis) for the
    /// sum of them all.
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Raise the rate step by step; report the highest with no loss, no drop
    /// and p99 <= 100 ms.
    #[arg(long)]
    find_max: bool,
    /// Extra clients that connect and never read.
    #[arg(long, default_value_t = 0)]
    stalled: usize,
    /// Only connect the clients and report the server's RSS per idle connection.
    #[arg(long)]
    idle: bool,
    /// Read the sockets in rounds this many microseconds apart instead of as
    /// soon as data arrives (0): more frames per read, for the throughput
    /// scenarios, at the cost of up to this much added latency
    /// [default: 0, or 1000 with --find-max].
    #[arg(long)]
    read_every: Option<u64>,
    /// Split the clients into this many rooms (client i joins `r<i mod K>`);
    /// each message then reaches its own room only.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// A named scenario (a-h) that sets the figures above (flags given explicitly win;
    /// h, scenario g at a fixed rate, takes its rate from --rate).
    #[arg(long)]
    scenario: Option<char>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn clients(&self) -> usize {
        self.clients.unwrap_or(100)
    }

    fn read_every(&self) -> Duration {
        let default = if self.find_max { 1000 } else { 0 };
        Duration::from_micros(self.read_every.unwrap_or(default))
    }

    fn senders(&self) -> usize {
        self.senders.unwrap_or(10).min(self.clients())
    }

    fn apply_scenario(&mut self) {
        let Some(name) = self.scenario else { return };
        let (clients, senders) = match name {
            'a' | 'c' | 'f' => (1000, 10),
            'b' => (100, 10),
            'd' => (5000, 0),
            'e' => (100, 100),
            'g' | 'h' => (1000, 1000),
            other => {
                eprintln!("error: unknown scenario {other:?} (a-h)");
                std::process::exit(2);
            }
        };
        self.clients = self.clients.or(Some(clients));
        self.senders = self.senders.or(Some(senders));
        match name {
            'c' => {
                self.rate = 50.0;
                self.find_max = false;
            }
            'd' => self.idle = true,
            'g' | 'h' => {
                self.rooms = 100;
                self.json = true;
                self.find_max = name == 'g';
            }
            'f' => {
                self.stalled = 1;
                self.find_max = true;
            }
            _ => self.find_max = true,
        }
    }
}

/// Log-spaced latency buckets (2% wide) in microseconds.
struct Histogram {
    counts: Vec<u64>,
    max: u64,
}

const GROWTH: f64 = 1.02;

impl Histogram {
    fn new() -> Self {
        Self {
            counts: vec![0; 1200],
            max: 0,
        }
    }

    fn record(&mut self, micros: u64) {
        let index = ((micros as f64 + 1.0).ln() / GROWTH.ln()) as usize;
        let last = self.counts.len() - 1;
        self.counts[index.min(last)] += 1;
        self.max = self.max.max(micros);
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper edge of the bucket holding quantile `q`, in milliseconds.
    fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        let target = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= target {
                let upper = GROWTH.powi(index as i32 + 1) - 1.0;
                return (upper / 1000.0).min(self.max as f64 / 1000.0);
            }
        }
        self.max as f64 / 1000.0
    }
}

/// What the receivers saw, shared on this one thread.
struct Stats {
    step: u8,
    received: u64,
    dropped: u64,
    latency: Histogram,
    /// Senders' own messages back (JSON mode): their acknowledgements.
    acks: Histogram,
    /// Socket reads and frames received in this step.
    reads: u64,
    frames: u64,
}

/// One measurement.
struct Report {
    rate: f64,
    sent: u64,
    expected: u64,
    received: u64,
    dropped: u64,
    seconds: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    /// The senders' acknowledgement latency (JSON mode).
    ack_p99: Option<f64>,
    server_cpu_us: Option<f64>,
    server_rss_mib: Option<f64>,
    generator_cpu: f64,
    /// Frames the generator got per socket read (higher is cheaper for it).
    frames_per_read: f64,
}

impl Report {
    fn loss(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }

    fn sustainable(&self) -> bool {
        self.sent > 0 && self.loss() == 0 && self.dropped == 0 && self.p99 <= 100.0
    }

    /// The generator used (nearly) its whole core: the figure is its limit,
    /// not necessarily the server's.
    fn generator_bound(&self) -> bool {
        self.generator_cpu >= 0.9
    }

    fn print_header() {
        println!(
            "{:>9} {:>8} {:>10} {:>10} {:>7} {:>11} {:>7} {:>7} {:>7} {:>7} {:>5} {:>9} {:>7} {:>6} {:>6} {:>7}",
            "msg/s",
            "sent",
            "expected",
            "received",
            "loss",
            "deliv/s",
            "p50ms",
            "p90ms",
            "p99ms",
            "maxms",
            "drop",
            "srv us/d",
            "srvMiB",
            "gen%",
            "f/read",
            "ackp99"
        );
    }

    fn print(&self) {
        let per_delivery = self
            .server_cpu_us
            .filter(|_| self.received > 0)
            .map(|us| format!("{:.2}", us / self.received as f64))
            .unwrap_or_else(|| "-".into());
        let rss = self
            .server_rss_mib
            .map(|m| format!("{m:.1}"))
            .unwrap_or_else(|| "-".into());
        let ack = self
            .ack_p99
            .map(|ms| format!("{ms:.2}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:>9.0} {:>8} {:>10} {:>10} {:>7} {:>11.0} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>5} {:>9} {:>7} {:>6.0} {:>6.1} {:>7}",
            self.rate,
            self.sent,
            self.expected,
            self.received,
            self.loss(),
            self.received as f64 / self.seconds,
            self.p50,
            self.p90,
            self.p99,
            self.max,
            self.dropped,
            per_delivery,
            rss,
            self.generator_cpu * 100.0,
            self.frames_per_read,
            ack,
        );
        if self.generator_bound() {
            println!("          ^ generator-bound: the load generator saturated its core");
        }
    }
}

/// CPU time (user + system) of a process, in microseconds, from /proc.
fn cpu_micros(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // Linux reports these in clock ticks of 1/100 s on every common configuration.
    Some(ticks * 10_000.0)
}

/// A figure summed over the server's processes (`None` without any, or
/// when one of them is gone).
fn summed(pids: &[u32], each: impl Fn(u32) -> Option<f64>) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| each(pid)).sum()
}

/// CPU time of the server's processes together, in microseconds.
fn server_cpu_micros(pids: &[u32]) -> Option<f64> {
    summed(pids, |pid| cpu_micros(Some(pid)))
}

/// Resident set size of the server's processes together, in MiB.
fn server_rss_mib(pids: &[u32]) -> Option<f64> {
    summed(pids, rss_mib)
}

/// Resident set size of a process in MiB, from /proc.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Where the server listens, from a `ws://` URL on the loopback interface.
struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
        if uri.scheme_str() != Some("ws") {
            return Err(format!("{url}: only ws:// URLs are supported"));
        }
        let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("{url}: {e}"))?
            .find(|a| a.ip().is_loopback())
            .ok_or_else(|| format!("{url}: benchmarks only target the loopback interface"))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        Ok(Self {
            addr,
            host: format!("{host}:{port}"),
            path,
        })
    }
}

/// Opens one WebSocket connection (blocking); returns the socket and any
/// bytes that arrived after the 101 response.
fn handshake(target: &Target, json: bool) -> io::Result<(StdTcpStream, Vec<u8>)> {
    let mut socket = StdTcpStream::connect_timeout(&target.addr, Duration::from_secs(10))?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    let protocol = if json {
        "Sec-WebSocket-Protocol: wschat.v1\r\n"
    } else {
        ""
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n",
        target.path, target.host
    );
    socket.write_all(request.as_bytes())?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = socket.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::other("closed during the handshake"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = memmem::find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err(io::Error::other("response head too long"));
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
        return Err(io::Error::other(format!(
            "refused: {}",
            String::from_utf8_lossy(line)
        )));
    }
    socket.set_read_timeout(None)?;
    socket.set_nonblocking(true)?;
    Ok((socket, buf.split_off(end)))
}

/// Every `--url`, parsed.
fn targets(urls: &[String]) -> Result<Vec<Target>, String> {
    urls.iter().map(|url| Target::parse(url)).collect()
}

/// Connects `count` clients one after another, client i to target i mod
/// the number of targets, or exits with one line.
fn connect_all(targets: &[Target], json: bool, count: usize) -> Vec<(StdTcpStream, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let target = &targets[i % targets.len()];
            handshake(target, json).unwrap_or_else(|err| {
                eprintln!("error: cannot connect to {}: {err}", target.addr);
                std::process::exit(1);
            })
        })
        .collect()
}

/// One connected client.
struct Client {
    stream: TcpStream,
    /// The start of a frame not yet complete.
    partial: Vec<u8>,
    /// Bytes of our own frames the socket did not take yet.
    outbox: Vec<u8>,
    open: bool,
}

/// Calls `each(opcode, payload)` for every whole frame at the front of
/// `data`; returns how many bytes they took.
fn parse_frames(data: &[u8], mut each: impl FnMut(u8, &[u8])) -> usize {
    let mut at = 0;
    loop {
        let rest = &data[at..];
        if rest.len() < 2 {
            return at;
        }
        let (len, mut head) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            127 if rest.len() >= 10 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&rest[2..10]);
                (u64::from_be_bytes(len) as usize, 10)
            }
            126 | 127 => return at,
            len => (usize::from(len), 2),
        };
        if rest[1] & 0x80 != 0 {
            head += 4;
        }
        let Some(payload) = rest.get(head..head + len) else {
            return at;
        };
        each(rest[0] & 0x0f, payload);
        at += head + len;
    }
}

/// A masked client frame (clients must mask what they send).
fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

fn digits(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0, |n, b| n * 10 + u64::from(b.wrapping_sub(b'0') % 10))
}

/// Counts the tokens of the current step in one frame's payload, received
/// by client `client`; a sender's own message back is its acknowledgement.
fn count_tokens(
    finder: &memmem::Finder<'_>,
    payload: &[u8],
    now: u64,
    client: usize,
    stats: &mut Stats,
) {
    for at in finder.find_iter(payload) {
        let Some(token) = payload.get(at + 2..at + 2 + 27) else {
            continue;
        };
        if digits(&token[0..2]) != u64::from(stats.step) {
            continue;
        }
        let sent = digits(&token[15..27]);
        stats.received += 1;
        stats.latency.record(now.saturating_sub(sent));
        if digits(&token[2..6]) == client as u64 {
            stats.acks.record(now.saturating_sub(sent));
        }
    }
}

/// The event loop over every client socket.
struct Generator {
    args: Args,
    poll: Poll,
    events: Events,
    clients: Vec<Client>,
    scratch: Vec<u8>,
    stats: Stats,
    start: Instant,
    mask: u32,
    _stalled: Vec<StdTcpStream>,
}

/// The largest read; bigger than any frame a chat server sends, so a
/// partial frame carried over always fits in front of the next read.
const SCRATCH: usize = 1 << 20;

impl Generator {
    fn new(args: Args) -> Result<Self, String> {
        let target = targets(&args.urls)?;
        let poll = Poll::new().map_err(|e| e.to_string())?;
        let start = Instant::now();
        let mut stats = Stats {
            step: 0,
            received: 0,
            dropped: 0,
            latency: Histogram::new(),
            acks: Histogram::new(),
            reads: 0,
            frames: 0,
        };
        let scratch = vec![0u8; SCRATCH];
        let finder = memmem::Finder::new(b"~W");
        let mut clients = Vec::with_capacity(args.clients());
        for (index, (socket, early)) in connect_all(&target, args.json, args.clients())
            .into_iter()
            .enumerate()
        {
            if args.rooms > 1 {
                let room = format!("r{}", index % args.rooms);
                let join = if args.json {
                    format!(r#"{{"type":"join","room":"{room}"}}"#)
                } else {
                    format!("/join {room}")
                };
                let mut socket = &socket;
                socket
                    .write_all(&client_frame(0x1, join.as_bytes(), [1, 2, 3, 4]))
                    .map_err(|e| format!("joining {room}: {e}"))?;
            }
            let mut stream = TcpStream::from_std(socket);
            let interest = if index < args.senders() {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            poll.registry()
                .register(&mut stream, Token(index), interest)
                .map_err(|e| e.to_string())?;
            // What came with the 101 is greetings; frames only matter whole.
            let mut partial = Vec::new();
            let used = parse_frames(&early, |_, payload| {
                count_tokens(&finder, payload, 0, index, &mut stats)
            });
            partial.extend_from_slice(&early[used..]);
            clients.push(Client {
                stream,
                partial,
                outbox: Vec::new(),
                open: true,
            });
        }
        let stalled = connect_all(&target, args.json, args.stalled)
            .into_iter()
            .map(|(socket, _)| socket)
            .collect();
        let mut generator = Self {
            args,
            poll,
            events: Events::with_capacity(4096),
            clients,
            scratch,
            stats,
            start,
            mask: 0x9e37_79b9,
            _stalled: stalled,
        };
        generator.settle();
        Ok(generator)
    }

    /// Reads the greetings (welcome, history, join notices) until the
    /// sockets go quiet, so none of it is taken for this run's messages.
    fn settle(&mut self) {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if self
                .poll
                .poll(&mut self.events, Some(Duration::from_millis(200)))
                .is_ok()
                && self.events.is_empty()
            {
                return;
            }
            let ready: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
            for index in ready {
                self.read(index);
            }
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift32: masks only need to vary, not to be secret.
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        self.mask.to_be_bytes()
    }

    /// Handles the sockets that are ready by `timeout`; when reading in
    /// rounds, waits out the round first.
    fn wait(&mut self, timeout: Duration) {
        let every = self.args.read_every();
        if every.is_zero() {
            return self.turn(timeout);
        }
        std::thread::sleep(every.min(timeout.max(Duration::from_micros(1))));
        self.turn(Duration::ZERO);
    }

    /// Waits up to `timeout` for sockets and handles what is ready.
    fn turn(&mut self, timeout: Duration) {
        if let Err(err) = self.poll.poll(&mut self.events, Some(timeout))
            && err.kind() != io::ErrorKind::Interrupted
        {
            eprintln!("error: poll: {err}");
            std::process::exit(1);
        }
        let ready: Vec<(usize, bool, bool)> = self
            .events
            .iter()
            .map(|e| (e.token().0, e.is_readable(), e.is_writable()))
            .collect();
        for (index, readable, writable) in ready {
            if writable {
                self.flush(index);
            }
            if readable {
                self.read(index);
            }
        }
    }

    /// Reads one client until its socket is drained.
    fn read(&mut self, index: usize) {
        let finder = memmem::Finder::new(b"~W");
        let mut pings = Vec::new();
        loop {
            let client = &mut self.clients[index];
            if !client.open {
                return;
            }
            let carried = client.partial.len();
            self.scratch[..carried].copy_from_slice(&client.partial);
            client.partial.clear();
            let n = match client.stream.read(&mut self.scratch[carried..]) {
                Ok(0) => return self.lose(index),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    client.partial.extend_from_slice(&self.scratch[..carried]);
                    return;
                }
                Err(_) => return self.lose(index),
            };
            let now = self.start.elapsed().as_micros() as u64;
            let data = &self.scratch[..carried + n];
            let mut closed = false;
            let stats = &mut self.stats;
            stats.reads += 1;
            let used = parse_frames(data, |opcode, payload| match opcode {
                0..=2 => {
                    stats.frames += 1;
                    count_tokens(&finder, payload, now, index, stats);
                }
                8 => closed = true,
                9 => pings.push(payload.to_vec()),
                _ => {}
            });
            client.partial.extend_from_slice(&data[used..]);
            if closed {
                return self.lose(index);
            }
            for payload in pings.drain(..) {
                let mask = self.next_mask();
                self.write(index, &client_frame(0xa, &payload, mask));
            }
            // A read that did not fill the buffer emptied the socket.
            if carried + n < SCRATCH {
                return;
            }
        }
    }

    /// A client the server closed (or that failed).
    fn lose(&mut self, index: usize) {
        let client = &mut self.clients[index];
        if std::mem::replace(&mut client.open, false) {
            let _ = self.poll.registry().deregister(&mut client.stream);
            self.stats.dropped += 1;
        }
    }

    /// Writes a frame, keeping what the socket does not take for later.
    fn write(&mut self, index: usize, frame: &[u8]) {
        self.clients[index].outbox.extend_from_slice(frame);
        self.flush(index);
    }

    fn flush(&mut self, index: usize) {
        let client = &mut self.clients[index];
        while client.open && !client.outbox.is_empty() {
            match client.stream.write(&client.outbox) {
                Ok(n) => {
                    client.outbox.drain(..n);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.lose(index),
            }
        }
    }

    /// Sends one token message from sender `sender`.
    fn send(&mut self, sender: usize, seq: u64, pad: &str) {
        let micros = self.start.elapsed().as_micros() as u64;
        let step = self.stats.step;
        let token = format!("~W{step:02}{sender:04}{seq:09}{micros:012}{pad}");
        let text = if self.args.json {
            format!(r#"{{"type":"say","text":"{token}"}}"#)
        } else {
            token
        };
        let mask = self.next_mask();
        self.write(sender, &client_frame(0x1, text.as_bytes(), mask));
    }

    /// One measurement at `rate` messages per second (all senders together).
    fn measure(&mut self, rate: f64) -> Report {
        self.stats.step = self.stats.step.wrapping_add(1) % 100;
        self.stats.received = 0;
        self.stats.latency = Histogram::new();
        self.stats.acks = Histogram::new();
        self.stats.reads = 0;
        self.stats.frames = 0;
        let dropped_before = self.stats.dropped;
        let senders = self.args.senders();
        let duration = Duration::from_secs_f64(self.args.duration);
        let server_before = server_cpu_micros(&self.args.pids);
        let own_before = cpu_micros(None).unwrap_or(0.0);
        let pad = "x".repeat(self.args.size.saturating_sub(29));
        let began = Instant::now();
        let end = began + duration;
        // Each sender sends every `period`; their phases are spread evenly, so
        // the total rate arrives as evenly spaced messages.
        let period = Duration::from_secs_f64(senders as f64 / rate);
        let mut due: Vec<Instant> = (0..senders)
            .map(|i| began + period.mul_f64(i as f64 / senders as f64))
            .collect();
        let mut seqs = vec![0u64; senders];
        let mut sent = 0;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            for sender in 0..senders {
                while due[sender] <= now {
                    if self.clients[sender].open {
                        self.send(sender, seqs[sender], &pad);
                        seqs[sender] += 1;
                        sent += 1;
                    }
                    due[sender] += period;
                }
            }
            let next = due.iter().min().copied().unwrap_or(end).min(end);
            self.wait(next.saturating_duration_since(Instant::now()));
        }
        let receivers = (self.args.clients() / self.args.rooms.max(1)) as u64;
        let per_message = if self.args.json || self.args.echo {
            receivers
        } else {
            receivers - 1
        };
        let expected = sent * per_message;
        // Let what is in flight arrive (bounded).
        let drain_until = Instant::now() + Duration::from_secs(3);
        while self.stats.received < expected && Instant::now() < drain_until {
            self.wait(Duration::from_millis(10));
        }
        let seconds = began.elapsed().as_secs_f64();
        let server_cpu_us =
            server_before.and_then(|before| Some(server_cpu_micros(&self.args.pids)? - before));
        let own = cpu_micros(None).unwrap_or(0.0) - own_before;
        let stats = &self.stats;
        Report {
            rate,
            sent,
            expected,
            received: stats.received,
            dropped: stats.dropped - dropped_before,
            seconds: seconds.min(self.args.duration).max(0.001),
            p50: stats.latency.quantile_ms(0.50),
            p90: stats.latency.quantile_ms(0.90),
            p99: stats.latency.quantile_ms(0.99),
            ack_p99: (stats.acks.total() > 0).then(|| stats.acks.quantile_ms(0.99)),
            max: stats.latency.max as f64 / 1000.0,
            server_cpu_us,
            server_rss_mib: server_rss_mib(&self.args.pids),
            generator_cpu: own / 1e6 / seconds,
            frames_per_read: stats.frames as f64 / stats.reads.max(1) as f64,
        }
    }
}

/// Idle connections: the server's RSS before and after, per connection.
fn idle(args: &Args) -> Result<(), String> {
    if args.pids.is_empty() {
        return Err("--idle needs --pid".into());
    }
    let target = targets(&args.urls)?;
    let before = server_rss_mib(&args.pids).unwrap_or(0.0);
    let sockets = connect_all(&target, args.json, args.clients());
    // Let the server finish greeting everyone before reading its RSS.
    std::thread::sleep(Duration::from_secs(2));
    let after = server_rss_mib(&args.pids).unwrap_or(0.0);
    let per = (after - before) * 1024.0 / args.clients() as f64;
    println!(
        "idle connections: {}  server RSS before {before:.1} MiB, after {after:.1} MiB: {per:.2} KiB per connection",
        sockets.len()
    );
    Ok(())
}

/// Raises the soft open-files limit to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn main() {
    let mut args = Args::parse();
    args.apply_scenario();
    raise_fd_limit();
    if let Err(err) = run(args) {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    if args.idle {
        return idle(&args);
    }
    let mut generator = Generator::new(args.clone())?;
    println!(
        "{} clients ({} sending{}), {} s per step, ~{} byte messages, {} mode",
        args.clients(),
        args.senders(),
        if args.stalled > 0 {
            format!(", {} never reading", args.stalled)
        } else {
            String::new()
        },
        args.duration,
        args.size,
        if args.json { "JSON" } else { "plain" },
    );
    Report::print_header();
    if !args.find_max {
        generator.measure(args.rate).print();
        return Ok(());
    }
    // Grow by half until it fails, then bisect a few times.
    let mut good: Option<Report> = None;
    let mut rate = args.rate;
    let mut bad = None;
    let mut lost_clients;
    loop {
        let report = generator.measure(rate);
        report.print();
        lost_clients = report.dropped > 0;
        if report.sustainable() {
            good = Some(report);
            rate *= 1.5;
        } else {
            bad = Some(rate);
            break;
        }
        if rate > 1e7 {
            break;
        }
    }
    // Dropped connections do not come back: bisecting needs them all.
    if let (Some(ok), Some(mut high), false) = (good.as_ref().map(|r| r.rate), bad, lost_clients) {
        let mut low = ok;
        for _ in 0..3 {
            let mid = (low + high) / 2.0;
            let report = generator.measure(mid);
            report.print();
            if report.dropped > 0 {
                break;
            }
            if report.sustainable() {
                low = mid;
                good = Some(report);
            } else {
                high = mid;
            }
        }
    }
    if lost_clients {
        println!("(the server closed lagging clients: bisection skipped)");
    }
    match good {
        Some(best) => {
            println!("max sustainable:");
            Report::print_header();
            best.print();
        }
        None => println!("max sustainable: none (the starting rate already failed)"),
    }
    Ok(())
}
