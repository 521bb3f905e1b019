//! The terminal client: connect, reconnect with backoff, resume without loss.
//!
//! `session` holds the client's state across connections and runs each one
//! (connect, resume, send, receive); `render` turns events and failures into
//! the lines a person reads; `terminal` is the line editor and plain stdio.
//!
//! The client speaks JSON mode and renders every event in the plain-mode line
//! format. It never prints; lines go to an [`Output`] and typed lines arrive on
//! a channel, so the binary decides about terminals and tests can drive it.
//!
//! Resume works with a barrier: after (re)connecting the client claims its
//! nick, joins its room with `after` = the last id it saw there, then sends a
//! WebSocket ping. The server answers frames in order, so when the pong comes
//! back the history replay is complete: the client then knows which of its
//! unacknowledged messages were stored (their `cid` came back) and sends only
//! the others, followed by the lines typed while it was away.

pub mod terminal;

mod render;
mod session;

use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::ClientConfig;

/// Most frames queued to send; input is not read while this many wait.
pub const OUTBOX_LIMIT: usize = 1000;
/// How long the client waits at end of input for the server to take everything.
pub const EOF_GRACE: Duration = Duration::from_secs(5);
/// How long one connection attempt may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Ping payloads that mark the end of a resume and the end of input.
pub(super) const SYNC: &[u8] = b"wschat-sync";
pub(super) const EOF: &[u8] = b"wschat-eof";

/// Where the client's lines go.
pub trait Output: Send {
    /// A transcript line (the chat itself; stdout in the binary).
    fn line(&mut self, line: &str);
    /// A status line (connecting, reconnecting, errors; stderr in the binary).
    fn status(&mut self, line: &str);
}

/// Runs the client until the user quits; returns the process exit code.
pub async fn run(config: ClientConfig, input: mpsc::Receiver<String>, out: &mut dyn Output) -> i32 {
    session::Client::new(config, input, out).run().await
}

/// The wait before reconnection attempt `attempt` (0-based): 1 s doubling to
/// 30 s, each scaled by a random factor in 0.8..1.2 so clients spread out.
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_secs(1u64 << attempt.min(5)).min(MAX_BACKOFF);
    base.mul_f64(0.8 + fastrand::f64() * 0.4).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_thirty_seconds_with_jitter() {
        for (attempt, base) in [(0, 1.0), (1, 2.0), (2, 4.0), (4, 16.0)] {
            let d = backoff(attempt).as_secs_f64();
            assert!(d >= base * 0.8 && d <= base * 1.2, "attempt {attempt}: {d}");
        }
        assert!(backoff(5) <= MAX_BACKOFF);
        assert!(backoff(50) <= MAX_BACKOFF);
        assert!(backoff(50) >= Duration::from_secs(24));
    }
}
