//! One test set for the history interface, run against every backend, plus
//! what only a durable backend promises (restart, pruning).

mod common;

use std::sync::Arc;

use common::redis::RedisServer;
use common::within;
use wschat::config::DbSync;
use wschat::server::ConnId;
use wschat::server::fanout::{Bounds, Fanout, MemoryFanout, RoomFeed};
use wschat::server::history::{
    Appended, History, MemoryHistory, NewMessage, Since, SqliteHistory, Stamp,
};
use wschat::server::metrics::BackendMetrics;

const ORIGIN: ConnId = ConnId { node: 7, seq: 1 };

/// An in-memory fan-out for a history to publish to.
fn memory_fanout() -> Arc<dyn Fanout> {
    Arc::new(MemoryFanout::new(Bounds {
        frames: 64,
        bytes: 1 << 20,
    }))
}

/// A database path in a fresh directory, removed when the guard drops.
fn db_path() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chat.db");
    (dir, path)
}

fn message(room: &str, text: &str) -> NewMessage {
    NewMessage {
        origin: ORIGIN,
        room: room.into(),
        from: "alice".into(),
        text: text.into(),
        cid: Some(format!("c-{text}")),
    }
}

async fn append(history: &dyn History, room: &str, text: &str) -> Stamp {
    match append_message(history, message(room, text)).await {
        Appended::New(stamp) => stamp,
        repeat => panic!("expected a new message, got {repeat:?}"),
    }
}

async fn append_message(history: &dyn History, message: NewMessage) -> Appended {
    within("append", history.append(message))
        .await
        .expect("append")
}

async fn ids(history: &dyn History, room: &str, since: Since, limit: usize) -> Vec<u64> {
    let page = within("read", history.read(room, since, limit))
        .await
        .expect("read");
    page.messages.iter().map(|m| m.id).collect()
}

/// Ids of the next `n` messages a feed receives, then checks that nothing
/// else is waiting.
async fn receive(feed: &mut RoomFeed, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    while ids.len() < n {
        let event = within("a message", feed.next()).await.expect("no lag");
        ids.extend(event.id());
    }
    assert!(feed.try_next().expect("no lag").is_none());
    ids
}

