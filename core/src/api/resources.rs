//! The API's resources: `/api_keys`, `/backends/static`, `/edges/https` and
//! `/edges/https/{edge_id}/routes`, with ngrok's field names and JSON shapes.

use super::{ApiError, Ctx};
use crate::auth::ModuleOutputs;
use crate::ids;
use crate::model::{self, ApiKey, AppUser, Edge, MatchType, Route, RouteBackend, Session, Source, StaticBackend};
use crate::store::Page;
use http::{Method, StatusCode};
use portcullis_plugin_sdk::{Capability, PluginError};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

type Answer = Result<(StatusCode, Option<Value>), ApiError>;

fn ok(value: Value) -> Answer {
    Ok((StatusCode::OK, Some(value)))
}
fn created(value: Value) -> Answer {
    Ok((StatusCode::CREATED, Some(value)))
}
fn no_content() -> Answer {
    Ok((StatusCode::NO_CONTENT, None))
}

/// Routes a request to its handler by method and path segments.
pub(super) async fn dispatch(ctx: &Ctx<'_>, method: &Method, segments: &[&str], path: &str) -> Answer {
    let not_allowed = || Err(ApiError::method_not_allowed(method, path));
    match segments {
        ["api_keys"] => match *method {
            Method::GET => list_api_keys(ctx),
            Method::POST => create_api_key(ctx).await,
            _ => not_allowed(),
        },
        ["api_keys", id] => match *method {
            Method::GET => ok(api_key_json(ctx, &find_api_key(ctx, id)?, None)),
            Method::PATCH => update_api_key(ctx, id).await,
            Method::DELETE => delete_api_key(ctx, id).await,
            _ => not_allowed(),
        },
        ["backends", "static"] => match *method {
            Method::GET => list_backends(ctx),
            Method::POST => create_backend(ctx).await,
            _ => not_allowed(),
        },
        ["backends", "static", id] => match *method {
            Method::GET => ok(backend_json(ctx, &find_backend(ctx, id)?)),
            Method::PATCH => update_backend(ctx, id).await,
            Method::DELETE => delete_backend(ctx, id).await,
            _ => not_allowed(),
        },
        ["edges", "https"] => match *method {
            Method::GET => list_edges(ctx).await,
            Method::POST => create_edge(ctx).await,
            _ => not_allowed(),
        },
        ["edges", "https", id] => match *method {
            Method::GET => {
                let edge = find_edge(ctx, id)?;
                let outputs = outputs_of(ctx, [&edge]).await;
                ok(edge_json(ctx, &edge, &outputs))
            }
            Method::PATCH => update_edge(ctx, id).await,
            Method::DELETE => delete_edge(ctx, id).await,
            _ => not_allowed(),
        },
        ["edges", "https", edge_id, "routes"] => match *method {
            Method::GET => list_routes(ctx, edge_id).await,
            Method::POST => create_route(ctx, edge_id).await,
            _ => not_allowed(),
        },
        ["edges", "https", edge_id, "routes", id] => match *method {
            Method::GET => {
                let edge = find_edge(ctx, edge_id)?;
                let route = route_of(&edge, id)?;
                let outputs = outputs_of(ctx, [&edge]).await;
                ok(route_json(ctx, &edge.id, route, &outputs))
            }
            Method::PATCH => update_route(ctx, edge_id, id).await,
            Method::DELETE => delete_route(ctx, edge_id, id).await,
            _ => not_allowed(),
        },
        // A route's auth module on its own, under its plugin's name (ngrok's
        // `/edges/https/{edge_id}/routes/{id}/saml` and `/oidc`).
        ["edges", "https", edge_id, "routes", id, name] if is_module_name(ctx, name) => match *method {
            Method::GET => {
                let edge = find_edge(ctx, edge_id)?;
                let route = route_of(&edge, id)?;
                let outputs = outputs_of(ctx, [&edge]).await;
                match route.auth.as_ref().filter(|m| m.plugin == *name) {
                    Some(module) => ok(crate::auth::module_json(module, outputs.get(&route.id))),
                    None => Err(ApiError::not_found(&format!("{name} module of route"), id)),
                }
            }
            Method::PUT => replace_module(ctx, edge_id, id, name).await,
            Method::DELETE => {
                let change = RouteWrite {
                    modules: [(name.to_string(), Value::Null)].into_iter().collect(),
                    ..RouteWrite::default()
                };
                change_route(ctx, edge_id, id, change).await?;
                no_content()
            }
            _ => not_allowed(),
        },
        ["app", "sessions"] => match *method {
            Method::GET => list_app_sessions(ctx),
            _ => not_allowed(),
        },
        ["app", "sessions", id] => match *method {
            Method::GET => ok(app_session_json(
                ctx,
                &find_app_session(ctx, id)?,
                &ctx.shared.sessions.last_active_by_id(),
            )),
            Method::DELETE => delete_app_session(ctx, id).await,
            _ => not_allowed(),
        },
        ["app", "users"] => match *method {
            Method::GET => list_app_users(ctx),
            _ => not_allowed(),
        },
        ["app", "users", id] => match *method {
            Method::GET => ok(app_user_json(ctx, &find_app_user(ctx, id)?, &last_active_by_user(ctx))),
            Method::DELETE => delete_app_user(ctx, id).await,
            _ => not_allowed(),
        },
        _ => Err(ApiError::no_such_path(path)),
    }
}

