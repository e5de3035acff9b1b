//! The records Portcullis keeps, and the rules every writer (config loader or API) applies to
//! them before they are stored. Nothing here knows about HTTP or sled.

use serde::{Deserialize, Serialize};

/// Where a record came from. Records declared in the config file are read-only to the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// Created through the management API or the command line.
    Api,
    /// Declared in this config file under this name.
    Config { file: String, name: String },
}

impl Source {
    /// The config file that owns the record, when one does.
    pub fn config_file(&self) -> Option<&str> {
        match self {
            Source::Api => None,
            Source::Config { file, .. } => Some(file),
        }
    }
}

/// An API key; only the SHA-256 of its token is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub description: String,
    pub metadata: String,
    pub created_at: i64,
    pub token_hash: [u8; 32],
}

/// A backend that forwards to one TCP address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticBackend {
    pub id: String,
    pub description: String,
    pub metadata: String,
    pub created_at: i64,
    /// `host:port` of the upstream.
    pub address: String,
    /// Whether the upstream is spoken to over TLS.
    pub tls: bool,
    pub source: Source,
}

/// An HTTPS edge: the host:ports it answers and its routes, in creation order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub id: String,
    pub description: String,
    pub metadata: String,
    pub created_at: i64,
    pub hostports: Vec<String>,
    pub routes: Vec<Route>,
    pub source: Source,
}

/// How a route's `match` is compared with a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchType {
    ExactPath,
    PathPrefix,
}

impl MatchType {
    /// The name used in the API and the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchType::ExactPath => "exact_path",
            MatchType::PathPrefix => "path_prefix",
        }
    }

    /// Parses the name used in the API and the config file.
    pub fn parse(s: &str) -> Option<MatchType> {
        match s {
            "exact_path" => Some(MatchType::ExactPath),
            "path_prefix" => Some(MatchType::PathPrefix),
            _ => None,
        }
    }
}

/// A route of an edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub id: String,
    pub created_at: i64,
    pub match_type: MatchType,
    pub path: String,
    pub description: String,
    pub metadata: String,
    pub backend: Option<RouteBackend>,
    /// The route's authentication module, when it has one.
    pub auth: Option<AuthModule>,
}

/// A route's authentication module: a registered plugin, the options core enforces itself,
/// and the plugin's own options (validated by the plugin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthModule {
    /// Name of the plugin in the registry.
    pub plugin: String,
    pub enabled: bool,
    /// Let `OPTIONS` requests through without a session (CORS preflights).
    pub options_passthrough: bool,
    /// Prefix of the session cookie's name: `<prefix>session`.
    pub cookie_prefix: String,
    /// Seconds without a request after which a session ends.
    pub inactivity_timeout: u32,
    /// Seconds after login after which a session ends, whatever its activity.
    pub maximum_duration: u32,
    /// The plugin's own options, as JSON text.
    pub options_json: String,
    /// `host:port`s the plugin's HTTP calls for this module may reach (from the plugin's plan).
    pub egress_hosts: Vec<String>,
}

/// Default `cookie_prefix`.
pub const DEFAULT_COOKIE_PREFIX: &str = "portcullis.";
/// Default `inactivity_timeout` (12 hours), used when the module says 0.
pub const DEFAULT_INACTIVITY_TIMEOUT: u32 = 12 * 3600;
/// Default `maximum_duration` (7 days), used when the module says 0.
pub const DEFAULT_MAXIMUM_DURATION: u32 = 7 * 24 * 3600;

/// Why a value breaks one of the rules every writer applies; the message names the value (the
/// API and the config file put the field's name before it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("`{prefix}` may hold only letters, digits and !#$%&'*+-.^_`|~, at most 64 characters")]
    CookiePrefix { prefix: String },
    #[error("description is longer than {MAX_DESCRIPTION} bytes")]
    DescriptionTooLong,
    #[error("metadata is longer than {MAX_METADATA} bytes")]
    MetadataTooLong,
    #[error("`{value}` is not host:port (the port is required)")]
    NoPort { value: String },
    #[error("`{value}` has an invalid port `{port}`")]
    BadPort { value: String, port: String },
    #[error("`{value}` has an invalid host `{host}`")]
    BadHost { value: String, host: String },
    #[error("match `{path}` must start with `/`")]
    MatchNotAbsolute { path: String },
    #[error("match is longer than 2048 bytes")]
    MatchTooLong,
    #[error("match `{}` for {} may not contain spaces, control characters, `?` or `#`", .path.escape_debug(), .match_type.as_str())]
    MatchCharacters { path: String, match_type: MatchType },
}

