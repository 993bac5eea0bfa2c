//! The igvmm Linux boot shim: freestanding x86-64 code that an IGVM file built by
//! `igvmm pack --kernel` starts on the bootstrap processor, in 64-bit mode, before the kernel.
//!
//! It completes Linux's `boot_params`, which the packer pre-filled with the setup header and the
//! initrd, with what is known only at launch:
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
//! `#![no_std]`, static relocation, SSE disabled and `shim.ld`. The modules under
//! `../src/linux/` are shared with igvm-loader, which tests them on the host. The shim never
//! calls `core::fmt`, whose precompiled code uses SSE.
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
use core::panic::PanicInfo;

use config::ShimConfig;
use fw_cfg::FwCfg;
use io::{com1, debugcon, outb};
use layout::*;
use shim_error::{FileName, MessageSink, ShimError};
use table_loader::{FileSource, Zone};
use zero_page::{CommandLineChoice, SHIM_RESERVED_RANGES, ZERO_PAGE_SIZE};

/// Prefix of every line the shim prints.
const PREFIX: &str = "igvmm-linux-shim: ";
/// The fw_cfg file with the table-loader script.
const TABLE_LOADER_FILE: &[u8] = b"etc/table-loader";

/// The areas of the shim's fixed layout (`layout.rs`), each borrowed once.
struct Regions {
    config: &'static [u8],
    zero_page: &'static mut [u8],
    memory_map: &'static [u8],
    command_line: &'static [u8],
    default_command_line: &'static [u8],
    loader_script: &'static mut [u8],
    acpi_high: &'static mut [u8],
    acpi_fseg: &'static mut [u8],
}

/// Returns the guest memory at `gpa` as a byte slice.
///
/// # Safety
/// `gpa..gpa + len` must be identity-mapped memory that no other live reference covers.
unsafe fn region(gpa: u64, len: u64) -> &'static mut [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { core::slice::from_raw_parts_mut(gpa as *mut u8, len as usize) }
}

impl Regions {
    /// Borrows every area. Called once, at entry.
    fn take() -> Self {
        // SAFETY: the areas are disjoint (see the table in layout.rs) and lie in the first
        // 4 GiB, which the shim's page tables identity-map. Nothing else refers to them, because
        // the shim has no other pointers into guest memory. The packer places the pages it
        // fills, and the e820 check confirms that the rest of the shim's range and the ACPI
        // zones are RAM before the shim writes them.
        unsafe {
            Self {
                config: region(CONFIG_GPA, PAGE_SIZE),
                zero_page: region(ZERO_PAGE_GPA, ZERO_PAGE_SIZE as u64),
                memory_map: region(PARAMETER_AREA_GPA + MEMORY_MAP_OFFSET, MEMORY_MAP_SIZE),
                command_line: region(PARAMETER_AREA_GPA + COMMAND_LINE_OFFSET, COMMAND_LINE_SIZE),
                default_command_line: region(DEFAULT_COMMAND_LINE_GPA, DEFAULT_COMMAND_LINE_SIZE),
                loader_script: region(LOADER_SCRIPT_GPA, LOADER_SCRIPT_MAX),
                acpi_high: region(ACPI_HIGH_ZONE_GPA, ACPI_HIGH_ZONE_SIZE),
                acpi_fseg: region(ACPI_FSEG_ZONE_GPA, ACPI_FSEG_ZONE_SIZE),
            }
        }
    }
}

/// The first code the vCPU runs, at the start of the image.
#[no_mangle]
#[link_section = ".text.entry"]
pub extern "C" fn shim_entry() -> ! {
    match prepare(Regions::take()) {
        Ok(entry) => start_kernel(entry),
        Err(error) => fail(&|out| error.describe(out)),
    }
}

