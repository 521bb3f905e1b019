//! wschat: a self-hostable group chat over WebSocket.
//!
//! # Layout
//! - [`protocol`]: the wire format of both modes (plain text and JSON), names
//!   and commands; pure functions, no I/O.
//! - [`server`]: the accept loop and shutdown ([`server::run`]); inside it
//!   `handshake` answers HTTP in one router (WebSocket upgrade, the web
//!   client's files from `web`, `/healthz`, `/metrics` from `metrics`), `admission`
//!   decides who gets in (handshake places, slots, per-address caps and
//!   flood budgets), `session` runs
//!   one task per peer (the select loop, lag, close), `commands` carries out
//!   what a peer asks for (say, `/nick`, `/join`, `/msg`, `/who`, `/rooms`),
//!   `frames` parses and checks what clients send, and `wire` queues each
//!   connection's outgoing bytes (broadcast frames encoded once, written
//!   with one call per flush). The chat itself stands on three interfaces,
//!   each with an in-memory implementation and a Redis one shared by several
//!   servers (`--redis`; what they share is in `redis`): `fanout` (publish to
//!   a room, follow a room), `history` (store, read back, epoch; also SQLite)
//!   and `presence` (nicks, members, private delivery).
//! - [`client`]: the terminal client: `session` (connect, reconnect, resume),
//!   `render` (how things are said), `terminal` (line editor, plain stdio).
//! - [`logging`]: the server's logs, through a writer that never blocks.
//! - [`limit`]: the token bucket behind flood control (server and client).
//! - [`tls`]: loading certificates and keys for `wss://`.
//! - [`config`]: the command-line flags of both binaries and the plain
//!   settings the library takes.
//! - [`error`]: the crate's error type.

pub mod client;
pub mod config;
pub mod error;
pub mod limit;
pub mod logging;
pub mod protocol;
pub mod server;
pub mod tls;
