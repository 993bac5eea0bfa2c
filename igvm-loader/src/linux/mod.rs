//! Packing a Linux kernel, an initrd and a command line into a native IGVM file.
//!
//! The file starts a small boot shim (`igvm-loader/shim/`, built by `build.rs`) on the
//! bootstrap processor in 64-bit mode. The shim builds Linux's `boot_params` from the IGVM
//! parameters the host fills at launch (memory map, command line) and from the ACPI tables the
//! host serves through fw_cfg, then jumps to the kernel's 64-bit entry point. [`layout`] lists
//! where everything goes.
//!
//! The packer fills everything that is fixed before launch: the zero-page template with the
//! bzImage setup header and the initrd address, the default command line, the GDT and page
//! tables, and the shim's configuration. [`zero_page`], [`table_loader`], [`config`], [`layout`] and
//! [`shim_error`] are compiled into the shim as well, so the tests here check the code that runs
//! in the guest.
//!
//! The file declares only the native platform: the shim needs fw_cfg and does not accept
//! memory or validate pages as a confidential guest must.

pub mod config;
pub mod elf;
mod error;
mod kernel;
pub mod layout;
pub mod shim_error;
pub mod table_loader;
pub mod zero_page;

#[cfg(test)]
mod tests;

use igvm_defs::IgvmNativeVpContextX64;
use zerocopy::FromZeros;

pub use error::LinuxPackError;
pub use kernel::{read_kernel, KernelFormat, KernelImage, KernelPiece};

use crate::builder::IgvmBuilder;
use crate::params::ParameterKind;
use config::ShimConfig;
use layout::*;
use zero_page::{
    put, BOOT_FLAG, BOOT_FLAG_MAGIC, CMDLINE_SIZE, CODE32_START, HEADER, HEADER_MAGIC,
    LOADER_TYPE_UNDEFINED, SETUP_HEADER, TYPE_OF_LOADER, ZERO_PAGE_SIZE,
};

mod shim_image {
    include!(concat!(env!("OUT_DIR"), "/linux_shim.rs"));
}

/// Alignment of the initrd's start.
pub const INITRD_ALIGNMENT: u64 = 0x20_0000;
/// The initrd, and every address in `boot_params`, must end below 4 GiB: the packer leaves the
/// `ext_*` high halves at zero.
const FOUR_GIB: u64 = 1 << 32;

/// Control register and EFER bits of the shim's starting state.
mod cpu {
    /// CR0: protection, monitor coprocessor, extension type, numeric error, paging.
    pub const CR0: u64 = (1 << 0) | (1 << 1) | (1 << 4) | (1 << 5) | (1 << 31);
    /// CR4: physical address extension, plus OSFXSR and OSXMMEXCPT so that the shim's
    /// compiled code may use SSE.
    pub const CR4: u64 = (1 << 5) | (1 << 9) | (1 << 10);
    /// EFER: long mode enabled and active.
    pub const EFER: u64 = (1 << 8) | (1 << 10);
    /// RFLAGS: only the reserved bit 1; interrupts off.
    pub const RFLAGS: u64 = 0x2;
    /// Segment attributes of a 64-bit code segment: present, execute/read, accessed, L, G.
    pub const CODE64_ATTRIBUTES: u16 = 0xa09b;
    /// Segment attributes of a flat data segment: present, read/write, accessed, D/B, G.
    pub const DATA_ATTRIBUTES: u16 = 0xc093;
    /// GDT descriptor of the 64-bit code segment.
    pub const CODE64_DESCRIPTOR: u64 = 0x00af_9b00_0000_ffff;
    /// GDT descriptor of the flat data segment.
    pub const DATA_DESCRIPTOR: u64 = 0x00cf_9300_0000_ffff;
}

/// Inputs of `igvmm pack --kernel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPackOptions {
    /// The kernel file: a bzImage or an ELF vmlinux.
    pub kernel: Vec<u8>,
    /// The initrd, if any. An empty one counts as none.
    pub initrd: Option<Vec<u8>>,
    /// The default command line, used when the IGVM CommandLine parameter is empty at launch.
    pub command_line: String,
}

/// Placement of the kernel and initrd by `pack_kernel`, for messages and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelLayout {
    /// bzImage or ELF.
    pub format: KernelFormat,
    /// Physical address of the kernel's 64-bit entry point.
    pub entry: u64,
    /// First byte of the kernel's memory.
    pub kernel_start: u64,
    /// First byte after the memory the kernel needs before it reads the memory map.
    pub kernel_end: u64,
    /// Address and size of the initrd.
    pub initrd: Option<(u64, u64)>,
    /// Most command-line characters the shim accepts from the IGVM parameter.
    pub command_line_limit: u32,
}

