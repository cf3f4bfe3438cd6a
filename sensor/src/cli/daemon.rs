//! `sensor daemon`.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use super::args::DaemonArgs;
use crate::{
    attribution::{Attribution, Matchers, RunTable},
    config::Config,
    control,
    engine::Engine,
    engine::sequence::SeqFile,
    identity::{self, Clock, Host, ProcessKeys, clock_ticks_per_second},
    loader::{self, Kernel},
    metrics, paths,
    pipeline::{self, KernelStreams, Pipeline},
    policy::{kernel::Enforcement, selftest},
    provenance::{Chainer, Planner},
    recovery,
    sinks::{OutputContext, Outputs, check_unique_names},
    status::DaemonState,
    store::writer::{Retention, StoreWriter},
};

pub fn execute(args: &DaemonArgs) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "sensor daemon must run as root: it loads eBPF programs and mounts tracefs/bpffs"
        );
    }
    // Everything the daemon creates (state, runs, spools, the store) is
    // root's alone: it holds every process's argv and every run's labels.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    raise_fd_limit();
    let (config, policies) = Config::load_with_policies(args.config.as_deref())?;
    // The detection rules, checked before anything is loaded.
    let rules = crate::detect::RuleSet::load(&config.detect.rules)?;
    if !rules.is_empty() {
        tracing::info!(rules = rules.len(), "detection rules loaded");
    }
    let specs = if args.outputs.is_empty() {
        config.output_specs()?
    } else {
        // Each name is a spool directory and a metrics label: no two alike.
        check_unique_names(&args.outputs)?;
        args.outputs.clone()
    };
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| config.daemon.socket.clone());
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| config.daemon.state_dir.clone());
    let pin_dir = args
        .pin_dir
        .clone()
        .unwrap_or_else(|| config.daemon.pin_dir.clone());
    private_dir(&state_dir)?;
    // Two daemons on one pin dir would take each other's pins away: a live
    // one is refused, unless this one is to take over from it (an
    // upgrade), which happens before its state is read.
    if let Ok(Some(owner)) = loader::owner::read(&pin_dir)
        && owner.alive()
        && owner.pid != std::process::id()
    {
        if !args.takeover {
            anyhow::bail!(
                "the pin dir {} belongs to a running daemon, {}: two daemons must not share a pin \
                 dir (stop that one first, start this one with --takeover to replace it, or give \
                 it its own --pin-dir)",
                pin_dir.display(),
                owner.describe()
            );
        }
        take_over_from(&owner)?;
    }
    let runs_path = state_dir.join(paths::RUNS_FILE);
    let db = args
        .db
        .clone()
        .or_else(|| config.store.path.clone())
        .unwrap_or_else(|| state_dir.join(paths::DB_FILE));

    // Everything that can fail on bad input fails before the kernel is touched.
    let matchers = Matchers::new(&config.agents)?;
    let transcripts = crate::transcripts::Transcripts::of_agents(&config.agents);
    let runs = RunTable::load(&runs_path)?;
    let host = Host::current().context("reading host name and boot id")?;
    let boot_id = host.boot_id.clone();
    // The previous daemon's last sign of life, for a gap the pin dir does
    // not remember (it went with a reboot or `sensor unload`).
    let last_seen = recovery::LastSeen::read(&state_dir);
    let instance_id = identity::instance_id(&state_dir)
        .with_context(|| format!("state dir {}: instance id", state_dir.display()))?;
    let outputs = Outputs::open(
        &specs,
        &OutputContext {
            state_dir: state_dir.clone(),
            hostname: host.name.clone(),
            instance_id,
        },
    )?;
    // Numbering continues after the last run's events, those still spooled included.
    let seq_file = SeqFile::open(&state_dir);
    let first_seq = seq_file.start().max(outputs.last_spooled_seq() + 1);
    let metrics = match config.metrics.listen {
        Some(addr) => Some(metrics::MetricsServer::bind(addr)?),
        None => None,
    };
    // Run tokens: the signing keys in the state dir, made on the first start.
    let mut tokens = if config.tokens.enabled {
        Some(
            crate::tokens::Issuer::open(
                config.tokens.clone(),
                &state_dir,
                &host.name,
                config.metrics.listen,
                std::time::SystemTime::now(),
            )
            .context("run tokens ([tokens])")?,
        )
    } else {
        None
    };
    let provenance = open_provenance(
        &config.provenance,
        &config.tokens,
        tokens.as_mut(),
        &state_dir,
        config.store.enabled && !args.no_store,
        &db,
    )
    .context("tamper-evident run records ([provenance])")?;
    let store = if config.store.enabled && !args.no_store {
        Some(StoreWriter::start_keeping(
            &db,
            Retention {
                max_age: std::time::Duration::from_secs(
                    u64::from(config.store.retention_days) * 86_400,
                ),
                max_bytes: config.store.max_size_mb.saturating_mul(1024 * 1024),
            },
            config.store.keep,
        )?)
    } else {
        None
    };
    let keys = ProcessKeys::new(&host.boot_id, clock_ticks_per_second());
    let ns_per_tick = keys.ns_per_tick();
    let canary_interval = config.daemon.canary_interval();
    // systemd's NOTIFY_SOCKET and watchdog (nothing without them).
    let notifier = crate::notify::Notifier::from_env();
    let clock = Clock::now().context("reading clocks")?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = control::bind(&socket)?;
        let state = Arc::new(DaemonState::default());
        state.set_outputs(outputs.handles());
        if let Some(m) = metrics {
            m.serve(Arc::clone(&state), tokens.as_ref().map(crate::tokens::Issuer::published))?;
        }
        // What the previous daemon left enforcing, for the gap report.
        let before = loader::pinned::inspect(&pin_dir);
        let Kernel {
            mut probes,
            events,
            reader,
            stats,
            run_stats,
            proc_runs,
            policy: policy_maps,
            mark,
            run_stats_seen,
            takeover,
        } = loader::load(
            std::process::id(),
            &pin_dir,
            config.limits.policy_runs,
            config.limits.event_ring_bytes(),
        )?;
        let took_over_at = std::time::SystemTime::now();
        probes
            .claim(&std::path::absolute(&socket).unwrap_or_else(|_| socket.clone()))
            .context("writing the owner record of the pin dir")?;
        let mut enforcement =
            Enforcement::open(policy_maps).context("taking over the kernel policy maps")?;
        // Records decided under the previous daemon's policy ids come first.
        enforcement.remember_ids(crate::policy::kernel::IdNames::open(
            state_dir.join(paths::POLICY_IDS_FILE),
        ));
        let mut proc_runs = proc_runs;
        // Prove enforcement works here before trusting an enforce policy to it.
        let outcome = selftest::run(&mut enforcement, &mut proc_runs, keys.ns_per_tick());
        if let Some(why) = outcome.why_not() {
            if policies.enforcing() {
                anyhow::bail!(
                    "refusing to start: the config has enforce policies, but this kernel does not \
                     enforce here ({why}); run `sensor doctor`, or use mode = \"audit\""
                );
            }
            tracing::warn!(%why, "kernel enforcement does not work here; enforce policies will be refused");
        }
        enforcement.set_capability(outcome.why_not());
        // Every policy lets a run talk to the sensor (whoami, sub-run launches).
        enforcement.set_sensor_socket(crate::policy::kernel::SensorSocket::at(&socket));
        // A process of a run that writes any of these is `sensor.tamper`.
        let protected = protected_files(&pin_dir, &state_dir, store.as_ref().map(|_| &db), args);
        enforcement.protect(&protected);
        state.set_programs(probes.attached().to_vec());
        state.set_event_ring_kib(config.limits.event_ring_kib);

        let mut attribution =
            Attribution::new(keys.clone(), Box::new(proc_runs), runs, Some(runs_path))
                .with_matchers(matchers);
        // The probes are attached: whatever starts now is seen, and what ran
        // before is read from /proc and the pinned map.
        let ended = attribution.restore(std::time::SystemTime::now());
        tracing::info!(
            processes = attribution.tracked_processes(),
            runs = attribution.active_runs(),
            "restored state"
        );
        let mut builder = Engine::new(host, keys, clock, attribution)
            .with_first_seq(first_seq)
            .with_policies(policies)
            .with_enforcement(enforcement)
            .context("installing the policies in the kernel")?;
        builder.set_protected(
            protected
                .iter()
                .filter_map(|(path, _)| {
                    let id = crate::policy::FileId::of(path).ok()?;
                    Some(((id.kernel_dev(), id.ino), path.display().to_string()))
                })
                .collect(),
        );
        // Every restored run is bound to this daemon's policies.
        builder.bind_runs();
        release_startup_memory();
        let mut pipeline = Pipeline::new(builder, outputs, Arc::clone(&state))
            .with_limits(config.limits.clone())
            .with_seq_file(seq_file)
            .with_generation(takeover.generation)
            .with_notifier(notifier)
            .with_transcripts(transcripts);
        if let Some(tokens) = tokens {
            pipeline = pipeline.with_tokens(tokens);
        }
        if let Some(planner) = provenance {
            pipeline = pipeline.with_provenance(planner);
        }
        match canary_interval {
            Some(interval) => {
                pipeline = pipeline.with_canary(crate::canary::Canary::new(interval, ns_per_tick));
            }
            None => tracing::warn!(
                "the canary is off ([daemon] canary_interval_secs = 0): a sensor that stops \
                 seeing will not say so"
            ),
        }
        // Changes to the sensor's files no open for writing shows (unlink,
        // rename, chmod ...), by anyone but this process.
        let watch_stats = Arc::new(crate::tamper::files::Stats::default());
        match crate::tamper::files::start(
            crate::tamper::files::roots(&pin_dir, &state_dir, store.as_ref().map(|_| db.as_path())),
            std::process::id(),
            Arc::clone(&watch_stats),
        ) {
            Ok(watch) => {
                if watch.stats.actors_hidden.load(std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        "file watch: without CAP_SYS_ADMIN the kernel does not say which process \
                         changed a sensor file; such changes are reported without the process"
                    );
                }
                pipeline = pipeline.with_file_watch(watch);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the sensor's files: unlinks, renames and mode changes of them will not be reported");
                pipeline.without_file_watch(watch_stats);
            }
        }
        if let Some(store) = store {
            pipeline = pipeline.with_store(store);
        }
        let (detector, matches) = crate::detect::Detector::start_with(
            crate::detect::Rules::new(rules),
            crate::detect::FirstSeen::load(state_dir.join(paths::DETECT_SEEN_FILE)),
        )
            .context("starting the detection thread")?;
        pipeline = pipeline.with_detector(detector, matches).with_exec_files();
        if let Some(path) = &args.record_raw {
            use std::os::unix::fs::OpenOptionsExt as _;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("--record-raw {}", path.display()))?;
            pipeline = pipeline.with_raw_log(file);
        }
        pipeline.run_changes(&ended);
        let gap = recovery::gap(
            &takeover,
            before.as_ref(),
            last_seen.as_ref(),
            &boot_id,
            took_over_at,
        );
        let resume = pipeline::Resume {
            gap,
            lost_seen: takeover.mark.lost_seen,
            old_ring: takeover.old_ring,
            state_dir: state_dir.clone(),
            boot_id,
        };

        let (commands_tx, commands) = tokio::sync::mpsc::channel(64);
        // SIGHUP reloads the policies, as `sensor policy reload` does.
        let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let reload_tx = commands_tx.clone();
        let reload_source = control::ReloadSource {
            path: args.config.clone(),
            started: Arc::new(config.clone()),
        };
        let sighup_source = reload_source.clone();
        let reloader = tokio::spawn(async move {
            while sighup.recv().await.is_some() {
                let _ = control::reload(&sighup_source, &reload_tx).await;
            }
        });
        state.set_paths(crate::status::DaemonPaths {
            socket: std::path::absolute(&socket).unwrap_or_else(|_| socket.clone()),
            pin_dir: pin_dir.clone(),
            config: args
                .config
                .as_ref()
                .map(|c| std::path::absolute(c).unwrap_or_else(|_| c.clone()))
                .or_else(|| {
                    let default = PathBuf::from(paths::CONFIG);
                    default.exists().then_some(default)
                }),
        });
        let server = tokio::spawn(control::serve(
            listener,
            Arc::clone(&state),
            commands_tx,
            control::ConnectionLimits::from(&config.limits),
            reload_source,
        ));
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
        state.set_ready(true);
        tracing::info!(
            programs = probes.attached().len(),
            outputs = ?specs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            socket = %socket.display(),
            "attached and ready"
        );
        pipeline.notifier().ready(&format!(
            "attached and ready: {} kernel programs, {} outputs, control socket {}",
            probes.attached().len(),
            specs.len(),
            socket.display()
        ));
        let kernel = KernelStreams {
            probes,
            events,
            reader,
            stats,
            run_stats,
            mark,
            run_stats_seen,
        };
        let stop = if args.detach_on_exit {
            pipeline::StopMode::Detach
        } else {
            pipeline::StopMode::KeepRecording
        };
        let result = pipeline::run(kernel, pipeline, resume, commands, shutdown, stop).await;
        if matches!(result, Ok(pipeline::Ended::HandedOver)) {
            // Let the reply reach the new daemon before the runtime goes.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        server.abort();
        reloader.abort();
        let _ = std::fs::remove_file(&socket);
        result?;
        let report = state.report();
        tracing::info!(
            events = report.events.get("total").copied().unwrap_or(0),
            lost = report.lost.total,
            "stopped"
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// Asks the daemon that owns the pin dir to hand over (it saves
/// everything, leaves its programs attached and recording, and exits), and
/// waits until it has exited. Its programs record meanwhile; this daemon
/// reads what they recorded first.
fn take_over_from(owner: &loader::owner::OwnerInfo) -> anyhow::Result<()> {
    use std::os::fd::{AsFd as _, FromRawFd as _, OwnedFd};
    /// How long the old daemon may take to save everything and exit.
    const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
    let pid = i32::try_from(owner.pid).context("the owner's pid")?;
    // A pidfd first, so the wait below is on that process and no other.
    // SAFETY: pidfd_open(2) returns a new fd or -1.
    let raw = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    let raw = i32::try_from(raw).unwrap_or(-1);
    anyhow::ensure!(
        raw >= 0,
        "cannot open the running daemon {}: {}",
        owner.describe(),
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel just gave us this fd.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    anyhow::ensure!(
        owner.alive(),
        "the running daemon {} exited meanwhile",
        owner.describe()
    );
    tracing::info!(owner = %owner.describe(), "taking over from the running daemon");
    match control::request(&owner.socket, &control::protocol::Request::Handover) {
        Ok(control::protocol::Response::HandedOver { next_seq }) => {
            tracing::info!(
                next_seq,
                "the running daemon saved everything and is exiting"
            );
        }
        Ok(other) => anyhow::bail!("the running daemon answered the take-over with {other:?}"),
        // It may have exited before its answer reached us: the wait decides.
        Err(e) => tracing::warn!(error = %e, "no answer to the take-over request"),
    }
    let mut fds = [nix::poll::PollFd::new(
        pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let timeout =
        nix::poll::PollTimeout::try_from(EXIT_WAIT).unwrap_or(nix::poll::PollTimeout::MAX);
    let ready = nix::poll::poll(&mut fds, timeout).context("waiting for the running daemon")?;
    anyhow::ensure!(
        ready > 0,
        "the running daemon {} did not exit within {EXIT_WAIT:?} of the take-over request",
        owner.describe()
    );
    Ok(())
}

/// The sensor's own files and directories, each with what it is: writing
/// them is tampering with the sensor.
fn protected_files(
    pin_dir: &Path,
    state_dir: &Path,
    db: Option<&PathBuf>,
    args: &DaemonArgs,
) -> Vec<(PathBuf, u32)> {
    use sensor_common::event as k;
    let mut files = vec![
        (pin_dir.to_owned(), k::SENSOR_FILE_PINS),
        (state_dir.to_owned(), k::SENSOR_FILE_STATE),
    ];
    if let Some(db) = db {
        files.push((db.clone(), k::SENSOR_FILE_STORE));
    }
    files.push((
        args.config
            .clone()
            .unwrap_or_else(|| PathBuf::from(paths::CONFIG)),
        k::SENSOR_FILE_CONFIG,
    ));
    if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
        files.push((exe, k::SENSOR_FILE_BINARY));
    }
    files
}

/// Creates the state directory mode 0700, or makes an existing one so.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the state directory {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making the state directory {} private", dir.display()))
}

/// Raises the soft limit on open files to the hard one: clients, outputs,
/// the store and the kernel maps all hold descriptors, and the control
/// socket's own bounds (`[limits] connections`) must stay far below it.
/// Only when the soft limit is the lower one: the systemd unit sets both
/// (`LimitNOFILE=`), so there this makes no call its `~@resources` system
/// call filter is meant to keep out.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
    }
}

/// Hands the heap that start-up freed back to the kernel.
///
/// Start-up parses the kernel's BTF (btf-rs: ~24 MiB of short-lived
/// allocations) and scans /proc. glibc keeps freed heap pages mapped, so
/// without a trim they stay in the daemon's RSS for its whole life.
fn release_startup_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own free lists; it has no
    // preconditions and is thread-safe.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Why provenance (`crate::provenance`) cannot start.
#[derive(Debug, thiserror::Error)]
enum ProvenanceError {
    #[error(transparent)]
    Keys(#[from] crate::tokens::keys::KeyError),
    #[error("reading the chain heads from the store")]
    Store(#[from] crate::store::StoreError),
    #[error("reading the chain heads from the store")]
    Sqlite(#[from] rusqlite::Error),
}

/// The daemon's provenance, when `[provenance]` is on: the chainer signs
/// with the token keys (the issuer's when tokens are on, else the key ring
/// in the state dir, opened here), and continues the chains of the runs
/// the store holds unended.
fn open_provenance(
    config: &crate::provenance::ProvenanceConfig,
    tokens: &crate::tokens::TokensConfig,
    issuer: Option<&mut crate::tokens::Issuer>,
    state_dir: &Path,
    store: bool,
    db: &Path,
) -> Result<Option<Planner>, ProvenanceError> {
    if !config.enabled {
        return Ok(None);
    }
    let chainer = Arc::new(Chainer::new());
    match issuer {
        Some(issuer) => issuer.sign_checkpoints(Arc::clone(&chainer), state_dir)?,
        None => {
            let mut ring = crate::tokens::keys::KeyRing::open(
                state_dir,
                tokens.rotate.0,
                tokens.max_ttl.0,
                std::time::SystemTime::now(),
            )?;
            let (kid, der) = ring.sign_with(0)?;
            chainer
                .set_key(&kid, &der, Some(state_dir))
                .map_err(|e| crate::tokens::keys::KeyError::Generate(e.to_string()))?;
        }
    }
    if store && db.exists() {
        let conn = crate::store::open_for_writing(db)?;
        chainer.resume(crate::provenance::verify::open_heads(&conn)?);
    }
    Ok(Some(Planner::new(config.clone(), chainer)))
}
