//! `berth session …`: recorded sessions as the store lists them (`recordings`), played back in
//! the terminal (`play`) or written out as the asciicast file (`export`). Exit codes as in
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

use super::account::{exit, fail, open_store, print_table, store_error};

#[derive(Debug, Subcommand)]
pub enum Cmd {
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

pub async fn run(path: Option<&Path>, cmd: Cmd) -> Result<ExitCode> {
    let (_cfg, store) = open_store(path).await?;
    match cmd {
        Cmd::Recordings {
            server,
            limit,
            json,
        } => {
            let server = server
                .map(|s| {
                    tenants::parse_server_ref(&s)
                        .ok_or_else(|| fail(exit::DATAERR, format!("not a server: {s:?}")))
                })
                .transpose()?;
            list(&store, server, limit, json).await
        }
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
