//! `[[agent]]` matchers: the exec of a known agent starts a run by itself.
//!
//! Real agent CLIs have awkward shapes, so a matcher can recognise an agent by
//! its executable, by the script an interpreter runs (`node …/cli.js`,
//! `python3 /usr/local/bin/aider`), or by a Python module (`python -m aider`),
//! and can exclude helper re-execs by argv. Deciding *whether* a match starts
//! a new run (same pid re-exec, launcher → native child, genuine nested
//! invocation) is [`super::Attribution`]'s job; this module only matches.

use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

/// One `[[agent]]` table of the config.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Agent name given to the runs it starts.
    pub name: String,
    /// Globs on the resolved executable path (`/usr/bin/claude`, `**/codex-*-linux-musl`).
    #[serde(default)]
    pub exe: Vec<String>,
    /// Globs on the script an interpreter runs: the first argument that is not
    /// an option, made absolute with the working directory.
    #[serde(default)]
    pub script: Vec<String>,
    /// Python modules run with `-m` (`aider`, `crewai.cli`).
    #[serde(default)]
    pub module: Vec<String>,
    /// Globs on single arguments, argv[0] included (also matched by its file
    /// name): a process with one of them is a helper of an agent (sandbox,
    /// worker, a multi-call alias such as `apply_patch`), never a new run.
    #[serde(default)]
    pub exclude_argv: Vec<String>,
    /// Policy of the runs it starts.
    #[serde(default)]
    pub policy: Option<String>,
    /// Scopes the run tokens of the runs it starts may carry.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// How its runs' transcripts are found and read (`"claude-code"`,
    /// `"codex"`): each tool call becomes a `tool.call` event
    /// (`crate::transcripts`).
    #[serde(default)]
    pub transcripts: Option<String>,
    /// The agent's own helper processes (with `transcripts`): entries
    /// `EXE [ARG...]`, the exe's file name or absolute path, then the first
    /// arguments (equal, or a prefix when they end with `*`). A direct
    /// child of the agent's process that matches one, and its descendants,
    /// are never `tool.unexplained`.
    #[serde(default)]
    pub infrastructure: Vec<String>,
    /// The agent's wrappers between it and a tool call's command (with
    /// `transcripts`; same syntax as `infrastructure`), e.g. a sandbox
    /// helper: an exec that matches one is the agent's own when it is a
    /// direct child of the agent's process, or a re-exec or child of such a
    /// helper (a chain of them); what the chain runs that matches no entry
    /// is not the agent's: a tool call must explain it.
    #[serde(default)]
    pub helpers: Vec<String>,
    /// The programs the agent runs itself for a tool that is not a shell
    /// (with `transcripts`): entries `TOOL EXE [ARG...]` (`Grep rg`), the
    /// rest as in `infrastructure`. Such an exec, a direct child of the
    /// agent's process in the window of a call of TOOL, is that call's.
    #[serde(default)]
    pub tool_programs: Vec<String>,
}

/// Interpreters whose first non-option argument is the program they run.
const INTERPRETERS: &[&str] = &[
    "node", "nodejs", "bun", "deno", "python", "python3", "pypy3", "ruby", "perl", "sh", "bash",
    "dash",
];

/// A compiled matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub policy: Option<String>,
    pub scopes: Vec<String>,
    exe: Vec<GlobMatcher>,
    script: Vec<GlobMatcher>,
    module: Vec<String>,
    exclude: Vec<GlobMatcher>,
}

/// A matcher that cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum MatcherError {
    #[error("[[agent]] {name:?}: bad glob {pattern:?}")]
    Glob {
        name: String,
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("[[agent]] {name:?}: needs at least one of exe, script or module")]
    Empty { name: String },
    #[error("[[agent]] needs a name")]
    NoName,
}

fn compile(name: &str, patterns: &[String]) -> Result<Vec<GlobMatcher>, MatcherError> {
    patterns
        .iter()
        .map(|p| {
            Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|source| MatcherError::Glob {
                    name: name.to_owned(),
                    pattern: p.clone(),
                    source,
                })
        })
        .collect()
}

