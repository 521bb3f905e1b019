//! Command-line flags of both binaries (clap derive; the doc comments are the help).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// `server`: the wschat chat server.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "server",
    version,
    about = "wschat: a self-hostable group chat over WebSocket"
)]
pub struct ServerConfig {
    /// Address to listen on.
    #[arg(long, env = "WSCHAT_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "WSCHAT_PORT", default_value_t = 2000)]
    pub port: u16,

    /// Log message text and per-frame detail (debug level).
    #[arg(short, long)]
    pub verbose: bool,

    /// Worker threads; 0 means one per available core. With one, everything
    /// runs on the main thread, which is cheaper than handing work between
    /// threads that share a core.
    #[arg(long, env = "WSCHAT_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// Messages each room keeps in memory.
    #[arg(long, default_value_t = 1000)]
    pub history: usize,

    /// Messages replayed to a connection when it enters a room.
    #[arg(long, default_value_t = 20)]
    pub history_on_join: usize,

    /// Longest message text, in bytes.
    #[arg(long, default_value_t = 4096)]
    pub max_message_bytes: usize,

    /// Largest WebSocket frame accepted, in bytes; a larger one closes with 1009.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Messages that may wait for one slow connection before it is closed with 1013.
    #[arg(long, default_value_t = 1024)]
    pub max_lag: usize,

    /// Concurrent connections; further handshakes get HTTP 503.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,

    /// Seconds between pings to each peer.
    #[arg(long, default_value_t = 30)]
    pub ping_interval: u64,

    /// Seconds of silence after which a peer is dropped.
    #[arg(long, default_value_t = 90)]
    pub idle_timeout: u64,

    /// Seconds a peer has to complete its handshake.
    #[arg(long, default_value_t = 10)]
    pub handshake_timeout: u64,

    /// Announce joins, leaves and renames only while a room has at most this
    /// many members (a connect storm would otherwise send everyone a notice
    /// per arrival); the connection concerned is always told.
    #[arg(long, default_value_t = 200)]
    pub announce_limit: usize,

    /// Messages allowed per connection per 10 seconds, on average (0: no limit).
    #[arg(long, default_value_t = 20)]
    pub rate: u32,

    /// Messages a connection may send at once before the rate applies.
    #[arg(long, default_value_t = 10)]
    pub rate_burst: u32,

    /// Require this secret at the handshake (`Authorization: Bearer` or `?token=`).
    #[arg(long, env = "WSCHAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Serve wss:// with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// A browser origin allowed besides the server's own (repeatable), e.g.
    /// `https://chat.example.org`.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
}

impl ServerConfig {
    /// The defaults, as if started with no flags (for tests and embedding).
    pub fn defaults() -> Self {
        Self::parse_from(["server"])
    }

    /// Ping period.
    pub fn ping_every(&self) -> Duration {
        Duration::from_secs(self.ping_interval.max(1))
    }

    /// Silence after which a peer is dropped.
    pub fn idle_after(&self) -> Duration {
        Duration::from_secs(self.idle_timeout.max(1))
    }

    /// Time allowed for the HTTP handshake.
    pub fn handshake_within(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout.max(1))
    }
}

/// `client`: the wschat terminal client.
#[derive(Debug, Clone, Parser)]
#[command(name = "client", version, about = "wschat terminal client")]
pub struct ClientConfig {
    /// Server to connect to.
    #[arg(env = "WSCHAT_URL", default_value = "ws://127.0.0.1:2000")]
    pub url: String,

    /// Nickname to take on connecting.
    #[arg(long)]
    pub nick: Option<String>,

    /// Room to enter on connecting.
    #[arg(long)]
    pub room: Option<String>,

    /// Exit with status 1 instead of reconnecting when the server is unreachable.
    #[arg(long)]
    pub no_reconnect: bool,

    /// Prefix each line with the time it was sent.
    #[arg(long)]
    pub timestamps: bool,

    /// The server's secret, if it asks for one.
    #[arg(long, env = "WSCHAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Also trust this CA certificate (PEM) for wss://, e.g. a self-signed server's.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
}
