//! `saml`: the Portcullis SAML 2.0 Service Provider plugin. It protects an edge route with an
//! identity provider's single sign-on, built on samael (with xmlsec) and hardened where samael
//! leaves the work to its caller (see `../shared`-free notes in `ARCHITECTURE.md`).
//!
//! Endpoints, under the route's mount path `/_portcullis/auth/<route id>` on its host:
//! - `GET  …/metadata`: the SP metadata (also the SP's entity id);
//! - `POST …/acs`: the Assertion Consumer Service (HTTP-POST binding);
//! - `GET  …/slo`: Single Logout (HTTP-Redirect binding), both the IdP's answer to a logout
//!   this SP started and a logout the IdP starts.
//!
//! What it checks beyond samael: a message is screened before libxml2 sees it (no DOCTYPE,
//! comments, CDATA, foreign references, transforms or algorithms, see [`xml::screen`]); the
//! assertion must carry an AudienceRestriction naming this SP; `InResponseTo` must name a
//! request this module made (kept in the host's store, used once), and a Response without one
//! (IdP-initiated) is taken only when `allow_idp_initiated` is set, with a RelayState on the
//! route's own origin; an assertion ID is accepted once; `authorized_groups` is enforced.
//! AuthnRequest IDs carry 128 random bits.

mod metadata;
mod module;
pub mod xml;

use module::Module;
use portcullis_plugin_sdk::{
    form_value, Capability, Host, HttpRequest, HttpResponse, Identity, LogLevel, ModuleContext, ModulePlan,
    OptionError, Outcome, Plugin, PluginError, PluginInfo,
};
use samael::crypto::ReduceMode;
use samael::schema::Assertion;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// How long a sign-in or sign-out this SP started may take at the IdP, in seconds.
const REQUEST_TTL: u64 = 600;
/// Longest RelayState accepted.
const MAX_RELAY_STATE: usize = 4096;
const SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";

/// The plugin. Modules are built once per options and cached.
#[derive(Default)]
pub struct Saml {
    modules: Mutex<HashMap<String, Arc<Module>>>,
}

/// A sign-in this SP started, kept under its request ID until the IdP answers.
#[derive(Serialize, Deserialize)]
struct Pending {
    return_to: String,
    /// The value of the browser's binding cookie (https origins).
    binding: Option<String>,
}

/// The name of the cookie that binds a sign-in to its browser (`__Host-`: host-only, Secure,
/// path `/`), distinct per module.
fn binding_cookie(entity_id: &str) -> String {
    let digest = openssl::sha::sha256(entity_id.as_bytes());
    let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("__Host-portcullis-saml-{short}")
}

/// What a session keeps for Single Logout.
#[derive(Serialize, Deserialize)]
struct SessionData {
    name_id: String,
    format: Option<String>,
    session_index: Option<String>,
}

