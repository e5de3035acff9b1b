//! `htpasswd`: a Portcullis protocol plugin that signs people in with a login form, checking
//! their password against bcrypt hashes from an htpasswd file and/or the module's options.
//!
//! It is built only as a dynamic library (`cdylib`) and loaded with `[[plugin]]` in
//! `config.toml`, and it is the template for third-party plugins: everything it does goes
//! through `portcullis-plugin-sdk` (the `Plugin` trait, the `Host` services, `export_plugin!`).
//!
//! Flow: an anonymous browser on a protected route is redirected to `<mount>/login?state=…`
//! with a short-lived `state` kept in the host's key-value store and a nonce cookie bound to
//! this browser (so nobody can post a login form on someone else's behalf); the form posts
//! back to `<mount>/login`; a correct password completes the login.

use portcullis_plugin_sdk::{
    export_plugin, Capability, Host, HttpRequest, HttpResponse, Identity, LogLevel, ModuleContext, ModulePlan,
    OptionError, Outcome, Plugin, PluginError, PluginInfo,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How long a login form stays valid, in seconds.
const STATE_TTL: u64 = 600;
/// Failed attempts per username allowed within [`LOCKOUT_WINDOW`] seconds.
const MAX_FAILURES: u32 = 10;
const LOCKOUT_WINDOW: u64 = 900;
const NONCE_COOKIE: &str = "portcullis_htpasswd_nonce";
/// A bcrypt hash (cost 10) of a random password, checked for unknown usernames.
const TIMING_DUMMY_HASH: &str = "$2b$10$xEObmWW9NQp0amuSE8pJn.Q55cvxIqMuRDUQePYupu5k7Ow9M4qAi";

/// The module's options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// An htpasswd file (`user:$2y$…` lines, bcrypt only), re-read at every login.
    #[serde(default)]
    htpasswd_file: Option<String>,
    /// Users listed inline (and profile data for users of the file).
    #[serde(default)]
    users: Vec<UserEntry>,
    /// Heading of the login page.
    #[serde(default = "default_title")]
    title: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    username: String,
    /// bcrypt hash; may be left out when the htpasswd file has the user.
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

fn default_title() -> String {
    "Sign in".into()
}

/// A login in progress, kept in the host's store under its `state`.
#[derive(Serialize, Deserialize)]
struct LoginState {
    return_to: String,
    nonce: String,
}

struct Htpasswd;

impl Htpasswd {
    /// Every user with a password hash: inline users, then the file's (the file wins).
    fn credentials(options: &Options) -> Result<BTreeMap<String, String>, String> {
        let mut hashes: BTreeMap<String, String> = options
            .users
            .iter()
            .filter_map(|u| u.password_hash.clone().map(|h| (u.username.clone(), h)))
            .collect();
        if let Some(path) = &options.htpasswd_file {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (user, hash) = line
                    .split_once(':')
                    .ok_or_else(|| format!("{path}:{}: not `user:hash`", n + 1))?;
                if !is_bcrypt(hash) {
                    return Err(format!("{path}:{}: the hash of `{user}` is not bcrypt ($2a$, $2b$ or $2y$); create it with `htpasswd -B`", n + 1));
                }
                hashes.insert(user.to_string(), hash.to_string());
            }
        }
        Ok(hashes)
    }

    fn form(title: &str, state: &str, action: &str, error: Option<&str>) -> HttpResponse {
        let error = error
            .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
            .unwrap_or_default();
        HttpResponse::html(
            if error.is_empty() { 200 } else { 401 },
            format!(
                "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
<meta name=\"viewport\" content=\"width=device-width\">\
<style>body{{font-family:system-ui,sans-serif;max-width:22rem;margin:4rem auto;padding:0 1rem}}\
label{{display:block;margin:.8rem 0 .2rem}}input{{width:100%;padding:.4rem;box-sizing:border-box}}\
button{{margin-top:1rem;padding:.5rem 1rem}}.error{{color:#a00}}</style></head>\n<body><h1>{title}</h1>{error}\
<form method=\"post\" action=\"{action}\"><input type=\"hidden\" name=\"state\" value=\"{state}\">\
<label for=\"username\">Username</label><input id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus>\
<label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
<button type=\"submit\">Sign in</button></form></body></html>\n",
                title = escape(title),
                action = escape(action),
                state = escape(state),
            ),
        )
    }

    fn new_state(host: &dyn Host, return_to: String, nonce: String) -> Result<String, PluginError> {
        let state = hex(&host.random(16));
        let value =
            serde_json::to_vec(&LoginState { return_to, nonce }).map_err(|e| PluginError::Internal(e.to_string()))?;
        host.kv_put(&format!("state:{state}"), &value, Some(STATE_TTL));
        Ok(state)
    }

    fn submit(
        &self,
        host: &dyn Host,
        module: &ModuleContext,
        options: &Options,
        request: &HttpRequest,
    ) -> Result<Outcome, PluginError> {
        let form = portcullis_plugin_sdk::form_decode(&String::from_utf8_lossy(&request.body));
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        let state = field("state");
        let login: LoginState = host
            .kv_take(&format!("state:{state}"))
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or_else(|| {
                PluginError::BadRequest(
                    "This sign-in form has expired or was already used. Go back to the page you wanted and try again."
                        .into(),
                )
            })?;
        let cookie_nonce = request.cookie(NONCE_COOKIE).unwrap_or_default();
        if cookie_nonce.is_empty() || cookie_nonce != login.nonce {
            return Err(PluginError::BadRequest(
                "This sign-in form was not opened in this browser.".into(),
            ));
        }
        let username = field("username");
        // Count the attempt before checking it, atomically: parallel guesses cannot slip
        // past the limit.
        let attempts_key = format!("attempts:{username}");
        if host.kv_incr(&attempts_key, Some(LOCKOUT_WINDOW)) > u64::from(MAX_FAILURES) {
            host.log(
                LogLevel::Warn,
                &format!("sign-in for `{username}` refused: too many failed attempts"),
            );
            return Err(PluginError::Forbidden(
                "Too many failed attempts. Try again in 15 minutes.".into(),
            ));
        }
        let hashes = Self::credentials(options).map_err(PluginError::Internal)?;
        // Unknown users cost a bcrypt check too, so timing does not tell which names exist.
        let hash = hashes.get(username).map_or(TIMING_DUMMY_HASH, String::as_str);
        let verified = bcrypt::verify(field("password"), hash).unwrap_or(false) && hashes.contains_key(username);
        if !verified {
            host.log(LogLevel::Info, &format!("failed sign-in for `{username}`"));
            let state = Self::new_state(host, login.return_to, login.nonce)?;
            let action = format!("{}/login", module.mount_path);
            return Ok(Outcome::Respond(Self::form(
                &options.title,
                &state,
                &action,
                Some("Wrong username or password."),
            )));
        }
        host.kv_delete(&attempts_key);
        let profile = options.users.iter().find(|u| u.username == username);
        Ok(Outcome::LoggedIn {
            identity: Identity {
                subject: username.to_string(),
                email: profile.and_then(|p| p.email.clone()),
                // The operator wrote the address into the module's options.
                email_verified: true,
                name: profile
                    .and_then(|p| p.name.clone())
                    .or_else(|| Some(username.to_string())),
                groups: profile.map(|p| p.groups.clone()).unwrap_or_default(),
                attributes: BTreeMap::new(),
                plugin_data: None,
                access_token: None,
                recheck_interval_secs: 0,
                session_index: None,
            },
            return_to: login.return_to,
        })
    }
}

