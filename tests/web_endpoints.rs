//! The HTTP side of the port: the web client's files with their headers,
//! `/healthz`, and `/metrics` moving with real traffic.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::{Peer, TestServer, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wschat::protocol::ServerFrame;

/// One HTTP answer: status, headers (names lower-cased), body.
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// Sends `GET target` with extra header lines and reads the whole answer
/// (the server closes the connection after it).
async fn get(addr: SocketAddr, target: &str, extra: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    within("the whole answer", stream.read_to_end(&mut raw))
        .await
        .expect("read");
    let text = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The value of the sample named exactly `series` in a `/metrics` text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("numeric sample"))
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[tokio::test]
async fn the_page_and_its_files_carry_type_etag_and_security_headers() {
    let server = TestServer::start().await;
    for (path, content_type, needle) in [
        ("/", "text/html; charset=utf-8", "role=\"log\""),
        (
            "/index.html",
            "text/html; charset=utf-8",
            "aria-label=\"Message\"",
        ),
        ("/app.js", "text/javascript; charset=utf-8", "wschat.v1"),
        (
            "/app.css",
            "text/css; charset=utf-8",
            "prefers-color-scheme",
        ),
    ] {
        let answer = get(server.addr, path, "").await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.headers["content-type"], content_type, "{path}");
        assert!(answer.body.contains(needle), "{path} lacks {needle}");
        assert_eq!(
            answer.headers["content-length"],
            answer.body.len().to_string()
        );
        let csp = &answer.headers["content-security-policy"];
        for directive in [
            "default-src 'self'",
            "connect-src 'self' ws: wss:",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert_eq!(answer.headers["x-content-type-options"], "nosniff");
        assert_eq!(answer.headers["referrer-policy"], "no-referrer");

        // The ETag lets a browser skip a file it has.
        let etag = answer.headers["etag"].clone();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
        let again = get(server.addr, path, &format!("If-None-Match: {etag}\r\n")).await;
        assert_eq!(again.status, 304, "{path}");
        assert_eq!(again.body, "");
        assert_eq!(again.headers["etag"], etag);
    }
    assert_eq!(get(server.addr, "/nope.js", "").await.status, 404);
    // The WebSocket path alone still explains itself.
    assert_eq!(get(server.addr, "/ws", "").await.status, 426);
    server.stop().await;
}

/// Sends a raw request and reads the whole answer as text.
async fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = String::new();
    within("the whole answer", stream.read_to_string(&mut raw))
        .await
        .expect("read");
    raw
}

#[tokio::test]
async fn healthz_answers_ok() {
    let server = TestServer::start().await;
    let answer = get(server.addr, "/healthz", "").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok\n"));
    server.stop().await;
}

