//! `/edges/https`: the edges (their hostports, unique across edges) and their JSON view, which
//! embeds each route's view from `edge_routes`. [`outputs_of`] asks the plugins for their
//! modules' read-only outputs, for every view that shows a module. Routes and their modules are
//! written through `edge_routes` and `route_modules`.

use super::edge_routes::route_json;
use super::views::{
    created, kept_changing, labels, list_json, no_content, ok, refuse_config_managed, timestamp, Answer, WRITE_ATTEMPTS,
};
use super::{ApiError, Ctx};
use crate::ids;
use crate::model::{self, Edge, Source};
use crate::modules::ModuleOutputs;
use crate::store::{Conflict, StoreError};
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

pub(super) async fn find_edge(ctx: &Ctx<'_>, id: &str) -> Result<Edge, ApiError> {
    ctx.shared
        .store
        .edge(id)
        .await?
        .ok_or_else(|| ApiError::not_found("HTTPS edge", id))
}

pub(super) async fn get_edge(ctx: &Ctx<'_>, id: &str) -> Answer {
    let edge = find_edge(ctx, id).await?;
    let outputs = outputs_of(ctx, [&edge]).await;
    ok(edge_json(ctx, &edge, &outputs))
}

/// Normalises `hostports`, refusing one listed twice. That no other edge serves one is the
/// store's check, when the edge is written ([`hostport_conflict`] words its refusal).
fn normalize_hostports(hostports: &[String]) -> Result<Vec<String>, ApiError> {
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
        out.push(normal);
    }
    Ok(out)
}

/// The refusal of a write whose host:port another edge serves, naming the host:port as the
/// client sent it (`sent[i]` normalised to `normalized[i]`).
pub(super) fn hostport_conflict(e: StoreError, sent: &[String], normalized: &[String]) -> ApiError {
    match e {
        StoreError::Conflict(Conflict::HostportTaken { hostport, edge_id }) => {
            let as_sent = normalized
                .iter()
                .position(|h| *h == hostport)
                .and_then(|i| sent.get(i))
                .unwrap_or(&hostport);
            ApiError::conflict(format!("hostport `{as_sent}` is already served by edge `{edge_id}`"))
        }
        e => e.into(),
    }
}

pub(super) async fn create_edge(ctx: &Ctx<'_>) -> Answer {
    let body: EdgeWrite = ctx.json()?;
    let sent = body.hostports.unwrap_or_default();
    let edge = Edge {
        hostports: normalize_hostports(&sent)?,
        id: ids::new_id(ids::HTTPS_EDGE, ctx.now),
        description: body.description.unwrap_or_default(),
        metadata: body.metadata.unwrap_or_default(),
        created_at: ctx.now,
        routes: Vec::new(),
        source: Source::Api,
    };
    labels(&edge.description, &edge.metadata)?;
    ctx.shared
        .store
        .create_edge(&edge)
        .await
        .map_err(|e| hostport_conflict(e, &sent, &edge.hostports))?;
    ctx.shared.derived.caught_up_to_store().await?;
    created(edge_json(ctx, &edge, &ModuleOutputs::new()))
}

pub(super) async fn list_edges(ctx: &Ctx<'_>) -> Answer {
    let (limit, before) = ctx.paging()?;
    let page = ctx.shared.store.edges_page(before, limit).await?;
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
    for _ in 0..WRITE_ATTEMPTS {
        let stored = find_edge(ctx, id).await?;
        refuse_config_managed("HTTPS edge", id, &stored.source)?;
        let hostports = body.hostports.as_deref().map(normalize_hostports).transpose()?;
        let mut edge = stored.clone();
        if let Some(d) = &body.description {
            edge.description = d.clone();
        }
        if let Some(m) = &body.metadata {
            edge.metadata = m.clone();
        }
        if let Some(h) = &hostports {
            edge.hostports = h.clone();
        }
        labels(&edge.description, &edge.metadata)?;
        match ctx.shared.store.update_edge(&stored, &edge).await {
            Ok(()) => {
                ctx.shared.derived.caught_up_to_store().await?;
                let outputs = outputs_of(ctx, [&edge]).await;
                return ok(edge_json(ctx, &edge, &outputs));
            }
            Err(StoreError::Conflict(Conflict::Changed)) => continue,
            Err(StoreError::Conflict(Conflict::Missing)) => return Err(ApiError::not_found("HTTPS edge", id)),
            Err(e) => {
                let sent = body.hostports.as_deref().unwrap_or_default();
                return Err(hostport_conflict(e, sent, hostports.as_deref().unwrap_or_default()));
            }
        }
    }
    Err(kept_changing("HTTPS edge", id))
}

pub(super) async fn delete_edge(ctx: &Ctx<'_>, id: &str) -> Answer {
    let edge = find_edge(ctx, id).await?;
    refuse_config_managed("HTTPS edge", id, &edge.source)?;
    ctx.shared.store.delete_edge(id).await?;
    ctx.shared.derived.caught_up_to_store().await?;
    no_content()
}
