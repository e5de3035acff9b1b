//! The console sign-in throttle: failure counters kept in the store's key-value namespaces under
//! the core namespace `core.console_sign_in`, so they survive a restart and every replica sees
//! them. Per normalised email: 5 failures lock it for 15 minutes (whether or not a member has
//! that email, so the answer says nothing about which emails exist); per client address: 20
//! failures within 15 minutes refuse that address's attempts until the window ends. A lock is
//! lifted by time or by an admin (the counter deleted); a successful sign-in clears its email's
//! failures.

use crate::store::{Storage, StoreError};

/// The key-value namespace of the counters (core's own, no plugin's).
pub const NAMESPACE: &str = "core.console_sign_in";
/// Failures of one email that lock it.
pub const FAILURES_PER_EMAIL: u64 = 5;
/// How long a locked email stays locked (from its last counted failure).
pub const LOCK_SECS: i64 = 15 * 60;
/// Failures from one client address within [`ADDRESS_WINDOW_SECS`] that refuse its attempts.
pub const FAILURES_PER_ADDRESS: u64 = 20;
/// The window of an address's failures.
pub const ADDRESS_WINDOW_SECS: i64 = 15 * 60;

/// Whether an attempt may be tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// The email has failed too often: locked for a while.
    EmailLocked,
    /// The client address has failed too often.
    AddressLimited,
}

fn email_key(normalized_email: &str) -> String {
    format!("email:{normalized_email}")
}

fn address_key(address: &str) -> String {
    format!("address:{address}")
}

async fn count(store: &dyn Storage, key: &str, now: i64) -> Result<u64, StoreError> {
    Ok(store
        .kv_get(NAMESPACE, key, now)
        .await?
        .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// Whether an attempt for this email from this address may be tried at `now`.
pub async fn check(store: &dyn Storage, normalized_email: &str, address: &str, now: i64) -> Result<Gate, StoreError> {
    if count(store, &address_key(address), now).await? >= FAILURES_PER_ADDRESS {
        return Ok(Gate::AddressLimited);
    }
    if is_locked(store, normalized_email, now).await? {
        return Ok(Gate::EmailLocked);
    }
    Ok(Gate::Open)
}

/// Whether the email is locked at `now`.
pub async fn is_locked(store: &dyn Storage, normalized_email: &str, now: i64) -> Result<bool, StoreError> {
    Ok(count(store, &email_key(normalized_email), now).await? >= FAILURES_PER_EMAIL)
}

/// Counts a failed attempt against the email and the address.
pub async fn record_failure(
    store: &dyn Storage,
    normalized_email: &str,
    address: &str,
    now: i64,
) -> Result<(), StoreError> {
    store
        .kv_incr(NAMESPACE, &address_key(address), now, Some(now + ADDRESS_WINDOW_SECS))
        .await?;
    let key = email_key(normalized_email);
    let failures = store.kv_incr(NAMESPACE, &key, now, Some(now + LOCK_SECS)).await?;
    if failures >= FAILURES_PER_EMAIL {
        // Locked for the whole lock time from this failure, not from the first one.
        store
            .kv_put(NAMESPACE, &key, &failures.to_be_bytes(), Some(now + LOCK_SECS))
            .await?;
    }
    Ok(())
}

/// Clears the email's failures (a successful sign-in, or an admin's unlock).
pub async fn clear(store: &dyn Storage, normalized_email: &str) -> Result<(), StoreError> {
    store.kv_delete(NAMESPACE, &email_key(normalized_email)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn five_failures_lock_an_email_for_fifteen_minutes_and_twenty_limit_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path()).unwrap();
        let now = 1_000;
        for _ in 0..FAILURES_PER_EMAIL - 1 {
            record_failure(&*store, "kim@example.com", "192.0.2.1", now)
                .await
                .unwrap();
        }
        assert_eq!(
            check(&*store, "kim@example.com", "192.0.2.1", now).await.unwrap(),
            Gate::Open
        );
        record_failure(&*store, "kim@example.com", "192.0.2.1", now + 600)
            .await
            .unwrap();
        assert_eq!(
            check(&*store, "kim@example.com", "192.0.2.9", now + 600).await.unwrap(),
            Gate::EmailLocked,
            "from any address"
        );
        // Locked from the fifth failure on, lifted by time.
        assert!(is_locked(&*store, "kim@example.com", now + 600 + LOCK_SECS - 1)
            .await
            .unwrap());
        assert!(!is_locked(&*store, "kim@example.com", now + 600 + LOCK_SECS)
            .await
            .unwrap());
        // Or by an admin.
        record_failure(&*store, "lee@example.com", "192.0.2.2", now)
            .await
            .unwrap();
        for _ in 0..FAILURES_PER_EMAIL {
            record_failure(&*store, "lee@example.com", "192.0.2.2", now)
                .await
                .unwrap();
        }
        assert!(is_locked(&*store, "lee@example.com", now).await.unwrap());
        clear(&*store, "lee@example.com").await.unwrap();
        assert!(!is_locked(&*store, "lee@example.com", now).await.unwrap());

        // An address: twenty failures over any emails.
        for i in 0..FAILURES_PER_ADDRESS {
            let email = format!("n{i}@example.com");
            assert_eq!(check(&*store, &email, "198.51.100.7", now).await.unwrap(), Gate::Open);
            record_failure(&*store, &email, "198.51.100.7", now).await.unwrap();
        }
        assert_eq!(
            check(&*store, "new@example.com", "198.51.100.7", now).await.unwrap(),
            Gate::AddressLimited
        );
        assert_eq!(
            check(&*store, "new@example.com", "198.51.100.8", now).await.unwrap(),
            Gate::Open
        );
        assert_eq!(
            check(&*store, "new@example.com", "198.51.100.7", now + ADDRESS_WINDOW_SECS)
                .await
                .unwrap(),
            Gate::Open
        );
    }
}
