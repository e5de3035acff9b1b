//! The composition root and the process lifecycle: build the registry, the store, the session
//! index, the change feed's follower (which builds the route table and keeps derived state),
//! the signer and the egress client into [`Shared`], bind the edge, console, echo and admin
//! listeners, serve HTTP/1.1 and HTTP/2 (with
//! TLS when configured), reload on SIGHUP and drain in-flight requests on SIGTERM; the
//! console's small routes (health, readiness, metrics).

use crate::clock::Clock;
use crate::config::{Config, ListenerConfig};
use crate::configure::{config_error, ApplyError};
use crate::identity::Signer;
use crate::metrics::Metrics;
use crate::pages::{error_page, full, Body};
use crate::plugins::Registry;
use crate::routing::RouteTable;
use crate::sessions::Sessions;
use crate::state::Shared;
use crate::store::StoreError;
use arc_swap::ArcSwap;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Apply(#[from] ApplyError),
    #[error("cannot listen on {address} for the {listener} listener: {reason}")]
    Bind {
        listener: &'static str,
        address: SocketAddr,
        reason: String,
    },
    #[error("TLS for the {listener} listener: {reason}")]
    Tls { listener: &'static str, reason: String },
    #[error("{file}: {reason}")]
    Plugin { file: String, reason: String },
}

/// How to build a gateway beyond its config (tests inject a clock and extra plugins).
pub struct StartOptions {
    pub clock: Arc<dyn crate::clock::Clock>,
    /// Linked-in plugins registered besides the built-ins (before libraries).
    pub extra_plugins: Vec<Arc<dyn portcullis_plugin_sdk::Plugin>>,
    /// How often the background upkeep runs (tests that move a `ManualClock` shorten it, so
    /// the real upkeep acts on the new time without a test waiting ten seconds).
    pub upkeep_interval: Duration,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            clock: Arc::new(crate::clock::SystemClock),
            extra_plugins: Vec::new(),
            upkeep_interval: UPKEEP_INTERVAL,
        }
    }
}

/// How often the background upkeep runs in production.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often the upkeep sweeps expired sessions and plugin state (every so many runs).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A running gateway: its listeners, addresses and shared state.
pub struct Gateway {
    shared: Arc<Shared>,
    /// Where the edge listener is bound.
    pub edge_addr: SocketAddr,
    /// Where the console listener (API, health, metrics) is bound.
    pub console_addr: SocketAddr,
    /// Where the demo echo upstream is bound, when configured.
    pub echo_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// The change feed's follower, stopped after the listeners.
    follower: crate::derived::Follower,
}

