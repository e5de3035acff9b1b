//! What the gateway gives a plugin ([`portcullis_plugin_sdk::Host`]), over narrow ports: a
//! key-value namespace per module with TTLs, the directory of people (only in a provisioning
//! call by an authenticated caller: `accounts` behind it), an HTTP client that follows no
//! redirects and reaches only the module's allowed hosts, the gateway's clock, randomness and
//! the log. A `PluginHost` holds only these; it is made by [`super::Ports`].

use crate::accounts::{Accounts, AccountsError};
use crate::clock::Clock;
use crate::egress::ModuleEgress;
use crate::model::User;
use crate::store::PluginKv;
use portcullis_plugin_sdk::{
    DirectoryError, Host, HttpResponse, LogLevel, NewPerson, OutboundRequest, PeoplePage, Person, PersonPatch,
    PEOPLE_PAGE_MAX,
};
use rand::RngCore;
use std::sync::Arc;

/// The host of one plugin call.
pub struct PluginHost {
    /// The plugin's name, for the log.
    pub(super) plugin: String,
    pub(super) kv: Arc<dyn PluginKv + Send + Sync>,
    /// Plugin name and module id (or `provisioning`): keys of different modules never meet.
    pub(super) namespace: String,
    /// The directory port: only a provisioning call by an authenticated caller has it.
    pub(super) directory: Option<Arc<Accounts>>,
    pub(super) egress: ModuleEgress,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) runtime: tokio::runtime::Handle,
}

impl PluginHost {
    fn warn_store(&self, op: &str, e: crate::store::StoreError) {
        tracing::error!(plugin = %self.plugin, "plugin {op} failed: {e}");
    }

    /// Runs a directory operation on `accounts`, when this call may reach the directory.
    fn directory<T, F>(&self, op: impl FnOnce(Arc<Accounts>) -> F) -> Result<T, DirectoryError>
    where
        F: std::future::Future<Output = Result<T, AccountsError>>,
    {
        let accounts = self.directory.clone().ok_or(DirectoryError::NotAllowed)?;
        // Plugin calls run on blocking threads, where waiting on the runtime is allowed.
        self.runtime.block_on(op(accounts)).map_err(|e| match e {
            AccountsError::EmailTaken { email } => DirectoryError::EmailTaken { email },
            AccountsError::NotFound { id } => DirectoryError::NotFound { id },
            AccountsError::Invalid { field, message } => DirectoryError::Invalid {
                field: field.to_string(),
                message,
            },
            AccountsError::Disabled => DirectoryError::Invalid {
                field: "active".into(),
                message: "the account is disabled".into(),
            },
            AccountsError::Store(e) => {
                self.warn_store("directory call", e);
                DirectoryError::Unavailable("the gateway's store failed".into())
            }
        })
    }
}

fn person_of(user: User) -> Person {
    Person {
        id: user.id,
        email: user.email,
        name: user.name,
        active: user.active,
        external_id: user.external_id,
        created_at: user.created_at,
        updated_at: user.updated_at,
        last_login: user.last_login,
    }
}

impl Host for PluginHost {
    fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        let now = self.clock.now();
        self.runtime
            .block_on(self.kv.kv_get(&self.namespace, key, now))
            .unwrap_or_else(|e| {
                self.warn_store("kv_get", e);
                None
            })
    }

    fn kv_put(&self, key: &str, value: &[u8], ttl_secs: Option<u64>) {
        let expires_at = ttl_secs.map(|ttl| self.clock.now().saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)));
        if let Err(e) = self
            .runtime
            .block_on(self.kv.kv_put(&self.namespace, key, value, expires_at))
        {
            self.warn_store("kv_put", e);
        }
    }

    fn kv_take(&self, key: &str) -> Option<Vec<u8>> {
        let now = self.clock.now();
        self.runtime
            .block_on(self.kv.kv_take(&self.namespace, key, now))
            .unwrap_or_else(|e| {
                self.warn_store("kv_take", e);
                None
            })
    }

    fn kv_delete(&self, key: &str) {
        if let Err(e) = self.runtime.block_on(self.kv.kv_delete(&self.namespace, key)) {
            self.warn_store("kv_delete", e);
        }
    }

    fn kv_get_or_insert(&self, key: &str, value: &[u8]) -> Option<Vec<u8>> {
        self.runtime
            .block_on(self.kv.kv_get_or_insert(&self.namespace, key, value, self.clock.now()))
            .map_err(|e| self.warn_store("kv_get_or_insert", e))
            .ok()
    }

    fn kv_incr(&self, key: &str, ttl_secs: Option<u64>) -> u64 {
        let now = self.clock.now();
        let expires_at = ttl_secs.map(|ttl| now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)));
        self.runtime
            .block_on(self.kv.kv_incr(&self.namespace, key, now, expires_at))
            .unwrap_or_else(|e| {
                self.warn_store("kv_incr", e);
                u64::MAX
            })
    }

    fn person(&self, id: &str) -> Result<Option<Person>, DirectoryError> {
        self.directory(|accounts| async move { accounts.person(id).await })
            .map(|user| user.map(person_of))
    }

    fn person_by_email(&self, email: &str) -> Result<Option<Person>, DirectoryError> {
        self.directory(|accounts| async move { accounts.person_by_email(email).await })
            .map(|user| user.map(person_of))
    }

    fn person_by_external_id(&self, external_id: &str) -> Result<Option<Person>, DirectoryError> {
        self.directory(|accounts| async move { accounts.person_by_external_id(external_id).await })
            .map(|user| user.map(person_of))
    }

    fn people(&self, after_id: Option<&str>, limit: usize) -> Result<PeoplePage, DirectoryError> {
        // A protocol client's page size (a SCIM `count`) reaches here as it was asked for.
        let limit = limit.min(PEOPLE_PAGE_MAX);
        self.directory(|accounts| async move { accounts.people(after_id, limit).await })
            .map(|(users, more)| PeoplePage {
                people: users.into_iter().map(person_of).collect(),
                more,
            })
    }

    fn create_person(&self, person: NewPerson) -> Result<Person, DirectoryError> {
        let new = crate::accounts::NewPerson {
            email: person.email,
            name: person.name,
            active: person.active,
            external_id: person.external_id,
        };
        self.directory(|accounts| async move { accounts.create_person(new).await })
            .map(person_of)
    }

    fn update_person(&self, id: &str, patch: PersonPatch) -> Result<Person, DirectoryError> {
        let patch = crate::accounts::PersonPatch {
            email: patch.email,
            name: patch.name,
            active: patch.active,
            external_id: patch.external_id,
        };
        self.directory(|accounts| async move { accounts.update_person(id, patch).await })
            .map(person_of)
    }

    fn delete_person(&self, id: &str) -> Result<Option<Person>, DirectoryError> {
        self.directory(|accounts| async move { accounts.delete_person(id).await })
            .map(|user| user.map(person_of))
    }

    fn http(&self, request: OutboundRequest) -> Result<HttpResponse, String> {
        // The SDK's `Host::http` answers its errors as text.
        self.egress.send(&self.runtime, request).map_err(|e| e.to_string())
    }

    fn now_unix(&self) -> i64 {
        self.clock.now()
    }

    fn random(&self, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        rand::rng().fill_bytes(&mut bytes);
        bytes
    }

    fn log(&self, level: LogLevel, message: &str) {
        log_line(&self.plugin, level, message);
    }
}

