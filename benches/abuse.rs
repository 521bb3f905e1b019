//! The attacker for the benchmark's abuse scenario: one process that runs,
//! in turn, every attack the server must shrug off, against a loopback
//! server, for a bounded time.
//!
//!     cargo bench --bench abuse -- --url ws://127.0.0.1:2000 --duration 30
//!
//! Each attack runs for `--each` seconds, then the next; the cycle repeats
//! until `--duration` is over, and every socket is closed on the way out.
//! Every attack comes from ten addresses, 127.0.1.2 to 127.0.10.2: ten
//! networks (the server groups IPv4 addresses by /24), none of them the
//! legitimate load's (127.0.0.1), as ten hosts elsewhere would. It prints
//! how many actions each attack got done, so a run shows that the attacks
//! did run, and for the silent sockets how long a newcomer from an
//! eleventh network waited to get in. Only loopback servers are accepted.

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
    /// Seconds to wait before the first attack (while the load connects).
    #[arg(long, default_value_t = 0.0)]
    after: f64,
}

/// How many addresses (each in a /24 of its own) every attack comes from.
const ADDRESSES: u8 = 10;

/// A TCP connection to `addr` from attacker address `from` (1 to
/// [`ADDRESSES`]: 127.0.`from`.2).
async fn connect_from(addr: SocketAddr, from: u8) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((std::net::Ipv4Addr::new(127, 0, from, 2), 0).into())?;
    socket.connect(addr).await
}

