//! A SAML module's settings: its options as the API and `config.toml` write them, the IdP's
//! metadata read from them, and the module's service-provider side (URLs, key pair, samael's
//! `ServiceProvider`), built once per module and options and then cached.

use crate::metadata::{parse_metadata, Idp};
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use portcullis_plugin_sdk::{option_error, read_options, Host, OptionError, PluginError};
use samael::crypto::{AllowedSignatureAlgorithm, CertificateDer};
use samael::service_provider::ServiceProvider;
use serde::{Deserialize, Serialize};

/// The XML signature algorithms accepted without `allow_sha1`.
pub const STRONG_ALGORITHMS: [AllowedSignatureAlgorithm; 4] = [
    AllowedSignatureAlgorithm::RsaSha256,
    AllowedSignatureAlgorithm::RsaSha384,
    AllowedSignatureAlgorithm::RsaSha512,
    AllowedSignatureAlgorithm::EcdsaSha256,
];
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
pub const OUTPUTS: [&str; 9] = [
    "entity_id",
    "assertion_consumer_service_url",
    "single_logout_url",
    "request_signing_certificate_pem",
    "metadata_url",
    "idp_single_sign_on_url",
    "idp_single_logout_url",
    "idp_signing_certificates_sha256",
    "idp_metadata_signed",
];
/// Tolerated clock difference with the IdP, in seconds.
pub const CLOCK_SKEW: i64 = 60;
/// How old a Response may be when it arrives, in seconds.
pub const MAX_ISSUE_DELAY: i64 = 120;
/// Key of the module's SP key pair in the host's store.
const KEYPAIR_KEY: &str = "sp-keypair";

/// The assertion attributes read for a user's email when `email_attribute` is not set: the
/// names real IdPs use (Okta's and Google's usual custom `email`; LDAP `mail` as a name and as
/// its OID, as Shibboleth and pysaml2 send it; PKCS #9 `emailAddress`, Keycloak's X500 mapper;
/// the claim URIs of Entra ID and AD FS). The first of these the assertion carries counts.
pub const EMAIL_ATTRIBUTES: [&str; 7] = [
    "email",
    "mail",
    "urn:oid:0.9.2342.19200300.100.1.3",
    "urn:oid:1.2.840.113549.1.9.1",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
    "http://schemas.xmlsoap.org/claims/EmailAddress",
    "emailAddress",
];
/// Likewise for the display name (`displayName` and `cn`, by name and OID; Entra ID's display
/// name claim; AD FS's common name). Not `.../claims/name`: Entra ID puts the UPN there.
pub const NAME_ATTRIBUTES: [&str; 7] = [
    "name",
    "displayName",
    "urn:oid:2.16.840.1.113730.3.1.241",
    "http://schemas.microsoft.com/identity/claims/displayname",
    "cn",
    "urn:oid:2.5.4.3",
    "http://schemas.xmlsoap.org/claims/CommonName",
];
/// Likewise for group memberships (`isMemberOf` by name and OID, Active Directory's `memberOf`
/// by name and OID, Entra ID's and AD FS's group claims). Roles are not groups: name a role
/// attribute in `groups_attribute` to use it.
pub const GROUPS_ATTRIBUTES: [&str; 7] = [
    "groups",
    "isMemberOf",
    "urn:oid:1.3.6.1.4.1.5923.1.5.1.1",
    "memberOf",
    "urn:oid:1.2.840.113556.1.2.102",
    "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups",
    "http://schemas.xmlsoap.org/claims/Group",
];

/// The module's options (ngrok's fields, plus the attribute names a deployment needs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The IdP's metadata: its `EntityDescriptor` XML, or an `EntitiesDescriptor` holding it.
    pub idp_metadata: String,
    /// Which IdP of an `EntitiesDescriptor` to trust (needed when it describes several).
    #[serde(default)]
    pub idp_entity_id: Option<String>,
    #[serde(default)]
    pub force_authn: bool,
    #[serde(default)]
    pub allow_idp_initiated: bool,
    /// When set, only members of one of these groups may sign in.
    #[serde(default)]
    pub authorized_groups: Vec<String>,
    #[serde(default)]
    pub nameid_format: Option<String>,
    /// The assertion attribute (its Name or FriendlyName) that lists the user's groups; unset,
    /// the first of [`GROUPS_ATTRIBUTES`] the assertion carries.
    #[serde(default)]
    pub groups_attribute: Option<String>,
    /// Likewise for the email ([`EMAIL_ATTRIBUTES`]).
    #[serde(default)]
    pub email_attribute: Option<String>,
    /// Likewise for the display name ([`NAME_ATTRIBUTES`]).
    #[serde(default)]
    pub name_attribute: Option<String>,
    /// Accepts RSA-SHA1 signatures and SHA-1 digests (off: SHA-1 is broken).
    #[serde(default)]
    pub allow_sha1: bool,
}

/// The attribute names that may carry one identity field: the one the option names, or the
/// well-known ones.
fn names_for<'a>(option: &'a Option<String>, known: &'a [&'static str]) -> Vec<&'a str> {
    match option.as_deref() {
        Some(name) if !name.is_empty() => vec![name],
        _ => known.to_vec(),
    }
}

impl Options {
    /// The NameID format asked for (ngrok's clients send `""` for "the default").
    pub fn nameid_format(&self) -> &str {
        match self.nameid_format.as_deref() {
            None | Some("") => NAMEID_FORMATS[0],
            Some(format) => format,
        }
    }

    /// The attribute names read for the email, in order of preference.
    pub fn email_attributes(&self) -> Vec<&str> {
        names_for(&self.email_attribute, &EMAIL_ATTRIBUTES)
    }

    /// The attribute names read for the display name, in order of preference.
    pub fn name_attributes(&self) -> Vec<&str> {
        names_for(&self.name_attribute, &NAME_ATTRIBUTES)
    }

    /// The attribute names read for the groups, in order of preference.
    pub fn groups_attributes(&self) -> Vec<&str> {
        names_for(&self.groups_attribute, &GROUPS_ATTRIBUTES)
    }
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
        if value.as_deref().is_some_and(|v| !v.is_empty() && v.trim().is_empty()) {
            return Err(option_error(
                key,
                "must name an attribute (or be left out for the usual names)",
            ));
        }
    }
    let idp = parse_metadata(&parsed.idp_metadata, parsed.idp_entity_id.as_deref(), parsed.allow_sha1)
        .map_err(|m| option_error("idp_metadata", m))?;
    Ok((parsed, idp))
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
        let allowed = (!options.allow_sha1).then(|| STRONG_ALGORITHMS.to_vec());
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
        let fingerprints: Vec<String> = self
            .idp
            .certificates
            .iter()
            .filter_map(|c| c.digest(openssl::hash::MessageDigest::sha256()).ok())
            .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        serde_json::json!({
            "idp_entity_id": self.idp.entity_id,
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
            "idp_single_sign_on_url": self.idp.sso_url,
            "idp_single_logout_url": self.idp.slo_url,
            "idp_signing_certificates_sha256": fingerprints,
            "idp_metadata_signed": self.idp.signed,
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
