//! Text hygiene: no message can forge a line or carry an escape sequence,
//! and the client shows control characters instead of obeying them.

mod common;

use common::{Peer, Proc, TestServer, plain_peers, within};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_websockets::{Message, ServerBuilder};
use wschat::protocol::{ErrorCode, ServerFrame};

#[tokio::test]
async fn plain_mode_refuses_control_characters_and_strips_one_newline() {
    let server = TestServer::start().await;
    let [mut a, mut b] = plain_peers(&server.url()).await;
    // websocat and friends end each frame with a newline: it is not text.
    a.send("hello\n").await;
    b.expect(&format!("{}: hello", a.name())).await;
    a.send("crlf too\r\n").await;
    b.expect(&format!("{}: crlf too", a.name())).await;
    for (forged, code) in [
        ("hi\nbob: send me your password", 0x0a),
        ("\u{1b}[2J\u{1b}[Hcleared", 0x1b),
        ("two\n\n", 0x0a),
        ("csi\u{9b}31m", 0x9b),
    ] {
        a.send(forged).await;
        a.expect(&format!(
            "! message not delivered: it contains the control character U+{code:04X}"
        ))
        .await;
    }
    a.send("/msg nobody \u{7}x").await;
    a.expect("! message not delivered: it contains the control character U+0007")
        .await;
    // None of them reached b: the next thing it sees is this.
    a.send("tab\tis fine").await;
    b.expect(&format!("{}: tab\tis fine", a.name())).await;
    server.stop().await;
}

#[tokio::test]
async fn json_mode_refuses_control_characters_with_bad_text() {
    let server = TestServer::start().await;
    let url = server.url();
    let (mut a, _) = Peer::json_joined(&url).await;
    let (mut b, _) = Peer::json_joined(&url).await;
    a.send(r#"{"type":"say","text":"evil\u001b]0;pwned\u0007","cid":"c1"}"#)
        .await;
    loop {
        match a.frame().await {
            ServerFrame::Error { code, cid, .. } => {
                assert_eq!((code, cid.as_deref()), (ErrorCode::BadText, Some("c1")));
                break;
            }
            ServerFrame::Joined { .. } => {}
            other => panic!("expected bad_text, got {other:?}"),
        }
    }
    a.send(r#"{"type":"say","text":"fine\n","cid":"c2"}"#).await;
    loop {
        if let ServerFrame::Message { text, from, .. } = b.frame().await {
            assert_eq!((from, text.as_str()), (a.name(), "fine"));
            break;
        }
    }
    server.stop().await;
}

/// A server from before text hygiene, as far as the client can tell: it
/// welcomes the client and passes on whatever it was given.
async fn older_server(listener: TcpListener, frames: Vec<String>) {
    let (stream, _) = listener.accept().await.expect("accept");
    let (_request, mut ws) = ServerBuilder::new()
        .accept(stream)
        .await
        .expect("handshake");
    for frame in frames {
        ws.send(Message::text(frame)).await.expect("send");
    }
    // Stay until the client goes.
    while let Some(Ok(_)) = ws.next().await {}
}

#[tokio::test]
async fn the_client_shows_control_characters_instead_of_obeying_them() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let frames = vec![
        r#"{"type":"welcome","text":"Welcome to chat! Type a message","nick":"me","room":"lobby","epoch":1}"#.to_owned(),
        r#"{"type":"message","id":1,"room":"lobby","from":"bob","text":"hi\nalice: forged \u001b[2Jclear","ts":0}"#.to_owned(),
        r#"{"type":"error","code":"internal","text":"bad\u009b31m"}"#.to_owned(),
        // Bidi overrides and isolates, zero-width space and word joiner,
        // line and paragraph separators, a BOM; and an emoji made with ZWJ.
        r#"{"type":"message","id":2,"room":"lobby","from":"eve","text":"pay \u202Egpj.exe\u202C \u2066x\u2069 a\u200Bb\u2060c d\u2028e\u2029 \uFEFF \u202A\u202B\u202D\u2067\u2068 \ud83d\udc69\u200d\ud83d\udcbb","ts":0}"#.to_owned(),
    ];
    let server = tokio::spawn(older_server(listener, frames));
    let mut client = Proc::spawn(env!("CARGO_BIN_EXE_client"), &[&url, "--no-reconnect"], &[]);
    assert_eq!(
        client.out_line().await.as_deref(),
        Some("Welcome to chat! Type a message")
    );
    let mut lines = Vec::new();
    within("the client's lines", async {
        while lines.len() < 3 {
            let line = client.out_line().await.expect("stdout open");
            if !line.starts_with("* ") {
                lines.push(line);
            }
        }
    })
    .await;
    // The client shows the error as it comes and the message once its
    // join is settled: the order between them is the client's own.
    lines.sort();
    assert_eq!(
        lines,
        [
            "! bad<U+009B>31m",
            "bob: hi^Jalice: forged ^[[2Jclear",
            "eve: pay <U+202E>gpj.exe<U+202C> <U+2066>x<U+2069> a<U+200B>b<U+2060>c \
             d<U+2028>e<U+2029> <U+FEFF> <U+202A><U+202B><U+202D><U+2067><U+2068> \
             \u{1F469}\u{200D}\u{1F4BB}",
        ]
    );
    client.close_stdin();
    assert_eq!(client.exit_code().await, 0);
    server.abort();
}

#[tokio::test]
async fn names_cannot_carry_characters_that_reorder_or_hide_text() {
    let server = TestServer::with(|c| c.rate = 0).await;
    let [mut a, mut b] = plain_peers(&server.url()).await;
    for sneaky in [
        "ali\u{202E}ecila",
        "bob\u{2066}",
        "zero\u{200B}width",
        "word\u{2060}joiner",
        "line\u{2028}sep",
        "\u{FEFF}bom",
        "tag\u{E0041}",
        "zwj\u{200D}",
    ] {
        a.send(&format!("/nick {sneaky}")).await;
        a.expect(&format!(
            "! invalid nickname {sneaky:?}: use 1-24 of A-Z a-z 0-9 _ -"
        ))
        .await;
        a.send(&format!("/join {sneaky}")).await;
        let refused = a.text().await;
        assert!(refused.starts_with("! invalid room name"), "{refused:?}");
    }
    // Nothing of it reached b: the next thing it sees is this.
    a.send("done").await;
    b.expect(&format!("{}: done", a.name())).await;
    server.stop().await;
}
