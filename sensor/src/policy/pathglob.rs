//! The paths a glob names on the file system now (exec globs, Unix socket
//! globs, the dynamic loaders), read as the `glob` crate read them before:
//! the pattern is taken a path component at a time. A component without
//! `*`, `?` or `[` names one entry (it must exist, a dangling symlink
//! counts); any other component is matched with `globset` against the names
//! in the directories found so far (`*` also matches a leading dot, `{`,
//! `}` and `\` are plain characters, a name that is not UTF-8 matches no
//! pattern); a component that is exactly `**` is any number of directories
//! below (symlinks followed), and at the end of the pattern every directory
//! below. A pattern that ends in `/` names directories only.
//!
//! Unlike the `glob` crate, a component starting with `.` never matches the
//! `.` and `..` entries (`/opt/app/.*/` does not name `/opt`).

use std::{
    fs,
    path::{Path, PathBuf},
};

use globset::{GlobBuilder, GlobMatcher};

/// A glob that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("recursive wildcards must form a single path component")]
    Recursive,
    #[error("{0}")]
    Component(Box<globset::Error>),
}

enum Part {
    Literal(String),
    Match(GlobMatcher),
    Recursive,
}

/// Every path `pattern` matches now (each once, sorted).
pub fn paths(pattern: &str) -> Result<Vec<PathBuf>, PatternError> {
    let (start, rest) = match pattern.strip_prefix('/') {
        Some(rest) => (PathBuf::from("/"), rest),
        None => (PathBuf::new(), pattern),
    };
    let parts = rest
        .split_terminator('/')
        .map(part)
        .collect::<Result<Vec<_>, _>>()?;
    let mut found = Vec::new();
    if !parts.is_empty() {
        walk(&start, &parts, &mut found);
    } else if pattern == "/" {
        found.push(start);
    }
    if pattern.len() > 1 && pattern.ends_with('/') {
        found.retain(|p| is_dir(p));
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// A matcher of whole paths that names what [`paths`] expands `pattern`
/// to: `*`, `?` and classes stay within one component, `**` alone is any
/// number of directories, `{`, `}` and `\` are plain characters. (A
/// `globset::Glob` read as is lets `*` cross `/` and reads `{a,b}` as
/// alternatives: a check by path would allow what the expansion, and so the
/// kernel, does not.)
pub fn matcher(pattern: &str) -> Result<GlobMatcher, PatternError> {
    let mut text = String::with_capacity(pattern.len() + 8);
    for (i, component) in pattern.split('/').enumerate() {
        if i > 0 {
            text.push('/');
        }
        if component == "**" {
            text.push_str("**");
        } else if component.contains("**") {
            return Err(PatternError::Recursive);
        } else {
            text.push_str(&as_globset(component));
        }
    }
    GlobBuilder::new(&text)
        .literal_separator(true)
        .backslash_escape(false)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| PatternError::Component(Box::new(e)))
}

fn part(component: &str) -> Result<Part, PatternError> {
    if component == "**" {
        return Ok(Part::Recursive);
    }
    if component.contains("**") {
        return Err(PatternError::Recursive);
    }
    if !component.contains(['*', '?', '[']) {
        return Ok(Part::Literal(component.to_owned()));
    }
    GlobBuilder::new(&as_globset(component))
        .literal_separator(true)
        .backslash_escape(false)
        .build()
        .map(|g| Part::Match(g.compile_matcher()))
        .map_err(|e| PatternError::Component(Box::new(e)))
}

/// A component as globset reads what the `glob` crate read: `{` and `}`
/// outside a class are plain characters (classes of their own; globset
/// reads alternatives), and a class runs to the first `]` after its first
/// member, where a leading `^` is a member (globset reads a negation: it is
/// moved last, or the class of `^` alone becomes the character).
fn as_globset(component: &str) -> String {
    let chars: Vec<char> = component.chars().collect();
    let mut out = String::with_capacity(component.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '[' {
            let negated = chars.get(i + 1) == Some(&'!');
            let first = if negated { i + 2 } else { i + 1 };
            if let Some(end) = (first + 1..chars.len()).find(|&j| chars[j] == ']') {
                let members: String = chars[first..end].iter().collect();
                match members.strip_prefix('^') {
                    Some("") if !negated => out.push('^'),
                    Some(rest) if !rest.is_empty() && !rest.starts_with('-') => {
                        out.push_str(if negated { "[!" } else { "[" });
                        out.push_str(rest);
                        out.push_str("^]");
                    }
                    _ => {
                        out.push_str(if negated { "[!" } else { "[" });
                        out.push_str(&members);
                        out.push(']');
                    }
                }
                i = end + 1;
                continue;
            }
        }
        match c {
            '{' | '}' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

/// The path `dir` joined with `name`, as a relative pattern names it.
fn join(dir: &Path, name: impl AsRef<Path>) -> PathBuf {
    if dir.as_os_str().is_empty() {
        name.as_ref().to_owned()
    } else {
        dir.join(name)
    }
}

/// `dir` as the file system reads it (`.` for the relative start).
fn here(dir: &Path) -> &Path {
    if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }
}

fn is_dir(path: &Path) -> bool {
    fs::metadata(here(path)).is_ok_and(|m| m.is_dir())
}

/// The entries of `dir` (sorted), each with its name when that is UTF-8
/// (no other name matches a pattern); none when it cannot be read.
fn entries(dir: &Path) -> Vec<(PathBuf, Option<String>)> {
    let Ok(read) = fs::read_dir(here(dir)) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Option<String>)> = read
        .filter_map(Result::ok)
        .map(|e| {
            let name = e.file_name();
            (join(dir, &name), name.into_string().ok())
        })
        .collect();
    out.sort();
    out
}

fn walk(dir: &Path, parts: &[Part], found: &mut Vec<PathBuf>) {
    let Some((first, rest)) = parts.split_first() else {
        found.push(dir.to_owned());
        return;
    };
    match first {
        Part::Literal(name) => {
            let next = join(dir, name);
            if fs::symlink_metadata(here(&next)).is_ok() {
                walk(&next, rest, found);
            }
        }
        Part::Match(glob) => {
            if !is_dir(dir) {
                return;
            }
            for (path, name) in entries(dir) {
                if name.is_some_and(|n| glob.is_match(n)) {
                    walk(&path, rest, found);
                }
            }
        }
        Part::Recursive => {
            let after = rest
                .iter()
                .position(|p| !matches!(p, Part::Recursive))
                .map_or(&[][..], |i| &rest[i..]);
            below(dir, after, found);
        }
    }
}

/// `**` in `dir`: each entry below, at any depth, goes on with `after`
/// (every directory when `after` is empty).
fn below(dir: &Path, after: &[Part], found: &mut Vec<PathBuf>) {
    if !is_dir(dir) {
        return;
    }
    for (path, name) in entries(dir) {
        let sub = is_dir(&path);
        match after.split_first() {
            None if sub => found.push(path.clone()),
            None => {}
            Some((next, rest)) => {
                let matched = name.as_deref().is_some_and(|n| match next {
                    Part::Literal(s) => s == n,
                    Part::Match(glob) => glob.is_match(n),
                    Part::Recursive => false,
                });
                if matched {
                    walk(&path, rest, found);
                }
            }
        }
        if sub {
            below(&path, after, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["bin", "lib/x86_64", "lib/deep/er", ".hidden", "{a,b}"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        for file in [
            "bin/true",
            "bin/tree",
            "bin/base32",
            "bin/base64",
            "bin/.dot",
            "lib/ld-linux.so.2",
            "lib/x86_64/ld-linux-x86-64.so.2",
            "lib/deep/er/ld-linux.so.9",
            "lib/deep/ld-linux.so.1",
            ".hidden/f",
            "{a,b}/c",
            "a",
        ] {
            fs::write(d.join(file), "").unwrap();
        }
        symlink(d.join("lib"), d.join("bin/liblink")).unwrap();
        symlink(d.join("nowhere"), d.join("bin/dangling")).unwrap();
        dir
    }

    /// The matches, relative to `root`.
    fn rel(root: &Path, pattern: &str) -> Vec<String> {
        paths(&format!("{}/{pattern}", root.display()))
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
            .collect()
    }

    /// What the `glob` crate (0.3.4) returned for the same tree and patterns.
    #[test]
    fn components_classes_and_recursion_read_as_the_glob_crate_did() {
        let t = tree();
        let r = t.path();
        assert_eq!(rel(r, "bin/base*"), ["bin/base32", "bin/base64"]);
        assert_eq!(rel(r, "bin/tr??"), ["bin/tree", "bin/true"]);
        assert_eq!(rel(r, "bin/tr[u]e"), ["bin/true"]);
        assert_eq!(rel(r, "bin/base[!3]4"), ["bin/base64"]);
        assert_eq!(rel(r, "bin/base[0-5]2"), ["bin/base32"]);
        // `*` matches a leading dot; symlinks (dangling ones too) are entries.
        assert_eq!(
            rel(r, "bin/*"),
            [
                "bin/.dot",
                "bin/base32",
                "bin/base64",
                "bin/dangling",
                "bin/liblink",
                "bin/tree",
                "bin/true"
            ]
        );
        assert_eq!(rel(r, "*/f"), [".hidden/f"]);
        // A literal component must exist; `/` is never matched by `*`.
        assert_eq!(rel(r, "bin/true"), ["bin/true"]);
        assert!(rel(r, "bin/false").is_empty());
        assert!(rel(r, "*true").is_empty());
        assert_eq!(rel(r, "bin/dangling"), ["bin/dangling"]);
        // Directories on the way, through a symlink too.
        assert_eq!(
            rel(r, "lib/*/ld-linux*.so*"),
            ["lib/deep/ld-linux.so.1", "lib/x86_64/ld-linux-x86-64.so.2"]
        );
        assert_eq!(rel(r, "bin/liblink/ld-*"), ["bin/liblink/ld-linux.so.2"]);
        // `**`: zero or more directories; at the end, every directory below.
        assert_eq!(
            rel(r, "lib/**/ld-linux.so.*"),
            [
                "lib/deep/er/ld-linux.so.9",
                "lib/deep/ld-linux.so.1",
                "lib/ld-linux.so.2"
            ]
        );
        assert_eq!(rel(r, "lib/**"), ["lib/deep", "lib/deep/er", "lib/x86_64"]);
        assert_eq!(rel(r, "lib/**/**/er"), ["lib/deep/er"]);
        // Braces and backslashes are plain characters.
        assert_eq!(rel(r, "{a,b}/*"), ["{a,b}/c"]);
        assert_eq!(rel(r, "{a,b*"), ["{a,b}"]);
        assert!(rel(r, "[{]a,b[}]/\\c").is_empty());
        // A trailing `/`: directories only.
        assert_eq!(rel(r, "li*/"), ["lib"]);
        assert_eq!(rel(r, "lib/*/"), ["lib/deep", "lib/x86_64"]);
    }

    #[test]
    fn dot_entries_and_bad_patterns() {
        let t = tree();
        let r = t.path();
        // The glob crate named `lib/.` and `lib/..` here.
        assert!(rel(r, "lib/.*").is_empty());
        assert!(matches!(paths("/usr/a**"), Err(PatternError::Recursive)));
        assert!(matches!(paths("/usr/***"), Err(PatternError::Recursive)));
        assert!(matches!(paths("/usr/[ab"), Err(PatternError::Component(_))));
        assert!(paths("").unwrap().is_empty());
    }

    #[test]
    fn braces_stay_plain_and_a_leading_caret_is_a_member() {
        assert_eq!(as_globset("a{b,c}*"), "a[{]b,c[}]*");
        assert_eq!(as_globset("[{]x"), "[{]x");
        assert_eq!(as_globset("[]{]{"), "[]{][{]");
        assert_eq!(as_globset("[!]{]{"), "[!]{][{]");
        assert_eq!(as_globset("[^ab]"), "[ab^]");
        assert_eq!(as_globset("[!^a]"), "[!a^]");
        assert_eq!(as_globset("x[^]"), "x^");
        assert_eq!(as_globset("[a"), "[a");
        let t = tree();
        let r = t.path();
        fs::write(r.join("bin/^x"), "").unwrap();
        assert_eq!(rel(r, "bin/[^t]x"), ["bin/^x"]);
        assert_eq!(rel(r, "bin/[^]x"), ["bin/^x"]);
        assert_eq!(rel(r, "bin/tr[!^u]e"), ["bin/tree"]);
    }
}
