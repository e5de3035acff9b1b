//! The management API in the shape of ngrok's API v2, served under `/api` on the console
//! listener, so ngrok's own client libraries work with only their base URL changed.
//!
//! Every request passes the same gate, in this order: `Ngrok-Version: 2`, a valid
//! `Authorization: Bearer <api key>`, a body within `api.max_body_bytes` that arrives whole
//! within `api.body_read_timeout_secs`. Handlers then work on typed records through the
//! store, which flushes before any 2xx is sent.

mod api_keys;
mod app_sessions;
mod app_users;
mod backends;
mod edge_routes;
mod edges;
mod error;
mod resources;
mod route_modules;
mod views;

pub use api_keys::new_api_key;
pub use error::{ApiError, CODES};

use crate::pages::{full, Body};
use crate::state::Shared;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;

/// The path prefix the API is served under on the console listener.
pub const PREFIX: &str = "/api";

/// What a handler needs about the request it serves.
pub(crate) struct Ctx<'a> {
    pub shared: &'a Arc<Shared>,
    /// Absolute URL of the API root, for `uri` and `next_page_uri` fields.
    pub base_url: String,
    pub query: Vec<(String, String)>,
    pub body: Bytes,
    /// The gateway's clock when the request's body was read: objects created by it are made now.
    pub now: i64,
}

impl Ctx<'_> {
    fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Decodes the JSON body into `T`; an empty body reads as `{}`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        let bytes: &[u8] = if self.body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &self.body
        };
        serde_json::from_slice(bytes).map_err(ApiError::bad_body)
    }

    /// `limit` (1 to 100, default 100) and `before_id` from the query.
    pub fn paging(&self) -> Result<(usize, Option<&str>), ApiError> {
        let limit = match self.query("limit") {
            None | Some("") => 100,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=100).contains(&n) => n,
                _ => {
                    return Err(ApiError::paging(format!(
                        "limit `{raw}` must be a whole number from 1 to 100"
                    )))
                }
            },
        };
        Ok((limit, self.query("before_id").filter(|s| !s.is_empty())))
    }
}

/// Serves one request whose path starts with [`PREFIX`].
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let operation_id = crate::ids::new_id(crate::ids::OPERATION, shared.clock.now());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let allowed = shared.config.load().api.allows(peer.ip());
    let served = if allowed {
        serve(&shared, req).await
    } else {
        Err(ApiError::address_not_allowed(peer.ip()))
    };
    let response = match served {
        Ok(response) => response,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::error!(operation_id, %method, path, "API error: {}", e.msg);
            }
            // The rest of a body that did not come in time is not waited for.
            let unread_body = e.status == StatusCode::REQUEST_TIMEOUT;
            let mut response = e.into_response(&operation_id);
            if unread_body {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    };
    shared.metrics.observe_api(response.status().as_u16());
    tracing::info!(target: "portcullis::access", request_id = %operation_id, %method, path, status = response.status().as_u16(), "api request");
    response
}

async fn serve(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let is_v2 = req
        .headers()
        .get("ngrok-version")
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"2");
    if !is_v2 {
        return Err(ApiError::version_header());
    }
    let api_key = authenticate(shared, req.headers()).await?;
    let base_url = base_url(shared, &req);
    let query = req
        .uri()
        .query()
        .map(portcullis_plugin_sdk::form_decode)
        .unwrap_or_default();
    let method = req.method().clone();
    let path = req
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .unwrap_or("")
        .trim_end_matches('/')
        .to_string();
    let body = read_body(shared, req).await?;
    let ctx = Ctx {
        now: shared.clock.now(),
        shared,
        base_url,
        query,
        body,
    };
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let (status, value) = resources::dispatch(&ctx, &method, &segments, &path).await?;
    if method != http::Method::GET {
        // The audit trail of configuration changes: who (which API key) changed what.
        let id = value
            .as_ref()
            .and_then(|v| v.get("id"))
            .and_then(|v| v.as_str())
            .unwrap_or("-");
        tracing::info!(target: "portcullis::audit", event = "api_write", api_key = %api_key, %method, path = %path, id, status = status.as_u16(), "configuration changed through the API");
    }
    Ok(json_response(status, value))
}

/// The request's body, at most `api.max_body_bytes` (413), arrived whole within
/// `api.body_read_timeout_secs` (408): a client that announces a body and never sends it holds
/// no connection open. Also the body limit of the console's provisioning paths.
pub(crate) async fn read_body(shared: &Shared, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let (limit, timeout) = {
        let config = shared.config.load();
        (config.api.max_body_bytes, config.api.body_read_timeout())
    };
    let declared_too_large = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > limit);
    if declared_too_large {
        return Err(ApiError::too_large(limit));
    }
    match tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ApiError::too_large(limit)),
        Ok(Err(e)) => Err(ApiError::bad_body(format!("could not read the body: {e}"))),
        Err(_) => Err(ApiError::body_timed_out(timeout)),
    }
}

/// The id of the API key the request authenticates with (also the check of the console's
/// provisioning paths).
pub(crate) async fn authenticate(shared: &Shared, headers: &http::HeaderMap) -> Result<String, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(ApiError::missing_auth)?;
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    match shared.store.api_key_by_token_hash(&hash).await? {
        Some(key) => Ok(key.id),
        None => Err(ApiError::bad_key()),
    }
}

/// The API root URL: the console's configured `public_url`, else the request's own host.
fn base_url<B>(shared: &Shared, req: &Request<B>) -> String {
    let config = shared.config.load();
    let console = &config.listeners.console;
    if console.public_url.is_some() {
        return format!("{}{PREFIX}", console.public_url());
    }
    let scheme = if console.tls.is_some() { "https" } else { "http" };
    match req.headers().get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) => format!("{scheme}://{host}{PREFIX}"),
        None => format!("{}{PREFIX}", console.public_url()),
    }
}

fn json_response(status: StatusCode, value: Option<serde_json::Value>) -> Response<Body> {
    let mut response = match value {
        Some(value) => {
            let mut r = Response::new(full(value.to_string()));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        None => Response::new(full(Bytes::new())),
    };
    *response.status_mut() = status;
    response
}
