//! A SAML module's settings: its options as the API and `config.toml` write them, the IdP's
//! metadata read from them, and the module's service-provider side (URLs, key pair, samael's
//! `ServiceProvider`), built once per module and options and then cached.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use portcullis_plugin_sdk::{option_error, read_options, Host, OptionError, PluginError};
use samael::crypto::{AllowedSignatureAlgorithm, CertificateDer};
use samael::metadata::EntityDescriptor;
use samael::service_provider::ServiceProvider;
use serde::{Deserialize, Serialize};

const REDIRECT_BINDING: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";
/// NameID formats SAML 2.0 (core, section 8.3) defines for subjects. `entity` is left out: it
/// names providers, not people.
pub const NAMEID_FORMATS: [&str; 7] = [
    "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
    "urn:oasis:names:tc:SAML:2.0:nameid-format:transient",
    "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
    "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
    "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName",
    "urn:oasis:names:tc:SAML:1.1:nameid-format:WindowsDomainQualifiedName",
    "urn:oasis:names:tc:SAML:2.0:nameid-format:kerberos",
];
/// The read-only fields the gateway computes; writing them is refused.
pub const OUTPUTS: [&str; 5] = [
    "entity_id",
    "assertion_consumer_service_url",
    "single_logout_url",
    "request_signing_certificate_pem",
    "metadata_url",
];
/// Tolerated clock difference with the IdP, in seconds.
pub const CLOCK_SKEW: i64 = 60;
/// How old a Response may be when it arrives, in seconds.
pub const MAX_ISSUE_DELAY: i64 = 120;
/// Key of the module's SP key pair in the host's store.
const KEYPAIR_KEY: &str = "sp-keypair";

/// The module's options (ngrok's fields, plus the attribute names a deployment needs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The IdP's metadata: its full `EntityDescriptor` XML.
    pub idp_metadata: String,
    #[serde(default)]
    pub force_authn: bool,
    #[serde(default)]
    pub allow_idp_initiated: bool,
    /// When set, only members of one of these groups may sign in.
    #[serde(default)]
    pub authorized_groups: Vec<String>,
    #[serde(default)]
    pub nameid_format: Option<String>,
    /// The assertion attribute that lists the user's groups.
    #[serde(default = "default_groups_attribute")]
    pub groups_attribute: String,
    #[serde(default = "default_email_attribute")]
    pub email_attribute: String,
    #[serde(default = "default_name_attribute")]
    pub name_attribute: String,
    /// Accepts RSA-SHA1 signatures and SHA-1 digests (off: SHA-1 is broken).
    #[serde(default)]
    pub allow_sha1: bool,
}

fn default_groups_attribute() -> String {
    "groups".into()
}
fn default_email_attribute() -> String {
    "email".into()
}
fn default_name_attribute() -> String {
    "name".into()
}

impl Options {
    /// The NameID format asked for (ngrok's clients send `""` for "the default").
    pub fn nameid_format(&self) -> &str {
        match self.nameid_format.as_deref() {
            None | Some("") => NAMEID_FORMATS[0],
            Some(format) => format,
        }
    }
}

/// What the module needs of the IdP's metadata.
#[derive(Clone)]
pub struct Idp {
    pub entity_id: String,
    pub certificates: Vec<X509>,
    pub sso_url: String,
    /// The IdP's SingleLogoutService (HTTP-Redirect), when it has one.
    pub slo_url: Option<String>,
    pub descriptor: EntityDescriptor,
}

/// Parses and checks the options.
pub fn parse_options(options: &serde_json::Value) -> Result<(Options, Idp), Vec<OptionError>> {
    let parsed: Options = read_options(options, &OUTPUTS, &[("idp_metadata", "the IdP's EntityDescriptor XML")])?;
    if !NAMEID_FORMATS.contains(&parsed.nameid_format()) {
        return Err(option_error(
            "nameid_format",
            format!(
                "`{}` is not a SAML 2.0 subject NameID format; use one of {}",
                parsed.nameid_format(),
                NAMEID_FORMATS.join(", ")
            ),
        ));
    }
    for (key, value) in [
        ("groups_attribute", &parsed.groups_attribute),
        ("email_attribute", &parsed.email_attribute),
        ("name_attribute", &parsed.name_attribute),
    ] {
        if value.trim().is_empty() {
            return Err(option_error(key, "must not be empty"));
        }
    }
    let idp = parse_metadata(&parsed.idp_metadata).map_err(|m| option_error("idp_metadata", m))?;
    Ok((parsed, idp))
}

