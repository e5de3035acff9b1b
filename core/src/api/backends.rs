//! `/backends/static`: the upstream addresses routes forward to. A backend a route still uses
//! cannot be deleted (the store refuses it atomically); one the config file declares cannot be
//! changed here. A change is answered once the routing table (rebuilt by the change feed's follower) shows it.

use super::views::{
    created, kept_changing, labels, list_json, no_content, ok, refuse_config_managed, timestamp, Answer, WRITE_ATTEMPTS,
};
use super::{ApiError, Ctx};
use crate::ids;
use crate::model::{Source, StaticBackend};
use crate::store::{Conflict, StoreError};
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

async fn find_backend(ctx: &Ctx<'_>, id: &str) -> Result<StaticBackend, ApiError> {
    ctx.shared
        .store
        .backend(id)
        .await?
        .ok_or_else(|| ApiError::not_found("static backend", id))
}

pub(super) async fn get_backend(ctx: &Ctx<'_>, id: &str) -> Answer {
    ok(backend_json(ctx, &find_backend(ctx, id).await?))
}

fn check_backend(b: &StaticBackend) -> Result<(), ApiError> {
    labels(&b.description, &b.metadata)?;
    crate::config::validate_address(&b.address).map_err(|m| ApiError::invalid("address", m))
}

pub(super) async fn create_backend(ctx: &Ctx<'_>) -> Answer {
    let body: BackendWrite = ctx.json()?;
    let backend = StaticBackend {
        id: ids::new_id(ids::STATIC_BACKEND, ctx.now),
        description: body.description.unwrap_or_default(),
        metadata: body.metadata.unwrap_or_default(),
        created_at: ctx.now,
        address: body.address.unwrap_or_default(),
        tls: body.tls.is_some_and(|t| t.enabled),
        source: Source::Api,
    };
    check_backend(&backend)?;
    ctx.shared.store.create_backend(&backend).await?;
    created(backend_json(ctx, &backend))
}

pub(super) async fn list_backends(ctx: &Ctx<'_>) -> Answer {
    let (limit, before) = ctx.paging()?;
    let page = ctx.shared.store.backends_page(before, limit).await?;
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
    for _ in 0..WRITE_ATTEMPTS {
        let stored = find_backend(ctx, id).await?;
        refuse_config_managed("static backend", id, &stored.source)?;
        let mut backend = stored.clone();
        if let Some(d) = &body.description {
            backend.description = d.clone();
        }
        if let Some(m) = &body.metadata {
            backend.metadata = m.clone();
        }
        // ngrok's clients send `address: ""` when the caller leaves it unchanged.
        if let Some(a) = body.address.as_ref().filter(|a| !a.is_empty()) {
            backend.address = a.clone();
        }
        if let Some(t) = &body.tls {
            backend.tls = t.enabled;
        }
        check_backend(&backend)?;
        match ctx.shared.store.update_backend(&stored, &backend).await {
            Ok(()) => {
                ctx.shared.derived.caught_up_to_store().await?;
                return ok(backend_json(ctx, &backend));
            }
            Err(StoreError::Conflict(Conflict::Changed)) => continue,
            Err(StoreError::Conflict(Conflict::Missing)) => return Err(ApiError::not_found("static backend", id)),
            Err(e) => return Err(e.into()),
        }
    }
    Err(kept_changing("static backend", id))
}

pub(super) async fn delete_backend(ctx: &Ctx<'_>, id: &str) -> Answer {
    let backend = find_backend(ctx, id).await?;
    refuse_config_managed("static backend", id, &backend.source)?;
    match ctx.shared.store.delete_backend(id).await {
        Ok(_) => no_content(),
        Err(StoreError::Conflict(Conflict::BackendInUse { route_ids, .. })) => Err(ApiError::conflict(format!(
            "static backend `{id}` is used by route(s) {}; change or delete them first",
            route_ids.join(", ")
        ))),
        Err(e) => Err(e.into()),
    }
}