impl Saml {
    fn module(&self, host: &dyn Host, context: &ModuleContext) -> Result<Arc<Module>, PluginError> {
        let cached = self
            .modules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&context.module_id)
            .filter(|m| m.options_json == context.options_json && m.origin == context.origin)
            .cloned();
        if let Some(module) = cached {
            return Ok(module);
        }
        let module = Arc::new(Module::build(host, context)?);
        self.modules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(context.module_id.clone(), module.clone());
        Ok(module)
    }

    /// The Assertion Consumer Service: a Response over HTTP-POST.
    fn acs(&self, host: &dyn Host, module: &Module, request: &HttpRequest) -> Result<Outcome, PluginError> {
        if request.method != "POST" {
            return Err(PluginError::BadRequest(
                "The sign-in response must be posted by the identity provider's form.".into(),
            ));
        }
        let body = String::from_utf8_lossy(&request.body);
        let encoded = form_value(&body, "SAMLResponse")
            .ok_or_else(|| PluginError::BadRequest("The request carries no SAML response.".into()))?;
        let relay_state = form_value(&body, "RelayState").unwrap_or_default();
        let refuse = |why: String| {
            host.log(LogLevel::Warn, &format!("SAML response refused: {why}"));
            PluginError::BadRequest(
                "The sign-in response from the identity provider was not accepted. Try signing in again.".into(),
            )
        };
        let compact: String = encoded.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, compact)
            .map_err(|_| refuse("SAMLResponse is not base64".into()))?;
        let response_xml = String::from_utf8(bytes).map_err(|_| refuse("SAMLResponse is not UTF-8".into()))?;
        xml::screen(&response_xml, module.options.allow_sha1).map_err(refuse)?;
        // A signed Response names where it was sent (SAML bindings 3.5.5.2); samael compares a
        // Destination only when there is one.
        if xml::check_signatures(&response_xml).map_err(refuse)?
            && xml::root_attribute(&response_xml, "Destination").as_deref() != Some(module.acs_url.as_str())
        {
            return Err(refuse("a signed Response without this ACS as its Destination".into()));
        }
        let statuses = xml::status_codes(&response_xml);
        if statuses.first().map(String::as_str) != Some(SUCCESS) {
            host.log(
                LogLevel::Warn,
                &format!("the IdP answered with status {}", statuses.join(" / ")),
            );
            // Unverified (IdPs often leave error Responses unsigned): it only picks the page.
            let return_to = xml::root_attribute(&response_xml, "InResponseTo")
                .and_then(|id| host.kv_get(&format!("authn:{id}")))
                .and_then(|stored| serde_json::from_slice::<Pending>(&stored).ok())
                .map_or_else(|| "/".to_string(), |p| p.return_to);
            return Ok(Outcome::Respond(status_page(&statuses, &return_to)));
        }
        // PreDigest: samael verifies every signature, then hands on exactly the bytes the
        // Response's signature (or, if only the Assertion is signed, the Assertion's) covers, as
        // xmlsec canonicalised and hashed them; nothing unsigned survives, and no second pass
        // prunes a copy of the document (a quarter of a login's CPU).
        let assertion = module
            .sp
            .parse_xml_response_with_mode(&response_xml, None, ReduceMode::PreDigest)
            .map_err(|e| refuse(format!("{e}")))?;
        check_audience(&assertion, &module.entity_id).map_err(refuse)?;

        // samael refuses old assertions, not ones from the future.
        let now = host.now_unix();
        if assertion.issue_instant.timestamp() > now + module::CLOCK_SKEW {
            return Err(refuse(format!(
                "the assertion is issued in the future ({})",
                assertion.issue_instant
            )));
        }
        // The bearer confirmation samael checked: the one addressed to this ACS.
        let confirmation = assertion
            .subject
            .iter()
            .flat_map(|s| s.subject_confirmations.iter().flatten())
            .filter(|c| c.method.as_deref() == Some("urn:oasis:names:tc:SAML:2.0:cm:bearer"))
            .filter_map(|c| c.subject_confirmation_data.as_ref())
            .find(|d| d.recipient.as_deref() == Some(module.acs_url.as_str()))
            .ok_or_else(|| refuse("no bearer confirmation for this ACS".into()))?;

        // Everything that can refuse this browser is checked before anything is spent: a
        // Response refused here (another browser's, an off-site RelayState) leaves the request
        // and the assertion to the browser they belong to.
        let unknown_request = |id: &str| {
            host.log(
                LogLevel::Warn,
                &format!("SAML response to unknown or used request {id}"),
            );
            PluginError::BadRequest(
                "This sign-in response does not answer a sign-in started here, or was already used. Try signing in again.".into(),
            )
        };
        // SP-initiated: InResponseTo names a request of ours, made by this browser.
        let in_response_to = confirmation.in_response_to.clone();
        let (return_to, pending_key) = match in_response_to {
            Some(id) => {
                let key = format!("authn:{id}");
                let stored = host.kv_get(&key).ok_or_else(|| unknown_request(&id))?;
                let pending: Pending =
                    serde_json::from_slice(&stored).map_err(|e| PluginError::Internal(e.to_string()))?;
                if let Some(binding) = &pending.binding {
                    if request.cookie(&binding_cookie(&module.entity_id)) != Some(binding.as_str()) {
                        host.log(
                            LogLevel::Warn,
                            &format!("SAML response to request {id} came from another browser"),
                        );
                        return Err(PluginError::BadRequest(
                            "This sign-in response belongs to a sign-in started in another browser. Try signing in again.".into(),
                        ));
                    }
                }
                (pending.return_to, Some((key, stored, id)))
            }
            None if !module.options.allow_idp_initiated => {
                host.log(
                    LogLevel::Warn,
                    "IdP-initiated SAML response refused: not allowed on this route",
                );
                return Err(PluginError::BadRequest(
                    "Sign-in started at the identity provider is not allowed for this application. Open the application's address to sign in.".into(),
                ));
            }
            None => {
                let target = relay_target(&relay_state, &module.origin).ok_or_else(|| {
                    host.log(
                        LogLevel::Warn,
                        "IdP-initiated SAML response refused: RelayState points off the route's host",
                    );
                    PluginError::BadRequest(
                        "The identity provider asked to send you to an address outside this application.".into(),
                    )
                })?;
                (target, None)
            }
        };

        // Replay: an assertion is taken once, remembered for as long as any check would still
        // let it through.
        let valid_until = [
            assertion.conditions.as_ref().and_then(|c| c.not_on_or_after),
            confirmation.not_on_or_after,
        ]
        .into_iter()
        .flatten()
        .map(|t| t.timestamp())
        .chain([assertion.issue_instant.timestamp() + module::MAX_ISSUE_DELAY])
        .max()
        .unwrap_or(now);
        let ttl = u64::try_from(valid_until + module::CLOCK_SKEW - now)
            .unwrap_or(0)
            .clamp(60, 7 * 86_400);
        if host.kv_incr(&format!("assertion:{}", assertion.id), Some(ttl)) > 1 {
            return Err(refuse(format!("assertion {} was already used", assertion.id)));
        }
        // The request is answered once: of two posts at once, one takes it.
        if let Some((key, stored, id)) = pending_key {
            if host.kv_take(&key).as_deref() != Some(stored.as_slice()) {
                return Err(unknown_request(&id));
            }
        }
        let identity = identity_of(&assertion, module)?;
        let authorized = &module.options.authorized_groups;
        if !authorized.is_empty() && !identity.groups.iter().any(|g| authorized.contains(g)) {
            host.log(
                LogLevel::Info,
                &format!("{} is in none of the authorized groups", identity.subject),
            );
            return Err(PluginError::Forbidden(
                "You do not have access to this application.".into(),
            ));
        }
        Ok(Outcome::LoggedIn { identity, return_to })
    }

    /// Single Logout over HTTP-Redirect: the IdP's answer to our LogoutRequest, or its own.
    fn slo(&self, host: &dyn Host, module: &Module, request: &HttpRequest) -> Result<Outcome, PluginError> {
        let query = request.query.as_deref().unwrap_or_default();
        if form_value(query, "SAMLRequest").is_none() && form_value(query, "SAMLResponse").is_none() {
            return Err(PluginError::BadRequest(
                "This sign-out address expects a SAML message (HTTP-Redirect binding).".into(),
            ));
        }
        let refuse = |why: String| {
            host.log(LogLevel::Warn, &format!("SAML logout message refused: {why}"));
            PluginError::BadRequest("The sign-out message from the identity provider was not accepted.".into())
        };
        let allow_sha1 = module.options.allow_sha1;
        let verified = xml::verify_redirect(query, &module.idp.certificates, allow_sha1).map_err(refuse)?;
        let kind = verified.kind;
        let message = xml::inflate_base64(&verified.message).map_err(refuse)?;
        xml::screen(&message, allow_sha1).map_err(refuse)?;
        if xml::element_text(&message, "Issuer").as_deref() != Some(module.idp.entity_id.as_str()) {
            return Err(refuse("the Issuer is not the module's IdP".into()));
        }
        // The binding requires a Destination on signed messages: it must be this SP's SLO.
        let destination = xml::root_attribute(&message, "Destination").unwrap_or_default();
        if destination != module.slo_url {
            return Err(refuse(format!("Destination {destination:?} is not {}", module.slo_url)));
        }
        if kind == "SAMLResponse" {
            let answered = xml::root_attribute(&message, "InResponseTo").unwrap_or_default();
            if host.kv_take(&format!("logout:{answered}")).is_none() {
                return Err(refuse(format!(
                    "LogoutResponse to unknown or used request {answered:?}"
                )));
            }
            let status = xml::status_codes(&message).into_iter().next().unwrap_or_default();
            let note = if status == SUCCESS {
                String::new()
            } else {
                format!(
                    " The identity provider reported <code>{}</code>: you may still be signed in there.",
                    xml::escape(&status)
                )
            };
            return Ok(Outcome::Respond(HttpResponse::page(
                200,
                "Signed out",
                &format!("You are signed out of this site.{note}"),
            )));
        }
        if xml::element_name(&message).as_deref() != Some("LogoutRequest") {
            return Err(refuse("SAMLRequest is not a LogoutRequest".into()));
        }
        check_fresh(&message, host.now_unix()).map_err(refuse)?;
        let id = xml::root_attribute(&message, "ID").ok_or_else(|| refuse("no ID".into()))?;
        if host.kv_incr(&format!("logout-request:{id}"), Some(2 * REQUEST_TTL)) > 1 {
            return Err(refuse(format!("LogoutRequest {id} was already used")));
        }
        let name_id = xml::element_text(&message, "NameID").ok_or_else(|| refuse("no NameID".into()))?;
        let idp_slo = module
            .idp
            .slo_url
            .clone()
            .ok_or_else(|| refuse("the IdP's metadata has no SingleLogoutService to answer to".into()))?;
        let answer = format!(
            "<samlp:LogoutResponse xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" \
xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\" ID=\"{}\" Version=\"2.0\" IssueInstant=\"{}\" \
Destination=\"{}\" InResponseTo=\"{}\"><saml:Issuer>{}</saml:Issuer><samlp:Status>\
<samlp:StatusCode Value=\"{SUCCESS}\"/></samlp:Status></samlp:LogoutResponse>",
            new_id(host),
            instant(host.now_unix()),
            xml::escape(&idp_slo),
            xml::escape(&id),
            xml::escape(&module.entity_id),
        );
        let url = xml::signed_redirect(
            &idp_slo,
            "SAMLResponse",
            &answer,
            verified.relay_state.as_deref(),
            &module.key,
        )
        .map_err(PluginError::Internal)?;
        // Without a SessionIndex the request ends every session of the user (SAML core 3.7.3.2).
        let mut session_indexes = xml::element_texts(&message, "SessionIndex", usize::MAX)
            .ok_or_else(|| refuse("malformed SessionIndex".into()))?;
        session_indexes.retain(|index| !index.is_empty());
        Ok(Outcome::EndSessions {
            subject: subject_of(&module.idp.entity_id, &name_id),
            session_indexes,
            response: HttpResponse::redirect(&url),
        })
    }
}

