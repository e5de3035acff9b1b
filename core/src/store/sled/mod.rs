//! The sled implementation of the storage traits: one embedded database in the data dir, a tree
//! per collection, secondary indexes kept in the same transactions as their records. The only
//! place `sled` is named (and, through `codec.rs`, bincode).
//!
//! Every write method flushes before it returns, except `save_activity_batched` (sled flushes
//! it within 500 ms, and at shutdown). A write publishes its change as soon as it commits,
//! before its flush: a caller dropped while it waits on the flush (a client that hung up) must
//! not leave derived state behind what the store reads answer. Cross-record rules: config objects carry one generation
//! key that every config write reads, checks unchanged and bumps inside its transaction, so a
//! rule checked over a scan of every backend and edge (host:ports, backends in use) holds when
//! the write commits, or the write reads again; members carry a generation of their own the same
//! way (the last active admin is checked over a scan of them); users, links, members, sign-in
//! links, API keys and sessions keep their indexes in the transaction that writes the record. A schema-version key guards the format:
//! a data dir written by a newer schema is refused rather than misread.

mod codec;
mod config_objects;
mod members;
mod migrate;
mod people;
mod plugin_kv;
mod sessions;

pub use codec::CodecError;

use super::{ApiKeys, Change, ChangeEvent, ChangeFeed, Conflict, Leases, Metadata, Page, StoreError};
use crate::model::{ApiKey, ConsoleSession, Edge, Member, Session, StaticBackend, User};
use async_trait::async_trait;
use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::marker::PhantomData;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

/// The schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 4;
const SCHEMA_KEY: &[u8] = b"schema_version";
/// How many changes a slow subscriber may fall behind before it lags.
const FEED_CAPACITY: usize = 1024;

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> StoreError {
        StoreError::Unavailable(e.to_string())
    }
}

impl From<CodecError> for StoreError {
    fn from(e: CodecError) -> StoreError {
        StoreError::Corrupt(e.to_string())
    }
}

/// Why a transaction gave up.
#[derive(Debug)]
enum Abort {
    /// Another writer came between the read and the write: read again.
    Retry,
    Conflict(Conflict),
    Corrupt(String),
}

fn abort<T>(why: Abort) -> Result<T, ConflictableTransactionError<Abort>> {
    Err(ConflictableTransactionError::Abort(why))
}

/// A `StoreError` for a transaction that failed; `None` when it should be tried again.
fn transaction_error(e: TransactionError<Abort>) -> Option<StoreError> {
    match e {
        TransactionError::Abort(Abort::Retry) => None,
        TransactionError::Abort(Abort::Conflict(c)) => Some(StoreError::Conflict(c)),
        TransactionError::Abort(Abort::Corrupt(m)) => Some(StoreError::Corrupt(m)),
        TransactionError::Storage(e) => Some(e.into()),
    }
}

/// A transaction's result where `Retry` cannot happen.
fn committed<T>(result: Result<T, TransactionError<Abort>>) -> Result<T, StoreError> {
    result.map_err(|e| transaction_error(e).unwrap_or(StoreError::Conflict(Conflict::Changed)))
}

/// Decodes inside a transaction.
fn decode_in<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConflictableTransactionError<Abort>> {
    codec::decode(bytes).map_err(|e| ConflictableTransactionError::Abort(Abort::Corrupt(e.to_string())))
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

    /// Up to `limit` records with ids below `before_id`, highest id first, and whether more remain.
    fn page(&self, before_id: Option<&str>, limit: usize) -> Result<Page<T>, StoreError> {
        let iter = match before_id {
            Some(before) => self.tree.range(..before.as_bytes()),
            None => self.tree.iter(),
        };
        let mut items = Vec::with_capacity(limit.min(100));
        for item in iter.rev() {
            let (_, bytes) = item?;
            if items.len() == limit {
                return Ok(Page { items, has_more: true });
            }
            items.push(codec::decode(&bytes)?);
        }
        Ok(Page { items, has_more: false })
    }

    fn all(&self) -> Result<Vec<T>, StoreError> {
        self.tree.iter().map(|item| Ok(codec::decode(&item?.1)?)).collect()
    }
}

