//! The identity a protected route hands its upstream: plain headers (user id, email, name,
//! groups) and a signed JWT assertion (ES256) that upstreams verify against the JWKS served
//! at `/_portcullis/jwks.json`. The signing key is made on first start and kept in the store.

use crate::store::{Storage, StoreError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use sha2::{Digest, Sha256};

const KEY_NAME: &str = "assertion_signing_key_pkcs8";

/// The key could not sign (ring gives no reason).
#[derive(Debug, thiserror::Error)]
#[error("signing failed")]
pub struct SigningFailed;

/// Signs identity assertions.
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    jwks: String,
}

impl Signer {
    /// The store's signing key, made when there is none.
    pub async fn load_or_create(store: &dyn Storage) -> Result<Signer, StoreError> {
        let rng = SystemRandom::new();
        let pkcs8 = match store.metadata(KEY_NAME).await? {
            Some(pkcs8) => pkcs8,
            None => {
                let made = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| StoreError::Unavailable("cannot generate the assertion signing key".into()))?;
                // Of two starts making a key at once, both keep the one stored first.
                store.metadata_get_or_insert(KEY_NAME, made.as_ref()).await?
            }
        };
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|e| StoreError::Corrupt(format!("the stored assertion signing key is unusable: {e}")))?;
        let public = key.public_key().as_ref();
        // An uncompressed P-256 point: 0x04 || x (32 bytes) || y (32 bytes).
        let (x, y) = (&public[1..33], &public[33..65]);
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(public)[..12]);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]})
        .to_string();
        Ok(Signer { key, rng, kid, jwks })
    }

    /// A compact JWS of `claims`.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, SigningFailed> {
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| SigningFailed)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// The JWK Set of the public key.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }
}
