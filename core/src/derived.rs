//! The follower: the one task that keeps derived state (the route table and the session index)
//! in step with the change feed. Writers (the API, `configure`, `accounts`, sign-in) only write
//! the store; the store publishes each change on its feed ([`crate::store::ChangeFeed`]); the
//! follower applies it: config objects changed -> the route table is rebuilt from the store and
//! the config in force; sessions ended -> the session index drops them. A config reload swaps
//! the config and nudges the follower ([`Derived::config_swapped`]), which rebuilds the table
//! with it. A follower that lagged behind the feed resynchronises everything from the store.
//!
//! The follower publishes what it has applied (the feed revision and the config generation);
//! a face that must see its write reflected waits for it ([`Derived::caught_up`]) with the
//! store's revision read after its write. Started by the composition root (`server.rs`).

use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::routing::RouteTable;
use crate::sessions::Sessions;
use crate::store::{Change, ChangeEvent, Storage, StoreError};
use arc_swap::ArcSwap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;

/// How long the follower waits before it tries again after the store failed it.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// What the follower has applied to derived state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Every change of the feed up to this revision.
    pub revision: u64,
    /// The config swapped in by reload number `config_generation` (0: the one at start-up).
    pub config_generation: u64,
}

/// The follower stopped (the gateway is shutting down): derived state no longer follows.
#[derive(Debug, Clone, thiserror::Error)]
#[error("derived state no longer follows the store (the gateway is stopping)")]
pub struct FollowerStopped;

/// What the follower keeps and reads: the parts of the shared state it derives.
#[derive(Clone)]
pub struct Followed {
    pub store: Arc<dyn Storage>,
    /// The config in force (swapped by `configure`).
    pub config: Arc<ArcSwap<Config>>,
    /// The route table (derived).
    pub routes: Arc<ArcSwap<RouteTable>>,
    pub metrics: Arc<Metrics>,
    /// The session index (derived).
    pub sessions: Arc<Sessions>,
    pub clock: Arc<dyn Clock>,
}

/// The handle writers and faces hold: nudge the follower after a config swap, wait for it.
pub struct Derived {
    store: Arc<dyn Storage>,
    config_generation: AtomicU64,
    config_swapped: Notify,
    applied: watch::Receiver<Applied>,
}

impl Derived {
    /// Tells the follower the config in force was swapped; answers the generation to wait for.
    pub fn config_swapped(&self) -> u64 {
        let generation = self.config_generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.config_swapped.notify_one();
        generation
    }

    /// What the follower has applied so far.
    pub fn applied(&self) -> Applied {
        *self.applied.borrow()
    }

    /// Waits until the follower has applied the feed up to `revision`.
    pub async fn caught_up(&self, revision: u64) -> Result<(), FollowerStopped> {
        self.caught_up_with(revision, 0).await
    }

    /// Waits until derived state shows every write made before this call (the store's revision
    /// read now): what a face calls after its write.
    pub async fn caught_up_to_store(&self) -> Result<(), FollowerStopped> {
        self.caught_up(self.store.revision()).await
    }

    /// Waits until the follower has applied the feed up to `revision` and the config of
    /// generation `config_generation`.
    pub async fn caught_up_with(&self, revision: u64, config_generation: u64) -> Result<(), FollowerStopped> {
        let mut applied = self.applied.clone();
        applied
            .wait_for(|a| a.revision >= revision && a.config_generation >= config_generation)
            .await
            .map(|_| ())
            .map_err(|_| FollowerStopped)
    }
}

/// The running follower task; [`Follower::stop`] ends it (so is dropping it).
pub struct Follower {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Follower {
    /// Stops the follower and waits for it to let go of the store.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!("the change feed's follower ended badly: {e}");
        }
    }
}

