//! Reading and stripping the request's cookies: the values of one cookie by its exact name,
//! the gateway's own cookies and a route's session cookies removed before a request goes
//! upstream, and which cookie names a plugin may see. Used by the session gate and by sign-in;
//! no phase of its own.

use http::header::{self, HeaderMap, HeaderValue};

/// Whether a cookie is the gateway's own (a plugin's sign-in binding or nonce): `portcullis-*`,
/// `portcullis_*`, `__Host-portcullis-*`. Upstreams never see these.
fn is_gateway_cookie(name: &str) -> bool {
    let name = name.strip_prefix("__Host-").unwrap_or(name);
    name.starts_with("portcullis-") || name.starts_with("portcullis_")
}

/// Removes the gateway's own cookies (see `is_gateway_cookie`) from the request.
pub fn strip_gateway_cookies(headers: &mut HeaderMap) {
    let present = headers.get_all(header::COOKIE).iter().any(|v| {
        v.as_bytes()
            .windows(11)
            .any(|w| w == b"portcullis-" || w == b"portcullis_")
    });
    if !present {
        return;
    }
    let names: Vec<String> = cookie_crumbs(headers)
        .filter_map(|crumb| std::str::from_utf8(crumb_name(crumb)).ok())
        .filter(|name| is_gateway_cookie(name))
        .map(str::to_string)
        .collect();
    for name in names {
        strip_cookie(headers, &name);
    }
}

/// Removes the cookie `name` from the request's `Cookie` headers (which become one).
pub fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    if !cookie_crumbs(headers).any(|crumb| crumb_name(crumb) == name.as_bytes()) {
        return;
    }
    let kept: Vec<&[u8]> = cookie_crumbs(headers)
        .filter(|crumb| crumb_name(crumb) != name.as_bytes())
        .collect();
    let kept = (!kept.is_empty()).then(|| HeaderValue::from_bytes(&kept.join(&b"; "[..])));
    headers.remove(header::COOKIE);
    if let Some(Ok(value)) = kept {
        headers.insert(header::COOKIE, value);
    }
}

/// The `name=value` pairs of every `Cookie` header, as sent: split at `;`, with spaces and tabs
/// around them trimmed (RFC 6265 section 5.4 puts "; " between them), and nothing else: a
/// cookie named "\u{2000}__Host-x", which any host of the parent domain can set and browsers
/// send as it was set, is not `__Host-x`.
pub fn cookie_crumbs(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|crumb| !crumb.is_empty())
}

/// A cookie pair's name: what comes before its first `=` (all of it without one).
pub fn crumb_name(crumb: &[u8]) -> &[u8] {
    crumb.split(|&b| b == b'=').next().unwrap_or(crumb)
}

/// The values of every cookie named `name` in the request.
pub fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    cookie_crumbs(headers).filter_map(move |crumb| {
        let value = crumb.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        // Other cookies may hold any bytes; only this one has to be text.
        Some(std::str::from_utf8(value).ok()?.trim_matches('"'))
    })
}

/// Whether `name` is a token (RFC 9110 section 5.6.2), as a cookie name must be.
pub fn is_token(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; portcullis.session=tok1; xportcullis.session=no"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("portcullis.session=tok2"));
        assert_eq!(
            cookie_values(&headers, "portcullis.session").collect::<Vec<_>>(),
            ["tok1", "tok2"]
        );
    }
}