/// Checks a cookie prefix: the characters RFC 6265 allows in a cookie name, at most 64.
pub fn validate_cookie_prefix(prefix: &str) -> Result<(), ValidationError> {
    let ok = prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::CookiePrefix {
            prefix: prefix.to_string(),
        })
    }
}

/// A person (ngrok's "application user"): who signs in through the edges or is provisioned.
/// Written only by `accounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    /// Empty when no identity provider or provisioning named one; unique (normalised) otherwise.
    pub email: String,
    pub name: String,
    pub active: bool,
    /// The id a provisioning client (SCIM's `externalId`) knows the user by.
    pub external_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// 0 before the first sign-in.
    pub last_login: i64,
}

/// An identity provider's name for a user: the plugin (`idp`) and the user's subject there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityLink {
    pub idp: String,
    pub subject: String,
    pub user_id: String,
    pub created_at: i64,
}

/// A server-side session on a protected route. Only the SHA-256 of its token is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub token_hash: [u8; 32],
    pub user_id: String,
    pub edge_id: String,
    pub route_id: String,
    pub plugin: String,
    /// The origin the session was made on, e.g. `https://app.example.com`.
    pub origin: String,
    pub subject: String,
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
    /// What the plugin wants back at logout.
    pub plugin_data: Option<String>,
    pub created_at: i64,
    pub last_active: i64,
    /// `created_at + maximum_duration`.
    pub expires_at: i64,
    pub inactivity_timeout: i64,
    pub ip: String,
    pub user_agent: String,
    /// An access token the module forwards to the upstream (opt-in, OIDC).
    pub access_token: Option<String>,
    /// Seconds between checks with the identity provider that the user still has access
    /// (0: never); the last check was at `checked_at`.
    pub recheck_interval: i64,
    pub checked_at: i64,
    /// The identity provider's id of the sign-in session (SAML `SessionIndex`, OIDC `sid`).
    pub session_index: Option<String>,
}

/// The backend module of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteBackend {
    pub enabled: bool,
    pub backend_id: String,
}

/// Longest description accepted (ngrok's limit).
pub const MAX_DESCRIPTION: usize = 255;
/// Longest metadata accepted (ngrok's limit).
pub const MAX_METADATA: usize = 4096;

/// Checks a description and metadata pair against ngrok's limits.
pub fn validate_labels(description: &str, metadata: &str) -> Result<(), ValidationError> {
    if description.len() > MAX_DESCRIPTION {
        return Err(ValidationError::DescriptionTooLong);
    }
    if metadata.len() > MAX_METADATA {
        return Err(ValidationError::MetadataTooLong);
    }
    Ok(())
}

/// Checks `host:port` (a DNS name, an IPv4 address or a bracketed IPv6 address, and a port
/// from 1 to 65535) and returns it lower-cased, the form requests are matched in.
pub fn normalize_hostport(value: &str) -> Result<String, ValidationError> {
    let (host, port) = value.rsplit_once(':').ok_or_else(|| ValidationError::NoPort {
        value: value.to_string(),
    })?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => {
            return Err(ValidationError::BadPort {
                value: value.to_string(),
                port: port.to_string(),
            })
        }
    }
    let is_ipv6 =
        host.starts_with('[') && host.ends_with(']') && host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().is_ok();
    let is_name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !is_ipv6 && !is_name {
        return Err(ValidationError::BadHost {
            value: value.to_string(),
            host: host.to_string(),
        });
    }
    Ok(value.to_ascii_lowercase())
}

