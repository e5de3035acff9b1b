//! Starting a sign-in: the edge's "sign-in" phase, for a request the session gate found not
//! signed in on a route with a sign-in module. A browser's sub-resource gets a 401 instead, and
//! starts are rate-limited per address and route (counted in the store) before the plugin is
//! asked for its login page or redirect.

use super::plugin::{call_plugin, from_sdk_response, plugin_failure, sdk_request};
use super::{module_context, safe_return_to};
use crate::pages::{error_page, Body};
use crate::routing::{AuthTarget, RouteTable, RouteTarget};
use crate::state::Shared;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use portcullis_plugin_sdk::{Call, Outcome, PluginError};
use std::net::SocketAddr;
use std::sync::Arc;

/// Sign-ins one address may start on one route per minute.
const MAX_LOGIN_STARTS_PER_MINUTE: u64 = 300;
/// The store namespace of the sign-in start counters (plugins' namespaces contain a `/`).
const LOGIN_STARTS: &str = "core:login-starts";

/// Starts a sign-in on `target`'s module `auth` for a request that has no valid session.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    shared: &Arc<Shared>,
    table: &RouteTable,
    target: &RouteTarget,
    auth: &AuthTarget,
    req: &Request<Incoming>,
    peer: SocketAddr,
    is_tls: bool,
    request_id: &str,
) -> Response<Body> {
    let now = shared.clock.now();
    let Some(plugin) = shared.registry.get(&auth.module.plugin) else {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in unavailable",
            "The sign-in module of this route is not loaded.",
            request_id,
        );
    };
    // A browser's sub-resource (image, script, fetch) cannot follow a sign-in page: answer 401
    // rather than start a login it would abandon (and that would replace the page's own).
    let destination = req.headers().get("sec-fetch-dest").map(|v| v.as_bytes());
    if destination.is_some_and(|d| d != b"document" && d != b"iframe" && d != b"frame") {
        let mut page = error_page(
            StatusCode::UNAUTHORIZED,
            "Sign-in required",
            "Sign in to this site first.",
            request_id,
        );
        page.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Portcullis"));
        return page;
    }
    // Every sign-in start costs the plugin work and state: at most so many a minute per
    // address (an IPv6 /64 counts as one) and route, whatever the protocol.
    let bucket = portcullis_plugin_sdk::client_bucket(&peer.ip().to_string());
    let starts = shared
        .store
        .kv_incr(
            LOGIN_STARTS,
            &format!("{}|{bucket}", target.route_id),
            now,
            Some(now + 60),
        )
        .await
        .unwrap_or(u64::MAX);
    if starts > MAX_LOGIN_STARTS_PER_MINUTE {
        return error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-ins",
            "Too many sign-ins were started from your address. Wait a minute and try again.",
            request_id,
        );
    }
    let asked = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let return_to = safe_return_to(asked).unwrap_or("/").to_string();
    let request = sdk_request(req, Vec::new(), peer, is_tls, table);
    let call = Call::StartLogin {
        module: module_context(target, auth),
        return_to,
        request,
    };
    match call_plugin(shared, plugin, auth, &target.route_id, call).await {
        Ok(Outcome::Respond(response)) => from_sdk_response(response),
        Ok(other) => plugin_failure(
            PluginError::Internal(format!("start_login answered {other:?}")),
            &auth.module.plugin,
            request_id,
        ),
        Err(e) => plugin_failure(e, &auth.module.plugin, request_id),
    }
}
