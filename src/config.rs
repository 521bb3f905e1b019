//! Settings of both binaries: the command-line flags (clap derive; the doc
//! comments are the help) and the plain structs the library takes.
//!
//! [`ServerArgs`] is what the `server` binary parses; [`ServerConfig`] is what
//! [`crate::server::run`] needs, with a [`Default`] that matches the flags'
//! defaults (both read the constants in [`defaults`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// The default of every server setting, shared by the flags and [`ServerConfig::default`].
pub mod defaults {
    /// `--history`
    pub const HISTORY: usize = 1000;
    /// `--history-on-join`
    pub const HISTORY_ON_JOIN: usize = 20;
    /// `--max-message-bytes`
    pub const MAX_MESSAGE_BYTES: usize = 4096;
    /// `--max-frame-bytes`
    pub const MAX_FRAME_BYTES: usize = 64 * 1024;
    /// `--max-lag`
    pub const MAX_LAG: usize = 1024;
    /// `--max-lag-bytes`
    pub const MAX_LAG_BYTES: usize = 4 * 1024 * 1024;
    /// `--max-connections`
    pub const MAX_CONNECTIONS: usize = 10_000;
    /// `--max-handshakes`
    pub const MAX_HANDSHAKES: usize = 1024;
    /// `--max-per-ip`
    pub const MAX_PER_IP: usize = 1000;
    /// `--ping-interval`
    pub const PING_INTERVAL: u64 = 30;
    /// `--idle-timeout`
    pub const IDLE_TIMEOUT: u64 = 90;
    /// `--handshake-timeout`
    pub const HANDSHAKE_TIMEOUT: u64 = 10;
    /// `--announce-limit`
    pub const ANNOUNCE_LIMIT: usize = 200;
    /// `--notice-rate`
    pub const NOTICE_RATE: u32 = 10;
    /// `--rate`
    pub const RATE: u32 = 20;
    /// `--rate-burst`
    pub const RATE_BURST: u32 = 10;
    /// `--max-rooms`
    pub const MAX_ROOMS: usize = 10_000;
    /// `--room-ttl`, in seconds
    pub const ROOM_TTL: u64 = 24 * 60 * 60;
    /// `--retain`
    pub const RETAIN: u64 = 100_000;
    /// `--redis-prefix`
    pub const REDIS_PREFIX: &str = "wschat";
    /// `--max-queued-bytes`: 64 MiB
    pub const MAX_QUEUED_BYTES: usize = 64 << 20;
    /// `--max-history-bytes`: 128 MiB
    pub const MAX_HISTORY_BYTES: usize = 128 << 20;
    /// `--ip-prefix-v4`
    pub const IP_PREFIX_V4: u8 = 24;
    /// `--ip-prefix-v6`
    pub const IP_PREFIX_V6: u8 = 48;
    /// `--presence-ttl`, in seconds
    pub const PRESENCE_TTL: u64 = 30;
}

/// `server`: the wschat chat server.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "server",
    version,
    about = "wschat: a self-hostable group chat over WebSocket"
)]
pub struct ServerArgs {
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
    #[arg(long, default_value_t = defaults::HISTORY)]
    pub history: usize,

    /// Bytes that may wait in the send queues of all connections together;
    /// past it, the connections furthest behind are closed (1013).
    #[arg(long, default_value_t = defaults::MAX_QUEUED_BYTES)]
    pub max_queued_bytes: usize,

    /// Bytes all rooms' in-memory history may take together; past it the
    /// rooms written to least recently let go of their messages first (ids
    /// go on; a client resuming there is told of the gap).
    #[arg(long, default_value_t = defaults::MAX_HISTORY_BYTES)]
    pub max_history_bytes: usize,

    /// Messages replayed to a connection when it enters a room.
    #[arg(long, default_value_t = defaults::HISTORY_ON_JOIN)]
    pub history_on_join: usize,

    /// Longest message text, in bytes.
    #[arg(long, default_value_t = defaults::MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// Largest WebSocket frame accepted, in bytes; a larger one closes with 1009.
    #[arg(long, default_value_t = defaults::MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,

    /// Messages that may wait for one slow connection before it is closed with 1013.
    #[arg(long, default_value_t = defaults::MAX_LAG)]
    pub max_lag: usize,

