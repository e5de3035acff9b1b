//! Server-side sessions of protected routes: the hot path.
//!
//! Sessions live in the store and, for the per-request check, in a sharded in-memory index keyed
//! by the SHA-256 of the cookie token (the token itself is never stored): derived state. A check
//! takes no global lock and writes nothing to disk: it bumps an atomic last-active time, and a
//! background task persists those in batches (the store's one non-durable write).
//!
//! The index follows the change feed (`derived.rs`): a session leaves it only because the feed
//! said it ended (`Change::SessionsEnded`, applied by [`Sessions::apply_ended`]). Sessions end
//! only through `accounts`, which deletes them in the store and waits for the follower, so
//! revocation takes effect on the very next request. A token the index does not know is looked
//! up in the store once ([`Sessions::check_or_load`]): a live session found there (written by
//! another replica) becomes live here. Two records keep that lookup honest: a bounded negative
//! cache of hashes the store did not have (a client repeating a made-up token costs one read),
//! and the tombstones of hashes the feed said ended, so a lookup that read the session just
//! before its ending never brings it back.

use crate::model::Session;
use crate::store::{Storage, StoreError};
use arc_swap::ArcSwapOption;
use base64::Engine;
use dashmap::DashMap;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// How many ended hashes the index remembers (oldest forgotten first).
const TOMBSTONES: usize = 16_384;
/// How many hashes the store did not have the index remembers (then it starts afresh).
const KNOWN_MISSING: usize = 16_384;

/// A signed identity assertion, cached per session.
pub struct Assertion {
    pub expires_at: i64,
    pub header: http::HeaderValue,
}

/// A live session.
pub struct SessionEntry {
    pub session: Session,
    last_active: AtomicI64,
    /// When the identity provider last confirmed the user's access (see `Session::recheck_interval`).
    pub checked_at: AtomicI64,
    dirty: AtomicBool,
    /// The last assertion signed for this session.
    pub assertion: ArcSwapOption<Assertion>,
    /// User id, email, name and groups as header values, made once: `None` where a value
    /// cannot be sent as a header.
    pub identity_values: [Option<http::HeaderValue>; 4],
    /// The access token the module forwards, as a header value.
    pub access_token: Option<http::HeaderValue>,
}

impl SessionEntry {
    fn new(session: Session) -> SessionEntry {
        let value = |text: &str| http::HeaderValue::from_bytes(text.as_bytes()).ok();
        SessionEntry {
            last_active: AtomicI64::new(session.last_active),
            checked_at: AtomicI64::new(session.checked_at),
            dirty: AtomicBool::new(false),
            assertion: ArcSwapOption::empty(),
            identity_values: [
                value(&session.user_id),
                value(&session.email),
                value(&session.name),
                value(&session.groups.join(",")),
            ],
            access_token: session.access_token.as_deref().and_then(value),
            session,
        }
    }

    /// When the session last served a request.
    pub fn last_active(&self) -> i64 {
        self.last_active.load(Ordering::Relaxed)
    }

    /// Whether the session has ended by time at `now`.
    pub fn is_expired(&self, now: i64) -> bool {
        now >= self.session.expires_at || now - self.last_active() >= self.session.inactivity_timeout
    }
}

/// A live session for `route_id` at `now` is marked active and answered.
fn mark_active(entry: Arc<SessionEntry>, route_id: &str, now: i64) -> Option<Arc<SessionEntry>> {
    if entry.session.route_id != route_id || entry.is_expired(now) {
        return None;
    }
    if entry.last_active.swap(now, Ordering::Relaxed) != now {
        entry.dirty.store(true, Ordering::Relaxed);
    }
    Some(entry)
}

/// A new session token (43 base64url characters, 256 random bits) and its hash.
pub fn new_token() -> (String, [u8; 32]) {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let hash = hash_token(&token);
    (token, hash)
}

/// The SHA-256 of a session token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The in-memory index of live sessions.
pub struct Sessions {
    by_hash: DashMap<[u8; 32], Arc<SessionEntry>>,
    /// Hashes the feed said ended, with the revision that said so (see [`Sessions::apply_ended`]).
    ended: DashMap<[u8; 32], u64>,
    /// The same tombstones in the order they came, so the oldest is forgotten first (the
    /// follower alone touches it).
    ended_order: Mutex<VecDeque<([u8; 32], u64)>>,
    /// Endings up to this revision may have no tombstone (forgotten, or missed by a lagging
    /// feed): a store lookup that started before it cannot tell and does not make a session live.
    forgotten_up_to: AtomicU64,
    /// The feed revision the follower has applied to the index.
    applied: AtomicU64,
    /// Hashes the store did not have (the negative cache).
    missing: DashMap<[u8; 32], ()>,
    tombstone_capacity: usize,
}

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions::with_tombstone_capacity(TOMBSTONES)
    }
}

