//! Resource identifiers in ngrok's shape: a type prefix, `_`, and 27 base62 characters.
//!
//! Random ids put the creation second first (as a KSUID does), so that sorting ids sorts
//! by creation time and `before_id` paging walks from newest to oldest. Ids for objects
//! declared in `config.toml` are derived from their names, so they stay the same across
//! restarts and reloads.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of API key ids.
pub const API_KEY: &str = "ak";
/// Prefix of static backend ids.
pub const STATIC_BACKEND: &str = "bkdst";
/// Prefix of HTTPS edge ids.
pub const HTTPS_EDGE: &str = "edghts";
/// Prefix of HTTPS edge route ids.
pub const HTTPS_ROUTE: &str = "edghtsrt";
/// Prefix of application (edge) user ids.
pub const APP_USER: &str = "apu";
/// Prefix of application (edge) session ids.
pub const APP_SESSION: &str = "aps";
/// Prefix of member (console account) ids.
pub const MEMBER: &str = "usr";
/// Prefix of console session ids.
pub const CONSOLE_SESSION: &str = "cses";
/// Prefix of audit event ids.
pub const AUDIT_EVENT: &str = "aud";
/// Prefix of operation (request) ids in API error details.
pub const OPERATION: &str = "op";

/// A new request id: 16 random bytes in hex.
pub fn new_request_id() -> String {
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    let mut out = String::with_capacity(32);
    for b in raw {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    out
}

/// Seconds between the Unix epoch and the KSUID epoch (2014-05-13T16:53:20Z).
const KSUID_EPOCH: u64 = 1_400_000_000;
const ENCODED_LEN: usize = 27;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new random id made at `now` (seconds since the Unix epoch, from the gateway's clock): 4
/// bytes of creation time, 16 random bytes.
pub fn new_id(prefix: &str, now: i64) -> String {
    let secs = now.saturating_sub(KSUID_EPOCH as i64);
    let mut raw = [0u8; 20];
    raw[..4].copy_from_slice(&(secs.clamp(0, u32::MAX as i64) as u32).to_be_bytes());
    rand::rng().fill_bytes(&mut raw[4..]);
    format!("{prefix}_{}", base62(&raw))
}

/// The id of an object declared in the config file, derived from its kind and name.
pub fn config_id(prefix: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("portcullis-config:{prefix}:{name}").as_bytes());
    let mut raw = [0u8; 20];
    raw.copy_from_slice(&digest[..20]);
    format!("{prefix}_{}", base62(&raw))
}

/// 256 random bits as 44 base62 characters, for secrets such as API key tokens.
pub fn new_secret() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let mut out = String::with_capacity(44);
    for half in raw.chunks(16) {
        out.push_str(&base62_fixed(half, 22));
    }
    out
}

fn base62(raw: &[u8; 20]) -> String {
    base62_fixed(raw, ENCODED_LEN)
}

/// Big-endian base62 of `raw`, left-padded with `0` to `width` characters.
fn base62_fixed(raw: &[u8], width: usize) -> String {
    let mut digits = raw.to_vec();
    let mut out = Vec::with_capacity(width);
    while digits.iter().any(|&d| d != 0) {
        let mut remainder = 0u32;
        for d in digits.iter_mut() {
            let acc = (remainder << 8) | u32::from(*d);
            *d = (acc / 62) as u8;
            remainder = acc % 62;
        }
        out.push(ALPHABET[remainder as usize]);
    }
    while out.len() < width {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_fixed_shape_and_sort_by_time() {
        let a = new_id(HTTPS_EDGE, 1_700_000_000);
        let tail = a.strip_prefix("edghts_").unwrap();
        assert!(
            tail.len() == ENCODED_LEN && tail.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{a}"
        );
        // The creation second comes first, from the clock's `now`.
        for _ in 0..100 {
            assert!(new_id(HTTPS_EDGE, 1_700_000_000) < new_id(HTTPS_EDGE, 1_700_000_001));
        }
        assert_eq!(config_id(API_KEY, "x"), config_id(API_KEY, "x"));
        assert_ne!(config_id(API_KEY, "x"), config_id(API_KEY, "y"));
        assert_eq!(base62_fixed(&[0, 0, 1], 3), "001");
        assert_eq!(base62_fixed(&[0, 62], 2), "10");
        assert_eq!(new_secret().len(), 44);
    }
}
