//! The HTTP side of a connection: read the request head, decide, answer.
//!
//! wschat answers the WebSocket upgrade itself (rather than letting
//! tokio-websockets do it) so that it can choose the subprotocol and refuse a
//! handshake with a proper HTTP status before any WebSocket traffic.

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::{Mode, SUBPROTOCOL};

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Most headers parsed in one request.
const MAX_HEADERS: usize = 32;
/// RFC 6455 key suffix.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What the server decided about one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Upgrade to WebSocket in this mode; the 101 response is in `response`.
    Upgrade {
        /// Plain or JSON.
        mode: Mode,
        /// The bytes to send back.
        response: Vec<u8>,
    },
    /// Answer with a plain HTTP response and close.
    Respond {
        /// The status code, for the log.
        status: u16,
        /// The bytes to send back.
        response: Vec<u8>,
    },
}

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer closed before sending a whole request head.
    #[error("closed during handshake")]
    Eof,
    /// The request head was over the limit.
    #[error("request head too large")]
    TooLarge,
    /// I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one request head (up to the blank line), bounded by [`MAX_HEAD`].
///
/// A WebSocket client must wait for the server's answer before sending frames
/// (RFC 6455 4.1), so bytes past the head are a protocol violation; the
/// request is then answered with 400.
pub async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> Result<Vec<u8>, HandshakeError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(HandshakeError::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(HandshakeError::TooLarge);
        }
    }
}

/// Writes a response and flushes it.
pub async fn send<S: AsyncWrite + Unpin>(io: &mut S, response: &[u8]) -> std::io::Result<()> {
    io.write_all(response).await?;
    io.flush().await
}

/// A complete HTTP/1.1 response with a text body, closing the connection.
pub fn text_response(status: u16, reason: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn respond(status: u16, reason: &str, body: &str) -> Decision {
    Decision::Respond {
        status,
        response: text_response(status, reason, body),
    }
}

/// Decides what to do with a request head.
pub fn decide(head: &[u8]) -> Decision {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let consumed = match request.parse(head) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return respond(400, "Bad Request", "malformed HTTP request\n"),
    };
    if consumed != head.len() {
        return respond(
            400,
            "Bad Request",
            "data sent before the handshake completed\n",
        );
    }
    if request.method != Some("GET") {
        return respond(405, "Method Not Allowed", "only GET is supported\n");
    }
    let target = request.path.unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let is_upgrade = header("upgrade").is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));

    match path {
        "/healthz" if !is_upgrade => return respond(200, "OK", "ok\n"),
        "/" | "/ws" => {}
        _ => return respond(404, "Not Found", "not found\n"),
    }
    if !is_upgrade {
        return respond(
            426,
            "Upgrade Required",
            "this is a wschat WebSocket endpoint: connect with a WebSocket client\n",
        );
    }
    let connection_upgrade = header("connection").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    if !connection_upgrade || header("sec-websocket-version").map(str::trim) != Some("13") {
        return respond(400, "Bad Request", "not a WebSocket version 13 handshake\n");
    }
    let Some(key) = header("sec-websocket-key").map(str::trim) else {
        return respond(400, "Bad Request", "missing Sec-WebSocket-Key\n");
    };
    let json = header("sec-websocket-protocol")
        .is_some_and(|v| v.split(',').any(|p| p.trim() == SUBPROTOCOL));

    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes());
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if json {
        response.push_str("Sec-WebSocket-Protocol: ");
        response.push_str(SUBPROTOCOL);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    Decision::Upgrade {
        mode: if json { Mode::Json } else { Mode::Plain },
        response: response.into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: &[&str]) -> Vec<u8> {
        let mut text = lines.join("\r\n");
        text.push_str("\r\n\r\n");
        text.into_bytes()
    }

    fn status(decision: &Decision) -> u16 {
        match decision {
            Decision::Upgrade { .. } => 101,
            Decision::Respond { status, .. } => *status,
        }
    }

    const UPGRADE: &[&str] = &[
        "Host: localhost",
        "Upgrade: websocket",
        "Connection: keep-alive, Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];

    #[test]
    fn accepts_rfc_example_key() {
        let mut lines = vec!["GET /ws HTTP/1.1"];
        lines.extend_from_slice(UPGRADE);
        let Decision::Upgrade { mode, response } = decide(&request(&lines)) else {
            panic!("expected an upgrade");
        };
        assert_eq!(mode, Mode::Plain);
        let text = String::from_utf8(response).expect("ascii");
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!text.contains("Sec-WebSocket-Protocol"));
    }

    #[test]
    fn subprotocol_selects_json() {
        let mut lines = vec![
            "GET /?x=1 HTTP/1.1",
            "Sec-WebSocket-Protocol: chat, wschat.v1",
        ];
        lines.extend_from_slice(UPGRADE);
        let Decision::Upgrade { mode, response } = decide(&request(&lines)) else {
            panic!("expected an upgrade");
        };
        assert_eq!(mode, Mode::Json);
        assert!(String::from_utf8_lossy(&response).contains("Sec-WebSocket-Protocol: wschat.v1"));
    }

    #[test]
    fn refuses_what_is_not_an_upgrade() {
        assert_eq!(status(&decide(&request(&["GET / HTTP/1.1"]))), 426);
        assert_eq!(status(&decide(&request(&["GET /healthz HTTP/1.1"]))), 200);
        assert_eq!(status(&decide(&request(&["GET /nope HTTP/1.1"]))), 404);
        assert_eq!(status(&decide(&request(&["POST / HTTP/1.1"]))), 405);
        assert_eq!(status(&decide(b"\x16\x03\x01garbage\r\n\r\n")), 400);
        let mut lines = vec!["GET / HTTP/1.1"];
        lines.extend_from_slice(&UPGRADE[..4]);
        assert_eq!(status(&decide(&request(&lines))), 400);
    }
}
