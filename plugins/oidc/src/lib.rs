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

mod claims;
mod flow;
mod jwt;
mod logout;
mod module;
mod provider;
mod renewal;

use module::{host_port, parse_options, Module};
use openidconnect::core::CoreJwsSigningAlgorithm;
use portcullis_plugin_sdk::{
    Capability, Host, HttpRequest, HttpResponse, Identity, ModuleContext, ModulePlan, OptionError, Outcome, Plugin,
    PluginError, PluginInfo, Recheck,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How long a sign-in may take at the provider, in seconds.
const LOGIN_TTL: u64 = 600;
/// Tolerated clock difference with the provider, in seconds.
const CLOCK_SKEW: i64 = 60;
/// How long a provider session id is mapped to its user, for back-channel logouts by `sid`
/// (longer than any session).
const SID_TTL: u64 = 400 * 86_400;

/// The plugin. Modules (with their provider's metadata) are cached per options.
#[derive(Default)]
pub struct Oidc {
    modules: Mutex<HashMap<String, Arc<Module>>>,
    /// The last failed discovery per module: (options, when, why), so that a provider that is
    /// down is not asked again by every request.
    failures: Mutex<HashMap<String, (String, i64, String)>>,
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
            provisioning_path: None,
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
        self.start_sign_in(host, context, return_to, request)
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
        self.recheck_session(host, context, identity)
    }

    fn logout(
        &self,
        host: &dyn Host,
        context: &ModuleContext,
        identity: &Identity,
    ) -> Result<Option<HttpResponse>, PluginError> {
        self.rp_initiated_logout(host, context, identity)
    }
}

fn internal(e: impl std::fmt::Display) -> PluginError {
    PluginError::Internal(e.to_string())
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
