//! The fan-out benchmark: a load generator that drives any WebSocket
//! broadcast server by URL and reports delivery, loss, latency and cost.
//!
//!     cargo bench --bench fanout -- --url ws://127.0.0.1:2000 --clients 1000 --senders 10 --rate 50 --duration 10 --pid PID
//!     cargo bench --bench fanout -- --scenario a --pid PID        (named scenarios: a-f)
//!
//! N clients connect (in bounded batches); S of them send text messages
//! open-loop at a total rate R for D seconds. Every message carries a token
//! `~W<step><sender><seq><micros>` that receivers find by substring in
//! whatever frame arrives, so the generator works against plain mode, JSON
//! mode and other servers alike. It runs on one thread (pin it to its own
//! core with taskset) and reports its own CPU next to every figure.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use http::header::SEC_WEBSOCKET_PROTOCOL;
use memchr::memmem;
use tokio::net::TcpStream;
use tokio::task::LocalSet;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, Clone, Parser)]
#[command(name = "fanout", about = "WebSocket broadcast load generator")]
struct Args {
    /// Server to drive.
    #[arg(long, default_value = "ws://127.0.0.1:2000")]
    url: String,
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
    /// The server's process id: report its CPU time per delivery and its RSS.
    #[arg(long)]
    pid: Option<u32>,
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
    /// A named scenario (a-f) that sets the figures above (flags given explicitly win).
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
            other => {
                eprintln!("error: unknown scenario {other:?} (a-f)");
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
    server_cpu_us: Option<f64>,
    server_rss_mib: Option<f64>,
    generator_cpu: f64,
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
            "{:>9} {:>8} {:>10} {:>10} {:>7} {:>11} {:>7} {:>7} {:>7} {:>7} {:>5} {:>9} {:>7} {:>6}",
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
            "gen%"
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
        println!(
            "{:>9.0} {:>8} {:>10} {:>10} {:>7} {:>11.0} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>5} {:>9} {:>7} {:>6.0}",
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

/// Resident set size of a process in MiB, from /proc.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn connect(url: &str, json: bool) -> Result<Socket, String> {
    let mut builder = ClientBuilder::new().uri(url).map_err(|e| e.to_string())?;
    if json {
        builder = builder
            .add_header(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static("wschat.v1"),
            )
            .map_err(|e| e.to_string())?;
    }
    let (ws, _) = builder.connect().await.map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Connects `count` clients, at most `batch` at a time.
async fn connect_all(url: &str, json: bool, count: usize) -> Vec<Socket> {
    const BATCH: usize = 200;
    let mut sockets = Vec::with_capacity(count);
    while sockets.len() < count {
        let n = BATCH.min(count - sockets.len());
        let batch = futures_util::future::join_all((0..n).map(|_| connect(url, json))).await;
        for socket in batch {
            match socket {
                Ok(socket) => sockets.push(socket),
                Err(err) => {
                    eprintln!("error: cannot connect to {url}: {err}");
                    std::process::exit(1);
                }
            }
        }
    }
    sockets
}

/// Reads one client's frames forever, counting tokens of the current step.
async fn receive(mut stream: SplitStream<Socket>, stats: Rc<RefCell<Stats>>, start: Instant) {
    let finder = memmem::Finder::new(b"~W");
    loop {
        match stream.next().await {
            Some(Ok(message)) => {
                let payload: &[u8] = message.as_payload();
                let now = start.elapsed().as_micros() as u64;
                let mut stats = stats.borrow_mut();
                for at in finder.find_iter(payload) {
                    let Some(token) = payload.get(at + 2..at + 2 + 27) else {
                        continue;
                    };
                    let step = digits(&token[0..2]);
                    if step != u64::from(stats.step) {
                        continue;
                    }
                    let sent = digits(&token[15..27]);
                    stats.received += 1;
                    stats.latency.record(now.saturating_sub(sent));
                }
            }
            Some(Err(_)) | None => {
                stats.borrow_mut().dropped += 1;
                return;
            }
        }
    }
}

fn digits(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0, |n, b| n * 10 + u64::from(b.wrapping_sub(b'0') % 10))
}

type Sink = SplitSink<Socket, Message>;

/// What one sender does in one step.
#[derive(Clone, Copy)]
struct Load {
    step: u8,
    /// How many senders share the rate (their phases are spread evenly).
    senders: usize,
    /// Messages per second for this sender.
    rate: f64,
    duration: Duration,
    size: usize,
    json: bool,
    /// The clock the tokens' send times are read from.
    start: Instant,
}

/// Sends open-loop for one step; returns the sink and how many were sent.
async fn send(mut sink: Sink, sender: usize, load: Load) -> (Sink, u64) {
    let Load {
        step,
        senders,
        rate,
        duration,
        size,
        json,
        start,
    } = load;
    let period = Duration::from_secs_f64(1.0 / rate);
    // Spread the senders' phases over one period, so the total rate arrives
    // evenly rather than as S messages at once every period.
    let phase = period.mul_f64(sender as f64 / senders.max(1) as f64);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + duration;
    let pad = "x".repeat(size.saturating_sub(29));
    let mut seq = 0u64;
    while Instant::now() < end {
        ticks.tick().await;
        let micros = start.elapsed().as_micros() as u64;
        let token = format!("~W{step:02}{sender:04}{seq:09}{micros:012}{pad}");
        let text = if json {
            format!(r#"{{"type":"say","text":"{token}"}}"#)
        } else {
            token
        };
        // A message written to the socket counts as sent, whether or not
        // the server keeps up.
        if sink.send(Message::text(text)).await.is_err() {
            break;
        }
        seq += 1;
    }
    (sink, seq)
}

struct Bench {
    args: Args,
    stats: Rc<RefCell<Stats>>,
    sinks: Vec<Sink>,
    start: Instant,
    _stalled: Vec<Socket>,
}

impl Bench {
    async fn measure(&mut self, rate: f64) -> Report {
        let args = &self.args;
        {
            let mut stats = self.stats.borrow_mut();
            stats.step = stats.step.wrapping_add(1) % 100;
            stats.received = 0;
            stats.latency = Histogram::new();
        }
        let dropped_before = self.stats.borrow().dropped;
        let step = self.stats.borrow().step;
        let duration = Duration::from_secs_f64(args.duration);
        let server_before = cpu_micros(args.pid).filter(|_| args.pid.is_some());
        let own_before = cpu_micros(None).unwrap_or(0.0);
        let began = Instant::now();
        let load = Load {
            step,
            senders: self.sinks.len(),
            rate: rate / self.sinks.len().max(1) as f64,
            duration,
            size: args.size,
            json: args.json,
            start: self.start,
        };
        let sends = std::mem::take(&mut self.sinks)
            .into_iter()
            .enumerate()
            .map(|(i, sink)| tokio::task::spawn_local(send(sink, i, load)));
        let mut sent = 0;
        for (sink, count) in futures_util::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
        {
            self.sinks.push(sink);
            sent += count;
        }
        let receivers = args.clients() as u64;
        let per_message = if args.json || args.echo {
            receivers
        } else {
            receivers - 1
        };
        let expected = sent * per_message;
        // Let what is in flight arrive (bounded).
        let drain_until = Instant::now() + Duration::from_secs(3);
        while self.stats.borrow().received < expected && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seconds = began.elapsed().as_secs_f64();
        let server_cpu_us = server_before.and_then(|before| Some(cpu_micros(args.pid)? - before));
        let own = cpu_micros(None).unwrap_or(0.0) - own_before;
        let stats = self.stats.borrow();
        Report {
            rate,
            sent,
            expected,
            received: stats.received,
            dropped: stats.dropped - dropped_before,
            seconds: seconds.min(args.duration).max(0.001),
            p50: stats.latency.quantile_ms(0.50),
            p90: stats.latency.quantile_ms(0.90),
            p99: stats.latency.quantile_ms(0.99),
            max: stats.latency.max as f64 / 1000.0,
            server_cpu_us,
            server_rss_mib: args.pid.and_then(rss_mib),
            generator_cpu: own / 1e6 / seconds,
        }
    }
}

/// Idle connections: the server's RSS before and after, per connection.
async fn idle(args: &Args) {
    let Some(pid) = args.pid else {
        eprintln!("error: --idle needs --pid");
        std::process::exit(2);
    };
    let before = rss_mib(pid).unwrap_or(0.0);
    let sockets = connect_all(&args.url, args.json, args.clients()).await;
    // Let the server finish greeting everyone before reading its RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_mib(pid).unwrap_or(0.0);
    let per = (after - before) * 1024.0 / args.clients() as f64;
    println!(
        "idle connections: {}  server RSS before {before:.1} MiB, after {after:.1} MiB: {per:.2} KiB per connection",
        sockets.len()
    );
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    LocalSet::new().block_on(&runtime, async move {
        if args.idle {
            return idle(&args).await;
        }
        let start = Instant::now();
        let stats = Rc::new(RefCell::new(Stats {
            step: 0,
            received: 0,
            dropped: 0,
            latency: Histogram::new(),
        }));
        let sockets = connect_all(&args.url, args.json, args.clients()).await;
        let stalled = connect_all(&args.url, args.json, args.stalled).await;
        let mut sinks = Vec::new();
        for (index, socket) in sockets.into_iter().enumerate() {
            let (sink, stream) = socket.split();
            tokio::task::spawn_local(receive(stream, stats.clone(), start));
            if index < args.senders() {
                sinks.push(sink);
            } else {
                // Keep the write half alive so the connection stays open.
                std::mem::forget(sink);
            }
        }
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
        let mut bench = Bench {
            args: args.clone(),
            stats,
            sinks,
            start,
            _stalled: stalled,
        };
        Report::print_header();
        if !args.find_max {
            bench.measure(args.rate).await.print();
            return;
        }
        // Grow by half until it fails, then bisect a few times.
        let mut good: Option<Report> = None;
        let mut rate = args.rate;
        let mut bad = None;
        let mut lost_clients;
        loop {
            let report = bench.measure(rate).await;
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
        if let (Some(ok), Some(mut high), false) =
            (good.as_ref().map(|r| r.rate), bad, lost_clients)
        {
            let mut low = ok;
            for _ in 0..3 {
                let mid = (low + high) / 2.0;
                let report = bench.measure(mid).await;
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
    });
}
