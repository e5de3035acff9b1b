//! Test fixture: a browser-login plugin, loaded as a library, that panics in every login call.

use portcullis_plugin_sdk::{
    export_plugin, Capability, Host, HttpRequest, HttpResponse, ModuleContext, ModulePlan, OptionError, Outcome,
    Plugin, PluginError, PluginInfo,
};

struct Panicky;

impl Plugin for Panicky {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "panicky".into(),
            version: "0.0.0".into(),
            description: "panics on purpose (test fixture)".into(),
            capabilities: vec![Capability::BrowserLogin],
            provisioning_path: None,
        }
    }

    fn validate_options(&self, _options: &serde_json::Value) -> Result<ModulePlan, Vec<OptionError>> {
        Ok(ModulePlan::default())
    }

    fn start_login(
        &self,
        _: &dyn Host,
        _: &ModuleContext,
        _: &str,
        _: &HttpRequest,
    ) -> Result<HttpResponse, PluginError> {
        panic!("panicky plugin: start_login blew up")
    }

    fn handle(&self, _: &dyn Host, _: &ModuleContext, _: &HttpRequest) -> Result<Outcome, PluginError> {
        panic!("panicky plugin: handle blew up")
    }
}

export_plugin!(Panicky);
