//! The crate's error type.

use std::io;

/// Everything that can go wrong in the library, with lowercase messages.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not bind its address.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// What was asked for.
        addr: String,
        /// Why it failed, in words.
        reason: String,
    },
    /// A certificate or key that cannot be used.
    #[error("{0}")]
    Tls(String),
    /// An I/O failure.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A short lowercase description of an I/O error, without the OS error number.
pub fn describe_io(err: &io::Error) -> String {
    use io::ErrorKind::*;
    match err.kind() {
        AddrInUse => "address already in use".into(),
        AddrNotAvailable => "address not available".into(),
        PermissionDenied => "permission denied".into(),
        ConnectionRefused => "connection refused (is the server running?)".into(),
        ConnectionReset => "connection reset".into(),
        TimedOut => "timed out".into(),
        _ => {
            let text = err.to_string();
            // Drop the " (os error N)" suffix the standard library adds.
            match text.find(" (os error") {
                Some(at) => text[..at].to_lowercase(),
                None => text,
            }
        }
    }
}
