//! Crafted SAML Responses against the ACS, one invariant broken per case. Responses are built
//! from the templates in `tests/fixtures/saml/` (see its README) and signed with xmlsec (through
//! samael) by the fixture IdP's key, with the times, IDs and URLs each case needs. A genuine
//! Response built the same way is accepted first, so every refusal is the check under test.

use crate::harness::{
    assert_sign_in_refused, echoed, location, session_token, set_cookie, tests_dir, Reply, TestGateway, LISTENERS,
};
use crate::saml::{Loading, Site};
use base64::Engine;
use samael::crypto::{Crypto, CryptoProvider};
use serde_json::{json, Value};

const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
const SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";
const IDP: &str = "https://idp.fixture.test/metadata";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(tests_dir().join("fixtures/saml").join(name))
        .unwrap()
        .trim_end()
        .to_string()
}

fn key(name: &str) -> Vec<u8> {
    std::fs::read(tests_dir().join("fixtures/saml").join(name)).unwrap()
}

fn instant(offset_secs: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs);
    t.replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn random_id() -> String {
    format!("_{:032x}", rand::random::<u128>())
}

/// What goes into a crafted Response; [`Claims::genuine`] is one the module must accept.
#[derive(Clone)]
struct Claims {
    assertion_id: String,
    issuer: String,
    name_id: String,
    email: String,
    recipient: String,
    destination: String,
    audience: Option<String>,
    in_response_to: Option<String>,
    issued: i64,
    not_before: i64,
    /// Conditions' NotOnOrAfter.
    not_on_or_after: i64,
    /// The bearer SubjectConfirmationData's NotOnOrAfter.
    confirmation_not_on_or_after: i64,
    signature_algorithm: &'static str,
    digest_algorithm: &'static str,
    /// Key that signs the Assertion (`None`: unsigned).
    assertion_key: Option<&'static str>,
    /// Key that signs the whole Response (`None`: unsigned).
    response_key: Option<&'static str>,
}

impl Claims {
    fn genuine(site: &Site, in_response_to: Option<String>) -> Claims {
        let acs = site.module["assertion_consumer_service_url"]
            .as_str()
            .unwrap()
            .to_string();
        Claims {
            assertion_id: random_id(),
            issuer: IDP.into(),
            name_id: "alice-pid".into(),
            email: "alice@example.com".into(),
            recipient: acs.clone(),
            destination: acs,
            audience: Some(site.module["entity_id"].as_str().unwrap().to_string()),
            in_response_to,
            issued: 0,
            not_before: -30,
            not_on_or_after: 300,
            confirmation_not_on_or_after: 300,
            signature_algorithm: RSA_SHA256,
            digest_algorithm: SHA256,
            assertion_key: Some("idp.key.der"),
            response_key: None,
        }
    }

    fn fill(&self, template: &str) -> String {
        let in_response_to = self
            .in_response_to
            .as_ref()
            .map(|id| format!(" InResponseTo=\"{id}\""))
            .unwrap_or_default();
        let audience = self
            .audience
            .as_ref()
            .map(|a| format!("<saml:AudienceRestriction><saml:Audience>{a}</saml:Audience></saml:AudienceRestriction>"))
            .unwrap_or_default();
        template
            .replace("{{ISSUE_INSTANT}}", &instant(self.issued))
            .replace("{{ISSUER}}", &self.issuer)
            .replace("{{NAME_ID}}", &self.name_id)
            .replace("{{EMAIL}}", &self.email)
            .replace("{{RECIPIENT}}", &self.recipient)
            .replace("{{DESTINATION}}", &self.destination)
            .replace("{{AUDIENCE_RESTRICTION}}", &audience)
            .replace("{{IN_RESPONSE_TO}}", &in_response_to)
            .replace("{{NOT_BEFORE}}", &instant(self.not_before))
            .replace("{{NOT_ON_OR_AFTER}}", &instant(self.not_on_or_after))
            .replace(
                "{{CONFIRMATION_NOT_ON_OR_AFTER}}",
                &instant(self.confirmation_not_on_or_after),
            )
            .replace("{{SESSION_INDEX}}", "_session1")
    }

    fn signature(&self, reference: &str) -> String {
        fixture("signature.xml")
            .replace("{{SIGNATURE_ALGORITHM}}", self.signature_algorithm)
            .replace("{{DIGEST_ALGORITHM}}", self.digest_algorithm)
            .replace("{{REFERENCE}}", reference)
    }

    /// The Assertion alone, signed when `assertion_key` is set.
    fn assertion(&self) -> String {
        self.assertion_from(&fixture("assertion.xml"))
    }

