//! `/edges/https/{edge_id}/routes`: an edge's routes (match, backend, at most one auth module),
//! stored as part of their edge. Writes go through [`change_route`], which checks a new module
//! with its plugin before storing and rebuilds the routing table; parsing a module is
//! `crate::modules`'s, the module's own path is `route_modules`'.

use super::edges::{find_edge, outputs_of};
use super::route_modules::is_module_name;
use super::views::{
    created, kept_changing, labels, list_json, no_content, ok, refuse_config_managed, timestamp, Answer, WRITE_ATTEMPTS,
};
use super::{ApiError, Ctx};
use crate::ids;
use crate::model::{self, Edge, MatchType, Route, RouteBackend};
use crate::modules::ModuleOutputs;
use crate::store::{Conflict, Page, StoreError};
use portcullis_plugin_sdk::PluginError;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct BackendModule {
    #[serde(default = "default_true")]
    enabled: bool,
    backend_id: String,
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize, Default, Clone)]
pub(super) struct RouteWrite {
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

impl RouteWrite {
    /// A write of the module `name` alone: its object, or `null` to remove it.
    pub(super) fn module(name: &str, module: Value) -> Self {
        RouteWrite {
            modules: [(name.to_string(), module)].into_iter().collect(),
            ..RouteWrite::default()
        }
    }
}

pub(super) fn route_json(ctx: &Ctx<'_>, edge_id: &str, r: &Route, outputs: &ModuleOutputs) -> Value {
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
            crate::modules::module_json(module, outputs.get(&r.id)),
        );
    }
    value
}

/// Applies the fields of `body` that are set to `route`, checking each.
async fn apply_route_write(ctx: &Ctx<'_>, route: &mut Route, body: RouteWrite) -> Result<(), ApiError> {
    for (name, value) in body.modules {
        if !is_module_name(ctx, &name) {
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
                let module = crate::modules::parse_module(&ctx.shared.registry, &name, object)
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
        if ctx.shared.store.backend(&b.backend_id).await?.is_none() {
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

pub(super) async fn list_routes(ctx: &Ctx<'_>, edge_id: &str) -> Answer {
    let (limit, before) = ctx.paging()?;
    let edge = find_edge(ctx, edge_id).await?;
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

pub(super) async fn get_route(ctx: &Ctx<'_>, edge_id: &str, id: &str) -> Answer {
    let edge = find_edge(ctx, edge_id).await?;
    let route = route_of(&edge, id)?;
    let outputs = outputs_of(ctx, [&edge]).await;
    ok(route_json(ctx, &edge.id, route, &outputs))
}

pub(super) async fn create_route(ctx: &Ctx<'_>, edge_id: &str) -> Answer {
    let body: RouteWrite = ctx.json()?;
    for _ in 0..WRITE_ATTEMPTS {
        let stored = find_edge(ctx, edge_id).await?;
        refuse_config_managed("HTTPS edge", edge_id, &stored.source)?;
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
            id: ids::new_id(ids::HTTPS_ROUTE, ctx.now),
            created_at: ctx.now,
            match_type: MatchType::PathPrefix,
            path: String::new(),
            description: String::new(),
            metadata: String::new(),
            backend: None,
            auth: None,
        };
        apply_route_write(ctx, &mut route, body.clone()).await?;
        check_unique_match(&stored, &route)?;
        check_route_module(ctx, &stored, &route).await?;
        let mut edge = stored.clone();
        edge.routes.push(route.clone());
        if store_edge(ctx, &stored, &edge).await? {
            let outputs = outputs_of(ctx, [&edge]).await;
            return created(route_json(ctx, edge_id, &route, &outputs));
        }
    }
    Err(kept_changing("HTTPS edge", edge_id))
}

/// Writes `edge` over `stored` and rebuilds the routing table; `false` when the edge changed
/// since it was read (read it again).
async fn store_edge(ctx: &Ctx<'_>, stored: &Edge, edge: &Edge) -> Result<bool, ApiError> {
    match ctx.shared.store.update_edge(stored, edge).await {
        Ok(()) => {
            ctx.shared.derived.caught_up_to_store().await?;
            Ok(true)
        }
        Err(StoreError::Conflict(Conflict::Changed)) => Ok(false),
        Err(StoreError::Conflict(Conflict::Missing)) => Err(ApiError::not_found("HTTPS edge", &stored.id)),
        Err(StoreError::Conflict(Conflict::BackendMissing { backend_id })) => Err(ApiError::invalid(
            "backend.backend_id",
            format!("no static backend `{backend_id}`"),
        )),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn update_route(ctx: &Ctx<'_>, edge_id: &str, id: &str) -> Answer {
    let (edge, route) = change_route(ctx, edge_id, id, ctx.json()?).await?;
    let outputs = outputs_of(ctx, [&edge]).await;
    ok(route_json(ctx, edge_id, &route, &outputs))
}

/// Lets a route's new module's plugin check it can work (reach its provider, make its keys)
/// before it is stored.
async fn check_route_module(ctx: &Ctx<'_>, edge: &Edge, route: &Route) -> Result<(), ApiError> {
    let Some(module) = &route.auth else { return Ok(()) };
    match crate::modules::check_module(ctx.shared, &route.id, &edge.hostports, module).await {
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

/// Applies `body` to a route and stores it, as one read-modify-write of its edge.
pub(super) async fn change_route(
    ctx: &Ctx<'_>,
    edge_id: &str,
    id: &str,
    body: RouteWrite,
) -> Result<(Edge, Route), ApiError> {
    for _ in 0..WRITE_ATTEMPTS {
        let stored = find_edge(ctx, edge_id).await?;
        let index = route_index(&stored, id)?;
        refuse_config_managed("route", id, &stored.source)?;
        let mut route = stored.routes[index].clone();
        apply_route_write(ctx, &mut route, body.clone()).await?;
        check_unique_match(&stored, &route)?;
        if route.auth != stored.routes[index].auth {
            check_route_module(ctx, &stored, &route).await?;
        }
        let mut edge = stored.clone();
        edge.routes[index] = route.clone();
        if store_edge(ctx, &stored, &edge).await? {
            return Ok((edge, route));
        }
    }
    Err(kept_changing("route", id))
}

pub(super) async fn delete_route(ctx: &Ctx<'_>, edge_id: &str, id: &str) -> Answer {
    for _ in 0..WRITE_ATTEMPTS {
        let stored = find_edge(ctx, edge_id).await?;
        let index = route_index(&stored, id)?;
        refuse_config_managed("route", id, &stored.source)?;
        let mut edge = stored.clone();
        edge.routes.remove(index);
        if store_edge(ctx, &stored, &edge).await? {
            return no_content();
        }
    }
    Err(kept_changing("route", id))
}

/// Where the route `id` stands in `edge.routes`.
fn route_index(edge: &Edge, id: &str) -> Result<usize, ApiError> {
    edge.routes
        .iter()
        .position(|r| r.id == id)
        .ok_or_else(|| ApiError::not_found("route", id))
}

/// The route `id` of `edge`.
pub(super) fn route_of<'e>(edge: &'e Edge, id: &str) -> Result<&'e Route, ApiError> {
    edge.routes
        .iter()
        .find(|r| r.id == id)
        .ok_or_else(|| ApiError::not_found("route", id))
}
