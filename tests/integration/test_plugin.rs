//! `testlogin`: a linked-in plugin for tests of what core does around any plugin. It logs in
//! whoever `GET <mount>/login?user=U&return_to=R` names, with exactly that `return_to`, so the
//! tests can hand core hostile return URLs; `<mount>/panic` panics; `<mount>/directory?email=E`
//! tries the directory port from a sign-in call (which must refuse). It also provisions, on the
//! console: `/testlogin/set-active?email=E&active=true|false` (with the API key,
//! [`set_active`]) (de)activates a person through the host's directory port, as SCIM would
//! (provisioning one it does not know);
//! it tries the port for a refused caller too, and reports what the port answered.

use crate::harness::{send, Reply, TestGateway};
use portcullis_plugin_sdk::{
    Caller, Capability, Host, HttpRequest, HttpResponse, Identity, ModuleContext, ModulePlan, NewPerson, OptionError,
    Outcome, PersonPatch, Plugin, PluginError, PluginInfo, ProvisioningRequest, Recheck,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The plugin; `calls` counts the calls the gateway made to it (besides `info`).
#[derive(Default)]
pub struct TestLogin {
    pub calls: Arc<AtomicUsize>,
}

pub fn options() -> portcullis::server::StartOptions {
    counted_options().0
}

/// Options with the plugin, and its call counter.
pub fn counted_options() -> (portcullis::server::StartOptions, Arc<AtomicUsize>) {
    let plugin = TestLogin::default();
    let calls = plugin.calls.clone();
    let options = portcullis::server::StartOptions {
        extra_plugins: vec![Arc::new(plugin)],
        ..Default::default()
    };
    (options, calls)
}

fn query_param(query: &str, name: &str) -> Option<String> {
    portcullis_plugin_sdk::form_value(query, name)
}

impl Plugin for TestLogin {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "testlogin".into(),
            version: "0.0.0".into(),
            description: "logs anyone in (tests only)".into(),
            capabilities: vec![Capability::BrowserLogin, Capability::Provisioning],
            provisioning_path: Some("/testlogin".into()),
        }
    }

    fn validate_options(&self, options: &serde_json::Value) -> Result<ModulePlan, Vec<OptionError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let object = options.as_object().cloned().unwrap_or_default();
        match object.keys().find(|k| *k != "groups" && *k != "egress") {
            Some(unknown) => Err(vec![OptionError {
                key: unknown.clone(),
                message: "unknown option".into(),
            }]),
            None => Ok(ModulePlan {
                egress_hosts: object
                    .get("egress")
                    .and_then(|e| serde_json::from_value(e.clone()).ok())
                    .unwrap_or_default(),
            }),
        }
    }

    fn start_login(
        &self,
        _: &dyn Host,
        module: &ModuleContext,
        return_to: &str,
        _: &HttpRequest,
    ) -> Result<HttpResponse, PluginError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(HttpResponse::redirect(&format!(
            "{}/login?return_to={}",
            module.mount_path,
            return_to.replace('%', "%25").replace('&', "%26")
        )))
    }

    fn handle(&self, host: &dyn Host, module: &ModuleContext, request: &HttpRequest) -> Result<Outcome, PluginError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if request.path.ends_with("/panic") {
            panic!("testlogin: panic on purpose");
        }
        let query = request.query.clone().unwrap_or_default();
        let param = |name: &str| query_param(&query, name).unwrap_or_default();
        let text = |body: String| {
            Ok(Outcome::Respond(HttpResponse {
                status: 200,
                headers: vec![],
                body: body.into_bytes(),
            }))
        };
        // Host services, exercised through the plugin's own endpoints.
        if request.path.ends_with("/kv-put") {
            host.kv_put(&param("key"), param("value").as_bytes(), param("ttl").parse().ok());
            return text("stored".into());
        }
        if request.path.ends_with("/kv-get") {
            return text(
                host.kv_get(&param("key"))
                    .map_or("<none>".into(), |v| String::from_utf8_lossy(&v).into_owned()),
            );
        }
        if request.path.ends_with("/directory") {
            // A sign-in call may neither read nor write people.
            let email = param("email");
            let created = host.create_person(NewPerson {
                email: email.clone(),
                name: "From a sign-in".into(),
                active: true,
                external_id: None,
            });
            return text(format!(
                "lookup {:?}; create {:?}",
                host.person_by_email(&email),
                created
            ));
        }
        if request.path.ends_with("/fetch") {
            let outbound = portcullis_plugin_sdk::OutboundRequest {
                method: "GET".into(),
                url: param("url"),
                headers: vec![],
                body: vec![],
            };
            return text(match host.http(outbound) {
                Ok(response) => format!("status {}", response.status),
                Err(e) => format!("refused: {e}"),
            });
        }
        let user = query_param(&query, "user").ok_or_else(|| PluginError::BadRequest("no user".into()))?;
        let groups = serde_json::from_str::<serde_json::Value>(&module.options_json)
            .ok()
            .and_then(|o| o.get("groups").cloned())
            .and_then(|g| serde_json::from_value(g).ok())
            .unwrap_or_default();
        Ok(Outcome::LoggedIn {
            identity: Identity {
                subject: user.clone(),
                email: Some(format!("{user}@example.com")),
                // The plugin stands in for a provider that verified the address.
                email_verified: true,
                name: Some(format!("User {user}")),
                groups,
                attributes: Default::default(),
                plugin_data: None,
                access_token: None,
                recheck_interval_secs: 0,
                session_index: None,
            },
            return_to: query_param(&query, "return_to").unwrap_or_else(|| "/".into()),
        })
    }

    fn describe_module(&self, _: &dyn Host, _: &ModuleContext) -> Result<serde_json::Value, PluginError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(serde_json::json!({}))
    }

    fn recheck(&self, _: &dyn Host, _: &ModuleContext, _: &Identity) -> Result<Recheck, PluginError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Recheck::allowed())
    }

    fn logout(&self, _: &dyn Host, _: &ModuleContext, _: &Identity) -> Result<Option<HttpResponse>, PluginError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(None)
    }

    fn provision(&self, host: &dyn Host, provisioning: &ProvisioningRequest) -> Result<HttpResponse, PluginError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = |status: u16, body: String| {
            Ok(HttpResponse {
                status,
                headers: vec![],
                body: body.into_bytes(),
            })
        };
        let request = &provisioning.request;
        if request.path != "/testlogin/set-active" {
            return answer(404, "no such provisioning call".into());
        }
        let query = request.query.clone().unwrap_or_default();
        let param = |name: &str| query_param(&query, name).unwrap_or_default();
        // Tried whoever the caller is: the port, not the plugin, must refuse a refused caller.
        let outcome = match host.person_by_email(&param("email")) {
            Ok(Some(person)) => host
                .update_person(
                    &person.id,
                    PersonPatch {
                        active: Some(param("active") == "true"),
                        ..Default::default()
                    },
                )
                .map(|person| format!("active {}", person.active)),
            // Someone the directory does not know yet is provisioned (as SCIM's POST would).
            Ok(None) => host
                .create_person(NewPerson {
                    email: param("email"),
                    name: String::new(),
                    active: param("active") == "true",
                    external_id: None,
                })
                .map(|person| format!("active {}", person.active)),
            Err(e) => Err(e),
        };
        match (&provisioning.caller, outcome) {
            (Caller::Refused { status, reason }, outcome) => {
                answer(*status, format!("refused: {reason}; directory: {outcome:?}"))
            }
            (Caller::ApiKey { .. }, Ok(text)) => answer(200, text),
            (Caller::ApiKey { .. }, Err(e)) => answer(500, format!("refused: {e}")),
        }
    }
}

/// (De)activates the person with `email` through `testlogin`'s provisioning path on the
/// console, with the gateway's API key.
pub async fn set_active(gw: &TestGateway, email: &str, active: bool) -> Reply {
    let url = format!(
        "http://{}/testlogin/set-active?email={email}&active={active}",
        gw.gateway.console_addr
    );
    let auth = format!("Bearer {}", gw.token);
    send(http::Method::POST, &url, &[("authorization", &auth)], None).await
}
