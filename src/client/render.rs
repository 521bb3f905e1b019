//! How the client says things: timestamps, and failures in a person's words.

use tokio_websockets::CloseCode;

use crate::error::describe_io;

/// `line`, prefixed with `[HH:MM:SS]` when timestamps are on (the event's
/// own time when it has one, else now).
pub(super) fn timestamped(line: &str, ts: Option<u64>, on: bool) -> String {
    if !on {
        return line.to_owned();
    }
    let ts = ts.unwrap_or_else(crate::protocol::now_ms);
    format!("[{}] {line}", clock(ts))
}

/// `HH:MM:SS` (UTC) of a millisecond timestamp.
fn clock(ms: u64) -> String {
    let secs = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

pub(super) fn describe_close(code: CloseCode, reason: &str) -> String {
    let code = u16::from(code);
    if reason.is_empty() {
        format!("server closed the connection ({code})")
    } else {
        format!("server closed the connection ({code} {reason})")
    }
}

/// A short lowercase description of a connection error.
pub(super) fn describe_ws_error(err: &tokio_websockets::Error) -> String {
    use tokio_websockets::Error as E;
    use tokio_websockets::upgrade::Error as U;
    match err {
        E::Io(io) => describe_io(io),
        E::Upgrade(U::DidNotSwitchProtocols(401)) => {
            "the server wants a token (HTTP 401): pass --token".into()
        }
        E::Upgrade(U::DidNotSwitchProtocols(status)) => {
            format!("the server refused the connection (HTTP {status})")
        }
        E::CannotResolveHost => "cannot resolve host".into(),
        E::UnsupportedScheme => "unsupported URL scheme (use ws:// or wss://)".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_formats_utc() {
        assert_eq!(clock(0), "00:00:00");
        assert_eq!(clock(((13 * 3600) + (5 * 60) + 9) * 1000 + 999), "13:05:09");
    }
}
