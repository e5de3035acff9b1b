//! The conformance suite every storage backend must pass, written against the traits only. A
//! backend's test calls [`run_all`] with a maker of fresh, empty databases; each check gets its
//! own database and an opener that opens it (again, for the durability check). A PostgreSQL
//! backend runs the same functions.

use super::{Change, ChangeEvent, ConfigObjectSet, Conflict, Storage, StoreError};
use crate::model::{
    ApiKey, ConsoleSession, Edge, IdentityLink, MatchType, Member, MemberOrigin, MemberRole, MemberStatus, Route,
    RouteBackend, Session, SignInLink, SignInLinkPurpose, Source, StaticBackend, User,
};
use std::sync::Arc;

/// Opens one database; a second call (after the first store is dropped) opens it again.
pub type Opener = Box<dyn Fn() -> Result<Box<dyn Storage>, StoreError> + Send + Sync>;

/// Runs every check, each on a fresh database that `fresh` makes.
pub async fn run_all(fresh: &dyn Fn() -> Opener) {
    config_objects(&fresh()).await;
    config_replacement(&fresh()).await;
    api_keys(&fresh()).await;
    directory(&fresh()).await;
    members(&fresh()).await;
    last_active_admin_under_concurrency(&fresh()).await;
    sign_in_links(&fresh()).await;
    console_sessions(&fresh()).await;
    sessions(&fresh()).await;
    plugin_kv(&fresh()).await;
    take_once_and_incr_under_concurrency(&fresh()).await;
    metadata_and_leases(&fresh()).await;
    change_feed(&fresh()).await;
    durability_across_reopen(&fresh()).await;
}

fn open(opener: &Opener) -> Box<dyn Storage> {
    opener().expect("the database opens")
}

