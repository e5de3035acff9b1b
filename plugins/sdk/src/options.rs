//! Reading a module's options the way every protocol plugin needs to: ngrok's clients send
//! `null` for fields they leave unset, the API shows read-only outputs beside the options (a
//! client that writes back what it read must get a clear error), and errors name their key.

use crate::OptionError;
use serde::de::DeserializeOwned;

/// An [`OptionError`] list of one.
pub fn option_error(key: &str, message: impl Into<String>) -> Vec<OptionError> {
    vec![OptionError {
        key: key.into(),
        message: message.into(),
    }]
}

/// Reads `value` into the plugin's options type `T`: `null` fields mean their default, any of
/// `read_only` is refused, each of `required` must be present and not empty, and an unknown
/// field is named in the error.
pub fn read_options<T: DeserializeOwned>(
    value: &serde_json::Value,
    read_only: &[&str],
    required: &[(&str, &str)],
) -> Result<T, Vec<OptionError>> {
    let mut value = value.clone();
    if let Some(object) = value.as_object_mut() {
        object.retain(|_, v| !v.is_null());
        if let Some(output) = read_only.iter().find(|k| object.contains_key(**k)) {
            return Err(option_error(output, "is read-only: the gateway computes it"));
        }
        for (key, why) in required {
            if object.get(*key).is_none_or(|v| v.as_str() == Some("")) {
                return Err(option_error(key, format!("is required: {why}")));
            }
        }
    }
    serde_json::from_value(value).map_err(|e| {
        let message = e.to_string();
        let key = message
            .split('`')
            .nth(1)
            .filter(|_| message.starts_with("unknown field"))
            .unwrap_or("");
        option_error(key, message.clone())
    })
}

/// Escapes text for HTML or XML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Opts {
        issuer: String,
        #[serde(default)]
        flag: bool,
    }

    #[test]
    fn options_are_read_with_clear_errors() {
        let read = |v: serde_json::Value| read_options::<Opts>(&v, &["url"], &[("issuer", "the provider")]);
        assert!(read(serde_json::json!({"issuer": "x", "flag": null})).is_ok());
        assert_eq!(
            read(serde_json::json!({"issuer": "x", "url": "y"})).unwrap_err()[0].key,
            "url"
        );
        assert_eq!(read(serde_json::json!({"issuer": ""})).unwrap_err()[0].key, "issuer");
        assert_eq!(
            read(serde_json::json!({"issuer": "x", "other": 1})).unwrap_err()[0].key,
            "other"
        );
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
