//! Ways out of a run's exec allow-list through mounts (issue "No way out of
//! a run unseen", item 4). An agent in an enforce run makes a denied binary
//! appear inside an allowed directory by mounting something there, in a
//! mount namespace of its own (`unshare -m` as root, `unshare -Urm` as an
//! unprivileged user), and runs it. A directory rule allows only files on the
//! mount it was resolved on, in the host's mount namespace (here the
//! daemon's): each attack is killed before its first instruction and
//! reported like any denied exec. The last tests pin down what a directory
//! rule allows (its own mount, the host's namespace only, a mount root) and
//! that user space, where it decides itself, judges the same way.
//!
//! The allowed directories are the test's own (copies of `/usr/bin/touch`,
//! so "did it run" is "did the file it would touch appear"); the denied
//! binary is the [`Fixture`]'s. Mounts made by the attacks live in their
//! private namespaces and vanish with them; the one host mount a test makes
//! (a tmpfs at an allowed directory, before the daemon starts) is undone
//! when the test ends.
//!
//! Run as root: `cargo test -p sensor-tests --test escape -- --test-threads=1`.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sensor_tests::enforce::*;
use sensor_tests::{Checks, Daemon, EVENT_TIMEOUT, check, dump, marker};
use serde_json::Value;

/// What the attacks run besides [`base_exec`]: exact rules, so they are
/// allowed in any mount namespace.
const MOUNT_TOOLS: &[&str] = &["/usr/bin/unshare", "/usr/bin/mount", "/usr/bin/setpriv"];

/// The uid and gid of `nobody`.
const NOBODY: u32 = 65534;

/// `setpriv` to `nobody`, then `unshare -Urm` (a user namespace whose root
/// is the caller, and a mount namespace it may mount in): an unprivileged
/// agent's own mount namespace.
fn as_nobody_in_userns(script: &str) -> String {
    format!(
        "setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups -- unshare -Urm sh -c '{script}'"
    )
}

/// `unshare -m` (private propagation): root's own mount namespace.
fn in_mount_ns(script: &str) -> String {
    format!("unshare -m sh -c '{script}'")
}

/// The layout of an escape test: the [`Fixture`] (the denied `touch` and
/// `out/`, writable by anyone so that `nobody` could create the files it
/// checks), and `allowed/`: a directory rule's directory holding `mytouch`
/// (a copy of touch, allowed), `sub/` (where attacks mount) and `sub/deeper/`.
struct Layout {
    fx: Fixture,
    allowed: PathBuf,
}

impl Layout {
    fn new(tag: &str) -> Result<Self> {
        let fx = Fixture::new(tag)?;
        let allowed = fx.dir().join("allowed");
        fs::create_dir_all(allowed.join("sub/deeper"))?;
        fs::copy("/usr/bin/touch", allowed.join("mytouch"))?;
        fs::copy("/usr/bin/touch", allowed.join("sub/deeper/mytouch"))?;
        fs::set_permissions(&fx.out, fs::Permissions::from_mode(0o777))?;
        Ok(Self { fx, allowed })
    }

    /// `allowed/<rel>` as a string.
    fn a(&self, rel: &str) -> String {
        s(&self.allowed.join(rel))
    }

    /// The directory rule of `allowed/`.
    fn rule(&self) -> String {
        format!("{}/", s(&self.allowed))
    }

    /// An enforce policy `p`: [`base_exec`], [`MOUNT_TOOLS`], then `rules`.
    fn config(rules: &[String]) -> Result<String> {
        let mut exec = base_exec()?;
        exec.extend(MOUNT_TOOLS.iter().map(ToString::to_string));
        exec.extend(rules.iter().cloned());
        Ok(policy_toml::<_, &str>("p", "enforce", &exec, &[], ""))
    }
}

/// One exec a test makes: a shell line that ends by executing a copy of
/// `touch` with `target` as its argument; `allow`: the rule that allows it,
/// or `None` when it must be killed before it runs.
struct Case {
    name: &'static str,
    line: String,
    target: PathBuf,
    allow: Option<String>,
}

