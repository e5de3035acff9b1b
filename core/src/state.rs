//! What every listener shares ([`Shared`]): the current config, the store, the routing table,
//! metrics, the plugin registry, the session index, the assertion signer and the egress
//! client. Built by the composition root (`server.rs`); no logic here beyond the ending of
//! sessions, which `accounts` takes over.

use crate::clock::Clock;
use crate::config::Config;
use crate::identity::Signer;
use crate::metrics::Metrics;
use crate::plugins::Registry;
use crate::routing::RouteTable;
use crate::sessions::Sessions;
use crate::store::{Store, StoreError};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

/// State shared by the edge, the console and the admin socket.
pub struct Shared {
    pub config: ArcSwap<Config>,
    pub store: Store,
    pub routes: ArcSwap<RouteTable>,
    pub metrics: Metrics,
    /// Proxy settings in force; they change only with a restart.
    pub proxy_config: crate::config::ProxyConfig,
    /// Set once every listener accepts traffic; cleared at shutdown.
    pub ready: AtomicBool,
    /// The protocol plugins, fixed at start-up.
    pub registry: Arc<Registry>,
    pub clock: Arc<dyn Clock>,
    pub sessions: Sessions,
    pub signer: Signer,
    pub egress_client: crate::egress::EgressClient,
    /// Set while a pass of session re-checks runs (see `signin::recheck_sessions`).
    pub rechecking: AtomicBool,
    /// Passes of session re-checks the upkeep has finished (tests wait on it).
    pub recheck_passes: AtomicU64,
}

impl Shared {
    /// Ends every session of `user_id`, live or only stored, durably: the index first, so the
    /// very next request is refused. Returns how many were live.
    pub async fn end_sessions_of(&self, user_id: &str) -> Result<usize, StoreError> {
        self.end_sessions_where(|s| s.user_id == user_id).await
    }

    /// Ends every session `which` selects, live and stored; answers how many were live.
    pub async fn end_sessions_where(
        &self,
        which: impl Fn(&crate::model::Session) -> bool,
    ) -> Result<usize, StoreError> {
        let live = self.sessions.remove_where(&which);
        let stored: Vec<String> = self
            .store
            .all_sessions()?
            .into_iter()
            .filter(|s| which(s))
            .map(|s| s.id)
            .collect();
        self.store.delete_sessions(&stored, true).await?;
        Ok(live.len())
    }
}
