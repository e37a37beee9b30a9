//! `berth session …`: live sessions of the running gateway through its control socket (`list`,
//! `kill`; in a cluster through the store, where every front publishes its sessions), and recorded sessions as the store lists them (`recordings`), played back in the
//! terminal (`play`) or written out as the asciicast file (`export`). Exit codes as in
//! `account.rs`.
//!
//! Playing never interprets the recording beyond its events: output events are written as
//! recorded (the recording holds what the client was sent, escape sequences included), so play
//! only on a terminal you would have trusted with the session itself.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use tenants::{Recording, ServerId, Store};

use gateway::control::{Reply, Request, Selector};

use super::account::{exit, fail, open_store, print_table, store_error};

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Live sessions of the running gateway.
    List {
        /// Only this server (`server<N>` or `N`).
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// End live sessions (their clients are told why): one by id, or all of a server or account.
    Kill {
        /// As `list` shows it: a number on a single host, `FRONT/N` in a cluster.
        #[arg(required_unless_present_any = ["server", "account"])]
        id: Option<String>,
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        account: Option<String>,
        /// Shown to the clients.
        #[arg(long)]
        message: Option<String>,
    },
    /// Recorded sessions, newest first.
    Recordings {
        /// Only this server (`server<N>` or `N`).
        #[arg(long)]
        server: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Play a recording in this terminal at its recorded speed.
    Play {
        id: String,
        /// Speed factor (2 = twice as fast).
        #[arg(long, default_value_t = 1.0, value_parser = parse_positive)]
        speed: f64,
        /// Longest pause in seconds (longer silences are cut to this).
        #[arg(long, value_parser = parse_positive)]
        idle_limit: Option<f64>,
    },
    /// Write a recording's asciicast file to stdout.
    Export { id: String },
}

fn parse_positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("expected a positive number, got {s:?}")),
    }
}

fn server_arg(s: Option<String>) -> Result<Option<ServerId>> {
    s.map(|s| {
        tenants::parse_server_ref(&s)
            .ok_or_else(|| fail(exit::DATAERR, format!("not a server: {s:?}")))
    })
    .transpose()
}

async fn control(path: Option<&Path>, req: Request) -> Result<Reply> {
    let cfg = super::load_config(path)?;
    let socket = cfg.gateway_config().control_socket;
    let reply = gateway::control::request(Path::new(&socket), &req)
        .await
        .map_err(|e| {
            fail(
                exit::UNAVAILABLE,
                format!("cannot reach the gateway's control socket {socket}: {e} (is `berth run` running, and are you root?)"),
            )
        })?;
    match reply {
        Reply::Error(e) => Err(fail(exit::DATAERR, format!("the gateway refused: {e}"))),
        r => Ok(r),
    }
}

