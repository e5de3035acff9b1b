//! Upgrades a data dir written by an older schema when the store opens. Each step decodes the
//! old shape (kept here, frozen) and writes the new one, all records and the step's schema
//! version in one transaction: a crash leaves the data dir at one schema or the next, never
//! between.

use super::{codec, transaction_error, StoreError, SCHEMA_KEY};
use crate::model::Session;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, Transactional};

/// Brings every collection from schema `found` up to the current one.
pub fn run(db: &sled::Db, found: u32) -> Result<(), StoreError> {
    if found < 2 {
        upgrade_sessions(db, 2, session_v1_to_v2)?;
    }
    if found < 3 {
        upgrade_sessions(db, 3, session_v2_to_v3)?;
    }
    Ok(())
}

/// Rewrites every stored session from one schema's shape to the next's and records schema
/// `to`, atomically, then flushes.
fn upgrade_sessions<Old: DeserializeOwned, New: Serialize>(
    db: &sled::Db,
    to: u32,
    upgrade: fn(Old) -> New,
) -> Result<(), StoreError> {
    let tree = db.open_tree("sessions")?;
    let mut upgraded = Vec::new();
    for item in tree.iter() {
        let (key, bytes) = item?;
        upgraded.push((key, codec::encode(&upgrade(codec::decode(&bytes)?))?));
    }
    let meta: &sled::Tree = db;
    (&tree, meta)
        .transaction(|(sessions, meta)| {
            for (key, bytes) in &upgraded {
                sessions.insert(key, bytes.as_slice())?;
            }
            meta.insert(SCHEMA_KEY, &to.to_be_bytes())?;
            Ok::<_, ConflictableTransactionError<String>>(())
        })
        .map_err(transaction_error)?;
    db.flush()?;
    Ok(())
}

/// A session as schema 1 stored it (before access-token forwarding and re-checks).
#[derive(Serialize, Deserialize)]
struct SessionV1 {
    id: String,
    token_hash: [u8; 32],
    user_id: String,
    edge_id: String,
    route_id: String,
    plugin: String,
    origin: String,
    subject: String,
    email: String,
    name: String,
    groups: Vec<String>,
    plugin_data: Option<String>,
    created_at: i64,
    last_active: i64,
    expires_at: i64,
    inactivity_timeout: i64,
    ip: String,
    user_agent: String,
}

/// A session as schema 2 stored it (before the identity provider's session index). bincode
/// writes a nested struct's fields in line, so this is schema 2's flat record.
#[derive(Serialize, Deserialize)]
struct SessionV2 {
    v1: SessionV1,
    access_token: Option<String>,
    recheck_interval: i64,
    checked_at: i64,
}

fn session_v1_to_v2(old: SessionV1) -> SessionV2 {
    SessionV2 {
        checked_at: old.last_active,
        v1: old,
        access_token: None,
        recheck_interval: 0,
    }
}

/// Sessions made before schema 3 name no provider session: a logout naming one ends them.
fn session_v2_to_v3(old: SessionV2) -> Session {
    let SessionV2 {
        v1: old1,
        access_token,
        recheck_interval,
        checked_at,
    } = old;
    Session {
        id: old1.id,
        token_hash: old1.token_hash,
        user_id: old1.user_id,
        edge_id: old1.edge_id,
        route_id: old1.route_id,
        plugin: old1.plugin,
        origin: old1.origin,
        subject: old1.subject,
        email: old1.email,
        name: old1.name,
        groups: old1.groups,
        plugin_data: old1.plugin_data,
        created_at: old1.created_at,
        last_active: old1.last_active,
        expires_at: old1.expires_at,
        inactivity_timeout: old1.inactivity_timeout,
        ip: old1.ip,
        user_agent: old1.user_agent,
        access_token,
        recheck_interval,
        checked_at,
        session_index: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1_session() -> SessionV1 {
        SessionV1 {
            id: "s1".into(),
            token_hash: [7; 32],
            user_id: "u1".into(),
            edge_id: "e".into(),
            route_id: "r".into(),
            plugin: "saml".into(),
            origin: "https://app.test".into(),
            subject: "idp!alice".into(),
            email: "alice@example.com".into(),
            name: "Alice".into(),
            groups: vec!["g".into()],
            plugin_data: None,
            created_at: 10,
            last_active: 20,
            expires_at: 30,
            inactivity_timeout: 40,
            ip: "127.0.0.1".into(),
            user_agent: "ua".into(),
        }
    }

    /// Stores `record` as session "s1" in a fresh database written by schema `found`, runs the
    /// migration and reads the session back.
    fn migrated(record: &impl Serialize, found: u32) -> Session {
        let dir = std::env::temp_dir().join(crate::ids::new_id("migratetest"));
        let db = sled::open(dir.join("db")).unwrap();
        db.open_tree("sessions")
            .unwrap()
            .insert("s1", codec::encode(record).unwrap())
            .unwrap();
        run(&db, found).unwrap();
        let schema = db.get(SCHEMA_KEY).unwrap().unwrap();
        assert_eq!(
            schema.as_ref(),
            super::super::SCHEMA_VERSION.to_be_bytes(),
            "recorded with the records"
        );
        let bytes = db.open_tree("sessions").unwrap().get("s1").unwrap().unwrap();
        drop(db);
        let _ = std::fs::remove_dir_all(dir);
        codec::decode(&bytes).unwrap()
    }

    #[test]
    fn schema_1_sessions_are_carried_over() {
        let new = migrated(&v1_session(), 1);
        assert_eq!(
            (new.subject.as_str(), new.last_active, new.checked_at),
            ("idp!alice", 20, 20)
        );
        assert_eq!(
            (new.access_token, new.recheck_interval, new.session_index),
            (None, 0, None)
        );
    }

    #[test]
    fn schema_2_sessions_are_carried_over() {
        /// Schema 2's `Session`, field for field as that release declared it.
        #[derive(Serialize)]
        struct Schema2Session {
            id: String,
            token_hash: [u8; 32],
            user_id: String,
            edge_id: String,
            route_id: String,
            plugin: String,
            origin: String,
            subject: String,
            email: String,
            name: String,
            groups: Vec<String>,
            plugin_data: Option<String>,
            created_at: i64,
            last_active: i64,
            expires_at: i64,
            inactivity_timeout: i64,
            ip: String,
            user_agent: String,
            access_token: Option<String>,
            recheck_interval: i64,
            checked_at: i64,
        }
        let v1 = v1_session();
        let old = Schema2Session {
            id: v1.id,
            token_hash: v1.token_hash,
            user_id: v1.user_id,
            edge_id: v1.edge_id,
            route_id: v1.route_id,
            plugin: v1.plugin,
            origin: v1.origin,
            subject: v1.subject,
            email: v1.email,
            name: v1.name,
            groups: v1.groups,
            plugin_data: Some("data".into()),
            created_at: v1.created_at,
            last_active: v1.last_active,
            expires_at: v1.expires_at,
            inactivity_timeout: v1.inactivity_timeout,
            ip: v1.ip,
            user_agent: v1.user_agent,
            access_token: Some("at".into()),
            recheck_interval: 300,
            checked_at: 25,
        };
        let new = migrated(&old, 2);
        assert_eq!(
            (new.id.as_str(), new.user_agent.as_str(), new.plugin_data.as_deref()),
            ("s1", "ua", Some("data"))
        );
        assert_eq!(
            (
                new.access_token.as_deref(),
                new.recheck_interval,
                new.checked_at,
                new.session_index
            ),
            (Some("at"), 300, 25, None)
        );
    }
}
