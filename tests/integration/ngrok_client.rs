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
