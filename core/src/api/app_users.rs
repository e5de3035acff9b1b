//! `/app/users`: the people who signed in through the edges (list, read, delete). Deleting one
//! ends their sessions first, through `Shared::end_sessions_of`, the one way a user's sessions end.

use super::views::{list_json, no_content, ok, timestamp, Answer};
use super::{ApiError, Ctx};
use crate::model::AppUser;
use serde_json::{json, Value};

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

pub(super) fn get_app_user(ctx: &Ctx<'_>, id: &str) -> Answer {
    ok(app_user_json(ctx, &find_app_user(ctx, id)?, &last_active_by_user(ctx)))
}

pub(super) fn list_app_users(ctx: &Ctx<'_>) -> Answer {
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

pub(super) async fn delete_app_user(ctx: &Ctx<'_>, id: &str) -> Answer {
    find_app_user(ctx, id)?;
    // End the user's sessions before anything else: the next request is refused.
    let ended = ctx.shared.end_sessions_of(id).await?;
    ctx.shared.store.delete_app_user(id).await?;
    tracing::info!(target: "portcullis::audit", event = "user_deleted", user = id, sessions_ended = ended, "application user deleted through the API");
    no_content()
}
