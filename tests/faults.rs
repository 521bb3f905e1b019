//! Faults: the server killed under traffic, and connection churn.

mod common;

use std::time::Duration;

use common::{Peer, Proc, RawPeer, spawn_server, within};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const CLIENT: &str = env!("CARGO_BIN_EXE_client");
const SERVER: &str = env!("CARGO_BIN_EXE_server");

#[tokio::test]
async fn every_client_reconnects_after_the_server_is_killed() {
    let (mut server, url) = spawn_server(&["--rate", "0"]).await;
    let port = url.rsplit(':').next().expect("port").to_owned();
    let mut clients = Vec::new();
    for n in 0..3 {
        let mut client = Proc::spawn(CLIENT, &[&url, "--nick", &format!("c{n}")], &[]);
        client.err_until("connected to").await;
        clients.push(client);
    }
    // Traffic in flight when the server dies.
    for n in 0..20 {
        clients[0].type_line(&format!("busy {n}")).await;
    }
    server.signal("KILL");
    let status = within("the killed server", server.child.wait())
        .await
        .expect("wait");
    assert_eq!(status.code(), None, "killed by a signal");
    for client in &mut clients {
        client.err_until("connection lost, reconnecting in").await;
    }

    let mut server = Proc::spawn(SERVER, &["--port", &port], &[]);
    server.err_until("listening on").await;
    for client in &mut clients {
        client.err_until("connected to").await;
    }
    clients[1].type_line("after the crash").await;
    for n in [0, 2] {
        loop {
            let line = clients[n].out_line().await.expect("transcript");
            if line == "c1: after the crash" {
                break;
            }
        }
    }
    for client in &mut clients {
        client.close_stdin();
        assert_eq!(client.exit_code().await, 0);
    }
    server.signal("TERM");
    assert_eq!(server.exit_code().await, 0);
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

#[tokio::test]
async fn a_thousand_connect_close_cycles_leak_nothing() {
    let (mut server, url) = spawn_server(&[]).await;
    let pid = server.child.id().expect("pid");
    let addr: std::net::SocketAddr = url.trim_start_matches("ws://").parse().expect("addr");
    // One full session first, so everything lazily created exists.
    Peer::plain(&url).await.close().await;
    let baseline = open_fds(pid);

    for n in 0..1000 {
        match n % 4 {
            // A clean WebSocket session.
            0 => Peer::plain(&url).await.close().await,
            // A WebSocket session dropped without a close frame.
            1 => drop(Peer::plain(&url).await),
            // A TCP reset after the upgrade.
            2 => Peer::plain(&url).await.reset(),
            // Half a handshake, then gone.
            _ => {
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                let _ = stream.write_all(b"GET / HTTP/1.1\r\nUpgrade: webs").await;
            }
        }
    }
    // The server notices each end on its own time: wait until it has.
    within("descriptors back to the baseline", async {
        while open_fds(pid) > baseline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(RawPeer::upgrade(addr, "/", &[]).await.0, 101);
    server.signal("TERM");
    assert_eq!(server.exit_code().await, 0);
}
