//! The messages of the contract. They cross the C ABI bincode-encoded, so they hold only
//! plain data: strings, bytes, numbers, vectors, maps (JSON travels as text).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a plugin says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// The name it is registered and referenced under (`saml`, `oidc`, `htpasswd`).
    pub name: String,
    /// Its own version.
    pub version: String,
    /// One line for `portcullis plugins`.
    pub description: String,
    /// What it can be used for.
    pub capabilities: Vec<Capability>,
    /// For a [`Capability::Provisioning`] plugin: the path the console listener serves it
    /// under (e.g. SCIM's `/scim/v2`), it and everything below it. Checked at load: one or more
    /// segments of letters, digits, `-`, `_` and `.`, never `/api`, `/healthz`, `/readyz`,
    /// `/metrics` or another plugin's path, nor above or below one of them. `None` for a
    /// plugin that does not provision.
    pub provisioning_path: Option<String>,
}

/// A kind of work a plugin does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Capability {
    /// Logs browsers in on protected routes.
    BrowserLogin,
    /// Provisions users into the directory.
    Provisioning,
}

/// A problem with one option of a module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptionError {
    /// The option's key, dotted for nested options (`users[1].password_hash`).
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

/// What a module with valid options needs from the gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModulePlan {
    /// `host:port`s the module's [`crate::Host::http`] calls may reach (e.g. the IdP's); any
    /// other destination is refused by the gateway.
    pub egress_hosts: Vec<String>,
}

/// Where a plugin call happens: the module (one route's auth settings) it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleContext {
    /// A stable id of the module (its route's id).
    pub module_id: String,
    /// The plugin-specific options, as JSON text (already validated).
    pub options_json: String,
    /// The route's public origin, e.g. `https://app.example.com`: the edge listener's scheme
    /// and the edge's first host. URLs a plugin registers at an identity provider are built on
    /// it, so they do not change with the `Host` a request came with.
    pub origin: String,
    /// The path the plugin's own endpoints live under, e.g. `/_portcullis/htpasswd`.
    pub mount_path: String,
}

impl ModuleContext {
    /// The options parsed into the plugin's own type.
    pub fn options<T: serde::de::DeserializeOwned>(&self) -> Result<T, PluginError> {
        serde_json::from_str(&self.options_json).map_err(|e| PluginError::Internal(format!("module options: {e}")))
    }
}

/// An HTTP request as a plugin sees it (whole body; login traffic is small).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, beginning with the mount path for [`crate::Plugin::handle`].
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The client's IP address.
    pub remote_addr: String,
}

impl HttpRequest {
    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The value of cookie `name`, looked for in every `Cookie` header (HTTP/2 clients may
    /// send one header per cookie). Names are compared as sent (only spaces and tabs around a
    /// pair are trimmed, as RFC 6265 writes them), and a name sent twice with different values
    /// counts as absent: a cookie planted by a sibling site (cookie tossing) must not be able
    /// to stand in for this site's own.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| n == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|pair| pair.trim_matches([' ', '\t']).split_once('='))
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v);
        let first = values.next()?;
        values.all(|v| v == first).then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::HttpRequest;

    fn request(cookies: &[&str]) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            query: None,
            headers: cookies.iter().map(|c| ("cookie".to_string(), c.to_string())).collect(),
            body: Vec::new(),
            remote_addr: "127.0.0.1".into(),
        }
    }

    #[test]
    fn a_cookie_is_found_in_any_cookie_header() {
        assert_eq!(request(&["a=1; b=2"]).cookie("b"), Some("2"));
        assert_eq!(request(&["a=1", "b=2"]).cookie("b"), Some("2"));
        assert_eq!(request(&["a=1;\tb=2 "]).cookie("b"), Some("2"));
        assert_eq!(request(&["a=1"]).cookie("b"), None);
    }

    #[test]
    fn a_tossed_cookie_is_no_cookie() {
        // A name that only looks like it after Unicode trimming.
        assert_eq!(request(&["\u{2000}__Host-x=evil"]).cookie("__Host-x"), None);
        // Two values for one name: ambiguous, so neither.
        assert_eq!(request(&["__Host-x=mine; __Host-x=evil"]).cookie("__Host-x"), None);
        assert_eq!(
            request(&["__Host-x=mine", "__Host-x=mine"]).cookie("__Host-x"),
            Some("mine")
        );
    }
}