/// Builds derived state from the store (the session index, then the route table from the
/// config in force) and starts the follower that keeps it in step with the feed.
pub async fn start(followed: Followed) -> Result<(Arc<Derived>, Follower), StoreError> {
    // Subscribe before reading: a change made during the first build is then also applied.
    let feed = followed.store.subscribe();
    start_following(followed, feed).await
}

/// [`start`] on a given receiver of the feed (tests hand it one that lags).
async fn start_following(
    followed: Followed,
    feed: broadcast::Receiver<ChangeEvent>,
) -> Result<(Arc<Derived>, Follower), StoreError> {
    let revision = followed.store.revision();
    followed
        .sessions
        .load(&*followed.store, followed.clock.now(), revision)
        .await?;
    rebuild_routes(&followed).await?;
    let (applied_tx, applied) = watch::channel(Applied {
        revision,
        config_generation: 0,
    });
    let derived = Arc::new(Derived {
        store: followed.store.clone(),
        config_generation: AtomicU64::new(0),
        config_swapped: Notify::new(),
        applied,
    });
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(follow(followed, derived.clone(), feed, applied_tx, stopped));
    Ok((derived, Follower { stop, task }))
}

/// What a batch of feed events and nudges asks of the follower.
#[derive(Default)]
struct Pending {
    /// The highest revision received.
    revision: u64,
    /// The route table must be rebuilt.
    routes: bool,
    /// Part of the feed was missed: resynchronise everything.
    resync: bool,
}

impl Pending {
    fn take(&mut self, event: ChangeEvent, sessions: &Sessions) {
        self.revision = self.revision.max(event.revision);
        match event.change {
            Change::ConfigObjects => self.routes = true,
            // In memory and infallible: applied at once.
            Change::SessionsEnded { token_hashes } => sessions.apply_ended(&token_hashes, event.revision),
            Change::ApiKeys | Change::People { .. } => {}
        }
    }
}

async fn follow(
    followed: Followed,
    derived: Arc<Derived>,
    mut feed: broadcast::Receiver<ChangeEvent>,
    applied: watch::Sender<Applied>,
    mut stop: watch::Receiver<bool>,
) {
    let mut pending = Pending::default();
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = derived.config_swapped.notified() => pending.routes = true,
            event = feed.recv() => match event {
                Ok(event) => pending.take(event, &followed.sessions),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the change feed's follower lagged: resynchronising from the store");
                    pending.resync = true;
                }
                Err(RecvError::Closed) => return,
            },
            _ = tokio::time::sleep(RETRY_AFTER), if failing => {}
        }
        // Whatever else has come meanwhile goes into the same pass (one rebuild for many).
        loop {
            match feed.try_recv() {
                Ok(event) => pending.take(event, &followed.sessions),
                Err(TryRecvError::Lagged(_)) => pending.resync = true,
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        let mut next = *applied.borrow();
        // Read before the config is: the table built below uses this generation's config or a newer one.
        let generation = derived.config_generation.load(Ordering::SeqCst);
        match apply(&followed, &mut pending).await {
            Ok(rebuilt) => {
                failing = false;
                next.revision = next.revision.max(pending.revision);
                if rebuilt {
                    next.config_generation = next.config_generation.max(generation);
                }
                followed.sessions.set_applied(next.revision);
                applied.send_if_modified(|a| {
                    let changed = *a != next;
                    *a = next;
                    changed
                });
            }
            Err(e) => {
                tracing::error!("keeping derived state: {e} (trying again)");
                failing = true;
            }
        }
    }
}

/// Applies what is pending; answers whether the route table was rebuilt (with the config in
/// force). On error what failed stays pending.
async fn apply(followed: &Followed, pending: &mut Pending) -> Result<bool, StoreError> {
    if pending.resync {
        // Whatever was published up to here is in what is read next.
        let revision = followed.store.revision();
        followed.sessions.resync(&*followed.store, revision).await?;
        rebuild_routes(followed).await?;
        pending.revision = pending.revision.max(revision);
        pending.resync = false;
        pending.routes = false;
        Ok(true)
    } else if pending.routes {
        rebuild_routes(followed).await?;
        pending.routes = false;
        Ok(true)
    } else {
        Ok(false)
    }
}

