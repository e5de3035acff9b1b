//! Starting the gateway and a real upstream for a test, and a small HTTP client.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::server::StartOptions;
use portcullis::{Config, Gateway};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// The listeners part of every test config: free ports on loopback.
pub const LISTENERS: &str = r#"version = 1
[listeners.edge]
address = "127.0.0.1:0"
[listeners.console]
address = "127.0.0.1:0"
"#;

/// A gateway running in this process with its own data dir and an API key.
pub struct TestGateway {
    pub gateway: Gateway,
    pub dir: tempfile::TempDir,
    pub token: String,
}

impl TestGateway {
    /// Starts a gateway whose config is [`LISTENERS`] followed by `extra`.
    pub async fn start(extra: &str) -> TestGateway {
        Self::start_with(&format!("{LISTENERS}{extra}")).await
    }

    /// Starts a gateway on this whole config text.
    pub async fn start_with(config: &str) -> TestGateway {
        Self::start_full(config, StartOptions::default()).await
    }

    /// Starts a gateway on this whole config text, with a clock and extra plugins.
    pub async fn start_full(config: &str, options: StartOptions) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        Self::start_in_with(dir, options).await
    }

    /// Starts a gateway on the `config.toml` already written in `dir`.
    pub async fn start_in(dir: tempfile::TempDir) -> TestGateway {
        Self::start_in_with(dir, StartOptions::default()).await
    }

    pub async fn start_in_with(dir: tempfile::TempDir, options: StartOptions) -> TestGateway {
        let config = Config::load(&dir.path().join("config.toml")).unwrap();
        let gateway = Gateway::start_with(config, options).await.unwrap();
        let (_, token) = portcullis::admin::create_api_key(gateway.shared(), "test".into())
            .await
            .unwrap();
        TestGateway { gateway, dir, token }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}/api{path}", self.gateway.console_addr)
    }

    /// An authenticated API request with `Ngrok-Version: 2`.
    pub async fn api(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let auth = format!("Bearer {}", self.token);
        let headers = [
            ("ngrok-version", "2"),
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        send(
            method,
            &self.api_url(path),
            &headers,
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }

    /// A GET to the edge listener with the given Host header.
    pub async fn edge_get(&self, host: &str, path: &str) -> Reply {
        let url = format!("http://{}{path}", self.gateway.edge_addr);
        send(Method::GET, &url, &[("host", host)], None).await
    }

    /// Creates a static backend, an edge on `hostport` and a `path_prefix /` route through the API.
    pub async fn create_route_to(&self, upstream: SocketAddr, hostport: &str) -> (String, String) {
        let backend = self
            .api(
                Method::POST,
                "/backends/static",
                Some(serde_json::json!({"address": upstream.to_string()})),
            )
            .await;
        assert_eq!(backend.status, 201, "{}", backend.body);
        let edge = self
            .api(
                Method::POST,
                "/edges/https",
                Some(serde_json::json!({"hostports": [hostport]})),
            )
            .await;
        assert_eq!(edge.status, 201, "{}", edge.body);
        let edge_id = edge.json()["id"].as_str().unwrap().to_string();
        let route = self
            .api(
                Method::POST,
                &format!("/edges/https/{edge_id}/routes"),
                Some(serde_json::json!({"match_type": "path_prefix", "match": "/", "backend": {"backend_id": backend.json()["id"]}})),
            )
            .await;
        assert_eq!(route.status, 201, "{}", route.body);
        (edge_id, route.json()["id"].as_str().unwrap().to_string())
    }

    pub async fn stop(self) {
        self.gateway.shutdown().await;
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts an API error in ngrok's shape and returns its message.
    pub fn assert_api_error(&self, status: u16, code: u16) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        assert_eq!(v["error_code"], format!("ERR_PORTCULLIS_{code}"), "{}", self.body);
        assert_eq!(v["status_code"], status);
        assert!(
            v["details"]["operation_id"].as_str().unwrap().starts_with("op_"),
            "{}",
            self.body
        );
        v["msg"].as_str().unwrap().to_string()
    }
}

/// Sends one HTTP/1.1 request and reads the whole response.
pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    send_on(&client, method, url, headers, body).await
}

