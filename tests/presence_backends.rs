//! One test set for the presence interface and one for the fan-out
//! interface, run against every backend.

mod common;

use std::sync::Arc;

use common::redis::RedisServer;
use common::within;
use wschat::config::ServerConfig;
use wschat::protocol::{ErrorCode, Mode, RoomInfo};
use wschat::server::ConnId;
use wschat::server::fanout::{Bounds, Delivery, Fanout, FeedError, MemoryFanout};
use wschat::server::presence::{Mailbox, Member, MemoryPresence, Presence, PrivateMessage};

fn conn(seq: u64) -> ConnId {
    ConnId { node: 1, seq }
}

fn member(nick: &str, room: &str, mode: Mode) -> (Member, Arc<Mailbox>) {
    let mailbox = Arc::new(Mailbox::default());
    let member = Member {
        nick: nick.into(),
        room: room.into(),
        mode,
        mailbox: mailbox.clone(),
        secret: u128::from(nick.len() as u32) << 64 | 0xfeed,
    };
    (member, mailbox)
}

/// Everything every presence backend must do.
async fn presence_suite(presence: &dyn Presence) {
    let (a, a_mail) = member("127.0.0.1:1", "lobby", Mode::Plain);
    let (b, _) = member("127.0.0.1:2", "lobby", Mode::Json);
    presence.register(conn(1), a);
    presence.register(conn(2), b);

    // Nicks are unique case-insensitively; a connection may re-case its own.
    assert_eq!(
        &*presence.rename(conn(1), "Alice").await.expect("rename"),
        "127.0.0.1:1"
    );
    let taken = presence.rename(conn(2), "alice").await.expect_err("taken");
    assert_eq!(taken.code, ErrorCode::NickTaken);
    assert_eq!(
        &*presence.rename(conn(1), "alice").await.expect("re-case"),
        "Alice"
    );
    presence.rename(conn(2), "bob").await.expect("rename");

    // Members and rooms.
    assert_eq!(presence.who("lobby").await.expect("who"), ["alice", "bob"]);
    presence.set_room(conn(2), "rust".into());
    assert_eq!(presence.room_size("lobby"), 1);
    assert_eq!(presence.who("rust").await.expect("who"), ["bob"]);
    let room = |name: &str, members| RoomInfo {
        name: name.into(),
        members,
        last: None,
    };
    assert_eq!(
        presence.rooms().await.expect("rooms"),
        [room("lobby", 1), room("rust", 1)]
    );

    // A private message reaches its recipient's mailbox, rendered for its mode.
    let note = PrivateMessage {
        from: "bob".into(),
        text: "psst".into(),
        ts: 5,
    };
    assert_eq!(
        presence
            .send_private("ALICE", note.clone())
            .await
            .expect("sent"),
        "alice"
    );
    assert_eq!(Vec::from(a_mail.take()), ["[private] bob: psst"]);
    let missing = presence
        .send_private("carol", note)
        .await
        .expect_err("no one");
    assert_eq!(missing.code, ErrorCode::NoSuchUser);

    // Leaving frees the nick and says what the connection was called and where.
    let (nick, room) = presence.unregister(conn(1)).expect("was registered");
    assert_eq!((&*nick, &*room), ("alice", "lobby"));
    assert!(presence.unregister(conn(1)).is_none());
    presence.rename(conn(2), "alice").await.expect("free again");
    assert_eq!(presence.room_size("lobby"), 0);
    assert_eq!(presence.room_count(), 1);

    // A nick is handed over only for its holder's secret.
    let (c, c_mail) = member("127.0.0.1:3", "lobby", Mode::Json);
    let secret = c.secret;
    presence.register(conn(3), c);
    presence.rename(conn(3), "carol").await.expect("rename");
    assert!(presence.hand_over("carol", secret + 1).is_none());
    assert!(presence.hand_over("nobody", secret).is_none());
    let mailbox = presence.hand_over("CAROL", secret).expect("handed over");
    assert!(Arc::ptr_eq(&mailbox, &c_mail));
    // The holder is gone (its end announces nothing), the nick is free.
    assert!(presence.unregister(conn(3)).is_none());
    assert_eq!(presence.room_size("lobby"), 0);
    presence.rename(conn(2), "carol").await.expect("free");
}

#[tokio::test]
async fn memory_presence_meets_the_interface() {
    presence_suite(&MemoryPresence::default()).await;
}

fn notice(text: &str) -> Arc<Delivery> {
    let frame = wschat::protocol::ServerFrame::Notice { text: text.into() };
    Arc::new(Delivery::new(conn(1), frame, None))
}

fn text_of(event: &Delivery) -> String {
    String::from_utf8_lossy(&event.wire(Mode::Plain)[2..]).into_owned()
}

/// Everything every fan-out backend must do (`capacity` is 4). Events may
/// take a moment to arrive (a shared backend sends them through a server).
async fn fanout_suite(fanout: &dyn Fanout) {
    let mut first = fanout.subscribe("lobby").await;
    let mut second = fanout.subscribe("lobby").await;
    let mut elsewhere = fanout.subscribe("rust").await;
    fanout.publish("lobby", notice("one"));
    fanout.publish("lobby", notice("two"));
    fanout.publish("rust", notice("marker"));
    for feed in [&mut first, &mut second] {
        let got = within("first event", feed.next()).await.expect("event");
        assert_eq!(text_of(&got), "* one");
        let got = within("second event", feed.next()).await.expect("event");
        assert_eq!(text_of(&got), "* two");
    }
    // Only its own room's events: the marker published after the lobby's is
    // the first thing it sees.
    let got = within("marker", elsewhere.next()).await.expect("event");
    assert_eq!(text_of(&got), "* marker");
    assert!(first.try_next().expect("no lag").is_none());

    // A subscriber that falls behind is told so, with how much it lost.
    for n in 0..6 {
        fanout.publish("lobby", notice(&n.to_string()));
    }
    // (Another subscriber, lagging as well, tells when all six are there.)
    loop {
        match within("the last lobby event", second.next()).await {
            Ok(got) if text_of(&got) == "* 5" => break,
            _ => {}
        }
    }
    assert_eq!(first.try_next().expect_err("lagged"), FeedError::Lagged(2));
    // Publishing to a room nobody follows is fine.
    fanout.publish("empty", notice("nobody"));
}

#[tokio::test]
async fn memory_fanout_meets_the_interface() {
    fanout_suite(&MemoryFanout::new(Bounds {
        frames: 4,
        bytes: 1 << 20,
    }))
    .await;
}

/// The Redis backends of one node on a test's own Redis.
async fn redis_node(redis: &RedisServer, capacity: usize) -> wschat::server::Backends {
    let config = ServerConfig {
        redis: Some(redis.url()),
        max_lag: capacity,
        ..ServerConfig::default()
    };
    within(
        "the Redis backends",
        // The node the suite's connections say they are on.
        wschat::server::open_backends(&config, conn(0).node),
    )
    .await
    .expect("Redis backends")
}

#[tokio::test]
async fn redis_fanout_meets_the_interface() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (fanout, ..) = redis_node(&redis, 4).await;
    fanout_suite(&*fanout).await;
}

#[tokio::test]
async fn redis_presence_meets_the_interface() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (_, _, presence, _) = redis_node(&redis, 64).await;
    presence_suite(&*presence).await;
}
