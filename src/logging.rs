//! The server's logs: `tracing` to stderr through a writer that never
//! blocks and never panics.
//!
//! Lines are handed to a writer thread through a bounded queue. A stderr
//! that is slow, full (a pipe nobody reads) or closed costs log lines, never
//! a stalled connection or a dead server; the lines lost are counted.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Log lines that may wait for stderr before further ones are dropped.
const QUEUED_LINES: usize = 16 * 1024;

/// Counts the lines dropped since [`init`].
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

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
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer)
        .init();
    guard
}

/// Log lines dropped because stderr could not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}
