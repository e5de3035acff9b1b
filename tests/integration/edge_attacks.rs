//! Attacks on the edge that depend on what the upstream does with a request, on the session
//! cookie, and on a client's body: an h2c upgrade tunnel to an upstream that speaks h2c, `;`
//! path parameters read by a servlet-style upstream, headers other proxies set and apps
//! trust (and the request a plugin is handed), cookie tossing, bodies that never arrive or stall, malformed chunked bodies.
//!
//! The h2c, slow-body and chunked tests speak raw HTTP/1.1 over a `TcpStream`, as an
//! attacker's client would. Timeouts are configured short (1 s) and waited for with a
//! generous bound; no test asserts a duration.

use crate::harness::{send, set_cookie, Reply, TestGateway, Upstream, LISTENERS};
use crate::test_plugin;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_plugin_sdk::{
    Capability, Host, HttpRequest, HttpResponse, ModuleContext, ModulePlan, OptionError, Outcome, Plugin, PluginError,
    PluginInfo,
};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const COOKIE: &str = "portcullis.session";
/// The most a test waits for the gateway to answer or close: far beyond the 1 s timeouts the
/// tests configure, far below the defaults the old code would have waited for.
const BOUND: Duration = Duration::from_secs(20);

/// An edge `app.test:80` with an open route `/public/` and a protected one `/app/` (the
/// linked-in `testlogin` plugin), both to `upstream`; `extra` adds config (after the edge).
fn config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        "{LISTENERS}[backends.up]\naddress = \"{upstream}\"\n[edges.app]\nhostports = [\"app.test:80\"]\n\
         [[edges.app.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/public/\"\nbackend = \"up\"\n\
         [[edges.app.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/app/\"\nbackend = \"up\"\n\
         [edges.app.routes.auth]\nplugin = \"testlogin\"\n{extra}"
    )
}

async fn start(upstream: SocketAddr, extra: &str) -> TestGateway {
    TestGateway::start_full(&config(upstream, extra), test_plugin::options()).await
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    let url = format!("http://{}{path}", gw.gateway.edge_addr);
    let mut all = vec![("host", "app.test")];
    all.extend_from_slice(headers);
    send(Method::GET, &url, &all, None).await
}

/// Signs `user` in on `/app/` as a browser does; returns the answer that sets the cookie.
async fn sign_in(gw: &TestGateway, user: &str) -> Reply {
    let first = get(gw, "/app/", &[]).await;
    assert_eq!(first.status, 303, "{}", first.body);
    let location = first.headers["location"].to_str().unwrap().to_string();
    let done = get(gw, &format!("{location}&user={user}"), &[]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    done
}

/// The value of cookie `name` that `reply` sets.
fn token(reply: &Reply, name: &str) -> String {
    let cookie = set_cookie(reply, name).unwrap_or_else(|| panic!("no {name} cookie: {:?}", reply.headers));
    cookie.split(';').next().unwrap()[name.len() + 1..].to_string()
}

/// Where the protected route's plugin endpoints live (`/_portcullis/auth/<route id>`).
async fn mount_path(gw: &TestGateway) -> String {
    let first = get(gw, "/app/", &[]).await;
    let location = first.headers["location"].to_str().unwrap();
    location.split("/login").next().unwrap().to_string()
}

/// Writes `request` on a new connection to the edge and reads until the gateway closes it
/// (bounded by [`BOUND`]): the whole answer, or `None` when the connection was still open.
async fn raw_exchange(gw: &TestGateway, request: &[u8]) -> Option<String> {
    let mut stream = TcpStream::connect(gw.gateway.edge_addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    match tokio::time::timeout(BOUND, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

/// Asks, over HTTP/2 on `stream` (a connection a 101 handed over), for a protected page;
/// fails the test with what came back.
async fn smuggle_through(stream: TcpStream, how: &str) -> ! {
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get("http://app.test/app/secret")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    panic!(
        "{how}; through it the protected route answered without a session: {}",
        String::from_utf8_lossy(&body)
    );
}

/// Reads an HTTP/1.1 response head, byte by byte so that nothing after it is consumed.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let read = tokio::time::timeout(BOUND, async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
    })
    .await;
    assert!(read.is_ok(), "no response head within the bound");
    String::from_utf8_lossy(&head).into_owned()
}

/// The `Content-Length` body after `head`.
async fn read_body(stream: &mut TcpStream, head: &str) -> String {
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    let mut body = vec![0u8; length];
    tokio::time::timeout(BOUND, stream.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(body).unwrap()
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// What a test upstream answers to a request it serves: its path, headers and `extra`.
fn echo(req: &Request<Incoming>, extra: Value) -> Response<TestBody> {
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
            )
        })
        .collect();
    let body = json!({"path": req.uri().path(), "headers": headers, "extra": extra}).to_string();
    Response::new(Full::new(Bytes::from(body)).boxed())
}

