//! An OIDC module's settings: its options as the API and `config.toml` write them (checked
//! here), the provider's metadata with the fields openidconnect leaves to its caller, and the
//! module built from both (URLs, openidconnect's client, the scopes and `prompt` it asks for,
//! what the API shows). Fetching the metadata and caching modules is `provider.rs`'s; the
//! access rules on the options are `claims.rs`'s.

use crate::internal;
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode, CoreResponseType,
    CoreSubjectIdentifierType,
};
use openidconnect::{AdditionalProviderMetadata, AuthType, ClientId, ClientSecret, ProviderMetadata, RedirectUrl};
use portcullis_plugin_sdk::{option_error, read_options, OptionError, PluginError};
use serde::{Deserialize, Serialize};

/// The read-only fields the gateway computes; writing them is refused.
const OUTPUTS: [&str; 3] = ["redirect_uri", "post_logout_redirect_uri", "backchannel_logout_uri"];

/// Provider metadata fields openidconnect leaves to the caller.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub(crate) struct ExtraMetadata {
    pub(crate) end_session_endpoint: Option<String>,
    /// RFC 9207: the provider names itself (`iss`) in every authorization response.
    #[serde(default)]
    pub(crate) authorization_response_iss_parameter_supported: Option<bool>,
}
impl AdditionalProviderMetadata for ExtraMetadata {}

pub(crate) type Metadata = ProviderMetadata<
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
pub(crate) struct Options {
    pub(crate) issuer: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    #[serde(default)]
    pub(crate) scopes: Vec<String>,
    /// Only these email addresses may sign in (with `allow_domains`: either list).
    #[serde(default)]
    pub(crate) allow_emails: Vec<String>,
    /// Only addresses in these email domains may sign in.
    #[serde(default)]
    pub(crate) allow_domains: Vec<String>,
    /// Only members of one of these groups may sign in.
    #[serde(default)]
    pub(crate) authorized_groups: Vec<String>,
    /// The claim that lists the user's groups.
    #[serde(default = "default_groups")]
    pub(crate) groups_claim: String,
    /// The scope that asks the provider for the groups claim, requested when the provider's
    /// discovery lists it in `scopes_supported` (empty: never requested).
    #[serde(default = "default_groups")]
    pub(crate) groups_scope: String,
    /// Asks for `offline_access` when sessions need a refresh token and the provider lists the
    /// scope. Off for providers that issue refresh tokens without it and give it another
    /// meaning (Keycloak: offline tokens, which outlive the user's Keycloak session and need the
    /// `offline_access` role).
    #[serde(default = "default_true")]
    pub(crate) request_offline_access: bool,
    /// The `prompt` sent with `offline_access` (empty, the default: none). `consent` for the
    /// providers that keep `offline_access` only with it, as OpenID Connect Core 11 words it
    /// (node oidc-provider); sent to the others it shows their consent page at every sign-in
    /// (Entra ID; Okta for scopes that ask consent) or stops users who may not consent.
    #[serde(default)]
    pub(crate) offline_access_prompt: String,
    /// Seconds between checks at the provider's userinfo endpoint that the user still has
    /// access (0: never).
    #[serde(default)]
    pub(crate) recheck_interval: u64,
    /// Sends the access token to the upstream (in the identity headers' `access_token` header).
    #[serde(default)]
    pub(crate) forward_access_token: bool,
    /// Further `host:port`s the provider's endpoints live on, beyond the issuer's.
    #[serde(default)]
    pub(crate) provider_hosts: Vec<String>,
    /// `client_secret_basic` or `client_secret_post`, as the client is registered at the
    /// provider; by default basic when the provider advertises it, else post.
    #[serde(default)]
    pub(crate) token_auth_method: Option<String>,
    /// Treats an email without `email_verified: true` as verified (for providers that never
    /// send the claim and verify every address). Off: an unverified address matches no rule.
    #[serde(default)]
    pub(crate) trust_unverified_email: bool,
    /// Accepts an `http://` issuer that is not on loopback (discovery, keys and the client
    /// secret would cross the network in clear text).
    #[serde(default)]
    pub(crate) allow_insecure_issuer: bool,
}

fn default_groups() -> String {
    "groups".into()
}

fn default_true() -> bool {
    true
}

impl Options {
    pub(crate) fn scopes(&self) -> Vec<String> {
        if self.scopes.is_empty() {
            vec!["openid".into(), "profile".into(), "email".into()]
        } else {
            self.scopes.clone()
        }
    }

    /// Whether sessions need a refresh token: to renew the forwarded access token, or to ask
    /// userinfo again after the first access token expired.
    pub(crate) fn needs_refresh_token(&self) -> bool {
        self.forward_access_token || self.recheck_interval > 0
    }
}

pub(crate) fn parse_options(value: &serde_json::Value) -> Result<Options, Vec<OptionError>> {
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
pub(crate) fn host_port(url: &url::Url) -> Option<String> {
    Some(format!("{}:{}", url.host_str()?, url.port_or_known_default()?))
}

/// A module, ready to serve: options, the provider's metadata, URLs.
pub(crate) struct Module {
    pub(crate) options_json: String,
    pub(crate) origin: String,
    pub(crate) options: Options,
    pub(crate) metadata: Metadata,
    pub(crate) fetched_at: i64,
    pub(crate) jwks_refreshed_at: i64,
    pub(crate) redirect_uri: String,
    pub(crate) base: String,
}

impl Module {
    pub(crate) fn client(&self) -> Result<OidcClient, PluginError> {
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
    pub(crate) fn requested_scopes(&self) -> Vec<String> {
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
    pub(crate) fn prompt(&self, scopes: &[String]) -> Option<&str> {
        let prompt = self.options.offline_access_prompt.as_str();
        (!prompt.is_empty() && scopes.iter().any(|s| s == "offline_access")).then_some(prompt)
    }

    /// What to look at when the provider gave a sign-in that needs one no refresh token.
    pub(crate) fn no_refresh_token_hint(&self) -> &'static str {
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

    pub(crate) fn outputs(&self) -> serde_json::Value {
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

pub(crate) type OidcClient = openidconnect::Client<
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn options(extra: serde_json::Value) -> Options {
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
}
