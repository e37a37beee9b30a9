//! bcrypt password hashing with berth's rules: never empty, never longer than bcrypt's 72-byte
//! input (bcrypt silently truncates; we refuse at set time instead), and a fixed dummy hash so
//! the gateway can spend the same time on unknown users as on known ones.
//!
//! Everything here is synchronous and CPU-heavy (≈0.25 s at cost 12): async callers run it on
//! the blocking pool (`tokio::task::spawn_blocking`).

/// bcrypt only reads the first 72 bytes of its input.
pub const MAX_PASSWORD_BYTES: usize = 72;
/// Production cost.
pub const DEFAULT_COST: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password is empty")]
    Empty,
    #[error(
        "password is {len} bytes; bcrypt uses at most {MAX_PASSWORD_BYTES} bytes, so longer passwords are refused"
    )]
    TooLong { len: usize },
    #[error("bcrypt failed: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
}

/// Checks a new password against the rules without hashing it.
pub fn check(password: &str) -> Result<(), PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong {
            len: password.len(),
        });
    }
    Ok(())
}

/// Hashes a new password (bcrypt `$2b$`), refusing empty and over-long ones.
pub fn hash(password: &str, cost: u32) -> Result<String, PasswordError> {
    check(password)?;
    Ok(bcrypt::hash(password, cost)?)
}

/// True when `password` matches `hash`. A malformed hash or an over-long password is a
/// mismatch, never a panic; bcrypt still runs so the time spent does not tell them apart.
pub fn verify(password: &str, hash: &str) -> bool {
    let too_long = password.len() > MAX_PASSWORD_BYTES;
    let bytes = &password.as_bytes()[..password.len().min(MAX_PASSWORD_BYTES)];
    match bcrypt::verify(bytes, hash) {
        Ok(ok) => ok && !too_long && !password.is_empty(),
        Err(_) => {
            // Burn comparable time on a well-formed hash so a corrupt row is not a timing oracle.
            let _ = bcrypt::verify(bytes, DUMMY_HASH);
            false
        }
    }
}

/// A valid cost-12 bcrypt hash of a random string nobody knows. Verify against it when the
/// server is unknown, deleted or its owner disabled, so timing never tells which.
pub const DUMMY_HASH: &str = "$2b$12$Xr8jCqvOZ2J5sG3bC7yE8eQy0cA9rWmQ6K0nL1pT3uV5xZ7aB9dEy";

/// Verifies against [`DUMMY_HASH`] and returns false: the "no such user" path.
pub fn verify_dummy(password: &str) -> bool {
    let _ = verify(password, DUMMY_HASH);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("correct horse", 4).unwrap();
        assert!(h.starts_with("$2b$04$"));
        assert!(verify("correct horse", &h));
        assert!(!verify("correct horsE", &h));
        assert!(!verify("", &h));
        assert!(!verify("x", "not a hash"));
    }

    #[test]
    fn limits() {
        assert!(matches!(hash("", 4), Err(PasswordError::Empty)));
        let ok = "a".repeat(72);
        let long = "a".repeat(73);
        assert!(hash(&ok, 4).is_ok());
        let err = hash(&long, 4).unwrap_err();
        assert!(matches!(err, PasswordError::TooLong { len: 73 }));
        assert!(err.to_string().contains("72"));
        // A 73-byte password never matches even though bcrypt would truncate it to `ok`.
        let h = hash(&ok, 4).unwrap();
        assert!(verify(&ok, &h));
        assert!(!verify(&long, &h));
        // Multi-byte characters count in bytes.
        assert!(hash(&"é".repeat(37), 4).is_err());
    }

    #[test]
    fn dummy_hash_is_wellformed_cost_12() {
        assert!(DUMMY_HASH.starts_with("$2b$12$"));
        let parts: bcrypt::HashParts = DUMMY_HASH.parse().unwrap();
        assert_eq!(parts.get_cost(), 12);
        // It must really verify (an Err would return early and be a timing oracle).
        assert_eq!(bcrypt::verify("anything", DUMMY_HASH).ok(), Some(false));
        assert!(!verify_dummy("anything"));
    }
}
