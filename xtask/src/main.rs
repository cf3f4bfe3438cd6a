//! `cargo xtask`: developer and CI entry points for the sensor workspace.
//!
//! xtask never builds the eBPF programs itself: `sensor/build.rs` does that
//! through aya-build. xtask installs what that build needs (`setup`), then
//! drives `build`, `run`, `test` (the CI entry), `bench`, `fuzz` and `install`.

mod agents;
mod bench;
mod build;
mod ci;
mod fuzz;
mod install;
mod ocsf;
mod setup;
mod stats;
mod storm;
mod util;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
#[command(about = "Developer and CI entry points for the sensor workspace")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what the build and tests need (toolchain parts, apt packages,
    /// bpf-linker, the agent CLIs of the tests under target/agent-clis) and
    /// mount tracefs and bpffs; skips whatever is present.
    Setup,
    /// Run setup, then `cargo build -p sensor` (which builds the eBPF object).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
        /// Skip the setup step.
        #[arg(long)]
        no_setup: bool,
    },
    /// Set up, build, then exec `sensor daemon ARGS...` (JSON lines on stdout).
    Run {
        /// Build and run the release profile.
        #[arg(long)]
        release: bool,
        /// Skip the setup step (mounts are still checked).
        #[arg(long)]
        no_setup: bool,
        /// Arguments for `sensor daemon`, after `--`.
        #[arg(last = true, value_name = "DAEMON_ARGS")]
        args: Vec<String>,
    },
    /// The CI entry: setup, fmt, clippy, unit tests, fuzz targets, integration tests (as root).
    Test {
        /// Skip the setup step.
        #[arg(long)]
        no_setup: bool,
        /// Run only these groups of steps (repeatable); default: all.
        #[arg(long, value_enum)]
        only: Vec<ci::Group>,
    },
    /// Storm benchmarks: each workload without and with the sensor.
    Bench {
        /// Fewer rounds and smaller storms; exits non-zero when the sensor lost
        /// events or a tool broke (never on timing).
        #[arg(long)]
        quick: bool,
        /// Number of rounds (default 7, or 3 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
        /// Skip the setup step.
        #[arg(long)]
        no_setup: bool,
        /// Run only the workloads with these names (repeatable); default: all.
        #[arg(long, value_name = "WORKLOAD")]
        workload: Vec<String>,
        /// Run the storms only under these variants (repeatable; `bare`, the
        /// baseline, always runs); default: all. The other measurements
        /// (kernel cost, latency, memory, ...) run either way, unless
        /// --storms-only.
        #[arg(long, value_name = "NAME")]
        variant: Vec<String>,
        /// Benchmark this sensor binary instead of building target/release/sensor.
        #[arg(long, value_name = "PATH")]
        sensor_bin: Option<std::path::PathBuf>,
        /// Time the storms only: skip the other measurements (kernel cost,
        /// latency, memory, outage, outputs, replay), for quick comparisons
        /// of variants or binaries.
        #[arg(long)]
        storms_only: bool,
    },
    /// Run the libFuzzer targets of fuzz/ (cargo-fuzz, nightly), each for
    /// --time seconds on top of its corpus (new inputs are added to it);
    /// fails when a target crashes, naming the input.
    Fuzz {
        /// Only this target (control, config, raw, runs, spool, spec); default: all.
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, value_name = "S", default_value_t = 60)]
        time: u64,
    },
    /// Build the release binary and install it with the systemd unit and the
    /// example config (kept when a config exists) under --root.
    Install {
        /// Install into this tree instead of the running system
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: std::path::PathBuf,
        /// Installation prefix of the binary (<root><prefix>/bin/sensor)
        #[arg(long, value_name = "DIR", default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        /// Install target/release/sensor as it is, without building it
        #[arg(long)]
        no_build: bool,
    },
    /// Run one storm driver and print its time (used by bench; for manual runs).
    #[command(hide = true)]
    Storm {
        #[arg(value_enum)]
        kind: StormKind,
        /// Number of operations.
        #[arg(long, default_value_t = 1000)]
        n: usize,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StormKind {
    Exec,
    Connect,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Setup => setup::setup(),
        Command::Build { release, no_setup } => {
            if !no_setup {
                setup::setup()?;
            }
            build::build_sensor(build::Profile::from_release(release))
                .map(|bin| eprintln!("xtask: built {}", bin.display()))
        }
        Command::Run {
            release,
            no_setup,
            args,
        } => build::run(build::Profile::from_release(release), no_setup, &args),
        Command::Test { no_setup, only } => ci::test(no_setup, &only),
        Command::Bench {
            quick,
            rounds,
            no_setup,
            workload,
            variant,
            sensor_bin,
            storms_only,
        } => bench::bench(&bench::Options {
            quick,
            rounds,
            no_setup,
            workloads: workload,
            variants: variant,
            sensor_bin,
            storms_only,
        }),
        Command::Fuzz { target, time } => {
            fuzz::fuzz(target.as_deref(), time, fuzz::Corpus::Committed)
        }
        Command::Install {
            root,
            prefix,
            no_build,
        } => install::install(&install::Options {
            root,
            prefix,
            no_build,
        }),
        Command::Storm { kind, n } => {
            let elapsed = match kind {
                StormKind::Exec => storm::exec_storm(n)?,
                StormKind::Connect => storm::connect_storm(n)?,
            };
            println!(
                "{kind:?} storm: {n} ops in {:.3}s, {:.1} us/op",
                elapsed.as_secs_f64(),
                stats::per_op_us(elapsed, n)
            );
            Ok(())
        }
    }
}
