//! Upgrades a data dir written by an older schema, record by record, when the store opens.
//! Each step decodes the old shape (kept here, frozen) and writes the new one.

use super::{codec, StoreError};
use crate::model::Session;
use serde::{Deserialize, Serialize};

/// Brings every collection from schema `found` up to the current one.
pub fn run(db: &sled::Db, found: u32) -> Result<(), StoreError> {
    if found < 2 {
        sessions_v1_to_v2(db)?;
    }
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

fn sessions_v1_to_v2(db: &sled::Db) -> Result<(), StoreError> {
    let tree = db.open_tree("sessions")?;
    for item in tree.iter() {
        let (key, bytes) = item?;
        let old: SessionV1 = codec::decode(&bytes)?;
        let new = Session {
            id: old.id,
            token_hash: old.token_hash,
            user_id: old.user_id,
            edge_id: old.edge_id,
            route_id: old.route_id,
            plugin: old.plugin,
            origin: old.origin,
            subject: old.subject,
            email: old.email,
            name: old.name,
            groups: old.groups,
            plugin_data: old.plugin_data,
            created_at: old.created_at,
            last_active: old.last_active,
            expires_at: old.expires_at,
            inactivity_timeout: old.inactivity_timeout,
            ip: old.ip,
            user_agent: old.user_agent,
            access_token: None,
            recheck_interval: 0,
            checked_at: old.last_active,
        };
        tree.insert(key, codec::encode(&new)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_1_sessions_are_carried_over() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("migratetest"));
        let db = sled::open(dir.join("db")).unwrap();
        let old = SessionV1 {
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
        };
        db.open_tree("sessions")
            .unwrap()
            .insert("s1", codec::encode(&old).unwrap())
            .unwrap();
        run(&db, 1).unwrap();
        let bytes = db.open_tree("sessions").unwrap().get("s1").unwrap().unwrap();
        let new: Session = codec::decode(&bytes).unwrap();
        assert_eq!(
            (new.subject.as_str(), new.last_active, new.checked_at),
            ("idp!alice", 20, 20)
        );
        assert_eq!((new.access_token, new.recheck_interval), (None, 0));
        drop(db);
        let _ = std::fs::remove_dir_all(dir);
    }
}
