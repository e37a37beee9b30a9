//! The tenant vocabulary: `server<N>` login names and account names.
//!
//! Pure parsing only, in its own crate so that every entry point (gateway, dns, the CLI,
//! tenants itself) agrees on what a server name is without linking the store or the Docker
//! client: the resolver needs `parse_login`, not sqlx, bollard, bcrypt or russh. `tenants`
//! re-exports everything here, so `tenants::ServerId` and `tenants::parse_login` still work.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::fmt;

/// A server number N ≥ 1 (`server<N>`, container `berth-server-<N>`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct ServerId(u32);

impl ServerId {
    /// Wraps a raw number; `None` for 0 (ids start at 1).
    pub fn new(n: u32) -> Option<Self> {
        (n >= 1).then_some(Self(n))
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// SSH login name and hostname: `server<N>`.
    pub fn login_name(self) -> String {
        format!("server{}", self.0)
    }

    /// Docker container name: `berth-server-<N>`.
    pub fn container_name(self) -> String {
        format!("berth-server-{}", self.0)
    }

    /// Docker volume name: `berth-server-<N>-data`.
    pub fn volume_name(self) -> String {
        format!("berth-server-{}-data", self.0)
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server{}", self.0)
    }
}

/// Strict parse of an SSH login name: exactly `server` followed by ASCII digits, no sign, no
/// leading zero, fits in u32, and not zero. Anything else is `None` — callers treat that exactly
/// like a wrong password.
pub fn parse_login(name: &str) -> Option<ServerId> {
    let digits = name.strip_prefix("server")?;
    parse_digits(digits)
}

/// Admin-facing server reference: `server<N>` or plain `N` (same strictness).
pub fn parse_server_ref(s: &str) -> Option<ServerId> {
    parse_login(s).or_else(|| parse_digits(s))
}

fn parse_digits(digits: &str) -> Option<ServerId> {
    let bytes = digits.as_bytes();
    if bytes.is_empty() || bytes.len() > 10 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if bytes[0] == b'0' {
        return None; // leading zero (and "0" itself)
    }
    let mut n: u64 = 0;
    for b in bytes {
        n = n * 10 + u64::from(b - b'0');
    }
    u32::try_from(n).ok().and_then(ServerId::new)
}

/// The account-name rule, stated once so error messages can quote it.
pub const ACCOUNT_NAME_RULE: &str =
    "1-32 characters: lower-case ASCII letters, digits, '-' and '_', starting with a letter";

/// Validates an account name against [`ACCOUNT_NAME_RULE`].
pub fn valid_account_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_names() {
        let cases: &[(&str, Option<u32>)] = &[
            ("server1", Some(1)),
            ("server12", Some(12)),
            ("server4294967295", Some(u32::MAX)),
            ("server4294967296", None),
            ("server0", None),
            ("server01", None),
            ("server", None),
            ("server+1", None),
            ("server-1", None),
            ("server 1", None),
            ("server1 ", None),
            ("Server1", None),
            ("SERVER1", None),
            ("server١", None), // Arabic-Indic digit
            ("server99999999999", None),
            ("root", None),
            ("", None),
            ("1", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_login(input).map(ServerId::get),
                *want,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn server_refs_accept_plain_numbers() {
        assert_eq!(parse_server_ref("7").map(ServerId::get), Some(7));
        assert_eq!(parse_server_ref("server7").map(ServerId::get), Some(7));
        assert_eq!(parse_server_ref("07"), None);
        assert_eq!(parse_server_ref("0"), None);
    }

    #[test]
    fn account_names() {
        for ok in [
            "alice",
            "a",
            "bob-2",
            "c_d",
            "abcdefghijklmnopqrstuvwxyz012345",
        ] {
            assert!(valid_account_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            "1abc",
            "-a",
            "a b",
            "a.b",
            "abcdefghijklmnopqrstuvwxyz0123456",
            "é",
        ] {
            assert!(!valid_account_name(bad), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_roundtrips(n in 1u32..) {
            let id = ServerId::new(n).unwrap();
            proptest::prop_assert_eq!(parse_login(&id.login_name()), Some(id));
        }

        #[test]
        fn parse_never_panics(s in "\\PC*") {
            if let Some(id) = parse_login(&s) {
                proptest::prop_assert_eq!(id.login_name(), s);
            }
        }
    }
}