    /// Bytes that may wait for one slow connection before it is closed with 1013.
    #[arg(long, default_value_t = defaults::MAX_LAG_BYTES)]
    pub max_lag_bytes: usize,

    /// Concurrent connections; further handshakes get HTTP 503.
    #[arg(long, default_value_t = defaults::MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Rooms that hold memory at once (with members, or with history kept in
    /// memory); joining a new room beyond gets `too_many_rooms`.
    #[arg(long, default_value_t = defaults::MAX_ROOMS)]
    pub max_rooms: usize,

    /// Seconds an empty room's history is kept in memory after its last
    /// message (without --db).
    #[arg(long, default_value_t = defaults::ROOM_TTL, value_name = "SECONDS")]
    pub room_ttl: u64,

    /// Handshakes in progress at once; connections beyond are closed at once.
    #[arg(long, default_value_t = defaults::MAX_HANDSHAKES)]
    pub max_handshakes: usize,

    /// Connections from one client address (0: no cap); further handshakes
    /// get HTTP 503. An address may also open this many per minute.
    #[arg(long, default_value_t = defaults::MAX_PER_IP)]
    pub max_per_ip: usize,

    /// Client IPv4 addresses in one network of this many bits count as one
    /// address for the per-address limits (--max-per-ip, --rate-per-ip, the
    /// share of handshake places), so an attacker with a block of addresses
    /// gets one share; 32 counts each address on its own.
    #[arg(long, default_value_t = defaults::IP_PREFIX_V4, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub ip_prefix_v4: u8,

    /// The same for IPv6: addresses in one network of this many bits are one
    /// address; 128 counts each on its own.
    #[arg(long, default_value_t = defaults::IP_PREFIX_V6, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub ip_prefix_v6: u8,

    /// Seconds between pings to each peer.
    #[arg(long, default_value_t = defaults::PING_INTERVAL)]
    pub ping_interval: u64,

    /// Seconds of silence after which a peer is dropped.
    #[arg(long, default_value_t = defaults::IDLE_TIMEOUT)]
    pub idle_timeout: u64,

    /// Seconds a peer has to complete its handshake.
    #[arg(long, default_value_t = defaults::HANDSHAKE_TIMEOUT)]
    pub handshake_timeout: u64,

    /// Announce joins, leaves and renames only while a room has at most this
    /// many members (a connect storm would otherwise send everyone a notice
    /// per arrival); the connection concerned is always told.
    #[arg(long, default_value_t = defaults::ANNOUNCE_LIMIT)]
    pub announce_limit: usize,

    /// Join, leave and rename notices a room announces per 10 seconds, on
    /// average, in bursts of twice that; beyond, they are not announced
    /// (the connection concerned is still told; 0: no limit).
    #[arg(long, default_value_t = defaults::NOTICE_RATE)]
    pub notice_rate: u32,

    /// Messages allowed per connection per 10 seconds, on average (0: no limit).
    #[arg(long, default_value_t = defaults::RATE)]
    pub rate: u32,

    /// Messages a connection may send at once before the rate applies.
    #[arg(long, default_value_t = defaults::RATE_BURST)]
    pub rate_burst: u32,

    /// Messages allowed per client address per 10 seconds, over all its
    /// connections, so reconnecting does not reset flood control (default:
    /// 10 times --rate; bursts of half of it; 0: no limit).
    #[arg(long, value_name = "N")]
    pub rate_per_ip: Option<u32>,

    /// Require this secret at the handshake (`Authorization: Bearer` or `?token=`).
    #[arg(long, env = "WSCHAT_TOKEN", hide_env_values = true, value_parser = non_empty_token)]
    pub token: Option<String>,

    /// Serve wss:// with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// A browser origin allowed besides the server's own (repeatable), e.g.
    /// `https://chat.example.org`.
    #[arg(long = "allowed-origin", value_name = "ORIGIN", value_parser = origin)]
    pub allowed_origins: Vec<String>,

    /// A name this server may be reached by besides the loopback ones, its
    /// addresses and its --host (repeatable), e.g. `chat.example.org` or
    /// `chat.example.org:8080`. Checked on every listener without --token,
    /// where it keeps out web pages that had their own name resolve to the
    /// server's address (DNS rebinding).
    #[arg(long = "allowed-host", value_name = "HOST")]
    pub allowed_hosts: Vec<String>,

