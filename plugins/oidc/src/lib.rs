//! `oidc`: the Portcullis OpenID Connect relying-party plugin. It protects an edge route with an
//! OpenID Provider's sign-in (authorization code flow with PKCE S256, `state` and `nonce`),
//! built on the openidconnect crate with the gateway's own HTTP client (`Host::http`: its
//! timeouts, its egress allow-list, no redirects followed).
//!
//! Endpoints, under the route's mount path `/_portcullis/auth/<route id>` on its host:
//! - `GET  …/callback`: the redirect URI the provider sends the browser back to;
//! - `POST …/backchannel-logout`: OIDC Back-Channel Logout 1.0 (a signed `logout_token`);
//! - `GET  …/logged-out`: where the provider's RP-initiated logout returns the browser.
//!
//! Discovery and the JWKS are fetched through the host and cached per module; an ID token
//! signed with an unknown `kid` refetches the JWKS (at most once a minute). ID tokens are
//! checked for signature (asymmetric algorithms only: `none` and HMAC are refused), `iss`,
//! `aud` (and `azp` with several audiences), `exp`, `iat` (not in the future), `nonce`.
//! Claims the ID token lacks (email, name, groups: providers put the scopes' claims in userinfo)
//! are read from userinfo for the same `sub`. Access rules (`allow_emails`, `allow_domains`,
//! `authorized_groups`) are checked at sign-in and, with `recheck_interval`, again against the
//! provider's userinfo endpoint. Sessions that need a refresh token ask for `offline_access`
//! (with a `prompt` only when the module names one: most providers would show consent each time).

mod jwt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod, CoreGrantType, CoreJsonWebKey,
    CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthType, AuthenticationFlow, AuthorizationCode, ClaimsVerificationError, ClientId,
    ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    ProviderMetadata, RedirectUrl, RefreshToken, Scope, SignatureVerificationError, TokenResponse,
};
use portcullis_plugin_sdk::{
    form_value, option_error, read_options, Capability, Host, HttpRequest, HttpResponse, Identity, LogLevel,
    ModuleContext, ModulePlan, OptionError, OutboundRequest, Outcome, Plugin, PluginError, PluginInfo, Recheck,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// How long a sign-in may take at the provider, in seconds.
const LOGIN_TTL: u64 = 600;
/// How long discovery and the JWKS are kept before they are fetched again, in seconds.
const METADATA_TTL: i64 = 3600;
/// The least time between two JWKS fetches caused by unknown key ids, in seconds.
const JWKS_REFRESH_INTERVAL: i64 = 60;
/// Tolerated clock difference with the provider, in seconds.
const CLOCK_SKEW: i64 = 60;
/// How long a provider session id is mapped to its user, for back-channel logouts by `sid`
/// (longer than any session).
const SID_TTL: u64 = 400 * 86_400;
/// A forwarded access token is renewed when it would expire within this many seconds after
/// the next re-check (the upkeep runs every 10 seconds; a provider may be slow).
const RENEW_MARGIN: i64 = 120;
/// Bounds of how often a forwarded access token is looked at: half its lifetime.
const RENEW_EVERY: (u64, u64) = (30, 3600);
/// How long a failed discovery is remembered before it is tried again, in seconds.
const DISCOVERY_RETRY: i64 = 30;
/// The read-only fields the gateway computes; writing them is refused.
const OUTPUTS: [&str; 3] = ["redirect_uri", "post_logout_redirect_uri", "backchannel_logout_uri"];
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Provider metadata fields openidconnect leaves to the caller.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
struct ExtraMetadata {
    end_session_endpoint: Option<String>,
    /// RFC 9207: the provider names itself (`iss`) in every authorization response.
    #[serde(default)]
    authorization_response_iss_parameter_supported: Option<bool>,
}
impl AdditionalProviderMetadata for ExtraMetadata {}

type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// The module's options: ngrok's (`issuer`, `client_id`, `client_secret`, `scopes`) and what
/// users of oauth2-proxy and Pomerium ask for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    issuer: String,
    client_id: String,
    client_secret: String,
    #[serde(default)]
    scopes: Vec<String>,
    /// Only these email addresses may sign in (with `allow_domains`: either list).
    #[serde(default)]
    allow_emails: Vec<String>,
    /// Only addresses in these email domains may sign in.
    #[serde(default)]
    allow_domains: Vec<String>,
    /// Only members of one of these groups may sign in.
    #[serde(default)]
    authorized_groups: Vec<String>,
    /// The claim that lists the user's groups.
    #[serde(default = "default_groups")]
    groups_claim: String,
    /// The scope that asks the provider for the groups claim, requested when the provider's
    /// discovery lists it in `scopes_supported` (empty: never requested).
    #[serde(default = "default_groups")]
    groups_scope: String,
    /// Asks for `offline_access` when sessions need a refresh token and the provider lists the
    /// scope. Off for providers that issue refresh tokens without it and give it another
    /// meaning (Keycloak: offline tokens, which outlive the user's Keycloak session and need the
    /// `offline_access` role).
    #[serde(default = "default_true")]
    request_offline_access: bool,
    /// The `prompt` sent with `offline_access` (empty, the default: none). `consent` for the
    /// providers that keep `offline_access` only with it, as OpenID Connect Core 11 words it
    /// (node oidc-provider); sent to the others it shows their consent page at every sign-in
    /// (Entra ID; Okta for scopes that ask consent) or stops users who may not consent.
    #[serde(default)]
    offline_access_prompt: String,
    /// Seconds between checks at the provider's userinfo endpoint that the user still has
    /// access (0: never).
    #[serde(default)]
    recheck_interval: u64,
    /// Sends the access token to the upstream (in the identity headers' `access_token` header).
    #[serde(default)]
    forward_access_token: bool,
    /// Further `host:port`s the provider's endpoints live on, beyond the issuer's.
    #[serde(default)]
    provider_hosts: Vec<String>,
    /// `client_secret_basic` or `client_secret_post`, as the client is registered at the
    /// provider; by default basic when the provider advertises it, else post.
    #[serde(default)]
    token_auth_method: Option<String>,
    /// Treats an email without `email_verified: true` as verified (for providers that never
    /// send the claim and verify every address). Off: an unverified address matches no rule.
    #[serde(default)]
    trust_unverified_email: bool,
    /// Accepts an `http://` issuer that is not on loopback (discovery, keys and the client
    /// secret would cross the network in clear text).
    #[serde(default)]
    allow_insecure_issuer: bool,
}

