//! `/edges/https`: the edges (their hostports, unique across edges) and their JSON view, which
//! embeds each route's view from `edge_routes`. [`outputs_of`] asks the plugins for their
//! modules' read-only outputs, for every view that shows a module. Routes and their modules are
//! written through `edge_routes` and `route_modules`.

use super::edge_routes::route_json;
use super::views::{created, labels, list_json, no_content, ok, refuse_config_managed, timestamp, Answer};
use super::{ApiError, Ctx};
use crate::ids;
use crate::model::{self, Edge, Source};
use crate::modules::ModuleOutputs;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeWrite {
    description: Option<String>,
    metadata: Option<String>,
    hostports: Option<Vec<String>>,
}

/// The read-only outputs of every auth module on `edges`, from their plugins.
pub(super) async fn outputs_of<'e>(ctx: &Ctx<'_>, edges: impl IntoIterator<Item = &'e Edge>) -> ModuleOutputs {
    let modules = edges
        .into_iter()
        .flat_map(|e| {
            e.routes
                .iter()
                .filter_map(|r| Some((r.id.clone(), e.hostports.clone(), r.auth.clone()?)))
        })
        .collect();
    crate::modules::describe_modules(ctx.shared, modules).await
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

pub(super) fn find_edge(ctx: &Ctx<'_>, id: &str) -> Result<Edge, ApiError> {
    ctx.shared
        .store
        .find_edge(id)?
        .ok_or_else(|| ApiError::not_found("HTTPS edge", id))
}

pub(super) async fn get_edge(ctx: &Ctx<'_>, id: &str) -> Answer {
    let edge = find_edge(ctx, id)?;
    let outputs = outputs_of(ctx, [&edge]).await;
    ok(edge_json(ctx, &edge, &outputs))
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

pub(super) async fn create_edge(ctx: &Ctx<'_>) -> Answer {
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

pub(super) async fn list_edges(ctx: &Ctx<'_>) -> Answer {
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

pub(super) async fn update_edge(ctx: &Ctx<'_>, id: &str) -> Answer {
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

pub(super) async fn delete_edge(ctx: &Ctx<'_>, id: &str) -> Answer {
    let _guard = ctx.shared.store.lock_writes().await;
    let edge = find_edge(ctx, id)?;
    refuse_config_managed("HTTPS edge", id, &edge.source)?;
    ctx.shared.store.delete_edge(id).await?;
    ctx.shared.rebuild_routes()?;
    no_content()
}
