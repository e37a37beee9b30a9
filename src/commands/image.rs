//! `berth image build`: the default tenant image, offline (debootstrap + docker import).
//! The recipe lives in `tenants::image`; this only parses arguments and prints progress.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use tenants::image::{BuildOptions, ImageError, Variant};

use super::account::{exit, fail};

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Build a tenant image with debootstrap and import it into Docker (a minute or two).
    Build {
        /// base: shell, coreutils, sftp-server, rsync, python3; dind: base + docker.io and
        /// docker-compose (needs a dind mode); systemd: base + systemd as PID 1; rootless: dind
        /// + rootless Docker started as the tenant user (for `dind = "rootless"`).
        #[arg(long, value_enum, default_value = "base")]
        variant: VariantArg,
        /// Image reference to create (default: [tenants] image, or <image>-<variant>).
        #[arg(long)]
        tag: Option<String>,
        /// Debian suite.
        #[arg(long, default_value = "bookworm")]
        suite: String,
        /// Debian mirror (default: debootstrap's, deb.debian.org).
        #[arg(long)]
        mirror: Option<String>,
        /// Scratch space for the root filesystem (about 200 MB for base, 600 MB for dind).
        #[arg(long, default_value = "/var/tmp")]
        work_dir: PathBuf,
        /// Only print the step headers, not every debootstrap line.
        #[arg(long, short)]
        quiet: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum VariantArg {
    Base,
    Dind,
    Systemd,
    Rootless,
}

pub async fn run(path: Option<&Path>, cmd: Cmd) -> Result<ExitCode> {
    let cfg = super::load_config(path)?;
    let Cmd::Build {
        variant,
        tag,
        suite,
        mirror,
        work_dir,
        quiet,
    } = cmd;
    let variant = match variant {
        VariantArg::Base => Variant::Base,
        VariantArg::Dind => Variant::Dind,
        VariantArg::Systemd => Variant::Systemd,
        VariantArg::Rootless => Variant::Rootless,
    };
    let tag = tag.unwrap_or_else(|| match variant {
        Variant::Base => cfg.tenants.image.clone(),
        Variant::Dind | Variant::Systemd | Variant::Rootless => {
            let (repo, t) = tenants::image::split_tag(&cfg.tenants.image);
            format!("{repo}:{t}-{}", variant.as_str())
        }
    });
    let opts = BuildOptions {
        variant,
        tag: tag.clone(),
        suite,
        mirror,
        work_dir,
    };
    let started = std::time::Instant::now();
    let mut progress = |line: &str| {
        if line.starts_with("==>") {
            eprintln!("{line}");
        } else if !quiet {
            eprintln!("    {line}");
        }
        let _ = std::io::stderr().flush();
    };
    match tenants::image::build(&cfg.tenants, &opts, &mut progress).await {
        Ok(id) => {
            eprintln!("built {tag} in {:.0?}", started.elapsed());
            println!("{}", if id.is_empty() { tag } else { id });
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let code = match &e {
                ImageError::MissingTool(_) | ImageError::NotRoot => exit::USAGE,
                ImageError::Docker(_) => exit::UNAVAILABLE,
                _ => 1,
            };
            Err(fail(code, format!("cannot build {tag}: {e}")))
        }
    }
}
