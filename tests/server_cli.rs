//! The `server` binary: flags, environment, logs, signals and startup errors.

mod common;

use common::{Peer, Proc, metric, plain_peers, spawn_server, within};

const SERVER: &str = env!("CARGO_BIN_EXE_server");

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_zero() {
    let (mut server, url) = spawn_server(&[]).await;
    assert!(url.starts_with("ws://127.0.0.1:"), "{url}");
    let mut peer = Peer::plain(&url).await;
    server
        .err_until(&format!("New connection from {}", peer.addr))
        .await;
    server.signal("TERM");
    assert_eq!(
        peer.closed().await,
        (1001, "server shutting down".to_owned())
    );
    assert_eq!(server.exit_code().await, 0);
}

#[tokio::test]
async fn serves_on_one_thread_and_on_several() {
    for threads in ["1", "3"] {
        let (mut server, url) = spawn_server(&["--threads", threads]).await;
        let [mut a, mut b] = plain_peers(&url).await;
        a.send("hello").await;
        b.expect(&format!("{}: hello", a.name())).await;
        server.signal("TERM");
        for peer in [&mut a, &mut b] {
            assert_eq!(
                peer.closed().await,
                (1001, "server shutting down".to_owned()),
                "--threads {threads}"
            );
        }
        assert_eq!(server.exit_code().await, 0, "--threads {threads}");
    }
}

#[tokio::test]
async fn ctrl_c_exits_zero() {
    let (mut server, _url) = spawn_server(&[]).await;
    server.signal("INT");
    assert_eq!(server.exit_code().await, 0);
}

#[tokio::test]
async fn logs_connections_but_not_message_text() {
    let (mut server, url) = spawn_server(&[]).await;
    let [mut a, b] = plain_peers(&url).await;
    a.send("a private thought").await;
    let b_name = b.name();
    b.reset();
    a.expect(&format!("* {b_name} left lobby")).await;
    let a_name = a.name();
    a.close().await;
    server.signal("TERM");
    assert_eq!(server.exit_code().await, 0);
    let log = server.err_rest().await.join("\n");
    assert!(
        log.contains(&format!("New connection from {a_name}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("Client {b_name} disconnected: ")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.ends_with(&format!("Client {a_name} disconnected"))),
        "{log}"
    );
    assert!(
        !log.contains("a private thought"),
        "message text logged at info:\n{log}"
    );
}

#[tokio::test]
async fn verbose_logs_message_text() {
    let (mut server, url) = spawn_server(&["-v"]).await;
    let mut a = Peer::plain(&url).await;
    a.send("now you see it").await;
    server.err_until("now you see it").await;
}

#[tokio::test]
async fn port_in_use_is_one_clear_line_and_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let mut server = Proc::spawn(SERVER, &["--port", &port], &[]);
    assert_eq!(server.exit_code().await, 1);
    let lines = server.err_rest().await;
    assert_eq!(
        lines,
        [format!(
            "error: cannot listen on 127.0.0.1:{port}: address already in use"
        )]
    );
}

#[tokio::test]
async fn environment_sets_host_and_port_and_flags_win() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();

    // The environment is used...
    let mut server = Proc::spawn(SERVER, &[], &[("WSCHAT_PORT", &port)]);
    server.err_until("address already in use").await;
    assert_eq!(server.exit_code().await, 1);

    // ...and a flag wins over it.
    let mut server = Proc::spawn(
        SERVER,
        &["--port", "0"],
        &[("WSCHAT_PORT", &port), ("WSCHAT_HOST", "127.0.0.2")],
    );
    let line = server.err_until("listening on ").await;
    assert!(line.contains("listening on ws://127.0.0.2:"), "{line}");
    assert!(!line.ends_with(&format!(":{port}")), "{line}");
    server.signal("TERM");
    assert_eq!(server.exit_code().await, 0);
}

#[tokio::test]
async fn bad_flag_is_a_usage_error() {
    let mut server = Proc::spawn(SERVER, &["--bogus"], &[]);
    assert_eq!(server.exit_code().await, 2);
    let line = server.err_until("--bogus").await;
    assert!(line.starts_with("error:"), "{line}");
}

#[tokio::test]
async fn an_empty_token_or_a_bad_origin_is_a_usage_error() {
    /// Flags, environment, and what the error line says.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (&["--token", ""], &[], "the token must not be empty"),
        (&[], &[("WSCHAT_TOKEN", "")], "the token must not be empty"),
        (
            &["--allowed-origin", "chat.example.org"],
            &[],
            "\"chat.example.org\" is not an origin: expected scheme://host[:port]",
        ),
        (
            &["--allowed-origin", "https://chat.example.org/app"],
            &[],
            "\"https://chat.example.org/app\" is not an origin",
        ),
    ];
    for (args, env, expected) in cases {
        let mut server = Proc::spawn(SERVER, args, env);
        assert_eq!(server.exit_code().await, 2, "{args:?} {env:?}");
        let line = server.err_until("error:").await;
        assert!(line.contains(expected), "{line}");
    }
}