pub async fn run(path: Option<&Path>, cmd: Cmd) -> Result<ExitCode> {
    if matches!(cmd, Cmd::List { .. } | Cmd::Kill { .. }) {
        let cfg = super::load_config(path)?;
        if !cfg.cluster.node.is_empty() {
            return across_fronts(path, cmd).await;
        }
    }
    match cmd {
        Cmd::List { server, json } => {
            let select = Selector {
                server: server_arg(server)?.map(|s| s.get()),
                ..Default::default()
            };
            let Reply::Sessions(list) = control(path, Request::List { select }).await? else {
                return Err(fail(
                    exit::UNAVAILABLE,
                    "unexpected answer from the gateway",
                ));
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    vec![
                        s.id.to_string(),
                        format!("server{}", s.server),
                        s.account.clone(),
                        s.peer.clone(),
                        s.kind.clone(),
                        format!("{}s", now.saturating_sub(s.started)),
                        format!("{}s", s.idle_secs),
                        s.bytes_in.to_string(),
                        s.bytes_out.to_string(),
                        if s.recording { "yes" } else { "no" }.into(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID", "SERVER", "ACCOUNT", "PEER", "KIND", "AGE", "IDLE", "IN", "OUT",
                    "RECORDED",
                ],
                &rows,
            );
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Kill {
            id,
            server,
            account,
            message,
        } => {
            let id = id
                .map(|id| {
                    id.parse::<u64>().map_err(|_| {
                        fail(
                            exit::DATAERR,
                            format!("not a session id: {id:?} (this host is not in a cluster: ids are numbers, as `berth session list` shows them)"),
                        )
                    })
                })
                .transpose()?;
            let select = Selector {
                id,
                server: server_arg(server)?.map(|s| s.get()),
                account,
            };
            let Reply::Killed(n) = control(path, Request::Kill { select, message }).await? else {
                return Err(fail(
                    exit::UNAVAILABLE,
                    "unexpected answer from the gateway",
                ));
            };
            println!("{n} session(s) ended");
            return Ok(if n == 0 {
                ExitCode::from(exit::NOUSER)
            } else {
                ExitCode::SUCCESS
            });
        }
        _ => {}
    }
    let (_cfg, store) = open_store(path).await?;
    match cmd {
        Cmd::List { .. } | Cmd::Kill { .. } => Ok(ExitCode::SUCCESS),
        Cmd::Recordings {
            server,
            limit,
            json,
        } => list(&store, server_arg(server)?, limit, json).await,
        Cmd::Play {
            id,
            speed,
            idle_limit,
        } => {
            let text = read_cast(&store, &id).await?;
            play(&text, speed, idle_limit)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Export { id } => {
            let text = read_cast(&store, &id).await?;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).context("write to stdout")?;
            out.flush().context("write to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How long `kill` waits for the fronts to confirm (they poll every second).
const KILL_WAIT: Duration = Duration::from_secs(15);

fn stale(s: &tenants::LiveSession, now: i64) -> bool {
    s.front_seen
        .is_none_or(|t| now - t > gateway::publish::STALE_AFTER_SECS)
}

/// `list` and `kill` in a cluster: through the store, where every front publishes its sessions
/// and picks up kill requests (`gateway::publish`). Rows of a front not seen for
/// `STALE_AFTER_SECS` are listed as stale (the front may be down or cut off from the store;
/// its sessions may or may not run) and are not asked to end.
async fn across_fronts(path: Option<&Path>, cmd: Cmd) -> Result<ExitCode> {
    let (_cfg, store) = open_store(path).await?;
    match cmd {
        Cmd::List { server, json } => {
            let sel = tenants::LiveSelector {
                server: server_arg(server)?,
                ..Default::default()
            };
            let list = store.live_sessions(&sel).await.map_err(store_error)?;
            let now = gateway::publish::now_secs();
            if json {
                let rows: Vec<serde_json::Value> = list
                    .iter()
                    .map(|s| {
                        let mut v = serde_json::to_value(s).unwrap_or_default();
                        if let Some(m) = v.as_object_mut() {
                            m.insert("stale".into(), stale(s, now).into());
                            m.insert("idle_secs".into(), (now - s.last_active).max(0).into());
                        }
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    vec![
                        s.id.clone(),
                        if stale(s, now) {
                            format!("{} (stale)", s.front)
                        } else {
                            s.front.clone()
                        },
                        format!("server{}", s.server),
                        s.account.clone(),
                        s.peer.clone(),
                        s.kind.clone(),
                        format!("{}s", (now - s.started).max(0)),
                        format!("{}s", (now - s.last_active).max(0)),
                        s.bytes_in.to_string(),
                        s.bytes_out.to_string(),
                        if s.recording { "yes" } else { "no" }.into(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID", "FRONT", "SERVER", "ACCOUNT", "PEER", "KIND", "AGE", "IDLE", "IN", "OUT",
                    "RECORDED",
                ],
                &rows,
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Kill {
            id,
            server,
            account,
            message,
        } => {
            let id = id
                .map(|id| {
                    id.split_once('/')
                        .and_then(|(f, n)| Some((f.to_string(), n.parse::<u64>().ok()?)))
                        .ok_or_else(|| {
                            fail(
                                exit::DATAERR,
                                format!("not a session id: {id:?} (in a cluster ids are FRONT/N, as `berth session list` shows them)"),
                            )
                        })
                })
                .transpose()?;
            let sel = tenants::LiveSelector {
                id,
                server: server_arg(server)?,
                account,
            };
            let message = message.map(|m| gateway::audit::loggable(&m, 200));
            let alive_since = gateway::publish::now_secs() - gateway::publish::STALE_AFTER_SECS;
            let asked = store
                .request_session_kill(&sel, message.as_deref(), alive_since)
                .await
                .map_err(store_error)?;
            if asked.is_empty() {
                let stale_ones = store.live_sessions(&sel).await.map_err(store_error)?;
                if !stale_ones.is_empty() {
                    let ids: Vec<&str> = stale_ones.iter().map(|s| s.id.as_str()).collect();
                    eprintln!(
                        "berth: {} matching session(s) are on fronts not seen for over {} s and were not asked to end: {}",
                        ids.len(),
                        gateway::publish::STALE_AFTER_SECS,
                        ids.join(" ")
                    );
                }
                println!("0 session(s) ended");
                return Ok(ExitCode::from(exit::NOUSER));
            }
            let deadline = std::time::Instant::now() + KILL_WAIT;
            let mut left: Vec<String> = asked.clone();
            while !left.is_empty() && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let still: std::collections::HashSet<String> = store
                    .live_sessions(&sel)
                    .await
                    .map_err(store_error)?
                    .into_iter()
                    .map(|s| s.id)
                    .collect();
                left.retain(|id| still.contains(id));
            }
            for id in asked.iter().filter(|id| !left.contains(id)) {
                println!("ended {id}");
            }
            for id in &left {
                eprintln!(
                    "berth: {id} was asked to end but its front has not confirmed within {} s",
                    KILL_WAIT.as_secs()
                );
            }
            println!("{} session(s) ended", asked.len() - left.len());
            Ok(if left.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(exit::TEMPFAIL)
            })
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

async fn list(store: &Store, server: Option<ServerId>, limit: u32, json: bool) -> Result<ExitCode> {
    let rows = store.recordings(server, limit).await.map_err(store_error)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r: &Recording| {
            vec![
                r.id.clone(),
                r.server.login_name(),
                r.account.clone(),
                r.peer.clone(),
                r.kind.clone(),
                r.started.format("%Y-%m-%d %H:%M:%S").to_string(),
                format!("{}s", (r.ended - r.started).num_seconds().max(0)),
                if r.file.is_some() {
                    r.bytes.to_string()
                } else {
                    "-".into()
                },
                r.exit.clone().unwrap_or_else(|| "-".into()),
                r.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "SERVER", "ACCOUNT", "PEER", "KIND", "STARTED", "TOOK", "BYTES", "EXIT", "NOTE",
        ],
        &table,
    );
    Ok(ExitCode::SUCCESS)
}

async fn read_cast(store: &Store, id: &str) -> Result<String> {
    let rec = store
        .recording(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| fail(exit::NOUSER, format!("no such recording: {id}")))?;
    let Some(file) = rec.file else {
        return Err(fail(
            exit::NOINPUT,
            format!(
                "recording {id} has no terminal file (an exec without a terminal: metadata only)"
            ),
        ));
    };
    std::fs::read_to_string(&file).map_err(|e| {
        fail(
            exit::NOINPUT,
            format!("cannot read recording {id} at {file}: {e}"),
        )
    })
}

/// The pauses and output of a playback: each output event after its (scaled, capped) delay.
pub fn schedule(
    events: &[gateway::recording::CastEvent],
    speed: f64,
    idle_limit: Option<f64>,
) -> Vec<(Duration, String)> {
    let mut last = 0.0f64;
    let mut out = Vec::new();
    for e in events.iter().filter(|e| e.code == "o") {
        let mut gap = (e.at - last).max(0.0);
        last = e.at;
        if let Some(limit) = idle_limit {
            gap = gap.min(limit);
        }
        out.push((Duration::from_secs_f64(gap / speed), e.data.clone()));
    }
    out
}

fn play(text: &str, speed: f64, idle_limit: Option<f64>) -> Result<()> {
    let (_, events) = gateway::recording::parse_cast(text)
        .map_err(|e| fail(exit::DATAERR, format!("recording is not asciicast v2: {e}")))?;
    let mut out = std::io::stdout().lock();
    for (gap, data) in schedule(&events, speed, idle_limit) {
        std::thread::sleep(gap);
        out.write_all(data.as_bytes()).context("write to stdout")?;
        out.flush().context("write to stdout")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway::recording::CastEvent;

    fn ev(at: f64, code: &str, data: &str) -> CastEvent {
        CastEvent {
            at,
            code: code.into(),
            data: data.into(),
        }
    }

    #[test]
    fn playback_scales_caps_and_skips_non_output() {
        let events = [
            ev(0.5, "o", "a"),
            ev(1.0, "r", "80x24"),
            ev(11.5, "o", "b"),
            ev(12.5, "m", "mark"),
            ev(13.5, "o", "c"),
        ];
        let s = schedule(&events, 2.0, Some(2.0));
        let gaps: Vec<u128> = s.iter().map(|(d, _)| d.as_millis()).collect();
        assert_eq!(gaps, vec![250, 1000, 1000]);
        let text: String = s.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(text, "abc");
    }
}
