//! Authentication on the edge: route auth modules, the per-request session gate, the
//! reserved paths under `/_portcullis/`, and the login and logout round trips.
//!
//! The per-request path (cookie -> session -> identity headers) stays in core and never
//! crosses into a plugin. Plugins are called only for login-time work, on blocking threads.

use crate::accounts::{AccountsError, LoginIdentity};
use crate::model::{AuthModule, Session};
use crate::pages::{error_page, full, Body};
use crate::plugins::host::PluginHost;
use crate::plugins::{Registered, Registry};
use crate::routing::{AuthTarget, RouteTable, RouteTarget};
use crate::sessions::SessionEntry;
use crate::state::Shared;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use portcullis_plugin_sdk::{
    Call, Capability, HttpRequest, HttpResponse, Identity, ModuleContext, Outcome, PluginError, Recheck,
};
use serde_json::{Map, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// Paths under this prefix belong to the gateway on every edge and never reach an upstream.
pub const RESERVED_PREFIX: &str = "/_portcullis/";
/// Largest body of a request to a plugin's endpoints.
const MAX_PLUGIN_BODY: usize = 1024 * 1024;
/// Sign-ins one address may start on one route per minute.
const MAX_LOGIN_STARTS_PER_MINUTE: u64 = 300;
/// The store namespace of the sign-in start counters (plugins' namespaces contain a `/`).
const LOGIN_STARTS: &str = "core:login-starts";
/// Lifetime of a signed identity assertion (re-signed before it runs out).
const ASSERTION_TTL: i64 = 300;

// ----- modules -----

/// A module option that is wrong: the option's key and what is wrong.
pub type ModuleError = (String, String);

/// Builds an auth module for `plugin` from its flat JSON object (common options and the
/// plugin's own), validating both.
pub async fn parse_module(
    registry: &Registry,
    plugin: &str,
    mut object: Map<String, Value>,
) -> Result<AuthModule, ModuleError> {
    let registered = registry
        .get(plugin)
        .filter(|p| p.info.capabilities.contains(&Capability::BrowserLogin))
        .cloned()
        .ok_or_else(|| {
            (
                String::new(),
                format!("no browser-login plugin named `{plugin}` is registered"),
            )
        })?;
    object.remove("plugin");
    let flag = |object: &mut Map<String, Value>, key: &str, default: bool| match object.remove(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(b),
        Some(other) => Err((key.to_string(), format!("must be true or false, not {other}"))),
    };
    let seconds = |object: &mut Map<String, Value>, key: &str| match object.remove(key) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| (key.to_string(), format!("must be a whole number of seconds, not {n}"))),
        Some(other) => Err((
            key.to_string(),
            format!("must be a whole number of seconds, not {other}"),
        )),
    };
    let enabled = flag(&mut object, "enabled", true)?;
    let options_passthrough = flag(&mut object, "options_passthrough", false)?;
    let cookie_prefix = match object.remove("cookie_prefix") {
        None | Some(Value::Null) => crate::model::DEFAULT_COOKIE_PREFIX.to_string(),
        Some(Value::String(s)) if s.is_empty() => crate::model::DEFAULT_COOKIE_PREFIX.to_string(),
        Some(Value::String(s)) => s,
        Some(other) => return Err(("cookie_prefix".into(), format!("must be a string, not {other}"))),
    };
    crate::model::validate_cookie_prefix(&cookie_prefix).map_err(|m| ("cookie_prefix".to_string(), m))?;
    let inactivity_timeout = seconds(&mut object, "inactivity_timeout")?;
    let maximum_duration = seconds(&mut object, "maximum_duration")?;
    let options_json = Value::Object(object).to_string();
    let call = Call::ValidateOptions {
        options_json: options_json.clone(),
    };
    let answer = tokio::task::spawn_blocking(move || registered.call(&crate::plugins::host::Detached, call))
        .await
        .map_err(|e| (String::new(), format!("the plugin's validation did not finish: {e}")))?;
    let plan = match answer {
        Ok(Outcome::Valid(plan)) => plan,
        Ok(Outcome::Invalid(errors)) => {
            let first = errors.into_iter().next().map(|e| (e.key, e.message));
            return Err(first.unwrap_or_else(|| (String::new(), "the plugin refused the options".into())));
        }
        Ok(other) => return Err((String::new(), format!("the plugin answered {other:?} to a validation"))),
        Err(e) => return Err((String::new(), format!("the plugin failed to validate the options: {e}"))),
    };
    Ok(AuthModule {
        plugin: plugin.to_string(),
        enabled,
        options_passthrough,
        cookie_prefix,
        inactivity_timeout: if inactivity_timeout == 0 {
            crate::model::DEFAULT_INACTIVITY_TIMEOUT
        } else {
            inactivity_timeout
        },
        maximum_duration: if maximum_duration == 0 {
            crate::model::DEFAULT_MAXIMUM_DURATION
        } else {
            maximum_duration
        },
        options_json,
        egress_hosts: plan.egress_hosts,
    })
}

