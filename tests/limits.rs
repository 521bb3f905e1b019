//! Limits and bad input: each gets a clear answer and the server keeps going.

mod common;

use common::{Peer, RawFrame, RawPeer, TestServer, http_request, plain_peers, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_websockets::Message;
use wschat::protocol::WELCOME;

#[tokio::test]
async fn too_long_message_is_refused_and_the_connection_kept() {
    let server = TestServer::start().await;
    let url = server.url();
    let [mut a, mut b] = plain_peers(&url).await;
    a.send(&"x".repeat(4097)).await;
    a.expect("! message too long: 4097 bytes, the limit is 4096")
        .await;
    a.send(&"y".repeat(4096)).await;
    // b never saw the long one: the next thing it gets is the one at the limit.
    b.expect(&format!("{}: {}", a.name(), "y".repeat(4096)))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn oversized_frame_closes_1009() {
    let server = TestServer::start().await;
    let mut a = Peer::plain(&server.url()).await;
    a.send_message(Message::text("z".repeat(64 * 1024 + 1)))
        .await;
    let (code, _) = a.closed().await;
    assert_eq!(code, 1009);
    // The server carries on.
    let mut b = Peer::plain(&server.url()).await;
    b.send("/who").await;
    b.expect(&format!("* 1 in lobby: {}", b.name())).await;
    server.stop().await;
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let server = TestServer::start().await;
    let (status, peer) = RawPeer::upgrade(server.addr, "/", &[]).await;
    assert_eq!(status, 101);
    let mut peer = peer.expect("upgraded");
    assert_eq!(peer.frame().await, Some(RawFrame::Text(WELCOME.into())));
    peer.send_frame(1, b"bad \xff\xfe bytes").await;
    assert_eq!(peer.close_frame().await.0, 1007);
    server.stop().await;
}

#[tokio::test]
async fn flood_control_refuses_beyond_the_burst_and_can_be_disabled() {
    let server = TestServer::with(|c| {
        c.rate = 20;
        c.rate_burst = 3;
    })
    .await;
    let url = server.url();
    let [mut a, mut b] = plain_peers(&url).await;
    for n in 0..4 {
        a.send(&format!("m{n}")).await;
    }
    a.expect(
        "! rate limited: at most 20 requests per 10 s (bursts of 3); this one was not carried out",
    )
    .await;
    for n in 0..3 {
        b.expect(&format!("{}: m{n}", a.name())).await;
    }
    // The fourth never arrived: b's next line is its own request's answer.
    b.send("/who").await;
    let who = b.text().await;
    assert!(who.starts_with("* 2 in lobby"), "{who}");
    server.stop().await;

    let server = TestServer::with(|c| c.rate = 0).await;
    let url = server.url();
    let mut a = Peer::json(&url).await;
    let _ = a.frame().await;
    let _ = a.frame().await;
    for n in 0..50 {
        a.send(&format!(r#"{{"type":"say","text":"m{n}"}}"#)).await;
    }
    for n in 0..50 {
        let frame = a.frame().await;
        assert!(
            matches!(&frame, wschat::protocol::ServerFrame::Message { text, .. } if *text == format!("m{n}")),
            "{frame:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn every_command_counts_against_flood_control() {
    let server = TestServer::with(|c| {
        c.rate = 1;
        c.rate_burst = 3;
    })
    .await;
    let url = server.url();
    let [mut a, mut b] = plain_peers(&url).await;
    a.send("/rooms").await;
    a.expect("* rooms: lobby (2)").await;
    a.send("/join elsewhere").await;
    a.expect(&format!("* {} joined elsewhere", a.name())).await;
    a.send("/join lobby").await;
    a.expect(&format!("* {} joined lobby", a.name())).await;
    a.send("/join spam").await;
    a.send("/nick spammer").await;
    a.send("hello").await;
    for _ in 0..3 {
        a.expect(
            "! rate limited: at most 1 requests per 10 s (bursts of 3); this one was not carried out",
        )
        .await;
    }
    // None of them happened: b's next line answers its own request.
    b.expect(&format!("* {} left lobby", a.name())).await;
    b.expect(&format!("* {} joined lobby", a.name())).await;
    b.send("/who").await;
    b.expect(&format!("* 2 in lobby: {}, {}", a.name(), b.name()))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn reconnecting_does_not_reset_flood_control() {
    let server = TestServer::with(|c| {
        c.rate = 20;
        c.rate_burst = 10;
        c.rate_per_ip = Some(8);
    })
    .await;
    let url = server.url();
    let mut watcher = Peer::plain(&url).await;
    // The address may send a burst of 4; each connection, of 10.
    let mut first = Peer::plain_raw(&url).await;
    first.expect(WELCOME).await;
    for n in 0..4 {
        first.send(&format!("m{n}")).await;
    }
    first.send("one too many").await;
    let refused = "! rate limited: your address may send at most 8 requests per 10 s over all \
                   its connections; this one was not carried out";
    loop {
        let line = first.text().await;
        if line.starts_with("! ") {
            assert_eq!(line, refused);
            break;
        }
    }
    first.close().await;
    let mut second = Peer::plain_raw(&url).await;
    second.expect(WELCOME).await;
    second.send("fresh start?").await;
    loop {
        let line = second.text().await;
        if line.starts_with("! ") {
            assert_eq!(line, refused);
            break;
        }
    }
    let first_name = first_name_of(&mut watcher).await;
    for n in 0..4 {
        watcher.expect(&format!("{first_name}: m{n}")).await;
    }
    server.stop().await;
}

/// The name in the next `joined lobby` notice `peer` reads.
async fn first_name_of(peer: &mut Peer) -> String {
    loop {
        let line = peer.text().await;
        if let Some(name) = line
            .strip_prefix("* ")
            .and_then(|l| l.strip_suffix(" joined lobby"))
        {
            return name.to_owned();
        }
    }
}

#[tokio::test]
async fn a_connection_that_keeps_flooding_is_closed_1008() {
    let server = TestServer::with(|c| {
        c.rate = 1;
        c.rate_burst = 1;
    })
    .await;
    let (status, peer) = RawPeer::upgrade(server.addr, "/", &[]).await;
    assert_eq!(status, 101);
    let mut peer = peer.expect("upgraded");
    for n in 0..101 {
        peer.send_frame(1, format!("flood {n}").as_bytes()).await;
    }
    let mut refusals = 0;
    let closed = loop {
        match peer.frame().await.expect("a frame") {
            RawFrame::Text(line) if line.starts_with("! rate limited") => refusals += 1,
            RawFrame::Close(code, reason) => break (code, reason),
            _ => {}
        }
    };
    assert_eq!(closed, (1008, "flooding".to_owned()));
    assert_eq!(refusals, 100);
    server.stop().await;
}

#[tokio::test]
async fn a_connection_closed_for_flooding_costs_its_network_its_new_connections() {
    // Ten new connections a minute per address: the close for flooding
    // spends them (it costs 100), so reconnecting at once to flood again
    // is reset before any HTTP, from anywhere in the same /24; another
    // network is not touched.
    let server = TestServer::with(|c| {
        c.rate = 1;
        c.rate_burst = 1;
        c.max_per_ip = 10;
    })
    .await;
    let stream = connect_from(server.addr, [127, 0, 7, 1]).await;
    let (status, peer) = RawPeer::upgrade_over(stream, server.addr, "/", &[]).await;
    assert_eq!(status, 101);
    let mut peer = peer.expect("upgraded");
    let flood: Vec<u8> = (0..101)
        .flat_map(|n| {
            common::client_frame(true, 0, 1, format!("flood {n}").as_bytes(), [1, 2, 3, 4])
        })
        .collect();
    peer.send_bytes(&flood).await;
    assert_eq!(peer.close_frame().await, (1008, "flooding".to_owned()));
    assert_reset(try_connect_from(server.addr, [127, 0, 7, 2])).await;
    let stream = connect_from(server.addr, [127, 0, 8, 1]).await;
    let (status, _) = RawPeer::upgrade_over(stream, server.addr, "/", &[]).await;
    assert_eq!(status, 101);
    server.stop().await;
}

#[tokio::test]
async fn connection_limit_answers_503_until_a_slot_frees() {
    let server = TestServer::with(|c| c.max_connections = 2).await;
    let url = server.url();
    let a = Peer::plain(&url).await;
    let mut b = Peer::plain(&url).await;
    let (status, _) = RawPeer::upgrade(server.addr, "/", &[]).await;
    assert_eq!(status, 503);
    let a_name = a.name();
    a.close().await;
    b.expect(&format!("* {a_name} left lobby")).await;
    // The slot is released as the closed connection's task ends.
    within("a free slot", async {
        loop {
            if RawPeer::upgrade(server.addr, "/", &[]).await.0 == 101 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn silent_or_slow_handshakes_are_dropped() {
    let server = TestServer::with(|c| c.handshake_timeout = 1).await;
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    let mut partial = TcpStream::connect(server.addr).await.expect("connect");
    partial
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut byte = [0u8; 1];
    assert_eq!(
        within("silent dropped", silent.read(&mut byte))
            .await
            .expect("read"),
        0
    );
    assert_eq!(
        within("partial dropped", partial.read(&mut byte))
            .await
            .expect("read"),
        0
    );
    server.stop().await;
}

/// Reads until the server closes the connection, returning what it sent.
/// Asserts that the server reset the connection without a word: what it
/// does with a connection it will not spend anything on. The reset may
/// already have come when the connection is made.
async fn assert_reset(connecting: impl Future<Output = std::io::Result<TcpStream>>) {
    let mut stream = match connecting.await {
        Ok(stream) => stream,
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return,
        Err(err) => panic!("connect: {err}"),
    };
    let mut all = Vec::new();
    let read = within("the server to reset", stream.read_to_end(&mut all)).await;
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "got {all:?}"
    );
    assert!(all.is_empty(), "{all:?}");
}

async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    within("the server to close", stream.read_to_end(&mut all))
        .await
        .expect("read");
    all
}

#[tokio::test]
async fn sockets_that_never_finish_a_handshake_take_no_connection_slot() {
    // One real user's worth of slots, and a long handshake timeout: the
    // silent sockets below would hold a slot taken at accept for a minute.
    let server = TestServer::with(|c| {
        c.max_connections = 1;
        c.handshake_timeout = 60;
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.write_all(b"G").await.expect("write");
        silent.push(stream);
    }
    let (status, peer) = RawPeer::upgrade(server.addr, "/", &[]).await;
    assert_eq!(status, 101);
    // The slot is the real user's now.
    assert_eq!(RawPeer::upgrade(server.addr, "/", &[]).await.0, 503);
    drop(peer);
    drop(silent);
    server.stop().await;
}

/// A TCP connection to `addr` from the loopback address `from`.
async fn connect_from(addr: std::net::SocketAddr, from: [u8; 4]) -> TcpStream {
    try_connect_from(addr, from).await.expect("connect")
}

async fn try_connect_from(addr: std::net::SocketAddr, from: [u8; 4]) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((std::net::Ipv4Addr::from(from), 0).into())?;
    socket.connect(addr).await
}

#[tokio::test]
async fn empty_fragments_count_against_flood_control() {
    // Default flood control (bursts of 10). From four networks, a message
    // of 200 empty fragments, far from the 4096 that would make it too
    // big: each fragment costs a request, so each sender is closed as
    // flooding, while a client elsewhere goes on chatting.
    let server = TestServer::with(|_| {}).await;
    let mut speaker = Peer::plain(&server.url()).await;
    let mut listener = Peer::plain(&server.url()).await;
    speaker
        .expect(&format!("* {} joined lobby", listener.name()))
        .await;
    let mask = [9, 8, 7, 6];
    let mut bytes = common::client_frame(false, 0, 1, b"a", mask);
    for _ in 0..200 {
        bytes.extend(common::client_frame(false, 0, 0, b"", mask));
    }
    for net in 2..6 {
        let stream = connect_from(server.addr, [127, 0, net, 1]).await;
        let (status, peer) =
            RawPeer::upgrade_over(stream, server.addr, "/?room=fragments", &[]).await;
        assert_eq!(status, 101);
        let mut peer = peer.expect("upgraded");
        peer.send_bytes(&bytes).await;
        assert_eq!(peer.close_frame().await, (1008, "flooding".to_owned()));
    }
    speaker.send("still here").await;
    let name = speaker.name();
    listener.expect(&format!("{name}: still here")).await;
    server.stop().await;
}

#[tokio::test]
async fn a_room_announces_arrivals_and_departures_within_its_notice_rate() {
    // One notice per 10 s, bursts of two: the watcher's own arrival and
    // the first newcomer's are announced; twenty nicks from four networks
    // coming and going at once are not, and are counted.
    let server = TestServer::with(|c| c.notice_rate = 1).await;
    let url = server.url();
    let mut watcher = Peer::plain_raw(&format!("{url}/?room=small")).await;
    watcher.expect(WELCOME).await;
    watcher
        .expect(&format!("* {} joined small", watcher.name()))
        .await;
    for n in 0..20u8 {
        let stream = connect_from(server.addr, [127, 0, 2 + n % 4, 1]).await;
        let target = format!("/?nick=churn{n}&room=small");
        let (status, peer) = RawPeer::upgrade_over(stream, server.addr, &target, &[]).await;
        assert_eq!(status, 101);
        drop(peer);
    }
    watcher.expect("* churn0 joined small").await;
    let mut speaker = Peer::plain_raw(&format!("{url}/?room=small")).await;
    speaker.send("after the storm").await;
    watcher
        .expect(&format!("{}: after the storm", speaker.name()))
        .await;
    // 20 arrivals and 20 departures, and the speaker's arrival, less the one told.
    within("every notice counted", async {
        loop {
            let answer = common::metrics(server.addr).await;
            if common::metric(&answer, "wschat_notices_dropped_total") == Some(40.0) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn handshakes_beyond_the_cap_are_closed_at_once() {
    let server = TestServer::with(|c| {
        c.max_handshakes = 3;
        c.handshake_timeout = 60;
    })
    .await;
    // Three networks take the three places, each with its request begun
    // (a socket silent for long would give its place to a newcomer)...
    let mut waiting = Vec::new();
    for net in 2..5 {
        let mut begun = connect_from(server.addr, [127, 0, net, 1]).await;
        begun.write_all(b"GET /healthz").await.expect("write");
        waiting.push(begun);
    }
    // ...so the next gets nothing at all: no place, no answer, long before
    // the minute the others may take.
    assert_reset(try_connect_from(server.addr, [127, 0, 5, 1])).await;
    // A place frees when a handshake ends, however it ends.
    let mut first = waiting.remove(0);
    first
        .write_all(b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    assert!(
        read_to_end(&mut first)
            .await
            .starts_with(b"HTTP/1.1 200 OK\r\n")
    );
    within("a free handshake place", async {
        loop {
            if RawPeer::upgrade(server.addr, "/", &[]).await.0 == 101 {
                break;
            }
        }
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn one_address_cannot_hold_every_handshake_place() {
    // 16 places: one address may hold 2 of them.
    let server = TestServer::with(|c| {
        c.max_handshakes = 16;
        c.handshake_timeout = 60;
    })
    .await;
    // One address is its /24: 127.0.9.1 and 127.0.9.2 are one.
    let mut silent = Vec::new();
    for host in 1..=2 {
        silent.push(connect_from(server.addr, [127, 0, 9, host]).await);
    }
    assert_reset(try_connect_from(server.addr, [127, 0, 9, 3])).await;
    // Everyone else still gets in.
    assert_eq!(RawPeer::upgrade(server.addr, "/", &[]).await.0, 101);
    drop(silent);
    server.stop().await;
}

#[tokio::test]
async fn one_address_cannot_take_every_slot() {
    let server = TestServer::with(|c| c.max_per_ip = 2).await;
    let (a, _a) = RawPeer::upgrade(server.addr, "/", &[]).await;
    let (b, _b) = RawPeer::upgrade(server.addr, "/", &[]).await;
    assert_eq!((a, b), (101, 101));
    let mut third = TcpStream::connect(server.addr).await.expect("connect");
    third
        .write_all(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .expect("write");
    let answer = String::from_utf8(read_to_end(&mut third).await).expect("text");
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.ends_with("\r\n\r\ntoo many connections from your address\n"));
    server.stop().await;
}

#[tokio::test]
async fn one_address_cannot_churn_through_connections() {
    // Two held at most; two opened per minute, in bursts of three.
    let server = TestServer::with(|c| c.max_per_ip = 2).await;
    for _ in 0..3 {
        let (status, peer) = RawPeer::upgrade(server.addr, "/", &[]).await;
        assert_eq!(status, 101);
        drop(peer);
    }
    // None is open now, and still the fourth is closed at once.
    assert_reset(TcpStream::connect(server.addr)).await;
    // Another address is not affected, and the operator sees the reset.
    let mut other = connect_from(server.addr, [127, 0, 7, 1]).await;
    other
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let metrics = String::from_utf8(read_to_end(&mut other).await).expect("text");
    assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l == "wschat_connections_reset_total 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn what_cannot_be_a_handshake_is_answered_at_once() {
    let server = TestServer::with(|c| c.handshake_timeout = 60).await;
    // A TLS ClientHello on the plain port: 400 in plain HTTP, which a TLS
    // client reads as "not TLS".
    let mut tls = TcpStream::connect(server.addr).await.expect("connect");
    tls.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        .await
        .expect("write");
    let answer = read_to_end(&mut tls).await;
    assert!(answer.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
    assert!(answer.ends_with(b"this is a plain ws:// port: TLS is not spoken here\n"));
    // Bytes HTTP does not allow, before any blank line: 400.
    let mut junk = TcpStream::connect(server.addr).await.expect("connect");
    junk.write_all(b"GET / HTTP/1.1\r\nNo colon here\r\n")
        .await
        .expect("write");
    let answer = read_to_end(&mut junk).await;
    assert!(answer.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
    // A head that keeps growing past 8 KiB: 431.
    let mut big = TcpStream::connect(server.addr).await.expect("connect");
    let mut head = String::from("GET / HTTP/1.1\r\nX-Padding: ");
    head.push_str(&"a".repeat(9000));
    // The server may answer and close before it has read all of this.
    let _ = big.write_all(head.as_bytes()).await;
    let answer = read_to_end(&mut big).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // The same head complete, arriving at once: 431 too.
    let mut whole = TcpStream::connect(server.addr).await.expect("connect");
    head.push_str("\r\n\r\n");
    let _ = whole.write_all(head.as_bytes()).await;
    let answer = read_to_end(&mut whole).await;
    assert!(answer.starts_with(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    server.stop().await;
}

#[tokio::test]
async fn pages_under_another_name_cannot_reach_a_loopback_server() {
    let server = TestServer::with(|c| c.allowed_hosts = vec!["chat.example.org".into()]).await;
    let port = server.addr.port();
    let upgrade = |host: &str, origin: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    // A page on evil.example whose name now resolves to 127.0.0.1 sends its
    // own name as Host and as Origin.
    let evil = format!("evil.example:{port}");
    let request = upgrade(&evil, &format!("http://{evil}"));
    assert_eq!(http_request(server.addr, &request).await, 403);
    let local = format!("localhost:{port}");
    let request = upgrade(&local, &format!("http://{local}"));
    assert_eq!(http_request(server.addr, &request).await, 101);
    let named = format!("chat.example.org:{port}");
    let request = upgrade(&named, &format!("https://{named}"));
    assert_eq!(http_request(server.addr, &request).await, 101);
    // Two Hosts: which one would a proxy have checked?
    let twice = format!(
        "GET / HTTP/1.1\r\nHost: {local}\r\nHost: {evil}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    assert_eq!(http_request(server.addr, &twice).await, 400);
    server.stop().await;
}

#[tokio::test]
async fn keepalive_pings_and_drops_silent_peers() {
    let server = TestServer::with(|c| {
        c.ping_interval = 1;
        c.idle_timeout = 2;
    })
    .await;
    // A raw peer that never answers: pinged, then closed for being idle.
    let (_, peer) = RawPeer::upgrade(server.addr, "/", &[]).await;
    let mut silent = peer.expect("upgraded");
    let mut pings = 0;
    let close = loop {
        match silent.frame().await {
            Some(RawFrame::Ping) => pings += 1,
            Some(RawFrame::Close(code, reason)) => break (code, reason),
            Some(RawFrame::Text(_) | RawFrame::Pong(_)) => {}
            None => panic!("dropped without a close frame"),
        }
    };
    assert!(pings >= 1);
    assert_eq!(close, (1001, "idle timeout".to_owned()));

    // A peer whose library answers pings stays, however many go by.
    let mut alive = Peer::plain(&server.url()).await;
    let mut pings = 0;
    while pings < 4 {
        if alive.next_any().await.is_ping() {
            pings += 1;
        }
    }
    alive.send("/who").await;
    alive
        .expect(&format!("* 1 in lobby: {}", alive.name()))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn garbage_on_the_port_gets_http_errors_and_the_server_keeps_going() {
    let server = TestServer::start().await;
    let addr = server.addr;
    assert_eq!(
        http_request(addr, "\x01\x03\x01\x00\x7fgarbage\r\n\r\n").await,
        400
    );
    assert_eq!(
        http_request(addr, "GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n").await,
        426
    );
    assert_eq!(
        http_request(addr, "GET /healthz HTTP/1.1\r\n\r\n").await,
        200
    );
    assert_eq!(
        http_request(addr, "GET /secret HTTP/1.1\r\n\r\n").await,
        404
    );
    assert_eq!(http_request(addr, "DELETE / HTTP/1.1\r\n\r\n").await, 405);
    let upgrade_v8 = "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                      Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: x\r\n\r\n";
    assert_eq!(http_request(addr, upgrade_v8).await, 400);
    // A head that never ends, and one cut short.
    let mut endless = TcpStream::connect(addr).await.expect("connect");
    let _ = endless.write_all(&vec![b'A'; 20_000]).await;
    let mut cut = TcpStream::connect(addr).await.expect("connect");
    cut.write_all(b"GET / HTTP/1.1\r\nUpgr")
        .await
        .expect("write");
    drop(cut);
    // Raw bytes after an upgrade that are not a valid frame: 1002.
    let (_, peer) = RawPeer::upgrade(addr, "/", &[]).await;
    let mut peer = peer.expect("upgraded");
    peer.stream.write_all(&[0xFF; 16]).await.expect("write");
    assert_eq!(peer.close_frame().await.0, 1002);

    let mut ok = Peer::plain(&server.url()).await;
    ok.send("/who").await;
    ok.expect(&format!("* 1 in lobby: {}", ok.name())).await;
    server.stop().await;
}

#[tokio::test]
async fn the_outbound_queue_is_bounded_in_bytes_too() {
    // Frames alone would allow far more than this test sends.
    let server = TestServer::with(|c| {
        c.rate = 0;
        c.max_lag = 1_000_000;
        c.max_lag_bytes = 64 * 1024;
    })
    .await;
    let url = server.url();
    let [mut sender, mut stalled] = plain_peers(&url).await;
    // More than loopback's socket buffers hold, so it has to queue.
    let text = "x".repeat(4000);
    for _ in 0..4000 {
        sender.send(&text).await;
    }
    let code = within("the stalled reader to be closed", async {
        loop {
            let message = stalled.next_any().await;
            if let Some((code, reason)) = message.as_close() {
                break (u16::from(code), reason.to_owned());
            }
        }
    })
    .await;
    assert_eq!(code, (1013, "too slow".to_owned()));
    sender
        .expect(&format!("* {} left lobby", stalled.addr))
        .await;
    sender.send("/who").await;
    sender
        .expect(&format!("* 1 in lobby: {}", sender.name()))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_long_replay_is_paced_to_the_reader_not_refused() {
    let server = TestServer::with(|c| {
        c.rate = 0;
        c.max_lag_bytes = 256 * 1024;
    })
    .await;
    let url = server.url();
    let mut sender = Peer::plain(&url).await;
    let text = "y".repeat(4000);
    for n in 0..300 {
        sender.send(&format!("{n} {text}")).await;
    }
    sender.send("/who").await;
    sender
        .expect(&format!("* 1 in lobby: {}", sender.name()))
        .await;
    // 1.2 MB of history, five times --max-lag-bytes: it arrives whole, in order.
    let (mut reader, _) = Peer::json_joined(&url).await;
    reader
        .send(r#"{"type":"join","room":"lobby","after":0}"#)
        .await;
    let mut next = 0;
    while next < 300 {
        match reader.frame().await {
            wschat::protocol::ServerFrame::Message { text: got, .. } => {
                assert_eq!(got, format!("{next} {text}"));
                next += 1;
            }
            other => assert!(
                !matches!(other, wschat::protocol::ServerFrame::Error { .. }),
                "{other:?}"
            ),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn member_and_room_lists_are_capped() {
    let server = TestServer::with(|c| c.rate = 0).await;
    let url = server.url();
    let mut crowd = Vec::new();
    for _ in 0..505 {
        let (status, peer) = RawPeer::upgrade(server.addr, "/", &[]).await;
        assert_eq!(status, 101);
        crowd.push(peer);
    }
    let mut asker = Peer::plain_raw(&url).await;
    asker.send("/who").await;
    let line = loop {
        let line = asker.text().await;
        if line.contains(" in lobby: ") {
            break line;
        }
    };
    let (head, names) = line.split_once(": ").expect("a list");
    assert_eq!(head, "* 506 in lobby");
    let names = names
        .strip_suffix(" and 6 more")
        .unwrap_or_else(|| panic!("no tail in {line:?}"));
    assert_eq!(names.split(", ").count(), 500);
    drop(crowd);
    server.stop().await;
}

#[tokio::test]
async fn rooms_in_use_are_capped_and_freed_when_empty() {
    let server = TestServer::with(|c| c.max_rooms = 2).await;
    let url = server.url();
    let [_a, mut b, mut c] = plain_peers(&url).await;
    let (b_name, c_name) = (b.name(), c.name());
    b.send("/join two").await;
    until(&mut b, &format!("* {b_name} joined two")).await;
    c.send("/join three").await;
    until(
        &mut c,
        "! cannot open room three: the server has its limit of 2 rooms in use",
    )
    .await;
    // Rooms that exist can still be joined.
    c.send("/join two").await;
    until(&mut c, &format!("* {c_name} joined two")).await;
    b.send("/join lobby").await;
    until(&mut b, &format!("* {b_name} joined lobby")).await;
    c.send("/join lobby").await;
    until(&mut c, &format!("* {c_name} joined lobby")).await;
    // "two" is empty now, so it no longer counts.
    c.send("/join three").await;
    until(&mut c, &format!("* {c_name} joined three")).await;
    server.stop().await;
}

/// Reads `peer`'s lines up to `line`, passing over notices about others;
/// any other line first is a failure.
async fn until(peer: &mut Peer, line: &str) {
    loop {
        let got = peer.text().await;
        if got == line {
            return;
        }
        assert!(got.starts_with("* "), "expected {line:?}, got {got:?}");
    }
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn wandering_through_many_rooms_costs_no_memory() {
    let (server, url) = common::spawn_server(&["--rate", "0"]).await;
    let pid = server.child.id().expect("running");
    let mut peer = Peer::plain(&url).await;
    // Warm up: the first rooms set up what any room needs.
    for n in 0..200 {
        peer.send(&format!("/join warm{n}")).await;
        peer.expect(&format!("* {} joined warm{n}", peer.name()))
            .await;
    }
    let before = rss_kib(pid);
    // Each room once had a broadcast buffer of --max-lag slots, never
    // freed: 20,000 rooms took over 600 MB.
    for n in 0..20_000 {
        peer.send(&format!("/join r{n}")).await;
        peer.expect(&format!("* {} joined r{n}", peer.name())).await;
    }
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown < 32 * 1024, "20,000 rooms cost {grown} KiB");
}

/// A room's buffer was bounded in frames only, and a reader closed for
/// being too slow kept its place in it for the close's grace: 300 large
/// messages that the other reader had long read stayed in memory.
#[tokio::test]
async fn a_room_s_buffer_is_bounded_in_bytes_and_frees_what_was_read() {
    let (server, url) = common::spawn_server(&[
        "--rate",
        "0",
        "--history",
        "0",
        "--max-message-bytes",
        "65000",
    ])
    .await;
    let pid = server.child.id().expect("running");
    let (mut sender, _) = Peer::json_joined(&url).await;
    let mut reader = Peer::plain(&url).await;
    let mut stalled = Peer::plain(&url).await;
    // Warm up: the allocator gets the arenas any large message needs.
    for n in 0..5 {
        say_large_and_read(&mut sender, &mut reader, n).await;
    }
    let before = rss_kib(pid);
    for n in 5..305 {
        say_large_and_read(&mut sender, &mut reader, n).await;
    }
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(
        grown < 12 * 1024,
        "300 messages of 60 kB everyone had read cost {grown} KiB"
    );
    // The reader that never read was closed for it.
    assert_eq!(stalled.closed().await, (1013, "too slow".to_owned()));
}

/// `sender` says a 60 kB message with cid `c{n}`, waits for its
/// acknowledgement, and `reader` reads it.
async fn say_large_and_read(sender: &mut Peer, reader: &mut Peer, n: usize) {
    let text = "m".repeat(60_000);
    sender
        .send(&format!(r#"{{"type":"say","text":"{text}","cid":"c{n}"}}"#))
        .await;
    loop {
        if let wschat::protocol::ServerFrame::Message { cid: Some(cid), .. } = sender.frame().await
        {
            assert_eq!(cid, format!("c{n}"));
            break;
        }
    }
    until(reader, &format!("{}: {text}", sender.name())).await;
}

/// `--max-rooms` counted rooms with members only, so one client could post
/// into ever more new rooms, each kept in memory by its history for a day.
#[tokio::test]
async fn max_rooms_counts_rooms_kept_in_memory_by_their_history() {
    let server = TestServer::with(|c| {
        c.max_rooms = 20;
        c.rate = 0;
    })
    .await;
    let mut peer = Peer::plain(&server.url()).await;
    let name = peer.name();
    for n in 0..20 {
        peer.send(&format!("/join r{n}")).await;
        until(&mut peer, &format!("* {name} joined r{n}")).await;
        peer.send("one message keeps the room").await;
    }
    peer.send("/join r20").await;
    until(
        &mut peer,
        "! cannot open room r20: the server has its limit of 20 rooms in use",
    )
    .await;
    // A room its history keeps can still be entered.
    peer.send("/join r0").await;
    until(&mut peer, &format!("{name}: one message keeps the room")).await;
    until(&mut peer, &format!("* {name} joined r0")).await;
    server.stop().await;
}

/// A room whose history is in the `--db` file costs no memory once empty,
/// so it does not count against `--max-rooms`.
#[tokio::test]
async fn max_rooms_does_not_count_rooms_whose_history_is_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("chat.db");
    let server = TestServer::with(|c| {
        c.max_rooms = 5;
        c.rate = 0;
        c.db = Some(db);
    })
    .await;
    let mut peer = Peer::plain(&server.url()).await;
    let name = peer.name();
    for n in 0..10 {
        peer.send(&format!("/join r{n}")).await;
        until(&mut peer, &format!("* {name} joined r{n}")).await;
        peer.send("kept on disk").await;
    }
    server.stop().await;
}

/// A real user connecting (again, a tenth of a second after each refusal)
/// until it gets in, and its welcome; its connection.
async fn a_user_gets_in(
    url: &str,
) -> tokio_websockets::WebSocketStream<tokio_websockets::MaybeTlsStream<TcpStream>> {
    let mut user = within("a place for the user", async {
        loop {
            if let Ok(Ok((ws, _))) = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                tokio_websockets::ClientBuilder::new()
                    .uri(url)
                    .expect("uri")
                    .connect(),
            )
            .await
            {
                return ws;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    let welcome = within("the welcome", futures_util::StreamExt::next(&mut user))
        .await
        .and_then(Result::ok);
    assert_eq!(welcome.as_ref().and_then(|m| m.as_text()), Some(WELCOME));
    user
}

/// A server with 16 handshake places and an hour's handshake timeout, and
/// two sockets from each of eight /24s holding all of them, each having
/// sent `begun` (nothing, or the start of a request).
async fn every_handshake_place_taken(begun: &[u8]) -> (TestServer, Vec<TcpStream>) {
    let server = TestServer::with(|c| {
        c.max_handshakes = 16;
        c.handshake_timeout = 3600;
    })
    .await;
    let mut sockets = Vec::new();
    for net in 1..=8u8 {
        for host in 1..=2u8 {
            let mut socket = connect_from(server.addr, [127, 0, net, host]).await;
            socket.write_all(begun).await.expect("write");
            sockets.push(socket);
        }
    }
    (server, sockets)
}

#[tokio::test]
async fn trickling_handshakes_from_many_networks_give_their_places_to_a_newcomer() {
    // 16 places, 2 per network: eight /24s of sockets that have begun their
    // requests and never finish them fill them all (most with the hour of
    // the handshake timeout). None is silent, so the network holding most
    // (any, here) makes way.
    let (server, _trickling) = every_handshake_place_taken(b"GET / HTTP/1.1\r\n").await;
    a_user_gets_in(&server.url()).await;
    // Exactly one of them was closed to make way.
    let answer = common::metrics(server.addr).await;
    assert_eq!(
        common::metric(&answer, "wschat_handshakes_evicted_total"),
        Some(1.0),
        "{answer}"
    );
    server.stop().await;
}

#[tokio::test]
async fn silent_sockets_from_many_networks_give_their_places_to_a_newcomer() {
    // 16 places, 2 per network: eight /24s of silent sockets fill them all
    // (more than the handshake timeout of an hour would ever clear).
    let (server, mut silent) = every_handshake_place_taken(b"").await;
    // A real user, from yet another network, gets in within a second (the
    // sockets must have been silent for half a second to give way; until
    // then a newcomer is turned away at once, and tries again).
    let user = a_user_gets_in(&server.url()).await;
    // The oldest silent socket gave its place up: it is closed.
    let mut oldest = silent.remove(0);
    let mut buf = [0u8; 16];
    let read = within(
        "the oldest silent socket to be closed",
        oldest.read(&mut buf),
    )
    .await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let answer = common::metrics(server.addr).await;
    assert!(
        common::metric(&answer, "wschat_handshakes_evicted_total").unwrap_or(0.0) >= 1.0,
        "{answer}"
    );
    // The next oldest (whose handshake began before the places ran short,
    // so it has the whole hour) was not touched.
    let mut next = silent.remove(0);
    next.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    assert!(
        read_to_end(&mut next)
            .await
            .starts_with(b"HTTP/1.1 200 OK\r\n")
    );
    drop((silent, user));
    server.stop().await;
}

/// A JSON peer that asks for the lobby's 500 messages of scroll-back, many
/// times over, and reads none of it.
async fn asks_and_reads_nothing(addr: std::net::SocketAddr) -> RawPeer {
    let (status, peer) = RawPeer::upgrade(addr, "/", &["Sec-WebSocket-Protocol: wschat.v1"]).await;
    assert_eq!(status, 101);
    let mut peer = peer.expect("upgraded");
    for _ in 0..15 {
        let older = br#"{"type":"older","room":"lobby","before":501,"limit":500}"#;
        peer.send_frame(1, older).await;
    }
    peer
}

/// Waits until `/metrics` counts a connection closed for its queue.
async fn queue_closed(addr: std::net::SocketAddr) {
    within("a queue to be closed", async {
        loop {
            let answer = common::metrics(addr).await;
            if common::metric(&answer, "wschat_queue_closes_total").unwrap_or(0.0) >= 1.0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn send_queues_together_are_bounded_and_the_furthest_behind_are_closed() {
    // Each connection may fall 64 MiB (and a million frames) behind, all
    // together 8 MiB.
    let server = TestServer::with(|c| {
        c.rate = 0;
        c.max_lag = 1 << 20;
        c.max_lag_bytes = 64 << 20;
        c.max_queued_bytes = 8 << 20;
    })
    .await;
    let url = server.url();
    let (mut writer, _) = Peer::json_joined(&url).await;
    common::say_many(&mut writer, 500, &"y".repeat(4000)).await;
    // Three peers that read nothing ask for scroll-back; each gets a first
    // page of 16 MiB (a quarter of what may wait for it), more than the
    // kernel's buffers take (about 10 MB a connection on loopback): the
    // server-wide budget is hit.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(asks_and_reads_nothing(server.addr).await);
    }
    // The one furthest behind is closed (1013), the others are left alone
    // once the total is back within the budget, and it is counted.
    queue_closed(server.addr).await;
    // The writer, who reads, chats on.
    writer
        .send(r#"{"type":"say","text":"still here","cid":"last"}"#)
        .await;
    loop {
        if let wschat::protocol::ServerFrame::Message { cid: Some(cid), .. } = writer.frame().await
            && cid == "last"
        {
            break;
        }
    }
    drop(stalled);
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_reads_nothing_while_bytes_wait_is_closed_though_it_pings() {
    let server = TestServer::with(|c| {
        c.rate = 0;
        c.max_lag = 1 << 20;
        c.max_lag_bytes = 64 << 20;
        c.ping_interval = 1;
        c.idle_timeout = 3;
    })
    .await;
    let url = server.url();
    let (mut writer, _) = Peer::json_joined(&url).await;
    common::say_many(&mut writer, 500, &"z".repeat(4000)).await;
    let mut peer = asks_and_reads_nothing(server.addr).await;
    // It looks alive (it pings the server every half second) but takes
    // none of what waits for it (a first page of 16 MiB).
    within("the non-reader to be closed", async {
        loop {
            let answer = common::metrics(server.addr).await;
            if common::metric(&answer, "wschat_queue_closes_total").unwrap_or(0.0) >= 1.0 {
                return;
            }
            peer.send_frame(9, b"alive").await;
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    })
    .await;
    server.stop().await;
}
