use std::process::ExitCode;

use clap::Parser as _;
use sensor::cli::{Cli, init_logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.command);
    match cli.command.execute() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sensor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
