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
    failure(err, false).reason
}

/// Why a connection attempt failed, and whether trying again could help.
#[derive(Debug)]
pub(super) struct Failure {
    /// In a person's words.
    pub reason: String,
    /// Retrying cannot help (refused by the server's policy, a bad
    /// certificate, the wrong scheme): the client says so and exits 2.
    pub permanent: bool,
}

/// Describes a failed connection attempt; `tls` is whether the URL is `wss://`.
pub(super) fn failure(err: &tokio_websockets::Error, tls: bool) -> Failure {
    use tokio_websockets::Error as E;
    use tokio_websockets::upgrade::Error as U;
    let (reason, permanent) = match err {
        E::Io(io) => match tls_error(io) {
            Some(err @ tokio_rustls::rustls::Error::InvalidCertificate(_)) => (
                format!("{err} (for a self-signed server, pass --ca-cert)"),
                true,
            ),
            Some(tokio_rustls::rustls::Error::InvalidMessage(_)) if tls => (
                "the server does not speak TLS here (try ws:// instead of wss://)".into(),
                true,
            ),
            Some(other) => (format!("TLS failed: {other}"), true),
            // A TLS server hangs up on a plain HTTP request.
            None if !tls
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                (
                    format!("{} (if the server uses TLS, try wss://)", describe_io(io)),
                    false,
                )
            }
            None => (describe_io(io), false),
        },
        E::Upgrade(U::DidNotSwitchProtocols(401)) => (
            "the server wants a token (HTTP 401): pass --token".into(),
            true,
        ),
        // Refused by policy or path: asking again gets the same answer.
        E::Upgrade(U::DidNotSwitchProtocols(status)) => (
            format!("the server refused the connection (HTTP {status})"),
            matches!(status, 403 | 404),
        ),
        E::Upgrade(other) if !tls => (
            format!("{other} (if the server uses TLS, try wss://)"),
            true,
        ),
        E::CannotResolveHost => ("cannot resolve host".into(), false),
        E::UnsupportedScheme => ("unsupported URL scheme (use ws:// or wss://)".into(), true),
        other => (other.to_string(), false),
    };
    Failure { reason, permanent }
}

/// The TLS error inside an I/O error, if that is what it is.
fn tls_error(io: &std::io::Error) -> Option<&tokio_rustls::rustls::Error> {
    io.get_ref()?.downcast_ref::<tokio_rustls::rustls::Error>()
}

/// The URL to connect to: `ws://` or `wss://` as given, a bare `host:port`
/// as `ws://host:port`.
///
/// # Errors
/// Any other scheme (`http://`, ...), in words.
pub(super) fn websocket_url(url: &str) -> Result<String, String> {
    match url.split_once("://") {
        Some(("ws" | "wss", _)) => Ok(url.to_owned()),
        Some((scheme, rest)) => {
            let hint = match scheme {
                "http" => format!(": use ws://{rest}"),
                "https" => format!(": use wss://{rest}"),
                _ => String::new(),
            };
            Err(format!(
                "{url} is not a WebSocket URL (ws:// or wss://){hint}"
            ))
        }
        None => Ok(format!("ws://{url}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_websocket_urls() {
        assert_eq!(websocket_url("ws://h:1").as_deref(), Ok("ws://h:1"));
        assert_eq!(websocket_url("wss://h").as_deref(), Ok("wss://h"));
        assert_eq!(
            websocket_url("127.0.0.1:2000").as_deref(),
            Ok("ws://127.0.0.1:2000")
        );
        assert_eq!(
            websocket_url("http://h:1/x"),
            Err("http://h:1/x is not a WebSocket URL (ws:// or wss://): use ws://h:1/x".into())
        );
        assert!(websocket_url("ftp://h").is_err());
    }

    #[test]
    fn clock_formats_utc() {
        assert_eq!(clock(0), "00:00:00");
        assert_eq!(clock(((13 * 3600) + (5 * 60) + 9) * 1000 + 999), "13:05:09");
    }
}
