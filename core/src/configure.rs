//! Config application: turns a `Config` into config objects (static backends, edges with
//! their routes and auth modules, ids derived from names) and writes them through the store
//! in one atomic operation; then swaps the config in, nudges the change feed's follower
//! (`derived.rs`, which rebuilds the routing table) and waits until the table shows both. Runs
//! at start-up and on SIGHUP.

use crate::config::{Config, ConfigError};
use crate::ids;
use crate::model::{Edge, Route, RouteBackend, Source, StaticBackend};
use crate::plugins::Registry;
use crate::state::Shared;
use crate::store::{ConfigObjectSet, Conflict, StoreError};
use std::collections::HashMap;
use std::sync::Arc;

/// Why a config could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Follower(#[from] crate::derived::FollowerStopped),
}

/// Makes the store's config-declared backends and edges match `config`, swaps `config` in,
/// and waits until the routing table shows both. On error nothing changes.
pub async fn apply_config(shared: &Shared, config: Config) -> Result<(), ApplyError> {
    let file = config.file.display().to_string();
    let now = shared.clock.now();
    let (stored_backends, stored_edges) = shared.store.config_snapshot().await?;
    let created: HashMap<&str, i64> = stored_backends
        .iter()
        .map(|b| (b.id.as_str(), b.created_at))
        .chain(stored_edges.iter().map(|e| (e.id.as_str(), e.created_at)))
        .chain(
            stored_edges
                .iter()
                .flat_map(|e| e.routes.iter().map(|r| (r.id.as_str(), r.created_at))),
        )
        .collect();
    let created_at = |id: &str| created.get(id).copied().unwrap_or(now);

    let backends: Vec<StaticBackend> = config
        .backends
        .iter()
        .map(|(name, b)| {
            let id = ids::config_id(ids::STATIC_BACKEND, name);
            StaticBackend {
                created_at: created_at(&id),
                id,
                description: b.description.clone(),
                metadata: b.metadata.clone(),
                address: b.address.clone(),
                tls: b.tls,
                source: Source::Config {
                    file: file.clone(),
                    name: name.clone(),
                },
            }
        })
        .collect();
    let api_hostports: HashMap<String, &str> = stored_edges
        .iter()
        .filter(|e| e.source == Source::Api)
        .flat_map(|e| e.hostports.iter().map(move |h| (h.clone(), e.id.as_str())))
        .collect();
    let mut edges = Vec::new();
    for (name, e) in &config.edges {
        let mut hostports = Vec::new();
        for (i, hostport) in e.hostports.iter().enumerate() {
            let normal = crate::model::normalize_hostport(hostport)
                .map_err(|m| config_error(&file, &format!("edges.{name}.hostports[{i}]"), m.to_string()))?;
            if let Some(api_edge) = api_hostports.get(&normal) {
                return Err(config_error(
                    &file,
                    &format!("edges.{name}.hostports[{i}]"),
                    format!("`{hostport}` is already served by edge {api_edge}, created through the API; delete that edge or pick another host:port"),
                )
                .into());
            }
            hostports.push(normal);
        }
        let edge_id = ids::config_id(ids::HTTPS_EDGE, name);
        let mut routes = Vec::new();
        for (i, r) in e.routes.iter().enumerate() {
            let auth = match &r.auth {
                None => None,
                Some(table) => Some(
                    config_auth_module(
                        &shared.registry,
                        &file,
                        &format!("edges.{name}.routes[{i}].auth"),
                        table,
                    )
                    .await?,
                ),
            };
            let id = ids::config_id(
                ids::HTTPS_ROUTE,
                &format!("{name}/{}/{}", r.match_type.as_str(), r.path),
            );
            routes.push(Route {
                created_at: created_at(&id),
                id,
                match_type: r.match_type,
                path: r.path.clone(),
                description: r.description.clone(),
                metadata: r.metadata.clone(),
                backend: Some(RouteBackend {
                    enabled: r.enabled,
                    backend_id: ids::config_id(ids::STATIC_BACKEND, &r.backend),
                }),
                auth,
            });
        }
        edges.push(Edge {
            created_at: created_at(&edge_id),
            id: edge_id,
            description: e.description.clone(),
            metadata: e.metadata.clone(),
            hostports,
            routes,
            source: Source::Config {
                file: file.clone(),
                name: name.clone(),
            },
        });
    }
    match shared
        .store
        .replace_config_objects(ConfigObjectSet {
            backends: &backends,
            edges: &edges,
        })
        .await
    {
        Ok(()) => {}
        // An edge created through the API took a host:port since it was read above.
        Err(StoreError::Conflict(Conflict::HostportTaken { hostport, edge_id })) => {
            let key = config
                .edges
                .iter()
                .find_map(|(name, e)| {
                    let i = e
                        .hostports
                        .iter()
                        .position(|h| crate::model::normalize_hostport(h).as_deref() == Ok(hostport.as_str()))?;
                    Some(format!("edges.{name}.hostports[{i}]"))
                })
                .unwrap_or_else(|| "edges".to_string());
            return Err(config_error(
                &file,
                &key,
                format!("`{hostport}` is already served by edge {edge_id}, created through the API; delete that edge or pick another host:port"),
            )
            .into());
        }
        Err(e) => return Err(e.into()),
    }
    shared.config.store(Arc::new(config));
    let generation = shared.derived.config_swapped();
    shared
        .derived
        .caught_up_with(shared.store.revision(), generation)
        .await?;
    Ok(())
}

/// Builds the auth module a config route declares (`[edges.NAME.routes.auth]`); errors name
/// the key under `key`.
pub async fn config_auth_module(
    registry: &Registry,
    file: &str,
    key: &str,
    table: &serde_json::Map<String, serde_json::Value>,
) -> Result<crate::model::AuthModule, ConfigError> {
    let Some(serde_json::Value::String(plugin)) = table.get("plugin") else {
        return Err(config_error(
            file,
            &format!("{key}.plugin"),
            "is required: the name of a registered plugin".into(),
        ));
    };
    crate::modules::parse_module(registry, plugin, table.clone())
        .await
        .map_err(|(k, m)| {
            config_error(
                file,
                &if k.is_empty() {
                    key.to_string()
                } else {
                    format!("{key}.{k}")
                },
                m,
            )
        })
}

pub(crate) fn config_error(file: &str, key: &str, message: String) -> ConfigError {
    ConfigError {
        source: file.to_string(),
        key: Some(key.to_string()),
        message,
    }
}
