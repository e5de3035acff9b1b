//! The edge routing table (the edge's "route" phase): request host -> edge -> route ->
//! upstream and auth module; the path normalisation of the "normalise" phase; and which
//! headers a request loses (and which forwarding headers it gets) before it goes upstream or
//! to a plugin.
//!
//! The table is immutable and rebuilt from the store after every change; the proxy reads the
//! current one through an `ArcSwap`, so a lookup takes no lock and allocates nothing beyond
//! the lower-cased host. Exact paths win over prefixes; among prefixes the longest wins.

use crate::config::IdentityHeaders;
use crate::metrics::{Metrics, RouteMetrics};
use crate::model::{AuthModule, Edge, MatchType, StaticBackend};
use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderName, Request};
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Where a route sends its requests.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// `scheme://authority`: the key of its connections in a pool.
    pub key: Arc<str>,
}

/// A route, ready to serve.
pub struct RouteTarget {
    pub edge_id: String,
    pub route_id: String,
    /// `None` when the route has no enabled backend, or its backend is gone.
    pub upstream: Option<Upstream>,
    /// The route's enabled auth module.
    pub auth: Option<AuthTarget>,
    /// The session cookie names of every module on this route's edge: removed from every
    /// request before it goes upstream, whatever route it takes.
    pub edge_session_cookies: Arc<[String]>,
    /// The edge's public origin (see [`public_origin`]): what plugins build the URLs they
    /// register at identity providers on.
    pub public_origin: Arc<str>,
    pub metrics: Arc<RouteMetrics>,
}

/// An enabled auth module and its session cookie. Its plugin is found by name in the registry
/// by sign-in (`signin`), the only code that calls it; the table does not hold it.
pub struct AuthTarget {
    pub module: AuthModule,
    /// The session cookie: `__Host-<cookie_prefix>session` on an https edge (see
    /// [`session_cookie_name`]), `<cookie_prefix>session` on a plain http one.
    pub cookie_name: String,
    /// `<cookie_prefix>session`: the name sessions had on https edges before they took the
    /// `__Host-` prefix. Never accepted there; logout still ends and clears it.
    pub plain_cookie_name: String,
    /// Whether the edge is https: the cookie is then `Secure` (and `__Host-`).
    pub cookie_secure: bool,
}

/// The identity header names, parsed once, and every header name removed from a request
/// before it goes upstream.
pub struct IdentityHeaderNames {
    pub user_id: HeaderName,
    pub email: HeaderName,
    pub name: HeaderName,
    pub groups: HeaderName,
    pub assertion: HeaderName,
    pub access_token: HeaderName,
    /// The six names above, [`UNTRUSTED_REQUEST_HEADERS`] and `identity_headers.remove`.
    removed: RemovedHeaders,
}

/// Headers that other authenticating proxies, URL rewriters and load balancers set and that
/// applications behind them trust; a client could send any of them. Removed from every
/// request on every route, besides the gateway's own identity headers (`X-Forwarded-For`,
/// `-Host` and `-Proto` and `Forwarded` are then set by the gateway). Operators add names
/// with `identity_headers.remove`; this set cannot be shrunk.
pub const UNTRUSTED_REQUEST_HEADERS: &[&str] = &[
    // Identity, as oauth2-proxy, Authelia, Authentik, Apache, Grafana's auth proxy,
    // Kubernetes' front proxy, Google IAP and Cloudflare Access send it.
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-forwarded-access-token",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-preferred-username",
    "x-auth-request-groups",
    "x-auth-request-access-token",
    "remote-user",
    "remote-email",
    "remote-name",
    "remote-groups",
    "x-remote-user",
    "x-remote-group",
    "x-authenticated-user",
    "x-webauth-user",
    "x-authentik-username",
    "x-authentik-email",
    "x-authentik-groups",
    "x-goog-authenticated-user-email",
    "x-goog-authenticated-user-id",
    "x-goog-iap-jwt-assertion",
    "cf-access-authenticated-user-email",
    "cf-access-jwt-assertion",
    // The URL, as IIS, Symfony, Laravel, Traefik, Envoy and Spring read it from a proxy.
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-prefix",
    "x-envoy-original-path",
    // The method, as method-override middleware reads it (an OPTIONS let through by
    // `options_passthrough` must stay an OPTIONS).
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    // The client and the scheme, as frameworks read them from a proxy. The gateway sets
    // `X-Forwarded-For`, `-Host`, `-Proto` and `Forwarded` itself.
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-url-scheme",
    "front-end-https",
    "x-real-ip",
    "x-client-ip",
    // PHP's usual client-address lookup (`HTTP_CLIENT_IP`, `HTTP_X_FORWARDED`,
    // `HTTP_FORWARDED_FOR`), nginx-ingress's client before it, IIS ARR's original host.
    "client-ip",
    "x-forwarded",
    "forwarded-for",
    "x-original-forwarded-for",
    "x-original-host",
    "true-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
];

