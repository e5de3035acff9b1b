//! The `portcullis` binary itself: check, api-key create (with and without a running server),
//! SIGHUP reload and SIGTERM shutdown of a real process, and acknowledged writes surviving a
//! SIGKILL.

use crate::harness::{send, Upstream};
use http::Method;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, edge: u16, console: u16, upstream: &str, host: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "version = 1\n[listeners.edge]\naddress = \"127.0.0.1:{edge}\"\n[listeners.console]\naddress = \"127.0.0.1:{console}\"\n\
             [backends.up]\naddress = \"{upstream}\"\n[edges.site]\nhostports = [\"{host}:80\"]\n\
             [[edges.site.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/\"\nbackend = \"up\"\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn version_is_printed() {
    let output = run(&["--version"], &[]);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("portcullis {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_summarises_a_good_file_and_exits_1_on_a_bad_one() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml");
    let output = run(&["check", "--config", shipped.to_str().unwrap()], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("edge listener:    http://127.0.0.1:8080"), "{summary}");
    assert!(summary.contains("path_prefix / -> echo"), "{summary}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "version = 1\n[listeners.edge]\naddress = \"127.0.0.1:1\"\nport = 3\n",
    )
    .unwrap();
    let output = run(&["check", "--config", bad.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.starts_with(&format!(
            "error: {}: key `listeners.edge.port`: unknown field",
            bad.display()
        )),
        "{text}"
    );
}

#[test]
fn environment_overrides_apply_and_bad_ones_name_the_variable() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml");
    let config = shipped.to_str().unwrap();
    let output = run(
        &["check", "--config", config],
        &[("PORTCULLIS_LISTENERS__EDGE__ADDRESS", "127.0.0.1:9443")],
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("edge listener:    http://127.0.0.1:9443"));
    let output = run(
        &["check", "--config", config],
        &[("PORTCULLIS_LISTENERS__EDGE__ADDRESS", "nowhere")],
    );
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.contains("environment variable PORTCULLIS_LISTENERS__EDGE__ADDRESS (overriding")
            && text.contains("key `listeners.edge.address`: invalid socket address syntax"),
        "{text}"
    );
}

