//! Re-checks and token renewal: the tokens a login holds (the latest kept in the host's store),
//! renewed with the refresh token before the forwarded access token or userinfo would see an
//! expired one, and the user's access asked again at the userinfo endpoint under the module's
//! rules. The sign-in that first issues the tokens is `flow.rs`'s; the rules are `claims.rs`'s.

use crate::claims::{is_verified, string_list, subject_of};
use crate::flow::SessionData;
use crate::provider::{userinfo, HostHttp};
use crate::{error_chain, hex, internal, jwt, module::Module, Oidc, CLOCK_SKEW, SID_TTL};
use openidconnect::{OAuth2TokenResponse, RefreshToken};
use portcullis_plugin_sdk::{Host, Identity, LogLevel, ModuleContext, PluginError, Recheck};
use serde::{Deserialize, Serialize};

/// A forwarded access token is renewed when it would expire within this many seconds after
/// the next re-check (the upkeep runs every 10 seconds; a provider may be slow).
const RENEW_MARGIN: i64 = 120;
/// Bounds of how often a forwarded access token is looked at: half its lifetime.
pub(crate) const RENEW_EVERY: (u64, u64) = (30, 3600);

impl Oidc {
    /// A session's periodic check: its tokens renewed when due, its access asked again at userinfo.
    pub(crate) fn recheck_session(
        &self,
        host: &dyn Host,
        context: &ModuleContext,
        identity: &Identity,
    ) -> Result<Recheck, PluginError> {
        let module = self.module(host, context)?;
        let Some(data) = SessionData::of(identity) else {
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
pub(crate) fn expiry(host: &dyn Host, expires_in: Option<std::time::Duration>) -> Option<i64> {
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
