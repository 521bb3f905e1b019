//! Durable history in one SQLite file (WAL).
//!
//! One writer thread owns the writing connection. Appends queue up on a
//! bounded channel; the writer takes everything waiting, writes it in one
//! transaction (group commit), and only once that transaction has committed
//! hands the batch to a publisher task, which publishes the messages, in id
//! order, and answers their senders. The publisher runs on the tokio
//! runtime because waking a room's thousand readers from a foreign thread
//! costs several times more than from a worker. So an
//! acknowledgement always means "stored", and no tokio worker ever waits for
//! the disk. Reads use a second connection on tokio's blocking pool, which
//! WAL lets run beside the writer.
//!
//! Ids continue from each room's last id, which never goes down, also when
//! old messages are pruned (`--retain`): a room's newest message holds it,
//! and `rooms.last_id` holds it too from before any prune (a prune writes it
//! first), so a commit has one row per message to write and nothing else. The epoch is made once, when the
//! file is created, and kept in it: only losing the file loses history.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::files::{DbLock, FileWatch, Tampered, real_path};
use super::{Appended, BoxFuture, History, HistoryError, NewMessage, Page, Since, Stamp, Stored};
use crate::config::DbSync;
use crate::protocol::now_ms;
use crate::server::fanout::{Delivery, Fanout};
use crate::server::lock;
use crate::server::metrics::BackendMetrics;
use crate::server::redis::{origin_field, parse_origin};

/// The schema this build writes; older files are migrated on open.
const SCHEMA_VERSION: i64 = 2;
/// The page size of a new file, in bytes.
const PAGE_SIZE: i64 = 1024;
/// Appends that may wait for the writer before senders wait to queue.
const QUEUE: usize = 8192;
/// Committed batches that may wait for the publisher.
const COMMITTED: usize = 64;
/// Most appends written in one transaction.
const MAX_BATCH: usize = 2048;
/// Under load (the last commit was less than [`BUSY_WITHIN`] ago), how long
/// the writer waits after taking a short batch, for more to join it.
const GATHER: Duration = Duration::from_micros(300);
/// A commit this recent means appends are arriving steadily.
const BUSY_WITHIN: Duration = Duration::from_micros(1200);
/// A batch this long is written without waiting for more.
const GATHERED: usize = MAX_BATCH / 4;
/// Rows pruned per statement, so pruning never holds the writer for long.
const PRUNE_BATCH: u64 = 1000;
/// How often the writer looks for rooms over `--retain`.
const PRUNE_EVERY: Duration = Duration::from_secs(1);
/// How often a failing store is tried again when nobody writes.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How often the writer reports what it did (at debug level).
const REPORT_EVERY: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    CREATE TABLE rooms (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        last_id INTEGER NOT NULL
    );
    CREATE TABLE messages (
        room INTEGER NOT NULL REFERENCES rooms(id),
        id INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        nick TEXT NOT NULL,
        text TEXT NOT NULL,
        cid TEXT,
        PRIMARY KEY (room, id)
    ) WITHOUT ROWID;
";

/// Version 2: each message's sending connection (only it gets the cid
/// back), and an index to find a retry's original by its cid.
const SCHEMA_2: &str = "
    ALTER TABLE messages ADD COLUMN origin TEXT;
    CREATE INDEX messages_by_cid ON messages (room, cid) WHERE cid IS NOT NULL;
";

/// History in a SQLite file.
#[derive(Debug)]
pub struct SqliteHistory {
    jobs: mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
    epoch: u64,
    health: Arc<Health>,
    /// Keeps a second server off the file; let go at [`History::close`].
    lock: Mutex<Option<DbLock>>,
}

/// Whether the last write worked, and why not; and whether the files are
/// still the ones the store opened.
#[derive(Debug)]
struct Health {
    failing: AtomicBool,
    reason: Mutex<String>,
    watch: Mutex<FileWatch>,
    /// What another process did to the files, once it was noticed: from
    /// then on until a restart the store is not used (see [`Health::guard`]).
    tampered: Mutex<Option<Tampered>>,
}