    /// Show a connection without a nick as its IP:PORT to everyone even when
    /// listening off loopback (where it is otherwise a guest name such as
    /// guest-4821).
    #[arg(long)]
    pub show_addresses: bool,

    /// Keep history in this SQLite file (created if missing), so it survives
    /// restarts. Without it, history is kept in memory.
    #[arg(long, env = "WSCHAT_DB", value_name = "PATH")]
    pub db: Option<PathBuf>,

    /// Messages kept per room in the --db file; older ones are pruned in the background.
    #[arg(long, default_value_t = defaults::RETAIN, value_name = "N")]
    pub retain: u64,

    /// How hard --db pushes each commit to the disk: `normal` survives a
    /// crash or kill -9 of the server, `full` also a power loss.
    #[arg(long, value_enum, default_value_t = DbSync::Normal)]
    pub db_sync: DbSync,

    /// Form one chat with every server given the same Redis
    /// (redis://HOST:PORT[/DB]): rooms, ids, history, nicks and private
    /// messages across all of them. Redis is then the history store.
    #[arg(long, env = "WSCHAT_REDIS", value_name = "URL", conflicts_with = "db")]
    pub redis: Option<String>,

    /// Prefix of every key and channel wschat uses in Redis, so several
    /// chats can share one Redis: 1-64 of `A-Z a-z 0-9 _ . -` (no `:`, the
    /// separator after it, so no two chats' keys can collide).
    #[arg(long, default_value = defaults::REDIS_PREFIX, value_name = "PREFIX", value_parser = redis_prefix)]
    pub redis_prefix: String,

    /// With --redis: how long a server that stopped answering keeps its
    /// users and nicks before the other servers let them go.
    #[arg(long, default_value_t = defaults::PRESENCE_TTL, value_name = "SECONDS")]
    pub presence_ttl: u64,
}

/// How hard the SQLite history pushes each commit to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DbSync {
    /// `synchronous=NORMAL` in WAL mode: a commit is in the operating
    /// system's hands, so it survives the server crashing or being killed,
    /// not a power loss.
    Normal,
    /// `synchronous=FULL`: every commit is fsynced before it is
    /// acknowledged, so it survives a power loss where the disk honours fsync.
    Full,
}

/// How many connections' worth of flood budget one address has by default.
pub const PER_IP_FACTOR: u32 = 10;

/// `--token`'s value: an empty one would silently turn authentication off.
fn non_empty_token(value: &str) -> Result<String, String> {
    if value.is_empty() {
        Err("the token must not be empty (leave --token and WSCHAT_TOKEN out for no token)".into())
    } else {
        Ok(value.to_owned())
    }
}

/// `--allowed-origin`'s value: `scheme://host[:port]`, as a browser sends it.
/// Checks a `--redis-prefix`: 1-64 of `A-Z a-z 0-9 _ . -`. Keys are
/// `PREFIX:...`, so a prefix holding the `:` separator (or a glob character,
/// as key patterns are built from it) could name another chat's keys.
///
/// # Errors
/// Why the prefix cannot be used, naming it.
pub fn redis_prefix(value: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} is not a Redis prefix: use 1-64 of A-Z a-z 0-9 _ . - (no ':' or glob characters)"
        ))
    }
}

fn origin(value: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "{value:?} is not an origin: expected scheme://host[:port], e.g. https://chat.example.org"
        )
    };
    let origin = value.trim_end_matches('/');
    let (scheme, rest) = origin.split_once("://").ok_or_else(bad)?;
    let scheme_ok = !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let (host, port) = match rest.strip_prefix('[') {
        Some(bracketed) => {
            let (inside, tail) = bracketed.split_once(']').ok_or_else(bad)?;
            let port = match tail {
                "" => None,
                tail => Some(tail.strip_prefix(':').ok_or_else(bad)?),
            };
            let ipv6_ok = inside.parse::<std::net::Ipv6Addr>().is_ok();
            (if ipv6_ok { "ipv6" } else { "" }, port)
        }
        None => match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    if scheme_ok && host_ok && port_ok {
        Ok(origin.to_ascii_lowercase())
    } else {
        Err(bad())
    }
}

