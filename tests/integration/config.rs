//! Config files: each bad input yields one error naming the file, the key and (for syntax) the line.

use crate::harness::LISTENERS;
use portcullis::config::ConfigError;
use portcullis::Config;

fn load(text: &str) -> (Result<Config, ConfigError>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    (Config::load(&path), path.display().to_string())
}

fn error_of(text: &str) -> (ConfigError, String) {
    let (result, path) = load(text);
    (result.expect_err("config should be refused"), path)
}

#[test]
fn bad_toml_names_the_file_and_line() {
    let (e, path) = error_of("version = 1\n\n[listeners.edge\naddress = \"127.0.0.1:0\"\n");
    assert_eq!(e.source, path);
    assert_eq!(e.key, None);
    assert!(
        e.message
            .starts_with("TOML syntax error at line 3, column 16: invalid table header; expected"),
        "{}",
        e.message
    );
    assert!(
        e.to_string()
            .starts_with(&format!("{path}: TOML syntax error at line 3")),
        "{e}"
    );
}

#[test]
fn unknown_key_is_refused_with_its_path() {
    let (e, path) = error_of(&format!("{LISTENERS}[proxy]\nheader_read_timeout = 5\n"));
    assert_eq!(e.source, path);
    assert_eq!(e.key.as_deref(), Some("proxy.header_read_timeout"));
    assert!(e.message.contains("unknown field"), "{}", e.message);
    assert!(
        e.message.contains("header_read_timeout_secs"),
        "the message lists the known keys: {}",
        e.message
    );
}

#[test]
fn wrong_type_names_the_key() {
    let (e, _) = error_of(&LISTENERS.replace("version = 1", "version = \"1\""));
    assert_eq!(e.key.as_deref(), Some("version"));
    assert!(
        e.message.contains("invalid type: found string \"1\", expected u32"),
        "{}",
        e.message
    );
    let (e, _) = error_of(&format!("{LISTENERS}[proxy]\nupstream_connect_timeout_secs = -1\n"));
    assert_eq!(e.key.as_deref(), Some("proxy.upstream_connect_timeout_secs"));
}

#[test]
fn missing_version_and_unsupported_version_are_refused() {
    let (e, _) = error_of(&LISTENERS.replace("version = 1\n", ""));
    assert_eq!(e.key.as_deref(), Some("version"));
    assert_eq!(e.message, "is required but missing");
    let (e, _) = error_of(&LISTENERS.replace("version = 1", "version = 7"));
    assert_eq!(e.key.as_deref(), Some("version"));
    assert_eq!(e.message, "unsupported config version 7; this build reads version 1");
}

#[test]
fn semantic_errors_point_at_the_value() {
    let cases = [
        ("[backends.up]\naddress = \"localhost\"\n", "backends.up.address", "the port is required"),
        ("[listeners.edge.tls]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n", "", ""),
        (
            "[backends.up]\naddress = \"127.0.0.1:9\"\n[edges.a]\nhostports = [\"a.test:80\"]\n[[edges.a.routes]]\nmatch_type = \"path_prefix\"\nmatch = \"/\"\nbackend = \"nope\"\n",
            "edges.a.routes[0].backend",
            "no backend named `nope`",
        ),
        (
            "[backends.up]\naddress = \"127.0.0.1:9\"\n[edges.a]\nhostports = [\"a.test:80\"]\n[edges.b]\nhostports = [\"A.test:80\"]\n",
            "edges.b.hostports[0]",
            "already served by edge `a`",
        ),
        (
            "[edges.a]\nhostports = [\"a.test:80\"]\n[[edges.a.routes]]\nmatch_type = \"regex\"\nmatch = \"/\"\nbackend = \"x\"\n",
            "edges.a.routes[0].match_type",
            "unknown variant: found `regex`",
        ),
        (
            "[api]\nallow_cidrs = [\"10.0.0.0/8\", \"192.168.1.7/24\"]\n",
            "api.allow_cidrs[1]",
            "write 192.168.1.0/24",
        ),
        ("[api]\nallow_cidrs = [\"intranet\"]\n", "api.allow_cidrs[0]", "not an IP address"),
    ];
    for (extra, key, message) in cases {
        if key.is_empty() {
            // A TLS table inside [listeners.edge] after [listeners.console]: still checked.
            let text = LISTENERS.replace(
                "[listeners.console]",
                "[listeners.edge.tls]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n[listeners.console]",
            );
            let (e, _) = error_of(&text);
            assert_eq!(e.key.as_deref(), Some("listeners.edge.tls.cert"));
            assert!(e.message.contains("missing.pem does not exist"), "{}", e.message);
            continue;
        }
        let (e, _) = error_of(&format!("{LISTENERS}{extra}"));
        assert_eq!(e.key.as_deref(), Some(key), "{e}");
        assert!(e.message.contains(message), "{e}");
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let e = Config::load(std::path::Path::new("/nonexistent/portcullis.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/nonexistent/portcullis.toml: cannot read the config file: No such file or directory (os error 2)"
    );
}

#[test]
fn the_shipped_config_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml");
    let config = Config::load(&path).unwrap();
    assert_eq!(config.listeners.edge.address.to_string(), "127.0.0.1:8080");
    assert_eq!(config.listeners.console.address.to_string(), "127.0.0.1:4040");
    assert!(config.data_dir.ends_with("data"));
    assert_eq!(config.edges["demo"].routes[0].backend, "echo");
}
