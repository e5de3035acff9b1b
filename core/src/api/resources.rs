//! Which method and path of the API goes to which handler: `/api_keys`, `/backends/static`,
//! `/edges/https`, `/edges/https/{edge_id}/routes` and each route's auth module, `/app/sessions`
//! and `/app/users`. The handlers, their JSON shapes (ngrok's field names) and their checks are
//! each resource's own module's; the gate in front of them is `mod.rs`'.

use super::views::Answer;
use super::{api_keys, app_sessions, app_users, backends, edge_routes, edges, route_modules};
use super::{ApiError, Ctx};
use http::Method;

/// Routes a request to its handler by method and path segments.
pub(super) async fn dispatch(ctx: &Ctx<'_>, method: &Method, segments: &[&str], path: &str) -> Answer {
    let not_allowed = || Err(ApiError::method_not_allowed(method, path));
    match segments {
        ["api_keys"] => match *method {
            Method::GET => api_keys::list_api_keys(ctx).await,
            Method::POST => api_keys::create_api_key(ctx).await,
            _ => not_allowed(),
        },
        ["api_keys", id] => match *method {
            Method::GET => api_keys::get_api_key(ctx, id).await,
            Method::PATCH => api_keys::update_api_key(ctx, id).await,
            Method::DELETE => api_keys::delete_api_key(ctx, id).await,
            _ => not_allowed(),
        },
        ["backends", "static"] => match *method {
            Method::GET => backends::list_backends(ctx).await,
            Method::POST => backends::create_backend(ctx).await,
            _ => not_allowed(),
        },
        ["backends", "static", id] => match *method {
            Method::GET => backends::get_backend(ctx, id).await,
            Method::PATCH => backends::update_backend(ctx, id).await,
            Method::DELETE => backends::delete_backend(ctx, id).await,
            _ => not_allowed(),
        },
        ["edges", "https"] => match *method {
            Method::GET => edges::list_edges(ctx).await,
            Method::POST => edges::create_edge(ctx).await,
            _ => not_allowed(),
        },
        ["edges", "https", id] => match *method {
            Method::GET => edges::get_edge(ctx, id).await,
            Method::PATCH => edges::update_edge(ctx, id).await,
            Method::DELETE => edges::delete_edge(ctx, id).await,
            _ => not_allowed(),
        },
        ["edges", "https", edge_id, "routes"] => match *method {
            Method::GET => edge_routes::list_routes(ctx, edge_id).await,
            Method::POST => edge_routes::create_route(ctx, edge_id).await,
            _ => not_allowed(),
        },
        ["edges", "https", edge_id, "routes", id] => match *method {
            Method::GET => edge_routes::get_route(ctx, edge_id, id).await,
            Method::PATCH => edge_routes::update_route(ctx, edge_id, id).await,
            Method::DELETE => edge_routes::delete_route(ctx, edge_id, id).await,
            _ => not_allowed(),
        },
        // A route's auth module on its own, under its plugin's name (ngrok's
        // `/edges/https/{edge_id}/routes/{id}/saml` and `/oidc`).
        ["edges", "https", edge_id, "routes", id, name] if route_modules::is_module_name(ctx, name) => match *method {
            Method::GET => route_modules::get_module(ctx, edge_id, id, name).await,
            Method::PUT => route_modules::replace_module(ctx, edge_id, id, name).await,
            Method::DELETE => route_modules::delete_module(ctx, edge_id, id, name).await,
            _ => not_allowed(),
        },
        ["app", "sessions"] => match *method {
            Method::GET => app_sessions::list_app_sessions(ctx).await,
            _ => not_allowed(),
        },
        ["app", "sessions", id] => match *method {
            Method::GET => app_sessions::get_app_session(ctx, id).await,
            Method::DELETE => app_sessions::delete_app_session(ctx, id).await,
            _ => not_allowed(),
        },
        ["app", "users"] => match *method {
            Method::GET => app_users::list_app_users(ctx).await,
            _ => not_allowed(),
        },
        ["app", "users", id] => match *method {
            Method::GET => app_users::get_app_user(ctx, id).await,
            Method::DELETE => app_users::delete_app_user(ctx, id).await,
            _ => not_allowed(),
        },
        _ => Err(ApiError::no_such_path(path)),
    }
}