fn timestamp(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// A list response: `{"<property>": [...], "uri": ..., "next_page_uri": ...}`.
fn list_json<T>(
    ctx: &Ctx<'_>,
    collection: &str,
    property: &str,
    page: Page<T>,
    limit: usize,
    view: impl Fn(&T) -> Value,
    id: impl Fn(&T) -> &str,
) -> Value {
    let next = match (page.has_more, page.items.last()) {
        (true, Some(last)) => Value::String(format!(
            "{}{collection}?before_id={}&limit={limit}",
            ctx.base_url,
            id(last)
        )),
        _ => Value::Null,
    };
    json!({
        property: page.items.iter().map(view).collect::<Vec<_>>(),
        "uri": format!("{}{collection}", ctx.base_url),
        "next_page_uri": next,
    })
}

fn refuse_config_managed(kind: &str, id: &str, source: &Source) -> Result<(), ApiError> {
    match source.config_file() {
        Some(file) => Err(ApiError::config_managed(kind, id, file)),
        None => Ok(()),
    }
}

fn labels(description: &str, metadata: &str) -> Result<(), ApiError> {
    model::validate_labels(description, metadata).map_err(|m| {
        let field = if m.starts_with("description") {
            "description"
        } else {
            "metadata"
        };
        ApiError::invalid(field, m)
    })
}

// ----- API keys -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyCreate {
    #[serde(default)]
    description: String,
    #[serde(default)]
    metadata: String,
    #[serde(default)]
    owner_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyUpdate {
    description: Option<String>,
    metadata: Option<String>,
}

fn api_key_json(ctx: &Ctx<'_>, key: &ApiKey, token: Option<&str>) -> Value {
    json!({
        "id": key.id,
        "uri": format!("{}/api_keys/{}", ctx.base_url, key.id),
        "description": key.description,
        "metadata": key.metadata,
        "created_at": timestamp(key.created_at),
        "token": token,
        "owner_id": Value::Null,
    })
}

fn find_api_key(ctx: &Ctx<'_>, id: &str) -> Result<ApiKey, ApiError> {
    ctx.shared
        .store
        .find_api_key(id)?
        .ok_or_else(|| ApiError::not_found("API key", id))
}

/// Makes a new API key record and its token (shown once, stored only as a hash).
pub fn new_api_key(description: String, metadata: String) -> (ApiKey, String) {
    let token = format!("pcl_{}", ids::new_secret());
    let key = ApiKey {
        id: ids::new_id(ids::API_KEY),
        description,
        metadata,
        created_at: model::now_unix(),
        token_hash: Sha256::digest(token.as_bytes()).into(),
    };
    (key, token)
}

async fn create_api_key(ctx: &Ctx<'_>) -> Answer {
    let body: ApiKeyCreate = ctx.json()?;
    labels(&body.description, &body.metadata)?;
    if body.owner_id.is_some() {
        return Err(ApiError::invalid(
            "owner_id",
            "Portcullis API keys have no owners; leave it out",
        ));
    }
    let (key, token) = new_api_key(body.description, body.metadata);
    ctx.shared.store.create_api_key(&key).await?;
    created(api_key_json(ctx, &key, Some(&token)))
}

fn list_api_keys(ctx: &Ctx<'_>) -> Answer {
    let (limit, before) = ctx.paging()?;
    let page = ctx.shared.store.list_api_keys(before, limit)?;
    ok(list_json(
        ctx,
        "/api_keys",
        "keys",
        page,
        limit,
        |k| api_key_json(ctx, k, None),
        |k| &k.id,
    ))
}

async fn update_api_key(ctx: &Ctx<'_>, id: &str) -> Answer {
    let body: ApiKeyUpdate = ctx.json()?;
    let _guard = ctx.shared.store.lock_writes().await;
    let mut key = find_api_key(ctx, id)?;
    if let Some(d) = body.description {
        key.description = d;
    }
    if let Some(m) = body.metadata {
        key.metadata = m;
    }
    labels(&key.description, &key.metadata)?;
    ctx.shared.store.update_api_key(&key).await?;
    ok(api_key_json(ctx, &key, None))
}

async fn delete_api_key(ctx: &Ctx<'_>, id: &str) -> Answer {
    if !ctx.shared.store.delete_api_key(id).await? {
        return Err(ApiError::not_found("API key", id));
    }
    no_content()
}

// ----- static backends -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendTls {
    #[serde(default)]
    enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendWrite {
    description: Option<String>,
    metadata: Option<String>,
    address: Option<String>,
    tls: Option<BackendTls>,
}

fn backend_json(ctx: &Ctx<'_>, b: &StaticBackend) -> Value {
    json!({
        "id": b.id,
        "uri": format!("{}/backends/static/{}", ctx.base_url, b.id),
        "created_at": timestamp(b.created_at),
        "description": b.description,
        "metadata": b.metadata,
        "address": b.address,
        "tls": { "enabled": b.tls },
    })
}

fn find_backend(ctx: &Ctx<'_>, id: &str) -> Result<StaticBackend, ApiError> {
    ctx.shared
        .store
        .find_backend(id)?
        .ok_or_else(|| ApiError::not_found("static backend", id))
}

fn check_backend(b: &StaticBackend) -> Result<(), ApiError> {
    labels(&b.description, &b.metadata)?;
    crate::config::validate_address(&b.address).map_err(|m| ApiError::invalid("address", m))
}

async fn create_backend(ctx: &Ctx<'_>) -> Answer {
    let body: BackendWrite = ctx.json()?;
    let backend = StaticBackend {
        id: ids::new_id(ids::STATIC_BACKEND),
        description: body.description.unwrap_or_default(),
        metadata: body.metadata.unwrap_or_default(),
        created_at: model::now_unix(),
        address: body.address.unwrap_or_default(),
        tls: body.tls.is_some_and(|t| t.enabled),
        source: Source::Api,
    };
    check_backend(&backend)?;
    ctx.shared.store.put_backend(&backend).await?;
    created(backend_json(ctx, &backend))
}

fn list_backends(ctx: &Ctx<'_>) -> Answer {
    let (limit, before) = ctx.paging()?;
    let page = ctx.shared.store.list_backends(before, limit)?;
    ok(list_json(
        ctx,
        "/backends/static",
        "backends",
        page,
        limit,
        |b| backend_json(ctx, b),
        |b| &b.id,
    ))
}

async fn update_backend(ctx: &Ctx<'_>, id: &str) -> Answer {
    let body: BackendWrite = ctx.json()?;
    let _guard = ctx.shared.store.lock_writes().await;
    let mut backend = find_backend(ctx, id)?;
    refuse_config_managed("static backend", id, &backend.source)?;
    if let Some(d) = body.description {
        backend.description = d;
    }
    if let Some(m) = body.metadata {
        backend.metadata = m;
    }
    // ngrok's clients send `address: ""` when the caller leaves it unchanged.
    if let Some(a) = body.address.filter(|a| !a.is_empty()) {
        backend.address = a;
    }
    if let Some(t) = body.tls {
        backend.tls = t.enabled;
    }
    check_backend(&backend)?;
    ctx.shared.store.put_backend(&backend).await?;
    ctx.shared.rebuild_routes()?;
    ok(backend_json(ctx, &backend))
}

async fn delete_backend(ctx: &Ctx<'_>, id: &str) -> Answer {
    let _guard = ctx.shared.store.lock_writes().await;
    let backend = find_backend(ctx, id)?;
    refuse_config_managed("static backend", id, &backend.source)?;
    let users: Vec<String> = ctx
        .shared
        .store
        .all_edges()?
        .iter()
        .flat_map(|e| e.routes.iter())
        .filter(|r| r.backend.as_ref().is_some_and(|b| b.backend_id == id))
        .map(|r| r.id.clone())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "static backend `{id}` is used by route(s) {}; change or delete them first",
            users.join(", ")
        )));
    }
    ctx.shared.store.delete_backend(id).await?;
    no_content()
}