/// Completes `boot_params` and returns the kernel's entry point.
fn prepare(regions: Regions) -> Result<u64, ShimError> {
    let config =
        ShimConfig::decode(regions.config).ok_or(ShimError::ConfigMissing { gpa: CONFIG_GPA })?;
    let zero_page = regions.zero_page;

    let entries = zero_page::write_e820(zero_page, regions.memory_map, &SHIM_RESERVED_RANGES)?;
    let mut log = debugcon();
    log.text(PREFIX);
    log.decimal(entries as u64);
    log.text(" e820 entries\n");

    let command_line = match zero_page::choose_command_line(
        regions.command_line,
        regions.default_command_line,
        config.command_line_limit,
    )? {
        CommandLineChoice::Parameter(length) => {
            log.text(PREFIX);
            log.text("command line from the IGVM parameter, ");
            log.decimal(length as u64);
            log.text(" characters\n");
            PARAMETER_AREA_GPA + COMMAND_LINE_OFFSET
        }
        CommandLineChoice::Default(length) => {
            log.text(PREFIX);
            log.text("default command line, ");
            log.decimal(length as u64);
            log.text(" characters\n");
            DEFAULT_COMMAND_LINE_GPA
        }
    };
    zero_page::set_command_line(zero_page, command_line);

    let rsdp = load_acpi_tables(regions.loader_script, regions.acpi_high, regions.acpi_fseg)?;
    log.text(PREFIX);
    log.text("RSDP at ");
    log.hex(rsdp);
    log.text("\n");
    zero_page::set_rsdp(zero_page, rsdp);
    Ok(config.kernel_entry)
}

/// Runs fw_cfg's `etc/table-loader`, copied into `script_memory`, with the ACPI zones, and
/// returns the address of the RSDP it placed.
fn load_acpi_tables(
    script_memory: &mut [u8],
    high_memory: &mut [u8],
    fseg_memory: &mut [u8],
) -> Result<u64, ShimError> {
    let mut fw_cfg = FwCfg::probe().ok_or(ShimError::FwCfgMissing {
        port: fw_cfg::SELECTOR_PORT,
    })?;
    let script_name = FileName::from_field(TABLE_LOADER_FILE).ok_or(ShimError::RsdpMissing)?;
    let script_file = fw_cfg
        .find(TABLE_LOADER_FILE)
        .ok_or(ShimError::FwCfgFileMissing { name: script_name })?;
    let too_large = ShimError::FwCfgFileTooLarge {
        name: script_name,
        size: script_file.size,
        limit: script_memory.len() as u64,
    };
    let script = script_memory
        .get_mut(..script_file.size as usize)
        .ok_or(too_large)?;
    if !fw_cfg.read(script_file, script) {
        return Err(ShimError::FwCfgReadFailed { name: script_name });
    }

    let mut high = Zone::new(ACPI_HIGH_ZONE_GPA, high_memory);
    let mut fseg = Zone::new(ACPI_FSEG_ZONE_GPA, fseg_memory);
    let placement = table_loader::run(script, &mut fw_cfg, &mut high, &mut fseg)?;
    let mut log = debugcon();
    for file in placement.iter() {
        log.text(PREFIX);
        file.name.describe(&mut log);
        log.text(" at ");
        log.hex(file.gpa);
        log.text(", ");
        log.decimal(file.size as u64);
        log.text(" bytes\n");
    }
    table_loader::find_rsdp(&placement, &high, &fseg)
}

/// Jumps to the kernel's 64-bit entry point with RSI pointing at `boot_params`.
fn start_kernel(entry: u64) -> ! {
    let mut log = debugcon();
    log.text(PREFIX);
    log.text("starting the kernel at ");
    log.hex(entry);
    log.text("\n");
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

/// Prints the line that `reason` writes on COM1 and the debug console, then stops the VM.
fn fail(reason: &dyn Fn(&mut dyn MessageSink)) -> ! {
    for mut out in [com1(), debugcon()] {
        out.text(PREFIX);
        reason(&mut out);
        out.text("\n");
    }
    outb(DEBUG_EXIT_PORT, FAILURE_EXIT_VALUE);
    loop {
        // SAFETY: stops the processor with interrupts off; touches no memory.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    fail(&|out| {
        out.text("internal error");
        if let Some(location) = info.location() {
            out.text(" at ");
            out.text(location.file());
            out.text(":");
            out.decimal(u64::from(location.line()));
        }
    })
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
