//! `/edges/https/{edge_id}/routes/{id}/{plugin}` (ngrok's `.../saml` and `.../oidc`): a route's
//! auth module on its own, under its plugin's name. Reading renders the module as its route's
//! view does; writing goes through `edge_routes::change_route` like any route write.

use super::edge_routes::{change_route, route_of, RouteWrite};
use super::edges::{find_edge, outputs_of};
use super::views::{no_content, ok, Answer};
use super::{ApiError, Ctx};
use portcullis_plugin_sdk::Capability;
use serde_json::Value;

/// Whether `name` is a registered browser-login plugin (a route module's field name).
pub(super) fn is_module_name(ctx: &Ctx<'_>, name: &str) -> bool {
    ctx.shared
        .registry
        .get(name)
        .is_some_and(|p| p.info.capabilities.contains(&Capability::BrowserLogin))
}

/// `PUT .../routes/{id}/<module>`: the body is the module, bare (as ngrok's clients send it)
/// or wrapped as `{"edge_id", "id", "module": {...}}` (as ngrok's reference shows it).
pub(super) async fn replace_module(ctx: &Ctx<'_>, edge_id: &str, id: &str, name: &str) -> Answer {
    let mut body: serde_json::Map<String, Value> = ctx.json()?;
    let module = match body.remove("module") {
        Some(Value::Object(module)) => {
            for (key, expected) in [("edge_id", edge_id), ("id", id)] {
                if body.get(key).is_some_and(|v| v.as_str() != Some(expected)) {
                    return Err(ApiError::invalid(
                        key,
                        format!("does not match the path (`{expected}`)"),
                    ));
                }
            }
            module
        }
        Some(other) => return Err(ApiError::invalid("module", format!("must be an object, not {other}"))),
        None => body,
    };
    let change = RouteWrite::module(name, Value::Object(module));
    let (edge, route) = change_route(ctx, edge_id, id, change).await?;
    let outputs = outputs_of(ctx, [&edge]).await;
    match route.auth.as_ref() {
        Some(module) => ok(crate::modules::module_json(module, outputs.get(&route.id))),
        None => Err(ApiError::internal("the module was not stored")),
    }
}

/// `GET .../routes/{id}/<module>`: the module as its route's view shows it.
pub(super) async fn get_module(ctx: &Ctx<'_>, edge_id: &str, id: &str, name: &str) -> Answer {
    let edge = find_edge(ctx, edge_id).await?;
    let route = route_of(&edge, id)?;
    let outputs = outputs_of(ctx, [&edge]).await;
    match route.auth.as_ref().filter(|m| m.plugin == name) {
        Some(module) => ok(crate::modules::module_json(module, outputs.get(&route.id))),
        None => Err(ApiError::not_found(&format!("{name} module of route"), id)),
    }
}

/// `DELETE .../routes/{id}/<module>`: the route without its module.
pub(super) async fn delete_module(ctx: &Ctx<'_>, edge_id: &str, id: &str, name: &str) -> Answer {
    change_route(ctx, edge_id, id, RouteWrite::module(name, Value::Null)).await?;
    no_content()
}