fn conflict<T: std::fmt::Debug>(result: Result<T, StoreError>) -> Conflict {
    match result {
        Err(StoreError::Conflict(c)) => c,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

pub fn backend(id: &str, source: Source) -> StaticBackend {
    StaticBackend {
        id: id.into(),
        description: String::new(),
        metadata: String::new(),
        created_at: 0,
        address: "127.0.0.1:1".into(),
        tls: false,
        source,
    }
}

pub fn edge(id: &str, hostports: &[&str], routes: Vec<Route>, source: Source) -> Edge {
    Edge {
        id: id.into(),
        description: String::new(),
        metadata: String::new(),
        created_at: 0,
        hostports: hostports.iter().map(|h| h.to_string()).collect(),
        routes,
        source,
    }
}

pub fn route(id: &str, backend_id: &str) -> Route {
    Route {
        id: id.into(),
        created_at: 0,
        match_type: MatchType::PathPrefix,
        path: format!("/{id}"),
        description: String::new(),
        metadata: String::new(),
        backend: Some(RouteBackend {
            enabled: true,
            backend_id: backend_id.into(),
        }),
        auth: None,
    }
}

fn user(id: &str, email: &str) -> User {
    User {
        id: id.into(),
        email: email.into(),
        name: format!("name of {id}"),
        active: true,
        external_id: None,
        created_at: 1,
        updated_at: 1,
        last_login: 0,
    }
}

fn link(idp: &str, subject: &str, user_id: &str, created_at: i64) -> IdentityLink {
    IdentityLink {
        idp: idp.into(),
        subject: subject.into(),
        user_id: user_id.into(),
        created_at,
    }
}

pub fn session(id: &str, user_id: &str, token_byte: u8) -> Session {
    Session {
        id: id.into(),
        token_hash: [token_byte; 32],
        user_id: user_id.into(),
        edge_id: "edghts_e".into(),
        route_id: "edghtsrt_r".into(),
        plugin: "saml".into(),
        origin: "https://app.test".into(),
        subject: "subject".into(),
        email: String::new(),
        name: String::new(),
        groups: Vec::new(),
        plugin_data: None,
        created_at: 10,
        last_active: 10,
        expires_at: 1000,
        inactivity_timeout: 100,
        ip: "127.0.0.1".into(),
        user_agent: "ua".into(),
        access_token: None,
        recheck_interval: 0,
        checked_at: 10,
        session_index: None,
    }
}

pub fn member(id: &str, email: &str, role: MemberRole, status: MemberStatus) -> Member {
    Member {
        id: id.into(),
        email: email.into(),
        name: format!("name of {id}"),
        role,
        status,
        origin: MemberOrigin::Invite,
        password_hash: None,
        created_at: 1,
        updated_at: 1,
        last_sign_in_at: None,
    }
}

pub fn console_session(id: &str, member_id: &str, token_byte: u8) -> ConsoleSession {
    ConsoleSession {
        id: id.into(),
        token_hash: [token_byte; 32],
        member_id: member_id.into(),
        created_at: 10,
        last_active: 10,
        expires_at: 1000,
        inactivity_timeout: 100,
        ip: "127.0.0.1".into(),
        user_agent: "ua".into(),
    }
}

fn sign_in_link(member_id: &str, token_byte: u8, expires_at: i64) -> SignInLink {
    SignInLink {
        token_hash: [token_byte; 32],
        member_id: member_id.into(),
        purpose: SignInLinkPurpose::Invite,
        created_at: 0,
        expires_at,
    }
}

fn ids<T>(items: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|i| id(i).to_string()).collect()
}

/// Backends and edges: reads, paging newest first, compare-and-swap updates, and the rules
/// across records (host:ports, backends in use or missing).
pub async fn config_objects(opener: &Opener) {
    let store = open(opener);
    for id in ["bkdst_a", "bkdst_b", "bkdst_c"] {
        store.create_backend(&backend(id, Source::Api)).await.unwrap();
    }
    assert_eq!(
        conflict(store.create_backend(&backend("bkdst_a", Source::Api)).await),
        Conflict::Changed
    );
    let first = store.backends_page(None, 2).await.unwrap();
    assert_eq!(ids(&first.items, |b| &b.id), ["bkdst_c", "bkdst_b"]);
    assert!(first.has_more);
    let second = store.backends_page(Some("bkdst_b"), 2).await.unwrap();
    assert_eq!(ids(&second.items, |b| &b.id), ["bkdst_a"]);
    assert!(!second.has_more);
    assert_eq!(store.all_backends().await.unwrap().len(), 3);

    let stored = store.backend("bkdst_a").await.unwrap().unwrap();
    let mut changed = stored.clone();
    changed.address = "127.0.0.1:2".into();
    store.update_backend(&stored, &changed).await.unwrap();
    assert_eq!(store.backend("bkdst_a").await.unwrap(), Some(changed.clone()));
    assert_eq!(
        conflict(store.update_backend(&stored, &changed).await),
        Conflict::Changed,
        "a stale read is refused"
    );
    let ghost = backend("bkdst_z", Source::Api);
    assert_eq!(conflict(store.update_backend(&ghost, &ghost).await), Conflict::Missing);

    let e1 = edge(
        "edghts_1",
        &["a.test:443"],
        vec![route("edghtsrt_1", "bkdst_a")],
        Source::Api,
    );
    store.create_edge(&e1).await.unwrap();
    let e2 = edge("edghts_2", &["b.test:443", "a.test:443"], Vec::new(), Source::Api);
    assert_eq!(
        conflict(store.create_edge(&e2).await),
        Conflict::HostportTaken {
            hostport: "a.test:443".into(),
            edge_id: "edghts_1".into()
        }
    );
    let e3 = edge(
        "edghts_3",
        &["c.test:443"],
        vec![route("edghtsrt_3", "bkdst_nope")],
        Source::Api,
    );
    assert_eq!(
        conflict(store.create_edge(&e3).await),
        Conflict::BackendMissing {
            backend_id: "bkdst_nope".into()
        }
    );
    assert_eq!(
        store.edge("edghts_3").await.unwrap(),
        None,
        "a refused write writes nothing"
    );
    assert_eq!(
        conflict(store.delete_backend("bkdst_a").await),
        Conflict::BackendInUse {
            backend_id: "bkdst_a".into(),
            route_ids: vec!["edghtsrt_1".into()]
        }
    );

    let mut with_two = e1.clone();
    with_two.routes.push(route("edghtsrt_2", "bkdst_b"));
    store.update_edge(&e1, &with_two).await.unwrap();
    let mut other_change = e1.clone();
    other_change.description = "lost update".into();
    assert_eq!(conflict(store.update_edge(&e1, &other_change).await), Conflict::Changed);
    assert_eq!(store.edge("edghts_1").await.unwrap(), Some(with_two.clone()));
    let mut moved = with_two.clone();
    moved.hostports = vec!["d.test:443".into()];
    store.update_edge(&with_two, &moved).await.unwrap();
    store.create_edge(&e2).await.unwrap();
    let page = store.edges_page(None, 10).await.unwrap();
    assert_eq!(ids(&page.items, |e| &e.id), ["edghts_2", "edghts_1"]);
    let (backends, edges) = store.config_snapshot().await.unwrap();
    assert_eq!((backends.len(), edges.len()), (3, 2));

    assert!(store.delete_edge("edghts_1").await.unwrap());
    assert!(!store.delete_edge("edghts_1").await.unwrap());
    assert!(store.delete_backend("bkdst_a").await.unwrap());
    assert!(!store.delete_backend("bkdst_a").await.unwrap());
    assert_eq!(conflict(store.update_edge(&moved, &moved).await), Conflict::Missing);
}

/// The config-declared set is replaced as a whole; API records stay and keep their host:ports.
pub async fn config_replacement(opener: &Opener) {
    let store = open(opener);
    let file = |name: &str| Source::Config {
        file: "config.toml".into(),
        name: name.into(),
    };
    store.create_backend(&backend("bkdst_api", Source::Api)).await.unwrap();
    store
        .create_edge(&edge("edghts_api", &["api.test:443"], Vec::new(), Source::Api))
        .await
        .unwrap();
    let first_backends = [backend("bkdst_c1", file("one")), backend("bkdst_c2", file("two"))];
    let first_edges = [edge(
        "edghts_c1",
        &["c.test:443"],
        vec![route("edghtsrt_c1", "bkdst_c1")],
        file("one"),
    )];
    store
        .replace_config_objects(ConfigObjectSet {
            backends: &first_backends,
            edges: &first_edges,
        })
        .await
        .unwrap();
    let refused = [edge("edghts_c9", &["api.test:443"], Vec::new(), file("nine"))];
    assert_eq!(
        conflict(
            store
                .replace_config_objects(ConfigObjectSet {
                    backends: &[],
                    edges: &refused,
                })
                .await
        ),
        Conflict::HostportTaken {
            hostport: "api.test:443".into(),
            edge_id: "edghts_api".into()
        }
    );
    // A config edge may take over another config edge's host:port in the same replacement.
    let second_edges = [edge("edghts_c3", &["c.test:443"], Vec::new(), file("three"))];
    store
        .replace_config_objects(ConfigObjectSet {
            backends: &first_backends[1..],
            edges: &second_edges,
        })
        .await
        .unwrap();
    let (backends, edges) = store.config_snapshot().await.unwrap();
    let mut backend_ids = ids(&backends, |b| &b.id);
    backend_ids.sort();
    assert_eq!(backend_ids, ["bkdst_api", "bkdst_c2"]);
    let mut edge_ids = ids(&edges, |e| &e.id);
    edge_ids.sort();
    assert_eq!(edge_ids, ["edghts_api", "edghts_c3"]);
}

/// API keys: lookups by id and token hash, the hash unique, compare-and-swap updates.
pub async fn api_keys(opener: &Opener) {
    let store = open(opener);
    let key = |id: &str, byte: u8| ApiKey {
        id: id.into(),
        description: String::new(),
        metadata: String::new(),
        created_at: 0,
        token_hash: [byte; 32],
    };
    store.create_api_key(&key("ak_1", 1)).await.unwrap();
    store.create_api_key(&key("ak_2", 2)).await.unwrap();
    assert_eq!(
        conflict(store.create_api_key(&key("ak_3", 1)).await),
        Conflict::TokenHashTaken
    );
    assert_eq!(
        store.api_key_by_token_hash(&[2; 32]).await.unwrap().map(|k| k.id),
        Some("ak_2".into())
    );
    assert_eq!(store.api_key_by_token_hash(&[3; 32]).await.unwrap(), None);
    let page = store.api_keys_page(None, 1).await.unwrap();
    assert_eq!(
        (ids(&page.items, |k| &k.id), page.has_more),
        (vec!["ak_2".to_string()], true)
    );
    let mut described = key("ak_1", 1);
    described.description = "d".into();
    store.update_api_key(&key("ak_1", 1), &described).await.unwrap();
    assert_eq!(
        conflict(store.update_api_key(&key("ak_1", 1), &described).await),
        Conflict::Changed
    );
    assert_eq!(store.api_key("ak_1").await.unwrap(), Some(described));
    assert!(store.delete_api_key("ak_1").await.unwrap());
    assert!(!store.delete_api_key("ak_1").await.unwrap());
    assert_eq!(store.api_key_by_token_hash(&[1; 32]).await.unwrap(), None);
    store.create_api_key(&key("ak_4", 1)).await.unwrap();
}

/// Users, links and the email index.
pub async fn directory(opener: &Opener) {
    let store = open(opener);
    let alice = user("apu_1", "Alice@Example.com");
    store.put_user(None, &alice).await.unwrap();
    assert_eq!(
        conflict(store.put_user(None, &alice).await),
        Conflict::Changed,
        "the id is taken"
    );
    assert_eq!(
        conflict(store.put_user(None, &user("apu_2", " alice@example.COM ")).await),
        Conflict::EmailTaken {
            email: " alice@example.COM ".into(),
            user_id: "apu_1".into()
        }
    );
    assert_eq!(
        store.user_by_email("alice@example.com").await.unwrap(),
        Some(alice.clone())
    );
    store.put_user(None, &user("apu_2", "")).await.unwrap();
    store.put_user(None, &user("apu_3", "")).await.unwrap();

    let mut renamed = alice.clone();
    renamed.email = "alice@new.example".into();
    renamed.external_id = Some("ext-1".into());
    store.put_user(Some(&alice), &renamed).await.unwrap();
    assert_eq!(
        conflict(store.put_user(Some(&alice), &renamed).await),
        Conflict::Changed
    );
    assert_eq!(
        store.user_by_email("alice@example.com").await.unwrap(),
        None,
        "the old email is free"
    );
    store.put_user(None, &user("apu_4", "alice@example.com")).await.unwrap();
    assert_eq!(store.user_by_external_id("ext-1").await.unwrap(), Some(renamed.clone()));
    assert_eq!(store.user_by_external_id("ext-2").await.unwrap(), None);

    store
        .put_user_with_link(Some(&renamed), &renamed, &link("saml", "s-2", "apu_1", 20))
        .await
        .unwrap();
    store
        .put_user_with_link(Some(&renamed), &renamed, &link("oidc", "s-1", "apu_1", 10))
        .await
        .unwrap();
    let bob = user("apu_2", "");
    assert_eq!(
        conflict(
            store
                .put_user_with_link(Some(&bob), &bob, &link("saml", "s-2", "apu_2", 30))
                .await
        ),
        Conflict::LinkTaken {
            idp: "saml".into(),
            subject: "s-2".into(),
            user_id: "apu_1".into()
        }
    );
    assert_eq!(store.user_by_link("saml", "s-2").await.unwrap(), Some(renamed.clone()));
    assert_eq!(store.user_by_link("saml", "s-1").await.unwrap(), None);
    let links = store.links_of("apu_1").await.unwrap();
    assert_eq!(
        links.iter().map(|l| (l.idp.as_str(), l.created_at)).collect::<Vec<_>>(),
        [("oidc", 10), ("saml", 20)],
        "oldest link first"
    );

    let (first, more) = store.users_after(None, 2).await.unwrap();
    assert_eq!(
        (ids(&first, |u| &u.id), more),
        (vec!["apu_1".to_string(), "apu_2".to_string()], true)
    );
    let (rest, more) = store.users_after(Some("apu_2"), 2).await.unwrap();
    assert_eq!(
        (ids(&rest, |u| &u.id), more),
        (vec!["apu_3".to_string(), "apu_4".to_string()], false)
    );
    let newest = store.users_page(None, 3).await.unwrap();
    assert_eq!(ids(&newest.items, |u| &u.id), ["apu_4", "apu_3", "apu_2"]);

    assert_eq!(store.delete_user("apu_1").await.unwrap(), Some(renamed));
    assert_eq!(store.delete_user("apu_1").await.unwrap(), None);
    assert!(store.links_of("apu_1").await.unwrap().is_empty());
    assert_eq!(store.user_by_link("saml", "s-2").await.unwrap(), None);
    assert_eq!(store.user_by_email("alice@new.example").await.unwrap(), None);
    // The identity and the email are free for another user.
    store
        .put_user_with_link(
            Some(&bob),
            &user("apu_2", "alice@new.example"),
            &link("saml", "s-2", "apu_2", 40),
        )
        .await
        .unwrap();
}

/// Members: lookups by id and normalised email, paging newest first, compare-and-swap updates,
/// the unique email, the last active admin kept through updates and deletes, and a delete
/// taking the member's console sessions and sign-in link with it.
pub async fn members(opener: &Opener) {
    use MemberRole::{Admin, Member as Plain};
    use MemberStatus::{Active, Disabled, Invited};
    let store = open(opener);
    let admin = member("usr_1", "admin@example.com", Admin, Active);
    store.create_member(&admin).await.unwrap();
    store
        .create_member(&member("usr_2", "two@example.com", Plain, Invited))
        .await
        .unwrap();
    store
        .create_member(&member("usr_3", "three@example.com", Plain, Active))
        .await
        .unwrap();
    assert_eq!(
        conflict(
            store
                .create_member(&member("usr_1", "other@example.com", Plain, Active))
                .await
        ),
        Conflict::Changed,
        "an id is never reused"
    );
    assert_eq!(
        conflict(
            store
                .create_member(&member("usr_4", "two@example.com", Plain, Active))
                .await
        ),
        Conflict::EmailTaken {
            email: "two@example.com".into(),
            user_id: "usr_2".into()
        }
    );
    assert_eq!(
        store.member_by_email("admin@example.com").await.unwrap().map(|m| m.id),
        Some("usr_1".into())
    );
    let first = store.members_page(None, 2).await.unwrap();
    assert_eq!(
        (ids(&first.items, |m| &m.id), first.has_more),
        (vec!["usr_3".to_string(), "usr_2".to_string()], true)
    );
    let rest = store.members_page(Some("usr_2"), 2).await.unwrap();
    assert_eq!(
        (ids(&rest.items, |m| &m.id), rest.has_more),
        (vec!["usr_1".to_string()], false)
    );
    assert_eq!(store.all_members().await.unwrap().len(), 3);

    // The last active admin is neither demoted, disabled nor deleted.
    for changed in [
        Member {
            role: Plain,
            ..admin.clone()
        },
        Member {
            status: Disabled,
            ..admin.clone()
        },
    ] {
        assert_eq!(
            conflict(store.update_member(&admin, &changed).await),
            Conflict::LastActiveAdmin {
                member_id: "usr_1".into()
            }
        );
    }
    assert_eq!(
        conflict(store.delete_member("usr_1").await),
        Conflict::LastActiveAdmin {
            member_id: "usr_1".into()
        }
    );
    // Other changes of it are fine, and compare-and-swap like the other records.
    let renamed = Member {
        name: "Renamed".into(),
        email: "root@example.com".into(),
        ..admin.clone()
    };
    store.update_member(&admin, &renamed).await.unwrap();
    assert_eq!(conflict(store.update_member(&admin, &renamed).await), Conflict::Changed);
    assert_eq!(store.member_by_email("admin@example.com").await.unwrap(), None);
    assert_eq!(
        store.member_by_email("root@example.com").await.unwrap().map(|m| m.name),
        Some("Renamed".into())
    );
    let gone = member("usr_9", "gone@example.com", Plain, Active);
    assert_eq!(conflict(store.update_member(&gone, &gone).await), Conflict::Missing);
    // With a second active admin, the first may go.
    let three = store.member("usr_3").await.unwrap().unwrap();
    let promoted = Member {
        role: Admin,
        ..three.clone()
    };
    store.update_member(&three, &promoted).await.unwrap();
    store
        .put_console_session(&console_session("cses_1", "usr_1", 1))
        .await
        .unwrap();
    store
        .put_console_session(&console_session("cses_2", "usr_3", 2))
        .await
        .unwrap();
    store.create_sign_in_link(&sign_in_link("usr_1", 9, 100)).await.unwrap();
    assert_eq!(
        store.delete_member("usr_1").await.unwrap().map(|m| m.id),
        Some("usr_1".into())
    );
    assert_eq!(store.delete_member("usr_1").await.unwrap(), None);
    assert_eq!(store.console_session_by_token_hash(&[1; 32]).await.unwrap(), None);
    assert_eq!(store.sign_in_link(&[9; 32], 0).await.unwrap(), None);
    assert!(
        store.console_session("cses_2").await.unwrap().is_some(),
        "another member's session stays"
    );
    // Its email is free again.
    store
        .create_member(&member("usr_5", "root@example.com", Plain, Invited))
        .await
        .unwrap();
    // The promoted one is now the last.
    let promoted_again = store.member("usr_3").await.unwrap().unwrap();
    assert_eq!(
        conflict(store.delete_member(&promoted_again.id).await),
        Conflict::LastActiveAdmin {
            member_id: "usr_3".into()
        }
    );
}

/// Two admins disabling each other at once: exactly one wins, one active admin stays.
pub async fn last_active_admin_under_concurrency(opener: &Opener) {
    use MemberRole::{Admin, Member as Plain};
    use MemberStatus::{Active, Disabled};
    let store: Arc<dyn Storage> = Arc::from(open(opener));
    let mut survivor: Option<String> = None;
    for round in 0..4 {
        let a = member(
            &format!("usr_{round}a"),
            &format!("a{round}@example.com"),
            Admin,
            Active,
        );
        let b = member(
            &format!("usr_{round}b"),
            &format!("b{round}@example.com"),
            Admin,
            Active,
        );
        store.create_member(&a).await.unwrap();
        store.create_member(&b).await.unwrap();
        // The previous round's survivor steps down: a and b are the only active admins.
        if let Some(id) = survivor.take() {
            let kept = store.member(&id).await.unwrap().unwrap();
            let demoted = Member {
                role: Plain,
                ..kept.clone()
            };
            store.update_member(&kept, &demoted).await.unwrap();
        }
        let writers: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .map(|m| {
                let store = store.clone();
                tokio::spawn(async move {
                    let disabled = Member {
                        status: Disabled,
                        ..m.clone()
                    };
                    store.update_member(&m, &disabled).await
                })
            })
            .collect();
        let mut won = 0;
        for writer in writers {
            match writer.await.unwrap() {
                Ok(()) => won += 1,
                Err(StoreError::Conflict(Conflict::LastActiveAdmin { .. })) => {}
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert_eq!(won, 1, "round {round}");
        let active: Vec<Member> = store
            .all_members()
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.role == Admin && m.status == Active)
            .collect();
        assert_eq!(active.len(), 1, "round {round}: {active:?}");
        survivor = active.into_iter().next().map(|m| m.id);
    }
}

/// Sign-in links: found without being consumed while live, taken once, one live link per
/// member (a new one replaces the old), expired ones neither found nor taken, and purged.
pub async fn sign_in_links(opener: &Opener) {
    let store: Arc<dyn Storage> = Arc::from(open(opener));
    store.create_sign_in_link(&sign_in_link("usr_1", 1, 100)).await.unwrap();
    assert_eq!(
        store.sign_in_link(&[1; 32], 99).await.unwrap().map(|l| l.member_id),
        Some("usr_1".into())
    );
    assert!(
        store.sign_in_link(&[1; 32], 99).await.unwrap().is_some(),
        "a look is no use"
    );
    assert_eq!(
        store.sign_in_link(&[1; 32], 100).await.unwrap(),
        None,
        "expired at its time"
    );
    // A new link replaces the member's old one.
    store.create_sign_in_link(&sign_in_link("usr_1", 2, 100)).await.unwrap();
    assert_eq!(store.sign_in_link(&[1; 32], 0).await.unwrap(), None);
    assert_eq!(store.take_sign_in_link(&[1; 32], 0).await.unwrap(), None);
    // Taken once, under concurrency too.
    let takers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.take_sign_in_link(&[2; 32], 50).await.unwrap() })
        })
        .collect();
    let mut got = 0;
    for taker in takers {
        got += usize::from(taker.await.unwrap().is_some());
    }
    assert_eq!(got, 1);
    assert_eq!(store.sign_in_link(&[2; 32], 50).await.unwrap(), None);
    // An expired link is not taken (and is gone).
    store.create_sign_in_link(&sign_in_link("usr_2", 3, 100)).await.unwrap();
    assert_eq!(store.take_sign_in_link(&[3; 32], 100).await.unwrap(), None);
    assert_eq!(store.sign_in_link(&[3; 32], 0).await.unwrap(), None);
    // Purge removes expired links only.
    store.create_sign_in_link(&sign_in_link("usr_3", 4, 100)).await.unwrap();
    store.create_sign_in_link(&sign_in_link("usr_4", 5, 200)).await.unwrap();
    assert_eq!(store.purge_expired_sign_in_links(150).await.unwrap(), 1);
    assert!(store.sign_in_link(&[5; 32], 150).await.unwrap().is_some());
}