// ----- h2c upgrade tunnel -----

/// An upstream that speaks h2c (RFC 7540 section 3.2): an HTTP/1.1 request with
/// `Upgrade: h2c` and one `HTTP2-Settings` (what the RFC requires of a request a server
/// upgrades; the `Connection` option naming `HTTP2-Settings` is for the hop, and a proxy
/// rewrites `Connection`) is answered `101 Switching Protocols`, and the connection is
/// HTTP/2 from then on, served by hyper's HTTP/2 server (hyper has no h2c upgrade of its
/// own, so the switch is made here, the way Apache's `mod_http2` with `Protocols h2c` does).
/// Counts the requests it served over HTTP/2. At `/switch-anyway` it misbehaves and answers
/// any upgrade request (a WebSocket one too) with that switch to h2c. Any other request gets
/// its path and headers echoed.
struct H2cUpstream {
    addr: SocketAddr,
    h2_requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2cUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn h2c_upstream() -> H2cUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h2_requests = Arc::new(AtomicUsize::new(0));
    let counter = h2_requests.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let counter = counter.clone();
                async move {
                    let h2c = req.headers().get("upgrade").is_some_and(|v| v == "h2c")
                        && req.headers().contains_key("http2-settings")
                        || req.uri().path().ends_with("/switch-anyway") && req.headers().contains_key("upgrade");
                    if !h2c {
                        return Ok::<_, std::convert::Infallible>(echo(&req, Value::Null));
                    }
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(upgraded) = on_upgrade.await else { return };
                        let served = hyper::service::service_fn(move |req: Request<Incoming>| {
                            counter.fetch_add(1, Ordering::SeqCst);
                            async move { Ok::<_, std::convert::Infallible>(echo(&req, json!("over h2c"))) }
                        });
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(upgraded, served)
                            .await;
                    });
                    Ok(Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header("connection", "Upgrade")
                        .header("upgrade", "h2c")
                        .body(Empty::new().boxed())
                        .unwrap())
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    H2cUpstream {
        addr,
        h2_requests,
        task,
    }
}

#[tokio::test]
async fn an_h2c_upgrade_is_never_relayed_so_no_tunnel_reaches_a_protected_route() {
    let upstream = h2c_upstream().await;
    let gw = start(upstream.addr, "").await;
    // The attacker asks the open route to upgrade to h2c (as h2csmuggler does, with
    // `HTTP2-Settings` left out of `Connection` so that a proxy keeps it).
    let mut stream = TcpStream::connect(gw.gateway.edge_addr).await.unwrap();
    stream
        .write_all(
            b"GET /public/x HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\
              HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    if head.starts_with("HTTP/1.1 101") {
        // The tunnel is open: the upstream takes HTTP/2 requests the gateway never sees.
        smuggle_through(stream, "the gateway relayed an h2c upgrade").await;
    }
    assert!(head.starts_with("HTTP/1.1 200"), "served as a plain request: {head}");
    let seen: Value = serde_json::from_str(&read_body(&mut stream, &head).await).unwrap();
    assert_eq!(seen["path"], "/public/x");
    for name in ["upgrade", "http2-settings"] {
        assert!(
            seen["headers"].get(name).is_none(),
            "{name} reached the upstream: {seen}"
        );
    }
    assert_eq!(upstream.h2_requests.load(Ordering::SeqCst), 0);
    // A WebSocket upgrade is relayed, but an upstream that answers it by switching to
    // anything else gets no tunnel either.
    let mut stream = TcpStream::connect(gw.gateway.edge_addr).await.unwrap();
    stream
        .write_all(
            b"GET /public/switch-anyway HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    if head.starts_with("HTTP/1.1 101") {
        smuggle_through(
            stream,
            "the gateway relayed a switch to h2c answering a WebSocket upgrade",
        )
        .await;
    }
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert_eq!(upstream.h2_requests.load(Ordering::SeqCst), 0);
    gw.stop().await;
}

