//! The ports plugin hosts are made of ([`Ports`]): the store's plugin key-value operations, the
//! accounts (behind the directory port), the egress client and the clock; and the two kinds of
//! host made from them: one for a call on a route's module, one for a provisioning call. Call
//! sites take them from the shared state (`Shared::ports`): `plugins/` never names `Shared`.

use super::host::PluginHost;
use crate::accounts::Accounts;
use crate::clock::Clock;
use crate::egress::{EgressClient, ModuleEgress};
use crate::store::PluginKv;
use portcullis_plugin_sdk::Caller;
use std::sync::Arc;

/// What plugin hosts are made of.
#[derive(Clone)]
pub struct Ports {
    /// The store's plugin key-value operations: the only part of the store a plugin host reaches.
    pub kv: Arc<dyn PluginKv + Send + Sync>,
    pub accounts: Arc<Accounts>,
    pub egress: EgressClient,
    pub clock: Arc<dyn Clock>,
}

impl Ports {
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
