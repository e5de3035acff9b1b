//! Logout: RP-initiated (the browser sent to the provider's `end_session_endpoint` with the ID
//! token as hint) and back-channel (a `logout_token` the provider posts, verified by `jwt.rs`
//! and checked per OIDC Back-Channel Logout 1.0, ending the sessions of its `sub` or `sid`).
//! Ending the gateway's sessions is the host's.

use crate::claims::subject_of;
use crate::flow::SessionData;
use crate::{internal, jwt, module::Module, Oidc, ASYMMETRIC_ALGS, CLOCK_SKEW, LOGIN_TTL};
use portcullis_plugin_sdk::{
    form_value, Host, HttpRequest, HttpResponse, Identity, LogLevel, ModuleContext, Outcome, PluginError,
};

const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

impl Oidc {
    /// RP-initiated logout: the browser sent to the provider's `end_session_endpoint`, if it has one.
    pub(crate) fn rp_initiated_logout(
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
            if let Some(data) = SessionData::of(identity) {
                query.append_pair("id_token_hint", &data.id_token);
            }
            query.append_pair("client_id", &module.options.client_id);
            query.append_pair("post_logout_redirect_uri", &format!("{}/logged-out", module.base));
        }
        Ok(Some(HttpResponse::redirect(url.as_str())))
    }

    /// OIDC Back-Channel Logout: the provider posts a signed `logout_token`.
    pub(crate) fn backchannel(
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
