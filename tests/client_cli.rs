//! The `client` binary, spawned as a process against a real server.

mod common;

use common::{Peer, Proc, TestServer, free_port};
use wschat::protocol::WELCOME;

const CLIENT: &str = env!("CARGO_BIN_EXE_client");

/// Reads `* NAME joined lobby` for a peer whose address is not known yet; returns NAME.
async fn joined_name(observer: &mut Peer) -> String {
    let line = observer.text().await;
    line.strip_prefix("* ")
        .and_then(|rest| rest.strip_suffix(" joined lobby"))
        .unwrap_or_else(|| panic!("expected a join notice, got {line:?}"))
        .to_owned()
}

#[tokio::test]
async fn piped_stdin_sends_each_line_then_exits_zero() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut observer = Peer::plain(&url).await;

    let mut client = Proc::spawn(CLIENT, &[&url, "--nick", "bob"], &[]);
    client.type_line("hi").await;
    client.type_line("there").await;
    client.close_stdin();

    // The nick travels in the handshake: one notice, under the nick.
    assert_eq!(joined_name(&mut observer).await, "bob");
    observer.expect("bob: hi").await;
    observer.expect("bob: there").await;
    observer.expect("* bob left lobby").await;
    assert_eq!(client.exit_code().await, 0);
    // The transcript has the welcome and never the client's own messages.
    assert_eq!(client.out_line().await.as_deref(), Some(WELCOME));
    assert_eq!(client.out_line().await, None);
    server.stop().await;
}

#[tokio::test]
async fn prints_others_messages_and_quits_on_slash_quit() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut observer = Peer::plain(&url).await;
    let mut client = Proc::spawn(CLIENT, &[&url, "--nick", "carol"], &[]);
    assert_eq!(client.out_line().await.as_deref(), Some(WELCOME));
    assert_eq!(joined_name(&mut observer).await, "carol");

    observer.send("hello carol").await;
    let expected = format!("{}: hello carol", observer.name());
    assert_eq!(client.out_line().await, Some(expected));
    client.type_line("hi back").await;
    observer.expect("carol: hi back").await;
    client.type_line("/quit").await;
    assert_eq!(client.exit_code().await, 0);
    observer.expect("* carol left lobby").await;
    server.stop().await;
}

#[tokio::test]
async fn no_reconnect_exits_1_with_a_clear_line() {
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}");
    let mut client = Proc::spawn(CLIENT, &[&url, "--no-reconnect"], &[]);
    let line = client.err_until("cannot connect").await;
    assert_eq!(
        line,
        format!("cannot connect to {url}: connection refused (is the server running?)")
    );
    assert_eq!(client.exit_code().await, 1);
}

#[tokio::test]
async fn url_comes_from_the_environment() {
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}");
    let mut client = Proc::spawn(CLIENT, &["--no-reconnect"], &[("WSCHAT_URL", &url)]);
    let line = client.err_until("cannot connect").await;
    assert!(
        line.starts_with(&format!("cannot connect to {url}:")),
        "{line}"
    );
    assert_eq!(client.exit_code().await, 1);
}

