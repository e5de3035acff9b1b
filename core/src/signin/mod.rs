//! Sign-in on the edge, apart from the per-request gate: the edge's "sign-in" phase (a request
//! the session gate found not signed in, [`start`]) and the reserved `/_portcullis/` paths the
//! route phase sends here ([`reserved`]: plugin endpoints and login completion, logout and its
//! confirmation page, the JWKS), plus the background re-checks of sessions
//! ([`recheck_sessions`]). Every call into a plugin on behalf of the edge is made here, on a
//! blocking thread; the per-request gate (`gate`) makes none.
//!
//! Files by concern: `start.rs` (starting, with the start rate limit), `reserved.rs` (the
//! reserved-path dispatch), `complete.rs` (login completion: user, session, cookie),
//! `logout.rs` (logout and its confirmation page), `recheck.rs` (re-checks), `body.rs` (reading
//! a sign-in body), `plugin.rs` (the calls into plugins and the SDK request/response
//! conversion).

mod body;
mod complete;
mod logout;
mod plugin;
mod recheck;
mod reserved;
mod start;

pub use plugin::{from_sdk_response, sdk_request};
pub use recheck::recheck_sessions;
pub use reserved::reserved;
pub use start::start;

use crate::model::Session;
use crate::routing::{AuthTarget, RouteTarget};
use portcullis_plugin_sdk::{Identity, ModuleContext};

/// Paths under this prefix belong to the gateway on every edge and never reach an upstream.
pub const RESERVED_PREFIX: &str = "/_portcullis/";

/// Where a route's plugin endpoints live on its host.
pub fn mount_path(route_id: &str) -> String {
    format!("{RESERVED_PREFIX}auth/{route_id}")
}

fn module_context(target: &RouteTarget, auth: &AuthTarget) -> ModuleContext {
    ModuleContext {
        module_id: target.route_id.clone(),
        options_json: auth.module.options_json.clone(),
        origin: target.public_origin.to_string(),
        mount_path: mount_path(&target.route_id),
    }
}

/// The identity a session holds, as its plugin gave it at login (attributes aside).
fn identity_of(s: &Session) -> Identity {
    Identity {
        subject: s.subject.clone(),
        email: Some(s.email.clone()),
        // A session does not record whether its address was verified: say it was not.
        email_verified: false,
        name: Some(s.name.clone()),
        groups: s.groups.clone(),
        attributes: Default::default(),
        plugin_data: s.plugin_data.clone(),
        access_token: s.access_token.clone(),
        recheck_interval_secs: u64::try_from(s.recheck_interval).unwrap_or(0),
        session_index: s.session_index.clone(),
    }
}

/// A return URL the gateway will redirect to: a path on the same origin, and nothing that a
/// browser could read as another host (`//evil`, `/\evil`, encoded variants, schemes).
pub fn safe_return_to(candidate: &str) -> Option<&str> {
    let is_safe = |s: &str| {
        s.starts_with('/')
            && !s.starts_with("//")
            && !s.contains('\\')
            && !s.bytes().any(|b| b.is_ascii_control() || b == b' ')
            && s.len() <= 4096
    };
    if !is_safe(candidate) {
        return None;
    }
    // Browsers and servers decode percent-escapes at various points: check each decoding.
    let mut decoded = candidate.to_string();
    for _ in 0..3 {
        let next = portcullis_plugin_sdk::percent_decode(&decoded);
        if !is_safe(&next) {
            return None;
        }
        if next == decoded {
            break;
        }
        decoded = next;
    }
    Some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_urls_stay_on_the_origin() {
        for ok in ["/", "/app?x=1", "/a/b#c", "/%7Euser"] {
            assert_eq!(safe_return_to(ok), Some(ok), "{ok}");
        }
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/%2F%2Fevil.example",
            "/%2fevil.example/..",
            "%2F%2Fevil.example",
            "/%5Cevil.example",
            "/%252F%252Fevil",
            "javascript:alert(1)",
            "/\tfoo",
            "evil.example",
            "",
        ] {
            assert_eq!(safe_return_to(bad), None, "{bad}");
        }
    }
}
