//! The edge in front of real application servers a user would put behind it, each started by
//! the test on 127.0.0.1 at its defaults and stopped by its pid: Python's `http.server` serving
//! a folder of files, an application on its `BaseHTTPRequestHandler`
//! (`peers/upstream_stdlib.py`), Node's `http` server (`peers/upstream_node.mjs`) and uvicorn
//! serving an ASGI application (`peers/upstream_asgi.py`), over HTTP and WebSocket. The
//! applications write what they received to a report file that the test reads itself, never
//! through the gateway: the request line in origin-form, the path and query as sent, every
//! header line (a repeated header kept as separate lines), the identity and forwarded headers
//! exactly once each, and the body (with a length, and chunked). Also the shipped echo upstream.

use crate::harness::{send, set_cookie, Reply, TestGateway, LISTENERS};
use crate::test_plugin;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead};
use tokio::process::{Child, Command};

const COOKIE: &str = "portcullis.session";

/// A running application server, and the file where it reports what it received.
pub struct App {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl App {
    /// The application on Python's `BaseHTTPRequestHandler` (`peers/upstream_stdlib.py`).
    pub async fn stdlib() -> App {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("python3");
        command.arg(peer("upstream_stdlib.py")).arg(report_file(&dir));
        let (child, addr) = spawn_until_ready(command, "python3", base_url_line).await;
        App {
            name: "http.server",
            addr,
            child,
            dir,
        }
    }

    /// The application on Node's `http` server (`peers/upstream_node.mjs`).
    pub async fn node() -> App {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("node");
        command.arg(peer("upstream_node.mjs")).arg(report_file(&dir));
        let (child, addr) = spawn_until_ready(command, "node", base_url_line).await;
        App {
            name: "node http",
            addr,
            child,
            dir,
        }
    }