impl ServerArgs {
    /// The library settings these flags ask for.
    pub fn config(&self) -> ServerConfig {
        ServerConfig {
            history: self.history,
            max_history_bytes: self.max_history_bytes,
            max_queued_bytes: self.max_queued_bytes,
            history_on_join: self.history_on_join,
            max_message_bytes: self.max_message_bytes,
            max_frame_bytes: self.max_frame_bytes,
            max_lag: self.max_lag,
            max_lag_bytes: self.max_lag_bytes,
            max_connections: self.max_connections,
            max_handshakes: self.max_handshakes,
            max_rooms: self.max_rooms,
            room_ttl: self.room_ttl,
            max_per_ip: self.max_per_ip,
            ip_prefixes: (self.ip_prefix_v4, self.ip_prefix_v6),
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout,
            handshake_timeout: self.handshake_timeout,
            announce_limit: self.announce_limit,
            notice_rate: self.notice_rate,
            rate: self.rate,
            rate_burst: self.rate_burst,
            rate_per_ip: self.rate_per_ip,
            token: self.token.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            allowed_origins: self.allowed_origins.clone(),
            allowed_hosts: self.allowed_hosts.clone(),
            listen_host: Some(self.host.clone()),
            show_addresses: self.show_addresses,
            db: self.db.clone(),
            retain: self.retain,
            db_sync: self.db_sync,
            redis: self.redis.clone(),
            redis_prefix: self.redis_prefix.clone(),
            presence_ttl: self.presence_ttl,
        }
    }
}

/// What [`crate::server::run`] needs to know; each field is the flag of the
/// same name (see [`ServerArgs`] for what it means).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Messages each room keeps in memory (in-memory history).
    pub history: usize,
    /// Bytes the in-memory history may take, all rooms together.
    pub max_history_bytes: usize,
    /// Bytes all connections' send queues may hold together.
    pub max_queued_bytes: usize,
    /// Messages replayed to a connection when it enters a room.
    pub history_on_join: usize,
    /// Longest message text, in bytes.
    pub max_message_bytes: usize,
    /// Largest WebSocket frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Messages that may wait for one slow connection.
    pub max_lag: usize,
    /// Bytes that may wait for one slow connection.
    pub max_lag_bytes: usize,
    /// Concurrent connections.
    pub max_connections: usize,
    /// Handshakes in progress at once.
    pub max_handshakes: usize,
    /// Rooms that hold memory at once: with members, or with history kept
    /// in memory.
    pub max_rooms: usize,
    /// Seconds an empty room's history is kept in memory after its last message.
    pub room_ttl: u64,
    /// Connections from one client address (0: no cap), and connections it
    /// may open per minute.
    pub max_per_ip: usize,
    /// The IPv4 and IPv6 prefix lengths client addresses are grouped by.
    pub ip_prefixes: (u8, u8),
    /// Seconds between pings.
    pub ping_interval: u64,
    /// Seconds of silence after which a peer is dropped.
    pub idle_timeout: u64,
    /// Seconds a peer has to complete its handshake.
    pub handshake_timeout: u64,
    /// Room size up to which joins, leaves and renames are announced.
    pub announce_limit: usize,
    /// Notices a room announces per 10 seconds (0: no limit).
    pub notice_rate: u32,
    /// Messages per connection per 10 seconds (0: no limit).
    pub rate: u32,
    /// Messages a connection may send at once.
    pub rate_burst: u32,
    /// Messages per client address per 10 seconds (0: no limit; `None`:
    /// [`PER_IP_FACTOR`] times `rate`).
    pub rate_per_ip: Option<u32>,
    /// The secret a handshake must carry.
    pub token: Option<String>,
    /// Certificate chain for wss://.
    pub tls_cert: Option<PathBuf>,
    /// Private key for wss://.
    pub tls_key: Option<PathBuf>,
    /// Browser origins allowed besides the server's own.
    pub allowed_origins: Vec<String>,
    /// Host names allowed besides the loopback ones and the server's own
    /// (checked without a token).
    pub allowed_hosts: Vec<String>,
    /// The name or address the server was asked to listen on (`--host`),
    /// a name its clients may use in `Host`.
    pub listen_host: Option<String>,
    /// Name connections without a nick by their address off loopback too.
    pub show_addresses: bool,
    /// The SQLite history file; `None` keeps history in memory.
    pub db: Option<PathBuf>,
    /// Messages kept per room in the SQLite history.
    pub retain: u64,
    /// Durability of each SQLite commit.
    pub db_sync: DbSync,
    /// The Redis that several servers share; `None` keeps everything in this process.
    pub redis: Option<String>,
    /// Prefix of wschat's keys and channels in Redis.
    pub redis_prefix: String,
    /// Seconds a silent node keeps its users and nicks (with Redis).
    pub presence_ttl: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            history: defaults::HISTORY,
            max_history_bytes: defaults::MAX_HISTORY_BYTES,
            max_queued_bytes: defaults::MAX_QUEUED_BYTES,
            history_on_join: defaults::HISTORY_ON_JOIN,
            max_message_bytes: defaults::MAX_MESSAGE_BYTES,
            max_frame_bytes: defaults::MAX_FRAME_BYTES,
            max_lag: defaults::MAX_LAG,
            max_lag_bytes: defaults::MAX_LAG_BYTES,
            max_connections: defaults::MAX_CONNECTIONS,
            max_handshakes: defaults::MAX_HANDSHAKES,
            max_rooms: defaults::MAX_ROOMS,
            room_ttl: defaults::ROOM_TTL,
            max_per_ip: defaults::MAX_PER_IP,
            ip_prefixes: (defaults::IP_PREFIX_V4, defaults::IP_PREFIX_V6),
            ping_interval: defaults::PING_INTERVAL,
            idle_timeout: defaults::IDLE_TIMEOUT,
            handshake_timeout: defaults::HANDSHAKE_TIMEOUT,
            announce_limit: defaults::ANNOUNCE_LIMIT,
            notice_rate: defaults::NOTICE_RATE,
            rate: defaults::RATE,
            rate_burst: defaults::RATE_BURST,
            rate_per_ip: None,
            token: None,
            tls_cert: None,
            tls_key: None,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            listen_host: None,
            show_addresses: false,
            db: None,
            retain: defaults::RETAIN,
            db_sync: DbSync::Normal,
            redis: None,
            redis_prefix: defaults::REDIS_PREFIX.to_owned(),
            presence_ttl: defaults::PRESENCE_TTL,
        }
    }
}

