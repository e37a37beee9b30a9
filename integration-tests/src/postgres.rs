//! Running PostgreSQL servers of a test's own (the swarm testbed's in its fabric, the store
//! outage test's on loopback): where the binaries are and how to run them as `postgres`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

const PG_LIB: &str = "/usr/lib/postgresql";

/// The newest installed PostgreSQL's binary directory.
pub fn bin_dir() -> Result<PathBuf> {
    let newest = std::fs::read_dir(PG_LIB)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .max_by_key(|(v, _)| *v);
    match newest {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "a test PostgreSQL needs {PG_LIB}/<version>/bin/postgres (apt-get install postgresql; scripts/test does)"
        ),
    }
}

/// `args` run as the `postgres` user with `dir` as home and working directory.
pub fn as_postgres(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        "postgres",
        "--regid",
        "postgres",
        "--init-groups",
        "--",
    ])
    .args(args)
    .env("HOME", dir)
    .current_dir(dir);
    c
}
