//! The interactive client in a real pseudo-terminal.

mod common;

use common::{Peer, TestServer, WAIT};
use rexpect::session::{PtySession, spawn_command};

const CLIENT: &str = env!("CARGO_BIN_EXE_client");

/// Runs a blocking step against the terminal session off the async runtime.
async fn step<T: Send + 'static>(
    session: PtySession,
    f: impl FnOnce(&mut PtySession) -> T + Send + 'static,
) -> (PtySession, T) {
    tokio::task::spawn_blocking(move || {
        let mut session = session;
        let out = f(&mut session);
        (session, out)
    })
    .await
    .expect("terminal step")
}

#[tokio::test]
async fn a_partial_line_survives_an_incoming_message() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut observer = Peer::plain(&url).await;

    let mut command = std::process::Command::new(CLIENT);
    command.args([url.as_str(), "--nick", "pat"]);
    let timeout_ms = u64::try_from(WAIT.as_millis()).expect("fits");
    let session = spawn_command(command, Some(timeout_ms)).expect("spawn in a pty");
    let (session, welcome) =
        step(session, |s| s.exp_string("Welcome to chat! Type a message")).await;
    welcome.expect("welcome line");
    // The nick travels in the handshake: one notice, under the nick.
    observer.expect("* pat joined lobby").await;

    // Type half a line, without Enter.
    let (session, typed) = step(session, |s| {
        s.send("partial te")?;
        s.flush()?;
        s.exp_string("partial te")
    })
    .await;
    typed.expect("echo of the typed text");

    // A message arrives while the line is half typed...
    observer.send("interrupting you").await;
    let (session, shown) = step(session, |s| {
        s.exp_string("interrupting you")?;
        // ...and the prompt with the partial line is drawn again below it.
        s.exp_string("> partial te")
    })
    .await;
    shown.expect("incoming line above a redrawn prompt");

    // Finishing the line sends it whole.
    let (session, sent) = step(session, |s| s.send_line("xt")).await;
    sent.expect("send rest of line");
    observer.expect("pat: partial text").await;

    // Ctrl+D ends the session cleanly.
    let (_session, ended) = step(session, |s| {
        s.send_control('d')?;
        s.exp_eof()?;
        s.process().wait()
    })
    .await;
    // nix's WaitStatus, read through its Debug form: Exited(Pid(N), CODE).
    let status = format!("{:?}", ended.expect("client exit"));
    assert!(
        status.starts_with("Exited(") && status.ends_with(", 0)"),
        "{status}"
    );
    observer.expect("* pat left lobby").await;
    server.stop().await;
}
