//! `ftn`: the gateway's command line. The daemon (`ftn run`), its configuration and the
//! operator commands that talk to it come with the controller (issue 3); what exists today
//! works on the pinned dataplane directly.
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ftn_controller::dataplane::{self, DEFAULT_PIN_DIR};

#[derive(Parser)]
#[command(
    name = "ftn",
    version,
    about = "ftn: a fault-tolerant network gateway (XDP)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Remove a pinned dataplane: detach XDP from its interfaces and delete its pinned maps.
    Detach {
        /// Where the dataplane is pinned.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Detach { pin_dir } => {
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
