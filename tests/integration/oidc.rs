//! The OIDC module against a certified OpenID Provider: npm `oidc-provider`
//! (`tests/peers/oidc_provider.mjs`, installed by `make test-deps`), started on loopback by each
//! test and stopped by its pid. Sign-in through its login and consent forms (over HTTP with a
//! cookie jar, and in headless Chromium), email/domain/group rules, RP-initiated and
//! back-channel logout, re-checks, access-token forwarding, the module's API and config forms.

use crate::harness::{
    browser_sign_in, echoed, location, send, session_token, set_cookie, tests_dir, Reply, TestGateway, Upstream,
    LISTENERS,
};
use http::Method;
use portcullis::clock::ManualClock;
use portcullis::server::StartOptions;
use portcullis::state::Shared;
use serde_json::{json, Value};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::AsyncBufReadExt;

const COOKIE: &str = "portcullis.session";

/// A running Node peer that prints `{"issuer": ...}` when ready (the provider or the forge).
pub struct Op {
    child: tokio::process::Child,
    pub issuer: String,
    /// Where the provider's token endpoint and userinfo are, when not on the issuer's host.
    pub endpoints: Option<String>,
}

impl Op {
    pub async fn start(script: &str) -> Op {
        Op::start_with(script, &[]).await
    }