/// Reads the IdP's `EntityDescriptor`: its entity id, signing certificates (required: without
/// one samael would check no signature) and SSO/SLO endpoints.
pub fn parse_metadata(xml: &str) -> Result<Idp, String> {
    crate::xml::screen(xml, true).map_err(|e| format!("is not acceptable metadata: {e}"))?;
    let descriptor: EntityDescriptor = xml
        .parse()
        .map_err(|e| format!("is not a SAML EntityDescriptor: {e}"))?;
    let entity_id = descriptor
        .entity_id
        .clone()
        .filter(|id| !id.is_empty())
        .ok_or("has no entityID")?;
    let idp = descriptor
        .idp_sso_descriptors
        .as_ref()
        .and_then(|d| d.first())
        .ok_or("has no IDPSSODescriptor: is it an identity provider's metadata?")?;
    let mut certificates = Vec::new();
    for descriptor in idp.key_descriptors.iter().filter(|k| k.is_signing()) {
        for text in descriptor.key_info.x509_data.iter().flat_map(|d| d.certificates.iter()) {
            let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let der = BASE64
                .decode(compact)
                .map_err(|_| "has a signing certificate that is not base64".to_string())?;
            certificates
                .push(X509::from_der(&der).map_err(|e| format!("has a signing certificate that does not parse: {e}"))?);
        }
    }
    if certificates.is_empty() {
        return Err("has no signing certificate (a KeyDescriptor with an X509Certificate): without one no Response signature could be checked".into());
    }
    let sso_url = idp
        .single_sign_on_services
        .iter()
        .find(|s| s.binding == REDIRECT_BINDING)
        .map(|s| s.location.clone())
        .ok_or("has no SingleSignOnService with the HTTP-Redirect binding")?;
    let slo_url = idp
        .single_logout_services
        .iter()
        .find(|s| s.binding == REDIRECT_BINDING)
        .map(|s| s.location.clone());
    Ok(Idp {
        entity_id,
        certificates,
        sso_url,
        slo_url,
        descriptor,
    })
}

/// The module's SP key pair, kept in the host's store.
#[derive(Serialize, Deserialize)]
struct KeyPairPem {
    key_pem: String,
    cert_pem: String,
}

/// A module, ready to serve: options, IdP, URLs and keys.
pub struct Module {
    pub options_json: String,
    pub origin: String,
    pub options: Options,
    pub idp: Idp,
    pub entity_id: String,
    pub acs_url: String,
    pub slo_url: String,
    pub key: PKey<Private>,
    pub cert_pem: String,
    pub sp: ServiceProvider,
}