impl Health {
    fn new(watch: FileWatch) -> Self {
        Self {
            failing: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
            watch: Mutex::new(watch),
            tampered: Mutex::new(None),
        }
    }

    /// `Ok` while the database's files are the ones the store opened; once
    /// another process deleted, replaced or cut one short, what it did,
    /// logged once and failing every write from then on (and `/healthz`).
    fn guard(&self) -> Result<(), Tampered> {
        let mut tampered = lock(&self.tampered);
        if let Some(found) = &*tampered {
            return Err(found.clone());
        }
        let found = lock(&self.watch).check().err();
        let Some(found) = found else {
            return Ok(());
        };
        error!("history: {}", found.reason());
        *tampered = Some(found.clone());
        drop(tampered);
        self.fail(found.reason().to_owned());
        Err(found)
    }

    /// Whether the store may still be used (its files were not tampered with).
    fn intact(&self) -> bool {
        lock(&self.tampered).is_none()
    }

    fn fail(&self, reason: String) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            warn!("history writes failing: {reason}");
        }
        *lock(&self.reason) = reason;
    }

    fn recover(&self) {
        if !self.intact() {
            return;
        }
        if self.failing.swap(false, Ordering::Relaxed) {
            info!("history writes work again");
        }
    }
}

/// Where an append's outcome goes: its sender, waiting.
type Done = oneshot::Sender<Result<Appended, HistoryError>>;

/// Stored messages on their way to their rooms and their senders.
type Committed = Vec<(Arc<str>, Arc<Delivery>, Stamp, Done)>;

/// Publishes committed batches in the order they were committed, then
/// acknowledges each message to its sender.
async fn publish(mut batches: mpsc::Receiver<Committed>, fanout: Arc<dyn Fanout>) {
    while let Some(batch) = batches.recv().await {
        for (room, delivery, stamp, done) in batch {
            fanout.publish(&room, delivery);
            let _ = done.send(Ok(Appended::New(stamp)));
        }
    }
}

enum Job {
    Append {
        message: NewMessage,
        done: Done,
    },
    /// Try a write to see whether a failing store works again.
    Probe,
    /// Prune rooms past `--retain`, even with nothing to write.
    Prune,
    /// Check that the files are still the store's, with nothing to write.
    Watch,
}

/// One room as the writer knows it.
#[derive(Debug, Clone, Copy)]
struct RoomRow {
    key: i64,
    last_id: u64,
    /// Ids up to this one are pruned already.
    pruned_through: u64,
}

impl RoomRow {
    /// Whether it holds messages older than its newest `retain`.
    fn past(&self, retain: u64) -> bool {
        self.last_id.saturating_sub(retain) > self.pruned_through
    }
}

impl SqliteHistory {
    /// Opens (or creates) the file at `path`, migrating an older schema,
    /// and starts the writer, which publishes stored messages to `fanout`.
    ///
    /// # Errors
    /// When the file cannot be created or opened, is not a SQLite database,
    /// is corrupt, or has a newer schema.
    pub fn open(
        path: &Path,
        retain: u64,
        sync: DbSync,
        fanout: Arc<dyn Fanout>,
        metrics: BackendMetrics,
    ) -> Result<Self, HistoryError> {
        survive_file_size_limit()?;
        let real = real_path(path);
        let db_lock = DbLock::take(&real)?;
        let mut writer = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Small pages for a new file: a commit writes each page it touched
        // to the WAL, and chat messages are small (no effect on an existing file).
        writer.pragma_update(None, "page_size", PAGE_SIZE)?;
        let mode: String = writer.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(HistoryError::Unavailable(format!(
                "cannot switch to WAL (journal mode stays {mode})"
            )));
        }
        let level = match sync {
            DbSync::Normal => "NORMAL",
            DbSync::Full => "FULL",
        };
        writer.pragma_update(None, "synchronous", level)?;
        writer.busy_timeout(Duration::from_secs(5))?;
        migrate(&mut writer)?;
        let check: String = writer.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(HistoryError::Unavailable(format!(
                "the file is corrupt: {check}"
            )));
        }
        let epoch = epoch(&writer)?;
        let rooms = load_rooms(&writer)?;

        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(Duration::from_secs(5))?;
        // Both connections are open and have read: the files are there.
        let health = Arc::new(Health::new(FileWatch::new(&real)));

        let (jobs, queue) = mpsc::channel(QUEUE);
        let (committed, batches) = mpsc::channel(COMMITTED);
        tokio::spawn(publish(batches, fanout));
        let prune_due = Arc::new(AtomicBool::new(false));
        let mut store = Writer {
            conn: writer,
            rooms,
            retain,
            committed,
            health: health.clone(),
            prune_due: prune_due.clone(),
            pruned_at: None,
            report: Report::default(),
            metrics,
        };
        std::thread::Builder::new()
            .name("wschat-history".into())
            .spawn(move || store.run(queue))?;
        tokio::spawn(keep_time(jobs.downgrade(), health.clone(), prune_due));
        Ok(Self {
            jobs,
            reader: Arc::new(Mutex::new(reader)),
            epoch,
            health,
            lock: Mutex::new(Some(db_lock)),
        })
    }
}

