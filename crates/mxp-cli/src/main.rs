//! The `mxp` command: a node (`serve`), clients (`ping`, `call`, `bench`),
//! keys (`keygen`), the impairment relay (`relay`), a running node's controls
//! (`admin`), resilience checks against one's own node (`attack`), and a
//! one-command tour
//! (`demo`, also what a bare `mxp` runs).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use cli::CliError;

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
    /// Start a node and a client on loopback UDP, exchange a mix of agent
    /// traffic and print a summary (the default command).
    Demo(cli::demo::DemoArgs),
    /// Write a node keypair: DIR/node.key (mode 0600) and DIR/node.pub.
    Keygen(KeygenArgs),
    /// Run a node: answers calls, echoes or sinks streams and datagrams.
    Serve(cli::serve::ServeArgs),
    /// Round trips to a node, with RTT percentiles.
    Ping(cli::ping::PingArgs),
    /// One call to a node; prints the response.
    Call(cli::call::CallArgs),
    /// Load scenarios against a node: rr, msgs, bulk, handshake, datagram.
    Bench(cli::bench::BenchArgs),
    /// UDP forwarder adding loss, delay, jitter, reordering, duplication.
    Relay(cli::relay::RelayArgs),
    /// Control a running node through its admin endpoint: status, carrier
    /// switch, drain.
    Admin(cli::admin::AdminArgs),
    /// Resilience checks against your own node: handshake floods and
    /// authenticated peers that misbehave (`mxp attack URL --kind KIND`).
    Attack(cli::attack::AttackArgs),
}

#[derive(Args)]
struct KeygenArgs {
    /// Directory to write node.key and node.pub into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Replace an existing key (changes the node's identity for every client).
    #[arg(long)]
    force: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))
}

fn client_logging(filter: Option<&str>) -> Result<(), CliError> {
    // Clients print results on stdout; keep stderr quiet unless asked.
    cli::logging::init(filter.or(Some("warn"))).map(drop)
}

fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Keygen(args) => {
            let key = cli::keygen::generate(&args.out, args.force)?;
            println!("{key}");
            eprintln!(
                "wrote {} (secret, mode 0600) and {}",
                args.out.join(cli::keygen::KEY_FILE).display(),
                args.out.join(cli::keygen::PUB_FILE).display()
            );
            Ok(())
        }
        Command::Demo(args) => {
            client_logging(None)?;
            let report = runtime()?.block_on(cli::demo::run(&args))?;
            print!("{report}");
            Ok(())
        }
        Command::Serve(args) => runtime()?.block_on(cli::serve::run(args)),
        Command::Ping(args) => {
            client_logging(args.client.log.as_deref())?;
            runtime()?.block_on(cli::ping::run(args))
        }
        Command::Call(args) => {
            client_logging(args.client.log.as_deref())?;
            runtime()?.block_on(cli::call::run(args))
        }
        Command::Bench(args) => {
            client_logging(args.client.log.as_deref())?;
            runtime()?.block_on(cli::bench::run(args))
        }
        Command::Relay(args) => runtime()?.block_on(cli::relay::run(args)),
        Command::Admin(args) => {
            client_logging(None)?;
            runtime()?.block_on(cli::admin::run(args))
        }
        Command::Attack(args) => {
            client_logging(None)?;
            runtime()?.block_on(cli::attack::run(args))
        }
    }
}

/// A command-line mistake as one line (clap's own report spreads it over a
/// usage block and a hint), exit code 2, like every other refusal.
fn parse() -> Result<Cli, ExitCode> {
    use clap::error::ErrorKind;
    Cli::try_parse().map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
        }
        _ => {
            eprintln!("mxp: {} (see --help)", one_line(&e.render().to_string()));
            ExitCode::from(2)
        }
    })
}

/// Clap's message without its `Usage:` block and closing hint, joined.
fn one_line(report: &str) -> String {
    report
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_owned()
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let command = cli
        .command
        .unwrap_or_else(|| Command::Demo(cli::demo::DemoArgs::default()));
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mxp: {e}");
            e.exit_code()
        }
    }
}
