use std::process::ExitCode;

use sensor::cli::{Cli, display::escape_message, init_logging};

fn main() -> ExitCode {
    let cli = match Cli::parse_with_settings() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("sensor: error: {}", escape_message(&format!("{e:#}")));
            return ExitCode::FAILURE;
        }
    };
    if !matches!(cli.command, sensor::cli::Command::Daemon(_)) {
        // Query commands end quietly when their reader goes away (`| head`),
        // like other Unix tools. The daemon keeps SIGPIPE ignored and treats a
        // closed stdout as an output error it counts.
        // SAFETY: setting a signal disposition before any thread starts.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    init_logging(&cli.command);
    match cli.command.execute() {
        Ok(code) => code,
        Err(e) => {
            // Errors may quote what a watched process chose (a policy file's
            // line, a daemon's refusal): no raw control characters.
            eprintln!("sensor: error: {}", escape_message(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
