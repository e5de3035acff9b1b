//! What the plugin asks the provider through the host, and the cache of what it learns: the
//! gateway's HTTP client as openidconnect's, discovery and the JWKS cached per module (a failed
//! discovery remembered for a while, stale metadata kept while the provider is down, the JWKS
//! refetched for an unknown key id), and calls to the userinfo endpoint. What is done with the
//! answers is left to the sign-in (`flow.rs`), the claims (`claims.rs`) and re-checks
//! (`renewal.rs`).

use crate::module::{parse_options, Metadata, Module};
use crate::{error_chain, internal, Oidc};
use openidconnect::core::CoreJsonWebKeySet;
use openidconnect::IssuerUrl;
use portcullis_plugin_sdk::{Host, HttpResponse, LogLevel, ModuleContext, OutboundRequest, PluginError};
use std::sync::Arc;

/// How long discovery and the JWKS are kept before they are fetched again, in seconds.
const METADATA_TTL: i64 = 3600;
/// The least time between two JWKS fetches caused by unknown key ids, in seconds.
const JWKS_REFRESH_INTERVAL: i64 = 60;
/// How long a failed discovery is remembered before it is tried again, in seconds.
const DISCOVERY_RETRY: i64 = 30;

/// The gateway's HTTP client as openidconnect's: one blocking call through the host.
pub(crate) struct HostHttp<'a>(pub(crate) &'a dyn Host);

#[derive(Debug)]
pub(crate) struct HttpError(String);

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for HttpError {}

impl HostHttp<'_> {
    pub(crate) fn call(&self, request: openidconnect::HttpRequest) -> Result<openidconnect::HttpResponse, HttpError> {
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

impl Oidc {
    pub(crate) fn module(&self, host: &dyn Host, context: &ModuleContext) -> Result<Arc<Module>, PluginError> {
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
    pub(crate) fn refresh_jwks(
        &self,
        host: &dyn Host,
        context: &ModuleContext,
        module: &Module,
    ) -> Option<Arc<Module>> {
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
}

/// Calls the provider's userinfo endpoint with an access token.
pub(crate) fn userinfo(host: &dyn Host, module: &Module, access_token: &str) -> Result<HttpResponse, PluginError> {
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