/// Everything every history backend must do.
async fn suite(history: &dyn History, fanout: &dyn Fanout) {
    // Ids start at 1 and go up by one, per room.
    let mut lobby = fanout.subscribe("lobby").await;
    let mut other = fanout.subscribe("other").await;
    for n in 1..=5 {
        let stamp = append(history, "lobby", &format!("m{n}")).await;
        assert_eq!(stamp.id, n);
        assert!(stamp.ts > 0);
    }
    assert_eq!(append(history, "other", "x").await.id, 1);

    // Each stored message was published once, in id order, to its room only.
    assert_eq!(receive(&mut other, 1).await, [1]);
    assert_eq!(receive(&mut lobby, 5).await, [1, 2, 3, 4, 5]);

    // Reading back: the most recent, or everything after an id, oldest first.
    assert_eq!(ids(history, "lobby", Since::Recent, 3).await, [3, 4, 5]);
    assert_eq!(
        ids(history, "lobby", Since::Recent, 10).await,
        [1, 2, 3, 4, 5]
    );
    assert_eq!(ids(history, "lobby", Since::After(2), 10).await, [3, 4, 5]);
    assert_eq!(ids(history, "lobby", Since::After(2), 2).await, [3, 4]);
    assert!(ids(history, "lobby", Since::After(5), 10).await.is_empty());
    assert!(ids(history, "empty", Since::Recent, 10).await.is_empty());
    // Scroll-back: the last ones before an id, oldest first.
    assert_eq!(ids(history, "lobby", Since::Before(5), 2).await, [3, 4]);
    assert_eq!(ids(history, "lobby", Since::Before(3), 10).await, [1, 2]);
    assert!(ids(history, "lobby", Since::Before(1), 10).await.is_empty());
    assert_eq!(
        ids(history, "lobby", Since::Before(99), 10).await,
        [1, 2, 3, 4, 5]
    );

    // What was stored comes back as it went in.
    let page = history
        .read("lobby", Since::After(3), 1)
        .await
        .expect("read");
    let stored = &page.messages[0];
    assert_eq!(
        (
            stored.id,
            &*stored.from,
            &*stored.text,
            stored.cid.as_deref()
        ),
        (4, "alice", "m4", Some("c-m4"))
    );
    assert_eq!(stored.origin, Some(ORIGIN));

    // A retry (the same sender, in any case, and the same cid) is the
    // original: stored and published no second time.
    let with_cid = |from: &str, text: &str| NewMessage {
        from: from.into(),
        ..message("lobby", text)
    };
    let retry = NewMessage {
        cid: Some("c-m4".into()),
        ..with_cid("ALICE", "m4 again")
    };
    match append_message(history, retry).await {
        Appended::Repeat(original) => assert_eq!(
            (original.id, &*original.text, original.cid.as_deref()),
            (4, "m4", Some("c-m4"))
        ),
        new => panic!("expected the original, got {new:?}"),
    }
    // Another sender's cid is its own: bob's "c-m4" is a new message, and
    // the next one the room hears.
    let bobs = NewMessage {
        cid: Some("c-m4".into()),
        ..with_cid("bob", "bob's")
    };
    assert_eq!(append_message(history, bobs).await.id(), 6);
    assert_eq!(receive(&mut lobby, 1).await, [6]);

    // One epoch, the same for every read of every room.
    let epoch = page.epoch;
    assert_ne!(epoch, 0);
    let again = history.read("lobby", Since::Recent, 1).await.expect("read");
    assert_eq!(again.epoch, epoch);
    let elsewhere = history.read("other", Since::Recent, 1).await.expect("read");
    assert_eq!(elsewhere.epoch, epoch);
    let unused = history
        .read("unused", Since::Recent, 1)
        .await
        .expect("read");
    assert_eq!(unused.epoch, epoch);
    assert_eq!(history.trouble(), None);
}

#[tokio::test]
async fn memory_history_meets_the_interface() {
    let fanout = memory_fanout();
    let history = MemoryHistory::new(100, fanout.clone());
    suite(&history, &*fanout).await;
}

#[tokio::test]
async fn redis_history_meets_the_interface() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let config = wschat::config::ServerConfig {
        redis: Some(redis.url()),
        ..Default::default()
    };
    let (fanout, history, ..) = within(
        "the Redis backends",
        wschat::server::open_backends(&config, 1),
    )
    .await
    .expect("Redis backends");
    suite(&*history, &*fanout).await;
}

#[tokio::test]
async fn memory_history_keeps_only_its_capacity() {
    let fanout = memory_fanout();
    let history = MemoryHistory::new(3, fanout);
    for n in 1..=5 {
        append(&history, "lobby", &n.to_string()).await;
    }
    assert_eq!(ids(&history, "lobby", Since::After(0), 10).await, [3, 4, 5]);
}

fn open(path: &std::path::Path, retain: u64, fanout: Arc<dyn Fanout>) -> SqliteHistory {
    SqliteHistory::open(
        path,
        retain,
        DbSync::Normal,
        fanout,
        BackendMetrics::new("sqlite"),
    )
    .expect("open")
}

#[tokio::test]
async fn sqlite_history_meets_the_interface() {
    let (_dir, path) = db_path();
    let fanout = memory_fanout();
    let history = open(&path, 100, fanout.clone());
    suite(&history, &*fanout).await;
}