impl Case {
    /// A case whose line is `make(target)`.
    fn new(
        fx: &Fixture,
        name: &'static str,
        allow: Option<String>,
        make: impl FnOnce(&str) -> String,
    ) -> Self {
        let target = fx.target(&format!("{}-{name}", marker()));
        Self {
            name,
            line: make(&s(&target)),
            target,
            allow,
        }
    }

    fn needle(&self) -> String {
        s(&self.target)
    }
}

/// Runs every case in one enforce run of policy `p` (each line's exit
/// status printed as `NAME: $?`), then checks each: an allowed case ran
/// (exit 0, its file exists, its exec names the rule), a denied one was
/// killed before it ran (exit 137, no file, an enforced deny with no rule
/// matching, a policy.violation, death by SIGKILL).
///
/// Failures name each case by its line, with the test's temp dir shown as `$T`.
fn run_cases(d: &Daemon, fx: &Fixture, agent: &str, cases: &[Case]) -> Result<()> {
    let tmp = s(fx.dir());
    let script: String = cases
        .iter()
        .map(|c| format!("{}\necho \"{}: $?\"\n", c.line, c.name))
        .collect();
    let out = launch_sh(d, agent, "p", &script)?;
    let got = outputs(&out);
    let _ = d.wait_until(
        EVENT_TIMEOUT,
        |evs| {
            cases.iter().all(|c| {
                exec_with(evs, &c.needle()).is_some_and(|e| {
                    c.allow.is_some()
                        || (exit_of(evs, e).is_some() && violation_after(evs, e).is_some())
                })
            })
        },
        |_| String::new(),
    );
    d.check_alive()?;
    let evs = d.events()?;
    let mut c = Checks::new();
    for case in cases {
        let what = format!("{} ({})", case.name, case.line.replace(&tmp, "$T"));
        let needle = case.needle();
        match &case.allow {
            Some(rule) => {
                check!(
                    c,
                    got.get(case.name).map(String::as_str) == Some("0"),
                    "{what}: exit status {:?}, want 0 (allowed, runs): {}",
                    got.get(case.name),
                    describe(&out)
                );
                check!(
                    c,
                    case.target.exists(),
                    "{what}: {} does not exist: the allowed binary did not run",
                    case.target.display()
                );
                match exec_with(&evs, &needle) {
                    Some(e) => check_allow(&mut c, &what, e, "p", rule),
                    None => c.fail(format!(
                        "{what}: no successful process.exec with {needle}; the execs with it:\n{}",
                        dump(&execs_with(&evs, &needle))
                    )),
                }
            }
            None => {
                check!(
                    c,
                    got.get(case.name) == Some(&KILLED.to_string()),
                    "{what}: exit status {:?}, want {KILLED} (denied, killed): {}",
                    got.get(case.name),
                    describe(&out)
                );
                check_killed(
                    &mut c,
                    &what,
                    &evs,
                    &needle,
                    &case.target,
                    "p",
                    Some(EXEC_NO_MATCH),
                );
            }
        }
    }
    check_mount_tools_allowed(&mut c, &evs);
    c.finish()
}

/// The attacks' own tools ran and were allowed: a failure is about the
/// binary they smuggle in, not about `mount` or `unshare` being denied.
fn check_mount_tools_allowed(c: &mut Checks, evs: &[Value]) {
    for e in evs {
        if is_exec_ok(e)
            && !e["run"].is_null()
            && e["process"]["exe"]
                .as_str()
                .is_some_and(|x| MOUNT_TOOLS.contains(&x))
        {
            check!(
                c,
                e["policy"]["verdict"] == "allow",
                "the policy denied a tool this test needs: {}",
                sensor_tests::compact(e)
            );
        }
    }
}

/// A tmpfs mounted on the host (the test's own mount namespace) at `at`,
/// detached when dropped.
struct HostTmpfs(CString);

impl HostTmpfs {
    fn mount(at: &Path) -> Result<Self> {
        let path = CString::new(at.as_os_str().as_bytes())?;
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                c"sensor-test".as_ptr(),
                path.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mount a tmpfs at {}", at.display()));
        }
        Ok(Self(path))
    }
}