/// Sends one request on `client` (plain, or with a TLS connector) and reads the whole response.
pub async fn send_on<C>(
    client: &Client<C, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Reply
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

type UpstreamBody = BoxBody<Bytes, std::io::Error>;

/// A real HTTP upstream on a free port, independent of the gateway's code.
///
/// - any path: JSON `{"method","path","headers","body"}` of what it received (a header
///   received on several lines as an array of its values);
/// - `/stream`: sends `first`, waits for [`Upstream::go`], then sends `second`;
/// - `/upload`: reads one body frame, signals [`Upstream::arrived`], reads the rest, answers the total length;
/// - `/redirect`: a 302 to `/elsewhere`;
/// - `/slow`: signals [`Upstream::arrived`], then answers only after [`Upstream::go`];
/// - `/ws`: a WebSocket that echoes text messages in upper case.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    pub go: Arc<Notify>,
    pub arrived: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let go = Arc::new(Notify::new());
        let arrived = Arc::new(Notify::new());
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (g, f, c) = (go.clone(), arrived.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (g, f) = (g.clone(), f.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| upstream_handle(req, g.clone(), f.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream {
            addr,
            connections,
            go,
            arrived,
            task,
        }
    }
}

fn boxed(text: impl Into<Bytes>) -> UpstreamBody {
    Full::new(text.into()).map_err(|never| match never {}).boxed()
}

async fn upstream_handle(
    mut req: Request<Incoming>,
    go: Arc<Notify>,
    arrived: Arc<Notify>,
) -> Result<hyper::Response<UpstreamBody>, std::io::Error> {
    match req.uri().path() {
        "/stream" => {
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
            tokio::spawn(async move {
                let _ = tx.send_data(Bytes::from_static(b"first;")).await;
                go.notified().await;
                let _ = tx.send_data(Bytes::from_static(b"second")).await;
            });
            Ok(hyper::Response::new(body.boxed()))
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut total = 0;
            let mut signalled = false;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() {
                    total += data.len();
                    if !signalled {
                        arrived.notify_one();
                        signalled = true;
                    }
                }
            }
            Ok(hyper::Response::new(boxed(format!("received {total} bytes"))))
        }
        "/redirect" => Ok(hyper::Response::builder()
            .status(302)
            .header("location", "/elsewhere")
            .body(boxed(""))
            .unwrap()),
        "/slow" => {
            arrived.notify_one();
            go.notified().await;
            Ok(hyper::Response::new(boxed("done")))
        }
        "/ws" => {
            let key = req
                .headers()
                .get("sec-websocket-key")
                .cloned()
                .unwrap_or(http::HeaderValue::from_static(""));
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                use futures_util::{SinkExt, StreamExt};
                let Ok(upgraded) = on_upgrade.await else { return };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(text) = msg {
                        let _ = ws
                            .send(tokio_tungstenite::tungstenite::Message::text(text.to_uppercase()))
                            .await;
                    }
                }
            });
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            Ok(hyper::Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(boxed(""))
                .unwrap())
        }
        _ => {
            let method = req.method().to_string();
            let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            // A header received once is a string; one received on several lines is an array of
            // its values, so an assertion expecting one value notices a duplicate.
            let mut headers = serde_json::Map::new();
            for name in req.headers().keys() {
                let values: Vec<Value> = req
                    .headers()
                    .get_all(name)
                    .iter()
                    .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect();
                let value = match <[Value; 1]>::try_from(values) {
                    Ok([one]) => one,
                    Err(many) => Value::Array(many),
                };
                headers.insert(name.to_string(), value);
            }
            let body = req
                .into_body()
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            let reply = serde_json::json!({"method": method, "path": path, "headers": headers, "body": String::from_utf8_lossy(&body)});
            Ok(hyper::Response::new(boxed(reply.to_string())))
        }
    }
}

