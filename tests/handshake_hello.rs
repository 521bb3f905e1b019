//! Nick and room in the handshake (`?nick=&room=`), applied before the
//! welcome, and handing a nick over to the same client's new connection
//! (`?resume=`).

mod common;

use common::{Peer, TestServer, plain_peers};
use wschat::protocol::{ErrorCode, ServerFrame};

/// The welcome's nick, room and resume secret.
async fn welcome(peer: &mut Peer) -> (String, String, Option<String>) {
    match peer.frame().await {
        ServerFrame::Welcome {
            nick, room, resume, ..
        } => (nick, room, resume),
        other => panic!("expected the welcome, got {other:?}"),
    }
}

/// The next error's code, passing over anything else.
async fn next_error(peer: &mut Peer) -> ErrorCode {
    loop {
        if let ServerFrame::Error { code, .. } = peer.frame().await {
            return code;
        }
    }
}

#[tokio::test]
async fn nick_and_room_in_the_handshake_make_one_join_notice() {
    let server = TestServer::start().await;
    let url = server.url();
    let [mut watcher] = plain_peers(&url).await;
    watcher.send("/join nest").await;
    watcher
        .expect(&format!("* {} joined nest", watcher.name()))
        .await;
    let mut alice = Peer::json(&format!("{url}/?nick=alice&room=Nest")).await;
    let (nick, room, resume) = welcome(&mut alice).await;
    assert_eq!((nick.as_str(), room.as_str()), ("alice", "nest"));
    assert_eq!(resume.map(|s| s.len()), Some(32));
    // Exactly this, and nothing about an address or a rename before it.
    watcher.expect("* alice joined nest").await;
    alice.send(r#"{"type":"who"}"#).await;
    loop {
        if let ServerFrame::Members { nicks, .. } = alice.frame().await {
            assert_eq!(nicks, [watcher.name().as_str(), "alice"]);
            break;
        }
    }
    // Plain mode takes them too.
    let mut plain = Peer::plain_raw(&format!("{url}/?nick=pam&room=nest")).await;
    plain.expect(wschat::protocol::WELCOME).await;
    watcher.expect("* pam joined nest").await;
    drop(plain);
    server.stop().await;
}

#[tokio::test]
async fn what_the_handshake_asks_for_is_checked_like_the_commands() {
    let server = TestServer::with(|c| c.max_rooms = 1).await;
    let url = server.url();
    let [holder] = plain_peers(&url).await;
    let mut bad = Peer::json(&format!("{url}/?nick=no%20way&room=lobby")).await;
    let (nick, room, _) = welcome(&mut bad).await;
    assert_eq!((nick, room.as_str()), (bad.name(), "lobby"));
    assert_eq!(next_error(&mut bad).await, ErrorCode::BadNick);
    let mut crowded = Peer::json(&format!("{url}/?room=another")).await;
    let (_, room, _) = welcome(&mut crowded).await;
    assert_eq!(room, "lobby");
    assert_eq!(next_error(&mut crowded).await, ErrorCode::TooManyRooms);
    // A value that does not decode is refused, not ignored.
    let mut undecodable = Peer::json(&format!("{url}/?nick=%zz")).await;
    welcome(&mut undecodable).await;
    match undecodable.frame().await {
        ServerFrame::Error { code, text, .. } => {
            assert_eq!(code, ErrorCode::BadNick);
            assert!(text.contains(r#""%zz""#), "{text}");
        }
        other => panic!("expected bad_nick, got {other:?}"),
    }
    let mut undecodable = Peer::json(&format!("{url}/?room=lob%by")).await;
    welcome(&mut undecodable).await;
    assert_eq!(next_error(&mut undecodable).await, ErrorCode::BadRoom);
    drop(holder);
    server.stop().await;
}

#[tokio::test]
async fn a_head_with_bare_line_feeds_or_a_bad_key_is_answered_at_once() {
    // Were either left to the handshake timeout, the test would time out.
    let server = TestServer::with(|c| c.handshake_timeout = 3600).await;
    let addr = server.addr;
    let bare = format!(
        "GET / HTTP/1.1\nHost: {addr}\nUpgrade: websocket\nConnection: Upgrade\n\
         Sec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\n"
    );
    assert_eq!(common::http_request(addr, &bare).await, 400);
    let (status, _) = common::RawPeer::upgrade(addr, "/", &[]).await;
    assert_eq!(status, 101);
    let bad_key = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: x\r\n\r\n"
    );
    assert_eq!(common::http_request(addr, &bad_key).await, 400);
    for host in ["[::1]evil", "127.0.0.1:80@evil"] {
        let lookalike = format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        assert_eq!(common::http_request(addr, &lookalike).await, 400, "{host}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_new_connection_with_the_secret_takes_the_nick_over() {
    let server = TestServer::start().await;
    let url = server.url();
    let [mut watcher] = plain_peers(&url).await;
    let mut old = Peer::json(&format!("{url}/?nick=rita")).await;
    let (_, _, secret) = welcome(&mut old).await;
    let secret = secret.expect("a resume secret");
    watcher.expect("* rita joined lobby").await;

    // Someone else cannot, with no secret or a wrong one.
    for query in [
        "?nick=rita",
        "?nick=rita&resume=00112233445566778899aabbccddeeff",
    ] {
        let mut other = Peer::json(&format!("{url}/{query}")).await;
        let (nick, _, _) = welcome(&mut other).await;
        assert_eq!(nick, other.name());
        assert_eq!(next_error(&mut other).await, ErrorCode::NickTaken);
        let name = other.name();
        watcher.expect(&format!("* {name} joined lobby")).await;
        other.close().await;
        watcher.expect(&format!("* {name} left lobby")).await;
    }

    // The same client, reconnecting before the server noticed the old
    // connection is gone, can.
    let mut new = Peer::json(&format!("{url}/?nick=rita&resume={secret}")).await;
    let (nick, _, fresh) = welcome(&mut new).await;
    assert_eq!(nick, "rita");
    assert_ne!(fresh.as_deref(), Some(secret.as_str()));
    assert_eq!(
        old.closed().await,
        (1000, "replaced by a new connection".to_owned())
    );
    // The watcher sees the new one arrive and never the old one leave.
    watcher.expect("* rita joined lobby").await;
    watcher.send("/who").await;
    watcher
        .expect(&format!("* 2 in lobby: {}, rita", watcher.name()))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_nick_in_the_handshake_costs_a_request_from_the_address_s_budget() {
    // Three requests per 10 s from one address, in bursts of one.
    let server = TestServer::with(|c| c.rate_per_ip = Some(3)).await;
    let url = server.url();
    let [mut watcher] = plain_peers(&url).await;
    let mut first = Peer::json(&format!("{url}/?nick=churn1")).await;
    let (nick, _, _) = welcome(&mut first).await;
    assert_eq!(nick, "churn1");
    watcher.expect("* churn1 joined lobby").await;
    // The budget is spent: the next one starts with its address, and says why.
    let mut second = Peer::json(&format!("{url}/?nick=churn2&room=elsewhere")).await;
    let (nick, room, _) = welcome(&mut second).await;
    assert_eq!((nick, room.as_str()), (second.name(), "lobby"));
    assert_eq!(next_error(&mut second).await, ErrorCode::RateLimited);
    watcher
        .expect(&format!("* {} joined lobby", second.name()))
        .await;
    server.stop().await;
}