/// An HTTP response a plugin answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Headers; `Set-Cookie` may repeat.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A `303 See Other` to `location`.
    pub fn redirect(location: &str) -> HttpResponse {
        HttpResponse {
            status: 303,
            headers: vec![
                ("location".into(), location.into()),
                ("cache-control".into(), "no-store".into()),
            ],
            body: Vec::new(),
        }
    }

    /// A plain page with a heading and one paragraph (`title` is text, `html_message` HTML).
    pub fn page(status: u16, title: &str, html_message: &str) -> HttpResponse {
        let title = crate::escape(title);
        HttpResponse::html(
            status,
            format!(
                "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
<body style=\"font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto\"><h1>{title}</h1><p>{html_message}</p></body></html>\n"
            ),
        )
    }

    /// An HTML page.
    pub fn html(status: u16, html: impl Into<String>) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![
                ("content-type".into(), "text/html; charset=utf-8".into()),
                ("cache-control".into(), "no-store".into()),
            ],
            body: html.into().into_bytes(),
        }
    }
}

/// Who logged in, as the plugin established it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The stable subject identifier at the identity provider.
    pub subject: String,
    /// Email address, when known.
    pub email: Option<String>,
    /// Whether the identity provider vouches that `email` belongs to this subject (an OIDC
    /// `email_verified`, an address a SAML IdP asserts, one the operator configured). Only a
    /// verified address links a login to the person with that address or is written to a person;
    /// an unverified one only travels with the session.
    pub email_verified: bool,
    /// Display name, when known.
    pub name: Option<String>,
    /// Group names.
    pub groups: Vec<String>,
    /// Other attributes.
    pub attributes: BTreeMap<String, Vec<String>>,
    /// Opaque data the plugin wants back at logout (a SAML session index, an OIDC ID token).
    pub plugin_data: Option<String>,
    /// An access token for the upstream: sent in the configured access-token header on every
    /// request of the session (set only when the module opts in).
    pub access_token: Option<String>,
    /// Seconds between re-checks of the user's access ([`crate::Plugin::recheck`]); 0: never.
    pub recheck_interval_secs: u64,
    /// The identity provider's id for the sign-in session this login belongs to (a SAML
    /// `SessionIndex`, an OIDC `sid`), so that a logout from the provider can name it
    /// ([`Outcome::EndSessions`]).
    pub session_index: Option<String>,
}

/// What a re-check found ([`crate::Plugin::recheck`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recheck {
    /// Whether the user still has access; `false` ends the session.
    pub allowed: bool,
    /// A renewed access token for the upstream, replacing the session's
    /// [`Identity::access_token`]; `None` keeps it.
    pub access_token: Option<String>,
}

impl Recheck {
    /// The user still has access; nothing changes.
    pub fn allowed() -> Recheck {
        Recheck {
            allowed: true,
            access_token: None,
        }
    }

    /// The user no longer has access: the session ends.
    pub fn ended() -> Recheck {
        Recheck {
            allowed: false,
            access_token: None,
        }
    }
}

/// A call from the gateway to a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// [`crate::Plugin::info`].
    Info,
    /// [`crate::Plugin::validate_options`].
    ValidateOptions {
        /// The options as JSON text.
        options_json: String,
    },
    /// [`crate::Plugin::start_login`].
    StartLogin {
        /// The module.
        module: ModuleContext,
        /// Where the browser goes after login (a same-origin path).
        return_to: String,
        /// The request that needed a login.
        request: HttpRequest,
    },
    /// [`crate::Plugin::handle`].
    Handle {
        /// The module.
        module: ModuleContext,
        /// The request under the mount path.
        request: HttpRequest,
    },
    /// [`crate::Plugin::describe_module`].
    DescribeModule {
        /// The module.
        module: ModuleContext,
    },
    /// [`crate::Plugin::recheck`].
    Recheck {
        /// The module.
        module: ModuleContext,
        /// The identity of the session being checked.
        identity: Identity,
    },
    /// [`crate::Plugin::logout`].
    Logout {
        /// The module.
        module: ModuleContext,
        /// The identity of the session being ended.
        identity: Identity,
    },
    /// [`crate::Plugin::provision`]; answered with [`Outcome::Respond`].
    Provision(ProvisioningRequest),
}

