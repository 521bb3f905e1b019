//! The HTTP side of a connection: read the request head, decide, answer.
//!
//! wschat answers the WebSocket upgrade itself (rather than letting
//! tokio-websockets do it) so that it can choose the subprotocol and refuse a
//! handshake with a proper HTTP status before any WebSocket traffic.
//! [`decide`] is the pure part (the router); [`accept`] runs the whole phase
//! on a connection, up to the point where it is a WebSocket or answered.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use base64::Engine;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::admission::{Admitted, Arriving, Full};
use super::{Shared, lock, metrics, web};
use crate::config::ServerConfig;
use crate::protocol::{Mode, SUBPROTOCOL};

/// Runs the handshake phase: reads the request head (bounded in time),
/// answers it, and returns the WebSocket's mode, what the request asked
/// for, and the connection's slot when the connection was upgraded.
pub(super) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    local: Option<IpAddr>,
    arriving: Arriving,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<(Mode, Hello, Admitted)> {
    // Under pressure (most places taken) a handshake gets less time.
    let mut within = shared.config.handshake_within();
    if shared.admission.pressed() {
        within = within.min(PRESSED_HANDSHAKE_TIMEOUT);
    }
    let head = tokio::select! {
        () = shutdown.cancelled() => return None,
        () = arriving.evicted() => {
            shared.metrics.evictions_total.inc();
            debug!("{peer}: closed: its handshake gave its place to a newcomer");
            return None;
        }
        head = timeout(within, read_head_then(stream, || arriving.heard())) => head,
    };
    let mut head_only = false;
    let decision = match head {
        Ok(Ok(head)) => {
            // HEAD gets what GET would, without the body (uptime checkers).
            head_only = head.starts_with(b"HEAD ");
            decide_at(&head, &shared.policy, local)
        }
        Ok(Err(HandshakeError::TooLarge)) => respond(
            431,
            "Request Header Fields Too Large",
            "request head too large",
        ),
        Ok(Err(HandshakeError::Malformed)) => respond(400, "Bad Request", "malformed HTTP request"),
        // Answered in plain HTTP: a TLS client then fails at once, and can
        // tell that this port does not speak TLS.
        Ok(Err(HandshakeError::Tls)) => respond(
            400,
            "Bad Request",
            "this is a plain ws:// port: TLS is not spoken here",
        ),
        Ok(Err(err)) => {
            debug!("{peer}: handshake failed: {err}");
            return None;
        }
        Err(_) => {
            debug!("{peer}: handshake timed out");
            return None;
        }
    };
    let (mode, hello, response, admitted) = match decision {
        Decision::Health => {
            let response = match shared.trouble() {
                None => text_response(200, "OK", "", "ok\n"),
                Some(reason) => {
                    text_response(503, "Service Unavailable", "", &format!("{reason}\n"))
                }
            };
            let (head, body) = split_response(&response);
            let _ = timeout(within, answer(stream, head, body, head_only)).await;
            return None;
        }
        Decision::Metrics => {
            let body = shared.metrics.render(shared.snapshot());
            let head = response_head(
                200,
                "OK",
                "Cache-Control: no-store\r\n",
                metrics::CONTENT_TYPE,
                body.len(),
            );
            let answering = answer(stream, head.as_bytes(), body.as_bytes(), head_only);
            let _ = timeout(within, answering).await;
            return None;
        }
        Decision::Asset { head, body, .. } => {
            let body = body.unwrap_or_default();
            let _ = timeout(within, answer(stream, &head, body, head_only)).await;
            return None;
        }
        Decision::Respond(refusal) => {
            turn_away(stream, peer, &refusal, shared, head_only).await;
            return None;
        }
        Decision::Upgrade {
            mode,
            hello,
            response,
            origin,
        } => match arriving.admit() {
            Ok(admitted) => (mode, hello, response, admitted),
            Err(full) => {
                let why = match full {
                    Full::Server => "server is full",
                    Full::Address => "too many connections from your address",
                };
                let mut refusal = refusal(503, "Service Unavailable", "", why);
                refusal.origin = origin;
                turn_away(stream, peer, &refusal, shared, false).await;
                return None;
            }
        },
    };
    match timeout(within, send(stream, &response)).await {
        Ok(Ok(())) => Some((mode, hello, admitted)),
        _ => None,
    }
}

