//! The `mxp` command.
//!
//! For now it has one job: `mxp demo` (also what a bare `mxp` runs) drives
//! a node and a client through the deterministic in-process network and
//! prints what happened. Real sockets, `serve`, `ping` and the rest arrive
//! with the runtime.

mod cli;

use cli::demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mxp",
    version,
    about = "MXP Transport: secure low-latency agent-to-agent transport"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a client and a node over the in-process network (lossy by
    /// default) and prints a summary. Deterministic for a given seed.
    Demo(demo::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let opts = match cli.command {
        Some(Command::Demo(opts)) => opts,
        None => demo::Options::default(),
    };
    match demo::run(&opts) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mxp demo: {e}");
            ExitCode::FAILURE
        }
    }
}
