//! Members' passwords: Argon2id at OWASP's parameters (m = 19456 KiB, t = 2, p = 1) in PHC
//! string form, which names its own parameters, so they can be raised later and a stored hash
//! made with others is re-hashed at its next successful sign-in. Hashing and verifying run on
//! a blocking thread (tens of milliseconds each). What a new password must be: at least 12
//! characters and at most 1024 bytes, no composition rules (NIST SP 800-63B).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// The fewest characters a new password may have.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The most bytes a password may have (a longer one is refused before it is hashed).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Argon2id memory cost in KiB (OWASP).
const MEMORY_KIB: u32 = 19_456;
/// Argon2id passes (OWASP).
const ITERATIONS: u32 = 2;
/// Argon2id lanes (OWASP).
const PARALLELISM: u32 = 1;

/// A PHC string at the current parameters with a random salt and a random output (so no
/// password matches it), verified against when the email is unknown or its member has no
/// password: that answer takes as long as a wrong password.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$qVrbN9XPd7wObZoqPjbY8Q$DFxNN9xmbzhyZFIwaRlbV6jwxHXMlE/3XVAFxcj9wR0";

/// Why a password was refused or could not be hashed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("a password needs at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    #[error("a password may have at most {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// What verifying a password found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The password matches the stored hash.
    pub matches: bool,
    /// The stored hash was made with other parameters than today's: hash the password again.
    pub needs_rehash: bool,
}

/// Checks what a new password must be.
pub fn check_new_password(password: &str) -> Result<(), PasswordError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    Ok(())
}

fn hasher() -> Result<Argon2<'static>, PasswordError> {
    let params =
        Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).map_err(|e| PasswordError::Hashing(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_now(password: &str) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hashing(e.to_string()))?;
    hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| PasswordError::Hashing(e.to_string()))
}

/// Whether `hash` was made by Argon2id v1.3 at today's parameters.
fn current(hash: &PasswordHash<'_>) -> bool {
    hash.algorithm == Algorithm::Argon2id.ident()
        && hash.version == Some(Version::V0x13.into())
        && Params::try_from(hash)
            .is_ok_and(|p| (p.m_cost(), p.t_cost(), p.p_cost()) == (MEMORY_KIB, ITERATIONS, PARALLELISM))
}

fn verify_now(password: &str, stored: Option<&str>) -> Verified {
    let known = stored.and_then(|s| PasswordHash::new(s).ok());
    let (hash, real) = match known {
        Some(hash) => (hash, true),
        // The dummy is a constant PHC string; were it unreadable, no password matches.
        None => match PasswordHash::new(DUMMY_HASH) {
            Ok(hash) => (hash, false),
            Err(_) => {
                return Verified {
                    matches: false,
                    needs_rehash: false,
                }
            }
        },
    };
    // Verification takes the parameters the hash names.
    let matches = password.len() <= MAX_PASSWORD_BYTES
        && Argon2::default().verify_password(password.as_bytes(), &hash).is_ok()
        && real;
    Verified {
        matches,
        needs_rehash: matches && !current(&hash),
    }
}

/// Hashes a new password (already checked) with a fresh salt, on a blocking thread.
pub async fn hash_password(password: &str) -> Result<String, PasswordError> {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || hash_now(&password))
        .await
        .map_err(|e| PasswordError::Hashing(e.to_string()))?
}

/// Verifies a password against a stored hash, or against the dummy hash when there is none (an
/// unknown email, a member without a password), on a blocking thread.
pub async fn verify_password(password: &str, stored: Option<&str>) -> Verified {
    let password = password.to_string();
    let stored = stored.map(str::to_string);
    tokio::task::spawn_blocking(move || verify_now(&password, stored.as_deref()))
        .await
        .unwrap_or(Verified {
            matches: false,
            needs_rehash: false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_passwords_are_checked_by_length_only() {
        assert_eq!(check_new_password("short"), Err(PasswordError::TooShort));
        // Twelve characters, counted as characters, not bytes.
        assert_eq!(check_new_password("ééééééééééé"), Err(PasswordError::TooShort));
        assert_eq!(check_new_password("éééééééééééé"), Ok(()));
        assert_eq!(check_new_password("alllowercase"), Ok(()));
        assert_eq!(check_new_password(&"a".repeat(1024)), Ok(()));
        assert_eq!(check_new_password(&"a".repeat(1025)), Err(PasswordError::TooLong));
    }

    #[tokio::test]
    async fn hashes_are_argon2id_at_owasp_parameters_and_verify() {
        let hash = hash_password("correct horse battery").await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert_eq!(
            verify_password("correct horse battery", Some(&hash)).await,
            Verified {
                matches: true,
                needs_rehash: false
            }
        );
        assert!(!verify_password("wrong horse battery", Some(&hash)).await.matches);
        // The dummy is at today's parameters (so it costs what a real hash costs) and matches
        // nothing, not even through an unreadable stored hash.
        assert!(current(&PasswordHash::new(DUMMY_HASH).unwrap()));
        assert!(!verify_password("anything", None).await.matches);
        assert!(!verify_password("anything", Some("not a hash")).await.matches);
    }

    #[tokio::test]
    async fn a_hash_made_with_other_parameters_verifies_and_asks_for_a_rehash() {
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let weaker = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 1, 1, None).unwrap(),
        )
        .hash_password(b"an older password", &salt)
        .unwrap()
        .to_string();
        assert_eq!(
            verify_password("an older password", Some(&weaker)).await,
            Verified {
                matches: true,
                needs_rehash: true
            }
        );
        assert_eq!(
            verify_password("not the password", Some(&weaker)).await,
            Verified {
                matches: false,
                needs_rehash: false
            }
        );
    }
}
