//! An IdP's metadata as identity providers publish it: screened for what matters in metadata
//! (size, DOCTYPE and entities, its own signature when it has one), read with a
//! namespace-aware parser, one IdP picked from an `EntitiesDescriptor`, and turned into what the
//! module needs (entity id, signing certificates, SSO and SLO endpoints) and what samael needs
//! (an `EntityDescriptor` holding exactly those).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use openssl::x509::X509;
use roxmltree::{Document, Node};
use samael::crypto::{AllowedSignatureAlgorithm, CertificateDer, Crypto, CryptoProvider, ReduceMode};
use samael::key_info::{KeyInfo, X509Data};
use samael::metadata::{Endpoint, EntityDescriptor, IdpSsoDescriptor, KeyDescriptor};

const METADATA_NS: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
const SAML2_PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
const REDIRECT_BINDING: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";
/// Largest metadata document accepted: an IdP's own metadata is some kilobytes (Entra ID's,
/// with its WS-Federation roles, some 20 KB); federation aggregates of thousands of entities
/// are not what a module is given.
pub const MAX_METADATA: usize = 1024 * 1024;

/// What the module needs of the IdP's metadata.
#[derive(Clone, Debug)]
pub struct Idp {
    pub entity_id: String,
    /// The certificates whose keys may sign the IdP's messages (`KeyDescriptor`s with
    /// `use="signing"` or without `use`, which the metadata spec makes good for both).
    pub certificates: Vec<X509>,
    /// The IdP's SingleSignOnService (HTTP-Redirect).
    pub sso_url: String,
    /// The IdP's SingleLogoutService (HTTP-Redirect), when it has one.
    pub slo_url: Option<String>,
    /// Whether the metadata was signed (and its signature verified).
    pub signed: bool,
    /// For samael: this entity id, one IDPSSODescriptor with exactly these certificates.
    pub descriptor: EntityDescriptor,
}

/// One IdP as read from a metadata document.
struct Entry {
    entity_id: String,
    certificates: Vec<String>,
    sso_url: Option<String>,
    slo_url: Option<String>,
}

/// Reads the IdP's metadata: an `EntityDescriptor`, or an `EntitiesDescriptor` from which
/// `wanted` (or its only IdP) is taken. A metadata signature, when present, must be the
/// document's own (an immediate child of its root), and must verify with a signing certificate
/// the document declares for the IdP taken; the IdP is then read again from the signed bytes
/// alone. SHA-1 in that signature is refused unless `allow_sha1`.
pub fn parse_metadata(xml: &str, wanted: Option<&str>, allow_sha1: bool) -> Result<Idp, String> {
    // Windows tools (and Entra ID's endpoint) write a byte-order mark.
    let xml = xml.strip_prefix('\u{feff}').unwrap_or(xml);
    if xml.len() > MAX_METADATA {
        return Err(format!(
            "is {} bytes, more than the {MAX_METADATA} accepted: give the IdP's own EntityDescriptor, not a federation's aggregate",
            xml.len()
        ));
    }
    crate::xml::screen_metadata(xml, allow_sha1).map_err(|e| format!("is not acceptable metadata: {e}"))?;
    let document = crate::xml::parse_strict(xml).map_err(|e| format!("is not acceptable metadata: {e}"))?;
    let entry = read_idp(&document, wanted)?;
    let certificates = parse_certificates(&entry.certificates)?;
    let signed = has_signature(&document)?;
    let entry = if signed {
        let ders = certificates
            .iter()
            .map(|c| c.to_der().map(CertificateDer::from))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let allowed = (!allow_sha1).then_some(crate::module::STRONG_ALGORITHMS.as_slice());
        let signed_xml = verify_signature(xml, &ders, allowed).map_err(|()| {
            // A federation signs its aggregate with its own key, which the document does not hold.
            let aggregate = if is(&document.root_element(), METADATA_NS, "EntitiesDescriptor") {
                " (an aggregate signed by a federation's key cannot be checked here: give the IdP's own EntityDescriptor)"
            } else {
                ""
            };
            format!(
                "is signed, but its signature does not verify with the signing certificates it declares for {}{aggregate}",
                entry.entity_id
            )
        })?;
        // Only the signed bytes are read from here on.
        let signed_document = crate::xml::parse_strict(&signed_xml)
            .map_err(|e| format!("has signed content that does not parse: {e}"))?;
        read_idp(&signed_document, Some(&entry.entity_id))?
    } else {
        entry
    };
    let certificates = parse_certificates(&entry.certificates)?;
    let sso_url = entry
        .sso_url
        .ok_or("has no SingleSignOnService with the HTTP-Redirect binding")?;
    Ok(Idp {
        descriptor: samael_descriptor(
            &entry.entity_id,
            &entry.certificates,
            &sso_url,
            entry.slo_url.as_deref(),
        ),
        entity_id: entry.entity_id,
        certificates,
        sso_url,
        slo_url: entry.slo_url,
        signed,
    })
}

