//! Connections to upstreams (the edge's "forward" phase): an HTTP/1.1 connection pool per edge
//! worker.
//!
//! Each worker owns one pool, so a request, its upstream connection and the task driving that
//! connection all live on one thread. A connection goes back to the pool when the response
//! body has been read to its end; one that is closed, upgraded (WebSocket) or idle past
//! `upstream_idle_timeout_secs` is dropped. The pool carries any request body type (the
//! proxy's is its watched client body); the connector (TCP, and TLS verified against the
//! system's and the configured CA certificates) is made here too.

use crate::routing::Upstream;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::{pem::PemObject, CertificateDer};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower_service::Service;

/// Most idle connections kept per upstream.
const MAX_IDLE_PER_UPSTREAM: usize = 512;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Request(#[from] hyper::Error),
}

struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
}

/// A pool of upstream connections whose requests carry bodies of type `B`.
pub struct UpstreamPool<B> {
    connector: Connector,
    idle: Mutex<HashMap<Arc<str>, Vec<Idle<B>>>>,
    idle_timeout: Duration,
}

impl<B> UpstreamPool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A pool for `config`'s upstreams (see [`connector`]).
    pub fn for_config(config: &crate::config::ProxyConfig) -> Result<Arc<UpstreamPool<B>>, ConnectorError> {
        Ok(UpstreamPool::new(connector(config)?, config.upstream_idle_timeout()))
    }

    /// A pool connecting with `connector` (plain TCP, or TLS for `https` upstreams).
    pub fn new(connector: Connector, idle_timeout: Duration) -> Arc<UpstreamPool<B>> {
        Arc::new(UpstreamPool {
            connector,
            idle: Mutex::new(HashMap::new()),
            idle_timeout,
        })
    }

    /// Sends `request` (whose URI is in origin-form: path and query) to `upstream` on a pooled
    /// or new connection. hyper writes the URI as given, so it goes out in origin-form.
    pub async fn send(
        self: &Arc<Self>,
        upstream: &Upstream,
        request: Request<B>,
    ) -> Result<Response<PooledBody<B>>, UpstreamError> {
        let key = upstream.key.clone();
        let mut sender = loop {
            match self.take(&key) {
                Some(mut sender) => {
                    if sender.ready().await.is_ok() {
                        break sender;
                    }
                }
                None => break self.connect(upstream).await?,
            }
        };
        let response = sender.send_request(request).await?;
        let reusable = response.status() != StatusCode::SWITCHING_PROTOCOLS;
        let (parts, body) = response.into_parts();
        let mut pooled = PooledBody {
            inner: body,
            lease: None,
        };
        if reusable {
            let lease = Lease {
                pool: Arc::downgrade(self),
                key,
                sender,
            };
            if pooled.inner.is_end_stream() {
                lease.give_back();
            } else {
                pooled.lease = Some(lease);
            }
        }
        Ok(Response::from_parts(parts, pooled))
    }

    fn take(&self, key: &str) -> Option<SendRequest<B>> {
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let list = idle.get_mut(key)?;
        while let Some(entry) = list.pop() {
            if entry.since.elapsed() < self.idle_timeout && !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    fn put(&self, key: Arc<str>, sender: SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, upstream: &Upstream) -> Result<SendRequest<B>, UpstreamError> {
        let uri = http::Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let io = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(|e| UpstreamError::Connect(error_chain(e.as_ref())))?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(sender)
    }
}

/// A connection on loan to one response.
struct Lease<B> {
    pool: Weak<UpstreamPool<B>>,
    key: Arc<str>,
    sender: SendRequest<B>,
}

impl<B> Lease<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn give_back(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put(self.key, self.sender);
        }
    }
}

/// An upstream response body that returns its connection to the pool when read to the end.
pub struct PooledBody<B> {
    inner: Incoming,
    lease: Option<Lease<B>>,
}

impl<B> PooledBody<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn finish(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.give_back();
        }
    }
}

impl<B> Body for PooledBody<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            // The server stops polling once `is_end_stream` is true after the last frame.
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(),
            // A failed body leaves the connection in an unknown state: do not reuse it.
            Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why the outbound connector could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("proxy.upstream_ca_file: cannot read {}: {error}", .path.display())]
    ReadCaFile {
        path: std::path::PathBuf,
        error: rustls::pki_types::pem::Error,
    },
    #[error("proxy.upstream_ca_file: {}: {error}", .path.display())]
    BadCaCertificate {
        path: std::path::PathBuf,
        error: rustls::Error,
    },
    #[error("TLS client setup: {0}")]
    TlsSetup(rustls::Error),
}

/// The connector for upstreams: TCP with the configured connect timeout, and TLS verified
/// against the system's CA certificates plus `proxy.upstream_ca_file`, when set.
pub fn connector(
    config: &crate::config::ProxyConfig,
) -> Result<hyper_rustls::HttpsConnector<HttpConnector>, ConnectorError> {
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
            .map_err(|error| ConnectorError::ReadCaFile {
                path: path.clone(),
                error,
            })?;
        for cert in extra {
            roots.add(cert).map_err(|error| ConnectorError::BadCaCertificate {
                path: path.clone(),
                error,
            })?;
        }
    } else if added == 0 {
        tracing::warn!("no system CA certificates found: TLS upstreams will fail verification unless proxy.upstream_ca_file is set");
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(ConnectorError::TlsSetup)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
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
