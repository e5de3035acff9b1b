//! `/backends/static`: the upstream addresses routes forward to. A backend a route still uses
//! cannot be deleted; one the config file declares cannot be changed here. The routing table
//! is rebuilt by `Shared::rebuild_routes` after a change.

use super::views::{created, labels, list_json, no_content, ok, refuse_config_managed, timestamp, Answer};
use super::{ApiError, Ctx};
use crate::ids;
use crate::model::{self, Source, StaticBackend};
use serde::Deserialize;
use serde_json::{json, Value};

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

pub(super) fn get_backend(ctx: &Ctx<'_>, id: &str) -> Answer {
    ok(backend_json(ctx, &find_backend(ctx, id)?))
}

fn check_backend(b: &StaticBackend) -> Result<(), ApiError> {
    labels(&b.description, &b.metadata)?;
    crate::config::validate_address(&b.address).map_err(|m| ApiError::invalid("address", m))
}

pub(super) async fn create_backend(ctx: &Ctx<'_>) -> Answer {
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

pub(super) fn list_backends(ctx: &Ctx<'_>) -> Answer {
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

pub(super) async fn update_backend(ctx: &Ctx<'_>, id: &str) -> Answer {
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

pub(super) async fn delete_backend(ctx: &Ctx<'_>, id: &str) -> Answer {
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