/// Rebuilds the route table from the store and the config in force, and swaps it in.
async fn rebuild_routes(followed: &Followed) -> Result<(), StoreError> {
    let (backends, edges) = followed.store.config_snapshot().await?;
    let config = followed.config.load();
    let table = RouteTable::build(
        &edges,
        &backends,
        &config.identity_headers,
        config.listeners.edge.scheme(),
        &followed.metrics,
    );
    followed.routes.store(Arc::new(table));
    let live: HashSet<&str> = edges
        .iter()
        .flat_map(|e| e.routes.iter().map(|r| r.id.as_str()))
        .collect();
    followed.metrics.retain_routes(&live);
    Ok(())
}

/// What a follower in tests follows: a store in `dir` (created) and the config of a minimal file.
#[cfg(test)]
pub(crate) fn followed_in(dir: &std::path::Path, clock: Arc<dyn Clock>) -> Followed {
    #![allow(clippy::unwrap_used)]
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("portcullis.toml");
    std::fs::write(
        &file,
        "version = 1\ndata_dir = \"data\"\n[listeners.edge]\naddress = \"127.0.0.1:0\"\n[listeners.console]\naddress = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let config = Config::load(&file).unwrap();
    Followed {
        store: crate::store::open(&config.data_dir).unwrap(),
        config: Arc::new(ArcSwap::from_pointee(config)),
        routes: Arc::new(ArcSwap::from_pointee(RouteTable::default())),
        metrics: Arc::new(Metrics::default()),
        sessions: Arc::new(Sessions::default()),
        clock,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Edge, MatchType, Route, RouteBackend, Source, StaticBackend};

    /// A clock stopped at one instant.
    struct At(i64);

    impl Clock for At {
        fn now(&self) -> i64 {
            self.0
        }
    }

    struct Fixture {
        dir: std::path::PathBuf,
        followed: Followed,
    }

    impl Fixture {
        /// A store in a fresh folder and the config of a minimal file.
        fn new() -> Fixture {
            let dir = std::env::temp_dir().join(crate::ids::new_id("derivedtest", 0));
            let followed = followed_in(&dir, Arc::new(At(1_000_000)));
            Fixture { dir, followed }
        }

        fn routes(&self) -> Arc<RouteTable> {
            self.followed.routes.load_full()
        }

        /// Writes a backend and an edge serving `hostport` with one route on `/`.
        async fn write_edge(&self, hostport: &str) {
            let (backend, edge) = backend_and_edge(hostport);
            self.followed.store.create_backend(&backend).await.unwrap();
            self.followed.store.create_edge(&edge).await.unwrap();
        }

        async fn stop(self, follower: Follower) {
            follower.stop().await;
            drop(self.followed);
            std::fs::remove_dir_all(&self.dir).unwrap();
        }
    }

    /// A backend and an edge serving `hostport` with one route on `/` to it.
    fn backend_and_edge(hostport: &str) -> (StaticBackend, Edge) {
        let backend = StaticBackend {
            id: crate::ids::new_id(crate::ids::STATIC_BACKEND, 0),
            description: String::new(),
            metadata: String::new(),
            created_at: 1,
            address: "127.0.0.1:9".into(),
            tls: false,
            source: Source::Api,
        };
        let edge = Edge {
            id: crate::ids::new_id(crate::ids::HTTPS_EDGE, 0),
            description: String::new(),
            metadata: String::new(),
            created_at: 1,
            hostports: vec![hostport.to_string()],
            routes: vec![Route {
                id: crate::ids::new_id(crate::ids::HTTPS_ROUTE, 0),
                created_at: 1,
                match_type: MatchType::PathPrefix,
                path: "/".into(),
                description: String::new(),
                metadata: String::new(),
                backend: Some(RouteBackend {
                    enabled: true,
                    backend_id: backend.id.clone(),
                }),
                auth: None,
            }],
            source: Source::Api,
        };
        (backend, edge)
    }

    /// Polls `write` once (it commits, then waits on its flush) and drops it, as hyper drops
    /// the handler of a client that hung up; answers whether it was still waiting.
    async fn abandoned(write: impl std::future::Future) -> bool {
        let mut write = std::pin::pin!(write);
        std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx).is_pending())).await
    }

    use crate::sessions::tests::session;

    #[tokio::test]
    async fn a_write_through_the_store_is_in_the_route_table_once_caught_up() {
        let fixture = Fixture::new();
        let (derived, follower) = start(fixture.followed.clone()).await.unwrap();
        assert!(fixture.routes().find("app.test:80", "/").is_none());
        fixture.write_edge("app.test:80").await;
        derived.caught_up_to_store().await.unwrap();
        assert!(fixture.routes().find("app.test:80", "/").is_some());
        assert_eq!(derived.applied().revision, fixture.followed.store.revision());
        fixture.stop(follower).await;
    }

    /// A write's caller dropped after the write committed, while it waited on its flush (an API
    /// client or a browser that hung up): derived state still shows the write, so a revocation
    /// the store has made cannot keep passing at the gate (and can no longer be found to retry),
    /// and an edge the API lists is routed.
    #[tokio::test]
    async fn a_write_whose_caller_went_away_during_its_flush_still_reaches_derived_state() {
        let fixture = Fixture::new();
        let store = fixture.followed.store.clone();
        let (derived, follower) = start(fixture.followed.clone()).await.unwrap();
        let sessions = &fixture.followed.sessions;
        let mut midway = 0;
        for n in 0..20 {
            let (token, hash) = crate::sessions::new_token();
            let stored = session(hash);
            sessions.insert(&*store, stored.clone()).await.unwrap();
            if abandoned(store.delete_sessions(std::slice::from_ref(&stored.id))).await {
                midway += 1;
            }
            assert!(store.session(&stored.id).await.unwrap().is_none());
            derived.caught_up_to_store().await.unwrap();
            assert!(
                sessions.check(&token, "route", 1_000_001).is_none(),
                "an ended session passes"
            );
            let hostport = format!("app{n}.test:80");
            let (backend, edge) = backend_and_edge(&hostport);
            store.create_backend(&backend).await.unwrap();
            // The table is rebuilt for the backend before the edge is written.
            derived.caught_up_to_store().await.unwrap();
            if abandoned(store.create_edge(&edge)).await {
                midway += 1;
            }
            assert!(store.edge(&edge.id).await.unwrap().is_some());
            derived.caught_up_to_store().await.unwrap();
            assert!(
                fixture.routes().find(&hostport, "/").is_some(),
                "a stored edge is not routed"
            );
        }
        // The writes were dropped while they waited (a flush is not done within one poll).
        assert!(midway > 0);
        fixture.stop(follower).await;
    }

    #[tokio::test]
    async fn sessions_the_feed_says_ended_leave_the_index() {
        let fixture = Fixture::new();
        let store = fixture.followed.store.clone();
        let (token, hash) = crate::sessions::new_token();
        let stored = session(hash);
        store.put_session(&stored).await.unwrap();
        let (derived, follower) = start(fixture.followed.clone()).await.unwrap();
        let sessions = &fixture.followed.sessions;
        assert!(sessions.check(&token, "route", 1_000_001).is_some());
        store.delete_sessions(std::slice::from_ref(&stored.id)).await.unwrap();
        derived.caught_up_to_store().await.unwrap();
        assert!(sessions.check(&token, "route", 1_000_002).is_none());
        // And no store lookup brings it back.
        assert!(sessions
            .check_or_load(&*store, &hash, "route", 1_000_003)
            .await
            .is_none());
        fixture.stop(follower).await;
    }

    #[tokio::test]
    async fn a_lagged_follower_resyncs_the_route_table_and_the_session_index_from_the_store() {
        let fixture = Fixture::new();
        let store = fixture.followed.store.clone();
        let (token, hash) = crate::sessions::new_token();
        let stored = session(hash);
        store.put_session(&stored).await.unwrap();
        // A feed of one slot that the test feeds: the store's own events never reach it.
        let (feed, receiver) = broadcast::channel(1);
        let (derived, follower) = start_following(fixture.followed.clone(), receiver).await.unwrap();
        fixture.write_edge("app.test:80").await;
        store.delete_sessions(std::slice::from_ref(&stored.id)).await.unwrap();
        let revision = store.revision();
        // An event that says nothing about config objects or sessions: nothing is rebuilt.
        feed.send(ChangeEvent {
            revision,
            change: Change::ApiKeys,
        })
        .unwrap();
        derived.caught_up(revision).await.unwrap();
        assert!(fixture.routes().find("app.test:80", "/").is_none());
        assert!(fixture.followed.sessions.check(&token, "route", 1_000_001).is_some());
        // Two events into one slot: the follower lags and reads everything again.
        for later in 1..=2 {
            feed.send(ChangeEvent {
                revision: revision + later,
                change: Change::ApiKeys,
            })
            .unwrap();
        }
        derived.caught_up(revision + 2).await.unwrap();
        assert!(fixture.routes().find("app.test:80", "/").is_some());
        assert!(fixture.followed.sessions.check(&token, "route", 1_000_002).is_none());
        fixture.stop(follower).await;
    }

    #[tokio::test]
    async fn a_reload_that_changes_only_identity_headers_rebuilds_the_route_table() {
        let fixture = Fixture::new();
        let (derived, follower) = start(fixture.followed.clone()).await.unwrap();
        assert_eq!(
            fixture.routes().identity_headers.user_id.as_str(),
            "x-portcullis-user-id"
        );
        let mut config = (*fixture.followed.config.load_full()).clone();
        config.identity_headers.user_id = "X-Remote-User".into();
        fixture.followed.config.store(Arc::new(config));
        let generation = derived.config_swapped();
        // Bounded, so a nudge that rebuilds nothing fails the test instead of hanging it.
        let caught_up = derived.caught_up_with(fixture.followed.store.revision(), generation);
        tokio::time::timeout(Duration::from_secs(30), caught_up)
            .await
            .expect("the follower applied the config swap")
            .unwrap();
        assert_eq!(fixture.routes().identity_headers.user_id.as_str(), "x-remote-user");
        fixture.stop(follower).await;
    }

    #[tokio::test]
    async fn a_token_the_index_does_not_know_is_looked_up_in_the_store_once() {
        let fixture = Fixture::new();
        let store = fixture.followed.store.clone();
        let (derived, follower) = start(fixture.followed.clone()).await.unwrap();
        let sessions = &fixture.followed.sessions;
        // A session written after the index was built (as by another replica) is honoured.
        let (token, hash) = crate::sessions::new_token();
        store.put_session(&session(hash)).await.unwrap();
        assert!(sessions.check(&token, "route", 1_000_001).is_none());
        assert!(sessions
            .check_or_load(&*store, &hash, "route", 1_000_001)
            .await
            .is_some());
        assert!(sessions.check(&token, "route", 1_000_002).is_some());
        // A made-up token costs one store read: once the store has said no, it is not asked
        // again (a session stored under that hash afterwards is not seen).
        let (_, made_up) = crate::sessions::new_token();
        assert!(sessions
            .check_or_load(&*store, &made_up, "route", 1_000_001)
            .await
            .is_none());
        store.put_session(&session(made_up)).await.unwrap();
        assert!(sessions
            .check_or_load(&*store, &made_up, "route", 1_000_002)
            .await
            .is_none());
        derived.caught_up_to_store().await.unwrap();
        fixture.stop(follower).await;
    }
}