fn default_groups() -> String {
    "groups".into()
}

fn default_true() -> bool {
    true
}

impl Options {
    fn scopes(&self) -> Vec<String> {
        if self.scopes.is_empty() {
            vec!["openid".into(), "profile".into(), "email".into()]
        } else {
            self.scopes.clone()
        }
    }

    /// Whether sessions need a refresh token: to renew the forwarded access token, or to ask
    /// userinfo again after the first access token expired.
    fn needs_refresh_token(&self) -> bool {
        self.forward_access_token || self.recheck_interval > 0
    }

    /// Whether a user with this email and these groups may sign in.
    fn admits(&self, email: Option<&str>, email_verified: bool, groups: &[String]) -> bool {
        let by_address = self.allow_emails.is_empty() && self.allow_domains.is_empty()
            || email.filter(|_| email_verified).is_some_and(|email| {
                let email = email.to_ascii_lowercase();
                let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
                self.allow_emails.iter().any(|e| e.eq_ignore_ascii_case(&email))
                    || self.allow_domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
            });
        let by_group = self.authorized_groups.is_empty() || groups.iter().any(|g| self.authorized_groups.contains(g));
        by_address && by_group
    }
}

fn parse_options(value: &serde_json::Value) -> Result<Options, Vec<OptionError>> {
    let options: Options = read_options(
        value,
        &OUTPUTS,
        &[
            ("issuer", "the provider's issuer URL"),
            ("client_id", "the client registered at the provider"),
            ("client_secret", "the client's secret"),
        ],
    )?;
    let issuer = url::Url::parse(&options.issuer).map_err(|e| option_error("issuer", format!("is not a URL: {e}")))?;
    if !matches!(issuer.scheme(), "https" | "http") || issuer.host_str().is_none() {
        return Err(option_error("issuer", "must be an http(s) URL"));
    }
    let loopback = matches!(issuer.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if issuer.scheme() == "http" && !loopback && !options.allow_insecure_issuer {
        return Err(option_error(
            "issuer",
            "must be https (keys and the client secret would cross the network in clear text); set allow_insecure_issuer to accept it",
        ));
    }
    if !options.scopes.is_empty() && !options.scopes.iter().any(|s| s == "openid") {
        return Err(option_error("scopes", "must include `openid`"));
    }
    if options.groups_claim.trim().is_empty() {
        return Err(option_error("groups_claim", "must not be empty"));
    }
    if options.groups_scope.contains(char::is_whitespace) {
        return Err(option_error("groups_scope", "must be one scope (no spaces)"));
    }
    if !matches!(
        options.offline_access_prompt.as_str(),
        "" | "consent" | "login" | "select_account" | "consent login"
    ) {
        return Err(option_error(
            "offline_access_prompt",
            "must be `consent`, `login`, `select_account`, `consent login` or empty",
        ));
    }
    if let Some(method) = options.token_auth_method.as_deref() {
        if !matches!(method, "client_secret_basic" | "client_secret_post") {
            return Err(option_error(
                "token_auth_method",
                format!("`{method}` is not client_secret_basic or client_secret_post"),
            ));
        }
    }
    Ok(options)
}

/// `host:port` of a URL, as the egress allow-list names hosts.
fn host_port(url: &url::Url) -> Option<String> {
    Some(format!("{}:{}", url.host_str()?, url.port_or_known_default()?))
}

/// The gateway's HTTP client as openidconnect's: one blocking call through the host.
struct HostHttp<'a>(&'a dyn Host);

#[derive(Debug)]
struct HttpError(String);

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for HttpError {}

impl HostHttp<'_> {
    fn call(&self, request: openidconnect::HttpRequest) -> Result<openidconnect::HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        let outbound = OutboundRequest {
            method: parts.method.to_string(),
            url: parts.uri.to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
        };
        let answer = self.0.http(outbound).map_err(HttpError)?;
        let mut response = openidconnect::http::Response::builder().status(answer.status);
        for (name, value) in &answer.headers {
            response = response.header(name.as_str(), value.as_str());
        }
        response.body(answer.body).map_err(|e| HttpError(e.to_string()))
    }
}

/// A module, ready to serve: options, the provider's metadata, URLs.
struct Module {
    options_json: String,
    origin: String,
    options: Options,
    metadata: Metadata,
    fetched_at: i64,
    jwks_refreshed_at: i64,
    redirect_uri: String,
    base: String,
}

impl Module {
    fn client(&self) -> Result<OidcClient, PluginError> {
        let client = CoreClient::from_provider_metadata(
            self.metadata.clone(),
            ClientId::new(self.options.client_id.clone()),
            Some(ClientSecret::new(self.options.client_secret.clone())),
        )
        .set_redirect_uri(RedirectUrl::new(self.redirect_uri.clone()).map_err(internal)?);
        // As configured; else client_secret_basic unless the provider only takes client_secret_post.
        let methods = self.metadata.token_endpoint_auth_methods_supported();
        let basic = methods.is_none_or(|m| m.contains(&CoreClientAuthMethod::ClientSecretBasic));
        let post = methods.is_some_and(|m| m.contains(&CoreClientAuthMethod::ClientSecretPost));
        let use_post = match self.options.token_auth_method.as_deref() {
            Some(method) => method == "client_secret_post",
            None => !basic && post,
        };
        Ok(client.set_auth_type(if use_post {
            AuthType::RequestBody
        } else {
            AuthType::BasicAuth
        }))
    }