#[tokio::test]
async fn refused_handshakes_are_logged_with_reason_and_origin() {
    let (mut server, url) = spawn_server(&[]).await;
    let addr: std::net::SocketAddr = url.trim_start_matches("ws://").parse().expect("addr");
    let request = "GET / HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\n\
                   Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    assert_eq!(common::http_request(addr, request).await, 403);
    let line = server.err_until("Refused 127.0.0.1:").await;
    assert!(
        line.ends_with(
            " (HTTP 403): cross-site WebSocket refused: this origin is not allowed; \
             Origin: \"https://evil.example\""
        ),
        "{line}"
    );
}

/// The server on a free port with its stderr a pipe the test holds; returns
/// the process, its URL and the pipe, read up to the `listening on` line.
async fn server_with_own_stderr(
    args: &[&str],
) -> (tokio::process::Child, String, tokio::process::ChildStderr) {
    use tokio::io::AsyncReadExt;
    let mut child = tokio::process::Command::new(SERVER)
        .args(["--port", "0"])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    // Byte by byte, so nothing past the line is taken from the pipe.
    let mut line = Vec::new();
    let url = common::within("the listening line", async {
        loop {
            let byte = stderr.read_u8().await.expect("stderr open");
            if byte != b'\n' {
                line.push(byte);
                continue;
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            if let Some((_, url)) = text.split_once("listening on ") {
                return url.trim().to_owned();
            }
            line.clear();
        }
    })
    .await;
    (child, url, stderr)
}

/// Sends SIGTERM and returns the exit code.
async fn terminate(child: &mut tokio::process::Child) -> Option<i32> {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    common::within("the server to exit", child.wait())
        .await
        .expect("wait")
        .code()
}

#[tokio::test]
async fn a_closed_stderr_costs_log_lines_not_connections() {
    let (mut server, url, stderr) = server_with_own_stderr(&[]).await;
    drop(stderr);
    // Every connection logs at info; none of that may hurt it.
    let [mut a, mut b] = plain_peers(&url).await;
    a.send("still here").await;
    b.expect(&format!("{}: still here", a.name())).await;
    a.close().await;
    let mut c = Peer::plain_raw(&url).await;
    c.send("/rooms").await;
    while !c.text().await.starts_with("* rooms: ") {}
    assert_eq!(terminate(&mut server).await, Some(0));
}

#[tokio::test]
async fn a_stderr_nobody_reads_never_stalls_the_chat() {
    use tokio::io::AsyncReadExt;
    // Debug logs a line per message: far more than a pipe and the log
    // queue hold. b reads only once a has sent everything: room for it all.
    let (mut server, url, mut stderr) =
        server_with_own_stderr(&["-v", "--rate", "0", "--max-lag", "40000"]).await;
    let [mut a, mut b] = plain_peers(&url).await;
    for n in 0..20_000 {
        a.send(&format!("message {n}")).await;
    }
    for n in 0..20_000 {
        b.expect(&format!("{}: message {n}", a.name())).await;
    }
    let mut c = Peer::plain_raw(&url).await;
    c.send("/rooms").await;
    while c.text().await != "* rooms: lobby (3)" {}
    // The lines that did not fit are counted, and the count is logged
    // once stderr is read again.
    let drained = tokio::spawn(async move {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log).await;
        log
    });
    assert_eq!(terminate(&mut server).await, Some(0));
    let log = common::within("stderr to end", drained)
        .await
        .expect("read stderr");
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains(" log line(s) were dropped: stderr could not keep up"),
        "{last}"
    );
}

/// Lines lost to a closed stderr were not counted: the counter of dropped
/// log lines only knew of lines dropped from a full queue.
#[tokio::test]
async fn log_lines_lost_to_a_closed_stderr_are_counted() {
    let (mut server, url, stderr) = server_with_own_stderr(&[]).await;
    // Nobody reads the server's stderr any more.
    drop(stderr);
    for _ in 0..5 {
        Peer::plain(&url).await.close().await;
    }
    let addr = url.trim_start_matches("ws://").parse().expect("address");
    // Each connection logs two lines: it came and it went.
    let dropped = within("ten lines counted", async {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(50));
        loop {
            every.tick().await;
            let answer = common::metrics(addr).await;
            let dropped = metric(&answer, "wschat_log_lines_dropped_total").expect("the counter");
            if dropped >= 10.0 {
                return dropped;
            }
        }
    })
    .await;
    assert_eq!(dropped, 10.0);
    assert!(
        server.try_wait().expect("wait").is_none(),
        "the server died"
    );
}
