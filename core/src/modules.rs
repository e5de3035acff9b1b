//! Route auth modules: parsing a module's flat JSON (common options and the plugin's own,
//! validated through the plugin), the JSON the API shows, and asking a module's plugin to
//! describe it (its read-only outputs) or check that it can work. Used by the management API
//! and config application, never on the edge's request path.

use crate::model::AuthModule;
use crate::plugins::Registry;
use crate::state::Shared;
use portcullis_plugin_sdk::{Call, Capability, ModuleContext, Outcome, PluginError};
use serde_json::{Map, Value};
use std::sync::Arc;

/// A module option that is wrong: the option's key and what is wrong.
pub type ModuleError = (String, String);

/// Builds an auth module for `plugin` from its flat JSON object (common options and the
/// plugin's own), validating both.
pub async fn parse_module(
    registry: &Registry,
    plugin: &str,
    mut object: Map<String, Value>,
) -> Result<AuthModule, ModuleError> {
    let registered = registry
        .get(plugin)
        .filter(|p| p.info.capabilities.contains(&Capability::BrowserLogin))
        .cloned()
        .ok_or_else(|| {
            (
                String::new(),
                format!("no browser-login plugin named `{plugin}` is registered"),
            )
        })?;
    object.remove("plugin");
    let flag = |object: &mut Map<String, Value>, key: &str, default: bool| match object.remove(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(b),
        Some(other) => Err((key.to_string(), format!("must be true or false, not {other}"))),
    };
    let seconds = |object: &mut Map<String, Value>, key: &str| match object.remove(key) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| (key.to_string(), format!("must be a whole number of seconds, not {n}"))),
        Some(other) => Err((
            key.to_string(),
            format!("must be a whole number of seconds, not {other}"),
        )),
    };
    let enabled = flag(&mut object, "enabled", true)?;
    let options_passthrough = flag(&mut object, "options_passthrough", false)?;
    let cookie_prefix = match object.remove("cookie_prefix") {
        None | Some(Value::Null) => crate::model::DEFAULT_COOKIE_PREFIX.to_string(),
        Some(Value::String(s)) if s.is_empty() => crate::model::DEFAULT_COOKIE_PREFIX.to_string(),
        Some(Value::String(s)) => s,
        Some(other) => return Err(("cookie_prefix".into(), format!("must be a string, not {other}"))),
    };
    crate::model::validate_cookie_prefix(&cookie_prefix).map_err(|m| ("cookie_prefix".to_string(), m.to_string()))?;
    let inactivity_timeout = seconds(&mut object, "inactivity_timeout")?;
    let maximum_duration = seconds(&mut object, "maximum_duration")?;
    let options_json = Value::Object(object).to_string();
    let call = Call::ValidateOptions {
        options_json: options_json.clone(),
    };
    let host = registry.detached_host();
    let answer = tokio::task::spawn_blocking(move || registered.call(&host, call))
        .await
        .map_err(|e| (String::new(), format!("the plugin's validation did not finish: {e}")))?;
    let plan = match answer {
        Ok(Outcome::Valid(plan)) => plan,
        Ok(Outcome::Invalid(errors)) => {
            let first = errors.into_iter().next().map(|e| (e.key, e.message));
            return Err(first.unwrap_or_else(|| (String::new(), "the plugin refused the options".into())));
        }
        Ok(other) => return Err((String::new(), format!("the plugin answered {other:?} to a validation"))),
        Err(e) => return Err((String::new(), format!("the plugin failed to validate the options: {e}"))),
    };
    Ok(AuthModule {
        plugin: plugin.to_string(),
        enabled,
        options_passthrough,
        cookie_prefix,
        inactivity_timeout: if inactivity_timeout == 0 {
            crate::model::DEFAULT_INACTIVITY_TIMEOUT
        } else {
            inactivity_timeout
        },
        maximum_duration: if maximum_duration == 0 {
            crate::model::DEFAULT_MAXIMUM_DURATION
        } else {
            maximum_duration
        },
        options_json,
        egress_hosts: plan.egress_hosts,
    })
}