    /// The scopes the authorization request asks for: the configured ones, the groups scope
    /// when the provider offers it, and `offline_access` when sessions need a refresh token and
    /// the provider offers it (OpenID Connect Core 11; most providers issue refresh tokens only
    /// then). A scope a provider does not list is not added: some refuse unknown scopes.
    fn requested_scopes(&self) -> Vec<String> {
        let mut scopes = self.options.scopes();
        let offered = |scope: &str| {
            self.metadata
                .scopes_supported()
                .is_some_and(|s| s.iter().any(|o| o.as_str() == scope))
        };
        let mut add = |scope: &str| {
            if !scope.is_empty() && offered(scope) && !scopes.iter().any(|s| s == scope) {
                scopes.push(scope.to_string());
            }
        };
        add(&self.options.groups_scope);
        if self.options.needs_refresh_token() && self.options.request_offline_access {
            add("offline_access");
        }
        scopes
    }

    /// The `prompt` of an authorization request for `scopes`: the configured one, only with
    /// `offline_access`.
    fn prompt(&self, scopes: &[String]) -> Option<&str> {
        let prompt = self.options.offline_access_prompt.as_str();
        (!prompt.is_empty() && scopes.iter().any(|s| s == "offline_access")).then_some(prompt)
    }

    /// What to look at when the provider gave a sign-in that needs one no refresh token.
    fn no_refresh_token_hint(&self) -> &'static str {
        let scopes = self.requested_scopes();
        if !scopes.iter().any(|s| s == "offline_access") {
            if self.options.request_offline_access {
                "the provider does not list offline_access in scopes_supported; is the refresh_token grant enabled for this client?"
            } else {
                "request_offline_access is off; is the refresh_token grant enabled for this client?"
            }
        } else if self.prompt(&scopes).is_none() {
            "is the refresh_token grant enabled for this client? A provider that grants offline_access only with prompt=consent (OpenID Connect Core 11, as node oidc-provider does) needs offline_access_prompt = \"consent\""
        } else {
            "is the refresh_token grant enabled for this client, and offline_access allowed?"
        }
    }

    fn outputs(&self) -> serde_json::Value {
        let o = &self.options;
        serde_json::json!({
            "scopes": o.scopes(),
            "groups_scope": o.groups_scope,
            "request_offline_access": o.request_offline_access,
            "offline_access_prompt": o.offline_access_prompt,
            "allow_emails": o.allow_emails,
            "allow_domains": o.allow_domains,
            "authorized_groups": o.authorized_groups,
            "groups_claim": o.groups_claim,
            "recheck_interval": o.recheck_interval,
            "forward_access_token": o.forward_access_token,
            "provider_hosts": o.provider_hosts,
            "token_auth_method": o.token_auth_method,
            "redirect_uri": self.redirect_uri,
            "post_logout_redirect_uri": format!("{}/logged-out", self.base),
            "backchannel_logout_uri": format!("{}/backchannel-logout", self.base),
        })
    }
}

type OidcClient = openidconnect::Client<
    openidconnect::EmptyAdditionalClaims,
    CoreAuthDisplay,
    openidconnect::core::CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    openidconnect::core::CoreAuthPrompt,
    openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    openidconnect::core::CoreTokenResponse,
    openidconnect::core::CoreTokenIntrospectionResponse,
    openidconnect::core::CoreRevocableToken,
    openidconnect::core::CoreRevocationErrorResponse,
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

fn internal(e: impl std::fmt::Display) -> PluginError {
    PluginError::Internal(e.to_string())
}

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
struct SessionData {
    id_token: String,
    sid: Option<String>,
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    /// When the access token expires, if the provider said.
    #[serde(default)]
    expires_at: Option<i64>,
}

/// The latest tokens of a login, kept by re-checks that refreshed them.
#[derive(Serialize, Deserialize)]
struct Tokens {
    access_token: String,
    refresh_token: Option<String>,
    /// When the access token expires, if the provider said.
    #[serde(default)]
    expires_at: Option<i64>,
}

/// Renews a login's tokens with its refresh token and keeps them at `tokens_key` at once (a
/// provider that rotates refresh tokens honours only the newest): `false` when there is none
/// or the provider says the grant is gone (`invalid_grant`), an error when it cannot be asked.
fn refresh_tokens(
    host: &dyn Host,
    module: &Module,
    tokens: &mut Tokens,
    tokens_key: &str,
) -> Result<bool, PluginError> {
    let Some(refresh) = tokens.refresh_token.clone() else {
        return Ok(false);
    };
    let http = |r| HostHttp(host).call(r);
    let refreshed = module
        .client()?
        .exchange_refresh_token(&RefreshToken::new(refresh))
        .map_err(internal)?
        .request(&http);
    match refreshed {
        Ok(fresh) => {
            *tokens = Tokens {
                access_token: fresh.access_token().secret().clone(),
                refresh_token: fresh
                    .refresh_token()
                    .map(|t| t.secret().clone())
                    .or(tokens.refresh_token.take()),
                expires_at: expiry(host, fresh.expires_in()),
            };
            host.kv_put(
                tokens_key,
                &serde_json::to_vec(tokens).map_err(internal)?,
                Some(SID_TTL),
            );
            Ok(true)
        }
        Err(openidconnect::RequestTokenError::ServerResponse(r))
            if *r.error() == openidconnect::core::CoreErrorResponseType::InvalidGrant =>
        {
            Ok(false)
        }
        Err(e) => Err(PluginError::Upstream(format!(
            "refreshing the tokens: {}",
            error_chain(&e)
        ))),
    }
}

