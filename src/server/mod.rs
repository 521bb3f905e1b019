//! The chat server: binding, the accept loop, graceful shutdown and shared state.
//!
//! [`run`] races the accept loop against a shutdown future. Every connection
//! task watches one cancellation token and is tracked, so shutdown can close
//! every peer with 1001 and wait (bounded) until all of them are done.

pub mod bus;
mod connection;
pub mod frames;
pub mod handshake;
pub mod hub;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::ServerConfig;
use crate::error::{Error, Result, describe_io};
use bus::{Bus, ConnId};
use hub::Hub;

/// Pending connections the kernel queues for us; connect bursts overflow 128.
const LISTEN_BACKLOG: u32 = 4096;
/// How long shutdown waits for connections to finish their close handshakes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// State every connection task shares.
#[derive(Debug)]
pub struct Shared {
    /// The server's settings.
    pub config: ServerConfig,
    /// Rooms, history and fan-out.
    pub bus: Bus,
    /// Nicks and presence.
    pub hub: Hub,
    /// Who may connect.
    pub policy: handshake::Policy,
    /// This history's generation, sent in `welcome`: the start time in ms,
    /// because in-memory history (and its ids) starts afresh on restart.
    pub epoch: u64,
    next_id: AtomicU64,
}

impl Shared {
    fn new(config: ServerConfig) -> Self {
        Self {
            bus: Bus::new(config.history, config.max_lag),
            hub: Hub::default(),
            policy: handshake::Policy::from_config(&config),
            epoch: crate::protocol::now_ms(),
            next_id: AtomicU64::new(1),
            config,
        }
    }

    fn next_conn_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Binds `host:port` with a large listen backlog.
///
/// # Errors
/// [`Error::Listen`] with a short reason (`address already in use`, ...).
pub async fn bind(host: &str, port: u16) -> Result<TcpListener> {
    let shown = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let fail = |reason: String| Error::Listen {
        addr: shown.clone(),
        reason,
    };
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| fail(describe_io(&e)))?
        .next()
        .ok_or_else(|| fail("no address found".into()))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| fail(describe_io(&e)))?;
    socket
        .set_reuseaddr(true)
        .map_err(|e| fail(describe_io(&e)))?;
    socket.bind(addr).map_err(|e| fail(describe_io(&e)))?;
    socket
        .listen(LISTEN_BACKLOG)
        .map_err(|e| fail(describe_io(&e)))
}

/// Serves chat on `listener` until `shutdown` completes, then closes every
/// connection with 1001 and returns once they are gone (bounded).
///
/// # Errors
/// Only if the listener's address cannot be read.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let local = listener.local_addr()?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
        _ => None,
    };
    let shared = Arc::new(Shared::new(config));
    let slots = Arc::new(Semaphore::new(shared.config.max_connections));
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    info!("listening on {scheme}://{local}");

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Without this, Nagle holds small frames back for tens of ms.
                    let _ = stream.set_nodelay(true);
                    let slot = slots.clone().try_acquire_owned().ok();
                    let (shared, token) = (shared.clone(), token.clone());
                    match &tls {
                        None => {
                            tracker.spawn(connection::serve(stream, peer, slot, shared, token));
                        }
                        Some(acceptor) => {
                            let accept = acceptor.accept(stream);
                            tracker.spawn(async move {
                                let within = shared.config.handshake_within();
                                match tokio::time::timeout(within, accept).await {
                                    Ok(Ok(stream)) => {
                                        connection::serve(stream, peer, slot, shared, token).await;
                                    }
                                    Ok(Err(err)) => debug!("{peer}: TLS handshake failed: {err}"),
                                    Err(_) => debug!("{peer}: TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Err(err) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    warn!("accept failed: {}", describe_io(&err));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }

    info!("shutting down: closing {} connection(s)", tracker.len());
    drop(listener);
    token.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!("{} connection(s) did not close in time", tracker.len());
    }
    Ok(())
}

/// A future that completes on Ctrl+C (SIGINT) or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is
/// first polled: call it before announcing that the server is ready, so a
/// signal sent right after that line still shuts down gracefully.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => {},
                _ = interrupt.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