/// The flat JSON of a module, as the API shows it: its options and its plugin's outputs.
pub fn module_json(module: &AuthModule, outputs: Option<&Map<String, Value>>) -> Value {
    let mut object = match serde_json::from_str::<Value>(&module.options_json) {
        Ok(Value::Object(object)) => object,
        _ => Map::new(),
    };
    for (key, value) in outputs.into_iter().flatten() {
        object.insert(key.clone(), value.clone());
    }
    object.insert("enabled".into(), module.enabled.into());
    object.insert("options_passthrough".into(), module.options_passthrough.into());
    object.insert("cookie_prefix".into(), module.cookie_prefix.clone().into());
    object.insert("inactivity_timeout".into(), module.inactivity_timeout.into());
    object.insert("maximum_duration".into(), module.maximum_duration.into());
    Value::Object(object)
}

/// A module's read-only outputs by route id (see [`describe_modules`]).
pub type ModuleOutputs = std::collections::HashMap<String, Map<String, Value>>;

/// Asks each module's plugin for its read-only outputs (the SAML entity id, URLs to register
/// at the IdP, ...), in one blocking task. `modules` are (route id, edge hostports, module).
/// A plugin that fails is logged and its module shown without outputs.
pub async fn describe_modules(shared: &Arc<Shared>, modules: Vec<(String, Vec<String>, AuthModule)>) -> ModuleOutputs {
    if modules.is_empty() {
        return ModuleOutputs::new();
    }
    let shared = shared.clone();
    let runtime = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        let mut outputs = ModuleOutputs::new();
        for (route_id, hostports, module) in modules {
            match describe_one(&shared, &runtime, &route_id, &hostports, &module) {
                Ok(object) => {
                    outputs.insert(route_id, object);
                }
                Err(e) => tracing::error!(plugin = %module.plugin, route = %route_id, "describe_module: {e}"),
            }
        }
        outputs
    });
    task.await.unwrap_or_default()
}

/// Asks a module's plugin for its outputs, and so whether the module can work (a provider it
/// must reach, state it must make): the API refuses a module whose plugin fails here.
pub async fn check_module(
    shared: &Arc<Shared>,
    route_id: &str,
    hostports: &[String],
    module: &AuthModule,
) -> Result<(), PluginError> {
    let (shared, runtime) = (shared.clone(), tokio::runtime::Handle::current());
    let (route_id, hostports, module) = (route_id.to_string(), hostports.to_vec(), module.clone());
    tokio::task::spawn_blocking(move || describe_one(&shared, &runtime, &route_id, &hostports, &module).map(|_| ()))
        .await
        .unwrap_or_else(|e| Err(PluginError::Internal(format!("the check did not finish: {e}"))))
}