// ----- `;` path parameters -----

/// How Tomcat reads a request path (`CoyoteAdapter.postParseRequest`, its defaults): on the
/// raw path, every `;` starts a path parameter that runs to the next `/`, and is removed
/// (`parsePathParameters`); then `%xx` is decoded, an encoded `/` refused
/// (`encodedSolidusHandling="reject"`); then `normalize`: a `\` is refused
/// (`allowBackslash=false`), a path ending in `/.` or `/..` gets a `/`, `//` collapses,
/// `/./` goes, `/../` removes the segment before it, and going above the root is refused.
/// `None` is Tomcat's 400. Jetty and Spring's `UrlPathHelper` strip `;` parameters too.
fn servlet_path(raw: &str) -> Option<String> {
    let mut stripped = String::new();
    for (i, segment) in raw.split('/').enumerate() {
        if i > 0 {
            stripped.push('/');
        }
        stripped.push_str(segment.split(';').next().unwrap_or_default());
    }
    let decoded = portcullis_plugin_sdk::percent_decode(&stripped);
    if stripped.to_ascii_lowercase().contains("%2f") || decoded.contains('\\') {
        return None;
    }
    let mut path = decoded;
    if path.ends_with("/.") || path.ends_with("/..") {
        path.push('/');
    }
    while path.contains("//") {
        path = path.replace("//", "/");
    }
    while path.contains("/./") {
        path = path.replace("/./", "/");
    }
    while let Some(at) = path.find("/../") {
        let before = path[..at].rfind('/')?;
        path = format!("{}{}", &path[..before], &path[at + 3..]);
    }
    Some(path)
}

#[test]
fn the_servlet_rule_is_tomcats() {
    // The examples Tomcat's own tests and advisories give for these steps.
    assert_eq!(servlet_path("/a;jsessionid=1/b").as_deref(), Some("/a/b"));
    assert_eq!(servlet_path("/public/..;/app/x").as_deref(), Some("/app/x"));
    assert_eq!(servlet_path("/public/..;a=b;c/app/x").as_deref(), Some("/app/x"));
    assert_eq!(servlet_path("/a/..%3b/b").as_deref(), Some("/a/..;/b"));
    assert_eq!(servlet_path("/a/%2e%2e/b").as_deref(), Some("/b"));
    assert_eq!(servlet_path("/a%2fb"), None);
    assert_eq!(servlet_path("/../x"), None);
}

/// A servlet-style upstream: it serves the path [`servlet_path`] makes of the raw request
/// path, and answers 400 where Tomcat would.
async fn servlet_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let response = match servlet_path(req.uri().path()) {
                    Some(path) => echo(&req, json!({"servlet_path": path})),
                    None => Response::builder()
                        .status(StatusCode::BAD_REQUEST)
                        .body(Empty::new().boxed())
                        .unwrap(),
                };
                Ok::<_, std::convert::Infallible>(response)
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn path_parameters_are_refused_so_a_servlet_upstream_serves_the_route_the_gateway_chose() {
    let (upstream, task) = servlet_upstream().await;
    let gw = start(upstream, "").await;
    let open = get(&gw, "/public/page", &[]).await;
    assert_eq!(open.json()["extra"]["servlet_path"], "/public/page");
    assert_eq!(get(&gw, "/app/x", &[]).await.status, 303, "the app needs a sign-in");
    for sneaky in [
        "/public/..;/app/x",
        "/public/..;jsessionid=1/app/x",
        "/public/%2e%2e;/app/x",
        "/public/.;/..;/app/x",
        "/public/..%3b/app/x",
        "/public/..%3B/app/x",
        "/public;x/../app/x",
        "/public/page;v=1",
    ] {
        let reply = get(&gw, sneaky, &[]).await;
        assert_ne!(
            reply.status, 200,
            "{sneaky} reached the servlet upstream as {}",
            reply.body
        );
        assert_eq!(reply.status, 400, "{sneaky}: {}", reply.body);
        assert!(reply.body.contains("does not accept this address"), "{}", reply.body);
    }
    gw.stop().await;
    task.abort();
}