#[tokio::test]
async fn api_key_create_works_with_and_without_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let (edge, console) = (free_port(), free_port());
    let config = write_config(dir.path(), edge, console, &upstream.addr.to_string(), "before.test");

    // No server: the command opens the store itself.
    let offline = run(
        &["api-key", "create", "--description", "offline", "--config", &config],
        &[],
    );
    assert!(offline.status.success(), "{}", stderr(&offline));
    let offline_token = String::from_utf8_lossy(&offline.stdout).trim().to_string();
    assert!(offline_token.starts_with("pcl_") && !offline_token.contains(char::is_whitespace));

    let mut server = serve(&config, console).await;
    let console_url = format!("http://127.0.0.1:{console}");

    // Server running: the command goes through the admin socket (sled allows one process).
    let online = run(
        &["api-key", "create", "--description", "online", "--config", &config],
        &[],
    );
    assert!(online.status.success(), "{}", stderr(&online));
    let online_token = String::from_utf8_lossy(&online.stdout).trim().to_string();
    for token in [&offline_token, &online_token] {
        let auth = format!("Bearer {token}");
        let reply = send(
            Method::GET,
            &format!("{console_url}/api/api_keys"),
            &[("ngrok-version", "2"), ("authorization", &auth)],
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["keys"].as_array().unwrap().len(), 2);
    }

    // Configuration changes through the API leave an audit line naming the API key.
    let auth = format!("Bearer {online_token}");
    let created = send(
        Method::POST,
        &format!("{console_url}/api/backends/static"),
        &[("ngrok-version", "2"), ("authorization", &auth)],
        Some(br#"{"address":"127.0.0.1:9"}"#.to_vec()),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let backend_id = created.json()["id"].as_str().unwrap().to_string();

    // A second server on the same data dir is refused with a clear message.
    let second = run(
        &[
            "serve",
            "--config",
            &config,
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("another process holds the database lock"),
        "{}",
        stderr(&second)
    );

    // SIGHUP reloads the file.
    let edge_url = format!("http://127.0.0.1:{edge}/");
    assert_eq!(
        send(Method::GET, &edge_url, &[("host", "before.test")], None)
            .await
            .status,
        200
    );
    write_config(dir.path(), edge, console, &upstream.addr.to_string(), "after.test");
    assert!(Command::new("kill")
        .args(["-HUP", &server.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let mut reloaded = false;
    for _ in 0..200 {
        if send(Method::GET, &edge_url, &[("host", "after.test")], None)
            .await
            .status
            == 200
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(reloaded, "SIGHUP did not apply the new config");

    // SIGTERM stops it cleanly.
    assert!(Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let mut status = None;
    for _ in 0..400 {
        if let Some(s) = server.0.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let Some(status) = status else {
        panic!("server did not stop on SIGTERM");
    };
    let mut log = String::new();
    std::io::Read::read_to_string(server.0.stdout.as_mut().unwrap(), &mut log).unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("config reloaded") && log.contains("stopped"), "{log}");
    let audit = log
        .lines()
        .find(|l| l.contains("portcullis::audit") && l.contains("api_write"))
        .unwrap_or_else(|| panic!("no audit line: {log}"));
    assert!(
        audit.contains(&backend_id) && audit.contains("api_key=ak_") && audit.contains("method=POST"),
        "{audit}"
    );
    assert!(
        !dir.path().join("data/admin.sock").exists(),
        "the admin socket is removed at exit"
    );
}

/// A `portcullis serve` process, killed (SIGKILL, by pid) and reaped when dropped, so that a
/// failing assertion never leaves it running.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `portcullis serve` on `config` (its log on a pipe, for the test to read) and waits
/// until its console answers `/readyz` with 200.
async fn serve(config: &str, console: u16) -> Server {
    let server = Server(
        Command::new(BIN)
            .args(["serve", "--config", config])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", console)).await.is_ok() {
            let ready = send(Method::GET, &format!("http://127.0.0.1:{console}/readyz"), &[], None).await;
            if ready.status == 200 {
                return server;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server did not become ready");
}

#[tokio::test]
async fn acknowledged_api_writes_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (edge, console) = (free_port(), free_port());
    let config = write_config(dir.path(), edge, console, "127.0.0.1:9", "crash.test");
    let key = run(&["api-key", "create", "--config", &config], &[]);
    assert!(key.status.success(), "{}", stderr(&key));
    let auth = format!("Bearer {}", String::from_utf8_lossy(&key.stdout).trim());
    let headers = [("ngrok-version", "2"), ("authorization", auth.as_str())];
    let api = |path: &str| format!("http://127.0.0.1:{console}/api{path}");

    let server = serve(&config, console).await;
    let mut created = Vec::new();
    for port in [10, 11] {
        let body = format!(r#"{{"address":"127.0.0.1:{port}"}}"#).into_bytes();
        let reply = send(Method::POST, &api("/backends/static"), &headers, Some(body)).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        created.push(reply.json()["id"].as_str().unwrap().to_string());
    }
    let deleted = send(
        Method::DELETE,
        &api(&format!("/backends/static/{}", created[1])),
        &headers,
        None,
    )
    .await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    // No shutdown, no final flush: the process dies (SIGKILL) the moment the last answer arrived.
    drop(server);

    let server = serve(&config, console).await;
    let kept = send(
        Method::GET,
        &api(&format!("/backends/static/{}", created[0])),
        &headers,
        None,
    )
    .await;
    assert_eq!(kept.status, 200, "{}", kept.body);
    assert_eq!(kept.json()["address"], "127.0.0.1:10");
    let gone = send(
        Method::GET,
        &api(&format!("/backends/static/{}", created[1])),
        &headers,
        None,
    )
    .await;
    assert_eq!(gone.status, 404, "the acknowledged delete stays done: {}", gone.body);
    drop(server);
}
