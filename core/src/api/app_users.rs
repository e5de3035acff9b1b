//! `/app/users`: the people who signed in through the edges or were provisioned (list, read,
//! delete), read and deleted through `accounts`, which ends their sessions before it deletes
//! them. A user's identity provider and subject shown are those of its first identity link.

use super::views::{list_json, no_content, ok, timestamp, Answer};
use super::{ApiError, Ctx};
use crate::model::{IdentityLink, User};
use serde_json::{json, Value};

/// Each user's latest activity over their sessions: one pass over the sessions per request.
async fn last_active_by_user(ctx: &Ctx<'_>) -> std::collections::HashMap<String, i64> {
    let live = ctx.shared.sessions.last_active_by_id();
    let mut latest = std::collections::HashMap::new();
    for s in ctx.shared.store.all_sessions().await.unwrap_or_default() {
        let active = live.get(&s.id).copied().unwrap_or(s.last_active);
        let entry = latest.entry(s.user_id).or_insert(active);
        *entry = (*entry).max(active);
    }
    latest
}

fn app_user_json(
    ctx: &Ctx<'_>,
    u: &User,
    first_link: Option<&IdentityLink>,
    last_active: &std::collections::HashMap<String, i64>,
) -> Value {
    let last_active = last_active.get(&u.id).copied().unwrap_or(u.last_login);
    let (provider, subject) = first_link.map_or(("", ""), |l| (l.idp.as_str(), l.subject.as_str()));
    json!({
        "id": u.id,
        "uri": format!("{}/app/users/{}", ctx.base_url, u.id),
        "identity_provider": { "name": provider, "url": "" },
        "provider_user_id": subject,
        "username": if u.email.is_empty() { subject } else { &u.email },
        "email": u.email,
        "name": u.name,
        "created_at": timestamp(u.created_at),
        "last_active": timestamp(last_active),
        "last_login": timestamp(u.last_login),
    })
}

async fn find_app_user(ctx: &Ctx<'_>, id: &str) -> Result<User, ApiError> {
    ctx.shared
        .accounts
        .person(id)
        .await?
        .ok_or_else(|| ApiError::not_found("application user", id))
}

/// The first identity link of `user_id`.
async fn first_link(ctx: &Ctx<'_>, user_id: &str) -> Result<Option<IdentityLink>, ApiError> {
    Ok(ctx.shared.accounts.links_of(user_id).await?.into_iter().next())
}

pub(super) async fn get_app_user(ctx: &Ctx<'_>, id: &str) -> Answer {
    let user = find_app_user(ctx, id).await?;
    let link = first_link(ctx, id).await?;
    ok(app_user_json(
        ctx,
        &user,
        link.as_ref(),
        &last_active_by_user(ctx).await,
    ))
}

pub(super) async fn list_app_users(ctx: &Ctx<'_>) -> Answer {
    let (limit, before) = ctx.paging()?;
    let page = ctx.shared.accounts.people_newest_first(before, limit).await?;
    let activity = last_active_by_user(ctx).await;
    let mut links = std::collections::HashMap::new();
    for user in &page.items {
        if let Some(link) = first_link(ctx, &user.id).await? {
            links.insert(user.id.clone(), link);
        }
    }
    ok(list_json(
        ctx,
        "/app/users",
        "application_users",
        page,
        limit,
        |u| app_user_json(ctx, u, links.get(&u.id), &activity),
        |u| &u.id,
    ))
}

pub(super) async fn delete_app_user(ctx: &Ctx<'_>, id: &str) -> Answer {
    find_app_user(ctx, id).await?;
    // `accounts` ends the user's sessions before anything else: the next request is refused.
    ctx.shared.accounts.delete_person(id).await?;
    no_content()
}
