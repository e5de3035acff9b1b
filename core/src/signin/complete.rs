//! Completing a sign-in: the user the identity names (found or made), a new session with a
//! fresh token, the session cookie, and the redirect back to a same-origin path.

use super::safe_return_to;
use crate::accounts::{AccountsError, LoginIdentity};
use crate::model::Session;
use crate::pages::{error_page, full, Body};
use crate::routing::{AuthTarget, RouteTarget};
use crate::state::Shared;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use portcullis_plugin_sdk::Identity;
use std::net::SocketAddr;

/// Creates the session of a completed login and sends the browser on, with a fresh cookie.
#[allow(clippy::too_many_arguments)]
pub async fn complete_login(
    shared: &Shared,
    target: &RouteTarget,
    auth: &AuthTarget,
    origin: &str,
    head: &Request<()>,
    peer: SocketAddr,
    identity: Identity,
    return_to: &str,
    request_id: &str,
) -> Response<Body> {
    let now = shared.clock.now();
    let login = LoginIdentity {
        idp: &auth.module.plugin,
        subject: &identity.subject,
        email: identity.email.as_deref(),
        email_verified: identity.email_verified,
        name: identity.name.as_deref(),
    };
    let user = match shared.accounts.resolve_login(login).await {
        Ok(user) => user,
        Err(AccountsError::Disabled) => {
            return account_disabled(request_id);
        }
        Err(e) => {
            tracing::error!(request_id, "user directory: {e}");
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Sign-in failed",
                "The gateway could not record the sign-in.",
                request_id,
            );
        }
    };
    let (token, token_hash) = crate::sessions::new_token();
    let session = Session {
        id: crate::ids::new_id(crate::ids::APP_SESSION, now),
        token_hash,
        user_id: user.id.clone(),
        edge_id: target.edge_id.clone(),
        route_id: target.route_id.clone(),
        plugin: auth.module.plugin.clone(),
        origin: origin.to_string(),
        subject: identity.subject,
        // An unverified address is not the user's, but the session carries what the provider
        // said, as the identity's email.
        email: match identity.email {
            Some(email) if !identity.email_verified => email,
            _ => user.email.clone(),
        },
        name: user.name.clone(),
        groups: identity.groups,
        plugin_data: identity.plugin_data,
        access_token: identity.access_token,
        recheck_interval: i64::try_from(identity.recheck_interval_secs).unwrap_or(i64::MAX),
        checked_at: now,
        session_index: identity.session_index,
        created_at: now,
        last_active: now,
        expires_at: now + i64::from(auth.module.maximum_duration),
        inactivity_timeout: i64::from(auth.module.inactivity_timeout),
        ip: peer.ip().to_string(),
        user_agent: head
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    };
    let entry = match shared.accounts.start_session(session).await {
        Ok(entry) => entry,
        Err(AccountsError::Disabled) => {
            return account_disabled(request_id);
        }
        Err(e) => {
            tracing::error!(request_id, "session store: {e}");
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Sign-in failed",
                "The gateway could not record the sign-in.",
                request_id,
            );
        }
    };
    tracing::info!(target: "portcullis::audit", request_id, event = "login", user = %user.id, session = %entry.session.id, route = %target.route_id, plugin = %auth.module.plugin, "login");
    let location = safe_return_to(return_to).map_or_else(|| "/".to_string(), encode_non_ascii);
    // An https edge (its own TLS, or an https public URL in front) has a `__Host-` cookie:
    // `Secure`, `Path=/` and no `Domain`, so no other host can set one of that name.
    let cookie = format!(
        "{}={token}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
        auth.cookie_name,
        auth.module.maximum_duration,
        if auth.cookie_secure { "; Secure" } else { "" }
    );
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).unwrap_or(HeaderValue::from_static("/")),
    );
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        headers.append(header::SET_COOKIE, cookie);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Percent-encodes the bytes of `path` that a header value cannot carry.
fn encode_non_ascii(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii() && !b.is_ascii_control() {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The page for a person who may not sign in (deactivated, or deleted during the sign-in).
fn account_disabled(request_id: &str) -> Response<Body> {
    error_page(
        StatusCode::FORBIDDEN,
        "Account disabled",
        "This account may not sign in.",
        request_id,
    )
}