// ----- HTTPS edges -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeWrite {
    description: Option<String>,
    metadata: Option<String>,
    hostports: Option<Vec<String>>,
}

/// The read-only outputs of every auth module on `edges`, from their plugins.
async fn outputs_of<'e>(ctx: &Ctx<'_>, edges: impl IntoIterator<Item = &'e Edge>) -> ModuleOutputs {
    let modules = edges
        .into_iter()
        .flat_map(|e| {
            e.routes
                .iter()
                .filter_map(|r| Some((r.id.clone(), e.hostports.clone(), r.auth.clone()?)))
        })
        .collect();
    crate::auth::describe_modules(ctx.shared, modules).await
}

fn edge_json(ctx: &Ctx<'_>, e: &Edge, outputs: &ModuleOutputs) -> Value {
    json!({
        "id": e.id,
        "uri": format!("{}/edges/https/{}", ctx.base_url, e.id),
        "created_at": timestamp(e.created_at),
        "description": e.description,
        "metadata": e.metadata,
        "hostports": e.hostports,
        "mutual_tls": Value::Null,
        "tls_termination": Value::Null,
        "routes": e.routes.iter().map(|r| route_json(ctx, &e.id, r, outputs)).collect::<Vec<_>>(),
    })
}

/// The route `id` of `edge`.
fn route_of<'e>(edge: &'e Edge, id: &str) -> Result<&'e Route, ApiError> {
    edge.routes
        .iter()
        .find(|r| r.id == id)
        .ok_or_else(|| ApiError::not_found("route", id))
}

