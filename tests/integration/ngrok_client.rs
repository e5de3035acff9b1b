//! ngrok's own Python API client (PyPI `ngrok-api`, installed by `make test-deps` into
//! `tests/.venv`) drives the API with only its base URL changed.

use crate::harness::{run_peer, tests_dir, TestGateway, Upstream};
use http::Method;

#[tokio::test]
async fn ngrok_python_client_builds_a_working_route() {
    let python = tests_dir().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make test-deps` (the README's test command does)",
        python.display()
    );
    let gw = TestGateway::start("").await;
    let upstream = Upstream::start().await;
    let api = format!("http://{}/api", gw.gateway.console_addr);
    let (upstream_addr, edge_addr) = (upstream.addr.to_string(), gw.gateway.edge_addr.to_string());
    let made = run_peer(
        &python,
        "ngrok_api_flow.py",
        &[&api, &gw.token, &upstream_addr, &edge_addr],
    )
    .await;
    // What the client made is really in the gateway, and serves traffic.
    let edge = gw
        .api(
            Method::GET,
            &format!("/edges/https/{}", made["edge_id"].as_str().unwrap()),
            None,
        )
        .await
        .json();
    assert_eq!(edge["routes"][0]["id"], made["route_id"]);
    assert_eq!(edge["routes"][0]["description"], "updated");
    assert_eq!(
        gw.edge_get("ngrok-client.test", "/again").await.json()["path"],
        "/again"
    );
    gw.stop().await;
}

/// ngrok's client sets, reads, changes and deletes a route's SAML module (`saml_module.replace`
/// sends the bare module; a route update carries it under `saml`).
#[tokio::test]
async fn ngrok_python_client_manages_a_saml_module() {
    let python = tests_dir().join(".venv/bin/python");
    let gw = TestGateway::start("").await;
    let upstream = Upstream::start().await;
    let (edge_id, route_id) = gw.create_route_to(upstream.addr, "sso.test:80").await;
    let metadata = tests_dir().join("fixtures/saml/idp-metadata.xml");
    let api = format!("http://{}/api", gw.gateway.console_addr);
    let seen = run_peer(
        &python,
        "ngrok_saml_module.py",
        &[&api, &gw.token, &edge_id, &route_id, metadata.to_str().unwrap()],
    )
    .await;
    assert_eq!(
        seen["entity_id"],
        format!("http://sso.test/_portcullis/auth/{route_id}/metadata")
    );
    assert_eq!(seen["bad_format"]["http_status_code"], 400);
    assert_eq!(seen["bad_format"]["error_code"], "ERR_PORTCULLIS_105");
    assert_eq!(seen["saml_after_delete"], false);
    // Deleted through the client: the route is open again.
    assert_eq!(gw.edge_get("sso.test", "/").await.status, 200);
    gw.stop().await;
}
