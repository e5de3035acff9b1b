//! A person signs in with a real browser: headless Chromium (Debian's), driven by
//! playwright-core (`tests/peers/browser_login.mjs`, installed by `make test-deps`), through
//! the example plugin loaded as a library, to a real upstream.

use crate::harness::{plugin_library, run_peer, tests_dir, TestGateway, Upstream, LISTENERS};
use http::Method;
use serde_json::json;

/// bcrypt of "alice-password" (cost 10), made with Python's bcrypt.
const ALICE_HASH: &str = "$2b$10$mvR5HkbkCN6i900Mt0JWmO9iYnl4oovjkUZyIAPav4JBpZ0ykXvUK";

#[tokio::test]
async fn a_person_signs_in_with_a_real_browser() {
    let tests = tests_dir();
    assert!(
        tests.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run `make test-deps`"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium is missing: run `make test-deps`"
    );
    let library = plugin_library("portcullis_htpasswd");
    let gw = TestGateway::start_with(&format!("{LISTENERS}[[plugin]]\npath = \"{}\"\n", library.display())).await;
    let upstream = Upstream::start().await;
    // The edge answers on the address the browser uses; the route is protected through the API.
    let (edge_id, route_id) = gw
        .create_route_to(upstream.addr, &gw.gateway.edge_addr.to_string())
        .await;
    let module = json!({"htpasswd": {"users": [{"username": "alice", "password_hash": ALICE_HASH, "email": "alice@example.com", "groups": ["staff"]}]}});
    let patched = gw
        .api(
            Method::PATCH,
            &format!("/edges/https/{edge_id}/routes/{route_id}"),
            Some(module),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);

    let url = format!("http://{}/wiki/page?x=1", gw.gateway.edge_addr);
    let result = run_peer(
        std::path::Path::new("node"),
        "browser_login.mjs",
        &[&url, "alice", "alice-password"],
    )
    .await;
    assert_eq!(result["url"], url, "the browser is back on the page it asked for");
    // The page is the upstream's echo of what it received.
    let seen: serde_json::Value = serde_json::from_str(result["body"].as_str().unwrap()).unwrap();
    assert_eq!(seen["path"], "/wiki/page?x=1");
    assert_eq!(seen["headers"]["x-portcullis-user-email"], "alice@example.com");
    assert_eq!(seen["headers"]["x-portcullis-user-groups"], "staff");
    assert!(seen["headers"]
        .get("cookie")
        .is_none_or(|c| !c.as_str().unwrap_or_default().contains("portcullis.session")));
    let session = result["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "portcullis.session")
        .expect("session cookie");
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Lax");
    gw.stop().await;
}
