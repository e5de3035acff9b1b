//! The SAML module against a real identity provider: pysaml2 with Debian's xmlsec1
//! (`tests/peers/saml_idp.py`, installed by `make test-deps`, at pysaml2's defaults but for
//! signing with SHA-256; its docstring says why), started on loopback by each test and stopped
//! by its pid. SP-initiated and IdP-initiated logins, group rules, Single Logout
//! both ways, the module's API and config forms; every flow runs with the plugin linked in
//! and again loaded as a dynamic library.

use crate::harness::{
    echoed, location, plugin_library, send, session_token, set_cookie, tests_dir, Reply, TestGateway, Upstream,
    LISTENERS,
};
use http::Method;
use serde_json::{json, Value};
use std::process::Stdio;
use tokio::io::AsyncBufReadExt;

pub const HOST: &str = "app.test";
const COOKIE: &str = "portcullis.session";

/// How the SAML plugin is present in the gateway.
#[derive(Clone, Copy)]
pub enum Loading {
    Linked,
    Library,
}

/// A running pysaml2 IdP.
pub struct Idp {
    child: tokio::process::Child,
    pub base_url: String,
    _dir: tempfile::TempDir,
}

impl Idp {
    /// The IdP signing `sign` (both, assertion, response) with SHA-256.
    pub async fn start(sign: &str) -> Idp {
        Idp::start_with(&["--sign", sign]).await
    }

