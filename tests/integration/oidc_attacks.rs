//! Crafted provider answers against the OIDC module: a test-controlled provider
//! (`tests/peers/oidc_forge.mjs`) signs wrong ID tokens, replays codes, mismatches state and
//! nonce, goes down or answers garbage, and sends bad back-channel logout tokens. The same
//! flow with the forge's normal answers signs in first, so each refusal is the check under test.
//! One test uses the real provider (`tests/peers/oidc_provider.mjs`), whose bob has an unverified
//! address: it must not sign in as the person provisioned with that address.

use crate::harness::{assert_sign_in_refused, dead_address, echoed, session_token, Reply, TestGateway};
use crate::oidc::{moved_clock, upkeep_after, Jar, Op, Site};
use http::Method;
use portcullis::server::StartOptions;
use serde_json::{json, Value};

async fn forge_site(op: &Op) -> Site {
    forge_site_with(op, json!({}), StartOptions::default()).await
}

async fn forge_site_with(op: &Op, options: Value, start: StartOptions) -> Site {
    let site = Site::start(op, options, start).await;
    let registered = op
        .post(
            "/test/client",
            json!({"client_id": "portcullis", "client_secret": "s3cret-for-tests", "redirect_uri": site.module["redirect_uri"]}),
        )
        .await;
    assert_eq!(registered.status, 200, "{}", registered.body);
    site
}

async fn mode(op: &Op, mode: &str) {
    assert_eq!(op.post("/test/mode", json!({"mode": mode})).await.status, 200, "{mode}");
}

/// A sign-in against the forge (it answers the authorization request at once): the gateway's
/// answer to the callback, and the callback URL itself.
async fn sign_in(site: &mut Site) -> (Reply, String) {
    site.jar = Jar::default();
    let start = site.get("/").await;
    assert_eq!(start.status, 303, "{}", start.body);
    let authorize = start.headers["location"].to_str().unwrap().to_string();
    let answer = crate::harness::send(Method::GET, &authorize, &[], None).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    let callback = answer.headers["location"].to_str().unwrap().to_string();
    let path = callback.strip_prefix(&site.origin).unwrap().to_string();
    (site.get(&path).await, path)
}

