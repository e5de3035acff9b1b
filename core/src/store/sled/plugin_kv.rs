//! Plugins' key-value namespaces in sled: one tree, keys `namespace \0 key`, each value with its
//! expiry. Every write is flushed before it returns.

use super::{codec, pair_key, SledStore};
use crate::store::{PluginKv, StoreError};
use async_trait::async_trait;

/// A value of a plugin's key-value namespace.
#[derive(serde::Serialize, serde::Deserialize)]
struct KvEntry {
    expires_at: Option<i64>,
    value: Vec<u8>,
}

/// The value of a stored entry if it is live at `now`.
fn live(raw: Option<sled::IVec>, now: i64) -> Result<Option<Vec<u8>>, StoreError> {
    match raw {
        Some(bytes) => {
            let entry: KvEntry = codec::decode(&bytes)?;
            Ok(entry.expires_at.is_none_or(|at| at > now).then_some(entry.value))
        }
        None => Ok(None),
    }
}

#[async_trait]
impl PluginKv for SledStore {
    async fn kv_get(&self, namespace: &str, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError> {
        live(self.plugin_kv.get(pair_key(namespace, key))?, now)
    }

    async fn kv_put(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let entry = KvEntry {
            expires_at,
            value: value.to_vec(),
        };
        self.plugin_kv
            .insert(pair_key(namespace, key), codec::encode(&entry)?)?;
        self.flush().await
    }

    async fn kv_take(&self, namespace: &str, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let removed = self.plugin_kv.remove(pair_key(namespace, key))?;
        if removed.is_some() {
            self.flush().await?;
        }
        live(removed, now)
    }

    async fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        if self.plugin_kv.remove(pair_key(namespace, key))?.is_some() {
            self.flush().await?;
        }
        Ok(())
    }

    async fn kv_get_or_insert(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
        now: i64,
    ) -> Result<Vec<u8>, StoreError> {
        let key = pair_key(namespace, key);
        let new = codec::encode(&KvEntry {
            expires_at: None,
            value: value.to_vec(),
        })?;
        loop {
            let current = self.plugin_kv.get(&key)?;
            if let Some(held) = live(current.clone(), now)? {
                return Ok(held);
            }
            if self
                .plugin_kv
                .compare_and_swap(&key, current, Some(new.clone()))?
                .is_ok()
            {
                self.flush().await?;
                return Ok(value.to_vec());
            }
        }
    }

    async fn kv_incr(&self, namespace: &str, key: &str, now: i64, expires_at: Option<i64>) -> Result<u64, StoreError> {
        let mut count = 0u64;
        let mut failure = None;
        self.plugin_kv.update_and_fetch(pair_key(namespace, key), |old| {
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
        if let Some(e) = failure {
            return Err(e.into());
        }
        self.flush().await?;
        Ok(count)
    }

    async fn kv_purge_expired(&self, now: i64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.plugin_kv.iter() {
            let (key, bytes) = item?;
            let entry: KvEntry = codec::decode(&bytes)?;
            if entry.expires_at.is_some_and(|at| at <= now) {
                // Only if it still holds the expired value (a writer may have renewed it).
                if self
                    .plugin_kv
                    .compare_and_swap(&key, Some(bytes), None as Option<&[u8]>)?
                    .is_ok()
                {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            self.flush().await?;
        }
        Ok(removed)
    }
}