/// A set of header names matched the way CGI-style upstreams see them: `_` and `-` are the
/// same character (`X_Forwarded_User` reaches them as `HTTP_X_FORWARDED_USER` too). Names
/// are kept by length so a request header is compared with the few of its own length.
#[derive(Default)]
struct RemovedHeaders {
    by_len: Vec<Vec<Box<[u8]>>>,
}

impl RemovedHeaders {
    fn insert(&mut self, name: &str) {
        let name: Box<[u8]> = name
            .bytes()
            .map(|b| if b == b'_' { b'-' } else { b.to_ascii_lowercase() })
            .collect();
        if self.by_len.len() <= name.len() {
            self.by_len.resize_with(name.len() + 1, Vec::new);
        }
        let bucket = &mut self.by_len[name.len()];
        if !bucket.contains(&name) {
            bucket.push(name);
        }
    }

    fn contains(&self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        self.by_len.get(name.len()).is_some_and(|bucket| {
            bucket
                .iter()
                .any(|n| n.iter().zip(name).all(|(a, b)| a == b || (*a == b'-' && *b == b'_')))
        })
    }
}

impl IdentityHeaderNames {
    /// Parses the configured names; a bad name falls back to the default (config validation
    /// refuses bad names before this runs).
    pub fn from_config(config: &IdentityHeaders) -> IdentityHeaderNames {
        let defaults = IdentityHeaders::default();
        let parse = |name: &str, default: &str| {
            HeaderName::from_bytes(name.as_bytes())
                .or_else(|_| HeaderName::from_bytes(default.as_bytes()))
                .unwrap_or(HeaderName::from_static("x-portcullis-identity"))
        };
        let mut names = IdentityHeaderNames {
            user_id: parse(&config.user_id, &defaults.user_id),
            email: parse(&config.email, &defaults.email),
            name: parse(&config.name, &defaults.name),
            groups: parse(&config.groups, &defaults.groups),
            assertion: parse(&config.assertion, &defaults.assertion),
            access_token: parse(&config.access_token, &defaults.access_token),
            removed: RemovedHeaders::default(),
        };
        let mut removed = RemovedHeaders::default();
        for name in names.all() {
            removed.insert(name.as_str());
        }
        for name in UNTRUSTED_REQUEST_HEADERS
            .iter()
            .copied()
            .chain(config.remove.iter().map(String::as_str))
        {
            removed.insert(name);
        }
        names.removed = removed;
        names
    }

    /// Whether a request header is removed before the request goes upstream: an identity
    /// header, one that other proxies set (see [`UNTRUSTED_REQUEST_HEADERS`]), one the config
    /// adds, or a look-alike of any of them with `_` for `-`.
    pub fn is_removed(&self, name: &HeaderName) -> bool {
        self.removed.contains(name)
    }

    /// Removes from `headers` every header [`Self::is_removed`] names.
    pub fn remove_untrusted(&self, headers: &mut HeaderMap) {
        // One pass over the request's header names: most requests carry none of them.
        let found: Vec<HeaderName> = headers.keys().filter(|k| self.is_removed(k)).cloned().collect();
        for name in found {
            headers.remove(name);
        }
    }

    /// Every name.
    pub fn all(&self) -> [&HeaderName; 6] {
        [
            &self.user_id,
            &self.email,
            &self.name,
            &self.groups,
            &self.assertion,
            &self.access_token,
        ]
    }
}

impl Default for IdentityHeaderNames {
    fn default() -> Self {
        Self::from_config(&IdentityHeaders::default())
    }
}

#[derive(Default)]
struct EdgeRoutes {
    /// Every route, by id.
    by_id: HashMap<String, Arc<RouteTarget>>,
    exact: HashMap<String, Arc<RouteTarget>>,
    /// Longest prefix first.
    prefixes: Vec<(String, Arc<RouteTarget>)>,
}

