//! The attacker for the benchmark's abuse scenario: one process that runs,
//! in turn, every attack the server must shrug off, against a loopback
//! server, for a bounded time.
//!
//!     cargo bench --bench abuse -- --url ws://127.0.0.1:2000 --duration 30
//!
//! Each attack runs for `--each` seconds, then the next; the cycle repeats
//! until `--duration` is over, and every socket is closed on the way out.
//! The attacker connects from 127.0.0.2, so the server can tell it from the
//! legitimate load (from 127.0.0.1), as it would tell two hosts apart.
//! It prints how many actions each attack got done, so a run shows that the
//! attacks did run. Only loopback servers are accepted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

#[derive(Debug, Parser)]
#[command(name = "abuse", about = "runs the attacks wschat must withstand")]
struct Args {
    /// Server to attack (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:2000")]
    url: String,
    /// Seconds in all.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Seconds per attack.
    #[arg(long, default_value_t = 3.0)]
    each: f64,
    /// Run only the attacks whose name contains this (e.g. `flood`).
    #[arg(long)]
    only: Option<String>,
    /// Leave out the attacks whose name contains this.
    #[arg(long)]
    skip: Option<String>,
}

/// A TCP connection to `addr` from the attacker's own address, 127.0.0.2.
async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((std::net::Ipv4Addr::new(127, 0, 0, 2), 0).into())?;
    socket.connect(addr).await
}

/// A handshake request for `addr`, plain mode unless `json`.
fn upgrade_request(addr: SocketAddr, target: &str, json: bool) -> String {
    let protocol = if json {
        "Sec-WebSocket-Protocol: wschat.v1\r\n"
    } else {
        ""
    };
    format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{protocol}\r\n"
    )
}

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
    }
    let mask = [7, 1, 4, 2];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

fn text(payload: &str) -> Vec<u8> {
    frame(0x81, payload.as_bytes())
}

/// Opens a WebSocket (101 read, nothing else); `None` if refused or closed.
async fn open(addr: SocketAddr, target: &str, json: bool) -> Option<TcpStream> {
    let mut stream = connect(addr).await.ok()?;
    stream
        .write_all(upgrade_request(addr, target, json).as_bytes())
        .await
        .ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match timeout(Duration::from_secs(5), stream.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => return None,
        }
    }
    head.starts_with(b"HTTP/1.1 101").then_some(stream)
}

