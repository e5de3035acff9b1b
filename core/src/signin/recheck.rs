//! Re-checks of sessions whose module asked for them: the background upkeep asks each due
//! session's plugin whether its user still has access, off the request path.

use super::plugin::call_plugin;
use super::{identity_of, module_context};
use crate::state::Shared;
use portcullis_plugin_sdk::{Call, Outcome, Recheck};
use std::sync::Arc;

/// Asks each session's plugin whether its user still has access, for the sessions whose
/// re-check is due (their module asked for re-checks at login); ends those whose plugin says
/// no and swaps in the access tokens it renewed. Run by the background upkeep; tests call it
/// after moving the clock.
pub async fn recheck_sessions(shared: &Arc<Shared>) {
    let now = shared.clock.now();
    let table = shared.routes.load_full();
    for entry in shared.sessions.due_for_recheck(now) {
        let s = &entry.session;
        let Some(target) = table.route(&s.route_id) else {
            continue;
        };
        let Some(auth) = &target.auth else { continue };
        let Some(plugin) = shared.registry.get(&auth.module.plugin) else {
            continue;
        };
        let call = Call::Recheck {
            module: module_context(&target, auth),
            identity: identity_of(s),
        };
        match call_plugin(shared, plugin, auth, &target.route_id, call).await {
            Ok(Outcome::Rechecked(Recheck {
                allowed: true,
                access_token,
            })) => {
                let Some(token) = access_token else { continue };
                match shared
                    .sessions
                    .renew_access_token(&*shared.store, &s.token_hash, token)
                    .await
                {
                    Ok(renewed) => {
                        tracing::debug!(session = %s.id, renewed, "access token renewed by the re-check")
                    }
                    Err(e) => tracing::error!(session = %s.id, "storing a renewed access token: {e}"),
                }
            }
            Ok(Outcome::Rechecked(Recheck { allowed: false, .. })) => {
                let id = s.id.clone();
                match shared.accounts.end_sessions(&[id]).await {
                    Ok(_) => {
                        tracing::info!(target: "portcullis::audit", event = "access_revoked", session = %s.id, user = %s.user_id, route = %s.route_id, plugin = %auth.module.plugin, "the identity provider no longer grants access")
                    }
                    Err(e) => tracing::error!(session = %s.id, "ending a revoked session: {e}"),
                }
            }
            Ok(other) => tracing::error!(plugin = %auth.module.plugin, "recheck answered {other:?}"),
            Err(e) => {
                tracing::warn!(plugin = %auth.module.plugin, session = %s.id, "re-check failed, session kept: {e}")
            }
        }
    }
}
