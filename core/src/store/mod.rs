//! Durable state behind traits, one per concern: config objects (static backends, edges with
//! their routes), API keys, the people directory, members (with their sign-in links and console
//! sessions), sessions, plugin key-value namespaces, the database's own metadata, the change feed
//! and leases. [`Storage`] is all of them; core holds an `Arc<dyn Storage>` and never names a
//! backend. Today's backend is sled (`store/sled/`, the only place sled and the on-disk codec are
//! named); every backend passes `store/conformance.rs`.
//!
//! The store knows nothing of HTTP, the config file or plugins. Every write method is durable
//! when it returns, except [`SessionStore::save_activity_batched`]. Rules that span records (a
//! host:port served by one edge, a backend kept while a route uses it, an edge changed only from
//! what its writer read, an API key's token hash unique, a user's or a member's email unique, an
//! active admin kept among members) are enforced inside the store operation and answered as a
//! typed [`Conflict`]. Every write that changes something another part derives from publishes a
//! [`Change`] on the feed once it has committed, whether or not its caller waits for it to return.

pub mod sled;

#[cfg(test)]
pub mod conformance;

use crate::model::{ApiKey, ConsoleSession, Edge, IdentityLink, Member, Session, SignInLink, StaticBackend, User};
use async_trait::async_trait;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database in {dir}: {reason}")]
    Open { dir: PathBuf, reason: String },
    #[error("cannot open the database in {dir}: another process holds the database lock (is `portcullis serve` already running on this data dir?)")]
    Locked { dir: PathBuf },
    #[error("the data dir {dir} was written by schema version {found}; this build of Portcullis reads up to version {supported}: upgrade Portcullis or restore a backup")]
    NewerSchema { dir: PathBuf, found: u32, supported: u32 },
    #[error("database error: {0}")]
    Unavailable(String),
    #[error("stored record is unreadable: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Conflict(#[from] Conflict),
}

/// A write refused because of another record: what the caller maps to its own refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// Another edge serves this (normalised) host:port.
    #[error("hostport `{hostport}` is already served by edge `{edge_id}`")]
    HostportTaken { hostport: String, edge_id: String },
    /// Routes still forward to the backend.
    #[error("static backend `{backend_id}` is used by route(s) {}", route_ids.join(", "))]
    BackendInUse { backend_id: String, route_ids: Vec<String> },
    /// A route names a backend that does not exist.
    #[error("no static backend `{backend_id}`")]
    BackendMissing { backend_id: String },
    /// The record is no longer what the writer read (another write came between): read again.
    #[error("the record changed while it was being written")]
    Changed,
    /// The record to change does not exist (any more).
    #[error("the record does not exist")]
    Missing,
    /// An API key with the same token hash exists.
    #[error("token hash collision")]
    TokenHashTaken,
    /// Another user has this normalised email.
    #[error("email `{email}` belongs to user `{user_id}`")]
    EmailTaken { email: String, user_id: String },
    /// The identity is linked to another user.
    #[error("identity `{idp}`/`{subject}` is linked to user `{user_id}`")]
    LinkTaken {
        idp: String,
        subject: String,
        user_id: String,
    },
    /// The write would leave no active admin member (it disables, demotes or deletes the last).
    #[error("`{member_id}` is the last active admin")]
    LastActiveAdmin { member_id: String },
}

impl StoreError {
    /// Whether the write found the record changed since it was read.
    pub fn is_changed(&self) -> bool {
        matches!(self, StoreError::Conflict(Conflict::Changed))
    }
}

/// A page of records, highest id (newest) first.
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

/// What changed, for the parts that derive state from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Static backends or edges (with their routes) changed: the route table is stale.
    ConfigObjects,
    /// API keys changed.
    ApiKeys,
    /// A user or its identity links changed (or the user was deleted).
    People { user_id: String },
    /// Sessions ended (deleted): the session index drops them.
    SessionsEnded { token_hashes: Vec<[u8; 32]> },
}

/// A change with its place in the feed: revisions increase by one per published change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    pub revision: u64,
    pub change: Change,
}

/// The config-declared backends and edges of one config file, replacing the previous set.
pub struct ConfigObjectSet<'a> {
    pub backends: &'a [StaticBackend],
    pub edges: &'a [Edge],
}

