//! TLS for `wss://`: the server's certificate and key, the client's trusted roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::error::{Error, Result};

/// What is wrong with a certificate or key file (the file itself is named
/// by the [`Error::Tls`] around it).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read or parsed as PEM.
    #[error("{}", describe_pem(.0))]
    Pem(rustls_pki_types::pem::Error),
    /// The file holds no certificate.
    #[error("no PEM certificate in it")]
    NoCertificate,
    /// The file holds no private key.
    #[error("no PEM private key in it")]
    NoKey,
    /// rustls refused what the file holds.
    #[error("{0}")]
    Rustls(tokio_rustls::rustls::Error),
}

fn tls_error(what: &'static str, path: &Path, source: TlsError) -> Error {
    Error::Tls {
        what,
        path: PathBuf::from(path),
        source,
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error("cannot read certificate", path, TlsError::Pem(e)))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_error("bad certificate", path, TlsError::Pem(e)))?;
    if certs.is_empty() {
        return Err(tls_error("bad certificate", path, TlsError::NoCertificate));
    }
    Ok(certs)
}

fn describe_pem(err: &rustls_pki_types::pem::Error) -> String {
    match err {
        rustls_pki_types::pem::Error::Io(io) => crate::error::describe_io(io),
        other => other.to_string(),
    }
}

/// The server side: certificate chain and private key (PEM files).
///
/// # Errors
/// [`Error::Tls`] naming the file and what is wrong with it.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            tls_error("bad private key", key, TlsError::NoKey)
        }
        other => tls_error("cannot read private key", key, TlsError::Pem(other)),
    })?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Rustls)
        .map_err(|source| Error::TlsPair { source })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The client side: the system's trusted roots plus, optionally, one more CA
/// (for a server with a self-signed certificate).
///
/// # Errors
/// [`Error::Tls`] when the extra CA file cannot be used.
pub fn connector(extra_ca: Option<&Path>) -> Result<tokio_websockets::Connector> {
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are skipped: the extra CA may be all we need.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        for cert in load_certs(path)? {
            roots
                .add(cert)
                .map_err(|e| tls_error("bad CA certificate", path, TlsError::Rustls(e)))?;
        }
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_websockets::Connector::Rustls(TlsConnector::from(
        Arc::new(config),
    )))
}
