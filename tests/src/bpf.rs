//! The kernel's BPF objects as the tests see them from outside the daemon:
//! `bpftool` for links and pinned maps, aya's program listing for programs.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result, anyhow, bail, ensure};
use aya::programs::{ProgramError, loaded_programs};
use serde_json::Value;

use crate::{compact, run_child, text, truncate};

/// `bpftool ARGS`, whatever its exit status (`cargo xtask setup` installs
/// bpftool).
pub fn bpftool(args: &[&str]) -> Result<Output> {
    let (_, out) = run_child(Command::new("bpftool").args(args))?;
    Ok(out)
}

/// `bpftool -j ARGS`, parsed; fails with bpftool's stderr when it fails.
pub fn bpftool_json(args: &[&str]) -> Result<Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = bpftool(&full)?;
    ensure!(
        out.status.success(),
        "bpftool {}: {}; stderr {:?}",
        args.join(" "),
        out.status,
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "bpftool -j {} printed invalid JSON: {:?}",
            args.join(" "),
            truncate(&text(&out.stdout), 500)
        )
    })
}

/// Every BPF link in the kernel (`bpftool -j link show`).
pub fn bpf_links() -> Result<Vec<Value>> {
    match bpftool_json(&["link", "show"])? {
        Value::Array(links) => Ok(links),
        Value::Null => Ok(Vec::new()),
        other => bail!("bpftool -j link show printed {}", compact(&other)),
    }
}

/// The links of program `prog_id`.
pub fn links_of_prog(prog_id: u32) -> Result<Vec<Value>> {
    Ok(bpf_links()?
        .into_iter()
        .filter(|l| l["prog_id"] == prog_id)
        .collect())
}

/// Whether link `l` (from [`bpf_links`]) is attached: a cgroup link that
/// was detached reports cgroup id 0; other kinds cannot be detached.
pub fn link_attached(l: &Value) -> bool {
    l["type"] != "cgroup" || l["cgroup_id"].as_u64().is_some_and(|id| id != 0)
}

/// The bytes of a `bpftool -j map dump` key or value (`["0x01", ...]`).
pub fn hex_bytes(v: &Value) -> Result<Vec<u8>> {
    v.as_array()
        .ok_or_else(|| anyhow!("not a byte array: {}", compact(v)))?
        .iter()
        .map(|b| {
            let s = b.as_str().unwrap_or("");
            u8::from_str_radix(s.trim_start_matches("0x"), 16)
                .with_context(|| format!("byte {b} of {}", compact(v)))
        })
        .collect()
}

/// `bytes` as bpftool's `hex ..` arguments.
pub fn hex_args(bytes: &[u8]) -> Vec<String> {
    std::iter::once("hex".to_owned())
        .chain(bytes.iter().map(|b| format!("{b:02x}")))
        .collect()
}

/// The entries of the map pinned at `path` as (key bytes, value bytes).
pub fn map_dump(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let path = path.to_string_lossy();
    let dump = bpftool_json(&["map", "dump", "pinned", &path])?;
    dump.as_array()
        .ok_or_else(|| anyhow!("bpftool map dump {path}: {}", compact(&dump)))?
        .iter()
        .map(|e| Ok((hex_bytes(&e["key"])?, hex_bytes(&e["value"])?)))
        .collect()
}

/// `bpftool map update pinned PATH key hex .. value hex ..`.
pub fn map_update(path: &Path, key: &[u8], value: &[u8]) -> Result<()> {
    let path = path.to_string_lossy();
    let mut args: Vec<String> = ["map", "update", "pinned", &path, "key"]
        .iter()
        .map(ToString::to_string)
        .collect();
    args.extend(hex_args(key));
    args.push("value".to_owned());
    args.extend(hex_args(value));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = bpftool(&args)?;
    ensure!(
        out.status.success(),
        "bpftool {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
    Ok(())
}

/// `bpftool map delete pinned PATH key hex ..`.
pub fn map_delete(path: &Path, key: &[u8]) -> Result<()> {
    let path = path.to_string_lossy();
    let mut args: Vec<String> = ["map", "delete", "pinned", &path, "key"]
        .iter()
        .map(ToString::to_string)
        .collect();
    args.extend(hex_args(key));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = bpftool(&args)?;
    ensure!(
        out.status.success(),
        "bpftool {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
    Ok(())
}

// ----- BPF program ids -----

/// The kernel's name of BPF program `id` (at most 15 bytes), or `None` when
/// no program has that id: aya's walk over the loaded programs
/// (`BPF_PROG_GET_NEXT_ID`, then each one's info), so no bpftool.
pub fn prog_name(id: u32) -> Result<Option<String>> {
    for program in loaded_programs() {
        let program = match program {
            Ok(program) => program,
            // A program unloaded between the walk's steps: not `id`, or
            // `id` is gone, which the end of the walk says as well.
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                continue;
            }
            Err(e) => return Err(e).context("list the loaded BPF programs"),
        };
        if program.id() == id {
            return Ok(Some(text(program.name())));
        }
    }
    Ok(None)
}

/// Whether a BPF program with this id exists in the kernel.
pub fn prog_exists(id: u32) -> Result<bool> {
    Ok(prog_name(id)?.is_some())
}