/// The change feed of this process.
struct Feed {
    sender: broadcast::Sender<ChangeEvent>,
    /// The last revision handed out; held while sending, so revisions go out in order.
    next: std::sync::Mutex<u64>,
    published: AtomicU64,
}

impl Feed {
    fn new() -> Feed {
        Feed {
            sender: broadcast::channel(FEED_CAPACITY).0,
            next: std::sync::Mutex::new(0),
            published: AtomicU64::new(0),
        }
    }

    fn publish(&self, change: Change) {
        let mut last = self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *last += 1;
        // No subscriber is no error: nothing derives from the change yet.
        let _ = self.sender.send(ChangeEvent {
            revision: *last,
            change,
        });
        self.published.store(*last, Ordering::Release);
    }
}

/// The gateway's sled database.
pub struct SledStore {
    db: sled::Db,
    api_keys: Collection<ApiKey>,
    /// token hash -> api key id
    api_key_hashes: sled::Tree,
    backends: Collection<StaticBackend>,
    edges: Collection<Edge>,
    users: Collection<User>,
    /// normalised email -> user id
    user_emails: sled::Tree,
    /// `idp \0 subject` -> IdentityLink
    identity_links: sled::Tree,
    /// `user_id \0 idp \0 subject` -> IdentityLink
    user_links: sled::Tree,
    sessions: Collection<Session>,
    /// token hash -> session id
    session_hashes: sled::Tree,
    /// `namespace \0 key` -> KvEntry
    plugin_kv: sled::Tree,
    members: Collection<Member>,
    /// normalised email -> member id
    member_emails: sled::Tree,
    /// token hash -> SignInLink
    sign_in_links: sled::Tree,
    /// member id -> the token hash of its one live link
    member_sign_in_links: sled::Tree,
    console_sessions: Collection<ConsoleSession>,
    /// token hash -> console session id
    console_session_hashes: sled::Tree,
    feed: Feed,
    flusher: Flusher,
}