/// Runs `attack(from)` from every attacker address at once; the sum of
/// what they got done.
async fn from_every_address<F, Fut>(attack: F) -> u64
where
    F: Fn(u8) -> Fut,
    Fut: Future<Output = u64> + Send + 'static,
{
    let mut all = tokio::task::JoinSet::new();
    for from in 1..=ADDRESSES {
        all.spawn(attack(from));
    }
    let mut done = 0;
    while let Some(got) = all.join_next().await {
        done += got.unwrap_or(0);
    }
    done
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

/// Opens a WebSocket from attacker address `from` (101 read, nothing
/// else); `None` if refused or closed.
async fn open(addr: SocketAddr, from: u8, target: &str, json: bool) -> Option<TcpStream> {
    let mut stream = connect_from(addr, from).await.ok()?;
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

/// Sleeps until `end`, or for `at_most`, whichever comes first.
async fn pause(end: Instant, at_most: Duration) {
    sleep(at_most.min(end.saturating_duration_since(Instant::now()))).await;
}

/// Joins ever new rooms on one connection per address, reading the answers.
async fn many_rooms(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    from_every_address(move |from| async move {
        let mut done = 0;
        while Instant::now() < end {
            let Some(mut ws) = open(addr, from, "/", false).await else {
                pause(end, Duration::from_millis(100)).await;
                continue;
            };
            let mut sink = vec![0u8; 16 * 1024];
            while Instant::now() < end {
                let join = text(&format!("/join r{from}-{done}"));
                if ws.write_all(&join).await.is_err() {
                    break;
                }
                done += 1;
                let read = timeout(Duration::from_secs(1), ws.read(&mut sink)).await;
                if !matches!(read, Ok(Ok(n)) if n > 0) {
                    break;
                }
            }
        }
        done
    })
    .await
}

/// Writes `frames` (a frame at a time, one every `every`) on a WebSocket
/// opened at `target`, reading and throwing away every answer, until `end`
/// or the server closes it; reopens it then. Returns the frames written.
async fn keep_writing(
    addr: SocketAddr,
    from: u8,
    target: String,
    json: bool,
    end: Instant,
    every: Duration,
    frames: impl Fn(u64) -> Vec<u8>,
) -> u64 {
    let mut written = 0;
    while Instant::now() < end {
        let Some(ws) = open(addr, from, &target, json).await else {
            pause(end, Duration::from_millis(100)).await;
            continue;
        };
        let (reader, mut writer) = ws.into_split();
        let drained = tokio::spawn(async move {
            let mut reader = reader;
            let mut sink = vec![0u8; 16 * 1024];
            while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        while Instant::now() < end && !drained.is_finished() {
            if writer.write_all(&frames(written)).await.is_err() {
                break;
            }
            written += 1;
            pause(end, every).await;
        }
        drained.abort();
    }
    written
}

/// Fills ever new rooms with messages as long as allowed, so in-memory
/// history grows with rooms x `--history` x message size (until its
/// server-wide budget): ten connections per address, each just under its
/// flood-control rate (a join and a message every 40 ms).
async fn history_hoard(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    let body = "h".repeat(4000);
    from_every_address(move |from| {
        let body = body.clone();
        async move {
            let mut writers = tokio::task::JoinSet::new();
            for conn in 0..10u64 {
                let body = body.clone();
                writers.spawn(keep_writing(
                    addr,
                    from,
                    "/".into(),
                    false,
                    end,
                    Duration::from_millis(40),
                    move |n| {
                        let mut frames = text(&format!("/join hoard-{from}-{conn}-{}", n / 4));
                        frames.extend(text(&body));
                        frames
                    },
                ));
            }
            writers.join_all().await.into_iter().sum()
        }
    })
    .await
}

/// Messages whose client id is many kilobytes (refused: a cid is at most
/// 64 bytes), which would otherwise be stored with every message.
async fn long_cids(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    from_every_address(move |from| {
        let cid = "c".repeat(30_000);
        keep_writing(
            addr,
            from,
            "/?room=cids".into(),
            true,
            end,
            Duration::from_millis(20),
            move |n| {
                text(&format!(
                    r#"{{"type":"say","text":"{n}","cid":"{cid}{n}"}}"#
                ))
            },
        )
    })
    .await
}

/// Sockets that trickle a request head, one byte every few seconds.
async fn slow_handshakes(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    from_every_address(move |from| async move {
        let mut sockets = Vec::new();
        for _ in 0..150 {
            if let Ok(stream) = connect_from(addr, from).await {
                sockets.push(stream);
            }
        }
        let opened = sockets.len() as u64;
        let request = upgrade_request(addr, "/", false).into_bytes();
        let mut at = 0;
        while Instant::now() < end && at < request.len() {
            for socket in &mut sockets {
                let _ = socket.write_all(&request[at..=at]).await;
            }
            at += 1;
            pause(end, Duration::from_secs(3)).await;
        }
        opened
    })
    .await
}

/// TCP connections that say nothing, 103 per address, the oldest closed
/// and a new one opened about twelve times a second per address: they
/// would hold every handshake place. Meanwhile a newcomer from an
/// eleventh network opens a WebSocket every quarter second; the longest
/// it waited is printed.
async fn silent_sockets(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    let newcomer = tokio::spawn(async move {
        let (mut tries, mut refused, mut worst) = (0, 0, Duration::ZERO);
        while Instant::now() < end {
            let started = Instant::now();
            match open(addr, ADDRESSES + 1, "/", false).await {
                Some(ws) => drop(ws),
                None => refused += 1,
            }
            tries += 1;
            worst = worst.max(started.elapsed());
            pause(end, Duration::from_millis(250)).await;
        }
        (tries, refused, worst)
    });
    let reopened = from_every_address(move |from| async move {
        let mut sockets = std::collections::VecDeque::new();
        let mut reopened = 0;
        while Instant::now() < end {
            if sockets.len() >= 103 {
                sockets.pop_front();
                reopened += 1;
            }
            if let Ok(stream) = connect_from(addr, from).await {
                sockets.push_back(stream);
            }
            if sockets.len() >= 103 {
                pause(end, Duration::from_millis(80)).await;
            }
        }
        reopened
    })
    .await;
    if let Ok((tries, refused, worst)) = newcomer.await {
        println!(
            "silent sockets: newcomer waited at most {} ms ({tries} tries, {refused} refused)",
            worst.as_millis()
        );
    }
    reopened
}

/// Connections that ask for big answers (whole history, scroll-back,
/// member lists) and never read them: a hundred per address.
async fn greedy_readers(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    from_every_address(move |from| async move {
        let mut hogs = Vec::new();
        let ask = [
            text(r#"{"type":"join","room":"lobby","after":0}"#),
            text(r#"{"type":"older","room":"lobby","before":1000000000,"limit":500}"#),
            text(r#"{"type":"who"}"#),
        ]
        .concat();
        let mut asked = 0;
        for _ in 0..100 {
            if Instant::now() >= end {
                break;
            }
            if let Some(mut ws) = open(addr, from, "/", true).await
                && timeout(Duration::from_millis(50), ws.write_all(&ask))
                    .await
                    .is_ok()
            {
                asked += 3;
                hogs.push(ws);
            }
        }
        pause(end, within).await;
        asked
    })
    .await
}

/// As many connections as each address may hold, each in a room of its
/// own, held for the attack's time.
async fn own_rooms(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    from_every_address(move |from| async move {
        let mut held = Vec::new();
        let mut refused = 0;
        while Instant::now() < end && refused < 3 && held.len() < 1000 {
            match open(
                addr,
                from,
                &format!("/?room=own-{from}-{}", held.len()),
                false,
            )
            .await
            {
                Some(ws) => held.push(ws),
                None => refused += 1,
            }
        }
        let opened = held.len() as u64;
        pause(end, within).await;
        opened
    })
    .await
}

/// A text frame's first fragment, then empty continuation frames as fast
/// as the socket takes them: four connections per address.
async fn empty_fragments(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    from_every_address(move |from| async move {
        let mut streams = tokio::task::JoinSet::new();
        for _ in 0..4 {
            streams.spawn(async move {
                let mut sent = 0;
                while Instant::now() < end {
                    let Some(mut ws) = open(addr, from, "/", false).await else {
                        pause(end, Duration::from_millis(100)).await;
                        continue;
                    };
                    let empties: Vec<u8> = (0..1000).flat_map(|_| frame(0x00, b"")).collect();
                    let mut bytes = frame(0x01, b"a");
                    bytes.extend_from_slice(&empties);
                    while Instant::now() < end {
                        match timeout(Duration::from_millis(200), ws.write_all(&bytes)).await {
                            Ok(Ok(())) => sent += 1000,
                            _ => break,
                        }
                        bytes = empties.clone();
                    }
                }
                sent
            });
        }
        streams.join_all().await.into_iter().sum()
    })
    .await
}

/// Connects with a nick into a room and leaves at once, again and again:
/// each arrival and departure would be announced to the room.
async fn nick_churn(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    from_every_address(move |from| async move {
        let mut done = 0;
        while Instant::now() < end {
            match open(
                addr,
                from,
                &format!("/?nick=churn{from}x{done}&room=lobby"),
                false,
            )
            .await
            {
                Some(ws) => drop(ws),
                None => pause(end, Duration::from_millis(20)).await,
            }
            done += 1;
        }
        done
    })
    .await
}

/// Connect, send a burst, leave, again: flood control must not reset.
async fn reconnecting_flood(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    from_every_address(move |from| async move {
        let mut sent = 0;
        while Instant::now() < end {
            let Some(mut ws) = open(addr, from, "/?room=flood", false).await else {
                pause(end, Duration::from_millis(20)).await;
                continue;
            };
            let burst: Vec<u8> = (0..20).flat_map(|n| text(&format!("flood {n}"))).collect();
            if ws.write_all(&burst).await.is_ok() {
                sent += 20;
            }
        }
        sent
    })
    .await
}

/// Lines that would forge others' lines or reach a terminal, and a valid
/// message followed by a broken frame in one write.
async fn bad_input(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    from_every_address(move |from| async move {
        let mut sent = 0;
        while Instant::now() < end {
            let Some(mut ws) = open(addr, from, "/?room=junk", false).await else {
                pause(end, Duration::from_millis(20)).await;
                continue;
            };
            let mut bytes = text("hi\nalice: forged");
            bytes.extend(text("\u{1b}[2Jclear"));
            bytes.extend(text("fine"));
            bytes.extend(frame(0xf1, b"reserved bits"));
            if ws.write_all(&bytes).await.is_ok() {
                sent += 4;
            }
            let _ = timeout(Duration::from_secs(1), drain(ws)).await;
        }
        sent
    })
    .await
}

/// Requests from a page that had its own name resolve to 127.0.0.1, and
/// heads over the size limit.
async fn bad_handshakes(addr: SocketAddr, within: Duration) -> u64 {
    let end = Instant::now() + within;
    from_every_address(move |from| async move {
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
                if let Ok(mut stream) = connect_from(addr, from).await {
                    let _ = stream.write_all(request.as_bytes()).await;
                    let _ = timeout(Duration::from_secs(1), drain(stream)).await;
                    sent += 1;
                }
            }
        }
        sent
    })
    .await
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
    let attacks: [(&str, Attack); 12] = [
        ("many rooms", |a, d| Box::pin(many_rooms(a, d))),
        ("history hoard", |a, d| Box::pin(history_hoard(a, d))),
        ("long cids", |a, d| Box::pin(long_cids(a, d))),
        ("slow handshakes", |a, d| Box::pin(slow_handshakes(a, d))),
        ("silent sockets", |a, d| Box::pin(silent_sockets(a, d))),
        ("greedy readers", |a, d| Box::pin(greedy_readers(a, d))),
        ("own rooms", |a, d| Box::pin(own_rooms(a, d))),
        ("empty fragments", |a, d| Box::pin(empty_fragments(a, d))),
        ("nick churn", |a, d| Box::pin(nick_churn(a, d))),
        ("reconnecting flood", |a, d| {
            Box::pin(reconnecting_flood(a, d))
        }),
        ("bad input", |a, d| Box::pin(bad_input(a, d))),
        ("bad handshakes", |a, d| Box::pin(bad_handshakes(a, d))),
    ];
    sleep(Duration::from_secs_f64(args.after)).await;
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