/// Console sessions: lookups by token hash, per member and by page; activity kept only while
/// stored; deletes by id and by member answering what they deleted; expiry purged.
pub async fn console_sessions(opener: &Opener) {
    let store = open(opener);
    for (id, member_id, byte) in [("cses_1", "usr_a", 1), ("cses_2", "usr_b", 2), ("cses_3", "usr_a", 3)] {
        store
            .put_console_session(&console_session(id, member_id, byte))
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .console_session_by_token_hash(&[2; 32])
            .await
            .unwrap()
            .map(|s| s.id),
        Some("cses_2".into())
    );
    assert_eq!(
        ids(&store.console_sessions_of("usr_a").await.unwrap(), |s| &s.id),
        ["cses_3", "cses_1"]
    );
    let page = store.console_sessions_page(Some("cses_3"), 1).await.unwrap();
    assert_eq!(
        (ids(&page.items, |s| &s.id), page.has_more),
        (vec!["cses_2".to_string()], true)
    );
    assert!(store.touch_console_session("cses_1", 60).await.unwrap());
    assert_eq!(
        store.console_session("cses_1").await.unwrap().map(|s| s.last_active),
        Some(60)
    );
    let ended = store
        .delete_console_sessions(&["cses_2".into(), "cses_9".into()])
        .await
        .unwrap();
    assert_eq!(ids(&ended, |s| &s.id), ["cses_2"]);
    assert_eq!(store.console_session_by_token_hash(&[2; 32]).await.unwrap(), None);
    assert!(
        !store.touch_console_session("cses_2", 70).await.unwrap(),
        "an ended session stays ended"
    );
    assert_eq!(store.console_session("cses_2").await.unwrap(), None);
    // cses_1 was active at 60 (idle until 160), cses_3 at 10 (idle until 110).
    assert_eq!(store.purge_expired_console_sessions(120).await.unwrap(), 1);
    assert!(store.console_session("cses_1").await.unwrap().is_some());
    assert_eq!(store.console_session("cses_3").await.unwrap(), None);
    store
        .put_console_session(&console_session("cses_4", "usr_a", 4))
        .await
        .unwrap();
    assert_eq!(store.delete_console_sessions_of("usr_a").await.unwrap(), 2);
    assert!(store.console_sessions_of("usr_a").await.unwrap().is_empty());
    assert_eq!(store.console_session_by_token_hash(&[4; 32]).await.unwrap(), None);
}

