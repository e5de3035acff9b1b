//! Test fixture: `provisioner`, a provisioning plugin that proves the directory port the way a
//! SCIM plugin will use it, with a protocol of its own kept small: one JSON object posted to
//! its provisioning path `/provisioner`, one JSON object back.
//!
//! Requests (`op` and its fields): `create` (`email`, `name`, `active`), `get` (`id`), `find`
//! (`email`), `list` (`after_id`, `limit`), `update` (`id` and any of `email`, `name`,
//! `active`), `deactivate` (`id`), `delete` (`id`), `echo` (the request as the plugin was
//! handed it). Answers: `{"person": {...}}` (201 for `create`, else 200), `{"people": [...],
//! "more": bool}`, `{"headers": [[name, value], ...], "remote_addr"}`, and refusals in its own
//! shape, `{"refusal": {"kind", "detail"}}` with a status: `caller_refused` (the gateway's
//! status; it also carries `directory`, what the directory port answered when the plugin
//! tried to list people for that caller: `"answered"` or the kind of the refusal below),
//! `bad_request` 400, `email_taken` 409, `not_found` 404, `invalid` 422, `not_allowed` 403,
//! `unavailable` 503.
//!
//! Linked into the integration tests, and built by `cargo build --workspace` as
//! `libportcullis_provisioner.so` for the same tests to load through `[[plugin]]`.

use portcullis_plugin_sdk::{
    Caller, Capability, DirectoryError, Host, HttpRequest, HttpResponse, ModuleContext, ModulePlan, NewPerson,
    OptionError, Outcome, Person, PersonPatch, Plugin, PluginError, PluginInfo, ProvisioningRequest,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// The plugin.
#[derive(Debug, Default)]
pub struct Provisioner;

/// One request of the protocol.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Create {
        email: String,
        name: String,
        #[serde(default = "active_by_default")]
        active: bool,
    },
    Get {
        id: String,
    },
    Find {
        email: String,
    },
    List {
        after_id: Option<String>,
        #[serde(default = "default_limit")]
        limit: usize,
    },
    Update {
        id: String,
        email: Option<String>,
        name: Option<String>,
        active: Option<bool>,
    },
    Deactivate {
        id: String,
    },
    Delete {
        id: String,
    },
    Echo,
}

fn active_by_default() -> bool {
    true
}

fn default_limit() -> usize {
    100
}

fn person_json(person: &Person) -> Value {
    json!({
        "id": person.id,
        "email": person.email,
        "name": person.name,
        "active": person.active,
        "external_id": person.external_id,
    })
}

fn answer(status: u16, body: &Value) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

fn refusal(status: u16, kind: &str, detail: impl std::fmt::Display) -> HttpResponse {
    answer(
        status,
        &json!({"refusal": {"kind": kind, "detail": detail.to_string()}}),
    )
}

/// The status and kind of a directory refusal.
fn directory_kind(error: &DirectoryError) -> (u16, &'static str) {
    match error {
        DirectoryError::EmailTaken { .. } => (409, "email_taken"),
        DirectoryError::NotFound { .. } => (404, "not_found"),
        DirectoryError::Invalid { .. } => (422, "invalid"),
        DirectoryError::NotAllowed => (403, "not_allowed"),
        DirectoryError::Unavailable(_) => (503, "unavailable"),
    }
}

fn directory_refusal(error: DirectoryError) -> HttpResponse {
    let (status, kind) = directory_kind(&error);
    refusal(status, kind, error)
}

/// The refusal of a caller the gateway refused, with what the directory port answered this
/// plugin for that caller (it must not answer).
fn caller_refusal(host: &dyn Host, status: u16, reason: &str) -> HttpResponse {
    let directory = match host.people(None, 1) {
        Ok(_) => "answered",
        Err(e) => directory_kind(&e).1,
    };
    answer(
        status,
        &json!({"refusal": {"kind": "caller_refused", "detail": reason, "directory": directory}}),
    )
}

fn person_answer(status: u16, result: Result<Person, DirectoryError>) -> HttpResponse {
    match result {
        Ok(person) => answer(status, &json!({"person": person_json(&person)})),
        Err(e) => directory_refusal(e),
    }
}

fn found_answer(id_or_email: &str, result: Result<Option<Person>, DirectoryError>) -> HttpResponse {
    match result {
        Ok(Some(person)) => answer(200, &json!({"person": person_json(&person)})),
        Ok(None) => refusal(404, "not_found", format!("no person is {id_or_email}")),
        Err(e) => directory_refusal(e),
    }
}

impl Provisioner {
    fn serve(&self, host: &dyn Host, request: &HttpRequest) -> HttpResponse {
        if request.path != "/provisioner" || request.method != "POST" {
            return refusal(400, "bad_request", "POST one JSON request to /provisioner");
        }
        let handed = request;
        let request: Request = match serde_json::from_slice(&request.body) {
            Ok(request) => request,
            Err(e) => return refusal(400, "bad_request", e),
        };
        match request {
            Request::Echo => answer(
                200,
                &json!({"headers": handed.headers, "remote_addr": handed.remote_addr}),
            ),
            Request::Create { email, name, active } => person_answer(
                201,
                host.create_person(NewPerson {
                    email,
                    name,
                    active,
                    external_id: None,
                }),
            ),
            Request::Get { id } => found_answer(&id, host.person(&id)),
            Request::Find { email } => found_answer(&email, host.person_by_email(&email)),
            Request::List { after_id, limit } => match host.people(after_id.as_deref(), limit) {
                Ok(page) => answer(
                    200,
                    &json!({"people": page.people.iter().map(person_json).collect::<Vec<_>>(), "more": page.more}),
                ),
                Err(e) => directory_refusal(e),
            },
            Request::Update {
                id,
                email,
                name,
                active,
            } => person_answer(
                200,
                host.update_person(
                    &id,
                    PersonPatch {
                        email,
                        name,
                        active,
                        external_id: None,
                    },
                ),
            ),
            Request::Deactivate { id } => person_answer(
                200,
                host.update_person(
                    &id,
                    PersonPatch {
                        active: Some(false),
                        ..Default::default()
                    },
                ),
            ),
            Request::Delete { id } => found_answer(&id, host.delete_person(&id)),
        }
    }
}

impl Plugin for Provisioner {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "provisioner".into(),
            version: "0.0.0".into(),
            description: "provisions people through a small JSON protocol (tests only)".into(),
            capabilities: vec![Capability::Provisioning],
            provisioning_path: Some("/provisioner".into()),
        }
    }

    fn validate_options(&self, _: &Value) -> Result<ModulePlan, Vec<OptionError>> {
        Err(vec![OptionError {
            key: "plugin".into(),
            message: "`provisioner` provisions people; it signs no one in".into(),
        }])
    }

    fn start_login(
        &self,
        _: &dyn Host,
        _: &ModuleContext,
        _: &str,
        _: &HttpRequest,
    ) -> Result<HttpResponse, PluginError> {
        Err(PluginError::Internal("`provisioner` signs no one in".into()))
    }

    fn handle(&self, _: &dyn Host, _: &ModuleContext, _: &HttpRequest) -> Result<Outcome, PluginError> {
        Err(PluginError::Internal("`provisioner` signs no one in".into()))
    }

    fn provision(&self, host: &dyn Host, request: &ProvisioningRequest) -> Result<HttpResponse, PluginError> {
        Ok(match &request.caller {
            Caller::Refused { status, reason } => caller_refusal(host, *status, reason),
            Caller::ApiKey { .. } => self.serve(host, &request.request),
        })
    }
}

portcullis_plugin_sdk::export_plugin!(Provisioner);
