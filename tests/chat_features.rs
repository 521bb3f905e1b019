//! Nicks, rooms, private messages, history and the JSON protocol.

mod common;

use common::{Peer, TestServer, plain_peers};
use wschat::protocol::{ErrorCode, RoomInfo, ServerFrame, WELCOME};

/// A JSON peer past its welcome and own join; returns it and its initial name.
async fn json_peer(url: &str) -> (Peer, String) {
    let mut peer = Peer::json(url).await;
    let ServerFrame::Welcome {
        text, nick, room, ..
    } = peer.frame().await
    else {
        panic!("first frame must be welcome");
    };
    assert_eq!(text, WELCOME);
    assert_eq!(room, "lobby");
    assert_eq!(nick, peer.name());
    assert_eq!(
        peer.frame().await,
        ServerFrame::Joined {
            room: "lobby".into(),
            nick: nick.clone()
        }
    );
    (peer, nick)
}

/// The sender, text and id of a message frame.
fn message_text(frame: &ServerFrame) -> (String, String, u64) {
    match frame {
        ServerFrame::Message { from, text, id, .. } => (from.clone(), text.clone(), *id),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn nick_rename_is_announced_and_unique_case_insensitively() {
    let server = TestServer::start().await;
    let url = server.url();
    let [mut a, mut b] = plain_peers(&url).await;

    a.send("/nick Alice").await;
    let renamed = format!("* {} is now known as Alice", a.name());
    a.expect(&renamed).await;
    b.expect(&renamed).await;

    b.send("/nick alice").await;
    b.expect("! nickname alice is already in use").await;
    b.send("/nick not valid!").await;
    b.expect(r#"! invalid nickname "not valid!": use 1-24 of A-Z a-z 0-9 _ -"#)
        .await;
    // Asking for the nick one has is answered too.
    a.send("/nick Alice").await;
    a.expect("* you are already Alice").await;
    server.stop().await;
}

#[tokio::test]
async fn bad_nicks_are_refused() {
    let server = TestServer::start().await;
    let mut a = Peer::plain(&server.url()).await;
    a.send(&format!("/nick {}", "x".repeat(25))).await;
    let line = a.text().await;
    assert!(line.starts_with("! invalid nickname"), "{line}");
    a.send("/nick bad.nick").await;
    let line = a.text().await;
    assert!(line.starts_with("! invalid nickname"), "{line}");
    server.stop().await;
}

#[tokio::test]
async fn nick_is_freed_when_its_connection_ends() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut a = Peer::plain(&url).await;
    a.send("/nick zed").await;
    a.expect(&format!("* {} is now known as zed", a.name()))
        .await;
    a.close().await;
    let mut b = Peer::plain(&url).await;
    b.send("/nick ZED").await;
    b.expect(&format!("* {} is now known as ZED", b.name()))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn rooms_are_isolated_and_join_leave_is_announced() {
    let server = TestServer::start().await;
    let url = server.url();
    let [mut a, mut b, mut c] = plain_peers(&url).await;

    a.send("/join Rust").await;
    a.expect(&format!("* {} joined rust", a.name())).await;
    b.expect(&format!("* {} left lobby", a.name())).await;
    c.expect(&format!("* {} left lobby", a.name())).await;
    b.send("/join rust").await;
    b.expect(&format!("* {} joined rust", b.name())).await;
    a.expect(&format!("* {} joined rust", b.name())).await;
    c.expect(&format!("* {} left lobby", b.name())).await;

    // A message in rust reaches rust only: c's next line is its own room's.
    a.send("rust only").await;
    b.expect(&format!("{}: rust only", a.name())).await;
    let mut d = Peer::plain(&url).await;
    c.expect(&format!("* {} joined lobby", d.name())).await;
    d.send("lobby only").await;
    c.expect(&format!("{}: lobby only", d.name())).await;
    // ...and the lobby message never reached rust: b's next is a's.
    a.send("still rust").await;
    b.expect(&format!("{}: still rust", a.name())).await;

    c.send("/join bad room").await;
    c.expect(r#"! invalid room name "bad room": use 1-32 of a-z 0-9 _ -"#)
        .await;
    c.send("/join bad.room").await;
    let line = c.text().await;
    assert!(line.starts_with("! invalid room name"), "{line}");
    server.stop().await;
}

#[tokio::test]
async fn private_messages_reach_the_recipient_only() {
    let server = TestServer::start().await;
    let url = server.url();
    let [mut a, mut b, mut c] = plain_peers(&url).await;
    b.send("/nick bob").await;
    let renamed = format!("* {} is now known as bob", b.name());
    for peer in [&mut a, &mut b, &mut c] {
        peer.expect(&renamed).await;
    }

    a.send("/msg BOB psst, only you").await;
    b.expect(&format!("[private] {}: psst, only you", a.name()))
        .await;
    // c saw nothing: its next line is the public sentinel.
    a.send("public sentinel").await;
    c.expect(&format!("{}: public sentinel", a.name())).await;
    b.expect(&format!("{}: public sentinel", a.name())).await;

    a.send("/msg nobody hello?").await;
    a.expect("! no such user: nobody").await;
    a.send("/msg bob").await;
    a.expect("! usage: /msg NICK TEXT").await;
    server.stop().await;
}

#[tokio::test]
async fn private_messages_in_json_mode_are_acknowledged() {
    let server = TestServer::start().await;
    let url = server.url();
    let (mut a, a_name) = json_peer(&url).await;
    let (mut b, b_name) = json_peer(&url).await;
    let _ = a.frame().await; // b joined
    a.send(&format!(
        r#"{{"type":"private","to":"{b_name}","text":"psst","cid":"p1"}}"#
    ))
    .await;
    let ServerFrame::Private {
        from,
        to,
        text,
        cid,
        ..
    } = b.frame().await
    else {
        panic!("expected a private message");
    };
    assert_eq!(
        (from.as_str(), to.as_str(), text.as_str(), cid),
        (a_name.as_str(), b_name.as_str(), "psst", None)
    );
    let ServerFrame::Private { cid, .. } = a.frame().await else {
        panic!("expected the sender's acknowledgement");
    };
    assert_eq!(cid.as_deref(), Some("p1"));
    a.send(r#"{"type":"private","to":"ghost","text":"boo","cid":"p2"}"#)
        .await;
    assert_eq!(
        a.frame().await,
        ServerFrame::Error {
            code: ErrorCode::NoSuchUser,
            text: "no such user: ghost".into(),
            cid: Some("p2".into())
        }
    );
    server.stop().await;
}

#[tokio::test]
async fn who_rooms_and_help() {
    let server = TestServer::start().await;
    let url = server.url();
    let [mut a, mut b] = plain_peers(&url).await;
    a.send("/nick amy").await;
    a.expect(&format!("* {} is now known as amy", a.name()))
        .await;
    b.send("/nick Bea").await;
    a.expect(&format!("* {} is now known as Bea", b.name()))
        .await;
    a.send("/who").await;
    a.expect("* 2 in lobby: amy, Bea").await;
    b.send("/join rust").await;
    a.expect("* Bea left lobby").await;
    a.send("/rooms").await;
    a.expect("* rooms: lobby (1), rust (1)").await;
    a.send("/help").await;
    a.expect("* commands:").await;
    let line = a.text().await;
    assert!(line.starts_with("* /nick NAME"), "{line}");

    let (mut j, j_name) = json_peer(&url).await;
    j.send(r#"{"type":"rooms"}"#).await;
    assert_eq!(
        j.frame().await,
        ServerFrame::Rooms {
            rooms: vec![
                RoomInfo {
                    name: "lobby".into(),
                    members: 2,
                    last: None,
                },
                RoomInfo {
                    name: "rust".into(),
                    members: 1,
                    last: None,
                },
            ],
            more: 0,
        }
    );
    j.send(r#"{"type":"who"}"#).await;
    let ServerFrame::Members { room, nicks, .. } = j.frame().await else {
        panic!("expected members");
    };
    assert_eq!(room, "lobby");
    assert_eq!(nicks, [j_name.as_str(), "amy"]);
    server.stop().await;
}

#[tokio::test]
async fn late_joiners_get_recent_history_in_order() {
    let server = TestServer::with(|c| c.history_on_join = 3).await;
    let url = server.url();
    let mut a = Peer::plain(&url).await;
    a.send("/nick ann").await;
    a.expect(&format!("* {} is now known as ann", a.name()))
        .await;
    for n in 1..=5 {
        a.send(&format!("m{n}")).await;
    }
    // The messages are stored once a's own later request is answered.
    a.send("/who").await;
    a.expect("* 1 in lobby: ann").await;

    let mut late = Peer::plain_raw(&url).await;
    late.expect(WELCOME).await;
    for n in 3..=5 {
        late.expect(&format!("ann: m{n}")).await;
    }
    late.expect(&format!("* {} joined lobby", late.name()))
        .await;

    let mut j = Peer::json(&url).await;
    let _ = j.frame().await; // welcome
    let mut ids = Vec::new();
    for n in 3..=5 {
        let frame = j.frame().await;
        let ServerFrame::Message {
            text,
            history,
            id,
            room,
            ..
        } = &frame
        else {
            panic!("expected history, got {frame:?}");
        };
        assert_eq!(
            (text.as_str(), *history, room.as_str()),
            (format!("m{n}").as_str(), true, "lobby")
        );
        ids.push(*id);
    }
    assert_eq!(ids, [3, 4, 5]);
    server.stop().await;
}

#[tokio::test]
async fn json_sender_gets_its_message_back_with_cid_and_id() {
    let server = TestServer::start().await;
    let url = server.url();
    let (mut a, a_name) = json_peer(&url).await;
    let mut p = Peer::plain(&url).await;
    let _ = a.frame().await; // p joined
    a.send(r#"{"type":"say","text":"hi","cid":"c-1","extra":"ignored"}"#)
        .await;
    let ServerFrame::Message {
        id,
        room,
        from,
        text,
        ts,
        cid,
        history,
    } = a.frame().await
    else {
        panic!("expected the acknowledgement");
    };
    assert_eq!(
        (id, room.as_str(), from.as_str(), text.as_str()),
        (1, "lobby", a_name.as_str(), "hi")
    );
    assert_eq!((cid.as_deref(), history), (Some("c-1"), false));
    assert!(ts > 1_700_000_000_000);
    p.expect(&format!("{a_name}: hi")).await;

    a.send(r#"{"type":"say","text":"again"}"#).await;
    let (_, text, id) = message_text(&a.frame().await);
    assert_eq!((text.as_str(), id), ("again", 2));
    server.stop().await;
}

#[tokio::test]
async fn json_errors_keep_the_connection() {
    let server = TestServer::with(|c| c.max_message_bytes = 10).await;
    let url = server.url();
    let (mut a, _) = json_peer(&url).await;
    let expect_code = |frame: ServerFrame, want: ErrorCode| match frame {
        ServerFrame::Error { code, .. } => assert_eq!(code, want),
        other => panic!("expected error {want:?}, got {other:?}"),
    };
    a.send("{not json").await;
    expect_code(a.frame().await, ErrorCode::BadJson);
    a.send(r#"{"type":"dance"}"#).await;
    expect_code(a.frame().await, ErrorCode::UnknownType);
    a.send(r#"{"type":"say"}"#).await;
    expect_code(a.frame().await, ErrorCode::BadJson);
    a.send(r#"{"type":"say","text":"this is far too long","cid":"x"}"#)
        .await;
    let frame = a.frame().await;
    assert!(
        matches!(&frame, ServerFrame::Error { code: ErrorCode::TooLong, cid: Some(c), .. } if c == "x"),
        "{frame:?}"
    );
    a.send(r#"{"type":"nick","nick":"no spaces"}"#).await;
    expect_code(a.frame().await, ErrorCode::BadNick);
    a.send(r#"{"type":"join","room":"UPPER.case"}"#).await;
    expect_code(a.frame().await, ErrorCode::BadRoom);
    a.send_message(tokio_websockets::Message::binary(&b"\x01"[..]))
        .await;
    expect_code(a.frame().await, ErrorCode::BinaryUnsupported);
    a.send(r#"{"type":"say","text":"ok"}"#).await;
    let (_, text, _) = message_text(&a.frame().await);
    assert_eq!(text.as_str(), "ok");
    server.stop().await;
}

#[tokio::test]
async fn join_after_replays_exactly_the_missing_messages_then_live() {
    let server = TestServer::start().await;
    let url = server.url();
    let (mut writer, _) = json_peer(&url).await;
    writer.send(r#"{"type":"join","room":"dev"}"#).await;
    let _ = writer.frame().await; // own joined
    for n in 1..=6 {
        writer
            .send(&format!(r#"{{"type":"say","text":"m{n}","cid":"{n}"}}"#))
            .await;
        let (_, _, id) = message_text(&writer.frame().await);
        assert_eq!(id, n);
    }

    let (mut reader, _) = json_peer(&url).await;
    reader
        .send(r#"{"type":"join","room":"dev","after":4}"#)
        .await;
    // Replayed: exactly 5 and 6, marked as history...
    for want in [5, 6] {
        let frame = reader.frame().await;
        let ServerFrame::Message { id, history, .. } = frame else {
            panic!("expected history, got {frame:?}");
        };
        assert_eq!((id, history), (want, true));
    }
    let ServerFrame::Joined { room, .. } = reader.frame().await else {
        panic!("expected own joined");
    };
    assert_eq!(room, "dev");
    // ...then live, starting right after.
    writer.send(r#"{"type":"say","text":"m7"}"#).await;
    let frame = reader.frame().await;
    let (_, text, id) = message_text(&frame);
    assert_eq!((text.as_str(), id), ("m7", 7));
    assert!(matches!(frame, ServerFrame::Message { history: false, .. }));

    // Resuming in the room one is already in replays without notices.
    reader
        .send(r#"{"type":"join","room":"dev","after":6}"#)
        .await;
    let (_, text, id) = message_text(&reader.frame().await);
    assert_eq!((text.as_str(), id), ("m7", 7));
    writer.send(r#"{"type":"say","text":"m8"}"#).await;
    let (_, text, id) = message_text(&reader.frame().await);
    assert_eq!((text.as_str(), id), ("m8", 8));
    server.stop().await;
}

#[tokio::test]
async fn replayed_messages_carry_their_cid_only_to_the_connection_that_sent_them() {
    let server = TestServer::start().await;
    let url = server.url();
    let (mut a, _) = json_peer(&url).await;
    a.send(r#"{"type":"nick","nick":"kim"}"#).await;
    let _ = a.frame().await; // renamed
    a.send(r#"{"type":"say","text":"stored","cid":"k-1"}"#)
        .await;
    let _ = a.frame().await; // ack
    // Replayed to its author, it carries its cid...
    a.send(r#"{"type":"join","room":"lobby","after":0}"#).await;
    let frame = a.frame().await;
    assert!(
        matches!(&frame, ServerFrame::Message { cid: Some(c), history: true, .. } if c == "k-1"),
        "{frame:?}"
    );
    a.close().await;

    let mut again = Peer::json(&url).await;
    assert!(matches!(again.frame().await, ServerFrame::Welcome { .. }));
    // ...replayed to a stranger, none...
    let frame = again.frame().await;
    assert!(
        matches!(
            &frame,
            ServerFrame::Message {
                cid: None,
                history: true,
                ..
            }
        ),
        "{frame:?}"
    );
    assert!(matches!(again.frame().await, ServerFrame::Joined { .. }));
    // ...and none to whoever takes the nick next.
    again.send(r#"{"type":"nick","nick":"kim"}"#).await;
    let _ = again.frame().await; // renamed
    again
        .send(r#"{"type":"join","room":"lobby","after":0}"#)
        .await;
    let frame = again.frame().await;
    assert!(
        matches!(
            &frame,
            ServerFrame::Message {
                cid: None,
                history: true,
                ..
            }
        ),
        "{frame:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn rooms_over_the_announce_limit_stay_quiet() {
    let server = TestServer::with(|c| c.announce_limit = 2).await;
    let url = server.url();
    let [mut a, b] = plain_peers(&url).await;

    // A third member: only it hears of its arrival and its rename.
    let mut c = Peer::plain(&url).await;
    c.send("/nick cat").await;
    c.expect(&format!("* {} is now known as cat", c.name()))
        .await;
    c.send("hello").await;
    a.expect("cat: hello").await;
    a.send("/who").await;
    let who = a.text().await;
    assert!(who.starts_with("* 3 in lobby: "), "{who}");

    // The limit applies to the room as it is after the change: once cat has
    // left, the room is back at the limit and the departure is announced.
    c.close().await;
    a.expect("* cat left lobby").await;
    let b_name = b.name();
    b.close().await;
    a.expect(&format!("* {b_name} left lobby")).await;
    server.stop().await;
}