#[tokio::test]
async fn sqlite_history_survives_reopening_with_its_ids_and_epoch() {
    let (_dir, path) = db_path();
    let fanout = memory_fanout();
    let first = open(&path, 100, fanout.clone());
    for n in 1..=3 {
        append(&first, "lobby", &n.to_string()).await;
    }
    let epoch = first
        .read("lobby", Since::Recent, 1)
        .await
        .expect("read")
        .epoch;
    drop(first);

    let second = open(&path, 100, fanout);
    let page = second.read("lobby", Since::Recent, 10).await.expect("read");
    assert_eq!(page.epoch, epoch);
    assert_eq!(
        page.messages.iter().map(|m| &*m.text).collect::<Vec<_>>(),
        ["1", "2", "3"]
    );
    assert_eq!(append(&second, "lobby", "4").await.id, 4);
}

#[tokio::test]
async fn sqlite_history_prunes_past_retain_and_never_reuses_ids() {
    let (_dir, path) = db_path();
    let fanout = memory_fanout();
    let history = open(&path, 3, fanout.clone());
    for n in 1..=10 {
        append(&history, "lobby", &n.to_string()).await;
    }
    drop(history);
    // The writer prunes right after its first write, and then on its own
    // clock until the room is within --retain, writes or no writes.
    let history = open(&path, 3, fanout);
    assert_eq!(append(&history, "lobby", "11").await.id, 11);
    assert_eq!(append(&history, "lobby", "12").await.id, 12);
    within("pruning down to --retain", async {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(50));
        while ids(&history, "lobby", Since::After(0), 100).await != [10, 11, 12] {
            every.tick().await;
        }
    })
    .await;
    // Pruning leaves the ids alone: they continue after the last one.
    drop(history);
    let fanout = memory_fanout();
    let history = open(&path, 3, fanout);
    assert_eq!(append(&history, "lobby", "13").await.id, 13);
}

/// Many appends at once, committed together in batches of whatever was
/// waiting: every one is stored once under the id it was acknowledged with,
/// the ids of each room run on without a hole, and so they are after reopening.
#[tokio::test]
async fn sqlite_history_stores_3000_concurrent_appends_under_their_ids() {
    let (_dir, path) = db_path();
    let fanout = memory_fanout();
    let history = open(&path, 100_000, fanout.clone());
    let appends = (0..3000).map(|n| {
        let room = if n % 2 == 0 { "lobby" } else { "other" };
        history.append(message(room, &n.to_string()))
    });
    let stamps = within("3000 appends", futures_util::future::join_all(appends)).await;
    // The text each id in the lobby was given when it was stored.
    let lobby: std::collections::HashMap<u64, String> = stamps
        .into_iter()
        .enumerate()
        .filter(|(n, _)| n % 2 == 0)
        .map(|(n, stamp)| (stamp.expect("stored").id(), n.to_string()))
        .collect();

    check_both_rooms(&history, &lobby).await;
    drop(history);
    check_both_rooms(&open(&path, 100_000, fanout), &lobby).await;
}

/// Reads of 1500 messages in each of two rooms, and the lobby's texts.
async fn check_both_rooms(history: &SqliteHistory, lobby: &std::collections::HashMap<u64, String>) {
    let expect = |from: u64, to: u64| (from..=to).collect::<Vec<u64>>();
    for room in ["lobby", "other"] {
        assert_eq!(
            ids(history, room, Since::After(0), 2000).await,
            expect(1, 1500)
        );
        assert_eq!(
            ids(history, room, Since::Recent, 600).await,
            expect(901, 1500)
        );
        assert_eq!(
            ids(history, room, Since::After(1200), 5).await,
            expect(1201, 1205)
        );
        assert_eq!(
            ids(history, room, Since::Before(1400), 700).await,
            expect(700, 1399)
        );
    }
    // Every text came back under the id its append was answered with.
    let page = history
        .read("lobby", Since::Recent, 1500)
        .await
        .expect("read");
    assert_eq!(page.messages.len(), 1500);
    assert!(page.messages.iter().all(|m| lobby[&m.id] == m.text));
}
