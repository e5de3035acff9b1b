//! Logout (`/_portcullis/logout`): ends the sessions of every module of the edge the browser
//! has a cookie for, asks their plugins for a sign-out response (SAML/OIDC single logout),
//! and clears the cookies; a cross-site request gets a confirmation page instead.

use super::plugin::{call_plugin, from_sdk_response};
use super::{identity_of, module_context, RESERVED_PREFIX};
use crate::cookies::cookie_values;
use crate::pages::{error_page, full, Body};
use crate::routing::{RouteTable, RouteTarget};
use crate::sessions::SessionEntry;
use crate::state::Shared;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use portcullis_plugin_sdk::{Call, Outcome};
use std::sync::Arc;

/// A page asking the user to confirm signing out (for requests that came from another site).
pub fn logout_confirmation(request_id: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign out?</title></head>\
<body style=\"font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto\"><h1>Sign out?</h1>\
<form method=\"post\" action=\"{RESERVED_PREFIX}logout\"><button type=\"submit\">Sign out</button></form>\
<p><small>request id <code>{}</code></small></p></body></html>\n",
        crate::pages::escape(request_id)
    );
    let mut response = Response::new(full(html));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Ends the sessions of every module of this edge the browser has a cookie for.
pub async fn logout(
    shared: &Arc<Shared>,
    table: &RouteTable,
    hostport: &str,
    req: &Request<Incoming>,
    request_id: &str,
) -> Response<Body> {
    let mut ended: Vec<(Arc<SessionEntry>, Arc<RouteTarget>)> = Vec::new();
    let mut clear = Vec::new();
    for target in table.routes_of(hostport) {
        let Some(auth) = &target.auth else { continue };
        // The module's cookie, and on https its name from before the `__Host-` prefix.
        let mut names = vec![&auth.cookie_name];
        if auth.plain_cookie_name != auth.cookie_name {
            names.push(&auth.plain_cookie_name);
        }
        for name in names {
            for token in cookie_values(req.headers(), name) {
                let Some(entry) = shared.sessions.find_by_token(token) else {
                    continue;
                };
                // A session belongs to the route it was made on, whichever route shares its cookie name.
                let owner = table.find_route(hostport, &entry.session.route_id);
                if let Some(owner) = owner.filter(|_| !ended.iter().any(|(e, _)| e.session.id == entry.session.id)) {
                    ended.push((entry, owner));
                }
            }
            clear.push(format!(
                "{name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{}",
                if auth.cookie_secure { "; Secure" } else { "" }
            ));
        }
    }
    clear.sort();
    clear.dedup();
    let ids: Vec<String> = ended.iter().map(|(e, _)| e.session.id.clone()).collect();
    if let Err(e) = shared.accounts.end_sessions(&ids).await {
        tracing::error!(request_id, "ending sessions: {e}");
    }
    let mut response = None;
    for (entry, target) in &ended {
        tracing::info!(target: "portcullis::audit", request_id, event = "logout", session = %entry.session.id, user = %entry.session.user_id, "logout");
        let Some(auth) = &target.auth else { continue };
        let Some(plugin) = shared.registry.get(&auth.module.plugin) else {
            continue;
        };
        let identity = identity_of(&entry.session);
        let call = Call::Logout {
            module: module_context(target, auth),
            identity,
        };
        match call_plugin(shared, plugin, auth, &target.route_id, call).await {
            Ok(Outcome::LoggedOut(Some(r))) if response.is_none() => response = Some(from_sdk_response(r)),
            Ok(_) => {}
            Err(e) => tracing::warn!(request_id, "plugin logout: {e}"),
        }
    }
    let mut response = response.unwrap_or_else(|| {
        let mut page = error_page(
            StatusCode::OK,
            "Signed out",
            "You are signed out of this site.",
            request_id,
        );
        page.headers_mut().remove("x-request-id");
        page
    });
    for cookie in clear {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}
