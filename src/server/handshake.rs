//! The HTTP side of a connection: read the request head, decide, answer.
//!
//! wschat answers the WebSocket upgrade itself (rather than letting
//! tokio-websockets do it) so that it can choose the subprotocol and refuse a
//! handshake with a proper HTTP status before any WebSocket traffic.
//! [`decide`] is the pure part (the router); [`accept`] runs the whole phase
//! on a connection, up to the point where it is a WebSocket or answered.

use std::net::SocketAddr;

use base64::Engine;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Shared;
use crate::config::ServerConfig;
use crate::protocol::{Mode, SUBPROTOCOL};

/// Runs the handshake phase: reads the request head (bounded in time),
/// answers it, and returns the WebSocket's mode when the connection was
/// upgraded. `slot` is the connection's share of `--max-connections`;
/// without one an upgrade is answered with 503.
pub(super) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    slot: Option<OwnedSemaphorePermit>,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<(Mode, OwnedSemaphorePermit)> {
    let within = shared.config.handshake_within();
    let head = tokio::select! {
        () = shutdown.cancelled() => return None,
        head = timeout(within, read_head(stream)) => head,
    };
    let head = match head {
        Ok(Ok(head)) => head,
        Ok(Err(err)) => {
            debug!("{peer}: handshake failed: {err}");
            return None;
        }
        Err(_) => {
            debug!("{peer}: handshake timed out");
            return None;
        }
    };
    let decision = decide(&head, &shared.policy);
    // The request head is not needed past here; the session outlives it.
    drop(head);
    let (mode, response, slot) = match (decision, slot) {
        (Decision::Health, _) => {
            let response = match shared.trouble() {
                None => text_response(200, "OK", "", "ok\n"),
                Some(reason) => {
                    text_response(503, "Service Unavailable", "", &format!("{reason}\n"))
                }
            };
            let _ = timeout(within, send(stream, &response)).await;
            return None;
        }
        (Decision::Respond { status, response }, _) => {
            debug!("{peer}: answered HTTP {status}");
            let _ = timeout(within, send(stream, &response)).await;
            return None;
        }
        (Decision::Upgrade { .. }, None) => {
            info!("Refused {peer}: connection limit reached (HTTP 503)");
            let response = text_response(503, "Service Unavailable", "", "server is full\n");
            let _ = timeout(within, send(stream, &response)).await;
            return None;
        }
        (Decision::Upgrade { mode, response }, Some(slot)) => (mode, response, slot),
    };
    match timeout(within, send(stream, &response)).await {
        Ok(Ok(())) => Some((mode, slot)),
        _ => None,
    }
}

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Most headers parsed in one request.
const MAX_HEADERS: usize = 32;
/// RFC 6455 key suffix.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Who may open a WebSocket: the token and the browser origins.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The secret a handshake must carry, if any.
    pub token: Option<String>,
    /// Browser origins allowed besides the server's own.
    pub allowed_origins: Vec<String>,
}

impl Policy {
    /// The policy the server's flags ask for.
    pub fn from_config(config: &ServerConfig) -> Self {
        Self {
            token: config.token.clone().filter(|t| !t.is_empty()),
            allowed_origins: config
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether a browser's `Origin` may connect: the server's own origin (the
    /// request's Host over http or https) or one listed. `null` never may.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if origin == "null" {
            return false;
        }
        if let Some(host) = host.map(|h| h.trim().to_ascii_lowercase()) {
            if origin == format!("http://{host}") || origin == format!("https://{host}") {
                return true;
            }
        }
        self.allowed_origins.contains(&origin)
    }

    /// Whether the request carries the token, as a bearer header or `?token=`.
    fn authorized(&self, authorization: Option<&str>, target: &str) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let bearer = authorization
            .and_then(|v| v.trim().strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned());
        let query = query_param(target, "token");
        [bearer, query]
            .into_iter()
            .flatten()
            .any(|given| bool::from(given.as_bytes().ct_eq(expected.as_bytes())))
    }
}

/// The percent-decoded value of `name` in the request target's query string.
fn query_param(target: &str, name: &str) -> Option<String> {
    let query = target.split_once('?')?.1.split('#').next()?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))?
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

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
    /// Answer `/healthz` with the server's health.
    Health,
    /// Answer with a plain HTTP response and close.
    Respond {
        /// The status code, for the log.
        status: u16,
        /// The bytes to send back.
        response: Vec<u8>,
    },
}

