//! A resume that cannot be exact says so with a `gap` frame, whatever keeps
//! the history: a different epoch, or an id older than what is kept.

mod common;

use common::{Peer, TestServer};
use wschat::config::ServerConfig;
use wschat::protocol::ServerFrame;

/// Sends `count` messages and waits for each acknowledgement.
async fn post(peer: &mut Peer, count: usize) {
    for n in 1..=count {
        peer.send(&format!(r#"{{"type":"say","text":"m{n}","cid":"c{n}"}}"#))
            .await;
        while !matches!(peer.frame().await, ServerFrame::Message { .. }) {}
    }
}

/// Resumes `lobby` after `after` of `epoch`; every frame up to the barrier.
async fn join(peer: &mut Peer, after: u64, epoch: u64) -> Vec<ServerFrame> {
    peer.resume_room("lobby", after, epoch).await
}

/// Frames as short strings: `gap`, `gap 1..4` or a message id.
fn shapes(frames: &[ServerFrame]) -> Vec<String> {
    frames
        .iter()
        .map(|frame| match frame {
            ServerFrame::Gap {
                after: None,
                first: None,
                ..
            } => "gap".to_owned(),
            ServerFrame::Gap {
                after: Some(after),
                first: Some(first),
                ..
            } => format!("gap {after}..{first}"),
            ServerFrame::Message { id, history, .. } => {
                assert!(history, "a replayed message is marked as history");
                id.to_string()
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

async fn epoch_mismatch_replays_afresh(tweak: impl FnOnce(&mut ServerConfig)) {
    let server = TestServer::with(|c| {
        c.history_on_join = 2;
        tweak(c);
    })
    .await;
    let (mut alice, epoch) = Peer::json_joined(&server.url()).await;
    post(&mut alice, 3).await;
    let (mut bob, _) = Peer::json_joined(&server.url()).await;

    // Same epoch: exactly what came after.
    assert_eq!(shapes(&join(&mut bob, 1, epoch).await), ["2", "3"]);
    // Another epoch: the ids mean nothing here; the recent history follows.
    let frames = join(&mut bob, 1, epoch + 1).await;
    assert_eq!(shapes(&frames), ["gap", "2", "3"]);
    let ServerFrame::Gap {
        room, epoch: now, ..
    } = &frames[0]
    else {
        unreachable!()
    };
    assert_eq!((room.as_str(), *now), ("lobby", epoch));
    server.stop().await;
}

#[tokio::test]
async fn another_epoch_gets_a_gap_and_the_recent_history_in_memory() {
    epoch_mismatch_replays_afresh(|_| {}).await;
}

#[tokio::test]
async fn another_epoch_gets_a_gap_and_the_recent_history_in_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("chat.db");
    epoch_mismatch_replays_afresh(|c| c.db = Some(db)).await;
}

#[tokio::test]
async fn resuming_before_the_oldest_kept_message_gets_a_gap_with_its_bounds() {
    let server = TestServer::with(|c| c.history = 3).await;
    let (mut alice, epoch) = Peer::json_joined(&server.url()).await;
    post(&mut alice, 6).await;
    let (mut bob, _) = Peer::json_joined(&server.url()).await;
    assert_eq!(
        shapes(&join(&mut bob, 1, epoch).await),
        ["gap 1..4", "4", "5", "6"]
    );
    // Right at the oldest kept message: no gap.
    assert_eq!(shapes(&join(&mut bob, 3, epoch).await), ["4", "5", "6"]);
    server.stop().await;
}

#[tokio::test]
async fn a_long_replay_is_complete_and_in_order() {
    // More than one page (512) of replay, sent as the peer reads it.
    let server = TestServer::with(|c| {
        c.rate = 0;
        c.history = 2000;
    })
    .await;
    let (mut alice, epoch) = Peer::json_joined(&server.url()).await;
    post(&mut alice, 1200).await;
    let (mut bob, _) = Peer::json_joined(&server.url()).await;
    let ids: Vec<String> = (2..=1200).map(|n| n.to_string()).collect();
    assert_eq!(shapes(&join(&mut bob, 1, epoch).await), ids);
    server.stop().await;
}

/// Sends `older` and returns the ids it brought and its closing frame.
async fn older(peer: &mut Peer, before: u64, limit: usize) -> (Vec<u64>, ServerFrame) {
    peer.send(&format!(
        r#"{{"type":"older","before":{before},"limit":{limit}}}"#
    ))
    .await;
    let mut ids = Vec::new();
    loop {
        match peer.frame().await {
            ServerFrame::Message { id, history, .. } => {
                assert!(history, "an older message is marked as history");
                ids.push(id);
            }
            end @ ServerFrame::Older { .. } => return (ids, end),
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn scroll_back(tweak: impl FnOnce(&mut ServerConfig)) {
    let server = TestServer::with(tweak).await;
    let (mut peer, _) = Peer::json_joined(&server.url()).await;
    post(&mut peer, 7).await;
    let end = |before, count| ServerFrame::Older {
        room: "lobby".into(),
        before,
        count,
    };
    // The last ones before the id, oldest first, then how many came.
    assert_eq!(older(&mut peer, 6, 3).await, (vec![3, 4, 5], end(6, 3)));
    // Fewer than asked: nothing older is stored.
    assert_eq!(older(&mut peer, 3, 3).await, (vec![1, 2], end(3, 2)));
    assert_eq!(older(&mut peer, 1, 3).await, (vec![], end(1, 0)));
    server.stop().await;
}

#[tokio::test]
async fn older_pages_back_through_history_in_memory() {
    scroll_back(|_| {}).await;
}

#[tokio::test]
async fn older_pages_back_through_history_in_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("chat.db");
    scroll_back(|c| c.db = Some(db)).await;
}

#[tokio::test]
async fn in_memory_history_keeps_within_its_byte_budget_and_says_what_it_let_go() {
    // A kept message costs its text once and some bookkeeping (about
    // 1.2 KB for 1 KB of text): room for about twenty-seven in all.
    let server = TestServer::with(|c| {
        c.rate = 0;
        c.max_history_bytes = 32 << 10;
    })
    .await;
    let url = server.url();
    let (mut alice, epoch) = Peer::json_joined(&url).await;
    let text = "x".repeat(1000);
    let say = |n: usize| format!(r#"{{"type":"say","text":"{n} {text}","cid":"c{n}"}}"#);
    // Five messages in the lobby, then the lobby goes quiet while another
    // room fills up the budget.
    for n in 1..=5 {
        alice.send(&say(n)).await;
        while !matches!(alice.frame().await, ServerFrame::Message { .. }) {}
    }
    alice.send(r#"{"type":"join","room":"busy"}"#).await;
    for n in 6..=40 {
        alice.send(&say(n)).await;
        while !matches!(alice.frame().await, ServerFrame::Message { .. }) {}
    }
    // The lobby, written to least recently, let go of its messages first:
    // resuming there is told so, and replays nothing it does not have.
    let (mut bob, _) = Peer::json_joined(&url).await;
    assert_eq!(shapes(&join(&mut bob, 2, epoch).await), ["gap 2..6"]);
    // The busy room keeps its newest messages, as many as fit: kept once,
    // not once per encoding (which let fewer than ten fit).
    let busy = bob.resume_room("busy", 0, epoch).await;
    let ids: Vec<u64> = busy
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert!((20..35).contains(&ids.len()), "{ids:?}");
    assert_eq!(ids.last(), Some(&35));
    let answer = common::metrics(server.addr).await;
    let evicted = common::metric(&answer, "wschat_history_evicted_total").expect("counted");
    assert_eq!(evicted as usize, 5 + (35 - ids.len()), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn an_older_answer_is_sent_as_the_peer_reads_it() {
    // 500 messages of 4 KB: a 2 MB answer, twice what may wait for one
    // peer. Sent whole, it closed the asker as too slow; a page at a time,
    // it all arrives, in order, and then its closing frame.
    let server = TestServer::with(|c| {
        c.rate = 0;
        c.max_lag_bytes = 1 << 20;
    })
    .await;
    let url = server.url();
    let (mut writer, _) = Peer::json_joined(&url).await;
    common::say_many(&mut writer, 500, &"o".repeat(4000)).await;
    let (mut asker, _) = Peer::json_joined(&url).await;
    asker
        .send(r#"{"type":"older","room":"lobby","before":501,"limit":500}"#)
        .await;
    let mut ids = Vec::new();
    loop {
        match asker.frame().await {
            ServerFrame::Message { id, history, .. } => {
                assert!(history);
                ids.push(id);
            }
            ServerFrame::Older { before, count, .. } => {
                assert_eq!((before, count), (501, 500));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(ids, (1..=500).collect::<Vec<u64>>());
    // A shorter answer is one page, as before.
    asker
        .send(r#"{"type":"older","room":"lobby","before":10,"limit":3}"#)
        .await;
    let mut short = Vec::new();
    loop {
        match asker.frame().await {
            ServerFrame::Message { id, .. } => short.push(id),
            ServerFrame::Older { count, .. } => {
                assert_eq!(count, 3);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(short, [7, 8, 9]);
    server.stop().await;
}