impl Module {
    /// Builds the module of `context`, making its key pair on first use.
    pub fn build(host: &dyn Host, context: &portcullis_plugin_sdk::ModuleContext) -> Result<Module, PluginError> {
        let value: serde_json::Value = serde_json::from_str(&context.options_json)
            .map_err(|e| PluginError::Internal(format!("module options: {e}")))?;
        let (options, idp) = parse_options(&value).map_err(|errors| {
            PluginError::Internal(format!(
                "stored options do not validate: {}",
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.key, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })?;
        let base = format!("{}{}", context.origin, context.mount_path);
        let entity_id = format!("{base}/metadata");
        let (key, cert) = key_pair(host)?;
        let cert_pem = String::from_utf8(cert.to_pem().map_err(internal)?).map_err(internal)?;
        let allowed = (!options.allow_sha1).then(|| {
            vec![
                AllowedSignatureAlgorithm::RsaSha256,
                AllowedSignatureAlgorithm::RsaSha384,
                AllowedSignatureAlgorithm::RsaSha512,
                AllowedSignatureAlgorithm::EcdsaSha256,
            ]
        });
        let sp = ServiceProvider {
            entity_id: Some(entity_id.clone()),
            key: Some(key.clone()),
            certificate: Some(CertificateDer::from(cert.to_der().map_err(internal)?)),
            intermediates: None,
            metadata_url: Some(entity_id.clone()),
            acs_url: Some(format!("{base}/acs")),
            slo_url: Some(format!("{base}/slo")),
            idp_metadata: idp.descriptor.clone(),
            authn_name_id_format: Some(options.nameid_format().to_string()),
            metadata_valid_duration: None,
            force_authn: options.force_authn,
            // InResponseTo is checked by this plugin against its own store (see `acs`).
            allow_idp_initiated: true,
            contact_person: None,
            max_issue_delay: chrono::Duration::seconds(MAX_ISSUE_DELAY),
            max_clock_skew: chrono::Duration::seconds(CLOCK_SKEW),
            allowed_signature_algorithms: allowed,
        };
        Ok(Module {
            options_json: context.options_json.clone(),
            origin: context.origin.clone(),
            acs_url: format!("{base}/acs"),
            slo_url: format!("{base}/slo"),
            entity_id,
            options,
            idp,
            key,
            cert_pem,
            sp,
        })
    }

    /// What the API shows besides the stored options: every option with its default filled
    /// in, and the read-only outputs.
    pub fn outputs(&self) -> serde_json::Value {
        let o = &self.options;
        serde_json::json!({
            "force_authn": o.force_authn,
            "allow_idp_initiated": o.allow_idp_initiated,
            "authorized_groups": o.authorized_groups,
            "nameid_format": o.nameid_format(),
            "groups_attribute": o.groups_attribute,
            "email_attribute": o.email_attribute,
            "name_attribute": o.name_attribute,
            "allow_sha1": o.allow_sha1,
            "entity_id": self.entity_id,
            "metadata_url": self.entity_id,
            "assertion_consumer_service_url": self.acs_url,
            "single_logout_url": self.slo_url,
            "request_signing_certificate_pem": self.cert_pem,
        })
    }
}

fn internal(e: impl std::fmt::Display) -> PluginError {
    PluginError::Internal(e.to_string())
}

/// The module's key pair: read from the store, or made (RSA-2048, a self-signed certificate
/// valid for ten years) and stored on first use. Stays the same across restarts and option
/// changes; of two first uses at once, both keep the first stored pair.
fn key_pair(host: &dyn Host) -> Result<(PKey<Private>, X509), PluginError> {
    let stored = match host.kv_get(KEYPAIR_KEY) {
        Some(bytes) => bytes,
        None => {
            let fresh = serde_json::to_vec(&new_key_pair(host)?).map_err(internal)?;
            host.kv_get_or_insert(KEYPAIR_KEY, &fresh)
                .ok_or_else(|| PluginError::Internal("the SP key pair could not be stored".into()))?
        }
    };
    let pem: KeyPairPem = serde_json::from_slice(&stored).map_err(internal)?;
    let key = PKey::private_key_from_pem(pem.key_pem.as_bytes()).map_err(internal)?;
    let cert = X509::from_pem(pem.cert_pem.as_bytes()).map_err(internal)?;
    Ok((key, cert))
}

fn new_key_pair(host: &dyn Host) -> Result<KeyPairPem, PluginError> {
    use openssl::asn1::{Asn1Integer, Asn1Time};
    use openssl::bn::BigNum;
    use openssl::hash::MessageDigest;
    use openssl::rsa::Rsa;
    use openssl::x509::{X509Builder, X509NameBuilder};
    let key = PKey::from_rsa(Rsa::generate(2048).map_err(internal)?).map_err(internal)?;
    let mut name = X509NameBuilder::new().map_err(internal)?;
    name.append_entry_by_text("CN", "Portcullis SAML service provider")
        .map_err(internal)?;
    let name = name.build();
    let mut builder = X509Builder::new().map_err(internal)?;
    builder.set_version(2).map_err(internal)?;
    let serial = BigNum::from_slice(&host.random(16)).map_err(internal)?;
    let serial = Asn1Integer::from_bn(&serial).map_err(internal)?;
    builder.set_serial_number(&serial).map_err(internal)?;
    builder.set_subject_name(&name).map_err(internal)?;
    builder.set_issuer_name(&name).map_err(internal)?;
    builder.set_pubkey(&key).map_err(internal)?;
    let now = host.now_unix();
    let not_before = Asn1Time::from_unix(now - 3600).map_err(internal)?;
    let not_after = Asn1Time::from_unix(now + 10 * 365 * 24 * 3600).map_err(internal)?;
    builder.set_not_before(&not_before).map_err(internal)?;
    builder.set_not_after(&not_after).map_err(internal)?;
    builder.sign(&key, MessageDigest::sha256()).map_err(internal)?;
    let cert = builder.build();
    Ok(KeyPairPem {
        key_pem: String::from_utf8(key.private_key_to_pem_pkcs8().map_err(internal)?).map_err(internal)?,
        cert_pem: String::from_utf8(cert.to_pem().map_err(internal)?).map_err(internal)?,
    })
}