fn find_edge(ctx: &Ctx<'_>, id: &str) -> Result<Edge, ApiError> {
    ctx.shared
        .store
        .find_edge(id)?
        .ok_or_else(|| ApiError::not_found("HTTPS edge", id))
}

/// Normalises `hostports` and checks that no other edge serves one of them.
fn check_hostports(ctx: &Ctx<'_>, edge_id: &str, hostports: &[String]) -> Result<Vec<String>, ApiError> {
    let others = ctx.shared.store.all_edges()?;
    let mut out: Vec<String> = Vec::with_capacity(hostports.len());
    for (i, hostport) in hostports.iter().enumerate() {
        let normal =
            model::normalize_hostport(hostport).map_err(|m| ApiError::invalid(&format!("hostports[{i}]"), m))?;
        if out.contains(&normal) {
            return Err(ApiError::invalid(
                &format!("hostports[{i}]"),
                format!("`{hostport}` is listed twice"),
            ));
        }
        if let Some(other) = others.iter().find(|e| e.id != edge_id && e.hostports.contains(&normal)) {
            return Err(ApiError::conflict(format!(
                "hostport `{hostport}` is already served by edge `{}`",
                other.id
            )));
        }
        out.push(normal);
    }
    Ok(out)
}

async fn create_edge(ctx: &Ctx<'_>) -> Answer {
    let body: EdgeWrite = ctx.json()?;
    let _guard = ctx.shared.store.lock_writes().await;
    let id = ids::new_id(ids::HTTPS_EDGE);
    let edge = Edge {
        hostports: check_hostports(ctx, &id, &body.hostports.unwrap_or_default())?,
        id,
        description: body.description.unwrap_or_default(),
        metadata: body.metadata.unwrap_or_default(),
        created_at: model::now_unix(),
        routes: Vec::new(),
        source: Source::Api,
    };
    labels(&edge.description, &edge.metadata)?;
    ctx.shared.store.put_edge(&edge).await?;
    ctx.shared.rebuild_routes()?;
    created(edge_json(ctx, &edge, &ModuleOutputs::new()))
}

async fn list_edges(ctx: &Ctx<'_>) -> Answer {
    let (limit, before) = ctx.paging()?;
    let page = ctx.shared.store.list_edges(before, limit)?;
    let outputs = outputs_of(ctx, &page.items).await;
    ok(list_json(
        ctx,
        "/edges/https",
        "https_edges",
        page,
        limit,
        |e| edge_json(ctx, e, &outputs),
        |e| &e.id,
    ))
}

