//! The edge handler: every edge request goes through its phases, in this order, in
//! [`handle`] (the one place the order is written):
//!
//! 1. normalise: the request's `host:port` and its path ([`routing::normalize_path`]); a path
//!    upstreams could read otherwise is a 400;
//! 2. route: a reserved `/_portcullis/` path goes to [`crate::signin::reserved`]; any other
//!    path is matched in the [`RouteTable`] (none: 404);
//! 3. access rules: none yet (an empty phase until IP policies arrive, see `access_rules`);
//! 4. session gate: [`gate::gate`] (cookie -> session index, or the store once when the index
//!    does not know the token; never a plugin, never a store write);
//! 5. sign-in or forward: a request the gate found not signed in goes to
//!    [`crate::signin::start`]; a passed one is forwarded to the route's upstream with its
//!    identity headers, streaming bodies both ways, relaying WebSocket upgrades (and no other
//!    protocol switch), with a readable page when the client's request body is malformed or
//!    stalls or the upstream fails;
//! 6. log: the route's metrics and the access log line.

use crate::gate::{self, Gate};
use crate::metrics::UpstreamError;
use crate::pages::{error_page, Body};
use crate::routing::{self, RouteTable, RouteTarget, Upstream};
use crate::sessions::SessionEntry;
use crate::state::Shared;
use crate::upstream::{error_chain, UpstreamPool};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The upstream pool of one edge worker: its requests carry the client's watched body.
pub type EdgePool = UpstreamPool<ClientBody>;

/// Headers that describe one hop and are never forwarded (RFC 9110 section 7.6.1), with
/// `Upgrade` (set again only for a WebSocket upgrade) and `HTTP2-Settings`, which exists only
/// to upgrade one connection to h2c (RFC 7540 section 3.2.1).
const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Serves one edge request, phase by phase (see the module's documentation).
pub async fn handle(
    shared: Arc<Shared>,
    client: Arc<EdgePool>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    is_tls: bool,
) -> Response<Body> {
    let started = Instant::now();
    let request_id = crate::ids::new_request_id();
    // Phase 1, normalise: the host and the path routing (and the upstream) will see.
    // Cheap clones (reference counts) that outlive `req`, which the proxy consumes.
    let uri = req.uri().clone();
    let host_header = req.headers().get(header::HOST).cloned();
    let host = request_host(host_header.as_ref(), &uri, is_tls);
    let table = shared.routes.load_full();
    let method = req.method().clone();
    let (path, bad_path) = match crate::routing::normalize_path(uri.path()) {
        Ok(path) => (path, None),
        Err(reason) => (std::borrow::Cow::Borrowed(uri.path()), Some(reason)),
    };
    // Phase 2, route: the gateway's reserved paths, or the route table.
    let edge_host = host.as_deref().filter(|h| table.has_edge(h));
    let mut target = None;
    let response = match edge_host {
        Some(_) if bad_path.is_some() => {
            let reason = bad_path.unwrap_or_default();
            error_page(
                StatusCode::BAD_REQUEST,
                "Bad request",
                &format!("The gateway does not accept this address: {reason}."),
                &request_id,
            )
        }
        Some(hostport) if path.starts_with(crate::signin::RESERVED_PREFIX) => {
            // The gateway's own paths, and the plugin behind them, read the path routing chose.
            match with_path(req.uri(), &path) {
                Some(normalized) => {
                    *req.uri_mut() = normalized;
                    crate::signin::reserved(&shared, &table, hostport, req, peer, is_tls, &request_id).await
                }
                None => error_page(
                    StatusCode::BAD_REQUEST,
                    "Bad request",
                    "The request target is not a valid path.",
                    &request_id,
                ),
            }
        }
        _ => {
            target = edge_host.and_then(|h| table.find(h, &path)).cloned();
            match &target {
                None => {
                    shared
                        .metrics
                        .unmatched
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    error_page(
                        StatusCode::NOT_FOUND,
                        "No route",
                        "No route on this gateway serves this address.",
                        &request_id,
                    )
                }
                // Phase 3, access rules (none yet).
                Some(target) => match access_rules(target, peer) {
                    Some(refusal) => refusal,
                    // Phase 4, the session gate; phase 5, sign-in or forward.
                    None => match gate::gate(&shared.sessions, &*shared.store, shared.clock.as_ref(), target, &req)
                        .await
                    {
                        Gate::SignIn(auth) => {
                            crate::signin::start(&shared, &table, target, auth, &req, peer, is_tls, &request_id).await
                        }
                        Gate::Pass(session) => match &target.upstream {
                            None => error_page(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "Route has no backend",
                                "The route for this address has no enabled backend.",
                                &request_id,
                            ),
                            Some(upstream) => {
                                let upgrade = wants_websocket(&req).then(|| hyper::upgrade::on(&mut req));
                                let hop = Hop {
                                    shared: &shared,
                                    client: &client,
                                    table: &table,
                                    target,
                                    upstream,
                                    peer,
                                    is_tls,
                                    request_id: &request_id,
                                    normalized_path: &path,
                                };
                                forward(hop, req, session.as_deref(), upgrade).await
                            }
                        },
                    },
                },
            }
        }
    };
    // Phase 6, log.
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    if let Some(target) = &target {
        target.metrics.observe(status, elapsed);
    }
    tracing::info!(
        target: "portcullis::access",
        request_id = %request_id,
        %method,
        host = host.as_deref().unwrap_or("-"),
        path = %path,
        status,
        route = target.as_ref().map_or("-", |t| t.route_id.as_str()),
        duration_us = elapsed.as_micros() as u64,
        "edge request"
    );
    response
}

/// The access-rules phase: whether the route's access rules refuse the request before the
/// session gate sees it. There are none yet: IP policies (an issue of their own) will fill
/// this phase; until then every request passes it.
#[inline]
fn access_rules(_target: &RouteTarget, _peer: SocketAddr) -> Option<Response<Body>> {
    None
}

/// Everything about one forwarded request but the request itself.
struct Hop<'a> {
    shared: &'a Shared,
    client: &'a Arc<EdgePool>,
    table: &'a RouteTable,
    target: &'a RouteTarget,
    upstream: &'a Upstream,
    peer: SocketAddr,
    is_tls: bool,
    request_id: &'a str,
    /// The normalised path, sent upstream in place of the raw one.
    normalized_path: &'a str,
}

