//! ngrok's own Python API client (PyPI `ngrok-api`, installed by `make test-deps` into
//! `tests/.venv`) drives the API with only its base URL changed.

use crate::harness::{TestGateway, Upstream};
use http::Method;
use std::path::PathBuf;

fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests")
}

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
    let output = tokio::process::Command::new(&python)
        .arg(tests_dir().join("peers/ngrok_api_flow.py"))
        .arg(format!("http://{}/api", gw.gateway.console_addr))
        .arg(&gw.token)
        .arg(upstream.addr.to_string())
        .arg(gw.gateway.edge_addr.to_string())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ngrok client flow failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let made: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
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