impl Plugin for Saml {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "saml".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "SAML 2.0 service provider: single sign-on with an identity provider's metadata".into(),
            capabilities: vec![Capability::BrowserLogin],
            provisioning_path: None,
        }
    }

    fn validate_options(&self, options: &serde_json::Value) -> Result<ModulePlan, Vec<OptionError>> {
        module::parse_options(options).map(|_| ModulePlan::default())
    }

    fn describe_module(&self, host: &dyn Host, context: &ModuleContext) -> Result<serde_json::Value, PluginError> {
        Ok(self.module(host, context)?.outputs())
    }

    fn start_login(
        &self,
        host: &dyn Host,
        context: &ModuleContext,
        return_to: &str,
        request: &HttpRequest,
    ) -> Result<HttpResponse, PluginError> {
        let module = self.module(host, context)?;
        let mut authn = module
            .sp
            .make_authentication_request(&module.idp.sso_url)
            .map_err(|e| PluginError::Internal(format!("AuthnRequest: {e}")))?;
        // samael's own IDs carry 32 random bits.
        authn.id = new_id(host);
        // On https the request is bound to this browser by a cookie the IdP's form post carries
        // back (SameSite=None: that post is cross-site). One value per browser, so that sign-ins
        // started in several tabs all complete.
        let cookie = binding_cookie(&module.entity_id);
        let binding = module.origin.starts_with("https://").then(|| {
            request
                .cookie(&cookie)
                .filter(|v| v.len() == 33 && v.starts_with('_'))
                .map_or_else(|| new_id(host), str::to_string)
        });
        let pending = Pending {
            return_to: return_to.to_string(),
            binding: binding.clone(),
        };
        let stored = serde_json::to_vec(&pending).map_err(|e| PluginError::Internal(e.to_string()))?;
        host.kv_put(&format!("authn:{}", authn.id), &stored, Some(REQUEST_TTL));
        let url = authn
            .signed_redirect("", &module.key)
            .map_err(|e| PluginError::Internal(format!("signing the AuthnRequest: {e}")))?
            .ok_or_else(|| PluginError::Internal("the AuthnRequest has no destination".into()))?;
        let mut response = HttpResponse::redirect(url.as_str());
        if let Some(binding) = binding {
            response.headers.push((
                "set-cookie".into(),
                format!("{cookie}={binding}; Path=/; Max-Age={REQUEST_TTL}; HttpOnly; Secure; SameSite=None"),
            ));
        }
        Ok(response)
    }

    fn handle(&self, host: &dyn Host, context: &ModuleContext, request: &HttpRequest) -> Result<Outcome, PluginError> {
        let module = self.module(host, context)?;
        let endpoint = request.path.strip_prefix(&context.mount_path).unwrap_or_default();
        match endpoint {
            "/metadata" => Ok(Outcome::Respond(HttpResponse {
                status: 200,
                headers: vec![
                    ("content-type".into(), "application/samlmetadata+xml".into()),
                    ("cache-control".into(), "max-age=300".into()),
                ],
                body: sp_metadata(&module, host.now_unix()).into_bytes(),
            })),
            "/acs" => self.acs(host, &module, request),
            "/slo" => self.slo(host, &module, request),
            _ => Ok(Outcome::Respond(HttpResponse::page(
                404,
                "Not found",
                "This sign-in module has nothing at this address.",
            ))),
        }
    }

    fn logout(
        &self,
        host: &dyn Host,
        context: &ModuleContext,
        identity: &Identity,
    ) -> Result<Option<HttpResponse>, PluginError> {
        let module = self.module(host, context)?;
        let Some(destination) = &module.idp.slo_url else {
            return Ok(None);
        };
        let Some(data) = identity
            .plugin_data
            .as_deref()
            .and_then(|d| serde_json::from_str::<SessionData>(d).ok())
        else {
            return Ok(None);
        };
        let id = new_id(host);
        let format = data
            .format
            .as_deref()
            .map(|f| format!(" Format=\"{}\"", xml::escape(f)))
            .unwrap_or_default();
        let session_index = data
            .session_index
            .as_deref()
            .map(|s| format!("<samlp:SessionIndex>{}</samlp:SessionIndex>", xml::escape(s)))
            .unwrap_or_default();
        let request = format!(
            "<samlp:LogoutRequest xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" \
xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\" ID=\"{id}\" Version=\"2.0\" IssueInstant=\"{}\" \
Destination=\"{}\"><saml:Issuer>{}</saml:Issuer><saml:NameID{format}>{}</saml:NameID>{session_index}\
</samlp:LogoutRequest>",
            instant(host.now_unix()),
            xml::escape(destination),
            xml::escape(&module.entity_id),
            xml::escape(&data.name_id),
        );
        host.kv_put(&format!("logout:{id}"), b"", Some(REQUEST_TTL));
        let url = xml::signed_redirect(destination, "SAMLRequest", &request, None, &module.key)
            .map_err(PluginError::Internal)?;
        Ok(Some(HttpResponse::redirect(&url)))
    }
}

