//! One source of settings for the client commands: where the store and the
//! control socket are. Each command takes `--config FILE` (env
//! `SENSOR_CONFIG`; default `/etc/sensor/sensor.toml` when present) and
//! reads its `[store] path`, `[daemon] socket` and `[daemon] state_dir` /
//! `pin_dir` from it, as the daemon does; an explicit `--db`, `--socket`,
//! `--state-dir` or `--pin-dir` (or its environment variable) wins. A
//! config named explicitly that is missing or does not parse is an error,
//! and so is a default file that is there but does not parse: a query never
//! silently reads another database than the daemon writes.
//!
//! Clap fills each of these arguments with its built-in default; after
//! parsing, [`apply`] replaces every value that came from that default
//! (clap's `ValueSource::DefaultValue`) with the config's.

use std::path::{Path, PathBuf};

use clap::{ArgMatches, parser::ValueSource};

use super::args::{Command, PolicyCommand, RulesCommand, TokenCommand};
use crate::{config::Config, paths};

/// The config file a client command reads, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// This file, named by `--config` / `SENSOR_CONFIG` or the default one.
    File(PathBuf),
    /// No `--config`, and the default file does not exist: built-in defaults.
    Defaults,
    /// No `--config`, and the default file exists but this user may not
    /// read it (it is root's): built-in defaults. A query says so on
    /// stderr; `launch`, `whoami` and `token` (whose stderr is the agent's)
    /// do not.
    Unreadable(PathBuf),
}

/// The settings a client command uses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: Source,
    pub config: Config,
}