impl Plugin for Htpasswd {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "htpasswd".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "login form against bcrypt hashes from an htpasswd file or the module's options".into(),
            capabilities: vec![Capability::BrowserLogin],
            provisioning_path: None,
        }
    }

    fn validate_options(&self, options: &serde_json::Value) -> Result<ModulePlan, Vec<OptionError>> {
        let parsed: Options = serde_json::from_value(options.clone()).map_err(|e| {
            let message = e.to_string();
            let key = message
                .split('`')
                .nth(1)
                .filter(|_| message.starts_with("unknown field"))
                .unwrap_or("")
                .to_string();
            vec![OptionError { key, message }]
        })?;
        let mut errors = Vec::new();
        for (i, user) in parsed.users.iter().enumerate() {
            if user.username.is_empty() || user.username.contains(':') {
                errors.push(OptionError {
                    key: format!("users[{i}].username"),
                    message: "must be non-empty and contain no `:`".into(),
                });
            }
            if let Some(hash) = &user.password_hash {
                if !is_bcrypt(hash) {
                    errors.push(OptionError {
                        key: format!("users[{i}].password_hash"),
                        message: "is not a bcrypt hash ($2a$, $2b$ or $2y$)".into(),
                    });
                }
            }
        }
        match Self::credentials(&parsed) {
            Ok(hashes) if hashes.is_empty() && errors.is_empty() => errors.push(OptionError {
                key: "users".into(),
                message: "no user has a password: list `users` with `password_hash`, or set `htpasswd_file`".into(),
            }),
            Ok(_) => {}
            Err(message) => errors.push(OptionError {
                key: "htpasswd_file".into(),
                message,
            }),
        }
        if errors.is_empty() {
            Ok(ModulePlan::default())
        } else {
            Err(errors)
        }
    }

    fn start_login(
        &self,
        host: &dyn Host,
        module: &ModuleContext,
        return_to: &str,
        request: &HttpRequest,
    ) -> Result<HttpResponse, PluginError> {
        // Keep the browser's nonce when it has one: a browser starts logins in parallel (a
        // page and its favicon), and each state must match the one cookie it keeps.
        let nonce = match request.cookie(NONCE_COOKIE) {
            Some(n) if n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit()) => n.to_string(),
            _ => hex(&host.random(16)),
        };
        let state = Self::new_state(host, return_to.to_string(), nonce.clone())?;
        let mut response = HttpResponse::redirect(&format!("{}/login?state={state}", module.mount_path));
        let secure = if module.origin.starts_with("https://") {
            "; Secure"
        } else {
            ""
        };
        response.headers.push((
            "set-cookie".into(),
            format!(
                "{NONCE_COOKIE}={nonce}; Path={}; Max-Age={STATE_TTL}; HttpOnly; SameSite=Lax{secure}",
                module.mount_path
            ),
        ));
        Ok(response)
    }

    fn handle(&self, host: &dyn Host, module: &ModuleContext, request: &HttpRequest) -> Result<Outcome, PluginError> {
        let options: Options = module.options()?;
        let action = format!("{}/login", module.mount_path);
        if request.path != action {
            return Ok(Outcome::Respond(HttpResponse::html(
                404,
                "<!doctype html><title>Not found</title><h1>Not found</h1>",
            )));
        }
        match request.method.as_str() {
            "GET" => {
                let query = portcullis_plugin_sdk::form_decode(request.query.as_deref().unwrap_or_default());
                let state = query
                    .iter()
                    .find(|(k, _)| k == "state")
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_default();
                if host.kv_get(&format!("state:{state}")).is_none() {
                    return Err(PluginError::BadRequest(
                        "This sign-in link has expired. Go back to the page you wanted and try again.".into(),
                    ));
                }
                Ok(Outcome::Respond(Self::form(&options.title, state, &action, None)))
            }
            "POST" => self.submit(host, module, &options, request),
            _ => Ok(Outcome::Respond(HttpResponse::html(
                405,
                "<!doctype html><title>Method not allowed</title><h1>Method not allowed</h1>",
            ))),
        }
    }
}

fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) && hash.len() == 60
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

export_plugin!(Htpasswd);