/// The status codes SAML core defines (section 3.2.2.2), after `urn:oasis:names:tc:SAML:2.0:status:`.
const SAML_STATUSES: [&str; 23] = [
    "Success",
    "Requester",
    "Responder",
    "VersionMismatch",
    "AuthnFailed",
    "InvalidAttrNameOrValue",
    "InvalidNameIDPolicy",
    "NoAuthnContext",
    "NoAvailableIDP",
    "NoPassive",
    "NoSupportedIDP",
    "PartialLogout",
    "ProxyCountExceeded",
    "RequestDenied",
    "RequestUnsupported",
    "RequestVersionDeprecated",
    "RequestVersionTooHigh",
    "RequestVersionTooLow",
    "ResourceNotRecognized",
    "TooManyResponses",
    "UnknownAttrProfile",
    "UnknownPrincipal",
    "UnsupportedBinding",
];

/// The page for an IdP's refusal, by its status codes (top-level, then second-level). The
/// Response is unverified (anyone can post one): a code SAML defines is named on the page, any
/// other text is not shown (it would be the poster's words on this site's page).
fn status_page(statuses: &[String], return_to: &str) -> HttpResponse {
    const PREFIX: &str = "urn:oasis:names:tc:SAML:2.0:status:";
    let detail = statuses
        .get(1)
        .or(statuses.first())
        .map(String::as_str)
        .unwrap_or_default();
    let defined = detail.strip_prefix(PREFIX).filter(|name| SAML_STATUSES.contains(name));
    let (title, message) = match defined {
        Some("AuthnFailed") => (
            "Sign-in failed",
            "The identity provider could not confirm who you are, so you are not signed in.".to_string(),
        ),
        Some("RequestDenied") => (
            "Sign-in cancelled",
            "The sign-in was cancelled or declined at the identity provider, so you are not signed in.".to_string(),
        ),
        Some("InvalidNameIDPolicy") => (
            "Sign-in not possible",
            "The identity provider cannot name you the way this application asks (its NameID format). \
An administrator needs to set the application's <code>nameid_format</code> to one the identity provider offers."
                .to_string(),
        ),
        Some(_) => (
            "Not signed in",
            format!(
                "The identity provider did not sign you in (it answered <code>{}</code>).",
                xml::escape(detail)
            ),
        ),
        None => (
            "Not signed in",
            "The identity provider did not sign you in (it answered with no status SAML defines; \
the gateway's log names it)."
                .to_string(),
        ),
    };
    HttpResponse::page(
        403,
        title,
        &format!("{message}</p><p><a href=\"{}\">Try again</a>", xml::escape(return_to)),
    )
}