/// Sessions: lookups, paging, replacement only while stored, the batched activity write that
/// never brings an ended session back.
pub async fn sessions(opener: &Opener) {
    let store = open(opener);
    for (id, byte) in [("aps_1", 1), ("aps_2", 2), ("aps_3", 3)] {
        store.put_session(&session(id, "apu_1", byte)).await.unwrap();
    }
    assert_eq!(
        store.session_by_token_hash(&[2; 32]).await.unwrap().map(|s| s.id),
        Some("aps_2".into())
    );
    let page = store.sessions_page(Some("aps_3"), 1).await.unwrap();
    assert_eq!(
        (ids(&page.items, |s| &s.id), page.has_more),
        (vec!["aps_2".to_string()], true)
    );
    let mut renewed = session("aps_1", "apu_1", 1);
    renewed.access_token = Some("at".into());
    assert!(store.replace_session(&renewed).await.unwrap());

    let ended = store.delete_sessions(&["aps_2".into(), "aps_9".into()]).await.unwrap();
    assert_eq!(ids(&ended, |s| &s.id), ["aps_2"]);
    assert_eq!(store.session_by_token_hash(&[2; 32]).await.unwrap(), None);
    assert!(!store.replace_session(&session("aps_2", "apu_1", 2)).await.unwrap());
    let mut active = [renewed.clone(), session("aps_2", "apu_1", 2)];
    active[0].last_active = 50;
    active[1].last_active = 50;
    store.save_activity_batched(&active).await.unwrap();
    store.flush_activity().await.unwrap();
    assert_eq!(
        store.session("aps_2").await.unwrap(),
        None,
        "an ended session stays ended"
    );
    let stored = store.session("aps_1").await.unwrap().unwrap();
    assert_eq!((stored.last_active, stored.access_token.as_deref()), (50, Some("at")));
    assert_eq!(store.all_sessions().await.unwrap().len(), 2);
}