/// A loopback address where nothing listens.
pub async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A plugin library of this workspace, built by `make test` (`cargo build --workspace`).
pub fn plugin_library(crate_name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../target/debug/lib{crate_name}.so"));
    assert!(
        path.is_file(),
        "{} is missing: run `make test` (it builds the plugin libraries first)",
        path.display()
    );
    path
}

/// The value a `Set-Cookie` header of `reply` gives cookie `name`.
pub fn set_cookie(reply: &Reply, name: &str) -> Option<String> {
    reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

/// The `tests/` folder of the repository.
pub fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests")
}

/// Runs a peer script (`program tests/peers/<script> args...`), asserts it succeeded, and
/// returns the one JSON line it printed.
pub async fn run_peer(program: &std::path::Path, script: &str, args: &[&str]) -> Value {
    let output = tokio::process::Command::new(program)
        .arg(tests_dir().join("peers").join(script))
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{script} printed no JSON line ({e}): {stdout}"))
}

/// The `Location` of a redirect.
pub fn location(reply: &Reply) -> String {
    reply.headers["location"].to_str().unwrap().to_string()
}

/// The session token a sign-in set (cookie `portcullis.session`).
pub fn session_token(reply: &Reply) -> String {
    const COOKIE: &str = "portcullis.session";
    let cookie = set_cookie(reply, COOKIE).unwrap_or_else(|| panic!("no session cookie: {reply:?}"));
    cookie[COOKIE.len() + 1..].split(';').next().unwrap().to_string()
}

/// What the test upstream echoed of the request it received (a 200 is required).
pub fn echoed(reply: &Reply) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).unwrap()
}

/// A sign-in the gateway refused: `status`, no session cookie, a readable page with the request id.
#[track_caller]
pub fn assert_sign_in_refused(reply: &Reply, status: u16, case: &str) {
    assert_eq!(reply.status, status, "{case}: {}", reply.body);
    assert!(set_cookie(reply, "portcullis.session").is_none(), "{case}");
    assert!(
        reply.body.contains("request id"),
        "{case}: a readable page: {}",
        reply.body
    );
}

/// Signs `user` (password `<user>-password`) in at `url` in headless Chromium
/// (`peers/browser_login.mjs`), pressing a consent form's button too when `consent`; asserts
/// the browser ended back on `url` and returns what the upstream echoed there, and the
/// browser's cookies.
pub async fn browser_sign_in(url: &str, user: &str, consent: bool) -> (Value, Value) {
    assert!(
        tests_dir().join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run `make test-deps`"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium is missing: run `make test-deps`"
    );
    let password = format!("{user}-password");
    let mut args = vec![url, user, password.as_str()];
    if consent {
        args.push("consent");
    }
    let result = run_peer(std::path::Path::new("node"), "browser_login.mjs", &args).await;
    assert_eq!(result["url"], url, "the browser is back on the page it asked for");
    let seen = serde_json::from_str(result["body"].as_str().unwrap()).unwrap();
    (seen, result["cookies"].clone())
}

/// Fails if the bytes of `secret` appear in any file under `dir` (a stopped gateway's data dir).
pub fn assert_stored_nowhere(dir: &Path, secret: &str) {
    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else if path.is_file() {
                out.push(path);
            }
        }
        out
    }
    let files = walk(dir);
    assert!(!files.is_empty(), "nothing stored under {}", dir.display());
    for file in files {
        let Ok(bytes) = std::fs::read(&file) else { continue };
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "found in {}",
            file.display()
        );
    }
}

/// Start options whose clock the test moves by hand, and that clock.
pub fn manual_clock() -> (portcullis::clock::ManualClock, StartOptions) {
    let clock = portcullis::clock::ManualClock::new();
    let options = StartOptions {
        clock: Arc::new(clock.clone()),
        ..StartOptions::default()
    };
    (clock, options)
}