async fn forward(
    hop: Hop<'_>,
    req: Request<Incoming>,
    session: Option<&SessionEntry>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    let Hop {
        shared,
        client,
        table,
        target,
        upstream,
        peer,
        is_tls,
        request_id,
        normalized_path,
    } = hop;
    let original_host = routing::original_host(&req);
    let (mut parts, body) = req.into_parts();
    // A chunked body's framing is the client's: its first chunk is read (and so checked)
    // before the upstream is contacted, so a malformed one reaches no upstream.
    let chunked = parts.version <= Version::HTTP_11 && parts.headers.contains_key(header::TRANSFER_ENCODING);
    let mut body = ClientBody::new(body, shared.proxy_config.body_idle_timeout());
    let body_progress = body.progress();
    if chunked {
        if let Err(failure) = body.read_first_frame().await {
            return client_body_page(failure, request_id);
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    gate::set_identity_headers(
        &shared.signer,
        shared.clock.as_ref(),
        table,
        target,
        &mut parts.headers,
        session,
    );
    if parts.version >= Version::HTTP_2 {
        join_cookie_fields(&mut parts.headers);
    }
    if client_upgrade.is_some() {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    // Origin-form (path and query only), as RFC 9112 section 3.2.1 asks of a request to an
    // origin server: many servers and frameworks route on the raw request target.
    let Some(uri) = with_path(&parts.uri, normalized_path) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The request target is not a valid path.",
            request_id,
        );
    };
    let path_and_query = uri.path_and_query().cloned();
    parts.uri = Uri::from(path_and_query.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
    parts.version = Version::HTTP_11;
    if let Some(host) = &original_host {
        parts.headers.insert(header::HOST, host.clone());
    }
    routing::set_forwarding_headers(&mut parts.headers, peer, is_tls, original_host.as_ref());
    if let Ok(id) = HeaderValue::from_str(request_id) {
        parts.headers.insert(X_REQUEST_ID, id);
    }
    let request = Request::from_parts(parts, body);
    let timeout = shared.proxy_config.upstream_response_timeout();
    // The upstream has `timeout` to answer once it has taken the request body: time spent
    // waiting on the client for more of it is not the upstream's (the body's own idle timeout
    // bounds that), nor is a long upload that keeps moving. Checked once per `timeout`: a
    // period in which the body moved, or that ends waiting on the client, starts another, so
    // an upstream that has stopped taking the body answers within one to two `timeout`s.
    let send = client.send(upstream, request);
    tokio::pin!(send);
    let mut frames = body_progress.frames();
    let result = loop {
        match tokio::time::timeout(timeout, &mut send).await {
            Ok(result) => break Ok(result),
            Err(elapsed) => {
                let moved = body_progress.frames();
                if moved == frames && !body_progress.waiting_on_client() {
                    break Err(elapsed);
                }
                frames = moved;
            }
        }
    };
    let mut response = match result {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            // The client's body failed: its error, not the upstream's.
            if let Some(failure) = body_progress.failure() {
                tracing::info!(request_id, route = %target.route_id, error = %error_chain(&e), "request body refused: {failure:?}");
                return client_body_page(failure, request_id);
            }
            let kind = if matches!(e, crate::upstream::UpstreamError::Connect(_)) {
                UpstreamError::Connect
            } else {
                UpstreamError::Other
            };
            target.metrics.upstream_error(kind);
            tracing::warn!(request_id, route = %target.route_id, upstream = %upstream.authority, error = %error_chain(&e), "upstream request failed");
            return error_page(
                StatusCode::BAD_GATEWAY,
                "Upstream unavailable",
                "The gateway could not get a response from the application behind this route.",
                request_id,
            );
        }
        Err(_) => {
            target.metrics.upstream_error(UpstreamError::Timeout);
            tracing::warn!(request_id, route = %target.route_id, upstream = %upstream.authority, "upstream timed out after {timeout:?}");
            return error_page(
                StatusCode::GATEWAY_TIMEOUT,
                "Upstream timed out",
                "The application behind this route did not answer in time.",
                request_id,
            );
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Only a WebSocket the client asked for is relayed; any other switch would hand the
        // upstream a raw connection the gateway no longer sees (h2c smuggling).
        let to_websocket = response
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let Some(client_upgrade) = client_upgrade.filter(|_| to_websocket) else {
            target.metrics.upstream_error(UpstreamError::Other);
            tracing::warn!(request_id, route = %target.route_id, upstream = %upstream.authority, "upstream switched protocols unasked; not relayed");
            return error_page(
                StatusCode::BAD_GATEWAY,
                "Upstream unavailable",
                "The application behind this route answered with a protocol switch the gateway does not relay.",
                request_id,
            );
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let request_id = request_id.to_string();
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                        tracing::debug!(request_id, "upgraded connection ended: {e}");
                    }
                }
                Err(e) => tracing::warn!(request_id, "protocol upgrade failed: {e}"),
            }
        });
        return response.map(|body| body.boxed());
    }
    strip_hop_by_hop(response.headers_mut());
    response.map(|body| body.boxed())
}