/// An IGVM file and the layout it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedKernel {
    /// The IGVM file.
    pub igvm: Vec<u8>,
    /// Placement of the kernel and initrd.
    pub layout: KernelLayout,
}

/// Writes a native IGVM file that boots `options.kernel` through the boot shim.
pub fn pack_kernel(options: &KernelPackOptions) -> Result<Vec<u8>, LinuxPackError> {
    pack_kernel_with_layout(options).map(|packed| packed.igvm)
}

/// Like [`pack_kernel`], and also returns where the kernel and initrd were placed.
pub fn pack_kernel_with_layout(
    options: &KernelPackOptions,
) -> Result<PackedKernel, LinuxPackError> {
    let (shim, shim_entry) =
        shim_image::SHIM.map_err(|reason| LinuxPackError::ShimUnavailable {
            reason: reason.to_string(),
        })?;
    let kernel = read_kernel(&options.kernel)?;
    let command_line_limit = kernel
        .command_line_limit
        .min((DEFAULT_COMMAND_LINE_SIZE - 1) as u32);
    let command_line = default_command_line(&options.command_line, command_line_limit)?;
    let initrd_bytes = options.initrd.as_deref().filter(|bytes| !bytes.is_empty());
    let initrd = initrd_bytes
        .map(|bytes| place_initrd(&kernel, bytes.len() as u64))
        .transpose()?;

    let mut builder = IgvmBuilder::native();
    builder.pages(GDT_GPA, &gdt())?;
    let config = ShimConfig {
        kernel_entry: kernel.entry,
        command_line_limit,
    };
    builder.pages(CONFIG_GPA, &config.encode())?;
    builder.pages(ZERO_PAGE_GPA, &zero_page_template(&kernel, initrd))?;
    builder.pages(DEFAULT_COMMAND_LINE_GPA, &command_line)?;
    builder.pages(SHIM_IMAGE_GPA, shim)?;
    builder.parameter_area(
        0,
        PARAMETER_AREA_SIZE,
        &[
            (ParameterKind::MemoryMap, MEMORY_MAP_OFFSET as u32),
            (ParameterKind::CommandLine, COMMAND_LINE_OFFSET as u32),
        ],
        PARAMETER_AREA_GPA,
    )?;
    builder.pages(PAGE_TABLES_GPA, &identity_page_tables())?;

    let (image_start, image) = flatten_kernel(&kernel);
    builder.pages(image_start, &image)?;
    let work_start = kernel.start & !(PAGE_SIZE - 1);
    let work_size = kernel
        .end
        .checked_add(PAGE_SIZE - 1)
        .map(|end| (end & !(PAGE_SIZE - 1)) - work_start)
        .and_then(|size| u32::try_from(size).ok())
        .ok_or(LinuxPackError::KernelTooHigh { end: kernel.end })?;
    builder.required_memory(work_start, work_size)?;
    if let (Some((initrd_gpa, _)), Some(bytes)) = (initrd, initrd_bytes) {
        builder.pages(initrd_gpa, bytes)?;
    }

    builder.native_vp_context(0, shim_context(shim_entry));
    let igvm = builder.build()?;
    Ok(PackedKernel {
        igvm,
        layout: KernelLayout {
            format: kernel.format,
            entry: kernel.entry,
            kernel_start: kernel.start,
            kernel_end: kernel.end,
            initrd,
            command_line_limit,
        },
    })
}

/// Checks the default command line and returns it NUL-terminated.
fn default_command_line(text: &str, limit: u32) -> Result<Vec<u8>, LinuxPackError> {
    if let Some(offset) = text.bytes().position(|byte| byte == 0) {
        return Err(LinuxPackError::CommandLineHasNul { offset });
    }
    if text.len() > limit as usize {
        return Err(LinuxPackError::CommandLineTooLong {
            length: text.len(),
            limit: limit as usize,
        });
    }
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    Ok(bytes)
}

/// Places the initrd at the first 2 MiB boundary after the kernel's memory.
fn place_initrd(kernel: &KernelImage<'_>, size: u64) -> Result<(u64, u64), LinuxPackError> {
    let start = kernel
        .end
        .checked_add(INITRD_ALIGNMENT - 1)
        .map(|end| end & !(INITRD_ALIGNMENT - 1))
        .ok_or(LinuxPackError::KernelTooHigh { end: kernel.end })?;
    let end = start.saturating_add(size);
    let limit = kernel.initrd_addr_max.min(FOUR_GIB - 1);
    if end - 1 > limit {
        return Err(LinuxPackError::InitrdTooHigh { start, end, limit });
    }
    Ok((start, size))
}