/// Plugin key-value namespaces: expiry, take, delete, get-or-insert, incr, purge.
pub async fn plugin_kv(opener: &Opener) {
    let store = open(opener);
    store.kv_put("ns", "k", b"v", Some(100)).await.unwrap();
    assert_eq!(store.kv_get("ns", "k", 99).await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(store.kv_get("ns", "k", 100).await.unwrap(), None, "expired at its time");
    assert_eq!(
        store.kv_get("other", "k", 0).await.unwrap(),
        None,
        "namespaces never meet"
    );
    assert_eq!(
        store.kv_take("ns", "k", 100).await.unwrap(),
        None,
        "an expired value is not taken"
    );
    store.kv_put("ns", "k", b"v", None).await.unwrap();
    assert_eq!(store.kv_take("ns", "k", 0).await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(store.kv_take("ns", "k", 0).await.unwrap(), None);
    store.kv_put("ns", "d", b"v", None).await.unwrap();
    store.kv_delete("ns", "d").await.unwrap();
    assert_eq!(store.kv_get("ns", "d", 0).await.unwrap(), None);

    assert_eq!(store.kv_get_or_insert("ns", "g", b"first", 0).await.unwrap(), b"first");
    assert_eq!(store.kv_get_or_insert("ns", "g", b"second", 0).await.unwrap(), b"first");
    store.kv_put("ns", "h", b"old", Some(5)).await.unwrap();
    assert_eq!(
        store.kv_get_or_insert("ns", "h", b"new", 5).await.unwrap(),
        b"new",
        "an expired value is replaced"
    );

    assert_eq!(store.kv_incr("ns", "c", 0, Some(10)).await.unwrap(), 1);
    assert_eq!(
        store.kv_incr("ns", "c", 5, Some(99)).await.unwrap(),
        2,
        "the first expiry holds"
    );
    assert_eq!(
        store.kv_incr("ns", "c", 10, Some(20)).await.unwrap(),
        1,
        "an expired counter starts again"
    );

    store.kv_put("ns", "p1", b"", Some(30)).await.unwrap();
    store.kv_put("ns", "p2", b"", Some(40)).await.unwrap();
    let purged = store.kv_purge_expired(35).await.unwrap();
    assert_eq!(purged, 2, "p1 and the counter (expired at 20)");
    assert_eq!(store.kv_get("ns", "p2", 35).await.unwrap(), Some(Vec::new()));
}

/// Of concurrent takers of one key, exactly one gets it; concurrent increments all count.
pub async fn take_once_and_incr_under_concurrency(opener: &Opener) {
    let store: Arc<dyn Storage> = Arc::from(open(opener));
    for round in 0..5 {
        let key = format!("once-{round}");
        store.kv_put("ns", &key, b"v", None).await.unwrap();
        let takers: Vec<_> = (0..8)
            .map(|_| {
                let (store, key) = (store.clone(), key.clone());
                tokio::spawn(async move { store.kv_take("ns", &key, 0).await.unwrap() })
            })
            .collect();
        let mut got = 0;
        for taker in takers {
            got += usize::from(taker.await.unwrap().is_some());
        }
        assert_eq!(got, 1, "round {round}");
    }
    let counters: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.kv_incr("ns", "count", 0, None).await.unwrap() })
        })
        .collect();
    let mut seen = Vec::new();
    for counter in counters {
        seen.push(counter.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=16).collect::<Vec<u64>>());
}

