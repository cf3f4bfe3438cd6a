//! Tracepoint field offsets from tracefs `format` files.
//!
//! A format file lists each field as
//! `field:<decl>;\toffset:<n>;\tsize:<n>;\tsigned:<n>;`; offsets differ between
//! kernels, so they are read at start-up, never assumed.

use std::{fs, path::Path};

use sensor_common::config::{ABSENT, SYSCALL_ARGS_OFFSET, SYSCALL_RET_OFFSET, TracepointOffsets};

use super::{
    LoaderError,
    programs::{Attach, PROBES},
};

/// One field of a tracepoint format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// Parses the text of a `format` file into its fields.
#[must_use]
pub fn parse_format(text: &str) -> Vec<Field> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let decl = line.strip_prefix("field:")?.split(';').next()?;
            // The name is the last identifier once array brackets are removed:
            // `char comm[16]` and `__data_loc char[] filename` both work.
            let mut plain = String::with_capacity(decl.len());
            let mut depth = 0u32;
            for c in decl.chars() {
                match c {
                    '[' => depth += 1,
                    ']' => depth = depth.saturating_sub(1),
                    _ if depth == 0 => plain.push(c),
                    _ => {}
                }
            }
            let name = plain.trim().rsplit([' ', '*']).next()?.to_owned();
            let value = |key: &str| -> Option<u32> {
                line.split(';')
                    .map(str::trim)
                    .find_map(|part| part.strip_prefix(key))
                    .and_then(|v| v.trim().parse().ok())
            };
            Some(Field {
                name,
                offset: value("offset:")?,
                size: value("size:")?,
            })
        })
        .collect()
}

/// A tracepoint's fields, read from `<tracefs>/events/<category>/<name>/format`.
pub struct Format {
    category: &'static str,
    name: &'static str,
    fields: Vec<Field>,
}

impl Format {
    /// Reads a format file; a missing tracepoint is an error that names it.
    pub fn read(
        tracefs: &Path,
        category: &'static str,
        name: &'static str,
    ) -> Result<Self, LoaderError> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = fs::read_to_string(&path).map_err(|source| LoaderError::Tracepoint {
            category,
            name,
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            category,
            name,
            fields: parse_format(&text),
        })
    }

    /// Offset of a field that must exist, checked against its expected size.
    pub fn offset(&self, field: &'static str, size: u32) -> Result<u32, LoaderError> {
        match self.fields.iter().find(|f| f.name == field) {
            Some(f) if f.size == size => Ok(f.offset),
            Some(f) => Err(LoaderError::TracepointField {
                category: self.category,
                name: self.name,
                field,
                detail: format!("size {} where {size} was expected", f.size),
            }),
            None => Err(LoaderError::TracepointField {
                category: self.category,
                name: self.name,
                field,
                detail: "no such field".to_owned(),
            }),
        }
    }

    /// Offset of a field that older kernels lack.
    #[must_use]
    pub fn optional_offset(&self, field: &str) -> u32 {
        self.fields
            .iter()
            .find(|f| f.name == field)
            .map_or(ABSENT, |f| f.offset)
    }
}

/// Reads every tracepoint offset the programs use, and checks that every
/// syscall tracepoint of the probe table has its record where the programs
/// read it with plain loads ([`SYSCALL_ARGS_OFFSET`], [`SYSCALL_RET_OFFSET`]).
pub fn tracepoint_offsets(tracefs: &Path) -> Result<TracepointOffsets, LoaderError> {
    let exec = Format::read(tracefs, "sched", "sched_process_exec")?;
    let exit = Format::read(tracefs, "sched", "sched_process_exit")?;
    for probe in PROBES {
        if let Attach::Tracepoint {
            category: "syscalls",
            name,
        } = probe.attach
        {
            check_syscall_record(tracefs, name)?;
        }
    }
    Ok(TracepointOffsets {
        exec_filename: exec.offset("filename", 4)?,
        exec_old_pid: exec.offset("old_pid", 4)?,
        exit_group_dead: exit.optional_offset("group_dead"),
    })
}

