//! The calls into plugins on behalf of the edge (on a blocking thread, with the module's host)
//! and the conversion between HTTP messages and the SDK's: the request a plugin is handed,
//! the response it gives, and the page for a failed call.

use crate::cookies::{cookie_crumbs, crumb_name, is_token};
use crate::pages::{error_page, full, Body};
use crate::plugins::Registered;
use crate::routing::{AuthTarget, RouteTable};
use crate::state::Shared;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use portcullis_plugin_sdk::{Call, HttpRequest, HttpResponse, Outcome, PluginError};
use std::net::SocketAddr;
use std::sync::Arc;

/// The request a plugin is handed (here, and for a provisioning call on the console,
/// `provisioning.rs`): what an upstream would get of it (see
/// `set_identity_headers`), so no plugin bases a decision on what a client claims: the headers
/// other proxies set removed, the gateway's own forwarding headers, and one `cookie` header
/// with only the pairs whose name is an RFC 6265 token (a name such as "\u{2000}__Host-x",
/// which any host of the parent domain can set, is not handed on for a plugin to trim into
/// its own `__Host-` cookie's).
pub fn sdk_request<B>(
    req: &Request<B>,
    body: Vec<u8>,
    peer: SocketAddr,
    is_tls: bool,
    table: &RouteTable,
) -> HttpRequest {
    let mut headers = req.headers().clone();
    table.identity_headers.remove_untrusted(&mut headers);
    let host = crate::routing::original_host(req);
    if let Some(host) = &host {
        headers.insert(header::HOST, host.clone());
    }
    crate::routing::set_forwarding_headers(&mut headers, peer, is_tls, host.as_ref());
    let cookies: Vec<&[u8]> = cookie_crumbs(req.headers())
        .filter(|crumb| is_token(crumb_name(crumb)))
        .collect();
    headers.remove(header::COOKIE);
    let mut headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if !cookies.is_empty() {
        headers.push((
            header::COOKIE.as_str().to_string(),
            String::from_utf8_lossy(&cookies.join(&b"; "[..])).into_owned(),
        ));
    }
    HttpRequest {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        headers,
        body,
        remote_addr: peer.ip().to_string(),
    }
}

pub fn from_sdk_response(response: HttpResponse) -> Response<Body> {
    let mut out = Response::new(full(response.body));
    *out.status_mut() = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in response.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
            out.headers_mut().append(name, value);
        }
    }
    out
}

/// Calls a plugin on a blocking thread with the module's host.
pub async fn call_plugin(
    shared: &Arc<Shared>,
    plugin: &Arc<Registered>,
    auth: &AuthTarget,
    route_id: &str,
    call: Call,
) -> Result<Outcome, PluginError> {
    let host = shared.ports().module_host(
        &auth.module.plugin,
        route_id,
        &auth.module.egress_hosts,
        tokio::runtime::Handle::current(),
    );
    let plugin = plugin.clone();
    tokio::task::spawn_blocking(move || plugin.call(&host, call))
        .await
        .unwrap_or_else(|e| Err(PluginError::Internal(format!("plugin call did not finish: {e}"))))
}

/// The page for a failed plugin call; internal details go only to the log.
pub fn plugin_failure(error: PluginError, plugin: &str, request_id: &str) -> Response<Body> {
    match error {
        PluginError::BadRequest(message) => error_page(
            StatusCode::BAD_REQUEST,
            "Sign-in request not accepted",
            &message,
            request_id,
        ),
        PluginError::Forbidden(message) => error_page(StatusCode::FORBIDDEN, "Access denied", &message, request_id),
        PluginError::Upstream(message) => {
            tracing::warn!(request_id, plugin, "identity provider: {message}");
            error_page(
                StatusCode::BAD_GATEWAY,
                "Identity provider unavailable",
                "The sign-in service did not answer as expected. Try again later.",
                request_id,
            )
        }
        PluginError::Internal(message) | PluginError::Panicked(message) => {
            tracing::error!(request_id, plugin, "plugin failed: {message}");
            error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Sign-in failed",
                "The sign-in module failed. The operator can find details in the log.",
                request_id,
            )
        }
    }
}