/// Answers a request with its refusal (counted for `/metrics`, logged at a
/// bounded rate).
async fn turn_away<S: AsyncWrite + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    refusal: &Refusal,
    shared: &Shared,
    head_only: bool,
) {
    shared.metrics.rejected(refusal.status);
    shared.refusals.log(peer, refusal);
    let (head, body) = split_response(&refusal.response);
    let within = shared.config.handshake_within();
    let _ = timeout(within, answer(stream, head, body, head_only)).await;
}

/// Refused handshakes logged per second at most; the rest are counted and
/// reported with the next line that gets through.
const REFUSALS_LOGGED_PER_SECOND: u32 = 10;

/// The log of refused handshakes, rate-limited so that a flood of bad
/// requests cannot fill the disk.
#[derive(Debug)]
pub struct RefusalLog {
    budget: Mutex<LogBudget>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self {
            budget: Mutex::new(LogBudget::new(REFUSALS_LOGGED_PER_SECOND, Instant::now())),
        }
    }
}

impl RefusalLog {
    /// Logs one refusal at info, unless too many were logged this second.
    pub fn log(&self, peer: SocketAddr, refusal: &Refusal) {
        let Some(skipped) = lock(&self.budget).take(Instant::now()) else {
            return;
        };
        if skipped > 0 {
            info!("{skipped} more refused handshake(s) were not logged");
        }
        let status = refusal.status;
        let reason = refusal.reason;
        match &refusal.origin {
            Some(origin) => {
                info!("Refused {peer} (HTTP {status}): {reason}; Origin: {origin:?}");
            }
            None => info!("Refused {peer} (HTTP {status}): {reason}"),
        }
    }
}

/// A number of log lines per one-second window.
#[derive(Debug)]
struct LogBudget {
    per_second: u32,
    window: Instant,
    used: u32,
    skipped: u64,
}

impl LogBudget {
    fn new(per_second: u32, now: Instant) -> Self {
        Self {
            per_second,
            window: now,
            used: 0,
            skipped: 0,
        }
    }

    /// `Some(lines left out since the last one)` when a line may be logged
    /// at `now`; `None` when this second's lines are spent.
    fn take(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.used = 0;
        }
        if self.used >= self.per_second {
            self.skipped += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.skipped))
    }
}

/// The time a handshake gets while most handshake places are taken.
const PRESSED_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Most headers parsed in one request.
const MAX_HEADERS: usize = 32;
/// RFC 6455 key suffix.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Who may open a WebSocket: the token, the browser origins and, without a
/// token, the names the server may be reached by.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The secret a handshake must carry, if any.
    pub token: Option<String>,
    /// Browser origins allowed besides the server's own (lower case, no
    /// trailing slash).
    pub allowed_origins: Vec<String>,
    /// When set (the server has no token), a request's `Host` must be a
    /// loopback name, an address of the server's, or one of
    /// `allowed_hosts`: a web page whose name was made to resolve to the
    /// server's address (DNS rebinding) sends its own name, and is refused.
    pub check_host: bool,
    /// Host names (lower case, with or without a port) allowed besides the
    /// loopback ones and the server's own addresses.
    pub allowed_hosts: Vec<String>,
}

impl Policy {
    /// The policy the server's flags ask for, on a listener bound to
    /// `local` under the name `listen_host` (its `--host`).
    pub fn from_config(config: &ServerConfig, local: SocketAddr) -> Self {
        let token = config.token.clone().filter(|t| !t.is_empty());
        let mut allowed_hosts: Vec<String> = config
            .allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        // The address it listens on, and the name it was started with.
        if !local.ip().is_unspecified() {
            allowed_hosts.push(bracketed(local.ip()));
        }
        if let Some(name) = &config.listen_host {
            let name = name.trim().to_ascii_lowercase();
            if !name.is_empty() && name.parse::<IpAddr>().is_err() {
                allowed_hosts.push(name);
            }
        }
        Self {
            check_host: token.is_none(),
            token,
            allowed_origins: config
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            allowed_hosts,
        }
    }

