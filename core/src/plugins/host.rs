//! What the gateway gives a plugin ([`portcullis_plugin_sdk::Host`]): a key-value namespace
//! per module with TTLs, the user directory, an HTTP client that follows no redirects and
//! reaches only the module's allowed hosts, the gateway's clock, randomness and the log.

use crate::state::Shared;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use portcullis_plugin_sdk::{Host, HttpResponse, LogLevel, OutboundRequest, User, UserUpdate};
use rand::RngCore;
use std::time::Duration;

/// Largest response body a plugin's HTTP call reads.
const MAX_EGRESS_BODY: usize = 2 * 1024 * 1024;
/// Time limit of a plugin's HTTP call.
const EGRESS_TIMEOUT: Duration = Duration::from_secs(10);

/// The host of one plugin call on one module.
pub struct PluginHost<'a> {
    pub shared: &'a Shared,
    /// Plugin name and module id: keys of different modules never meet.
    pub namespace: String,
    pub plugin: &'a str,
    pub egress_hosts: &'a [String],
    pub runtime: tokio::runtime::Handle,
}

impl PluginHost<'_> {
    fn warn_store(&self, op: &str, e: impl std::fmt::Display) {
        tracing::error!(plugin = self.plugin, "plugin {op} failed: {e}");
    }
}

fn to_sdk_user(user: crate::model::User) -> User {
    User {
        id: user.id,
        email: user.email,
        name: user.name,
        active: user.active,
    }
}

impl Host for PluginHost<'_> {
    fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        let now = self.shared.clock.now();
        let read = self
            .runtime
            .block_on(self.shared.store.kv_get(&self.namespace, key, now));
        read.unwrap_or_else(|e| {
            self.warn_store("kv_get", e);
            None
        })
    }

    fn kv_put(&self, key: &str, value: &[u8], ttl_secs: Option<u64>) {
        let expires_at = ttl_secs.map(|ttl| {
            self.shared
                .clock
                .now()
                .saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX))
        });
        let written = self
            .runtime
            .block_on(self.shared.store.kv_put(&self.namespace, key, value, expires_at));
        if let Err(e) = written {
            self.warn_store("kv_put", e);
        }
    }

    fn kv_take(&self, key: &str) -> Option<Vec<u8>> {
        let now = self.shared.clock.now();
        self.runtime
            .block_on(self.shared.store.kv_take(&self.namespace, key, now))
            .unwrap_or_else(|e| {
                self.warn_store("kv_take", e);
                None
            })
    }

    fn kv_delete(&self, key: &str) {
        if let Err(e) = self.runtime.block_on(self.shared.store.kv_delete(&self.namespace, key)) {
            self.warn_store("kv_delete", e);
        }
    }

    fn kv_get_or_insert(&self, key: &str, value: &[u8]) -> Option<Vec<u8>> {
        let now = self.shared.clock.now();
        self.runtime
            .block_on(self.shared.store.kv_get_or_insert(&self.namespace, key, value, now))
            .map_err(|e| self.warn_store("kv_get_or_insert", e))
            .ok()
    }

    fn kv_incr(&self, key: &str, ttl_secs: Option<u64>) -> u64 {
        let now = self.shared.clock.now();
        let expires_at = ttl_secs.map(|ttl| now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)));
        self.runtime
            .block_on(self.shared.store.kv_incr(&self.namespace, key, now, expires_at))
            .unwrap_or_else(|e| {
                self.warn_store("kv_incr", e);
                u64::MAX
            })
    }

    fn find_user(&self, email: &str) -> Option<User> {
        match self.runtime.block_on(self.shared.accounts.person_by_email(email)) {
            Ok(user) => user.map(to_sdk_user),
            Err(e) => {
                self.warn_store("find_user", e);
                None
            }
        }
    }

    fn upsert_user(&self, update: UserUpdate) -> Result<User, String> {
        let accounts = &self.shared.accounts;
        let upserted = self.runtime.block_on(async {
            match accounts.person_by_email(&update.email).await? {
                Some(user) => {
                    let patch = crate::accounts::PersonPatch {
                        name: update.name,
                        active: update.active,
                        ..Default::default()
                    };
                    accounts.update_person(&user.id, patch).await
                }
                None => {
                    let new = crate::accounts::NewPerson {
                        email: update.email,
                        name: update.name.unwrap_or_default(),
                        active: update.active.unwrap_or(true),
                        external_id: None,
                    };
                    accounts.create_person(new).await
                }
            }
        });
        upserted.map(to_sdk_user).map_err(|e| e.to_string())
    }

    fn http(&self, request: OutboundRequest) -> Result<HttpResponse, String> {
        let uri: http::Uri = request
            .url
            .parse()
            .map_err(|e| format!("bad URL {}: {e}", request.url))?;
        let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
            443
        } else {
            80
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("URL {} has no host", request.url))?;
        let hostport = format!(
            "{}:{}",
            authority.host().to_ascii_lowercase(),
            authority.port_u16().unwrap_or(default_port)
        );
        if !self
            .egress_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(&hostport))
        {
            return Err(format!("{hostport} is not among the hosts this module may reach"));
        }
        let mut builder = http::Request::builder().method(request.method.as_str()).uri(uri);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let outbound = builder
            .body(Full::new(Bytes::from(request.body)))
            .map_err(|e| e.to_string())?;
        let client = self.shared.egress_client.clone();
        // Plugin calls run on blocking threads, where waiting on the runtime is allowed.
        self.runtime.block_on(async move {
            let response = tokio::time::timeout(EGRESS_TIMEOUT, client.request(outbound))
                .await
                .map_err(|_| format!("no answer within {EGRESS_TIMEOUT:?}"))?
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = Limited::new(response.into_body(), MAX_EGRESS_BODY)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes()
                .to_vec();
            Ok(HttpResponse { status, headers, body })
        })
    }

    fn now_unix(&self) -> i64 {
        self.shared.clock.now()
    }

    fn random(&self, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        rand::rng().fill_bytes(&mut bytes);
        bytes
    }

    fn log(&self, level: LogLevel, message: &str) {
        log_line(self.plugin, level, message);
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

/// The host of calls made before the gateway runs (a plugin's info at load): no state.
pub struct Detached;

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
    fn find_user(&self, _: &str) -> Option<User> {
        None
    }
    fn upsert_user(&self, _: UserUpdate) -> Result<User, String> {
        Err("no user directory before the gateway runs".into())
    }
    fn http(&self, _: OutboundRequest) -> Result<HttpResponse, String> {
        Err("no HTTP before the gateway runs".into())
    }
    fn now_unix(&self) -> i64 {
        crate::model::now_unix()
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
