//! Kernel struct field offsets, read from the running kernel's BTF.
//!
//! The kernel programs cannot use CO-RE relocations (aya's Rust programs have
//! no `preserve_access_index`), so the loader resolves every field it reads
//! here and hands the offsets over as a global.

use std::path::Path;

use btf_rs::{Btf, Type};
use sensor_common::config::KernelOffsets;

use super::LoaderError;

/// Where the kernel exposes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Loads the kernel BTF and resolves the offsets the programs need.
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets, LoaderError> {
    if !path.exists() {
        return Err(LoaderError::NoBtf {
            path: path.to_owned(),
        });
    }
    let btf = Btf::from_file(path).map_err(|source| LoaderError::Btf {
        path: path.to_owned(),
        source,
    })?;
    let f = |s: &'static str, m: &'static str| field_offset(&btf, s, m);
    let (inode_ctime_sec, inode_ctime_nsec) = inode_ctime(&btf)?;
    Ok(KernelOffsets {
        task_tgid: f("task_struct", "tgid")?,
        task_pid: f("task_struct", "pid")?,
        task_real_parent: f("task_struct", "real_parent")?,
        task_group_leader: f("task_struct", "group_leader")?,
        task_start_boottime: f("task_struct", "start_boottime")?,
        task_mm: f("task_struct", "mm")?,
        task_fs: f("task_struct", "fs")?,
        task_signal: f("task_struct", "signal")?,
        task_exit_code: f("task_struct", "exit_code")?,
        task_comm: f("task_struct", "comm")?,
        mm_exe_file: f("mm_struct", "exe_file")?,
        mm_arg_start: f("mm_struct", "arg_start")?,
        mm_arg_end: f("mm_struct", "arg_end")?,
        mm_start_stack: f("mm_struct", "start_stack")?,
        file_f_path: f("file", "f_path")?,
        file_f_inode: f("file", "f_inode")?,
        path_mnt: f("path", "mnt")?,
        path_dentry: f("path", "dentry")?,
        fs_pwd: f("fs_struct", "pwd")?,
        dentry_d_parent: f("dentry", "d_parent")?,
        dentry_d_name: f("dentry", "d_name")?,
        dentry_d_inode: f("dentry", "d_inode")?,
        qstr_len: f("qstr", "len")?,
        qstr_name: f("qstr", "name")?,
        vfsmount_mnt_root: f("vfsmount", "mnt_root")?,
        mount_mnt: f("mount", "mnt")?,
        mount_mnt_parent: f("mount", "mnt_parent")?,
        mount_mnt_mountpoint: f("mount", "mnt_mountpoint")?,
        mount_mnt_id: f("mount", "mnt_id")?,
        signal_live: f("signal_struct", "live")?,
        signal_flags: f("signal_struct", "flags")?,
        signal_group_exit_code: f("signal_struct", "group_exit_code")?,
        inode_i_ino: f("inode", "i_ino")?,
        inode_i_sb: f("inode", "i_sb")?,
        sb_s_dev: f("super_block", "s_dev")?,
        task_thread_pid: f("task_struct", "thread_pid")?,
        pid_level: f("pid", "level")?,
        pid_numbers: f("pid", "numbers")?,
        upid_size: struct_size(&btf, "upid")?,
        upid_nr: f("upid", "nr")?,
        pt_regs_di: f("pt_regs", "di")?,
        pt_regs_si: f("pt_regs", "si")?,
        pt_regs_dx: f("pt_regs", "dx")?,
        pt_regs_orig_ax: f("pt_regs", "orig_ax")?,
        inode_ctime_sec,
        inode_ctime_nsec,
        sock_addr_uaddr: f("bpf_sock_addr_kern", "uaddr")?,
        sock_addr_uaddrlen: f("bpf_sock_addr_kern", "uaddrlen")?,
        task_files: f("task_struct", "files")?,
        files_fdt: f("files_struct", "fdt")?,
        fdtable_fd: f("fdtable", "fd")?,
        fdtable_max_fds: f("fdtable", "max_fds")?,
        file_private_data: f("file", "private_data")?,
        socket_sk: f("socket", "sk")?,
        unix_sock_peer: f("unix_sock", "peer")?,
        unix_sock_addr: f("unix_sock", "addr")?,
        unix_sock_path: f("unix_sock", "path")?,
        unix_address_len: f("unix_address", "len")?,
        unix_address_name: f("unix_address", "name")?,
        file_f_mode: f("file", "f_mode")?,
        sb_s_magic: f("super_block", "s_magic")?,
        inode_i_private: f("inode", "i_private")?,
        skc_family: f("sock_common", "skc_family")?,
        skc_daddr: f("sock_common", "skc_daddr")?,
        skc_rcv_saddr: f("sock_common", "skc_rcv_saddr")?,
        skc_dport: f("sock_common", "skc_dport")?,
        skc_num: f("sock_common", "skc_num")?,
        skc_v6_daddr: f("sock_common", "skc_v6_daddr")?,
        skc_v6_rcv_saddr: f("sock_common", "skc_v6_rcv_saddr")?,
        sk_type: f("sock", "sk_type")?,
        sk_protocol: f("sock", "sk_protocol")?,
    })
}