async fn update_edge(ctx: &Ctx<'_>, id: &str) -> Answer {
    let body: EdgeWrite = ctx.json()?;
    let _guard = ctx.shared.store.lock_writes().await;
    let mut edge = find_edge(ctx, id)?;
    refuse_config_managed("HTTPS edge", id, &edge.source)?;
    if let Some(d) = body.description {
        edge.description = d;
    }
    if let Some(m) = body.metadata {
        edge.metadata = m;
    }
    if let Some(h) = body.hostports {
        edge.hostports = check_hostports(ctx, id, &h)?;
    }
    labels(&edge.description, &edge.metadata)?;
    ctx.shared.store.put_edge(&edge).await?;
    ctx.shared.rebuild_routes()?;
    let outputs = outputs_of(ctx, [&edge]).await;
    ok(edge_json(ctx, &edge, &outputs))
}

async fn delete_edge(ctx: &Ctx<'_>, id: &str) -> Answer {
    let _guard = ctx.shared.store.lock_writes().await;
    let edge = find_edge(ctx, id)?;
    refuse_config_managed("HTTPS edge", id, &edge.source)?;
    ctx.shared.store.delete_edge(id).await?;
    ctx.shared.rebuild_routes()?;
    no_content()
}

// ----- HTTPS edge routes -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendModule {
    #[serde(default = "default_true")]
    enabled: bool,
    backend_id: String,
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize, Default)]
struct RouteWrite {
    match_type: Option<String>,
    #[serde(rename = "match")]
    path: Option<String>,
    description: Option<String>,
    metadata: Option<String>,
    backend: Option<BackendModule>,
    /// Auth modules, each under its plugin's name (`"saml": {...}`); `null` removes one.
    /// Any other field is refused as unknown.
    #[serde(flatten)]
    modules: serde_json::Map<String, Value>,
}

fn route_json(ctx: &Ctx<'_>, edge_id: &str, r: &Route, outputs: &ModuleOutputs) -> Value {
    let mut value = json!({
        "edge_id": edge_id,
        "id": r.id,
        "uri": format!("{}/edges/https/{edge_id}/routes/{}", ctx.base_url, r.id),
        "created_at": timestamp(r.created_at),
        "match_type": r.match_type.as_str(),
        "match": r.path,
        "description": r.description,
        "metadata": r.metadata,
        "backend": r.backend.as_ref().map(|b| json!({
            "enabled": b.enabled,
            "backend": { "id": b.backend_id, "uri": format!("{}/backends/static/{}", ctx.base_url, b.backend_id) },
        })),
    });
    if let (Some(module), Value::Object(object)) = (&r.auth, &mut value) {
        object.insert(
            module.plugin.clone(),
            crate::auth::module_json(module, outputs.get(&r.id)),
        );
    }
    value
}

/// Applies the fields of `body` that are set to `route`, checking each.
async fn apply_route_write(ctx: &Ctx<'_>, route: &mut Route, body: RouteWrite) -> Result<(), ApiError> {
    for (name, value) in body.modules {
        let is_module = ctx
            .shared
            .registry
            .get(&name)
            .is_some_and(|p| p.info.capabilities.contains(&Capability::BrowserLogin));
        if !is_module {
            return Err(ApiError::bad_body(format!("unknown field `{name}`")));
        }
        match value {
            Value::Null => {
                if route.auth.as_ref().is_some_and(|m| m.plugin == name) {
                    route.auth = None;
                }
            }
            Value::Object(object) => {
                if let Some(other) = route.auth.as_ref().filter(|m| m.plugin != name) {
                    return Err(ApiError::invalid(&name, format!("the route already has the `{}` module; a route carries at most one auth module (set `{}` to null first)", other.plugin, other.plugin)));
                }
                let module = crate::auth::parse_module(&ctx.shared.registry, &name, object)
                    .await
                    .map_err(|(key, message)| {
                        ApiError::invalid(
                            &if key.is_empty() {
                                name.clone()
                            } else {
                                format!("{name}.{key}")
                            },
                            message,
                        )
                    })?;
                route.auth = Some(module);
            }
            other => {
                return Err(ApiError::invalid(
                    &name,
                    format!("must be an object or null, not {other}"),
                ))
            }
        }
    }
    // ngrok's clients send `""` for match_type and match when the caller leaves them unchanged.
    if let Some(mt) = body.match_type.filter(|s| !s.is_empty()) {
        route.match_type = MatchType::parse(&mt)
            .ok_or_else(|| ApiError::invalid("match_type", format!("`{mt}` is not one of exact_path, path_prefix")))?;
    }
    if let Some(path) = body.path.filter(|s| !s.is_empty()) {
        route.path = path;
    }
    if let Some(d) = body.description {
        route.description = d;
    }
    if let Some(m) = body.metadata {
        route.metadata = m;
    }
    if let Some(b) = body.backend {
        if ctx.shared.store.find_backend(&b.backend_id)?.is_none() {
            return Err(ApiError::invalid(
                "backend.backend_id",
                format!("no static backend `{}`", b.backend_id),
            ));
        }
        route.backend = Some(RouteBackend {
            enabled: b.enabled,
            backend_id: b.backend_id,
        });
    }
    model::validate_route_match(route.match_type, &route.path).map_err(|m| ApiError::invalid("match", m))?;
    labels(&route.description, &route.metadata)
}