/// Metadata get-or-insert keeps the first value; a lease has one holder until it expires.
pub async fn metadata_and_leases(opener: &Opener) {
    let store = open(opener);
    assert_eq!(store.metadata("key").await.unwrap(), None);
    assert_eq!(store.metadata_get_or_insert("key", b"one").await.unwrap(), b"one");
    assert_eq!(store.metadata_get_or_insert("key", b"two").await.unwrap(), b"one");
    assert_eq!(store.metadata("key").await.unwrap(), Some(b"one".to_vec()));

    assert!(store.try_lease("upkeep", "a", 10, 100).await.unwrap());
    assert!(!store.try_lease("upkeep", "b", 10, 105).await.unwrap());
    assert!(
        store.try_lease("upkeep", "a", 10, 105).await.unwrap(),
        "the holder renews"
    );
    assert!(!store.try_lease("upkeep", "b", 10, 114).await.unwrap());
    assert!(
        store.try_lease("upkeep", "b", 10, 115).await.unwrap(),
        "an expired lease is free"
    );
    assert!(
        store.try_lease("other", "a", 10, 115).await.unwrap(),
        "leases are by name"
    );
}

/// Every write that others derive from is published, in order, with increasing revisions.
pub async fn change_feed(opener: &Opener) {
    let store = open(opener);
    let start = store.revision();
    let mut feed = store.subscribe();
    store.create_backend(&backend("bkdst_a", Source::Api)).await.unwrap();
    store
        .create_api_key(&ApiKey {
            id: "ak_1".into(),
            description: String::new(),
            metadata: String::new(),
            created_at: 0,
            token_hash: [1; 32],
        })
        .await
        .unwrap();
    store.put_user(None, &user("apu_1", "a@example.com")).await.unwrap();
    store.put_session(&session("aps_1", "apu_1", 7)).await.unwrap();
    // Refused and empty writes publish nothing.
    let _ = store.delete_backend("bkdst_none").await.unwrap();
    assert!(store
        .create_edge(&edge("edghts_x", &[], vec![route("r", "bkdst_none")], Source::Api))
        .await
        .is_err());
    assert!(store.delete_sessions(&["aps_none".into()]).await.unwrap().is_empty());
    store.delete_sessions(&["aps_1".into()]).await.unwrap();
    store.delete_user("apu_1").await.unwrap();
    let expected = [
        Change::ConfigObjects,
        Change::ApiKeys,
        Change::People {
            user_id: "apu_1".into(),
        },
        Change::SessionsEnded {
            token_hashes: vec![[7; 32]],
        },
        Change::People {
            user_id: "apu_1".into(),
        },
    ];
    for (i, change) in expected.into_iter().enumerate() {
        let event = feed.try_recv().expect("a published change");
        assert_eq!(
            event,
            ChangeEvent {
                revision: start + 1 + i as u64,
                change
            }
        );
    }
    assert!(feed.try_recv().is_err(), "nothing else was published");
    assert_eq!(store.revision(), start + 5);
}

