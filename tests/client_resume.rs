//! The client resumes after losing its connection: nothing missed, nothing twice.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::{Peer, Proc, TestServer, within};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const CLIENT: &str = env!("CARGO_BIN_EXE_client");

/// A TCP forwarder on loopback whose live connections the test can cut,
/// as a network failure would, while new ones keep going through.
struct Cutter {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Cutter {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let registry = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                registry.lock().expect("links").push(link);
            }
        });
        Self {
            addr,
            links,
            accept,
        }
    }

    /// Drops every connection that is open now (both of its sockets).
    fn cut(&self) {
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Reads the client's transcript until `sam: N` for `last`, returning every N seen.
async fn read_numbers_until(client: &mut Proc, last: usize, seen: &mut Vec<usize>) {
    loop {
        let line = client.out_line().await.expect("transcript ended early");
        if let Some(n) = line.strip_prefix("sam: ") {
            let n: usize = n.parse().expect("a number");
            seen.push(n);
            if n == last {
                return;
            }
        }
    }
}

#[tokio::test]
async fn resumes_after_a_cut_connection_with_every_message_once_in_order() {
    let server = TestServer::with(|c| c.rate = 0).await;
    let cutter = Cutter::start(server.addr).await;
    let url = format!("ws://{}", cutter.addr);

    let mut sender = Peer::plain(&server.url()).await;
    sender.send("/nick sam").await;
    sender
        .expect(&format!("* {} is now known as sam", sender.name()))
        .await;

    let mut client = Proc::spawn(CLIENT, &[&url, "--nick", "rita"], &[]);
    client.err_until("connected to").await;
    // The nick travels in the handshake: one notice, under the nick.
    sender.expect("* rita joined lobby").await;

    let mut seen = Vec::new();
    for n in 0..100 {
        sender.send(&n.to_string()).await;
    }
    read_numbers_until(&mut client, 49, &mut seen).await;
    cutter.cut();
    client.err_until("connection lost, reconnecting in").await;
    // Sent while the client is away: it must get these from history.
    for n in 100..150 {
        sender.send(&n.to_string()).await;
    }
    client.err_until("connected to").await;
    // Sent after it is back: live (or replay, if it is still resuming).
    for n in 150..200 {
        sender.send(&n.to_string()).await;
    }
    within(
        "the whole transcript",
        read_numbers_until(&mut client, 199, &mut seen),
    )
    .await;

    let expected: Vec<usize> = (0..200).collect();
    assert_eq!(seen, expected, "every message exactly once, in order");
    client.close_stdin();
    assert_eq!(client.exit_code().await, 0);
    drop(cutter);
    server.stop().await;
}

#[tokio::test]
async fn resumes_in_its_room_after_the_server_restarts() {
    let server = TestServer::start().await;
    let port = server.addr.port();
    let url = server.url();
    let mut client = Proc::spawn(CLIENT, &[&url, "--nick", "ivy", "--room", "garden"], &[]);
    client.err_until("connected to").await;
    let mut sender = Peer::plain(&url).await;
    sender.send("/join garden").await;
    sender.send("/nick sam").await;
    for n in 0..3 {
        sender.send(&n.to_string()).await;
    }
    let mut seen = Vec::new();
    read_numbers_until(&mut client, 2, &mut seen).await;

    // A new server: in-memory history and ids start again from 1.
    server.stop().await;
    client.err_until("connection lost").await;
    let server = TestServer::on_port(port, |_| {}).await;
    let mut sender = Peer::plain(&url).await;
    sender.send("/join garden").await;
    sender.send("/nick sam").await;
    for n in 3..6 {
        sender.send(&n.to_string()).await;
    }
    read_numbers_until(&mut client, 5, &mut seen).await;
    assert_eq!(seen, [0, 1, 2, 3, 4, 5]);
    client.close_stdin();
    assert_eq!(client.exit_code().await, 0);
    server.stop().await;
}
