//! Sessions in sled, with the token-hash index written in the same transaction as the session.

use super::{codec, committed, decode_in, SledStore};
use crate::model::Session;
use crate::store::{Change, Page, SessionStore, StoreError};
use async_trait::async_trait;
use sled::Transactional;

#[async_trait]
impl SessionStore for SledStore {
    async fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        self.sessions.find(id)
    }

    async fn session_by_token_hash(&self, hash: &[u8; 32]) -> Result<Option<Session>, StoreError> {
        match self.session_hashes.get(hash)? {
            Some(id) => self.sessions.find(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    async fn sessions_page(&self, before_id: Option<&str>, limit: usize) -> Result<Page<Session>, StoreError> {
        self.sessions.page(before_id, limit)
    }

    async fn all_sessions(&self) -> Result<Vec<Session>, StoreError> {
        self.sessions.all()
    }

    async fn put_session(&self, session: &Session) -> Result<(), StoreError> {
        let encoded = codec::encode(session)?;
        committed(
            (&self.sessions.tree, &self.session_hashes).transaction(|(sessions, hashes)| {
                sessions.insert(session.id.as_bytes(), encoded.as_slice())?;
                hashes.insert(&session.token_hash, session.id.as_bytes())?;
                Ok(())
            }),
        )?;
        self.flush().await
    }

    async fn replace_session(&self, session: &Session) -> Result<bool, StoreError> {
        let encoded = codec::encode(session)?;
        let replaced = committed(self.sessions.tree.transaction(|sessions| {
            if sessions.get(session.id.as_bytes())?.is_none() {
                return Ok(false);
            }
            sessions.insert(session.id.as_bytes(), encoded.as_slice())?;
            Ok(true)
        }))?;
        if replaced {
            self.flush().await?;
        }
        Ok(replaced)
    }

    async fn save_activity_batched(&self, batch: &[Session]) -> Result<(), StoreError> {
        for session in batch {
            let mut failure = None;
            self.sessions.tree.update_and_fetch(session.id.as_bytes(), |old| {
                let bytes = old?;
                let changed = codec::decode::<Session>(bytes).and_then(|mut stored| {
                    stored.last_active = session.last_active;
                    codec::encode(&stored)
                });
                match changed {
                    Ok(new) => Some(new),
                    Err(e) => {
                        failure = Some(e);
                        Some(bytes.to_vec())
                    }
                }
            })?;
            if let Some(e) = failure {
                return Err(e.into());
            }
        }
        Ok(())
    }

    async fn flush_activity(&self) -> Result<(), StoreError> {
        self.flush().await
    }

    async fn delete_sessions(&self, ids: &[String]) -> Result<Vec<Session>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ended = committed(
            (&self.sessions.tree, &self.session_hashes).transaction(|(sessions, hashes)| {
                let mut ended = Vec::new();
                for id in ids {
                    if let Some(bytes) = sessions.remove(id.as_bytes())? {
                        let session: Session = decode_in(&bytes)?;
                        hashes.remove(&session.token_hash)?;
                        ended.push(session);
                    }
                }
                Ok(ended)
            }),
        )?;
        if !ended.is_empty() {
            self.feed.publish(Change::SessionsEnded {
                token_hashes: ended.iter().map(|s| s.token_hash).collect(),
            });
            self.flush().await?;
        }
        Ok(ended)
    }
}