/// Group commit: one thread flushes for every writer that asked since its last flush, so
/// concurrent writers share an fsync and no runtime thread blocks on one. (sled's own
/// `flush_async` runs each flush on sled's small I/O pool, where concurrent flushes can take
/// every thread and wait on a log write queued behind them.)
struct Flusher {
    shared: Arc<FlushState>,
    done: watch::Receiver<Flushed>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The last flush: the highest ticket it covered and its error, if it failed.
#[derive(Clone, Default)]
struct Flushed {
    ticket: u64,
    error: Option<Arc<str>>,
}

#[derive(Default)]
struct FlushState {
    /// The last ticket handed to a writer, and whether the store is closing.
    requested: std::sync::Mutex<(u64, bool)>,
    wake: std::sync::Condvar,
}

impl Flusher {
    fn start(db: sled::Db) -> Result<Flusher, StoreError> {
        let shared = Arc::new(FlushState::default());
        let (report, done) = watch::channel(Flushed::default());
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || {
                let mut flushed = 0;
                loop {
                    let target = {
                        let mut requested = state
                            .requested
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        while requested.0 == flushed && !requested.1 {
                            requested = state
                                .wake
                                .wait(requested)
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                        }
                        if requested.0 == flushed {
                            return;
                        }
                        requested.0
                    };
                    let error = db.flush().err().map(|e| Arc::from(e.to_string()));
                    flushed = target;
                    report.send_replace(Flushed { ticket: target, error });
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store's flusher: {e}")))?;
        Ok(Flusher {
            shared,
            done,
            thread: Some(thread),
        })
    }

    /// Waits until everything written before the call is on disk.
    async fn flush(&self) -> Result<(), StoreError> {
        let ticket = {
            let mut requested = self
                .shared
                .requested
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            requested.0 += 1;
            requested.0
        };
        self.shared.wake.notify_one();
        let mut done = self.done.clone();
        let flushed = done
            .wait_for(|f| f.ticket >= ticket)
            .await
            .map_err(|_| StoreError::Unavailable("the store's flusher stopped".into()))?
            .clone();
        match flushed.error {
            // A later flush that failed fails every writer it covered.
            Some(e) => Err(StoreError::Unavailable(e.to_string())),
            None => Ok(()),
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared
            .requested
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1 = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // The thread holds a handle of the database: the data dir is released once it ends.
            let _ = thread.join();
        }
    }
}

impl SledStore {
    /// Opens (or creates) the database in `dir`, migrating an older schema.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
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
                        supported: SCHEMA_VERSION,
                    });
                }
                if found < SCHEMA_VERSION {
                    migrate::run(&db, found)?;
                }
            }
        }
        Ok(SledStore {
            api_keys: Collection::open(&db, "api_keys")?,
            api_key_hashes: db.open_tree("api_key_hashes")?,
            backends: Collection::open(&db, "static_backends")?,
            edges: Collection::open(&db, "https_edges")?,
            users: Collection::open(&db, "users")?,
            user_emails: db.open_tree("user_emails")?,
            identity_links: db.open_tree("identity_links")?,
            user_links: db.open_tree("user_links")?,
            sessions: Collection::open(&db, "sessions")?,
            session_hashes: db.open_tree("session_hashes")?,
            plugin_kv: db.open_tree("plugin_kv")?,
            members: Collection::open(&db, "members")?,
            member_emails: db.open_tree("member_emails")?,
            sign_in_links: db.open_tree("sign_in_links")?,
            member_sign_in_links: db.open_tree("member_sign_in_links")?,
            console_sessions: Collection::open(&db, "console_sessions")?,
            console_session_hashes: db.open_tree("console_session_hashes")?,
            feed: Feed::new(),
            flusher: Flusher::start(db.clone())?,
            db,
        })
    }

    /// Writes everything written so far to disk.
    async fn flush(&self) -> Result<(), StoreError> {
        self.flusher.flush().await
    }

    /// The default tree: schema version, metadata, the config and members generations, leases.
    fn meta(&self) -> &sled::Tree {
        &self.db
    }
}

/// `a \0 b`: a key of two parts (neither holds a NUL where it is used).
fn pair_key(a: &str, b: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len() + b.len() + 1);
    out.extend_from_slice(a.as_bytes());
    out.push(0);
    out.extend_from_slice(b.as_bytes());
    out
}

impl ChangeFeed for SledStore {
    fn subscribe(&self) -> broadcast::Receiver<ChangeEvent> {
        self.feed.sender.subscribe()
    }

    fn revision(&self) -> u64 {
        self.feed.published.load(Ordering::Acquire)
    }
}