/// When an access token that lives `expires_in` from now expires.
fn expiry(host: &dyn Host, expires_in: Option<std::time::Duration>) -> Option<i64> {
    expires_in.map(|d| {
        host.now_unix()
            .saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    })
}

/// Whether the provider's userinfo endpoint still admits the user of `identity` under the
/// module's rules. An expired access token is refreshed first (`renewed` says so); a grant
/// that is gone, or a user the provider no longer knows, is `false`.
fn userinfo_allows(
    host: &dyn Host,
    module: &Module,
    identity: &Identity,
    tokens: &mut Tokens,
    tokens_key: &str,
    renewed: &mut bool,
) -> Result<bool, PluginError> {
    let mut answer = userinfo(host, module, &tokens.access_token)?;
    if answer.status == 401 {
        // The access token may just have expired: a refresh token says whether the grant
        // still stands.
        if !refresh_tokens(host, module, tokens, tokens_key)? {
            return Ok(false);
        }
        *renewed = true;
        answer = userinfo(host, module, &tokens.access_token)?;
    }
    match answer.status {
        200 => {
            let claims: serde_json::Value = serde_json::from_slice(&answer.body)
                .map_err(|e| PluginError::Upstream(format!("userinfo is not JSON: {e}")))?;
            let subject_matches = claims["sub"]
                .as_str()
                .map(|s| subject_of(&module.options.issuer, s))
                .as_deref()
                == Some(identity.subject.as_str());
            // An address userinfo does not repeat stays the one verified at sign-in.
            let (email, verified) = match claims["email"].as_str() {
                Some(email) => (
                    Some(email),
                    is_verified(&claims["email_verified"], module.options.trust_unverified_email),
                ),
                None => (identity.email.as_deref(), true),
            };
            let groups = match claims.get(module.options.groups_claim.as_str()) {
                Some(value) => string_list(value),
                // Group rules cannot be re-checked without the claim: fail closed.
                None if !module.options.authorized_groups.is_empty() => {
                    host.log(
                        LogLevel::Warn,
                        &format!(
                            "userinfo has no `{}` claim: the group rule cannot be re-checked, the session ends",
                            module.options.groups_claim
                        ),
                    );
                    return Ok(false);
                }
                None => identity.groups.clone(),
            };
            Ok(subject_matches && module.options.admits(email, verified, &groups))
        }
        401 => Ok(false),
        status => Err(PluginError::Upstream(format!("userinfo answered {status}"))),
    }
}

/// The claims of a verified ID token, completed from the provider's userinfo endpoint when it
/// lacks one the module uses (email, name, groups): providers that follow OpenID Connect Core
/// 5.4 return the claims of the `email` and `profile` scopes from userinfo only, unless the
/// ID token is the only token issued. Userinfo counts only for the same `sub` (Core 5.3.2);
/// the ID token's claims win where both have one.
fn with_userinfo_claims(
    host: &dyn Host,
    module: &Module,
    mut claims: serde_json::Value,
    access_token: &str,
) -> Result<serde_json::Value, PluginError> {
    let options = &module.options;
    let wanted = ["email", "name", options.groups_claim.as_str()];
    if wanted.iter().all(|claim| claims.get(claim).is_some()) || module.metadata.userinfo_endpoint().is_none() {
        return Ok(claims);
    }
    // Without an answer, a sign-in goes on only if no rule needs what is missing.
    let address_rules = !options.allow_emails.is_empty() || !options.allow_domains.is_empty();
    let needed = (address_rules && claims.get("email").is_none())
        || (!options.authorized_groups.is_empty() && claims.get(options.groups_claim.as_str()).is_none());
    let unavailable = |why: String| {
        if needed {
            Err(PluginError::Upstream(why))
        } else {
            host.log(
                LogLevel::Warn,
                &format!("{why}; signing in with the ID token's claims only"),
            );
            Ok(None)
        }
    };
    let answer = userinfo(host, module, access_token);
    let extra = match answer {
        Ok(answer) if answer.status == 200 => match serde_json::from_slice::<serde_json::Value>(&answer.body) {
            Ok(serde_json::Value::Object(extra)) => Some(extra),
            _ => unavailable(
                "userinfo did not answer a JSON object (a signed userinfo response is not supported)".into(),
            )?,
        },
        Ok(answer) => unavailable(format!("userinfo answered {}", answer.status))?,
        Err(e) => unavailable(format!("userinfo: {e}"))?,
    };
    let Some(extra) = extra else {
        return Ok(claims);
    };
    if extra.get("sub") != claims.get("sub") {
        host.log(
            LogLevel::Warn,
            &format!(
                "userinfo answered for sub {} where the ID token names {}: refused",
                extra.get("sub").unwrap_or(&serde_json::Value::Null),
                claims["sub"]
            ),
        );
        return Err(PluginError::BadRequest(
            "The identity provider's answer was not accepted. Try signing in again.".into(),
        ));
    }
    if let serde_json::Value::Object(object) = &mut claims {
        // An address and its verification come from the same place.
        let email_from_userinfo = !object.contains_key("email") && extra.contains_key("email");
        if email_from_userinfo {
            object.remove("email_verified");
        }
        for (name, value) in extra {
            let verification_of_another_address = name == "email_verified" && !email_from_userinfo;
            if ID_TOKEN_ONLY_CLAIMS.contains(&name.as_str()) || verification_of_another_address {
                continue;
            }
            object.entry(name).or_insert(value);
        }
    }
    Ok(claims)
}

/// Claims that count only in the signed ID token (who issued it for whom, when, in which
/// provider session): never taken from userinfo, whose `sid` could otherwise, for one, keep a
/// session out of reach of the provider's back-channel logouts.
const ID_TOKEN_ONLY_CLAIMS: [&str; 14] = [
    "iss",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "nonce",
    "azp",
    "sid",
    "auth_time",
    "acr",
    "amr",
    "at_hash",
    "c_hash",
];

