//! Off loopback, a server shows strangers no addresses and serves only the
//! names it is known by: guests get a guest name, and a page that had its
//! own name resolve to the server (DNS rebinding) is refused.

mod common;

use common::{Peer, TestServer, http_request, spawn_server, within};
use wschat::protocol::{ServerFrame, WELCOME};

/// An upgrade request naming `host`.
fn upgrade_naming(host: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// Whether `name` is what a guest is called: `guest-` and four digits.
fn is_guest_name(name: &str) -> bool {
    name.strip_prefix("guest-")
        .is_some_and(|n| n.len() == 4 && n.bytes().all(|b| b.is_ascii_digit()))
}

#[tokio::test]
async fn off_loopback_a_connection_without_a_nick_is_a_guest_not_an_address() {
    let server = TestServer::listening("0.0.0.0", 0, |_| {}).await;
    let url = server.url();
    let mut a = Peer::plain_raw(&url).await;
    a.expect(WELCOME).await;
    let joined = a.text().await;
    let guest = joined
        .strip_prefix("* ")
        .and_then(|rest| rest.strip_suffix(" joined lobby"))
        .unwrap_or_else(|| panic!("expected a join notice, got {joined:?}"))
        .to_owned();
    assert!(is_guest_name(&guest), "{guest:?}");
    let mut b = Peer::plain_raw(&url).await;
    b.expect(WELCOME).await;
    let b_joined = b.text().await;
    assert!(!b_joined.contains(&b.addr.to_string()), "{b_joined:?}");
    let notice = a.text().await;
    assert!(!notice.contains(&b.addr.to_string()), "{notice:?}");
    a.send("hello").await;
    b.expect(&format!("{guest}: hello")).await;
    a.send("/who").await;
    let who = a.text().await;
    assert!(who.starts_with("* 2 in lobby: "), "{who:?}");
    assert!(!who.contains("127.0.0.1"), "{who:?}");
    // Nobody can take a guest's name, or any name of that shape.
    b.send(&format!("/nick {guest}")).await;
    let refused = b.text().await;
    assert!(
        refused.starts_with("! invalid nickname") && refused.contains("given by the server"),
        "{refused:?}"
    );
    // JSON peers get it in the welcome.
    let mut c = Peer::json(&url).await;
    let ServerFrame::Welcome { nick, .. } = c.frame().await else {
        panic!("expected a welcome");
    };
    assert!(is_guest_name(&nick), "{nick:?}");
    server.stop().await;
}

#[tokio::test]
async fn show_addresses_names_guests_by_address_off_loopback_too() {
    let server = TestServer::listening("0.0.0.0", 0, |c| c.show_addresses = true).await;
    // `plain` waits for `* IP:PORT joined lobby`.
    let [mut a, mut b] = common::plain_peers(&server.url()).await;
    a.send("hi").await;
    b.expect(&format!("{}: hi", a.addr)).await;
    server.stop().await;
}

#[tokio::test]
async fn on_loopback_a_connection_without_a_nick_is_its_address() {
    // The exercise's behaviour: `IP:PORT: message`.
    let server = TestServer::start().await;
    let [mut a, mut b] = common::plain_peers(&server.url()).await;
    a.send("hi").await;
    b.expect(&format!("{}: hi", a.addr)).await;
    server.stop().await;
}

#[tokio::test]
async fn off_loopback_without_a_token_only_known_host_names_are_served() {
    let server = TestServer::listening("0.0.0.0", 0, |c| {
        c.allowed_hosts = vec!["chat.example.org".into()];
    })
    .await;
    let addr = server.addr;
    let port = addr.port();
    for (host, status) in [
        (format!("127.0.0.1:{port}"), 101),
        (format!("localhost:{port}"), 101),
        (format!("chat.example.org:{port}"), 101),
        (format!("rebound.example:{port}"), 403),
        (format!("127.0.0.1:{port}@rebound.example"), 400),
    ] {
        assert_eq!(
            http_request(addr, &upgrade_naming(&host)).await,
            status,
            "{host}"
        );
    }
    server.stop().await;
    // With a token, the token is the check.
    let server = TestServer::listening("0.0.0.0", 0, |c| c.token = Some("t".into())).await;
    let request = upgrade_naming("rebound.example")
        .replace("\r\n\r\n", "\r\nAuthorization: Bearer t\r\n\r\n");
    assert_eq!(http_request(server.addr, &request).await, 101);
    server.stop().await;
}

#[tokio::test]
async fn listening_off_loopback_without_a_token_warns_at_start() {
    let (mut server, _) = spawn_server(&["--host", "0.0.0.0"]).await;
    let line = server.err_until("without --token").await;
    assert!(line.contains("WARN"), "{line:?}");
    server.signal("TERM");
    assert_eq!(within("server exit", server.exit_code()).await, 0);
    let (mut server, _) = spawn_server(&["--host", "0.0.0.0", "--token", "t"]).await;
    server.signal("TERM");
    let rest = server.err_rest().await;
    assert!(
        !rest.iter().any(|l| l.contains("without --token")),
        "{rest:?}"
    );
}