/// The assertion must name this SP as its audience (samael checks only a restriction that is
/// present).
fn check_audience(assertion: &Assertion, entity_id: &str) -> Result<(), String> {
    let restrictions = assertion
        .conditions
        .as_ref()
        .and_then(|c| c.audience_restrictions.as_ref())
        .filter(|r| !r.is_empty())
        .ok_or("the assertion has no AudienceRestriction")?;
    if restrictions.iter().all(|r| r.audience.iter().any(|a| a == entity_id)) {
        Ok(())
    } else {
        Err(format!("the assertion's audience is not {entity_id}"))
    }
}

/// An IdP-initiated LogoutRequest must be recent (a captured one cannot be replayed later).
fn check_fresh(message: &str, now: i64) -> Result<(), String> {
    let issued = xml::root_attribute(message, "IssueInstant").ok_or("no IssueInstant")?;
    let issued = chrono::DateTime::parse_from_rfc3339(&issued).map_err(|_| format!("bad IssueInstant {issued}"))?;
    if (issued.timestamp() - now).abs() > REQUEST_TTL as i64 {
        return Err(format!("IssueInstant {issued} is not recent"));
    }
    Ok(())
}

/// Where an IdP-initiated login goes: the RelayState when it is a path or a URL on the
/// route's own origin.
fn relay_target(relay_state: &str, origin: &str) -> Option<String> {
    if relay_state.len() > MAX_RELAY_STATE {
        return None;
    }
    let path = if relay_state.is_empty() {
        "/"
    } else if relay_state.starts_with('/') {
        relay_state
    } else {
        match relay_state.strip_prefix(origin)? {
            "" => "/",
            rest => rest,
        }
    };
    let on_origin = path.starts_with('/') && !path.starts_with("//") && !path.contains('\\');
    on_origin.then(|| path.to_string())
}

