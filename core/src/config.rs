//! The declarative configuration: `config.toml` plus `PORTCULLIS_` environment overrides
//! (nested keys joined with `__`, e.g. `PORTCULLIS_LISTENERS__EDGE__ADDRESS`).
//!
//! Loading is all-or-nothing: a file that does not parse, has an unknown key, a wrong type or
//! a value that fails validation yields one [`ConfigError`] naming the file, the key path and,
//! for TOML syntax, the line. Nothing here opens sockets or the database.

use crate::model::{self, MatchType};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The config format this build reads.
pub const CONFIG_VERSION: u32 = 1;
/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "PORTCULLIS_";

/// A config that failed to load, with where it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file (or the environment variable) the bad value came from.
    pub source: String,
    /// Dotted key path of the bad value, when the error concerns one key.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: key `{}`: {}", self.source, key, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Config format version; must be 1.
    pub version: u32,
    /// Where the database lives; relative paths are relative to the config file's folder.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    pub listeners: Listeners,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub api: ApiConfig,
    /// The web console's sign-in sessions.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// A built-in upstream that echoes back what it receives, for trying the gateway out.
    #[serde(default)]
    pub echo: Option<EchoConfig>,
    /// Static backends by name.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    /// HTTPS edges by name.
    #[serde(default)]
    pub edges: BTreeMap<String, EdgeConfig>,
    /// Plugin libraries to load at start-up (`[[plugin]]`).
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginConfig>,
    /// Names of the identity headers protected routes send upstream.
    #[serde(default)]
    pub identity_headers: IdentityHeaders,
    /// Set by the loader: the file this config was read from.
    #[serde(skip)]
    pub file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    pub edge: ListenerConfig,
    pub console: ListenerConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// The URL users reach this listener at; defaults to the scheme and address.
    #[serde(default)]
    pub public_url: Option<String>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

impl ListenerConfig {
    /// `https` when users reach this listener over TLS (its own, or a public URL's), else `http`.
    pub fn scheme(&self) -> &'static str {
        let public_https = self.public_url.as_deref().is_some_and(|u| u.starts_with("https://"));
        if self.tls.is_some() || public_https {
            "https"
        } else {
            "http"
        }
    }

    /// The URL users reach this listener at.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!(
                "{}://{}",
                if self.tls.is_some() { "https" } else { "http" },
                self.address
            ),
        }
    }
}

