//! `--db`: history that outlives the server process, and what happens when
//! the file or the disk under it is bad. Real server processes, real files.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{Peer, Proc, http_request, spawn_server, within};
use wschat::protocol::{ErrorCode, ServerFrame};

const SERVER: &str = env!("CARGO_BIN_EXE_server");

/// The `host:port` of a `ws://` URL.
fn addr_of(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("ws://").parse().expect("address")
}

async fn healthz(url: &str) -> u16 {
    http_request(
        addr_of(url),
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await
}

/// The server's `/metrics` answer.
async fn metrics(url: &str) -> String {
    common::metrics(addr_of(url)).await
}

/// A JSON peer past its welcome, named `nick`; returns it and the epoch.
async fn json_peer(url: &str, nick: &str) -> (Peer, u64) {
    let (mut peer, epoch) = Peer::json_joined(url).await;
    peer.send(&format!(r#"{{"type":"nick","nick":"{nick}"}}"#))
        .await;
    loop {
        if let ServerFrame::Renamed { new, .. } = peer.frame().await
            && new == nick
        {
            return (peer, epoch);
        }
    }
}

fn say(text: &str, cid: &str) -> String {
    format!(r#"{{"type":"say","text":"{text}","cid":"{cid}"}}"#)
}

/// Joins the lobby again from `after` and returns every message replayed,
/// as (id, text), reading up to the answer to a `who` sent behind the join
/// (requests are answered in order, so that marks the end of the replay).
async fn replay_after(peer: &mut Peer, after: u64) -> Vec<(u64, String)> {
    peer.send(&format!(
        r#"{{"type":"join","room":"lobby","after":{after}}}"#
    ))
    .await;
    peer.send(r#"{"type":"who"}"#).await;
    let mut replayed = Vec::new();
    loop {
        match peer.frame().await {
            ServerFrame::Message {
                id, text, history, ..
            } => {
                assert!(history, "message {id} is live, expected a replay");
                replayed.push((id, text));
            }
            ServerFrame::Members { .. } => return replayed,
            other => panic!("unexpected {other:?} during the replay"),
        }
    }
}

/// Sends `count` messages at once, reads acknowledgements until `stop_after`
/// of them, stops the server with `signal`, and returns every acknowledgement
/// that arrived (cid to id) until the connection ended.
async fn send_then_stop(
    server: &Proc,
    peer: &mut Peer,
    count: usize,
    stop_after: usize,
    signal: &str,
) -> HashMap<String, u64> {
    for n in 0..count {
        peer.send(&say(&format!("m{n}"), &format!("c{n}"))).await;
    }
    let mut acked = HashMap::new();
    let mut signalled = false;
    while let Some(message) = peer.next_or_end().await {
        let Some(text) = message.as_text() else {
            continue;
        };
        if let Ok(ServerFrame::Message {
            id, cid: Some(cid), ..
        }) = serde_json::from_str(text)
        {
            acked.insert(cid, id);
        }
        if acked.len() >= stop_after && !signalled {
            server.signal(signal);
            signalled = true;
        }
    }
    assert!(
        signalled,
        "the server closed before {stop_after} acknowledgements"
    );
    acked
}

async fn survives(signal: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("chat.db");
    let db_arg = db.to_str().expect("utf-8 path");
    let args = ["--db", db_arg, "--rate", "0"];

    let (mut server, url) = spawn_server(&args).await;
    let (mut alice, epoch) = json_peer(&url, "alice").await;
    let acked = send_then_stop(&server, &mut alice, 300, 100, signal).await;
    let status = server.ended().await;
    if signal == "TERM" {
        assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    }

    let (_server, url) = spawn_server(&args).await;
    let (mut bob, epoch_after) = json_peer(&url, "bob").await;
    assert_eq!(epoch_after, epoch, "the epoch survives a restart");
    let stored = replay_after(&mut bob, 0).await;

    // What was stored is what alice sent, in order, each once, with ids
    // 1, 2, 3, ...; every acknowledged message is among it with its id.
    assert!(stored.len() >= acked.len());
    for (n, (id, text)) in stored.iter().enumerate() {
        assert_eq!(
            (*id, text.as_str()),
            (n as u64 + 1, format!("m{n}").as_str())
        );
    }
    for (cid, id) in &acked {
        let n: usize = cid[1..].parse().expect("cid number");
        assert_eq!(stored[n].0, *id, "{cid} was acknowledged as {id}");
    }

    // Ids go on from where they were.
    bob.send(&say("after the restart", "b1")).await;
    match bob.frame().await {
        ServerFrame::Message { id, .. } => assert_eq!(id, stored.len() as u64 + 1),
        other => panic!("expected bob's acknowledgement, got {other:?}"),
    }

    // A plain peer is shown the stored history on joining.
    let mut carol = Peer::plain_raw(&url).await;
    carol.expect(wschat::protocol::WELCOME).await;
    let last = stored.len();
    for n in last - 19..last {
        carol.expect(&format!("alice: m{n}")).await;
    }
    carol.expect("bob: after the restart").await;
}

#[tokio::test]
async fn acknowledged_messages_survive_sigterm() {
    survives("TERM").await;
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9() {
    survives("KILL").await;
}

/// Runs the server on `db` and returns its exit code and stderr.
async fn refused(db: &Path) -> (i32, Vec<String>) {
    let db = db.to_str().expect("utf-8 path");
    let mut server = Proc::spawn(SERVER, &["--port", "0", "--db", db], &[]);
    let lines = server.err_rest().await;
    (server.exit_code().await, lines)
}

async fn assert_refused(db: &Path, reason: &str) {
    let (code, lines) = refused(db).await;
    let expected = format!(
        "error: cannot use history database {}: {reason}",
        db.display()
    );
    assert_eq!((code, lines), (1, vec![expected]));
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("notes.txt");
    std::fs::write(
        &db,
        "shopping list: milk, eggs, bread, and a lot more text\n".repeat(200),
    )
    .expect("write");
    assert_refused(&db, "file is not a database").await;
}

#[tokio::test]
async fn a_database_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("chat.db");
    let conn = rusqlite::Connection::open(&db).expect("create");
    conn.pragma_update(None, "user_version", 99)
        .expect("version");
    drop(conn);
    assert_refused(
        &db,
        "its schema version 99 is newer than this server's (2); upgrade wschat",
    )
    .await;
}

#[tokio::test]
async fn a_corrupt_database_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("chat.db");
    let conn = rusqlite::Connection::open(&db).expect("create");
    conn.execute_batch(
        "CREATE TABLE t (x TEXT); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) INSERT INTO t SELECT printf('%0100d', i) FROM n;",
    )
    .expect("fill");
    drop(conn);
    // Scribble over the pages after the first: the header still says SQLite.
    let mut bytes = std::fs::read(&db).expect("read");
    for byte in &mut bytes[8192..] {
        *byte = 0x5a;
    }
    std::fs::write(&db, bytes).expect("write");
    let (code, lines) = refused(&db).await;
    assert_eq!(code, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let prefix = format!("error: cannot use history database {}: ", db.display());
    assert!(lines[0].starts_with(&prefix), "{lines:?}");
}

#[tokio::test]
async fn a_database_in_a_directory_that_cannot_exist_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "not a directory").expect("write");
    assert_refused(
        &file.join("chat.db"),
        "cannot open the file (does its directory exist, and may the server write there?)",
    )
    .await;
}

/// A small tmpfs, so a test can fill the disk under the database and free
/// it again. Mounting needs root (as CI has); elsewhere the test says so
/// and is skipped, but never under CI.
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount() -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "wschat-test"])
            .arg(dir.path())
            .status();
        if status.is_ok_and(|s| s.success()) {
            return Some(Self { dir });
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot mount a tmpfs (CI runs as root and must be able to)"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        None
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        path
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_answers_unavailable_and_503_until_it_has_room_again() {
    let Some(disk) = TinyDisk::mount() else {
        return;
    };
    let db = disk.path().join("chat.db");
    let (_server, url) = spawn_server(&["--db", db.to_str().expect("utf-8"), "--rate", "0"]).await;
    let (mut alice, _) = json_peer(&url, "alice").await;
    let (mut bob, _) = json_peer(&url, "bob").await;
    alice.send(&say("before", "a1")).await;
    let first = loop {
        if let ServerFrame::Message { id, .. } = alice.frame().await {
            break id;
        }
    };
    assert_eq!(healthz(&url).await, 200);

    let filler = disk.fill();
    // Pages already allocated may take a few more commits; then one fails.
    let mut stored = vec!["before".to_owned()];
    let refused = within("a write to fail on the full disk", async {
        for n in 0.. {
            let text = format!("while full {n}");
            alice.send(&say(&text, &format!("f{n}"))).await;
            match alice.frame().await {
                ServerFrame::Message { .. } => stored.push(text),
                ServerFrame::Error { code, cid, .. } => {
                    assert_eq!((code, cid), (ErrorCode::Unavailable, Some(format!("f{n}"))));
                    return text;
                }
                other => panic!("expected an acknowledgement or unavailable, got {other:?}"),
            }
        }
        unreachable!()
    })
    .await;
    assert_eq!(healthz(&url).await, 503);
    // The failed write is counted for /metrics, with the write latencies.
    let metrics = metrics(&url).await;
    let errors = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wschat_backend_errors_total{backend=\"sqlite\"} "))
        .expect("backend error counter");
    assert_ne!(errors, "0", "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wschat_backend_write_seconds_bucket{backend=\"sqlite\"")),
        "{metrics}"
    );

    std::fs::remove_file(filler).expect("free the disk");
    within("healthz to answer 200 again", async {
        while healthz(&url).await != 200 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    alice.send(&say("after", "a3")).await;
    stored.push("after".to_owned());
    // Bob gets every stored message with consecutive ids: the refused one
    // never reached anyone, and it used up no id.
    let mut texts = Vec::new();
    while texts.len() < stored.len() {
        if let ServerFrame::Message { id, text, .. } = bob.frame().await {
            assert_ne!(text, refused);
            texts.push((id, text));
        }
    }
    let expected: Vec<(u64, String)> = (first..).zip(stored).collect();
    assert_eq!(texts, expected);
}

/// `--retain` pruned only when the writer woke for the next write: after
/// 20 messages with `--retain 5` and then silence, all 20 stayed for ever.
#[tokio::test]
async fn retain_prunes_in_the_background_with_nothing_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("chat.db");
    let path = db.to_str().expect("utf-8 path");
    let (_server, url) = spawn_server(&["--db", path, "--retain", "5", "--rate", "0"]).await;
    let (mut peer, _) = json_peer(&url, "ann").await;
    for n in 0..20 {
        peer.send(&say(&format!("m{n}"), &format!("c{n}"))).await;
    }
    // Every one acknowledged, so stored; from now on nothing is written.
    let mut acked = 0;
    while acked < 20 {
        if let ServerFrame::Message { cid: Some(_), .. } = peer.frame().await {
            acked += 1;
        }
    }
    let file =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the file");
    let kept = || -> Vec<i64> {
        let mut ids = file
            .prepare("SELECT id FROM messages ORDER BY id")
            .expect("prepare");
        ids.query_map([], |row| row.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    within("pruning past --retain", async {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(100));
        while kept().len() > 5 {
            every.tick().await;
        }
    })
    .await;
    assert_eq!(kept(), [16, 17, 18, 19, 20]);
}

/// The next frame that is a message's acknowledgement or an error.
async fn outcome(peer: &mut Peer) -> ServerFrame {
    loop {
        if let frame @ (ServerFrame::Message { .. } | ServerFrame::Error { .. }) =
            peer.frame().await
        {
            return frame;
        }
    }
}

#[tokio::test]
async fn a_second_server_on_the_same_file_exits_naming_it_and_the_first_s_pid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("chat.db");
    let (first, url) = spawn_server(&["--db", db.to_str().expect("utf-8")]).await;
    let pid = first.pid();
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&db, &link).expect("symlink");
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).expect("dir");
    let roundabout = sub.join("..").join("chat.db");
    // The same file by its name, through a symlink, and by another path.
    for other in [&db, &link, &roundabout] {
        let (code, lines) = refused(other).await;
        assert_eq!(code, 1, "{lines:?}");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with(&format!(
                "error: cannot use history database {}: it is in use by another wschat server (pid {pid})",
                other.display()
            )),
            "{lines:?}"
        );
    }
    // The first one never noticed.
    assert_eq!(healthz(&url).await, 200);
    let (mut alice, _) = json_peer(&url, "alice").await;
    alice.send(&say("still here", "s1")).await;
    assert!(matches!(
        outcome(&mut alice).await,
        ServerFrame::Message { .. }
    ));
    // Once it is gone, the file is free.
    first.signal("TERM");
    let mut first = first;
    assert_eq!(first.exit_code().await, 0);
    let (_again, url) = spawn_server(&["--db", db.to_str().expect("utf-8")]).await;
    assert_eq!(healthz(&url).await, 200);
}

