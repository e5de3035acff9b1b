//! Provisioning behind the plugin contract: the `provisioner` fixture plugin
//! (`tests/plugins/provisioner`, linked in and loaded as `libportcullis_provisioner.so`) drives
//! the directory port through the console listener with a real API key: it creates, reads,
//! lists, updates, deactivates and deletes people, and a deactivation or deletion ends the
//! person's `testlogin` session on the very next request. Callers the management API would
//! refuse (no key, a wrong key, an address outside `api.allow_cidrs`) reach the plugin as
//! `Caller::Refused` and the port answers them `NotAllowed` in both builds; a sign-in call's
//! directory calls are `NotAllowed`. A provisioning plugin is handed no client's forwarding or
//! identity headers, only the gateway's own (over http and https), and a page of people holds
//! at most `PEOPLE_PAGE_MAX` whatever the plugin asked for.

use crate::harness::{plugin_library, send, set_cookie, Reply, TestGateway, Upstream, LISTENERS};
use crate::test_plugin;
use http::Method;
use portcullis::plugins::Origin;
use portcullis_plugin_sdk::PEOPLE_PAGE_MAX;
use serde_json::{json, Value};
use std::sync::Arc;

const COOKIE: &str = "portcullis.session";

#[derive(Clone, Copy, PartialEq)]
enum Build {
    LinkedIn,
    Library,
}

/// A gateway with a `testlogin` route on `app.test` and the provisioner, built as `build`.
async fn start(upstream: &Upstream, build: Build) -> TestGateway {
    start_on(upstream, build, "").await
}

/// [`start`], with `console` added to the console listener's settings.
async fn start_on(upstream: &Upstream, build: Build, console: &str) -> TestGateway {
    let mut config = format!(
        "{LISTENERS}{console}[backends.up]\naddress = \"{}\"\n[edges.app]\nhostports = [\"app.test:80\"]\n\
         [[edges.app.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/\"\nbackend = \"up\"\n\
         [edges.app.routes.auth]\nplugin = \"testlogin\"\n",
        upstream.addr
    );
    let mut options = test_plugin::options();
    match build {
        Build::LinkedIn => options
            .extra_plugins
            .push(Arc::new(portcullis_provisioner::Provisioner)),
        Build::Library => config.push_str(&format!(
            "[[plugin]]\npath = \"{}\"\n",
            plugin_library("portcullis_provisioner").display()
        )),
    }
    let gw = TestGateway::start_full(&config, options).await;
    let origin = &gw.gateway.shared().registry.get("provisioner").unwrap().origin;
    assert_eq!(
        matches!(origin, Origin::Library { .. }),
        build == Build::Library,
        "{origin}"
    );
    gw
}

/// One request of the provisioner's protocol, with `key` as the Bearer API key.
async fn provision(gw: &TestGateway, key: Option<&str>, request: Value) -> Reply {
    let url = format!("http://{}/provisioner", gw.gateway.console_addr);
    let auth = key.map(|key| format!("Bearer {key}"));
    let mut headers = vec![("content-type", "application/json")];
    headers.extend(auth.as_deref().map(|auth| ("authorization", auth)));
    send(Method::POST, &url, &headers, Some(request.to_string().into_bytes())).await
}

async fn edge_get(gw: &TestGateway, path: &str, token: Option<&str>) -> Reply {
    let url = format!("http://{}{path}", gw.gateway.edge_addr);
    let cookie = token.map(|token| format!("{COOKIE}={token}"));
    let mut headers = vec![("host", "app.test")];
    headers.extend(cookie.as_deref().map(|cookie| ("cookie", cookie)));
    send(Method::GET, &url, &headers, None).await
}

/// `testlogin`'s sign-in path on the route.
async fn sign_in_path(gw: &TestGateway) -> String {
    let first = edge_get(gw, "/", None).await;
    assert_eq!(first.status, 303, "{}", first.body);
    first.headers["location"].to_str().unwrap().to_string()
}

/// Signs `user` (`user@example.com`) in through `testlogin`; returns the session token.
async fn sign_in(gw: &TestGateway, user: &str) -> String {
    let done = edge_get(gw, &format!("{}&user={user}", sign_in_path(gw).await), None).await;
    assert_eq!(done.status, 303, "{}", done.body);
    let cookie = set_cookie(&done, COOKIE).expect("a session cookie");
    let token = cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_string();
    assert_eq!(edge_get(gw, "/", Some(&token)).await.status, 200, "signed in");
    token
}

fn refusal_kind(reply: &Reply) -> String {
    reply.json()["refusal"]["kind"].as_str().unwrap_or_default().to_string()
}

