//! Several server processes on one real Redis form one chat: fan-out, ids,
//! nicks, presence and private messages across nodes; resuming on another
//! node; a node killed; Redis restarted; a pub/sub connection killed.
//!
//! Each test starts its own `redis-server` (skipped, loudly, only when it
//! is not installed outside CI).

mod common;

use common::redis::{RedisServer, StallingProxy};
use common::{Peer, Proc, http_request, spawn_server, within};
use wschat::protocol::{ErrorCode, ServerFrame};

/// A server process on `redis`, with a short presence TTL and no flood
/// control (the tests send in bursts).
async fn node(redis: &RedisServer) -> (Proc, String) {
    node_with(redis, &[]).await
}

/// [`node`] with more flags.
async fn node_with(redis: &RedisServer, extra: &[&str]) -> (Proc, String) {
    let url = redis.url();
    let mut args = vec!["--redis", &url, "--rate", "0"];
    if !extra.contains(&"--presence-ttl") {
        args.extend_from_slice(&["--presence-ttl", "2"]);
    }
    args.extend_from_slice(extra);
    spawn_server(&args).await
}

/// How many nodes the set of live nodes holds.
async fn live_nodes(redis: &RedisServer) -> u64 {
    let mut admin = redis.connection().await;
    redis::cmd("ZCARD")
        .arg("wschat:nodes")
        .query_async(&mut admin)
        .await
        .expect("ZCARD")
}

/// Alice on node a, bob on node b; node a gets `signal`. Bob hears alice
/// leave, `who` no longer lists her, and her nick is free on node b.
async fn alice_s_node_goes(redis: &RedisServer, signal: &str, ttl: &str) {
    let (a, url_a) = node_with(redis, &["--presence-ttl", ttl]).await;
    let (_b, url_b) = node_with(redis, &["--presence-ttl", ttl]).await;
    let (_alice, _) = join_as(&url_a, "alice", "lobby").await;
    let (mut bob, _) = join_as(&url_b, "bob", "lobby").await;
    assert_eq!(who(&mut bob).await, ["alice", "bob"]);
    a.signal(signal);
    wait_for(
        &mut bob,
        |f| matches!(f, ServerFrame::Left { nick, .. } if nick == "alice"),
    )
    .await;
    assert_eq!(who(&mut bob).await, ["bob"]);
    let (_alice, _) = join_as(&url_b, "alice", "lobby").await;
}

/// Waits until every node has sent `beats` more heartbeats (each moves its
/// score in the set of live nodes).
async fn heartbeats(redis: &RedisServer, beats: usize) {
    let admin = redis.connection().await;
    let scores = || {
        let mut admin = admin.clone();
        async move {
            let scores: Vec<(String, u64)> = redis::cmd("ZRANGE")
                .arg(&["wschat:nodes", "0", "-1", "WITHSCORES"])
                .query_async(&mut admin)
                .await
                .expect("ZRANGE");
            scores
        }
    };
    let mut seen: std::collections::HashMap<String, (u64, usize)> = scores()
        .await
        .into_iter()
        .map(|(node, score)| (node, (score, 0)))
        .collect();
    within("heartbeats", async {
        while seen.values().any(|(_, moved)| *moved < beats) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            for (node, score) in scores().await {
                let entry = seen.entry(node).or_insert((score, 0));
                if entry.0 != score {
                    *entry = (score, entry.1 + 1);
                }
            }
        }
    })
    .await;
}

/// A JSON peer called `nick` in `room`, past its welcome and own `joined`;
/// returns it with the room's epoch.
async fn join_as(url: &str, nick: &str, room: &str) -> (Peer, u64) {
    let (peer, epoch, _) = resume_as(url, nick, room, "").await;
    (peer, epoch)
}

/// [`join_as`] with a resume secret (`""` for none); also returns the new
/// connection's own secret.
async fn resume_as(url: &str, nick: &str, room: &str, resume: &str) -> (Peer, u64, String) {
    let mut peer = Peer::json(&format!("{url}/?nick={nick}&room={room}&resume={resume}")).await;
    let ServerFrame::Welcome {
        epoch,
        nick: got,
        resume,
        ..
    } = peer.frame().await
    else {
        panic!("expected welcome");
    };
    assert_eq!(got, nick);
    wait_for(
        &mut peer,
        |frame| matches!(frame, ServerFrame::Joined { nick: n, .. } if n == nick),
    )
    .await;
    (peer, epoch, resume.expect("a resume secret"))
}

