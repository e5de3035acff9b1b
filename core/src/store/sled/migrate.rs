//! Upgrades a data dir written by an older schema when the store opens. Each step decodes the
//! old shape (kept here, frozen) and writes the new one, all records and the step's schema
//! version in one transaction: a crash leaves the data dir at one schema or the next, never
//! between.

use super::{codec, committed, pair_key, StoreError, SCHEMA_KEY};
use crate::model::{IdentityLink, Session, User};
use crate::store::normalize_email;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::Transactional;

/// Brings every collection from schema `found` up to the current one.
pub fn run(db: &sled::Db, found: u32) -> Result<(), StoreError> {
    if found < 2 {
        upgrade_sessions(db, 2, session_v1_to_v2)?;
    }
    if found < 3 {
        upgrade_sessions(db, 3, session_v2_to_v3)?;
    }
    if found < 4 {
        people_v3_to_v4(db)?;
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
    committed((&tree, meta).transaction(|(sessions, meta)| {
        for (key, bytes) in &upgraded {
            sessions.insert(key, bytes.as_slice())?;
        }
        meta.insert(SCHEMA_KEY, &to.to_be_bytes())?;
        Ok(())
    }))?;
    db.flush()?;
    Ok(())
}

/// An application user as schema 3 stored it: one record per `(provider, subject)`, so a person
/// provisioned by email and then signed in could be two users.
#[derive(Serialize, Deserialize)]
pub(super) struct AppUserV3 {
    pub id: String,
    pub provider: String,
    pub subject: String,
    pub email: String,
    pub name: String,
    pub active: bool,
    pub created_at: i64,
    pub last_login: i64,
}

/// What schema 3's users become: users and their links.
struct PeopleV4 {
    users: Vec<User>,
    links: Vec<IdentityLink>,
}

/// Each schema-3 user becomes a `User` and a link `{idp: provider, subject}`, one for one. Users
/// whose normalised emails collide are not merged: schema 3 did not record whether an identity
/// provider had verified an address, so merging could hand an unverified sign-in another
/// person's record at upgrade. The oldest (by creation, then id) keeps the address; the others
/// keep theirs only on their sessions (their record's email is emptied, so the unique email
/// index holds), and a later verified sign-in links by email as usual.
fn people_from_v3(mut old: Vec<AppUserV3>) -> PeopleV4 {
    old.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let mut users: Vec<User> = Vec::with_capacity(old.len());
    let mut links = Vec::with_capacity(old.len());
    let mut emails = std::collections::HashSet::new();
    for u in old {
        let normalized = normalize_email(&u.email);
        let email = if normalized.is_empty() || !emails.insert(normalized) {
            String::new()
        } else {
            u.email.trim().to_string()
        };
        links.push(IdentityLink {
            idp: u.provider,
            subject: u.subject,
            user_id: u.id.clone(),
            created_at: u.created_at,
        });
        users.push(User {
            id: u.id,
            email,
            name: u.name,
            active: u.active,
            external_id: None,
            created_at: u.created_at,
            updated_at: u.created_at.max(u.last_login),
            last_login: u.last_login,
        });
    }
    PeopleV4 { users, links }
}

/// Schema 3 to 4: application users become users and identity links with an email index
/// (an address two users share stays with the oldest), and sessions get their token-hash
/// index; all in one transaction with the schema version.
fn people_v3_to_v4(db: &sled::Db) -> Result<(), StoreError> {
    let old_users = db.open_tree("app_users")?;
    let old_keys = db.open_tree("app_user_keys")?;
    let users_tree = db.open_tree("users")?;
    let emails_tree = db.open_tree("user_emails")?;
    let links_tree = db.open_tree("identity_links")?;
    let user_links_tree = db.open_tree("user_links")?;
    let sessions_tree = db.open_tree("sessions")?;
    let hashes_tree = db.open_tree("session_hashes")?;
    let old = old_users
        .iter()
        .map(|item| Ok(codec::decode::<AppUserV3>(&item?.1)?))
        .collect::<Result<Vec<_>, StoreError>>()?;
    let old_user_ids: Vec<String> = old.iter().map(|u| u.id.clone()).collect();
    let old_key_names = old_keys.iter().keys().collect::<Result<Vec<_>, sled::Error>>()?;
    let people = people_from_v3(old);
    let users = people
        .users
        .iter()
        .map(|u| Ok((u.id.clone(), normalize_email(&u.email), codec::encode(u)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    let links = people
        .links
        .iter()
        .map(|l| {
            let mut by_user = pair_key(&l.user_id, &l.idp);
            by_user.push(0);
            by_user.extend_from_slice(l.subject.as_bytes());
            Ok((pair_key(&l.idp, &l.subject), by_user, codec::encode(l)?))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let mut sessions = Vec::new();
    for item in sessions_tree.iter() {
        let (key, bytes) = item?;
        let session: Session = codec::decode(&bytes)?;
        sessions.push((key, session.token_hash, codec::encode(&session)?));
    }
    let meta: &sled::Tree = db;
    committed(
        (
            meta,
            &old_users,
            &old_keys,
            &users_tree,
            &emails_tree,
            &links_tree,
            &user_links_tree,
            &sessions_tree,
            &hashes_tree,
        )
            .transaction(
                |(
                    meta,
                    old_users,
                    old_keys,
                    users_tree,
                    emails_tree,
                    links_tree,
                    user_links_tree,
                    sessions_tree,
                    hashes_tree,
                )| {
                    for (id, email, bytes) in &users {
                        users_tree.insert(id.as_bytes(), bytes.as_slice())?;
                        if !email.is_empty() {
                            emails_tree.insert(email.as_bytes(), id.as_bytes())?;
                        }
                    }
                    for (key, by_user, bytes) in &links {
                        links_tree.insert(key.as_slice(), bytes.as_slice())?;
                        user_links_tree.insert(by_user.as_slice(), bytes.as_slice())?;
                    }
                    for (key, hash, bytes) in &sessions {
                        sessions_tree.insert(key, bytes.as_slice())?;
                        hashes_tree.insert(hash, key)?;
                    }
                    for id in &old_user_ids {
                        old_users.remove(id.as_bytes())?;
                    }
                    for key in &old_key_names {
                        old_keys.remove(key)?;
                    }
                    meta.insert(SCHEMA_KEY, &4u32.to_be_bytes())?;
                    Ok(())
                },
            ),
    )?;
    db.flush()?;
    db.drop_tree("app_users")?;
    db.drop_tree("app_user_keys")?;
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
        let dir = std::env::temp_dir().join(crate::ids::new_id(
            "migratetest",
            crate::clock::Clock::now(&crate::clock::SystemClock),
        ));
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

    /// A schema-3 data dir as that release wrote it: application users keyed by
    /// `(provider, subject)`, two of them the same person (the duplicate-user bug: provisioned
    /// by email through the plugin host, then signed in with a subject), and sessions of each.
    #[tokio::test]
    async fn schema_3_users_become_users_and_links_and_a_shared_address_stays_with_the_oldest() {
        use crate::store::{Directory, SessionStore};
        let user = |id: &str, provider: &str, subject: &str, email: &str, active: bool, created_at: i64| AppUserV3 {
            id: id.into(),
            provider: provider.into(),
            subject: subject.into(),
            email: email.into(),
            name: format!("name of {id}"),
            active,
            created_at,
            last_login: created_at + 100,
        };
        let dir = super::super::tests::tempdir();
        {
            let db = sled::open(dir.join("db")).unwrap();
            db.insert(SCHEMA_KEY, &3u32.to_be_bytes()).unwrap();
            let users = db.open_tree("app_users").unwrap();
            let keys = db.open_tree("app_user_keys").unwrap();
            let sessions = db.open_tree("sessions").unwrap();
            for u in [
                user("apu_signedin", "saml", "idp-subject-1", "Alice@Example.com", true, 20),
                user(
                    "apu_provisioned",
                    "testlogin",
                    "alice@example.com",
                    " alice@example.com",
                    false,
                    10,
                ),
                user("apu_bob", "oidc", "bob-subject", "", true, 30),
            ] {
                keys.insert(pair_key(&u.provider, &u.subject), u.id.as_bytes()).unwrap();
                users.insert(u.id.as_bytes(), codec::encode(&u).unwrap()).unwrap();
            }
            for (id, user_id, byte) in [("aps_1", "apu_signedin", 1), ("aps_2", "apu_bob", 2)] {
                let session = crate::store::conformance::session(id, user_id, byte);
                sessions.insert(id, codec::encode(&session).unwrap()).unwrap();
            }
            db.flush().unwrap();
        }
        let store = super::super::tests::open_when_released(&dir).unwrap();
        let schema = store.db.get(SCHEMA_KEY).unwrap().unwrap();
        assert_eq!(schema.as_ref(), 4u32.to_be_bytes());
        assert!(
            !store.db.tree_names().iter().any(|n| n.as_ref() == b"app_users"),
            "the old tree is gone"
        );

        // One user per schema-3 user, never merged (schema 3 did not record whether an address
        // was verified): the oldest keeps the shared address, the other's record loses it.
        let (users, more) = store.users_after(None, 10).await.unwrap();
        assert!(!more);
        assert_eq!(
            users
                .iter()
                .map(|u| (u.id.as_str(), u.email.as_str(), u.active))
                .collect::<Vec<_>>(),
            [
                ("apu_bob", "", true),
                ("apu_provisioned", "alice@example.com", false),
                ("apu_signedin", "", true)
            ]
        );
        let alice = store.user_by_email("alice@example.com").await.unwrap().unwrap();
        assert_eq!(
            (alice.id.as_str(), alice.last_login, alice.created_at),
            ("apu_provisioned", 110, 10)
        );
        for (idp, subject, user) in [
            ("testlogin", "alice@example.com", "apu_provisioned"),
            ("saml", "idp-subject-1", "apu_signedin"),
            ("oidc", "bob-subject", "apu_bob"),
        ] {
            assert_eq!(
                store.user_by_link(idp, subject).await.unwrap().map(|u| u.id),
                Some(user.into()),
                "{idp} {subject}"
            );
        }
        // Sessions keep their user and are found by token hash.
        let s1 = store.session_by_token_hash(&[1; 32]).await.unwrap().unwrap();
        assert_eq!(s1.user_id, "apu_signedin");
        let s2 = store.session_by_token_hash(&[2; 32]).await.unwrap().unwrap();
        assert_eq!(s2.user_id, "apu_bob");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