    /// The Assertion of `template` (assertion.xml, or a variant of it), signed when
    /// `assertion_key` is set.
    fn assertion_from(&self, template: &str) -> String {
        let signature = self.assertion_key.map(|_| self.signature(&self.assertion_id));
        let xml = self
            .fill(template)
            .replace("{{ASSERTION_ID}}", &self.assertion_id)
            .replace("{{ASSERTION_SIGNATURE}}", signature.as_deref().unwrap_or_default());
        match self.assertion_key {
            Some(k) => sign(&xml, k),
            None => xml,
        }
    }

    /// The whole Response around `assertion`.
    fn response_with(&self, assertion: &str) -> String {
        self.response_from(&fixture("response.xml"), assertion)
    }

    /// The Response of `template` (response.xml, or a variant of it) around `assertion`.
    fn response_from(&self, template: &str, assertion: &str) -> String {
        let response_id = random_id();
        let signature = self.response_key.map(|_| self.signature(&response_id));
        let xml = self
            .fill(template)
            .replace("{{RESPONSE_ID}}", &response_id)
            .replace("{{RESPONSE_SIGNATURE}}", signature.as_deref().unwrap_or_default())
            .replace("{{ASSERTION}}", assertion);
        match self.response_key {
            Some(k) => sign(&xml, k),
            None => xml,
        }
    }

    fn response(&self) -> String {
        self.response_with(&self.assertion())
    }
}

/// Signs the first Signature template of `xml` with a fixture key; drops the XML declaration.
fn sign(xml: &str, key_file: &str) -> String {
    let signed = Crypto::sign_xml(xml, &key(key_file)).unwrap();
    match signed.strip_prefix("<?xml") {
        Some(rest) => rest[rest.find("?>").unwrap() + 2..].trim().to_string(),
        None => signed,
    }
}

async fn site(options: Value) -> Site {
    Site::create(&fixture("idp-metadata.xml"), Loading::Linked, options).await
}

/// Starts a login as a browser would and returns the AuthnRequest's ID.
async fn request_id(site: &Site) -> String {
    let start = site.get("/", &[]).await;
    assert_eq!(start.status, 303, "{}", start.body);
    let url = location(&start);
    let encoded = url.split("SAMLRequest=").nth(1).unwrap().split('&').next().unwrap();
    let xml = portcullis_saml::xml::inflate_base64(&portcullis_plugin_sdk::percent_decode(encoded)).unwrap();
    portcullis_saml::xml::root_attribute(&xml, "ID").unwrap()
}

async fn post(site: &Site, response_xml: &str, relay_state: Option<&str>) -> Reply {
    let mut fields = vec![(
        "SAMLResponse",
        base64::engine::general_purpose::STANDARD.encode(response_xml),
    )];
    if let Some(relay_state) = relay_state {
        fields.push(("RelayState", relay_state.to_string()));
    }
    site.post_acs(&fields).await
}

#[tokio::test]
async fn a_genuine_response_is_taken_once_and_answers_one_request_once() {
    let site = site(json!({})).await;
    let claims = Claims::genuine(&site, Some(request_id(&site).await));
    let response = claims.response();
    let accepted = post(&site, &response, None).await;
    assert_eq!(accepted.status, 303, "{}", accepted.body);
    let seen = echoed(&site.with_session("/", &session_token(&accepted)).await);
    assert_eq!(seen["headers"]["x-portcullis-user-email"], "alice@example.com");

    assert_sign_in_refused(&post(&site, &response, None).await, 400, "replayed Response");
    let again = Claims {
        assertion_id: random_id(),
        ..claims.clone()
    };
    assert_sign_in_refused(&post(&site, &again.response(), None).await, 400, "reused InResponseTo");
    let unknown = Claims {
        in_response_to: Some(random_id()),
        ..Claims::genuine(&site, None)
    };
    assert_sign_in_refused(
        &post(&site, &unknown.response(), None).await,
        400,
        "unknown InResponseTo",
    );
    let unsolicited = Claims::genuine(&site, None);
    let reply = post(&site, &unsolicited.response(), Some("/")).await;
    assert_sign_in_refused(&reply, 400, "IdP-initiated when not allowed");
    assert!(reply.body.contains("not allowed"), "{}", reply.body);
    site.stop().await;
}

