//! The command line: `args` holds the whole clap tree, one module per subcommand.

mod args;
mod daemon;
pub mod display;
mod doctor;
mod fold;
mod launch;
mod learn;
mod provenance;
mod query;
mod report;
pub mod settings;
mod status;
mod token;

use std::process::ExitCode;

pub use self::args::{Cli, Command};

impl Cli {
    /// Parses the command line (a usage error exits 2, as with clap's
    /// `parse`), then fills the store, socket and directories left to their
    /// defaults from the config ([`settings`]). A bad config is an error.
    pub fn parse_with_settings() -> anyhow::Result<Self> {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let matches = Self::command().get_matches();
        let mut cli = Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        settings::apply(&mut cli.command, &matches)?;
        Ok(cli)
    }
}

impl Command {
    /// Runs the subcommand.
    pub fn execute(&self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Daemon(args) => daemon::execute(args),
            Self::Status(args) => status::execute(args),
            Self::Launch(args) => launch::execute(args),
            Self::Whoami(args) => launch::whoami(args),
            Self::Runs(args) => query::runs(args),
            Self::Tree(args) => query::tree(args),
            Self::Events(args) => query::events(args),
            Self::Who(args) => query::who(args),
            Self::Replay(args) => query::replay(args),
            Self::Report(args) => report::execute(args),
            Self::Verify(args) => provenance::verify(args),
            Self::Export(args) => provenance::export(args),
            Self::Policy(cmd) => policy(cmd),
            Self::Rules(cmd) => query::rules(cmd),
            Self::Token(args) => token::execute(args),
            Self::Doctor(args) => doctor::execute(args),
            Self::Unload(args) => doctor::unload(args),
            Self::Canary(args) => Ok(match crate::canary::child(args.port, &args.nonce) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }),
        }
    }
}

fn policy(cmd: &args::PolicyCommand) -> anyhow::Result<ExitCode> {
    use crate::control::{
        self,
        protocol::{Request, Response},
    };
    match cmd {
        args::PolicyCommand::Check { file, config } => {
            let file = file
                .clone()
                .or_else(|| config.path.clone())
                .unwrap_or_else(|| std::path::PathBuf::from(crate::paths::CONFIG));
            let file = &file;
            let (config, policies) = crate::config::Config::load_with_policies(Some(file))?;
            let names: Vec<String> = policies
                .names()
                .map(|n| display::escape_terminal(n).into_owned())
                .collect();
            println!(
                "{}: ok ({}: {}; {})",
                display::escape_terminal(&file.to_string_lossy()),
                display::count(names.len(), "policy", "policies"),
                names.join(", "),
                display::count(config.agents.len(), "agent matcher", "agent matchers")
            );
            Ok(ExitCode::SUCCESS)
        }
        args::PolicyCommand::Suggest {
            select,
            name,
            enforce,
            collapse_at,
            fold_at,
            output,
            db,
            ..
        } => learn::suggest(
            select,
            name.as_deref(),
            *enforce,
            (*collapse_at, *fold_at),
            output.as_ref(),
            db,
        ),
        args::PolicyCommand::Test {
            file,
            policy,
            select,
            db,
        } => learn::test(file, policy, select, db),
        args::PolicyCommand::Reload { socket, .. } => {
            match control::request(socket, &Request::ReloadPolicies) {
                Ok(Response::Reloaded {
                    version,
                    policies,
                    agents,
                    restart_needed,
                }) => {
                    println!(
                        "policies reloaded: version {version} ({})",
                        display::escape_terminal(&policies.join(", "))
                    );
                    println!(
                        "agent matchers in force: {}",
                        if agents.is_empty() {
                            "none".to_owned()
                        } else {
                            display::escape_terminal(&agents.join(", ")).into_owned()
                        }
                    );
                    if !restart_needed.is_empty() {
                        println!(
                            "NOT applied, changed since the daemon started (restart it to apply): {}",
                            display::escape_terminal(&restart_needed.join(" "))
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
                Err(e) => refusal(e),
            }
        }
    }
}

/// A refusal by the daemon is the command's answer: its message on stderr
/// and exit 1. Any other error (no daemon, bad response) is an error.
fn refusal(e: crate::control::ControlError) -> anyhow::Result<ExitCode> {
    match e {
        crate::control::ControlError::Refused(message) => {
            eprintln!("sensor: {}", display::escape_message(&message));
            Ok(ExitCode::FAILURE)
        }
        e => Err(e.into()),
    }
}

/// Logs to stderr; `SENSOR_LOG` (or `RUST_LOG`) sets the filter. The daemon
/// logs at info by default, client commands only warnings.
pub fn init_logging(command: &Command) {
    let default = match command {
        Command::Daemon(_) => "info",
        _ => "warn",
    };
    let filter = std::env::var("SENSOR_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