fn check_unique_match(edge: &Edge, route: &Route) -> Result<(), ApiError> {
    match edge
        .routes
        .iter()
        .find(|r| r.id != route.id && r.match_type == route.match_type && r.path == route.path)
    {
        Some(other) => Err(ApiError::conflict(format!(
            "route `{}` of this edge already matches {} `{}`",
            other.id,
            route.match_type.as_str(),
            route.path
        ))),
        None => Ok(()),
    }
}

async fn list_routes(ctx: &Ctx<'_>, edge_id: &str) -> Answer {
    let (limit, before) = ctx.paging()?;
    let edge = find_edge(ctx, edge_id)?;
    let outputs = outputs_of(ctx, [&edge]).await;
    let mut routes: Vec<&Route> = edge
        .routes
        .iter()
        .filter(|r| before.is_none_or(|b| r.id.as_str() < b))
        .collect();
    routes.sort_by(|a, b| b.id.cmp(&a.id));
    let has_more = routes.len() > limit;
    routes.truncate(limit);
    let page = Page {
        items: routes,
        has_more,
    };
    let collection = format!("/edges/https/{edge_id}/routes");
    ok(list_json(
        ctx,
        &collection,
        "routes",
        page,
        limit,
        |r| route_json(ctx, edge_id, r, &outputs),
        |r| &r.id,
    ))
}

async fn create_route(ctx: &Ctx<'_>, edge_id: &str) -> Answer {
    let body: RouteWrite = ctx.json()?;
    let _guard = ctx.shared.store.lock_writes().await;
    let mut edge = find_edge(ctx, edge_id)?;
    refuse_config_managed("HTTPS edge", edge_id, &edge.source)?;
    let match_type = body.match_type.clone().unwrap_or_default();
    if match_type.is_empty() {
        return Err(ApiError::invalid(
            "match_type",
            "is required (exact_path or path_prefix)",
        ));
    }
    if body.path.as_deref().unwrap_or_default().is_empty() {
        return Err(ApiError::invalid("match", "is required"));
    }
    let mut route = Route {
        id: ids::new_id(ids::HTTPS_ROUTE),
        created_at: model::now_unix(),
        match_type: MatchType::PathPrefix,
        path: String::new(),
        description: String::new(),
        metadata: String::new(),
        backend: None,
        auth: None,
    };
    apply_route_write(ctx, &mut route, body).await?;
    check_unique_match(&edge, &route)?;
    check_route_module(ctx, &edge, &route).await?;
    edge.routes.push(route.clone());
    ctx.shared.store.put_edge(&edge).await?;
    ctx.shared.rebuild_routes()?;
    let outputs = outputs_of(ctx, [&edge]).await;
    created(route_json(ctx, edge_id, &route, &outputs))
}

async fn update_route(ctx: &Ctx<'_>, edge_id: &str, id: &str) -> Answer {
    let (edge, route) = change_route(ctx, edge_id, id, ctx.json()?).await?;
    let outputs = outputs_of(ctx, [&edge]).await;
    ok(route_json(ctx, edge_id, &route, &outputs))
}

/// Whether `name` is a registered browser-login plugin (a route module's field name).
fn is_module_name(ctx: &Ctx<'_>, name: &str) -> bool {
    ctx.shared
        .registry
        .get(name)
        .is_some_and(|p| p.info.capabilities.contains(&Capability::BrowserLogin))
}

