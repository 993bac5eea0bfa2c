//! The igvmm Linux boot shim: freestanding x86-64 code that an IGVM file built by
//! `igvmm pack --kernel` starts on the bootstrap processor, in 64-bit mode, before the kernel.
//!
//! It completes Linux's `boot_params`, which the packer pre-filled with the setup header and the
//! initrd, from what only the launch knows:
//! 1. the e820 table, from the IGVM memory map parameter, with the shim's own pages, the ACPI
//!    tables and the legacy BIOS area taken out of RAM;
//! 2. the command line: the IGVM CommandLine parameter (`igvmm run --cmdline`), or the default
//!    given at pack time when that parameter is empty;
//! 3. `acpi_rsdp_addr`, after running QEMU's ACPI table-loader script from fw_cfg.
//!
//! Then it jumps to the kernel's 64-bit entry point with RSI pointing at `boot_params`, as
//! Linux's 64-bit boot protocol (Documentation/arch/x86/boot.rst) asks. Application processors
//! have no VP context in the file; Linux starts them with INIT/SIPI from the MADT.
//!
//! On failure it prints one line on COM1 and stops the VM through the debug-exit port. Progress
//! goes to the debug console (port 0x402).
//!
//! igvm-loader's `build.rs` compiles this crate with rustc for x86_64-unknown-linux-gnu,
//! `#![no_std]`, static relocation and `shim.ld`. The modules under `../src/linux/` are shared
//! with igvm-loader, which tests them on the host.
#![no_std]
#![no_main]
// The shared modules carry helpers that only the packer uses.
#![allow(dead_code)]

#[path = "../src/linux/config.rs"]
mod config;
mod fw_cfg;
mod io;
#[path = "../src/linux/layout.rs"]
mod layout;
#[path = "../src/linux/shim_error.rs"]
mod shim_error;
#[path = "../src/linux/table_loader.rs"]
mod table_loader;
#[path = "../src/linux/zero_page.rs"]
mod zero_page;

use core::arch::asm;
use core::fmt::Write;
use core::panic::PanicInfo;

use config::ShimConfig;
use fw_cfg::FwCfg;
use io::{outb, Com1, Debugcon};
use layout::*;
use shim_error::{FileName, ShimError};
use table_loader::{FileSource, Zone};
use zero_page::{CommandLineChoice, SHIM_RESERVED_RANGES, ZERO_PAGE_SIZE};

/// Prefix of every line the shim prints.
const PREFIX: &str = "igvmm-linux-shim: ";
/// The fw_cfg file with the table-loader script.
const TABLE_LOADER_FILE: &[u8] = b"etc/table-loader";

/// Returns the guest memory at `gpa` as a byte slice.
///
/// # Safety
/// `gpa..gpa + len` must be identity-mapped RAM (the page tables map the first 4 GiB) that no
/// other live reference covers. The shim calls it once per region of its fixed layout.
unsafe fn region(gpa: u64, len: u64) -> &'static mut [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { core::slice::from_raw_parts_mut(gpa as *mut u8, len as usize) }
}

/// The first code the vCPU runs, at the start of the image.
#[no_mangle]
#[link_section = ".text.entry"]
pub extern "C" fn shim_entry() -> ! {
    match prepare() {
        Ok(entry) => start_kernel(entry),
        Err(error) => fail(format_args!("{error}")),
    }
}

/// Completes `boot_params` and returns the kernel's entry point.
fn prepare() -> Result<u64, ShimError> {
    // SAFETY (for every `region` call below): each is one of the disjoint areas of the layout
    // in `layout.rs`, inside the identity-mapped first 4 GiB, borrowed exactly once.
    let config_page = unsafe { region(CONFIG_GPA, PAGE_SIZE) };
    let config =
        ShimConfig::decode(config_page).ok_or(ShimError::ConfigMissing { gpa: CONFIG_GPA })?;
    let zero_page = unsafe { region(ZERO_PAGE_GPA, ZERO_PAGE_SIZE as u64) };

    let memory_map = unsafe { region(PARAMETER_AREA_GPA + MEMORY_MAP_OFFSET, MEMORY_MAP_SIZE) };
    let entries = zero_page::write_e820(zero_page, memory_map, &SHIM_RESERVED_RANGES)?;
    let _ = writeln!(Debugcon, "{PREFIX}{entries} e820 entries");

    let parameter = unsafe { region(PARAMETER_AREA_GPA + COMMAND_LINE_OFFSET, COMMAND_LINE_SIZE) };
    let default = unsafe { region(DEFAULT_COMMAND_LINE_GPA, DEFAULT_COMMAND_LINE_SIZE) };
    let command_line = match zero_page::choose_command_line(parameter, default, config.command_line_limit)? {
        CommandLineChoice::Parameter(length) => {
            let _ = writeln!(Debugcon, "{PREFIX}command line from the IGVM parameter, {length} characters");
            PARAMETER_AREA_GPA + COMMAND_LINE_OFFSET
        }
        CommandLineChoice::Default(length) => {
            let _ = writeln!(Debugcon, "{PREFIX}default command line, {length} characters");
            DEFAULT_COMMAND_LINE_GPA
        }
    };
    zero_page::set_command_line(zero_page, command_line);

    let rsdp = load_acpi_tables()?;
    let _ = writeln!(Debugcon, "{PREFIX}RSDP at {rsdp:#x}");
    zero_page::set_rsdp(zero_page, rsdp);
    Ok(config.kernel_entry)
}