/// Checks a route's `match` value.
pub fn validate_route_match(match_type: MatchType, path: &str) -> Result<(), ValidationError> {
    if !path.starts_with('/') {
        return Err(ValidationError::MatchNotAbsolute { path: path.to_string() });
    }
    if path.len() > 2048 {
        return Err(ValidationError::MatchTooLong);
    }
    if path
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#')
    {
        return Err(ValidationError::MatchCharacters {
            path: path.to_string(),
            match_type,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostports_are_checked_and_lowercased() {
        assert_eq!(
            normalize_hostport("App.Example.com:443").as_deref(),
            Ok("app.example.com:443")
        );
        assert!(normalize_hostport("[::1]:8080").is_ok());
        assert!(normalize_hostport("example.com").is_err());
        assert!(normalize_hostport("example.com:0").is_err());
        assert!(normalize_hostport("exa mple.com:80").is_err());
        assert!(normalize_hostport(":80").is_err());
        assert!(normalize_hostport("-bad.com:80").is_err());
    }

    #[test]
    fn route_matches_are_checked() {
        assert!(validate_route_match(MatchType::PathPrefix, "/").is_ok());
        assert!(validate_route_match(MatchType::ExactPath, "no-slash").is_err());
        assert!(validate_route_match(MatchType::ExactPath, "/a?b").is_err());
    }
}

/// What a member may do in the console and through the API: an `admin` changes everything; a
/// `member` sees everything and manages only its own API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Admin,
    Member,
}

/// Where a member stands: `invited` (has a sign-in link, no password yet), `active`, or
/// `disabled` (cannot sign in; every session of theirs has ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    Invited,
    Active,
    Disabled,
}

/// How a member arrived: `portcullis members add` on the server, an admin's invitation, a
/// just-in-time SSO sign-in, or SCIM provisioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberOrigin {
    Bootstrap,
    Invite,
    Jit,
    Scim,
}

/// A person who runs the gateway and signs in to its console. The key is the normalised email
/// (unique). Written only by `accounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `usr_...`.
    pub id: String,
    /// Normalised ([`crate::store::normalize_email`]); unique among members.
    pub email: String,
    pub name: String,
    pub role: MemberRole,
    pub status: MemberStatus,
    pub origin: MemberOrigin,
    /// The argon2id hash in PHC string form (it names its own parameters); `None` before the
    /// member sets a password, and for members who only sign in through SSO.
    pub password_hash: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_sign_in_at: Option<i64>,
}

/// Why a one-time sign-in link was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignInLinkPurpose {
    /// The first admin, made on the server by `portcullis members add`.
    Bootstrap,
    /// An admin invited the member.
    Invite,
}

/// A one-time link where a member sets a password. Only the SHA-256 of its token is kept; it
/// works once (taken atomically) and until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignInLink {
    pub token_hash: [u8; 32],
    pub member_id: String,
    pub purpose: SignInLinkPurpose,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A member's signed-in console session. Only the SHA-256 of its token is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSession {
    /// `cses_...`.
    pub id: String,
    pub token_hash: [u8; 32],
    pub member_id: String,
    pub created_at: i64,
    pub last_active: i64,
    /// `created_at + console.session_maximum_duration_secs`.
    pub expires_at: i64,
    /// Seconds without a request after which the session ends.
    pub inactivity_timeout: i64,
    pub ip: String,
    pub user_agent: String,
}

impl ConsoleSession {
    /// Whether the session has ended by `now`: past its maximum duration, or idle for its
    /// inactivity timeout.
    pub fn is_expired(&self, now: i64) -> bool {
        now >= self.expires_at || now.saturating_sub(self.last_active) >= self.inactivity_timeout
    }
}

/// Who did something, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Actor {
    /// A member, in the console (or through an API key they own, see `ApiKey`).
    Member { id: String, email: String },
    /// A management API key (and the member who owns it, if one does).
    ApiKey { id: String, owner_id: Option<String> },
    /// The config file, applied at start or on reload.
    ConfigFile { path: String },
    /// The gateway itself (expiry, upkeep) or the command line on the server.
    System,
    /// Someone not (yet) signed in: a console sign-in attempt names the email typed, an edge
    /// sign-in the identity the provider asserted.
    Visitor { email: Option<String> },
}

/// Whether an audited action succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AuditOutcome {
    Success,
    /// Refused or failed, with why (never a secret).
    Failure {
        reason: String,
    },
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// `aud_...` (time-ordered, so paging walks newest to oldest).
    pub id: String,
    pub time: i64,
    pub actor: Actor,
    /// Dotted, stable names: `console.sign_in`, `edge.sign_in`, `member.invite`, `edge.create`, ...
    pub action: String,
    /// The id (or, without one, the name) of the object acted on; empty when none.
    pub object: String,
    /// The client's address; empty for actions with no client (config reload, expiry).
    pub address: String,
    pub outcome: AuditOutcome,
    /// A short, secret-free description for people (e.g. which fields changed).
    pub detail: String,
}