    /// Whether a request naming `host` may be served on a connection that
    /// reached the server at `local`. A `Host` that does not parse is never
    /// served.
    fn host_allowed(&self, host: &str, local: Option<IpAddr>) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let Some(name) = host_name(&host) else {
            return false;
        };
        if !self.check_host {
            return true;
        }
        // An address literal cannot be rebound: the one this connection
        // reached the server at is the server's own.
        let own_address = local.is_some_and(|ip| bracketed(ip) == name);
        is_loopback_name(name)
            || own_address
            || self
                .allowed_hosts
                .iter()
                .any(|allowed| *allowed == host || allowed == name)
    }

    /// Whether a browser's `Origin` may connect: the server's own origin (the
    /// request's Host over http or https) or one listed. `null` never may.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if origin == "null" {
            return false;
        }
        if let Some(host) = host.map(|h| h.trim().to_ascii_lowercase())
            && (origin == format!("http://{host}") || origin == format!("https://{host}"))
        {
            return true;
        }
        self.allowed_origins.contains(&origin)
    }

    /// Whether the request carries the token, as a bearer header or `?token=`.
    fn authorized(&self, authorization: Option<&str>, target: &str) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let bearer = authorization
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().to_owned());
        let query = query_param(target, "token");
        [bearer, query]
            .into_iter()
            .flatten()
            .any(|given| bool::from(given.as_bytes().ct_eq(expected.as_bytes())))
    }
}

/// The name in a `Host` value (lower case), without its port: `[::1]:80`
/// gives `[::1]`. `None` unless the whole value is a name or an address
/// literal with at most a numeric port, so `[::1]evil` and
/// `127.0.0.1:80@evil` are no loopback names but no names at all.
fn host_name(host: &str) -> Option<&str> {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            inside.parse::<Ipv6Addr>().ok()?;
            let port = match after {
                "" => None,
                after => Some(after.strip_prefix(':')?),
            };
            (&host[..inside.len() + 2], port)
        }
        None => match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok());
    let name_ok = name.starts_with('[')
        || (!name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    (port_ok && name_ok).then_some(name)
}

/// An address as it is written in a `Host`: IPv6 in brackets.
fn bracketed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("[{v6}]"),
        },
    }
}

/// `localhost`, an address in 127.0.0.0/8, or `[::1]`.
fn is_loopback_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name == "localhost"
        || name.ends_with(".localhost")
        || name == "[::1]"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The percent-decoded value of `name` in the request target's query string.
fn query_param(target: &str, name: &str) -> Option<String> {
    query_value(target, name).and_then(percent_decode)
}

/// The raw value of `name` in the request target's query string.
fn query_value<'t>(target: &'t str, name: &str) -> Option<&'t str> {
    let query = target.split_once('?')?.1.split('#').next()?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// The value of `name` decoded, or as it came when it does not decode (a
/// bad escape such as `%zz`): a nick or room that then fails its check is
/// refused with the reason, not ignored.
fn query_text(target: &str, name: &str) -> Option<String> {
    let raw = query_value(target, name)?;
    Some(percent_decode(raw).unwrap_or_else(|| raw.to_owned()))
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
        /// What the request asked for in its query string.
        hello: Hello,
        /// The bytes to send back.
        response: Vec<u8>,
        /// The request's `Origin`, for the log should the upgrade be refused.
        origin: Option<String>,
    },
    /// Answer `/healthz` with the server's health.
    Health,
    /// Answer `/metrics` (the token, if any, was checked).
    Metrics,
    /// Serve a file of the web client.
    Asset {
        /// 200, or 304 when the client has it already.
        status: u16,
        /// The response head.
        head: Vec<u8>,
        /// The body to send after it, if any.
        body: Option<&'static [u8]>,
    },
    /// Answer with a plain HTTP response and close.
    Respond(Refusal),
}

/// What a handshake may ask for before the welcome, in its query string:
/// `?nick=NAME&room=ROOM&resume=SECRET`. Checked when applied, like the
/// commands they stand for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hello {
    /// The nick to take.
    pub nick: Option<String>,
    /// The room to start in.
    pub room: Option<String>,
    /// A previous connection's secret: its nick is handed over.
    pub resume: Option<String>,
}

impl Hello {
    /// The hello in a request target's query string.
    pub fn from_target(target: &str) -> Self {
        Self {
            nick: query_text(target, "nick"),
            room: query_text(target, "room"),
            resume: query_param(target, "resume"),
        }
    }
}