/// The gateway's subject for a NameID: qualified by the IdP, so that two IdPs never share one.
fn subject_of(idp_entity_id: &str, name_id: &str) -> String {
    format!("{idp_entity_id}!{name_id}")
}

/// Who the (verified) assertion says signed in.
fn identity_of(assertion: &Assertion, module: &Module) -> Result<Identity, PluginError> {
    let name_id = assertion
        .subject
        .as_ref()
        .and_then(|s| s.name_id.as_ref())
        .filter(|n| !n.value.trim().is_empty())
        .ok_or_else(|| PluginError::BadRequest("The identity provider did not say who you are (no NameID).".into()))?;
    let mut attributes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Values by attribute Name and by FriendlyName (an IdP may name `mail` either way).
    let mut by_name: HashMap<&str, Vec<String>> = HashMap::new();
    for attribute in assertion
        .attribute_statements
        .iter()
        .flatten()
        .flat_map(|s| s.attributes.iter())
    {
        let values: Vec<String> = attribute.values.iter().filter_map(|v| v.value.clone()).collect();
        for name in [&attribute.name, &attribute.friendly_name].into_iter().flatten() {
            by_name.entry(name.as_str()).or_default().extend(values.iter().cloned());
        }
        if let Some(name) = attribute.name.as_ref().or(attribute.friendly_name.as_ref()) {
            attributes.entry(name.clone()).or_default().extend(values);
        }
    }
    // The values of the first of `names` the assertion carries.
    let read = |names: Vec<&str>| {
        names
            .into_iter()
            .find_map(|n| by_name.get(n).filter(|v| !v.is_empty()).cloned())
    };
    let options = &module.options;
    let format = name_id.format.clone();
    let email = read(options.email_attributes())
        .and_then(|v| v.into_iter().next())
        .or_else(|| {
            (format.as_deref() == Some("urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"))
                .then(|| name_id.value.trim().to_string())
        });
    let name = read(options.name_attributes()).and_then(|v| v.into_iter().next());
    let groups = read(options.groups_attributes()).unwrap_or_default();
    let session_index = assertion.authn_statements.iter().flatten().find_map(|s| {
        s.session_index
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    });
    let data = SessionData {
        name_id: name_id.value.trim().to_string(),
        format,
        session_index: session_index.clone(),
    };
    Ok(Identity {
        subject: subject_of(&module.idp.entity_id, name_id.value.trim()),
        email,
        // The IdP asserts the address in a signed assertion.
        email_verified: true,
        name,
        groups,
        attributes,
        plugin_data: serde_json::to_string(&data).ok(),
        access_token: None,
        recheck_interval_secs: 0,
        session_index,
    })
}