/// Reads frames until one matches; returns it.
async fn wait_for(peer: &mut Peer, wanted: impl Fn(&ServerFrame) -> bool) -> ServerFrame {
    loop {
        let frame = peer.frame().await;
        if wanted(&frame) {
            return frame;
        }
    }
}

async fn say(peer: &mut Peer, text: &str) {
    peer.send(&format!(
        r#"{{"type":"say","text":"{text}","cid":"{text}"}}"#
    ))
    .await;
}

/// Sends `text` and waits for its acknowledgement; returns its id.
async fn said(peer: &mut Peer, text: &str) -> u64 {
    say(peer, text).await;
    let ack = wait_for(peer, |frame| {
        matches!(frame, ServerFrame::Message { cid: Some(c), .. } if c == text)
            || matches!(frame, ServerFrame::Error { cid: Some(c), .. } if c == text)
    })
    .await;
    match ack {
        ServerFrame::Message { id, .. } => id,
        other => panic!("{text:?} not stored: {other:?}"),
    }
}

/// The next chat message a peer receives: (id, from, text).
async fn message(peer: &mut Peer) -> (u64, String, String) {
    match wait_for(peer, |frame| matches!(frame, ServerFrame::Message { .. })).await {
        ServerFrame::Message { id, from, text, .. } => (id, from, text),
        _ => unreachable!(),
    }
}