impl Settings {
    /// Reads `explicit` (an error when it is missing or bad), else the
    /// default file when it exists.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Self> {
        if let Some(path) = explicit {
            let config = Config::read_settings(path)?;
            return Ok(Self {
                source: Source::File(path.to_owned()),
                config,
            });
        }
        let path = Path::new(paths::CONFIG);
        match Config::read_settings(path) {
            Ok(config) => Ok(Self {
                source: Source::File(path.to_owned()),
                config,
            }),
            Err(crate::config::ConfigError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(Self {
                    source: Source::Defaults,
                    config: Config::default(),
                })
            }
            Err(crate::config::ConfigError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Ok(Self {
                    source: Source::Unreadable(path.to_owned()),
                    config: Config::default(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The store: `[store] path`, else `<[daemon] state_dir>/sensor.db`.
    #[must_use]
    pub fn db(&self) -> PathBuf {
        self.config
            .store
            .path
            .clone()
            .unwrap_or_else(|| self.config.daemon.state_dir.join(paths::DB_FILE))
    }
}

/// Whether the argument `id` of `m` got clap's built-in default (it was not
/// given on the command line nor by its environment variable).
fn defaulted(m: &ArgMatches, id: &str) -> bool {
    m.ids().any(|i| i.as_str() == id) && m.value_source(id) == Some(ValueSource::DefaultValue)
}

/// The matches of the innermost subcommand (`sensor policy reload` →
/// reload's).
fn leaf(m: &ArgMatches) -> &ArgMatches {
    match m.subcommand() {
        Some((_, sub)) => leaf(sub),
        None => m,
    }
}

/// The values a command may take from the config.
struct Slots<'a> {
    config: Option<&'a Path>,
    db: Option<&'a mut PathBuf>,
    socket: Option<&'a mut PathBuf>,
    state_dir: Option<&'a mut PathBuf>,
    pin_dir: Option<&'a mut PathBuf>,
}

impl<'a> Slots<'a> {
    const fn new(config: Option<&'a Path>) -> Self {
        Self {
            config,
            db: None,
            socket: None,
            state_dir: None,
            pin_dir: None,
        }
    }

    fn db(mut self, db: &'a mut PathBuf) -> Self {
        self.db = Some(db);
        self
    }

    fn socket(mut self, socket: &'a mut PathBuf) -> Self {
        self.socket = Some(socket);
        self
    }
}

/// Fills `cmd`'s store, socket and directories that were left to their
/// defaults with the config's (see the module doc). `m` is what clap parsed.
pub fn apply(cmd: &mut Command, m: &ArgMatches) -> anyhow::Result<()> {
    let m = leaf(m);
    // A reload whose config the client cannot read is never sent: say so,
    // and that nothing changed in the daemon.
    let reload = matches!(cmd, Command::Policy(PolicyCommand::Reload { .. }));
    let slots = match cmd {
        Command::Launch(a) => Slots::new(a.config.path.as_deref()).socket(&mut a.socket),
        Command::Whoami(a) => Slots::new(a.config.path.as_deref()).socket(&mut a.socket),
        Command::Runs(a) => Slots::new(a.db.config.path.as_deref()).db(&mut a.db.db),
        Command::Tree(a) => Slots::new(a.db.config.path.as_deref()).db(&mut a.db.db),
        Command::Events(a) => Slots::new(a.db.config.path.as_deref()).db(&mut a.db.db),
        Command::Who(a) => Slots::new(a.db.config.path.as_deref())
            .db(&mut a.db.db)
            .socket(&mut a.socket),
        Command::Replay(a) => Slots::new(a.db.config.path.as_deref()).db(&mut a.db.db),
        Command::Report(a) => {
            let mut s = Slots::new(a.config.path.as_deref()).db(&mut a.db);
            s.state_dir = Some(&mut a.state_dir);
            s
        }
        Command::Verify(a) => {
            let mut s = Slots::new(a.db.config.path.as_deref()).db(&mut a.db.db);
            s.state_dir = Some(&mut a.state_dir);
            s
        }
        Command::Export(a) => {
            let mut s = Slots::new(a.db.config.path.as_deref()).db(&mut a.db.db);
            s.state_dir = Some(&mut a.state_dir);
            s
        }
        Command::Policy(PolicyCommand::Suggest { db, config, .. }) => {
            Slots::new(config.path.as_deref()).db(db)
        }
        Command::Policy(PolicyCommand::Test { db, .. }) => {
            Slots::new(db.config.path.as_deref()).db(&mut db.db)
        }
        Command::Policy(PolicyCommand::Reload { socket, config }) => {
            Slots::new(config.path.as_deref()).socket(socket)
        }
        Command::Rules(RulesCommand::Test { db, .. }) => {
            Slots::new(db.config.path.as_deref()).db(&mut db.db)
        }
        Command::Token(a) => match &mut a.action {
            Some(
                TokenCommand::Jwks { socket, config } | TokenCommand::Verify { socket, config, .. },
            ) => Slots::new(config.path.as_deref()).socket(socket),
            None => Slots::new(a.config.path.as_deref()).socket(&mut a.socket),
        },
        Command::Status(a) => {
            let mut s = Slots::new(a.config.path.as_deref()).socket(&mut a.socket);
            s.pin_dir = Some(&mut a.pin_dir);
            // The daemon down: its policy_ids.json names the pinned slots.
            s.state_dir = Some(&mut a.state_dir);
            s
        }
        // The daemon, doctor and unload read the whole config themselves;
        // `policy check` checks the config it is given, `rules check` reads
        // its [detect] rules when given no files.
        Command::Daemon(_)
        | Command::Doctor(_)
        | Command::Unload(_)
        | Command::Canary(_)
        | Command::Policy(PolicyCommand::Check { .. })
        | Command::Rules(RulesCommand::Check { .. }) => return Ok(()),
    };
    fill(slots, m).map_err(|e| {
        if reload {
            e.context(format!(
                "reload not sent to the daemon; {}",
                crate::control::REFUSED_STAYS
            ))
        } else {
            e
        }
    })
}

fn fill(slots: Slots<'_>, m: &ArgMatches) -> anyhow::Result<()> {
    let wanted = |slot: &Option<&mut PathBuf>, id: &str| slot.is_some() && defaulted(m, id);
    let needed = wanted(&slots.db, "db")
        || wanted(&slots.socket, "socket")
        || wanted(&slots.state_dir, "state_dir")
        || wanted(&slots.pin_dir, "pin_dir");
    // An explicit config is read (and must be good) even when every value
    // it could give was given.
    if !needed && slots.config.is_none() {
        return Ok(());
    }
    // Its errors name the file (and line).
    let settings = Settings::load(slots.config)?;
    if let Some(db) = slots.db
        && defaulted(m, "db")
    {
        *db = settings.db();
        if let Source::Unreadable(path) = &settings.source {
            eprintln!(
                "sensor: warning: cannot read the config {} (root's?): using the default store {}",
                path.display(),
                db.display()
            );
        }
    }
    if let Some(socket) = slots.socket
        && defaulted(m, "socket")
    {
        socket.clone_from(&settings.config.daemon.socket);
    }
    if let Some(dir) = slots.state_dir
        && defaulted(m, "state_dir")
    {
        dir.clone_from(&settings.config.daemon.state_dir);
    }
    if let Some(dir) = slots.pin_dir
        && defaulted(m, "pin_dir")
    {
        dir.clone_from(&settings.config.daemon.pin_dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, FromArgMatches as _};

    use super::*;
    use crate::cli::Cli;

    fn parsed(args: &[&str]) -> anyhow::Result<Cli> {
        let m = Cli::command().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&m)?;
        apply(&mut cli.command, &m)?;
        Ok(cli)
    }

    #[test]
    fn queries_follow_the_config_and_explicit_values_win() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sensor.toml");
        std::fs::write(
            &config,
            "[daemon]\nsocket = \"/x/s.sock\"\nstate_dir = \"/x/state\"\n[store]\npath = \"/x/db.sqlite\"\n",
        )
        .unwrap();
        let c = config.to_str().unwrap();
        let Command::Who(who) = parsed(&["sensor", "who", "--pid", "1", "--config", c])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(who.db.db, Path::new("/x/db.sqlite"));
        assert_eq!(who.socket, Path::new("/x/s.sock"));
        let Command::Runs(runs) = parsed(&["sensor", "runs", "--config", c, "--db", "/y.db"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(runs.db.db, Path::new("/y.db"), "--db wins");
        let Command::Policy(PolicyCommand::Reload { socket, .. }) =
            parsed(&["sensor", "policy", "reload", "--config", c])
                .unwrap()
                .command
        else {
            panic!()
        };
        assert_eq!(socket, Path::new("/x/s.sock"));
        let Command::Export(export) = parsed(&["sensor", "export", "r", "-o", "f", "--config", c])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(export.state_dir, Path::new("/x/state"));
        // verify and report find the keys in the state dir when the store
        // is elsewhere.
        let Command::Verify(verify) = parsed(&["sensor", "verify", "r", "--config", c])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(
            (verify.db.db.as_path(), verify.state_dir.as_path()),
            (Path::new("/x/db.sqlite"), Path::new("/x/state"))
        );
        let Command::Report(report) = parsed(&["sensor", "report", "r", "-o", "f", "--config", c])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(report.state_dir, Path::new("/x/state"));
        let Command::Status(status) = parsed(&["sensor", "status", "--config", c])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(
            (status.socket.as_path(), status.state_dir.as_path()),
            (Path::new("/x/s.sock"), Path::new("/x/state")),
            "status down names the pinned policies from the config's state dir"
        );

        // Without [store] path: the state dir's sensor.db.
        std::fs::write(&config, "[daemon]\nstate_dir = \"/z\"\n").unwrap();
        let Command::Events(events) = parsed(&["sensor", "events", "--config", c])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(events.db.db, Path::new("/z/sensor.db"));
    }

    #[test]
    fn a_missing_or_bad_explicit_config_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = parsed(&["sensor", "runs", "--config", missing.to_str().unwrap()]).unwrap_err();
        assert!(format!("{err:#}").contains("nope.toml"), "{err:#}");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[store]\npaht = \"/x\"\n").unwrap();
        let err = format!(
            "{:#}",
            parsed(&[
                "sensor",
                "runs",
                "--config",
                bad.to_str().unwrap(),
                "--db",
                "/d"
            ])
            .unwrap_err()
        );
        assert!(err.contains("bad.toml:2") && err.contains("paht"), "{err}");
        // A reload is not sent, and says that nothing changed.
        let err = format!(
            "{:#}",
            parsed(&[
                "sensor",
                "policy",
                "reload",
                "--config",
                bad.to_str().unwrap()
            ])
            .unwrap_err()
        );
        assert!(
            err.starts_with(
                "reload not sent to the daemon; the policies, agent matchers and detection rules \
                 in force stay: "
            ) && err.contains("bad.toml:2"),
            "{err}"
        );
    }
}