fn describe_one(
    shared: &Arc<Shared>,
    runtime: &tokio::runtime::Handle,
    route_id: &str,
    hostports: &[String],
    module: &AuthModule,
) -> Result<Map<String, Value>, PluginError> {
    let plugin = shared
        .registry
        .get(&module.plugin)
        .ok_or_else(|| PluginError::Internal(format!("no plugin `{}` is registered", module.plugin)))?;
    let host = PluginHost {
        shared,
        namespace: format!("{}/{route_id}", module.plugin),
        plugin: &plugin.info.name,
        egress_hosts: &module.egress_hosts,
        runtime: runtime.clone(),
    };
    let scheme = shared.config.load().listeners.edge.scheme();
    let call = Call::DescribeModule {
        module: ModuleContext {
            module_id: route_id.to_string(),
            options_json: module.options_json.clone(),
            origin: crate::routing::public_origin(scheme, hostports),
            mount_path: mount_path(route_id),
        },
    };
    match plugin.call(&host, call)? {
        Outcome::Described { outputs_json } => match serde_json::from_str(&outputs_json) {
            Ok(Value::Object(object)) => Ok(object),
            _ => Err(PluginError::Internal("module outputs are not a JSON object".into())),
        },
        other => Err(PluginError::Internal(format!("describe_module answered {other:?}"))),
    }
}

// ----- the per-request gate -----

/// What the gate decided for a request on a route.
pub enum Gate {
    /// Proxy it, with this session's identity when there is one.
    Pass(Option<Arc<SessionEntry>>),
    /// Answer the browser directly (a login page or redirect, or an error page).
    Respond(Response<Body>),
}

/// Decides whether a request may reach the route's upstream.
pub async fn gate(
    shared: &Arc<Shared>,
    table: &RouteTable,
    target: &RouteTarget,
    req: &Request<Incoming>,
    peer: SocketAddr,
    is_tls: bool,
    request_id: &str,
) -> Gate {
    let Some(auth) = &target.auth else {
        return Gate::Pass(None);
    };
    if auth.module.options_passthrough && req.method() == Method::OPTIONS {
        return Gate::Pass(None);
    }
    let now = shared.clock.now();
    // One session cookie (sent once or repeated): a second, different one is someone else's
    // cookie tossed in (a sibling subdomain can set one for the parent domain), and neither
    // may be chosen over the other.
    let mut tokens = cookie_values(req.headers(), &auth.cookie_name);
    let first = tokens.next();
    if let Some(token) = first.filter(|first| tokens.all(|other| other == *first)) {
        if let Some(entry) = shared.sessions.check(token, &target.route_id, now) {
            return Gate::Pass(Some(entry));
        }
    }
    let Some(plugin) = &auth.plugin else {
        return Gate::Respond(error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in unavailable",
            "The sign-in module of this route is not loaded.",
            request_id,
        ));
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
        return Gate::Respond(page);
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
        return Gate::Respond(error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-ins",
            "Too many sign-ins were started from your address. Wait a minute and try again.",
            request_id,
        ));
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
        Ok(Outcome::Respond(response)) => Gate::Respond(from_sdk_response(response)),
        Ok(other) => Gate::Respond(plugin_failure(
            PluginError::Internal(format!("start_login answered {other:?}")),
            &auth.module.plugin,
            request_id,
        )),
        Err(e) => Gate::Respond(plugin_failure(e, &auth.module.plugin, request_id)),
    }
}

/// Removes incoming identity headers and every other header upstreams might trust (see
/// `routing::UNTRUSTED_REQUEST_HEADERS`) and the gateway's own cookies (the upstream never
/// sees a session token), then adds the session's identity.
pub fn set_identity_headers(
    shared: &Shared,
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
    if let Some(assertion) = assertion_for(shared, entry) {
        headers.insert(names.assertion.clone(), assertion);
    }
    if let Some(token) = &entry.access_token {
        headers.insert(names.access_token.clone(), token.clone());
    }
}

