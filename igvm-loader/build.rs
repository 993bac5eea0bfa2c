//! Builds the Linux boot shim (`shim/main.rs`) into a flat x86-64 image for `linux::pack_kernel`.
//!
//! The shim is `#![no_std]` Rust compiled by the same rustc for x86_64-unknown-linux-gnu, whose
//! precompiled `core` ships with every x86-64 Linux toolchain, so no extra target or `rust-src`
//! is needed. It is linked statically at `SHIM_IMAGE_GPA` with `shim/shim.ld`, and its PT_LOAD
//! segments are flattened into `$OUT_DIR/linux_shim.bin`. `$OUT_DIR/linux_shim.rs` gives the
//! bytes and the entry point to the crate.
//!
//! When that target's standard library is not installed (a toolchain for another host), the
//! crate still builds: `linux_shim.rs` then contains the reason, and `pack_kernel` returns it
//! as an error. A compile or link failure of the shim itself fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

#[path = "src/linux/elf.rs"]
#[allow(dead_code)]
mod elf;
#[path = "src/linux/layout.rs"]
#[allow(dead_code)]
mod layout;

const SHIM_TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=shim");
    for shared in [
        "config",
        "elf",
        "layout",
        "shim_error",
        "table_loader",
        "zero_page",
    ] {
        println!("cargo:rerun-if-changed=src/linux/{shared}.rs");
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let generated = match build_shim(Path::new(&rustc), &out_dir) {
        Ok((image, entry)) => {
            let image_path = out_dir.join("linux_shim.bin");
            write(&image_path, &image);
            format!(
                "/// The boot shim image, loaded at `SHIM_IMAGE_GPA`, and its entry point.\n\
                 pub const SHIM: Result<(&[u8], u64), &str> = Ok((include_bytes!({:?}), {entry:#x}));\n",
                image_path.display().to_string()
            )
        }
        Err(reason) => {
            println!("cargo:warning=the Linux boot shim was not built: {reason}");
            format!(
                "/// Why the boot shim was not built.\n\
                 pub const SHIM: Result<(&[u8], u64), &str> = Err({reason:?});\n"
            )
        }
    };
    write(&out_dir.join("linux_shim.rs"), generated.as_bytes());
}

fn write(path: &Path, bytes: &[u8]) {
    if let Err(error) = fs::write(path, bytes) {
        panic!("cannot write {}: {error}", path.display());
    }
}

/// Compiles and links the shim, and returns its flat image and entry point. Returns `Err` only
/// when the target's standard library is missing; a compile error panics.
fn build_shim(rustc: &Path, out_dir: &Path) -> Result<(Vec<u8>, u64), String> {
    check_target_installed(rustc)?;

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let source = manifest_dir.join("shim/main.rs");
    let linker_script = manifest_dir.join("shim/shim.ld");
    let elf_path = out_dir.join("linux_shim.elf");
    let output = Command::new(rustc)
        .args(["--edition", "2021", "--crate-type", "bin"])
        .args(["--crate-name", "igvmm_linux_shim", "--target", SHIM_TARGET])
        .args(["-C", "panic=abort", "-C", "opt-level=s"])
        // No SSE: a KVM that emulates guest instructions (kvm_pvm does) fails on SSE with
        // KVM_EXIT_INTERNAL_ERROR. Rustc warns that disabling SSE2 on this target is being
        // phased out, so warnings are silenced here. A release that rejects the flag fails
        // this build with rustc's message.
        .args(["-C", "target-feature=-sse,-sse2", "-A", "warnings"])
        .args(["-C", "relocation-model=static", "-C", "overflow-checks=on"])
        .args(["-C", "debuginfo=0", "-C", "strip=debuginfo"])
        .args([
            "-C",
            "link-arg=-nostdlib",
            "-C",
            "link-arg=-static",
            "-C",
            "link-arg=-no-pie",
        ])
        .arg("-C")
        .arg(format!("link-arg=-Wl,-T,{}", linker_script.display()))
        .args([
            "-C",
            "link-arg=-Wl,--gc-sections",
            "-C",
            "link-arg=-Wl,--build-id=none",
        ])
        .arg("-o")
        .arg(&elf_path)
        .arg(&source)
        // Flags meant for the workspace (coverage, sanitizers) must not reach the shim.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .output();
    let output = match output {
        Ok(output) => output,
        Err(error) => panic!("cannot run {}: {error}", rustc.display()),
    };
    if !output.status.success() {
        panic!(
            "building the Linux boot shim failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let bytes = match fs::read(&elf_path) {
        Ok(bytes) => bytes,
        Err(error) => panic!("cannot read {}: {error}", elf_path.display()),
    };
    match flatten(&bytes) {
        Ok(image) => Ok(image),
        Err(reason) => panic!("the linked Linux boot shim is unusable: {reason}"),
    }
}

/// Fails when rustc has no `core` for the shim's target.
fn check_target_installed(rustc: &Path) -> Result<(), String> {
    let missing = || {
        format!(
            "the {SHIM_TARGET} standard library is not installed (rustup target add {SHIM_TARGET})"
        )
    };
    let output = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", SHIM_TARGET])
        .output()
        .map_err(|error| format!("cannot run {}: {error}", rustc.display()))?;
    if !output.status.success() {
        return Err(missing());
    }
    let libdir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let has_core = fs::read_dir(&libdir)
        .map(|entries| {
            entries.flatten().any(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                name.starts_with("libcore-") && name.ends_with(".rlib")
            })
        })
        .unwrap_or(false);
    if has_core {
        Ok(())
    } else {
        Err(missing())
    }
}

/// Turns the PT_LOAD segments into one image starting at `SHIM_IMAGE_GPA`, with bss as zeros.
fn flatten(bytes: &[u8]) -> Result<(Vec<u8>, u64), String> {
    let parsed = elf::Elf::parse(bytes).map_err(|error| error.to_string())?;
    let base = layout::SHIM_IMAGE_GPA;
    let mut image = Vec::new();
    for segment in parsed.segments().map_err(|error| error.to_string())? {
        let segment = segment.map_err(|error| error.to_string())?;
        let offset = segment.paddr.checked_sub(base).ok_or_else(|| {
            format!(
                "a segment is linked at {:#x}, below {base:#x}",
                segment.paddr
            )
        })?;
        let end = offset + segment.mem_size;
        if end > layout::SHIM_IMAGE_MAX {
            return Err(format!(
                "the image needs {end:#x} bytes, more than the {:#x} reserved for it",
                layout::SHIM_IMAGE_MAX
            ));
        }
        if image.len() < end as usize {
            image.resize(end as usize, 0);
        }
        let start = offset as usize;
        image
            .get_mut(start..start + segment.data.len())
            .ok_or("a segment has more file bytes than memory bytes")?
            .copy_from_slice(segment.data);
    }
    let entry = parsed.entry;
    if entry < base || entry >= base + image.len() as u64 {
        return Err(format!("the entry point {entry:#x} lies outside the image"));
    }
    Ok((image, entry))
}