// ----- headers upstreams trust -----

#[tokio::test]
async fn headers_other_proxies_set_never_reach_an_upstream_and_forwarding_headers_are_the_gateways() {
    let upstream = Upstream::start().await;
    let gw = start(upstream.addr, "[identity_headers]\nremove = [\"X-Custom-Auth\"]\n").await;
    let spoofed = [
        ("x-forwarded-user", "admin"),
        ("x-forwarded-email", "admin@example.com"),
        ("x-forwarded-groups", "admins"),
        ("remote-user", "admin"),
        ("remote-groups", "admins"),
        ("x-auth-request-email", "admin@example.com"),
        ("x-auth-request-user", "admin"),
        ("x-remote-user", "admin"),
        ("x-webauth-user", "admin"),
        ("x-original-url", "/app/admin"),
        ("x-rewrite-url", "/app/admin"),
        ("x-forwarded-uri", "/app/admin"),
        ("x-forwarded-prefix", "/app"),
        ("x-http-method-override", "DELETE"),
        ("x-real-ip", "10.0.0.1"),
        ("x-forwarded-port", "443"),
        // What PHP's usual client-address lookup, nginx-ingress and IIS ARR read.
        ("client-ip", "10.0.0.1"),
        ("x-forwarded", "for=10.0.0.1"),
        ("forwarded-for", "10.0.0.1"),
        ("x-original-forwarded-for", "10.0.0.1"),
        ("x-original-host", "intranet.example"),
        ("x_forwarded_user", "admin"),
        ("X-Custom-Auth", "admin"),
        ("x_custom_auth", "admin"),
    ];
    let forwarding = [
        ("forwarded", "for=10.0.0.1;host=intranet.example;proto=https"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-host", "intranet.example"),
        ("x-forwarded-proto", "https"),
    ];
    let mut sent: Vec<(&str, &str)> = spoofed.to_vec();
    sent.extend(forwarding);
    // On an open route and, signed in, on a protected one.
    let alice = token(&sign_in(&gw, "alice").await, COOKIE);
    let cookie = format!("{COOKIE}={alice}");
    let mut signed_in = sent.clone();
    signed_in.push(("cookie", cookie.as_str()));
    for (path, headers) in [("/public/page", &sent), ("/app/page", &signed_in)] {
        let reply = get(&gw, path, headers).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        let seen = &reply.json()["headers"];
        for (name, _) in spoofed {
            assert!(
                seen.get(name.to_ascii_lowercase()).is_none(),
                "{path}: {name} reached the upstream: {seen}"
            );
        }
        assert_eq!(
            seen["x-forwarded-for"], "127.0.0.1",
            "{path}: replaced, not appended to"
        );
        assert_eq!(seen["x-forwarded-host"], "app.test");
        assert_eq!(seen["x-forwarded-proto"], "http");
        assert_eq!(
            seen["forwarded"], "for=127.0.0.1;proto=http;host=\"app.test\"",
            "{path}: the gateway's own"
        );
    }
    gw.stop().await;
}

/// `requestreport`: a linked-in plugin that answers every call with the request the gateway
/// handed it (header lines, the client's address, and the cookie `__Host-portcullis-bind`
/// as the SDK reads it), so a test sees what any plugin could base a decision on.
struct RequestReporter;

impl RequestReporter {
    fn report(module: &ModuleContext, request: &HttpRequest) -> HttpResponse {
        let body = json!({
            "mount_path": module.mount_path,
            "path": request.path,
            "headers": request.headers,
            "remote_addr": request.remote_addr,
            "binding": request.cookie("__Host-portcullis-bind"),
            "other": request.cookie("other"),
        });
        HttpResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }
}

impl Plugin for RequestReporter {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "requestreport".into(),
            version: "0.0.0".into(),
            description: "reports the request it is handed (tests only)".into(),
            capabilities: vec![Capability::BrowserLogin],
            provisioning_path: None,
        }
    }

    fn validate_options(&self, _: &Value) -> Result<ModulePlan, Vec<OptionError>> {
        Ok(ModulePlan::default())
    }

    fn start_login(
        &self,
        _: &dyn Host,
        module: &ModuleContext,
        _: &str,
        request: &HttpRequest,
    ) -> Result<HttpResponse, PluginError> {
        Ok(Self::report(module, request))
    }

    fn handle(&self, _: &dyn Host, module: &ModuleContext, request: &HttpRequest) -> Result<Outcome, PluginError> {
        Ok(Outcome::Respond(Self::report(module, request)))
    }
}