impl Gateway {
    /// Opens the store, applies the config's objects and starts every listener.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        Self::start_with(config, StartOptions::default()).await
    }

    /// [`Gateway::start`] with a clock and extra plugins.
    pub async fn start_with(config: Config, options: StartOptions) -> Result<Gateway, StartError> {
        let data_dir = config.data_dir.clone();
        let header_timeout = config.proxy.header_read_timeout();
        let grace = config.proxy.shutdown_grace();
        let proxy_config = config.proxy.clone();
        let listeners = config.listeners.clone();
        let echo = config.echo.clone();
        let upkeep_interval = options.upkeep_interval.max(Duration::from_millis(10));
        // Plugin libraries are loaded before any listener takes traffic.
        let registry = crate::plugins::Registry::load(&config.plugins, options.extra_plugins, options.clock.clone())
            .map_err(|reason| StartError::Plugin {
                file: config.file.display().to_string(),
                reason: reason.to_string(),
            })?;
        for plugin in registry.iter() {
            tracing::info!(plugin = %plugin.info.name, version = %plugin.info.version, origin = %plugin.origin, "plugin registered");
        }
        let (shared, follower) = open_shared(config, Arc::new(registry), options.clock).await?;
        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();

        let (edge, edge_tls) = bind("edge", &listeners.edge, &data_dir).await?;
        let (console, console_tls) = bind("console", &listeners.console, &data_dir).await?;
        let edge_addr = local_addr("edge", &edge)?;
        let console_addr = local_addr("console", &console)?;

        // The edge runs one single-threaded runtime per worker, nginx-style: each has its own
        // listening socket on the same address (SO_REUSEPORT; the kernel spreads connections)
        // and its own upstream connection pool, so a request never hops between threads.
        let opts = ServeOptions { header_timeout, grace };
        let client_error = |reason: String| StartError::Bind {
            listener: "edge",
            address: edge_addr,
            reason,
        };
        let client = crate::proxy::EdgePool::for_config(&proxy_config).map_err(|e| client_error(e.to_string()))?;
        let s = shared.clone();
        tasks.spawn(serve(
            edge,
            edge_tls.clone(),
            shutdown.subscribe(),
            opts,
            move |req, peer, is_tls| crate::proxy::handle(s.clone(), client.clone(), req, peer, is_tls),
        ));
        for worker in 1..edge_workers(proxy_config.workers) {
            let client = crate::proxy::EdgePool::for_config(&proxy_config).map_err(|e| client_error(e.to_string()))?;
            let (shared, tls, stop) = (shared.clone(), edge_tls.clone(), shutdown.subscribe());
            let (done, finished) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("edge-worker-{worker}"))
                .spawn(move || {
                    let runtime = crate::server::worker_runtime();
                    match runtime {
                        Ok(runtime) => runtime.block_on(async move {
                            match reuseport_listener(edge_addr) {
                                Ok(listener) => {
                                    serve(listener, tls, stop, opts, move |req, peer, is_tls| {
                                        crate::proxy::handle(shared.clone(), client.clone(), req, peer, is_tls)
                                    })
                                    .await
                                }
                                Err(e) => tracing::error!("edge worker {worker} cannot listen on {edge_addr}: {e}"),
                            }
                        }),
                        Err(e) => tracing::error!("edge worker {worker} cannot start a runtime: {e}"),
                    }
                    let _ = done.send(());
                })
                .map_err(|e| client_error(format!("cannot start edge worker {worker}: {e}")))?;
            tasks.spawn(async move {
                let _ = finished.await;
            });
        }
        let s = shared.clone();
        tasks.spawn(serve(
            console,
            console_tls,
            shutdown.subscribe(),
            opts,
            move |req, peer, is_tls| console_handle(s.clone(), req, peer, is_tls),
        ));

        let echo_addr = match echo {
            Some(echo) => {
                let listener = TcpListener::bind(echo.address).await.map_err(|e| StartError::Bind {
                    listener: "echo",
                    address: echo.address,
                    reason: e.to_string(),
                })?;
                let addr = local_addr("echo", &listener)?;
                tasks.spawn(serve(
                    listener,
                    None,
                    shutdown.subscribe(),
                    opts,
                    |req, _, _| async move { crate::echo::handle(req).await },
                ));
                Some(addr)
            }
            None => None,
        };

        let admin = crate::admin::bind(&data_dir).map_err(|e| StartError::Bind {
            listener: "admin socket",
            address: SocketAddr::from(([0, 0, 0, 0], 0)),
            reason: format!("{}: {e}", crate::admin::socket_path(&data_dir).display()),
        })?;
        let s = shared.clone();
        let mut stop = shutdown.subscribe();
        tasks.spawn(async move {
            tokio::select! {
                _ = crate::admin::serve(admin, s) => {}
                _ = stop.changed() => {}
            }
        });

        let s = shared.clone();
        let mut stop = shutdown.subscribe();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(upkeep_interval);
            let sweep_every = u64::try_from(SWEEP_EVERY.as_millis() / upkeep_interval.as_millis())
                .unwrap_or(1)
                .max(1);
            let mut ticks: u64 = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => {
                        maintain(&s, false).await;
                        return;
                    }
                }
                ticks += 1;
                maintain(&s, ticks % sweep_every == 0).await;
            }
        });

        shared.ready.store(true, Ordering::SeqCst);
        Ok(Gateway {
            shared,
            edge_addr,
            console_addr,
            echo_addr,
            shutdown,
            tasks,
            follower,
        })
    }

    /// The state shared by the listeners.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Loads `path` and applies it; on error the running config stays.
    pub async fn reload(&self, path: &Path, data_dir_override: Option<&Path>) -> Result<(), ApplyError> {
        let mut config = Config::load(path)?;
        if let Some(dir) = data_dir_override {
            config.data_dir = dir.to_path_buf();
        }
        let old = self.shared.config.load_full();
        let mut needs_restart = Vec::new();
        if old.plugins != config.plugins {
            needs_restart.push("plugin");
        }
        if old.listeners != config.listeners {
            needs_restart.push("listeners");
        }
        if old.proxy != config.proxy {
            needs_restart.push("proxy");
        }
        if old.log != config.log {
            needs_restart.push("log");
        }
        if old.echo != config.echo {
            needs_restart.push("echo");
        }
        if old.data_dir != config.data_dir {
            needs_restart.push("data_dir");
        }
        crate::configure::apply_config(&self.shared, config).await?;
        if !needs_restart.is_empty() {
            tracing::warn!(
                "config reloaded, but changes to [{}] take effect only after a restart",
                needs_restart.join("], [")
            );
        }
        Ok(())
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace period), and returns.
    pub async fn shutdown(mut self) {
        self.shared.ready.store(false, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        let _ = std::fs::remove_file(crate::admin::socket_path(&self.shared.config.load().data_dir));
        // The database closes when the last holder of the shared state lets go (a task of a
        // worker runtime being torn down, a plugin call finishing): wait, bounded, so that
        // the data dir can be opened again as soon as this returns.
        let Gateway { shared, follower, .. } = self;
        follower.stop().await;
        for _ in 0..500 {
            if Arc::strong_count(&shared) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Err(e) = shared.store.flush_activity().await {
            tracing::error!("final flush: {e}");
        }
    }
}

/// Opens the store for `config`, builds the state the listeners share around it, starts the
/// change feed's follower, and applies the config's declared objects (answering once the route
/// table shows them, before any listener takes traffic).
async fn open_shared(
    config: Config,
    registry: Arc<Registry>,
    clock: Arc<dyn Clock>,
) -> Result<(Arc<Shared>, crate::derived::Follower), ApplyError> {
    // sled releases its lock from a background thread a moment after the database is
    // dropped: a restart right after a stop waits for it briefly.
    let mut attempts = 0;
    let store = loop {
        match crate::store::open(&config.data_dir) {
            Err(StoreError::Locked { .. }) if attempts < 60 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => break other?,
        }
    };
    let client_error = |e: crate::upstream::ConnectorError| {
        config_error(
            &config.file.display().to_string(),
            "proxy.upstream_ca_file",
            e.to_string(),
        )
    };
    let egress_client = crate::egress::egress_client(&config.proxy).map_err(client_error)?;
    let followed = crate::derived::Followed {
        store: store.clone(),
        config: Arc::new(ArcSwap::from_pointee(config.clone())),
        routes: Arc::new(ArcSwap::from_pointee(RouteTable::default())),
        metrics: Arc::new(Metrics::default()),
        sessions: Arc::new(Sessions::default()),
        clock: clock.clone(),
    };
    let (derived, follower) = crate::derived::start(followed.clone()).await?;
    let shared = Arc::new(Shared {
        egress_client,
        accounts: Arc::new(crate::accounts::Accounts::new(
            store.clone(),
            followed.sessions.clone(),
            derived.clone(),
            clock.clone(),
        )),
        sessions: followed.sessions,
        derived,
        signer: Signer::load_or_create(&*store).await?,
        registry,
        clock,
        proxy_config: config.proxy.clone(),
        config: followed.config,
        store,
        routes: followed.routes,
        metrics: followed.metrics,
        ready: AtomicBool::new(false),
        rechecking: AtomicBool::new(false),
        recheck_passes: AtomicU64::new(0),
    });
    crate::configure::apply_config(&shared, config).await?;
    Ok((shared, follower))
}

/// A single-threaded runtime for an edge worker or the main thread. Its blocking pool (where
/// plugin calls run) is kept small and its threads long-lived: a login is CPU work (XML
/// signatures), and a pool that grows to one thread per waiting request and lets them die
/// between bursts spends its time on fresh thread stacks and allocator pages instead.
pub fn worker_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_keep_alive(Duration::from_secs(300))
        .build()
}