impl Matcher {
    pub fn new(c: &AgentConfig) -> Result<Self, MatcherError> {
        if c.name.trim().is_empty() {
            return Err(MatcherError::NoName);
        }
        if c.exe.is_empty() && c.script.is_empty() && c.module.is_empty() {
            return Err(MatcherError::Empty {
                name: c.name.clone(),
            });
        }
        Ok(Self {
            name: c.name.clone(),
            policy: c.policy.clone(),
            scopes: c.scopes.clone(),
            exe: compile(&c.name, &c.exe)?,
            script: compile(&c.name, &c.script)?,
            module: c.module.clone(),
            exclude: compile(&c.name, &c.exclude_argv)?,
        })
    }

    /// Does this exec (resolved exe, argv, cwd) belong to the agent?
    #[must_use]
    pub fn matches(&self, exec: &ExecView<'_>) -> bool {
        let argv0_name = exec
            .argv
            .first()
            .and_then(|a| Path::new(a).file_name())
            .and_then(|n| n.to_str());
        let excluded = exec
            .argv
            .iter()
            .map(String::as_str)
            .chain(argv0_name)
            .any(|a| self.exclude.iter().any(|g| g.is_match(a)));
        if excluded {
            return false;
        }
        if self.exe.iter().any(|g| g.is_match(exec.exe)) {
            return true;
        }
        let Some(target) = interpreted_target(exec) else {
            return false;
        };
        match target {
            Target::Script(path) => self.script.iter().any(|g| g.is_match(&path)),
            Target::Module(m) => self
                .module
                .iter()
                .any(|x| x == m || m.starts_with(&format!("{x}."))),
        }
    }
}

/// What an exec looks like to the matchers.
#[derive(Debug, Clone, Copy)]
pub struct ExecView<'a> {
    pub exe: &'a str,
    pub argv: &'a [String],
    pub cwd: Option<&'a str>,
}

enum Target<'a> {
    Script(PathBuf),
    Module(&'a str),
}

/// The script or module an interpreter runs, if the exe is an interpreter.
fn interpreted_target<'a>(exec: &ExecView<'a>) -> Option<Target<'a>> {
    let base = Path::new(exec.exe).file_name()?.to_str()?;
    // python3.11 → python3; node20 stays unknown (use exe globs for it).
    let family = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    let family = if family.is_empty() { base } else { family };
    if !INTERPRETERS.contains(&base)
        && !INTERPRETERS.contains(&family)
        && !family.starts_with("python")
    {
        return None;
    }
    let mut args = exec.argv.iter().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-m" => return args.next().map(|m| Target::Module(m.as_str())),
            // Options that take a value, so the value is not the script.
            "-c" | "-e" | "--eval" | "-p" | "--print" => return None,
            "-r" | "--require" | "--import" | "-W" | "-X" | "--loader" => {
                args.next();
            }
            a if a.starts_with('-') => {}
            script => return Some(Target::Script(absolute(script, exec.cwd))),
        }
    }
    None
}

