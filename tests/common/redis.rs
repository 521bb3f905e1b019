//! A real `redis-server` for a test: its own process on a free port, no
//! persistence, gone when the test ends.

use std::process::Stdio;

use tokio::process::{Child, Command};

use super::{free_port, start_helper, within};

const REDIS_SERVER: &str = "redis-server";

/// A Redis server owned by one test.
pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl RedisServer {
    /// Starts one, or `None` (after saying why) when `redis-server` is not
    /// installed and this is not CI; under `CI=true` its absence fails.
    pub async fn start() -> Option<Self> {
        let installed = std::process::Command::new(REDIS_SERVER)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "redis-server is needed (apt-get install redis-server)"
            );
            eprintln!("SKIPPED: the Redis tests need redis-server (apt-get install redis-server)");
            return None;
        }
        Some(Self::on_port(free_port()).await)
    }

    /// Starts one on `port` and waits until it accepts connections.
    pub async fn on_port(port: u16) -> Self {
        let child = start_helper(
            Command::new(REDIS_SERVER)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"]),
            "redis-server",
            "Ready to accept connections",
        )
        .await;
        Self { port, child }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain connection for a test to look at or disturb Redis.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("client");
        within(
            "a Redis connection",
            client.get_multiplexed_async_connection(),
        )
        .await
        .expect("connect to Redis")
    }

    /// Kills it (as a crash would), losing everything it held.
    /// Sends redis-server a signal by name (`STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        super::send_signal(self.child.id().expect("running"), name);
    }

    pub async fn kill(mut self) -> u16 {
        let _ = self.child.kill().await;
        self.port
    }
}

/// A TCP proxy in front of Redis that can silently stop passing on what
/// Redis sends to the pub/sub connections open now, keeping them open: a
/// subscription that goes quiet without closing.
pub struct StallingProxy {
    pub port: u16,
    connections: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<Relay>>>>,
}

/// One proxied connection.
#[derive(Default)]
struct Relay {
    /// The client subscribed on it.
    pubsub: std::sync::atomic::AtomicBool,
    /// What Redis sends on it is dropped.
    stalled: std::sync::atomic::AtomicBool,
}

impl StallingProxy {
    /// Proxies a free local port to Redis on `upstream`.
    pub async fn start(upstream: u16) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<Relay>>>> =
            std::sync::Arc::default();
        let registry = connections.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let relay = std::sync::Arc::new(Relay::default());
                registry.lock().expect("registry").push(relay.clone());
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = relay.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 16 * 1024];
                    while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                        if memchr::memmem::find(&buf[..n], b"SUBSCRIBE").is_some() {
                            up.pubsub.store(true, Ordering::Relaxed);
                        }
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0; 16 * 1024];
                    while let Ok(n @ 1..) = server_read.read(&mut buf).await {
                        if relay.stalled.load(Ordering::Relaxed) {
                            continue;
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { port, connections }
    }

    /// `redis://127.0.0.1:PORT` through the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Silently drops, from now on, what Redis sends to every pub/sub
    /// connection not stalled yet; returns how many there were.
    pub fn stall_pubsub(&self) -> usize {
        use std::sync::atomic::Ordering;
        let connections = self.connections.lock().expect("registry");
        let mut stalled = 0;
        for relay in connections.iter() {
            if relay.pubsub.load(Ordering::Relaxed) && !relay.stalled.swap(true, Ordering::Relaxed)
            {
                stalled += 1;
            }
        }
        stalled
    }
}
