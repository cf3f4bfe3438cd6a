//! Text for the analyst's terminal. Everything a text view prints that came
//! from an event, the store or the daemon (argv, exe, agent, principal,
//! labels, error strings…) was chosen by the processes the sensor watches, so
//! it goes through [`escape_terminal`] first: a watched agent must not be able
//! to move the cursor, erase or recolour lines, set the window title, break the
//! one-line-per-event layout, or reorder text with a bidi override.
//!
//! The escapes use the notation of bash's `$'…'` and `printf`:
//!
//! | what | shown as |
//! |---|---|
//! | TAB, LF, CR | `\t`, `\n`, `\r` |
//! | other C0 controls, DEL (U+0000–U+001F, U+007F) | `\xHH` (`\x1b`, `\x00`, `\x7f`) |
//! | C1 controls (U+0080–U+009F), every format character (Unicode category Cf: bidi embeddings, overrides, isolates and marks, zero-width space/joiners, word joiner, BOM, soft hyphen, tag characters…), line and paragraph separators (U+2028, U+2029) | `\uHHHH` (`\u202e`, `\u009b`), `\UHHHHHHHH` above U+FFFF |
//! | a backslash | `\\` |
//! | a byte that is not UTF-8, where the raw bytes are known (`argv_b64`, `exe_b64`) | `\xHH` |
//!
//! Hex digits are lowercase. The backslash is doubled so that a process cannot
//! forge an escape: a shown `\x1b` always was an ESC. Everything else (printable
//! text in any script, emoji) is shown as it is. JSON outputs (`--json`) are
//! not escaped: JSON escapes control characters itself and consumers want the
//! exact strings.

use std::{borrow::Cow, fmt::Write as _};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use serde_json::Value;

/// Format characters (Unicode general category Cf), as inclusive ranges.
const FORMAT: &[(char, char)] = &[
    ('\u{00ad}', '\u{00ad}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061c}', '\u{061c}'),
    ('\u{06dd}', '\u{06dd}'),
    ('\u{070f}', '\u{070f}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08e2}', '\u{08e2}'),
    ('\u{180e}', '\u{180e}'),
    ('\u{200b}', '\u{200f}'),
    ('\u{202a}', '\u{202e}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206f}'),
    ('\u{feff}', '\u{feff}'),
    ('\u{fff9}', '\u{fffb}'),
    ('\u{110bd}', '\u{110bd}'),
    ('\u{110cd}', '\u{110cd}'),
    ('\u{13430}', '\u{1343f}'),
    ('\u{1bca0}', '\u{1bca3}'),
    ('\u{1d173}', '\u{1d17a}'),
    ('\u{e0001}', '\u{e0001}'),
    ('\u{e0020}', '\u{e007f}'),
];