/// `uri` with its path replaced by the normalised `path` (its query kept); `uri` itself, with
/// no copy or re-parse, when normalisation left the path as it was. `None` when the result is
/// not a valid URI.
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    if uri.path() == path {
        return Some(uri.clone());
    }
    let rewritten = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(rewritten.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// The request's `host:port`, lower-cased, with the listener's default port added when absent.
fn request_host<'a>(
    host_header: Option<&'a HeaderValue>,
    uri: &'a Uri,
    is_tls: bool,
) -> Option<std::borrow::Cow<'a, str>> {
    let raw = match host_header {
        Some(value) => value.to_str().ok()?,
        None => uri.authority()?.as_str(),
    };
    // The common case, already `name:port` in lower case, needs no parsing.
    if let Some((name, port)) = raw.split_once(':') {
        let plain_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if plain_name && port.parse::<u16>().is_ok_and(|p| p > 0) && !port.starts_with(['+', '0']) {
            return Some(std::borrow::Cow::Borrowed(raw));
        }
    }
    let authority: http::uri::Authority = raw.parse().ok()?;
    let host = authority.host().to_ascii_lowercase();
    let port = authority.port_u16().unwrap_or(if is_tls { 443 } else { 80 });
    Some(std::borrow::Cow::Owned(format!("{host}:{port}")))
}

/// Whether the request asks to upgrade its connection to a WebSocket (RFC 6455: an HTTP/1.1
/// GET whose `Upgrade` names `websocket` alone). No other upgrade is relayed: the request
/// goes upstream as a plain request, its `Upgrade` removed.
fn wants_websocket<B>(req: &Request<B>) -> bool {
    let mut upgrades = req.headers().get_all(header::UPGRADE).iter();
    let only_websocket = matches!(
        (upgrades.next(), upgrades.next()),
        (Some(p), None) if p.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket")
    );
    req.version() == Version::HTTP_11
        && req.method() == http::Method::GET
        && only_websocket
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass to see whether there is anything to do: most messages carry none of them.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Joins the `cookie` fields of an HTTP/2 request into one, with "; " between them, as RFC 9113
/// section 8.2.3 asks before a request goes on over HTTP/1.1 (which allows one `Cookie` line).
fn join_cookie_fields(headers: &mut HeaderMap) {
    // Most requests have one field or none: nothing to do, nothing allocated.
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let fields: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(joined) = HeaderValue::from_bytes(&fields.join(&b"; "[..])) {
        headers.insert(header::COOKIE, joined);
    }
}

/// Why a client's request body failed on its way upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// Bad framing (a malformed chunk), or the client went away mid-body.
    Malformed = 1,
    /// The client paused longer than `proxy.body_idle_timeout_secs`.
    TimedOut = 2,
}