/// The lookup structure the edge proxy reads.
#[derive(Default)]
pub struct RouteTable {
    by_hostport: HashMap<String, Arc<EdgeRoutes>>,
    pub identity_headers: IdentityHeaderNames,
}

impl RouteTable {
    /// Builds the table from every edge and backend.
    pub fn build(
        edges: &[Edge],
        backends: &[StaticBackend],
        identity: &IdentityHeaders,
        edge_scheme: &str,
        metrics: &Metrics,
    ) -> RouteTable {
        let upstreams: HashMap<&str, Option<Upstream>> = backends
            .iter()
            .map(|b| {
                let upstream = b.address.parse::<Authority>().ok().map(|authority| {
                    let scheme = if b.tls { Scheme::HTTPS } else { Scheme::HTTP };
                    Upstream {
                        key: format!("{scheme}://{authority}").into(),
                        scheme,
                        authority,
                    }
                });
                (b.id.as_str(), upstream)
            })
            .collect();
        let mut by_hostport = HashMap::new();
        for edge in edges {
            let mut routes = EdgeRoutes::default();
            let https = edge_scheme == "https";
            // Both spellings of every module's cookie: one left from before the `__Host-`
            // prefix must not reach an upstream either.
            let mut cookies: Vec<String> = edge
                .routes
                .iter()
                .filter_map(|r| r.auth.as_ref())
                .flat_map(|m| {
                    [
                        session_cookie_name(&m.cookie_prefix, true),
                        session_cookie_name(&m.cookie_prefix, false),
                    ]
                })
                .collect();
            cookies.sort();
            cookies.dedup();
            let edge_session_cookies: Arc<[String]> = cookies.into();
            let origin: Arc<str> = public_origin(edge_scheme, &edge.hostports).into();
            for route in &edge.routes {
                let upstream = route
                    .backend
                    .as_ref()
                    .filter(|b| b.enabled)
                    .and_then(|b| upstreams.get(b.backend_id.as_str()).cloned().flatten());
                let auth = route.auth.as_ref().filter(|m| m.enabled).map(|module| AuthTarget {
                    cookie_name: session_cookie_name(&module.cookie_prefix, https),
                    plain_cookie_name: session_cookie_name(&module.cookie_prefix, false),
                    cookie_secure: https,
                    module: module.clone(),
                });
                let target = Arc::new(RouteTarget {
                    edge_id: edge.id.clone(),
                    route_id: route.id.clone(),
                    upstream,
                    auth,
                    edge_session_cookies: edge_session_cookies.clone(),
                    public_origin: origin.clone(),
                    metrics: metrics.route(&edge.id, &route.id),
                });
                routes.by_id.insert(route.id.clone(), target.clone());
                match route.match_type {
                    MatchType::ExactPath => {
                        routes.exact.insert(route.path.clone(), target);
                    }
                    MatchType::PathPrefix => routes.prefixes.push((route.path.clone(), target)),
                }
            }
            routes
                .prefixes
                .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
            let routes = Arc::new(routes);
            for hostport in &edge.hostports {
                by_hostport.insert(hostport.to_ascii_lowercase(), routes.clone());
            }
        }
        RouteTable {
            by_hostport,
            identity_headers: IdentityHeaderNames::from_config(identity),
        }
    }

    /// The route `route_id` of the edge serving `hostport`.
    pub fn find_route(&self, hostport: &str, route_id: &str) -> Option<Arc<RouteTarget>> {
        self.by_hostport.get(hostport)?.by_id.get(route_id).cloned()
    }

    /// The route `route_id`, on whichever edge it is.
    pub fn route(&self, route_id: &str) -> Option<Arc<RouteTarget>> {
        self.by_hostport.values().find_map(|e| e.by_id.get(route_id).cloned())
    }

