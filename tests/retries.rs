//! A retry is never a copy, and a cid is its sender's business only, on
//! every backend (memory, SQLite, Redis across two nodes).
//!
//! Clients retry a message they have no acknowledgement for with the same
//! cid (after a reconnect, or after `unavailable`); the server answers a
//! retry of a stored message with the original instead of storing it again.

mod common;

use common::redis::RedisServer;
use common::{Peer, Proc, spawn_server, within};
use wschat::protocol::{ErrorCode, ServerFrame};

fn say(text: &str, cid: &str) -> String {
    format!(r#"{{"type":"say","text":"{text}","cid":"{cid}"}}"#)
}

/// A JSON peer named `nick` (taken in the handshake), past its welcome and
/// its own `joined`; with the welcome's replay of the lobby.
async fn join_as(url: &str, nick: &str) -> (Peer, Vec<ServerFrame>) {
    let mut peer = Peer::json(&format!("{url}/?nick={nick}")).await;
    let mut replay = Vec::new();
    loop {
        match peer.frame().await {
            ServerFrame::Joined { nick: n, .. } if n == nick => return (peer, replay),
            frame @ ServerFrame::Message { .. } => replay.push(frame),
            ServerFrame::Error { text, .. } => panic!("{nick}: {text}"),
            _ => {}
        }
    }
}

/// The next chat message `peer` receives, as (id, text, cid).
async fn message(peer: &mut Peer) -> (u64, String, Option<String>) {
    loop {
        match peer.frame().await {
            ServerFrame::Message { id, text, cid, .. } => return (id, text, cid),
            ServerFrame::Error { text, .. } => panic!("unexpected error: {text}"),
            _ => {}
        }
    }
}

/// Waits until `peer` hears `nick` leave.
async fn left(peer: &mut Peer, nick: &str) {
    loop {
        if let ServerFrame::Left { nick: n, .. } = peer.frame().await
            && n == nick
        {
            return;
        }
    }
}

/// Alice stores a message, goes, comes back (to `url_again`) and sends it
/// again with the same cid: she gets the original back, and bob, who heard
/// it once, never hears it again.
async fn a_retry_is_the_original(url: &str, url_again: &str) {
    let (mut bob, _) = join_as(url, "bob").await;
    let (mut alice, _) = join_as(url, "alice").await;
    alice.send(&say("hello", "k1")).await;
    let (id, text, cid) = message(&mut alice).await;
    assert_eq!((text.as_str(), cid.as_deref()), ("hello", Some("k1")));
    assert_eq!(message(&mut bob).await, (id, "hello".to_owned(), None));
    alice.close().await;
    left(&mut bob, "alice").await;

    let (mut alice, _) = join_as(url_again, "ALICE").await;
    alice.send(&say("hello", "k1")).await;
    match alice.frame().await {
        ServerFrame::Message {
            id: again,
            text,
            cid,
            history,
            from,
            ..
        } => {
            assert_eq!(
                (again, text.as_str(), cid.as_deref()),
                (id, "hello", Some("k1"))
            );
            assert_eq!((from.as_str(), history), ("alice", false));
        }
        other => panic!("expected the original, got {other:?}"),
    }
    // Nothing reached bob: the next message he hears is the next one.
    alice.send(&say("next", "k2")).await;
    assert_eq!(message(&mut bob).await, (id + 1, "next".to_owned(), None));
    assert_eq!(
        message(&mut alice).await,
        (id + 1, "next".to_owned(), Some("k2".to_owned()))
    );
    // Another sender's cid is its own.
    bob.send(&say("bob's", "k1")).await;
    assert_eq!(
        message(&mut alice).await,
        (id + 2, "bob's".to_owned(), None)
    );
}

#[tokio::test]
async fn a_retry_after_a_reconnect_is_the_original_in_memory() {
    let (_server, url) = spawn_server(&["--rate", "0"]).await;
    a_retry_is_the_original(&url, &url).await;
}

#[tokio::test]
async fn a_retry_after_a_reconnect_is_the_original_with_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("chat.db");
    let (_server, url) = spawn_server(&["--rate", "0", "--db", db.to_str().expect("utf-8")]).await;
    a_retry_is_the_original(&url, &url).await;
}

/// A node on `redis`.
async fn node(redis: &RedisServer) -> (Proc, String) {
    spawn_server(&[
        "--redis",
        &redis.url(),
        "--rate",
        "0",
        "--presence-ttl",
        "2",
    ])
    .await
}

#[tokio::test]
async fn a_retry_on_another_node_is_the_original() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (_a, url_a) = node(&redis).await;
    let (_b, url_b) = node(&redis).await;
    a_retry_is_the_original(&url_a, &url_b).await;
}

