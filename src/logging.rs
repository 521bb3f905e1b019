//! The server's logs: `tracing` to stderr through a writer that never
//! blocks and never panics.
//!
//! Lines are handed to a writer thread through a bounded queue. A stderr
//! that is slow, full (a pipe nobody reads) or closed costs log lines, never
//! a stalled connection or a dead server; the lines lost are counted.

use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Log lines that may wait for stderr before further ones are dropped.
const QUEUED_LINES: usize = 16 * 1024;

/// Counts the lines dropped since [`init`] because the queue was full.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Counts the lines whose write to stderr failed (closed, or broken).
static FAILED: AtomicU64 = AtomicU64::new(0);

/// Stderr for the writer thread: a line it cannot write is counted and
/// let go (the writer would drop it without a word).
struct CountingStderr;

impl Write for CountingStderr {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        if io::stderr().write_all(line).is_err() {
            FAILED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Sends the process's `tracing` events to stderr: info and up, debug with
/// `verbose`, or what `RUST_LOG` says. Keep the guard until the end of
/// `main`: dropping it writes out what is still queued (for at most a
/// second).
pub fn init(verbose: bool) -> WorkerGuard {
    let default_level = if verbose { "debug" } else { "info" };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("wschat-log")
        .finish(CountingStderr);
    let _ = DROPPED.set(writer.error_counter());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer)
        .init();
    guard
}

/// Log lines not written: dropped because stderr could not keep up, or
/// lost because writing them failed.
pub fn dropped_lines() -> u64 {
    let queue_full = DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64);
    queue_full + FAILED.load(Ordering::Relaxed)
}