#[tokio::test]
async fn tampered_unsigned_and_foreign_signed_responses_are_refused() {
    let site = site(json!({})).await;
    let genuine = Claims::genuine(&site, Some(request_id(&site).await));

    let tampered = genuine.response().replace("alice@example.com", "mallory@example.com");
    assert_sign_in_refused(&post(&site, &tampered, None).await, 400, "tampered attribute");

    let unsigned = Claims {
        assertion_key: None,
        ..genuine.clone()
    };
    assert_sign_in_refused(
        &post(&site, &unsigned.response(), None).await,
        400,
        "unsigned Response and Assertion",
    );

    for (assertion_key, response_key) in [
        (Some("other.key.der"), None),
        (None, Some("other.key.der")),
        (Some("other.key.der"), Some("other.key.der")),
    ] {
        let foreign = Claims {
            assertion_key,
            response_key,
            ..genuine.clone()
        };
        assert_sign_in_refused(
            &post(&site, &foreign.response(), None).await,
            400,
            "signed by another key",
        );
    }

    // The genuine one still works: the refusals above were the signatures.
    assert_eq!(post(&site, &genuine.response(), None).await.status, 303);
    site.stop().await;
}

#[tokio::test]
async fn every_signature_must_verify_whichever_elements_carry_one() {
    let site = site(json!({})).await;
    // IdPs sign the Assertion, the Response, or both: each shape signs in, as the signed identity.
    for (assertion_key, response_key) in [
        (Some("idp.key.der"), None),
        (None, Some("idp.key.der")),
        (Some("idp.key.der"), Some("idp.key.der")),
    ] {
        let claims = Claims {
            assertion_key,
            response_key,
            ..Claims::genuine(&site, Some(request_id(&site).await))
        };
        let reply = post(&site, &claims.response(), None).await;
        assert_eq!(reply.status, 303, "{assertion_key:?} {response_key:?}: {}", reply.body);
        let seen = echoed(&site.with_session("/", &session_token(&reply)).await);
        assert_eq!(seen["headers"]["x-portcullis-user-email"], "alice@example.com");
    }
    // One good signature does not vouch for another, bad one in the same message.
    for (assertion_key, response_key) in [
        (Some("other.key.der"), Some("idp.key.der")),
        (Some("idp.key.der"), Some("other.key.der")),
    ] {
        let mixed = Claims {
            assertion_key,
            response_key,
            ..Claims::genuine(&site, Some(request_id(&site).await))
        };
        assert_sign_in_refused(
            &post(&site, &mixed.response(), None).await,
            400,
            "a Response with one foreign signature",
        );
    }
    site.stop().await;
}

#[tokio::test]
async fn signatures_count_only_where_saml_puts_them() {
    let site = site(json!({})).await;
    let signed_response = |claims: Claims| Claims {
        response_key: Some("idp.key.der"),
        ..claims
    };

    // Another genuine, signed Response tucked into the Assertion's signature (outside what that
    // signature covers): which signed part counts must not be the attacker's choice.
    let alice = Claims::genuine(&site, Some(request_id(&site).await));
    let mallory = signed_response(Claims {
        name_id: "mallory-pid".into(),
        email: "mallory@example.com".into(),
        ..Claims::genuine(&site, Some(request_id(&site).await))
    });
    let hidden = alice.assertion().replacen(
        "</ds:SignatureValue>",
        &format!("</ds:SignatureValue><ds:Object>{}</ds:Object>", mallory.response()),
        1,
    );
    assert_sign_in_refused(
        &post(&site, &alice.response_with(&hidden), None).await,
        400,
        "a signed Response inside a signature",
    );

    // A Response-level signature that covers the Assertion instead of the Response.
    let claims = Claims::genuine(&site, Some(request_id(&site).await));
    let response = claims.response();
    let issuer_end = response.find("</saml:Issuer>").unwrap() + "</saml:Issuer>".len();
    let mut misplaced = response.clone();
    misplaced.insert_str(issuer_end, &claims.signature(&claims.assertion_id));
    assert_sign_in_refused(
        &post(&site, &sign(&misplaced, "idp.key.der"), None).await,
        400,
        "a Response signature over the Assertion",
    );

    // A signed Response must say where it was sent (SAML bindings 3.5.5.2).
    let claims = signed_response(Claims::genuine(&site, Some(request_id(&site).await)));
    let undirected = fixture("response.xml").replace(" Destination=\"{{DESTINATION}}\"", "");
    assert_sign_in_refused(
        &post(&site, &claims.response_from(&undirected, &claims.assertion()), None).await,
        400,
        "a signed Response without Destination",
    );

    // The same shapes done right sign in.
    let claims = signed_response(Claims::genuine(&site, Some(request_id(&site).await)));
    assert_eq!(post(&site, &claims.response(), None).await.status, 303);
    site.stop().await;
}