/// Threads per runtime for plugin calls and other blocking work: enough to overlap calls that
/// wait on an identity provider, few enough to keep a burst of logins on warm threads.
const BLOCKING_THREADS: usize = 8;

/// Background upkeep: persist session activity (batched off the hot path), re-check sessions
/// whose identity provider should confirm access again, and, when `sweep`,
/// end expired sessions and purge expired plugin state.
async fn maintain(shared: &Arc<Shared>, sweep: bool) {
    if let Err(e) = shared.sessions.persist_activity(&*shared.store).await {
        tracing::error!("persisting session activity: {e}");
    }
    // Re-checks wait on identity providers: they run beside the upkeep, one pass at a time.
    if !shared.rechecking.swap(true, std::sync::atomic::Ordering::AcqRel) {
        let shared = shared.clone();
        tokio::spawn(async move {
            crate::signin::recheck_sessions(&shared).await;
            shared.recheck_passes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            shared.rechecking.store(false, std::sync::atomic::Ordering::Release);
        });
    }
    if sweep {
        let now = shared.clock.now();
        if let Err(e) = shared.accounts.end_expired_sessions(now).await {
            tracing::error!("removing expired sessions: {e}");
        }
        // A scan of every plugin key: off the runtime thread that also serves the console.
        let store = shared.store.clone();
        let purged = tokio::task::spawn_blocking(move || {
            tokio::runtime::Handle::current().block_on(store.kv_purge_expired(now))
        })
        .await;
        match purged {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("purging expired plugin state: {e}"),
            Err(e) => tracing::error!("purging expired plugin state did not finish: {e}"),
        }
    }
}

