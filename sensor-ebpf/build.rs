//! Rebuild the eBPF object when the linker changes (a new bpf-linker can change the output),
//! and tell bpf-linker how to lower memory intrinsics.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    // bpf-linker passes `--bpf-expand-memcpy-in-order` to LLVM by default,
    // which sets LLVM's store budget for memset to zero: every zeroed struct
    // (`..Default::default()`, a `[0u8; 16]`) then becomes a call to the
    // exported `memset`, a loop storing one byte per iteration (~5
    // instructions per byte, ~1,000 per connect). Without the flag LLVM
    // expands memset and memcpy inline into at most 128 wide stores, as
    // clang does for C programs.
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