#[tokio::test]
async fn malformed_requests_to_the_module_get_a_readable_page_never_a_server_error() {
    let site = site(json!({})).await;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let posts: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no fields", vec![]),
        ("not base64", vec![("SAMLResponse", "%%%not*base64".into())]),
        (
            "not UTF-8",
            vec![(
                "SAMLResponse",
                base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe, 0x00]),
            )],
        ),
        ("not XML", vec![("SAMLResponse", b64("hello"))]),
        (
            "truncated XML",
            vec![(
                "SAMLResponse",
                b64("<samlp:Response xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\"><saml"),
            )],
        ),
        ("XML but not SAML", vec![("SAMLResponse", b64("<a><b/></a>"))]),
        (
            "an unsigned empty Response",
            vec![(
                "SAMLResponse",
                b64("<samlp:Response xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" ID=\"_x\"/>"),
            )],
        ),
        ("a RelayState alone", vec![("RelayState", "/".into())]),
    ];
    for (case, fields) in posts {
        let reply = site.post_acs(&fields).await;
        assert!(
            reply.status.is_client_error(),
            "{case}: {} {}",
            reply.status,
            reply.body
        );
        assert!(
            reply.headers["content-type"].to_str().unwrap().starts_with("text/html"),
            "{case}"
        );
    }
    for (case, path) in [
        ("GET on the ACS", "/_portcullis/auth/{route}/acs"),
        ("SLO without a message", "/_portcullis/auth/{route}/slo"),
        (
            "SLO with garbage",
            "/_portcullis/auth/{route}/slo?SAMLRequest=%%%&Signature=x&SigAlg=y",
        ),
        (
            "SLO with an unsigned request",
            "/_portcullis/auth/{route}/slo?SAMLRequest=fVHBTsMwDL3zFVHua9pu",
        ),
        ("an unknown endpoint", "/_portcullis/auth/{route}/nothing-here"),
    ] {
        let reply = site.get(path, &[]).await;
        assert!(
            reply.status.is_client_error(),
            "{case}: {} {}",
            reply.status,
            reply.body
        );
    }
    site.stop().await;
}

#[tokio::test]
async fn sha1_is_refused_unless_the_module_allows_it() {
    let sha1 = |claims: Claims| Claims {
        signature_algorithm: "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
        digest_algorithm: "http://www.w3.org/2000/09/xmldsig#sha1",
        ..claims
    };
    let strict = site(json!({})).await;
    let claims = sha1(Claims::genuine(&strict, Some(request_id(&strict).await)));
    assert_sign_in_refused(&post(&strict, &claims.response(), None).await, 400, "SHA-1 signature");
    let digest_only = Claims {
        signature_algorithm: RSA_SHA256,
        ..claims.clone()
    };
    assert_sign_in_refused(&post(&strict, &digest_only.response(), None).await, 400, "SHA-1 digest");
    strict.stop().await;

    let lenient = site(json!({"allow_sha1": true})).await;
    let claims = sha1(Claims::genuine(&lenient, Some(request_id(&lenient).await)));
    assert_eq!(post(&lenient, &claims.response(), None).await.status, 303);
    lenient.stop().await;
}

#[tokio::test]
async fn times_audience_recipient_destination_and_issuer_are_checked() {
    let site = site(json!({})).await;
    let id = request_id(&site).await;
    let genuine = Claims::genuine(&site, Some(id));
    let cases: Vec<(&str, Claims)> = vec![
        (
            "expired",
            Claims {
                issued: -900,
                not_before: -900,
                not_on_or_after: -600,
                confirmation_not_on_or_after: -600,
                ..genuine.clone()
            },
        ),
        // The allowed clock skew is 60 seconds, each way, for each time on its own.
        (
            "Conditions expired 90 s ago",
            Claims {
                issued: -100,
                not_before: -110,
                not_on_or_after: -90,
                ..genuine.clone()
            },
        ),
        (
            "bearer confirmation expired 90 s ago",
            Claims {
                issued: -100,
                not_before: -110,
                confirmation_not_on_or_after: -90,
                ..genuine.clone()
            },
        ),
        (
            "not valid for another 90 s",
            Claims {
                not_before: 90,
                ..genuine.clone()
            },
        ),
        (
            "not yet valid",
            Claims {
                not_before: 3600,
                not_on_or_after: 7200,
                ..genuine.clone()
            },
        ),
        (
            "issued too long ago",
            Claims {
                issued: -3600,
                ..genuine.clone()
            },
        ),
        (
            "wrong audience",
            Claims {
                audience: Some("https://other-sp.example/metadata".into()),
                ..genuine.clone()
            },
        ),
        (
            "no audience",
            Claims {
                audience: None,
                ..genuine.clone()
            },
        ),
        (
            "wrong Recipient",
            Claims {
                recipient: "https://other-sp.example/acs".into(),
                ..genuine.clone()
            },
        ),
        (
            "wrong Destination on a signed Response",
            Claims {
                destination: "https://other-sp.example/acs".into(),
                response_key: Some("idp.key.der"),
                ..genuine.clone()
            },
        ),
        (
            "issued in the future",
            Claims {
                issued: 3600,
                not_before: 3500,
                not_on_or_after: 7200,
                ..genuine.clone()
            },
        ),
        (
            "another issuer",
            Claims {
                issuer: "https://evil.example/metadata".into(),
                ..genuine.clone()
            },
        ),
    ];
    for (case, claims) in cases {
        assert_sign_in_refused(&post(&site, &claims.response(), None).await, 400, case);
    }
    // Each case changed one thing: the genuine claims, signed both ways, are still taken.
    let both = Claims {
        response_key: Some("idp.key.der"),
        ..genuine
    };
    assert_eq!(post(&site, &both.response(), None).await.status, 303);
    // Within the skew, times just past are still taken.
    for (case, skewed) in [
        (
            "expired 30 s ago",
            Claims {
                issued: -100,
                not_before: -110,
                not_on_or_after: -30,
                confirmation_not_on_or_after: -30,
                ..Claims::genuine(&site, Some(request_id(&site).await))
            },
        ),
        (
            "valid in 30 s",
            Claims {
                not_before: 30,
                ..Claims::genuine(&site, Some(request_id(&site).await))
            },
        ),
    ] {
        let reply = post(&site, &skewed.response(), None).await;
        assert_eq!(reply.status, 303, "{case}: {}", reply.body);
    }
    site.stop().await;
}

