//! `berth account …`: people, their passwords and their public keys.
//!
//! Passwords come only from `--password-stdin` (first line) or a no-echo prompt on the
//! terminal — never from argv, where `ps` and shell history would show them. Exit codes are
//! shared with `berth server` (see [`exit`]): 65 invalid input, 67 unknown account/server/key,
//! 73 already exists, 69 database or Docker unavailable (retry later), 66 image missing.

use std::io::{BufRead, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use tenants::{AuditEvent, AuditKind, PasswordError, Store, StoreError};

use super::Exit;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Add an account (prompts for a password unless --password-stdin or --no-password).
    Add {
        name: String,
        #[command(flatten)]
        pw: PasswordArgs,
        /// Create a key-only account (no password login).
        #[arg(long, conflicts_with = "password_stdin")]
        no_password: bool,
    },
    /// Change an account's password.
    Passwd {
        name: String,
        #[command(flatten)]
        pw: PasswordArgs,
        /// Remove the password (key-only login).
        #[arg(long, conflicts_with = "password_stdin")]
        clear: bool,
    },
    /// Disable an account: its owner can no longer log in to any of its servers.
    Disable { name: String },
    /// Re-enable a disabled account.
    Enable { name: String },
    /// Remove an account and its keys (refused while it owns servers).
    Rm { name: String },
    /// List accounts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one account and its keys.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Manage an account's authorized public keys.
    #[command(subcommand)]
    Key(KeyCmd),
}

#[derive(clap::Args)]
pub struct PasswordArgs {
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(clap::Subcommand)]
pub enum KeyCmd {
    /// Authorize an OpenSSH public key ("ssh-ed25519 AAAA… comment"): as an argument, from
    /// --file, or from standard input with "-".
    Add {
        name: String,
        /// The key line, or "-" for standard input.
        key: Option<String>,
        /// Read the key from a .pub file.
        #[arg(long, conflicts_with = "key")]
        file: Option<PathBuf>,
    },
    /// Remove a key by its SHA256 fingerprint (see `key list`).
    Rm { name: String, fingerprint: String },
    /// List an account's keys.
    List {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

/// Exit codes (sysexits.h) shared by the account and server commands.
pub mod exit {
    /// Invalid input: name, password, key, size.
    pub const DATAERR: u8 = 65;
    /// The image to run is not on the Docker host.
    pub const NOINPUT: u8 = 66;
    /// Unknown account, server or key.
    pub const NOUSER: u8 = 67;
    /// Database or Docker unreachable / locked: retry later.
    pub const UNAVAILABLE: u8 = 69;
    /// Already exists, or conflicts with something that does.
    pub const CANTCREAT: u8 = 73;
    /// No way to read a password (no terminal and no --password-stdin).
    pub const USAGE: u8 = 64;
    /// Not now: try again later (a server with open sessions cannot move without --force).
    pub const TEMPFAIL: u8 = 75;
}

pub(crate) fn fail(code: u8, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Exit {
        code,
        message: message.into(),
    })
}

/// A store error as the operator should see it, with its exit code.
pub(crate) fn store_error(e: StoreError) -> anyhow::Error {
    let code = match &e {
        StoreError::InvalidAccountName { .. }
        | StoreError::InvalidKey(_)
        | StoreError::InvalidNodeName { .. }
        | StoreError::InvalidFrontName { .. } => exit::DATAERR,
        StoreError::UnknownAccount(_)
        | StoreError::UnknownKey { .. }
        | StoreError::UnknownServer(_)
        | StoreError::ServerDeleted(_)
        | StoreError::UnknownNode(_)
        | StoreError::UnknownFront(_) => exit::NOUSER,
        StoreError::DuplicateAccount(_)
        | StoreError::DuplicateKey { .. }
        | StoreError::AccountHasServers { .. }
        | StoreError::DuplicateNode(_)
        | StoreError::NodeHasServers { .. }
        | StoreError::NodeKeyMismatch(_)
        | StoreError::MoveConflict { .. } => exit::CANTCREAT,
        e if e.is_retryable() => exit::UNAVAILABLE,
        _ => 1,
    };
    fail(code, e.to_string())
}

/// Opens the store named by the config (unreachable / locked → 69).
pub(crate) async fn open_store(path: Option<&Path>) -> Result<(crate::config::Config, Store)> {
    let cfg = super::load_config(path)?;
    let store = Store::connect(&cfg.database_url()).await.map_err(|e| {
        let code = match &e {
            StoreError::InvalidUrl { .. } => exit::USAGE,
            e if e.is_retryable() => exit::UNAVAILABLE,
            _ => 1,
        };
        fail(code, format!("cannot open the store: {e}"))
    })?;
    Ok((cfg, store))
}

/// Records an admin action; a failure to audit is reported but does not undo the action.
pub(crate) async fn audit(store: &Store, event: AuditEvent) {
    let peer = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .ok();
    let event = AuditEvent {
        peer: event.peer.or(peer.map(|u| format!("cli:{u}"))),
        ..event
    };
    if let Err(e) = store.record_audit(event).await {
        tracing::warn!(error = %e, "cannot record audit event");
    }
}

fn admin_event(method: &str, account: &str) -> AuditEvent {
    AuditEvent {
        account: Some(account.to_string()),
        method: Some(method.to_string()),
        ..AuditEvent::new(AuditKind::Admin, "success")
    }
}

/// Reads a new password per the rules above and hashes it (bcrypt, on the blocking pool).
async fn read_and_hash(name: &str, pw: &PasswordArgs) -> Result<String> {
    let password = if pw.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        line.strip_suffix('\r').unwrap_or(line).to_string()
    } else if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("New password for {name}: "))
            .context("cannot read the password from the terminal")?;
        tenants::password::check(&first).map_err(password_error)?;
        let again = rpassword::prompt_password("Repeat it: ")
            .context("cannot read the password from the terminal")?;
        if first != again {
            return Err(fail(exit::DATAERR, "the passwords do not match"));
        }
        first
    } else {
        return Err(fail(
            exit::USAGE,
            "no terminal to prompt for a password: pass --password-stdin (or --no-password)",
        ));
    };
    tenants::password::check(&password).map_err(password_error)?;
    let cost = tenants::password::DEFAULT_COST;
    tokio::task::spawn_blocking(move || tenants::password::hash(&password, cost))
        .await
        .context("password hashing task failed")?
        .map_err(password_error)
}

