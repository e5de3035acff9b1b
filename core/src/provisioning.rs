//! The console's provisioning paths: a request under a provisioning plugin's
//! `provisioning_path` is checked the way the management API checks its requests (the client
//! address in `api.allow_cidrs`, the Bearer API key, the body within `api.max_body_bytes` and
//! `api.body_read_timeout_secs`), then handed to `Plugin::provision` on a blocking thread with
//! the caller it turned out to be and the request as a sign-in plugin would get it (the
//! headers a client could forge removed, the gateway's own forwarding headers set, the API key
//! removed); the plugin's response is the answer. A refused caller still
//! reaches the plugin (as `Caller::Refused`, with no body), so the refusal comes in the
//! plugin's protocol's error shape; only an authenticated caller's call reaches the directory.

use crate::pages::{full, Body};
use crate::plugins::Registered;
use crate::state::Shared;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use portcullis_plugin_sdk::{Call, Caller, Outcome, PluginError, ProvisioningRequest};
use std::net::SocketAddr;
use std::sync::Arc;

/// Serves one request under `plugin`'s provisioning path.
pub async fn handle(
    shared: &Arc<Shared>,
    plugin: Arc<Registered>,
    req: Request<Incoming>,
    peer: SocketAddr,
    is_tls: bool,
) -> Response<Body> {
    let request_id = crate::ids::new_request_id();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    // What a sign-in plugin would be handed of it (no client's forwarding or identity headers,
    // the gateway's own forwarding headers), less the API key: that is for the gateway, and
    // the plugin is told whose it is, never handed it.
    let mut request = crate::signin::sdk_request(&req, Vec::new(), peer, is_tls, &shared.routes.load());
    request
        .headers
        .retain(|(name, _)| !name.eq_ignore_ascii_case(header::AUTHORIZATION.as_str()));
    let (caller, body) = match admit(shared, req, peer).await {
        Ok((api_key, body)) => (Caller::ApiKey { id: api_key }, body),
        Err(refusal) => (
            Caller::Refused {
                status: refusal.status.as_u16(),
                reason: refusal.msg,
            },
            Bytes::new(),
        ),
    };
    // The rest of a body that did not come in time is not waited for.
    let unread_body = matches!(caller, Caller::Refused { status: 408, .. });
    request.body = body.to_vec();
    let request = ProvisioningRequest {
        request,
        caller: caller.clone(),
    };
    let host = shared
        .ports()
        .provisioning_host(&plugin.info.name, &caller, tokio::runtime::Handle::current());
    let name = plugin.info.name.clone();
    let outcome = tokio::task::spawn_blocking(move || plugin.call(&host, Call::Provision(request)))
        .await
        .unwrap_or_else(|e| {
            Err(PluginError::Internal(format!(
                "the provisioning call did not finish: {e}"
            )))
        });
    let mut response = match outcome {
        Ok(Outcome::Respond(answer)) => crate::signin::from_sdk_response(answer),
        Ok(other) => failure(
            PluginError::Internal(format!("provision answered {other:?}")),
            &name,
            &request_id,
        ),
        Err(e) => failure(e, &name, &request_id),
    };
    if unread_body {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let status = response.status().as_u16();
    match &caller {
        Caller::ApiKey { id } if method != "GET" => {
            tracing::info!(target: "portcullis::audit", request_id, event = "provisioning", api_key = %id, plugin = %name, method, path, status, "provisioning request");
        }
        Caller::Refused { reason, .. } => {
            tracing::info!(request_id, plugin = %name, method, path, status, "provisioning request refused: {reason}");
        }
        Caller::ApiKey { .. } => {}
    }
    tracing::info!(target: "portcullis::access", request_id, method, path, status, plugin = %name, "provisioning request");
    response
}

/// The API key id and the body of a request the management API would accept, or why not:
/// the address first, then the key, then the body.
async fn admit(
    shared: &Shared,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<(String, Bytes), crate::api::ApiError> {
    if !shared.config.load().api.allows(peer.ip()) {
        return Err(crate::api::ApiError::address_not_allowed(peer.ip()));
    }
    let api_key = crate::api::authenticate(shared, req.headers()).await?;
    let body = crate::api::read_body(shared, req).await?;
    Ok((api_key, body))
}

/// The answer when the plugin failed: a plain-text status line with the request id (details
/// only in the log).
fn failure(error: PluginError, plugin: &str, request_id: &str) -> Response<Body> {
    let status = match &error {
        PluginError::BadRequest(_) => StatusCode::BAD_REQUEST,
        PluginError::Forbidden(_) => StatusCode::FORBIDDEN,
        PluginError::Upstream(_) => StatusCode::BAD_GATEWAY,
        PluginError::Internal(_) | PluginError::Panicked(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let text = match error {
        PluginError::BadRequest(message) | PluginError::Forbidden(message) => message,
        other => {
            tracing::error!(request_id, plugin, "provisioning plugin failed: {other}");
            "the provisioning plugin failed".to_string()
        }
    };
    let mut response = Response::new(full(format!("{text} (request id {request_id})\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