/// A plugin's answer to a [`Call`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Answer to [`Call::Info`].
    Info(PluginInfo),
    /// The options are valid.
    Valid(ModulePlan),
    /// The options are not valid.
    Invalid(Vec<OptionError>),
    /// Send this response to the browser.
    Respond(HttpResponse),
    /// A login completed: the gateway creates a session and sends the browser to `return_to`.
    LoggedIn {
        /// Who logged in.
        identity: Identity,
        /// Where to send the browser (checked by the gateway: same origin only).
        return_to: String,
    },
    /// Answer to [`Call::Logout`].
    LoggedOut(Option<HttpResponse>),
    /// Answer to [`Call::Recheck`].
    Rechecked(Recheck),
    /// Answer to [`Call::DescribeModule`]: the module's read-only outputs.
    Described {
        /// A JSON object, as text.
        outputs_json: String,
    },
    /// The identity provider ended a user's login (a SAML LogoutRequest, an OIDC back-channel
    /// logout): the gateway ends the sessions of this module with this subject, then sends
    /// `response`.
    EndSessions {
        /// The subject whose sessions end, as in [`Identity::subject`].
        subject: String,
        /// When not empty, only the sessions made in one of these provider sessions end (as in
        /// [`Identity::session_index`]); a session that recorded none ends too.
        session_indexes: Vec<String>,
        /// What to answer the request with.
        response: HttpResponse,
    },
}

/// Why a plugin call failed. The gateway shows the user a page with a request id and logs
/// the message; it never shows the message of an `Internal` error to the browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PluginError {
    /// The browser's request was wrong (expired form, bad state): a 400 page with this message.
    BadRequest(String),
    /// The user may not log in: a 403 page with this message.
    Forbidden(String),
    /// The identity provider failed or is unreachable: a 502 page.
    Upstream(String),
    /// A bug or misconfiguration: a 500 page; the message goes only to the log.
    Internal(String),
    /// The plugin panicked (set by the boundary, not by plugins).
    Panicked(String),
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginError::BadRequest(m) => write!(f, "bad request: {m}"),
            PluginError::Forbidden(m) => write!(f, "forbidden: {m}"),
            PluginError::Upstream(m) => write!(f, "identity provider error: {m}"),
            PluginError::Internal(m) => write!(f, "internal error: {m}"),
            PluginError::Panicked(m) => write!(f, "plugin panicked: {m}"),
        }
    }
}

impl std::error::Error for PluginError {}

/// A person of the gateway's directory, as the directory port ([`crate::Host::person`] and
/// the calls beside it) shows one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// The directory's id for the person.
    pub id: String,
    /// Email address (unique in the directory, compared trimmed and in lower case).
    pub email: String,
    /// Display name.
    pub name: String,
    /// Whether the person may sign in; deactivating one ends their sessions at once.
    pub active: bool,
    /// The provisioning client's own id for the person (SCIM's `externalId`).
    pub external_id: Option<String>,
    /// When the person was created, in seconds since the Unix epoch.
    pub created_at: i64,
    /// When the person last changed, in seconds since the Unix epoch.
    pub updated_at: i64,
    /// When the person last signed in (0: never), in seconds since the Unix epoch.
    pub last_login: i64,
}

/// A person to create ([`crate::Host::create_person`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPerson {
    /// Email address; another person's (compared trimmed and in lower case) is refused.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Whether the person may sign in.
    pub active: bool,
    /// The provisioning client's own id for the person.
    pub external_id: Option<String>,
}

/// Changes to a person ([`crate::Host::update_person`]); `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonPatch {
    /// A new email address.
    pub email: Option<String>,
    /// A new display name.
    pub name: Option<String>,
    /// Activates or deactivates the person; deactivation ends their sessions before the call
    /// returns.
    pub active: Option<bool>,
    /// A new external id (`Some(None)` removes it).
    pub external_id: Option<Option<String>>,
}

/// A page of the directory in ascending id order ([`crate::Host::people`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeoplePage {
    /// Up to the asked number of people, and never more than [`crate::PEOPLE_PAGE_MAX`].
    pub people: Vec<Person>,
    /// Whether more people follow the last one.
    pub more: bool,
}