impl Sessions {
    fn with_tombstone_capacity(tombstone_capacity: usize) -> Sessions {
        Sessions {
            by_hash: DashMap::new(),
            ended: DashMap::new(),
            ended_order: Mutex::new(VecDeque::new()),
            forgotten_up_to: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            missing: DashMap::new(),
            tombstone_capacity,
        }
    }

    /// Loads the sessions that have not ended by `now` into an empty index, which then reflects
    /// the feed up to `revision` (read before the sessions were).
    pub async fn load(&self, store: &dyn Storage, now: i64, revision: u64) -> Result<(), StoreError> {
        for session in store.all_sessions().await? {
            let entry = SessionEntry::new(session);
            if !entry.is_expired(now) {
                self.by_hash.insert(entry.session.token_hash, Arc::new(entry));
            }
        }
        self.set_applied(revision);
        Ok(())
    }

    /// The live session of `token` for `route_id`, marked active at `now`, from the index only.
    pub fn check(&self, token: &str, route_id: &str, now: i64) -> Option<Arc<SessionEntry>> {
        let hash = hash_token(token);
        let entry = self.by_hash.get(&hash)?.value().clone();
        mark_active(entry, route_id, now)
    }

    /// The live session of the token hashed `hash` for `route_id`, marked active at `now`: from
    /// the index, or else from one store lookup (none for a hash known missing or ended), which
    /// makes a live session found there live in the index. Writes nothing to the store.
    pub async fn check_or_load(
        &self,
        store: &dyn Storage,
        hash: &[u8; 32],
        route_id: &str,
        now: i64,
    ) -> Option<Arc<SessionEntry>> {
        if let Some(entry) = self.by_hash.get(hash).map(|e| e.value().clone()) {
            return mark_active(entry, route_id, now);
        }
        if self.ended.contains_key(hash) || self.missing.contains_key(hash) {
            return None;
        }
        let since = self.applied.load(Ordering::SeqCst);
        match store.session_by_token_hash(hash).await {
            Ok(Some(session)) => {
                let entry = SessionEntry::new(session);
                if entry.is_expired(now) {
                    self.remember_missing(*hash);
                    return None;
                }
                mark_active(self.make_live(entry, since)?, route_id, now)
            }
            Ok(None) => {
                self.remember_missing(*hash);
                None
            }
            Err(e) => {
                tracing::warn!("session lookup in the store: {e}");
                None
            }
        }
    }

    fn remember_missing(&self, hash: [u8; 32]) {
        if self.missing.len() >= KNOWN_MISSING {
            self.missing.clear();
        }
        self.missing.insert(hash, ());
    }

    /// Makes a session read from the store live, unless the feed has said it ended: `since` is
    /// the revision the index had applied before the session was read, so an ending that came
    /// after the read has a later revision and either left its tombstone (checked here, under
    /// the index shard's lock) or is not applied yet (and will remove the entry). Answers the
    /// live entry, or `None` when the session ended or it cannot be told.
    fn make_live(&self, entry: SessionEntry, since: u64) -> Option<Arc<SessionEntry>> {
        let hash = entry.session.token_hash;
        match self.by_hash.entry(hash) {
            dashmap::Entry::Occupied(live) => Some(live.get().clone()),
            dashmap::Entry::Vacant(slot) => {
                // Tombstone first, then the floor: a tombstone is forgotten only after the floor
                // has moved past its revision.
                if self.ended.contains_key(&hash) || self.forgotten_up_to.load(Ordering::SeqCst) > since {
                    return None;
                }
                self.missing.remove(&hash);
                let entry = Arc::new(entry);
                slot.insert(entry.clone());
                Some(entry)
            }
        }
    }

