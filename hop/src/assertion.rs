//! What a front asserts to a node, carried as the hop's SSH user name:
//! `server<N>/<account>/<client address>`. Pure and strict: anything that does not parse back
//! to exactly the same text is refused, so a front cannot smuggle a second meaning past the
//! node.

use std::net::IpAddr;

use tenants::ServerId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    pub server: ServerId,
    pub account: String,
    /// The client's address as the front saw it (for the node's audit).
    pub client: IpAddr,
}

impl Assertion {
    /// The user name the front logs in to the node with.
    pub fn to_user(&self) -> String {
        format!(
            "{}/{}/{}",
            self.server.login_name(),
            self.account,
            self.client
        )
    }

    /// Parses a hop user name; `None` unless it is exactly what [`Assertion::to_user`] writes.
    pub fn parse(user: &str) -> Option<Self> {
        let mut parts = user.splitn(3, '/');
        let server = tenants::parse_login(parts.next()?)?;
        let account = parts.next()?;
        let client: IpAddr = parts.next()?.parse().ok()?;
        if !tenants::valid_account_name(account) {
            return None;
        }
        let a = Self {
            server,
            account: account.to_string(),
            client,
        };
        (a.to_user() == user).then_some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_everything_else() {
        let a = Assertion {
            server: ServerId::new(7).unwrap_or_else(|| unreachable!()),
            account: "alice".into(),
            client: "2001:db8::5".parse().unwrap_or_else(|_| unreachable!()),
        };
        assert_eq!(a.to_user(), "server7/alice/2001:db8::5");
        assert_eq!(Assertion::parse(&a.to_user()), Some(a));
        assert!(Assertion::parse("server7/alice/203.0.113.5").is_some());
        for bad in [
            "",
            "server7",
            "server7/alice",
            "server7/alice/",
            "server07/alice/203.0.113.5",
            "server7/Alice/203.0.113.5",
            "server7/alice/203.0.113.5/x",
            "server7/alice/203.0.113.005",
            "server7//203.0.113.5",
            "server7/alice/::ffff:1.2.3.4x",
            "7/alice/203.0.113.5",
        ] {
            assert_eq!(Assertion::parse(bad), None, "{bad:?}");
        }
    }
}