/// Returns the kernel's file bytes as one buffer from its first page on, with its pieces at
/// their offsets. The gaps and the last page's tail are zeros.
fn flatten_kernel(kernel: &KernelImage<'_>) -> (u64, Vec<u8>) {
    let start = kernel
        .pieces
        .iter()
        .map(|piece| piece.gpa)
        .min()
        .unwrap_or(kernel.start)
        & !(PAGE_SIZE - 1);
    let end = kernel
        .pieces
        .iter()
        .map(|piece| piece.gpa + piece.data.len() as u64)
        .max()
        .unwrap_or(start);
    let mut image = vec![0u8; (end - start) as usize];
    for piece in &kernel.pieces {
        let offset = (piece.gpa - start) as usize;
        if let Some(slot) = image.get_mut(offset..offset + piece.data.len()) {
            slot.copy_from_slice(piece.data);
        }
    }
    (start, image)
}

/// Returns `boot_params` as filled at pack time: the bzImage's setup header (or the magic
/// numbers an ELF kernel expects), the loader type, `code32_start` and the initrd.
pub fn zero_page_template(kernel: &KernelImage<'_>, initrd: Option<(u64, u64)>) -> Vec<u8> {
    let mut page = vec![0u8; ZERO_PAGE_SIZE];
    match kernel.setup_header {
        Some(header) => {
            put(&mut page, SETUP_HEADER, header);
            put(
                &mut page,
                CODE32_START,
                &(kernel.load_address as u32).to_le_bytes(),
            );
        }
        None => {
            put(&mut page, BOOT_FLAG, &BOOT_FLAG_MAGIC.to_le_bytes());
            put(&mut page, HEADER, &HEADER_MAGIC.to_le_bytes());
            put(
                &mut page,
                CMDLINE_SIZE,
                &kernel.command_line_limit.to_le_bytes(),
            );
        }
    }
    put(&mut page, TYPE_OF_LOADER, &[LOADER_TYPE_UNDEFINED]);
    if let Some((gpa, size)) = initrd {
        zero_page::set_ramdisk(&mut page, gpa, size);
    }
    page
}

/// Returns the GDT: two null descriptors, then `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18).
fn gdt() -> Vec<u8> {
    [0, 0, cpu::CODE64_DESCRIPTOR, cpu::DATA_DESCRIPTOR]
        .iter()
        .flat_map(|descriptor: &u64| descriptor.to_le_bytes())
        .collect()
}

/// Returns page tables for [`PAGE_TABLES_GPA`] that identity-map the first 4 GiB with 2 MiB
/// pages: a PML4, a PDPT and four page directories. 2 MiB pages keep the tables to six pages
/// and need no 1 GiB page support.
fn identity_page_tables() -> Vec<u8> {
    const PRESENT_WRITABLE: u64 = 0b11;
    const LARGE_PAGE: u64 = 1 << 7;
    let mut tables = vec![0u8; PAGE_TABLES_SIZE as usize];
    let pdpt = PAGE_TABLES_GPA + PAGE_SIZE;
    let first_directory = PAGE_TABLES_GPA + 2 * PAGE_SIZE;
    put(&mut tables, 0, &(pdpt | PRESENT_WRITABLE).to_le_bytes());
    for gib in 0..4u64 {
        let entry = (first_directory + gib * PAGE_SIZE) | PRESENT_WRITABLE;
        put(
            &mut tables,
            (PAGE_SIZE + gib * 8) as usize,
            &entry.to_le_bytes(),
        );
    }
    for index in 0..4 * 512u64 {
        let entry = (index << 21) | PRESENT_WRITABLE | LARGE_PAGE;
        put(
            &mut tables,
            (2 * PAGE_SIZE + index * 8) as usize,
            &entry.to_le_bytes(),
        );
    }
    tables
}

/// Returns the bootstrap processor's starting state: 64-bit mode at the shim's entry point on
/// the shim's GDT, page tables and stack.
fn shim_context(entry: u64) -> IgvmNativeVpContextX64 {
    let mut context = IgvmNativeVpContextX64::new_zeroed();
    context.rip = entry;
    // The System V ABI expects RSP + 8 to be 16-byte aligned at a function's first instruction.
    context.rsp = STACK_TOP - 8;
    context.rflags = cpu::RFLAGS;
    context.cr0 = cpu::CR0;
    context.cr3 = PAGE_TABLES_GPA;
    context.cr4 = cpu::CR4;
    context.efer = cpu::EFER;
    context.gdtr_base = GDT_GPA;
    context.gdtr_limit = (gdt().len() - 1) as u16;
    context.code_selector = BOOT_CS;
    context.code_attributes = cpu::CODE64_ATTRIBUTES;
    context.code_base = 0;
    context.code_limit = 0xffff_ffff;
    context.data_selector = BOOT_DS;
    context.data_attributes = cpu::DATA_ATTRIBUTES;
    context.data_base = 0;
    context.data_limit = 0xffff_ffff;
    context
}
