//! JSON Web Tokens openidconnect does not verify for us (the back-channel `logout_token`),
//! checked with the provider's JWKS through openidconnect's key types, and the payload of an
//! ID token openidconnect has already verified.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use openidconnect::core::{CoreJsonWebKey, CoreJwsSigningAlgorithm};
use openidconnect::JsonWebKey;

/// Why a token was refused.
#[derive(Debug)]
pub enum Error {
    /// No key of the JWKS has the token's `kid` (the JWKS may need a refresh).
    UnknownKey,
    Invalid(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::UnknownKey => f.write_str("no key of the provider's JWKS has the token's kid"),
            Error::Invalid(m) => f.write_str(m),
        }
    }
}

fn part(token: &str, index: usize) -> Result<&str, Error> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(Error::Invalid("not a signed JWT (three parts)".into()));
    }
    Ok(parts[index])
}

fn json_part(token: &str, index: usize) -> Result<serde_json::Value, Error> {
    let bytes = B64URL
        .decode(part(token, index)?)
        .map_err(|_| Error::Invalid("a part is not base64url".into()))?;
    serde_json::from_slice(&bytes).map_err(|_| Error::Invalid("a part is not JSON".into()))
}

/// The claims of a JWT whose signature was already verified.
pub fn payload(token: &str) -> Result<serde_json::Value, String> {
    json_part(token, 1).map_err(|e| e.to_string())
}

/// Verifies a JWT's signature with the key of `keys` its header names, under one of `allowed`,
/// and returns its claims. Claims are the caller's to check.
pub fn verify(
    token: &str,
    keys: &[CoreJsonWebKey],
    allowed: &[CoreJwsSigningAlgorithm],
) -> Result<serde_json::Value, Error> {
    let header = json_part(token, 0)?;
    let alg: CoreJwsSigningAlgorithm = serde_json::from_value(header["alg"].clone())
        .map_err(|_| Error::Invalid(format!("unknown alg {}", header["alg"])))?;
    if !allowed.contains(&alg) {
        return Err(Error::Invalid(format!("alg {} is not allowed", header["alg"])));
    }
    let kid = header["kid"].as_str();
    let candidates: Vec<&CoreJsonWebKey> = keys
        .iter()
        .filter(|k| kid.is_none_or(|kid| k.key_id().is_some_and(|id| id.as_str() == kid)))
        .collect();
    if candidates.is_empty() {
        return Err(Error::UnknownKey);
    }
    let signing_input = token
        .rsplit_once('.')
        .map(|(input, _)| input)
        .ok_or_else(|| Error::Invalid("not a JWT".into()))?;
    let signature = B64URL
        .decode(part(token, 2)?)
        .map_err(|_| Error::Invalid("the signature is not base64url".into()))?;
    if candidates
        .iter()
        .any(|key| key.verify_signature(&alg, signing_input.as_bytes(), &signature).is_ok())
    {
        json_part(token, 1)
    } else {
        Err(Error::Invalid("the signature does not verify".into()))
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}