/// Makes a write past the process's file size limit (`ulimit -f`) fail
/// with an error, which the writer reports, instead of SIGXFSZ killing the
/// server. Installing tokio's handler replaces the default action for good.
fn survive_file_size_limit() -> Result<(), HistoryError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        drop(signal(SignalKind::from_raw(nix::libc::SIGXFSZ))?);
    }
    Ok(())
}

/// Creates the schema in a new file, migrates an older one, refuses a newer one.
fn migrate(conn: &mut Connection) -> Result<(), HistoryError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(HistoryError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction()?;
    // Version 0 is a new, empty file; later versions add steps here.
    if version == 0 {
        let tables: i64 = tx.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        if tables > 0 {
            return Err(HistoryError::Unavailable(
                "the file holds tables that are not wschat's".into(),
            ));
        }
        tx.execute_batch(SCHEMA)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('epoch', ?1)",
            params![now_ms() as i64],
        )?;
    }
    if version < 2 {
        tx.execute_batch(SCHEMA_2)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

fn epoch(conn: &Connection) -> Result<u64, HistoryError> {
    let epoch: i64 = conn.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
        r.get(0)
    })?;
    Ok(epoch as u64)
}

fn load_rooms(conn: &Connection) -> Result<HashMap<String, RoomRow>, HistoryError> {
    let mut statement = conn.prepare(
        "SELECT r.name, r.id,
                max(r.last_id, coalesce((SELECT max(m.id) FROM messages m WHERE m.room = r.id), 0)),
                (SELECT min(m.id) FROM messages m WHERE m.room = r.id)
         FROM rooms r",
    )?;
    let rows = statement.query_map([], |r| {
        let last_id = r.get::<_, i64>(2)? as u64;
        let first: Option<i64> = r.get(3)?;
        Ok((
            r.get::<_, String>(0)?,
            RoomRow {
                key: r.get(1)?,
                last_id,
                pruned_through: first.map_or(last_id, |f| (f as u64).saturating_sub(1)),
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What the writer did since it last said so.
#[derive(Debug, Default)]
struct Report {
    since: Option<Instant>,
    transactions: u64,
    messages: u64,
}

impl Report {
    fn count(&mut self, messages: usize) {
        self.transactions += 1;
        self.messages += messages as u64;
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= REPORT_EVERY {
            let secs = since.elapsed().as_secs_f64();
            tracing::debug!(
                "history: {:.0} messages/s in {:.0} transactions/s",
                self.messages as f64 / secs,
                self.transactions as f64 / secs
            );
            *self = Self {
                since: Some(Instant::now()),
                ..Self::default()
            };
        }
    }
}

/// The writer's clock, for what must happen even when nobody is writing:
/// every so often a probe while writes fail (so the store is seen to work
/// again), pruning while some room is past `--retain`, and otherwise a look
/// at the files (so a deleted database is noticed, and `/healthz` says so).
async fn keep_time(jobs: mpsc::WeakSender<Job>, health: Arc<Health>, prune_due: Arc<AtomicBool>) {
    let every = PROBE_EVERY.min(PRUNE_EVERY);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticks.tick().await;
        let Some(jobs) = jobs.upgrade() else { return };
        let job = if health.failing.load(Ordering::Relaxed) {
            Job::Probe
        } else if prune_due.load(Ordering::Relaxed) {
            Job::Prune
        } else {
            Job::Watch
        };
        let _ = jobs.try_send(job);
    }
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    rooms: HashMap<String, RoomRow>,
    retain: u64,
    /// Where committed batches go to be published, in order.
    committed: mpsc::Sender<Committed>,
    health: Arc<Health>,
    /// Set while some room is past `--retain`, for the clock to ask for
    /// pruning when no write comes.
    prune_due: Arc<AtomicBool>,
    /// When rooms were last pruned; `None` prunes after the first write.
    pruned_at: Option<Instant>,
    report: Report,
    metrics: BackendMetrics,
}

impl Writer {
    /// Takes appends until every sender is gone.
    ///
    /// Under load it waits [`GATHER`] once before writing a short batch:
    /// the writer shares the cores with the connections that produce the
    /// appends, so without the pause it would take a few at a time and pay
    /// for a transaction (and two thread switches) each time.
    fn run(&mut self, mut queue: mpsc::Receiver<Job>) {
        let mut batch = Vec::new();
        let mut last_commit: Option<Instant> = None;
        while let Some(job) = queue.blocking_recv() {
            let mut probe = false;
            let mut prune = false;
            let mut watch = false;
            let mut next = Some(job);
            let mut gathered = false;
            loop {
                while let Some(job) = next.take() {
                    match job {
                        Job::Append { message, done } => batch.push((message, done)),
                        Job::Probe => probe = true,
                        Job::Prune => prune = true,
                        Job::Watch => watch = true,
                    }
                    if batch.len() < MAX_BATCH {
                        next = queue.try_recv().ok();
                    }
                }
                let busy = last_commit.is_some_and(|at| at.elapsed() < BUSY_WITHIN);
                if gathered || !busy || batch.len() >= GATHERED {
                    break;
                }
                gathered = true;
                std::thread::sleep(GATHER);
                next = queue.try_recv().ok();
            }
            last_commit = Some(Instant::now());
            if !batch.is_empty() {
                self.commit(std::mem::take(&mut batch));
            } else if probe {
                self.probe();
            } else if watch {
                let _ = self.health.guard();
            }
            if prune || self.pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                self.pruned_at = Some(Instant::now());
                self.prune();
            }
        }
    }

    /// Writes a batch in one transaction; then publishes and acknowledges
    /// it, or refuses all of it.
    fn commit(&mut self, batch: Vec<(NewMessage, Done)>) {
        if let Err(tampered) = self.health.guard() {
            self.metrics.errors.inc();
            for (_, done) in batch {
                let _ = done.send(Err(HistoryError::Unavailable(tampered.reason().into())));
            }
            return;
        }
        let ts = now_ms();
        let started = Instant::now();
        let written = self.write(&batch, ts);
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        match written {
            Ok((outcomes, touched)) => {
                if touched.iter().any(|(_, row)| row.past(self.retain)) {
                    self.prune_due.store(true, Ordering::Relaxed);
                }
                self.rooms.extend(touched);
                self.health.recover();
                let mut committed = Vec::with_capacity(batch.len());
                for ((message, done), outcome) in batch.into_iter().zip(outcomes) {
                    match outcome {
                        Appended::New(stamp) => committed.push((
                            message.room.clone(),
                            message.delivery(stamp),
                            stamp,
                            done,
                        )),
                        // Nothing to publish: the original was, when it was stored.
                        repeat @ Appended::Repeat(_) => {
                            let _ = done.send(Ok(repeat));
                        }
                    }
                }
                self.report.count(committed.len());
                // Only fails when the runtime is gone, and then nobody waits.
                let _ = self.committed.blocking_send(committed);
            }
            Err(err) => {
                let reason = describe(&err);
                self.metrics.errors.inc();
                self.health.fail(reason.clone());
                for (_, done) in batch {
                    let _ = done.send(Err(HistoryError::Unavailable(reason.clone())));
                }
            }
        }
    }

    /// The transaction itself: each message stored, or found to be a retry
    /// of one stored before (by its sender and cid, in the room's kept
    /// messages, this batch's included). The rooms it touched are returned
    /// rather than changed in place, so a failed transaction leaves the ids
    /// as they were.
    fn write(
        &mut self,
        batch: &[(NewMessage, Done)],
        ts: u64,
    ) -> rusqlite::Result<(Vec<Appended>, HashMap<String, RoomRow>)> {
        let tx = self.conn.transaction()?;
        let mut touched: HashMap<String, RoomRow> = HashMap::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (room, id, ts, nick, text, cid, origin) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (message, _) in batch {
                let row = match touched.get_mut(&*message.room) {
                    Some(row) => row,
                    None => {
                        let row = match self.rooms.get(&*message.room) {
                            Some(row) => *row,
                            None => {
                                tx.execute(
                                    "INSERT INTO rooms (name, last_id) VALUES (?1, 0)",
                                    params![&*message.room],
                                )?;
                                RoomRow {
                                    key: tx.last_insert_rowid(),
                                    last_id: 0,
                                    pruned_through: 0,
                                }
                            }
                        };
                        touched.entry(message.room.to_string()).or_insert(row)
                    }
                };
                if let Some(original) = original_of(&tx, row.key, message)? {
                    outcomes.push(Appended::Repeat(original));
                    continue;
                }
                row.last_id += 1;
                let stamp = Stamp {
                    id: row.last_id,
                    ts,
                };
                insert.execute(params![
                    row.key,
                    stamp.id as i64,
                    ts as i64,
                    &*message.from,
                    message.text,
                    message.cid,
                    origin_field(message.origin),
                ])?;
                outcomes.push(Appended::New(stamp));
            }
        }
        tx.commit()?;
        Ok((outcomes, touched))
    }

    /// A small write, to learn whether the store works again.
    fn probe(&mut self) {
        if self.health.guard().is_err() {
            return;
        }
        let result = self.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', ?1)",
            params![now_ms() as i64],
        );
        match result {
            Ok(_) => self.health.recover(),
            Err(err) => self.health.fail(describe(&err)),
        }
    }

    /// Deletes one batch of messages past `--retain` in each room over it.
    fn prune(&mut self) {
        if self.health.guard().is_err() {
            return;
        }
        let mut due = false;
        for row in self.rooms.values_mut() {
            if !row.past(self.retain) {
                continue;
            }
            let cutoff = row.last_id.saturating_sub(self.retain);
            let through = cutoff.min(row.pruned_through + PRUNE_BATCH);
            let result = prune_room(&mut self.conn, row, through);
            match result {
                Ok(_) => row.pruned_through = through,
                // Tried again next time; writes report trouble themselves.
                Err(err) => {
                    warn!("pruning history failed: {}", describe(&err));
                    due = true;
                    break;
                }
            }
            due |= row.past(self.retain);
        }
        self.prune_due.store(due, Ordering::Relaxed);
    }
}

/// Records the room's last id, then deletes its messages up to `through`.
fn prune_room(conn: &mut Connection, row: &RoomRow, through: u64) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute(
        "UPDATE rooms SET last_id = ?1 WHERE id = ?2",
        params![row.last_id as i64, row.key],
    )?;
    tx.execute(
        "DELETE FROM messages WHERE room = ?1 AND id > ?2 AND id <= ?3",
        params![row.key, row.pruned_through as i64, through as i64],
    )?;
    tx.commit()
}

/// A short lowercase description of a SQLite error (`disk I/O error`,
/// `file is not a database`), without SQLite's numbers.
pub(super) fn describe(err: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode::CannotOpen;
    match err {
        rusqlite::Error::SqliteFailure(code, _) if code.code == CannotOpen => {
            HistoryError::CannotOpen.to_string()
        }
        rusqlite::Error::SqliteFailure(_, Some(text)) if !text.is_empty() => text.clone(),
        rusqlite::Error::SqliteFailure(code, None) => code.to_string().to_lowercase(),
        other => other.to_string(),
    }
}

impl History for SqliteHistory {
    fn append(&self, message: NewMessage) -> BoxFuture<'_, Result<Appended, HistoryError>> {
        Box::pin(async move {
            let (done, answer) = oneshot::channel();
            let gone = || HistoryError::Unavailable("the history writer has stopped".into());
            self.jobs
                .send(Job::Append { message, done })
                .await
                .map_err(|_| gone())?;
            answer.await.map_err(|_| gone())?
        })
    }

    fn read(
        &self,
        room: &str,
        since: Since,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, HistoryError>> {
        let reader = self.reader.clone();
        let room = room.to_owned();
        let epoch = self.epoch;
        let health = self.health.clone();
        Box::pin(async move {
            let read = tokio::task::spawn_blocking(move || {
                // A deleted file still reads as it was; a cut-short index
                // would crash the process.
                if let Err(Tampered::CutShort(reason)) = health.guard() {
                    return Err(HistoryError::Unavailable(reason));
                }
                let conn = lock(&reader);
                read_page(&conn, &room, since, limit)
                    .map_err(|err| HistoryError::Unavailable(describe(&err)))
            });
            let messages = match read.await {
                Ok(Ok(messages)) => messages,
                Ok(Err(err)) => return Err(err),
                Err(err) => return Err(HistoryError::Unavailable(err.to_string())),
            };
            Ok(Page {
                epoch,
                messages,
                newest: None,
            })
        })
    }

    fn trouble(&self) -> Option<String> {
        self.health
            .failing
            .load(Ordering::Relaxed)
            .then(|| lock(&self.health.reason).clone())
    }

    fn close(&self) {
        drop(lock(&self.lock).take());
    }
}

/// The stored message `message` is a retry of, if any: the newest in room
/// `key` with its cid, from the same nick (in any case).
fn original_of(
    conn: &Connection,
    key: i64,
    message: &NewMessage,
) -> rusqlite::Result<Option<Stored>> {
    let Some(cid) = &message.cid else {
        return Ok(None);
    };
    conn.prepare_cached(
        "SELECT id, ts, nick, text, cid, origin FROM messages
         WHERE room = ?1 AND cid = ?2 AND nick = ?3 COLLATE NOCASE ORDER BY id DESC LIMIT 1",
    )?
    .query_row(params![key, cid, &*message.from], stored_row)
    .optional()
}

/// A `messages` row as `id, ts, nick, text, cid, origin`.
fn stored_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    let origin: Option<String> = r.get(5)?;
    Ok(Stored {
        id: r.get::<_, i64>(0)? as u64,
        ts: r.get::<_, i64>(1)? as u64,
        from: r.get(2)?,
        text: r.get(3)?,
        cid: r.get(4)?,
        origin: origin.and_then(|o| {
            let (node, seq) = o.split_once(' ')?;
            parse_origin(node, seq)
        }),
    })
}

