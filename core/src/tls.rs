//! TLS for listeners: a certificate chain and key from PEM files, or a self-signed
//! certificate made on first start and kept in the data dir so it survives restarts.

use crate::config::TlsConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a listener's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {}: {error}", .path.display())]
    ReadCertificates { path: PathBuf, error: pem::Error },
    #[error("{} holds no PEM certificate", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("cannot read the private key from {}: {error}", .path.display())]
    ReadKey { path: PathBuf, error: pem::Error },
    #[error("{0}")]
    Setup(rustls::Error),
    #[error("certificate {} and key {} do not make a usable pair: {error}", .cert.display(), .key.display())]
    UnusablePair {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
    #[error("cannot make a self-signed certificate: {0}")]
    SelfSigned(rcgen::Error),
    #[error("cannot create {}: {error}", .path.display())]
    CreateDir { path: PathBuf, error: std::io::Error },
    #[error("cannot write {}: {error}", .path.display())]
    Write { path: PathBuf, error: std::io::Error },
}

/// Builds the rustls server config of a listener (ALPN: h2, http/1.1).
pub fn server_config(tls: &TlsConfig, data_dir: &Path, listener: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert_path, key_path) = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => self_signed(tls, data_dir, listener)?,
    };
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|error| TlsError::ReadCertificates {
            path: cert_path.clone(),
            error,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert_path });
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|error| TlsError::ReadKey {
        path: key_path.clone(),
        error,
    })?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::UnusablePair {
            cert: cert_path.clone(),
            key: key_path.clone(),
            error,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The self-signed certificate and key files of a listener, made when missing.
fn self_signed(tls: &TlsConfig, data_dir: &Path, listener: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let dir = data_dir.join("tls");
    let cert_path = dir.join(format!("{listener}-self-signed.crt"));
    let key_path = dir.join(format!("{listener}-self-signed.key"));
    if cert_path.is_file() && key_path.is_file() {
        return Ok((cert_path, key_path));
    }
    let names = if tls.self_signed_names.is_empty() {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    } else {
        tls.self_signed_names.clone()
    };
    let made = rcgen::generate_simple_self_signed(names).map_err(TlsError::SelfSigned)?;
    std::fs::create_dir_all(&dir).map_err(|error| TlsError::CreateDir {
        path: dir.clone(),
        error,
    })?;
    write_private(&key_path, made.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, made.cert.pem()).map_err(|error| TlsError::Write {
        path: cert_path.clone(),
        error,
    })?;
    tracing::info!(cert = %cert_path.display(), "made a self-signed certificate for the {listener} listener");
    Ok((cert_path, key_path))
}

/// Writes a file readable only by its owner.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |error| TlsError::Write {
        path: path.to_path_buf(),
        error,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    file.write_all(bytes).map_err(failed)
}
