//! The plugin registry: the only way the gateway finds a protocol. Built-in plugins are
//! registered by name at start-up; libraries named in `[[plugin]]` are loaded before the
//! listeners take traffic, and one with a built-in's name replaces the built-in, so only one
//! implementation of a protocol (and of the C libraries it initialises) is ever active.

mod dynamic;
pub mod host;
mod ports;

pub use dynamic::{file_sha256, LibraryError};
pub use ports::Ports;

use crate::clock::Clock;
use dynamic::DynamicPlugin;
use portcullis_plugin_sdk::abi::panic_message;
use portcullis_plugin_sdk::{dispatch, Call, Capability, Host, Outcome, Plugin, PluginError, PluginInfo};
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

/// Why the registry could not be built (the message the start-up and `check` print after the
/// config file's name).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("plugin[{index}]: {error}")]
    Library { index: usize, error: LibraryLoadError },
    #[error("plugin `{name}` declares the Provisioning capability but no provisioning_path")]
    NoProvisioningPath { name: String },
    #[error("plugin `{name}` names the provisioning_path `{path}` but does not declare the Provisioning capability")]
    NotProvisioning { name: String, path: String },
    #[error("plugin `{name}`: provisioning_path `{path}` {problem}")]
    BadProvisioningPath {
        name: String,
        path: String,
        problem: &'static str,
    },
    #[error("plugin `{name}`: provisioning_path `{path}` collides with `{taken}`, served by {owner}; each provisioning path must be apart from the others")]
    ProvisioningPathTaken {
        name: String,
        path: String,
        taken: String,
        owner: String,
    },
}

/// Why one `[[plugin]]` library was not registered.
#[derive(Debug, thiserror::Error)]
pub enum LibraryLoadError {
    #[error(transparent)]
    Library(#[from] LibraryError),
    #[error("{} answered {answer:?} when asked for its info", .path.display())]
    NoInfo { path: PathBuf, answer: Box<Outcome> },
    #[error("{}: {error}", .path.display())]
    Info { path: PathBuf, error: PluginError },
    #[error("{} and {} both register the plugin `{name}`", .first.display(), .second.display())]
    Duplicate {
        first: PathBuf,
        second: PathBuf,
        name: String,
    },
}

/// Every registered plugin, by name, and the clock of the calls made outside any route.
pub struct Registry {
    plugins: BTreeMap<String, Arc<Registered>>,
    clock: Arc<dyn Clock>,
}

/// The paths the console listener serves itself (the management API's prefix, `api::PREFIX`,
/// and the server's small routes); no provisioning path may be one of them, nor above or below
/// one. Written here rather than imported, so the registry does not depend on the API.
pub const CONSOLE_PATHS: [&str; 4] = ["/api", "/healthz", "/readyz", "/metrics"];

/// Whether `path` is `mount` or lies below it (segment-wise: `/scim/v2x` is not below `/scim/v2`).
fn under(path: &str, mount: &str) -> bool {
    path.strip_prefix(mount)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether one of two paths is the other or lies below it.
fn overlaps(a: &str, b: &str) -> bool {
    under(a, b) || under(b, a)
}

/// A provisioning path: `/` and one or more segments of ASCII letters, digits, `-`, `_` and `.`
/// (not `.` or `..`), no trailing `/`.
fn check_provisioning_path(path: &str) -> Result<(), &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("must begin with `/`");
    };
    let segment_ok = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if rest.split('/').all(segment_ok) {
        Ok(())
    } else {
        Err("must be `/` and segments of letters, digits, `-`, `_` and `.`, with no empty, `.` or `..` segment and no trailing `/`")
    }
}

/// The plugins linked into this binary. SCIM registers here when it arrives.
pub fn builtins() -> Vec<Arc<dyn Plugin>> {
    vec![
        Arc::new(portcullis_saml::Saml::default()),
        Arc::new(portcullis_oidc::Oidc::default()),
    ]
}