    /// The ASGI application (`peers/upstream_asgi.py`) under uvicorn, from the command line.
    pub async fn uvicorn() -> App {
        let python = crate::harness::tests_dir().join(".venv/bin/python");
        assert!(python.exists(), "tests/.venv is missing: run `make test-deps`");
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(python);
        command
            .args(["-m", "uvicorn", "upstream_asgi:app", "--app-dir"])
            .arg(crate::harness::tests_dir().join("peers"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .env("PORTCULLIS_UPSTREAM_REPORT", report_file(&dir));
        let (child, addr) = spawn_until_ready(command, "uvicorn", |line| {
            let rest = line.split("Uvicorn running on http://").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .await;
        App {
            name: "uvicorn",
            addr,
            child,
            dir,
        }
    }

    /// Every request the application reported, oldest first.
    pub fn reports(&self) -> Vec<Value> {
        match std::fs::read_to_string(report_file(&self.dir)) {
            Ok(text) => text.lines().map(|line| serde_json::from_str(line).unwrap()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The one request the application reported since it had `before` reports.
    pub fn reported_after(&self, before: usize) -> Value {
        let reports = self.reports();
        assert_eq!(
            reports.len(),
            before + 1,
            "{}: exactly one new request: {reports:?}",
            self.name
        );
        reports[before].clone()
    }

    /// Stops the server by its pid.
    pub async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

fn peer(script: &str) -> PathBuf {
    crate::harness::tests_dir().join("peers").join(script)
}

fn report_file(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("report.jsonl")
}

/// The address in a peer's `{"base_url": "http://127.0.0.1:PORT", ...}` line.
fn base_url_line(line: &str) -> Option<SocketAddr> {
    let ready: Value = serde_json::from_str(line).ok()?;
    ready["base_url"].as_str()?.strip_prefix("http://")?.parse().ok()
}

/// Starts `command` (killed by its pid when dropped) and reads its output, stdout and stderr
/// alike, until `ready` finds the address it listens on in a line. The output is read on until
/// the process ends, so a server never blocks on a full pipe.
async fn spawn_until_ready(
    mut command: Command,
    program: &str,
    ready: fn(&str) -> Option<SocketAddr>,
) -> (Child, SocketAddr) {
    let mut child = command
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e} (run `make test-deps`)"));
    let (lines, mut found) = tokio::sync::mpsc::unbounded_channel();
    let output = Arc::new(Mutex::new(Vec::new()));
    fn forward(
        stream: impl AsyncRead + Unpin + Send + 'static,
        lines: tokio::sync::mpsc::UnboundedSender<String>,
        output: Arc<Mutex<Vec<String>>>,
    ) {
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stream).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                output.lock().unwrap().push(line.clone());
                let _ = lines.send(line);
            }
        });
    }
    forward(child.stdout.take().unwrap(), lines.clone(), output.clone());
    forward(child.stderr.take().unwrap(), lines, output.clone());
    while let Some(line) = found.recv().await {
        if let Some(addr) = ready(&line) {
            return (child, addr);
        }
    }
    panic!(
        "{program} ended before it listened:\n{}",
        output.lock().unwrap().join("\n")
    );
}

/// The values of header `name` (any case) in a report, one per header line, in arrival order.
pub fn header_values(report: &Value, name: &str) -> Vec<String> {
    report["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| pair[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|pair| pair[1].as_str().unwrap().to_string())
        .collect()
}

/// Every header line of a report as (lower-case name, value), sorted by name; the lines of a
/// repeated header keep their arrival order.
fn header_lines(report: &Value) -> Vec<(String, String)> {
    let mut lines: Vec<(String, String)> = report["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_ascii_lowercase(),
                pair[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    lines
}

/// The one `X-Request-Id` the gateway sent: 32 hex digits.
fn assert_one_request_id(report: &Value, app: &str) {
    let ids = header_values(report, "x-request-id");
    assert_eq!(ids.len(), 1, "{app}: {ids:?}");
    assert!(
        ids[0].len() == 32 && ids[0].bytes().all(|b| b.is_ascii_hexdigit()),
        "{app}: {ids:?}"
    );
}

/// An edge per application (`<name>.test:80`): `/` open, `/private/` signed in with `testlogin`.
async fn gateway_for(apps: &[(&str, &App)]) -> TestGateway {
    let mut config = LISTENERS.to_string();
    for (host, app) in apps {
        config.push_str(&format!(
            "[backends.{host}]\naddress = \"{}\"\n[edges.{host}]\nhostports = [\"{host}.test:80\"]\n\
             [[edges.{host}.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/\"\nbackend = \"{host}\"\n\
             [[edges.{host}.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/private/\"\nbackend = \"{host}\"\n\
             [edges.{host}.routes.auth]\nplugin = \"testlogin\"\ngroups = [\"staff\", \"ops\"]\n",
            app.addr
        ));
    }
    TestGateway::start_full(&config, test_plugin::options()).await
}

async fn edge(gw: &TestGateway, method: Method, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    let url = format!("http://{}{path}", gw.gateway.edge_addr);
    send(method, &url, headers, body.map(|b| b.as_bytes().to_vec())).await
}

/// The three application servers, started one after the other.
async fn three_apps() -> [(&'static str, App); 3] {
    [
        ("stdlib", App::stdlib().await),
        ("node", App::node().await),
        ("uvicorn", App::uvicorn().await),
    ]
}

async fn stop_all(gw: TestGateway, apps: [(&'static str, App); 3]) {
    gw.stop().await;
    for (_, app) in apps {
        app.stop().await;
    }
}

#[tokio::test]
async fn python_http_server_serves_a_folder_of_files_through_the_edge() {
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("hello.txt"), "hello from http.server\n").unwrap();
    std::fs::create_dir(files.path().join("a b")).unwrap();
    std::fs::write(files.path().join("a b/c.txt"), "in a folder with a space\n").unwrap();
    // `python3 -m http.server`, as its documentation runs it, on a free loopback port.
    let mut command = Command::new("python3");
    command
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(files.path())
        .arg("0");
    let (mut server, addr) = spawn_until_ready(command, "python3 -m http.server", |line| {
        let port = line.strip_prefix("Serving HTTP on 127.0.0.1 port ")?;
        format!("127.0.0.1:{}", port.split_whitespace().next()?).parse().ok()
    })
    .await;
    let gw = TestGateway::start(&format!(
        "[backends.files]\naddress = \"{addr}\"\n[edges.files]\nhostports = [\"files.test:80\"]\n\
         [[edges.files.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/\"\nbackend = \"files\"\n"
    ))
    .await;
    let get = |path: &'static str| edge(&gw, Method::GET, path, &[("host", "files.test")], None);

    let file = get("/hello.txt").await;
    assert_eq!(file.status, 200, "{}", file.body);
    assert_eq!(file.body, "hello from http.server\n");
    assert_eq!(file.headers["content-type"], "text/plain");
    let nested = get("/a%20b/c.txt?download=1").await;
    assert_eq!(nested.status, 200, "{}", nested.body);
    assert_eq!(nested.body, "in a folder with a space\n");
    let listing = get("/").await;
    assert_eq!(listing.status, 200, "{}", listing.body);
    assert!(
        listing.body.contains("href=\"hello.txt\"") && listing.body.contains("href=\"a%20b/\""),
        "{}",
        listing.body
    );
    let folder = get("/a%20b").await;
    assert_eq!(folder.status, 301, "a folder without its slash is redirected");
    assert_eq!(
        folder.headers["location"], "/a%20b/",
        "the server's own path, not an address of the upstream"
    );
    let head = edge(&gw, Method::HEAD, "/hello.txt", &[("host", "files.test")], None).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["content-length"], "23");
    let missing = get("/missing.txt").await;
    assert_eq!(missing.status, 404, "the server's answer, passed on");
    assert!(missing.body.contains("File not found"), "{}", missing.body);
    gw.stop().await;
    server.kill().await.unwrap();
}

#[tokio::test]
async fn each_application_server_gets_origin_form_every_header_line_and_the_body() {
    let apps = three_apps().await;
    let gw = gateway_for(&apps.iter().map(|(h, a)| (*h, a)).collect::<Vec<_>>()).await;
    for (host, app) in &apps {
        let hostname = format!("{host}.test");
        let before = app.reports().len();
        let reply = edge(
            &gw,
            Method::POST,
            "/a%20b/c?x=1&y=%2F",
            &[
                ("host", &hostname),
                ("accept", "text/plain"),
                ("accept", "application/json"),
                ("x-custom", "one"),
                ("x-custom", "two, three"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
                ("content-type", "text/plain; charset=utf-8"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "spoofed.test"),
                ("forwarded", "for=203.0.113.9;proto=https"),
                ("x-request-id", "chosen-by-the-client"),
            ],
            Some("payload é"),
        )
        .await;
        assert_eq!(reply.status, 200, "{}: {}", app.name, reply.body);
        assert_eq!(reply.body, "reported\n", "{}", app.name);
        let seen = app.reported_after(before);
        assert_eq!(seen["request_line"], "POST /a%20b/c?x=1&y=%2F HTTP/1.1", "{}", app.name);
        assert_eq!(seen["path"], "/a%20b/c", "{}", app.name);
        assert_eq!(seen["query"], "x=1&y=%2F", "{}", app.name);
        assert_eq!(seen["body"], "payload é", "{}", app.name);
        assert_one_request_id(&seen, app.name);
        let lines: Vec<(String, String)> = header_lines(&seen)
            .into_iter()
            .filter(|(name, _)| name != "x-request-id")
            .collect();
        let forwarded = format!("for=127.0.0.1;proto=http;host=\"{hostname}\"");
        let expected: Vec<(String, String)> = [
            ("accept", "text/plain"),
            ("accept", "application/json"),
            ("content-length", "10"),
            ("content-type", "text/plain; charset=utf-8"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("forwarded", forwarded.as_str()),
            ("host", hostname.as_str()),
            ("x-custom", "one"),
            ("x-custom", "two, three"),
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-host", hostname.as_str()),
            ("x-forwarded-proto", "http"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(lines, expected, "{}: every header line, and nothing else", app.name);
    }
    stop_all(gw, apps).await;
}

#[tokio::test]
async fn each_application_server_gets_a_chunked_body_whole() {
    let apps = three_apps().await;
    let gw = gateway_for(&apps.iter().map(|(h, a)| (*h, a)).collect::<Vec<_>>()).await;
    for (host, app) in &apps {
        let before = app.reports().len();
        // A body of unknown length: hyper sends it chunked, and so does the gateway.
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(2);
        let client: Client<_, _> = Client::builder(TokioExecutor::new()).build_http();
        let request = Request::post(format!("http://{}/upload?part=2", gw.gateway.edge_addr))
            .header("host", format!("{host}.test"))
            .body(body)
            .unwrap();
        let pending = tokio::spawn(async move { client.request(request).await });
        tx.send_data(Bytes::from_static(b"first;")).await.unwrap();
        tx.send_data(Bytes::from_static(b"second")).await.unwrap();
        drop(tx);
        let response = pending.await.unwrap().unwrap();
        assert_eq!(response.status(), 200, "{}", app.name);
        let text = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&text[..], b"reported\n", "{}", app.name);
        let seen = app.reported_after(before);
        assert_eq!(seen["request_line"], "POST /upload?part=2 HTTP/1.1", "{}", app.name);
        assert_eq!(seen["body"], "first;second", "{}", app.name);
        assert_eq!(header_values(&seen, "transfer-encoding"), ["chunked"], "{}", app.name);
        assert!(
            header_values(&seen, "content-length").is_empty(),
            "{}: {seen}",
            app.name
        );
    }
    stop_all(gw, apps).await;
}

/// Signs `user` in on `host`'s protected route as a browser would; returns the session token.
async fn sign_in(gw: &TestGateway, host: &str, user: &str) -> String {
    let first = edge(gw, Method::GET, "/private/", &[("host", host)], None).await;
    assert_eq!(first.status, 303, "{}", first.body);
    let location = first.headers["location"].to_str().unwrap().to_string();
    let done = edge(
        gw,
        Method::GET,
        &format!("{location}&user={user}"),
        &[("host", host)],
        None,
    )
    .await;
    assert_eq!(done.status, 303, "{}", done.body);
    let cookie = set_cookie(&done, COOKIE).expect("a session cookie");
    cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_string()
}

/// What a client sends to pass itself off as someone else.
pub const SPOOFED_IDENTITY: [(&str, &str); 7] = [
    ("x-portcullis-user-id", "apu_admin"),
    ("X-Portcullis-User-Email", "admin@example.com"),
    ("x-portcullis-user-email", "root@example.com"),
    ("x-portcullis-user-name", "Admin"),
    ("x-portcullis-user-groups", "admins"),
    ("x-portcullis-assertion", "forged"),
    ("x-portcullis-access-token", "forged"),
];

/// The identity headers of a report for alice's session: each exactly once, with the session's
/// values (a client's copy replaced, never kept beside it); no access token (the module
/// forwards none).
pub fn assert_alices_identity_once(seen: &Value, app: &str) {
    let user_id = header_values(seen, "x-portcullis-user-id");
    assert!(
        user_id.len() == 1 && user_id[0].starts_with("apu_") && user_id[0] != "apu_admin",
        "{app}: {user_id:?}"
    );
    assert_eq!(
        header_values(seen, "x-portcullis-user-email"),
        ["alice@example.com"],
        "{app}"
    );
    assert_eq!(header_values(seen, "x-portcullis-user-name"), ["User alice"], "{app}");
    assert_eq!(header_values(seen, "x-portcullis-user-groups"), ["staff,ops"], "{app}");
    let assertion = header_values(seen, "x-portcullis-assertion");
    assert!(
        assertion.len() == 1 && assertion[0].split('.').count() == 3,
        "{app}: one signed assertion: {assertion:?}"
    );
    assert!(header_values(seen, "x-portcullis-access-token").is_empty(), "{app}");
}

#[tokio::test]
async fn each_application_server_gets_the_sessions_identity_once_and_no_session_cookie() {
    let apps = three_apps().await;
    let gw = gateway_for(&apps.iter().map(|(h, a)| (*h, a)).collect::<Vec<_>>()).await;
    for (host, app) in &apps {
        let hostname = format!("{host}.test");
        let token = sign_in(&gw, &hostname, "alice").await;
        let session_cookie = format!("{COOKIE}={token}");
        let before = app.reports().len();
        let mut headers = vec![
            ("host", hostname.as_str()),
            ("cookie", "a=1"),
            ("cookie", session_cookie.as_str()),
            ("cookie", "b=2"),
        ];
        headers.extend(SPOOFED_IDENTITY);
        let reply = edge(&gw, Method::GET, "/private/page?x=1", &headers, None).await;
        assert_eq!(reply.status, 200, "{}: {}", app.name, reply.body);
        let seen = app.reported_after(before);
        assert_eq!(seen["request_line"], "GET /private/page?x=1 HTTP/1.1", "{}", app.name);
        assert_alices_identity_once(&seen, app.name);
        assert_eq!(
            header_values(&seen, "cookie"),
            ["a=1; b=2"],
            "{}: the other cookies, without the session's",
            app.name
        );
        // The open route of the same edge: no identity at all.
        let before = app.reports().len();
        let reply = edge(&gw, Method::GET, "/open", &headers, None).await;
        assert_eq!(reply.status, 200, "{}: {}", app.name, reply.body);
        let seen = app.reported_after(before);
        for (name, _) in SPOOFED_IDENTITY {
            assert!(header_values(&seen, name).is_empty(), "{}: {name}: {seen}", app.name);
        }
    }
    stop_all(gw, apps).await;
}

#[tokio::test]
async fn a_websocket_reaches_uvicorn_in_origin_form_and_is_relayed() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let app = App::uvicorn().await;
    let gw = gateway_for(&[("ws", &app)]).await;
    let mut request = format!("ws://{}/ws/room%201?token=abc", gw.gateway.edge_addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert("host", "ws.test".parse().unwrap());
    request.headers_mut().append("x-custom", "one".parse().unwrap());
    request.headers_mut().append("x-custom", "two".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    for word in ["hello", "portcullis"] {
        ws.send(Message::text(word)).await.unwrap();
        let answer = ws.next().await.unwrap().unwrap();
        assert_eq!(answer.into_text().unwrap().as_str(), word.to_uppercase());
    }
    ws.close(None).await.unwrap();
    let seen = app.reported_after(0);
    assert_eq!(seen["type"], "websocket");
    assert_eq!(seen["request_line"], "GET /ws/room%201?token=abc HTTP/1.1");
    assert_eq!(seen["path"], "/ws/room%201");
    assert_eq!(seen["query"], "token=abc");
    assert_eq!(header_values(&seen, "host"), ["ws.test"]);
    assert_eq!(header_values(&seen, "upgrade"), ["websocket"]);
    assert_eq!(header_values(&seen, "connection"), ["upgrade"]);
    assert_eq!(header_values(&seen, "x-custom"), ["one", "two"]);
    assert_eq!(header_values(&seen, "sec-websocket-version"), ["13"]);
    assert_eq!(header_values(&seen, "x-forwarded-proto"), ["http"]);
    assert_one_request_id(&seen, app.name);
    gw.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn an_http2_request_reaches_node_as_an_http11_request_in_origin_form() {
    let app = App::node().await;
    let gw = gateway_for(&[("h2", &app)]).await;
    let stream = tokio::net::TcpStream::connect(gw.gateway.edge_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    // HTTP/2 carries the target as :scheme, :authority and :path; the upstream gets origin-form.
    let request = Request::post("http://h2.test/over%20h2?x=1")
        .header("accept", "text/plain")
        .header("accept", "application/json")
        .body(http_body_util::Full::new(Bytes::from_static(b"over h2")))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let seen = app.reported_after(0);
    assert_eq!(seen["request_line"], "POST /over%20h2?x=1 HTTP/1.1");
    assert_eq!(header_values(&seen, "host"), ["h2.test"]);
    assert_eq!(header_values(&seen, "accept"), ["text/plain", "application/json"]);
    assert_eq!(seen["body"], "over h2");
    gw.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn the_echo_upstream_shows_the_origin_form_target_and_repeated_headers_apart() {
    let gw = TestGateway::start("[echo]\naddress = \"127.0.0.1:0\"\n").await;
    let echo = gw.gateway.echo_addr.unwrap();
    gw.create_route_to(echo, "echo.test:80").await;
    let reply = edge(
        &gw,
        Method::GET,
        "/p?q=1",
        &[
            ("host", "echo.test"),
            ("accept", "text/html"),
            ("accept", "application/json"),
            ("x-forwarded-proto", "https"),
        ],
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = reply.json();
    assert_eq!(seen["target"], "/p?q=1", "origin-form");
    assert_eq!(seen["path"], "/p");
    assert_eq!(seen["query"], "q=1");
    let headers = &seen["headers"];
    assert_eq!(headers["accept"], serde_json::json!(["text/html", "application/json"]));
    assert_eq!(headers["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(headers["host"], serde_json::json!(["echo.test"]));
    gw.stop().await;
}