/// Calls the provider's userinfo endpoint with an access token.
fn userinfo(host: &dyn Host, module: &Module, access_token: &str) -> Result<HttpResponse, PluginError> {
    let endpoint = module
        .metadata
        .userinfo_endpoint()
        .ok_or_else(|| PluginError::Internal("the provider has no userinfo endpoint to re-check with".into()))?;
    host.http(OutboundRequest {
        method: "GET".into(),
        url: endpoint.url().to_string(),
        headers: vec![
            ("authorization".into(), format!("Bearer {access_token}")),
            ("accept".into(), "application/json".into()),
        ],
        body: Vec::new(),
    })
    .map_err(PluginError::Upstream)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The plugin. Modules (with their provider's metadata) are cached per options.
#[derive(Default)]
pub struct Oidc {
    modules: Mutex<HashMap<String, Arc<Module>>>,
    /// The last failed discovery per module: (options, when, why), so that a provider that is
    /// down is not asked again by every request.
    failures: Mutex<HashMap<String, (String, i64, String)>>,
}

impl Oidc {
    fn module(&self, host: &dyn Host, context: &ModuleContext) -> Result<Arc<Module>, PluginError> {
        let now = host.now_unix();
        let cached = self
            .modules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&context.module_id)
            .filter(|m| m.options_json == context.options_json && m.origin == context.origin)
            .cloned();
        if let Some(module) = cached.as_ref().filter(|m| now - m.fetched_at < METADATA_TTL) {
            return Ok(module.clone());
        }
        let failed = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&context.module_id)
            .filter(|(options, at, _)| *options == context.options_json && now - at < DISCOVERY_RETRY)
            .map(|(_, _, why)| why.clone());
        if let Some(why) = failed {
            // Stale metadata beats none while the provider is down.
            return cached.ok_or(PluginError::Upstream(why));
        }
        match self.discover(host, context, now) {
            Ok(module) => Ok(module),
            Err(e) => {
                self.failures
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(
                        context.module_id.clone(),
                        (context.options_json.clone(), now, e.to_string()),
                    );
                match cached {
                    Some(stale) => {
                        host.log(
                            LogLevel::Warn,
                            &format!("{e}; keeping the provider's metadata from before"),
                        );
                        Ok(stale)
                    }
                    None => Err(e),
                }
            }
        }
    }

    fn discover(&self, host: &dyn Host, context: &ModuleContext, now: i64) -> Result<Arc<Module>, PluginError> {
        let value: serde_json::Value = serde_json::from_str(&context.options_json).map_err(internal)?;
        let options = parse_options(&value).map_err(|e| internal(format!("stored options do not validate: {e:?}")))?;
        let issuer = IssuerUrl::new(options.issuer.clone()).map_err(internal)?;
        let http = |r| HostHttp(host).call(r);
        let metadata = Metadata::discover(&issuer, &http).map_err(|e| {
            PluginError::Upstream(format!("discovery at {} failed: {}", options.issuer, error_chain(&e)))
        })?;
        let base = format!("{}{}", context.origin, context.mount_path);
        let module = Arc::new(Module {
            options_json: context.options_json.clone(),
            origin: context.origin.clone(),
            options,
            metadata,
            fetched_at: now,
            // The first unknown key id after discovery may refetch at once.
            jwks_refreshed_at: i64::MIN / 2,
            redirect_uri: format!("{base}/callback"),
            base,
        });
        self.store(context, module.clone());
        Ok(module)
    }

    fn store(&self, context: &ModuleContext, module: Arc<Module>) {
        self.modules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(context.module_id.clone(), module);
    }

    /// Fetches the provider's JWKS again (a key id it did not have), at most once a minute.
    fn refresh_jwks(&self, host: &dyn Host, context: &ModuleContext, module: &Module) -> Option<Arc<Module>> {
        let now = host.now_unix();
        if now - module.jwks_refreshed_at < JWKS_REFRESH_INTERVAL {
            return None;
        }
        let http = |r| HostHttp(host).call(r);
        let jwks = match CoreJsonWebKeySet::fetch(module.metadata.jwks_uri(), &http) {
            Ok(jwks) => jwks,
            Err(e) => {
                host.log(LogLevel::Warn, &format!("JWKS refresh failed: {}", error_chain(&e)));
                return None;
            }
        };
        let fresh = Arc::new(Module {
            options_json: module.options_json.clone(),
            origin: module.origin.clone(),
            options: module.options.clone(),
            metadata: module.metadata.clone().set_jwks(jwks),
            fetched_at: module.fetched_at,
            jwks_refreshed_at: now,
            redirect_uri: module.redirect_uri.clone(),
            base: module.base.clone(),
        });
        self.store(context, fresh.clone());
        Some(fresh)
    }

    fn callback(
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

    /// OIDC Back-Channel Logout: the provider posts a signed `logout_token`.
    fn backchannel(
        &self,
        host: &dyn Host,
        context: &ModuleContext,
        request: &HttpRequest,
    ) -> Result<Outcome, PluginError> {
        let module = self.module(host, context)?;
        if request.method != "POST" {
            return Err(PluginError::BadRequest(
                "The back-channel logout endpoint takes POST.".into(),
            ));
        }
        let body = String::from_utf8_lossy(&request.body);
        let token =
            form_value(&body, "logout_token").ok_or_else(|| PluginError::BadRequest("no logout_token".into()))?;
        let refuse = |why: String| {
            host.log(LogLevel::Warn, &format!("logout_token refused: {why}"));
            PluginError::BadRequest("The logout token was not accepted.".into())
        };
        let keys = |module: &Module| module.metadata.jwks().keys().clone();
        let claims = match jwt::verify(&token, &keys(&module), ASYMMETRIC_ALGS) {
            Err(jwt::Error::UnknownKey) => match self.refresh_jwks(host, context, &module) {
                Some(fresh) => jwt::verify(&token, &keys(&fresh), ASYMMETRIC_ALGS),
                None => Err(jwt::Error::UnknownKey),
            },
            other => other,
        }
        .map_err(|e| refuse(e.to_string()))?;
        let now = host.now_unix();
        if claims["iss"].as_str() != Some(module.options.issuer.as_str()) {
            return Err(refuse(format!("iss {}", claims["iss"])));
        }
        let audience_ok = match &claims["aud"] {
            serde_json::Value::String(aud) => *aud == module.options.client_id,
            serde_json::Value::Array(auds) => auds
                .iter()
                .any(|a| a.as_str() == Some(module.options.client_id.as_str())),
            _ => false,
        };
        if !audience_ok {
            return Err(refuse(format!("aud {}", claims["aud"])));
        }
        let iat = claims["iat"].as_i64().ok_or_else(|| refuse("no iat".into()))?;
        if iat > now + CLOCK_SKEW || iat < now - LOGIN_TTL as i64 {
            return Err(refuse(format!("iat {iat} is not recent")));
        }
        if claims["exp"].as_i64().is_some_and(|exp| exp + CLOCK_SKEW < now) {
            return Err(refuse("expired".into()));
        }
        if claims.get("nonce").is_some() {
            return Err(refuse("has a nonce".into()));
        }
        if claims["events"].get(BACKCHANNEL_EVENT).is_none() {
            return Err(refuse("no back-channel logout event".into()));
        }
        let jti = claims["jti"].as_str().ok_or_else(|| refuse("no jti".into()))?;
        if host.kv_incr(&format!("jti:{jti}"), Some(2 * LOGIN_TTL)) > 1 {
            return Err(refuse(format!("jti {jti} was already used")));
        }
        let sub = match (claims["sub"].as_str(), claims["sid"].as_str()) {
            (Some(sub), _) => sub.to_string(),
            (None, Some(sid)) => host
                .kv_get(&format!("sid:{sid}"))
                .and_then(|s| String::from_utf8(s).ok())
                .ok_or_else(|| refuse(format!("unknown sid {sid}")))?,
            (None, None) => return Err(refuse("neither sub nor sid".into())),
        };
        // With a sid, only the sessions of that provider session end; with a sub alone, all of
        // the user's (Back-Channel Logout 1.0, 2.6).
        Ok(Outcome::EndSessions {
            subject: subject_of(&module.options.issuer, &sub),
            session_indexes: claims["sid"].as_str().map(str::to_string).into_iter().collect(),
            response: HttpResponse {
                status: 200,
                headers: vec![("cache-control".into(), "no-store".into())],
                body: Vec::new(),
            },
        })
    }
}

/// Signature algorithms accepted on ID and logout tokens: asymmetric ones only, so neither
/// `none` nor an HMAC keyed with a public key can pass.
const ASYMMETRIC_ALGS: &[CoreJwsSigningAlgorithm] = &[
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

impl Plugin for Oidc {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "oidc".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "OpenID Connect relying party: sign-in with an OpenID Provider (code flow, PKCE)".into(),
            capabilities: vec![Capability::BrowserLogin],
        }
    }

    fn validate_options(&self, options: &serde_json::Value) -> Result<ModulePlan, Vec<OptionError>> {
        let options = parse_options(options)?;
        let mut egress_hosts = Vec::new();
        if let Some(issuer) = url::Url::parse(&options.issuer).ok().as_ref().and_then(host_port) {
            egress_hosts.push(issuer);
        }
        egress_hosts.extend(options.provider_hosts.iter().cloned());
        Ok(ModulePlan { egress_hosts })
    }

    fn describe_module(&self, host: &dyn Host, context: &ModuleContext) -> Result<serde_json::Value, PluginError> {
        // Discovery happens here, so the API refuses an issuer whose discovery fails.
        let module = self.module(host, context).map_err(|e| match e {
            PluginError::Upstream(m) => PluginError::BadRequest(m),
            other => other,
        })?;
        if module.options.recheck_interval > 0 && module.metadata.userinfo_endpoint().is_none() {
            return Err(PluginError::BadRequest(
                "recheck_interval needs the provider's userinfo endpoint, which its discovery does not name".into(),
            ));
        }
        Ok(module.outputs())
    }

    fn start_login(
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

    fn handle(&self, host: &dyn Host, context: &ModuleContext, request: &HttpRequest) -> Result<Outcome, PluginError> {
        match request.path.strip_prefix(&context.mount_path).unwrap_or_default() {
            "/callback" => self.callback(host, context, request),
            "/backchannel-logout" => self.backchannel(host, context, request),
            "/logged-out" => Ok(Outcome::Respond(HttpResponse::page(
                200,
                "Signed out",
                "You are signed out of this site and of the identity provider.",
            ))),
            _ => Ok(Outcome::Respond(HttpResponse::page(
                404,
                "Not found",
                "This sign-in module has nothing at this address.",
            ))),
        }
    }

    fn recheck(&self, host: &dyn Host, context: &ModuleContext, identity: &Identity) -> Result<Recheck, PluginError> {
        let module = self.module(host, context)?;
        let Some(data) = identity
            .plugin_data
            .as_deref()
            .and_then(|d| serde_json::from_str::<SessionData>(d).ok())
        else {
            return Ok(Recheck::ended());
        };
        // The latest tokens of this login (refreshed by earlier checks), else the first ones.
        let tokens_key = format!("tokens:{}", hex(&jwt::sha256(data.id_token.as_bytes())));
        let mut tokens = host
            .kv_get(&tokens_key)
            .and_then(|bytes| serde_json::from_slice::<Tokens>(&bytes).ok())
            .unwrap_or(Tokens {
                access_token: data.access_token.clone(),
                refresh_token: data.refresh_token.clone(),
                expires_at: data.expires_at,
            });
        let forwarding = module.options.forward_access_token;
        let now = host.now_unix();
        if tokens.refresh_token.is_none() && tokens.expires_at.is_some_and(|at| at <= now + CLOCK_SKEW) {
            // Neither the forwarded token nor userinfo can be used any longer.
            host.log(
                LogLevel::Info,
                "the access token expired and the provider gave no refresh token: the session ends (the person signs in again)",
            );
            return Ok(Recheck::ended());
        }
        let mut renewed = false;
        // A forwarded access token is renewed while it is still good, when it would expire
        // before the next check; another one when it has expired (or is about to), before
        // userinfo sees it.
        let next_check = now
            .saturating_add(i64::try_from(identity.recheck_interval_secs).unwrap_or(i64::MAX))
            .saturating_add(RENEW_MARGIN);
        let renew_by = if forwarding { next_check } else { now + CLOCK_SKEW };
        if tokens.refresh_token.is_some() && tokens.expires_at.is_some_and(|at| at <= renew_by) {
            if !refresh_tokens(host, &module, &mut tokens, &tokens_key)? {
                return Ok(Recheck::ended());
            }
            renewed = true;
        }
        let allowed = if module.options.recheck_interval == 0 {
            true
        } else {
            match userinfo_allows(host, &module, identity, &mut tokens, &tokens_key, &mut renewed) {
                Ok(allowed) => allowed,
                // An outage keeps the session, as any failed check does; the renewed token
                // still reaches the upstream.
                Err(e) if renewed => {
                    host.log(
                        LogLevel::Warn,
                        &format!("re-check could not reach the provider after renewing the tokens, session kept: {e}"),
                    );
                    true
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Recheck {
            allowed,
            access_token: (allowed && forwarding && renewed).then_some(tokens.access_token),
        })
    }

    fn logout(
        &self,
        host: &dyn Host,
        context: &ModuleContext,
        identity: &Identity,
    ) -> Result<Option<HttpResponse>, PluginError> {
        let module = self.module(host, context)?;
        let Some(end_session) = &module.metadata.additional_metadata().end_session_endpoint else {
            return Ok(None);
        };
        let mut url = url::Url::parse(end_session).map_err(internal)?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(data) = identity
                .plugin_data
                .as_deref()
                .and_then(|d| serde_json::from_str::<SessionData>(d).ok())
            {
                query.append_pair("id_token_hint", &data.id_token);
            }
            query.append_pair("client_id", &module.options.client_id);
            query.append_pair("post_logout_redirect_uri", &format!("{}/logged-out", module.base));
        }
        Ok(Some(HttpResponse::redirect(url.as_str())))
    }
}

/// The gateway's subject for a provider's `sub`: qualified by the issuer.
fn subject_of(issuer: &str, sub: &str) -> String {
    format!("{issuer}!{sub}")
}

/// The cookie that binds a sign-in to its browser, distinct per module; `__Host-` (host-only,
/// Secure, path `/`) on https.
fn binding_cookie(redirect_uri: &str) -> String {
    let digest = jwt::sha256(redirect_uri.as_bytes());
    let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let prefix = if redirect_uri.starts_with("https://") {
        "__Host-"
    } else {
        ""
    };
    format!("{prefix}portcullis-oidc-{short}")
}

/// `email_verified` as providers send it (a boolean, or a string from some userinfo endpoints).
fn is_verified(claim: &serde_json::Value, trust_unverified: bool) -> bool {
    match claim {
        serde_json::Value::Bool(b) => *b || trust_unverified,
        serde_json::Value::String(s) => s == "true" || trust_unverified,
        _ => trust_unverified,
    }
}

/// A claim as a list of strings (a string is a list of one).
fn string_list(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

/// An error with its sources, for logs.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(extra: serde_json::Value) -> Options {
        let mut value = serde_json::json!({"issuer": "https://op.example", "client_id": "c", "client_secret": "s"});
        for (k, v) in extra.as_object().unwrap() {
            value[k] = v.clone();
        }
        parse_options(&value).unwrap()
    }

    #[test]
    fn options_need_issuer_client_and_secret() {
        for (missing, key) in [
            (serde_json::json!({"client_id": "c", "client_secret": "s"}), "issuer"),
            (
                serde_json::json!({"issuer": "https://op", "client_secret": "s"}),
                "client_id",
            ),
            (
                serde_json::json!({"issuer": "https://op", "client_id": "c", "client_secret": ""}),
                "client_secret",
            ),
            (
                serde_json::json!({"issuer": "ftp://op", "client_id": "c", "client_secret": "s"}),
                "issuer",
            ),
            (
                serde_json::json!({"issuer": "https://op", "client_id": "c", "client_secret": "s", "scopes": ["email"]}),
                "scopes",
            ),
            (
                serde_json::json!({"issuer": "https://op", "client_id": "c", "client_secret": "s", "redirect_uri": "x"}),
                "redirect_uri",
            ),
        ] {
            assert_eq!(parse_options(&missing).unwrap_err()[0].key, key, "{missing}");
        }
        assert_eq!(options(serde_json::json!({})).scopes(), ["openid", "profile", "email"]);
        let insecure = serde_json::json!({"issuer": "http://op.example", "client_id": "c", "client_secret": "s"});
        assert_eq!(parse_options(&insecure).unwrap_err()[0].key, "issuer");
        let mut allowed = insecure.clone();
        allowed["allow_insecure_issuer"] = true.into();
        assert!(parse_options(&allowed).is_ok());
        for fine in ["http://127.0.0.1:9000", "http://localhost", "https://op.example/tenant"] {
            let value = serde_json::json!({"issuer": fine, "client_id": "c", "client_secret": "s"});
            assert!(parse_options(&value).is_ok(), "{fine}");
        }
    }

    fn module_with(options: serde_json::Value, scopes_supported: &[&str]) -> Module {
        let metadata: Metadata = serde_json::from_value(serde_json::json!({
            "issuer": "https://op.example",
            "authorization_endpoint": "https://op.example/auth",
            "jwks_uri": "https://op.example/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": scopes_supported,
        }))
        .unwrap();
        Module {
            options_json: String::new(),
            origin: "https://app.example".into(),
            options: self::options(options),
            metadata,
            fetched_at: 0,
            jwks_refreshed_at: 0,
            redirect_uri: "https://app.example/cb".into(),
            base: "https://app.example".into(),
        }
    }

    #[test]
    fn the_groups_scope_and_offline_access_are_asked_for_only_when_offered_and_needed() {
        let all = ["openid", "offline_access", "email", "profile", "groups"];
        let scopes = |options, offered: &[&str]| module_with(options, offered).requested_scopes();
        assert_eq!(
            scopes(serde_json::json!({}), &all),
            ["openid", "profile", "email", "groups"]
        );
        assert_eq!(
            scopes(serde_json::json!({"recheck_interval": 60}), &all),
            ["openid", "profile", "email", "groups", "offline_access"]
        );
        assert_eq!(
            scopes(
                serde_json::json!({"forward_access_token": true, "groups_scope": ""}),
                &all
            ),
            ["openid", "profile", "email", "offline_access"]
        );
        // A provider that does not list them (Google lists openid, email, profile) gets neither.
        assert_eq!(
            scopes(
                serde_json::json!({"forward_access_token": true}),
                &["openid", "email", "profile"]
            ),
            ["openid", "profile", "email"]
        );
        assert_eq!(
            scopes(
                serde_json::json!({"groups_scope": "roles", "scopes": ["openid", "roles"]}),
                &["openid", "roles"]
            ),
            ["openid", "roles"]
        );
        // Off for a provider that issues refresh tokens without it (Keycloak's offline tokens).
        assert_eq!(
            scopes(
                serde_json::json!({"recheck_interval": 60, "request_offline_access": false}),
                &all
            ),
            ["openid", "profile", "email", "groups"]
        );
        let value =
            serde_json::json!({"issuer": "https://op", "client_id": "c", "client_secret": "s", "groups_scope": "a b"});
        assert_eq!(parse_options(&value).unwrap_err()[0].key, "groups_scope");
        let value = serde_json::json!({"issuer": "https://op", "client_id": "c", "client_secret": "s", "offline_access_prompt": "none"});
        assert_eq!(parse_options(&value).unwrap_err()[0].key, "offline_access_prompt");
    }

    #[test]
    fn a_prompt_goes_only_with_offline_access_and_only_when_configured() {
        let all = ["openid", "offline_access", "email", "profile"];
        let prompt = |options| {
            let module = module_with(options, &all);
            module.prompt(&module.requested_scopes()).map(str::to_string)
        };
        // By default none: most providers issue refresh tokens without one, and would show
        // their consent page at every sign-in with `consent`.
        assert_eq!(prompt(serde_json::json!({"forward_access_token": true})), None);
        assert_eq!(
            prompt(serde_json::json!({"forward_access_token": true, "offline_access_prompt": "consent"})).as_deref(),
            Some("consent")
        );
        // Without offline_access, never.
        assert_eq!(prompt(serde_json::json!({"offline_access_prompt": "consent"})), None);
        assert_eq!(
            prompt(
                serde_json::json!({"recheck_interval": 60, "request_offline_access": false, "offline_access_prompt": "consent"})
            ),
            None
        );
        // The log says where to look when the refresh token does not come.
        let hint = |options, offered: &[&str]| module_with(options, offered).no_refresh_token_hint();
        assert!(hint(serde_json::json!({"recheck_interval": 60}), &all).contains("offline_access_prompt"));
        assert!(hint(serde_json::json!({"recheck_interval": 60}), &["openid"]).contains("does not list offline_access"));
        assert!(hint(
            serde_json::json!({"recheck_interval": 60, "request_offline_access": false}),
            &all
        )
        .contains("request_offline_access is off"));
        assert!(!hint(
            serde_json::json!({"recheck_interval": 60, "offline_access_prompt": "consent"}),
            &all
        )
        .contains("offline_access_prompt"));
    }

    #[test]
    fn email_verification_and_binding_cookie_names() {
        assert!(is_verified(&serde_json::json!(true), false));
        assert!(is_verified(&serde_json::json!("true"), false));
        assert!(!is_verified(&serde_json::json!("false"), false));
        assert!(!is_verified(&serde_json::Value::Null, false));
        assert!(is_verified(&serde_json::Value::Null, true));
        assert!(binding_cookie("https://a.test/cb").starts_with("__Host-portcullis-oidc-"));
        assert!(binding_cookie("http://a.test/cb").starts_with("portcullis-oidc-"));
    }

    #[test]
    fn access_rules_combine_addresses_and_groups() {
        let groups = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let open = options(serde_json::json!({}));
        assert!(open.admits(None, true, &[]));
        let by_domain =
            options(serde_json::json!({"allow_domains": ["Example.com"], "allow_emails": ["bob@corp.example"]}));
        assert!(by_domain.admits(Some("alice@example.com"), true, &[]));
        assert!(by_domain.admits(Some("BOB@corp.example"), true, &[]));
        assert!(!by_domain.admits(Some("alice@example.com.evil"), true, &[]));
        assert!(
            !by_domain.admits(Some("alice@example.com"), false, &[]),
            "an unverified email"
        );
        assert!(!by_domain.admits(None, true, &[]));
        let by_group = options(serde_json::json!({"authorized_groups": ["eng"], "allow_domains": ["example.com"]}));
        assert!(by_group.admits(Some("a@example.com"), true, &groups(&["eng"])));
        assert!(!by_group.admits(Some("a@example.com"), true, &groups(&["sales"])));
        assert!(!by_group.admits(Some("a@other.com"), true, &groups(&["eng"])));
    }
}