/// `PUT .../routes/{id}/<module>`: the body is the module, bare (as ngrok's clients send it)
/// or wrapped as `{"edge_id", "id", "module": {...}}` (as ngrok's reference shows it).
async fn replace_module(ctx: &Ctx<'_>, edge_id: &str, id: &str, name: &str) -> Answer {
    let mut body: serde_json::Map<String, Value> = ctx.json()?;
    let module = match body.remove("module") {
        Some(Value::Object(module)) => {
            for (key, expected) in [("edge_id", edge_id), ("id", id)] {
                if body.get(key).is_some_and(|v| v.as_str() != Some(expected)) {
                    return Err(ApiError::invalid(
                        key,
                        format!("does not match the path (`{expected}`)"),
                    ));
                }
            }
            module
        }
        Some(other) => return Err(ApiError::invalid("module", format!("must be an object, not {other}"))),
        None => body,
    };
    let change = RouteWrite {
        modules: [(name.to_string(), Value::Object(module))].into_iter().collect(),
        ..RouteWrite::default()
    };
    let (edge, route) = change_route(ctx, edge_id, id, change).await?;
    let outputs = outputs_of(ctx, [&edge]).await;
    match route.auth.as_ref() {
        Some(module) => ok(crate::auth::module_json(module, outputs.get(&route.id))),
        None => Err(ApiError::internal("the module was not stored")),
    }
}

/// Lets a route's new module's plugin check it can work (reach its provider, make its keys)
/// before it is stored.
async fn check_route_module(ctx: &Ctx<'_>, edge: &Edge, route: &Route) -> Result<(), ApiError> {
    let Some(module) = &route.auth else { return Ok(()) };
    match crate::auth::check_module(ctx.shared, &route.id, &edge.hostports, module).await {
        Ok(()) => Ok(()),
        Err(PluginError::BadRequest(m) | PluginError::Upstream(m) | PluginError::Forbidden(m)) => {
            Err(ApiError::invalid(&module.plugin, m))
        }
        Err(e) => Err(ApiError::internal(format!(
            "the `{}` plugin failed to check the module: {e}",
            module.plugin
        ))),
    }
}

/// Applies `body` to a route and stores it.
async fn change_route(ctx: &Ctx<'_>, edge_id: &str, id: &str, body: RouteWrite) -> Result<(Edge, Route), ApiError> {
    let _guard = ctx.shared.store.lock_writes().await;
    let mut edge = find_edge(ctx, edge_id)?;
    let index = edge
        .routes
        .iter()
        .position(|r| r.id == id)
        .ok_or_else(|| ApiError::not_found("route", id))?;
    refuse_config_managed("route", id, &edge.source)?;
    let mut route = edge.routes[index].clone();
    apply_route_write(ctx, &mut route, body).await?;
    check_unique_match(&edge, &route)?;
    if route.auth != edge.routes[index].auth {
        check_route_module(ctx, &edge, &route).await?;
    }
    edge.routes[index] = route.clone();
    ctx.shared.store.put_edge(&edge).await?;
    ctx.shared.rebuild_routes()?;
    Ok((edge, route))
}

async fn delete_route(ctx: &Ctx<'_>, edge_id: &str, id: &str) -> Answer {
    let _guard = ctx.shared.store.lock_writes().await;
    let mut edge = find_edge(ctx, edge_id)?;
    let index = edge
        .routes
        .iter()
        .position(|r| r.id == id)
        .ok_or_else(|| ApiError::not_found("route", id))?;
    refuse_config_managed("route", id, &edge.source)?;
    edge.routes.remove(index);
    ctx.shared.store.put_edge(&edge).await?;
    ctx.shared.rebuild_routes()?;
    no_content()
}

// ----- application sessions and users (people who logged in through edges) -----