/// Static backends and HTTPS edges with their routes.
#[async_trait]
pub trait ConfigObjects {
    async fn backend(&self, id: &str) -> Result<Option<StaticBackend>, StoreError>;
    async fn backends_page(&self, before_id: Option<&str>, limit: usize) -> Result<Page<StaticBackend>, StoreError>;
    async fn all_backends(&self) -> Result<Vec<StaticBackend>, StoreError>;
    /// Stores a new backend.
    async fn create_backend(&self, backend: &StaticBackend) -> Result<(), StoreError>;
    /// Replaces the backend `expected` with `new` (same id) if it is still stored as `expected`:
    /// `Conflict::Changed` if it changed meanwhile, `Conflict::Missing` if it is gone.
    async fn update_backend(&self, expected: &StaticBackend, new: &StaticBackend) -> Result<(), StoreError>;
    /// Deletes a backend no route uses (`Conflict::BackendInUse` otherwise); answers whether it existed.
    async fn delete_backend(&self, id: &str) -> Result<bool, StoreError>;

    async fn edge(&self, id: &str) -> Result<Option<Edge>, StoreError>;
    async fn edges_page(&self, before_id: Option<&str>, limit: usize) -> Result<Page<Edge>, StoreError>;
    async fn all_edges(&self) -> Result<Vec<Edge>, StoreError>;
    /// Stores a new edge: `Conflict::HostportTaken` if another edge serves one of its host:ports,
    /// `Conflict::BackendMissing` if one of its routes names a backend that does not exist.
    async fn create_edge(&self, edge: &Edge) -> Result<(), StoreError>;
    /// Replaces the edge `expected` with `new` (same id) if it is still stored as `expected`
    /// (`Conflict::Changed` / `Conflict::Missing` otherwise), with `create_edge`'s checks: a
    /// route edit is one atomic read-modify-write of its edge.
    async fn update_edge(&self, expected: &Edge, new: &Edge) -> Result<(), StoreError>;
    /// Deletes an edge and its routes; answers whether it existed.
    async fn delete_edge(&self, id: &str) -> Result<bool, StoreError>;
    /// Makes the config-declared records (those whose source is a config file) exactly `set`,
    /// in one atomic write: `Conflict::HostportTaken` if an edge created through the API serves
    /// one of the set's host:ports (route backends are not checked: the config loader checks
    /// its own references).
    async fn replace_config_objects(&self, set: ConfigObjectSet<'_>) -> Result<(), StoreError>;
    /// Every backend and edge, read at one instant (what the route table is built from).
    async fn config_snapshot(&self) -> Result<(Vec<StaticBackend>, Vec<Edge>), StoreError>;
}

/// The management API's keys, found by id or by the SHA-256 of their token.
#[async_trait]
pub trait ApiKeys {
    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError>;
    async fn api_key_by_token_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKey>, StoreError>;
    async fn api_keys_page(&self, before_id: Option<&str>, limit: usize) -> Result<Page<ApiKey>, StoreError>;
    /// Stores a new key: `Conflict::TokenHashTaken` if a key has the same token hash.
    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError>;
    /// Replaces `expected` with `new` (same id and token hash) if still stored as `expected`.
    async fn update_api_key(&self, expected: &ApiKey, new: &ApiKey) -> Result<(), StoreError>;
    async fn delete_api_key(&self, id: &str) -> Result<bool, StoreError>;
}

/// People: users, their identity links `{idp, subject, user_id}` and the index of their
/// normalised emails (unique). Only `accounts` writes here.
#[async_trait]
pub trait Directory {
    async fn user(&self, id: &str) -> Result<Option<User>, StoreError>;
    /// The user whose normalised email is `normalized_email`.
    async fn user_by_email(&self, normalized_email: &str) -> Result<Option<User>, StoreError>;
    async fn user_by_external_id(&self, external_id: &str) -> Result<Option<User>, StoreError>;
    /// Up to `limit` users with ids above `after_id`, ascending, and whether more remain.
    async fn users_after(&self, after_id: Option<&str>, limit: usize) -> Result<(Vec<User>, bool), StoreError>;
    /// Up to `limit` users with ids below `before_id`, highest first (the API's paging).
    async fn users_page(&self, before_id: Option<&str>, limit: usize) -> Result<Page<User>, StoreError>;
    /// The user linked to `(idp, subject)`.
    async fn user_by_link(&self, idp: &str, subject: &str) -> Result<Option<User>, StoreError>;
    async fn links_of(&self, user_id: &str) -> Result<Vec<IdentityLink>, StoreError>;
    /// Creates or replaces a user, keeping the email index: `Conflict::EmailTaken` if another
    /// user has its normalised email. When `expected` is given the user must still be stored as
    /// `expected` (`Conflict::Changed` otherwise); when it is `None` the id must be new.
    async fn put_user(&self, expected: Option<&User>, user: &User) -> Result<(), StoreError>;
    /// Creates or replaces a user together with a new link to it, atomically (a sign-in's
    /// first use of an identity): `Conflict::LinkTaken` if the identity is linked already.
    async fn put_user_with_link(
        &self,
        expected: Option<&User>,
        user: &User,
        link: &IdentityLink,
    ) -> Result<(), StoreError>;
    /// Deletes a user, its links and its email index entry; answers the deleted user.
    async fn delete_user(&self, id: &str) -> Result<Option<User>, StoreError>;
}

/// Sessions of protected routes, found by id or by the SHA-256 of their token.
#[async_trait]
pub trait SessionStore {
    async fn session(&self, id: &str) -> Result<Option<Session>, StoreError>;
    async fn session_by_token_hash(&self, hash: &[u8; 32]) -> Result<Option<Session>, StoreError>;
    async fn sessions_page(&self, before_id: Option<&str>, limit: usize) -> Result<Page<Session>, StoreError>;
    async fn all_sessions(&self) -> Result<Vec<Session>, StoreError>;
    /// Creates or replaces a session.
    async fn put_session(&self, session: &Session) -> Result<(), StoreError>;
    /// Replaces a stored session; answers `false`, writing nothing, when it is no longer stored
    /// (it ended meanwhile).
    async fn replace_session(&self, session: &Session) -> Result<bool, StoreError>;
    /// Records the last-active times of stored sessions (sessions no longer
    /// stored stay ended). NOT durable when it returns: a crash may lose the last batch, which
    /// costs sessions a little activity, never a login or a logout.
    async fn save_activity_batched(&self, sessions: &[Session]) -> Result<(), StoreError>;
    /// Makes every batched activity write durable.
    async fn flush_activity(&self) -> Result<(), StoreError>;
    /// Deletes sessions and publishes `Change::SessionsEnded` with their token hashes; answers
    /// the sessions that were stored.
    async fn delete_sessions(&self, ids: &[String]) -> Result<Vec<Session>, StoreError>;
}

/// Members (the people who run the gateway), their one-time sign-in links and their console
/// sessions. Only `accounts` writes here. Rules held inside each write: a member's normalised
/// email is unique (`Conflict::EmailTaken`, whose `user_id` is the member holding it), and no
/// write leaves the members without an active admin once they had one
/// (`Conflict::LastActiveAdmin`), so two admins disabling each other at once cannot both win.
#[async_trait]
pub trait Members {
    async fn member(&self, id: &str) -> Result<Option<Member>, StoreError>;
    /// The member whose normalised email is `normalized_email`.
    async fn member_by_email(&self, normalized_email: &str) -> Result<Option<Member>, StoreError>;
    /// Up to `limit` members with ids below `before_id`, newest first.
    async fn members_page(&self, before_id: Option<&str>, limit: usize) -> Result<Page<Member>, StoreError>;
    async fn all_members(&self) -> Result<Vec<Member>, StoreError>;
    /// Stores a new member: `Conflict::EmailTaken` if a member has its normalised email,
    /// `Conflict::Changed` if the id is taken.
    async fn create_member(&self, member: &Member) -> Result<(), StoreError>;
    /// Replaces `expected` with `new` (same id) if it is still stored as `expected`
    /// (`Conflict::Changed` / `Conflict::Missing` otherwise): `Conflict::EmailTaken` as for
    /// create, `Conflict::LastActiveAdmin` if `expected` is the last active admin and `new` is not
    /// an active admin.
    async fn update_member(&self, expected: &Member, new: &Member) -> Result<(), StoreError>;
    /// Deletes a member with its console sessions and sign-in link, answering the member:
    /// `Conflict::LastActiveAdmin` if it is the last active admin.
    async fn delete_member(&self, id: &str) -> Result<Option<Member>, StoreError>;