/// What a write method has written is there after the database is closed and opened again.
pub async fn durability_across_reopen(opener: &Opener) {
    {
        let store = open(opener);
        store.create_backend(&backend("bkdst_a", Source::Api)).await.unwrap();
        store
            .create_edge(&edge(
                "edghts_1",
                &["a.test:443"],
                vec![route("edghtsrt_1", "bkdst_a")],
                Source::Api,
            ))
            .await
            .unwrap();
        store.put_user(None, &user("apu_1", "a@example.com")).await.unwrap();
        store
            .put_user_with_link(
                Some(&user("apu_1", "a@example.com")),
                &user("apu_1", "a@example.com"),
                &link("saml", "s", "apu_1", 1),
            )
            .await
            .unwrap();
        store.put_session(&session("aps_1", "apu_1", 1)).await.unwrap();
        store.put_session(&session("aps_2", "apu_1", 2)).await.unwrap();
        store.delete_sessions(&["aps_2".into()]).await.unwrap();
        store.kv_put("ns", "k", b"v", None).await.unwrap();
        store.kv_incr("ns", "c", 0, None).await.unwrap();
        store.metadata_get_or_insert("m", b"x").await.unwrap();
    }
    let store = open(opener);
    assert!(store.backend("bkdst_a").await.unwrap().is_some());
    assert_eq!(
        store.edge("edghts_1").await.unwrap().map(|e| e.hostports),
        Some(vec!["a.test:443".to_string()])
    );
    assert_eq!(
        store.user_by_email("a@example.com").await.unwrap().map(|u| u.id),
        Some("apu_1".into())
    );
    assert_eq!(
        store.user_by_link("saml", "s").await.unwrap().map(|u| u.id),
        Some("apu_1".into())
    );
    assert_eq!(
        store.session_by_token_hash(&[1; 32]).await.unwrap().map(|s| s.id),
        Some("aps_1".into())
    );
    assert_eq!(store.session("aps_2").await.unwrap(), None);
    assert_eq!(store.kv_get("ns", "k", 0).await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(store.kv_incr("ns", "c", 0, None).await.unwrap(), 2);
    assert_eq!(store.metadata("m").await.unwrap(), Some(b"x".to_vec()));
    // Rules hold over what was reopened.
    assert!(matches!(
        store
            .create_edge(&edge("edghts_2", &["a.test:443"], Vec::new(), Source::Api))
            .await,
        Err(StoreError::Conflict(Conflict::HostportTaken { .. }))
    ));
}