/// Verifies every signature of `xml` with `certificates` (xmlsec through samael) and returns the
/// bytes the one signature covers, as it canonicalised and hashed them.
fn verify_signature(
    xml: &str,
    certificates: &[CertificateDer],
    allowed: Option<&[AllowedSignatureAlgorithm]>,
) -> Result<String, ()> {
    Crypto::reduce_xml_to_signed_with_allowed_algorithms(xml, certificates, ReduceMode::PreDigest, allowed)
        .map_err(drop)
}

fn is(node: &Node<'_, '_>, namespace: &str, name: &str) -> bool {
    node.is_element() && node.tag_name().namespace() == Some(namespace) && node.tag_name().name() == name
}

/// Whether the document carries a signature; one anywhere but directly under the root (a
/// signature over one entity of an aggregate, or hidden deeper) is refused.
fn has_signature(document: &Document<'_>) -> Result<bool, String> {
    let root = document.root_element();
    let mut signed = false;
    for signature in root.descendants().filter(|n| is(n, DSIG_NS, "Signature")) {
        if signature.parent_element() != Some(root) || std::mem::replace(&mut signed, true) {
            return Err("has a signature that is not the document's own (one, directly under its root)".into());
        }
    }
    Ok(signed)
}

/// The IdP `wanted`, or the document's only one.
fn read_idp(document: &Document<'_>, wanted: Option<&str>) -> Result<Entry, String> {
    let root = document.root_element();
    if !is(&root, METADATA_NS, "EntityDescriptor") && !is(&root, METADATA_NS, "EntitiesDescriptor") {
        return Err(format!(
            "is not SAML metadata: its root is {}, not an EntityDescriptor or EntitiesDescriptor",
            root.tag_name().name()
        ));
    }
    let idps: Vec<(Node<'_, '_>, &str)> = root
        .descendants()
        .filter(|n| is(n, METADATA_NS, "EntityDescriptor"))
        .filter(|entity| idp_descriptors(entity).next().is_some())
        .map(|entity| (entity, entity.attribute("entityID").unwrap_or_default()))
        .collect();
    let names = || idps.iter().map(|(_, id)| *id).collect::<Vec<_>>().join(", ");
    let (entity, entity_id) = match (wanted.filter(|w| !w.is_empty()), idps.as_slice()) {
        (_, []) => return Err("has no IDPSSODescriptor for SAML 2.0: is it an identity provider's metadata?".into()),
        (Some(wanted), _) => *idps
            .iter()
            .find(|(_, id)| *id == wanted)
            .ok_or_else(|| format!("has no identity provider {wanted}; it describes: {}", names()))?,
        (None, [only]) => *only,
        (None, _) => {
            return Err(format!(
                "describes {} identity providers ({}): set idp_entity_id to the one to use",
                idps.len(),
                names()
            ))
        }
    };
    if entity_id.trim().is_empty() {
        return Err("has no entityID".into());
    }
    let mut certificates = Vec::new();
    let mut sso_url = None;
    let mut slo_url = None;
    for descriptor in idp_descriptors(&entity) {
        for key in descriptor.children().filter(|n| is(n, METADATA_NS, "KeyDescriptor")) {
            // Without `use`, a key is good for signing and encryption (metadata 2.4.1.1).
            if !matches!(key.attribute("use"), None | Some("") | Some("signing")) {
                continue;
            }
            let info = key.children().find(|n| is(n, DSIG_NS, "KeyInfo"));
            for data in info
                .iter()
                .flat_map(|i| i.children())
                .filter(|n| is(n, DSIG_NS, "X509Data"))
            {
                for certificate in data.children().filter(|n| is(n, DSIG_NS, "X509Certificate")) {
                    let text: String = certificate
                        .text()
                        .unwrap_or_default()
                        .chars()
                        .filter(|c| !c.is_ascii_whitespace())
                        .collect();
                    if !certificates.contains(&text) {
                        certificates.push(text);
                    }
                }
            }
        }
        let endpoint = |name: &str| {
            descriptor
                .children()
                .filter(|n| is(n, METADATA_NS, name))
                .find(|n| n.attribute("Binding") == Some(REDIRECT_BINDING))
                .and_then(|n| n.attribute("Location"))
                .map(str::to_string)
        };
        sso_url = sso_url.or_else(|| endpoint("SingleSignOnService"));
        slo_url = slo_url.or_else(|| endpoint("SingleLogoutService"));
    }
    Ok(Entry {
        entity_id: entity_id.to_string(),
        certificates,
        sso_url,
        slo_url,
    })
}

