//! Folding the noise of a process tree: identical sibling commands (the same
//! exe, and argv equal apart from ids, numbers and temporary names) become
//! one row with a count (`git … ×13`), in `sensor tree`, `sensor replay` and
//! the HTML report; `--no-fold` shows every process. Long command lines are
//! cut to a width ([`cut`]).

use std::collections::{HashMap, HashSet, hash_map::Entry};

use super::query::ProcNode;

/// An argument as folding compares it: every run of digits, every hex or
/// alphanumeric id with a digit in it (a UUID's groups, a hash, a commit),
/// and the name under a temporary directory replaced by `#` or `*`.
///
/// `--pid=1234` and `--pid=99` compare equal; `/tmp/tmp.Xa81kq/f` and
/// `/tmp/tmp.b0QzzA/f` too; `status` and `log` do not.
#[must_use]
pub(super) fn normalize_arg(arg: &str) -> String {
    let arg = untemp(arg);
    let mut out = String::with_capacity(arg.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.is_empty() {
            return;
        }
        if word.chars().any(|c| c.is_ascii_digit()) {
            // A number, or an id that mixes digits in: one placeholder.
            out.push('#');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in arg.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// `arg` with the first path component under a temporary directory
/// (`/tmp/`, `/var/tmp/`, `/dev/shm/`) and `tmp.XXXX` names (mktemp's)
/// replaced by `*`.
fn untemp(arg: &str) -> String {
    let mut out = arg.to_owned();
    for dir in ["/tmp/", "/var/tmp/", "/dev/shm/"] {
        let mut from = 0;
        while let Some(at) = out[from..].find(dir) {
            let start = from + at + dir.len();
            let end = out[start..].find('/').map_or(out.len(), |e| start + e);
            out.replace_range(start..end, "*");
            from = start + 1;
        }
    }
    let mut from = 0;
    while let Some(at) = out[from..].find("tmp.") {
        let start = from + at + 4;
        let end = out[start..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(out.len(), |e| start + e);
        if end > start {
            out.replace_range(start..end, "*");
            from = start + 1;
        } else {
            from = start;
        }
    }
    out
}

/// The exe and the normalised argv ([`fold_key`]).
pub(super) type FoldKey = (String, Vec<String>);

/// What makes two processes "the same command": the exe and the normalised
/// argv (the process's last exec).
#[must_use]
pub(super) fn fold_key(node: &ProcNode) -> FoldKey {
    (
        node.exe.clone(),
        node.argv.iter().map(|a| normalize_arg(a)).collect(),
    )
}

/// Siblings in groups: each group is one row, its first member first; a
/// group of one is a process shown alone. With `fold` false every process
/// is a group of its own. Groups keep the order of their first members.
/// A process that never exec'd (no argv) is never folded, nor is one a
/// policy denied something or that attempted an escape: it is not noise,
/// and each view shows it on its own row, marked.
#[must_use]
pub(super) fn group<'a>(siblings: &[&'a ProcNode], fold: bool) -> Vec<Vec<&'a ProcNode>> {
    let mut groups: Vec<Vec<&'a ProcNode>> = Vec::new();
    // Processes of different tool calls are never one row.
    let mut index: HashMap<(Option<String>, FoldKey), usize> = HashMap::new();
    for &node in siblings {
        if !fold || node.argv.is_empty() || node.denial.is_some() || node.escape {
            groups.push(vec![node]);
            continue;
        }
        match index.entry((node.tool_call.clone(), fold_key(node))) {
            Entry::Occupied(i) => groups[*i.get()].push(node),
            Entry::Vacant(slot) => {
                slot.insert(groups.len());
                groups.push(vec![node]);
            }
        }
    }
    groups
}

/// A row of a process tree among siblings.
#[derive(Debug)]
pub(super) enum Row<'a> {
    /// A process, or identical siblings folded.
    Group(Vec<&'a ProcNode>),
    /// A tool call (its id) that begins here, and the rows of its processes.
    Call(&'a str, Vec<Vec<&'a ProcNode>>),
}

/// The rows of siblings whose parent belongs to `parent_call`: the groups
/// of [`group`], those of a tool call other than the parent's gathered
/// under one [`Row::Call`] per call, each where its first process is.
#[must_use]
pub(super) fn rows<'a>(
    siblings: &[&'a ProcNode],
    parent_call: Option<&str>,
    fold: bool,
) -> Vec<Row<'a>> {
    let mut rows: Vec<Row<'a>> = Vec::new();
    let mut at: HashMap<&'a str, usize> = HashMap::new();
    for g in group(siblings, fold) {
        let call = g
            .first()
            .and_then(|lead| lead.tool_call.as_deref())
            .filter(|c| Some(*c) != parent_call);
        match call {
            None => rows.push(Row::Group(g)),
            Some(id) => match at.get(id) {
                Some(&i) => {
                    if let Some(Row::Call(_, groups)) = rows.get_mut(i) {
                        groups.push(g);
                    }
                }
                None => {
                    at.insert(id, rows.len());
                    rows.push(Row::Call(id, vec![g]));
                }
            },
        }
    }
    rows
}

