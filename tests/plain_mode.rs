//! Plain text mode: the exercise's protocol, kept exactly.

mod common;

use std::collections::HashMap;

use common::{Peer, TestServer, plain_peers, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_websockets::Message;
use wschat::protocol::WELCOME;

#[tokio::test]
async fn welcome_is_the_exact_first_frame() {
    let server = TestServer::start().await;
    let mut peer = Peer::plain_raw(&server.url()).await;
    assert_eq!(peer.text().await, WELCOME);
    let me = peer.name();
    peer.expect(&format!("* {me} joined lobby")).await;
    server.stop().await;
}

#[tokio::test]
async fn ws_path_works_too() {
    let server = TestServer::start().await;
    let mut peer = Peer::plain_raw(&format!("{}/ws", server.url())).await;
    peer.expect(WELCOME).await;
    server.stop().await;
}

#[tokio::test]
async fn messages_reach_every_other_peer_as_ip_port_text() {
    let server = TestServer::start().await;
    let url = server.url();
    let [mut a, mut b] = plain_peers(&url).await;
    let mut c = Peer::plain(&url).await;
    a.expect(&format!("* {} joined lobby", c.name())).await;
    b.expect(&format!("* {} joined lobby", c.name())).await;

    a.send("hello there").await;
    b.expect(&format!("{}: hello there", a.name())).await;
    c.expect(&format!("{}: hello there", a.name())).await;

    // The sender gets no echo: the next thing it sees is b's message.
    b.send("sentinel").await;
    a.expect(&format!("{}: sentinel", b.name())).await;
    c.expect(&format!("{}: sentinel", b.name())).await;
    server.stop().await;
}

#[tokio::test]
async fn left_notices_for_clean_close_and_abrupt_reset() {
    let server = TestServer::start().await;
    let url = server.url();
    let [mut a, b] = plain_peers(&url).await;
    let c = Peer::plain(&url).await;
    a.expect(&format!("* {} joined lobby", c.name())).await;

    let b_name = b.name();
    b.close().await;
    a.expect(&format!("* {b_name} left lobby")).await;

    // An abrupt reset (RST, no close frame) is a normal event too.
    let c_name = c.name();
    c.reset();
    a.expect(&format!("* {c_name} left lobby")).await;

    // The server keeps running.
    let mut d = Peer::plain(&url).await;
    a.expect(&format!("* {} joined lobby", d.name())).await;
    d.send("still up").await;
    a.expect(&format!("{}: still up", d.name())).await;
    server.stop().await;
}

#[tokio::test]
async fn binary_frame_gets_an_error_and_the_connection_stays() {
    let server = TestServer::start().await;
    let url = server.url();
    let [mut a, mut b] = plain_peers(&url).await;

    a.send_message(Message::binary(&b"\x00\x01"[..])).await;
    a.expect("! binary frames are not supported: send text")
        .await;
    a.send("after binary").await;
    b.expect(&format!("{}: after binary", a.name())).await;
    server.stop().await;
}

#[tokio::test]
async fn unknown_command_names_help() {
    let server = TestServer::start().await;
    let mut a = Peer::plain(&server.url()).await;
    a.send("/dance").await;
    a.expect("! unknown command /dance (try /help)").await;
    server.stop().await;
}

#[tokio::test]
async fn fifty_clients_lose_nothing_and_keep_per_sender_order() {
    const CLIENTS: usize = 50;
    const EACH: usize = 20;
    // Every arrival announced: each client waits for the last one's.
    let server = TestServer::with(|c| {
        c.rate = 0;
        c.notice_rate = 0;
    })
    .await;
    let url = server.url();
    let mut peers = Vec::new();
    for _ in 0..CLIENTS {
        peers.push(Peer::plain(&url).await);
    }
    let last = peers[CLIENTS - 1].name();
    let names: Vec<String> = peers.iter().map(Peer::name).collect();

    let mut tasks = Vec::new();
    for (index, mut peer) in peers.into_iter().enumerate() {
        let last = last.clone();
        tasks.push(tokio::spawn(async move {
            // Wait until everyone is in, so everyone sees every message.
            if index != CLIENTS - 1 {
                loop {
                    if peer.text().await == format!("* {last} joined lobby") {
                        break;
                    }
                }
            }
            for n in 0..EACH {
                peer.send(&format!("msg {n}")).await;
            }
            let me = peer.name();
            let mut next: HashMap<String, usize> = HashMap::new();
            let expected = (CLIENTS - 1) * EACH;
            let mut received = 0;
            while received < expected {
                let line = peer.text().await;
                let (from, text) = line.rsplit_once(": ").expect("NAME: TEXT");
                assert_ne!(from, me, "a sender got its own message back");
                let n: usize = text
                    .strip_prefix("msg ")
                    .expect("msg N")
                    .parse()
                    .expect("N");
                let slot = next.entry(from.to_owned()).or_default();
                assert_eq!(n, *slot, "out of order from {from}");
                *slot += 1;
                received += 1;
            }
            next
        }));
    }
    for task in tasks {
        let counts = within("a client's deliveries", task)
            .await
            .expect("client task");
        assert_eq!(counts.len(), CLIENTS - 1);
        assert!(counts.values().all(|&c| c == EACH));
        assert!(counts.keys().all(|k| names.contains(k)));
    }
    server.stop().await;
}

/// Performs a WebSocket handshake by hand on a socket with a tiny receive buffer.
async fn raw_plain_peer(addr: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stream = socket.connect(addr).await.expect("connect");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    assert_eq!(common::http_status(&mut stream).await, 101);
    stream
}

/// Reads a raw connection until it ends with the 1013 "too slow" close frame.
async fn read_until_too_slow(stream: &mut TcpStream) {
    let close: &[u8] = b"\x88\x0a\x03\xf5too slow";
    let mut tail = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while !tail.ends_with(close) {
        let n = within("the 1013 close frame", stream.read(&mut chunk))
            .await
            .expect("read");
        assert_ne!(n, 0, "connection ended without a 1013 close frame");
        tail.extend_from_slice(&chunk[..n]);
        // Only the end matters: keep what could hold the close frame.
        if tail.len() > 64 {
            tail.drain(..tail.len() - 64);
        }
    }
}

#[tokio::test]
async fn a_reader_that_never_reads_is_closed_1013_and_slows_nobody() {
    const MESSAGES: usize = 400;
    const SIZE: usize = 20_000;
    let server = TestServer::with(|c| {
        c.rate = 0;
        c.max_lag = 64;
        c.max_message_bytes = SIZE;
    })
    .await;
    let url = server.url();
    let mut sender = Peer::plain(&url).await;
    let mut reader = Peer::plain(&url).await;
    sender
        .expect(&format!("* {} joined lobby", reader.name()))
        .await;
    let mut stalled = raw_plain_peer(server.addr).await;
    let stalled_name = stalled.local_addr().expect("addr").to_string();
    sender
        .expect(&format!("* {stalled_name} joined lobby"))
        .await;
    reader
        .expect(&format!("* {stalled_name} joined lobby"))
        .await;

    let body = "x".repeat(SIZE - 10);
    let sender_name = sender.name();
    // The reader keeps up: the sender stays at most WINDOW messages ahead of
    // it (well under --max-lag), while the stalled peer reads nothing.
    const WINDOW: usize = 16;
    let mut left = false;
    let next = |line: String, n: usize, left: &mut bool| {
        if line == format!("* {stalled_name} left lobby") {
            *left = true;
            return false;
        }
        let expected = format!("{sender_name}: {n:05} ");
        assert!(line.starts_with(&expected), "message {n} out of order");
        true
    };
    within("fan-out past a stalled reader", async {
        let mut received = 0;
        for n in 0..MESSAGES {
            sender.send(&format!("{n:05} {body}")).await;
            while received + WINDOW <= n {
                if next(reader.text().await, received, &mut left) {
                    received += 1;
                }
            }
        }
        while received < MESSAGES || !left {
            if next(reader.text().await, received, &mut left) {
                received += 1;
            }
        }
    })
    .await;

    // Now the stalled peer reads: whatever was queued, then a 1013 close frame.
    read_until_too_slow(&mut stalled).await;
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_pings_and_never_reads_is_closed_1013() {
    let server = TestServer::with(|c| c.max_lag = 8).await;
    let mut peer = raw_plain_peer(server.addr).await;
    // Masked pings with 100-byte payloads, many per write, until far more
    // pongs are owed than the socket buffers hold (the peer reads nothing).
    let mut ping = vec![0x89, 0x80 | 100, 1, 2, 3, 4];
    ping.extend(
        (0..100u8)
            .zip([1u8, 2, 3, 4].iter().cycle())
            .map(|(b, m)| b ^ m),
    );
    let batch = ping.repeat(1000);
    for _ in 0..100 {
        if peer.write_all(&batch).await.is_err() {
            break;
        }
    }
    // Reading now: pongs, then the 1013 close frame behind them.
    read_until_too_slow(&mut peer).await;
    server.stop().await;
}

#[tokio::test]
async fn shutdown_sends_1001_to_everyone() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut a = Peer::plain(&url).await;
    let mut b = Peer::json(&url).await;
    let stop = tokio::spawn(server.stop());
    assert_eq!(a.closed().await, (1001, "server shutting down".to_owned()));
    assert_eq!(b.closed().await, (1001, "server shutting down".to_owned()));
    within("server stop", stop).await.expect("stop task");
}