    /// Stores a new session (durably) and makes it live (unless it ended meanwhile).
    pub async fn insert(&self, store: &dyn Storage, session: Session) -> Result<Arc<SessionEntry>, StoreError> {
        let since = self.applied.load(Ordering::SeqCst);
        store.put_session(&session).await?;
        let entry = SessionEntry::new(session.clone());
        Ok(self
            .make_live(entry, since)
            .unwrap_or_else(|| Arc::new(SessionEntry::new(session))))
    }

    /// The feed said these sessions ended at `revision` (the follower calls this): they leave
    /// the index and are remembered as ended.
    pub fn apply_ended(&self, token_hashes: &[[u8; 32]], revision: u64) {
        let mut order = self.ended_order.lock().unwrap_or_else(PoisonError::into_inner);
        for hash in token_hashes {
            // The tombstone before the removal: see `make_live`.
            self.ended.insert(*hash, revision);
            self.by_hash.remove(hash);
            order.push_back((*hash, revision));
        }
        while order.len() > self.tombstone_capacity {
            let Some((hash, ended_at)) = order.pop_front() else {
                break;
            };
            self.forgotten_up_to.fetch_max(ended_at, Ordering::SeqCst);
            self.ended.remove_if(&hash, |_, at| *at == ended_at);
        }
    }

    /// The follower missed part of the feed: drops every session the store no longer has,
    /// `revision` being the store's revision read before this call.
    pub async fn resync(&self, store: &dyn Storage, revision: u64) -> Result<(), StoreError> {
        // Endings up to `revision` may have left no tombstone.
        self.forgotten_up_to.fetch_max(revision, Ordering::SeqCst);
        let stored: HashSet<[u8; 32]> = store.all_sessions().await?.into_iter().map(|s| s.token_hash).collect();
        self.by_hash.retain(|hash, _| stored.contains(hash));
        Ok(())
    }

    /// Records that the index reflects the feed up to `revision`.
    pub fn set_applied(&self, revision: u64) {
        self.applied.fetch_max(revision, Ordering::SeqCst);
    }

    /// Gives a live session a renewed access token to forward, in the store and in the index.
    /// The stored session is replaced only while it is stored (an ending meanwhile wins), then
    /// the entry is replaced (requests in flight keep the one they hold) if it is still live.
    /// Answers `false`, writing nothing, when the session has ended meanwhile.
    pub async fn renew_access_token(
        &self,
        store: &dyn Storage,
        token_hash: &[u8; 32],
        access_token: String,
    ) -> Result<bool, StoreError> {
        let session = {
            let Some(entry) = self.by_hash.get(token_hash) else {
                return Ok(false);
            };
            let mut session = entry.session.clone();
            session.access_token = Some(access_token);
            session.last_active = entry.last_active();
            session.checked_at = entry.checked_at.load(Ordering::Relaxed);
            session
        };
        if !store.replace_session(&session).await? {
            return Ok(false);
        }
        let Some(mut slot) = self.by_hash.get_mut(token_hash) else {
            return Ok(false);
        };
        let fresh = SessionEntry::new(session);
        fresh.last_active.store(slot.last_active(), Ordering::Relaxed);
        fresh
            .checked_at
            .store(slot.checked_at.load(Ordering::Relaxed), Ordering::Relaxed);
        *slot = Arc::new(fresh);
        Ok(true)
    }

    /// The session of a token, live or not (for logout).
    pub fn find_by_token(&self, token: &str) -> Option<Arc<SessionEntry>> {
        self.by_hash.get(&hash_token(token)).map(|e| e.value().clone())
    }

    /// How many live sessions `predicate` selects.
    pub fn count_where(&self, predicate: impl Fn(&Session) -> bool) -> usize {
        self.by_hash.iter().filter(|entry| predicate(&entry.session)).count()
    }

    /// The ids of live sessions that have ended by time at `now` (they stay in the index until
    /// the feed says they ended).
    pub fn expired_ids(&self, now: i64) -> Vec<String> {
        self.by_hash
            .iter()
            .filter(|entry| entry.is_expired(now))
            .map(|entry| entry.session.id.clone())
            .collect()
    }

    /// Live sessions whose re-check is due at `now`; each is marked checked, so a slow check
    /// is not started twice.
    pub fn due_for_recheck(&self, now: i64) -> Vec<Arc<SessionEntry>> {
        self.by_hash
            .iter()
            .filter(|e| {
                let interval = e.session.recheck_interval;
                interval > 0 && now - e.checked_at.load(Ordering::Relaxed) >= interval && !e.is_expired(now)
            })
            .map(|e| {
                e.checked_at.store(now, Ordering::Relaxed);
                e.value().clone()
            })
            .collect()
    }

