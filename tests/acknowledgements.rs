//! Every stored message's acknowledgement reaches its sender, whatever the
//! sender does next, on every backend (memory, SQLite, Redis).
//!
//! Through Redis a message reaches the room's feed by pub/sub after its
//! store returns; a `join` straight after a `say` used to drop the old
//! room's feed with the acknowledgement still on its way.

mod common;

use common::redis::{RedisServer, StallingProxy};
use common::{Peer, spawn_server};
use tokio_websockets::Message;
use wschat::protocol::ServerFrame;

/// Rounds of each pattern per backend.
const ROUNDS: usize = 100;

/// Frames up to the first that `last` matches, which must come after the
/// acknowledgement of cid `cid` (not before it, and not missing). The
/// acknowledgement is the sender's copy with the cid: live, or read back
/// from history (`"history":true`) when it did not come through the feed.
async fn ack_then(peer: &mut Peer, cid: &str, last: impl Fn(&ServerFrame) -> bool) {
    let mut acked = false;
    loop {
        let frame = peer.frame().await;
        if let ServerFrame::Message { cid: Some(got), .. } = &frame
            && got == cid
        {
            assert!(!acked, "acknowledged twice: {cid}");
            acked = true;
        } else if last(&frame) {
            assert!(acked, "{frame:?} came before the acknowledgement of {cid}");
            return;
        }
    }
}

fn say(n: usize) -> String {
    format!(r#"{{"type":"say","text":"message {n}","cid":"c{n}"}}"#)
}

/// `say` then at once `join`, `nick`, and a close, [`ROUNDS`] times each.
async fn acks_survive_what_comes_next(url: &str) {
    let (mut peer, _) = Peer::json_joined(url).await;
    let me = peer.name();
    for n in 0..ROUNDS {
        let room = if n % 2 == 0 { "one" } else { "two" };
        peer.send(&say(n)).await;
        peer.send(&format!(r#"{{"type":"join","room":"{room}"}}"#))
            .await;
        ack_then(
            &mut peer,
            &format!("c{n}"),
            |f| matches!(f, ServerFrame::Joined { nick, room: r } if *nick == me && r == room),
        )
        .await;
    }
    for n in ROUNDS..2 * ROUNDS {
        let nick = format!("n{}", n % 2);
        peer.send(&say(n)).await;
        peer.send(&format!(r#"{{"type":"nick","nick":"{nick}"}}"#))
            .await;
        ack_then(
            &mut peer,
            &format!("c{n}"),
            |f| matches!(f, ServerFrame::Renamed { new, .. } if *new == nick),
        )
        .await;
    }
    for n in 0..ROUNDS {
        let (mut peer, _) = Peer::json_joined(url).await;
        peer.send(&say(n)).await;
        peer.send_message(Message::close(None, "")).await;
        let cid = format!("c{n}");
        let mut acked = false;
        while let Some(message) = peer.next().await {
            if message.is_close() {
                break;
            }
            let text = message.as_text().expect("text frame");
            acked |= text.contains(&format!(r#""cid":"{cid}""#));
        }
        assert!(acked, "closed before the acknowledgement of {cid}");
    }
}

#[tokio::test]
async fn memory_acks_survive_join_nick_and_close() {
    let (_server, url) = spawn_server(&["--rate", "0", "--max-per-ip", "0"]).await;
    acks_survive_what_comes_next(&url).await;
}

#[tokio::test]
async fn sqlite_acks_survive_join_nick_and_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("chat.db");
    let db = db.to_str().expect("utf-8 path");
    let (_server, url) = spawn_server(&["--rate", "0", "--max-per-ip", "0", "--db", db]).await;
    acks_survive_what_comes_next(&url).await;
}

#[tokio::test]
async fn redis_acks_survive_join_nick_and_close() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let redis_url = redis.url();
    let args = ["--rate", "0", "--max-per-ip", "0", "--redis", &redis_url];
    let (_server, url) = spawn_server(&args).await;
    acks_survive_what_comes_next(&url).await;
}

/// When the node's pub/sub delivery stalls, the acknowledgement of a
/// message stored in Redis still comes before the answer to the next
/// request (read back from the stream if it does not arrive).
#[tokio::test]
async fn redis_acks_come_even_when_pubsub_stalls() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let proxy = StallingProxy::start(redis.port).await;
    let proxy_url = proxy.url();
    let (_server, url) = spawn_server(&["--rate", "0", "--redis", &proxy_url]).await;
    let (mut peer, _) = Peer::json_joined(&url).await;
    assert_eq!(proxy.stall_pubsub(), 1);
    peer.send(&say(1)).await;
    peer.send(r#"{"type":"join","room":"elsewhere"}"#).await;
    // The `joined` notice goes through the stalled pub/sub too; the answer
    // to `who` comes straight back.
    peer.send(r#"{"type":"who"}"#).await;
    ack_then(
        &mut peer,
        "c1",
        |f| matches!(f, ServerFrame::Members { room, .. } if room == "elsewhere"),
    )
    .await;
}