impl Registry {
    /// The built-ins and `extra` linked-in plugins, then the libraries `config` names, in order;
    /// calls outside any route (a plugin's info, option validation) read `clock`.
    pub fn load(
        libraries: &[crate::config::PluginConfig],
        extra: Vec<Arc<dyn Plugin>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Registry, RegistryError> {
        let mut registry = Registry {
            plugins: BTreeMap::new(),
            clock,
        };
        for plugin in builtins().into_iter().chain(extra) {
            registry.register_builtin(plugin);
        }
        for (i, library) in libraries.iter().enumerate() {
            registry
                .load_library(library)
                .map_err(|error| RegistryError::Library { index: i, error })?;
        }
        registry.check_provisioning_paths()?;
        Ok(registry)
    }

    /// Every provisioning plugin names a well-formed path of its own on the console listener,
    /// apart from the console's own paths and from each other's (neither above nor below).
    fn check_provisioning_paths(&self) -> Result<(), RegistryError> {
        let mut claimed: Vec<(&str, String)> = CONSOLE_PATHS.iter().map(|p| (*p, "the console".to_string())).collect();
        for plugin in self.plugins.values() {
            let name = &plugin.info.name;
            let provisions = plugin.info.capabilities.contains(&Capability::Provisioning);
            let path = match (&plugin.info.provisioning_path, provisions) {
                (None, false) => continue,
                (None, true) => return Err(RegistryError::NoProvisioningPath { name: name.clone() }),
                (Some(path), false) => {
                    return Err(RegistryError::NotProvisioning {
                        name: name.clone(),
                        path: path.clone(),
                    })
                }
                (Some(path), true) => path.as_str(),
            };
            check_provisioning_path(path).map_err(|problem| RegistryError::BadProvisioningPath {
                name: name.clone(),
                path: path.to_string(),
                problem,
            })?;
            if let Some((taken, owner)) = claimed.iter().find(|(taken, _)| overlaps(taken, path)) {
                return Err(RegistryError::ProvisioningPathTaken {
                    name: name.clone(),
                    path: path.to_string(),
                    taken: taken.to_string(),
                    owner: owner.clone(),
                });
            }
            claimed.push((path, format!("the plugin `{name}`")));
        }
        Ok(())
    }

    /// The provisioning plugin whose path is `path` or lies above it.
    pub fn provisioning_plugin(&self, path: &str) -> Option<&Arc<Registered>> {
        self.plugins.values().find(|plugin| {
            plugin.info.capabilities.contains(&Capability::Provisioning)
                && plugin
                    .info
                    .provisioning_path
                    .as_deref()
                    .is_some_and(|mount| under(path, mount))
        })
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

    fn load_library(&mut self, config: &crate::config::PluginConfig) -> Result<(), LibraryLoadError> {
        let (plugin, sha256) = DynamicPlugin::load(&config.path, config.sha256.as_deref())?;
        let info = match plugin.call(&self.detached_host(), &Call::Info) {
            Ok(Outcome::Info(info)) => info,
            Ok(other) => {
                return Err(LibraryLoadError::NoInfo {
                    path: config.path.clone(),
                    answer: Box::new(other),
                })
            }
            Err(error) => {
                return Err(LibraryLoadError::Info {
                    path: config.path.clone(),
                    error,
                })
            }
        };
        match self.plugins.get(&info.name).map(|p| &p.origin) {
            Some(Origin::Library { path, .. }) => {
                return Err(LibraryLoadError::Duplicate {
                    first: path.clone(),
                    second: config.path.clone(),
                    name: info.name,
                });
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

    /// The host of a call made outside any route (a plugin's info, option validation).
    pub fn detached_host(&self) -> host::Detached {
        host::Detached {
            clock: self.clock.clone(),
        }
    }

    /// Every plugin, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Registered>> {
        self.plugins.values()
    }
}

#[cfg(test)]
mod tests {
    use super::{check_provisioning_path, overlaps, Registry, RegistryError};
    use portcullis_plugin_sdk::{
        Capability, Host, HttpRequest, HttpResponse, ModuleContext, ModulePlan, OptionError, Outcome, Plugin,
        PluginError, PluginInfo,
    };
    use std::sync::Arc;

    struct Provisioner {
        name: &'static str,
        path: Option<&'static str>,
        capability: bool,
    }

    impl Plugin for Provisioner {
        fn info(&self) -> PluginInfo {
            PluginInfo {
                name: self.name.into(),
                version: "0".into(),
                description: "a provisioning path".into(),
                capabilities: if self.capability {
                    vec![Capability::Provisioning]
                } else {
                    vec![]
                },
                provisioning_path: self.path.map(str::to_string),
            }
        }
        fn validate_options(&self, _: &serde_json::Value) -> Result<ModulePlan, Vec<OptionError>> {
            Ok(ModulePlan::default())
        }
        fn start_login(
            &self,
            _: &dyn Host,
            _: &ModuleContext,
            _: &str,
            _: &HttpRequest,
        ) -> Result<HttpResponse, PluginError> {
            Err(PluginError::Internal("no sign-in".into()))
        }
        fn handle(&self, _: &dyn Host, _: &ModuleContext, _: &HttpRequest) -> Result<Outcome, PluginError> {
            Err(PluginError::Internal("no sign-in".into()))
        }
    }

    fn load(plugins: &[(&'static str, Option<&'static str>, bool)]) -> Result<Registry, RegistryError> {
        let extra = plugins
            .iter()
            .map(|&(name, path, capability)| Arc::new(Provisioner { name, path, capability }) as Arc<dyn Plugin>)
            .collect();
        Registry::load(&[], extra, Arc::new(crate::clock::SystemClock))
    }

    #[test]
    fn provisioning_paths_are_checked_at_load() {
        assert!(check_provisioning_path("/scim/v2").is_ok());
        for bad in [
            "",
            "scim",
            "/",
            "/scim/",
            "/scim//v2",
            "/scim/../api",
            "/sc im",
            "/scim/%2e",
        ] {
            assert!(check_provisioning_path(bad).is_err(), "{bad}");
        }
        // The console's paths are written out in the registry: the API's prefix is one of them.
        assert!(super::CONSOLE_PATHS.contains(&crate::api::PREFIX));
        assert!(overlaps("/api", "/api/scim") && overlaps("/api/scim", "/api") && overlaps("/a", "/a"));
        assert!(!overlaps("/apis", "/api") && !overlaps("/scim/v2", "/scim/v3"));

        let registry = load(&[("scim", Some("/scim/v2"), true), ("other", Some("/scim/v3"), true)]).unwrap();
        assert_eq!(
            registry.provisioning_plugin("/scim/v2/Users/1").unwrap().info.name,
            "scim"
        );
        assert_eq!(registry.provisioning_plugin("/scim/v2").unwrap().info.name, "scim");
        assert!(registry.provisioning_plugin("/scim/v2x").is_none());
        assert!(registry.provisioning_plugin("/scim").is_none());

        for (plugins, expected) in [
            (
                vec![("scim", Some("/api"), true)],
                "collides with `/api`, served by the console",
            ),
            (vec![("scim", Some("/api/scim"), true)], "collides with `/api`"),
            (vec![("scim", Some("/metrics"), true)], "collides with `/metrics`"),
            (vec![("scim", Some("/healthz/x"), true)], "collides with `/healthz`"),
            (vec![("scim", Some("/readyz"), true)], "collides with `/readyz`"),
            (
                vec![("a", Some("/scim"), true), ("b", Some("/scim/v2"), true)],
                "collides with `/scim`, served by the plugin `a`",
            ),
            (vec![("scim", Some("scim"), true)], "must begin with `/`"),
            (vec![("scim", None, true)], "no provisioning_path"),
            (
                vec![("scim", Some("/scim"), false)],
                "does not declare the Provisioning capability",
            ),
        ] {
            let error = load(&plugins).err().unwrap().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
