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
    /// Run CMD as a new agent run (a sub-run when called inside a run).
    ///
    /// Registers with the daemon, then executes CMD in place: CMD keeps this
    /// pid, its stdout is untouched, SENSOR_RUN_ID is set, and its exit code is
    /// the exit code. Refuses to start CMD when the daemon cannot be reached,
    /// unless --best-effort.
    Launch(LaunchArgs),
    /// Print the agent run of the calling process.
    Whoami(WhoamiArgs),
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
    /// State directory (runs) [default: the config's, else /var/lib/sensor]
    #[arg(long, value_name = "DIR", env = "SENSOR_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// bpffs directory for pinned maps [default: the config's, else /sys/fs/bpf/sensor]
    #[arg(long, value_name = "DIR", env = "SENSOR_PIN_DIR")]
    pub pin_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Agent name (e.g. research-bot)
    #[arg(long, value_name = "NAME")]
    pub agent: String,
    /// Run id [default: a new UUIDv7]
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Who the run acts for [default: your user; recorded as claimed unless you are root]
    #[arg(long, value_name = "WHO")]
    pub principal: Option<String>,
    /// Policy name for the run
    #[arg(long, value_name = "NAME")]
    pub policy: Option<String>,
    /// A label (repeatable)
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// End the run after this long even if processes remain (e.g. 2h, 30m)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ttl: Option<std::time::Duration>,
    /// Start CMD even when the daemon cannot be reached (unattributed)
    #[arg(long)]
    pub best_effort: bool,
    /// Control socket of the daemon
    #[arg(long, value_name = "PATH", env = "SENSOR_SOCKET", default_value = paths::SOCKET)]
    pub socket: PathBuf,
    /// The command and its arguments
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct WhoamiArgs {
    /// Control socket of the daemon
    #[arg(long, value_name = "PATH", env = "SENSOR_SOCKET", default_value = paths::SOCKET)]
    pub socket: PathBuf,
    /// Print the answer as one JSON object
    #[arg(long)]
    pub json: bool,
}

/// `K=V` → (K, V).
fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("label {s:?} is not K=V")),
    }
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

    #[test]
    fn launch_arguments() {
        let cli = Cli::try_parse_from([
            "sensor", "launch", "--agent", "bot", "--label", "team=x", "--ttl", "2h", "--",
            "python3", "-c", "1",
        ])
        .unwrap();
        let Command::Launch(args) = cli.command else {
            panic!("launch expected")
        };
        assert_eq!(args.labels, [("team".to_owned(), "x".to_owned())]);
        assert_eq!(args.ttl, Some(std::time::Duration::from_secs(7200)));
        assert_eq!(args.command.len(), 3);
        assert!(
            Cli::try_parse_from([
                "sensor", "launch", "--agent", "bot", "--label", "novalue", "--", "x"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from(["sensor", "launch", "--agent", "bot"]).is_err(),
            "CMD is required"
        );
    }
}
