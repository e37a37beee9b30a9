//! What a database URL says that matters before connecting: which SQLite file it names, and
//! a form of it safe to print.
//!
//! Pure string handling; opening the database is [`super::connection`]'s job.

use std::path::PathBuf;

use super::error::StoreError;

/// `postgres://user:password@host/db` → `postgres://user:<secret>@host/db`: the form of a
/// database URL that may appear in messages, logs and `berth config show`. Only the password
/// goes; a password containing `@` goes whole.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:<secret>{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

/// The file path of a `sqlite:` URL; `None` for in-memory databases.
pub(super) fn sqlite_path(url: &str) -> Result<Option<PathBuf>, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::InvalidUrl {
            url: url.to_string(),
            reason: "expected sqlite:///path/to/file.db".into(),
        })?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(None);
    }
    Ok(Some(PathBuf::from(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://berth:secret@127.0.0.1/berth"),
            "postgres://berth:<secret>@127.0.0.1/berth"
        );
        assert_eq!(redact_url("postgres://berth@db/x"), "postgres://berth@db/x");
        assert_eq!(
            redact_url("sqlite:///var/lib/berth/berth.db"),
            "sqlite:///var/lib/berth/berth.db"
        );
        assert_eq!(
            redact_url("postgres://u:p@ss@h/db"),
            "postgres://u:<secret>@h/db"
        );
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/berth/berth.db").unwrap(),
            Some(PathBuf::from("/var/lib/berth/berth.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:rel.db?mode=rwc").unwrap(),
            Some(PathBuf::from("rel.db"))
        );
        assert_eq!(sqlite_path("sqlite::memory:").unwrap(), None);
        assert!(sqlite_path("mysql://x").is_err());
    }
}
