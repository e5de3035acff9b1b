//! The per-request session gate (the edge's "session gate" phase) and the identity a passed
//! request carries upstream (part of its "forward" phase): the session cookie -> the session
//! index -> identity headers and the signed assertion.
//!
//! The gate never calls a plugin and never writes the store: it reads the session index, in
//! memory, and only when the index does not know a token, the store once (a session another
//! replica made; see `Sessions::check_or_load`). A request that is not signed in is answered
//! [`Gate::SignIn`], and the proxy hands it to sign-in (`signin`), which starts one.

use crate::clock::Clock;
use crate::cookies::{cookie_values, strip_cookie, strip_gateway_cookies};
use crate::identity::Signer;
use crate::routing::{AuthTarget, RouteTable, RouteTarget};
use crate::sessions::{hash_token, SessionEntry, Sessions};
use crate::store::Storage;
use http::header::{HeaderMap, HeaderValue};
use http::{Method, Request};
use std::sync::Arc;

/// Lifetime of a signed identity assertion (re-signed before it runs out).
const ASSERTION_TTL: i64 = 300;

/// What the gate decided for a request on a route.
pub enum Gate<'a> {
    /// Proxy it, with this session's identity when there is one.
    Pass(Option<Arc<SessionEntry>>),
    /// The route's sign-in module needs a session and the request has none: sign-in's turn.
    SignIn(&'a AuthTarget),
}

/// Decides whether a request may reach the route's upstream: a route without a sign-in module,
/// an `OPTIONS` let through by `options_passthrough`, or one valid session cookie.
pub async fn gate<'a, B>(
    sessions: &Sessions,
    store: &dyn Storage,
    clock: &dyn Clock,
    target: &'a RouteTarget,
    req: &Request<B>,
) -> Gate<'a> {
    let Some(auth) = &target.auth else {
        return Gate::Pass(None);
    };
    if auth.module.options_passthrough && req.method() == Method::OPTIONS {
        return Gate::Pass(None);
    }
    let now = clock.now();
    // One session cookie (sent once or repeated): a second, different one is someone else's
    // cookie tossed in (a sibling subdomain can set one for the parent domain), and neither
    // may be chosen over the other.
    let hash = {
        let mut tokens = cookie_values(req.headers(), &auth.cookie_name);
        let first = tokens.next();
        first
            .filter(|first| tokens.all(|other| other == *first))
            .map(hash_token)
    };
    if let Some(hash) = hash {
        if let Some(entry) = sessions.check_or_load(store, &hash, &target.route_id, now).await {
            return Gate::Pass(Some(entry));
        }
    }
    Gate::SignIn(auth)
}

/// Removes incoming identity headers and every other header upstreams might trust (see
/// `routing::UNTRUSTED_REQUEST_HEADERS`) and the gateway's own cookies (the upstream never
/// sees a session token), then adds the session's identity.
pub fn set_identity_headers(
    signer: &Signer,
    clock: &dyn Clock,
    table: &RouteTable,
    target: &RouteTarget,
    headers: &mut HeaderMap,
    session: Option<&SessionEntry>,
) {
    let names = &table.identity_headers;
    // With their look-alikes: names that differ only by `_` for `-` reach CGI-style upstreams
    // as the same variable (`HTTP_X_PORTCULLIS_USER_ID`).
    names.remove_untrusted(headers);
    for cookie in target.edge_session_cookies.iter() {
        strip_cookie(headers, cookie);
    }
    strip_gateway_cookies(headers);
    let Some(entry) = session else { return };
    let targets = [&names.user_id, &names.email, &names.name, &names.groups];
    for (name, value) in targets.into_iter().zip(&entry.identity_values) {
        match value {
            Some(value) => {
                headers.insert(name.clone(), value.clone());
            }
            None => {
                tracing::warn!(session = %entry.session.id, header = %name, "identity value not sendable as a header; left out")
            }
        }
    }
    if let Some(assertion) = assertion_for(signer, clock, entry) {
        headers.insert(names.assertion.clone(), assertion);
    }
    if let Some(token) = &entry.access_token {
        headers.insert(names.access_token.clone(), token.clone());
    }
}

/// The session's signed assertion, re-signed when close to expiry.
fn assertion_for(signer: &Signer, clock: &dyn Clock, entry: &SessionEntry) -> Option<HeaderValue> {
    let now = clock.now();
    if let Some(cached) = entry.assertion.load().as_ref() {
        if cached.expires_at - now > ASSERTION_TTL / 5 {
            return Some(cached.header.clone());
        }
    }
    let s = &entry.session;
    let expires_at = (now + ASSERTION_TTL).min(s.expires_at);
    let claims = serde_json::json!({
        "iss": s.origin, "aud": s.route_id, "sub": s.subject, "uid": s.user_id, "sid": s.id,
        "email": s.email, "name": s.name, "groups": s.groups, "iat": now, "exp": expires_at,
    });
    let token = signer
        .sign(&claims)
        .map_err(|e| tracing::error!("identity assertion: {e}"))
        .ok()?;
    let header = HeaderValue::from_str(&token).ok()?;
    entry.assertion.store(Some(Arc::new(crate::sessions::Assertion {
        expires_at,
        header: header.clone(),
    })));
    Some(header)
}
