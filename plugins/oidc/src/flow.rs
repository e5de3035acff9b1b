//! The authorization code flow: the authorization request (`state`, `nonce`, PKCE S256, the
//! cookie that binds a sign-in to its browser) and the callback (the answer matched to its
//! sign-in and browser, RFC 9207's `iss`, the code exchanged, the ID token verified), ending in
//! the session's identity and what it keeps for later. Completing claims and the access rules
//! are `claims.rs`'s; renewing tokens later is `renewal.rs`'s.

use crate::claims::{is_verified, string_list, subject_of, with_userinfo_claims};
use crate::provider::HostHttp;
use crate::renewal::{expiry, RENEW_EVERY};
use crate::{error_chain, hex, internal, jwt, module::Module, Oidc, ASYMMETRIC_ALGS, CLOCK_SKEW, LOGIN_TTL, SID_TTL};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use openidconnect::core::CoreResponseType;
use openidconnect::{
    AuthenticationFlow, AuthorizationCode, ClaimsVerificationError, CsrfToken, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, Scope, SignatureVerificationError, TokenResponse,
};
use portcullis_plugin_sdk::{
    form_value, Host, HttpRequest, HttpResponse, Identity, LogLevel, ModuleContext, Outcome, PluginError,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A sign-in this RP started, kept under its `state` until the provider sends the browser back.
#[derive(Serialize, Deserialize)]
struct Pending {
    nonce: String,
    pkce_verifier: String,
    return_to: String,
    /// The value of the browser's binding cookie.
    binding: String,
}

/// What a session keeps for logout and re-checks.
#[derive(Serialize, Deserialize)]
pub(crate) struct SessionData {
    pub(crate) id_token: String,
    pub(crate) sid: Option<String>,
    pub(crate) access_token: String,
    #[serde(default)]
    pub(crate) refresh_token: Option<String>,
    /// When the access token expires, if the provider said.
    #[serde(default)]
    pub(crate) expires_at: Option<i64>,
}

impl SessionData {
    /// What the sign-in kept in `identity`, if it is readable.
    pub(crate) fn of(identity: &Identity) -> Option<SessionData> {
        identity
            .plugin_data
            .as_deref()
            .and_then(|d| serde_json::from_str::<SessionData>(d).ok())
    }
}

impl Oidc {
    /// The authorization request: the sign-in kept under its `state`, the browser sent to the provider.
    pub(crate) fn start_sign_in(
        &self,
        host: &dyn Host,
        context: &ModuleContext,
        return_to: &str,
        request: &HttpRequest,
    ) -> Result<HttpResponse, PluginError> {
        let module = self.module(host, context)?;
        let random = |n: usize| B64URL.encode(host.random(n));
        let state = random(32);
        let nonce = random(32);
        let verifier = PkceCodeVerifier::new(random(32));
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&verifier);
        // One binding value per browser (SameSite=Lax: the provider's redirect back is a
        // top-level GET), so that sign-ins started in several tabs all complete.
        let cookie = binding_cookie(&module.redirect_uri);
        let binding = request
            .cookie(&cookie)
            .filter(|v| v.len() == 43)
            .map_or_else(|| random(32), str::to_string);
        let pending = Pending {
            nonce: nonce.clone(),
            pkce_verifier: verifier.secret().clone(),
            return_to: return_to.to_string(),
            binding: binding.clone(),
        };
        host.kv_put(
            &format!("state:{state}"),
            &serde_json::to_vec(&pending).map_err(internal)?,
            Some(LOGIN_TTL),
        );
        let client = module.client()?;
        let (state_value, nonce_value) = (state.clone(), nonce.clone());
        let mut authorize = client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                move || CsrfToken::new(state_value),
                move || Nonce::new(nonce_value),
            )
            .set_pkce_challenge(challenge);
        let scopes = module.requested_scopes();
        if let Some(prompt) = module.prompt(&scopes) {
            authorize = authorize.add_extra_param("prompt", prompt.to_string());
        }
        for scope in scopes.into_iter().filter(|s| s != "openid") {
            authorize = authorize.add_scope(Scope::new(scope));
        }
        let (url, _, _) = authorize.url();
        let secure = if module.origin.starts_with("https://") {
            "; Secure"
        } else {
            ""
        };
        let mut response = HttpResponse::redirect(url.as_str());
        response.headers.push((
            "set-cookie".into(),
            format!("{cookie}={binding}; Path=/; Max-Age={LOGIN_TTL}; HttpOnly; SameSite=Lax{secure}"),
        ));
        Ok(response)
    }

    pub(crate) fn callback(
        &self,
        host: &dyn Host,
        context: &ModuleContext,
        request: &HttpRequest,
    ) -> Result<Outcome, PluginError> {
        let module = self.module(host, context)?;
        let query = request.query.as_deref().unwrap_or_default();
        let state = form_value(query, "state").unwrap_or_default();
        let state_key = format!("state:{state}");
        let unknown_state = || {
            host.log(LogLevel::Warn, "OIDC callback with an unknown or used state");
            PluginError::BadRequest(
                "This sign-in answer does not match a sign-in started here, or was already used. Try signing in again."
                    .into(),
            )
        };
        // The sign-in is looked at first and taken only once this answer is found to be its
        // own, so a refused answer (another browser's, one without the provider's name) does not
        // spend the sign-in the rightful browser is completing.
        let pending = host
            .kv_get(&state_key)
            .and_then(|bytes| serde_json::from_slice::<Pending>(&bytes).ok())
            .ok_or_else(unknown_state)?;
        if request.cookie(&binding_cookie(&module.redirect_uri)) != Some(pending.binding.as_str()) {
            host.log(
                LogLevel::Warn,
                "OIDC callback from another browser than the one that started the sign-in",
            );
            return Err(PluginError::BadRequest(
                "This sign-in answer belongs to a sign-in started in another browser. Try signing in again.".into(),
            ));
        }
        // RFC 9207: the provider's name in the answer must be the module's issuer, and must be
        // there when the provider says it always sends it (a mix-up attack strips it).
        let names_itself = module
            .metadata
            .additional_metadata()
            .authorization_response_iss_parameter_supported
            == Some(true);
        match form_value(query, "iss") {
            Some(iss) if iss != module.options.issuer => {
                host.log(
                    LogLevel::Warn,
                    &format!("OIDC callback from issuer {}", iss.escape_debug()),
                );
                return Err(PluginError::BadRequest(
                    "The sign-in answer came from another provider.".into(),
                ));
            }
            None if names_itself => {
                host.log(
                    LogLevel::Warn,
                    "OIDC callback without `iss`, which the provider says it always sends (RFC 9207)",
                );
                return Err(PluginError::BadRequest(
                    "The sign-in answer does not name its provider. Try signing in again.".into(),
                ));
            }
            _ => {}
        }
        // Taken once (a concurrent answer for the same sign-in finds it gone).
        if host.kv_take(&state_key).is_none() {
            return Err(unknown_state());
        }
        if let Some(error) = form_value(query, "error") {
            host.log(
                LogLevel::Info,
                &format!(
                    "the provider answered {error}: {}",
                    form_value(query, "error_description")
                        .unwrap_or_default()
                        .escape_debug()
                ),
            );
            return Err(PluginError::Forbidden(
                "The identity provider did not sign you in.".into(),
            ));
        }
        let code = form_value(query, "code")
            .ok_or_else(|| PluginError::BadRequest("The sign-in answer has no code.".into()))?;
        let http = |r| HostHttp(host).call(r);
        let client = module.client()?;
        let token = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(internal)?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
            .request(&http)
            .map_err(|e| {
                let message = error_chain(&e);
                // A code that is unknown, used or not this browser's: the person may try again.
                // Anything else (the provider failing, refusing this client) is the provider's
                // or the operator's to fix.
                let refused_code = matches!(&e, openidconnect::RequestTokenError::ServerResponse(r)
                    if *r.error() == openidconnect::core::CoreErrorResponseType::InvalidGrant);
                if refused_code {
                    host.log(
                        LogLevel::Warn,
                        &format!("the token endpoint refused the code: {message}"),
                    );
                    PluginError::BadRequest(
                        "The identity provider did not accept this sign-in. Try signing in again.".into(),
                    )
                } else {
                    PluginError::Upstream(format!("token endpoint: {message}"))
                }
            })?;
        let id_token = token
            .id_token()
            .ok_or_else(|| PluginError::Upstream("the token response has no ID token".into()))?;
        let nonce = Nonce::new(pending.nonce.clone());
        let now = host.now_unix();
        let verify = |module: &Module| -> Result<(), ClaimsVerificationError> {
            let client = module
                .client()
                .map_err(|e| ClaimsVerificationError::Other(e.to_string()))?;
            let verifier = client
                .id_token_verifier()
                .set_allowed_algs(ASYMMETRIC_ALGS.iter().cloned())
                .set_issue_time_verifier_fn(move |iat| {
                    if iat.timestamp() > now + CLOCK_SKEW {
                        Err(format!("issued in the future ({iat})"))
                    } else {
                        Ok(())
                    }
                });
            id_token.claims(&verifier, &nonce).map(|_| ())
        };
        let checked = match verify(&module) {
            Err(ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey)) => {
                match self.refresh_jwks(host, context, &module) {
                    Some(fresh) => verify(&fresh),
                    None => Err(ClaimsVerificationError::SignatureVerification(
                        SignatureVerificationError::NoMatchingKey,
                    )),
                }
            }
            other => other,
        };
        if let Err(e) = checked {
            host.log(LogLevel::Warn, &format!("ID token refused: {e}"));
            return Err(PluginError::BadRequest(
                "The identity provider's answer was not accepted. Try signing in again.".into(),
            ));
        }
        // Verified: read every claim (the groups claim is not a standard one) from the payload,
        // and what it lacks from userinfo.
        let id_claims = jwt::payload(&id_token.to_string()).map_err(PluginError::BadRequest)?;
        let access_token = token.access_token().secret().clone();
        let claims = with_userinfo_claims(host, &module, id_claims, &access_token)?;
        let sub = claims["sub"].as_str().unwrap_or_default().to_string();
        let email = claims["email"].as_str().map(str::to_string);
        let email_verified = is_verified(&claims["email_verified"], module.options.trust_unverified_email);
        let groups = string_list(&claims[module.options.groups_claim.as_str()]);
        if !module.options.admits(email.as_deref(), email_verified, &groups) {
            host.log(LogLevel::Info, &format!("{sub} is not admitted by the module's rules"));
            return Err(PluginError::Forbidden(
                "You do not have access to this application.".into(),
            ));
        }
        let sid = claims["sid"].as_str().map(str::to_string);
        if let Some(sid) = &sid {
            host.kv_put(&format!("sid:{sid}"), sub.as_bytes(), Some(SID_TTL));
        }
        let data = SessionData {
            id_token: id_token.to_string(),
            sid: sid.clone(),
            access_token: access_token.clone(),
            refresh_token: token.refresh_token().map(|t| t.secret().clone()),
            expires_at: expiry(host, token.expires_in()),
        };
        if data.refresh_token.is_none() && module.options.needs_refresh_token() {
            host.log(
                LogLevel::Warn,
                &format!(
                    "the provider gave {sub} no refresh token ({}): {}",
                    module.no_refresh_token_hint(),
                    match token.expires_in() {
                        Some(life) => format!(
                            "the session ends when its access token expires, in {} s, and the person signs in again",
                            life.as_secs()
                        ),
                        None => "the provider did not say when its access token expires; the session ends when userinfo refuses it".into(),
                    }
                ),
            );
        }
        // A forwarded access token is looked at every half of its life, whether or not the
        // module re-checks access: renewed when it can be, the session ended when it expires.
        let renew_every = match token.expires_in() {
            Some(life) if module.options.forward_access_token => {
                Some((life.as_secs() / 2).clamp(RENEW_EVERY.0, RENEW_EVERY.1))
            }
            _ => None,
        };
        let recheck_interval_secs = match (module.options.recheck_interval, renew_every) {
            (0, every) => every.unwrap_or(0),
            (interval, every) => every.map_or(interval, |every| every.min(interval)),
        };
        let mut attributes = BTreeMap::new();
        if let serde_json::Value::Object(object) = &claims {
            for (key, value) in object {
                let values = string_list(value);
                if !values.is_empty() {
                    attributes.insert(key.clone(), values);
                }
            }
        }
        Ok(Outcome::LoggedIn {
            identity: Identity {
                subject: subject_of(&module.options.issuer, &sub),
                email,
                email_verified,
                name: claims["name"].as_str().map(str::to_string),
                groups,
                attributes,
                plugin_data: serde_json::to_string(&data).ok(),
                access_token: module.options.forward_access_token.then_some(access_token),
                recheck_interval_secs,
                session_index: sid,
            },
            return_to: pending.return_to,
        })
    }
}

/// The cookie that binds a sign-in to its browser, distinct per module; `__Host-` (host-only,
/// Secure, path `/`) on https.
pub(crate) fn binding_cookie(redirect_uri: &str) -> String {
    let digest = jwt::sha256(redirect_uri.as_bytes());
    let short = hex(&digest[..8]);
    let prefix = if redirect_uri.starts_with("https://") {
        "__Host-"
    } else {
        ""
    };
    format!("{prefix}portcullis-oidc-{short}")
}
