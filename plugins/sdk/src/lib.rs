//! The Portcullis plugin contract: what a protocol plugin (SAML, OIDC, SCIM, or a third
//! party's) implements, what the gateway gives it, and how the two talk across a dynamic
//! library boundary.
//!
//! - [`Plugin`] is the one trait every protocol implements. Built-in plugins are linked into
//!   the gateway and called directly; a dynamic library wraps its plugin with
//!   [`export_plugin!`], which exports one `extern "C"` entry point.
//! - [`Host`] is everything a plugin may touch outside itself: a key-value store namespaced to
//!   the plugin, the directory of people (only in a provisioning call by an authenticated
//!   caller), an HTTP client run by the gateway, a clock, randomness and logging. Plugins never
//!   open sockets or the database themselves.
//! - Across the C ABI ([`abi`]) only bytes travel: bincode-encoded [`Call`]/[`Outcome`] and
//!   [`HostCall`]/[`HostReply`] messages, plus a function to free buffers the other side
//!   allocated. The ABI version is checked before anything else.
//!
//! Plugins are trusted, in-process code: a plugin can do anything the gateway process can.
//! Load only libraries you would link in. There is no unloading. Calls are synchronous (async
//! runtimes cannot cross a dylib boundary); the gateway makes them off its async threads and
//! does any network I/O a plugin asks for itself.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod abi;
mod form;
mod messages;
mod options;

pub use form::{client_bucket, form_decode, form_value, percent_decode};
pub use messages::*;
pub use options::{escape, option_error, read_options};

/// The ABI and message-format version of this SDK. A library built against another version
/// is refused at load.
pub const ABI_VERSION: u32 = 4;

/// The most people one [`Host::people`] call answers: the gateway caps the `limit` a plugin
/// passes at this, so a client's page size cannot make it read the whole directory at once.
pub const PEOPLE_PAGE_MAX: usize = 1000;

/// A protocol plugin. Every method has the `&dyn Host` it may use for state and I/O.
///
/// Lifecycle of a browser login on a protected route:
/// 1. [`Plugin::validate_options`] when the config is loaded or the API writes the module;
/// 2. [`Plugin::start_login`] when an anonymous browser reaches the route: answer with a page
///    or a redirect to the identity provider;
/// 3. [`Plugin::handle`] for every request under the plugin's mount path
///    (`/_portcullis/<plugin name>/...` on the route's host): callbacks, forms, metadata; it
///    answers [`Outcome::LoggedIn`] when a login completes, and the gateway creates the session;
/// 4. [`Plugin::logout`] when a session ends through the logout path.
///
/// [`Plugin::describe_module`] adds a module's read-only outputs (URLs to register at the
/// identity provider, certificates) to what the API shows of it.
///
/// A [`Capability::Provisioning`] plugin (SCIM) names a [`PluginInfo::provisioning_path`]; the
/// console listener hands it every request under that path with [`Plugin::provision`], after
/// checking the caller the way the management API does. Protocol parsing lives in the plugin;
/// every rule about people stays in the gateway, behind the directory port of [`Host`].
pub trait Plugin: Send + Sync {
    /// Name, version and capabilities.
    fn info(&self) -> PluginInfo;

    /// Checks a module's plugin-specific options (a JSON object) and says what the module will
    /// need (the hosts its HTTP calls may reach). Errors name the option's key.
    fn validate_options(&self, options: &serde_json::Value) -> Result<ModulePlan, Vec<OptionError>>;

    /// Begins a login for an anonymous browser that asked for `return_to` (a same-origin path).
    fn start_login(
        &self,
        host: &dyn Host,
        module: &ModuleContext,
        return_to: &str,
        request: &HttpRequest,
    ) -> Result<HttpResponse, PluginError>;

    /// Handles a request under the plugin's mount path.
    fn handle(&self, host: &dyn Host, module: &ModuleContext, request: &HttpRequest) -> Result<Outcome, PluginError>;

    /// The module's read-only outputs, as a JSON object the API merges into the module it
    /// shows (e.g. the SAML entity id and the URLs to register at the IdP). May create state
    /// the outputs depend on (a key pair), so it has the host.
    fn describe_module(&self, host: &dyn Host, module: &ModuleContext) -> Result<serde_json::Value, PluginError> {
        let _ = (host, module);
        Ok(serde_json::Value::Object(serde_json::Map::new()))
    }