/// Offsets of an inode's change time (seconds, nanoseconds), whichever way
/// this kernel stores it: `i_ctime_sec` and `i_ctime_nsec` (6.11+), or a
/// `struct timespec64` named `__i_ctime` (6.6-6.10) or `i_ctime` (older).
fn inode_ctime(btf: &Btf) -> Result<(u32, u32), LoaderError> {
    if let (Ok(sec), Ok(nsec)) = (
        field_offset(btf, "inode", "i_ctime_sec"),
        field_offset(btf, "inode", "i_ctime_nsec"),
    ) {
        return Ok((sec, nsec));
    }
    let tv_sec = field_offset(btf, "timespec64", "tv_sec")?;
    let tv_nsec = field_offset(btf, "timespec64", "tv_nsec")?;
    let base = field_offset(btf, "inode", "__i_ctime")
        .or_else(|_| field_offset(btf, "inode", "i_ctime"))?;
    Ok((base + tv_sec, base + tv_nsec))
}

/// Byte offset of `member` in `struct name`, looking through anonymous
/// structs and unions (task_struct keeps fields in them under randstruct).
pub fn field_offset(
    btf: &Btf,
    name: &'static str,
    member: &'static str,
) -> Result<u32, LoaderError> {
    let missing = || LoaderError::BtfField { name, member };
    let types = btf.resolve_types_by_name(name).map_err(|_| missing())?;
    let found = types.iter().find_map(|t| match t {
        Type::Struct(s) if !s.members.is_empty() => find_bits(btf, s, member),
        _ => None,
    });
    let bits = found.ok_or_else(missing)?;
    if bits % 8 != 0 {
        return Err(missing());
    }
    Ok(bits / 8)
}

/// Size in bytes of `struct name`.
pub fn struct_size(btf: &Btf, name: &'static str) -> Result<u32, LoaderError> {
    let missing = || LoaderError::BtfField {
        name,
        member: "(size)",
    };
    let types = btf.resolve_types_by_name(name).map_err(|_| missing())?;
    types
        .iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => u32::try_from(s.size()).ok(),
            _ => None,
        })
        .ok_or_else(missing)
}

fn find_bits(btf: &Btf, s: &btf_rs::Struct, member: &str) -> Option<u32> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == member {
            return Some(m.bit_offset());
        }
        if name.is_empty() {
            let mut t = btf.resolve_chained_type(m).ok()?;
            // Skip typedefs and qualifiers to reach the anonymous aggregate.
            for _ in 0..8 {
                match t {
                    Type::Typedef(_)
                    | Type::Const(_)
                    | Type::Volatile(_)
                    | Type::Restrict(_)
                    | Type::TypeTag(_) => {
                        t = btf.resolve_chained_type(t.as_btf_type()?).ok()?;
                    }
                    _ => break,
                }
            }
            if let Type::Struct(inner) | Type::Union(inner) = &t
                && let Some(bits) = find_bits(btf, inner, member)
            {
                return Some(m.bit_offset() + bits);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the BTF of the machine running the tests, when it has one; the
    /// structure of these offsets is checked, not their values.
    #[test]
    fn resolves_offsets_on_this_kernel() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            return;
        }
        let offsets = kernel_offsets(path).unwrap();
        // path is { struct vfsmount *mnt; struct dentry *dentry; }
        assert_eq!(offsets.path_mnt, 0);
        assert_eq!(offsets.path_dentry, 8);
        // qstr: hash_len union (hash, len) then name
        assert_eq!(offsets.qstr_len, 4);
        assert_eq!(offsets.qstr_name, 8);
        assert!(offsets.task_tgid > 0 && offsets.task_start_boottime > 0);
        // struct upid { int nr; struct pid_namespace *ns; }
        assert_eq!(offsets.upid_nr, 0);
        assert_eq!(offsets.upid_size, 16);
        assert!(offsets.inode_ctime_sec > 0 && offsets.inode_ctime_nsec > 0);
        // struct mount begins with a list head and the parent pointer; the id comes later.
        assert!(offsets.mount_mnt_id > offsets.mount_mnt_parent);
    }

    #[test]
    fn missing_btf_is_a_clear_error() {
        let err = kernel_offsets(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
    }
}
