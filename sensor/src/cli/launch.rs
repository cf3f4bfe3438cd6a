//! `sensor launch` and `sensor whoami`.

use std::{os::unix::process::CommandExt as _, process::ExitCode};

use super::{
    args::{LaunchArgs, WhoamiArgs},
    display::{escape_message, escape_terminal},
};
use crate::{
    attribution::LaunchRequest,
    control::{
        self, ControlError,
        protocol::{Request, Response},
    },
};

/// [`control::request`], retried for up to `wait` while nothing listens on
/// the socket (a daemon restarting or being upgraded: `--takeover` leaves
/// a moment between the old daemon's socket and the new one's).
fn request_waiting(
    socket: &std::path::Path,
    request: &Request,
    wait: std::time::Duration,
) -> Result<Response, ControlError> {
    // `--wait` is at most an hour (its parser), which an Instant holds.
    let now = std::time::Instant::now();
    let deadline = now.checked_add(wait).unwrap_or(now);
    loop {
        match control::request(socket, request) {
            Err(ControlError::Connect { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Registers the current process as a new run, then becomes CMD.
pub fn execute(args: &LaunchArgs) -> anyhow::Result<ExitCode> {
    let request = Request::Launch(LaunchRequest {
        agent: args.agent.clone(),
        run_id: args.run_id.clone(),
        principal: args.principal.clone(),
        policy: args.policy.clone(),
        labels: args.labels.iter().cloned().collect(),
        ttl_secs: args.ttl.map(|d| d.as_secs().max(1)),
        scopes: (!args.scopes.is_empty()).then(|| args.scopes.clone()),
    });
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("no command given"))?;
    let mut command = std::process::Command::new(program);
    command.args(rest);
    match request_waiting(&args.socket, &request, args.wait) {
        Ok(Response::Launched { run }) => {
            command.env("SENSOR_RUN_ID", &run.id);
        }
        Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        Err(e @ (ControlError::Connect { .. } | ControlError::Exchange { .. }))
            if args.best_effort =>
        {
            eprintln!(
                "sensor: warning: {}; starting the command unattributed (--best-effort)",
                escape_message(&e.to_string())
            );
        }
        Err(e @ (ControlError::Connect { .. } | ControlError::Exchange { .. })) => {
            anyhow::bail!(
                "{e}; refusing to start {} without attribution (use --best-effort to start it anyway)",
                program.to_string_lossy()
            );
        }
        Err(e) => return Err(e.into()),
    }
    // exec only returns on failure.
    let error = command.exec();
    eprintln!(
        "sensor: error: cannot execute {}: {error}",
        escape_terminal(&program.to_string_lossy())
    );
    Ok(ExitCode::from(
        if error.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        },
    ))
}

/// Prints the run of the calling process.
pub fn whoami(args: &WhoamiArgs) -> anyhow::Result<ExitCode> {
    match control::request(&args.socket, &Request::Whoami) {
        Ok(Response::Run(answer)) => {
            if args.json {
                println!("{}", serde_json::to_string(&answer)?);
            } else {
                let run = &answer.run;
                println!("run {}", escape_terminal(&run.id));
                println!("agent {}", escape_terminal(&run.agent));
                println!("principal {}", escape_terminal(&run.principal));
                if let Some(claimed) = &run.principal_claimed {
                    println!("principal claimed {}", escape_terminal(claimed));
                }
                println!(
                    "depth {} (root {})",
                    run.depth,
                    escape_terminal(&run.root_id)
                );
                if let Some(parent) = &run.parent_id {
                    println!("parent {}", escape_terminal(parent));
                }
                println!("attribution {}", escape_terminal(&answer.attribution));
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        Err(e) => super::refusal(e),
    }
}
