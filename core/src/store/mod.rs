//! Durable state in an embedded sled database: typed collections behind a narrow interface.
//!
//! The store knows nothing about HTTP or the config file. Every `create_`/`update_`/`delete_`
//! method flushes to disk before it returns, so a caller that acknowledges a write after it
//! has returned never loses it in a crash. A schema-version key guards the format: a data dir
//! written by a newer schema is refused rather than misread.

mod codec;
mod migrate;

pub use codec::CodecError;

use crate::model::{ApiKey, AppUser, Edge, Session, StaticBackend};
use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

/// The schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 3;
const SCHEMA_KEY: &[u8] = b"schema_version";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database in {dir}: {reason}")]
    Open { dir: PathBuf, reason: String },
    #[error("cannot open the database in {dir}: another process holds the database lock (is `portcullis serve` already running on this data dir?)")]
    Locked { dir: PathBuf },
    #[error("the data dir {dir} was written by schema version {found}; this build of Portcullis reads up to version {SCHEMA_VERSION}: upgrade Portcullis or restore a backup")]
    NewerSchema { dir: PathBuf, found: u32 },
    #[error("database error: {0}")]
    Db(#[from] sled::Error),
    #[error("stored record is unreadable: {0}")]
    Codec(#[from] CodecError),
    #[error("{0}")]
    Conflict(String),
}

/// A collection of records of one type, keyed by their id.
struct Collection<T> {
    tree: sled::Tree,
    _record: PhantomData<T>,
}

impl<T: Serialize + DeserializeOwned> Collection<T> {
    fn open(db: &sled::Db, name: &str) -> Result<Self, StoreError> {
        Ok(Collection {
            tree: db.open_tree(name)?,
            _record: PhantomData,
        })
    }

    fn find(&self, id: &str) -> Result<Option<T>, StoreError> {
        match self.tree.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn put(&self, id: &str, record: &T) -> Result<(), StoreError> {
        self.tree.insert(id.as_bytes(), codec::encode(record)?)?;
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.tree.remove(id.as_bytes())?.is_some())
    }

    /// Up to `limit` records with ids below `before_id`, highest id first, and whether more remain.
    fn page(&self, before_id: Option<&str>, limit: usize) -> Result<(Vec<T>, bool), StoreError> {
        let iter = match before_id {
            Some(before) => self.tree.range(..before.as_bytes()),
            None => self.tree.iter(),
        };
        let mut out = Vec::with_capacity(limit.min(100));
        for item in iter.rev() {
            let (_, bytes) = item?;
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(codec::decode(&bytes)?);
        }
        Ok((out, false))
    }

    fn all(&self) -> Result<Vec<T>, StoreError> {
        self.tree.iter().map(|item| Ok(codec::decode(&item?.1)?)).collect()
    }
}

/// The gateway's database.
pub struct Store {
    db: sled::Db,
    api_keys: Collection<ApiKey>,
    /// token hash -> api key id
    api_key_hashes: sled::Tree,
    backends: Collection<StaticBackend>,
    edges: Collection<Edge>,
    app_users: Collection<AppUser>,
    /// `provider \0 subject` -> app user id
    app_user_keys: sled::Tree,
    sessions: Collection<Session>,
    /// namespace \0 key -> KvEntry
    plugin_kv: sled::Tree,
    /// Serialises read-modify-write sequences (edge routes, config apply).
    write_lock: tokio::sync::Mutex<()>,
}

/// A page of records, newest first.
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let db = sled::Config::new().path(dir.join("db")).open().map_err(|e| {
            let reason = e.to_string();
            if reason.contains("could not acquire lock") {
                StoreError::Locked { dir: dir.to_path_buf() }
            } else {
                StoreError::Open {
                    dir: dir.to_path_buf(),
                    reason,
                }
            }
        })?;
        match db.get(SCHEMA_KEY)? {
            None => {
                db.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
            Some(raw) => {
                let found = <[u8; 4]>::try_from(raw.as_ref())
                    .map(u32::from_be_bytes)
                    .unwrap_or(u32::MAX);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        dir: dir.to_path_buf(),
                        found,
                    });
                }
                if found < SCHEMA_VERSION {
                    migrate::run(&db, found)?;
                    db.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                    db.flush()?;
                }
            }
        }
        Ok(Store {
            api_keys: Collection::open(&db, "api_keys")?,
            api_key_hashes: db.open_tree("api_key_hashes")?,
            backends: Collection::open(&db, "static_backends")?,
            edges: Collection::open(&db, "https_edges")?,
            app_users: Collection::open(&db, "app_users")?,
            app_user_keys: db.open_tree("app_user_keys")?,
            sessions: Collection::open(&db, "sessions")?,
            plugin_kv: db.open_tree("plugin_kv")?,
            write_lock: tokio::sync::Mutex::new(()),
            db,
        })
    }

    /// Holds off other read-modify-write sequences while the guard lives.
    pub async fn lock_writes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.write_lock.lock().await
    }

    /// Writes everything written so far to disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Reads a value of the database's own metadata.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(format!("meta:{key}"))?.map(|v| v.to_vec()))
    }

    /// Writes a value of the database's own metadata, durably.
    pub async fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.db.insert(format!("meta:{key}"), value)?;
        self.flush().await
    }

    // ----- API keys -----

    pub async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let encoded = codec::encode(key)?;
        (&self.api_keys.tree, &self.api_key_hashes)
            .transaction(|(keys, hashes)| {
                if hashes.get(key.token_hash)?.is_some() {
                    return Err(ConflictableTransactionError::Abort("token hash collision".to_string()));
                }
                keys.insert(key.id.as_bytes(), encoded.as_slice())?;
                hashes.insert(&key.token_hash, key.id.as_bytes())?;
                Ok(())
            })
            .map_err(transaction_error)?;
        self.flush().await
    }

    pub fn find_api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        self.api_keys.find(id)
    }

    pub fn find_api_key_by_token_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKey>, StoreError> {
        match self.api_key_hashes.get(hash)? {
            Some(id) => self.api_keys.find(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    pub fn list_api_keys(&self, before_id: Option<&str>, limit: usize) -> Result<Page<ApiKey>, StoreError> {
        page(self.api_keys.page(before_id, limit)?)
    }

    pub async fn update_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        self.api_keys.put(&key.id, key)?;
        self.flush().await
    }

    pub async fn delete_api_key(&self, id: &str) -> Result<bool, StoreError> {
        let Some(key) = self.api_keys.find(id)? else {
            return Ok(false);
        };
        (&self.api_keys.tree, &self.api_key_hashes)
            .transaction(|(keys, hashes)| {
                keys.remove(id.as_bytes())?;
                hashes.remove(&key.token_hash)?;
                Ok::<_, ConflictableTransactionError<String>>(())
            })
            .map_err(transaction_error)?;
        self.flush().await?;
        Ok(true)
    }

    // ----- static backends -----

    pub fn find_backend(&self, id: &str) -> Result<Option<StaticBackend>, StoreError> {
        self.backends.find(id)
    }

    pub fn list_backends(&self, before_id: Option<&str>, limit: usize) -> Result<Page<StaticBackend>, StoreError> {
        page(self.backends.page(before_id, limit)?)
    }

    pub fn all_backends(&self) -> Result<Vec<StaticBackend>, StoreError> {
        self.backends.all()
    }

    /// Creates or replaces a backend.
    pub async fn put_backend(&self, backend: &StaticBackend) -> Result<(), StoreError> {
        self.backends.put(&backend.id, backend)?;
        self.flush().await
    }

    pub async fn delete_backend(&self, id: &str) -> Result<bool, StoreError> {
        let removed = self.backends.remove(id)?;
        self.flush().await?;
        Ok(removed)
    }

    // ----- HTTPS edges (with their routes) -----

    pub fn find_edge(&self, id: &str) -> Result<Option<Edge>, StoreError> {
        self.edges.find(id)
    }

    pub fn list_edges(&self, before_id: Option<&str>, limit: usize) -> Result<Page<Edge>, StoreError> {
        page(self.edges.page(before_id, limit)?)
    }

    pub fn all_edges(&self) -> Result<Vec<Edge>, StoreError> {
        self.edges.all()
    }

    /// Creates or replaces an edge and its routes.
    pub async fn put_edge(&self, edge: &Edge) -> Result<(), StoreError> {
        self.edges.put(&edge.id, edge)?;
        self.flush().await
    }

    pub async fn delete_edge(&self, id: &str) -> Result<bool, StoreError> {
        let removed = self.edges.remove(id)?;
        self.flush().await?;
        Ok(removed)
    }

    /// Replaces the config-declared backends and edges in one atomic batch: `backends` and
    /// `edges` are written, and the ids in `stale_*` are removed.
    pub async fn replace_config_objects(
        &self,
        backends: &[StaticBackend],
        edges: &[Edge],
        stale_backends: &[String],
        stale_edges: &[String],
    ) -> Result<(), StoreError> {
        let encoded_backends = backends
            .iter()
            .map(|b| Ok((b.id.clone(), codec::encode(b)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let encoded_edges = edges
            .iter()
            .map(|e| Ok((e.id.clone(), codec::encode(e)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        (&self.backends.tree, &self.edges.tree)
            .transaction(|(btree, etree)| {
                for id in stale_backends {
                    btree.remove(id.as_bytes())?;
                }
                for id in stale_edges {
                    etree.remove(id.as_bytes())?;
                }
                for (id, bytes) in &encoded_backends {
                    btree.insert(id.as_bytes(), bytes.as_slice())?;
                }
                for (id, bytes) in &encoded_edges {
                    etree.insert(id.as_bytes(), bytes.as_slice())?;
                }
                Ok::<_, ConflictableTransactionError<String>>(())
            })
            .map_err(transaction_error)?;
        self.flush().await
    }
}

/// A value of a plugin's key-value namespace.
#[derive(serde::Serialize, serde::Deserialize)]
struct KvEntry {
    expires_at: Option<i64>,
    value: Vec<u8>,
}

fn kv_key(namespace: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(namespace.len() + key.len() + 1);
    out.extend_from_slice(namespace.as_bytes());
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out
}

impl Store {
    // ----- plugin key-value namespaces (not flushed per write: login state, replay caches) -----

    fn kv_live(&self, raw: Option<sled::IVec>, now: i64) -> Result<Option<Vec<u8>>, StoreError> {
        match raw {
            Some(bytes) => {
                let entry: KvEntry = codec::decode(&bytes)?;
                Ok(entry.expires_at.is_none_or(|at| at > now).then_some(entry.value))
            }
            None => Ok(None),
        }
    }

    pub fn kv_get(&self, namespace: &str, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv_live(self.plugin_kv.get(kv_key(namespace, key))?, now)
    }

    pub fn kv_put(&self, namespace: &str, key: &str, value: &[u8], expires_at: Option<i64>) -> Result<(), StoreError> {
        let entry = KvEntry {
            expires_at,
            value: value.to_vec(),
        };
        self.plugin_kv.insert(kv_key(namespace, key), codec::encode(&entry)?)?;
        Ok(())
    }

    /// Reads and removes a key atomically: of two concurrent takers, one gets the value.
    pub fn kv_take(&self, namespace: &str, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv_live(self.plugin_kv.remove(kv_key(namespace, key))?, now)
    }

    pub fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        self.plugin_kv.remove(kv_key(namespace, key))?;
        Ok(())
    }

    /// Stores a value without expiry unless the key holds a live one, flushed before it
    /// returns; answers the value the key holds afterwards.
    pub fn kv_get_or_insert(&self, namespace: &str, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let key = kv_key(namespace, key);
        let new = codec::encode(&KvEntry {
            expires_at: None,
            value: value.to_vec(),
        })?;
        loop {
            let current = self.plugin_kv.get(&key)?;
            if let Some(bytes) = &current {
                let entry: KvEntry = codec::decode(bytes)?;
                if entry.expires_at.is_none_or(|at| at > crate::model::now_unix()) {
                    return Ok(entry.value);
                }
            }
            if self
                .plugin_kv
                .compare_and_swap(&key, current, Some(new.clone()))?
                .is_ok()
            {
                self.db.flush()?;
                return Ok(value.to_vec());
            }
        }
    }

    /// Adds one to a counter key atomically; a missing or expired counter starts at 1 and
    /// expires at `expires_at`.
    pub fn kv_incr(&self, namespace: &str, key: &str, now: i64, expires_at: Option<i64>) -> Result<u64, StoreError> {
        let mut count = 0u64;
        let mut failure = None;
        self.plugin_kv.update_and_fetch(kv_key(namespace, key), |old| {
            let live = old
                .and_then(|bytes| codec::decode::<KvEntry>(bytes).ok())
                .filter(|e| e.expires_at.is_none_or(|at| at > now));
            let (previous, keep_expiry) = match live {
                Some(entry) => (
                    entry.value.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0),
                    entry.expires_at,
                ),
                None => (0, expires_at),
            };
            count = previous.saturating_add(1);
            match codec::encode(&KvEntry {
                expires_at: keep_expiry,
                value: count.to_be_bytes().to_vec(),
            }) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    failure = Some(e);
                    old.map(|o| o.to_vec())
                }
            }
        })?;
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(count),
        }
    }

    /// Removes expired keys; returns how many.
    pub fn kv_purge_expired(&self, now: i64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.plugin_kv.iter() {
            let (key, bytes) = item?;
            let entry: KvEntry = codec::decode(&bytes)?;
            if entry.expires_at.is_some_and(|at| at <= now) {
                self.plugin_kv.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    // ----- application users -----

    pub fn find_app_user(&self, id: &str) -> Result<Option<AppUser>, StoreError> {
        self.app_users.find(id)
    }

    pub fn find_app_user_by_subject(&self, provider: &str, subject: &str) -> Result<Option<AppUser>, StoreError> {
        match self.app_user_keys.get(kv_key(provider, subject))? {
            Some(id) => self.app_users.find(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    pub fn find_app_user_by_email(&self, email: &str) -> Result<Option<AppUser>, StoreError> {
        Ok(self
            .app_users
            .all()?
            .into_iter()
            .find(|u| u.email.eq_ignore_ascii_case(email)))
    }

    pub fn list_app_users(&self, before_id: Option<&str>, limit: usize) -> Result<Page<AppUser>, StoreError> {
        page(self.app_users.page(before_id, limit)?)
    }

    /// Creates or updates a user (not flushed: written at login).
    pub fn put_app_user(&self, user: &AppUser) -> Result<(), StoreError> {
        self.app_users.put(&user.id, user)?;
        self.app_user_keys
            .insert(kv_key(&user.provider, &user.subject), user.id.as_bytes())?;
        Ok(())
    }

    pub async fn delete_app_user(&self, id: &str) -> Result<Option<AppUser>, StoreError> {
        let Some(user) = self.app_users.find(id)? else {
            return Ok(None);
        };
        self.app_users.remove(id)?;
        self.app_user_keys.remove(kv_key(&user.provider, &user.subject))?;
        self.flush().await?;
        Ok(Some(user))
    }

    // ----- sessions -----

    pub fn find_session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        self.sessions.find(id)
    }

    pub fn list_sessions(&self, before_id: Option<&str>, limit: usize) -> Result<Page<Session>, StoreError> {
        page(self.sessions.page(before_id, limit)?)
    }

    pub fn all_sessions(&self) -> Result<Vec<Session>, StoreError> {
        self.sessions.all()
    }

    /// Creates or updates a session (not flushed: written at login and in batches).
    pub fn put_session(&self, session: &Session) -> Result<(), StoreError> {
        self.sessions.put(&session.id, session)
    }

    /// Deletes sessions; flushes when `durable`.
    pub async fn delete_sessions(&self, ids: &[String], durable: bool) -> Result<(), StoreError> {
        for id in ids {
            self.sessions.remove(id)?;
        }
        if durable {
            self.flush().await?;
        }
        Ok(())
    }
}

fn page<T>((items, has_more): (Vec<T>, bool)) -> Result<Page<T>, StoreError> {
    Ok(Page { items, has_more })
}

fn transaction_error(e: TransactionError<String>) -> StoreError {
    match e {
        TransactionError::Abort(reason) => StoreError::Conflict(reason),
        TransactionError::Storage(e) => StoreError::Db(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Source;

    fn backend(id: &str) -> StaticBackend {
        StaticBackend {
            id: id.into(),
            description: String::new(),
            metadata: String::new(),
            created_at: 0,
            address: "127.0.0.1:1".into(),
            tls: false,
            source: Source::Api,
        }
    }

    #[tokio::test]
    async fn pages_walk_newest_first_and_survive_reopen() {
        let dir = tempdir();
        {
            let store = Store::open(&dir).unwrap();
            for id in ["a", "b", "c"] {
                store.put_backend(&backend(id)).await.unwrap();
            }
            let first = store.list_backends(None, 2).unwrap();
            assert_eq!(
                first.items.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
                ["c", "b"]
            );
            assert!(first.has_more);
            let second = store.list_backends(Some("b"), 2).unwrap();
            assert_eq!(second.items.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), ["a"]);
            assert!(!second.has_more);
        }
        let store = open_when_released(&dir).unwrap();
        assert!(store.find_backend("c").unwrap().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempdir();
        {
            let db = sled::open(dir.join("db")).unwrap();
            db.insert(SCHEMA_KEY, &(SCHEMA_VERSION + 1).to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let err = open_when_released(&dir).err().unwrap().to_string();
        assert!(err.contains(&format!("schema version {}", SCHEMA_VERSION + 1)), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Opens a store a just-dropped database may still lock for a moment (sled releases the
    /// lock from its flusher thread).
    fn open_when_released(dir: &Path) -> Result<Store, StoreError> {
        for _ in 0..60 {
            match Store::open(dir) {
                Err(StoreError::Locked { .. }) => std::thread::sleep(std::time::Duration::from_millis(50)),
                other => return other,
            }
        }
        Store::open(dir)
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(crate::ids::new_id("storetest"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
