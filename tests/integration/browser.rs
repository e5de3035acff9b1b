//! A person signs in with a real browser: headless Chromium (Debian's), driven by
//! playwright-core (`tests/peers/browser_login.mjs`, installed by `make test-deps`), through
//! the example plugin loaded as a library and through a real SAML IdP (pysaml2), to a real
//! upstream.

use crate::harness::{browser_sign_in, plugin_library, send, TestGateway, Upstream, LISTENERS};
use crate::saml::Idp;
use http::Method;
use serde_json::json;

/// bcrypt of "alice-password" (cost 10), made with Python's bcrypt.
const ALICE_HASH: &str = "$2b$10$mvR5HkbkCN6i900Mt0JWmO9iYnl4oovjkUZyIAPav4JBpZ0ykXvUK";

#[tokio::test]
async fn a_person_signs_in_with_a_real_browser() {
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
    // The page is the upstream's echo of what it received.
    let (seen, cookies) = browser_sign_in(&url, "alice", false).await;
    assert_eq!(seen["path"], "/wiki/page?x=1");
    assert_eq!(seen["headers"]["x-portcullis-user-email"], "alice@example.com");
    assert_eq!(seen["headers"]["x-portcullis-user-groups"], "staff");
    assert!(seen["headers"]
        .get("cookie")
        .is_none_or(|c| !c.as_str().unwrap_or_default().contains("portcullis.session")));
    let session = cookies
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "portcullis.session")
        .expect("session cookie");
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Lax");
    gw.stop().await;
}

/// SP-initiated SAML in a real browser: the route sends Chromium to the pysaml2 IdP, the person
/// fills in the IdP's login form, the IdP's page posts the Response back to the ACS by itself.
#[tokio::test]
async fn a_person_signs_in_through_a_saml_idp_with_a_real_browser() {
    let idp = Idp::start("both").await;
    let gw = TestGateway::start("").await;
    let upstream = Upstream::start().await;
    let edge_host = gw.gateway.edge_addr.to_string();
    let (edge_id, route_id) = gw.create_route_to(upstream.addr, &edge_host).await;
    let put = gw
        .api(
            Method::PUT,
            &format!("/edges/https/{edge_id}/routes/{route_id}/saml"),
            Some(json!({"idp_metadata": idp.metadata().await, "authorized_groups": ["engineering"]})),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let metadata_url = put.json()["metadata_url"].as_str().unwrap().to_string();
    assert_eq!(
        metadata_url,
        format!("http://{edge_host}/_portcullis/auth/{route_id}/metadata")
    );
    idp.register(&send(Method::GET, &metadata_url, &[], None).await.body)
        .await;

    let url = format!("http://{edge_host}/reports/q3?view=full");
    let (seen, _) = browser_sign_in(&url, "alice", false).await;
    assert_eq!(seen["path"], "/reports/q3?view=full");
    assert_eq!(seen["headers"]["x-portcullis-user-email"], "alice@example.com");
    assert_eq!(seen["headers"]["x-portcullis-user-name"], "Alice Liddell");
    assert_eq!(seen["headers"]["x-portcullis-user-groups"], "engineering,admins");
    assert_eq!(idp.seen("last-request").await["signature_valid"], true);
    idp.stop().await;
    gw.stop().await;
}