    /// Starts the peer with further command-line arguments.
    pub async fn start_with(script: &str, args: &[&str]) -> Op {
        assert!(
            tests_dir().join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is missing: run `make test-deps`"
        );
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = tokio::process::Command::new("node")
            .arg(tests_dir().join("peers").join(script))
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("the provider printed its issuer");
        let ready: Value = serde_json::from_str(&line).unwrap();
        Op {
            child,
            issuer: ready["issuer"].as_str().unwrap().to_string(),
            endpoints: ready["endpoints"].as_str().map(str::to_string),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        send(Method::GET, &format!("{}{path}", self.issuer), &[], None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        send(
            Method::POST,
            &format!("{}{path}", self.issuer),
            &[("content-type", "application/json")],
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Cookies of one host, with their paths, as a browser keeps them.
#[derive(Default)]
pub struct Jar(Vec<(String, String, String)>);

impl Jar {
    pub fn take(&mut self, reply: &Reply) {
        for header in reply.headers.get_all("set-cookie") {
            let text = header.to_str().unwrap();
            let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            let path = attributes
                .split(';')
                .filter_map(|a| {
                    a.trim()
                        .strip_prefix("path=")
                        .or_else(|| a.trim().strip_prefix("Path="))
                })
                .next()
                .unwrap_or("/")
                .to_string();
            self.0.retain(|(n, _, p)| !(n == name && *p == path));
            if !value.is_empty() && !attributes.to_ascii_lowercase().contains("max-age=0") {
                self.0.push((name.to_string(), value.to_string(), path));
            }
        }
    }

    pub fn header(&self, path: &str) -> String {
        self.0
            .iter()
            .filter(|(_, _, p)| path.starts_with(p.as_str()))
            .map(|(n, v, _)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("/", |i| &rest[i..])
}

/// A browser's visit: a GET or form POST with the jar's cookies for that path; takes the answer's.
async fn visit(jar: &mut Jar, method: Method, url: &str, form: Option<String>) -> Reply {
    let cookie = jar.header(path_of(url));
    let mut headers = vec![("cookie", cookie.as_str())];
    if form.is_some() {
        headers.push(("content-type", "application/x-www-form-urlencoded"));
    }
    let reply = send(method, url, &headers, form.map(String::into_bytes)).await;
    jar.take(&reply);
    reply
}

/// A gateway whose edge answers on its own address (the provider calls its back-channel
/// endpoint there), with `/` protected by an OIDC module.
pub struct Site {
    pub gw: TestGateway,
    _upstream: Upstream,
    pub edge_id: String,
    pub route_id: String,
    pub module: Value,
    pub origin: String,
    /// The gateway's cookies (session, sign-in binding), as the browser holds them.
    pub jar: Jar,
}

impl Site {
    pub async fn start(op: &Op, options: Value, start: StartOptions) -> Site {
        let gw = TestGateway::start_full(crate::harness::LISTENERS, start).await;
        let upstream = Upstream::start().await;
        let edge_host = gw.gateway.edge_addr.to_string();
        let (edge_id, route_id) = gw.create_route_to(upstream.addr, &edge_host).await;
        let mut module = json!({"issuer": op.issuer, "client_id": "portcullis", "client_secret": "s3cret-for-tests"});
        for (k, v) in options.as_object().unwrap() {
            module[k] = v.clone();
        }
        let put = gw
            .api(
                Method::PUT,
                &format!("/edges/https/{edge_id}/routes/{route_id}/oidc"),
                Some(json!({"module": module})),
            )
            .await;
        assert_eq!(put.status, 200, "{}", put.body);
        Site {
            gw,
            _upstream: upstream,
            edge_id,
            route_id,
            module: put.json(),
            origin: format!("http://{edge_host}"),
            jar: Jar::default(),
        }
    }

    /// Registers the module's client at the real provider, as an operator would: a web
    /// client with the code and refresh-token grants.
    pub async fn register(&self, op: &Op, auth_method: &str) {
        self.register_with_grants(op, auth_method, &["authorization_code", "refresh_token"])
            .await;
    }

    pub async fn register_with_grants(&self, op: &Op, auth_method: &str, grant_types: &[&str]) {
        let m = &self.module;
        let reply = op
            .post(
                "/test/clients",
                json!({
                    "client_id": "portcullis", "client_secret": "s3cret-for-tests",
                    "redirect_uris": [m["redirect_uri"]],
                    "post_logout_redirect_uris": [m["post_logout_redirect_uri"]],
                    "backchannel_logout_uri": m["backchannel_logout_uri"],
                    "token_endpoint_auth_method": auth_method,
                    "grant_types": grant_types,
                }),
            )
            .await;
        assert_eq!(reply.status, 204, "{}", reply.body);
    }

    /// Stops the gateway and starts it again on the same data dir and edge address (the
    /// routes name it), with `options`.
    pub async fn restart(self, options: StartOptions) -> Site {
        let edge = self.gw.gateway.edge_addr.to_string();
        let TestGateway { gateway, dir, .. } = self.gw;
        gateway.shutdown().await;
        std::fs::write(
            dir.path().join("config.toml"),
            LISTENERS.replacen("127.0.0.1:0", &edge, 1),
        )
        .unwrap();
        let gw = TestGateway::start_in_with(dir, options).await;
        assert_eq!(gw.gateway.edge_addr.to_string(), edge);
        Site { gw, ..self }
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        let url = format!("{}{path}", self.origin);
        visit(&mut self.jar, Method::GET, &url, None).await
    }

    /// A request with only this session token (another browser, or after the jar changed).
    pub async fn with_session(&self, path: &str, token: &str) -> Reply {
        let cookie = format!("{COOKIE}={token}");
        send(
            Method::GET,
            &format!("{}{path}", self.origin),
            &[("cookie", &cookie)],
            None,
        )
        .await
    }

    /// Signs `user` in through the provider's login (and, the first time, consent) forms;
    /// returns the gateway's answer to the callback.
    pub async fn login(&mut self, op_jar: &mut Jar, path: &str, user: &str) -> Reply {
        let callback = self.login_until_callback(op_jar, path, user).await;
        self.get(path_of(&callback)).await
    }

    /// [`Site::login`] up to the provider's answer: the callback URL the browser is sent to.
    pub async fn login_until_callback(&mut self, op_jar: &mut Jar, path: &str, user: &str) -> String {
        let start = self.get(path).await;
        assert_eq!(start.status, 303, "{}", start.body);
        let mut url = location(&start);
        let authorization_endpoint = format!("{}/auth?", self.module["issuer"].as_str().unwrap());
        assert!(url.starts_with(&authorization_endpoint), "{url}");
        for _ in 0..10 {
            if url.starts_with(&self.origin) {
                return url;
            }
            let reply = visit(op_jar, Method::GET, &url, None).await;
            if reply.status == 303 || reply.status == 302 {
                url = resolve(&url, &location(&reply));
                continue;
            }
            assert_eq!(reply.status, 200, "{url}: {}", reply.body);
            let form = if reply.body.contains("name=\"login\"") {
                format!("prompt=login&login={user}&password={user}-password")
            } else {
                assert!(reply.body.contains("value=\"consent\""), "{}", reply.body);
                "prompt=consent".to_string()
            };
            let posted = visit(op_jar, Method::POST, &url, Some(form)).await;
            assert_eq!(posted.status, 303, "{}", posted.body);
            url = resolve(&url, &location(&posted));
        }
        panic!("the sign-in did not come back to the gateway");
    }

    pub async fn stop(self) {
        self.gw.stop().await;
    }
}

/// A `Location` (absolute or relative) as the absolute URL a browser goes to from `base`.
fn resolve(base: &str, location: &str) -> String {
    url::Url::parse(base).unwrap().join(location).unwrap().to_string()
}

/// Start options whose clock the test moves by hand, with the real upkeep running often (so a
/// re-check runs soon after the clock moves, as it would in production within ten seconds).
pub fn moved_clock() -> (ManualClock, StartOptions) {
    let (clock, mut options) = crate::harness::manual_clock();
    options.upkeep_interval = std::time::Duration::from_millis(50);
    (clock, options)
}

/// Moves the clock and waits for the background upkeep to finish a pass of re-checks that
/// started after the move (the pass running at the move may have read the old time).
pub async fn upkeep_after(clock: &ManualClock, shared: &Arc<Shared>, secs: i64) {
    let before = shared.recheck_passes.load(Ordering::Acquire);
    clock.advance(secs);
    for _ in 0..400 {
        if shared.recheck_passes.load(Ordering::Acquire) >= before + 2 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the upkeep ran no re-check pass");
}

#[tokio::test]
async fn a_sign_in_reaches_the_upstream_with_the_identity_and_the_access_token() {
    let op = Op::start("oidc_provider.mjs").await;
    let mut site = Site::start(&op, json!({"forward_access_token": true}), StartOptions::default()).await;
    site.register(&op, "client_secret_basic").await;

    // The authorization request: code flow, PKCE S256, state, nonce, the default scopes, the
    // groups scope the provider offers, and offline_access (the forwarded token is renewed).
    let start = site.get("/reports?q=1").await;
    let authorize = url::Url::parse(&location(&start)).unwrap();
    let query: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["scope"], "openid profile email groups offline_access");
    assert!(!query.contains_key("prompt"), "no prompt by default: {authorize}");
    assert_eq!(query["redirect_uri"], site.module["redirect_uri"]);
    assert!(query["state"].len() >= 43 && query["nonce"].len() >= 43);

    let mut op_jar = Jar::default();
    let done = site.login(&mut op_jar, "/reports?q=1", "alice").await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(location(&done), "/reports?q=1");
    // The provider keeps email, name and groups out of the ID token (the code flow's ID token
    // carries only sub): the module read them from userinfo.
    let userinfo: Value = serde_json::from_str(&op.get("/test/userinfo-requests").await.body).unwrap();
    assert_eq!(userinfo["ok"], 1);
    let token = session_token(&done);
    let seen = echoed(&site.with_session("/reports?q=1", &token).await);
    assert_eq!(seen["headers"]["x-portcullis-user-email"], "alice@example.com");
    assert_eq!(seen["headers"]["x-portcullis-user-name"], "Alice Liddell");
    assert_eq!(seen["headers"]["x-portcullis-user-groups"], "engineering,admins");
    let access_token = seen["headers"]["x-portcullis-access-token"].as_str().unwrap();
    assert!(access_token.len() > 20, "{access_token}");
    let token_request: Value = serde_json::from_str(&op.get("/test/last-token-request").await.body).unwrap();
    assert_eq!(token_request["auth_method"], "client_secret_basic");
    assert_eq!(token_request["code_verifier_present"], true);

    // A spoofed access-token header never reaches the upstream.
    let spoofed = send(
        Method::GET,
        &format!("{}/x", site.origin),
        &[
            ("cookie", &format!("{COOKIE}={token}")),
            ("x-portcullis-access-token", "forged"),
        ],
        None,
    )
    .await;
    assert_eq!(echoed(&spoofed)["headers"]["x-portcullis-access-token"], access_token);
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn offline_access_goes_without_a_prompt_unless_the_module_names_one() {
    let op = Op::start("oidc_provider.mjs").await;
    // By default no prompt goes with offline_access: a person who consented once is not asked
    // again at the next sign-in. (This provider then drops offline_access and issues no refresh
    // token: the session ends with its access token; most providers issue one without a prompt.)
    let mut site = Site::start(&op, json!({"forward_access_token": true}), StartOptions::default()).await;
    site.register(&op, "client_secret_basic").await;
    let mut op_jar = Jar::default();
    let first = site.login(&mut op_jar, "/", "alice").await;
    assert_eq!(first.status, 303, "{}", first.body);
    let token_request: Value = serde_json::from_str(&op.get("/test/last-token-request").await.body).unwrap();
    assert_eq!(token_request["refresh_token_issued"], false);
    site.jar = Jar::default();
    let authorize = location(&site.get("/").await);
    assert!(
        authorize.contains("offline_access") && !authorize.contains("prompt="),
        "{authorize}"
    );
    let answer = visit(&mut op_jar, Method::GET, &authorize, None).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert!(
        location(&answer).starts_with(&site.origin),
        "straight back, without a consent page: {}",
        location(&answer)
    );
    let again = site.get(path_of(&location(&answer))).await;
    assert_eq!(again.status, 303, "{}", again.body);
    site.stop().await;

    // With `offline_access_prompt = "consent"`, which this provider needs, a refresh token
    // comes, at the price of the consent page at every sign-in.
    let mut site = Site::start(
        &op,
        json!({"forward_access_token": true, "offline_access_prompt": "consent"}),
        StartOptions::default(),
    )
    .await;
    site.register(&op, "client_secret_basic").await;
    let done = site.login(&mut op_jar, "/", "alice").await;
    assert_eq!(done.status, 303, "{}", done.body);
    let token_request: Value = serde_json::from_str(&op.get("/test/last-token-request").await.body).unwrap();
    assert_eq!(token_request["refresh_token_issued"], true);
    site.jar = Jar::default();
    let authorize = location(&site.get("/").await);
    assert!(authorize.contains("prompt=consent"), "{authorize}");
    let answer = visit(&mut op_jar, Method::GET, &authorize, None).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert!(
        location(&answer).starts_with("/interaction/"),
        "the consent page again: {}",
        location(&answer)
    );
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn an_answer_without_the_provider_s_name_is_refused_and_leaves_the_sign_in_to_its_browser() {
    let op = Op::start("oidc_provider.mjs").await;
    let mut site = Site::start(&op, json!({}), StartOptions::default()).await;
    site.register(&op, "client_secret_basic").await;
    let callback = site.login_until_callback(&mut Jar::default(), "/", "alice").await;
    let answer = url::Url::parse(&callback).unwrap();
    let params: Vec<(String, String)> = answer.query_pairs().into_owned().collect();
    assert!(
        params.iter().any(|(k, v)| k == "iss" && *v == op.issuer),
        "the provider names itself (RFC 9207): {callback}"
    );
    let with_iss = |iss: Option<&str>| {
        let mut url = answer.clone();
        let mut query = url.query_pairs_mut();
        query.clear();
        for (k, v) in params.iter().filter(|(k, _)| k != "iss") {
            query.append_pair(k, v);
        }
        if let Some(iss) = iss {
            query.append_pair("iss", iss);
        }
        drop(query);
        path_of(url.as_str()).to_string()
    };
    // The provider's discovery says it always sends `iss`: an answer without it, or naming
    // another provider, is refused (a mix-up attack)...
    let stripped = site.get(&with_iss(None)).await;
    crate::harness::assert_sign_in_refused(&stripped, 400, "no iss");
    assert!(
        stripped.body.contains("does not name its provider"),
        "{}",
        stripped.body
    );
    let other = site.get(&with_iss(Some("https://evil.example"))).await;
    crate::harness::assert_sign_in_refused(&other, 400, "another iss");
    // ...and, as any refused answer, does not spend the sign-in: the genuine answer completes it.
    let done = site.get(path_of(&callback)).await;
    assert_eq!(done.status, 303, "{}", done.body);
    echoed(&site.with_session("/", &session_token(&done)).await);
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn client_secret_post_is_used_when_the_module_says_so() {
    let op = Op::start("oidc_provider.mjs").await;
    let mut site = Site::start(
        &op,
        json!({"token_auth_method": "client_secret_post", "scopes": ["openid", "email", "groups"]}),
        StartOptions::default(),
    )
    .await;
    site.register(&op, "client_secret_post").await;
    let done = site.login(&mut Jar::default(), "/", "alice").await;
    assert_eq!(done.status, 303, "{}", done.body);
    let token_request: Value = serde_json::from_str(&op.get("/test/last-token-request").await.body).unwrap();
    assert_eq!(token_request["auth_method"], "client_secret_post");
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn email_domain_and_group_rules_allow_and_deny() {
    let op = Op::start("oidc_provider.mjs").await;
    for (rules, alice, bob) in [
        (json!({"allow_domains": ["example.com"]}), 303, 403),
        (json!({"allow_emails": ["bob@corp.example"]}), 403, 403), // bob's email is not verified
        (json!({"authorized_groups": ["sales"]}), 403, 303),
        (
            json!({"allow_emails": ["bob@corp.example"], "trust_unverified_email": true}),
            403,
            303,
        ),
        (
            json!({"allow_domains": ["example.com"], "authorized_groups": ["admins"]}),
            303,
            403,
        ),
        // Without the groups scope the provider sends no groups: a group rule admits no one.
        (
            json!({"authorized_groups": ["admins", "sales"], "groups_scope": ""}),
            403,
            403,
        ),
    ] {
        let mut site = Site::start(&op, rules.clone(), StartOptions::default()).await;
        site.register(&op, "client_secret_basic").await;
        for (user, expected) in [("alice", alice), ("bob", bob)] {
            site.jar = Jar::default();
            let reply = site.login(&mut Jar::default(), "/", user).await;
            assert_eq!(reply.status, expected, "{rules} {user}: {}", reply.body);
            if expected == 403 {
                assert!(reply.body.contains("You do not have access to this application."));
                assert!(
                    !reply.body.contains(user) && !reply.body.contains("sales"),
                    "{}",
                    reply.body
                );
                assert!(set_cookie(&reply, COOKIE).is_none());
            }
        }
        site.stop().await;
    }
    op.stop().await;
}

#[tokio::test]
async fn rp_initiated_and_back_channel_logout_end_the_session() {
    let op = Op::start("oidc_provider.mjs").await;
    let mut site = Site::start(&op, json!({}), StartOptions::default()).await;
    site.register(&op, "client_secret_basic").await;

    // RP-initiated: the gateway ends the session and sends the browser to the provider's
    // end_session_endpoint with id_token_hint; the provider logs out and comes back.
    let mut op_jar = Jar::default();
    let token = session_token(&site.login(&mut op_jar, "/", "alice").await);
    let out = site.get("/_portcullis/logout").await;
    assert_eq!(out.status, 303, "{}", out.body);
    let end_session = location(&out);
    assert!(
        end_session.starts_with(&format!("{}/session/end?", op.issuer)),
        "{end_session}"
    );
    assert!(end_session.contains("id_token_hint="));
    assert_eq!(site.with_session("/", &token).await.status, 303, "ended at once");
    let confirm = visit(&mut op_jar, Method::GET, &end_session, None).await;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    let xsrf = confirm
        .body
        .split("name=\"xsrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let confirmed = visit(
        &mut op_jar,
        Method::POST,
        &format!("{}/session/end/confirm", op.issuer),
        Some(format!("xsrf={xsrf}&logout=yes")),
    )
    .await;
    assert_eq!(confirmed.status, 303, "{}", confirmed.body);
    let back = site.get(path_of(&location(&confirmed))).await;
    assert_eq!(back.status, 200);
    assert!(back.body.contains("signed out"), "{}", back.body);

    // Back-channel: the provider ends alice's sessions (two browsers) and tells the gateway.
    let first = session_token(&site.login(&mut Jar::default(), "/", "alice").await);
    site.jar = Jar::default();
    let second = session_token(&site.login(&mut Jar::default(), "/", "alice").await);
    site.jar = Jar::default();
    let bob = session_token(&site.login(&mut Jar::default(), "/", "bob").await);
    let sent: Value = serde_json::from_str(&op.post("/test/logout/alice", json!({})).await.body).unwrap();
    assert!(
        sent["sent"].as_array().unwrap().iter().all(|s| s["status"] == 200),
        "{sent}"
    );
    for ended in [&first, &second] {
        assert_eq!(site.with_session("/", ended).await.status, 303);
    }
    echoed(&site.with_session("/", &bob).await);
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn re_checks_outlive_the_access_token_and_end_a_user_removed_at_the_provider() {
    let op = Op::start("oidc_provider.mjs").await;
    let (clock, options) = moved_clock();
    // This provider keeps offline_access only with prompt=consent (OpenID Connect Core 11).
    let mut site = Site::start(
        &op,
        json!({"recheck_interval": 300, "offline_access_prompt": "consent"}),
        options,
    )
    .await;
    site.register(&op, "client_secret_basic").await;
    let alice = session_token(&site.login(&mut Jar::default(), "/", "alice").await);
    site.jar = Jar::default();
    let bob = session_token(&site.login(&mut Jar::default(), "/", "bob").await);
    let shared = site.gw.gateway.shared().clone();

    // Past the access tokens' hour, re-checks go on with tokens renewed by the refresh token
    // the module asked for (offline_access): nobody is signed out.
    for _ in 0..13 {
        upkeep_after(&clock, &shared, 301).await;
    }
    echoed(&site.with_session("/", &alice).await);
    echoed(&site.with_session("/", &bob).await);
    let token_request: Value = serde_json::from_str(&op.get("/test/last-token-request").await.body).unwrap();
    assert_eq!(token_request["grant_type"], "refresh_token");

    // Not yet due: nothing is asked, both stay.
    assert_eq!(op.post("/test/users/alice/remove", json!({})).await.status, 204);
    upkeep_after(&clock, &shared, 0).await;
    echoed(&site.with_session("/", &alice).await);
    upkeep_after(&clock, &shared, 301).await;
    assert_eq!(
        site.with_session("/", &alice).await.status,
        303,
        "removed at the provider"
    );
    echoed(&site.with_session("/", &bob).await);
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn a_forwarded_access_token_is_renewed_before_it_expires() {
    let op = Op::start("oidc_provider.mjs").await;
    let (clock, options) = moved_clock();
    // This provider keeps offline_access only with prompt=consent (OpenID Connect Core 11).
    let mut site = Site::start(
        &op,
        json!({"forward_access_token": true, "offline_access_prompt": "consent"}),
        options,
    )
    .await;
    site.register(&op, "client_secret_basic").await;
    let token = session_token(&site.login(&mut Jar::default(), "/", "alice").await);
    let forwarded = |reply: &Reply| {
        echoed(reply)["headers"]["x-portcullis-access-token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = forwarded(&site.with_session("/", &token).await);

    // The provider's access tokens live an hour; without re-checks configured the gateway still
    // looks every half hour and renews one that would expire before the next look.
    let shared = site.gw.gateway.shared().clone();
    upkeep_after(&clock, &shared, 1700).await;
    assert_eq!(forwarded(&site.with_session("/", &token).await), first, "not due yet");
    upkeep_after(&clock, &shared, 200).await;
    let second = forwarded(&site.with_session("/", &token).await);
    assert_ne!(second, first);
    let token_request: Value = serde_json::from_str(&op.get("/test/last-token-request").await.body).unwrap();
    assert_eq!(token_request["grant_type"], "refresh_token");

    // The renewed token is kept across a restart of the gateway.
    drop(shared);
    let (_, mut options) = moved_clock();
    options.clock = Arc::new(clock.clone());
    let site = site.restart(options).await;
    assert_eq!(
        forwarded(&site.with_session("/", &token).await),
        second,
        "kept across a restart"
    );
    // The renewed token is one the provider honours.
    let me = send(
        Method::GET,
        &format!("{}/me", op.issuer),
        &[("authorization", &format!("Bearer {second}"))],
        None,
    )
    .await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(serde_json::from_str::<Value>(&me.body).unwrap()["sub"], "alice");

    // A grant the provider no longer honours ends the session at the next renewal.
    assert_eq!(op.post("/test/users/alice/remove", json!({})).await.status, 204);
    let shared = site.gw.gateway.shared().clone();
    upkeep_after(&clock, &shared, 1900).await;
    assert_eq!(site.with_session("/", &token).await.status, 303);
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn without_a_refresh_token_the_session_ends_when_its_access_token_expires() {
    let op = Op::start("oidc_provider.mjs").await;
    let (clock, options) = moved_clock();
    let mut site = Site::start(&op, json!({"forward_access_token": true}), options).await;
    // A client without the refresh_token grant: the provider drops offline_access and issues
    // no refresh token.
    site.register_with_grants(&op, "client_secret_basic", &["authorization_code"])
        .await;
    let token = session_token(&site.login(&mut Jar::default(), "/", "alice").await);
    let first = echoed(&site.with_session("/", &token).await)["headers"]["x-portcullis-access-token"].clone();
    assert!(first.is_string(), "{first}");
    let shared = site.gw.gateway.shared().clone();
    upkeep_after(&clock, &shared, 1800).await;
    let still = echoed(&site.with_session("/", &token).await)["headers"]["x-portcullis-access-token"].clone();
    assert_eq!(still, first, "the token still lives");
    // At its expiry the session ends rather than forward a dead token; signing in again works.
    upkeep_after(&clock, &shared, 1800).await;
    assert_eq!(site.with_session("/", &token).await.status, 303);
    let token_request: Value = serde_json::from_str(&op.get("/test/last-token-request").await.body).unwrap();
    assert_eq!(
        token_request["grant_type"], "authorization_code",
        "no renewal was tried"
    );
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn a_provider_with_endpoints_on_another_host_is_reached_through_provider_hosts() {
    let op = Op::start_with("oidc_provider.mjs", &["--endpoints-host", "localhost"]).await;
    let endpoints = op.endpoints.clone().unwrap();
    let endpoints_host = endpoints.strip_prefix("http://").unwrap().to_string();
    assert!(endpoints_host.starts_with("localhost:"), "{endpoints_host}");

    // The token endpoint is on a host the module may not reach: the sign-in fails with a page.
    let mut site = Site::start(&op, json!({}), StartOptions::default()).await;
    site.register(&op, "client_secret_basic").await;
    let refused = site.login(&mut Jar::default(), "/", "alice").await;
    crate::harness::assert_sign_in_refused(&refused, 502, "token endpoint on another host");
    site.stop().await;

    // Named in provider_hosts, it is reached (the token request came to that host), and so is
    // userinfo there (email and groups come from it).
    let mut site = Site::start(
        &op,
        json!({"provider_hosts": [endpoints_host], "authorized_groups": ["admins"]}),
        StartOptions::default(),
    )
    .await;
    site.register(&op, "client_secret_basic").await;
    let done = site.login(&mut Jar::default(), "/", "alice").await;
    assert_eq!(done.status, 303, "{}", done.body);
    let token_request: Value = serde_json::from_str(&op.get("/test/last-token-request").await.body).unwrap();
    assert_eq!(token_request["host"], endpoints_host);
    assert_eq!(token_request["status"], 200);
    let seen = echoed(&site.with_session("/", &session_token(&done)).await);
    assert_eq!(seen["headers"]["x-portcullis-user-email"], "alice@example.com");
    assert_eq!(seen["headers"]["x-portcullis-user-groups"], "engineering,admins");
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn a_person_signs_in_through_the_provider_s_forms_in_a_real_browser() {
    let op = Op::start("oidc_provider.mjs").await;
    let site = Site::start(&op, json!({}), StartOptions::default()).await;
    site.register(&op, "client_secret_basic").await;
    let url = format!("{}/wiki/page?x=1", site.origin);
    let (seen, _) = browser_sign_in(&url, "alice", true).await;
    assert_eq!(seen["headers"]["x-portcullis-user-email"], "alice@example.com");
    assert_eq!(seen["headers"]["x-portcullis-user-groups"], "engineering,admins");
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn the_module_api_answers_in_ngrok_s_shape_and_refuses_what_cannot_work() {
    let op = Op::start("oidc_provider.mjs").await;
    let site = Site::start(&op, json!({"scopes": ["openid", "email"]}), StartOptions::default()).await;
    let m = &site.module;
    let base = format!("{}/_portcullis/auth/{}", site.origin, site.route_id);
    assert_eq!(m["redirect_uri"], format!("{base}/callback"));
    assert_eq!(m["backchannel_logout_uri"], format!("{base}/backchannel-logout"));
    assert_eq!(m["issuer"], op.issuer);
    assert_eq!(m["scopes"], json!(["openid", "email"]));
    assert_eq!(m["enabled"], true);
    let path = format!("/edges/https/{}/routes/{}/oidc", site.edge_id, site.route_id);
    assert_eq!(site.gw.api(Method::GET, &path, None).await.json(), *m);

    let dead = crate::harness::dead_address().await;
    for (module, field, says) in [
        (
            json!({"client_id": "c", "client_secret": "s"}),
            "oidc.issuer",
            "is required",
        ),
        (
            json!({"issuer": op.issuer, "client_secret": "s"}),
            "oidc.client_id",
            "is required",
        ),
        (
            json!({"issuer": op.issuer, "client_id": "c"}),
            "oidc.client_secret",
            "is required",
        ),
        (
            json!({"issuer": format!("http://{dead}"), "client_id": "c", "client_secret": "s"}),
            "oidc",
            "discovery",
        ),
        (
            json!({"issuer": op.issuer, "client_id": "c", "client_secret": "s", "redirect_uri": "x"}),
            "oidc.redirect_uri",
            "read-only",
        ),
    ] {
        let reply = site.gw.api(Method::PUT, &path, Some(module)).await;
        let msg = reply.assert_api_error(400, 105);
        assert!(msg.contains(&format!("`{field}`")) && msg.contains(says), "{msg}");
    }
    assert_eq!(
        site.gw.api(Method::GET, &path, None).await.json(),
        *m,
        "refused writes change nothing"
    );

    // A bare module (as ngrok's clients send it) replaces it; a route update carries it as `oidc`.
    let bare = json!({"issuer": op.issuer, "client_id": "portcullis", "client_secret": "s3cret-for-tests", "allow_domains": ["example.com"]});
    let put = site.gw.api(Method::PUT, &path, Some(bare)).await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.json()["allow_domains"], json!(["example.com"]));
    assert_eq!(put.json()["scopes"], json!(["openid", "profile", "email"]));
    let route_path = format!("/edges/https/{}/routes/{}", site.edge_id, site.route_id);
    let patched = site
        .gw
        .api(
            Method::PATCH,
            &route_path,
            Some(json!({"oidc": {"issuer": op.issuer, "client_id": "portcullis", "client_secret": "s3cret-for-tests", "authorized_groups": ["admins"]}})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.json()["oidc"]["authorized_groups"], json!(["admins"]));
    assert_eq!(patched.json()["oidc"]["redirect_uri"], m["redirect_uri"]);
    let deleted = site.gw.api(Method::DELETE, &path, None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    let route = site
        .gw
        .api(
            Method::GET,
            &format!("/edges/https/{}/routes/{}", site.edge_id, site.route_id),
            None,
        )
        .await;
    assert!(route.json().get("oidc").is_none_or(Value::is_null), "{}", route.body);
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn a_module_in_config_toml_signs_people_in() {
    let op = Op::start("oidc_provider.mjs").await;
    let upstream = Upstream::start().await;
    // The edge must answer on its own address, known only once it listens: bind a port first.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let edge = probe.local_addr().unwrap();
    drop(probe);
    let config = format!(
        "version = 1\n[listeners.edge]\naddress = \"{edge}\"\n[listeners.console]\naddress = \"127.0.0.1:0\"\n\
         [backends.up]\naddress = \"{}\"\n[edges.app]\nhostports = [\"{edge}\"]\n\
         [[edges.app.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/\"\nbackend = \"up\"\n\
         [edges.app.routes.auth]\nplugin = \"oidc\"\nissuer = \"{}\"\nclient_id = \"portcullis\"\nclient_secret = \"s3cret-for-tests\"\n",
        upstream.addr, op.issuer
    );
    let gw = TestGateway::start_with(&config).await;
    let edges = gw.api(Method::GET, "/edges/https", None).await.json();
    let route = &edges["https_edges"][0]["routes"][0];
    let mut site = Site {
        edge_id: edges["https_edges"][0]["id"].as_str().unwrap().to_string(),
        route_id: route["id"].as_str().unwrap().to_string(),
        module: route["oidc"].clone(),
        origin: format!("http://{edge}"),
        jar: Jar::default(),
        gw,
        _upstream: upstream,
    };
    site.register(&op, "client_secret_basic").await;
    let done = site.login(&mut Jar::default(), "/", "bob").await;
    assert_eq!(done.status, 303, "{}", done.body);
    let seen = echoed(&site.with_session("/", &session_token(&done)).await);
    assert_eq!(seen["headers"]["x-portcullis-user-email"], "bob@corp.example");
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn the_sign_in_binding_cookie_never_reaches_an_upstream() {
    let op = Op::start("oidc_provider.mjs").await;
    let mut site = Site::start(&op, json!({}), StartOptions::default()).await;
    site.register(&op, "client_secret_basic").await;
    let done = site.login(&mut Jar::default(), "/", "alice").await;
    let token = session_token(&done);
    // The browser still holds the binding cookie and sends it with every request.
    let cookies = format!("{COOKIE}={token}; {}; app=1", site.jar.header("/"));
    assert!(cookies.contains("portcullis-oidc-"), "{cookies}");
    let seen = echoed(&send(Method::GET, &format!("{}/", site.origin), &[("cookie", &cookies)], None).await);
    assert_eq!(seen["headers"]["cookie"], "app=1");
    op.stop().await;
    site.stop().await;
}