/// The entity's IDPSSODescriptors that speak SAML 2.0.
fn idp_descriptors<'a, 'input>(entity: &Node<'a, 'input>) -> impl Iterator<Item = Node<'a, 'input>> {
    entity.children().filter(|n| {
        is(n, METADATA_NS, "IDPSSODescriptor")
            && n.attribute("protocolSupportEnumeration")
                .is_some_and(|p| p.split_ascii_whitespace().any(|p| p == SAML2_PROTOCOL))
    })
}

fn parse_certificates(texts: &[String]) -> Result<Vec<X509>, String> {
    if texts.is_empty() {
        return Err("has no signing certificate (a KeyDescriptor for signing, or without use, with an X509Certificate): without one no Response signature could be checked".into());
    }
    texts
        .iter()
        .map(|text| {
            let der = BASE64
                .decode(text)
                .map_err(|_| "has a signing certificate that is not base64".to_string())?;
            X509::from_der(&der).map_err(|e| format!("has a signing certificate that does not parse: {e}"))
        })
        .collect()
}

/// The `EntityDescriptor` samael checks Responses against: the entity id and one
/// IDPSSODescriptor with the signing certificates (all marked `use="signing"`, so samael takes
/// every one) and the endpoints the module uses.
fn samael_descriptor(
    entity_id: &str,
    certificates: &[String],
    sso_url: &str,
    slo_url: Option<&str>,
) -> EntityDescriptor {
    let endpoint = |location: &str| Endpoint {
        binding: REDIRECT_BINDING.to_string(),
        location: location.to_string(),
        response_location: None,
    };
    let key_descriptors = certificates
        .iter()
        .map(|certificate| KeyDescriptor {
            key_use: Some("signing".into()),
            key_info: KeyInfo {
                id: None,
                x509_data: Some(X509Data {
                    certificates: vec![certificate.clone()],
                }),
            },
            encryption_methods: None,
        })
        .collect();
    EntityDescriptor {
        entity_id: Some(entity_id.to_string()),
        idp_sso_descriptors: Some(vec![IdpSsoDescriptor {
            id: None,
            valid_until: None,
            cache_duration: None,
            protocol_support_enumeration: Some(SAML2_PROTOCOL.into()),
            error_url: None,
            signature: None,
            key_descriptors,
            organization: None,
            contact_people: Vec::new(),
            artifact_resolution_service: Vec::new(),
            single_logout_services: slo_url.map(endpoint).into_iter().collect(),
            manage_name_id_services: Vec::new(),
            name_id_formats: Vec::new(),
            want_authn_requests_signed: None,
            single_sign_on_services: vec![endpoint(sso_url)],
            name_id_mapping_services: Vec::new(),
            assertion_id_request_services: Vec::new(),
            attribute_profiles: Vec::new(),
            attributes: Vec::new(),
        }]),
        ..EntityDescriptor::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
    const SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/saml")
            .join(name);
        std::fs::read_to_string(path).unwrap()
    }

    fn key(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/saml")
            .join(name);
        std::fs::read(path).unwrap()
    }

    /// The fixture IdP's metadata with an ID and a signature over it by `key_file`.
    fn signed_metadata(key_file: &str, signature_algorithm: &str, digest_algorithm: &str) -> String {
        let template = fixture("signature.xml")
            .trim_end()
            .replace("{{SIGNATURE_ALGORITHM}}", signature_algorithm)
            .replace("{{DIGEST_ALGORITHM}}", digest_algorithm)
            .replace("{{REFERENCE}}", "_md1");
        let xml = fixture("idp-metadata.xml")
            .replace("entityID=", "ID=\"_md1\" entityID=")
            .replacen("<md:IDPSSODescriptor", &format!("{template}<md:IDPSSODescriptor"), 1);
        Crypto::sign_xml(xml, &key(key_file)).unwrap()
    }

    #[test]
    fn metadata_as_idps_publish_it_reads() {
        for (name, signed) in [
            ("okta.xml", false),
            ("entra-id.xml", true),
            ("google-workspace.xml", false),
            ("keycloak.xml", false),
            ("shibboleth.xml", false),
            ("adfs.xml", true),
            ("testshib-providers.xml", false),
        ] {
            let idp = parse_metadata(&fixture(&format!("metadata/{name}")), None, false)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(idp.signed, signed, "{name}");
            assert!(
                !idp.certificates.is_empty() && idp.sso_url.starts_with("http"),
                "{name}"
            );
            assert_eq!(idp.descriptor.entity_id.as_deref(), Some(idp.entity_id.as_str()));
        }
    }

    #[test]
    fn a_key_without_use_signs_and_an_encryption_key_does_not() {
        let xml = fixture("idp-metadata.xml");
        let no_use = parse_metadata(&xml.replace(" use=\"signing\"", ""), None, false).unwrap();
        assert_eq!(no_use.certificates.len(), 1);
        let samael_keys = &no_use.descriptor.idp_sso_descriptors.as_ref().unwrap()[0].key_descriptors;
        assert!(
            samael_keys.iter().all(KeyDescriptor::is_signing),
            "samael is handed it as a signing key"
        );
        let error = parse_metadata(&xml.replace("use=\"signing\"", "use=\"encryption\""), None, false).unwrap_err();
        assert!(error.contains("no signing certificate"), "{error}");
    }

    #[test]
    fn advertised_algorithms_are_not_signature_rules_but_signatures_follow_them() {
        // The Metadata Profile for Algorithm Support, as pysaml2 writes it: MD5 and SHA-1 listed.
        let advertised = fixture("idp-metadata.xml").replacen(
            "<md:IDPSSODescriptor",
            "<md:Extensions><alg:DigestMethod xmlns:alg=\"urn:oasis:names:tc:SAML:metadata:algsupport\" Algorithm=\"http://www.w3.org/2001/04/xmldsig-more#md5\"/><alg:SigningMethod xmlns:alg=\"urn:oasis:names:tc:SAML:metadata:algsupport\" Algorithm=\"http://www.w3.org/2000/09/xmldsig#rsa-sha1\"/></md:Extensions><md:IDPSSODescriptor",
            1,
        );
        parse_metadata(&advertised, None, false).unwrap();

        let good = signed_metadata("idp.key.der", RSA_SHA256, SHA256);
        assert!(parse_metadata(&good, None, false).unwrap().signed);
        let sha1 = signed_metadata(
            "idp.key.der",
            "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
            "http://www.w3.org/2000/09/xmldsig#sha1",
        );
        let error = parse_metadata(&sha1, None, false).unwrap_err();
        assert!(error.contains("algorithm"), "{error}");
        assert!(parse_metadata(&sha1, None, true).unwrap().signed);
    }

    #[test]
    fn a_signature_that_is_present_must_be_the_document_s_own_and_verify() {
        let good = signed_metadata("idp.key.der", RSA_SHA256, SHA256);
        for (bad, says) in [
            (
                good.replace("https://idp.fixture.test/sso", "https://evil.example/sso"),
                "does not verify",
            ),
            (signed_metadata("other.key.der", RSA_SHA256, SHA256), "does not verify"),
            (
                good.replace(
                    "<ds:Signature xmlns",
                    "<md:IDPSSODescriptor protocolSupportEnumeration=\"x\"><ds:Signature xmlns",
                )
                .replace("</ds:Signature>", "</ds:Signature></md:IDPSSODescriptor>"),
                "not the document's own",
            ),
        ] {
            let error = parse_metadata(&bad, None, false).unwrap_err();
            assert!(error.contains(says), "{error}");
        }
        // An aggregate signed by a federation's key (not in the document): refused, with the way out.
        let entity = fixture("idp-metadata.xml");
        let entity = entity.split_once("?>").map_or(entity.as_str(), |(_, rest)| rest);
        let template = fixture("signature.xml")
            .trim_end()
            .replace("{{SIGNATURE_ALGORITHM}}", RSA_SHA256)
            .replace("{{DIGEST_ALGORITHM}}", SHA256)
            .replace("{{REFERENCE}}", "_federation");
        let aggregate = Crypto::sign_xml(
            format!("<md:EntitiesDescriptor xmlns:md=\"{METADATA_NS}\" ID=\"_federation\">{template}{entity}</md:EntitiesDescriptor>"),
            &key("other.key.der"),
        )
        .unwrap();
        let error = parse_metadata(&aggregate, None, false).unwrap_err();
        assert!(
            error.contains("does not verify") && error.contains("give the IdP's own EntityDescriptor"),
            "{error}"
        );
        // Entra ID's published, signed metadata with its SSO URL changed.
        let entra = fixture("metadata/entra-id.xml").replace("/saml2\"", "/saml2-evil\"");
        assert!(parse_metadata(&entra, None, false)
            .unwrap_err()
            .contains("does not verify"));
    }

    #[test]
    fn entities_and_doctypes_and_oversize_documents_are_refused() {
        let xml = fixture("idp-metadata.xml");
        let body = xml.split_once("?>").unwrap().1;
        for (bad, says) in [
            (
                format!(
                    "<!DOCTYPE md [<!ENTITY e \"x\">]>{}",
                    body.replace("https://idp.fixture.test/sso", "&e;")
                ),
                "DOCTYPE",
            ),
            (
                format!("<!DOCTYPE md SYSTEM \"http://127.0.0.1:9/dtd\">{body}"),
                "DOCTYPE",
            ),
            (
                xml.replace("<md:IDPSSODescriptor", "<?evil?><md:IDPSSODescriptor"),
                "processing instruction",
            ),
            (xml.replace("</md:EntityDescriptor>", ""), "well-formed"),
            (
                xml.replace("<md:KeyDescriptor", "<x:KeyDescriptor")
                    .replace("</md:KeyDescriptor", "</x:KeyDescriptor"),
                "well-formed",
            ),
            (
                xml.replace(
                    "</md:EntityDescriptor>",
                    &format!("<!--{}--></md:EntityDescriptor>", "x".repeat(MAX_METADATA)),
                ),
                "more than",
            ),
            (
                "<md:EntityDescriptor xmlns:md=\"urn:other\" entityID=\"x\"/>".into(),
                "not SAML metadata",
            ),
        ] {
            let error = parse_metadata(&bad, None, false).unwrap_err();
            assert!(error.contains(says), "{says}: {error}");
        }
        // Comments are fine in metadata (Shibboleth's opens with one).
        parse_metadata(
            &xml.replace("<md:IDPSSODescriptor", "<!-- note --><md:IDPSSODescriptor"),
            None,
            false,
        )
        .unwrap();
    }

    #[test]
    fn one_idp_is_picked_from_an_entities_descriptor() {
        let entity = |xml: &str| xml.split_once("?>").map_or(xml, |(_, rest)| rest).trim().to_string();
        let both = format!(
            "<md:EntitiesDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\">{}{}</md:EntitiesDescriptor>",
            entity(&fixture("idp-metadata.xml")),
            entity(&fixture("metadata/okta.xml")),
        );
        let error = parse_metadata(&both, None, false).unwrap_err();
        assert!(
            error.contains("2 identity providers")
                && error.contains("https://idp.fixture.test/metadata")
                && error.contains("http://www.okta.com/exkppsa1qwuFV4D7z0h7")
                && error.contains("idp_entity_id"),
            "{error}"
        );
        let okta = parse_metadata(&both, Some("http://www.okta.com/exkppsa1qwuFV4D7z0h7"), false).unwrap();
        assert!(okta.sso_url.contains("oktapreview.com"), "{}", okta.sso_url);
        let error = parse_metadata(&both, Some("https://nobody.example/"), false).unwrap_err();
        assert!(
            error.contains("no identity provider https://nobody.example/"),
            "{error}"
        );
        // TestShib's published aggregate: one IdP beside an SP.
        let testshib = parse_metadata(&fixture("metadata/testshib-providers.xml"), None, false).unwrap();
        assert_eq!(testshib.entity_id, "https://idp.testshib.org/idp/shibboleth");
    }
}