/// Whether a non-ASCII character must be escaped: a C1 control, a format
/// character, a line or paragraph separator.
fn hidden(c: char) -> bool {
    ('\u{80}'..='\u{9f}').contains(&c)
        || c == '\u{2028}'
        || c == '\u{2029}'
        || FORMAT.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// What [`escape_into`] keeps as it is.
#[derive(Clone, Copy)]
struct Keep {
    newline: bool,
    backslash: bool,
}

const KEEP_NOTHING: Keep = Keep {
    newline: false,
    backslash: false,
};

fn needs_escape(c: char, keep: Keep) -> bool {
    match c {
        '\n' => !keep.newline,
        '\\' => !keep.backslash,
        c if c.is_ascii() => c.is_ascii_control(),
        c => hidden(c),
    }
}

fn push_escape(out: &mut String, c: char) {
    let _ = match c {
        '\t' => out.write_str("\\t"),
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\\' => out.write_str("\\\\"),
        c if c.is_ascii() => write!(out, "\\x{:02x}", c as u32),
        c if (c as u32) <= 0xffff => write!(out, "\\u{:04x}", c as u32),
        c => write!(out, "\\U{:08x}", c as u32),
    };
}

fn escape_with(s: &str, keep: Keep) -> Cow<'_, str> {
    let Some(first) = s.find(|c| needs_escape(c, keep)) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 16);
    out.push_str(&s[..first]);
    for c in s[first..].chars() {
        if needs_escape(c, keep) {
            push_escape(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` as a text view shows it: control characters, bidi and other invisible
/// format characters as visible escapes (see the module doc), a backslash as
/// `\\`. Borrows when nothing needs escaping (the common case).
#[must_use]
pub fn escape_terminal(s: &str) -> Cow<'_, str> {
    escape_with(s, KEEP_NOTHING)
}

/// An error or refusal message for stderr: the escapes of [`escape_terminal`],
/// but line ends stay (a config error shows the offending line under its
/// position) and backslashes are not doubled (messages quote the values they
/// name with Rust's `{:?}`, which already escapes them).
#[must_use]
pub fn escape_message(s: &str) -> Cow<'_, str> {
    escape_with(
        s,
        Keep {
            newline: true,
            backslash: true,
        },
    )
}

/// Raw bytes as a text view shows them: UTF-8 parts as [`escape_terminal`],
/// every byte that is not UTF-8 as `\xHH`.
#[must_use]
pub fn escape_terminal_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(&escape_terminal(chunk.valid()));
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// A JSON value as a text view shows it: a string escaped, anything else
/// (a number, null) as JSON, escaped too.
#[must_use]
pub fn shown_value(v: &Value) -> String {
    match v {
        Value::String(s) => escape_terminal(s).into_owned(),
        Value::Null => String::new(),
        v => escape_terminal(&v.to_string()).into_owned(),
    }
}

/// A count from an event, with its noun: `1 event`, `3 events` (shown as
/// [`shown_value`] shows it).
#[must_use]
pub fn count_value(v: &Value, one: &str, many: &str) -> String {
    format!(
        "{} {}",
        shown_value(v),
        if v.as_u64() == Some(1) { one } else { many }
    )
}

/// The string at `ptr` in `v`, escaped ("" when absent or not a string).
#[must_use]
pub fn shown_str<'a>(v: &'a Value, ptr: &str) -> Cow<'a, str> {
    escape_terminal(v.pointer(ptr).and_then(Value::as_str).unwrap_or_default())
}

/// The exe of an event's `process` object, escaped; from `exe_b64` (the raw
/// path) when the path is not UTF-8, so its odd bytes show as `\xHH` and not
/// as the `\\xHH` of the JSON text. `None` when the event has no exe.
#[must_use]
pub fn exe_shown(process: &Value) -> Option<String> {
    if let Some(raw) = process
        .get("exe_b64")
        .and_then(Value::as_str)
        .and_then(|b| B64.decode(b).ok())
    {
        return Some(escape_terminal_bytes(&raw));
    }
    process
        .get("exe")
        .and_then(Value::as_str)
        .map(|s| escape_terminal(s).into_owned())
}

/// The arguments of an event's `process` object, each escaped; from
/// `argv_b64` (the raw argv area) when some argument is not UTF-8, like
/// [`exe_shown`]. `None` when the event has no argv.
#[must_use]
pub fn argv_shown(process: &Value) -> Option<Vec<String>> {
    let argv = process.get("argv").and_then(Value::as_array)?;
    if let Some(raw) = process
        .get("argv_b64")
        .and_then(Value::as_str)
        .and_then(|b| B64.decode(b).ok())
    {
        let args = crate::event::text::split_argv(&raw);
        // The same split the daemon made; anything else is not this argv.
        if args.len() == argv.len() {
            return Some(args.into_iter().map(escape_terminal_bytes).collect());
        }
    }
    Some(
        argv.iter()
            .filter_map(Value::as_str)
            .map(|a| escape_terminal(a).into_owned())
            .collect(),
    )
}

/// `n` and its noun, singular or plural: `1 policy`, `2 policies`.
#[must_use]
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A column of a [`text_table`].
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Width of its cells at least (wider text widens the column).
    pub width: u16,
    /// Spaces after it (none after the last column).
    pub gap: u16,
    /// Right-aligned (numbers).
    pub right: bool,
}

impl Column {
    /// Left-aligned, at least `width` wide, two spaces to the next column.
    #[must_use]
    pub const fn left(width: u16) -> Self {
        Self {
            width,
            gap: 2,
            right: false,
        }
    }

    /// Right-aligned, at least `width` wide, two spaces to the next column.
    #[must_use]
    pub const fn right(width: u16) -> Self {
        Self {
            width,
            gap: 2,
            right: true,
        }
    }

    /// This column with `gap` spaces to the next one.
    #[must_use]
    pub const fn gap(self, gap: u16) -> Self {
        Self { gap, ..self }
    }
}

/// The lines of a text table (`comfy-table`): no borders, each column
/// padded to its width, the last one not padded, no trailing blanks.
/// `header` is the first line when given. Every cell must be text as shown
/// already ([`escape_terminal`]): a raw line end would split a row.
#[must_use]
pub fn text_table(
    columns: &[Column],
    header: Option<&[&str]>,
    rows: Vec<Vec<String>>,
) -> Vec<String> {
    use comfy_table::{CellAlignment, ColumnConstraint, Table, Width, presets::NOTHING};
    let mut table = Table::new();
    table.load_style(NOTHING);
    if let Some(header) = header {
        table.set_header(header.to_vec());
    }
    table.add_rows(rows);
    let last = columns.len().saturating_sub(1);
    for (i, (column, spec)) in table.column_iter_mut().zip(columns).enumerate() {
        let gap = if i == last { 0 } else { spec.gap };
        column.set_padding((0, gap));
        if spec.width > 0 {
            column.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(
                spec.width.saturating_add(gap),
            )));
        }
        if spec.right {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table.lines().map(|l| l.trim_end().to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_like_format_did() {
        let columns = [Column::left(6), Column::right(3), Column::left(0)];
        let row = |a: &str, b: &str, c: &str| vec![a.to_owned(), b.to_owned(), c.to_owned()];
        let lines = text_table(
            &columns,
            Some(&["NAME", "N", "END"]),
            vec![row("a", "7", "last one "), row("abcdef", "123", "x")],
        );
        assert_eq!(
            lines,
            [
                format!("{:<6}  {:>3}  END", "NAME", "N"),
                format!("{:<6}  {:>3}  last one", "a", "7"),
                format!("{:<6}  {:>3}  x", "abcdef", "123"),
            ]
        );
        // Wider text widens its column, for every row; a gap of one.
        let lines = text_table(
            &[Column::left(2).gap(1), Column::left(0)],
            None,
            vec![
                vec!["abcd".to_owned(), "x".to_owned()],
                vec!["a".to_owned(), "y".to_owned()],
            ],
        );
        assert_eq!(lines, ["abcd x", "a    y"]);
    }

    #[test]
    fn plain_text_is_borrowed() {
        for s in [
            "",
            "/usr/bin/curl -s https://example.com/?a=1&b=2",
            "héllo wörld ✓ 日本語 🙂 العربية",
            "quotes \" ' and $ signs",
        ] {
            assert!(
                matches!(escape_terminal(s), Cow::Borrowed(b) if b == s),
                "{s}"
            );
        }
    }

    #[test]
    fn controls_are_shown_as_escapes() {
        assert_eq!(
            escape_terminal("innocent\r\x1b[2Kls -la\x1b[31m"),
            r"innocent\r\x1b[2Kls -la\x1b[31m"
        );
        assert_eq!(escape_terminal("a\nb\tc"), r"a\nb\tc");
        assert_eq!(escape_terminal("\0\x07\x08\x7f"), r"\x00\x07\x08\x7f");
        // C1: CSI, NEL, the OSC and ST introducers.
        assert_eq!(
            escape_terminal("\u{9b}31m\u{85}\u{9d}\u{9c}\u{80}"),
            r"\u009b31m\u0085\u009d\u009c\u0080"
        );
        assert_eq!(escape_terminal("\u{a0}"), "\u{a0}", "NBSP is printable");
    }

    #[test]
    fn bidi_and_invisible_characters_are_shown_as_escapes() {
        assert_eq!(escape_terminal("\u{202e}fdp.exe"), r"\u202efdp.exe");
        assert_eq!(
            escape_terminal("\u{202a}\u{202b}\u{202c}\u{202d}\u{2066}\u{2067}\u{2068}\u{2069}"),
            r"\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069"
        );
        assert_eq!(
            escape_terminal("\u{200e}\u{200f}\u{61c}"),
            r"\u200e\u200f\u061c"
        );
        assert_eq!(
            escape_terminal("a\u{200b}b\u{200c}c\u{200d}d\u{feff}e\u{2060}f"),
            r"a\u200bb\u200cc\u200dd\ufeffe\u2060f"
        );
        assert_eq!(escape_terminal("\u{2028}\u{2029}"), r"\u2028\u2029");
        assert_eq!(escape_terminal("soft\u{ad}hyphen"), r"soft\u00adhyphen");
        // Tag characters hide ASCII text in plain sight.
        assert_eq!(
            escape_terminal("ok\u{e0041}\u{e007f}"),
            r"ok\U000e0041\U000e007f"
        );
    }

    #[test]
    fn a_backslash_cannot_forge_an_escape() {
        assert_eq!(escape_terminal(r"\x1b[0m"), r"\\x1b[0m");
        assert_eq!(escape_terminal("\\"), r"\\");
        // A real ESC and the text "\x1b" differ once shown.
        assert_ne!(escape_terminal("\x1b"), escape_terminal(r"\x1b"));
    }

    #[test]
    fn every_control_and_format_character_is_escaped() {
        for c in (0..=0x10ffff_u32).filter_map(char::from_u32) {
            let shown = escape_terminal(c.encode_utf8(&mut [0; 4])).into_owned();
            assert!(
                !shown.chars().any(|s| s.is_control() || hidden(s)),
                "U+{:04X} shown as {shown:?}",
                c as u32
            );
            if c.is_control() || hidden(c) {
                assert!(
                    shown.starts_with('\\') && shown.len() >= 2,
                    "U+{:04X}",
                    c as u32
                );
            }
        }
    }

    #[test]
    fn messages_keep_lines_and_backslashes() {
        assert_eq!(
            escape_message("bad.toml:3:1\n  |\n3 | a = \"\x1b[2J\\\"\n"),
            "bad.toml:3:1\n  |\n3 | a = \"\\x1b[2J\\\"\n"
        );
        assert_eq!(escape_message("ag\u{202e}x\r"), r"ag\u202ex\r");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_shown_as_bytes() {
        assert_eq!(
            escape_terminal_bytes(b"raw\xffbyte\x1b"),
            r"raw\xffbyte\x1b"
        );
        assert_eq!(escape_terminal_bytes(br"\xff"), r"\\xff");
        assert_eq!(escape_terminal_bytes("é\u{202e}".as_bytes()), r"é\u202e");
    }

    #[test]
    fn argv_and_exe_come_from_the_raw_bytes_when_not_utf8() {
        // As the daemon writes it: argv with `\xNN` text, argv_b64 the area.
        let area = b"/bin/echo\0raw\xffbyte\0\\xff\0";
        let p = serde_json::json!({
            "argv": ["/bin/echo", "raw\\xffbyte", "\\xff"],
            "argv_b64": B64.encode(area),
            "exe": "/tmp/a\n\\xfe",
            "exe_b64": B64.encode(b"/tmp/a\n\xfe"),
        });
        assert_eq!(
            argv_shown(&p).unwrap(),
            ["/bin/echo", r"raw\xffbyte", r"\\xff"]
        );
        assert_eq!(exe_shown(&p).unwrap(), r"/tmp/a\n\xfe");
        // UTF-8: the JSON strings, escaped.
        let p = serde_json::json!({"argv": ["sh", "-c", "a\nb"], "exe": "/bin/\u{202e}sh"});
        assert_eq!(argv_shown(&p).unwrap(), ["sh", "-c", r"a\nb"]);
        assert_eq!(exe_shown(&p).unwrap(), r"/bin/\u202esh");
        // A b64 that does not match the argv is not used.
        let p = serde_json::json!({"argv": ["a\u{1b}"], "argv_b64": B64.encode(b"x\0y\0")});
        assert_eq!(argv_shown(&p).unwrap(), [r"a\x1b"]);
        assert_eq!(argv_shown(&serde_json::json!({})), None);
        assert_eq!(exe_shown(&serde_json::json!({})), None);
    }

    #[test]
    fn values() {
        assert_eq!(shown_value(&serde_json::json!(443)), "443");
        assert_eq!(shown_value(&serde_json::json!("a\u{1b}")), r"a\x1b");
        assert_eq!(shown_value(&Value::Null), "");
        let e = serde_json::json!({"run": {"agent": "x\u{2066}"}});
        assert_eq!(shown_str(&e, "/run/agent"), r"x\u2066");
        assert_eq!(shown_str(&e, "/run/missing"), "");
    }
}