/// Why the directory refused a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryError {
    /// Another person has this email address.
    EmailTaken {
        /// The address asked for.
        email: String,
    },
    /// No person has this id.
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// A field's value is not allowed.
    Invalid {
        /// The field (`email`, `name`, `external_id`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The directory answers only a provisioning call ([`crate::Plugin::provision`]) whose
    /// caller authenticated ([`Caller::ApiKey`]): sign-in calls never read or write people.
    NotAllowed,
    /// The directory could not be reached or failed; the message is for the log.
    Unavailable(String),
}

impl std::fmt::Display for DirectoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirectoryError::EmailTaken { email } => write!(f, "another person has the email address {email}"),
            DirectoryError::NotFound { id } => write!(f, "no person has the id {id}"),
            DirectoryError::Invalid { field, message } => write!(f, "{field}: {message}"),
            DirectoryError::NotAllowed => {
                f.write_str("the directory answers only provisioning calls by an authenticated caller")
            }
            DirectoryError::Unavailable(message) => write!(f, "the directory is unavailable: {message}"),
        }
    }
}

impl std::error::Error for DirectoryError {}

/// Who sent a provisioning request, as the gateway established it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Caller {
    /// The request came from an allowed address with a valid management API key (its id).
    ApiKey {
        /// The API key's id (`ak_...`), for the plugin's own audit lines.
        id: String,
    },
    /// The gateway refused the request (an address outside `api.allow_cidrs`, no or a wrong
    /// API key, a body too large or too slow): the plugin answers with `status` in its
    /// protocol's error shape. The directory port answers [`DirectoryError::NotAllowed`].
    Refused {
        /// The HTTP status to answer with (401, 403, 408, 413, 400).
        status: u16,
        /// Why, for a person.
        reason: String,
    },
}

/// A request under a plugin's provisioning path ([`crate::Plugin::provision`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisioningRequest {
    /// The request, its whole path as received, with headers as the edge hands a sign-in
    /// plugin its requests: the headers other proxies set that a client could forge
    /// (`X-Forwarded-For`, `-Host`, `-Proto`, `Forwarded`, `X-Real-IP`, ..., and the gateway's
    /// identity headers) removed, the gateway's own `X-Forwarded-For` (the connection's peer),
    /// `X-Forwarded-Host`, `X-Forwarded-Proto` and `Forwarded` set, and the `authorization`
    /// header (the API key) removed; an empty body when the caller was refused.
    pub request: HttpRequest,
    /// Who sent it.
    pub caller: Caller,
}

/// An HTTP request a plugin asks the gateway to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Absolute URL.
    pub url: String,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// Severity of a plugin's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    /// Detail for debugging.
    Debug,
    /// Normal events.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

/// A call from a plugin to the gateway (see [`crate::Host`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum HostCall {
    KvGet {
        key: String,
    },
    KvPut {
        key: String,
        value: Vec<u8>,
        ttl_secs: Option<u64>,
    },
    KvTake {
        key: String,
    },
    KvDelete {
        key: String,
    },
    KvIncr {
        key: String,
        ttl_secs: Option<u64>,
    },
    KvGetOrInsert {
        key: String,
        value: Vec<u8>,
    },
    Person {
        id: String,
    },
    PersonByEmail {
        email: String,
    },
    PersonByExternalId {
        external_id: String,
    },
    People {
        after_id: Option<String>,
        limit: usize,
    },
    CreatePerson(NewPerson),
    UpdatePerson {
        id: String,
        patch: PersonPatch,
    },
    DeletePerson {
        id: String,
    },
    Http(OutboundRequest),
    Now,
    Random {
        len: usize,
    },
    Log {
        level: LogLevel,
        message: String,
    },
}

/// The gateway's answer to a [`HostCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum HostReply {
    Done,
    Bytes(Option<Vec<u8>>),
    /// Answer to the directory lookups and to `DeletePerson` (the person deleted).
    PersonFound(Result<Option<Person>, DirectoryError>),
    /// Answer to `CreatePerson` and `UpdatePerson`.
    PersonWritten(Result<Person, DirectoryError>),
    /// Answer to `People`.
    People(Result<PeoplePage, DirectoryError>),
    Http(Result<HttpResponse, String>),
    Now(i64),
    Count(u64),
    /// The host could not decode the call.
    Refused(String),
}