/// A request answered with an HTTP error instead of an upgrade.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The status code.
    pub status: u16,
    /// Why, in words (also the response's body).
    pub reason: &'static str,
    /// The request's `Origin`, for the log.
    pub origin: Option<String>,
    /// The bytes to send back.
    pub response: Vec<u8>,
}

impl Decision {
    /// The status line's code: 101 for an upgrade, 200 for `/healthz` (its
    /// answer is 503 instead while a backend fails) and `/metrics`, 200 or
    /// 304 for the web client's files.
    pub fn status(&self) -> u16 {
        match self {
            Decision::Upgrade { .. } => 101,
            Decision::Health | Decision::Metrics => 200,
            Decision::Asset { status, .. } => *status,
            Decision::Respond(refusal) => refusal.status,
        }
    }
}

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer closed before sending a whole request head.
    #[error("closed during handshake")]
    Eof,
    /// The request head was over the limit (answered 431).
    #[error("request head too large")]
    TooLarge,
    /// What arrived is not an HTTP request (answered 400).
    #[error("malformed HTTP request")]
    Malformed,
    /// A TLS ClientHello arrived on a plain port (answered 400 at once).
    #[error("TLS handshake on a plain ws:// port")]
    Tls,
    /// I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one request head (up to the blank line), bounded by [`MAX_HEAD`].
/// What cannot become a request head (a TLS ClientHello, bytes HTTP does
/// not allow) is an error as soon as it arrives, not after the timeout.
///
/// A WebSocket client must wait for the server's answer before sending frames
/// (RFC 6455 4.1), so bytes past the head are a protocol violation; the
/// request is then answered with 400.
pub async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> Result<Vec<u8>, HandshakeError> {
    read_head_then(io, || {}).await
}

/// [`read_head`], calling `heard` once the first bytes have arrived.
///
/// # Errors
/// As [`read_head`].
pub async fn read_head_then<S: AsyncRead + Unpin>(
    io: &mut S,
    heard: impl FnOnce(),
) -> Result<Vec<u8>, HandshakeError> {
    // Read straight into the heap buffer: a buffer on the stack here would
    // live in every connection's task for as long as the connection does.
    let mut buf = Vec::with_capacity(1024);
    let mut heard = Some(heard);
    loop {
        let n = io.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(HandshakeError::Eof);
        }
        if let Some(heard) = heard.take() {
            heard();
        }
        if buf.first() == Some(&TLS_HANDSHAKE_RECORD) {
            return Err(HandshakeError::Tls);
        }
        if has_bare_lf(&buf) {
            return Err(HandshakeError::Malformed);
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            // However fast it came, a head over the limit is refused.
            if end + 4 > MAX_HEAD {
                return Err(HandshakeError::TooLarge);
            }
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(HandshakeError::TooLarge);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::Request::new(&mut headers).parse(&buf) {
            Ok(_) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooLarge),
            Err(_) => return Err(HandshakeError::Malformed),
        }
    }
}

/// Whether a line of `head` ends in LF alone. HTTP ends lines in CRLF; a
/// head whose lines end in bare LF would never reach its blank line, so it
/// is refused at once instead of after the handshake timeout.
fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(at, &b)| b == b'\n' && (at == 0 || head[at - 1] != b'\r'))
}

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Writes an HTTP answer, without its body when the request was `HEAD`,
/// and flushes it.
async fn answer<S: AsyncWrite + Unpin>(
    io: &mut S,
    head: &[u8],
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    io.write_all(head).await?;
    if !head_only {
        io.write_all(body).await?;
    }
    io.flush().await
}

/// A whole response split into its head (through the blank line) and body.
fn split_response(response: &[u8]) -> (&[u8], &[u8]) {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |at| at + 4);
    response.split_at(end)
}

/// Writes a response and flushes it.
pub async fn send<S: AsyncWrite + Unpin>(io: &mut S, response: &[u8]) -> std::io::Result<()> {
    io.write_all(response).await?;
    io.flush().await
}

