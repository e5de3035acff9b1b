//! Decoding of URL query strings and HTML form bodies, which most login protocols need, and
//! the rate-limit bucket of a client address.

/// Decodes `%XX` escapes; a malformed escape is kept as it is. `+` stays `+` (paths).
pub fn percent_decode(text: &str) -> String {
    decode(text, false)
}

/// One component of a form or query string: `%XX` escapes, and `+` for a space.
fn form_component(text: &str) -> String {
    decode(text, true)
}

fn decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
}

/// Decodes `application/x-www-form-urlencoded` text (a query string or a form body) into
/// name/value pairs, in order; `+` means a space.
pub fn form_decode(text: &str) -> Vec<(String, String)> {
    form_pairs(text)
        .map(|(name, value)| (form_component(name), form_component(value)))
        .collect()
}

/// The first value of `name` in form-encoded `text`; only that value is decoded (a SAML form
/// carries tens of kilobytes).
pub fn form_value(text: &str, name: &str) -> Option<String> {
    form_pairs(text)
        .find(|(n, _)| form_component(n) == name)
        .map(|(_, value)| form_component(value))
}

/// The raw `name=value` pairs of form-encoded text.
fn form_pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// The rate-limit bucket of a client address: the address, or its /64 for IPv6 (one host
/// commonly holds a whole /64).
pub fn client_bucket(address: &str) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        _ => address.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_buckets_group_an_ipv6_host_s_addresses() {
        assert_eq!(client_bucket("192.0.2.7"), "192.0.2.7");
        assert_eq!(
            client_bucket("2001:db8:1:2:aaaa::1"),
            client_bucket("2001:db8:1:2:bbbb::9")
        );
        assert_ne!(client_bucket("2001:db8:1:2::1"), client_bucket("2001:db8:1:3::1"));
        assert_eq!(client_bucket("::ffff:192.0.2.7"), "::ffff:192.0.2.7");
    }

    #[test]
    fn forms_and_escapes_decode() {
        assert_eq!(
            form_decode("before_id=ak_1&limit=5&x=a%20b+c%2&plus=%2B"),
            [
                ("before_id".to_string(), "ak_1".to_string()),
                ("limit".into(), "5".into()),
                ("x".into(), "a b c%2".into()),
                ("plus".into(), "+".into())
            ]
        );
        assert_eq!(percent_decode("/a+b%2Fc%zz"), "/a+b/c%zz");
        assert_eq!(form_value("a=1&b=2", "b").as_deref(), Some("2"));
        assert_eq!(form_value("a=1&b%5F=x+y&b_=z", "b_").as_deref(), Some("x y"));
        assert_eq!(form_value("a=1", "b"), None);
        assert_eq!(form_value("flag&a=1", "flag").as_deref(), Some(""));
        assert_eq!(percent_decode("%FF%41"), "\u{FFFD}A");
    }
}
