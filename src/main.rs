//! `berth`: one binary, one subcommand per file in `commands/`. `main` only parses arguments,
//! sets up logging, dispatches and maps errors to exit codes (bad config → 64).

mod commands;
mod config;
mod hostsfile;
mod metrics_http;
mod portmap;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "SSH gateway and user plane for container hosting"
)]
struct Cli {
    /// Config file (TOML). Default: /etc/berth/berth.toml if it exists, else built-in defaults.
    #[arg(long, global = true, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Log output format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "BERTH_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run components in the foreground (all when none named); SIGTERM drains and exits 0.
    Run(commands::run::Args),
    /// Manage accounts (people) and their public keys.
    #[command(subcommand)]
    Account(commands::account::Cmd),
    /// Manage servers (tenant containers).
    #[command(subcommand)]
    Server(commands::server::Cmd),
    /// Sessions: recordings (list, play, export).
    #[command(subcommand)]
    Session(commands::session::Cmd),
    /// Cluster nodes (hosts that run tenants) and fronts; empty on a single host.
    #[command(subcommand)]
    Node(commands::node::Cmd),
    /// Build tenant images offline.
    #[command(subcommand)]
    Image(commands::image::Cmd),
    /// Manage berth's nftables egress filter.
    #[command(subcommand)]
    Netfilter(commands::netfilter::Cmd),
    /// Validate or print the effective configuration.
    #[command(subcommand)]
    Config(commands::config::Cmd),
}

fn main() -> ExitCode {
    // Before any thread exists: it removes environment variables (see activation.rs).
    commands::activation::capture();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // Before the runtime's threads exist: arenas already created would stay.
    if let Command::Run(args) = &cli.command
        && args.serves_ssh()
        && let Some(cap) = gateway::memory::limit_arenas()
    {
        tracing::debug!(arenas = cap, "malloc arenas capped at one per core");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(dispatch(cli));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: {}", commands::format_error(&e));
            ExitCode::from(commands::exit_code(&e))
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let config_path = cli.config.as_deref();
    match cli.command {
        Command::Config(cmd) => commands::config::run(config_path, cmd).await,
        Command::Run(args) => commands::run::run(config_path, args).await,
        Command::Account(cmd) => commands::account::run(config_path, cmd).await,
        Command::Server(cmd) => commands::server::run(config_path, cmd).await,
        Command::Node(cmd) => commands::node::run(config_path, cmd).await,
        Command::Session(cmd) => commands::session::run(config_path, cmd).await,
        Command::Image(cmd) => commands::image::run(config_path, cmd).await,
        Command::Netfilter(cmd) => commands::netfilter::run(config_path, cmd).await,
    }
}

/// hickory logs every request at info with the client address: that would be a query log that is
/// on by default (privacy, and it halves throughput), so it is held to warnings.
const DEFAULT_LOG_FILTER: &str = "info,hickory_server=warn,hickory_proto=warn";

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    // Colours only on a terminal: under systemd stderr is the journal, where escape codes
    // end up verbatim in every line and break grep.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
