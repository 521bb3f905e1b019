//! The crate's error type, and how an error is told to a person.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the library, with lowercase messages.
/// Each variant keeps its cause as its `source()`; [`report`] prints the chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not bind its address.
    #[error("cannot listen on {addr}")]
    Listen {
        /// What was asked for.
        addr: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A certificate or key file that cannot be used.
    #[error("{what} {}", path.display())]
    Tls {
        /// What was being done, e.g. `cannot read certificate`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: crate::tls::TlsError,
    },
    /// A certificate and a key that do not belong together.
    #[error("certificate and key do not work together")]
    TlsPair {
        /// What rustls said.
        #[source]
        source: crate::tls::TlsError,
    },
    /// The history database cannot be opened or used.
    #[error("cannot use history database {}", path.display())]
    Database {
        /// The file given with `--db`.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: crate::server::history::HistoryError,
    },
    /// Redis cannot be reached or refused wschat.
    #[error("cannot use Redis at {url}")]
    Redis {
        /// The URL given with `--redis` (without its password).
        url: String,
        /// What went wrong.
        #[source]
        source: redis::RedisError,
    },
    /// An I/O failure.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes on one line: `cannot listen on X: address already in use`.
pub fn report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = describe(err);
    let mut cause = err.source();
    while let Some(err) = cause {
        let text = describe(err);
        // `#[error(transparent)]` wrappers repeat their source's text.
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = err.source();
    }
    line
}

fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    match err.downcast_ref::<io::Error>() {
        Some(io) => describe_io(io),
        None => err.to_string(),
    }
}

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