/// The head of an HTTP/1.1 response that closes the connection: the
/// status line, `headers` (extra lines, each ending in `\r\n`), the body's
/// type and length, and the blank line.
pub fn response_head(
    status: u16,
    phrase: &str,
    headers: &str,
    content_type: &str,
    length: usize,
) -> String {
    format!(
        "HTTP/1.1 {status} {phrase}\r\n{headers}Content-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
}

/// A complete HTTP/1.1 response with a text body, closing the connection.
/// `headers` are extra header lines, each ending in `\r\n`.
pub fn text_response(status: u16, reason: &str, headers: &str, body: &str) -> Vec<u8> {
    let head = response_head(
        status,
        reason,
        headers,
        "text/plain; charset=utf-8",
        body.len(),
    );
    [head.as_bytes(), body.as_bytes()].concat()
}

/// A refusal with `status` and `phrase` whose body is `reason`.
fn respond(status: u16, phrase: &str, reason: &'static str) -> Decision {
    refuse(status, phrase, "", reason)
}

/// [`respond`] with extra header lines.
fn refuse(status: u16, phrase: &str, headers: &str, reason: &'static str) -> Decision {
    Decision::Respond(refusal(status, phrase, headers, reason))
}

/// The refusal [`refuse`] answers with.
fn refusal(status: u16, phrase: &str, headers: &str, reason: &'static str) -> Refusal {
    Refusal {
        status,
        reason,
        origin: None,
        response: text_response(status, phrase, headers, &format!("{reason}\n")),
    }
}

/// Whether `key` is what RFC 6455 4.1 asks for: 16 bytes, base64-encoded.
fn valid_key(key: &str) -> bool {
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|bytes| bytes.len() == 16)
}

/// Headers a request may carry only once: two `Host`s or `Origin`s could
/// be read differently by a proxy in front and by the server.
const SINGLE_HEADERS: [&str; 3] = ["host", "origin", "sec-websocket-key"];

/// Decides what to do with a request head, as for a connection whose
/// local address is not known.
pub fn decide(head: &[u8], policy: &Policy) -> Decision {
    decide_at(head, policy, None)
}