/// The session's signed assertion, re-signed when close to expiry.
fn assertion_for(shared: &Shared, entry: &SessionEntry) -> Option<HeaderValue> {
    let now = shared.clock.now();
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
    let token = shared
        .signer
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

// ----- reserved paths -----

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
    let Some(plugin) = &auth.plugin else {
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

/// Why the body of a request the gateway reads itself was refused.
enum BodyRefusal {
    TooLarge,
    Malformed,
    TimedOut,
}

impl BodyRefusal {
    /// The page for the client; the connection closes after it (the rest of the body is not
    /// waited for).
    fn page(self, request_id: &str) -> Response<Body> {
        let (status, title, detail) = match self {
            BodyRefusal::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request too large",
                "The sign-in request was larger than the gateway accepts.",
            ),
            BodyRefusal::Malformed => (
                StatusCode::BAD_REQUEST,
                "Bad request",
                "The sign-in request's body was malformed or incomplete.",
            ),
            BodyRefusal::TimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                "Request timed out",
                "The sign-in request's body did not arrive in time.",
            ),
        };
        let mut page = error_page(status, title, detail, request_id);
        page.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        page
    }
}

/// Reads a body the gateway handles itself: at most [`MAX_PLUGIN_BODY`] bytes, all of them
/// within `timeout` (a client that announces a body and never sends it holds nothing open).
async fn read_body(body: Incoming, timeout: std::time::Duration) -> Result<Bytes, BodyRefusal> {
    use hyper::body::Body as _;
    // A body announced larger than the cap is refused before any of it is waited for.
    if body.size_hint().lower() > MAX_PLUGIN_BODY as u64 {
        return Err(BodyRefusal::TooLarge);
    }
    match tokio::time::timeout(timeout, Limited::new(body, MAX_PLUGIN_BODY).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyRefusal::TooLarge),
        Ok(Err(_)) => Err(BodyRefusal::Malformed),
        Err(_) => Err(BodyRefusal::TimedOut),
    }
}

