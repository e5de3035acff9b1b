//! The edge reverse proxy: match a request to a route, forward it to the route's upstream
//! with streaming bodies both ways, relay WebSocket upgrades, and answer with a readable page
//! when there is no route or the upstream fails.

use crate::auth::{self, Gate};
use crate::metrics::UpstreamError;
use crate::pages::{error_page, Body};
use crate::routing::{RouteTable, RouteTarget, Upstream};
use crate::sessions::SessionEntry;
use crate::state::Shared;
use crate::upstream::UpstreamPool;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// A pooling HTTP client on the gateway's connector (used for plugins' HTTP calls).
pub fn upstream_client<B>(
    config: &crate::config::ProxyConfig,
) -> Result<Client<hyper_rustls::HttpsConnector<HttpConnector>, B>, String>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(config.upstream_idle_timeout())
        .pool_timer(TokioTimer::new())
        .build(connector(config)?))
}

/// The edge's upstream pool for one worker.
pub fn upstream_pool(config: &crate::config::ProxyConfig) -> Result<Arc<UpstreamPool>, String> {
    Ok(UpstreamPool::new(connector(config)?, config.upstream_idle_timeout()))
}

/// The connector for upstreams: TCP with the configured connect timeout, and TLS verified
/// against the system's CA certificates plus `proxy.upstream_ca_file`, when set.
fn connector(config: &crate::config::ProxyConfig) -> Result<hyper_rustls::HttpsConnector<HttpConnector>, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.upstream_connect_timeout()));
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!("reading the system CA certificates: {error}");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = &config.upstream_ca_file {
        let extra = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("proxy.upstream_ca_file: cannot read {}: {e}", path.display()))?;
        for cert in extra {
            roots
                .add(cert)
                .map_err(|e| format!("proxy.upstream_ca_file: {}: {e}", path.display()))?;
        }
    } else if added == 0 {
        tracing::warn!("no system CA certificates found: TLS upstreams will fail verification unless proxy.upstream_ca_file is set");
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// Headers that describe one hop and are never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Serves one edge request.
pub async fn handle(
    shared: Arc<Shared>,
    client: Arc<UpstreamPool>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    is_tls: bool,
) -> Response<Body> {
    let started = Instant::now();
    let request_id = crate::state::new_request_id();
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
        Some(hostport) if path.starts_with(auth::RESERVED_PREFIX) => {
            let origin = auth::origin_of(&req, is_tls);
            auth::reserved(&shared, &table, hostport, &origin, req, peer, &request_id).await
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
                Some(target) => match auth::gate(&shared, target, &req, peer, &request_id).await {
                    Gate::Respond(response) => response,
                    Gate::Pass(session) => match &target.upstream {
                        None => error_page(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "Route has no backend",
                            "The route for this address has no enabled backend.",
                            &request_id,
                        ),
                        Some(upstream) => {
                            let upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
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
            }
        }
    };
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

/// Everything about one forwarded request but the request itself.
struct Hop<'a> {
    shared: &'a Shared,
    client: &'a Arc<UpstreamPool>,
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
    let (mut parts, body) = req.into_parts();
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let upgrade_protocol = client_upgrade
        .as_ref()
        .and_then(|_| parts.headers.get(header::UPGRADE).cloned());
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::UPGRADE);
    auth::set_identity_headers(shared, table, target, &mut parts.headers, session);
    if let Some(protocol) = upgrade_protocol {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol);
    }
    // The upstream URI reuses the request's path and query when normalisation left them as
    // they were (no copy, no re-parse).
    let path_and_query = if parts.uri.path() == normalized_path {
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
    } else {
        let rewritten = match parts.uri.query() {
            Some(query) => format!("{normalized_path}?{query}"),
            None => normalized_path.to_string(),
        };
        match rewritten.parse::<http::uri::PathAndQuery>() {
            Ok(pq) => pq,
            Err(_) => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    "Bad request",
                    "The request target is not a valid path.",
                    request_id,
                )
            }
        }
    };
    // Origin-form (path and query only), as RFC 9112 section 3.2.1 asks of a request to an
    // origin server: many servers and frameworks route on the raw request target.
    parts.uri = Uri::from(path_and_query);
    parts.version = Version::HTTP_11;
    if let Some(host) = &original_host {
        parts.headers.insert(header::HOST, host.clone());
        parts.headers.insert(X_FORWARDED_HOST, host.clone());
    }
    append_forwarded_for(&mut parts.headers, peer);
    parts.headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if is_tls { "https" } else { "http" }),
    );
    if let Ok(id) = HeaderValue::from_str(request_id) {
        parts.headers.insert(X_REQUEST_ID, id);
    }
    let request = Request::from_parts(parts, body);
    let timeout = shared.proxy_config.upstream_response_timeout();
    let result = tokio::time::timeout(timeout, client.send(upstream, request)).await;
    let mut response = match result {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
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
        if let Some(client_upgrade) = client_upgrade {
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
    }
    strip_hop_by_hop(response.headers_mut());
    response.headers_mut().remove(header::UPGRADE);
    response.map(|body| body.boxed())
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

fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
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

fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.trim().is_empty() => format!("{existing}, {ip}"),
        _ => ip,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

/// An error and its sources, on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
