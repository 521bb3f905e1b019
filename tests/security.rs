//! Token authentication, origin checks and TLS.

mod common;

use std::path::PathBuf;

use common::{Proc, RawPeer, TestServer, spawn_server};
use tempfile::TempDir;
use wschat::protocol::WELCOME;

const CLIENT: &str = env!("CARGO_BIN_EXE_client");
const SERVER: &str = env!("CARGO_BIN_EXE_server");

#[tokio::test]
async fn token_is_required_before_any_websocket_traffic() {
    let server = TestServer::with(|c| c.token = Some("s3cret".into())).await;
    let addr = server.addr;
    assert_eq!(RawPeer::upgrade(addr, "/", &[]).await.0, 401);
    assert_eq!(
        RawPeer::upgrade(addr, "/", &["Authorization: Bearer nope"])
            .await
            .0,
        401
    );
    assert_eq!(RawPeer::upgrade(addr, "/?token=s3cre", &[]).await.0, 401);
    assert_eq!(
        RawPeer::upgrade(addr, "/", &["Authorization: Bearer s3cret"])
            .await
            .0,
        101
    );
    assert_eq!(RawPeer::upgrade(addr, "/ws?token=s3cret", &[]).await.0, 101);
    server.stop().await;
}

#[tokio::test]
async fn client_token_flag_and_environment() {
    // The server takes its token from WSCHAT_TOKEN...
    let mut server = Proc::spawn(SERVER, &["--port", "0"], &[("WSCHAT_TOKEN", "opensesame")]);
    let line = server.err_until("listening on ").await;
    let url = line
        .split("listening on ")
        .nth(1)
        .expect("url")
        .trim()
        .to_owned();
    let addr: std::net::SocketAddr = url.trim_start_matches("ws://").parse().expect("addr");
    assert_eq!(RawPeer::upgrade(addr, "/", &[]).await.0, 401);

    // ...a client without it is told what is wrong, once: no retrying...
    let mut client = Proc::spawn(CLIENT, &[&url], &[]);
    let line = client.err_until("cannot connect").await;
    assert_eq!(
        line,
        format!("cannot connect to {url}: the server wants a token (HTTP 401): pass --token")
    );
    assert_eq!(client.exit_code().await, 2);

    // ...and clients with it (flag or environment) chat.
    let mut observer = Proc::spawn(CLIENT, &[&url], &[("WSCHAT_TOKEN", "opensesame")]);
    assert_eq!(observer.out_line().await.as_deref(), Some(WELCOME));
    let mut sender = Proc::spawn(
        CLIENT,
        &[&url, "--token", "opensesame", "--nick", "tok"],
        &[],
    );
    sender.type_line("with a token").await;
    sender.close_stdin();
    loop {
        let line = observer.out_line().await.expect("observer transcript");
        if line == "tok: with a token" {
            break;
        }
    }
    assert_eq!(sender.exit_code().await, 0);
    server.signal("TERM");
    assert_eq!(server.exit_code().await, 0);
}

#[tokio::test]
async fn cross_site_browser_handshakes_are_refused() {
    let server = TestServer::with(|c| {
        c.allowed_origins = vec!["https://ok.example".into()];
        c.token = Some("t".into());
    })
    .await;
    let addr = server.addr;
    let own = format!("Origin: http://{addr}");
    let upgrade = |origin: &str| {
        let origin = origin.to_owned();
        async move {
            let headers: Vec<&str> = if origin.is_empty() {
                vec![]
            } else {
                vec![origin.as_str()]
            };
            RawPeer::upgrade(addr, "/?token=t", &headers).await.0
        }
    };
    assert_eq!(upgrade("").await, 101, "no Origin: a command-line tool");
    assert_eq!(upgrade(&own).await, 101, "the server's own origin");
    assert_eq!(upgrade("Origin: https://ok.example").await, 101, "listed");
    assert_eq!(upgrade("Origin: https://evil.example").await, 403);
    assert_eq!(upgrade("Origin: null").await, 403);
    // A valid token does not make a cross-site page acceptable.
    assert_eq!(
        RawPeer::upgrade(addr, "/?token=t", &["Origin: https://evil.example"])
            .await
            .0,
        403
    );
    server.stop().await;
}

/// A self-signed certificate for localhost and 127.0.0.1, written as PEM files.
fn certificate() -> (TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, made.cert.pem()).expect("write cert");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key");
    (dir, cert, key)
}

#[tokio::test]
async fn tls_serves_wss_to_clients_that_trust_the_certificate() {
    let (_dir, cert, key) = certificate();
    let (cert, key) = (cert.to_str().expect("utf8"), key.to_str().expect("utf8"));
    let (mut server, url) = spawn_server(&["--tls-cert", cert, "--tls-key", key]).await;
    assert!(url.starts_with("wss://127.0.0.1:"), "{url}");
    let url = url.replace("127.0.0.1", "localhost");

    let mut observer = Proc::spawn(CLIENT, &[&url, "--ca-cert", cert], &[]);
    assert_eq!(observer.out_line().await.as_deref(), Some(WELCOME));
    let mut sender = Proc::spawn(CLIENT, &[&url, "--ca-cert", cert, "--nick", "tess"], &[]);
    sender.type_line("over tls").await;
    sender.close_stdin();
    loop {
        if observer.out_line().await.expect("transcript") == "tess: over tls" {
            break;
        }
    }
    assert_eq!(sender.exit_code().await, 0);

    // Without the CA the client refuses the server's certificate, and
    // does not try again: that would not help.
    let mut doubter = Proc::spawn(CLIENT, &[&url], &[]);
    let line = doubter.err_until("cannot connect").await;
    assert!(
        line.contains("certificate")
            && line.ends_with("(for a self-signed server, pass --ca-cert)"),
        "{line}"
    );
    assert_eq!(doubter.exit_code().await, 2);

    // A plain ws:// client is told to try wss://, and the server carries on.
    let plain = url.replace("wss://", "ws://");
    let mut confused = Proc::spawn(CLIENT, &[&plain], &[]);
    let line = confused.err_until("cannot connect").await;
    assert!(
        line.ends_with("(if the server uses TLS, try wss://)"),
        "{line}"
    );
    assert_eq!(confused.exit_code().await, 2);
    observer.close_stdin();
    assert_eq!(observer.exit_code().await, 0);
    server.signal("TERM");
    assert_eq!(server.exit_code().await, 0);
}

#[tokio::test]
async fn bad_certificates_are_one_clear_line() {
    let (dir, cert, key) = certificate();
    let (cert, key) = (cert.to_str().expect("utf8"), key.to_str().expect("utf8"));
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().expect("utf8");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let garbage = garbage.to_str().expect("utf8");

    let cases = [
        (
            vec!["--tls-cert", missing, "--tls-key", key],
            format!("error: cannot read certificate {missing}: no such file or directory"),
        ),
        (
            vec!["--tls-cert", garbage, "--tls-key", key],
            format!("error: bad certificate {garbage}: no PEM certificate in it"),
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", garbage],
            format!("error: bad private key {garbage}: no PEM private key in it"),
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", cert],
            format!("error: bad private key {cert}: no PEM private key in it"),
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["--port", "0"];
        all.extend(args);
        let mut server = Proc::spawn(SERVER, &all, &[]);
        assert_eq!(server.exit_code().await, 1, "{expected}");
        assert_eq!(server.err_rest().await, [expected]);
    }

    // Half of the pair is a usage error.
    let mut server = Proc::spawn(SERVER, &["--tls-cert", cert], &[]);
    assert_eq!(server.exit_code().await, 2);
}