impl Drop for HostTmpfs {
    fn drop(&mut self) {
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

// ===== attacks =====

/// Attack (a): a tmpfs mounted on a subdirectory of an allowed directory,
/// by an unprivileged user in a user and mount namespace of its own
/// (`unshare -Urm`) and by root in a mount namespace (`unshare -m`), the
/// denied binary copied there and run. Also under a directory glob rule.
#[test]
fn a_tmpfs_mounted_in_an_allowed_directory_does_not_allow_its_files() -> Result<()> {
    let l = Layout::new("esc-tmpfs")?;
    let globbed = l.fx.dir().join("globbed");
    fs::create_dir_all(globbed.join("sub"))?;
    let glob_rule = format!("{}/glob*/", s(l.fx.dir()));
    let d = Daemon::start_with(Some(&Layout::config(&[l.rule(), glob_rule])?), &[])?;
    let denied = l.fx.denied.clone();
    let sub = l.a("sub");
    let cases = [
        Case::new(&l.fx, "nobody-userns", None, |t| {
            as_nobody_in_userns(&format!(
                "mount -t tmpfs x {sub} && cp {denied} {sub}/d && exec {sub}/d {t}"
            ))
        }),
        Case::new(&l.fx, "root-mntns", None, |t| {
            in_mount_ns(&format!(
                "mount -t tmpfs x {sub} && cp {denied} {sub}/d && exec {sub}/d {t}"
            ))
        }),
        Case::new(&l.fx, "nobody-userns-deeper", None, |t| {
            // A mount two levels down: the walk would climb further.
            let deeper = format!("{sub}/deeper");
            as_nobody_in_userns(&format!(
                "mount -t tmpfs x {deeper} && cp {denied} {deeper}/d && exec {deeper}/d {t}"
            ))
        }),
        Case::new(&l.fx, "nobody-userns-glob-dir", None, |t| {
            let gsub = s(&globbed.join("sub"));
            as_nobody_in_userns(&format!(
                "mount -t tmpfs x {gsub} && cp {denied} {gsub}/d && exec {gsub}/d {t}"
            ))
        }),
    ];
    run_cases(&d, &l.fx, "esc-tmpfs", &cases)
}

/// Attack (b): a bind mount of a directory holding the denied binary onto a
/// subdirectory of an allowed directory (`unshare -m`, as root); the same
/// with an overlayfs over the denied directory (also as an unprivileged user
/// in `unshare -Urm`); and the denied file bind-mounted over a file of the
/// allowed directory.
#[test]
fn a_bind_or_overlay_mount_into_an_allowed_directory_does_not_allow_its_files() -> Result<()> {
    let l = Layout::new("esc-bind")?;
    let empty = l.fx.dir().join("empty");
    fs::create_dir_all(&empty)?;
    let d = Daemon::start_with(Some(&Layout::config(&[l.rule()])?), &[])?;
    let denied = l.fx.denied.clone();
    let denied_dir = s(l.fx.dir().join("denied").as_path());
    let (sub, mytouch, empty) = (l.a("sub"), l.a("mytouch"), s(&empty));
    let overlay = format!("mount -t overlay overlay -o lowerdir={denied_dir}:{empty} {sub}");
    let cases = [
        Case::new(&l.fx, "bind-dir", None, |t| {
            in_mount_ns(&format!(
                "mount --bind {denied_dir} {sub} && exec {sub}/touch {t}"
            ))
        }),
        Case::new(&l.fx, "overlay-dir", None, |t| {
            in_mount_ns(&format!("{overlay} && exec {sub}/touch {t}"))
        }),
        Case::new(&l.fx, "nobody-userns-overlay-dir", None, |t| {
            as_nobody_in_userns(&format!("{overlay} && exec {sub}/touch {t}"))
        }),
        Case::new(&l.fx, "bind-file-over-file-in-dir", None, |t| {
            in_mount_ns(&format!(
                "mount --bind {denied} {mytouch} && exec {mytouch} {t}"
            ))
        }),
    ];
    run_cases(&d, &l.fx, "esc-bind", &cases)
}

/// Attack (c): the denied file bind-mounted over a file an EXACT rule
/// allows, then the allowed path run: the kernel sees the mounted file's
/// identity, which no rule names. An exact rule is by identity, so the
/// allowed file itself runs in another mount namespace too.
#[test]
fn a_bind_mount_over_an_allowed_exact_file_runs_the_mounted_file_denied() -> Result<()> {
    let l = Layout::new("esc-exact")?;
    let exact_dir = l.fx.dir().join("exact");
    fs::create_dir_all(&exact_dir)?;
    let exact = exact_dir.join("tool");
    fs::copy("/usr/bin/touch", &exact)?;
    let exact = s(&exact);
    let d = Daemon::start_with(Some(&Layout::config(std::slice::from_ref(&exact))?), &[])?;
    let denied = l.fx.denied.clone();
    let rule = format!("exec.allow {exact}");
    let cases = [
        Case::new(&l.fx, "exact", Some(rule.clone()), |t| {
            format!("{exact} {t}")
        }),
        Case::new(&l.fx, "exact-in-mntns", Some(rule.clone()), |t| {
            in_mount_ns(&format!("exec {exact} {t}"))
        }),
        Case::new(&l.fx, "bind-over-exact", None, |t| {
            in_mount_ns(&format!(
                "mount --bind {denied} {exact} && exec {exact} {t}"
            ))
        }),
        Case::new(&l.fx, "nobody-userns-bind-over-exact", None, |t| {
            as_nobody_in_userns(&format!(
                "mount --bind {denied} {exact} && exec {exact} {t}"
            ))
        }),
    ];
    run_cases(&d, &l.fx, "esc-exact", &cases)
}

// ===== what a directory rule allows =====

/// The control (d): a directory rule allows the files of its directory, at
/// any depth, on the mount it was resolved on, in the daemon's mount
/// namespace. In another mount namespace every mount is another mount
/// (`unshare -m` copies them), so the same file is allowed by no directory
/// rule there: it is killed like any file no rule names (exact rules still
/// allow their files everywhere: see the test above).
#[test]
fn a_directory_rule_allows_its_files_on_its_own_mount_and_namespace_only() -> Result<()> {
    let l = Layout::new("esc-ns")?;
    let d = Daemon::start_with(Some(&Layout::config(&[l.rule()])?), &[])?;
    let rule = format!("exec.allow {}", l.rule());
    let (mytouch, deeper) = (l.a("mytouch"), l.a("sub/deeper/mytouch"));
    let cases = [
        Case::new(&l.fx, "in-dir", Some(rule.clone()), |t| {
            format!("{mytouch} {t}")
        }),
        Case::new(&l.fx, "in-subdir", Some(rule.clone()), |t| {
            format!("{deeper} {t}")
        }),
        Case::new(&l.fx, "in-dir-from-mntns", None, |t| {
            in_mount_ns(&format!("exec {mytouch} {t}"))
        }),
        Case::new(&l.fx, "in-subdir-from-userns", None, |t| {
            as_nobody_in_userns(&format!("exec {deeper} {t}"))
        }),
    ];
    run_cases(&d, &l.fx, "esc-ns", &cases)
}

/// An allowed directory that is a mount root: a tmpfs mounted at `mroot/`
/// before the daemon starts. The rule is resolved on that tmpfs, so its
/// files are allowed. A tmpfs mounted later, in a mount namespace of the
/// agent's, at the allowed directory itself (either one) is another mount,
/// and its files are denied.
#[test]
fn an_allowed_directory_that_is_a_mount_root_allows_that_mount_only() -> Result<()> {
    let l = Layout::new("esc-root")?;
    let mroot = l.fx.dir().join("mroot");
    fs::create_dir_all(&mroot)?;
    let host_mount = HostTmpfs::mount(&mroot)?;
    fs::create_dir_all(mroot.join("sub"))?;
    fs::copy("/usr/bin/touch", mroot.join("mytouch"))?;
    fs::copy("/usr/bin/touch", mroot.join("sub/mytouch"))?;
    let mroot_rule = format!("{}/", s(&mroot));
    let d = Daemon::start_with(Some(&Layout::config(&[l.rule(), mroot_rule.clone()])?), &[])?;
    let denied = l.fx.denied.clone();
    let mroot = s(&mroot);
    let allowed = s(&l.allowed);
    let rule = format!("exec.allow {mroot_rule}");
    let cases = [
        Case::new(&l.fx, "on-mount-root", Some(rule.clone()), |t| {
            format!("{mroot}/mytouch {t}")
        }),
        Case::new(&l.fx, "on-mount-root-subdir", Some(rule.clone()), |t| {
            format!("{mroot}/sub/mytouch {t}")
        }),
        Case::new(&l.fx, "tmpfs-over-mount-root", None, |t| {
            in_mount_ns(&format!(
                "mount -t tmpfs x {mroot} && cp {denied} {mroot}/d && exec {mroot}/d {t}"
            ))
        }),
        Case::new(&l.fx, "tmpfs-over-allowed-dir", None, |t| {
            as_nobody_in_userns(&format!(
                "mount -t tmpfs x {allowed} && cp {denied} {allowed}/d && exec {allowed}/d {t}"
            ))
        }),
    ];
    // Dropped in reverse order: the daemon, the host mount, then the temp dir.
    let _ = &host_mount;
    run_cases(&d, &l.fx, "esc-root", &cases)
}

/// User space mirrors the kernel where it decides itself: the exec that
/// starts a matcher's run (the run did not exist when the kernel saw it) is
/// checked in user space (`enforced: false`). A matched agent binary in an
/// allowed directory is allowed by the directory rule on the host, and
/// denied from another mount namespace, as the kernel would decide.
#[test]
fn a_matcher_runs_first_exec_is_judged_by_mount_as_in_the_kernel() -> Result<()> {
    let l = Layout::new("esc-match")?;
    fs::copy("/usr/bin/dash", l.allowed.join("fake-agent"))?;
    let config = format!(
        "{}\n[[agent]]\nname = \"esc-fake\"\nexe = [\"**/fake-agent\"]\npolicy = \"p\"\n",
        Layout::config(&[l.rule()])?
    );
    let d = Daemon::start_with(Some(&config), &[])?;
    let agent = l.a("fake-agent");
    let (host, other) = (marker(), marker());
    // The exec of the agent binary itself (`unshare`'s argv has the marker too).
    let agent_exec = |evs: &[Value], m: &str| -> Option<Value> {
        evs.iter()
            .find(|e| is_exec_ok(e) && argv_eq(e, m) && e["process"]["exe"] == agent.as_str())
            .cloned()
    };
    let run = |cmd: &mut std::process::Command| -> Result<()> {
        let (_, out) = sensor_tests::run_with_timeout(cmd, RUN_TIMEOUT)?;
        anyhow::ensure!(out.status.success(), "{cmd:?}: {}", describe(&out));
        Ok(())
    };
    run(std::process::Command::new(&agent).args(["-c", "exit 0", &host]))?;
    run(std::process::Command::new("unshare").args(["-m", &agent, "-c", "exit 0", &other]))?;
    let _ = d.wait_until(
        EVENT_TIMEOUT,
        |evs| [&host, &other].iter().all(|m| agent_exec(evs, m).is_some()),
        |_| String::new(),
    );
    d.check_alive()?;
    let evs = d.events()?;
    let mut c = Checks::new();
    let rule = format!("exec.allow {}", l.rule());
    for (what, m, allowed) in [
        ("on the host", &host, true),
        ("from `unshare -m`", &other, false),
    ] {
        let Some(e) = agent_exec(&evs, m) else {
            c.fail(format!(
                "{what}: no process.exec of the matched agent with {m}"
            ));
            continue;
        };
        check!(
            c,
            e["run"]["agent"] == "esc-fake" && e["run"]["attribution"] == "matcher",
            "{what}: the exec starts a matcher run: {}",
            sensor_tests::compact(&e)
        );
        if allowed {
            check_allow(&mut c, what, &e, "p", &rule);
        } else {
            check_deny(&mut c, what, &e, "p", Some(EXEC_NO_MATCH), false);
        }
    }
    c.finish()
}