/// Runs the gateway until SIGTERM or SIGINT, reloading `config_path` on SIGHUP.
pub async fn run(config: Config, config_path: PathBuf, data_dir_override: Option<PathBuf>) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let signal_error = |e: std::io::Error| StartError::Bind {
        listener: "signal handler",
        address: SocketAddr::from(([0, 0, 0, 0], 0)),
        reason: e.to_string(),
    };
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_error)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let gateway = Gateway::start(config).await?;
    let config = gateway.shared().config.load_full();
    tracing::info!(
        edge = %public(&config.listeners.edge, gateway.edge_addr),
        console = %public(&config.listeners.console, gateway.console_addr),
        api = %format!("{}{}", public(&config.listeners.console, gateway.console_addr), crate::api::PREFIX),
        data_dir = %config.data_dir.display(),
        "portcullis is serving"
    );
    for (name, edge) in &config.edges {
        for hostport in &edge.hostports {
            let scheme = if config.listeners.edge.tls.is_some() {
                "https"
            } else {
                "http"
            };
            tracing::info!("edge `{name}`: {scheme}://{hostport}/  {}", edge.description);
        }
    }
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                match gateway.reload(&config_path, data_dir_override.as_deref()).await {
                    Ok(()) => tracing::info!(config = %config_path.display(), "config reloaded"),
                    Err(e) => tracing::error!("config reload refused, the running config stays: {e}"),
                }
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!("shutting down: finishing in-flight requests");
    gateway.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn public(listener: &ListenerConfig, bound: SocketAddr) -> String {
    match &listener.public_url {
        Some(_) => listener.public_url(),
        None => format!("{}://{bound}", if listener.tls.is_some() { "https" } else { "http" }),
    }
}

/// How many edge workers to run: `workers`, or one per core this process may use.
fn edge_workers(workers: usize) -> usize {
    if workers > 0 {
        workers
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// A listening socket that shares its address with the other edge workers' sockets.
fn reuseport_listener(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}

async fn bind(
    name: &'static str,
    listener: &ListenerConfig,
    data_dir: &Path,
) -> Result<(TcpListener, Option<TlsAcceptor>), StartError> {
    let tls = match &listener.tls {
        Some(tls) => Some(TlsAcceptor::from(
            crate::tls::server_config(tls, data_dir, name).map_err(|e| StartError::Tls {
                listener: name,
                reason: e.to_string(),
            })?,
        )),
        None => None,
    };
    // The edge's socket shares its address with the other edge workers' (SO_REUSEPORT).
    let socket = if name == "edge" {
        reuseport_listener(listener.address)
    } else {
        TcpListener::bind(listener.address).await
    };
    let socket = socket.map_err(|e| StartError::Bind {
        listener: name,
        address: listener.address,
        reason: e.to_string(),
    })?;
    Ok((socket, tls))
}

fn local_addr(name: &'static str, listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|e| StartError::Bind {
        listener: name,
        address: SocketAddr::from(([0, 0, 0, 0], 0)),
        reason: e.to_string(),
    })
}

#[derive(Clone, Copy)]
struct ServeOptions {
    header_timeout: Duration,
    grace: Duration,
}

/// Accepts connections until shutdown, then waits for open connections to finish.
async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    opts: ServeOptions,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr, bool) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let is_tls = tls.is_some();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req, peer, is_tls).await) }
        });
        match &tls {
            None => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                let timeout = opts.header_timeout;
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(opts.grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period of {:?} ended with connections still open", opts.grace);
    }
}

/// The console listener: health, readiness, metrics, the management API and the provisioning
/// plugins' paths.
async fn console_handle(shared: Arc<Shared>, req: Request<Incoming>, peer: SocketAddr, is_tls: bool) -> Response<Body> {
    let path = req.uri().path();
    if path == crate::api::PREFIX || path.starts_with("/api/") {
        return crate::api::handle(shared, req, peer).await;
    }
    if let Some(plugin) = shared.registry.provisioning_plugin(path) {
        return crate::provisioning::handle(&shared, plugin.clone(), req, peer, is_tls).await;
    }
    let response = match path {
        "/healthz" => text(StatusCode::OK, "ok\n", "text/plain; charset=utf-8"),
        "/readyz" if shared.ready.load(Ordering::SeqCst) => {
            text(StatusCode::OK, "ready\n", "text/plain; charset=utf-8")
        }
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready\n",
            "text/plain; charset=utf-8",
        ),
        "/metrics" => text(
            StatusCode::OK,
            &shared.metrics.render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => error_page(
            StatusCode::NOT_FOUND,
            "Not found",
            "Nothing is served at this path of the console.",
            &crate::ids::new_request_id(),
        ),
    };
    tracing::debug!(target: "portcullis::access", method = %req.method(), path, status = response.status().as_u16(), "console request");
    response
}

fn text(status: StatusCode, body: &str, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