/// Runs fw_cfg's `etc/table-loader` and returns the address of the RSDP it placed.
fn load_acpi_tables() -> Result<u64, ShimError> {
    let mut fw_cfg = FwCfg::probe().ok_or(ShimError::FwCfgMissing {
        port: fw_cfg::SELECTOR_PORT,
    })?;
    let script_name = FileName::from_field(TABLE_LOADER_FILE).ok_or(ShimError::RsdpMissing)?;
    let script_file = fw_cfg
        .find(TABLE_LOADER_FILE)
        .ok_or(ShimError::FwCfgFileMissing { name: script_name })?;
    if u64::from(script_file.size) > LOADER_SCRIPT_MAX {
        return Err(ShimError::FwCfgFileTooLarge {
            name: script_name,
            size: script_file.size,
            limit: LOADER_SCRIPT_MAX,
        });
    }
    // SAFETY: see `prepare`.
    let script = unsafe { region(LOADER_SCRIPT_GPA, u64::from(script_file.size)) };
    if !fw_cfg.read(script_file, script) {
        return Err(ShimError::FwCfgReadFailed { name: script_name });
    }

    let mut high = Zone::new(ACPI_HIGH_ZONE_GPA, unsafe {
        region(ACPI_HIGH_ZONE_GPA, ACPI_HIGH_ZONE_SIZE)
    });
    let mut fseg = Zone::new(ACPI_FSEG_ZONE_GPA, unsafe {
        region(ACPI_FSEG_ZONE_GPA, ACPI_FSEG_ZONE_SIZE)
    });
    let placement = table_loader::run(script, &mut fw_cfg, &mut high, &mut fseg)?;
    for file in placement.iter() {
        let _ = writeln!(Debugcon, "{PREFIX}{} at {:#x}, {} bytes", file.name, file.gpa, file.size);
    }
    table_loader::find_rsdp(&placement, &high, &fseg)
}

/// Jumps to the kernel's 64-bit entry point with RSI pointing at `boot_params`.
fn start_kernel(entry: u64) -> ! {
    let _ = writeln!(Debugcon, "{PREFIX}starting the kernel at {entry:#x}");
    // SAFETY: hands the processor to the kernel for good. The state matches the 64-bit boot
    // protocol: long mode with the first 4 GiB identity-mapped, the GDT with __BOOT_CS and
    // __BOOT_DS loaded and in use (set by the VP context), interrupts off.
    unsafe {
        asm!(
            "cli",
            "cld",
            "xor ebp, ebp",
            "xor ebx, ebx",
            "xor edi, edi",
            "jmp rax",
            in("rax") entry,
            in("rsi") ZERO_PAGE_GPA,
            options(noreturn)
        )
    }
}

/// Prints `reason` on one line on COM1 and the debug console, then stops the VM.
fn fail(reason: core::fmt::Arguments<'_>) -> ! {
    let _ = writeln!(Com1, "{PREFIX}{reason}");
    let _ = writeln!(Debugcon, "{PREFIX}{reason}");
    outb(DEBUG_EXIT_PORT, FAILURE_EXIT_VALUE);
    loop {
        // SAFETY: stops the processor with interrupts off; touches no memory.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    match info.location() {
        Some(location) => fail(format_args!(
            "internal error at {}:{}",
            location.file(),
            location.line()
        )),
        None => fail(format_args!("internal error")),
    }
}

/// Unwinding is off (`-C panic=abort`), but the precompiled `core` still names this symbol.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

/// `memcpy` for the code the compiler generates; `core` expects the platform to provide it.
///
/// # Safety
/// The C contract: `dest` and `src` are valid for `count` bytes and do not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, count: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; `rep movsb` copies forward.
    unsafe {
        asm!("rep movsb", inout("rdi") dest => _, inout("rsi") src => _, inout("rcx") count => _,
             options(nostack, preserves_flags))
    };
    dest
}

/// `memmove`: like `memcpy`, but the ranges may overlap.
///
/// # Safety
/// The C contract: `dest` and `src` are valid for `count` bytes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, count: usize) -> *mut u8 {
    if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize).wrapping_add(count) {
        // SAFETY: a forward copy never overwrites source bytes it has not read yet here.
        return unsafe { memcpy(dest, src, count) };
    }
    // SAFETY: the caller guarantees both ranges; copying backwards from the last byte handles
    // a destination above an overlapping source. The direction flag is restored.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rdi") dest.wrapping_add(count.wrapping_sub(1)) => _,
             inout("rsi") src.wrapping_add(count.wrapping_sub(1)) => _,
             inout("rcx") count => _,
             options(nostack))
    };
    dest
}

/// `memset`.
///
/// # Safety
/// The C contract: `dest` is valid for `count` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, value: i32, count: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range.
    unsafe {
        asm!("rep stosb", inout("rdi") dest => _, inout("rcx") count => _, in("al") value as u8,
             options(nostack, preserves_flags))
    };
    dest
}

/// `memcmp`.
///
/// # Safety
/// The C contract: both pointers are valid for `count` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(left: *const u8, right: *const u8, count: usize) -> i32 {
    for index in 0..count {
        // SAFETY: the caller guarantees both ranges.
        let (a, b) = unsafe { (*left.add(index), *right.add(index)) };
        if a != b {
            return i32::from(a) - i32::from(b);
        }
    }
    0
}

/// `bcmp`, which LLVM emits for equality comparisons.
///
/// # Safety
/// As for `memcmp`.
#[no_mangle]
pub unsafe extern "C" fn bcmp(left: *const u8, right: *const u8, count: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(left, right, count) }
}
