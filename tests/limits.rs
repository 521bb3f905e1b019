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
        "! rate limited: at most 20 messages per 10 s (bursts of 3); this one was not delivered",
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
            Some(RawFrame::Text(_)) => {}
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
        http_request(addr, "\x16\x03\x01\x00\x7fgarbage\r\n\r\n").await,
        400
    );
    assert_eq!(
        http_request(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await,
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
