//! Egress: the HTTP client the gateway sends its own outbound requests with (a plugin's
//! [`portcullis_plugin_sdk::Host::http`]), and the module-limited request: only the hosts a module's plan names, no redirects
//! followed, a time limit and a response size limit.

use crate::config::ProxyConfig;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portcullis_plugin_sdk::{HttpResponse, OutboundRequest};
use std::time::Duration;

/// Largest response body a plugin's HTTP call reads.
const MAX_EGRESS_BODY: usize = 2 * 1024 * 1024;
/// Time limit of a plugin's HTTP call.
const EGRESS_TIMEOUT: Duration = Duration::from_secs(10);

/// The pooling client plugins' HTTP calls go through (it follows no redirects).
pub type EgressClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why a module's HTTP call failed (a plugin reads the message as `Host::http`'s error).
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("bad URL {url}: {error}")]
    BadUrl { url: String, error: http::uri::InvalidUri },
    #[error("URL {url} has no host")]
    NoHost { url: String },
    #[error("{hostport} is not among the hosts this module may reach")]
    HostNotAllowed { hostport: String },
    #[error("{0}")]
    Request(http::Error),
    #[error("{0}")]
    Exchange(hyper_util::client::legacy::Error),
    #[error("{0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A pooling egress client on the gateway's outbound connector (`upstream::connector`).
pub fn egress_client(config: &ProxyConfig) -> Result<EgressClient, crate::upstream::ConnectorError> {
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(config.upstream_idle_timeout())
        .pool_timer(TokioTimer::new())
        .build(crate::upstream::connector(config)?))
}

/// The egress of one module: the client, limited to the `host:port`s the module's plan names.
#[derive(Clone)]
pub struct ModuleEgress {
    client: EgressClient,
    allowed_hosts: Vec<String>,
}

impl ModuleEgress {
    /// `client` limited to `allowed_hosts` (`host:port`, compared without case).
    pub fn new(client: EgressClient, allowed_hosts: Vec<String>) -> ModuleEgress {
        ModuleEgress { client, allowed_hosts }
    }

    /// Sends `request` when its destination is allowed, waiting on `runtime` (call it from a
    /// blocking thread): no redirect followed, [`EGRESS_TIMEOUT`] for the whole answer (head and
    /// body), at most [`MAX_EGRESS_BODY`] bytes of answer.
    pub fn send(
        &self,
        runtime: &tokio::runtime::Handle,
        request: OutboundRequest,
    ) -> Result<HttpResponse, EgressError> {
        let uri: http::Uri = request.url.parse().map_err(|error| EgressError::BadUrl {
            url: request.url.clone(),
            error,
        })?;
        let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
            443
        } else {
            80
        };
        let authority = uri.authority().ok_or_else(|| EgressError::NoHost {
            url: request.url.clone(),
        })?;
        let hostport = format!(
            "{}:{}",
            authority.host().to_ascii_lowercase(),
            authority.port_u16().unwrap_or(default_port)
        );
        if !self
            .allowed_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(&hostport))
        {
            return Err(EgressError::HostNotAllowed { hostport });
        }
        let mut builder = http::Request::builder().method(request.method.as_str()).uri(uri);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let outbound = builder
            .body(Full::new(Bytes::from(request.body)))
            .map_err(EgressError::Request)?;
        let client = self.client.clone();
        // The limit counts the whole answer, its body too: a provider that sends the head and
        // then stalls holds the call (a thread of the small blocking pool) no longer.
        let exchange = async move {
            let response = client.request(outbound).await.map_err(EgressError::Exchange)?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = Limited::new(response.into_body(), MAX_EGRESS_BODY)
                .collect()
                .await
                .map_err(EgressError::Body)?
                .to_bytes()
                .to_vec();
            Ok(HttpResponse { status, headers, body })
        };
        // Plugin calls run on blocking threads, where waiting on the runtime is allowed.
        runtime.block_on(async move {
            tokio::time::timeout(EGRESS_TIMEOUT, exchange)
                .await
                .map_err(|_| EgressError::Timeout(EGRESS_TIMEOUT))?
        })
    }
}