/// Reads and throws away whatever the server sends, until it closes.
async fn drain(mut stream: TcpStream) {
    let mut sink = vec![0u8; 16 * 1024];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// One attack for `within`; returns the actions it got done.
type Attack = fn(SocketAddr, Duration) -> std::pin::Pin<Box<dyn Future<Output = u64> + Send>>;

/// Joins ever new rooms on one connection, reading the answers.
async fn many_rooms(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    let mut done = 0;
    while Instant::now() < end {
        let Some(mut ws) = open(addr, "/", false).await else {
            sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut sink = vec![0u8; 16 * 1024];
        while Instant::now() < end {
            if ws
                .write_all(&text(&format!("/join r{done}")))
                .await
                .is_err()
            {
                break;
            }
            done += 1;
            if !matches!(timeout(Duration::from_secs(1), ws.read(&mut sink)).await, Ok(Ok(n)) if n > 0)
            {
                break;
            }
        }
    }
    done
}

/// Sockets that trickle a request head, one byte every few seconds, or
/// say nothing at all.
async fn slow_handshakes(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    let mut sockets = Vec::new();
    for _ in 0..1500 {
        if let Ok(stream) = connect(addr).await {
            sockets.push(stream);
        }
    }
    let opened = sockets.len() as u64;
    let request = upgrade_request(addr, "/", false).into_bytes();
    let mut at = 0;
    while Instant::now() < end && at < request.len() {
        for socket in sockets.iter_mut().take(300) {
            let _ = socket.write_all(&request[at..=at]).await;
        }
        at += 1;
        sleep(Duration::from_secs(3).min(end.saturating_duration_since(Instant::now()))).await;
    }
    opened
}

/// Connections that ask for big answers (whole history, member lists)
/// and never read them.
async fn greedy_readers(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    let mut asked = 0;
    let mut hogs = Vec::new();
    for _ in 0..20 {
        if let Some(ws) = open(addr, "/", true).await {
            hogs.push(ws);
        }
    }
    while Instant::now() < end {
        for ws in &mut hogs {
            let join = text(r#"{"type":"join","room":"lobby","after":0}"#);
            let who = text(r#"{"type":"who"}"#);
            let _ = timeout(
                Duration::from_millis(50),
                ws.write_all(&[join, who].concat()),
            )
            .await;
            asked += 2;
        }
        sleep(Duration::from_millis(20)).await;
    }
    asked
}

/// Connect, send a burst, leave, again: flood control must not reset.
async fn reconnecting_flood(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    let mut sent = 0;
    while Instant::now() < end {
        let Some(mut ws) = open(addr, "/?room=flood", false).await else {
            continue;
        };
        let burst: Vec<u8> = (0..20).flat_map(|n| text(&format!("flood {n}"))).collect();
        if ws.write_all(&burst).await.is_ok() {
            sent += 20;
        }
        drop(ws);
    }
    sent
}

/// Lines that would forge others' lines or reach a terminal, and a valid
/// message followed by a broken frame in one write.
async fn bad_input(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    let mut sent = 0;
    while Instant::now() < end {
        let Some(mut ws) = open(addr, "/?room=junk", false).await else {
            continue;
        };
        let mut bytes = text("hi\nalice: forged");
        bytes.extend(text("\u{1b}[2Jclear"));
        bytes.extend(text("fine"));
        bytes.extend(frame(0xf1, b"reserved bits"));
        if ws.write_all(&bytes).await.is_ok() {
            sent += 4;
        }
        drain(ws).await;
    }
    sent
}

/// Requests from a page that had its own name resolve to 127.0.0.1, and
/// heads over the size limit.
async fn bad_handshakes(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    let mut sent = 0;
    let rebinding = format!(
        "GET / HTTP/1.1\r\nHost: evil.example:{port}\r\nOrigin: http://evil.example:{port}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        port = addr.port()
    );
    let oversized = format!("GET / HTTP/1.1\r\nX-Padding: {}\r\n\r\n", "a".repeat(9000));
    while Instant::now() < end {
        for request in [&rebinding, &oversized] {
            if let Ok(mut stream) = connect(addr).await {
                let _ = stream.write_all(request.as_bytes()).await;
                drain(stream).await;
                sent += 1;
            }
        }
    }
    sent
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let Some(rest) = args.url.strip_prefix("ws://") else {
        eprintln!("error: only ws:// URLs");
        std::process::exit(2);
    };
    let addr: SocketAddr = match rest.trim_end_matches('/').parse() {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("error: {rest}: {err}");
            std::process::exit(2);
        }
    };
    if !addr.ip().is_loopback() {
        eprintln!("error: only loopback servers may be attacked");
        std::process::exit(2);
    }
    let attacks: [(&str, Attack); 6] = [
        ("many rooms", |a, d| Box::pin(many_rooms(a, d))),
        ("slow handshakes", |a, d| Box::pin(slow_handshakes(a, d))),
        ("greedy readers", |a, d| Box::pin(greedy_readers(a, d))),
        ("reconnecting flood", |a, d| {
            Box::pin(reconnecting_flood(a, d))
        }),
        ("bad input", |a, d| Box::pin(bad_input(a, d))),
        ("bad handshakes", |a, d| Box::pin(bad_handshakes(a, d))),
    ];
    let end = Instant::now() + Duration::from_secs_f64(args.duration);
    let each = Duration::from_secs_f64(args.each);
    'cycle: loop {
        for (name, attack) in attacks {
            if args
                .only
                .as_deref()
                .is_some_and(|only| !name.contains(only))
                || args.skip.as_deref().is_some_and(|skip| name.contains(skip))
            {
                continue;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break 'cycle;
            }
            let within = each.min(left);
            // Bounded: an attack that hangs is cut off with its time.
            let done = timeout(within + Duration::from_secs(2), attack(addr, within))
                .await
                .unwrap_or(0);
            println!("{name}: {done}");
        }
    }
}