/// Creates the session of a completed login and sends the browser on, with a fresh cookie.
#[allow(clippy::too_many_arguments)]
async fn complete_login(
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
        name: identity.name.as_deref(),
    };
    let user = match shared.accounts.resolve_login(login).await {
        Ok(user) => user,
        Err(AccountsError::Disabled) => {
            return error_page(
                StatusCode::FORBIDDEN,
                "Account disabled",
                "This account may not sign in.",
                request_id,
            );
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
        id: crate::ids::new_id(crate::ids::APP_SESSION),
        token_hash,
        user_id: user.id.clone(),
        edge_id: target.edge_id.clone(),
        route_id: target.route_id.clone(),
        plugin: auth.module.plugin.clone(),
        origin: origin.to_string(),
        subject: identity.subject,
        email: user.email.clone(),
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
    let entry = match shared.sessions.insert(&*shared.store, session).await {
        Ok(entry) => entry,
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

/// Asks each session's plugin whether its user still has access, for the sessions whose
/// re-check is due (their module asked for re-checks at login); ends those whose plugin says
/// no and swaps in the access tokens it renewed. Run by the background upkeep; tests call it
/// after moving the clock.
pub async fn recheck_sessions(shared: &Arc<Shared>) {
    let now = shared.clock.now();
    let table = shared.routes.load_full();
    for entry in shared.sessions.due_for_recheck(now) {
        let s = &entry.session;
        let Some(target) = table.route(&s.route_id) else {
            continue;
        };
        let Some(auth) = &target.auth else { continue };
        let Some(plugin) = &auth.plugin else { continue };
        let call = Call::Recheck {
            module: module_context(&target, auth),
            identity: identity_of(s),
        };
        match call_plugin(shared, plugin, auth, &target.route_id, call).await {
            Ok(Outcome::Rechecked(Recheck {
                allowed: true,
                access_token,
            })) => {
                let Some(token) = access_token else { continue };
                match shared
                    .sessions
                    .renew_access_token(&*shared.store, &s.token_hash, token)
                    .await
                {
                    Ok(renewed) => {
                        tracing::debug!(session = %s.id, renewed, "access token renewed by the re-check")
                    }
                    Err(e) => tracing::error!(session = %s.id, "storing a renewed access token: {e}"),
                }
            }
            Ok(Outcome::Rechecked(Recheck { allowed: false, .. })) => {
                let id = s.id.clone();
                match shared.accounts.end_sessions(&[id]).await {
                    Ok(_) => {
                        tracing::info!(target: "portcullis::audit", event = "access_revoked", session = %s.id, user = %s.user_id, route = %s.route_id, plugin = %auth.module.plugin, "the identity provider no longer grants access")
                    }
                    Err(e) => tracing::error!(session = %s.id, "ending a revoked session: {e}"),
                }
            }
            Ok(other) => tracing::error!(plugin = %auth.module.plugin, "recheck answered {other:?}"),
            Err(e) => {
                tracing::warn!(plugin = %auth.module.plugin, session = %s.id, "re-check failed, session kept: {e}")
            }
        }
    }
}

/// A page asking the user to confirm signing out (for requests that came from another site).
fn logout_confirmation(request_id: &str) -> Response<Body> {
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
async fn logout(
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
        let Some(plugin) = &auth.plugin else { continue };
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

// ----- helpers -----

/// The identity a session holds, as its plugin gave it at login (attributes aside).
fn identity_of(s: &Session) -> Identity {
    Identity {
        subject: s.subject.clone(),
        email: Some(s.email.clone()),
        name: Some(s.name.clone()),
        groups: s.groups.clone(),
        attributes: Default::default(),
        plugin_data: s.plugin_data.clone(),
        access_token: s.access_token.clone(),
        recheck_interval_secs: u64::try_from(s.recheck_interval).unwrap_or(0),
        session_index: s.session_index.clone(),
    }
}

/// A return URL the gateway will redirect to: a path on the same origin, and nothing that a
/// browser could read as another host (`//evil`, `/\evil`, encoded variants, schemes).
pub fn safe_return_to(candidate: &str) -> Option<&str> {
    let is_safe = |s: &str| {
        s.starts_with('/')
            && !s.starts_with("//")
            && !s.contains('\\')
            && !s.bytes().any(|b| b.is_ascii_control() || b == b' ')
            && s.len() <= 4096
    };
    if !is_safe(candidate) {
        return None;
    }
    // Browsers and servers decode percent-escapes at various points: check each decoding.
    let mut decoded = candidate.to_string();
    for _ in 0..3 {
        let next = portcullis_plugin_sdk::percent_decode(&decoded);
        if !is_safe(&next) {
            return None;
        }
        if next == decoded {
            break;
        }
        decoded = next;
    }
    Some(candidate)
}

/// Whether a cookie is the gateway's own (a plugin's sign-in binding or nonce): `portcullis-*`,
/// `portcullis_*`, `__Host-portcullis-*`. Upstreams never see these.
fn is_gateway_cookie(name: &str) -> bool {
    let name = name.strip_prefix("__Host-").unwrap_or(name);
    name.starts_with("portcullis-") || name.starts_with("portcullis_")
}

/// Removes the gateway's own cookies (see [`is_gateway_cookie`]) from the request.
fn strip_gateway_cookies(headers: &mut HeaderMap) {
    let present = headers.get_all(header::COOKIE).iter().any(|v| {
        v.as_bytes()
            .windows(11)
            .any(|w| w == b"portcullis-" || w == b"portcullis_")
    });
    if !present {
        return;
    }
    let names: Vec<String> = cookie_crumbs(headers)
        .filter_map(|crumb| std::str::from_utf8(crumb_name(crumb)).ok())
        .filter(|name| is_gateway_cookie(name))
        .map(str::to_string)
        .collect();
    for name in names {
        strip_cookie(headers, &name);
    }
}

/// Removes the cookie `name` from the request's `Cookie` headers (which become one).
fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    if !cookie_crumbs(headers).any(|crumb| crumb_name(crumb) == name.as_bytes()) {
        return;
    }
    let kept: Vec<&[u8]> = cookie_crumbs(headers)
        .filter(|crumb| crumb_name(crumb) != name.as_bytes())
        .collect();
    let kept = (!kept.is_empty()).then(|| HeaderValue::from_bytes(&kept.join(&b"; "[..])));
    headers.remove(header::COOKIE);
    if let Some(Ok(value)) = kept {
        headers.insert(header::COOKIE, value);
    }
}

/// The `name=value` pairs of every `Cookie` header, as sent: split at `;`, with spaces and tabs
/// around them trimmed (RFC 6265 section 5.4 puts "; " between them), and nothing else: a
/// cookie named "\u{2000}__Host-x", which any host of the parent domain can set and browsers
/// send as it was set, is not `__Host-x`.
fn cookie_crumbs(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|crumb| !crumb.is_empty())
}

/// A cookie pair's name: what comes before its first `=` (all of it without one).
fn crumb_name(crumb: &[u8]) -> &[u8] {
    crumb.split(|&b| b == b'=').next().unwrap_or(crumb)
}

/// The values of every cookie named `name` in the request.
pub fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    cookie_crumbs(headers).filter_map(move |crumb| {
        let value = crumb.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        // Other cookies may hold any bytes; only this one has to be text.
        Some(std::str::from_utf8(value).ok()?.trim_matches('"'))
    })
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

fn module_context(target: &RouteTarget, auth: &AuthTarget) -> ModuleContext {
    ModuleContext {
        module_id: target.route_id.clone(),
        options_json: auth.module.options_json.clone(),
        origin: target.public_origin.to_string(),
        mount_path: mount_path(&target.route_id),
    }
}

/// Where a route's plugin endpoints live on its host.
pub fn mount_path(route_id: &str) -> String {
    format!("{RESERVED_PREFIX}auth/{route_id}")
}

/// The request a plugin is handed: what an upstream would get of it (see
/// `set_identity_headers`), so no plugin bases a decision on what a client claims: the headers
/// other proxies set removed, the gateway's own forwarding headers, and one `cookie` header
/// with only the pairs whose name is an RFC 6265 token (a name such as "\u{2000}__Host-x",
/// which any host of the parent domain can set, is not handed on for a plugin to trim into
/// its own `__Host-` cookie's).
fn sdk_request<B>(req: &Request<B>, body: Vec<u8>, peer: SocketAddr, is_tls: bool, table: &RouteTable) -> HttpRequest {
    let mut headers = req.headers().clone();
    table.identity_headers.remove_untrusted(&mut headers);
    let host = crate::proxy::original_host(req);
    if let Some(host) = &host {
        headers.insert(header::HOST, host.clone());
    }
    crate::proxy::set_forwarding_headers(&mut headers, peer, is_tls, host.as_ref());
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

/// Whether `name` is a token (RFC 9110 section 5.6.2), as a cookie name must be.
fn is_token(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn from_sdk_response(response: HttpResponse) -> Response<Body> {
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
async fn call_plugin(
    shared: &Arc<Shared>,
    plugin: &Arc<Registered>,
    auth: &AuthTarget,
    route_id: &str,
    call: Call,
) -> Result<Outcome, PluginError> {
    let (shared, plugin) = (shared.clone(), plugin.clone());
    let namespace = format!("{}/{route_id}", auth.module.plugin);
    let egress = auth.module.egress_hosts.clone();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let host = PluginHost {
            shared: &shared,
            namespace,
            plugin: &plugin.info.name,
            egress_hosts: &egress,
            runtime,
        };
        plugin.call(&host, call)
    })
    .await
    .unwrap_or_else(|e| Err(PluginError::Internal(format!("plugin call did not finish: {e}"))))
}

/// The page for a failed plugin call; internal details go only to the log.
fn plugin_failure(error: PluginError, plugin: &str, request_id: &str) -> Response<Body> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_urls_stay_on_the_origin() {
        for ok in ["/", "/app?x=1", "/a/b#c", "/%7Euser"] {
            assert_eq!(safe_return_to(ok), Some(ok), "{ok}");
        }
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/%2F%2Fevil.example",
            "/%2fevil.example/..",
            "%2F%2Fevil.example",
            "/%5Cevil.example",
            "/%252F%252Fevil",
            "javascript:alert(1)",
            "/\tfoo",
            "evil.example",
            "",
        ] {
            assert_eq!(safe_return_to(bad), None, "{bad}");
        }
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; portcullis.session=tok1; xportcullis.session=no"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("portcullis.session=tok2"));
        assert_eq!(
            cookie_values(&headers, "portcullis.session").collect::<Vec<_>>(),
            ["tok1", "tok2"]
        );
    }
}