#[tokio::test]
async fn signature_wrapping_never_yields_the_attacker_s_identity() {
    let site = site(json!({})).await;
    for variant in 0..4 {
        let genuine = Claims::genuine(&site, Some(request_id(&site).await));
        let signed = genuine.assertion();
        let evil = Claims {
            assertion_key: None,
            name_id: "mallory-pid".into(),
            email: "mallory@example.com".into(),
            ..genuine.clone()
        };
        let evil_unsigned = evil.assertion();
        let wrapped = match variant {
            // An unsigned evil Assertion before the signed one.
            0 => genuine.response_with(&format!("{evil_unsigned}{signed}")),
            // The same, after it.
            1 => genuine.response_with(&format!("{signed}{evil_unsigned}")),
            // The evil Assertion takes the signed one's ID; the signed one hides in its Advice.
            2 => {
                let evil_same_id = evil_unsigned.replace(&evil.assertion_id, &genuine.assertion_id);
                let hidden = evil_same_id.replace(
                    "<saml:AttributeStatement>",
                    &format!("<saml:Advice>{signed}</saml:Advice><saml:AttributeStatement>"),
                );
                genuine.response_with(&hidden)
            }
            // A signed Response whose signed Assertion is swapped for the evil one, the
            // original kept in an Extensions element.
            _ => {
                let response = Claims {
                    response_key: Some("idp.key.der"),
                    ..genuine.clone()
                }
                .response();
                let start = response.find("<saml:Assertion").unwrap();
                let end = response.find("</saml:Assertion>").unwrap() + "</saml:Assertion>".len();
                let original = &response[start..end];
                let mut forged = response.replacen(original, &evil_unsigned, 1);
                let status = forged.find("<samlp:Status>").unwrap();
                forged.insert_str(status, &format!("<samlp:Extensions>{response}</samlp:Extensions>"));
                forged
            }
        };
        let reply = post(&site, &wrapped, None).await;
        if reply.status == 303 {
            let seen = echoed(&site.with_session("/", &session_token(&reply)).await);
            assert_eq!(
                seen["headers"]["x-portcullis-user-email"], "alice@example.com",
                "variant {variant} signed in as the attacker"
            );
        } else {
            assert_sign_in_refused(&reply, 400, &format!("wrapping variant {variant}"));
        }
    }
    site.stop().await;
}

#[tokio::test]
async fn comments_entities_off_site_relay_states_and_replays_of_unsolicited_responses_are_refused() {
    let site = site(json!({"allow_idp_initiated": true})).await;
    // A comment splits the NameID after signing: exclusive c14n drops comments, so the
    // signature still verifies, and a naive reader would see only `alice-pid`.
    let claims = Claims {
        name_id: "alice-pid.evil".into(),
        ..Claims::genuine(&site, None)
    };
    let split = claims.response().replace("alice-pid.evil", "alice-pid<!---->.evil");
    assert_sign_in_refused(&post(&site, &split, Some("/")).await, 400, "comment in NameID");

    let doctype = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\"><!ENTITY x SYSTEM \"file:///etc/passwd\">]>{}",
        Claims::genuine(&site, None).response().replace("Alice Liddell", "&b;&x;")
    );
    assert_sign_in_refused(&post(&site, &doctype, Some("/")).await, 400, "DOCTYPE and entities");

    // The RelayState is not signed: refusing an off-site one spends nothing, so the same
    // Response with an on-site RelayState still signs in (once).
    let unsolicited = Claims::genuine(&site, None).response();
    for relay in [
        "https://evil.example/",
        "//evil.example",
        "http://app.test.evil.example/",
    ] {
        let reply = post(&site, &unsolicited, Some(relay)).await;
        assert_sign_in_refused(&reply, 400, relay);
        assert!(reply.body.contains("outside this application"), "{}", reply.body);
    }
    let fine = post(&site, &unsolicited, Some("/reports")).await;
    assert_eq!(fine.status, 303, "{}", fine.body);
    assert_eq!(location(&fine), "/reports");
    // With no request to answer, only the assertion-ID cache stops a replay.
    assert_sign_in_refused(
        &post(&site, &unsolicited, Some("/reports")).await,
        400,
        "replayed unsolicited Response",
    );
    site.stop().await;
}

