//! The ports plugin hosts are made of ([`Ports`]): the store's plugin key-value operations, the
//! accounts (behind the directory port), the egress client and the clock; and the two kinds of
//! host made from them: one for a call on a route's module, one for a provisioning call. The
//! composition root will own one `Ports`; until it does, [`Ports::from_shared`] builds it at
//! the call sites from the shared state (the one place `plugins/` reaches `Shared`).

use super::host::PluginHost;
use crate::accounts::Accounts;
use crate::clock::Clock;
use crate::egress::{EgressClient, ModuleEgress};
use crate::state::Shared;
use crate::store::StoreError;
use portcullis_plugin_sdk::Caller;
use std::sync::Arc;

/// The store's plugin key-value operations: the only part of the store a plugin host reaches.
/// Keys live in a namespace; `now` and `expires_at` are seconds since the Unix epoch.
pub trait PluginKvStore: Send + Sync {
    fn kv_get(&self, namespace: &str, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError>;
    fn kv_put(&self, namespace: &str, key: &str, value: &[u8], expires_at: Option<i64>) -> Result<(), StoreError>;
    fn kv_take(&self, namespace: &str, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError>;
    fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), StoreError>;
    fn kv_get_or_insert(&self, namespace: &str, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError>;
    fn kv_incr(&self, namespace: &str, key: &str, now: i64, expires_at: Option<i64>) -> Result<u64, StoreError>;
}

/// Today's store, reached through the shared state.
impl PluginKvStore for Shared {
    fn kv_get(&self, namespace: &str, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.kv_get(namespace, key, now)
    }
    fn kv_put(&self, namespace: &str, key: &str, value: &[u8], expires_at: Option<i64>) -> Result<(), StoreError> {
        self.store.kv_put(namespace, key, value, expires_at)
    }
    fn kv_take(&self, namespace: &str, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.kv_take(namespace, key, now)
    }
    fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        self.store.kv_delete(namespace, key)
    }
    fn kv_get_or_insert(&self, namespace: &str, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.store.kv_get_or_insert(namespace, key, value)
    }
    fn kv_incr(&self, namespace: &str, key: &str, now: i64, expires_at: Option<i64>) -> Result<u64, StoreError> {
        self.store.kv_incr(namespace, key, now, expires_at)
    }
}

/// What plugin hosts are made of.
#[derive(Clone)]
pub struct Ports {
    pub kv: Arc<dyn PluginKvStore>,
    pub accounts: Arc<Accounts>,
    pub egress: EgressClient,
    pub clock: Arc<dyn Clock>,
}

impl Ports {
    /// The ports over the shared state (until the composition root owns them).
    pub fn from_shared(shared: &Arc<Shared>) -> Ports {
        Ports {
            kv: shared.clone(),
            accounts: Arc::new(Accounts::new(shared.clone())),
            egress: shared.egress_client.clone(),
            clock: shared.clock.clone(),
        }
    }

    /// The host of a call on one route's module (sign-in, module outputs, re-check, logout):
    /// the module's key-value namespace, egress to the module's hosts only, and no directory
    /// (sign-in calls never read or write people).
    pub fn module_host(
        &self,
        plugin: &str,
        module_id: &str,
        egress_hosts: &[String],
        runtime: tokio::runtime::Handle,
    ) -> PluginHost {
        PluginHost {
            plugin: plugin.to_string(),
            kv: self.kv.clone(),
            namespace: format!("{plugin}/{module_id}"),
            directory: None,
            egress: ModuleEgress::new(self.egress.clone(), egress_hosts.to_vec()),
            clock: self.clock.clone(),
            runtime,
        }
    }

    /// The host of a provisioning call: the plugin's provisioning namespace, no egress, and the
    /// directory only when `caller` authenticated.
    pub fn provisioning_host(&self, plugin: &str, caller: &Caller, runtime: tokio::runtime::Handle) -> PluginHost {
        PluginHost {
            plugin: plugin.to_string(),
            kv: self.kv.clone(),
            namespace: format!("{plugin}/provisioning"),
            directory: match caller {
                Caller::ApiKey { .. } => Some(self.accounts.clone()),
                Caller::Refused { .. } => None,
            },
            egress: ModuleEgress::new(self.egress.clone(), Vec::new()),
            clock: self.clock.clone(),
            runtime,
        }
    }
}
