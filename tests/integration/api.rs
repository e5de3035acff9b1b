//! The management API: ngrok's shapes, its error body for every bad input, paging, config-owned
//! objects, and durability of acknowledged writes.

use crate::harness::{assert_stored_nowhere, manual_clock, send, TestGateway, Upstream, LISTENERS};
use http::Method;
use portcullis::clock::Clock;
use serde_json::json;

#[tokio::test]
async fn missing_version_header_is_400_in_ngroks_shape() {
    let gw = TestGateway::start("").await;
    let auth = format!("Bearer {}", gw.token);
    let reply = send(Method::GET, &gw.api_url("/api_keys"), &[("authorization", &auth)], None).await;
    let msg = reply.assert_api_error(400, 100);
    assert_eq!(msg, "the Ngrok-Version header must be set to 2");
    let reply = send(
        Method::GET,
        &gw.api_url("/api_keys"),
        &[("authorization", &auth), ("ngrok-version", "1")],
        None,
    )
    .await;
    reply.assert_api_error(400, 100);
    gw.stop().await;
}

#[tokio::test]
async fn the_api_answers_only_addresses_in_allow_cidrs() {
    let gw = TestGateway::start("[api]\nallow_cidrs = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n").await;
    // Refused before anything else is looked at, with a valid key or none.
    let msg = gw
        .api(Method::GET, "/edges/https", None)
        .await
        .assert_api_error(403, 112);
    assert!(msg.contains("127.0.0.1"), "{msg}");
    send(Method::GET, &gw.api_url("/api_keys"), &[], None)
        .await
        .assert_api_error(403, 112);
    // Health and metrics stay open to load balancers and scrapers.
    let health = send(
        Method::GET,
        &format!("http://{}/healthz", gw.gateway.console_addr),
        &[],
        None,
    )
    .await;
    assert_eq!(health.status, 200);

    // A reload that lets loopback in applies to the next request.
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(gw.config_path(), text.replace("\"2001:db8::/32\"", "\"127.0.0.1\"")).unwrap();
    gw.gateway.reload(&gw.config_path(), None).await.unwrap();
    assert_eq!(gw.api(Method::GET, "/edges/https", None).await.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn missing_malformed_or_unknown_token_is_401() {
    let gw = TestGateway::start("").await;
    let url = gw.api_url("/edges/https");
    send(Method::GET, &url, &[("ngrok-version", "2")], None)
        .await
        .assert_api_error(401, 101);
    send(
        Method::GET,
        &url,
        &[("ngrok-version", "2"), ("authorization", "Basic abc")],
        None,
    )
    .await
    .assert_api_error(401, 101);
    send(
        Method::GET,
        &url,
        &[("ngrok-version", "2"), ("authorization", "Bearer pcl_not_a_key")],
        None,
    )
    .await
    .assert_api_error(401, 102);
    // A key stops working as soon as it is deleted.
    let created = gw
        .api(Method::POST, "/api_keys", Some(json!({"description": "short-lived"})))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let key = created.json();
    let token = key["token"].as_str().unwrap().to_string();
    let auth = format!("Bearer {token}");
    assert_eq!(
        send(
            Method::GET,
            &url,
            &[("ngrok-version", "2"), ("authorization", &auth)],
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(
        gw.api(
            Method::DELETE,
            &format!("/api_keys/{}", key["id"].as_str().unwrap()),
            None
        )
        .await
        .status,
        204
    );
    send(
        Method::GET,
        &url,
        &[("ngrok-version", "2"), ("authorization", &auth)],
        None,
    )
    .await
    .assert_api_error(401, 102);
    gw.stop().await;
}

#[tokio::test]
async fn api_key_token_is_shown_once_and_never_stored() {
    let gw = TestGateway::start("").await;
    let created = gw
        .api(
            Method::POST,
            "/api_keys",
            Some(json!({"description": "ci", "metadata": "{\"team\":\"x\"}"})),
        )
        .await;
    assert_eq!(created.status, 201);
    let key = created.json();
    let token = key["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("pcl_") && token.len() == 48, "{token}");
    let id = key["id"].as_str().unwrap();
    let fetched = gw.api(Method::GET, &format!("/api_keys/{id}"), None).await.json();
    assert_eq!(fetched["token"], serde_json::Value::Null);
    assert_eq!(fetched["description"], "ci");
    let listed = gw.api(Method::GET, "/api_keys", None).await.json();
    assert!(listed["keys"].as_array().unwrap().iter().all(|k| k["token"].is_null()));
    let TestGateway { gateway, dir, .. } = gw;
    gateway.shutdown().await;
    assert_stored_nowhere(&dir.path().join("data"), &token);
}

#[tokio::test]
async fn bad_bodies_and_unknown_ids_get_exact_errors() {
    let gw = TestGateway::start("[api]\nmax_body_bytes = 256\n").await;
    let msg = gw
        .api(Method::GET, "/backends/static/bkdst_nope", None)
        .await
        .assert_api_error(404, 106);
    assert_eq!(msg, "static backend `bkdst_nope` was not found");
    gw.api(Method::GET, "/edges/https/edghts_nope/routes/edghtsrt_x", None)
        .await
        .assert_api_error(404, 106);
    let msg = gw
        .api(
            Method::POST,
            "/backends/static",
            Some(json!({"address": "x".repeat(300)})),
        )
        .await
        .assert_api_error(413, 103);
    assert_eq!(msg, "the request body is larger than the limit of 256 bytes");
    let auth = format!("Bearer {}", gw.token);
    let headers = [("ngrok-version", "2"), ("authorization", auth.as_str())];
    let reply = send(
        Method::POST,
        &gw.api_url("/backends/static"),
        &headers,
        Some(b"{not json".to_vec()),
    )
    .await;
    let msg = reply.assert_api_error(400, 104);
    assert!(
        msg.starts_with("the request body is invalid: key must be a string"),
        "{msg}"
    );
    let msg = gw
        .api(
            Method::POST,
            "/backends/static",
            Some(json!({"address": "127.0.0.1:1", "adress": 1})),
        )
        .await
        .assert_api_error(400, 104);
    assert!(msg.contains("unknown field `adress`"), "{msg}");
    let msg = gw
        .api(Method::POST, "/backends/static", Some(json!({"address": 12})))
        .await
        .assert_api_error(400, 104);
    assert!(msg.contains("invalid type: integer `12`, expected a string"), "{msg}");
    let msg = gw
        .api(Method::POST, "/backends/static", Some(json!({"address": "no-port"})))
        .await
        .assert_api_error(400, 105);
    assert_eq!(
        msg,
        "invalid `address`: address `no-port` is not host:port (the port is required)"
    );
    let msg = gw
        .api(
            Method::POST,
            "/edges/https",
            Some(json!({"hostports": ["bad host:80"]})),
        )
        .await
        .assert_api_error(400, 105);
    assert!(msg.starts_with("invalid `hostports[0]`"), "{msg}");
    gw.api(Method::GET, "/tunnels", None).await.assert_api_error(404, 107);
    gw.api(Method::PUT, "/api_keys", None).await.assert_api_error(405, 108);
    gw.api(Method::GET, "/api_keys?limit=0", None)
        .await
        .assert_api_error(400, 111);
    gw.api(Method::GET, "/api_keys?limit=101", None)
        .await
        .assert_api_error(400, 111);
    gw.stop().await;
}

#[tokio::test]
async fn routes_validate_and_conflicts_are_409() {
    let gw = TestGateway::start("").await;
    let upstream = Upstream::start().await;
    let (edge_id, _) = gw.create_route_to(upstream.addr, "one.test:80").await;
    let routes = format!("/edges/https/{edge_id}/routes");
    let msg = gw
        .api(
            Method::POST,
            &routes,
            Some(json!({"match_type": "regex", "match": "/"})),
        )
        .await
        .assert_api_error(400, 105);
    assert_eq!(
        msg,
        "invalid `match_type`: `regex` is not one of exact_path, path_prefix"
    );
    let msg = gw
        .api(Method::POST, &routes, Some(json!({"match_type": "path_prefix"})))
        .await
        .assert_api_error(400, 105);
    assert_eq!(msg, "invalid `match`: is required");
    let msg = gw
        .api(
            Method::POST,
            &routes,
            Some(json!({"match_type": "exact_path", "match": "/x", "backend": {"backend_id": "bkdst_missing"}})),
        )
        .await
        .assert_api_error(400, 105);
    assert_eq!(msg, "invalid `backend.backend_id`: no static backend `bkdst_missing`");
    let msg = gw
        .api(
            Method::POST,
            &routes,
            Some(json!({"match_type": "path_prefix", "match": "/"})),
        )
        .await
        .assert_api_error(409, 110);
    assert!(msg.contains("already matches path_prefix `/`"), "{msg}");
    let msg = gw
        .api(
            Method::POST,
            "/edges/https",
            Some(json!({"hostports": ["ONE.test:80"]})),
        )
        .await
        .assert_api_error(409, 110);
    assert_eq!(
        msg,
        format!("hostport `ONE.test:80` is already served by edge `{edge_id}`")
    );
    // A backend in use cannot be deleted.
    let backends = gw.api(Method::GET, "/backends/static", None).await.json();
    let backend_id = backends["backends"][0]["id"].as_str().unwrap().to_string();
    let msg = gw
        .api(Method::DELETE, &format!("/backends/static/{backend_id}"), None)
        .await
        .assert_api_error(409, 110);
    assert!(msg.contains("is used by route(s)"), "{msg}");
    gw.stop().await;
}

#[tokio::test]
async fn objects_the_api_creates_are_made_at_the_gateways_clock() {
    let (clock, options) = manual_clock();
    let gw = TestGateway::start_full(LISTENERS, options).await;
    // A thousand days ahead of the wall clock: only the gateway's clock can say this time.
    clock.advance(1000 * 86_400);
    let expected = time::OffsetDateTime::from_unix_timestamp(clock.now())
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let key = gw
        .api(Method::POST, "/api_keys", Some(json!({"description": "clocked"})))
        .await;
    assert_eq!(key.status, 201, "{}", key.body);
    assert_eq!(key.json()["created_at"], expected.as_str(), "{}", key.body);
    let backend = gw
        .api(
            Method::POST,
            "/backends/static",
            Some(json!({"address": "127.0.0.1:9"})),
        )
        .await;
    assert_eq!(backend.json()["created_at"], expected.as_str(), "{}", backend.body);
    let edge = gw
        .api(
            Method::POST,
            "/edges/https",
            Some(json!({"hostports": ["clock.test:80"]})),
        )
        .await;
    assert_eq!(edge.json()["created_at"], expected.as_str(), "{}", edge.body);
    let edge_id = edge.json()["id"].as_str().unwrap().to_string();
    let route = gw
        .api(
            Method::POST,
            &format!("/edges/https/{edge_id}/routes"),
            Some(json!({"match_type": "path_prefix", "match": "/", "backend": {"backend_id": backend.json()["id"]}})),
        )
        .await;
    assert_eq!(route.json()["created_at"], expected.as_str(), "{}", route.body);
    gw.stop().await;
}

#[tokio::test]
async fn lists_page_newest_first_with_next_page_uri() {
    let gw = TestGateway::start("").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let reply = gw
            .api(
                Method::POST,
                "/backends/static",
                Some(json!({"address": format!("127.0.0.1:{}", 1000 + i)})),
            )
            .await;
        ids.push(reply.json()["id"].as_str().unwrap().to_string());
    }
    ids.sort();
    ids.reverse();
    let mut seen = Vec::new();
    let mut url = gw.api_url("/backends/static?limit=2");
    let auth = format!("Bearer {}", gw.token);
    let mut pages = 0;
    loop {
        let page = send(
            Method::GET,
            &url,
            &[("ngrok-version", "2"), ("authorization", &auth)],
            None,
        )
        .await
        .json();
        pages += 1;
        seen.extend(
            page["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["id"].as_str().unwrap().to_string()),
        );
        match page["next_page_uri"].as_str() {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);
    let default_page = gw.api(Method::GET, "/backends/static", None).await.json();
    assert_eq!(default_page["backends"].as_array().unwrap().len(), 5);
    assert!(default_page["next_page_uri"].is_null());
    assert_eq!(default_page["uri"], gw.api_url("/backends/static"));
    gw.stop().await;
}

#[tokio::test]
async fn config_objects_are_listed_and_read_only() {
    let gw = TestGateway::start(
        "[backends.app]\naddress = \"127.0.0.1:9\"\n[edges.site]\nhostports = [\"site.test:80\"]\n[[edges.site.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/\"\nbackend = \"app\"\n",
    )
    .await;
    let file = gw.config_path().display().to_string();
    let edges = gw.api(Method::GET, "/edges/https", None).await.json();
    let edge = &edges["https_edges"][0];
    assert_eq!(edge["hostports"], json!(["site.test:80"]));
    let edge_id = edge["id"].as_str().unwrap();
    let route_id = edge["routes"][0]["id"].as_str().unwrap();
    let backend_id = edge["routes"][0]["backend"]["backend"]["id"].as_str().unwrap();
    for (method, path, body) in [
        (
            Method::PATCH,
            format!("/edges/https/{edge_id}"),
            json!({"description": "x"}),
        ),
        (Method::DELETE, format!("/edges/https/{edge_id}"), json!({})),
        (
            Method::POST,
            format!("/edges/https/{edge_id}/routes"),
            json!({"match_type": "exact_path", "match": "/x"}),
        ),
        (
            Method::PATCH,
            format!("/edges/https/{edge_id}/routes/{route_id}"),
            json!({"description": "x"}),
        ),
        (
            Method::DELETE,
            format!("/edges/https/{edge_id}/routes/{route_id}"),
            json!({}),
        ),
        (
            Method::PATCH,
            format!("/backends/static/{backend_id}"),
            json!({"address": "127.0.0.1:10"}),
        ),
        (Method::DELETE, format!("/backends/static/{backend_id}"), json!({})),
    ] {
        let msg = gw
            .api(method.clone(), &path, Some(body))
            .await
            .assert_api_error(409, 109);
        assert!(
            msg.contains(&format!("is declared in the config file {file}")),
            "{method} {path}: {msg}"
        );
    }
    // Ids of config objects are stable across restarts.
    let TestGateway { gateway, dir, .. } = gw;
    gateway.shutdown().await;
    let gw = TestGateway::start_in(dir).await;
    let again = gw.api(Method::GET, "/edges/https", None).await.json();
    assert_eq!(again["https_edges"][0]["id"], edge_id);
    assert_eq!(again["https_edges"][0]["routes"][0]["id"], route_id);
    gw.stop().await;
}

#[tokio::test]
async fn acknowledged_writes_survive_a_restart() {
    let gw = TestGateway::start("").await;
    let upstream = Upstream::start().await;
    let (edge_id, route_id) = gw.create_route_to(upstream.addr, "durable.test:80").await;
    let patched = gw
        .api(
            Method::PATCH,
            &format!("/edges/https/{edge_id}"),
            Some(json!({"description": "kept"})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    let TestGateway { gateway, dir, token } = gw;
    gateway.shutdown().await;
    let config = portcullis::Config::load(&dir.path().join("config.toml")).unwrap();
    let gateway = portcullis::Gateway::start(config).await.unwrap();
    let gw = TestGateway { gateway, dir, token };
    let edge = gw.api(Method::GET, &format!("/edges/https/{edge_id}"), None).await;
    assert_eq!(edge.status, 200, "the API key survived too: {}", edge.body);
    assert_eq!(edge.json()["description"], "kept");
    assert_eq!(edge.json()["routes"][0]["id"], route_id);
    assert_eq!(
        gw.edge_get("durable.test", "/after-restart").await.json()["path"],
        "/after-restart"
    );
    gw.stop().await;
}

#[test]
fn readme_documents_every_error_code() {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    for (code, status, _) in portcullis::api::CODES {
        let row = format!("| `ERR_PORTCULLIS_{code}` | {status} |");
        assert!(readme.contains(&row), "README.md lacks the row {row}");
    }
}

#[tokio::test]
async fn a_body_that_never_arrives_is_answered_408_and_the_connection_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::start("[api]\nbody_read_timeout_secs = 1\n").await;
    // An authenticated write that announces 100 bytes and sends 10, then nothing: the API must
    // not hold the connection (and a handler task) open for as long as the client likes.
    let request = format!(
        "POST /api/backends/static HTTP/1.1\r\nHost: console.test\r\nNgrok-Version: 2\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"address\"",
        gw.token
    );
    let mut stream = tokio::net::TcpStream::connect(gw.gateway.console_addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // Far beyond the 1 s configured, far below what a stuck connection would take.
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok(),
        "the connection was still open: the body was waited for without end"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let reply: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(reply["error_code"], "ERR_PORTCULLIS_113", "{answer}");
    assert_eq!(reply["status_code"], 408);
    assert!(reply["msg"].as_str().unwrap().contains("1 s"), "{answer}");
    // Nothing was written.
    let backends = gw.api(Method::GET, "/backends/static", None).await;
    assert_eq!(backends.json()["backends"], json!([]), "{}", backends.body);
    gw.stop().await;
}
