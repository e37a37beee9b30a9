//! OpenSSH public-key lines (`authorized_keys` format): parse, validate, fingerprint.
//!
//! Pure: no store, no IO. The store keeps the normalised line and its SHA256 fingerprint; the
//! gateway parses the lines back into `russh::keys::PublicKey` for comparison.

use russh::keys::{HashAlg, PublicKey};

/// A validated public key as berth stores it.
#[derive(Debug, Clone)]
pub struct ParsedKey {
    pub key: PublicKey,
    /// `SHA256:…`, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    /// e.g. `ssh-ed25519`.
    pub algorithm: String,
    pub comment: String,
    /// Normalised `<algorithm> <base64> [comment]`.
    pub line: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    #[error("public key line is empty (expected e.g. \"ssh-ed25519 AAAA… comment\")")]
    Empty,
    #[error(
        "public key has options before the key type; give a plain \"<type> <base64> [comment]\" line"
    )]
    HasOptions,
    #[error("not an OpenSSH public key ({0}); expected e.g. \"ssh-ed25519 AAAA… comment\"")]
    Invalid(String),
    #[error("{0} keys are not accepted (DSA is broken); use ed25519, ecdsa or rsa")]
    Weak(String),
}

/// Parses one `authorized_keys`-style line. Leading/trailing whitespace is ignored; options
/// (`from="…" ssh-ed25519 …`) and multi-line input are rejected rather than half-understood.
pub fn parse_key_line(line: &str) -> Result<ParsedKey, KeyError> {
    let line = line.trim();
    if line.is_empty() {
        return Err(KeyError::Empty);
    }
    if line.contains('\n') || line.contains('\r') {
        return Err(KeyError::Invalid("more than one line".into()));
    }
    let first = line.split_whitespace().next().unwrap_or_default();
    let known_prefix = first.starts_with("ssh-")
        || first.starts_with("ecdsa-")
        || first.starts_with("sk-")
        || first.starts_with("rsa-");
    if !known_prefix && (first.contains('=') || first.contains(',')) {
        return Err(KeyError::HasOptions);
    }
    let key = PublicKey::from_openssh(line).map_err(|e| KeyError::Invalid(e.to_string()))?;
    let algorithm = key.algorithm().as_str().to_string();
    if algorithm == "ssh-dss" {
        return Err(KeyError::Weak(algorithm));
    }
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let comment = key.comment().to_string();
    let normalised = key
        .to_openssh()
        .map_err(|e| KeyError::Invalid(e.to_string()))?;
    Ok(ParsedKey {
        key,
        fingerprint,
        algorithm,
        comment,
        line: normalised,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // ssh-keygen -t ed25519 -C alice@example ; fingerprint from ssh-keygen -lf
    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIHD8kX34G+5hacsR4eEYezNhoIa+ohMGr407z4ALm5L alice@example";

    #[test]
    fn parses_ed25519() {
        let k = parse_key_line(&format!("  {ED}\n")).unwrap();
        assert_eq!(k.algorithm, "ssh-ed25519");
        assert_eq!(k.comment, "alice@example");
        assert_eq!(
            k.fingerprint,
            "SHA256:BTZz8KnJqTOkgMISepQ3ROjhPAqHtQHnq/pnhC3qb6o"
        );
        assert_eq!(k.line, ED);
        // Same key, different comment → same fingerprint.
        let k2 = parse_key_line(ED.trim_end_matches("alice@example")).unwrap();
        assert_eq!(k.fingerprint, k2.fingerprint);
    }

    #[test]
    fn rejects_garbage() {
        let cases = [
            ("", "empty"),
            ("   ", "empty"),
            ("ssh-ed25519", "not an openssh"),
            ("ssh-ed25519 AAAA", "not an openssh"),
            ("ssh-ed25519 !!!notbase64", "not an openssh"),
            ("hello world", "not an openssh"),
            (
                "from=\"10.0.0.1\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIHD8kX34G+5hacsR4eEYezNhoIa+ohMGr407z4ALm5L",
                "options",
            ),
        ];
        for (input, want) in cases {
            let err = parse_key_line(input)
                .unwrap_err()
                .to_string()
                .to_lowercase();
            assert!(err.contains(want), "input {input:?}: {err}");
        }
        let two = format!("{ED}\n{ED}");
        assert!(parse_key_line(&two).is_err());
    }
}