/// A run's processes by parent: children in order of first appearance,
/// and the roots (whose parent is not in the run).
#[derive(Debug, Default)]
pub(super) struct Kids<'a> {
    children: HashMap<&'a str, Vec<&'a ProcNode>>,
    pub roots: Vec<&'a ProcNode>,
}

impl<'a> Kids<'a> {
    #[must_use]
    pub(super) fn new(all: &'a [ProcNode]) -> Self {
        let keys: HashSet<&str> = all.iter().map(|n| n.key.as_str()).collect();
        let mut kids = Self::default();
        for n in all {
            // A process that names itself its parent is a root: no cycle.
            if keys.contains(n.parent_key.as_str()) && n.parent_key != n.key {
                kids.children
                    .entry(n.parent_key.as_str())
                    .or_default()
                    .push(n);
            } else {
                kids.roots.push(n);
            }
        }
        kids
    }

    /// The children of `parent`.
    #[must_use]
    pub(super) fn of(&self, parent: &ProcNode) -> &[&'a ProcNode] {
        self.children
            .get(parent.key.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// How many processes descend from `node` (not counting it).
    #[must_use]
    pub(super) fn descendants(&self, node: &ProcNode) -> usize {
        let mut count = 0;
        let mut stack: Vec<&ProcNode> = self.of(node).to_vec();
        let mut seen: HashSet<&str> = HashSet::new();
        while let Some(n) = stack.pop() {
            if seen.insert(n.key.as_str()) {
                count += 1;
                stack.extend_from_slice(self.of(n));
            }
        }
        count
    }
}

/// `s` (text as shown) cut to `max` characters with a final `…`, and
/// whether it was cut.
#[must_use]
pub(super) fn cut(s: &str, max: usize) -> (String, bool) {
    if s.chars().count() <= max {
        (s.to_owned(), false)
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        (out, true)
    }
}

/// The label of a row, at most `max` characters: a process's
/// [`ProcNode::label`]; a folded group's first command, then ` ×N`, which
/// the cut never takes (`git -c hook.a=false … ×13`).
#[must_use]
pub(super) fn group_label(group: &[&ProcNode], max: usize) -> String {
    match group {
        [] => String::new(),
        [one] => cut(&one.label(), max).0,
        [first, ..] => {
            let count = format!(" ×{}", group.len());
            let room = max.saturating_sub(count.chars().count()).max(8);
            format!("{}{count}", cut(&first.command(), room).0)
        }
    }
}

/// The children of every member of a row, merged (the children of 13
/// folded `bash -c …` fold in turn).
#[must_use]
pub(super) fn group_children<'a>(group: &[&ProcNode], kids: &Kids<'a>) -> Vec<&'a ProcNode> {
    group
        .iter()
        .flat_map(|m| kids.of(m).iter().copied())
        .collect()
}

/// Which processes of a run fold under another, for views that go event by
/// event (`replay`): `hidden` are the members after a group's first,
/// `counts` the size of each group by its first member's key.
#[derive(Debug, Default)]
pub(super) struct Folded {
    pub hidden: HashSet<String>,
    pub counts: HashMap<String, usize>,
}