fn password_error(e: PasswordError) -> anyhow::Error {
    match e {
        PasswordError::Bcrypt(_) => anyhow::Error::new(e),
        e => fail(exit::DATAERR, e.to_string()),
    }
}

pub async fn run(path: Option<&Path>, cmd: Cmd) -> Result<ExitCode> {
    // Validate what we can before asking for a password.
    match &cmd {
        Cmd::Add { name, .. } if !tenants::valid_account_name(name) => {
            return Err(store_error(StoreError::InvalidAccountName {
                name: name.clone(),
            }));
        }
        _ => {}
    }
    let (_cfg, store) = open_store(path).await?;
    match cmd {
        Cmd::Add {
            name,
            pw,
            no_password,
        } => {
            if store.account(&name).await.map_err(store_error)?.is_some() {
                return Err(store_error(StoreError::DuplicateAccount(name)));
            }
            let hash = if no_password {
                None
            } else {
                Some(read_and_hash(&name, &pw).await?)
            };
            store
                .add_account(&name, hash.as_deref())
                .await
                .map_err(store_error)?;
            audit(&store, admin_event("account add", &name)).await;
            println!("added account {name}");
        }
        Cmd::Passwd { name, pw, clear } => {
            if store.account(&name).await.map_err(store_error)?.is_none() {
                return Err(store_error(StoreError::UnknownAccount(name)));
            }
            let hash = if clear {
                None
            } else {
                Some(read_and_hash(&name, &pw).await?)
            };
            store
                .set_password(&name, hash.as_deref())
                .await
                .map_err(store_error)?;
            audit(&store, admin_event("account passwd", &name)).await;
            println!(
                "{} password of {name}",
                if clear { "cleared" } else { "changed" }
            );
        }
        Cmd::Disable { name } => {
            store.set_enabled(&name, false).await.map_err(store_error)?;
            audit(&store, admin_event("account disable", &name)).await;
            println!("disabled account {name}");
        }
        Cmd::Enable { name } => {
            store.set_enabled(&name, true).await.map_err(store_error)?;
            audit(&store, admin_event("account enable", &name)).await;
            println!("enabled account {name}");
        }
        Cmd::Rm { name } => {
            store.remove_account(&name).await.map_err(store_error)?;
            audit(&store, admin_event("account rm", &name)).await;
            println!("removed account {name}");
        }
        Cmd::List { json } => {
            let accounts = store.accounts().await.map_err(store_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&accounts)?);
            } else {
                let rows = accounts
                    .iter()
                    .map(|a| {
                        vec![
                            a.name.clone(),
                            if a.enabled { "yes" } else { "no" }.to_string(),
                            if a.has_password { "yes" } else { "no" }.to_string(),
                            a.keys.to_string(),
                            a.created.format("%Y-%m-%d %H:%M").to_string(),
                        ]
                    })
                    .collect::<Vec<_>>();
                print_table(&["NAME", "ENABLED", "PASSWORD", "KEYS", "CREATED"], &rows);
            }
        }
        Cmd::Show { name, json } => {
            let account = store
                .account(&name)
                .await
                .map_err(store_error)?
                .ok_or_else(|| store_error(StoreError::UnknownAccount(name.clone())))?;
            let keys = store.keys(&name).await.map_err(store_error)?;
            let servers: Vec<_> = store
                .servers(false)
                .await
                .map_err(store_error)?
                .into_iter()
                .filter(|s| s.owner == name)
                .map(|s| s.id)
                .collect();
            if json {
                let v = serde_json::json!({ "account": account, "keys": keys, "servers": servers });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("name:     {}", account.name);
                println!("enabled:  {}", if account.enabled { "yes" } else { "no" });
                println!(
                    "password: {}",
                    if account.has_password { "set" } else { "none" }
                );
                println!(
                    "created:  {}",
                    account.created.format("%Y-%m-%d %H:%M:%S UTC")
                );
                let names: Vec<String> = servers.iter().map(ToString::to_string).collect();
                println!(
                    "servers:  {}",
                    if names.is_empty() {
                        "-".into()
                    } else {
                        names.join(", ")
                    }
                );
                println!("keys:");
                for k in keys {
                    println!("  {} {} {}", k.fingerprint, k.algorithm, k.comment);
                }
            }
        }
        Cmd::Key(KeyCmd::Add { name, key, file }) => {
            let line = match (key.as_deref(), file) {
                (_, Some(file)) => std::fs::read_to_string(&file).map_err(|e| {
                    fail(
                        exit::DATAERR,
                        format!("cannot read key file {}: {e}", file.display()),
                    )
                })?,
                (Some("-"), None) | (None, None) => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .context("cannot read the key from stdin")?;
                    s
                }
                (Some(k), None) => k.to_string(),
            };
            let k = store
                .add_key(&name, line.trim())
                .await
                .map_err(store_error)?;
            audit(
                &store,
                AuditEvent {
                    detail: serde_json::json!({ "fingerprint": k.fingerprint }),
                    ..admin_event("account key add", &name)
                },
            )
            .await;
            println!("authorized {} {} for {name}", k.algorithm, k.fingerprint);
        }
        Cmd::Key(KeyCmd::Rm { name, fingerprint }) => {
            store
                .remove_key(&name, &fingerprint)
                .await
                .map_err(store_error)?;
            audit(
                &store,
                AuditEvent {
                    detail: serde_json::json!({ "fingerprint": fingerprint }),
                    ..admin_event("account key rm", &name)
                },
            )
            .await;
            println!("removed key {fingerprint} from {name}");
        }
        Cmd::Key(KeyCmd::List { name, json }) => {
            let keys = store.keys(&name).await.map_err(store_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                let rows = keys
                    .iter()
                    .map(|k| {
                        vec![
                            k.fingerprint.clone(),
                            k.algorithm.clone(),
                            k.comment.clone(),
                            k.created.format("%Y-%m-%d %H:%M").to_string(),
                        ]
                    })
                    .collect::<Vec<_>>();
                print_table(&["FINGERPRINT", "TYPE", "COMMENT", "ADDED"], &rows);
            }
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Left-aligned columns separated by two spaces (like `docker ps`).
pub(crate) fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", render_table(headers, rows));
}

pub(crate) fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            l.push_str(cell);
            for _ in cell.chars().count()..w + 2 {
                l.push(' ');
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_aligns_columns() {
        let t = super::render_table(
            &["NAME", "KEYS"],
            &[
                vec!["alice".into(), "2".into()],
                vec!["bo".into(), "10".into()],
            ],
        );
        assert_eq!(t, "NAME   KEYS\nalice  2\nbo     10\n");
    }
}