impl Decision {
    /// The status line's code: 101 for an upgrade, 200 for `/healthz` (its
    /// answer is 503 instead while a backend fails).
    pub fn status(&self) -> u16 {
        match self {
            Decision::Upgrade { .. } => 101,
            Decision::Health => 200,
            Decision::Respond { status, .. } => *status,
        }
    }
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
    // Read straight into the heap buffer: a buffer on the stack here would
    // live in every connection's task for as long as the connection does.
    let mut buf = Vec::with_capacity(1024);
    loop {
        let n = io.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(HandshakeError::Eof);
        }
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
/// `headers` are extra header lines, each ending in `\r\n`.
pub fn text_response(status: u16, reason: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\n{headers}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn respond(status: u16, reason: &str, body: &str) -> Decision {
    Decision::Respond {
        status,
        response: text_response(status, reason, "", body),
    }
}

/// Decides what to do with a request head.
pub fn decide(head: &[u8], policy: &Policy) -> Decision {
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
        "/healthz" if !is_upgrade => return Decision::Health,
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
    if let Some(origin) = header("origin") {
        if !policy.origin_allowed(origin, header("host")) {
            return respond(
                403,
                "Forbidden",
                "cross-site WebSocket refused: this origin is not allowed\n",
            );
        }
    }
    if !policy.authorized(header("authorization"), target) {
        return Decision::Respond {
            status: 401,
            response: text_response(
                401,
                "Unauthorized",
                "WWW-Authenticate: Bearer realm=\"wschat\"\r\n",
                "a token is required: send Authorization: Bearer TOKEN or ?token=TOKEN\n",
            ),
        };
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

    fn open() -> Policy {
        Policy::default()
    }

    fn upgrade_with(target: &str, extra: &[&str], policy: &Policy) -> u16 {
        let first = format!("GET {target} HTTP/1.1");
        let mut lines = vec![first.as_str()];
        lines.extend_from_slice(UPGRADE);
        lines.extend_from_slice(extra);
        status(&decide(&request(&lines), policy))
    }

    #[test]
    fn origin_policy() {
        let policy = Policy {
            token: None,
            allowed_origins: vec!["https://chat.example.org".into()],
        };
        assert_eq!(upgrade_with("/", &[], &policy), 101);
        assert_eq!(
            upgrade_with("/", &["Origin: http://localhost"], &policy),
            101
        );
        assert_eq!(
            upgrade_with("/", &["Origin: https://LOCALHOST/"], &policy),
            101
        );
        assert_eq!(
            upgrade_with("/", &["Origin: https://chat.example.org"], &policy),
            101
        );
        assert_eq!(
            upgrade_with("/", &["Origin: https://evil.example"], &policy),
            403
        );
        assert_eq!(upgrade_with("/", &["Origin: null"], &policy), 403);
        assert_eq!(
            upgrade_with("/", &["Origin: http://localhost:8080"], &policy),
            403
        );
    }

    #[test]
    fn token_policy() {
        let policy = Policy {
            token: Some("s3cret/+".into()),
            allowed_origins: Vec::new(),
        };
        assert_eq!(upgrade_with("/", &[], &policy), 401);
        assert_eq!(
            upgrade_with("/", &["Authorization: Bearer s3cret/+"], &policy),
            101
        );
        assert_eq!(
            upgrade_with("/", &["Authorization: Bearer wrong"], &policy),
            401
        );
        assert_eq!(upgrade_with("/?token=s3cret%2F%2B", &[], &policy), 101);
        assert_eq!(upgrade_with("/ws?x=1&token=s3cret/+", &[], &policy), 101);
        assert_eq!(upgrade_with("/?token=s3cret", &[], &policy), 401);
        assert_eq!(upgrade_with("/?token=%zz", &[], &policy), 401);
        let mut lines = vec!["GET /healthz HTTP/1.1"];
        lines.push("Host: x");
        assert_eq!(status(&decide(&request(&lines), &policy)), 200);
    }

    fn status(decision: &Decision) -> u16 {
        decision.status()
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
        let Decision::Upgrade { mode, response } = decide(&request(&lines), &Policy::default())
        else {
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
        let Decision::Upgrade { mode, response } = decide(&request(&lines), &Policy::default())
        else {
            panic!("expected an upgrade");
        };
        assert_eq!(mode, Mode::Json);
        assert!(String::from_utf8_lossy(&response).contains("Sec-WebSocket-Protocol: wschat.v1"));
    }

    #[test]
    fn refuses_what_is_not_an_upgrade() {
        assert_eq!(status(&decide(&request(&["GET / HTTP/1.1"]), &open())), 426);
        assert_eq!(
            status(&decide(&request(&["GET /healthz HTTP/1.1"]), &open())),
            200
        );
        assert_eq!(
            status(&decide(&request(&["GET /nope HTTP/1.1"]), &open())),
            404
        );
        assert_eq!(
            status(&decide(&request(&["POST / HTTP/1.1"]), &open())),
            405
        );
        assert_eq!(
            status(&decide(b"\x16\x03\x01garbage\r\n\r\n", &open())),
            400
        );
        let mut lines = vec!["GET / HTTP/1.1"];
        lines.extend_from_slice(&UPGRADE[..4]);
        assert_eq!(status(&decide(&request(&lines), &Policy::default())), 400);
    }
}