#[tokio::test]
async fn a_declared_encoding_cannot_smuggle_a_remote_reference_past_the_screen() {
    let site = site(json!({})).await;
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.set_nonblocking(true).unwrap();
    let genuine = Claims::genuine(&site, Some(request_id(&site).await)).response();
    // In UTF-7 `+AFI-` is `R`: libxml2 would read a Reference to the probe that a UTF-8
    // reader does not see.
    let start = genuine.find("<ds:Reference URI=\"").unwrap();
    let end = genuine[start..].find('>').unwrap() + start + 1;
    let smuggled = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-7\"?>{}<ds:+AFI-eference URI=\"http://{}/probe\">{}",
        &genuine[..start],
        probe.local_addr().unwrap(),
        &genuine[end..]
    )
    .replace("</ds:Reference>", "</ds:+AFI-eference>");
    assert_sign_in_refused(&post(&site, &smuggled, None).await, 400, "UTF-7 declaration");
    assert!(
        matches!(probe.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the gateway fetched the smuggled reference"
    );
    site.stop().await;
}

/// A sign-in started on the site: the browser's binding cookie (`name=value`) and the
/// AuthnRequest's ID.
async fn start_in_browser(site: &Site, cookie: Option<&str>) -> (String, String) {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
    let start = site.get("/", &headers).await;
    assert_eq!(start.status, 303, "{}", start.body);
    let pair = start
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("__Host-portcullis-saml-"))
        .expect("a binding cookie");
    assert!(pair.contains("; Secure") && pair.contains("SameSite=None") && pair.contains("HttpOnly"));
    let url = location(&start);
    let encoded = url.split("SAMLRequest=").nth(1).unwrap().split('&').next().unwrap();
    let xml = portcullis_saml::xml::inflate_base64(&portcullis_plugin_sdk::percent_decode(encoded)).unwrap();
    (
        pair.split(';').next().unwrap().to_string(),
        portcullis_saml::xml::root_attribute(&xml, "ID").unwrap(),
    )
}

#[tokio::test]
async fn on_https_a_response_only_completes_in_the_browser_that_started_the_sign_in() {
    let config = LISTENERS.replace(
        "[listeners.console]",
        "public_url = \"https://app.test\"\n[listeners.console]",
    );
    let gw = TestGateway::start_with(&config).await;
    let site = Site::create_on(gw, &fixture("idp-metadata.xml"), json!({})).await;
    assert!(site.module["entity_id"]
        .as_str()
        .unwrap()
        .starts_with("https://app.test/"));
    let (victim, id) = start_in_browser(&site, None).await;
    let (attacker, _) = start_in_browser(&site, None).await;
    assert_ne!(victim, attacker, "each browser gets its own binding");
    let response = Claims::genuine(&site, Some(id)).response();
    let fields = vec![(
        "SAMLResponse",
        base64::engine::general_purpose::STANDARD.encode(&response),
    )];
    // The Response posted from other browsers (an attacker's, one without the cookie): refused.
    for (case, cookie) in [("another browser", attacker.as_str()), ("no binding cookie", "")] {
        let elsewhere = site.post_acs_with_cookie(&fields, cookie).await;
        assert_sign_in_refused(&elsewhere, 400, case);
        assert!(elsewhere.body.contains("another browser"), "{case}: {}", elsewhere.body);
    }
    // Those refusals spent nothing: the browser that started the sign-in completes it with the
    // same Response, once.
    let done = site.post_acs_with_cookie(&fields, &victim).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert!(set_cookie(&done, "__Host-portcullis.session")
        .unwrap()
        .contains("; Secure"));
    assert_sign_in_refused(
        &site.post_acs_with_cookie(&fields, &victim).await,
        400,
        "the same Response again",
    );
    site.stop().await;
}

