//! What every listener shares ([`Shared`]): the current config, the store, the routing table,
//! metrics, the plugin registry, the session index, the assertion signer and the egress
//! client, `accounts`, the handle on the change feed's follower. Built by the composition root
//! (`server.rs`); no logic here.

use crate::clock::Clock;
use crate::config::Config;
use crate::identity::Signer;
use crate::metrics::Metrics;
use crate::plugins::{Ports, Registry};
use crate::routing::RouteTable;
use crate::sessions::Sessions;
use crate::store::Storage;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

/// State shared by the edge, the console and the admin socket.
pub struct Shared {
    /// The config in force: swapped by `configure`, read by the follower.
    pub config: Arc<ArcSwap<Config>>,
    pub store: Arc<dyn Storage>,
    /// People and the ends of sessions.
    pub accounts: Arc<crate::accounts::Accounts>,
    /// Derived state: only the follower (`derived.rs`) swaps it.
    pub routes: Arc<ArcSwap<RouteTable>>,
    pub metrics: Arc<Metrics>,
    /// Proxy settings in force; they change only with a restart.
    pub proxy_config: crate::config::ProxyConfig,
    /// Set once every listener accepts traffic; cleared at shutdown.
    pub ready: AtomicBool,
    /// The protocol plugins, fixed at start-up.
    pub registry: Arc<Registry>,
    pub clock: Arc<dyn Clock>,
    /// Derived state: the follower drops ended sessions.
    pub sessions: Arc<Sessions>,
    /// Nudge the follower after a config swap; wait for it to show a write.
    pub derived: Arc<crate::derived::Derived>,
    pub signer: Signer,
    pub egress_client: crate::egress::EgressClient,
    /// Set while a pass of session re-checks runs (see `signin::recheck_sessions`).
    pub rechecking: AtomicBool,
    /// Passes of session re-checks the upkeep has finished (tests wait on it).
    pub recheck_passes: AtomicU64,
}

impl Shared {
    /// The ports plugin hosts are made of, over this shared state.
    pub fn ports(&self) -> Ports {
        Ports {
            kv: self.store.clone(),
            accounts: self.accounts.clone(),
            egress: self.egress_client.clone(),
            clock: self.clock.clone(),
        }
    }
}