fn log_line(plugin: &str, level: LogLevel, message: &str) {
    let message = without_control_characters(message);
    match level {
        LogLevel::Debug => tracing::debug!(plugin, "{message}"),
        LogLevel::Info => tracing::info!(plugin, "{message}"),
        LogLevel::Warn => tracing::warn!(plugin, "{message}"),
        LogLevel::Error => tracing::error!(plugin, "{message}"),
    }
}

/// `message` with control characters (line breaks among them) written as escapes: a plugin's
/// log line often quotes what a client sent, which must not be able to start a forged line.
fn without_control_characters(message: &str) -> std::borrow::Cow<'_, str> {
    if !message.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(message);
    }
    std::borrow::Cow::Owned(
        message
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// The host of calls made outside any route (a plugin's info at load, option validation): no
/// state but the clock ([`super::Registry::detached_host`]).
pub struct Detached {
    pub clock: Arc<dyn Clock>,
}

impl Host for Detached {
    fn kv_get(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
    fn kv_put(&self, _: &str, _: &[u8], _: Option<u64>) {}
    fn kv_take(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
    fn kv_delete(&self, _: &str) {}
    fn kv_get_or_insert(&self, _: &str, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn kv_incr(&self, _: &str, _: Option<u64>) -> u64 {
        u64::MAX
    }
    fn person(&self, _: &str) -> Result<Option<Person>, DirectoryError> {
        Err(DirectoryError::NotAllowed)
    }
    fn person_by_email(&self, _: &str) -> Result<Option<Person>, DirectoryError> {
        Err(DirectoryError::NotAllowed)
    }
    fn person_by_external_id(&self, _: &str) -> Result<Option<Person>, DirectoryError> {
        Err(DirectoryError::NotAllowed)
    }
    fn people(&self, _: Option<&str>, _: usize) -> Result<PeoplePage, DirectoryError> {
        Err(DirectoryError::NotAllowed)
    }
    fn create_person(&self, _: NewPerson) -> Result<Person, DirectoryError> {
        Err(DirectoryError::NotAllowed)
    }
    fn update_person(&self, _: &str, _: PersonPatch) -> Result<Person, DirectoryError> {
        Err(DirectoryError::NotAllowed)
    }
    fn delete_person(&self, _: &str) -> Result<Option<Person>, DirectoryError> {
        Err(DirectoryError::NotAllowed)
    }
    fn http(&self, _: OutboundRequest) -> Result<HttpResponse, String> {
        Err("no HTTP before the gateway runs".into())
    }
    fn now_unix(&self) -> i64 {
        self.clock.now()
    }
    fn random(&self, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        rand::rng().fill_bytes(&mut bytes);
        bytes
    }
    fn log(&self, level: LogLevel, message: &str) {
        log_line("(loading)", level, message);
    }
}

#[cfg(test)]
mod tests {
    use super::without_control_characters;

    #[test]
    fn a_plugin_log_line_cannot_start_another() {
        assert_eq!(without_control_characters("status: x"), "status: x");
        assert_eq!(
            without_control_characters("x\n2026-12-03T00:00:00Z  INFO forged\r\u{1b}[31m"),
            "x\\n2026-12-03T00:00:00Z  INFO forged\\r\\u{1b}[31m"
        );
    }
}