/// TLS for a listener: a certificate and key in PEM files, or a self-signed certificate made
/// on first start and kept in the data dir.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub self_signed: bool,
    /// Names the self-signed certificate is made for (default `localhost` and `127.0.0.1`).
    #[serde(default)]
    pub self_signed_names: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `portcullis=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
            format: LogFormat::Text,
        }
    }
}

/// Timeouts of the edge proxy, in seconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// How long a client may take to send a request's headers.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_secs: u64,
    /// How long connecting to an upstream may take before a 502.
    #[serde(default = "default_connect_timeout")]
    pub upstream_connect_timeout_secs: u64,
    /// How long an upstream may take to answer with headers before a 504, counted while the
    /// gateway waits on it (not while a request body keeps arriving or is awaited).
    #[serde(default = "default_response_timeout")]
    pub upstream_response_timeout_secs: u64,
    /// How long a client may take to send the whole body of a request the gateway reads
    /// itself (a sign-in post to a plugin's endpoint) before a 408.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_secs: u64,
    /// The longest a client may pause while sending a request body that is proxied upstream
    /// before the request is ended with a 408.
    #[serde(default = "default_body_idle_timeout")]
    pub body_idle_timeout_secs: u64,
    /// How long an idle pooled upstream connection is kept.
    #[serde(default = "default_idle_timeout")]
    pub upstream_idle_timeout_secs: u64,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    /// PEM file of CA certificates trusted for TLS upstreams, besides the system's.
    #[serde(default)]
    pub upstream_ca_file: Option<PathBuf>,
    /// Edge worker threads, each with its own runtime, socket and upstream pool (0: one per
    /// core the process may use).
    #[serde(default)]
    pub workers: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            header_read_timeout_secs: default_header_read_timeout(),
            upstream_connect_timeout_secs: default_connect_timeout(),
            upstream_response_timeout_secs: default_response_timeout(),
            body_read_timeout_secs: default_body_read_timeout(),
            body_idle_timeout_secs: default_body_idle_timeout(),
            upstream_idle_timeout_secs: default_idle_timeout(),
            shutdown_grace_secs: default_shutdown_grace(),
            upstream_ca_file: None,
            workers: 0,
        }
    }
}

impl ProxyConfig {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }
    pub fn upstream_connect_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_connect_timeout_secs)
    }
    pub fn upstream_response_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_response_timeout_secs)
    }
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout_secs)
    }
    pub fn body_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.body_idle_timeout_secs)
    }
    pub fn upstream_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_idle_timeout_secs)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Largest request body the management API reads.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Client addresses the management API answers (CIDR blocks or single addresses); empty:
    /// every address.
    #[serde(default)]
    pub allow_cidrs: Vec<crate::cidr::Cidr>,
    /// How long a client may take to send a whole request body before a 408.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_secs: u64,
}

impl ApiConfig {
    /// Whether the management API answers a client at `ip`.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.allow_cidrs.is_empty() || self.allow_cidrs.iter().any(|block| block.contains(ip))
    }
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout_secs)
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: default_max_body(),
            allow_cidrs: Vec::new(),
            body_read_timeout_secs: default_body_read_timeout(),
        }
    }
}

/// The web console's sessions (members signed in with their password).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Seconds without a request after which a console session ends.
    #[serde(default = "default_console_inactivity")]
    pub session_inactivity_timeout_secs: u64,
    /// Seconds after sign-in after which a console session ends, whatever its activity.
    #[serde(default = "default_console_maximum")]
    pub session_maximum_duration_secs: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            session_inactivity_timeout_secs: default_console_inactivity(),
            session_maximum_duration_secs: default_console_maximum(),
        }
    }
}

fn default_console_inactivity() -> u64 {
    3600
}
fn default_console_maximum() -> u64 {
    12 * 3600
}

/// A plugin library.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The library file (`.so`).
    pub path: PathBuf,
    /// The library's expected SHA-256 in hex; checked before loading when set.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// Names of the headers carrying the session's identity to the upstream. Incoming headers
/// with these names are always removed first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityHeaders {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub groups: String,
    /// A signed JWT (ES256) verifiable against `/_portcullis/jwks.json`.
    pub assertion: String,
    /// The identity provider's access token, for modules that forward it (opt-in).
    pub access_token: String,
    /// More header names removed from every request before it goes upstream, besides the
    /// six above and the built-in set of headers other proxies set
    /// (`routing::UNTRUSTED_REQUEST_HEADERS`).
    pub remove: Vec<String>,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders {
            user_id: "X-Portcullis-User-Id".into(),
            email: "X-Portcullis-User-Email".into(),
            name: "X-Portcullis-User-Name".into(),
            groups: "X-Portcullis-User-Groups".into(),
            assertion: "X-Portcullis-Assertion".into(),
            access_token: "X-Portcullis-Access-Token".into(),
            remove: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoConfig {
    pub address: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `host:port` of the upstream.
    pub address: String,
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    pub hostports: Vec<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub metadata: String,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub match_type: MatchType,
    #[serde(rename = "match")]
    pub path: String,
    /// Name of a backend under `[backends]`.
    pub backend: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub metadata: String,
    /// The route's authentication module: `plugin = "<name>"`, the common module options
    /// (`enabled`, `options_passthrough`, `cookie_prefix`, `inactivity_timeout`,
    /// `maximum_duration`) and the plugin's own options, all in one table.
    #[serde(default)]
    pub auth: Option<serde_json::Map<String, serde_json::Value>>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_log_level() -> String {
    "info".into()
}
fn default_header_read_timeout() -> u64 {
    30
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_response_timeout() -> u64 {
    60
}
fn default_body_read_timeout() -> u64 {
    30
}
fn default_body_idle_timeout() -> u64 {
    60
}
fn default_idle_timeout() -> u64 {
    90
}
fn default_shutdown_grace() -> u64 {
    30
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_true() -> bool {
    true
}

impl Config {
    /// Reads `path`, applies `PORTCULLIS_` environment overrides, and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source: shown.clone(),
            key: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        // Parse once with `toml` directly: its errors carry the line and column.
        if let Err(e) = text.parse::<toml_syntax::Table>() {
            return Err(ConfigError {
                source: shown,
                key: None,
                message: toml_syntax::describe(&e, &text),
            });
        }
        let figment = Figment::from(Toml::string(&text)).merge(Env::prefixed(ENV_PREFIX).split("__"));
        let mut config: Config = figment.extract().map_err(|e| from_figment(e, &shown))?;
        config.file = path.to_path_buf();
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        config.proxy.upstream_ca_file = config.proxy.upstream_ca_file.as_ref().map(|p| base.join(p));
        for plugin in &mut config.plugins {
            plugin.path = base.join(&plugin.path);
        }
        for listener in [&mut config.listeners.edge, &mut config.listeners.console] {
            if let Some(tls) = &mut listener.tls {
                tls.cert = tls.cert.as_ref().map(|p| base.join(p));
                tls.key = tls.key.as_ref().map(|p| base.join(p));
            }
        }
        config.read_option_files(base).map_err(|(key, message)| ConfigError {
            source: shown.clone(),
            key: Some(key),
            message,
        })?;
        config.validate().map_err(|(key, message)| ConfigError {
            source: shown,
            key: Some(key),
            message,
        })?;
        Ok(config)
    }

    /// Replaces each module option written as `{ file = "PATH" }` (e.g. a SAML IdP's metadata)
    /// by the contents of that file, relative to `base`.
    fn read_option_files(&mut self, base: &Path) -> Result<(), (String, String)> {
        for (name, edge) in &mut self.edges {
            for (i, route) in edge.routes.iter_mut().enumerate() {
                for (option, value) in route.auth.iter_mut().flatten() {
                    let serde_json::Value::Object(table) = value else {
                        continue;
                    };
                    let Some(file) = table.get("file") else { continue };
                    let key = format!("edges.{name}.routes[{i}].auth.{option}");
                    let (Some(file), 1) = (file.as_str(), table.len()) else {
                        return Err((
                            key,
                            "an option read from a file is written `{ file = \"PATH\" }`".into(),
                        ));
                    };
                    let path = base.join(file);
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| (format!("{key}.file"), format!("cannot read {}: {e}", path.display())))?;
                    *value = serde_json::Value::String(text);
                }
            }
        }
        Ok(())
    }

    /// Checks what serde cannot: versions, references, addresses and uniqueness.
    fn validate(&self) -> Result<(), (String, String)> {
        if self.version != CONFIG_VERSION {
            return Err((
                "version".into(),
                format!(
                    "unsupported config version {}; this build reads version {CONFIG_VERSION}",
                    self.version
                ),
            ));
        }
        for (name, listener) in [("edge", &self.listeners.edge), ("console", &self.listeners.console)] {
            if let Some(tls) = &listener.tls {
                let key = format!("listeners.{name}.tls");
                match (&tls.cert, &tls.key, tls.self_signed) {
                    (Some(cert), Some(pem_key), false) => {
                        for (field, file) in [("cert", cert), ("key", pem_key)] {
                            if !file.is_file() {
                                return Err((
                                    format!("{key}.{field}"),
                                    format!("file {} does not exist", file.display()),
                                ));
                            }
                        }
                    }
                    (None, None, true) => {}
                    _ => {
                        return Err((
                            key,
                            "set either `cert` and `key` (PEM files) or `self_signed = true`".into(),
                        ))
                    }
                }
            }
            if let Some(url) = &listener.public_url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err((
                        format!("listeners.{name}.public_url"),
                        format!("`{url}` is not an http:// or https:// URL"),
                    ));
                }
            }
        }
        if let Some(file) = &self.proxy.upstream_ca_file {
            if !file.is_file() {
                return Err((
                    "proxy.upstream_ca_file".into(),
                    format!("file {} does not exist", file.display()),
                ));
            }
        }
        if self.listeners.edge.address == self.listeners.console.address && self.listeners.edge.address.port() != 0 {
            return Err((
                "listeners.console.address".into(),
                "the console and edge listeners must use different addresses".into(),
            ));
        }
        for (i, plugin) in self.plugins.iter().enumerate() {
            if !plugin.path.is_file() {
                return Err((
                    format!("plugin[{i}].path"),
                    format!("file {} does not exist", plugin.path.display()),
                ));
            }
            if let Some(pin) = &plugin.sha256 {
                if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err((
                        format!("plugin[{i}].sha256"),
                        "must be 64 hexadecimal characters".into(),
                    ));
                }
            }
        }
        let h = &self.identity_headers;
        for (key, name) in [
            ("user_id", &h.user_id),
            ("email", &h.email),
            ("name", &h.name),
            ("groups", &h.groups),
            ("assertion", &h.assertion),
            ("access_token", &h.access_token),
        ] {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err((
                    format!("identity_headers.{key}"),
                    format!("`{name}` is not a valid header name"),
                ));
            }
        }
        for (i, name) in h.remove.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err((
                    format!("identity_headers.remove[{i}]"),
                    format!("`{name}` is not a valid header name"),
                ));
            }
            if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("cookie") {
                return Err((
                    format!("identity_headers.remove[{i}]"),
                    format!("`{name}` cannot be removed: upstreams need it"),
                ));
            }
        }
        for (key, secs) in [
            ("proxy.body_read_timeout_secs", self.proxy.body_read_timeout_secs),
            ("proxy.body_idle_timeout_secs", self.proxy.body_idle_timeout_secs),
            ("api.body_read_timeout_secs", self.api.body_read_timeout_secs),
            (
                "console.session_inactivity_timeout_secs",
                self.console.session_inactivity_timeout_secs,
            ),
            (
                "console.session_maximum_duration_secs",
                self.console.session_maximum_duration_secs,
            ),
        ] {
            if secs == 0 {
                return Err((key.to_string(), "must be at least 1 second".into()));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            (
                "log.level".to_string(),
                format!("`{}` is not a valid log filter: {e}", self.log.level),
            )
        })?;
        for (name, backend) in &self.backends {
            let key = format!("backends.{name}");
            check_name(name).map_err(|m| (key.clone(), m.to_string()))?;
            validate_address(&backend.address).map_err(|m| (format!("{key}.address"), m.to_string()))?;
            model::validate_labels(&backend.description, &backend.metadata)
                .map_err(|m| (key.clone(), m.to_string()))?;
        }
        let mut hostport_owner: HashMap<String, &str> = HashMap::new();
        for (name, edge) in &self.edges {
            let key = format!("edges.{name}");
            check_name(name).map_err(|m| (key.clone(), m.to_string()))?;
            model::validate_labels(&edge.description, &edge.metadata).map_err(|m| (key.clone(), m.to_string()))?;
            if edge.hostports.is_empty() {
                return Err((
                    format!("{key}.hostports"),
                    "an edge needs at least one host:port".into(),
                ));
            }
            for (i, hostport) in edge.hostports.iter().enumerate() {
                let normal = model::normalize_hostport(hostport)
                    .map_err(|m| (format!("{key}.hostports[{i}]"), m.to_string()))?;
                if let Some(other) = hostport_owner.insert(normal, name) {
                    return Err((
                        format!("{key}.hostports[{i}]"),
                        format!("`{hostport}` is already served by edge `{other}`"),
                    ));
                }
            }
            let mut seen = HashMap::new();
            for (i, route) in edge.routes.iter().enumerate() {
                let rkey = format!("{key}.routes[{i}]");
                model::validate_route_match(route.match_type, &route.path)
                    .map_err(|m| (format!("{rkey}.match"), m.to_string()))?;
                model::validate_labels(&route.description, &route.metadata)
                    .map_err(|m| (rkey.clone(), m.to_string()))?;
                if !self.backends.contains_key(&route.backend) {
                    return Err((
                        format!("{rkey}.backend"),
                        format!("no backend named `{}` under [backends]", route.backend),
                    ));
                }
                if let Some(first) = seen.insert((route.match_type, route.path.clone()), i) {
                    return Err((
                        format!("{rkey}.match"),
                        format!(
                            "routes[{first}] already matches {} `{}`",
                            route.match_type.as_str(),
                            route.path
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A name or an upstream address the config file (or the API) may not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error("address {0}")]
    Address(model::ValidationError),
    #[error("`{name}` is not a valid name: use 1 to 64 letters, digits, `-` or `_`")]
    Name { name: String },
}

/// Checks an upstream address: `host:port`.
pub fn validate_address(address: &str) -> Result<(), SettingError> {
    model::normalize_hostport(address)
        .map(|_| ())
        .map_err(SettingError::Address)
}

fn check_name(name: &str) -> Result<(), SettingError> {
    if !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(SettingError::Name { name: name.to_string() })
    }
}

fn from_figment(error: figment::Error, file: &str) -> ConfigError {
    let source = match error.metadata.as_ref() {
        Some(meta) if meta.name.contains("environment") => {
            let var = format!("{ENV_PREFIX}{}", error.path.join("__").to_ascii_uppercase());
            format!("environment variable {var} (overriding {file})")
        }
        _ => file.to_string(),
    };
    let key = if error.path.is_empty() {
        None
    } else {
        Some(key_path(&error.path))
    };
    let message = match &error.kind {
        figment::error::Kind::MissingField(field) => {
            return ConfigError {
                source,
                key: Some(match key {
                    Some(parent) => format!("{parent}.{field}"),
                    None => field.to_string(),
                }),
                message: "is required but missing".into(),
            };
        }
        kind => kind.to_string(),
    };
    ConfigError { source, key, message }
}

/// `["edges", "a", "routes", "0", "match"]` -> `edges.a.routes[0].match`.
fn key_path(segments: &[String]) -> String {
    let mut out = String::new();
    for segment in segments {
        if segment.parse::<usize>().is_ok() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

/// TOML syntax checking with line numbers, via the same `toml` crate figment uses.
mod toml_syntax {
    pub type Table = toml::Table;

    /// "line L, column C: what is wrong".
    pub fn describe(error: &toml::de::Error, text: &str) -> String {
        let message = error.message().trim().replace('\n', "; ");
        match error.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("TOML syntax error at line {line}, column {column}: {message}")
            }
            None => format!("TOML syntax error: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(crate::ids::new_id(
            "cfgtest",
            crate::clock::Clock::now(&crate::clock::SystemClock),
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        let result = Config::load(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    const MINIMAL: &str = "version = 1\n[listeners.edge]\naddress = \"127.0.0.1:8080\"\n[listeners.console]\naddress = \"127.0.0.1:4040\"\n";

    #[test]
    fn minimal_config_loads_with_defaults() {
        let config = load(MINIMAL).unwrap();
        assert_eq!(config.proxy, ProxyConfig::default());
        assert_eq!(
            (
                config.console.session_inactivity_timeout_secs,
                config.console.session_maximum_duration_secs
            ),
            (3600, 43200)
        );
        assert!(config.data_dir.ends_with("data"));
    }

    #[test]
    fn errors_name_the_key() {
        let err = load(&format!("{MINIMAL}[backends.a]\naddress = \"nope\"\n")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("backends.a.address"));
        let err = load(&MINIMAL.replace("version = 1", "version = 2")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("version"));
        let err = load(&format!(
            "{MINIMAL}[identity_headers]\nremove = [\"X-Ok\", \"bad name\"]\n"
        ))
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("identity_headers.remove[1]"));
        let err = load(&format!("{MINIMAL}[proxy]\nbody_idle_timeout_secs = 0\n")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("proxy.body_idle_timeout_secs"));
        let err = load(&format!("{MINIMAL}[api]\nbody_read_timeout_secs = 0\n")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("api.body_read_timeout_secs"));
        let err = load(&format!("{MINIMAL}[console]\nsession_maximum_duration_secs = 0\n")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("console.session_maximum_duration_secs"));
    }
}
