//! `sensor daemon`.

use std::{process::ExitCode, sync::Arc};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use super::args::DaemonArgs;
use crate::{
    config::Config,
    control,
    event::EventBuilder,
    identity::{Clock, Host, ProcessKeys, clock_ticks_per_second},
    loader,
    pipeline::{self, Pipeline},
    sinks::Outputs,
    status::DaemonState,
};

pub fn execute(args: &DaemonArgs) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "sensor daemon must run as root: it loads eBPF programs and mounts tracefs/bpffs"
        );
    }
    let config = Config::load(args.config.as_deref())?;
    let specs = if args.outputs.is_empty() {
        config.output_specs()?
    } else {
        args.outputs.clone()
    };
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| config.daemon.socket.clone());

    // Everything that can fail on bad input fails before the kernel is touched.
    let outputs = Outputs::open(&specs)?;
    let host = Host::current().context("reading host name and boot id")?;
    let keys = ProcessKeys::new(&host.boot_id, clock_ticks_per_second());
    let clock = Clock::now().context("reading clocks")?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = control::bind(&socket)?;
        let state = Arc::new(DaemonState::default());
        state.set_outputs(outputs.handles());
        let kernel = loader::load(std::process::id())?;
        state.set_programs(kernel.probes.attached().to_vec());
        let server = tokio::spawn(control::serve(listener, Arc::clone(&state)));

        let mut sigterm =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut sigint =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
                _ = sigint.recv() => tracing::info!("SIGINT: stopping"),
            }
        };
        let pipeline = Pipeline::new(
            EventBuilder::new(host, keys, clock),
            outputs,
            Arc::clone(&state),
        );
        state.set_ready(true);
        tracing::info!(
            programs = kernel.probes.attached().len(),
            outputs = ?specs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            socket = %socket.display(),
            "attached and ready"
        );
        let result = pipeline::run(kernel, pipeline, shutdown).await;
        server.abort();
        let _ = std::fs::remove_file(&socket);
        result?;
        let report = state.report();
        tracing::info!(
            events = report.events.get("total").copied().unwrap_or(0),
            lost = report.lost.total,
            "stopped; all programs detached"
        );
        Ok(ExitCode::SUCCESS)
    })
}
