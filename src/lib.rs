//! wschat: a self-hostable group chat over WebSocket.
//!
//! # Layout
//! - [`protocol`]: the wire format of both modes (plain text and JSON), names
//!   and commands; pure functions, no I/O.
//! - [`server`]: the accept loop and shutdown ([`server::run`]); inside it
//!   `handshake` answers HTTP, `connection` runs one task per peer, `hub`
//!   tracks nicks, presence and private mailboxes, `bus` is the fan-out seam
//!   (publish to a room, subscribe to a room, read history after an id),
//!   `frames` parses and checks what clients send, and `wire` queues each
//!   connection's outgoing bytes (broadcast frames encoded once, written with
//!   one call per flush).
//! - [`client`]: the terminal client's connect / reconnect / resume loop.
//! - [`limit`]: the token bucket behind flood control (server and client).
//! - [`tls`]: loading certificates and keys for `wss://`.
//! - [`config`]: the command-line flags of both binaries.
//! - [`error`]: the crate's error type.

pub mod client;
pub mod config;
pub mod error;
pub mod limit;
pub mod protocol;
pub mod server;
pub mod tls;