async fn the_port_provisions_and_ends_sessions(build: Build) {
    let upstream = Upstream::start().await;
    let gw = start(&upstream, build).await;
    let key = Some(gw.token.as_str());

    let created = provision(
        &gw,
        key,
        json!({"op": "create", "email": "carol@example.com", "name": "Carol"}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let carol = created.json()["person"].clone();
    let carol_id = carol["id"].as_str().unwrap().to_string();
    assert_eq!(
        (&carol["email"], &carol["name"], &carol["active"]),
        (&json!("carol@example.com"), &json!("Carol"), &json!(true))
    );
    assert_eq!(
        provision(&gw, key, json!({"op": "get", "id": carol_id})).await.json()["person"],
        carol
    );
    assert_eq!(
        provision(&gw, key, json!({"op": "find", "email": "Carol@Example.com"}))
            .await
            .json()["person"],
        carol,
        "emails compare without case"
    );
    assert_eq!(
        provision(&gw, key, json!({"op": "list"})).await.json(),
        json!({"people": [carol], "more": false})
    );

    let updated = provision(&gw, key, json!({"op": "update", "id": carol_id, "name": "Carol C."})).await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.json()["person"]["name"], "Carol C.");
    assert_eq!(
        provision(&gw, key, json!({"op": "get", "id": carol_id})).await.json()["person"]["name"],
        "Carol C."
    );

    // A taken email is a typed conflict, trimmed and without case; nothing is created.
    let taken = provision(
        &gw,
        key,
        json!({"op": "create", "email": " CAROL@example.com ", "name": "Other"}),
    )
    .await;
    assert_eq!(
        (taken.status.as_u16(), refusal_kind(&taken)),
        (409, "email_taken".into()),
        "{}",
        taken.body
    );
    let missing = provision(&gw, key, json!({"op": "update", "id": "usr_nobody", "name": "X"})).await;
    assert_eq!(
        (missing.status.as_u16(), refusal_kind(&missing)),
        (404, "not_found".into()),
        "{}",
        missing.body
    );
    // A refused caller crosses the boundary too, and is answered in the plugin's shape.
    let anonymous = provision(
        &gw,
        None,
        json!({"op": "create", "email": "mallory@example.com", "name": "M"}),
    )
    .await;
    assert_eq!(
        (anonymous.status.as_u16(), refusal_kind(&anonymous)),
        (401, "caller_refused".into()),
        "{}",
        anonymous.body
    );
    // The plugin tried the directory for that caller, across the C ABI in the library build.
    assert_eq!(
        anonymous.json()["refusal"]["directory"],
        "not_allowed",
        "{}",
        anonymous.body
    );
    assert_eq!(
        provision(&gw, key, json!({"op": "list"})).await.json()["people"],
        json!([updated.json()["person"]])
    );

    // Alice signs in; deactivating her through the port ends that session at once.
    let session = sign_in(&gw, "alice").await;
    let alice = provision(&gw, key, json!({"op": "find", "email": "alice@example.com"})).await;
    assert_eq!(alice.status, 200, "{}", alice.body);
    let alice_id = alice.json()["person"]["id"].as_str().unwrap().to_string();
    let deactivated = provision(&gw, key, json!({"op": "deactivate", "id": alice_id})).await;
    assert_eq!(deactivated.status, 200, "{}", deactivated.body);
    assert_eq!(deactivated.json()["person"]["active"], false);
    assert_eq!(
        edge_get(&gw, "/", Some(&session)).await.status,
        303,
        "ended on the very next request"
    );

    // Active again, signed in again; deleting her ends that session too.
    let reactivated = provision(&gw, key, json!({"op": "update", "id": alice_id, "active": true})).await;
    assert_eq!(reactivated.json()["person"]["active"], true, "{}", reactivated.body);
    let session = sign_in(&gw, "alice").await;
    let deleted = provision(&gw, key, json!({"op": "delete", "id": alice_id})).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(deleted.json()["person"]["id"], alice_id.as_str());
    assert_eq!(
        edge_get(&gw, "/", Some(&session)).await.status,
        303,
        "ended on the very next request"
    );
    let gone = provision(&gw, key, json!({"op": "get", "id": alice_id})).await;
    assert_eq!(
        (gone.status.as_u16(), refusal_kind(&gone)),
        (404, "not_found".into()),
        "{}",
        gone.body
    );

    assert_eq!(
        provision(&gw, key, json!({"op": "delete", "id": carol_id}))
            .await
            .status,
        200
    );
    assert_eq!(
        provision(&gw, key, json!({"op": "list"})).await.json(),
        json!({"people": [], "more": false})
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_directory_port_provisions_and_ends_sessions_linked_in() {
    the_port_provisions_and_ends_sessions(Build::LinkedIn).await;
}

#[tokio::test]
async fn the_directory_port_provisions_and_ends_sessions_as_a_library() {
    the_port_provisions_and_ends_sessions(Build::Library).await;
}

/// `testlogin`'s provisioning call tries to deactivate Alice whoever the caller is.
async fn deactivate_alice(gw: &TestGateway, auth: Option<&str>) -> Reply {
    let url = format!(
        "http://{}/testlogin/set-active?email=alice@example.com&active=false",
        gw.gateway.console_addr
    );
    let headers: Vec<(&str, &str)> = auth.map(|auth| ("authorization", auth)).into_iter().collect();
    send(Method::POST, &url, &headers, None).await
}

#[tokio::test]
async fn refused_callers_reach_the_plugin_as_refused_and_the_port_writes_nothing() {
    let upstream = Upstream::start().await;
    let gw = start(&upstream, Build::LinkedIn).await;
    let session = sign_in(&gw, "alice").await;
    let mallory = json!({"op": "create", "email": "mallory@example.com", "name": "Mallory"});

    let no_key = deactivate_alice(&gw, None).await;
    assert_eq!(no_key.status, 401, "{}", no_key.body);
    assert_eq!(
        no_key.body,
        "refused: the Authorization header must be `Bearer <api key>`; directory: Err(NotAllowed)"
    );
    let wrong_key = deactivate_alice(&gw, Some("Bearer not-a-key")).await;
    assert_eq!(wrong_key.status, 401, "{}", wrong_key.body);
    assert_eq!(
        wrong_key.body,
        "refused: the API key is not valid; directory: Err(NotAllowed)"
    );
    for key in [None, Some("not-a-key")] {
        let refused = provision(&gw, key, mallory.clone()).await;
        assert_eq!(refused.status, 401, "{}", refused.body);
        assert_eq!(refusal_kind(&refused), "caller_refused");
        assert_eq!(refused.json()["refusal"]["directory"], "not_allowed");
    }
    assert_eq!(
        edge_get(&gw, "/", Some(&session)).await.status,
        200,
        "Alice is still active"
    );

    // An address outside `api.allow_cidrs` is refused before the key is looked at.
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    let limited = text.replacen(
        LISTENERS,
        &format!("{LISTENERS}[api]\nallow_cidrs = [\"10.0.0.0/8\"]\n"),
        1,
    );
    std::fs::write(gw.config_path(), &limited).unwrap();
    gw.gateway.reload(&gw.config_path(), None).await.unwrap();
    let bearer = format!("Bearer {}", gw.token);
    let elsewhere = deactivate_alice(&gw, Some(&bearer)).await;
    assert_eq!(elsewhere.status, 403, "{}", elsewhere.body);
    assert_eq!(
        elsewhere.body,
        "refused: the API does not answer 127.0.0.1: it is not in api.allow_cidrs; directory: Err(NotAllowed)"
    );
    let refused = provision(&gw, Some(&gw.token), mallory.clone()).await;
    assert_eq!(
        (refused.status.as_u16(), refusal_kind(&refused)),
        (403, "caller_refused".into())
    );
    assert_eq!(refused.json()["refusal"]["directory"], "not_allowed");
    assert_eq!(
        edge_get(&gw, "/", Some(&session)).await.status,
        200,
        "Alice is still active"
    );

    std::fs::write(gw.config_path(), &text).unwrap();
    gw.gateway.reload(&gw.config_path(), None).await.unwrap();
    let people = provision(&gw, Some(&gw.token), json!({"op": "list"})).await.json()["people"].clone();
    let emails: Vec<&str> = people
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["alice@example.com"], "Mallory was never created");
    gw.stop().await;
}

#[tokio::test]
async fn a_sign_in_plugins_directory_calls_are_not_allowed() {
    let upstream = Upstream::start().await;
    let gw = start(&upstream, Build::LinkedIn).await;
    let sign_in = sign_in_path(&gw).await;
    let mount = sign_in.split('?').next().unwrap().trim_end_matches("/login");
    let probe = edge_get(&gw, &format!("{mount}/directory?email=dave@example.com"), None).await;
    assert_eq!(probe.status, 200, "{}", probe.body);
    assert_eq!(probe.body, "lookup Err(NotAllowed); create Err(NotAllowed)");
    let dave = provision(&gw, Some(&gw.token), json!({"op": "find", "email": "dave@example.com"})).await;
    assert_eq!(
        (dave.status.as_u16(), refusal_kind(&dave)),
        (404, "not_found".into()),
        "{}",
        dave.body
    );
    gw.stop().await;
}

/// Forwarding and identity headers as a client (or a proxy it went through) could send them.
const SPOOFED: [(&str, &str); 8] = [
    ("x-forwarded-for", "203.0.113.7"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-proto", "gopher"),
    ("forwarded", "for=203.0.113.7;proto=gopher;host=evil.example"),
    ("x-real-ip", "203.0.113.7"),
    ("x_real_ip", "203.0.113.7"),
    ("x-forwarded-user", "admin@example.com"),
    ("x-portcullis-user-id", "usr_admin"),
];

/// The headers the provisioner was handed for an `echo` sent with [`SPOOFED`], sorted.
fn handed_headers(reply: &Reply) -> Vec<(String, String)> {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut headers: Vec<(String, String)> = serde_json::from_value(reply.json()["headers"].clone()).unwrap();
    headers.sort();
    headers
}

/// What the provisioner must be handed: the client's own headers but no forwarding or identity
/// ones, and the gateway's forwarding headers for a client on 127.0.0.1 asking for the console.
fn gateways_own_headers(gw: &TestGateway, proto: &str, body: &str) -> Vec<(String, String)> {
    let console = gw.gateway.console_addr.to_string();
    let mut headers: Vec<(String, String)> = [
        ("content-length", body.len().to_string()),
        ("content-type", "application/json".into()),
        ("host", console.clone()),
        ("x-forwarded-for", "127.0.0.1".into()),
        ("x-forwarded-host", console.clone()),
        ("x-forwarded-proto", proto.into()),
        ("forwarded", format!("for=127.0.0.1;proto={proto};host=\"{console}\"")),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect();
    headers.sort();
    headers
}

#[tokio::test]
async fn a_provisioning_plugin_is_handed_the_gateways_forwarding_headers_not_the_clients() {
    let upstream = Upstream::start().await;
    let body = json!({"op": "echo"}).to_string();
    let bearer = |gw: &TestGateway| format!("Bearer {}", gw.token);

    let gw = start(&upstream, Build::LinkedIn).await;
    let auth = bearer(&gw);
    let mut headers = vec![("content-type", "application/json"), ("authorization", auth.as_str())];
    headers.extend(SPOOFED);
    let url = format!("http://{}/provisioner", gw.gateway.console_addr);
    let echo = send(Method::POST, &url, &headers, Some(body.clone().into_bytes())).await;
    assert_eq!(handed_headers(&echo), gateways_own_headers(&gw, "http", &body));
    assert_eq!(echo.json()["remote_addr"], "127.0.0.1");
    gw.stop().await;

    // Over https the plugin learns it from the gateway, whatever the client claimed.
    let gw = start_on(
        &upstream,
        Build::Library,
        "[listeners.console.tls]\nself_signed = true\n",
    )
    .await;
    let auth = bearer(&gw);
    let mut headers = vec![("content-type", "application/json"), ("authorization", auth.as_str())];
    headers.extend(SPOOFED);
    let cert = gw.dir.path().join("data/tls/console-self-signed.crt");
    let url = format!("https://{}/provisioner", gw.gateway.console_addr);
    let echo = crate::browser::https_send(&cert, Method::POST, &url, &headers, Some(body.clone().into_bytes())).await;
    assert_eq!(handed_headers(&echo), gateways_own_headers(&gw, "https", &body));
    gw.stop().await;
}

#[tokio::test]
async fn a_page_of_people_holds_at_most_the_ports_cap_whatever_the_plugin_asks() {
    let upstream = Upstream::start().await;
    let gw = start(&upstream, Build::LinkedIn).await;
    let key = Some(gw.token.as_str());
    let people = PEOPLE_PAGE_MAX + 1;
    // Fifty at a time: concurrent durable writes share flushes (they hung once, with sled's
    // `flush_async` called from every writer).
    let numbers: Vec<usize> = (0..people).collect();
    for batch in numbers.chunks(50) {
        let created = futures_util::future::join_all(batch.iter().map(|n| {
            provision(
                &gw,
                key,
                json!({"op": "create", "email": format!("p{n}@example.com"), "name": format!("P{n}")}),
            )
        }))
        .await;
        for reply in created {
            assert_eq!(reply.status, 201, "{}", reply.body);
        }
    }

    // A client's page size reaches the plugin as it was asked for: five times the cap here.
    let first = provision(&gw, key, json!({"op": "list", "limit": 5 * PEOPLE_PAGE_MAX})).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    let page = first["people"].as_array().unwrap();
    assert_eq!((page.len(), &first["more"]), (PEOPLE_PAGE_MAX, &json!(true)));
    let last = page.last().unwrap()["id"].as_str().unwrap();
    let rest = provision(
        &gw,
        key,
        json!({"op": "list", "after_id": last, "limit": 5 * PEOPLE_PAGE_MAX}),
    )
    .await
    .json();
    assert_eq!(
        (rest["people"].as_array().unwrap().len(), &rest["more"]),
        (1, &json!(false))
    );
    gw.stop().await;
}