/// The page for a request whose body failed: the client's error, so a 4xx, and the
/// connection closes after it.
fn client_body_page(failure: BodyFailure, request_id: &str) -> Response<Body> {
    let mut page = match failure {
        BodyFailure::Malformed => error_page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The request body was malformed or incomplete.",
            request_id,
        ),
        BodyFailure::TimedOut => error_page(
            StatusCode::REQUEST_TIMEOUT,
            "Request timed out",
            "The request body stopped arriving.",
            request_id,
        ),
    };
    page.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    page
}

/// What a [`ClientBody`] tells the proxy while it goes upstream.
#[derive(Default)]
struct BodyState {
    /// A [`BodyFailure`], once the body failed (0 before).
    failure: AtomicU8,
    /// Frames read from the client so far.
    frames: AtomicU64,
    /// Whether the body waits on the client for its next frame.
    waiting_on_client: AtomicBool,
}

/// The proxy's view of a [`ClientBody`]'s [`BodyState`] (none for a request without a body).
pub struct BodyProgress(Option<Arc<BodyState>>);

impl BodyProgress {
    /// Why the body failed, once it has.
    fn failure(&self) -> Option<BodyFailure> {
        match self.0.as_ref()?.failure.load(Ordering::Acquire) {
            1 => Some(BodyFailure::Malformed),
            2 => Some(BodyFailure::TimedOut),
            _ => None,
        }
    }

    fn frames(&self) -> u64 {
        self.0.as_ref().map_or(0, |state| state.frames.load(Ordering::Acquire))
    }

    fn waiting_on_client(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|state| state.waiting_on_client.load(Ordering::Acquire))
    }
}

/// A client's request body on its way upstream. It fails (and records why) when the
/// client's framing is bad or when it waits on the client longer than the idle timeout;
/// waiting on the upstream to take more counts for nothing. A body that turns out malformed
/// after forwarding began is cut off there: the upstream gets an incomplete request.
pub struct ClientBody {
    inner: Incoming,
    /// The first frame, when it was read before the upstream was contacted.
    first: Option<Frame<Bytes>>,
    /// `None` for a request without a body (nothing to wait for, nothing allocated).
    watch: Option<Box<BodyWatch>>,
}

struct BodyWatch {
    idle_timeout: Duration,
    /// Armed while the client's next frame is awaited.
    idle: Pin<Box<tokio::time::Sleep>>,
    state: Arc<BodyState>,
}

/// Why a [`ClientBody`] failed, as the upstream connection sees it.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the client sent nothing of its body for {0:?}")]
    Idle(Duration),
    #[error("reading the client's body")]
    Read(#[source] hyper::Error),
}

impl ClientBody {
    fn new(inner: Incoming, idle_timeout: Duration) -> ClientBody {
        let watch = (!inner.is_end_stream()).then(|| {
            Box::new(BodyWatch {
                idle_timeout,
                idle: Box::pin(tokio::time::sleep(idle_timeout)),
                state: Arc::default(),
            })
        });
        ClientBody {
            inner,
            first: None,
            watch,
        }
    }

    fn progress(&self) -> BodyProgress {
        BodyProgress(self.watch.as_ref().map(|w| w.state.clone()))
    }

    /// Reads the first frame now (it is sent upstream first later).
    async fn read_first_frame(&mut self) -> Result<(), BodyFailure> {
        match self.frame().await {
            Some(Ok(frame)) => {
                self.first = Some(frame);
                Ok(())
            }
            None => Ok(()),
            Some(Err(_)) => Err(self.progress().failure().unwrap_or(BodyFailure::Malformed)),
        }
    }
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Some(watch) = this.watch.as_mut() else {
            return polled.map_err(ClientBodyError::Read);
        };
        let state = &watch.state;
        match polled {
            Poll::Ready(Some(Err(e))) => {
                state.failure.store(BodyFailure::Malformed as u8, Ordering::Release);
                Poll::Ready(Some(Err(ClientBodyError::Read(e))))
            }
            Poll::Ready(ready) => {
                state.waiting_on_client.store(false, Ordering::Release);
                state.frames.fetch_add(1, Ordering::AcqRel);
                Poll::Ready(ready.map(|frame| frame.map_err(ClientBodyError::Read)))
            }
            Poll::Pending => {
                if !state.waiting_on_client.swap(true, Ordering::AcqRel) {
                    let deadline = tokio::time::Instant::now() + watch.idle_timeout;
                    watch.idle.as_mut().reset(deadline);
                }
                match watch.idle.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        state.failure.store(BodyFailure::TimedOut as u8, Ordering::Release);
                        Poll::Ready(Some(Err(ClientBodyError::Idle(watch.idle_timeout))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(data) = self.first.as_ref().and_then(Frame::data_ref) {
            let len = data.len() as u64;
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper.saturating_add(len));
            }
            hint.set_lower(hint.lower().saturating_add(len));
        }
        hint
    }
}
