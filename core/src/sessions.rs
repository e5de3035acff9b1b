//! Server-side sessions of protected routes: the hot path.
//!
//! Sessions live in the store and, for the per-request check, in a sharded in-memory index keyed
//! by the SHA-256 of the cookie token (the token itself is never stored). A check takes no
//! global lock and writes nothing to disk: it bumps an atomic last-active time, and a
//! background task persists those in batches (the store's one non-durable write). Sessions end
//! only through `accounts`, which removes them from the index first, so revocation takes effect
//! on the very next request.

use crate::model::Session;
use crate::store::{Storage, StoreError};
use arc_swap::ArcSwapOption;
use base64::Engine;
use dashmap::DashMap;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

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
#[derive(Default)]
pub struct Sessions {
    by_hash: DashMap<[u8; 32], Arc<SessionEntry>>,
}

impl Sessions {
    /// Loads the sessions that have not ended by `now`.
    pub async fn load(store: &dyn Storage, now: i64) -> Result<Sessions, StoreError> {
        let sessions = Sessions::default();
        for session in store.all_sessions().await? {
            let entry = SessionEntry::new(session);
            if !entry.is_expired(now) {
                sessions.by_hash.insert(entry.session.token_hash, Arc::new(entry));
            }
        }
        Ok(sessions)
    }

    /// The live session of `token` for `route_id`, marked active at `now`.
    pub fn check(&self, token: &str, route_id: &str, now: i64) -> Option<Arc<SessionEntry>> {
        let hash = hash_token(token);
        let entry = self.by_hash.get(&hash)?.value().clone();
        if entry.session.route_id != route_id || entry.is_expired(now) {
            return None;
        }
        if entry.last_active.swap(now, Ordering::Relaxed) != now {
            entry.dirty.store(true, Ordering::Relaxed);
        }
        Some(entry)
    }

    /// Stores a new session (durably) and makes it live.
    pub async fn insert(&self, store: &dyn Storage, session: Session) -> Result<Arc<SessionEntry>, StoreError> {
        store.put_session(&session).await?;
        let entry = Arc::new(SessionEntry::new(session));
        self.by_hash.insert(entry.session.token_hash, entry.clone());
        Ok(entry)
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

    /// Takes every session matching `predicate` out of the index; returns their ids.
    pub fn remove_where(&self, predicate: impl Fn(&Session) -> bool) -> Vec<String> {
        let mut removed = Vec::new();
        self.by_hash.retain(|_, entry| {
            let matched = predicate(&entry.session);
            if matched {
                removed.push(entry.session.id.clone());
            }
            !matched
        });
        removed
    }

    /// Sessions that have ended by `now`, taken out of the index; returns their ids.
    pub fn remove_expired(&self, now: i64) -> Vec<String> {
        let mut removed = Vec::new();
        self.by_hash.retain(|_, entry| {
            let expired = entry.is_expired(now);
            if expired {
                removed.push(entry.session.id.clone());
            }
            !expired
        });
        removed
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
