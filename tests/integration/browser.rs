//! A person signs in with a real browser: headless Chromium (Debian's), driven by
//! playwright-core (`tests/peers/browser_login.mjs`, installed by `make test-deps`), through
//! the example plugin loaded as a library and through a real SAML IdP (pysaml2), to a real
//! upstream; and over https, cross-site, through the OpenID Provider and the SAML IdP, with a
//! test CA made at run time that the gateway and Chromium (an NSS database made with Debian's
//! `certutil`) trust as they would any CA.

use crate::harness::{browser_sign_in, plugin_library, send, tests_dir, Reply, TestGateway, Upstream, LISTENERS};
use crate::oidc::Op;
use crate::saml::Idp;
use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// A certificate authority made for one test, the leaves it signs, and a browser profile home
/// that trusts it. Files live in a temporary directory removed with it.
struct TestCa {
    dir: tempfile::TempDir,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Portcullis test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), cert.pem()).unwrap();
        TestCa { dir, cert, key }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A server certificate for `names` (DNS names or IP addresses) signed by the CA, and its
    /// key: (certificate file, key file).
    fn leaf(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_file, key_file) = (
            self.dir.path().join(format!("{file}.crt")),
            self.dir.path().join(format!("{file}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    /// A home directory whose NSS database (where Chromium on Linux reads the trust anchors
    /// a user added) trusts this CA for servers.
    fn browser_home(&self) -> PathBuf {
        let home = self.dir.path().join("home");
        let db = home.join(".pki/nssdb");
        std::fs::create_dir_all(&db).unwrap();
        let db = format!("sql:{}", db.display());
        let ca = self.ca_file();
        for args in [
            vec!["-N", "-d", &db, "--empty-password"],
            vec![
                "-A",
                "-d",
                &db,
                "-n",
                "Portcullis test CA",
                "-t",
                "C,,",
                "-i",
                ca.to_str().unwrap(),
            ],
        ] {
            let out = std::process::Command::new("certutil").args(&args).output();
            let out = out.unwrap_or_else(|e| panic!("certutil (Debian's libnss3-tools; run `make test-deps`): {e}"));
            assert!(
                out.status.success(),
                "certutil {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        home
    }
}

/// One HTTP/1.1 request over https (or http) that trusts only `ca`.
pub(crate) async fn https_send(
    ca: &Path,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Reply {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    crate::harness::send_on(&client, method, url, headers, body).await
}

/// A gateway whose edge serves https with `cert`/`key` on 127.0.0.1 and trusts `ca` for the
/// TLS connections it makes (upstreams and identity providers), with a route to a real
/// upstream on `localhost:<edge port>`: (gateway, upstream, edge id, route id, origin).
async fn https_site(ca: &TestCa) -> (TestGateway, Upstream, String, String, String) {
    let (cert, key) = ca.leaf("edge", &["localhost"]);
    let config = format!(
        "version = 1\n[listeners.edge]\naddress = \"127.0.0.1:0\"\n[listeners.edge.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [listeners.console]\naddress = \"127.0.0.1:0\"\n[proxy]\nupstream_ca_file = \"{}\"\n",
        cert.display(),
        key.display(),
        ca.ca_file().display()
    );
    let gw = TestGateway::start_with(&config).await;
    let upstream = Upstream::start().await;
    let edge_host = format!("localhost:{}", gw.gateway.edge_addr.port());
    let (edge_id, route_id) = gw.create_route_to(upstream.addr, &edge_host).await;
    (gw, upstream, edge_id, route_id, format!("https://{edge_host}"))
}

/// Signs `user` in at `url` in headless Chromium whose profile trusts the test CA; asserts the
/// browser ended back on `url` and returns the script's whole answer.
async fn browser_sign_in_trusting(url: &str, user: &str, consent: bool, home: &Path) -> Value {
    let password = format!("{user}-password");
    let mut command = tokio::process::Command::new("node");
    command
        .arg(tests_dir().join("peers/browser_login.mjs"))
        .args([url, user, password.as_str()])
        .env("HOME", home)
        .kill_on_drop(true);
    if consent {
        command.arg("consent");
    }
    let output = command.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "browser_login.mjs failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["url"], url, "the browser is back on the page it asked for");
    result
}

/// The one `Set-Cookie` header the browser received for a cookie whose name starts with `prefix`.
fn set_cookie_starting(result: &Value, prefix: &str) -> String {
    let found: Vec<&str> = result["set_cookies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["header"].as_str())
        .filter(|h| h.starts_with(prefix))
        .collect();
    assert!(
        !found.is_empty(),
        "no Set-Cookie for {prefix}: {}",
        result["set_cookies"]
    );
    found[0].to_string()
}

/// Asserts the session cookie the browser holds is `Secure`, host-only on the edge's host,
/// `Path=/`, HttpOnly, and that the upstream got the identity and never the cookie.
fn assert_signed_in_securely(result: &Value, groups: &str) {
    let seen: Value = serde_json::from_str(result["body"].as_str().unwrap()).unwrap();
    assert_eq!(seen["headers"]["x-portcullis-user-email"], "alice@example.com");
    assert_eq!(seen["headers"]["x-portcullis-user-name"], "Alice Liddell");
    assert_eq!(seen["headers"]["x-portcullis-user-groups"], groups);
    assert!(seen["headers"]
        .get("cookie")
        .is_none_or(|c| !c.as_str().unwrap_or_default().contains("portcullis")));
    let session = result["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "__Host-portcullis.session")
        .expect("session cookie");
    assert_eq!(session["secure"], true, "{session}");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["path"], "/", "{session}");
    assert_eq!(session["domain"], "localhost", "{session}");
}

/// The sign-in binding cookie whose name starts with `prefix` is host-only, `Secure`,
/// `Path=/` (what `__Host-` demands), `HttpOnly`, with the `SameSite` attribute `same_site`.
fn assert_host_only_binding(result: &Value, prefix: &str, same_site: &str) {
    let binding = set_cookie_starting(result, prefix);
    let attributes = cookie_attributes(&binding);
    for wanted in ["secure", "path=/", "httponly", same_site] {
        assert!(attributes.iter().any(|a| a == wanted), "{wanted}: {binding}");
    }
    assert!(!attributes.iter().any(|a| a.starts_with("domain=")), "{binding}");
}

/// The attributes of a `Set-Cookie` header, lower-cased, without its name and value.
fn cookie_attributes(header: &str) -> Vec<String> {
    header
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect()
}

/// OpenID Connect over https, cross-site: the edge on `https://localhost:<port>` (a leaf of
/// the test CA), the provider on `https://127.0.0.1:<port>` (its own leaf), the gateway
/// reaching the provider over TLS verified against the test CA, Chromium trusting the CA.
#[tokio::test]
async fn a_person_signs_in_over_https_through_an_openid_provider_on_another_site() {
    let ca = TestCa::new();
    let (op_cert, op_key) = ca.leaf("provider", &["127.0.0.1"]);
    let op = Op::start_with(
        "oidc_provider.mjs",
        &[
            "--tls-cert",
            op_cert.to_str().unwrap(),
            "--tls-key",
            op_key.to_str().unwrap(),
        ],
    )
    .await;
    assert!(op.issuer.starts_with("https://127.0.0.1:"), "{}", op.issuer);
    let (gw, _upstream, edge_id, route_id, origin) = https_site(&ca).await;
    let put = gw
        .api(
            Method::PUT,
            &format!("/edges/https/{edge_id}/routes/{route_id}/oidc"),
            Some(json!({"module": {"issuer": op.issuer, "client_id": "portcullis", "client_secret": "s3cret-for-tests", "authorized_groups": ["admins"]}})),
        )
        .await;
    assert_eq!(put.status, 200, "discovery over TLS: {}", put.body);
    let module = put.json();
    assert_eq!(
        module["redirect_uri"],
        format!("{origin}/_portcullis/auth/{route_id}/callback")
    );
    let registered = https_send(
        &ca.ca_file(),
        Method::POST,
        &format!("{}/test/clients", op.issuer),
        &[("content-type", "application/json")],
        Some(
            json!({"client_id": "portcullis", "client_secret": "s3cret-for-tests", "redirect_uris": [module["redirect_uri"]]})
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!(registered.status, 204, "{}", registered.body);

    let url = format!("{origin}/wiki/page?x=1");
    let result = browser_sign_in_trusting(&url, "alice", true, &ca.browser_home()).await;
    assert_signed_in_securely(&result, "engineering,admins");
    // The binding cookie: host-only, Secure, Path=/ (what `__Host-` demands), and Lax, which
    // the provider's cross-site redirect back (a top-level GET) still carries.
    assert_host_only_binding(&result, "__Host-portcullis-oidc-", "samesite=lax");
    op.stop().await;
    gw.stop().await;
}

/// SAML over https, cross-site: the IdP's page on `http://127.0.0.1:<port>` posts the Response
/// to the ACS on `https://localhost:<port>`; the binding cookie travels with that cross-site
/// POST only because it is `SameSite=None; Secure`.
#[tokio::test]
async fn a_person_signs_in_over_https_through_a_saml_idp_on_another_site() {
    let ca = TestCa::new();
    let idp = Idp::start("both").await;
    let (gw, _upstream, edge_id, route_id, origin) = https_site(&ca).await;
    let put = gw
        .api(
            Method::PUT,
            &format!("/edges/https/{edge_id}/routes/{route_id}/saml"),
            Some(json!({"idp_metadata": idp.metadata().await, "authorized_groups": ["engineering"]})),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let metadata_url = put.json()["metadata_url"].as_str().unwrap().to_string();
    assert_eq!(metadata_url, format!("{origin}/_portcullis/auth/{route_id}/metadata"));
    let metadata = https_send(&ca.ca_file(), Method::GET, &metadata_url, &[], None).await;
    assert_eq!(metadata.status, 200, "{}", metadata.body);
    idp.register(&metadata.body).await;

    let url = format!("{origin}/reports/q3?view=full");
    let result = browser_sign_in_trusting(&url, "alice", false, &ca.browser_home()).await;
    assert_signed_in_securely(&result, "engineering,admins");
    assert_host_only_binding(&result, "__Host-portcullis-saml-", "samesite=none");
    assert_eq!(idp.seen("last-request").await["signature_valid"], true);
    idp.stop().await;
    gw.stop().await;
}