/// The flat JSON of a module, as the API shows it: its options and its plugin's outputs.
pub fn module_json(module: &AuthModule, outputs: Option<&Map<String, Value>>) -> Value {
    let mut object = match serde_json::from_str::<Value>(&module.options_json) {
        Ok(Value::Object(object)) => object,
        _ => Map::new(),
    };
    for (key, value) in outputs.into_iter().flatten() {
        object.insert(key.clone(), value.clone());
    }
    object.insert("enabled".into(), module.enabled.into());
    object.insert("options_passthrough".into(), module.options_passthrough.into());
    object.insert("cookie_prefix".into(), module.cookie_prefix.clone().into());
    object.insert("inactivity_timeout".into(), module.inactivity_timeout.into());
    object.insert("maximum_duration".into(), module.maximum_duration.into());
    Value::Object(object)
}

/// A module's read-only outputs by route id (see [`describe_modules`]).
pub type ModuleOutputs = std::collections::HashMap<String, Map<String, Value>>;

/// Asks each module's plugin for its read-only outputs (the SAML entity id, URLs to register
/// at the IdP, ...), in one blocking task. `modules` are (route id, edge hostports, module).
/// A plugin that fails is logged and its module shown without outputs.
pub async fn describe_modules(shared: &Arc<Shared>, modules: Vec<(String, Vec<String>, AuthModule)>) -> ModuleOutputs {
    if modules.is_empty() {
        return ModuleOutputs::new();
    }
    let shared = shared.clone();
    let runtime = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        let mut outputs = ModuleOutputs::new();
        for (route_id, hostports, module) in modules {
            match describe_one(&shared, &runtime, &route_id, &hostports, &module) {
                Ok(object) => {
                    outputs.insert(route_id, object);
                }
                Err(e) => tracing::error!(plugin = %module.plugin, route = %route_id, "describe_module: {e}"),
            }
        }
        outputs
    });
    task.await.unwrap_or_default()
}

/// Asks a module's plugin for its outputs, and so whether the module can work (a provider it
/// must reach, state it must make): the API refuses a module whose plugin fails here.
pub async fn check_module(
    shared: &Arc<Shared>,
    route_id: &str,
    hostports: &[String],
    module: &AuthModule,
) -> Result<(), PluginError> {
    let (shared, runtime) = (shared.clone(), tokio::runtime::Handle::current());
    let (route_id, hostports, module) = (route_id.to_string(), hostports.to_vec(), module.clone());
    tokio::task::spawn_blocking(move || describe_one(&shared, &runtime, &route_id, &hostports, &module).map(|_| ()))
        .await
        .unwrap_or_else(|e| Err(PluginError::Internal(format!("the check did not finish: {e}"))))
}

fn describe_one(
    shared: &Arc<Shared>,
    runtime: &tokio::runtime::Handle,
    route_id: &str,
    hostports: &[String],
    module: &AuthModule,
) -> Result<Map<String, Value>, PluginError> {
    let plugin = shared
        .registry
        .get(&module.plugin)
        .ok_or_else(|| PluginError::Internal(format!("no plugin `{}` is registered", module.plugin)))?;
    let host = shared
        .ports()
        .module_host(&module.plugin, route_id, &module.egress_hosts, runtime.clone());
    let scheme = shared.config.load().listeners.edge.scheme();
    let call = Call::DescribeModule {
        module: ModuleContext {
            module_id: route_id.to_string(),
            options_json: module.options_json.clone(),
            origin: crate::routing::public_origin(scheme, hostports),
            mount_path: crate::signin::mount_path(route_id),
        },
    };
    match plugin.call(&host, call)? {
        Outcome::Described { outputs_json } => match serde_json::from_str(&outputs_json) {
            Ok(Value::Object(object)) => Ok(object),
            _ => Err(PluginError::Internal("module outputs are not a JSON object".into())),
        },
        other => Err(PluginError::Internal(format!("describe_module answered {other:?}"))),
    }
}
