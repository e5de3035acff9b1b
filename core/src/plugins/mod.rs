//! The plugin registry: the only way the gateway finds a protocol. Built-in plugins are
//! registered by name at start-up; libraries named in `[[plugin]]` are loaded before the
//! listeners take traffic, and one with a built-in's name replaces the built-in, so only one
//! implementation of a protocol (and of the C libraries it initialises) is ever active.

mod dynamic;
pub mod host;

pub use dynamic::file_sha256;

use dynamic::DynamicPlugin;
use portcullis_plugin_sdk::abi::panic_message;
use portcullis_plugin_sdk::{dispatch, Call, Host, Outcome, Plugin, PluginError, PluginInfo};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

/// Where a registered plugin came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Linked into this binary.
    BuiltIn,
    /// Loaded from this library file, whose SHA-256 this is.
    Library { path: PathBuf, sha256: String },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::BuiltIn => f.write_str("built in"),
            Origin::Library { path, sha256 } => write!(f, "{} (sha256 {sha256})", path.display()),
        }
    }
}

enum Implementation {
    Linked(Arc<dyn Plugin>),
    Dynamic(DynamicPlugin),
}

/// A plugin in the registry.
pub struct Registered {
    pub info: PluginInfo,
    pub origin: Origin,
    implementation: Implementation,
}

impl Registered {
    /// Calls the plugin; a panic inside it becomes [`PluginError::Panicked`]. Blocking: call it
    /// off the async worker threads.
    pub fn call(&self, host: &dyn Host, call: Call) -> Result<Outcome, PluginError> {
        match &self.implementation {
            Implementation::Linked(plugin) => catch_unwind(AssertUnwindSafe(|| dispatch(plugin.as_ref(), host, call)))
                .unwrap_or_else(|panic| Err(PluginError::Panicked(panic_message(panic.as_ref())))),
            Implementation::Dynamic(plugin) => plugin.call(host, &call),
        }
    }
}

/// Every registered plugin, by name.
#[derive(Default)]
pub struct Registry {
    plugins: BTreeMap<String, Arc<Registered>>,
}

/// The plugins linked into this binary. SCIM registers here when it arrives.
pub fn builtins() -> Vec<Arc<dyn Plugin>> {
    vec![
        Arc::new(portcullis_saml::Saml::default()),
        Arc::new(portcullis_oidc::Oidc::default()),
    ]
}

impl Registry {
    /// The built-ins and `extra` linked-in plugins, then the libraries `config` names, in order.
    pub fn load(libraries: &[crate::config::PluginConfig], extra: Vec<Arc<dyn Plugin>>) -> Result<Registry, String> {
        let mut registry = Registry::default();
        for plugin in builtins().into_iter().chain(extra) {
            registry.register_builtin(plugin);
        }
        for (i, library) in libraries.iter().enumerate() {
            registry
                .load_library(library)
                .map_err(|e| format!("plugin[{i}]: {e}"))?;
        }
        Ok(registry)
    }

    /// Registers a linked-in plugin under its own name.
    pub fn register_builtin(&mut self, plugin: Arc<dyn Plugin>) {
        let info = plugin.info();
        self.plugins.insert(
            info.name.clone(),
            Arc::new(Registered {
                info,
                origin: Origin::BuiltIn,
                implementation: Implementation::Linked(plugin),
            }),
        );
    }

    fn load_library(&mut self, config: &crate::config::PluginConfig) -> Result<(), String> {
        let (plugin, sha256) = DynamicPlugin::load(&config.path, config.sha256.as_deref())?;
        let info = match plugin.call(&host::Detached, &Call::Info) {
            Ok(Outcome::Info(info)) => info,
            Ok(other) => {
                return Err(format!(
                    "{} answered {other:?} when asked for its info",
                    config.path.display()
                ))
            }
            Err(e) => return Err(format!("{}: {e}", config.path.display())),
        };
        match self.plugins.get(&info.name).map(|p| &p.origin) {
            Some(Origin::Library { path, .. }) => {
                return Err(format!(
                    "{} and {} both register the plugin `{}`",
                    path.display(),
                    config.path.display(),
                    info.name
                ));
            }
            Some(Origin::BuiltIn) => tracing::info!(
                "plugin library {} replaces the built-in `{}`",
                config.path.display(),
                info.name
            ),
            None => {}
        }
        let origin = Origin::Library {
            path: config.path.clone(),
            sha256,
        };
        self.plugins.insert(
            info.name.clone(),
            Arc::new(Registered {
                info,
                origin,
                implementation: Implementation::Dynamic(plugin),
            }),
        );
        Ok(())
    }

    /// The plugin registered under `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Registered>> {
        self.plugins.get(name)
    }

    /// Every plugin, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Registered>> {
        self.plugins.values()
    }
}
