//! The chat server: binding, the accept loop, graceful shutdown and shared state.
//!
//! [`run`] opens the backends, then races the accept loop against a shutdown
//! future. Every connection task watches one cancellation token and is
//! tracked, so shutdown can close every peer with 1001 and wait (bounded)
//! until all of them are done.

pub mod admission;
mod commands;
pub mod fanout;
pub mod frames;
pub mod handshake;
pub mod history;
pub mod metrics;
pub mod presence;
pub mod redis;
mod session;
pub mod web;
pub mod wire;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::ServerConfig;
use crate::error::{Error, Result, describe_io};
use admission::Admission;
use fanout::{Fanout, MemoryFanout, RedisFanout};
use history::{History, MemoryHistory, RedisHistory, SqliteHistory};
use metrics::{BackendMetrics, Metrics, Snapshot};
use presence::{MemoryPresence, Presence, RedisPresence};

/// Pending connections the kernel queues for us; connect bursts overflow 128.
const LISTEN_BACKLOG: u32 = 4096;
/// How long shutdown waits for connections to finish their close handshakes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);
/// How long shutdown waits for a shared presence to write the departures.
const PRESENCE_GRACE: Duration = Duration::from_secs(1);

/// Identifies one connection among all the nodes of a chat: a random node
/// id drawn at start, and a sequence number within the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// The node the connection is on.
    pub node: u64,
    /// Its number on that node.
    pub seq: u64,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.node, self.seq)
    }
}

/// The bytes waiting in the send queues of connections whose queue holds
/// at least [`QueuedBytes::COUNTED_FROM`] (a queue that keeps up costs no
/// shared write), and how many such connections there are: what
/// `--max-queued-bytes` bounds.
#[derive(Debug, Default)]
pub struct QueuedBytes {
    /// Their bytes, together.
    pub total: std::sync::atomic::AtomicUsize,
    /// How many connections count.
    pub laggards: std::sync::atomic::AtomicUsize,
}

impl QueuedBytes {
    /// A queue counts once it holds this much.
    pub const COUNTED_FROM: usize = 64 << 10;

    /// A connection's counted bytes go from `before` to `now`; returns the
    /// total and the number of connections counted after the change.
    pub fn change(&self, before: usize, now: usize) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let total = if now >= before {
            self.total.fetch_add(now - before, Relaxed) + (now - before)
        } else {
            self.total.fetch_sub(before - now, Relaxed) - (before - now)
        };
        let laggards = match (before > 0, now > 0) {
            (false, true) => self.laggards.fetch_add(1, Relaxed) + 1,
            (true, false) => self.laggards.fetch_sub(1, Relaxed) - 1,
            _ => self.laggards.load(Relaxed),
        };
        (total, laggards)
    }
}

/// State every connection task shares.
#[derive(Debug)]
pub struct Shared {
    /// The server's settings.
    pub config: ServerConfig,
    /// Publishing to rooms and following them.
    pub fanout: Arc<dyn Fanout>,
    /// Stored messages.
    pub history: Arc<dyn History>,
    /// Nicks, rooms' members and private delivery.
    pub presence: Arc<dyn Presence>,
    /// Who may connect.
    pub policy: handshake::Policy,
    /// Handshake places, connection slots and per-address counts.
    pub admission: Arc<Admission>,
    /// Refused handshakes, logged at a bounded rate.
    pub refusals: handshake::RefusalLog,
    /// What `/metrics` reports.
    pub metrics: Arc<Metrics>,
    /// Whether a connection without a nick is a guest name rather than
    /// its `IP:PORT` (off loopback, unless `--show-addresses`).
    pub guest_names: bool,
    /// What waits in the send queues of every connection far behind.
    pub queued: QueuedBytes,
    /// Each room's budget of join, leave and rename notices
    /// (`--notice-rate`; `None`: no limit).
    pub notices: Option<crate::limit::SharedBuckets>,
    node: u64,
    next_seq: AtomicU64,
}

impl Shared {
    /// Opens the backends the settings ask for.
    ///
    /// # Errors
    /// When the history database or Redis cannot be used.
    async fn open(config: ServerConfig, local: SocketAddr) -> Result<Self> {
        let node = fastrand::u64(..);
        let (fanout, history, presence, backend) = open_backends(&config, node).await?;
        let (rate_per_ip, burst_per_ip) = config.budget_per_ip();
        Ok(Self {
            fanout,
            history,
            presence,
            policy: handshake::Policy::from_config(&config, local),
            admission: Arc::new(
                Admission::new(
                    config.max_handshakes,
                    config.max_connections,
                    config.max_per_ip,
                )
                .with_budget(rate_per_ip, burst_per_ip)
                .with_prefixes(config.ip_prefixes.0, config.ip_prefixes.1),
            ),
            refusals: handshake::RefusalLog::default(),
            metrics: Arc::new(Metrics::new(backend)),
            guest_names: !local.ip().is_loopback() && !config.show_addresses,
            queued: QueuedBytes::default(),
            notices: crate::limit::SharedBuckets::new(
                config.notice_rate,
                config.notice_rate.saturating_mul(2),
            ),
            node,
            next_seq: AtomicU64::new(1),
            config,
        })
    }