/// `live` maps live session ids to their last activity ([`crate::sessions::Sessions::last_active_by_id`]).
fn app_session_json(ctx: &Ctx<'_>, s: &Session, live: &std::collections::HashMap<String, i64>) -> Value {
    let last_active = live.get(&s.id).copied().unwrap_or(s.last_active);
    json!({
        "id": s.id,
        "uri": format!("{}/app/sessions/{}", ctx.base_url, s.id),
        "public_url": s.origin,
        "browser_session": {
            "user_agent": { "raw": s.user_agent, "browser_name": "", "browser_version": "", "device_type": "", "os_name": "", "os_version": "" },
            "ip_address": { "ip": s.ip },
            "location": Value::Null,
        },
        "application_user": { "id": s.user_id, "uri": format!("{}/app/users/{}", ctx.base_url, s.user_id) },
        "created_at": timestamp(s.created_at),
        "last_active": timestamp(last_active),
        "expires_at": timestamp(s.expires_at),
        "endpoint": Value::Null,
        "edge": { "id": s.edge_id, "uri": format!("{}/edges/https/{}", ctx.base_url, s.edge_id) },
        "route": { "id": s.route_id, "uri": format!("{}/edges/https/{}/routes/{}", ctx.base_url, s.edge_id, s.route_id) },
    })
}

fn find_app_session(ctx: &Ctx<'_>, id: &str) -> Result<Session, ApiError> {
    ctx.shared
        .store
        .find_session(id)?
        .ok_or_else(|| ApiError::not_found("application session", id))
}

fn list_app_sessions(ctx: &Ctx<'_>) -> Answer {
    let (limit, before) = ctx.paging()?;
    let page = ctx.shared.store.list_sessions(before, limit)?;
    let live = ctx.shared.sessions.last_active_by_id();
    ok(list_json(
        ctx,
        "/app/sessions",
        "application_sessions",
        page,
        limit,
        |s| app_session_json(ctx, s, &live),
        |s| &s.id,
    ))
}

async fn delete_app_session(ctx: &Ctx<'_>, id: &str) -> Answer {
    find_app_session(ctx, id)?;
    // Out of the in-memory index first: the very next request with its cookie is refused.
    ctx.shared.sessions.remove_where(|s| s.id == id);
    ctx.shared.store.delete_sessions(&[id.to_string()], true).await?;
    tracing::info!(target: "portcullis::audit", event = "session_revoked", session = id, "session revoked through the API");
    no_content()
}

/// Each user's latest activity over their sessions: one pass over the sessions per request.
fn last_active_by_user(ctx: &Ctx<'_>) -> std::collections::HashMap<String, i64> {
    let live = ctx.shared.sessions.last_active_by_id();
    let mut latest = std::collections::HashMap::new();
    for s in ctx.shared.store.all_sessions().unwrap_or_default() {
        let active = live.get(&s.id).copied().unwrap_or(s.last_active);
        let entry = latest.entry(s.user_id).or_insert(active);
        *entry = (*entry).max(active);
    }
    latest
}

fn app_user_json(ctx: &Ctx<'_>, u: &AppUser, last_active: &std::collections::HashMap<String, i64>) -> Value {
    let last_active = last_active.get(&u.id).copied().unwrap_or(u.last_login);
    json!({
        "id": u.id,
        "uri": format!("{}/app/users/{}", ctx.base_url, u.id),
        "identity_provider": { "name": u.provider, "url": "" },
        "provider_user_id": u.subject,
        "username": if u.email.is_empty() { &u.subject } else { &u.email },
        "email": u.email,
        "name": u.name,
        "created_at": timestamp(u.created_at),
        "last_active": timestamp(last_active),
        "last_login": timestamp(u.last_login),
    })
}

fn find_app_user(ctx: &Ctx<'_>, id: &str) -> Result<AppUser, ApiError> {
    ctx.shared
        .store
        .find_app_user(id)?
        .ok_or_else(|| ApiError::not_found("application user", id))
}

fn list_app_users(ctx: &Ctx<'_>) -> Answer {
    let (limit, before) = ctx.paging()?;
    let page = ctx.shared.store.list_app_users(before, limit)?;
    let activity = last_active_by_user(ctx);
    ok(list_json(
        ctx,
        "/app/users",
        "application_users",
        page,
        limit,
        |u| app_user_json(ctx, u, &activity),
        |u| &u.id,
    ))
}

async fn delete_app_user(ctx: &Ctx<'_>, id: &str) -> Answer {
    find_app_user(ctx, id)?;
    // End the user's sessions before anything else: the next request is refused.
    let ended = ctx.shared.end_sessions_of(id).await?;
    ctx.shared.store.delete_app_user(id).await?;
    tracing::info!(target: "portcullis::audit", event = "user_deleted", user = id, sessions_ended = ended, "application user deleted through the API");
    no_content()
}