    /// The IdP with these command-line options (see `peers/saml_idp.py`).
    pub async fn start_with(options: &[&str]) -> Idp {
        let python = tests_dir().join(".venv/bin/python");
        assert!(python.exists(), "tests/.venv is missing: run `make test-deps`");
        let dir = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(python)
            .arg(tests_dir().join("peers/saml_idp.py"))
            .args(["--workdir", dir.path().to_str().unwrap()])
            .args(options)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("idp.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next_line().await.unwrap().expect("the IdP printed its address");
        let ready: Value = serde_json::from_str(&line).unwrap();
        Idp {
            child,
            base_url: ready["base_url"].as_str().unwrap().to_string(),
            _dir: dir,
        }
    }

    pub async fn metadata(&self) -> String {
        let reply = send(Method::GET, &format!("{}/metadata", self.base_url), &[], None).await;
        assert_eq!(reply.status, 200);
        reply.body
    }

    pub async fn register(&self, sp_metadata: &str) {
        let reply = send(
            Method::POST,
            &format!("{}/sp", self.base_url),
            &[],
            Some(sp_metadata.as_bytes().to_vec()),
        )
        .await;
        assert_eq!(reply.status, 204, "{}", reply.body);
    }

    pub async fn get(&self, path_and_query: &str) -> Reply {
        let url = if path_and_query.starts_with("http") {
            path_and_query.to_string()
        } else {
            format!("{}{path_and_query}", self.base_url)
        };
        send(Method::GET, &url, &[], None).await
    }

    pub async fn seen(&self, what: &str) -> Value {
        serde_json::from_str(&self.get(&format!("/{what}")).await.body).unwrap()
    }

    /// Stops the IdP by its pid.
    pub async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// A gateway whose route `/` on [`HOST`] is protected by a SAML module for `idp`.
pub struct Site {
    pub gw: TestGateway,
    pub _upstream: Upstream,
    pub edge_id: String,
    pub route_id: String,
    /// The module as the API answered it (options and outputs).
    pub module: Value,
}

impl Site {
    /// A site for the real IdP `idp`, registered there.
    pub async fn start(idp: &Idp, loading: Loading, options: Value) -> Site {
        let site = Site::create(&idp.metadata().await, loading, options).await;
        idp.register(&site.get("/_portcullis/auth/{route}/metadata", &[]).await.body)
            .await;
        site
    }

    /// A site whose module trusts the IdP of `idp_metadata`.
    pub async fn create(idp_metadata: &str, loading: Loading, options: Value) -> Site {
        let library = plugin_library("portcullis_saml_plugin");
        let plugin = match loading {
            Loading::Linked => String::new(),
            Loading::Library => format!("[[plugin]]\npath = \"{}\"\n", library.display()),
        };
        let gw = TestGateway::start(&plugin).await;
        // The library, not the built-in, answers for `saml` when it is named.
        let origin = gw
            .gateway
            .shared()
            .registry
            .get("saml")
            .expect("saml registered")
            .origin
            .to_string();
        assert_eq!(
            origin.starts_with(&library.display().to_string()),
            matches!(loading, Loading::Library),
            "{origin}"
        );
        Site::create_on(gw, idp_metadata, options).await
    }

    /// A site on the gateway `gw`.
    pub async fn create_on(gw: TestGateway, idp_metadata: &str, options: Value) -> Site {
        let upstream = Upstream::start().await;
        let (edge_id, route_id) = gw.create_route_to(upstream.addr, &format!("{HOST}:80")).await;
        let mut module = options;
        module["idp_metadata"] = idp_metadata.into();
        let put = gw
            .api(
                Method::PUT,
                &format!("/edges/https/{edge_id}/routes/{route_id}/saml"),
                Some(json!({"edge_id": edge_id, "id": route_id, "module": module})),
            )
            .await;
        assert_eq!(put.status, 200, "{}", put.body);
        Site {
            gw,
            _upstream: upstream,
            edge_id,
            route_id,
            module: put.json(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "http://{}{}",
            self.gw.gateway.edge_addr,
            path.replace("{route}", &self.route_id)
        )
    }

    /// A GET on the edge with Host [`HOST`]; `{route}` in the path is the route id.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut all = vec![("host", HOST)];
        all.extend_from_slice(headers);
        send(Method::GET, &self.url(path), &all, None).await
    }

    pub async fn with_session(&self, path: &str, token: &str) -> Reply {
        self.get(path, &[("cookie", &format!("{COOKIE}={token}"))]).await
    }

    /// Follows a Location that points at the edge (absolute, on [`HOST`]).
    pub async fn follow(&self, location: &str, headers: &[(&str, &str)]) -> Reply {
        let path = location.strip_prefix(&format!("http://{HOST}")).unwrap_or(location);
        self.get(path, headers).await
    }

    /// Posts the IdP's auto-submitting form (SAMLResponse, RelayState) to the ACS it names.
    pub async fn post_form(&self, idp_page: &str) -> Reply {
        let action = attribute_of(idp_page, "form", "action").expect("a form");
        let path = action
            .strip_prefix(&format!("http://{HOST}"))
            .expect("the ACS is on the route's host");
        let mut fields = vec![(
            "SAMLResponse",
            input_value(idp_page, "SAMLResponse").expect("a SAMLResponse"),
        )];
        if let Some(relay_state) = input_value(idp_page, "RelayState") {
            fields.push(("RelayState", relay_state));
        }
        self.post_acs_at(path, &fields, &[]).await
    }

    pub async fn post_acs(&self, fields: &[(&str, String)]) -> Reply {
        self.post_acs_at("/_portcullis/auth/{route}/acs", fields, &[]).await
    }

    /// Posts to the ACS as a browser holding `cookie`.
    pub async fn post_acs_with_cookie(&self, fields: &[(&str, String)], cookie: &str) -> Reply {
        self.post_acs_at("/_portcullis/auth/{route}/acs", fields, &[("cookie", cookie)])
            .await
    }

    async fn post_acs_at(&self, path: &str, fields: &[(&str, String)], headers: &[(&str, &str)]) -> Reply {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut all = vec![("host", HOST), ("content-type", "application/x-www-form-urlencoded")];
        all.extend_from_slice(headers);
        send(Method::POST, &self.url(path), &all, Some(body.into_bytes())).await
    }

    /// An SP-initiated login over HTTP, as a browser does it: the route redirects to the IdP,
    /// the IdP's form is filled in, its answer is posted to the ACS. Returns the ACS's answer.
    pub async fn login(&self, idp: &Idp, path: &str, user: &str) -> Reply {
        self.login_with(idp, path, &format!("username={user}&password={user}-password"))
            .await
    }

    /// The same, sending the IdP's login form `fields` (form-encoded) instead of a password.
    pub async fn login_with(&self, idp: &Idp, path: &str, fields: &str) -> Reply {
        let start = self.get(path, &[]).await;
        assert_eq!(start.status, 303, "{}", start.body);
        let sso = location(&start);
        assert!(
            sso.starts_with(&format!("{}/sso/redirect?SAMLRequest=", idp.base_url)),
            "{sso}"
        );
        let form = idp.get(&sso).await;
        assert_eq!(form.status, 200, "{}", form.body);
        let key = input_value(&form.body, "key").unwrap();
        let body = format!("{fields}&key={}", form_encode(&key));
        let answered = send(
            Method::POST,
            &format!("{}/login", idp.base_url),
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(body.into_bytes()),
        )
        .await;
        assert_eq!(answered.status, 200, "{}", answered.body);
        self.post_form(&answered.body).await
    }

    pub async fn stop(self) {
        self.gw.stop().await;
    }
}

/// The `value` of the `<input name="NAME">` of an HTML page, unescaped.
pub fn input_value(html: &str, name: &str) -> Option<String> {
    html.split("<input")
        .skip(1)
        .map(|tag| tag.split('>').next().unwrap_or_default())
        .find(|tag| tag.contains(&format!("name=\"{name}\"")))
        .and_then(|tag| attribute(tag, "value"))
}

fn attribute_of(html: &str, element: &str, name: &str) -> Option<String> {
    let tag = html.split(&format!("<{element}")).nth(1)?.split('>').next()?;
    attribute(tag, name)
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let value = tag.split(&format!("{name}=\"")).nth(1)?.split('"').next()?;
    Some(
        value
            .replace("&quot;", "\"")
            .replace("&#x27;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// `xml` without the elements whose local name is `name` (not nested in one another).
fn without_element(xml: &str, name: &str) -> String {
    let local = |tag: &str| {
        let tag = tag.trim_start_matches(['<', '/']);
        let qname = tag.split([' ', '>', '/', '\n']).next().unwrap_or_default();
        qname.rsplit(':').next().unwrap_or_default().to_string()
    };
    let mut out = String::new();
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        if rest[start..].starts_with("</") || local(&rest[start..]) != name {
            out.push_str(&rest[..=start]);
            rest = &rest[start + 1..];
            continue;
        }
        out.push_str(&rest[..start]);
        let mut end = start;
        while let Some(i) = rest[end..].find("</") {
            end += i;
            if local(&rest[end..]) == name {
                break;
            }
            end += 2;
        }
        rest = &rest[end + rest[end..].find('>').unwrap() + 1..];
    }
    out.push_str(rest);
    out
}

pub fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ----- the flows, each run linked in and as a library -----

async fn sp_initiated_login(loading: Loading) {
    let idp = Idp::start("both").await;
    // The metadata pysaml2 generates, algorithm-support extensions (MD5, SHA-1, ...) and all,
    // and attributes under pysaml2's default OID names: the module takes both as they come.
    let metadata = idp.metadata().await;
    assert!(
        metadata.contains("urn:oasis:names:tc:SAML:metadata:algsupport"),
        "{metadata}"
    );
    assert!(
        metadata.contains("http://www.w3.org/2001/04/xmldsig-more#md5"),
        "{metadata}"
    );
    let site = Site::start(&idp, loading, json!({})).await;

    let done = site.login(&idp, "/wiki/page?x=1", "alice").await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(location(&done), "/wiki/page?x=1", "back where the person started");
    let token = session_token(&done);
    let seen = echoed(&site.with_session("/wiki/page?x=1", &token).await);
    assert_eq!(seen["path"], "/wiki/page?x=1");
    assert_eq!(seen["headers"]["x-portcullis-user-email"], "alice@example.com");
    assert_eq!(seen["headers"]["x-portcullis-user-name"], "Alice Liddell");
    assert_eq!(seen["headers"]["x-portcullis-user-groups"], "engineering,admins");

    // What the IdP received: a signed AuthnRequest with a 128-bit ID and the module's settings.
    let request = idp.seen("last-request").await;
    assert_eq!(request["signature_valid"], true, "{request}");
    assert_eq!(request["sig_alg"], "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256");
    assert_eq!(request["force_authn"], false);
    assert_eq!(
        request["name_id_format"],
        "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
    );
    assert_eq!(request["acs_url"], site.module["assertion_consumer_service_url"]);
    let id = request["id"].as_str().unwrap();
    assert!(
        id.len() == 33 && id.starts_with('_') && id[1..].chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );

    // The URLs registered at the IdP are the route's public origin (its edge's first host), not
    // the Host a request came with: a sign-in started through a second host of the edge still
    // names app.test.
    let patch = site
        .gw
        .api(
            Method::PATCH,
            &format!("/edges/https/{}", site.edge_id),
            Some(json!({"hostports": [format!("{HOST}:80"), "alias.test:80"]})),
        )
        .await;
    assert_eq!(patch.status, 200, "{}", patch.body);
    let start = send(Method::GET, &site.url("/"), &[("host", "alias.test")], None).await;
    assert_eq!(start.status, 303, "{}", start.body);
    let encoded = location(&start)
        .split("SAMLRequest=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    let authn = portcullis_saml::xml::inflate_base64(&portcullis_plugin_sdk::percent_decode(&encoded)).unwrap();
    let acs = portcullis_saml::xml::root_attribute(&authn, "AssertionConsumerServiceURL").unwrap();
    assert_eq!(acs, format!("http://{HOST}/_portcullis/auth/{}/acs", site.route_id));
    assert_eq!(
        portcullis_saml::xml::element_text(&authn, "Issuer").unwrap(),
        format!("http://{HOST}/_portcullis/auth/{}/metadata", site.route_id)
    );
    idp.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn sp_initiated_login_reaches_the_upstream_with_the_identity() {
    sp_initiated_login(Loading::Linked).await;
}

#[tokio::test]
async fn sp_initiated_login_with_the_plugin_as_a_library() {
    sp_initiated_login(Loading::Library).await;
}

/// The duplicate-user bug of the restructuring issue: a person provisioned through the
/// plugin host's directory port (the `provisioner` fixture on the console, as SCIM will) and
/// then signing in with SAML is one user, and deactivating them through the port ends that
/// SAML session on the very next request.
#[tokio::test]
async fn a_person_provisioned_then_signing_in_with_saml_is_one_user_whose_deactivation_ends_the_session() {
    let idp = Idp::start("both").await;
    let options = portcullis::server::StartOptions {
        extra_plugins: vec![std::sync::Arc::new(portcullis_provisioner::Provisioner)],
        ..Default::default()
    };
    let gw = TestGateway::start_full(LISTENERS, options).await;
    let site = Site::create_on(gw, &idp.metadata().await, json!({})).await;
    idp.register(&site.get("/_portcullis/auth/{route}/metadata", &[]).await.body)
        .await;
    let provision = |request: Value| {
        let url = format!("http://{}/provisioner", site.gw.gateway.console_addr);
        let auth = format!("Bearer {}", site.gw.token);
        async move {
            send(
                Method::POST,
                &url,
                &[("authorization", &auth), ("content-type", "application/json")],
                Some(request.to_string().into_bytes()),
            )
            .await
        }
    };
    // The IdP asserts alice@example.com; the directory has her in another case already.
    let created = provision(json!({"op": "create", "email": "Alice@Example.com", "name": "Alice"})).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let alice_id = created.json()["person"]["id"].as_str().unwrap().to_string();

    let done = site.login(&idp, "/", "alice").await;
    assert_eq!(done.status, 303, "{}", done.body);
    let token = session_token(&done);
    let seen = echoed(&site.with_session("/", &token).await);
    assert_eq!(
        seen["headers"]["x-portcullis-user-id"],
        alice_id.as_str(),
        "the provisioned person"
    );

    let users = site.gw.api(Method::GET, "/app/users", None).await.json();
    let listed = users["application_users"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "one person, one user: {users}");
    assert_eq!(listed[0]["id"], alice_id.as_str());
    assert_eq!(listed[0]["identity_provider"]["name"], "saml");

    let deactivated = provision(json!({"op": "deactivate", "id": alice_id})).await;
    assert_eq!(deactivated.status, 200, "{}", deactivated.body);
    assert_eq!(
        site.with_session("/", &token).await.status,
        303,
        "deactivating the person ends the SAML session they signed in with"
    );
    idp.stop().await;
    site.stop().await;
}

async fn groups_allow_and_deny(loading: Loading) {
    let idp = Idp::start("assertion").await;
    let site = Site::start(&idp, loading, json!({"authorized_groups": ["engineering"]})).await;
    let alice = site.login(&idp, "/", "alice").await;
    assert_eq!(alice.status, 303, "{}", alice.body);
    echoed(&site.with_session("/", &session_token(&alice)).await);

    let bob = site.login(&idp, "/", "bob").await;
    assert_eq!(bob.status, 403, "{}", bob.body);
    assert!(bob.body.contains("You do not have access to this application."));
    for leak in ["engineering", "sales", "bob"] {
        assert!(!bob.body.contains(leak), "the refusal shows {leak}: {}", bob.body);
    }
    assert!(set_cookie(&bob, COOKIE).is_none());
    idp.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn authorized_groups_let_members_in_and_keep_others_out() {
    groups_allow_and_deny(Loading::Linked).await;
}

#[tokio::test]
async fn authorized_groups_with_the_plugin_as_a_library() {
    groups_allow_and_deny(Loading::Library).await;
}

/// The SP's entity id, form-encoded for the IdP's `sp=` parameter.
fn sp_of(site: &Site) -> String {
    form_encode(site.module["entity_id"].as_str().unwrap())
}

async fn idp_initiated(loading: Loading) {
    let idp = Idp::start("response").await;
    let refused = Site::start(&idp, loading, json!({})).await;
    let page = idp
        .get(&format!(
            "/idp-initiated?user=alice&relay_state=/reports&sp={}",
            sp_of(&refused)
        ))
        .await;
    let answer = refused.post_form(&page.body).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer
        .body
        .contains("Sign-in started at the identity provider is not allowed"));
    refused.stop().await;

    let allowed = Site::start(&idp, loading, json!({"allow_idp_initiated": true})).await;
    let sp = sp_of(&allowed);
    let page = idp
        .get(&format!("/idp-initiated?user=bob&relay_state=/reports&sp={sp}"))
        .await;
    let answer = allowed.post_form(&page.body).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(location(&answer), "/reports");
    let seen = echoed(&allowed.with_session("/reports", &session_token(&answer)).await);
    assert_eq!(seen["headers"]["x-portcullis-user-email"], "bob@example.com");
    assert_eq!(seen["headers"]["x-portcullis-user-groups"], "sales");

    // A RelayState naming the route's own origin is followed; another site is refused.
    let page = idp
        .get(&format!(
            "/idp-initiated?user=bob&relay_state=http://app.test/x&sp={sp}"
        ))
        .await;
    assert_eq!(location(&allowed.post_form(&page.body).await), "/x");
    for evil in [
        "https://evil.example/",
        "//evil.example/",
        "http://app.test.evil.example/",
    ] {
        let page = idp
            .get(&format!(
                "/idp-initiated?user=bob&relay_state={}&sp={sp}",
                form_encode(evil)
            ))
            .await;
        let answer = allowed.post_form(&page.body).await;
        assert_eq!(answer.status, 400, "{evil}: {}", answer.body);
        assert!(answer.body.contains("outside this application"), "{}", answer.body);
        assert!(set_cookie(&answer, COOKIE).is_none());
    }
    idp.stop().await;
    allowed.stop().await;
}

#[tokio::test]
async fn idp_initiated_login_only_where_allowed_and_only_to_the_route_s_host() {
    idp_initiated(Loading::Linked).await;
}

#[tokio::test]
async fn idp_initiated_login_with_the_plugin_as_a_library() {
    idp_initiated(Loading::Library).await;
}

async fn single_logout(loading: Loading) {
    let idp = Idp::start("both").await;
    let site = Site::start(&idp, loading, json!({})).await;

    // SP-initiated: the gateway ends the session and sends a signed LogoutRequest to the IdP,
    // whose signed LogoutResponse comes back to the SLO endpoint.
    let token = session_token(&site.login(&idp, "/", "alice").await);
    let cookie = format!("{COOKIE}={token}");
    let out = site.get("/_portcullis/logout", &[("cookie", &cookie)]).await;
    assert_eq!(out.status, 303, "{}", out.body);
    let to_idp = location(&out);
    assert!(
        to_idp.starts_with(&format!("{}/slo/redirect?SAMLRequest=", idp.base_url)),
        "{to_idp}"
    );
    assert_eq!(
        site.with_session("/", &token).await.status,
        303,
        "the session ended at once"
    );
    let back = idp.get(&to_idp).await;
    assert_eq!(back.status, 303, "{}", back.body);
    let request = idp.seen("last-logout-request").await;
    assert_eq!(request["signature_valid"], true, "{request}");
    assert_eq!(request["name_id"], "alice-pid");
    assert_eq!(
        request["session_indexes"].as_array().map(Vec::len),
        Some(1),
        "{request}"
    );
    let done = site.follow(&location(&back), &[]).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("You are signed out of this site."), "{}", done.body);
    // The same LogoutResponse is not taken twice.
    assert_eq!(site.follow(&location(&back), &[]).await.status, 400);

    // IdP-initiated: the IdP's signed LogoutRequest names the IdP session of alice's last login
    // (its SessionIndex): that session ends here; her earlier one and bob's stay.
    let first = session_token(&site.login(&idp, "/", "alice").await);
    let second = session_token(&site.login(&idp, "/", "alice").await);
    let bob = session_token(&site.login(&idp, "/", "bob").await);
    let to_sp = location(&idp.get("/initiate-logout?user=alice").await);
    let answer = site.follow(&to_sp, &[]).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(site.with_session("/", &second).await.status, 303);
    echoed(&site.with_session("/", &first).await);
    echoed(&site.with_session("/", &bob).await);
    let idp_answer = idp.get(&location(&answer)).await;
    assert_eq!(idp_answer.status, 200, "{}", idp_answer.body);
    let response = idp.seen("last-logout-response").await;
    assert_eq!(response["signature_valid"], true, "{response}");
    assert_eq!(response["status"], "urn:oasis:names:tc:SAML:2.0:status:Success");

    // Without a SessionIndex, a LogoutRequest ends every session of the user.
    let third = session_token(&site.login(&idp, "/", "alice").await);
    let to_sp = location(&idp.get("/initiate-logout?user=alice&session_index=none").await);
    assert_eq!(site.follow(&to_sp, &[]).await.status, 303);
    for ended in [&first, &third] {
        assert_eq!(site.with_session("/", ended).await.status, 303);
    }
    echoed(&site.with_session("/", &bob).await);

    // The IdP's signed LogoutRequest is taken once.
    let token = session_token(&site.login(&idp, "/", "alice").await);
    let to_sp = location(&idp.get("/initiate-logout?user=alice").await);
    assert_eq!(site.follow(&to_sp, &[]).await.status, 303);
    let token2 = session_token(&site.login(&idp, "/", "alice").await);
    assert_eq!(site.follow(&to_sp, &[]).await.status, 400, "a replayed LogoutRequest");
    echoed(&site.with_session("/", &token2).await);
    assert_eq!(site.with_session("/", &token).await.status, 303);

    // A forged LogoutRequest rides on a genuine signature only if the plugin reads other
    // parameters than it verified: a percent-encoded or repeated name is refused.
    let bob_logout = location(&idp.get("/initiate-logout?user=bob").await);
    let (slo, signed_query) = bob_logout.split_once('?').unwrap();
    let forged_xml = format!(
        "<samlp:LogoutRequest xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\" ID=\"_forged\" Version=\"2.0\" IssueInstant=\"{}\" Destination=\"{}\"><saml:Issuer>{}/metadata</saml:Issuer><saml:NameID>alice-pid</saml:NameID></samlp:LogoutRequest>",
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap(),
        site.module["single_logout_url"].as_str().unwrap(),
        idp.base_url,
    );
    let forged = form_encode(&portcullis_saml::xml::deflate_base64(&forged_xml).unwrap());
    for query in [
        format!("SAML%52equest={forged}&{signed_query}"),
        format!("SAMLRequest={forged}&{signed_query}"),
    ] {
        assert_eq!(site.follow(&format!("{slo}?{query}"), &[]).await.status, 400, "{query}");
    }
    echoed(&site.with_session("/", &token2).await);

    // A LogoutRequest whose signature does not verify ends nothing.
    let token = session_token(&site.login(&idp, "/", "alice").await);
    let forged = location(&idp.get("/initiate-logout?user=alice").await).replacen("Signature=", "Signature=AAAA", 1);
    assert_eq!(site.follow(&forged, &[]).await.status, 400);
    echoed(&site.with_session("/", &token).await);
    idp.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn single_logout_works_both_ways() {
    single_logout(Loading::Linked).await;
}

#[tokio::test]
async fn single_logout_with_the_plugin_as_a_library() {
    single_logout(Loading::Library).await;
}

// ----- the module in the API and in config.toml -----

#[tokio::test]
async fn the_module_api_answers_in_ngrok_s_shape_with_outputs_and_a_stable_key() {
    let idp = Idp::start("both").await;
    let site = Site::start(&idp, Loading::Linked, json!({"force_authn": true})).await;
    let m = &site.module;
    let base = format!("http://{HOST}/_portcullis/auth/{}", site.route_id);
    assert_eq!(m["entity_id"], format!("{base}/metadata"));
    assert_eq!(m["metadata_url"], format!("{base}/metadata"));
    assert_eq!(m["assertion_consumer_service_url"], format!("{base}/acs"));
    assert_eq!(m["single_logout_url"], format!("{base}/slo"));
    assert!(m["request_signing_certificate_pem"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(m["enabled"], true);
    assert_eq!(m["force_authn"], true);
    assert_eq!(m["cookie_prefix"], "portcullis.");

    // The SP metadata: signed requests, one signing key, both endpoints, a week's validity.
    let metadata = site.get("/_portcullis/auth/{route}/metadata", &[]).await;
    assert_eq!(metadata.headers["content-type"], "application/samlmetadata+xml");
    let xml = &metadata.body;
    assert!(xml.contains("AuthnRequestsSigned=\"true\""), "{xml}");
    assert_eq!(xml.matches("<md:KeyDescriptor").count(), 1, "{xml}");
    assert!(xml.contains(&format!("Location=\"{base}/acs\"")));
    assert!(xml.contains(&format!("Location=\"{base}/slo\"")));
    let valid_until = xml.split("validUntil=\"").nth(1).unwrap().split('"').next().unwrap();
    let days = (time::OffsetDateTime::parse(valid_until, &time::format_description::well_known::Rfc3339).unwrap()
        - time::OffsetDateTime::now_utc())
    .whole_days();
    assert!((6..=7).contains(&days), "validUntil {valid_until}");

    // ForceAuthn reaches the IdP.
    site.login(&idp, "/", "alice").await;
    assert_eq!(idp.seen("last-request").await["force_authn"], true);

    // GET answers the same module; a bare-body PUT (ngrok's client) changes it, keeping the key.
    let path = format!("/edges/https/{}/routes/{}/saml", site.edge_id, site.route_id);
    let got = site.gw.api(Method::GET, &path, None).await;
    assert_eq!(got.json(), site.module);
    let metadata_xml = site.module["idp_metadata"].clone();
    let put = site
        .gw
        .api(
            Method::PUT,
            &path,
            Some(json!({"idp_metadata": metadata_xml, "nameid_format": "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"})),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.json()["force_authn"], false);
    assert_eq!(
        put.json()["request_signing_certificate_pem"],
        site.module["request_signing_certificate_pem"]
    );
    let route = site
        .gw
        .api(
            Method::GET,
            &format!("/edges/https/{}/routes/{}", site.edge_id, site.route_id),
            None,
        )
        .await;
    assert_eq!(route.json()["saml"]["entity_id"], site.module["entity_id"]);

    // Bad modules get ngrok-shaped errors naming the field.
    let without_keys = without_element(metadata_xml.as_str().unwrap(), "KeyDescriptor");
    for (module, field, says) in [
        (json!({"idp_metadata": "<not xml"}), "saml.idp_metadata", "is not"),
        (
            json!({"idp_metadata": without_keys}),
            "saml.idp_metadata",
            "no signing certificate",
        ),
        (
            json!({"idp_metadata": metadata_xml, "nameid_format": "urn:example:made-up"}),
            "saml.nameid_format",
            "is not a SAML 2.0 subject NameID format",
        ),
        (
            json!({"idp_metadata": metadata_xml, "entity_id": "http://elsewhere/"}),
            "saml.entity_id",
            "read-only",
        ),
        (json!({"force_authn": true}), "saml.idp_metadata", "is required"),
    ] {
        let reply = site.gw.api(Method::PUT, &path, Some(module)).await;
        let msg = reply.assert_api_error(400, 105);
        assert!(msg.contains(&format!("`{field}`")) && msg.contains(says), "{msg}");
    }
    // The refused writes changed nothing.
    assert_eq!(site.gw.api(Method::GET, &path, None).await.json(), put.json());
    idp.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn a_module_in_config_toml_reads_the_idp_metadata_from_a_file() {
    let idp = Idp::start("both").await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("idp.xml"), idp.metadata().await).unwrap();
    let config = format!(
        "{LISTENERS}[backends.up]\naddress = \"{}\"\n[edges.app]\nhostports = [\"{HOST}:80\"]\n\
         [[edges.app.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/\"\nbackend = \"up\"\n\
         [edges.app.routes.auth]\nplugin = \"saml\"\nidp_metadata = {{ file = \"idp.xml\" }}\nauthorized_groups = [\"admins\"]\n",
        upstream.addr
    );
    std::fs::write(dir.path().join("config.toml"), &config).unwrap();
    let gw = TestGateway::start_in(dir).await;
    let edges = gw.api(Method::GET, "/edges/https", None).await.json();
    let route = &edges["https_edges"][0]["routes"][0];
    let site = Site {
        edge_id: edges["https_edges"][0]["id"].as_str().unwrap().to_string(),
        route_id: route["id"].as_str().unwrap().to_string(),
        module: route["saml"].clone(),
        gw,
        _upstream: upstream,
    };
    assert!(site.module["entity_id"].as_str().unwrap().ends_with("/metadata"));
    idp.register(&site.get("/_portcullis/auth/{route}/metadata", &[]).await.body)
        .await;
    let done = site.login(&idp, "/", "alice").await;
    assert_eq!(done.status, 303, "{}", done.body);
    echoed(&site.with_session("/", &session_token(&done)).await);
    assert_eq!(site.login(&idp, "/", "bob").await.status, 403);

    // A missing file is named with its key.
    let bad = config.replace("idp.xml", "missing.xml");
    let path = site.gw.dir.path().join("bad.toml");
    std::fs::write(&path, bad).unwrap();
    let err = portcullis::config::Config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("edges.app.routes[0].auth.idp_metadata.file") && err.contains("missing.xml"),
        "{err}"
    );
    idp.stop().await;
    site.stop().await;
}

#[tokio::test]
async fn the_sp_key_pair_survives_a_restart() {
    let metadata = std::fs::read_to_string(tests_dir().join("fixtures/saml/idp-metadata.xml")).unwrap();
    let site = Site::create(&metadata, Loading::Linked, json!({})).await;
    let path = format!("/edges/https/{}/routes/{}/saml", site.edge_id, site.route_id);
    let before = site.module["request_signing_certificate_pem"].clone();
    let TestGateway { gateway, dir, .. } = site.gw;
    gateway.shutdown().await;
    let gw = TestGateway::start_in(dir).await;
    let after = gw.api(Method::GET, &path, None).await.json();
    assert_eq!(after["request_signing_certificate_pem"], before);
    gw.stop().await;
}