#[tokio::test]
async fn a_message_refused_while_redis_stalled_is_stored_once_however_often_it_is_retried() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (_a, url_a) = node(&redis).await;
    let (_b, url_b) = node(&redis).await;
    let (mut bob, _) = join_as(&url_b, "bob").await;
    let (mut alice, _) = join_as(&url_a, "alice").await;
    redis.signal("STOP");
    alice.send(&say("during", "p1")).await;
    let refused = within("unavailable", async {
        loop {
            if let ServerFrame::Error { code, cid, .. } = alice.frame().await {
                return (code, cid);
            }
        }
    })
    .await;
    assert_eq!(refused, (ErrorCode::Unavailable, Some("p1".to_owned())));
    // Redis wakes up and carries out the append it was sent meanwhile.
    redis.signal("CONT");
    let (id, text, _) = message(&mut bob).await;
    assert_eq!(text, "during");
    // The page retries, as the client does, with the same cid: each retry
    // is answered with the original.
    for _ in 0..3 {
        alice.send(&say("during", "p1")).await;
        loop {
            if let ServerFrame::Message { id: got, cid, .. } = alice.frame().await
                && cid.as_deref() == Some("p1")
            {
                assert_eq!(got, id);
                break;
            }
        }
    }
    alice.send(&say("after", "p2")).await;
    assert_eq!(message(&mut bob).await, (id + 1, "after".to_owned(), None));
}

/// Alice sends three messages with cids and leaves; eve takes her nick and
/// sees them in the welcome's replay, on `join` and in `older`, with no cid.
async fn the_next_owner_of_a_nick_gets_none_of_its_cids(url: &str) {
    let (mut alice, _) = join_as(url, "alice").await;
    for n in 0..3 {
        alice
            .send(&say(&format!("m{n}"), &format!("alice-private-cid-{n}")))
            .await;
        message(&mut alice).await;
    }
    // Her own connection gets them back, cids and all.
    alice
        .send(r#"{"type":"join","room":"lobby","after":0}"#)
        .await;
    for n in 0..3 {
        let (_, _, cid) = message(&mut alice).await;
        assert_eq!(cid, Some(format!("alice-private-cid-{n}")));
    }
    alice.close().await;

    let (mut eve, replay) = within("alice's nick to be free", async {
        loop {
            let mut peer = Peer::json(&format!("{url}/?nick=ALICE")).await;
            let mut replay = Vec::new();
            loop {
                match peer.frame().await {
                    ServerFrame::Joined { nick, .. } if nick == "ALICE" => {
                        return (peer, replay);
                    }
                    frame @ ServerFrame::Message { .. } => replay.push(frame),
                    ServerFrame::Error {
                        code: ErrorCode::NickTaken,
                        ..
                    } => break,
                    _ => {}
                }
            }
            peer.close().await;
        }
    })
    .await;
    let cids = |frames: &[ServerFrame]| -> Vec<Option<String>> {
        frames
            .iter()
            .filter_map(|f| match f {
                ServerFrame::Message { cid, .. } => Some(cid.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(cids(&replay), [None, None, None]);
    eve.send(r#"{"type":"join","room":"lobby","after":0}"#)
        .await;
    eve.send(r#"{"type":"older","room":"lobby","before":99}"#)
        .await;
    let mut seen = Vec::new();
    loop {
        match eve.frame().await {
            frame @ ServerFrame::Message { .. } => seen.push(frame),
            ServerFrame::Older { .. } => break,
            _ => {}
        }
    }
    assert_eq!(cids(&seen), [None, None, None, None, None, None]);
}

#[tokio::test]
async fn a_nick_s_next_owner_gets_none_of_its_cids_in_memory() {
    let (_server, url) = spawn_server(&["--rate", "0"]).await;
    the_next_owner_of_a_nick_gets_none_of_its_cids(&url).await;
}

#[tokio::test]
async fn a_nick_s_next_owner_gets_none_of_its_cids_with_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("chat.db");
    let (_server, url) = spawn_server(&["--rate", "0", "--db", db.to_str().expect("utf-8")]).await;
    the_next_owner_of_a_nick_gets_none_of_its_cids(&url).await;
}

#[tokio::test]
async fn a_nick_s_next_owner_gets_none_of_its_cids_on_redis() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (_a, url) = node(&redis).await;
    the_next_owner_of_a_nick_gets_none_of_its_cids(&url).await;
}

#[tokio::test]
async fn a_cid_over_64_bytes_is_refused_and_nothing_is_stored() {
    let (_server, url) = spawn_server(&["--rate", "0"]).await;
    let (mut bob, _) = join_as(&url, "bob").await;
    let (mut alice, _) = join_as(&url, "alice").await;
    alice.send(&say("big", &"x".repeat(65))).await;
    match alice.frame().await {
        ServerFrame::Error { code, text, cid } => {
            assert_eq!(code, ErrorCode::BadRequest);
            assert_eq!(cid, None);
            assert_eq!(
                text,
                "cid is 65 bytes, over the limit of 64: nothing was sent"
            );
        }
        other => panic!("expected bad_request, got {other:?}"),
    }
    alice.send(&say("fits", &"x".repeat(64))).await;
    let (id, text, _) = message(&mut bob).await;
    assert_eq!((id, text.as_str()), (1, "fits"));
}
