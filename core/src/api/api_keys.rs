//! `/api_keys`: the management API's own keys (create, list, read, describe, delete), and
//! [`new_api_key`], which the admin socket's `api-key create` uses too. The token is shown once,
//! on create; the store keeps only its hash and looks keys up by it (`mod.rs` authenticates).

use super::views::{created, kept_changing, labels, list_json, no_content, ok, timestamp, Answer, WRITE_ATTEMPTS};
use super::{ApiError, Ctx};
use crate::ids;
use crate::model::ApiKey;
use crate::store::{Conflict, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

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

async fn find_api_key(ctx: &Ctx<'_>, id: &str) -> Result<ApiKey, ApiError> {
    ctx.shared
        .store
        .api_key(id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key", id))
}

pub(super) async fn get_api_key(ctx: &Ctx<'_>, id: &str) -> Answer {
    ok(api_key_json(ctx, &find_api_key(ctx, id).await?, None))
}

/// Makes a new API key record and its token (shown once, stored only as a hash).
pub fn new_api_key(description: String, metadata: String, now: i64) -> (ApiKey, String) {
    let token = format!("pcl_{}", ids::new_secret());
    let key = ApiKey {
        id: ids::new_id(ids::API_KEY, now),
        description,
        metadata,
        created_at: now,
        token_hash: Sha256::digest(token.as_bytes()).into(),
    };
    (key, token)
}

pub(super) async fn create_api_key(ctx: &Ctx<'_>) -> Answer {
    let body: ApiKeyCreate = ctx.json()?;
    labels(&body.description, &body.metadata)?;
    if body.owner_id.is_some() {
        return Err(ApiError::invalid(
            "owner_id",
            "Portcullis API keys have no owners; leave it out",
        ));
    }
    let (key, token) = new_api_key(body.description, body.metadata, ctx.now);
    ctx.shared.store.create_api_key(&key).await?;
    created(api_key_json(ctx, &key, Some(&token)))
}

pub(super) async fn list_api_keys(ctx: &Ctx<'_>) -> Answer {
    let (limit, before) = ctx.paging()?;
    let page = ctx.shared.store.api_keys_page(before, limit).await?;
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

pub(super) async fn update_api_key(ctx: &Ctx<'_>, id: &str) -> Answer {
    let body: ApiKeyUpdate = ctx.json()?;
    for _ in 0..WRITE_ATTEMPTS {
        let stored = find_api_key(ctx, id).await?;
        let mut key = stored.clone();
        if let Some(d) = &body.description {
            key.description = d.clone();
        }
        if let Some(m) = &body.metadata {
            key.metadata = m.clone();
        }
        labels(&key.description, &key.metadata)?;
        match ctx.shared.store.update_api_key(&stored, &key).await {
            Ok(()) => return ok(api_key_json(ctx, &key, None)),
            Err(StoreError::Conflict(Conflict::Changed)) => continue,
            Err(StoreError::Conflict(Conflict::Missing)) => return Err(ApiError::not_found("API key", id)),
            Err(e) => return Err(e.into()),
        }
    }
    Err(kept_changing("API key", id))
}

pub(super) async fn delete_api_key(ctx: &Ctx<'_>, id: &str) -> Answer {
    if !ctx.shared.store.delete_api_key(id).await? {
        return Err(ApiError::not_found("API key", id));
    }
    no_content()
}
