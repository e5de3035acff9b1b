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
