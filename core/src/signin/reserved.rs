//! The reserved paths under `/_portcullis/` on every edge host, which the route phase sends
//! here: the JWKS of the identity assertion, logout (a cross-site request gets a confirmation
//! page), and each route's plugin endpoints (`auth/<route id>/...`), whose answers are pages,
//! completed logins or sessions an identity provider ends.

use super::body::read_body;
use super::complete::complete_login;
use super::logout::{logout, logout_confirmation};
use super::plugin::{call_plugin, from_sdk_response, plugin_failure, sdk_request};
use super::{module_context, RESERVED_PREFIX};
use crate::model::Session;
use crate::pages::{error_page, full, Body};
use crate::routing::RouteTable;
use crate::state::Shared;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use portcullis_plugin_sdk::{Call, Outcome, PluginError};
use std::net::SocketAddr;
use std::sync::Arc;

/// Serves a path under [`RESERVED_PREFIX`] on an edge's host.
pub async fn reserved(
    shared: &Arc<Shared>,
    table: &RouteTable,
    hostport: &str,
    req: Request<Incoming>,
    peer: SocketAddr,
    is_tls: bool,
    request_id: &str,
) -> Response<Body> {
    let origin = &origin_of(&req, is_tls);
    let path = req.uri().path().to_string();
    let rest = path.strip_prefix(RESERVED_PREFIX).unwrap_or_default();
    if rest == "jwks.json" {
        let mut response = Response::new(full(shared.signer.jwks().to_string()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jwk-set+json"),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
        return response;
    }
    if rest == "logout" {
        // A cross-site page must not sign people out: it gets a confirmation form instead.
        let cross_site = req
            .headers()
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() == b"cross-site")
            || req.headers().get(header::ORIGIN).is_some_and(|o| {
                let host = |url: &[u8]| {
                    url.splitn(2, |&b| b == b':')
                        .nth(1)
                        .map(|rest| rest.trim_ascii_start().strip_prefix(b"//").unwrap_or(rest).to_vec())
                };
                host(o.as_bytes()) != host(origin.as_bytes())
            });
        if cross_site {
            return logout_confirmation(request_id);
        }
        return logout(shared, table, hostport, &req, request_id).await;
    }
    let Some(module_path) = rest.strip_prefix("auth/") else {
        return error_page(
            StatusCode::NOT_FOUND,
            "Not found",
            "Nothing is served at this gateway path.",
            request_id,
        );
    };
    let route_id = module_path.split('/').next().unwrap_or_default();
    let Some(target) = table.find_route(hostport, route_id) else {
        return error_page(
            StatusCode::NOT_FOUND,
            "Not found",
            "No sign-in module of this site has this address.",
            request_id,
        );
    };
    let Some(auth) = &target.auth else {
        return error_page(
            StatusCode::NOT_FOUND,
            "Not found",
            "This route has no sign-in module.",
            request_id,
        );
    };
    let Some(plugin) = shared.registry.get(&auth.module.plugin) else {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in unavailable",
            "The sign-in module of this route is not loaded.",
            request_id,
        );
    };
    let (parts, body) = req.into_parts();
    let body = match read_body(body, shared.proxy_config.body_read_timeout()).await {
        Ok(body) => body,
        Err(refusal) => return refusal.page(request_id),
    };
    let head = Request::from_parts(parts, ());
    let request = sdk_request(&head, body.to_vec(), peer, is_tls, table);
    let call = Call::Handle {
        module: module_context(&target, auth),
        request,
    };
    match call_plugin(shared, plugin, auth, &target.route_id, call).await {
        Ok(Outcome::Respond(response)) => from_sdk_response(response),
        Ok(Outcome::LoggedIn { identity, return_to }) => {
            complete_login(
                shared, &target, auth, origin, &head, peer, identity, &return_to, request_id,
            )
            .await
        }
        Ok(Outcome::EndSessions {
            subject,
            session_indexes,
            response,
        }) => {
            let route_id = &target.route_id;
            let named = |s: &Session| {
                session_indexes.is_empty()
                    || s.session_index
                        .as_ref()
                        .is_none_or(|index| session_indexes.contains(index))
            };
            match shared
                .accounts
                .end_sessions_where(|s| s.route_id == *route_id && s.subject == subject && named(s))
                .await
            {
                Ok(ended) => {
                    tracing::info!(target: "portcullis::audit", request_id, event = "logout_by_provider", route = %route_id, plugin = %auth.module.plugin, sessions = ended, "identity provider ended a login");
                    from_sdk_response(response)
                }
                Err(e) => {
                    tracing::error!(request_id, "ending sessions: {e}");
                    error_page(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Sign-out failed",
                        "The gateway could not end the sessions.",
                        request_id,
                    )
                }
            }
        }
        Ok(other) => plugin_failure(
            PluginError::Internal(format!("handle answered {other:?}")),
            &auth.module.plugin,
            request_id,
        ),
        Err(e) => plugin_failure(e, &auth.module.plugin, request_id),
    }
}

/// `scheme://host[:port]` as the browser addressed the request.
pub fn origin_of<B>(req: &Request<B>, is_tls: bool) -> String {
    let scheme = if is_tls { "https" } else { "http" };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}