impl ServerConfig {
    /// What a room's channel may hold for its slowest member: `--max-lag`
    /// frames and `--max-lag-bytes` bytes, as a connection's queue.
    pub fn room_bounds(&self) -> crate::server::fanout::Bounds {
        crate::server::fanout::Bounds {
            frames: self.max_lag,
            bytes: self.max_lag_bytes,
        }
    }

    /// Ping period.
    pub fn ping_every(&self) -> Duration {
        Duration::from_secs(self.ping_interval.max(1))
    }

    /// Silence after which a peer is dropped.
    pub fn idle_after(&self) -> Duration {
        Duration::from_secs(self.idle_timeout.max(1))
    }

    /// Each address's flood budget: requests per 10 s (0: no limit), and
    /// the burst, half of that (as `--rate`'s default burst is half of it).
    pub fn budget_per_ip(&self) -> (u32, u32) {
        let rate = self
            .rate_per_ip
            .unwrap_or(self.rate.saturating_mul(PER_IP_FACTOR));
        (rate, (rate / 2).max(1))
    }

    /// Time allowed for the HTTP handshake.
    pub fn handshake_within(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout.max(1))
    }
}

/// `client`: the wschat terminal client.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "client",
    version,
    about = "wschat terminal client",
    after_help = "Chat commands (type them at the prompt):
  /nick NAME        choose a nickname (1-24 of A-Z a-z 0-9 _ -)
  /join ROOM        move to a room (1-32 of a-z 0-9 _ -)
  /msg NICK TEXT    send a private message
  /who              list the members of your room
  /rooms            list the rooms and how many are in each
  /help             list these commands
  /quit             leave (Ctrl+D too)
  //TEXT            send a message that starts with /"
)]
pub struct ClientConfig {
    /// Server to connect to: ws://HOST:PORT or wss://HOST:PORT (a bare
    /// HOST:PORT means ws://). Several servers of one chat may be given:
    /// when one fails, the next is tried, and the chat resumes there.
    #[arg(
        env = "WSCHAT_URL",
        default_value = "ws://127.0.0.1:2000",
        num_args = 1..,
        value_name = "URL"
    )]
    pub urls: Vec<String>,

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