/// `script` made absolute with `cwd`, `.` and `..` folded (no file access).
fn absolute(script: &str, cwd: Option<&str>) -> PathBuf {
    let joined = match cwd {
        Some(cwd) if !script.starts_with('/') => Path::new(cwd).join(script),
        _ => PathBuf::from(script),
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// All matchers of the config, in order; the first that matches wins.
#[derive(Debug, Clone, Default)]
pub struct Matchers {
    matchers: Vec<Matcher>,
}

impl Matchers {
    pub fn new(configs: &[AgentConfig]) -> Result<Self, MatcherError> {
        Ok(Self {
            matchers: configs.iter().map(Matcher::new).collect::<Result<_, _>>()?,
        })
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.matchers.is_empty()
    }

    /// The agents' names, in the config's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.matchers.iter().map(|m| m.name.as_str())
    }

    /// The first matcher that recognises `exec`.
    #[must_use]
    pub fn find(&self, exec: &ExecView<'_>) -> Option<&Matcher> {
        self.matchers.iter().find(|m| m.matches(exec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    fn agent(name: &str) -> AgentConfig {
        AgentConfig {
            name: name.into(),
            ..AgentConfig::default()
        }
    }

    #[test]
    fn exe_script_and_module() {
        let mut claude = agent("claude-code");
        claude.script = vec!["**/@anthropic-ai/claude-code/cli.js".into()];
        claude.exe = vec!["**/claude-code/**/claude".into()];
        let mut aider = agent("aider");
        aider.script = vec!["**/bin/aider".into()];
        aider.module = vec!["aider".into()];
        let m = Matchers::new(&[claude, aider]).unwrap();

        let node = argv(&[
            "node",
            "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js",
            "-p",
            "hi",
        ]);
        let e = ExecView {
            exe: "/usr/bin/node",
            argv: &node,
            cwd: Some("/"),
        };
        assert_eq!(m.find(&e).unwrap().name, "claude-code");

        let py = argv(&["/usr/bin/python3", "/usr/local/bin/aider", "--version"]);
        let e = ExecView {
            exe: "/usr/bin/python3.11",
            argv: &py,
            cwd: None,
        };
        assert_eq!(m.find(&e).unwrap().name, "aider");

        let module = argv(&["python3", "-m", "aider", "--help"]);
        let e = ExecView {
            exe: "/usr/bin/python3.11",
            argv: &module,
            cwd: None,
        };
        assert_eq!(m.find(&e).unwrap().name, "aider");

        // A relative script resolved against the cwd.
        let rel = argv(&["python3", "../bin/aider"]);
        let e = ExecView {
            exe: "/usr/bin/python3",
            argv: &rel,
            cwd: Some("/usr/local/lib"),
        };
        assert_eq!(m.find(&e).unwrap().name, "aider");

        // Not the script: -c code, or another script.
        let code = argv(&["python3", "-c", "/usr/local/bin/aider"]);
        assert!(
            m.find(&ExecView {
                exe: "/usr/bin/python3",
                argv: &code,
                cwd: None
            })
            .is_none()
        );
        let other = argv(&["node", "/srv/app.js"]);
        assert!(
            m.find(&ExecView {
                exe: "/usr/bin/node",
                argv: &other,
                cwd: None
            })
            .is_none()
        );
        // An interpreter-looking argv on a non-interpreter exe does not count.
        let fake = argv(&["curl", "/usr/local/bin/aider"]);
        assert!(
            m.find(&ExecView {
                exe: "/usr/bin/curl",
                argv: &fake,
                cwd: None
            })
            .is_none()
        );
    }

    #[test]
    fn exclusions_and_errors() {
        let mut codex = agent("codex");
        codex.exe = vec!["**/codex-*-linux-musl".into()];
        codex.exclude_argv = vec!["--sandbox*".into()];
        let m = Matchers::new(&[codex]).unwrap();
        let a = argv(&["codex", "exec", "ls"]);
        let exe = "/usr/lib/node_modules/@openai/codex/vendor/x86_64/codex/codex-x86_64-unknown-linux-musl";
        assert!(
            m.find(&ExecView {
                exe,
                argv: &a,
                cwd: None
            })
            .is_some()
        );
        let helper = argv(&["codex", "--sandbox-policy", "x"]);
        assert!(
            m.find(&ExecView {
                exe,
                argv: &helper,
                cwd: None
            })
            .is_none()
        );
        // argv[0] counts too, by its file name: a multi-call alias.
        let mut aliased = agent("codex");
        aliased.exe = vec!["**/codex-*-linux-musl".into()];
        aliased.exclude_argv = vec!["apply_patch".into()];
        let m = Matchers::new(&[aliased]).unwrap();
        let alias = argv(&["/tmp/x/apply_patch", "*** Begin Patch"]);
        assert!(
            m.find(&ExecView {
                exe,
                argv: &alias,
                cwd: None
            })
            .is_none()
        );

        assert!(matches!(
            Matcher::new(&agent("x")),
            Err(MatcherError::Empty { .. })
        ));
        let mut bad = agent("x");
        bad.exe = vec!["[".into()];
        assert!(matches!(Matcher::new(&bad), Err(MatcherError::Glob { .. })));
    }
}
