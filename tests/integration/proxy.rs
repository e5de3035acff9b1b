//! The edge proxy in front of a real upstream: routing, streaming both ways, WebSocket,
//! HTTP/2, forwarded headers, error pages, timeouts, reload and graceful shutdown.

use crate::harness::{dead_address, send, TestGateway, Upstream, LISTENERS};
use crate::upstreams::{header_values, App};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

#[tokio::test]
async fn routes_match_by_host_then_exact_then_longest_prefix() {
    let gw = TestGateway::start("").await;
    let upstream = Upstream::start().await;
    let (edge_id, _) = gw.create_route_to(upstream.addr, "app.test:80").await;
    let backend_id = gw.api(Method::GET, "/backends/static", None).await.json()["backends"][0]["id"].clone();
    let other = Upstream::start().await;
    let other_backend = gw
        .api(
            Method::POST,
            "/backends/static",
            Some(json!({"address": other.addr.to_string()})),
        )
        .await
        .json()["id"]
        .clone();
    let routes = format!("/edges/https/{edge_id}/routes");
    for (match_type, path, backend) in [
        ("path_prefix", "/api/", &other_backend),
        ("exact_path", "/api/health", &backend_id),
    ] {
        let reply = gw
            .api(
                Method::POST,
                &routes,
                Some(json!({"match_type": match_type, "match": path, "backend": {"backend_id": backend}})),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    // Stop the second upstream: a request routed to it gets a 502, so the status tells which route matched.
    drop(other);
    assert_eq!(
        gw.edge_get("app.test", "/api/health").await.status,
        200,
        "exact beats prefix"
    );
    assert_eq!(
        gw.edge_get("app.test", "/api/users").await.status,
        502,
        "longest prefix: the stopped upstream"
    );
    assert_eq!(
        gw.edge_get("APP.test:80", "/apix").await.status,
        200,
        "host is case-insensitive, `/` catches the rest"
    );
    let miss = gw.edge_get("other.test", "/").await;
    assert_eq!(miss.status, 404);
    assert!(miss.body.contains("No route"), "{}", miss.body);
    gw.stop().await;
}

#[tokio::test]
async fn forwarded_headers_are_set_and_hop_by_hop_headers_dropped() {
    // An application that reports every header line it gets, a repeated header once per line,
    // so a client's copy kept beside the gateway's value shows.
    let app = App::stdlib().await;
    let gw = TestGateway::start("").await;
    gw.create_route_to(app.addr, "app.test:80").await;
    let url = format!("http://{}/p?q=1", gw.gateway.edge_addr);
    let reply = send(
        Method::POST,
        &url,
        &[
            ("host", "app.test"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed.test"),
            ("x-request-id", "chosen-by-the-client"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic x"),
        ],
        Some(b"payload".to_vec()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = app.reported_after(0);
    assert_eq!(seen["request_line"], "POST /p?q=1 HTTP/1.1");
    assert_eq!(seen["body"], "payload");
    let values = |name| header_values(&seen, name);
    assert_eq!(
        values("x-forwarded-for"),
        ["127.0.0.1"],
        "a client's own X-Forwarded-For is replaced"
    );
    assert_eq!(values("x-forwarded-proto"), ["http"], "the client's value replaced");
    assert_eq!(values("x-forwarded-host"), ["app.test"], "the client's value replaced");
    assert_eq!(values("host"), ["app.test"]);
    let request_id = values("x-request-id");
    assert!(
        request_id.len() == 1 && request_id[0].len() == 32 && request_id[0].bytes().all(|b| b.is_ascii_hexdigit()),
        "the gateway's own request id, once: {request_id:?}"
    );
    assert!(
        values("x-secret").is_empty() && values("connection").is_empty(),
        "a header named by Connection is hop-by-hop: {seen}"
    );
    assert!(values("proxy-authorization").is_empty(), "{seen}");
    gw.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn response_body_streams_without_buffering() {
    let gw = TestGateway::start("").await;
    let upstream = Upstream::start().await;
    gw.create_route_to(upstream.addr, "app.test:80").await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::get(format!("http://{}/stream", gw.gateway.edge_addr))
        .header("host", "app.test")
        .body(Full::default())
        .unwrap();
    let mut body = client.request(request).await.unwrap().into_body();
    // The upstream sends its second chunk only after we have received the first through the gateway.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first;");
    upstream.go.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"second");
    gw.stop().await;
}

#[tokio::test]
async fn request_body_streams_without_buffering() {
    let gw = TestGateway::start("").await;
    let upstream = Upstream::start().await;
    gw.create_route_to(upstream.addr, "app.test:80").await;
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
    let client: Client<_, _> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{}/upload", gw.gateway.edge_addr))
        .header("host", "app.test")
        .body(body)
        .unwrap();
    let pending = tokio::spawn(async move { client.request(request).await });
    tx.send_data(Bytes::from(vec![b'a'; 1000])).await.unwrap();
    // The upstream has the first chunk while the client still holds the second.
    upstream.arrived.notified().await;
    tx.send_data(Bytes::from(vec![b'b'; 24])).await.unwrap();
    drop(tx);
    let response = pending.await.unwrap().unwrap();
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&text[..], b"received 1024 bytes");
    gw.stop().await;
}

#[tokio::test]
async fn websocket_upgrade_is_relayed() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let gw = TestGateway::start("").await;
    let upstream = Upstream::start().await;
    gw.create_route_to(upstream.addr, "ws.test:80").await;
    let mut request = format!("ws://{}/ws", gw.gateway.edge_addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert("host", "ws.test".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    for word in ["hello", "portcullis"] {
        ws.send(Message::text(word)).await.unwrap();
        let answer = ws.next().await.unwrap().unwrap();
        assert_eq!(answer.into_text().unwrap().as_str(), word.to_uppercase());
    }
    ws.close(None).await.unwrap();
    gw.stop().await;
}

#[tokio::test]
async fn http2_clients_are_served() {
    let gw = TestGateway::start("").await;
    let upstream = Upstream::start().await;
    gw.create_route_to(upstream.addr, "h2.test:80").await;
    let stream = tokio::net::TcpStream::connect(gw.gateway.edge_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get("http://h2.test/over-h2")
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["path"], "/over-h2");
    assert_eq!(seen["headers"]["host"], "h2.test");
    gw.stop().await;
}

#[tokio::test]
async fn http2_cookie_fields_reach_an_http1_upstream_as_one_cookie_line() {
    // HTTP/2 clients may send each cookie as its own `cookie` field (RFC 9113 section 8.2.3,
    // as browsers do for header compression); HTTP/1.1 allows one `Cookie` line, which
    // applications read as the whole jar (Python's `http.server` hands the first line to
    // `SimpleCookie`), so the fields are joined with "; " on the way.
    let app = App::stdlib().await;
    let gw = TestGateway::start("").await;
    gw.create_route_to(app.addr, "app.test:80").await;
    let stream = tokio::net::TcpStream::connect(gw.gateway.edge_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get("http://app.test/jar")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = app.reported_after(0);
    assert_eq!(seen["request_line"], "GET /jar HTTP/1.1");
    assert_eq!(header_values(&seen, "cookie"), ["a=1; b=2; c=3"], "{seen}");
    gw.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_upstream_is_504_with_request_id() {
    let gw = TestGateway::start("[proxy]\nupstream_response_timeout_secs = 1\n").await;
    let dead = dead_address().await;
    gw.create_route_to(dead, "down.test:80").await;
    let reply = gw.edge_get("down.test", "/").await;
    assert_eq!(reply.status, 502);
    let request_id = reply.headers["x-request-id"].to_str().unwrap().to_string();
    assert!(
        reply.body.contains("Upstream unavailable") && reply.body.contains(&request_id),
        "{}",
        reply.body
    );
    assert_eq!(reply.headers["content-type"], "text/html; charset=utf-8");

    let upstream = Upstream::start().await;
    gw.create_route_to(upstream.addr, "slow.test:80").await;
    let reply = gw.edge_get("slow.test", "/slow").await;
    assert_eq!(reply.status, 504);
    assert!(reply.body.contains("did not answer in time"), "{}", reply.body);
    upstream.go.notify_one();

    let metrics = send(
        Method::GET,
        &format!("http://{}/metrics", gw.gateway.console_addr),
        &[],
        None,
    )
    .await
    .body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("portcullis_upstream_errors_total{") && l.contains("kind=\"connect\"} 1")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("portcullis_upstream_errors_total{") && l.contains("kind=\"timeout\"} 1")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("portcullis_http_requests_total{") && l.contains("code=\"5xx\"} 1")),
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let gw = TestGateway::start("").await;
    let upstream = Upstream::start().await;
    let (_, route_id) = gw.create_route_to(upstream.addr, "m.test:80").await;
    for _ in 0..3 {
        assert_eq!(gw.edge_get("m.test", "/").await.status, 200);
    }
    let console = gw.gateway.console_addr;
    assert_eq!(
        send(Method::GET, &format!("http://{console}/healthz"), &[], None)
            .await
            .body,
        "ok\n"
    );
    assert_eq!(
        send(Method::GET, &format!("http://{console}/readyz"), &[], None)
            .await
            .status,
        200
    );
    let metrics = send(Method::GET, &format!("http://{console}/metrics"), &[], None)
        .await
        .body;
    let count = metrics
        .lines()
        .find(|l| l.starts_with("portcullis_http_request_duration_seconds_count{") && l.contains(&route_id))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(count.ends_with(" 3"), "{count}");
    assert!(metrics.contains("portcullis_http_requests_total{edge="), "{metrics}");
    gw.stop().await;
}

#[tokio::test]
async fn reload_applies_a_valid_config_and_keeps_serving_on_an_invalid_one() {
    let upstream = Upstream::start().await;
    let route = |host: &str| {
        format!(
            "[backends.up]\naddress = \"{}\"\n[edges.site]\nhostports = [\"{host}:80\"]\n[[edges.site.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/\"\nbackend = \"up\"\n",
            upstream.addr
        )
    };
    let gw = TestGateway::start(&route("before.test")).await;
    assert_eq!(gw.edge_get("before.test", "/").await.status, 200);
    std::fs::write(gw.config_path(), format!("{LISTENERS}{}", route("after.test"))).unwrap();
    gw.gateway.reload(&gw.config_path(), None).await.unwrap();
    assert_eq!(gw.edge_get("after.test", "/").await.status, 200);
    assert_eq!(
        gw.edge_get("before.test", "/").await.status,
        404,
        "the old edge is gone"
    );
    std::fs::write(
        gw.config_path(),
        format!("{LISTENERS}{}[edges.site]\nbogus = 1\n", route("broken.test")),
    )
    .unwrap();
    let err = gw
        .gateway
        .reload(&gw.config_path(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("duplicate key") || err.contains("TOML syntax error"),
        "{err}"
    );
    std::fs::write(
        gw.config_path(),
        format!(
            "{LISTENERS}{}",
            route("broken.test").replace("backend = \"up\"", "backend = \"nope\"")
        ),
    )
    .unwrap();
    let err = gw
        .gateway
        .reload(&gw.config_path(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("key `edges.site.routes[0].backend`: no backend named `nope`"),
        "{err}"
    );
    assert_eq!(
        gw.edge_get("after.test", "/").await.status,
        200,
        "the running config keeps serving"
    );
    gw.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let gw = TestGateway::start("").await;
    let upstream = Upstream::start().await;
    gw.create_route_to(upstream.addr, "drain.test:80").await;
    let edge = gw.gateway.edge_addr;
    let in_flight = tokio::spawn(async move {
        send(
            Method::GET,
            &format!("http://{edge}/slow"),
            &[("host", "drain.test")],
            None,
        )
        .await
    });
    upstream.arrived.notified().await;
    let shutdown = tokio::spawn(gw.gateway.shutdown());
    // The listener closes soon after shutdown begins; poll (bounded) until it refuses connections.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(edge).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(refused, "no new connections after shutdown began");
    assert!(!shutdown.is_finished(), "shutdown waits for the in-flight request");
    upstream.go.notify_one();
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "done");
    shutdown.await.unwrap();
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::start("[proxy]\nheader_read_timeout_secs = 1\n").await;
    let mut stream = tokio::net::TcpStream::connect(gw.gateway.edge_addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: slow.test\r\nX-Drip: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // A generous safety bound: the gateway closes after header_read_timeout_secs.
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), stream.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(read.is_ok(), "the connection was still open");
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    gw.stop().await;
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let gw = TestGateway::start("[proxy]\nworkers = 1\n").await;
    let upstream = Upstream::start().await;
    gw.create_route_to(upstream.addr, "pool.test:80").await;
    for i in 0..20 {
        let reply = gw.edge_get("pool.test", &format!("/n/{i}")).await;
        assert_eq!(reply.status, 200);
    }
    let connections = upstream.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        connections, 1,
        "20 sequential requests through one worker share one upstream connection"
    );
    gw.stop().await;
}