    fn next_conn_id(&self) -> ConnId {
        ConnId {
            node: self.node,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// `None` when the server can serve; otherwise why not (for `/healthz`).
    pub fn trouble(&self) -> Option<String> {
        self.history.trouble()
    }

    /// The values `/metrics` reads from where they are kept.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            connections: self.admission.connections() as u64,
            rooms: self.presence.room_count() as u64,
            log_lines_dropped: crate::logging::dropped_lines(),
            history_evicted: self.history.evicted(),
        }
    }
}

/// The fan-out, history and presence the settings ask for, with the
/// history backend's metrics when it has any.
pub type Backends = (
    Arc<dyn Fanout>,
    Arc<dyn History>,
    Arc<dyn Presence>,
    Option<BackendMetrics>,
);

/// Opens the backends: Redis for a chat of several nodes, else memory with
/// history in memory or in a SQLite file.
///
/// # Errors
/// When the history database or Redis cannot be used.
pub async fn open_backends(config: &ServerConfig, node: u64) -> Result<Backends> {
    if let Some(url) = &config.redis {
        let backend = BackendMetrics::new("redis");
        let link =
            redis::RedisLink::connect(url, &config.redis_prefix, node, backend.clone()).await?;
        let (fanout, inbox) = RedisFanout::start(link.clone(), config.room_bounds());
        let fanout: Arc<dyn Fanout> = fanout;
        let history = Arc::new(RedisHistory::new(link.clone(), config.history));
        let ttl = Duration::from_secs(config.presence_ttl);
        let presence = RedisPresence::start(link, fanout.clone(), inbox, ttl).await;
        return Ok((fanout, history, presence, Some(backend)));
    }
    let fanout: Arc<dyn Fanout> = Arc::new(MemoryFanout::new(config.room_bounds()));
    let presence = Arc::new(MemoryPresence::default());
    let Some(path) = &config.db else {
        let history = Arc::new(
            MemoryHistory::new(config.history, fanout.clone())
                .with_budget(config.max_history_bytes),
        );
        return Ok((fanout, history, presence, None));
    };
    let backend = BackendMetrics::new("sqlite");
    let history = SqliteHistory::open(
        path,
        config.retain,
        config.db_sync,
        fanout.clone(),
        backend.clone(),
    )
    .map_err(|source| Error::Database {
        path: path.clone(),
        source,
    })?;
    Ok((fanout, Arc::new(history), presence, Some(backend)))
}

/// Locks a mutex, recovering the data if another thread panicked while holding it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    let fail = |source: std::io::Error| Error::Listen {
        addr: shown.clone(),
        source,
    };
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await
        .map_err(fail)?
        .next()
        .ok_or_else(|| fail(std::io::Error::other("no address found")))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(addr).map_err(fail)?;
    socket.listen(LISTEN_BACKLOG).map_err(fail)
}

/// Serves chat on `listener` until `shutdown` completes, then closes every
/// connection with 1001 and returns once they are gone (bounded).
///
/// # Errors
/// When the TLS files or the history database cannot be used, or the
/// listener's address cannot be read.
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
    let shared = Arc::new(Shared::open(config, local).await?);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    tokio::spawn(forget_idle_rooms(shared.clone(), token.clone()));
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    info!("listening on {scheme}://{local}");
    if !local.ip().is_loopback() && shared.policy.token.is_none() {
        warn!(
            "listening off loopback without --token: anyone who can reach {local} may chat; \
             only Host names it knows are served (add more with --allowed-host)"
        );
    }

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Every handshake place taken: close at once, before
                    // spending anything on this connection.
                    let Some(arriving) = shared.admission.arrive(peer.ip()) else {
                        debug!("{peer}: closed: no handshake place for it");
                        // A reset: no FIN exchange and no TIME_WAIT entry left
                        // on the server, which a client retrying in a tight
                        // loop would otherwise pile up by the thousand.
                        let _ = stream.set_zero_linger();
                        shared.metrics.resets_total.inc();
                        continue;
                    };
                    // Without this, Nagle holds small frames back for tens of ms.
                    let _ = stream.set_nodelay(true);
                    // The address the peer reached: a `Host` may name it.
                    let reached = stream.local_addr().ok().map(|a| a.ip());
                    let (shared, token) = (shared.clone(), token.clone());
                    match &tls {
                        None => {
                            tracker.spawn(session::serve(stream, peer, reached, arriving, shared, token));
                        }
                        Some(acceptor) => {
                            let accept = acceptor.accept(stream);
                            tracker.spawn(async move {
                                let within = shared.config.handshake_within();
                                match tokio::time::timeout(within, accept).await {
                                    Ok(Ok(stream)) => {
                                        session::serve(stream, peer, reached, arriving, shared, token).await;
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
    // Their departures told to the other servers of the chat (bounded).
    let _ = tokio::time::timeout(PRESENCE_GRACE, shared.presence.close()).await;
    shared.history.close();
    Ok(())
}

/// Lets the history forget rooms that have been empty and silent for
/// `--room-ttl`, checking every minute (or every TTL, if shorter), until
/// `shutdown`.
async fn forget_idle_rooms(shared: Arc<Shared>, shutdown: CancellationToken) {
    let ttl = Duration::from_secs(shared.config.room_ttl);
    let every = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let presence = &shared.presence;
        shared
            .history
            .forget_idle(ttl, &|room| presence.room_size(room) > 0);
    }
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