#[tokio::test]
async fn head_gets_the_head_without_the_body() {
    let server = TestServer::start().await;
    for (path, status) in [
        ("/healthz", 200),
        ("/", 200),
        ("/metrics", 200),
        ("/nope", 404),
    ] {
        let get = get(server.addr, path, "").await;
        let head = exchange(
            server.addr,
            &format!("HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        )
        .await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{path}: {head}"
        );
        assert!(head.ends_with("\r\n\r\n"), "{path}: a body came: {head}");
        // The same length as GET's body, as HEAD promises.
        if path != "/metrics" {
            assert!(
                head.contains(&format!("Content-Length: {}\r\n", get.body.len())),
                "{path}: {head}"
            );
        }
    }
    // Other methods are still refused.
    let post = exchange(
        server.addr,
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    server.stop().await;
}

#[tokio::test]
async fn metrics_move_with_real_traffic() {
    let server = TestServer::start().await;
    let url = server.url();
    let before = get(server.addr, "/metrics", "").await;
    assert_eq!(before.status, 200);
    assert!(
        before.headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{:?}",
        before.headers
    );
    let text = before.body;
    for series in [
        "wschat_connections",
        "wschat_connections_total",
        "wschat_messages_total",
        "wschat_deliveries_total",
        "wschat_rooms",
        "wschat_slow_closes_total",
        "wschat_rate_limited_total",
        "wschat_log_lines_dropped_total",
    ] {
        assert_eq!(sample(&text, series), 0.0, "{series} at start");
    }
    // Every sample line is `name[{labels}] value` of a typed family.
    let mut typed = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.push(family.to_owned());
        } else if !line.starts_with("# HELP ") {
            let (series, value) = line.rsplit_once(' ').expect("name value");
            value.parse::<f64>().expect("a number");
            let name = series.split('{').next().unwrap_or_default();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|f| typed.iter().any(|t| t == f))
                .unwrap_or(name);
            assert!(typed.iter().any(|t| t == family), "untyped sample {line}");
        }
    }
    // Every family is typed, as the text format wants.
    for (family, kind) in [
        ("wschat_connections", "gauge"),
        ("wschat_connections_total", "counter"),
        ("wschat_rooms", "gauge"),
        ("wschat_handshake_rejections_total", "counter"),
    ] {
        assert!(
            text.lines().any(|l| l == format!("# TYPE {family} {kind}")),
            "{family} is not a {kind}:\n{text}"
        );
    }

    // Three peers in one room; each has seen the last one's rename.
    let (mut a, _) = Peer::json_joined(&url).await;
    let (mut b, _) = Peer::json_joined(&url).await;
    let (mut c, _) = Peer::json_joined(&url).await;
    c.send(r#"{"type":"nick","nick":"cat"}"#).await;
    for peer in [&mut a, &mut b, &mut c] {
        within("the rename", async {
            while !matches!(peer.frame().await, ServerFrame::Renamed { .. }) {}
        })
        .await;
    }
    let text = get(server.addr, "/metrics", "").await.body;
    let delivered = sample(&text, "wschat_deliveries_total");
    assert!(delivered >= 3.0, "joins and the rename: {delivered}");

    // Two messages: stored twice, and delivered to all three (the sender
    // gets its acknowledgement).
    for n in 1..=2 {
        c.send(&format!(r#"{{"type":"say","text":"hi {n}","cid":"m{n}"}}"#))
            .await;
    }
    for peer in [&mut a, &mut b, &mut c] {
        within("both messages", async {
            let mut seen = 0;
            while seen < 2 {
                if let ServerFrame::Message { .. } = peer.frame().await {
                    seen += 1;
                }
            }
        })
        .await;
    }
    // A refused handshake is counted by its status.
    assert_eq!(get(server.addr, "/nope", "").await.status, 404);

    let text = get(server.addr, "/metrics", "").await.body;
    assert_eq!(sample(&text, "wschat_connections"), 3.0);
    assert_eq!(sample(&text, "wschat_connections_total"), 3.0);
    assert_eq!(sample(&text, "wschat_rooms"), 1.0);
    assert_eq!(sample(&text, "wschat_messages_total"), 2.0);
    // A frame a peer has read was counted before it was written.
    let delivered_now = sample(&text, "wschat_deliveries_total");
    assert_eq!(delivered_now - delivered, 6.0);
    assert_eq!(
        sample(&text, "wschat_handshake_rejections_total{status=\"404\"}"),
        1.0
    );

    // Closed connections keep their deliveries in the total.
    for peer in [a, b, c] {
        peer.close().await;
    }
    within("connections to be gone", async {
        loop {
            let text = get(server.addr, "/metrics", "").await.body;
            if sample(&text, "wschat_connections") == 0.0 {
                // Leaving notices may add to it; nothing is lost.
                assert!(sample(&text, "wschat_deliveries_total") >= delivered_now);
                assert_eq!(sample(&text, "wschat_rooms"), 0.0);
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn rate_limited_requests_are_counted() {
    let server = TestServer::with(|c| {
        c.rate = 1;
        c.rate_burst = 1;
    })
    .await;
    let (mut a, _) = Peer::json_joined(&server.url()).await;
    a.send(r#"{"type":"who"}"#).await;
    a.send(r#"{"type":"who"}"#).await;
    within("a rate_limited error", async {
        loop {
            if let ServerFrame::Error { .. } = a.frame().await {
                break;
            }
        }
    })
    .await;
    let text = get(server.addr, "/metrics", "").await.body;
    assert_eq!(sample(&text, "wschat_rate_limited_total"), 1.0);
    server.stop().await;
}

#[tokio::test]
async fn metrics_need_the_token_when_the_server_has_one() {
    let server = TestServer::with(|c| c.token = Some("s3cret".into())).await;
    let refused = get(server.addr, "/metrics", "").await;
    assert_eq!(refused.status, 401);
    assert!(!refused.body.contains("wschat_"), "{}", refused.body);
    assert_eq!(
        get(server.addr, "/metrics?token=wrong", "").await.status,
        401
    );
    assert_eq!(
        get(server.addr, "/metrics?token=s3cret", "").await.status,
        200
    );
    let bearer = get(server.addr, "/metrics", "Authorization: Bearer s3cret\r\n").await;
    assert_eq!(bearer.status, 200);
    assert!(bearer.body.contains("wschat_connections "));
    // The page itself and /healthz need no token.
    assert_eq!(get(server.addr, "/", "").await.status, 200);
    assert_eq!(get(server.addr, "/healthz", "").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn room_listings_carry_the_last_message_id() {
    let server = TestServer::start().await;
    let (mut a, _) = Peer::json_joined(&server.url()).await;
    a.send(r#"{"type":"rooms"}"#).await;
    let ServerFrame::Rooms { rooms, .. } = a.frame().await else {
        panic!("expected rooms");
    };
    assert_eq!(rooms[0].last, None, "no message yet");
    a.send(r#"{"type":"say","text":"one","cid":"1"}"#).await;
    a.send(r#"{"type":"say","text":"two","cid":"2"}"#).await;
    a.send(r#"{"type":"rooms"}"#).await;
    let rooms = within("a rooms answer", async {
        loop {
            if let ServerFrame::Rooms { rooms, .. } = a.frame().await {
                break rooms;
            }
        }
    })
    .await;
    assert_eq!((rooms[0].name.as_str(), rooms[0].last), ("lobby", Some(2)));
    server.stop().await;
}