    /// Asks the identity provider whether the user of a session (whose identity asked for
    /// re-checks with `recheck_interval_secs`) still has access, and renews the access token
    /// the session forwards when it is about to expire. Called off the request path, about
    /// every `recheck_interval_secs`. An error keeps the session (an unreachable provider does
    /// not sign everybody out) and is logged.
    fn recheck(&self, host: &dyn Host, module: &ModuleContext, identity: &Identity) -> Result<Recheck, PluginError> {
        let _ = (host, module, identity);
        Ok(Recheck::allowed())
    }

    /// Ends a login at the identity provider, when the protocol can; `None` when there is
    /// nothing to do beyond the gateway's own logout.
    fn logout(
        &self,
        host: &dyn Host,
        module: &ModuleContext,
        identity: &Identity,
    ) -> Result<Option<HttpResponse>, PluginError> {
        let _ = (host, module, identity);
        Ok(None)
    }

    /// Answers a request under the plugin's [`PluginInfo::provisioning_path`] on the console
    /// listener. The gateway has checked the caller: [`Caller::ApiKey`] when the address is in
    /// `api.allow_cidrs` and the request carries a valid management API key (only then does
    /// the directory port of `host` answer), else [`Caller::Refused`], which the plugin renders
    /// in its protocol's error shape with the status given. The response is sent as it is.
    fn provision(&self, host: &dyn Host, request: &ProvisioningRequest) -> Result<HttpResponse, PluginError> {
        let _ = (host, request);
        Err(PluginError::Internal(format!(
            "the plugin `{}` does not provision",
            self.info().name
        )))
    }
}

/// Runs one [`Call`] against a plugin: the single entry point both the in-process and the
/// C-ABI paths go through.
pub fn dispatch(plugin: &dyn Plugin, host: &dyn Host, call: Call) -> Result<Outcome, PluginError> {
    match call {
        Call::Info => Ok(Outcome::Info(plugin.info())),
        Call::ValidateOptions { options_json } => {
            let options: serde_json::Value = serde_json::from_str(&options_json)
                .map_err(|e| PluginError::BadRequest(format!("options are not JSON: {e}")))?;
            Ok(match plugin.validate_options(&options) {
                Ok(plan) => Outcome::Valid(plan),
                Err(errors) => Outcome::Invalid(errors),
            })
        }
        Call::StartLogin {
            module,
            return_to,
            request,
        } => plugin
            .start_login(host, &module, &return_to, &request)
            .map(Outcome::Respond),
        Call::Handle { module, request } => plugin.handle(host, &module, &request),
        Call::Logout { module, identity } => plugin.logout(host, &module, &identity).map(Outcome::LoggedOut),
        Call::Recheck { module, identity } => plugin.recheck(host, &module, &identity).map(Outcome::Rechecked),
        Call::DescribeModule { module } => plugin.describe_module(host, &module).map(|outputs| Outcome::Described {
            outputs_json: outputs.to_string(),
        }),
        Call::Provision(request) => plugin.provision(host, &request).map(Outcome::Respond),
    }
}