/// A server on a fresh file in `dir` with alice connected and one message
/// stored.
async fn serving(dir: &Path) -> (Proc, String, Peer) {
    let db = dir.join("chat.db");
    let (server, url) = spawn_server(&["--db", db.to_str().expect("utf-8"), "--rate", "0"]).await;
    let (mut alice, _) = json_peer(&url, "alice").await;
    alice.send(&say("stored", "s0")).await;
    assert!(matches!(
        outcome(&mut alice).await,
        ServerFrame::Message { .. }
    ));
    (server, url, alice)
}

#[tokio::test]
async fn a_shared_memory_file_cut_short_refuses_writes_instead_of_crashing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, url, mut alice) = serving(dir.path()).await;
    let shm = dir.path().join("chat.db-shm");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&shm)
        .expect("open -shm");
    file.set_len(0).expect("truncate -shm");
    alice.send(&say("after", "s1")).await;
    match outcome(&mut alice).await {
        ServerFrame::Error { code, cid, text } => {
            assert_eq!((code, cid.as_deref()), (ErrorCode::Unavailable, Some("s1")));
            assert!(text.contains("chat.db-shm was cut short"), "{text}");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert_eq!(healthz(&url).await, 503);
    let line = server.err_until("was cut short").await;
    assert!(line.contains("ERROR") && line.contains("restart"), "{line}");
    // Alive, and still chatting without history.
    alice.send(r#"{"type":"who"}"#).await;
    loop {
        if let ServerFrame::Members { nicks, .. } = alice.frame().await {
            assert_eq!(nicks, ["alice"]);
            break;
        }
    }
    server.signal("TERM");
    assert_eq!(server.exit_code().await, 0);
}

#[tokio::test]
async fn database_files_deleted_while_it_runs_are_noticed_and_writes_refused() {
    for deleted in ["chat.db", "chat.db-wal"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut server, url, mut alice) = serving(dir.path()).await;
        std::fs::remove_file(dir.path().join(deleted)).expect("delete");
        // Noticed with nothing written...
        within("healthz to answer 503", async {
            while healthz(&url).await != 503 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
        .await;
        let line = server.err_until("was deleted while the server runs").await;
        assert!(line.contains(deleted), "{line}");
        // ...and nothing more is acknowledged that a restart would lose.
        alice.send(&say("lost?", "s1")).await;
        match outcome(&mut alice).await {
            ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::Unavailable),
            other => panic!("expected unavailable, got {other:?}"),
        }
        server.signal("TERM");
        assert_eq!(server.exit_code().await, 0, "{deleted}");
    }
}

#[tokio::test]
async fn a_file_of_the_first_schema_is_migrated_with_its_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("chat.db");
    let conn = rusqlite::Connection::open(&db).expect("create");
    conn.execute_batch(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
         CREATE TABLE rooms (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, last_id INTEGER NOT NULL);
         CREATE TABLE messages (
             room INTEGER NOT NULL REFERENCES rooms(id), id INTEGER NOT NULL, ts INTEGER NOT NULL,
             nick TEXT NOT NULL, text TEXT NOT NULL, cid TEXT, PRIMARY KEY (room, id)
         ) WITHOUT ROWID;
         INSERT INTO meta VALUES ('epoch', 77);
         INSERT INTO rooms VALUES (1, 'lobby', 2);
         INSERT INTO messages VALUES (1, 1, 1000, 'kim', 'one', 'k1');
         INSERT INTO messages VALUES (1, 2, 2000, 'kim', 'two', NULL);
         PRAGMA user_version = 1;",
    )
    .expect("a version 1 file");
    drop(conn);
    let (_server, url) = spawn_server(&["--db", db.to_str().expect("utf-8")]).await;
    let (mut kim, epoch) = json_peer(&url, "kim").await;
    assert_eq!(epoch, 77);
    assert_eq!(
        replay_after(&mut kim, 0).await,
        [(1, "one".to_owned()), (2, "two".to_owned())]
    );
    // A message from before knows no sender connection: its cid is no one's
    // to get back, but a retry of it is still the original.
    kim.send(&say("one", "k1")).await;
    match outcome(&mut kim).await {
        ServerFrame::Message { id, cid, .. } => assert_eq!((id, cid.as_deref()), (1, Some("k1"))),
        other => panic!("expected the original, got {other:?}"),
    }
    kim.send(&say("three", "k3")).await;
    match outcome(&mut kim).await {
        ServerFrame::Message { id, .. } => assert_eq!(id, 3),
        other => panic!("expected an acknowledgement, got {other:?}"),
    }
}