/// Sends `who` and returns the nicks.
async fn who(peer: &mut Peer) -> Vec<String> {
    peer.send(r#"{"type":"who"}"#).await;
    match wait_for(peer, |frame| matches!(frame, ServerFrame::Members { .. })).await {
        ServerFrame::Members { nicks, .. } => nicks,
        _ => unreachable!(),
    }
}

macro_rules! redis_or_skip {
    () => {
        match RedisServer::start().await {
            Some(redis) => redis,
            None => return,
        }
    };
}

/// A Redis and two nodes on it: `(redis, (a, url_a), (b, url_b))`.
macro_rules! two_nodes {
    () => {{
        let redis = redis_or_skip!();
        let a = node(&redis).await;
        let b = node(&redis).await;
        (redis, a, b)
    }};
}

#[tokio::test]
async fn messages_and_notices_reach_every_node_in_both_modes() {
    let (_redis, (_a, url_a), (_b, url_b)) = two_nodes!();
    let (mut alice, _) = join_as(&url_a, "alice", "lobby").await;
    let mut bob = Peer::plain_raw(&format!("{url_b}/?nick=bob")).await;
    bob.expect(wschat::protocol::WELCOME).await;
    bob.expect("* bob joined lobby").await;
    // Alice, on the other node, hears bob arrive.
    wait_for(
        &mut alice,
        |f| matches!(f, ServerFrame::Joined { nick, .. } if nick == "bob"),
    )
    .await;

    assert_eq!(said(&mut alice, "hello").await, 1);
    bob.expect("alice: hello").await;
    // (A plain-mode sender does not get its own line back.)
    bob.send("hi alice").await;
    assert_eq!(
        message(&mut alice).await,
        (2, "bob".into(), "hi alice".into())
    );
}

#[tokio::test]
async fn ids_go_up_by_one_with_publishers_on_two_nodes_and_each_sender_keeps_its_order() {
    let (_redis, (_a, url_a), (_b, url_b)) = two_nodes!();
    let (mut watch_a, _) = join_as(&url_a, "wa", "race").await;
    let (mut watch_b, _) = join_as(&url_b, "wb", "race").await;
    let (mut one, _) = join_as(&url_a, "one", "race").await;
    let (mut two, _) = join_as(&url_b, "two", "race").await;
    const EACH: usize = 60;
    for n in 0..EACH {
        say(&mut one, &format!("one-{n}")).await;
        say(&mut two, &format!("two-{n}")).await;
    }
    let mut seen = Vec::new();
    for watcher in [&mut watch_a, &mut watch_b] {
        let mut got = Vec::new();
        for _ in 0..2 * EACH {
            got.push(message(watcher).await);
        }
        let ids: Vec<u64> = got.iter().map(|m| m.0).collect();
        assert_eq!(ids, (1..=2 * EACH as u64).collect::<Vec<_>>());
        for sender in ["one", "two"] {
            let texts: Vec<&str> = got
                .iter()
                .filter(|m| m.1 == sender)
                .map(|m| m.2.as_str())
                .collect();
            let sent: Vec<String> = (0..EACH).map(|n| format!("{sender}-{n}")).collect();
            assert_eq!(texts, sent, "{sender}'s messages in the order sent");
        }
        seen.push(got);
    }
    // Both nodes delivered the same sequence.
    assert_eq!(seen[0], seen[1]);
}

#[tokio::test]
async fn a_nick_is_unique_across_nodes_and_who_and_rooms_see_every_node() {
    let (_redis, (_a, url_a), (_b, url_b)) = two_nodes!();
    let (mut alice, _) = join_as(&url_a, "alice", "lobby").await;
    let (mut bob, _) = join_as(&url_b, "bob", "lobby").await;
    let (mut carol, _) = join_as(&url_b, "carol", "rust").await;

    // Taken on the other node, in any case.
    carol.send(r#"{"type":"nick","nick":"ALICE"}"#).await;
    let refused = wait_for(&mut carol, |f| matches!(f, ServerFrame::Error { .. })).await;
    assert!(
        matches!(
            refused,
            ServerFrame::Error {
                code: ErrorCode::NickTaken,
                ..
            }
        ),
        "{refused:?}"
    );

    assert_eq!(who(&mut alice).await, ["alice", "bob"]);
    assert_eq!(who(&mut bob).await, ["alice", "bob"]);
    alice.send(r#"{"type":"rooms"}"#).await;
    let rooms = wait_for(&mut alice, |f| matches!(f, ServerFrame::Rooms { .. })).await;
    let ServerFrame::Rooms { rooms, .. } = rooms else {
        unreachable!()
    };
    let rooms: Vec<(String, usize)> = rooms.into_iter().map(|r| (r.name, r.members)).collect();
    assert_eq!(rooms, [("lobby".into(), 2), ("rust".into(), 1)]);

    // Leaving is seen on the other node, and frees the nick everywhere.
    bob.close().await;
    wait_for(
        &mut alice,
        |f| matches!(f, ServerFrame::Left { nick, .. } if nick == "bob"),
    )
    .await;
    assert_eq!(who(&mut alice).await, ["alice"]);
    carol.send(r#"{"type":"nick","nick":"bob"}"#).await;
    wait_for(
        &mut carol,
        |f| matches!(f, ServerFrame::Renamed { new, .. } if new == "bob"),
    )
    .await;
}

#[tokio::test]
async fn a_private_message_reaches_only_its_recipient_on_another_node() {
    let (_redis, (_a, url_a), (_b, url_b)) = two_nodes!();
    let (mut alice, _) = join_as(&url_a, "alice", "lobby").await;
    let (mut bob, _) = join_as(&url_b, "bob", "lobby").await;
    let (mut carol, _) = join_as(&url_b, "carol", "lobby").await;

    alice
        .send(r#"{"type":"private","to":"BOB","text":"psst","cid":"p1"}"#)
        .await;
    let ack = wait_for(&mut alice, |f| matches!(f, ServerFrame::Private { .. })).await;
    assert!(
        matches!(&ack, ServerFrame::Private { to, cid: Some(c), .. } if to == "bob" && c == "p1"),
        "{ack:?}"
    );
    let got = wait_for(&mut bob, |f| matches!(f, ServerFrame::Private { .. })).await;
    assert!(
        matches!(&got, ServerFrame::Private { from, text, cid: None, .. } if from == "alice" && text == "psst"),
        "{got:?}"
    );
    // Carol's next message is the marker sent after it: she never saw it.
    said(&mut alice, "marker").await;
    loop {
        match carol.frame().await {
            ServerFrame::Private { .. } => panic!("carol got the private message"),
            ServerFrame::Message { text, .. } if text == "marker" => break,
            _ => {}
        }
    }
    // A nick nobody holds.
    alice
        .send(r#"{"type":"private","to":"dave","text":"hi","cid":"p2"}"#)
        .await;
    let refused = wait_for(&mut alice, |f| matches!(f, ServerFrame::Error { .. })).await;
    assert!(matches!(
        refused,
        ServerFrame::Error {
            code: ErrorCode::NoSuchUser,
            ..
        }
    ));
}

#[tokio::test]
async fn a_client_resumes_on_another_node_without_gap_or_duplicate() {
    let (_redis, (_a, url_a), (_b, url_b)) = two_nodes!();
    let (mut alice, epoch, secret) = resume_as(&url_a, "alice", "lobby", "").await;
    let (mut bob, _) = join_as(&url_b, "bob", "lobby").await;
    for n in 1..=3 {
        said(&mut bob, &format!("m{n}")).await;
    }
    for n in 1..=3 {
        assert_eq!(message(&mut alice).await.0, n);
    }
    // Alice's connection breaks; she comes back on the other node with
    // her resume secret (taking her nick over at once) and asks for what
    // came after 3.
    alice.reset();
    for n in 4..=5 {
        said(&mut bob, &format!("m{n}")).await;
    }
    let (mut alice, again, _) = resume_as(&url_b, "alice", "lobby", &secret).await;
    assert_eq!(again, epoch, "one epoch on every node");
    let replayed: Vec<u64> = alice
        .resume_room("lobby", 3, epoch)
        .await
        .iter()
        .filter_map(|frame| match frame {
            ServerFrame::Message {
                id, history: true, ..
            } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(replayed, [4, 5]);
    said(&mut bob, "m6").await;
    assert_eq!(message(&mut alice).await.0, 6);
}

#[tokio::test]
async fn every_room_on_every_node_has_the_chat_s_one_epoch() {
    let (_redis, (_a, url_a), (_b, url_b)) = two_nodes!();
    let (mut alice, epoch) = join_as(&url_a, "alice", "lobby").await;
    let (_bob, other) = join_as(&url_b, "bob", "rust").await;
    assert_eq!(other, epoch);
    // A room used for the first time later takes the same epoch, so the
    // epoch the client holds resumes there without a gap.
    said(&mut alice, "in lobby").await;
    alice.send(r#"{"type":"join","room":"den"}"#).await;
    said(&mut alice, "in den").await;
    let frames = alice.resume_room("den", 0, epoch).await;
    assert!(
        !frames.iter().any(|f| matches!(f, ServerFrame::Gap { .. })),
        "{frames:?}"
    );
}

#[tokio::test]
async fn a_stopped_node_s_users_leave_at_once() {
    let redis = redis_or_skip!();
    // A TTL far beyond the test's waits: only the node's own goodbye can
    // free alice's nick in time.
    alice_s_node_goes(&redis, "TERM", "600").await;
    // The node takes itself out of the set of live nodes as the last thing
    // it does, after its users' departures went out: far sooner than its
    // heartbeat would run out.
    within("the stopped node to leave the set of live nodes", async {
        while live_nodes(&redis).await != 1 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_killed_node_s_users_leave_and_free_their_nicks_within_the_ttl() {
    let redis = redis_or_skip!();
    // Within the TTL (2 s) and a heartbeat, bob's node cleans up after it.
    alice_s_node_goes(&redis, "KILL", "2").await;
}

#[tokio::test]
async fn a_redis_outage_answers_unavailable_then_chat_resumes_on_a_new_epoch() {
    let redis = redis_or_skip!();
    let (_a, url) = node(&redis).await;
    let addr: std::net::SocketAddr = url.trim_start_matches("ws://").parse().expect("addr");
    let (mut alice, epoch) = join_as(&url, "alice", "lobby").await;
    assert_eq!(said(&mut alice, "before").await, 1);
    assert_eq!(healthz(addr).await, 200);

    let port = redis.kill().await;
    say(&mut alice, "during").await;
    let refused = wait_for(&mut alice, |f| {
        matches!(f, ServerFrame::Error { .. } | ServerFrame::Message { .. })
    })
    .await;
    assert!(
        matches!(refused, ServerFrame::Error { code: ErrorCode::Unavailable, cid: Some(ref c), .. } if c == "during"),
        "{refused:?}"
    );
    assert_eq!(healthz(addr).await, 503);

    // Redis comes back empty: a new epoch, announced with a gap before
    // the first message stored in it, whose id is 1.
    let _redis = RedisServer::on_port(port).await;
    let mut new_epoch = None;
    within("a send to be stored again", async {
        for n in 1.. {
            let text = format!("after{n}");
            say(&mut alice, &text).await;
            loop {
                match alice.frame().await {
                    ServerFrame::Gap {
                        epoch, after: None, ..
                    } => new_epoch = Some(epoch),
                    ServerFrame::Message {
                        id, cid: Some(c), ..
                    } if c == text => {
                        assert_eq!(id, 1);
                        return;
                    }
                    ServerFrame::Error {
                        cid: Some(c), code, ..
                    } if c == text => {
                        assert_eq!(code, ErrorCode::Unavailable);
                        // Redis is not back yet for this node: try again shortly.
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        break;
                    }
                    _ => {}
                }
            }
        }
    })
    .await;
    let new_epoch = new_epoch.expect("a gap before the new epoch's first message");
    assert_ne!(new_epoch, epoch);
    assert_eq!(healthz(addr).await, 200);
}

/// `/healthz`'s status.
async fn healthz(addr: std::net::SocketAddr) -> u16 {
    http_request(addr, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await
}

#[tokio::test]
async fn a_killed_pubsub_connection_is_replaced_and_nothing_is_lost() {
    let (redis, (_a, url_a), (_b, url_b)) = two_nodes!();
    let (mut sender, _) = join_as(&url_a, "sender", "lobby").await;
    let (mut reader, _) = join_as(&url_b, "reader", "lobby").await;
    let mut admin = redis.connection().await;
    const COUNT: u64 = 300;
    for n in 1..=COUNT {
        say(&mut sender, &format!("m{n}")).await;
        if n % 100 == 50 {
            let killed: u64 = redis::cmd("CLIENT")
                .arg(&["KILL", "TYPE", "pubsub"])
                .query_async(&mut admin)
                .await
                .expect("CLIENT KILL");
            if n == 50 {
                assert_eq!(killed, 2, "both nodes' pub/sub connections killed");
            }
        }
    }
    let mut ids = Vec::new();
    while ids.len() < COUNT as usize {
        ids.push(message(&mut reader).await.0);
    }
    assert_eq!(ids, (1..=COUNT).collect::<Vec<_>>());
}

#[tokio::test]
async fn redis_and_db_together_exit_2_and_an_unreachable_redis_exits_1() {
    let mut both = Proc::spawn(
        env!("CARGO_BIN_EXE_server"),
        &[
            "--port",
            "0",
            "--db",
            "x.db",
            "--redis",
            "redis://127.0.0.1:1",
        ],
        &[],
    );
    assert_eq!(both.exit_code().await, 2);
    let lines = both.err_rest().await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("--redis") && l.contains("--db")),
        "{lines:?}"
    );

    let port = common::free_port();
    let mut missing = Proc::spawn(
        env!("CARGO_BIN_EXE_server"),
        &[
            "--port",
            "0",
            "--redis",
            &format!("redis://127.0.0.1:{port}"),
        ],
        &[],
    );
    assert_eq!(missing.exit_code().await, 1);
    let lines = missing.err_rest().await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!(
            "error: cannot use Redis at redis://127.0.0.1:{port}: "
        )),
        "{lines:?}"
    );
}

#[tokio::test]
async fn the_client_moves_to_the_next_url_when_its_node_dies_and_resumes_there() {
    let (redis, (a, url_a), (_b, url_b)) = two_nodes!();
    let (mut bob, _) = join_as(&url_b, "bob", "lobby").await;
    let mut dave = Proc::spawn(
        env!("CARGO_BIN_EXE_client"),
        &[&url_a, &url_b, "--nick", "dave"],
        &[],
    );
    dave.err_until(&format!("connected to {url_a}")).await;
    wait_for(
        &mut bob,
        |f| matches!(f, ServerFrame::Joined { nick, .. } if nick == "dave"),
    )
    .await;
    dave.type_line("one").await;
    assert_eq!(message(&mut bob).await, (1, "dave".into(), "one".into()));

    a.signal("KILL");
    dave.err_until(&format!("connection lost, trying {url_b}"))
        .await;
    said(&mut bob, "while you were away").await;
    dave.err_until(&format!("connected to {url_b}")).await;
    dave.type_line("two").await;
    assert_eq!(message(&mut bob).await, (3, "dave".into(), "two".into()));
    said(&mut bob, "last").await;
    // Dave saw what he missed once, then the rest.
    let mut lines = Vec::new();
    loop {
        let line = dave.out_line().await.expect("a line");
        if line == "bob: last" {
            break;
        }
        lines.push(line);
    }
    let missed = lines
        .iter()
        .filter(|l| *l == "bob: while you were away")
        .count();
    assert_eq!(missed, 1, "{lines:?}");
    // Dave resumed on node b under his nick: when node a is cleaned up
    // after (it leaves the set of live nodes), nobody is told he left.
    within("node a to be cleaned up after", async {
        loop {
            if live_nodes(&redis).await == 1 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    say(&mut bob, "marker").await;
    loop {
        match bob.frame().await {
            ServerFrame::Left { nick, .. } => panic!("{nick} was said to leave"),
            ServerFrame::Message { text, .. } if text == "marker" => break,
            _ => {}
        }
    }
    assert_eq!(who(&mut bob).await, ["bob", "dave"]);
}

#[tokio::test]
async fn the_announce_limit_counts_the_members_on_every_node() {
    let redis = redis_or_skip!();
    let (_a, url_a) = node_with(&redis, &["--announce-limit", "2"]).await;
    let (_b, url_b) = node_with(&redis, &["--announce-limit", "2"]).await;
    let (mut alice, _) = join_as(&url_a, "alice", "lobby").await;
    let (_bob, _) = join_as(&url_a, "bob", "lobby").await;
    // Node b learns how many are in the lobby elsewhere at its heartbeat.
    heartbeats(&redis, 2).await;
    // Carol makes three: over the limit, so only she hears of her arrival.
    let (_carol, _) = join_as(&url_b, "carol", "lobby").await;
    say(&mut alice, "marker").await;
    loop {
        match alice.frame().await {
            ServerFrame::Joined { nick, .. } if nick == "carol" => {
                panic!("carol's arrival was announced in a room over the limit")
            }
            ServerFrame::Message { text, .. } if text == "marker" => break,
            _ => {}
        }
    }
    assert_eq!(who(&mut alice).await, ["alice", "bob", "carol"]);
}

#[tokio::test]
async fn a_pubsub_connection_that_goes_quiet_is_replaced_and_the_gap_filled() {
    let redis = redis_or_skip!();
    let proxy = StallingProxy::start(redis.port).await;
    let (mut a, url_a) = spawn_server(&["--redis", &proxy.url(), "--rate", "0"]).await;
    let (_b, url_b) = node(&redis).await;
    let (mut reader, _) = join_as(&url_a, "reader", "lobby").await;
    let (mut writer, _) = join_as(&url_b, "writer", "lobby").await;
    said(&mut writer, "m1").await;
    assert_eq!(message(&mut reader).await.0, 1);

    // Node a's subscription stops delivering, its connection still open.
    assert_eq!(proxy.stall_pubsub(), 1);
    for n in 2..=5 {
        said(&mut writer, &format!("m{n}")).await;
    }
    a.err_until("Redis pub/sub stopped delivering; replacing the connection")
        .await;
    let ids = [
        message(&mut reader).await.0,
        message(&mut reader).await.0,
        message(&mut reader).await.0,
        message(&mut reader).await.0,
    ];
    assert_eq!(ids, [2, 3, 4, 5]);
    said(&mut writer, "m6").await;
    assert_eq!(message(&mut reader).await.0, 6);

    // Joining a room the node does not follow yet, while its new
    // subscription is quiet, does not hang: the subscription it cannot
    // confirm has the connection replaced too.
    assert_eq!(proxy.stall_pubsub(), 1);
    let mut late = Peer::json(&format!("{url_a}/?nick=late&room=den")).await;
    assert!(matches!(late.frame().await, ServerFrame::Welcome { .. }));
    a.err_until("Redis pub/sub does not answer; replacing the connection")
        .await;
    let (mut other, _) = join_as(&url_b, "other", "den").await;
    said(&mut other, "d1").await;
    assert_eq!(message(&mut late).await, (1, "other".into(), "d1".into()));
}

#[tokio::test]
async fn a_redis_prefix_that_could_collide_with_another_chat_s_keys_is_refused() {
    // `P` and `P:nick` would share keys (`P:nick:epoch` is both chat P's
    // nick "epoch" and chat P:nick's epoch).
    for prefix in [
        "P:nick",
        "",
        "chat*",
        "a?b",
        "[x]",
        &"p".repeat(65),
        "spa ce",
    ] {
        let mut server = Proc::spawn(
            env!("CARGO_BIN_EXE_server"),
            &["--port", "0", "--redis-prefix", prefix],
            &[],
        );
        assert_eq!(server.exit_code().await, 2, "{prefix:?}");
        let lines = server.err_rest().await;
        assert!(
            lines
                .iter()
                .any(|l| l.contains("--redis-prefix") && l.contains(&format!("{prefix:?}"))),
            "{prefix:?}: {lines:?}"
        );
    }
}

#[tokio::test]
async fn starting_on_redis_logs_no_error_and_counts_none() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (mut server, url) = node(&redis).await;
    let (mut alice, _) = join_as(&url, "alice", "lobby").await;
    // Two beats: the first one's member count and reaping are done.
    heartbeats(&redis, 2).await;
    alice.send(r#"{"type":"rooms"}"#).await;
    wait_for(&mut alice, |f| matches!(f, ServerFrame::Rooms { .. })).await;
    let addr: std::net::SocketAddr = url
        .trim_start_matches("ws://")
        .parse()
        .expect("server address");
    let answer = common::metrics(addr).await;
    assert_eq!(
        common::metric(&answer, "wschat_backend_errors_total{backend=\"redis\"}"),
        Some(0.0),
        "{answer}"
    );
    server.signal("TERM");
    let lines = server.err_rest().await;
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("WARN") || l.contains("ERROR")),
        "{lines:?}"
    );
    // Its keys are under its prefix and a separator.
    let mut admin = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut admin)
        .await
        .expect("KEYS");
    assert!(keys.iter().all(|k| k.starts_with("wschat:")), "{keys:?}");
}

/// What a handshake asking for `nick` got: the nick, or the error that
/// refused it (the connection is closed again either way unless it got it).
async fn try_nick(url: &str, nick: &str) -> Result<Peer, ErrorCode> {
    let mut peer = Peer::json(&format!("{url}/?nick={nick}")).await;
    let ServerFrame::Welcome { nick: got, .. } = peer.frame().await else {
        panic!("expected welcome");
    };
    if got == nick {
        return Ok(peer);
    }
    let code = match wait_for(&mut peer, |f| matches!(f, ServerFrame::Error { .. })).await {
        ServerFrame::Error { code, .. } => code,
        _ => unreachable!(),
    };
    peer.close().await;
    Err(code)
}

#[tokio::test]
async fn a_nick_whose_lease_redis_lost_is_given_to_no_one_else() {
    let redis = redis_or_skip!();
    let (_a, url_a) = node(&redis).await;
    let (_b, url_b) = node(&redis).await;
    let (mut alice, _) = join_as(&url_a, "alice", "lobby").await;
    let (mut bob, _) = join_as(&url_b, "bob", "lobby").await;
    assert_eq!(who(&mut bob).await, ["alice", "bob"]);

    // Redis restarts without its data: alice's lease is gone.
    let port = redis.kill().await;
    let _redis = RedisServer::on_port(port).await;
    // Someone on node b tries for her nick at once, and keeps trying until
    // the servers have sorted out who holds what: never does it get it.
    within("the nick to be refused as taken", async {
        loop {
            match try_nick(&url_b, "alice").await {
                Ok(_) => panic!("node b gave away alice's nick"),
                Err(ErrorCode::NickTaken) => return,
                Err(code) => {
                    assert_eq!(code, ErrorCode::Unavailable);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    })
    .await;
    // Bob's private message reaches alice, the one alice there is.
    within("one alice", async {
        while who(&mut bob).await != ["alice", "bob"] {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    bob.send(r#"{"type":"private","to":"alice","text":"it's me"}"#)
        .await;
    match wait_for(&mut alice, |f| matches!(f, ServerFrame::Private { .. })).await {
        ServerFrame::Private { from, text, .. } => {
            assert_eq!((from.as_str(), text.as_str()), ("bob", "it's me"));
        }
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn a_later_claimant_of_a_nick_redis_lost_is_closed_when_its_holder_claims_it_again() {
    let redis = redis_or_skip!();
    // Alice's node beats every 5 s, so it has not claimed her nick again
    // yet when a node started after Redis lost its data gives it out.
    let (_a, url_a) = node_with(&redis, &["--presence-ttl", "20"]).await;
    let (mut alice, _) = join_as(&url_a, "alice", "lobby").await;
    let port = redis.kill().await;
    let redis = RedisServer::on_port(port).await;
    let (_b, url_b) = node_with(&redis, &["--presence-ttl", "20"]).await;
    match try_nick(&url_b, "alice").await {
        Ok(mut eve) => {
            // When alice's node claims her nick again, the later claim loses.
            assert_eq!(
                eve.closed().await,
                (
                    1013,
                    "your nick is held by an earlier connection".to_owned()
                )
            );
        }
        // Alice's node beat in between: it is hers already, or being sorted out.
        Err(code) => assert!(
            matches!(code, ErrorCode::NickTaken | ErrorCode::Unavailable),
            "{code:?}"
        ),
    }
    // Either way alice keeps it, and no one else gets it.
    within("alice's nick to be hers again", async {
        loop {
            match try_nick(&url_b, "alice").await {
                Ok(_) => panic!("alice's nick was given away"),
                Err(ErrorCode::NickTaken) => return,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    alice.send(r#"{"type":"who"}"#).await;
    wait_for(
        &mut alice,
        |f| matches!(f, ServerFrame::Members { nicks, .. } if nicks.contains(&"alice".to_owned())),
    )
    .await;
}

#[tokio::test]
async fn rooms_nobody_is_in_and_nothing_was_said_in_leave_no_key_behind() {
    let redis = redis_or_skip!();
    let (_a, url) = node(&redis).await;
    let (mut watcher, _) = join_as(&url, "watcher", "lobby").await;
    for n in 0..20 {
        let (peer, _) = join_as(&url, &format!("v{n}"), &format!("room{n}")).await;
        peer.close().await;
    }
    // The last visitor's departure is written once the watcher hears of it
    // (it was in another room): ask Redis until the keys are gone.
    let mut admin = redis.connection().await;
    within("the rooms' keys to go", async {
        loop {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("wschat:{room*")
                .query_async(&mut admin)
                .await
                .expect("KEYS");
            let rooms: Vec<String> = redis::cmd("SMEMBERS")
                .arg("wschat:rooms")
                .query_async(&mut admin)
                .await
                .expect("SMEMBERS");
            if keys.is_empty() && rooms == ["lobby"] {
                return;
            }

            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    // A room read without being written keeps no epoch of its own, yet
    // tells the chat's: the one its first message is stored under.
    watcher.send(r#"{"type":"join","room":"quiet"}"#).await;
    let (_, epoch) = join_as(&url, "reader", "quiet").await;
    let said = said(&mut watcher, "first words").await;
    assert_eq!(said, 1);
    let room_epoch: u64 = redis::cmd("HGET")
        .arg("wschat:{quiet}:meta")
        .arg("epoch")
        .query_async(&mut admin)
        .await
        .expect("HGET");
    assert_eq!(room_epoch, epoch);
}