#[tokio::test]
async fn a_message_that_is_not_well_formed_is_refused_even_when_its_signed_part_is_intact() {
    let site = site(json!({})).await;
    let root = "<samlp:Response xmlns:samlp=";
    type Break = fn(&str) -> String;
    let cases: [(&str, Break); 9] = [
        ("unclosed root", |r| r.replace("</samlp:Response>", "")),
        ("duplicate attribute", |r| {
            r.replacen("<samlp:Response ", "<samlp:Response Consent=\"a\" Consent=\"b\" ", 1)
        }),
        ("unquoted attribute", |r| {
            r.replacen("<samlp:Response ", "<samlp:Response Consent=a ", 1)
        }),
        ("&#0;", |r| {
            r.replacen("<samlp:Response ", "<samlp:Response Consent=\"&#0;\" ", 1)
        }),
        // A surrogate, or a code point beyond Unicode, is no XML character either (roxmltree
        // reads them as U+FFFD; libxml2 drops them and recovers).
        ("&#xD800;", |r| {
            r.replacen("<samlp:Response ", "<samlp:Response Consent=\"&#xD800;\" ", 1)
        }),
        ("&#57343;", |r| {
            r.replacen("<samlp:Status>", "<samlp:Status>&#57343;", 1)
        }),
        ("&#x110000;", |r| {
            r.replacen("<samlp:Response ", "<samlp:Response Consent=\"&#x110000;\" ", 1)
        }),
        ("undeclared attribute prefix", |r| {
            r.replacen("<samlp:Response ", "<samlp:Response evil:x=\"1\" ", 1)
        }),
        ("undeclared element prefix", |r| {
            r.replacen("<samlp:Status>", "<evil:Extensions/><samlp:Status>", 1)
        }),
    ];
    for (case, break_it) in cases {
        // Only the Assertion is signed: the Response around it is what is broken.
        let response = Claims::genuine(&site, Some(request_id(&site).await)).response();
        assert!(response.starts_with(root), "{response}");
        let broken = break_it(&response);
        assert_ne!(broken, response, "{case}");
        assert_sign_in_refused(&post(&site, &broken, None).await, 400, case);
    }
    // The same Responses, well-formed, sign in.
    let fine = Claims::genuine(&site, Some(request_id(&site).await)).response();
    assert_eq!(post(&site, &fine, None).await.status, 303);
    site.stop().await;
}

#[tokio::test]
async fn an_unsigned_error_response_cannot_write_its_own_text_on_the_error_page() {
    // Anyone can post an unsigned error Response to the ACS (cross-site, from a page the victim
    // opens); its status only picks which page the browser sees. A status SAML defines is
    // named on the page; any other text is not shown there.
    let site = site(json!({})).await;
    let acs = site.module["assertion_consumer_service_url"]
        .as_str()
        .unwrap()
        .to_string();
    let error = |top: &str, second: Option<&str>| {
        let nested = second
            .map(|v| format!("<samlp:StatusCode Value=\"{v}\"/>"))
            .unwrap_or_default();
        format!(
            "<samlp:Response xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" ID=\"{}\" Version=\"2.0\" \
IssueInstant=\"{}\" Destination=\"{acs}\"><samlp:Status><samlp:StatusCode Value=\"{top}\">{nested}</samlp:StatusCode>\
</samlp:Status></samlp:Response>",
            random_id(),
            instant(0)
        )
    };
    let responder = "urn:oasis:names:tc:SAML:2.0:status:Responder";
    let lure = "Your account is locked. Call +1 555 0100 or go to https://unlock.evil.example/ now";
    for (case, response) in [
        ("second-level", error(responder, Some(lure))),
        ("top-level", error(lure, None)),
        (
            "under SAML's prefix",
            error(responder, Some(&format!("urn:oasis:names:tc:SAML:2.0:status:{lure}"))),
        ),
    ] {
        let reply = post(&site, &response, None).await;
        assert_eq!(reply.status, 403, "{case}: {}", reply.body);
        assert!(reply.body.contains("<h1>Not signed in</h1>"), "{case}: {}", reply.body);
        for shown in ["evil.example", "555", "locked"] {
            assert!(!reply.body.contains(shown), "{case}: {shown}: {}", reply.body);
        }
    }
    let named = post(
        &site,
        &error(responder, Some("urn:oasis:names:tc:SAML:2.0:status:NoAvailableIDP")),
        None,
    )
    .await;
    assert_eq!(named.status, 403, "{}", named.body);
    assert!(
        named
            .body
            .contains("<code>urn:oasis:names:tc:SAML:2.0:status:NoAvailableIDP</code>"),
        "{}",
        named.body
    );
    site.stop().await;
}