#[async_trait]
impl ApiKeys for SledStore {
    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        self.api_keys.find(id)
    }

    async fn api_key_by_token_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKey>, StoreError> {
        match self.api_key_hashes.get(hash)? {
            Some(id) => self.api_keys.find(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    async fn api_keys_page(&self, before_id: Option<&str>, limit: usize) -> Result<Page<ApiKey>, StoreError> {
        self.api_keys.page(before_id, limit)
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let encoded = codec::encode(key)?;
        committed(
            (&self.api_keys.tree, &self.api_key_hashes).transaction(|(keys, hashes)| {
                if hashes.get(key.token_hash)?.is_some() {
                    return abort(Abort::Conflict(Conflict::TokenHashTaken));
                }
                keys.insert(key.id.as_bytes(), encoded.as_slice())?;
                hashes.insert(&key.token_hash, key.id.as_bytes())?;
                Ok(())
            }),
        )?;
        self.feed.publish(Change::ApiKeys);
        self.flush().await?;
        Ok(())
    }

    async fn update_api_key(&self, expected: &ApiKey, new: &ApiKey) -> Result<(), StoreError> {
        if expected.id != new.id || expected.token_hash != new.token_hash {
            return Err(StoreError::Conflict(Conflict::Changed));
        }
        let swapped = self.api_keys.tree.compare_and_swap(
            new.id.as_bytes(),
            Some(codec::encode(expected)?),
            Some(codec::encode(new)?),
        )?;
        if let Err(e) = swapped {
            return Err(StoreError::Conflict(if e.current.is_none() {
                Conflict::Missing
            } else {
                Conflict::Changed
            }));
        }
        self.feed.publish(Change::ApiKeys);
        self.flush().await?;
        Ok(())
    }

    async fn delete_api_key(&self, id: &str) -> Result<bool, StoreError> {
        let removed = committed(
            (&self.api_keys.tree, &self.api_key_hashes).transaction(|(keys, hashes)| {
                let Some(bytes) = keys.remove(id.as_bytes())? else {
                    return Ok(false);
                };
                let key: ApiKey = decode_in(&bytes)?;
                hashes.remove(&key.token_hash)?;
                Ok(true)
            }),
        )?;
        if removed {
            self.feed.publish(Change::ApiKeys);
            self.flush().await?;
        }
        Ok(removed)
    }
}

#[async_trait]
impl Metadata for SledStore {
    async fn metadata(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta().get(format!("meta:{key}"))?.map(|v| v.to_vec()))
    }

    async fn metadata_get_or_insert(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let held = match self
            .meta()
            .compare_and_swap(format!("meta:{key}"), None as Option<&[u8]>, Some(value))?
        {
            Ok(()) => value.to_vec(),
            Err(e) => e.current.map(|v| v.to_vec()).unwrap_or_else(|| value.to_vec()),
        };
        self.flush().await?;
        Ok(held)
    }
}

/// A lease as stored: who holds it until when.
#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseRecord {
    holder: String,
    expires_at: i64,
}

#[async_trait]
impl Leases for SledStore {
    async fn try_lease(&self, name: &str, holder: &str, ttl_secs: i64, now: i64) -> Result<bool, StoreError> {
        let key = format!("lease:{name}");
        let new = codec::encode(&LeaseRecord {
            holder: holder.to_string(),
            expires_at: now.saturating_add(ttl_secs),
        })?;
        loop {
            let current = self.meta().get(&key)?;
            if let Some(bytes) = &current {
                let lease: LeaseRecord = codec::decode(bytes)?;
                if lease.holder != holder && lease.expires_at > now {
                    return Ok(false);
                }
            }
            if self.meta().compare_and_swap(&key, current, Some(new.clone()))?.is_ok() {
                self.flush().await?;
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ConfigObjects, Storage};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_conformance_suite_passes_on_sled() {
        let dirs = std::sync::Mutex::new(Vec::new());
        let fresh = || -> crate::store::conformance::Opener {
            let dir = tempdir();
            dirs.lock().unwrap().push(dir.clone());
            Box::new(move || Ok(Box::new(open_when_released(&dir)?) as Box<dyn Storage>))
        };
        crate::store::conformance::run_all(&fresh).await;
        for dir in dirs.into_inner().unwrap() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
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

    #[tokio::test]
    async fn a_fresh_data_dir_is_written_at_the_current_schema() {
        let dir = tempdir();
        {
            let store = SledStore::open(&dir).unwrap();
            assert!(store.all_edges().await.unwrap().is_empty());
            let schema = store.db.get(SCHEMA_KEY).unwrap().unwrap();
            assert_eq!(schema.as_ref(), SCHEMA_VERSION.to_be_bytes());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Opens a store a just-dropped database may still lock for a moment (sled releases the
    /// lock from its flusher thread).
    pub(super) fn open_when_released(dir: &Path) -> Result<SledStore, StoreError> {
        for _ in 0..100 {
            match SledStore::open(dir) {
                Err(StoreError::Locked { .. }) => std::thread::sleep(std::time::Duration::from_millis(50)),
                other => return other,
            }
        }
        SledStore::open(dir)
    }

    pub(super) fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(crate::ids::new_id(
            "storetest",
            crate::clock::Clock::now(&crate::clock::SystemClock),
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
