//! What every listener shares: the current config, the store, the routing table, metrics and
//! the upstream client; and the two operations that change what the edge serves: applying a
//! config file's declared objects, and rebuilding the routing table from the store.

use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::identity::Signer;
use crate::ids;
use crate::metrics::Metrics;
use crate::model::{Edge, Route, RouteBackend, Source, StaticBackend};
use crate::plugins::Registry;
use crate::routing::RouteTable;
use crate::sessions::Sessions;
use crate::store::{ConfigObjectSet, Conflict, Storage, StoreError};
use arc_swap::ArcSwap;
use rand::RngCore;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

/// The client plugins' HTTP calls go through.
pub type EgressClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

/// State shared by the edge, the console and the admin socket.
pub struct Shared {
    pub config: ArcSwap<Config>,
    pub store: Arc<dyn Storage>,
    /// People and the ends of sessions.
    pub accounts: crate::accounts::Accounts,
    pub routes: ArcSwap<RouteTable>,
    pub metrics: Metrics,
    /// Proxy settings in force; they change only with a restart.
    pub proxy_config: crate::config::ProxyConfig,
    /// Set once every listener accepts traffic; cleared at shutdown.
    pub ready: AtomicBool,
    /// The protocol plugins, fixed at start-up.
    pub registry: Arc<Registry>,
    pub clock: Arc<dyn Clock>,
    pub sessions: Arc<Sessions>,
    pub signer: Signer,
    pub egress_client: EgressClient,
    /// Set while a pass of session re-checks runs (see `auth::recheck_sessions`).
    pub rechecking: AtomicBool,
    /// Passes of session re-checks the upkeep has finished (tests wait on it).
    pub recheck_passes: AtomicU64,
}

/// Why a config could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl Shared {
    /// Opens the store for `config` and applies its declared objects.
    pub async fn open(
        config: Config,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Shared>, ApplyError> {
        // sled releases its lock from a background thread a moment after the database is
        // dropped: a restart right after a stop waits for it briefly.
        let mut attempts = 0;
        let store = loop {
            match crate::store::open(&config.data_dir) {
                Err(StoreError::Locked { .. }) if attempts < 60 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                other => break other?,
            }
        };
        let client_error =
            |message| config_error(&config.file.display().to_string(), "proxy.upstream_ca_file", message);
        let sessions = Arc::new(Sessions::load(&*store, clock.now()).await?);
        let shared = Arc::new(Shared {
            egress_client: crate::proxy::upstream_client(&config.proxy).map_err(client_error)?,
            accounts: crate::accounts::Accounts::new(store.clone(), sessions.clone(), clock.clone()),
            sessions,
            signer: Signer::load_or_create(&*store).await?,
            registry,
            clock,
            proxy_config: config.proxy.clone(),
            config: ArcSwap::from_pointee(config.clone()),
            store,
            routes: ArcSwap::from_pointee(RouteTable::default()),
            metrics: Metrics::default(),
            ready: AtomicBool::new(false),
            rechecking: AtomicBool::new(false),
            recheck_passes: AtomicU64::new(0),
        });
        shared.apply_config(config).await?;
        Ok(shared)
    }

    /// Makes the store's config-declared backends and edges match `config`, swaps `config` in,
    /// and rebuilds the routing table. On error nothing changes.
    pub async fn apply_config(&self, config: Config) -> Result<(), ApplyError> {
        let file = config.file.display().to_string();
        let now = crate::model::now_unix();
        let (stored_backends, stored_edges) = self.store.config_snapshot().await?;
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
                    .map_err(|m| config_error(&file, &format!("edges.{name}.hostports[{i}]"), m))?;
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
                        config_auth_module(&self.registry, &file, &format!("edges.{name}.routes[{i}].auth"), table)
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
        match self
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
        self.config.store(Arc::new(config));
        self.rebuild_routes().await?;
        Ok(())
    }

    /// Rebuilds the routing table from the store and swaps it in.
    pub async fn rebuild_routes(&self) -> Result<(), StoreError> {
        let (backends, edges) = self.store.config_snapshot().await?;
        let config = self.config.load();
        let table = RouteTable::build(
            &edges,
            &backends,
            &self.registry,
            &config.identity_headers,
            config.listeners.edge.scheme(),
            &self.metrics,
        );
        self.routes.store(Arc::new(table));
        let live: HashSet<&str> = edges
            .iter()
            .flat_map(|e| e.routes.iter().map(|r| r.id.as_str()))
            .collect();
        self.metrics.retain_routes(&live);
        Ok(())
    }
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
    crate::auth::parse_module(registry, plugin, table.clone())
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

fn config_error(file: &str, key: &str, message: String) -> ConfigError {
    ConfigError {
        source: file.to_string(),
        key: Some(key.to_string()),
        message,
    }
}

/// A new request id: 16 random bytes in hex.
pub fn new_request_id() -> String {
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    let mut out = String::with_capacity(32);
    for b in raw {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    out
}
