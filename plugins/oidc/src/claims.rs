//! Claims and access rules: the claims of a verified ID token completed from userinfo (same
//! `sub`, the ID token's own claims never taken from userinfo), how providers send
//! `email_verified` and lists, the gateway's subject for a provider's `sub`, and the rules
//! (`allow_emails`, `allow_domains`, `authorized_groups`) a user must pass. Verifying the ID
//! token is `flow.rs`'s; checking the rules again later is `renewal.rs`'s.

use crate::module::{Module, Options};
use crate::provider::userinfo;
use portcullis_plugin_sdk::{Host, LogLevel, PluginError};

impl Options {
    /// Whether a user with this email and these groups may sign in.
    pub(crate) fn admits(&self, email: Option<&str>, email_verified: bool, groups: &[String]) -> bool {
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

/// The claims of a verified ID token, completed from the provider's userinfo endpoint when it
/// lacks one the module uses (email, name, groups): providers that follow OpenID Connect Core
/// 5.4 return the claims of the `email` and `profile` scopes from userinfo only, unless the
/// ID token is the only token issued. Userinfo counts only for the same `sub` (Core 5.3.2);
/// the ID token's claims win where both have one.
pub(crate) fn with_userinfo_claims(
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

/// The gateway's subject for a provider's `sub`: qualified by the issuer.
pub(crate) fn subject_of(issuer: &str, sub: &str) -> String {
    format!("{issuer}!{sub}")
}

/// `email_verified` as providers send it (a boolean, or a string from some userinfo endpoints).
pub(crate) fn is_verified(claim: &serde_json::Value, trust_unverified: bool) -> bool {
    match claim {
        serde_json::Value::Bool(b) => *b || trust_unverified,
        serde_json::Value::String(s) => s == "true" || trust_unverified,
        _ => trust_unverified,
    }
}

/// A claim as a list of strings (a string is a list of one).
pub(crate) fn string_list(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::binding_cookie;
    use crate::module::tests::options;

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