#[tokio::test]
async fn attributes_are_read_by_the_names_idps_use_unless_an_option_names_one() {
    // As Entra ID / AD FS and LDAP-backed IdPs send them: the email under its LDAP OID, the
    // display name by FriendlyName only, groups as `memberOf`, and a role claim.
    let attributes = |name: &str, friendly: Option<&str>, value: &str| {
        let friendly = friendly.map(|f| format!(" FriendlyName=\"{f}\"")).unwrap_or_default();
        format!("<saml:Attribute Name=\"{name}\"{friendly}><saml:AttributeValue xsi:type=\"xs:string\">{value}</saml:AttributeValue></saml:Attribute>")
    };
    let statement = [
        attributes("urn:oid:0.9.2342.19200300.100.1.3", Some("mail"), "alice@example.com"),
        attributes("urn:example:label", Some("displayName"), "Alice L."),
        attributes("memberOf", None, "engineering"),
        attributes(
            "http://schemas.microsoft.com/ws/2008/06/identity/claims/role",
            Some("role"),
            "admins",
        ),
    ]
    .concat();
    let template = fixture("assertion.xml");
    let start = template.find("<saml:AttributeStatement>").unwrap() + "<saml:AttributeStatement>".len();
    let end = template.find("</saml:AttributeStatement>").unwrap();
    let template = format!("{}{statement}{}", &template[..start], &template[end..]);
    async fn sign_in(site: &Site, template: &str) -> Reply {
        let claims = Claims::genuine(site, Some(request_id(site).await));
        post(site, &claims.response_with(&claims.assertion_from(template)), None).await
    }

    // Unset options: the first of the usual names the assertion carries; a role is no group.
    let defaults = site(json!({"authorized_groups": ["engineering"]})).await;
    let reply = sign_in(&defaults, &template).await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    let seen = echoed(&defaults.with_session("/", &session_token(&reply)).await);
    assert_eq!(seen["headers"]["x-portcullis-user-email"], "alice@example.com");
    assert_eq!(seen["headers"]["x-portcullis-user-name"], "Alice L.");
    assert_eq!(seen["headers"]["x-portcullis-user-groups"], "engineering");
    defaults.stop().await;

    // An option names the one attribute read (by Name or FriendlyName): when the assertion
    // lacks it, the usual names are not read in its place.
    let entitled =
        site(json!({"groups_attribute": "eduPersonEntitlement", "authorized_groups": ["engineering"]})).await;
    assert_eq!(sign_in(&entitled, &template).await.status, 403);
    entitled.stop().await;
    let roles = site(json!({"groups_attribute": "role", "authorized_groups": ["admins"]})).await;
    let reply = sign_in(&roles, &template).await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    let seen = echoed(&roles.with_session("/", &session_token(&reply)).await);
    assert_eq!(seen["headers"]["x-portcullis-user-groups"], "admins");
    roles.stop().await;
}

#[tokio::test]
async fn shapes_that_would_cost_the_parser_seconds_are_refused_before_it() {
    // Around an intact signed Assertion: many attributes on one element, namespace declarations
    // nested in each other. At some hundred kilobytes the first took roxmltree (which compares
    // each attribute with those before it, and copies the namespaces in scope at each element
    // declaring one) seconds of CPU per post; both are refused by a linear pass first.
    let site = site(json!({})).await;
    type Shape = fn(&str) -> String;
    let cases: [(&str, Shape); 3] = [
        ("20000 attributes on the Response", |r| {
            let attributes: String = (0..20_000).map(|i| format!(" a{i}=\"\"")).collect();
            r.replacen("<samlp:Response ", &format!("<samlp:Response{attributes} "), 1)
        }),
        ("33 attributes on the Response", |r| {
            let attributes: String = (0..33).map(|i| format!(" a{i}=\"\"")).collect();
            r.replacen("<samlp:Response ", &format!("<samlp:Response{attributes} "), 1)
        }),
        ("33 nested namespace declarations", |r| {
            let open: String = (0..33).map(|i| format!("<p{i}:x xmlns:p{i}=\"urn:x\">")).collect();
            let close: String = (0..33).rev().map(|i| format!("</p{i}:x>")).collect();
            r.replacen(
                "<samlp:Status>",
                &format!("<samlp:Extensions>{open}{close}</samlp:Extensions><samlp:Status>"),
                1,
            )
        }),
    ];
    for (case, shape) in cases {
        let response = Claims::genuine(&site, Some(request_id(&site).await)).response();
        let shaped = shape(&response);
        assert_ne!(shaped, response, "{case}");
        assert_sign_in_refused(&post(&site, &shaped, None).await, 400, case);
    }
    let fine = Claims::genuine(&site, Some(request_id(&site).await)).response();
    assert_eq!(post(&site, &fine, None).await.status, 303);
    site.stop().await;
}
