//! Protocol plugins as dynamic libraries: the example plugin loaded by path and used for a
//! real login, a library of another ABI version refused, a SHA-256 pin enforced, and a
//! panicking library answered with an error page while the gateway keeps serving.

use crate::harness::{plugin_library, send, set_cookie, TestGateway, Upstream, LISTENERS};
use http::Method;
use portcullis::Config;

fn protected(upstream: &Upstream, library: &std::path::Path, pin: &str, plugin: &str, options: &str) -> String {
    format!(
        "{LISTENERS}[[plugin]]\npath = \"{}\"\n{pin}\n[backends.up]\naddress = \"{}\"\n[edges.app]\nhostports = [\"app.test:80\"]\n\
         [[edges.app.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/\"\nbackend = \"up\"\n[edges.app.routes.auth]\nplugin = \"{plugin}\"\n{options}\n\
         [[edges.app.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/public/\"\nbackend = \"up\"\n",
        library.display(),
        upstream.addr
    )
}

/// The `state` hidden field of the login form.
fn form_state(body: &str) -> String {
    body.split("name=\"state\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

/// `name=value` of the cookie `name` that `reply` sets.
fn cookie_pair(reply: &crate::harness::Reply, name: &str) -> String {
    set_cookie(reply, name).unwrap().split(';').next().unwrap().to_string()
}

/// bcrypt of "alice-password", made with Python's bcrypt (cost 10).
const ALICE_HASH: &str = "$2b$10$mvR5HkbkCN6i900Mt0JWmO9iYnl4oovjkUZyIAPav4JBpZ0ykXvUK";

fn htpasswd_options() -> String {
    format!("users = [{{ username = \"alice\", password_hash = \"{ALICE_HASH}\", email = \"alice@example.com\", groups = [\"staff\"] }}]")
}

#[tokio::test]
async fn the_example_plugin_loads_as_a_library_and_signs_a_user_in() {
    let upstream = Upstream::start().await;
    let library = plugin_library("portcullis_htpasswd");
    let gw = TestGateway::start_with(&protected(&upstream, &library, "", "htpasswd", &htpasswd_options())).await;
    let registered = gw.gateway.shared().registry.get("htpasswd").expect("registered");
    assert!(
        registered
            .origin
            .to_string()
            .starts_with(&library.display().to_string()),
        "{}",
        registered.origin
    );
    let edge = gw.gateway.edge_addr;
    let get = |path: String, cookie: String| async move {
        send(
            Method::GET,
            &format!("http://{edge}{path}"),
            &[("host", "app.test"), ("cookie", &cookie)],
            None,
        )
        .await
    };

    let first = get("/wiki?page=1".into(), String::new()).await;
    assert_eq!(first.status, 303);
    let form_url = first.headers["location"].to_str().unwrap().to_string();
    let nonce = cookie_pair(&first, "portcullis_htpasswd_nonce");
    let form = get(form_url.clone(), nonce.clone()).await;
    assert_eq!(form.status, 200);
    let state = form_state(&form.body);
    let action = form_url.split('?').next().unwrap().to_string();
    let post = |body: String, cookie: String| {
        let url = format!("http://{edge}{action}");
        async move {
            send(
                Method::POST,
                &url,
                &[
                    ("host", "app.test"),
                    ("cookie", &cookie),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                Some(body.into_bytes()),
            )
            .await
        }
    };

    // A wrong password: the form again, with a fresh state.
    let wrong = post(format!("state={state}&username=alice&password=nope"), nonce.clone()).await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("Wrong username or password."));
    let state = form_state(&wrong.body);
    // The form posted from another browser (no nonce cookie) is refused.
    let csrf = post(
        format!("state={state}&username=alice&password=alice-password"),
        String::new(),
    )
    .await;
    assert_eq!(csrf.status, 400, "{}", csrf.body);
    // The state was consumed by that attempt: a replay is refused too.
    let replay = post(
        format!("state={state}&username=alice&password=alice-password"),
        nonce.clone(),
    )
    .await;
    assert_eq!(replay.status, 400);

    // The whole flow again, right.
    let first = get("/wiki?page=1".into(), String::new()).await;
    let form_url = first.headers["location"].to_str().unwrap().to_string();
    let nonce = cookie_pair(&first, "portcullis_htpasswd_nonce");
    let form = get(form_url, nonce.clone()).await;
    let state = form_state(&form.body);
    let ok = post(format!("state={state}&username=alice&password=alice-password"), nonce).await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(ok.headers["location"], "/wiki?page=1");
    let session = cookie_pair(&ok, "portcullis.session");
    let page = get("/wiki?page=1".into(), session).await;
    assert_eq!(page.status, 200);
    let headers = page.json()["headers"].clone();
    assert_eq!(headers["x-portcullis-user-email"], "alice@example.com");
    assert_eq!(headers["x-portcullis-user-groups"], "staff");
    gw.stop().await;
}

#[tokio::test]
async fn a_library_of_another_abi_version_is_refused_naming_both_versions() {
    let upstream = Upstream::start().await;
    let library = plugin_library("portcullis_fixture_wrong_abi");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, protected(&upstream, &library, "", "htpasswd", "")).unwrap();
    let config = Config::load(&path).unwrap();
    let err = portcullis::Gateway::start(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("plugin[0]:")
            && err.contains(&format!(
                "was built for plugin ABI version 999, but this Portcullis speaks ABI version {}",
                portcullis_plugin_sdk::ABI_VERSION
            )),
        "{err}"
    );
}

#[tokio::test]
async fn a_sha256_pin_is_checked_before_loading() {
    let upstream = Upstream::start().await;
    let library = plugin_library("portcullis_htpasswd");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let wrong = format!("sha256 = \"{}\"", "0".repeat(64));
    std::fs::write(
        &path,
        protected(&upstream, &library, &wrong, "htpasswd", &htpasswd_options()),
    )
    .unwrap();
    let err = portcullis::Gateway::start(Config::load(&path).unwrap())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("but the config pins 0000") && err.contains("refusing to load it"),
        "{err}"
    );
    let right = format!("sha256 = \"{}\"", portcullis::plugins::file_sha256(&library).unwrap());
    let gw = TestGateway::start_with(&protected(&upstream, &library, &right, "htpasswd", &htpasswd_options())).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_panicking_library_gets_an_error_page_and_the_gateway_keeps_serving() {
    let upstream = Upstream::start().await;
    let library = plugin_library("portcullis_fixture_panicky");
    let gw = TestGateway::start_with(&protected(&upstream, &library, "", "panicky", "")).await;
    let url = format!("http://{}/", gw.gateway.edge_addr);
    for _ in 0..3 {
        let reply = send(Method::GET, &url, &[("host", "app.test")], None).await;
        assert_eq!(reply.status, 500);
        assert!(
            reply.body.contains("Sign-in failed") && reply.body.contains("request id"),
            "{}",
            reply.body
        );
        assert!(!reply.body.contains("blew up"), "the panic message stays in the log");
    }
    let public = format!("http://{}/public/ok", gw.gateway.edge_addr);
    assert_eq!(
        send(Method::GET, &public, &[("host", "app.test")], None).await.status,
        200
    );
    gw.stop().await;
}

#[tokio::test]
async fn htpasswd_locks_a_username_after_ten_failures_even_for_the_right_password() {
    let upstream = Upstream::start().await;
    let library = plugin_library("portcullis_htpasswd");
    let gw = TestGateway::start_with(&protected(&upstream, &library, "", "htpasswd", &htpasswd_options())).await;
    let edge = gw.gateway.edge_addr;
    let mut last = None;
    for attempt in 1..=11 {
        let first = send(Method::GET, &format!("http://{edge}/"), &[("host", "app.test")], None).await;
        let location = first.headers["location"].to_str().unwrap().to_string();
        let nonce = cookie_pair(&first, "portcullis_htpasswd_nonce");
        let state = location.split("state=").nth(1).unwrap().to_string();
        let action = format!("http://{edge}{}", location.split('?').next().unwrap());
        let password = if attempt == 11 { "alice-password" } else { "guess" };
        let body = format!("state={state}&username=alice&password={password}").into_bytes();
        let headers = [
            ("host", "app.test"),
            ("cookie", nonce.as_str()),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        last = Some(send(Method::POST, &action, &headers, Some(body)).await);
        if attempt <= 10 {
            assert_eq!(last.as_ref().unwrap().status, 401, "attempt {attempt}");
        }
    }
    let locked = last.unwrap();
    assert_eq!(locked.status, 403, "{}", locked.body);
    assert!(locked.body.contains("Too many failed attempts"));
    gw.stop().await;
}

#[tokio::test]
async fn parallel_login_starts_in_one_browser_share_its_nonce() {
    let upstream = Upstream::start().await;
    let library = plugin_library("portcullis_htpasswd");
    let gw = TestGateway::start_with(&protected(&upstream, &library, "", "htpasswd", &htpasswd_options())).await;
    let edge = gw.gateway.edge_addr;
    // The page starts a login; then the same browser starts another (say, for its favicon).
    let page = send(
        Method::GET,
        &format!("http://{edge}/page"),
        &[("host", "app.test")],
        None,
    )
    .await;
    let nonce = cookie_pair(&page, "portcullis_htpasswd_nonce");
    let other = send(
        Method::GET,
        &format!("http://{edge}/favicon.ico"),
        &[("host", "app.test"), ("cookie", &nonce)],
        None,
    )
    .await;
    assert_eq!(
        cookie_pair(&other, "portcullis_htpasswd_nonce"),
        nonce,
        "the browser's nonce is kept"
    );
    // The page's own form still works.
    let location = page.headers["location"].to_str().unwrap().to_string();
    let state = location.split("state=").nth(1).unwrap();
    let action = format!("http://{edge}{}", location.split('?').next().unwrap());
    let body = format!("state={state}&username=alice&password=alice-password").into_bytes();
    let headers = [
        ("host", "app.test"),
        ("cookie", nonce.as_str()),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    let done = send(Method::POST, &action, &headers, Some(body)).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.headers["location"], "/page");
    gw.stop().await;
}