#[tokio::test]
async fn retries_until_the_server_comes_up() {
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}");
    let mut client = Proc::spawn(CLIENT, &[&url, "--nick", "dave"], &[]);
    client.err_until("cannot connect").await;
    let wait = client.err_until("reconnecting in ").await;
    assert_eq!(wait, "reconnecting in 1s");

    let server = TestServer::on_port(port, |_| {}).await;
    client.err_until("connected to").await;
    assert_eq!(client.out_line().await.as_deref(), Some(WELCOME));
    let mut observer = Peer::plain(&url).await;
    client.type_line("made it").await;
    // dave's join and rename notices may come before or after this observer.
    loop {
        let line = observer.text().await;
        if line == "dave: made it" {
            break;
        }
        assert!(line.starts_with("* "), "unexpected line {line:?}");
    }
    client.close_stdin();
    assert_eq!(client.exit_code().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn reconnects_after_a_server_restart_and_sends_queued_lines() {
    let server = TestServer::start().await;
    let port = server.addr.port();
    let url = server.url();
    let mut client = Proc::spawn(CLIENT, &[&url, "--nick", "erin"], &[]);
    let mut observer = Peer::plain(&url).await;
    client.type_line("before").await;
    loop {
        // The join and rename notices come first (order depends on timing).
        if observer.text().await == "erin: before" {
            break;
        }
    }

    server.stop().await;
    client.err_until("connection lost, reconnecting in ").await;
    client.type_line("while away").await;

    let server = TestServer::on_port(port, |_| {}).await;
    client.err_until("connected to").await;
    // Whether the queued line went out before or after this observer came,
    // it sees it exactly once: live, or in the history replay on joining.
    let mut observer = Peer::plain_raw(&url).await;
    observer.expect(WELCOME).await;
    let mut seen = 0;
    client.type_line("after").await;
    loop {
        let line = observer.text().await;
        if line == "erin: while away" {
            seen += 1;
        }
        if line == "erin: after" {
            break;
        }
    }
    assert_eq!(seen, 1);
    client.close_stdin();
    assert_eq!(client.exit_code().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn room_flag_and_timestamps() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut observer = Peer::plain(&url).await;
    observer.send("/join den").await;
    observer
        .expect(&format!("* {} joined den", observer.name()))
        .await;

    let mut client = Proc::spawn(CLIENT, &[&url, "--room", "Den", "--timestamps"], &[]);
    let welcome = client.out_line().await.expect("welcome");
    assert!(welcome.ends_with(&format!("] {WELCOME}")), "{welcome}");
    let joined = observer.text().await;
    assert!(joined.ends_with(" joined den"), "{joined}");

    observer.send("in the den").await;
    let line = client.out_line().await.expect("message");
    let (stamp, rest) = line.split_once("] ").expect("[HH:MM:SS] prefix");
    assert_eq!(rest, format!("{}: in the den", observer.name()));
    let stamp = stamp.strip_prefix('[').expect("[");
    assert_eq!(stamp.len(), 8, "{stamp}");
    assert!(
        stamp.chars().all(|c| c.is_ascii_digit() || c == ':'),
        "{stamp}"
    );
    client.close_stdin();
    assert_eq!(client.exit_code().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn bad_room_flag_is_a_usage_error() {
    let mut client = Proc::spawn(CLIENT, &["--room", "no way"], &[]);
    let line = client.err_until("invalid room").await;
    assert!(line.starts_with("error: invalid room name"), "{line}");
    assert_eq!(client.exit_code().await, 2);
}

#[tokio::test]
async fn piped_client_paces_itself_to_the_server_rate() {
    // Three at once, then two per second: twelve lines need pacing.
    let server = TestServer::with(|c| {
        c.rate = 20;
        c.rate_burst = 3;
    })
    .await;
    let url = server.url();
    let mut observer = Peer::plain(&url).await;
    let mut client = Proc::spawn(CLIENT, &[&url, "--nick", "pace"], &[]);
    for n in 0..12 {
        client.type_line(&format!("line {n}")).await;
    }
    client.close_stdin();
    let mut next = 0;
    while next < 12 {
        let line = observer.text().await;
        assert!(!line.starts_with('!'), "{line}");
        if let Some(n) = line.strip_prefix("pace: line ") {
            assert_eq!(n, next.to_string(), "in order, none missing");
            next += 1;
        }
    }
    assert_eq!(client.exit_code().await, 0);
    server.stop().await;
}

/// The client, run with `args`, says `line` (and nothing else) and exits 2.
async fn says_once_and_exits_2(args: &[&str], line: &str) {
    let mut client = Proc::spawn(CLIENT, args, &[]);
    assert_eq!(client.exit_code().await, 2, "{args:?}");
    assert_eq!(client.err_rest().await, [line]);
}

#[tokio::test]
async fn what_retrying_cannot_fix_is_said_once_with_exit_2() {
    let server = TestServer::start().await;
    let addr = server.addr;
    says_once_and_exits_2(
        &[&format!("http://{addr}")],
        &format!("error: http://{addr} is not a WebSocket URL (ws:// or wss://): use ws://{addr}"),
    )
    .await;
    // A path the server does not serve: 404.
    says_once_and_exits_2(
        &[&format!("ws://{addr}/nowhere")],
        &format!(
            "cannot connect to ws://{addr}/nowhere: the server refused the connection (HTTP 404)"
        ),
    )
    .await;
    // TLS to a plain server: told at once which scheme to use.
    says_once_and_exits_2(
        &[&format!("wss://{addr}")],
        &format!(
            "cannot connect to wss://{addr}: the server does not speak TLS here (try ws:// instead of wss://)"
        ),
    )
    .await;
    // A nick that could never be taken, before connecting at all.
    says_once_and_exits_2(
        &[&format!("ws://{addr}"), "--nick", "no way!"],
        r#"error: invalid nickname "no way!": use 1-24 of A-Z a-z 0-9 _ -"#,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_bare_address_means_ws_and_the_client_says_who_and_where_you_are() {
    let server = TestServer::start().await;
    let mut client = Proc::spawn(
        CLIENT,
        &[&server.addr.to_string(), "--nick", "wren", "--room", "nest"],
        &[],
    );
    client.err_until("* you are wren in nest").await;
    // A note to oneself is shown once, and no-op commands are confirmed.
    client.type_line("/msg wren remember the milk").await;
    client.type_line("/join nest").await;
    client.type_line("/nick wren").await;
    let mut lines = Vec::new();
    while lines.len() < 3 {
        let line = client.out_line().await.expect("transcript");
        if line != WELCOME {
            lines.push(line);
        }
    }
    assert_eq!(
        lines,
        [
            "[private] wren: remember the milk",
            "* you are already in nest",
            "* you are already wren",
        ]
    );
    client.type_line("/quit").await;
    assert_eq!(client.exit_code().await, 0);
    server.stop().await;
}

#[test]
fn help_lists_the_chat_commands() {
    let output = std::process::Command::new(CLIENT)
        .arg("--help")
        .output()
        .expect("run");
    let help = String::from_utf8(output.stdout).expect("utf-8");
    for command in [
        "/nick NAME",
        "/join ROOM",
        "/msg NICK TEXT",
        "/who",
        "/rooms",
        "/quit",
    ] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
}
