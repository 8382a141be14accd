//! `ftn`: the gateway's command line: the daemon (`ftn run`) and the operator commands that
//! talk to it through its admin API.
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ftn_controller::api::{self, ServerBody, SwitchoverBody};
use ftn_controller::dataplane;
use ftn_controller::directory::Event;
use ftn_controller::model::DEFAULT_PIN_DIR;
use ftn_controller::wire::Status;

mod cli;
use cli::*;

/// mimalloc: glibc's malloc fragments under the directory's and engine's many small records
/// (docs/BENCHMARKS.md, remap).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_CONFIG: &str = "/etc/ftn/ftn.toml";
const DEFAULT_API: &str = "127.0.0.1:7480";

#[derive(Parser)]
#[command(
    name = "ftn",
    version,
    about = "ftn: a fault-tolerant network gateway (XDP dataplane, health-checked failover)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How the operator commands find the daemon.
#[derive(clap::Args, Clone)]
struct ApiArgs {
    /// The daemon's configuration: where its API listens and its token file.
    #[arg(long, short, default_value = DEFAULT_CONFIG, env = "FTN_CONFIG")]
    config: PathBuf,
    /// Admin API address (default: api.listen of --config, else 127.0.0.1:7480).
    #[arg(long, env = "FTN_API")]
    api: Option<SocketAddr>,
    /// File holding the API token (default: the token of --config).
    #[arg(long, env = "FTN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: load (or adopt) the XDP dataplane, check servers, fail over.
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG, env = "FTN_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file without running anything.
    CheckConfig { file: PathBuf },
    /// Resources (current server, state, since, why) and servers (health, checks, latency).
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// The event log: every change and why.
    Events {
        #[command(flatten)]
        api: ApiArgs,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many (1..=10000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Move a resource's new flows to one of its servers now (and keep them there until that
    /// server fails or another switchover; switching to the primary returns to the policy).
    Switchover {
        resource: String,
        #[arg(long)]
        to: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Take a server out of service for maintenance: new flows move now, established flows
    /// finish or move after the drain time.
    Drain {
        server: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Put a drained server back in service.
    Undrain {
        server: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Ask the daemon to reload its configuration file (same as SIGHUP).
    Reload {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a pinned dataplane: withdraw the VIPs' routes (with `[announce]`), wait
    /// `withdraw_wait` for the routing daemon to pass the withdrawal on, then detach XDP from its
    /// interfaces and delete its pinned maps. Stop `ftn run` first; traffic to the VIPs is no
    /// longer forwarded by this gateway afterwards.
    Detach {
        /// Where the dataplane is pinned (default: the configuration's gateway.pin_dir, else
        /// /sys/fs/bpf/ftn).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        /// The gateway's configuration ([announce] and pin_dir are read from it). Default:
        /// /etc/ftn/ftn.toml when it exists.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (ftn.1, and ftn-COMMAND.1 for each command) into DIR.
    Man { dir: PathBuf },
}

fn main() -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    // Logs go to stderr (stdout carries command output); colours only on a terminal.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run { config } => rt.block_on(ftn_controller::app::run(&config)),
        Command::CheckConfig { file } => check_config(&file),
        Command::Status { api, json } => rt.block_on(async {
            let t = target(&api)?;
            if json {
                let (code, body) = api::call(t.addr, "GET", "/v1/status", None, None).await?;
                let _: serde_json::Value = decode(code, &body)?;
                println!("{body}");
            } else {
                print_status(&get::<Status>(&t, "/v1/status").await?);
            }
            Ok(())
        }),
        Command::Events {
            api,
            after,
            limit,
            json,
        } => rt.block_on(async {
            let t = target(&api)?;
            let ev: Vec<Event> =
                get(&t, &format!("/v1/events?after={after}&limit={limit}")).await?;
            for e in ev {
                if json {
                    println!("{}", serde_json::to_string(&e)?);
                } else {
                    let at = humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms),
                    );
                    println!("{:>6}  {at}  {:<11} {}", e.seq, e.kind, e.message);
                }
            }
            Ok(())
        }),
        Command::Switchover { resource, to, api } => rt.block_on(async {
            let t = target(&api)?;
            let body = serde_json::to_value(SwitchoverBody { resource, to })?;
            println!("{}", post(&t, "/v1/switchover", body).await?);
            Ok(())
        }),
        Command::Drain { server, api } => rt.block_on(async {
            let t = target(&api)?;
            let body = serde_json::to_value(ServerBody { server })?;
            println!("{}", post(&t, "/v1/drain", body).await?);
            Ok(())
        }),
        Command::Undrain { server, api } => rt.block_on(async {
            let t = target(&api)?;
            let body = serde_json::to_value(ServerBody { server })?;
            println!("{}", post(&t, "/v1/undrain", body).await?);
            Ok(())
        }),
        Command::Reload { api } => rt.block_on(async {
            let t = target(&api)?;
            println!("{}", post(&t, "/v1/reload", serde_json::json!({})).await?);
            Ok(())
        }),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(shell, &mut Cli::command(), "ftn", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => {
            use clap::CommandFactory as _;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))?;
            println!("man pages written to {}", dir.display());
            Ok(())
        }
        Command::Detach { pin_dir, config } => {
            let config = detach_config(config)?;
            if let Some(c) = &config {
                rt.block_on(withdraw_for_detach(c))?;
            }
            let pin_dir = pin_dir
                .or_else(|| config.as_ref().map(|c| c.gateway.pin_dir.clone()))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
            if !pin_dir.exists() {
                println!("nothing pinned at {}", pin_dir.display());
                return Ok(());
            }
            let ifaces = dataplane::detach(&pin_dir).with_context(|| {
                format!("detaching the dataplane pinned at {}", pin_dir.display())
            })?;
            println!(
                "detached from {} interface(s): {}; removed {}",
                ifaces.len(),
                ifaces.join(", "),
                pin_dir.display()
            );
            Ok(())
        }
    }
}
