//! IdP metadata as identity providers publish it, and what real IdPs answer besides success.
//! Each published metadata document in `fixtures/saml/metadata/` (its README names the source of
//! each) makes a working module: the API accepts it, the module's reading of it (entity id, SSO
//! and SLO URLs, signing certificates) is pysaml2's reading of the same file
//! (`peers/saml_metadata_reader.py`), and a sign-in starts at that SSO URL with a signed
//! AuthnRequest addressed to it. pysaml2's IdP at its SHA-1 default is refused unless the module
//! allows SHA-1; its error statuses (cancelled, failed, NameID policy) are pages; metadata that
//! must not make a module is refused with the reason.

use crate::harness::{location, set_cookie, tests_dir, TestGateway};
use crate::saml::{input_value, Idp, Loading, Site};
use http::Method;
use serde_json::{json, Value};

const PUBLISHED: [&str; 7] = [
    "okta.xml",
    "entra-id.xml",
    "google-workspace.xml",
    "keycloak.xml",
    "shibboleth.xml",
    "adfs.xml",
    "testshib-providers.xml",
];

fn published(name: &str) -> String {
    std::fs::read_to_string(tests_dir().join("fixtures/saml/metadata").join(name)).unwrap()
}

/// pysaml2's reading of a metadata file: entity id -> SSO, SLO, signing certificates.
fn pysaml2_reading(name: &str) -> Value {
    let output = std::process::Command::new(tests_dir().join(".venv/bin/python"))
        .arg(tests_dir().join("peers/saml_metadata_reader.py"))
        .arg(tests_dir().join("fixtures/saml/metadata").join(name))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn metadata_as_okta_entra_google_keycloak_shibboleth_and_adfs_publish_it_makes_working_modules() {
    for name in PUBLISHED {
        let reading = pysaml2_reading(name);
        let (entity_id, expected) = reading.as_object().unwrap().iter().next().unwrap();
        let site = Site::create(&published(name), Loading::Linked, json!({})).await;
        let module = &site.module;
        assert_eq!(module["idp_entity_id"], *entity_id, "{name}");
        assert_eq!(module["idp_single_sign_on_url"], expected["sso_redirect"], "{name}");
        assert_eq!(module["idp_single_logout_url"], expected["slo_redirect"], "{name}");
        assert_eq!(
            module["idp_signing_certificates_sha256"], expected["signing_certificates_sha256"],
            "{name}"
        );

        // A sign-in goes to that SSO URL with a signed AuthnRequest addressed to it.
        let start = site.get("/private", &[]).await;
        assert_eq!(start.status, 303, "{name}: {}", start.body);
        let sso = expected["sso_redirect"].as_str().unwrap();
        let to_idp = url::Url::parse(&location(&start)).unwrap();
        let sso_url = url::Url::parse(sso).unwrap();
        assert_eq!(
            (to_idp.origin(), to_idp.path()),
            (sso_url.origin(), sso_url.path()),
            "{name}"
        );
        let pairs: Vec<(String, String)> = to_idp.query_pairs().into_owned().collect();
        let query = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        for (key, value) in sso_url.query_pairs().into_owned() {
            assert_eq!(query(&key), Some(value), "{name}: the SSO URL's own query is kept");
        }
        assert!(query("Signature").is_some(), "{name}");
        let request = portcullis_saml::xml::inflate_base64(&query("SAMLRequest").unwrap()).unwrap();
        assert_eq!(
            portcullis_saml::xml::root_attribute(&request, "Destination").as_deref(),
            Some(sso),
            "{name}"
        );
        site.stop().await;
    }
}

#[tokio::test]
async fn signed_published_metadata_is_read_only_when_its_signature_verifies() {
    // Entra ID and AD FS sign their metadata; the module says so, and refuses a copy whose
    // signed content was changed (here the SSO URL, as a phishing edit would).
    for name in ["entra-id.xml", "adfs.xml"] {
        let site = Site::create(&published(name), Loading::Linked, json!({})).await;
        assert_eq!(site.module["idp_metadata_signed"], true, "{name}");
        let sso = site.module["idp_single_sign_on_url"].as_str().unwrap().to_string();
        let edited = published(name).replace(&format!("Location=\"{sso}\""), "Location=\"https://evil.example/sso\"");
        assert_ne!(edited, published(name));
        let path = format!("/edges/https/{}/routes/{}/saml", site.edge_id, site.route_id);
        let reply = site
            .gw
            .api(Method::PUT, &path, Some(json!({"idp_metadata": edited})))
            .await;
        let message = reply.assert_api_error(400, 105);
        assert!(message.contains("signature does not verify"), "{name}: {message}");
        site.stop().await;
    }
    let unsigned = Site::create(&published("okta.xml"), Loading::Linked, json!({})).await;
    assert_eq!(unsigned.module["idp_metadata_signed"], false);
    unsigned.stop().await;
}

#[tokio::test]
async fn an_entities_descriptor_with_several_idps_needs_idp_entity_id() {
    let entity = |xml: String| match xml.split_once("?>") {
        Some((_, rest)) => rest.trim().to_string(),
        None => xml.trim().to_string(),
    };
    let aggregate = format!(
        "<EntitiesDescriptor xmlns=\"urn:oasis:names:tc:SAML:2.0:metadata\">{}{}</EntitiesDescriptor>",
        entity(published("okta.xml")),
        entity(published("keycloak.xml"))
    );
    let site = Site::create(&published("okta.xml"), Loading::Linked, json!({})).await;
    let path = format!("/edges/https/{}/routes/{}/saml", site.edge_id, site.route_id);
    let reply = site
        .gw
        .api(Method::PUT, &path, Some(json!({"idp_metadata": aggregate})))
        .await;
    let message = reply.assert_api_error(400, 105);
    for named in [
        "`saml.idp_metadata`",
        "http://www.okta.com/exkppsa1qwuFV4D7z0h7",
        "http://localhost:8080/realms/firezone",
        "idp_entity_id",
    ] {
        assert!(message.contains(named), "{named}: {message}");
    }
    let keycloak = "http://localhost:8080/realms/firezone";
    let put = site
        .gw
        .api(
            Method::PUT,
            &path,
            Some(json!({"idp_metadata": aggregate, "idp_entity_id": keycloak})),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.json()["idp_entity_id"], keycloak);
    assert_eq!(
        put.json()["idp_single_sign_on_url"],
        "http://localhost:8080/realms/firezone/protocol/saml"
    );
    site.stop().await;
}

#[tokio::test]
async fn metadata_with_a_doctype_or_entities_is_refused_and_nothing_is_fetched() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.set_nonblocking(true).unwrap();
    let site = Site::create(&published("okta.xml"), Loading::Linked, json!({})).await;
    let path = format!("/edges/https/{}/routes/{}/saml", site.edge_id, site.route_id);
    let okta = published("okta.xml");
    let external = format!(
        "<!DOCTYPE md:EntityDescriptor SYSTEM \"http://{}/dtd\">{okta}",
        probe.local_addr().unwrap()
    );
    let expanding = format!(
        "<!DOCTYPE md:EntityDescriptor [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;\">]>{}",
        okta.replace("WantAuthnRequestsSigned=\"false\"", "WantAuthnRequestsSigned=\"&b;\"")
    );
    for bad in [external, expanding] {
        let reply = site
            .gw
            .api(Method::PUT, &path, Some(json!({"idp_metadata": bad})))
            .await;
        let message = reply.assert_api_error(400, 105);
        assert!(message.contains("DOCTYPE"), "{message}");
    }
    assert!(
        matches!(probe.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the gateway fetched the external DTD"
    );
    site.stop().await;
}

#[tokio::test]
async fn a_pysaml2_idp_at_its_sha1_default_is_refused_unless_the_module_allows_sha1() {
    let idp = Idp::start_with(&["--sign", "both", "--signing", "pysaml2-default"]).await;
    let strict = Site::start(&idp, Loading::Linked, json!({})).await;
    let refused = strict.login(&idp, "/", "alice").await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(set_cookie(&refused, "portcullis.session").is_none());
    strict.stop().await;

    let lenient = Site::start(&idp, Loading::Linked, json!({"allow_sha1": true})).await;
    let done = lenient.login(&idp, "/", "alice").await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert!(set_cookie(&done, "portcullis.session").is_some());
    idp.stop().await;
    lenient.stop().await;
}

#[tokio::test]
async fn idp_refusals_are_pages_that_say_what_happened() {
    let idp = Idp::start("both").await;
    let site = Site::start(&idp, Loading::Linked, json!({})).await;
    for (fields, title) in [
        ("cancel=1", "Sign-in cancelled"),
        ("username=mallory&password=mallory-password", "Sign-in failed"),
    ] {
        let reply = site.login_with(&idp, "/reports?q=1", fields).await;
        assert_eq!(reply.status, 403, "{fields}: {}", reply.body);
        assert!(
            reply.body.contains(&format!("<h1>{title}</h1>")),
            "{fields}: {}",
            reply.body
        );
        assert!(reply.body.contains("href=\"/reports?q=1\""), "{}", reply.body);
        assert!(set_cookie(&reply, "portcullis.session").is_none());
    }
    site.stop().await;

    // A NameID format the IdP does not issue: it answers InvalidNameIDPolicy at once.
    let kerberos = Site::start(
        &idp,
        Loading::Linked,
        json!({"nameid_format": "urn:oasis:names:tc:SAML:2.0:nameid-format:kerberos"}),
    )
    .await;
    let start = kerberos.get("/", &[]).await;
    let idp_page = idp.get(&location(&start)).await;
    assert!(
        input_value(&idp_page.body, "key").is_none(),
        "no login form: {}",
        idp_page.body
    );
    let reply = kerberos.post_form(&idp_page.body).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(reply.body.contains("<h1>Sign-in not possible</h1>"), "{}", reply.body);
    assert!(reply.body.contains("nameid_format"), "{}", reply.body);
    idp.stop().await;
    kerberos.stop().await;
}

#[tokio::test]
async fn a_module_in_config_toml_takes_published_metadata_from_a_file() {
    // Entra ID's file as downloaded: a byte-order mark, a signature, WS-Federation roles.
    let upstream = crate::harness::Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        tests_dir().join("fixtures/saml/metadata/entra-id.xml"),
        dir.path().join("federationmetadata.xml"),
    )
    .unwrap();
    let config = format!(
        "{}[backends.up]\naddress = \"{}\"\n[edges.app]\nhostports = [\"{}:80\"]\n\
         [[edges.app.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/\"\nbackend = \"up\"\n\
         [edges.app.routes.auth]\nplugin = \"saml\"\nidp_metadata = {{ file = \"federationmetadata.xml\" }}\n",
        crate::harness::LISTENERS,
        upstream.addr,
        crate::saml::HOST
    );
    std::fs::write(dir.path().join("config.toml"), &config).unwrap();
    let gw = TestGateway::start_in(dir).await;
    let edges = gw.api(Method::GET, "/edges/https", None).await.json();
    let module = &edges["https_edges"][0]["routes"][0]["saml"];
    assert_eq!(
        module["idp_entity_id"],
        "https://sts.windows.net/81c1df79-e153-4f9d-a101-8dcf04af6c2c/"
    );
    assert_eq!(module["idp_metadata_signed"], true);
    let start = crate::harness::send(
        Method::GET,
        &format!("http://{}/", gw.gateway.edge_addr),
        &[("host", crate::saml::HOST)],
        None,
    )
    .await;
    assert!(
        location(&start)
            .starts_with("https://login.microsoftonline.com/81c1df79-e153-4f9d-a101-8dcf04af6c2c/saml2?SAMLRequest="),
        "{}",
        location(&start)
    );
    gw.stop().await;
}