    /// The last-active time of every live session, by session id (one pass).
    pub fn last_active_by_id(&self) -> std::collections::HashMap<String, i64> {
        self.by_hash
            .iter()
            .map(|e| (e.session.id.clone(), e.last_active()))
            .collect()
    }

    /// Writes the last-active times that changed since the last call, batched (not durable
    /// when it returns); returns how many.
    pub async fn persist_activity(&self, store: &dyn Storage) -> Result<usize, StoreError> {
        let batch: Vec<Session> = self
            .by_hash
            .iter()
            .filter(|entry| entry.dirty.swap(false, Ordering::Relaxed))
            .map(|entry| {
                let mut session = entry.session.clone();
                session.last_active = entry.last_active();
                session
            })
            .collect();
        store.save_activity_batched(&batch).await?;
        Ok(batch.len())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A session of `token_hash` on a test route, live at 1 000 000.
    pub(crate) fn session(token_hash: [u8; 32]) -> Session {
        Session {
            id: crate::ids::new_id("sess", 0),
            token_hash,
            user_id: "user".into(),
            edge_id: "edge".into(),
            route_id: "route".into(),
            plugin: "plugin".into(),
            origin: "http://app.test".into(),
            subject: "subject".into(),
            email: String::new(),
            name: String::new(),
            groups: Vec::new(),
            plugin_data: None,
            created_at: 1_000_000,
            last_active: 1_000_000,
            expires_at: 2_000_000,
            inactivity_timeout: 3_600,
            ip: "127.0.0.1".into(),
            user_agent: String::new(),
            access_token: None,
            recheck_interval: 0,
            checked_at: 1_000_000,
            session_index: None,
        }
    }

    /// A store lookup that read a session just before the feed said it ended (the ending is
    /// applied between the read and the making live) must not bring it back.
    #[test]
    fn a_miss_lookup_that_raced_with_the_ending_does_not_bring_the_session_back() {
        let sessions = Sessions::default();
        sessions.set_applied(7);
        let (token, hash) = new_token();
        // The lookup notes the revision applied, then reads the session from the store ...
        let since = sessions.applied.load(Ordering::SeqCst);
        let read = SessionEntry::new(session(hash));
        // ... the store deletes it and the follower applies the ending ...
        sessions.apply_ended(&[hash], 8);
        sessions.set_applied(8);
        // ... and only then does the lookup try to make it live.
        assert!(sessions.make_live(read, since).is_none());
        assert!(sessions.check(&token, "route", 1_000_001).is_none());
    }

    /// The same race once the ending's tombstone has been forgotten: the lookup cannot tell, and
    /// does not make the session live either.
    #[test]
    fn a_miss_lookup_older_than_a_forgotten_tombstone_does_not_make_a_session_live() {
        let sessions = Sessions::with_tombstone_capacity(1);
        sessions.set_applied(7);
        let (token, hash) = new_token();
        let since = sessions.applied.load(Ordering::SeqCst);
        let read = SessionEntry::new(session(hash));
        sessions.apply_ended(&[hash], 8);
        // A later ending pushes the first tombstone out.
        sessions.apply_ended(&[new_token().1], 9);
        assert!(!sessions.ended.contains_key(&hash));
        assert!(sessions.make_live(read, since).is_none());
        assert!(sessions.check(&token, "route", 1_000_001).is_none());
        // A lookup that started after the forgotten ending makes a stored session live.
        let (later_token, later_hash) = new_token();
        sessions.set_applied(9);
        let since = sessions.applied.load(Ordering::SeqCst);
        assert!(sessions
            .make_live(SessionEntry::new(session(later_hash)), since)
            .is_some());
        assert!(sessions.check(&later_token, "route", 1_000_001).is_some());
    }

    /// Without a race, a session read from the store (another replica's) becomes live.
    #[test]
    fn a_session_read_from_the_store_becomes_live() {
        let sessions = Sessions::default();
        let (token, hash) = new_token();
        let since = sessions.applied.load(Ordering::SeqCst);
        assert!(sessions.make_live(SessionEntry::new(session(hash)), since).is_some());
        assert!(sessions.check(&token, "route", 1_000_001).is_some());
        assert!(sessions.check(&token, "another-route", 1_000_001).is_none());
    }
}
