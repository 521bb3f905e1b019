//! The SQLite history's files as other processes see them: the lock that
//! keeps a second server off a database, and the watch that notices its
//! files deleted, replaced or cut short behind the server's back.
//!
//! Both work on the file's real path, so a second server that reaches the
//! same file through another path or a symlink is kept off too.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::HistoryError;

/// The real path of a database that may not exist yet: its directory's real
/// path and its name (a symlink to it resolved).
pub fn real_path(db: &Path) -> PathBuf {
    if let Ok(path) = std::fs::canonicalize(db) {
        return path;
    }
    match (db.parent(), db.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            std::fs::canonicalize(parent).map_or_else(|_| db.to_owned(), |dir| dir.join(name))
        }
        _ => db.to_owned(),
    }
}

/// `DB` with `suffix` added to its name: `chat.db` and `-wal` give `chat.db-wal`.
fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// An advisory lock on `DB.lock`, beside the database, held for as long as
/// a server uses the database; the file names the holder's pid. Other
/// programs (the `sqlite3` shell, an admin command) are not kept off: only
/// a second server is.
#[derive(Debug)]
pub struct DbLock {
    _file: File,
}

impl DbLock {
    /// Takes the lock of the database at `db` (its real path).
    ///
    /// # Errors
    /// [`HistoryError::InUse`] naming the running server's pid when another
    /// server holds it; an I/O error when the lock file cannot be made.
    pub fn take(db: &Path) -> Result<Self, HistoryError> {
        let path = beside(db, ".lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|_| HistoryError::CannotOpen)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(HistoryError::InUse {
                    pid: text.trim().parse().ok(),
                    lock: path,
                });
            }
            Err(std::fs::TryLockError::Error(err)) => return Err(err.into()),
        }
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())?;
        Ok(Self { _file: file })
    }
}

/// One of the database's files as it was when the watch began.
#[derive(Debug)]
struct Watched {
    path: PathBuf,
    /// Device and inode, once the file has been seen.
    id: Option<(u64, u64)>,
    /// The largest size seen (for the shared-memory index, which SQLite
    /// maps and never shrinks while it is open).
    size: u64,
    /// Whether it may never get smaller.
    grows_only: bool,
    /// The file itself, held open to read its length cheaply (for one that
    /// may never get smaller).
    open: Option<File>,
}

/// What the watch found wrong with a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tampered {
    /// The file is gone, or another file has its name: what is written now
    /// would be lost at the next start.
    Replaced(String),
    /// The shared-memory index was cut short: touching it again would kill
    /// the process (SIGBUS).
    CutShort(String),
}

impl Tampered {
    /// What to log and answer.
    pub fn reason(&self) -> &str {
        match self {
            Tampered::Replaced(reason) | Tampered::CutShort(reason) => reason,
        }
    }
}

/// The database file, its write-ahead log and its shared-memory index,
/// checked before the store uses them.
#[derive(Debug)]
pub struct FileWatch {
    files: Vec<Watched>,
    /// When the files were last looked up by name (see [`FileWatch::check`]).
    looked_up: Option<std::time::Instant>,
}

/// How often the files are looked up by name; in between only the shared-
/// memory index's length is checked, on the file the watch holds open.
const LOOK_UP_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

impl FileWatch {
    /// Starts watching the files of the open database at `db` (its real
    /// path), as they are now.
    pub fn new(db: &Path) -> Self {
        let mut watch = Self {
            files: vec![
                Watched::new(db.to_owned(), false),
                Watched::new(beside(db, "-wal"), false),
                Watched::new(beside(db, "-shm"), true),
            ],
            looked_up: None,
        };
        let _ = watch.check();
        watch
    }

    /// `Ok` while every file is the one the store opened, the index no
    /// shorter than it was.
    ///
    /// # Errors
    /// What is wrong, in words for the log and for `/healthz`.
    ///
    /// The index's length is checked every time (a shorter one would crash
    /// the process at its next use); whether a file was deleted or replaced,
    /// which costs a lookup by name each, at most every [`LOOK_UP_EVERY`].
    pub fn check(&mut self) -> Result<(), Tampered> {
        let now = std::time::Instant::now();
        if self
            .looked_up
            .is_some_and(|at| now.duration_since(at) < LOOK_UP_EVERY)
        {
            return self.files.iter_mut().try_for_each(Watched::check_length);
        }
        self.looked_up = Some(now);
        self.files.iter_mut().try_for_each(Watched::check)
    }
}