/// Checks `syscalls/name`'s record against the offsets compiled into the
/// programs: `ret` of a `sys_exit_*`; the first argument (the field after
/// `__syscall_nr`, 8 bytes) of a `sys_enter_*`.
fn check_syscall_record(tracefs: &Path, name: &'static str) -> Result<(), LoaderError> {
    let format = Format::read(tracefs, "syscalls", name)?;
    let (field, offset, expected) = if name.starts_with("sys_exit_") {
        ("ret", format.offset("ret", 8)?, SYSCALL_RET_OFFSET)
    } else {
        let first = format
            .fields
            .iter()
            .skip_while(|f| f.name != "__syscall_nr")
            .nth(1)
            .filter(|f| f.size == 8)
            .ok_or_else(|| LoaderError::TracepointField {
                category: "syscalls",
                name,
                field: "args",
                detail: "no 8-byte argument after __syscall_nr".to_owned(),
            })?;
        ("args", first.offset, SYSCALL_ARGS_OFFSET)
    };
    if offset == expected {
        return Ok(());
    }
    Err(LoaderError::TracepointField {
        category: "syscalls",
        name,
        field,
        detail: format!(
            "at offset {offset}, where the programs read it at {expected} \
             (the layout of struct syscall_trace_enter/exit)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXEC: &str = "name: sched_process_exec
ID: 365
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;

print fmt: \"filename=%s pid=%d old_pid=%d\", __get_str(filename), REC->pid, REC->old_pid
";

    #[test]
    fn parses_fields() {
        let fields = parse_format(EXEC);
        let names: Vec<_> = fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["common_type", "common_pid", "filename", "pid", "old_pid"]
        );
        assert_eq!(fields[2].offset, 8);
        assert_eq!(fields[4].offset, 16);
    }

    #[test]
    fn pointer_and_array_declarations() {
        let text = "\tfield:const char *const * argv;\toffset:24;\tsize:8;\tsigned:0;\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;";
        let fields = parse_format(text);
        assert_eq!(fields[0].name, "argv");
        assert_eq!(fields[0].offset, 24);
        assert_eq!(fields[1].name, "comm");
        assert_eq!(fields[1].size, 16);
    }

    #[test]
    fn wrong_size_and_missing_field_are_errors() {
        let f = Format {
            category: "sched",
            name: "sched_process_exec",
            fields: parse_format(EXEC),
        };
        assert_eq!(f.offset("old_pid", 4).unwrap(), 16);
        assert!(
            f.offset("old_pid", 8)
                .unwrap_err()
                .to_string()
                .contains("old_pid")
        );
        assert!(f.offset("nope", 4).is_err());
        assert_eq!(f.optional_offset("nope"), ABSENT);
    }

    #[test]
    fn missing_tracepoint_names_it() {
        let err = Format::read(Path::new("/nonexistent"), "sched", "sched_process_exec")
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("sched/sched_process_exec"),
            "{err}"
        );
    }

    /// A `syscalls/` format file in a fake tracefs: `__syscall_nr` at 8,
    /// then `field` (8 bytes) at `offset`.
    fn syscall_format(tracefs: &Path, name: &str, field: &str, offset: u32) {
        let dir = tracefs.join("events/syscalls").join(name);
        fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "name: {name}\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
             \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
             \tfield:long {field};\toffset:{offset};\tsize:8;\tsigned:1;\n"
        );
        fs::write(dir.join("format"), text).unwrap();
    }

    /// The programs read syscall records at compiled-in offsets: a kernel
    /// whose format files put them elsewhere is refused, with the field
    /// named, never read at the wrong place.
    #[test]
    fn syscall_records_other_than_the_programs_are_refused() {
        let tracefs = tempfile::tempdir().unwrap();
        let t = tracefs.path();
        syscall_format(t, "sys_exit_connect", "ret", SYSCALL_RET_OFFSET);
        syscall_format(t, "sys_enter_connect", "fd", SYSCALL_ARGS_OFFSET);
        check_syscall_record(t, "sys_exit_connect").unwrap();
        check_syscall_record(t, "sys_enter_connect").unwrap();
        syscall_format(t, "sys_exit_listen", "ret", SYSCALL_RET_OFFSET + 8);
        let err = check_syscall_record(t, "sys_exit_listen")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("syscalls/sys_exit_listen") && err.contains("field ret: at offset 24"),
            "{err}"
        );
        syscall_format(t, "sys_enter_kill", "pid", SYSCALL_ARGS_OFFSET + 8);
        let err = check_syscall_record(t, "sys_enter_kill")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("syscalls/sys_enter_kill") && err.contains("field args: at offset 24"),
            "{err}"
        );
    }
}