#[tokio::test]
async fn crafted_id_tokens_are_refused() {
    let op = Op::start("oidc_forge.mjs").await;
    let mut site = forge_site(&op).await;
    let (genuine, _) = sign_in(&mut site).await;
    assert_eq!(genuine.status, 303, "{}", genuine.body);
    let seen = echoed(&site.with_session("/", &session_token(&genuine)).await);
    assert_eq!(seen["headers"]["x-portcullis-user-email"], "alice@example.com");

    for case in [
        "alg_none",
        "hs256_with_public_key",
        "wrong_iss",
        "wrong_aud",
        "multi_aud_no_azp",
        "multi_aud_wrong_azp",
        "expired",
        "future_iat",
        "wrong_nonce",
        "no_nonce",
        "tampered",
        "unknown_kid",
    ] {
        mode(&op, case).await;
        let (reply, _) = sign_in(&mut site).await;
        assert_sign_in_refused(&reply, 400, case);
    }
    mode(&op, "normal").await;
    assert_eq!(sign_in(&mut site).await.0.status, 303, "the genuine flow still works");
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn claims_the_id_token_lacks_come_from_userinfo_for_the_same_sub_only() {
    let op = Op::start("oidc_forge.mjs").await;
    let mut site = forge_site_with(&op, json!({"allow_domains": ["example.com"]}), StartOptions::default()).await;
    mode(&op, "claims_in_userinfo_only").await;
    let (reply, _) = sign_in(&mut site).await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    let claims = &serde_json::from_str::<Value>(&op.get("/test/last-token").await.body).unwrap()["id_token_claims"];
    assert!(claims.get("email").is_none(), "{claims}");
    let seen = echoed(&site.with_session("/", &session_token(&reply)).await);
    assert_eq!(seen["headers"]["x-portcullis-user-email"], "alice@example.com");
    assert_eq!(seen["headers"]["x-portcullis-user-name"], "Alice Liddell");
    assert_eq!(seen["headers"]["x-portcullis-user-groups"], "engineering");

    // Userinfo about someone else is not used: the sign-in is refused.
    mode(&op, "userinfo_other_sub").await;
    let (reply, _) = sign_in(&mut site).await;
    assert_sign_in_refused(&reply, 400, "userinfo for another sub");
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn userinfo_neither_names_the_provider_session_nor_verifies_another_source_s_address() {
    let op = Op::start("oidc_forge.mjs").await;
    let mut site = forge_site_with(&op, json!({"allow_domains": ["example.com"]}), StartOptions::default()).await;
    let uri = site.module["backchannel_logout_uri"].clone();

    // The ID token names no provider session; userinfo's `sid` is not taken as one, so the
    // provider's back-channel logout of alice's provider session still ends the session.
    mode(&op, "userinfo_sid").await;
    let (reply, _) = sign_in(&mut site).await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    let token = session_token(&reply);
    echoed(&site.with_session("/", &token).await);
    let sid = serde_json::from_str::<Value>(&op.get("/test/last-token").await.body).unwrap()["sid"].clone();
    let sent: Value = serde_json::from_str(
        &op.post(
            "/test/backchannel",
            json!({"uri": uri, "sub": "alice", "sid": sid, "variant": "good"}),
        )
        .await
        .body,
    )
    .unwrap();
    assert_eq!(sent["status"], 200, "{sent}");
    assert_eq!(
        site.with_session("/", &token).await.status,
        303,
        "the provider's logout ended the session"
    );

    // The ID token says `email_verified` but carries no address; userinfo's address is not
    // verified: the address rule admits no one.
    mode(&op, "verified_without_email").await;
    let (reply, _) = sign_in(&mut site).await;
    assert_sign_in_refused(&reply, 403, "an unverified address from userinfo");
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_accepted() {
    let op = Op::start("oidc_forge.mjs").await;
    let mut site = forge_site(&op).await;
    let before: Value = serde_json::from_str(&op.get("/test/counts").await.body).unwrap();
    assert_eq!(op.post("/test/rotate", json!({})).await.status, 200);
    mode(&op, "rotated_kid").await;
    let (reply, _) = sign_in(&mut site).await;
    assert_eq!(
        reply.status, 303,
        "a token signed by a new key verifies after one JWKS fetch: {}",
        reply.body
    );
    let after: Value = serde_json::from_str(&op.get("/test/counts").await.body).unwrap();
    assert_eq!(after["jwks"].as_i64().unwrap(), before["jwks"].as_i64().unwrap() + 1);
    // An unknown key does not make the gateway hammer the provider: no second fetch this minute.
    mode(&op, "unknown_kid").await;
    for _ in 0..3 {
        assert_sign_in_refused(&sign_in(&mut site).await.0, 400, "unknown kid");
    }
    let last: Value = serde_json::from_str(&op.get("/test/counts").await.body).unwrap();
    assert_eq!(last["jwks"], after["jwks"]);
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn state_nonce_code_and_browser_binding_are_checked() {
    let op = Op::start("oidc_forge.mjs").await;
    let mut site = forge_site(&op).await;

    mode(&op, "state_mismatch").await;
    assert_sign_in_refused(&sign_in(&mut site).await.0, 400, "state mismatch");
    mode(&op, "normal").await;

    // A callback is taken once.
    let (first, callback) = sign_in(&mut site).await;
    assert_eq!(first.status, 303);
    assert_sign_in_refused(&site.get(&callback).await, 400, "callback replayed");

    // A code is taken once by the provider: replayed under a fresh state, it gets no session.
    let code = callback
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    site.jar = Jar::default();
    let start = site.get("/").await;
    let authorize = start.headers["location"].to_str().unwrap().to_string();
    let state = url::Url::parse(&authorize)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let replay = format!("/_portcullis/auth/{}/callback?code={code}&state={state}", site.route_id);
    assert_sign_in_refused(&site.get(&replay).await, 400, "code replayed");

    // A callback from another browser (no binding cookie) is refused.
    site.jar = Jar::default();
    let start = site.get("/").await;
    let authorize = start.headers["location"].to_str().unwrap().to_string();
    let answer = crate::harness::send(Method::GET, &authorize, &[], None).await;
    let callback = answer.headers["location"].to_str().unwrap().to_string();
    let elsewhere = crate::harness::send(Method::GET, &callback, &[], None).await;
    assert_sign_in_refused(&elsewhere, 400, "callback in another browser");
    assert!(elsewhere.body.contains("another browser"), "{}", elsewhere.body);
    // ...without spending the sign-in: the browser that started it still completes it.
    let rightful = site.get(callback.strip_prefix(&site.origin).unwrap()).await;
    assert_eq!(rightful.status, 303, "{}", rightful.body);

    // The provider says no.
    mode(&op, "error_redirect").await;
    let (denied, _) = sign_in(&mut site).await;
    assert_sign_in_refused(&denied, 403, "access_denied");
    assert!(denied.body.contains("did not sign you in"), "{}", denied.body);

    // What the gateway asked for: PKCE S256, and the verifier at the token endpoint.
    mode(&op, "normal").await;
    assert_eq!(sign_in(&mut site).await.0.status, 303);
    let authorize: Value = serde_json::from_str(&op.get("/test/last-authorize").await.body).unwrap();
    assert_eq!(authorize["code_challenge_method"], "S256");
    let token: Value = serde_json::from_str(&op.get("/test/last-token").await.body).unwrap();
    assert_eq!(token["code_verifier_present"], true);
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn a_provider_that_is_down_or_answers_garbage_gets_an_error_page_not_a_hang() {
    let op = Op::start("oidc_forge.mjs").await;
    let mut site = forge_site(&op).await;
    for case in ["garbage_token_response", "token_500", "slow_token"] {
        mode(&op, case).await;
        let (reply, _) = sign_in(&mut site).await;
        assert_sign_in_refused(&reply, 502, case);
        assert!(reply.body.contains("Identity provider unavailable"), "{}", reply.body);
    }
    op.stop().await;

    // The provider gone: an anonymous visitor gets a 502 page at once (the cached discovery is
    // used to send them on, then the provider itself fails); a module for a dead issuer cannot
    // be written through the API.
    let path = format!("/edges/https/{}/routes/{}/oidc", site.edge_id, site.route_id);
    let dead = dead_address().await;
    let reply = site
        .gw
        .api(
            Method::PUT,
            &path,
            Some(json!({"issuer": format!("http://{dead}"), "client_id": "c", "client_secret": "s"})),
        )
        .await;
    let msg = reply.assert_api_error(400, 105);
    assert!(msg.contains("discovery"), "{msg}");
    site.stop().await;
}

#[tokio::test]
async fn malformed_requests_to_the_module_get_a_readable_page_never_a_server_error() {
    let op = Op::start("oidc_forge.mjs").await;
    let mut site = forge_site(&op).await;
    let callback = site.module["redirect_uri"].as_str().unwrap().to_string();
    let backchannel = site.module["backchannel_logout_uri"].as_str().unwrap().to_string();
    let base = callback.rsplit_once('/').unwrap().0.to_string();
    let origin = site.origin.clone();
    let path = |url: &str| url.strip_prefix(origin.as_str()).unwrap_or(url).to_string();
    for (case, url) in [
        ("a callback without parameters", callback.clone()),
        (
            "a callback with an unknown state",
            format!("{callback}?code=abc&state=nope"),
        ),
        ("a callback without a state", format!("{callback}?code=abc")),
        (
            "a callback with an error and no state",
            format!("{callback}?error=server_error"),
        ),
        (
            "a callback with bytes that are not UTF-8",
            format!("{callback}?code=%FF%FE&state=%C3%28"),
        ),
        ("GET on the back-channel endpoint", backchannel.clone()),
        ("an unknown endpoint", format!("{base}/nothing-here")),
    ] {
        let reply = site.get(&path(&url)).await;
        assert!(
            reply.status.is_client_error(),
            "{case}: {} {}",
            reply.status,
            reply.body
        );
    }
    for (case, body) in [
        ("no logout_token", "x=1".to_string()),
        ("a logout_token that is not a JWT", "logout_token=abc".to_string()),
        (
            "a logout_token of three garbage parts",
            "logout_token=a.b.c".to_string(),
        ),
    ] {
        let reply = crate::harness::send(
            Method::POST,
            &backchannel,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(body.into_bytes()),
        )
        .await;
        assert!(
            reply.status.is_client_error(),
            "{case}: {} {}",
            reply.status,
            reply.body
        );
    }
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn a_provider_outage_after_a_token_renewal_keeps_the_session_and_the_rotated_tokens() {
    let op = Op::start("oidc_forge.mjs").await;
    let (clock, start) = moved_clock();
    let mut site = forge_site_with(
        &op,
        json!({"forward_access_token": true, "recheck_interval": 300}),
        start,
    )
    .await;
    let (signed_in, _) = sign_in(&mut site).await;
    let token = session_token(&signed_in);
    let forwarded = |reply: &Reply| echoed(reply)["headers"]["x-portcullis-access-token"].clone();
    let first = forwarded(&site.with_session("/", &token).await);
    let shared = site.gw.gateway.shared().clone();

    // Near the access token's expiry the re-check renews it (the forge rotates refresh
    // tokens: each works once), then finds userinfo down: the session stays, with the new token.
    mode(&op, "userinfo_503").await;
    upkeep_after(&clock, &shared, 3300).await;
    let second = forwarded(&site.with_session("/", &token).await);
    assert_ne!(second, first);

    // The provider is back; the next renewal must use the rotated refresh token, not the spent
    // one (which the forge would answer with invalid_grant, ending the session).
    mode(&op, "normal").await;
    upkeep_after(&clock, &shared, 3300).await;
    let third = forwarded(&site.with_session("/", &token).await);
    assert!(third.is_string() && third != second, "{third}");
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn back_channel_logout_tokens_are_verified() {
    let op = Op::start("oidc_forge.mjs").await;
    let mut site = forge_site(&op).await;
    let (genuine, _) = sign_in(&mut site).await;
    let token = session_token(&genuine);
    let sid = serde_json::from_str::<Value>(&op.get("/test/last-token").await.body).unwrap()["sid"].clone();
    let uri = site.module["backchannel_logout_uri"].clone();
    for variant in ["bad_signature", "has_nonce", "no_event", "wrong_aud", "expired"] {
        let sent: Value = serde_json::from_str(
            &op.post(
                "/test/backchannel",
                json!({"uri": uri, "sub": "alice", "variant": variant}),
            )
            .await
            .body,
        )
        .unwrap();
        assert_eq!(sent["status"], 400, "{variant}: {sent}");
        echoed(&site.with_session("/", &token).await);
    }
    let unnamed: Value = serde_json::from_str(
        &op.post("/test/backchannel", json!({"uri": uri, "sub": null, "sid": null}))
            .await
            .body,
    )
    .unwrap();
    assert_eq!(unnamed["status"], 400, "neither sub nor sid: {unnamed}");

    // By sid: the session of that provider session ends, alice's other provider session stays.
    let (other, _) = sign_in(&mut site).await;
    let other = session_token(&other);
    let other_sid = serde_json::from_str::<Value>(&op.get("/test/last-token").await.body).unwrap()["sid"].clone();
    assert_ne!(other_sid, sid);
    let sent: Value = serde_json::from_str(
        &op.post(
            "/test/backchannel",
            json!({"uri": uri, "sub": null, "sid": sid, "variant": "good"}),
        )
        .await
        .body,
    )
    .unwrap();
    assert_eq!(sent["status"], 200, "{sent}");
    assert_eq!(site.with_session("/", &token).await.status, 303);
    echoed(&site.with_session("/", &other).await);
    // The same token again (same jti) is refused.
    let replayed = crate::harness::send(
        Method::POST,
        uri.as_str().unwrap(),
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(format!("logout_token={}", sent["logout_token"].as_str().unwrap()).into_bytes()),
    )
    .await;
    assert_eq!(replayed.status, 400);

    // By sub and sid: still only that provider session.
    let (again, _) = sign_in(&mut site).await;
    let token = session_token(&again);
    let sent: Value = serde_json::from_str(
        &op.post(
            "/test/backchannel",
            json!({"uri": uri, "sub": "alice", "sid": other_sid, "variant": "good"}),
        )
        .await
        .body,
    )
    .unwrap();
    assert_eq!(sent["status"], 200, "{sent}");
    assert_eq!(site.with_session("/", &other).await.status, 303);
    echoed(&site.with_session("/", &token).await);

    // By sub alone: every session of the user ends.
    let sent: Value = serde_json::from_str(
        &op.post(
            "/test/backchannel",
            json!({"uri": uri, "sub": "alice", "variant": "good"}),
        )
        .await
        .body,
    )
    .unwrap();
    assert_eq!(sent["status"], 200, "{sent}");
    assert_eq!(site.with_session("/", &token).await.status, 303);
    op.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn a_gateway_whose_provider_is_down_at_start_still_starts_and_shows_an_error_page() {
    let dead = dead_address().await;
    let config = format!(
        "{}[backends.up]\naddress = \"127.0.0.1:9\"\n[edges.app]\nhostports = [\"app.test:80\"]\n\
         [[edges.app.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/\"\nbackend = \"up\"\n\
         [edges.app.routes.auth]\nplugin = \"oidc\"\nissuer = \"http://{dead}\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
        crate::harness::LISTENERS
    );
    let gw = TestGateway::start_with(&config).await;
    let reply = gw.edge_get("app.test", "/").await;
    assert_sign_in_refused(&reply, 502, "provider down");
    assert!(reply.body.contains("Identity provider unavailable"), "{}", reply.body);
    gw.stop().await;
}

/// Account takeover by email (the "nOAuth" class): a provider that lets people set an address
/// without verifying it (the real provider's bob: `bob@corp.example`, `email_verified: false`)
/// must not sign someone in as the person provisioned with that address. The unverified sign-in
/// is a user of its own (the address neither finds the person nor is written to the new user);
/// deactivating the person leaves that session alone. A verified address (alice's) does find
/// the provisioned person, whose deactivation then ends the session.
#[tokio::test]
async fn an_unverified_email_does_not_sign_in_as_the_person_with_that_address() {
    let op = Op::start("oidc_provider.mjs").await;
    let mut site = Site::start(&op, json!({}), crate::test_plugin::options()).await;
    site.register(&op, "client_secret_basic").await;
    for email in ["bob@corp.example", "alice@example.com"] {
        assert_eq!(
            crate::test_plugin::set_active(&site.gw, email, true).await.body,
            "active true"
        );
    }
    let provisioned = app_users(&site.gw).await;
    let person_id = |email: &str| {
        provisioned["application_users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["email"] == email)
            .unwrap()["id"]
            .clone()
    };
    let (bob_person, alice_person) = (person_id("bob@corp.example"), person_id("alice@example.com"));

    site.jar = Jar::default();
    let bob = session_token(&site.login(&mut Jar::default(), "/", "bob").await);
    let seen = echoed(&site.with_session("/", &bob).await);
    assert_ne!(
        seen["headers"]["x-portcullis-user-id"], bob_person,
        "an unverified address signed in as the person provisioned with it"
    );
    assert_eq!(
        seen["headers"]["x-portcullis-user-email"], "bob@corp.example",
        "the session still carries the address the provider sent"
    );
    let listed = app_users(&site.gw).await;
    let all = listed["application_users"].as_array().unwrap();
    assert_eq!(all.len(), 3, "the unverified sign-in is a user of its own: {listed}");
    let signed_in = all
        .iter()
        .find(|u| u["id"] == seen["headers"]["x-portcullis-user-id"])
        .unwrap();
    assert_eq!(
        signed_in["email"], "",
        "an unverified address is not written to a person: {listed}"
    );
    assert_eq!(
        crate::test_plugin::set_active(&site.gw, "bob@corp.example", false)
            .await
            .body,
        "active false"
    );
    echoed(&site.with_session("/", &bob).await);

    site.jar = Jar::default();
    let alice = session_token(&site.login(&mut Jar::default(), "/", "alice").await);
    let seen = echoed(&site.with_session("/", &alice).await);
    assert_eq!(
        seen["headers"]["x-portcullis-user-id"], alice_person,
        "a verified address finds its person"
    );
    assert_eq!(
        app_users(&site.gw).await["application_users"].as_array().unwrap().len(),
        3
    );
    assert_eq!(
        crate::test_plugin::set_active(&site.gw, "alice@example.com", false)
            .await
            .body,
        "active false"
    );
    assert_eq!(
        site.with_session("/", &alice).await.status,
        303,
        "deactivation ended alice's session"
    );
    echoed(&site.with_session("/", &bob).await);
    op.stop().await;
    site.stop().await;
}

async fn app_users(gw: &TestGateway) -> Value {
    gw.api(Method::GET, "/app/users", None).await.json()
}