#[tokio::test]
async fn plugins_are_handed_the_gateways_forwarding_headers_and_no_spoofed_ones() {
    // No built-in plugin reads these headers today; a plugin that did (a lockout or rate
    // limit per `X-Forwarded-For`, a URL built on `X-Forwarded-Host`, a trusted
    // `X-Forwarded-User`) must see what an upstream sees: the gateway's values.
    let upstream = Upstream::start().await;
    let report_route = "[[edges.app.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/report/\"\nbackend = \"up\"\n\
                        [edges.app.routes.auth]\nplugin = \"requestreport\"\n";
    let options = portcullis::server::StartOptions {
        extra_plugins: vec![Arc::new(test_plugin::TestLogin::default()), Arc::new(RequestReporter)],
        ..Default::default()
    };
    let gw = TestGateway::start_full(&config(upstream.addr, report_route), options).await;
    let spoofed = [
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-host", "intranet.example"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=10.0.0.1;host=intranet.example;proto=https"),
        ("x-real-ip", "10.0.0.1"),
        ("x-forwarded-user", "admin"),
        ("x_forwarded_user", "admin"),
        ("x-portcullis-user-email", "admin@example.com"),
        ("x-original-url", "/admin"),
        // A binding cookie named so that only Unicode trimming makes it the plugin's.
        ("cookie", "\u{2000}__Host-portcullis-bind=forged; other=1"),
    ];
    // The sign-in start (the gate's call) and a call to the plugin's own endpoint.
    let started = get(&gw, "/report/page", &spoofed).await;
    assert_eq!(started.status, 200, "{}", started.body);
    let mount = started.json()["mount_path"].as_str().unwrap().to_string();
    let handled = get(&gw, &format!("{mount}/anything"), &spoofed).await;
    assert_eq!(handled.status, 200, "{}", handled.body);
    // A plugin's endpoint reached by a path that normalises to it: the plugin is handed the
    // path routing chose it by.
    let roundabout = format!("/report/..{mount}/./x/../anything");
    let reply = get(&gw, &roundabout, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["path"], format!("{mount}/anything"), "{roundabout}");
    for (call, reply) in [("start_login", started), ("handle", handled)] {
        let seen = reply.json();
        let values = |name: &str| -> Vec<String> {
            seen["headers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|pair| pair[0] == name)
                .map(|pair| pair[1].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(values("x-forwarded-for"), ["127.0.0.1"], "{call}: {seen}");
        assert_eq!(values("x-forwarded-host"), ["app.test"], "{call}: {seen}");
        assert_eq!(values("x-forwarded-proto"), ["http"], "{call}: {seen}");
        assert_eq!(
            values("forwarded"),
            ["for=127.0.0.1;proto=http;host=\"app.test\""],
            "{call}: {seen}"
        );
        assert_eq!(values("host"), ["app.test"], "{call}: {seen}");
        for (name, _) in &spoofed[4..9] {
            assert!(values(name).is_empty(), "{call}: {name} reached the plugin: {seen}");
        }
        assert_eq!(seen["remote_addr"], "127.0.0.1", "{call}");
        assert_eq!(seen["binding"], Value::Null, "{call}: a look-alike cookie name: {seen}");
        assert_eq!(seen["other"], "1", "{call}: other cookies are handed on: {seen}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_reserved_path_reached_through_dot_segments_is_served_by_its_normalised_form() {
    let upstream = Upstream::start().await;
    let gw = start(upstream.addr, "").await;
    let jwks = get(&gw, "/_portcullis/jwks.json", &[]).await;
    assert_eq!(jwks.status, 200);
    // Routing sends these to the gateway's own paths; they must be read as the same path
    // (the old code sliced the raw path: a 404 for the first, and for the second, whose 14th
    // byte is inside an `é`, a panic that dropped the connection unanswered).
    for raw in ["/x/../_portcullis/jwks.json", "/aéééééé/../_portcullis/jwks.json"] {
        let request = format!("GET {raw} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(&gw, request.as_bytes())
            .await
            .expect("answered and closed");
        assert!(answer.starts_with("HTTP/1.1 200"), "{raw}: {answer}");
        assert!(answer.ends_with(&jwks.body), "{raw}: {answer}");
    }
    gw.stop().await;
}

// ----- cookie tossing -----

#[tokio::test]
async fn two_different_session_cookies_are_no_session_so_a_tossed_cookie_cannot_swap_sessions() {
    let upstream = Upstream::start().await;
    let gw = start(upstream.addr, "").await;
    let victim = token(&sign_in(&gw, "victim").await, COOKIE);
    let attacker = token(&sign_in(&gw, "attacker").await, COOKIE);
    let victim_cookie = format!("{COOKIE}={victim}");
    let attacker_cookie = format!("{COOKIE}={attacker}");
    assert_eq!(get(&gw, "/app/", &[("cookie", &victim_cookie)]).await.status, 200);
    // The attacker's cookie, set for the parent domain by a sibling subdomain, comes first
    // (browsers put longer paths first, and otherwise older cookies) or second.
    for cookies in [
        format!("{attacker_cookie}; {victim_cookie}"),
        format!("{victim_cookie}; {attacker_cookie}"),
    ] {
        let reply = get(&gw, "/app/", &[("cookie", &cookies)]).await;
        assert_eq!(reply.status, 303, "{cookies}: signed in as {:?}", reply.body);
    }
    // The same in two Cookie headers (HTTP/2 sends one per cookie).
    let url = format!("http://{}/app/", gw.gateway.edge_addr);
    let reply = send(
        Method::GET,
        &url,
        &[
            ("host", "app.test"),
            ("cookie", &attacker_cookie),
            ("cookie", &victim_cookie),
        ],
        None,
    )
    .await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    // One cookie sent twice is still one session.
    let twice = format!("{victim_cookie}; {victim_cookie}");
    assert_eq!(get(&gw, "/app/", &[("cookie", &twice)]).await.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn on_an_https_edge_the_session_cookie_is_host_only_and_the_plain_name_is_no_session() {
    let upstream = Upstream::start().await;
    let gw = gateway_behind_https(&upstream).await;
    let host_cookie = format!("__Host-{COOKIE}");
    let done = sign_in(&gw, "alice").await;
    assert!(set_cookie(&done, COOKIE).is_none(), "no cookie without the prefix");
    let cookie = set_cookie(&done, &host_cookie).expect("a __Host- cookie");
    let attributes: Vec<&str> = cookie.split("; ").skip(1).collect();
    for required in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
        assert!(attributes.contains(&required), "{required}: {cookie}");
    }
    assert!(
        !attributes.iter().any(|a| a.to_ascii_lowercase().starts_with("domain")),
        "no Domain, as the prefix requires: {cookie}"
    );
    let alice = token(&done, &host_cookie);
    let with_host = format!("{host_cookie}={alice}; other=1");
    let seen = get(&gw, "/app/page", &[("cookie", &with_host)]).await;
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert_eq!(
        seen.json()["headers"]["cookie"],
        "other=1",
        "the token stays at the gateway"
    );
    // The same token under the name a sibling subdomain can set is no session, and never
    // reaches an upstream either.
    let plain = format!("{COOKIE}={alice}; other=1");
    assert_eq!(get(&gw, "/app/page", &[("cookie", &plain)]).await.status, 303);
    assert_eq!(
        get(&gw, "/public/page", &[("cookie", &plain)]).await.json()["headers"]["cookie"],
        "other=1"
    );
    // Logout ends the session and clears the cookie, with the attributes it was set with.
    let out = get(&gw, "/_portcullis/logout", &[("cookie", &with_host)]).await;
    assert_eq!(
        set_cookie(&out, &host_cookie).unwrap(),
        format!("{host_cookie}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure")
    );
    assert!(
        set_cookie(&out, COOKIE).is_some(),
        "a cookie from before the prefix is cleared too"
    );
    assert_eq!(get(&gw, "/app/page", &[("cookie", &with_host)]).await.status, 303);
    gw.stop().await;
}

#[tokio::test]
async fn a_cookie_whose_name_only_looks_like_the_host_cookie_is_no_session() {
    // A sibling subdomain cannot set `__Host-portcullis.session`, but it can set a cookie for
    // the parent domain named "\u{2000}__Host-portcullis.session" (Chromium keeps the name as
    // written, and sends it as UTF-8 to every host of the domain). Trimmed as Unicode
    // whitespace it would read as the session cookie: the attacker's session for a victim
    // who has none, or no session at all for one who has one.
    let upstream = Upstream::start().await;
    let gw = gateway_behind_https(&upstream).await;
    let host_cookie = format!("__Host-{COOKIE}");
    let attacker = token(&sign_in(&gw, "attacker").await, &host_cookie);
    let victim = token(&sign_in(&gw, "victim").await, &host_cookie);
    for space in ['\u{2000}', '\u{00a0}', '\u{3000}', '\u{feff}', '\u{0085}'] {
        let tossed = format!("{space}{host_cookie}={attacker}");
        let reply = get(&gw, "/app/page", &[("cookie", &tossed)]).await;
        assert_eq!(
            reply.status,
            303,
            "{space:?}: signed in as {:?}",
            reply.json()["headers"]["x-portcullis-user-email"]
        );
        for jar in [
            format!("{tossed}; {host_cookie}={victim}"),
            format!("{host_cookie}={victim}; {tossed}"),
        ] {
            let reply = get(&gw, "/app/page", &[("cookie", &jar)]).await;
            assert_eq!(reply.status, 200, "{space:?}: the victim's own session: {}", reply.body);
            assert_eq!(reply.json()["headers"]["x-portcullis-user-email"], "victim@example.com");
        }
    }
    gw.stop().await;
}

// ----- bodies that never arrive or stall -----

#[tokio::test]
async fn a_sign_in_post_whose_body_never_arrives_is_answered_and_closed() {
    let upstream = Upstream::start().await;
    let gw = start(upstream.addr, "[proxy]\nbody_read_timeout_secs = 1\n").await;
    let mount = mount_path(&gw).await;
    let request = format!(
        "POST {mount}/login HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: 100\r\n\r\nuser=al"
    );
    let answer = raw_exchange(&gw, request.as_bytes()).await;
    let answer = answer.expect("the connection was still open: the body was waited for without end");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request id"), "a readable page: {answer}");
    // A body larger than the gateway reads is refused at once, whatever it announces.
    let request = format!("POST {mount}/login HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2000000\r\n\r\nuser=al");
    let answer = raw_exchange(&gw, request.as_bytes())
        .await
        .expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    gw.stop().await;
}

#[tokio::test]
async fn a_proxied_body_that_stalls_is_ended_with_408() {
    let upstream = Upstream::start().await;
    let gw = start(upstream.addr, "[proxy]\nbody_idle_timeout_secs = 1\n").await;
    for framing in [
        "Content-Length: 100\r\n\r\n0123456789",
        "Transfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
    ] {
        let request = format!("POST /public/upload HTTP/1.1\r\nHost: app.test\r\n{framing}");
        let answer = raw_exchange(&gw, request.as_bytes()).await;
        let answer = answer.unwrap_or_else(|| panic!("{framing}: the connection was still open"));
        assert!(answer.starts_with("HTTP/1.1 408"), "{framing}: {answer}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn an_upload_that_outlasts_the_response_timeout_is_not_cut_off() {
    // `upstream_response_timeout_secs` is the upstream's time to answer, not the client's to
    // upload: a body that keeps arriving for longer reaches the upstream whole; an upstream
    // that has the whole body and does not answer still gets its 504.
    let upstream = Upstream::start().await;
    let routes = "[[edges.app.routes]]\nmatch_type = \"exact_path\"\nmatch = \"/upload\"\nbackend = \"up\"\n\
                  [[edges.app.routes]]\nmatch_type = \"exact_path\"\nmatch = \"/slow\"\nbackend = \"up\"\n\
                  [proxy]\nupstream_response_timeout_secs = 1\n";
    let gw = start(upstream.addr, routes).await;
    let mut stream = TcpStream::connect(gw.gateway.edge_addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    // Ten bytes, one every 300 ms: the upload lasts well past the 1 s timeout, and never
    // pauses for long.
    let mut sent = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if stream.write_all(b"x").await.is_err() {
            break;
        }
        sent += 1;
    }
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "after {sent} of 10 bytes: {head}");
    assert_eq!(read_body(&mut stream, &head).await, "received 10 bytes");
    let url = format!("http://{}/slow", gw.gateway.edge_addr);
    let reply = send(Method::POST, &url, &[("host", "app.test")], Some(b"whole".to_vec())).await;
    assert_eq!(reply.status, 504, "{}", reply.body);
    upstream.go.notify_one();
    gw.stop().await;
}

/// An upstream that, told to by `go`, reads a request's body whole and answers its length;
/// until then it reads nothing of it, so a large body stops at the sockets' buffers.
async fn late_reader_upstream(go: Arc<tokio::sync::Notify>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let go = go.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let go = go.clone();
                async move {
                    go.notified().await;
                    let body = req.into_body().collect().await?.to_bytes();
                    let text = format!("received {} bytes", body.len());
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(text)).boxed()))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn waiting_on_an_upstream_that_reads_late_does_not_count_as_a_stalled_body() {
    let go = Arc::new(tokio::sync::Notify::new());
    let (upstream, task) = late_reader_upstream(go.clone()).await;
    let gw = start(upstream, "[proxy]\nbody_idle_timeout_secs = 1\n").await;
    // 32 MiB, far more than loopback sockets buffer: the client sends it all at once, and
    // the gateway waits on the upstream to take the rest.
    const SIZE: usize = 32 << 20;
    let stream = TcpStream::connect(gw.gateway.edge_addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        let head = format!("POST /public/big HTTP/1.1\r\nHost: app.test\r\nContent-Length: {SIZE}\r\n\r\n");
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(&vec![b'x'; SIZE]).await?;
        Ok::<_, std::io::Error>(writer)
    });
    // The upstream starts reading only after three idle timeouts; until then the client's
    // bytes wait in the buffers, which is no pause of the client's.
    tokio::time::sleep(Duration::from_secs(3)).await;
    go.notify_one();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(BOUND, async {
        while !answer.ends_with(b"bytes") && reader.read(&mut byte).await.unwrap_or(0) == 1 {
            answer.push(byte[0]);
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within the bound");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(&format!("received {SIZE} bytes")), "{answer}");
    sender.await.unwrap().unwrap();
    gw.stop().await;
    task.abort();
}

// ----- malformed chunked bodies -----

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_error_and_reaches_no_upstream() {
    let upstream = Upstream::start().await;
    // The test upstream's `/upload` signals when the first bytes of a body reach it.
    let upload = "[[edges.app.routes]]\nmatch_type = \"exact_path\"\nmatch = \"/upload\"\nbackend = \"up\"\n";
    let gw = start(upstream.addr, upload).await;
    for (case, body) in [
        (
            "an oversized chunk size",
            "FFFFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n",
        ),
        ("a bare LF after the chunk size", "5\nhello\r\n0\r\n\r\n"),
        ("a chunk size that is not hex", "zz\r\nhello\r\n0\r\n\r\n"),
    ] {
        let request = format!("POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let answer = raw_exchange(&gw, request.as_bytes())
            .await
            .expect("answered and closed");
        assert!(answer.starts_with("HTTP/1.1 400"), "{case}: {answer}");
        assert!(answer.contains("request id"), "{case}: a readable page: {answer}");
        assert_eq!(
            upstream.connections.load(Ordering::SeqCst),
            0,
            "{case}: the upstream was contacted"
        );
    }
    // Framing that breaks after forwarding began still is the client's error.
    let request = "POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
    let mut stream = TcpStream::connect(gw.gateway.edge_addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::timeout(BOUND, upstream.arrived.notified())
        .await
        .expect("the first chunk reached the upstream");
    stream.write_all(b"5\nworld\r\n0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(BOUND, stream.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    gw.stop().await;
}

/// The gateway of [`config`] with an https `public_url` in front of its edge (as behind a
/// TLS-terminating load balancer): its session cookie is the `__Host-` one.
async fn gateway_behind_https(upstream: &Upstream) -> TestGateway {
    let behind_tls = LISTENERS.replace(
        "[listeners.console]",
        "public_url = \"https://app.test\"\n[listeners.console]",
    );
    let text = config(upstream.addr, "").replacen(LISTENERS, &behind_tls, 1);
    TestGateway::start_full(&text, test_plugin::options()).await
}
