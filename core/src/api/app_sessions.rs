//! `/app/sessions`: the sessions of people signed in through the edges (list, read, revoke). The
//! last activity shown is the in-memory index's when the session is live; revoking goes through
//! `accounts`, which removes it from that index before the store, so its cookie is refused at once.

use super::views::{list_json, no_content, ok, timestamp, Answer};
use super::{ApiError, Ctx};
use crate::model::Session;
use serde_json::{json, Value};

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

async fn find_app_session(ctx: &Ctx<'_>, id: &str) -> Result<Session, ApiError> {
    ctx.shared
        .store
        .session(id)
        .await?
        .ok_or_else(|| ApiError::not_found("application session", id))
}

pub(super) async fn get_app_session(ctx: &Ctx<'_>, id: &str) -> Answer {
    ok(app_session_json(
        ctx,
        &find_app_session(ctx, id).await?,
        &ctx.shared.sessions.last_active_by_id(),
    ))
}

pub(super) async fn list_app_sessions(ctx: &Ctx<'_>) -> Answer {
    let (limit, before) = ctx.paging()?;
    let page = ctx.shared.store.sessions_page(before, limit).await?;
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

pub(super) async fn delete_app_session(ctx: &Ctx<'_>, id: &str) -> Answer {
    find_app_session(ctx, id).await?;
    // Out of the in-memory index first: the very next request with its cookie is refused.
    ctx.shared.accounts.end_sessions(&[id.to_string()]).await?;
    tracing::info!(target: "portcullis::audit", event = "session_revoked", session = id, "session revoked through the API");
    no_content()
}