/// The SP metadata: one signing key, signed AuthnRequests, the ACS (HTTP-POST) and SLO
/// (HTTP-Redirect) endpoints, valid for a week from now.
fn sp_metadata(module: &Module, now: i64) -> String {
    let certificate: String = module.cert_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<md:EntityDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\" xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\" \
entityID=\"{entity}\" validUntil=\"{valid_until}\">\n\
  <md:SPSSODescriptor AuthnRequestsSigned=\"true\" WantAssertionsSigned=\"true\" \
protocolSupportEnumeration=\"urn:oasis:names:tc:SAML:2.0:protocol\">\n\
    <md:KeyDescriptor use=\"signing\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{certificate}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>\n\
    <md:SingleLogoutService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect\" Location=\"{slo}\"/>\n\
    <md:NameIDFormat>{format}</md:NameIDFormat>\n\
    <md:AssertionConsumerService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\" Location=\"{acs}\" index=\"0\" isDefault=\"true\"/>\n\
  </md:SPSSODescriptor>\n\
</md:EntityDescriptor>\n",
        entity = xml::escape(&module.entity_id),
        valid_until = instant(now + 7 * 24 * 3600),
        slo = xml::escape(&module.slo_url),
        acs = xml::escape(&module.acs_url),
        format = xml::escape(module.options.nameid_format()),
    )
}

/// A message ID: `_` and 128 random bits in hex.
fn new_id(host: &dyn Host) -> String {
    let mut id = String::with_capacity(33);
    id.push('_');
    for b in host.random(16) {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// An `xs:dateTime` in UTC.
fn instant(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_state_stays_on_the_origin() {
        let origin = "https://app.example";
        for (relay, expected) in [
            ("", Some("/")),
            ("/reports?q=1", Some("/reports?q=1")),
            ("https://app.example", Some("/")),
            ("https://app.example/x", Some("/x")),
            ("https://app.example.evil.com/", None),
            ("https://app.example@evil.com/", None),
            ("https://evil.com/", None),
            ("//evil.com/", None),
            ("/\\evil.com", None),
            ("https://app.example//evil.com", None),
            ("javascript:alert(1)", None),
        ] {
            assert_eq!(relay_target(relay, origin).as_deref(), expected, "{relay}");
        }
    }
}