/// Decides what to do with a request head that reached the server at
/// `local`, an address a `Host` may name.
pub fn decide_at(head: &[u8], policy: &Policy, local: Option<IpAddr>) -> Decision {
    if has_bare_lf(head) {
        return respond(
            400,
            "Bad Request",
            "malformed HTTP request: lines end in CRLF",
        );
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let consumed = match request.parse(head) {
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => {
            return respond(
                431,
                "Request Header Fields Too Large",
                "too many header fields",
            );
        }
        _ => return respond(400, "Bad Request", "malformed HTTP request"),
    };
    if consumed != head.len() {
        return respond(
            400,
            "Bad Request",
            "data sent before the handshake completed",
        );
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let origin = header("origin").map(str::to_owned);
    let mut decision = route(&request, &header, policy, local);
    match &mut decision {
        Decision::Respond(refusal) => refusal.origin = origin,
        Decision::Upgrade { origin: slot, .. } => *slot = origin,
        Decision::Health | Decision::Metrics | Decision::Asset { .. } => {}
    }
    decision
}

/// The answer to a request without the server's token.
fn unauthorized() -> Decision {
    refuse(
        401,
        "Unauthorized",
        "WWW-Authenticate: Bearer realm=\"wschat\"\r\n",
        "a token is required: send Authorization: Bearer TOKEN or ?token=TOKEN",
    )
}

/// Answers a plain HTTP request (no upgrade): the web client's files,
/// `/healthz`, `/metrics`.
fn serve<'h>(
    path: &str,
    target: &str,
    header: &dyn Fn(&str) -> Option<&'h str>,
    policy: &Policy,
) -> Decision {
    match path {
        "/healthz" => Decision::Health,
        "/metrics" if policy.authorized(header("authorization"), target) => Decision::Metrics,
        "/metrics" => unauthorized(),
        "/ws" => respond(
            426,
            "Upgrade Required",
            "this is a wschat WebSocket endpoint: connect with a WebSocket client",
        ),
        _ => match web::find(path) {
            Some(asset) => {
                let (head, with_body) = web::response_head(asset, header("if-none-match"));
                Decision::Asset {
                    status: if with_body { 200 } else { 304 },
                    head,
                    body: with_body.then_some(asset.body),
                }
            }
            None => respond(404, "Not Found", "not found"),
        },
    }
}

/// [`decide`] for a parsed request; `header` looks one up by name.
fn route<'h>(
    request: &httparse::Request<'_, 'h>,
    header: &dyn Fn(&str) -> Option<&'h str>,
    policy: &Policy,
    local: Option<IpAddr>,
) -> Decision {
    let head_only = request.method == Some("HEAD");
    if request.method != Some("GET") && !head_only {
        return respond(405, "Method Not Allowed", "only GET and HEAD are supported");
    }
    for name in SINGLE_HEADERS {
        let count = request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count();
        if count > 1 {
            return respond(
                400,
                "Bad Request",
                "a header that may appear once appears twice",
            );
        }
    }
    let host = header("host");
    if let Some(host) = host
        && host_name(&host.trim().to_ascii_lowercase()).is_none()
    {
        return respond(400, "Bad Request", "malformed Host");
    }
    if let Some(host) = host
        && !policy.host_allowed(host, local)
    {
        return respond(
            403,
            "Forbidden",
            "this server is not reachable under that name (see --allowed-host)",
        );
    }
    let target = request.path.unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let is_upgrade = header("upgrade").is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));

    if !is_upgrade || head_only {
        return serve(path, target, header, policy);
    }
    if !matches!(path, "/" | "/ws") {
        return respond(404, "Not Found", "not found");
    }
    if host.is_none() {
        return respond(400, "Bad Request", "missing Host");
    }
    if let Some(origin) = header("origin")
        && !policy.origin_allowed(origin, host)
    {
        return respond(
            403,
            "Forbidden",
            "cross-site WebSocket refused: this origin is not allowed",
        );
    }
    if !policy.authorized(header("authorization"), target) {
        return unauthorized();
    }
    let connection_upgrade = header("connection").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    if !connection_upgrade || header("sec-websocket-version").map(str::trim) != Some("13") {
        return respond(400, "Bad Request", "not a WebSocket version 13 handshake");
    }
    let Some(key) = header("sec-websocket-key").map(str::trim) else {
        return respond(400, "Bad Request", "missing Sec-WebSocket-Key");
    };
    if !valid_key(key) {
        return respond(
            400,
            "Bad Request",
            "Sec-WebSocket-Key must be 16 bytes in base64",
        );
    }
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
        hello: Hello::from_target(target),
        response: response.into_bytes(),
        origin: None,
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
            allowed_origins: vec!["https://chat.example.org".into()],
            ..Policy::default()
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
            ..Policy::default()
        };
        assert_eq!(upgrade_with("/", &[], &policy), 401);
        assert_eq!(
            upgrade_with("/", &["Authorization: Bearer s3cret/+"], &policy),
            101
        );
        assert_eq!(
            upgrade_with("/", &["Authorization: bearer  s3cret/+"], &policy),
            101
        );
        assert_eq!(
            upgrade_with("/", &["Authorization: Basic s3cret/+"], &policy),
            401
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

    /// An upgrade naming `host`, checked as on a loopback listener.
    fn upgrade_to_host(host: &str, extra: &[&str], allowed: &[&str]) -> u16 {
        let policy = Policy {
            check_host: true,
            allowed_hosts: allowed.iter().map(|h| (*h).to_owned()).collect(),
            ..Policy::default()
        };
        let host = format!("Host: {host}");
        let mut lines = vec!["GET / HTTP/1.1", host.as_str()];
        lines.extend_from_slice(&UPGRADE[1..]);
        lines.extend_from_slice(extra);
        status(&decide(&request(&lines), &policy))
    }

    #[test]
    fn loopback_listener_refuses_other_host_names() {
        for host in [
            "localhost",
            "LOCALHOST:2000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:2000",
            "app.localhost",
        ] {
            assert_eq!(upgrade_to_host(host, &[], &[]), 101, "{host}");
        }
        for host in [
            "evil.example:2000",
            "evil.example",
            "127.0.0.1.evil.example",
            "[::2]",
        ] {
            assert_eq!(upgrade_to_host(host, &[], &[]), 403, "{host}");
        }
        // DNS rebinding: the page's own origin matches its own Host, and
        // that is exactly what must not pass.
        assert_eq!(
            upgrade_to_host(
                "evil.example:2000",
                &["Origin: http://evil.example:2000"],
                &[]
            ),
            403
        );
        assert_eq!(
            upgrade_to_host("chat.example.org:8080", &[], &["chat.example.org"]),
            101
        );
        assert_eq!(
            upgrade_to_host("chat.example.org", &[], &["chat.example.org:8080"]),
            403
        );
        // Off loopback, any name will do.
        assert_eq!(upgrade_with("/", &[], &Policy::default()), 101);
        let mut lines = vec!["GET / HTTP/1.1", "Host: anything.example"];
        lines.extend_from_slice(&UPGRADE[1..]);
        assert_eq!(status(&decide(&request(&lines), &open())), 101);
    }

    #[test]
    fn hosts_that_only_look_loopback_are_not() {
        for host in [
            "[::1]evil",
            "[::1]:80evil",
            "127.0.0.1:80@evil",
            "127.0.0.1@evil.example",
            "localhost:",
            "localhost:99999",
            "[::1",
            "[evil]:80",
            "a:b:c",
        ] {
            let status = upgrade_to_host(host, &[], &[]);
            assert!(status == 400 || status == 403, "{host}: {status}");
            // Not even with a token, where no name is checked.
            let mut lines = vec!["GET / HTTP/1.1".to_owned(), format!("Host: {host}")];
            lines.extend(UPGRADE[1..].iter().map(|l| (*l).to_owned()));
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            assert_eq!(status_of(&request(&lines), &open()), 400, "{host}");
        }
    }

    fn status_of(head: &[u8], policy: &Policy) -> u16 {
        status(&decide(head, policy))
    }

    #[test]
    fn the_host_allow_list_holds_wherever_there_is_no_token() {
        let config = ServerConfig {
            allowed_hosts: vec!["Chat.Example.org".into()],
            listen_host: Some("wschat.internal".into()),
            ..ServerConfig::default()
        };
        let off_loopback: SocketAddr = "192.0.2.7:2000".parse().expect("addr");
        let policy = Policy::from_config(&config, off_loopback);
        assert!(policy.check_host);
        let at = |host: &str, local: Option<IpAddr>| {
            let host = format!("Host: {host}");
            let mut lines = vec!["GET / HTTP/1.1", host.as_str()];
            lines.extend_from_slice(&UPGRADE[1..]);
            status(&decide_at(&request(&lines), &policy, local))
        };
        for host in [
            "localhost:2000",
            "127.0.0.1",
            "192.0.2.7:2000",
            "chat.example.org",
            "wschat.internal:2000",
        ] {
            assert_eq!(at(host, None), 101, "{host}");
        }
        assert_eq!(at("rebound.example:2000", None), 403);
        assert_eq!(at("198.51.100.1:2000", None), 403);
        // On 0.0.0.0, the address a connection reached is one of the server's.
        let any: SocketAddr = "0.0.0.0:2000".parse().expect("addr");
        let policy = Policy::from_config(&ServerConfig::default(), any);
        let reached: IpAddr = "10.1.2.3".parse().expect("ip");
        let host = |name: &str| {
            let host = format!("Host: {name}");
            let mut lines = vec!["GET / HTTP/1.1".to_owned(), host];
            lines.extend(UPGRADE[1..].iter().map(|l| (*l).to_owned()));
            lines.join("\r\n") + "\r\n\r\n"
        };
        assert_eq!(
            status(&decide_at(
                host("10.1.2.3:2000").as_bytes(),
                &policy,
                Some(reached)
            )),
            101
        );
        assert_eq!(
            status(&decide_at(
                host("10.9.9.9:2000").as_bytes(),
                &policy,
                Some(reached)
            )),
            403
        );
        let v6: IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(
            status(&decide_at(
                host("[2001:db8::1]:2000").as_bytes(),
                &policy,
                Some(v6)
            )),
            101
        );
        // With a token there is no Host check.
        let config = ServerConfig {
            token: Some("t".into()),
            ..ServerConfig::default()
        };
        assert!(!Policy::from_config(&config, any).check_host);
    }

    #[test]
    fn keys_that_are_not_16_bytes_of_base64_are_refused() {
        for key in [
            "x",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ===",
            "dGhlIHNhbXBsZSBub25jZSE=",
            "AAAAAAAAAAAAAAAAAAAAAAAA",
            "!!!!!!!!!!!!!!!!!!!!!!==",
        ] {
            let key = format!("Sec-WebSocket-Key: {key}");
            let mut lines = vec!["GET / HTTP/1.1"];
            lines.extend_from_slice(&UPGRADE[..4]);
            lines.push(&key);
            assert_eq!(status_of(&request(&lines), &open()), 400, "{key}");
        }
    }

    #[test]
    fn a_head_with_bare_line_feeds_is_refused() {
        let mut lines = vec!["GET / HTTP/1.1"];
        lines.extend_from_slice(UPGRADE);
        let bare = lines.join("\n") + "\n\n";
        assert_eq!(status_of(bare.as_bytes(), &open()), 400);
        let mixed = lines.join("\r\n") + "\n\r\n";
        assert_eq!(status_of(mixed.as_bytes(), &open()), 400);
        assert!(has_bare_lf(b"GET / HTTP/1.1\n"));
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nHost: x\r\n"));
    }

    #[test]
    fn a_hello_that_does_not_decode_is_kept_as_it_came() {
        let hello = Hello::from_target("/?nick=%zz&room=ok%2");
        assert_eq!(hello.nick.as_deref(), Some("%zz"));
        assert_eq!(hello.room.as_deref(), Some("ok%2"));
        let hello = Hello::from_target("/?nick=al%69ce&resume=%zz");
        assert_eq!(hello.nick.as_deref(), Some("alice"));
        assert_eq!(hello.resume, None);
    }

    #[test]
    fn duplicate_identity_headers_are_refused() {
        for extra in ["Host: other", "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA=="] {
            assert_eq!(upgrade_with("/", &[extra], &open()), 400, "{extra}");
        }
        assert_eq!(
            upgrade_with(
                "/",
                &["Origin: http://localhost", "origin: https://evil.example"],
                &open()
            ),
            400
        );
        assert_eq!(
            upgrade_with("/", &["X-Twice: 1", "X-Twice: 2"], &open()),
            101
        );
    }

    #[test]
    fn refusals_carry_their_reason_and_origin() {
        let head = request(&[
            "GET / HTTP/1.1",
            "Host: localhost",
            "Origin: https://evil.example",
            "Upgrade: websocket",
        ]);
        let Decision::Respond(refusal) = decide(&head, &open()) else {
            panic!("expected a refusal");
        };
        assert_eq!(refusal.status, 403);
        assert_eq!(refusal.origin.as_deref(), Some("https://evil.example"));
        let response = String::from_utf8(refusal.response).expect("text");
        assert!(response.ends_with(&format!("\r\n\r\n{}\n", refusal.reason)));
    }

    #[test]
    fn refusal_log_lines_are_rationed_per_second() {
        let start = Instant::now();
        let mut budget = LogBudget::new(3, start);
        let taken: Vec<_> = (0..5).map(|_| budget.take(start)).collect();
        assert_eq!(taken, [Some(0), Some(0), Some(0), None, None]);
        let soon = start + Duration::from_millis(999);
        assert_eq!(budget.take(soon), None);
        // The next second's first line reports what was left out.
        let next = start + Duration::from_secs(1);
        assert_eq!(budget.take(next), Some(3));
        assert_eq!(budget.take(next), Some(0));
    }

    #[test]
    fn too_many_headers_is_431() {
        let extra: Vec<String> = (0..MAX_HEADERS).map(|i| format!("X-{i}: y")).collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        assert_eq!(upgrade_with("/", &extra, &open()), 431);
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
        let Decision::Upgrade { mode, response, .. } = decide(&request(&lines), &Policy::default())
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
        let Decision::Upgrade { mode, response, .. } = decide(&request(&lines), &Policy::default())
        else {
            panic!("expected an upgrade");
        };
        assert_eq!(mode, Mode::Json);
        assert!(String::from_utf8_lossy(&response).contains("Sec-WebSocket-Protocol: wschat.v1"));
    }

    #[test]
    fn refuses_what_is_not_an_upgrade() {
        assert_eq!(
            status(&decide(&request(&["GET /ws HTTP/1.1"]), &open())),
            426
        );
        assert_eq!(status(&decide(&request(&["GET / HTTP/1.1"]), &open())), 200);
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