    /// Stores a sign-in link, replacing the member's previous one (one live link per member).
    async fn create_sign_in_link(&self, link: &SignInLink) -> Result<(), StoreError>;
    /// The link with this token hash if it is live at `now` (not consuming: a form shows it).
    async fn sign_in_link(&self, token_hash: &[u8; 32], now: i64) -> Result<Option<SignInLink>, StoreError>;
    /// Reads and removes the link atomically: of concurrent takers one gets it; an expired link
    /// is removed and not answered.
    async fn take_sign_in_link(&self, token_hash: &[u8; 32], now: i64) -> Result<Option<SignInLink>, StoreError>;
    /// Removes the links expired at `now`; answers how many.
    async fn purge_expired_sign_in_links(&self, now: i64) -> Result<usize, StoreError>;

    async fn console_session(&self, id: &str) -> Result<Option<ConsoleSession>, StoreError>;
    async fn console_session_by_token_hash(&self, hash: &[u8; 32]) -> Result<Option<ConsoleSession>, StoreError>;
    /// The console sessions of a member, newest first.
    async fn console_sessions_of(&self, member_id: &str) -> Result<Vec<ConsoleSession>, StoreError>;
    /// Up to `limit` console sessions with ids below `before_id`, newest first.
    async fn console_sessions_page(
        &self,
        before_id: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConsoleSession>, StoreError>;
    /// Creates or replaces a console session.
    async fn put_console_session(&self, session: &ConsoleSession) -> Result<(), StoreError>;
    /// Records a stored session's last activity; answers `false`, writing nothing, when it is no
    /// longer stored (it ended meanwhile).
    async fn touch_console_session(&self, id: &str, last_active: i64) -> Result<bool, StoreError>;
    /// Deletes console sessions; answers those that were stored.
    async fn delete_console_sessions(&self, ids: &[String]) -> Result<Vec<ConsoleSession>, StoreError>;
    /// Deletes every console session of a member; answers how many there were.
    async fn delete_console_sessions_of(&self, member_id: &str) -> Result<usize, StoreError>;
    /// Deletes the console sessions expired at `now` (past their maximum duration or idle for
    /// their inactivity timeout); answers how many.
    async fn purge_expired_console_sessions(&self, now: i64) -> Result<usize, StoreError>;
}

/// Plugins' key-value namespaces, with expiry.
#[async_trait]
pub trait PluginKv {
    async fn kv_get(&self, namespace: &str, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError>;
    async fn kv_put(&self, namespace: &str, key: &str, value: &[u8], expires_at: Option<i64>)
        -> Result<(), StoreError>;
    /// Reads and removes a key atomically: of concurrent takers, one gets the value.
    async fn kv_take(&self, namespace: &str, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError>;
    async fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), StoreError>;
    /// Stores `value` without expiry unless the key holds a live value at `now`; answers the
    /// value the key holds afterwards.
    async fn kv_get_or_insert(&self, namespace: &str, key: &str, value: &[u8], now: i64)
        -> Result<Vec<u8>, StoreError>;
    /// Adds one to a counter atomically; a missing or expired counter starts at 1 and expires
    /// at `expires_at`.
    async fn kv_incr(&self, namespace: &str, key: &str, now: i64, expires_at: Option<i64>) -> Result<u64, StoreError>;
    /// Removes the keys expired at `now`; answers how many.
    async fn kv_purge_expired(&self, now: i64) -> Result<usize, StoreError>;
}

/// The database's own small values (the assertion signing key).
#[async_trait]
pub trait Metadata {
    async fn metadata(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores `value` under `key` unless it holds one; answers the value it holds afterwards
    /// (so two writers agree on one).
    async fn metadata_get_or_insert(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError>;
}

/// The feed of changes: in-process with sled; with a shared database it carries every
/// replica's writes.
pub trait ChangeFeed {
    /// Every change published after this call. A receiver that lags (`RecvError::Lagged`)
    /// missed changes and must resynchronise from the store.
    fn subscribe(&self) -> broadcast::Receiver<ChangeEvent>;
    /// The revision of the last published change (0 before any).
    fn revision(&self) -> u64;
}

/// Named leases, so that one replica at a time runs a job (the upkeep).
#[async_trait]
pub trait Leases {
    /// Takes or renews the lease `name` for `holder` until `now + ttl_secs`: `true` if the
    /// lease was free, expired at `now` or already `holder`'s.
    async fn try_lease(&self, name: &str, holder: &str, ttl_secs: i64, now: i64) -> Result<bool, StoreError>;
}

/// Everything the gateway stores.
pub trait Storage:
    ConfigObjects + ApiKeys + Directory + Members + SessionStore + PluginKv + Metadata + ChangeFeed + Leases + Send + Sync
{
}

impl<T> Storage for T where
    T: ConfigObjects
        + ApiKeys
        + Directory
        + Members
        + SessionStore
        + PluginKv
        + Metadata
        + ChangeFeed
        + Leases
        + Send
        + Sync
{
}

/// Opens (or creates) the gateway's database in `dir` (today sled's).
pub fn open(dir: &Path) -> Result<Arc<dyn Storage>, StoreError> {
    Ok(Arc::new(self::sled::SledStore::open(dir)?))
}

/// An email as the directory indexes it: trimmed, ASCII letters lower-cased. Only ASCII: Unicode
/// lower-casing folds look-alikes into plain letters (the Kelvin sign U+212A becomes `k`), which
/// would let `\u{212A}im@x` find `kim@x`'s person; an address that differs beyond ASCII case is
/// another key (at worst one person is two users, never two people one).
pub fn normalize_email(email: &str) -> String {
    email.trim().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    #[test]
    fn emails_normalise_by_ascii_case_only() {
        assert_eq!(super::normalize_email("  Kim@Example.COM\t"), "kim@example.com");
        // The Kelvin sign is not `k`: no look-alike finds another person's record.
        assert_ne!(super::normalize_email("\u{212A}im@example.com"), "kim@example.com");
    }
}
