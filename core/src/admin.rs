//! The local admin socket: a Unix socket in the data dir (mode 0600) through which the
//! command line reaches a running server. sled lets one process open the database, so
//! `portcullis api-key create` asks the server over this socket when one is running and opens
//! the store itself when none is.
//!
//! Protocol: one JSON request line, one JSON answer line.

use crate::state::Shared;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// A request to the running server.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    CreateApiKey { description: String },
}

/// The server's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AdminResponse {
    ApiKey { id: String, token: String },
    Error { message: String },
}

/// Why an admin operation failed (the message the command line prints or the socket answers).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Invalid(#[from] crate::model::ValidationError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot connect to {path}: {error}")]
    Connect { path: String, error: std::io::Error },
    #[error("{0}")]
    Encode(serde_json::Error),
    #[error("admin socket write failed: {0}")]
    Write(std::io::Error),
    #[error("admin socket read failed: {0}")]
    Read(std::io::Error),
    #[error("unreadable answer from the server: {0}")]
    Answer(serde_json::Error),
}

/// Where the admin socket of a data dir lives.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// Binds the admin socket, replacing a stale one left by a crash.
pub fn bind(data_dir: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_dir);
    // The database lock is already ours, so a socket file here is stale.
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves admin requests until the listener is dropped.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &shared).await {
                tracing::warn!("admin socket: {e}");
            }
        });
    }
}

async fn answer(stream: UnixStream, shared: &Shared) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).take(64 * 1024).read_line(&mut line).await?;
    let response = match serde_json::from_str::<AdminRequest>(&line) {
        Ok(AdminRequest::CreateApiKey { description }) => match create_api_key(shared, description).await {
            Ok((id, token)) => {
                tracing::info!(api_key = %id, "API key created through the admin socket");
                AdminResponse::ApiKey { id, token }
            }
            Err(e) => AdminResponse::Error { message: e.to_string() },
        },
        Err(e) => AdminResponse::Error {
            message: format!("bad admin request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

/// Creates an API key in the store and returns its id and token.
pub async fn create_api_key(shared: &Shared, description: String) -> Result<(String, String), AdminError> {
    create_api_key_in(&*shared.store, description, shared.clock.now()).await
}

/// Creates an API key in `store`, made at `now`, and returns its id and token.
pub async fn create_api_key_in(
    store: &dyn crate::store::Storage,
    description: String,
    now: i64,
) -> Result<(String, String), AdminError> {
    crate::model::validate_labels(&description, "")?;
    let (key, token) = crate::api::new_api_key(description, String::new(), now);
    store.create_api_key(&key).await?;
    Ok((key.id, token))
}

/// Sends `request` to the server running on `data_dir`; `Ok(None)` when none is listening.
pub async fn call(data_dir: &Path, request: &AdminRequest) -> Result<Option<AdminResponse>, AdminError> {
    let path = socket_path(data_dir);
    let stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(error) => {
            return Err(AdminError::Connect {
                path: path.display().to_string(),
                error,
            })
        }
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(AdminError::Encode)?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(AdminError::Write)?;
    let mut answer = String::new();
    BufReader::new(read)
        .read_line(&mut answer)
        .await
        .map_err(AdminError::Read)?;
    serde_json::from_str(&answer).map(Some).map_err(AdminError::Answer)
}