/// What the gateway provides to a plugin.
pub trait Host {
    /// Reads a key of this plugin's namespace.
    fn kv_get(&self, key: &str) -> Option<Vec<u8>>;
    /// Writes a key, expiring after `ttl_secs` when given.
    fn kv_put(&self, key: &str, value: &[u8], ttl_secs: Option<u64>);
    /// Reads and deletes a key in one step (for one-time values: login state, replay caches).
    fn kv_take(&self, key: &str) -> Option<Vec<u8>>;
    /// Deletes a key.
    fn kv_delete(&self, key: &str);
    /// Stores `value` under `key` durably unless the key already holds a value, and returns the
    /// value the key holds afterwards (`None` when the store failed): of two concurrent
    /// callers, both get the first one's value (for state made once per module: a key pair).
    fn kv_get_or_insert(&self, key: &str, value: &[u8]) -> Option<Vec<u8>>;
    /// Adds one to a counter atomically and returns the new count; a new or expired counter
    /// starts at 1 and expires `ttl_secs` later (for rate limits and lockouts).
    fn kv_incr(&self, key: &str, ttl_secs: Option<u64>) -> u64;
    /// The person with this id. The directory calls answer [`DirectoryError::NotAllowed`]
    /// outside a [`Plugin::provision`] call whose caller is [`Caller::ApiKey`].
    fn person(&self, id: &str) -> Result<Option<Person>, DirectoryError>;
    /// The person with this email address (compared trimmed and in lower case).
    fn person_by_email(&self, email: &str) -> Result<Option<Person>, DirectoryError>;
    /// The person with this external id.
    fn person_by_external_id(&self, external_id: &str) -> Result<Option<Person>, DirectoryError>;
    /// Up to `limit` people after `after_id`, in ascending id order (stable paging). The
    /// gateway caps `limit` at [`PEOPLE_PAGE_MAX`] (1000), whatever a protocol's client asked
    /// for (a SCIM `count`): page on with the last id while [`PeoplePage::more`] says so.
    fn people(&self, after_id: Option<&str>, limit: usize) -> Result<PeoplePage, DirectoryError>;
    /// Creates a person; [`DirectoryError::EmailTaken`] when another has the address.
    fn create_person(&self, person: NewPerson) -> Result<Person, DirectoryError>;
    /// Changes a person; deactivation (`active: Some(false)`) ends every session of theirs
    /// before it returns.
    fn update_person(&self, id: &str, patch: PersonPatch) -> Result<Person, DirectoryError>;
    /// Ends the person's sessions, then deletes them; `None` when no person has this id.
    fn delete_person(&self, id: &str) -> Result<Option<Person>, DirectoryError>;
    /// Sends an HTTP request through the gateway's client: timeouts, no redirects followed,
    /// only the hosts the module's options allow.
    fn http(&self, request: OutboundRequest) -> Result<HttpResponse, String>;
    /// Seconds since the Unix epoch, from the gateway's clock.
    fn now_unix(&self) -> i64;
    /// `len` bytes from the gateway's CSPRNG.
    fn random(&self, len: usize) -> Vec<u8>;
    /// Writes a line to the gateway's log.
    fn log(&self, level: LogLevel, message: &str);
}

/// Answers a host call against a [`Host`]: used by the gateway's side of the C ABI.
pub fn serve_host_call(host: &dyn Host, call: HostCall) -> HostReply {
    match call {
        HostCall::KvGet { key } => HostReply::Bytes(host.kv_get(&key)),
        HostCall::KvPut { key, value, ttl_secs } => {
            host.kv_put(&key, &value, ttl_secs);
            HostReply::Done
        }
        HostCall::KvTake { key } => HostReply::Bytes(host.kv_take(&key)),
        HostCall::KvDelete { key } => {
            host.kv_delete(&key);
            HostReply::Done
        }
        HostCall::KvGetOrInsert { key, value } => HostReply::Bytes(host.kv_get_or_insert(&key, &value)),
        HostCall::KvIncr { key, ttl_secs } => HostReply::Count(host.kv_incr(&key, ttl_secs)),
        HostCall::Person { id } => HostReply::PersonFound(host.person(&id)),
        HostCall::PersonByEmail { email } => HostReply::PersonFound(host.person_by_email(&email)),
        HostCall::PersonByExternalId { external_id } => {
            HostReply::PersonFound(host.person_by_external_id(&external_id))
        }
        HostCall::People { after_id, limit } => HostReply::People(host.people(after_id.as_deref(), limit)),
        HostCall::CreatePerson(person) => HostReply::PersonWritten(host.create_person(person)),
        HostCall::UpdatePerson { id, patch } => HostReply::PersonWritten(host.update_person(&id, patch)),
        HostCall::DeletePerson { id } => HostReply::PersonFound(host.delete_person(&id)),
        HostCall::Http(request) => HostReply::Http(host.http(request)),
        HostCall::Now => HostReply::Now(host.now_unix()),
        HostCall::Random { len } => HostReply::Bytes(Some(host.random(len))),
        HostCall::Log { level, message } => {
            host.log(level, &message);
            HostReply::Done
        }
    }
}