impl Watched {
    fn new(path: PathBuf, grows_only: bool) -> Self {
        Self {
            path,
            id: None,
            size: 0,
            grows_only,
            open: None,
        }
    }

    /// The length check alone, on the file held open.
    fn check_length(&mut self) -> Result<(), Tampered> {
        let Some(length) = self
            .open
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len())
        else {
            return Ok(());
        };
        self.check_grows(length)
    }

    /// `Err` when a file that may only grow got shorter (its length is then
    /// given back, so a thread already on its way into it does not fault;
    /// its content is not trusted again).
    fn check_grows(&mut self, length: u64) -> Result<(), Tampered> {
        if self.grows_only && length < self.size {
            let was = self.size;
            if let Ok(file) = OpenOptions::new().write(true).open(&self.path) {
                let _ = file.set_len(was);
            }
            return Err(Tampered::CutShort(format!(
                "{} was cut short by another process ({was} to {length} bytes): the store is \
                 not touched again, as that would crash the server; restart the server",
                self.path.display()
            )));
        }
        self.size = self.size.max(length);
        Ok(())
    }

    fn check(&mut self) -> Result<(), Tampered> {
        let path = self.path.display();
        let found = match std::fs::metadata(&self.path) {
            Ok(meta) => meta,
            // Not there yet (a log SQLite has not made): nothing to lose.
            Err(_) if self.id.is_none() => return Ok(()),
            Err(_) => {
                return Err(Tampered::Replaced(format!(
                    "{path} was deleted while the server runs: writes are refused, \
                     as they would be lost; restart the server"
                )));
            }
        };
        let id = (found.dev(), found.ino());
        match self.id {
            None => {
                self.id = Some(id);
                if self.grows_only {
                    self.open = File::open(&self.path).ok();
                }
            }
            Some(known) if known != id => {
                return Err(Tampered::Replaced(format!(
                    "{path} was replaced while the server runs: writes are refused, \
                     as they would be lost; restart the server"
                )));
            }
            Some(_) => {}
        }
        self.check_grows(found.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_first_holder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("chat.db");
        let held = DbLock::take(&db).expect("first");
        match DbLock::take(&db) {
            Err(HistoryError::InUse { pid, lock }) => {
                assert_eq!(pid, Some(std::process::id()));
                assert_eq!(lock, dir.path().join("chat.db.lock"));
            }
            other => panic!("expected in use, got {other:?}"),
        }
        drop(held);
        DbLock::take(&db).expect("free again");
    }

    /// A check that looks every file up by name, however recent the last.
    fn check_all(watch: &mut FileWatch) -> Result<(), Tampered> {
        watch.looked_up = None;
        watch.check()
    }

    #[test]
    fn the_watch_notices_deletion_replacement_and_a_shorter_index() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("chat.db");
        std::fs::write(&db, b"db").expect("db");
        std::fs::write(beside(&db, "-shm"), vec![0; 64]).expect("shm");
        let mut watch = FileWatch::new(&db);
        assert_eq!(check_all(&mut watch), Ok(()));
        // The log appears later, and is then watched too.
        std::fs::write(beside(&db, "-wal"), b"log").expect("wal");
        assert_eq!(check_all(&mut watch), Ok(()));
        std::fs::write(beside(&db, "-shm"), vec![0; 128]).expect("shm grows");
        assert_eq!(check_all(&mut watch), Ok(()));
        let shm = OpenOptions::new()
            .write(true)
            .open(beside(&db, "-shm"))
            .expect("shm");
        shm.set_len(0).expect("truncate");
        // Seen at once, without looking the files up by name.
        assert!(matches!(watch.check(), Err(Tampered::CutShort(_))));
        // Its length is given back.
        assert_eq!(shm.metadata().expect("meta").len(), 128);

        let mut watch = FileWatch::new(&db);
        std::fs::remove_file(beside(&db, "-wal")).expect("rm wal");
        assert!(matches!(check_all(&mut watch), Err(Tampered::Replaced(_))));

        // The store holds the file open, so its inode is not reused.
        let _open = File::open(&db).expect("open");
        let mut watch = FileWatch::new(&db);
        std::fs::remove_file(&db).expect("rm");
        std::fs::write(&db, b"another").expect("replace");
        assert!(matches!(check_all(&mut watch), Err(Tampered::Replaced(_))));
    }
}