    /// Every route of the edge serving `hostport`.
    pub fn routes_of(&self, hostport: &str) -> Vec<Arc<RouteTarget>> {
        self.by_hostport
            .get(hostport)
            .map(|e| e.by_id.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether an edge serves `hostport`.
    pub fn has_edge(&self, hostport: &str) -> bool {
        self.by_hostport.contains_key(hostport)
    }

    /// The route serving `path` on `hostport` (lower-case `host:port`).
    pub fn find(&self, hostport: &str, path: &str) -> Option<&Arc<RouteTarget>> {
        let edge = self.by_hostport.get(hostport)?;
        edge.exact.get(path).or_else(|| {
            edge.prefixes
                .iter()
                .find(|(prefix, _)| path.starts_with(prefix.as_str()))
                .map(|(_, t)| t)
        })
    }
}

/// The host a request asked for: its `Host` header, or an HTTP/2 request's `:authority`.
pub fn original_host<B>(req: &Request<B>) -> Option<HeaderValue> {
    req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

/// Sets the gateway's own forwarding headers on a request it passes on (to an upstream, or to
/// a plugin): `X-Forwarded-For` (the connection's peer), `-Host` (the host asked for),
/// `-Proto` and `Forwarded`. A client's own were removed with the other untrusted headers:
/// the connection's peer is the client (there are no trusted proxies in front yet).
pub fn set_forwarding_headers(headers: &mut HeaderMap, peer: SocketAddr, is_tls: bool, host: Option<&HeaderValue>) {
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    let client_ip = peer.ip().to_canonical();
    if let Ok(value) = HeaderValue::from_str(&client_ip.to_string()) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if let Some(value) = forwarded(client_ip, is_tls, host) {
        headers.insert(FORWARDED, value);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if is_tls { "https" } else { "http" }),
    );
}

/// The gateway's own `Forwarded` (RFC 7239): the client, the scheme and the host it asked for.
fn forwarded(client: IpAddr, is_tls: bool, host: Option<&HeaderValue>) -> Option<HeaderValue> {
    let mut value = match client {
        IpAddr::V4(ip) => format!("for={ip}"),
        IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
    };
    value.push_str(if is_tls { ";proto=https" } else { ";proto=http" });
    // A host that a quoted-string cannot carry as it is is left out.
    if let Some(host) = host
        .map(HeaderValue::as_bytes)
        .filter(|h| h.iter().all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\'))
    {
        value.push_str(";host=\"");
        value.push_str(&String::from_utf8_lossy(host));
        value.push('"');
    }
    HeaderValue::from_str(&value).ok()
}

/// The session cookie of a module with `cookie_prefix`: `__Host-<prefix>session` on an https
/// edge, so that only this host can set it (browsers refuse a `__Host-` cookie that is not
/// `Secure`, has a `Domain` or another `Path` than `/`): a sibling subdomain cannot toss its
/// own session cookie in. Plain http edges cannot use the prefix (it needs `Secure`).
pub fn session_cookie_name(cookie_prefix: &str, https: bool) -> String {
    if https {
        format!("__Host-{cookie_prefix}session")
    } else {
        format!("{cookie_prefix}session")
    }
}

/// An edge's public origin: the edge listener's scheme (`http`/`https`) and the edge's first
/// `host:port`, without a default port. An identity provider knows a route's sign-in URLs by
/// this origin, whatever `Host` a request arrives with. Behind a TLS-terminating proxy (an
/// https `public_url` on a plain listener) the edge sees `host:80` where browsers use `host`.
pub fn public_origin(scheme: &str, hostports: &[String]) -> String {
    let hostport = hostports
        .first()
        .map_or("localhost", String::as_str)
        .to_ascii_lowercase();
    let default_ports: &[&str] = if scheme == "https" { &[":443", ":80"] } else { &[":80"] };
    let host = default_ports
        .iter()
        .find_map(|port| hostport.strip_suffix(port))
        .unwrap_or(&hostport);
    format!("{scheme}://{host}")
}

/// The canonical form of a request path, which routing matches and the upstream receives:
/// percent-encoded unreserved characters decoded, `.` and `..` segments resolved, repeated
/// slashes collapsed. Backslashes, `;` and encoded `/`, `\` or `;` are refused: upstreams
/// disagree on them (a servlet container reads `/public/..;/app` as `/app`, nginx as a
/// folder named `..;` under `/public/`), and a route decision (which may be a sign-in
/// decision) must mean the same path to the upstream as to the gateway.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, &'static str> {
    if !raw.starts_with('/') {
        return Err("the request path must start with `/`");
    }
    // One pass over the bytes: most paths need nothing done.
    let bytes = raw.as_bytes();
    let mut needs_work = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err("the request path contains a backslash"),
            b';' => return Err("the request path contains `;` (a path parameter)"),
            b'%' => needs_work = true,
            b'/' if matches!(bytes.get(i + 1), Some(b'/' | b'.')) => needs_work = true,
            _ => {}
        }
    }
    if !needs_work {
        return Ok(Cow::Borrowed(raw));
    }
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            decoded.push(bytes[i] as char);
            i += 1;
            continue;
        }
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) else {
            return Err("the request path has a malformed percent-escape");
        };
        let byte = (hi * 16 + lo) as u8;
        match byte {
            b'/' | b'\\' => return Err("the request path contains an encoded `/` or `\\`"),
            b';' => return Err("the request path contains an encoded `;`"),
            b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => decoded.push(b as char),
            _ => decoded.push_str(&raw[i..i + 3].to_ascii_uppercase()),
        }
        i += 3;
    }
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded.split('/').skip(1) {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Route, RouteBackend, Source};

    fn route(id: &str, match_type: MatchType, path: &str) -> Route {
        Route {
            id: id.into(),
            created_at: 0,
            match_type,
            path: path.into(),
            description: String::new(),
            metadata: String::new(),
            auth: None,
            backend: Some(RouteBackend {
                enabled: true,
                backend_id: "b".into(),
            }),
        }
    }

    #[test]
    fn paths_are_normalised_before_matching() {
        let n = |p: &str| normalize_path(p).map(|c| c.into_owned());
        assert_eq!(n("/admin/x").as_deref(), Ok("/admin/x"));
        assert_eq!(n("/%61dmin/x").as_deref(), Ok("/admin/x"));
        assert_eq!(n("//admin//x").as_deref(), Ok("/admin/x"));
        assert_eq!(n("/a/../admin/x").as_deref(), Ok("/admin/x"));
        assert_eq!(n("/a/./b/.").as_deref(), Ok("/a/b/"));
        assert_eq!(n("/../../etc").as_deref(), Ok("/etc"));
        assert_eq!(n("/%2e%2e/admin").as_deref(), Ok("/admin"));
        assert_eq!(n("/a%20b").as_deref(), Ok("/a%20b"));
        assert_eq!(n("/a%c3%a9").as_deref(), Ok("/a%C3%A9"));
        assert_eq!(n("/dir/").as_deref(), Ok("/dir/"));
        assert!(n("/admin%2Fx").is_err());
        assert!(n("/admin%5cx").is_err());
        assert!(n("/admin\\x").is_err());
        for parameter in [
            "/public/..;/app/x",
            "/a/.;/b",
            "/a;jsessionid=1",
            "/a/..%3b/b",
            "/a/..%3B/b",
            "/a%3bb",
        ] {
            assert!(n(parameter).is_err(), "{parameter}");
        }
        assert!(n("/bad%zz").is_err());
        assert!(n("/bad%4").is_err());
        assert!(n("*").is_err());
    }

    #[test]
    fn exact_beats_prefix_and_longest_prefix_wins() {
        let edge = Edge {
            id: "e".into(),
            description: String::new(),
            metadata: String::new(),
            created_at: 0,
            hostports: vec!["App.example:443".into()],
            routes: vec![
                route("root", MatchType::PathPrefix, "/"),
                route("api", MatchType::PathPrefix, "/api/"),
                route("exact", MatchType::ExactPath, "/api/health"),
            ],
            source: Source::Api,
        };
        let backend = StaticBackend {
            id: "b".into(),
            description: String::new(),
            metadata: String::new(),
            created_at: 0,
            address: "127.0.0.1:9".into(),
            tls: false,
            source: Source::Api,
        };
        let table = RouteTable::build(
            &[edge],
            &[backend],
            &IdentityHeaders::default(),
            "https",
            &Metrics::default(),
        );
        let id = |path: &str| table.find("app.example:443", path).map(|t| t.route_id.clone());
        let origin = table.find("app.example:443", "/").map(|t| t.public_origin.to_string());
        assert_eq!(origin.as_deref(), Some("https://app.example"));
        let hosts = |h: &[&str]| h.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(public_origin("https", &hosts(&["a.test:80"])), "https://a.test");
        assert_eq!(
            public_origin("http", &hosts(&["a.test:8080", "b.test:80"])),
            "http://a.test:8080"
        );
        assert_eq!(public_origin("http", &hosts(&["a.test:443"])), "http://a.test:443");
        assert_eq!(id("/api/health").as_deref(), Some("exact"));
        assert_eq!(id("/api/healthz").as_deref(), Some("api"));
        assert_eq!(id("/apix").as_deref(), Some("root"));
        assert!(table.find("other:443", "/").is_none());
    }
}
