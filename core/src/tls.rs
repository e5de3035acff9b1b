//! TLS for listeners: a certificate chain and key from PEM files, or a self-signed
//! certificate made on first start and kept in the data dir so it survives restarts.

use crate::config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Builds the rustls server config of a listener (ALPN: h2, http/1.1).
pub fn server_config(tls: &TlsConfig, data_dir: &Path, listener: &str) -> Result<Arc<ServerConfig>, String> {
    let (cert_path, key_path) = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => self_signed(tls, data_dir, listener)?,
    };
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("cannot read the private key from {}: {e}", key_path.display()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "certificate {} and key {} do not make a usable pair: {e}",
                cert_path.display(),
                key_path.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The self-signed certificate and key files of a listener, made when missing.
fn self_signed(tls: &TlsConfig, data_dir: &Path, listener: &str) -> Result<(PathBuf, PathBuf), String> {
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
    let made =
        rcgen::generate_simple_self_signed(names).map_err(|e| format!("cannot make a self-signed certificate: {e}"))?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    write_private(&key_path, made.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, made.cert.pem()).map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
    tracing::info!(cert = %cert_path.display(), "made a self-signed certificate for the {listener} listener");
    Ok((cert_path, key_path))
}

/// Writes a file readable only by its owner.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