fn read_page(
    conn: &Connection,
    room: &str,
    since: Since,
    limit: usize,
) -> rusqlite::Result<Vec<Stored>> {
    let Some(key) = conn
        .prepare_cached("SELECT id FROM rooms WHERE name = ?1")?
        .query_row(params![room], |r| r.get::<_, i64>(0))
        .optional()?
    else {
        return Ok(Vec::new());
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let row = stored_row;
    match since {
        Since::Recent => {
            let mut statement = conn.prepare_cached(
                "SELECT id, ts, nick, text, cid, origin FROM messages WHERE room = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let mut messages = statement
                .query_map(params![key, limit], row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            messages.reverse();
            Ok(messages)
        }
        Since::Before(before) => {
            let before = i64::try_from(before).unwrap_or(i64::MAX);
            let mut statement = conn.prepare_cached(
                "SELECT id, ts, nick, text, cid, origin FROM messages WHERE room = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
            )?;
            let mut messages = statement
                .query_map(params![key, before, limit], row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            messages.reverse();
            Ok(messages)
        }
        Since::After(after) => {
            let after = i64::try_from(after).unwrap_or(i64::MAX);
            let mut statement = conn.prepare_cached(
                "SELECT id, ts, nick, text, cid, origin FROM messages WHERE room = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?;
            statement
                .query_map(params![key, after, limit], row)?
                .collect()
        }
    }
}
