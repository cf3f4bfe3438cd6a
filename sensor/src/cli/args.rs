//! The whole clap tree. Doc comments are the help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{paths, sinks::OutputSpec};

/// eBPF host sensor: reports every process spawn, exec, exit and network
/// connect on this host as JSON events, for attribution to AI agent runs.
#[derive(Debug, Parser)]
#[command(
    name = "sensor",
    version,
    propagate_version = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sensor: load the kernel programs and write events to the outputs (root).
    ///
    /// Mounts tracefs and bpffs when they are not mounted. Stops cleanly on
    /// SIGINT/SIGTERM: every event already read is written, every program detached.
    Daemon(DaemonArgs),
    /// Show whether the daemon is attached and ready, with its counters.
    ///
    /// Exits 0 once the daemon is ready, 1 when it cannot be reached or is not ready.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Configuration file [default: /etc/sensor/sensor.toml, used when present]
    #[arg(long, value_name = "FILE", env = "SENSOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where events go: `-` (stdout) or `file:PATH`, optionally `,format=json`.
    /// Repeat for several outputs; replaces the config's outputs [default: -]
    #[arg(long = "output", short = 'o', value_name = "SPEC")]
    pub outputs: Vec<OutputSpec>,
    /// Control socket [default: the config's, else /run/sensor/sensor.sock]
    #[arg(long, value_name = "PATH", env = "SENSOR_SOCKET")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Control socket of the daemon
    #[arg(long, value_name = "PATH", env = "SENSOR_SOCKET", default_value = paths::SOCKET)]
    pub socket: PathBuf,
    /// Print the full status as one JSON object
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn outputs_are_parsed_at_the_command_line() {
        let cli = Cli::try_parse_from([
            "sensor",
            "daemon",
            "--output",
            "-",
            "--output",
            "file:/tmp/x",
        ])
        .unwrap();
        let Command::Daemon(args) = cli.command else {
            panic!("daemon expected")
        };
        assert_eq!(args.outputs.len(), 2);
        let err = Cli::try_parse_from(["sensor", "daemon", "--output", "bogus://x"]).unwrap_err();
        assert!(err.to_string().contains("bogus://x"), "{err}");
        assert!(Cli::try_parse_from(["sensor", "daemon", "--nope"]).is_err());
    }
}