/// The folding of a run's processes (`all`, from [`super::query::processes`]).
#[must_use]
pub(super) fn folded(all: &[ProcNode], fold: bool) -> Folded {
    fn walk(siblings: &[&ProcNode], kids: &Kids<'_>, fold: bool, out: &mut Folded) {
        for g in group(siblings, fold) {
            if g.len() > 1 {
                out.counts.insert(g[0].key.clone(), g.len());
                out.hidden.extend(g[1..].iter().map(|m| m.key.clone()));
            }
            walk(&group_children(&g, kids), kids, fold, out);
        }
    }
    let mut out = Folded::default();
    let kids = Kids::new(all);
    walk(&kids.roots, &kids, fold, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(key: &str, parent: &str, exe: &str, argv: &[&str]) -> ProcNode {
        ProcNode {
            key: key.into(),
            parent_key: parent.into(),
            exe: exe.into(),
            exe_shown: exe.into(),
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            argv_shown: argv.iter().map(|a| (*a).to_owned()).collect(),
            ..ProcNode::default()
        }
    }

    #[test]
    fn ids_numbers_and_temp_names_compare_equal() {
        let same = [
            ("--pid=1234", "--pid=99"),
            (
                "01a24360-9aa1-711c-92dd-3e4e3a792040",
                "01b00000-1234-7000-8000-deadbeef0001",
            ),
            ("/tmp/sensor-test-1-x/a.sock", "/tmp/other/a.sock"),
            ("/tmp/tmp.Xa81kq", "/tmp/tmp.b0QzzA"),
            ("tmp.Xa81kq/f", "tmp.b0QzzA/f"),
            ("hook.pre-commit=false", "hook.pre-commit=false"),
            ("abc123def", "0f9e8d7c"),
        ];
        for (a, b) in same {
            assert_eq!(normalize_arg(a), normalize_arg(b), "{a} ~ {b}");
        }
        for (a, b) in [
            ("status", "log"),
            ("/etc/passwd", "/etc/shadow"),
            ("-c", "-C"),
        ] {
            assert_ne!(normalize_arg(a), normalize_arg(b), "{a} !~ {b}");
        }
    }

    #[test]
    fn identical_siblings_fold_into_one_group_in_order() {
        let procs: Vec<ProcNode> = (0..13)
            .map(|i| {
                let pid = format!("--git-dir=/tmp/tmp.{i}x{i}/g");
                node(
                    &format!("g{i}"),
                    "p",
                    "/usr/bin/git",
                    &["git", "-c", "hook.a=false", &pid, "rev-parse", "HEAD"],
                )
            })
            .chain([
                node("b", "p", "/usr/bin/bash", &["bash", "-c", "ls"]),
                node("l", "p", "/usr/bin/git", &["git", "log"]),
                node("n", "p", "", &[]),
                node("n2", "p", "", &[]),
            ])
            .collect();
        let refs: Vec<&ProcNode> = procs.iter().collect();
        let groups = group(&refs, true);
        let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        assert_eq!(sizes, [13, 1, 1, 1, 1]);
        assert_eq!(groups[0][0].key, "g0");
        assert_eq!(groups[1][0].key, "b");
        let label = group_label(&groups[0], 30);
        assert!(label.ends_with("… ×13"), "{label}");
        assert_eq!(label.chars().count(), 30);
        assert!(label.starts_with("git -c hook.a=false"), "{label}");
        // --no-fold: every process on its own.
        assert_eq!(group(&refs, false).len(), procs.len());
        // A different exe with the same argv is another command.
        let other = [
            node("x", "p", "/usr/bin/git", &["git", "status"]),
            node("y", "p", "/opt/git", &["git", "status"]),
        ];
        let refs: Vec<&ProcNode> = other.iter().collect();
        assert_eq!(group(&refs, true).len(), 2);
    }

    /// Identical commands a policy denied, or that attempted an escape,
    /// are each a row of their own (with a mark), never folded away; the
    /// allowed ones beside them still fold.
    #[test]
    fn denied_and_escaping_siblings_are_never_folded() {
        use super::super::query::Denial;
        let mut procs: Vec<ProcNode> = (0..5)
            .map(|i| node(&format!("g{i}"), "p", "/usr/bin/git", &["git", "version"]))
            .collect();
        procs[1].denial = Some(Denial::Audit);
        procs[2].denial = Some(Denial::Blocked);
        procs[3].escape = true;
        let refs: Vec<&ProcNode> = procs.iter().collect();
        let groups = group(&refs, true);
        let keys: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|n| n.key.as_str()).collect())
            .collect();
        assert_eq!(keys, [vec!["g0", "g4"], vec!["g1"], vec!["g2"], vec!["g3"]]);
        let f = folded(&procs, true);
        assert_eq!(f.hidden, HashSet::from(["g4".to_owned()]));
        assert_eq!(procs[1].marks(), " [deny] would have been blocked (audit)");
        assert_eq!(procs[2].marks(), " [deny] blocked");
        assert_eq!(procs[3].marks(), " [escape attempt]");
    }

    #[test]
    fn children_of_folded_rows_fold_in_turn_and_replay_hides_the_rest() {
        let mut procs = vec![node("root", "", "/usr/bin/claude", &["claude", "-p", "x"])];
        for i in 0..3 {
            procs.push(node(
                &format!("b{i}"),
                "root",
                "/usr/bin/bash",
                &["bash", "-c", "st"],
            ));
            procs.push(node(
                &format!("g{i}"),
                &format!("b{i}"),
                "/usr/bin/git",
                &["git", "status"],
            ));
        }
        let f = folded(&procs, true);
        assert_eq!(f.counts.get("b0"), Some(&3));
        assert_eq!(f.counts.get("g0"), Some(&3));
        let mut hidden: Vec<&str> = f.hidden.iter().map(String::as_str).collect();
        hidden.sort_unstable();
        assert_eq!(hidden, ["b1", "b2", "g1", "g2"]);
        assert!(folded(&procs, false).hidden.is_empty());
    }

    #[test]
    fn a_process_is_labelled_by_its_first_and_last_exec() {
        let mut n = node("k", "", "/usr/bin/sensor", &["sensor", "launch"]);
        n.first_argv_shown = vec!["bash".into(), "-c".into(), "x".into()];
        n.execs = 2;
        assert_eq!(n.label(), "bash -c x => sensor launch");
        assert_eq!(group_label(&[&n], 12), "bash -c x =…");
        n.execs = 1;
        assert_eq!(n.label(), "sensor launch");
    }

    #[test]
    fn cut_counts_characters() {
        assert_eq!(cut("abc", 3), ("abc".to_owned(), false));
        assert_eq!(cut("abcdé", 3), ("ab…".to_owned(), true));
    }
}
