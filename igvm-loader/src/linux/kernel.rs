//! Reading a Linux kernel: a bzImage's setup header, or a vmlinux's ELF program headers.
//!
//! The result gives the placement of the kernel's bytes in guest memory, its 64-bit entry
//! point, and the memory above its load address it needs before it reads the e820 map.

use super::elf::{Elf, ElfError};
use super::error::LinuxPackError;
use super::layout::{KERNEL_MIN_GPA, PAGE_SIZE};
use super::zero_page::{
    get_u16, get_u32, get_u64, BOOT_FLAG, BOOT_FLAG_MAGIC, CMDLINE_SIZE, CODE32_START, HEADER,
    HEADER_MAGIC, INITRD_ADDR_MAX, INIT_SIZE, JUMP, KERNEL_ALIGNMENT, LOADED_HIGH, LOADFLAGS,
    PREF_ADDRESS, RELOCATABLE_KERNEL, SETUP_HEADER, SETUP_SECTS, VERSION, XLF_KERNEL_64,
    XLOADFLAGS,
};

/// Oldest boot protocol with `xloadflags`, whose bit 0 reports the 64-bit entry point.
pub const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// Offset of the 64-bit entry point from the start of the protected-mode kernel.
pub const ENTRY_64_OFFSET: u64 = 0x200;
/// End of the setup header area in `boot_params` (`edd_mbr_sig_buffer` follows).
pub const SETUP_HEADER_AREA_END: usize = 0x290;
/// Command-line limit for an ELF vmlinux, which carries no setup header: x86's
/// `COMMAND_LINE_SIZE` (2048) minus the NUL.
pub const ELF_COMMAND_LINE_LIMIT: u32 = 2047;
/// Highest initrd byte for an ELF vmlinux: the value x86-64 kernels put in `initrd_addr_max`.
pub const ELF_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
/// Load address of a protected-mode kernel whose header gives none above 1 MiB.
const DEFAULT_LOAD_ADDRESS: u64 = 0x10_0000;

/// Format of the kernel file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// A bzImage with this boot protocol version.
    BzImage {
        /// `setup_header.version`.
        protocol: u16,
    },
    /// An uncompressed ELF vmlinux.
    Elf,
}

/// Bytes of the kernel file placed at one guest physical address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPiece<'a> {
    /// Guest physical address of the bytes.
    pub gpa: u64,
    /// The bytes.
    pub data: &'a [u8],
}

/// A kernel, read and placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage<'a> {
    /// bzImage or ELF.
    pub format: KernelFormat,
    /// The file bytes to copy into guest memory.
    pub pieces: Vec<KernelPiece<'a>>,
    /// Physical address of the 64-bit entry point.
    pub entry: u64,
    /// Lowest guest address the kernel uses.
    pub start: u64,
    /// First byte after the memory the kernel needs before it reads the memory map: the
    /// image, its bss, and for a bzImage the decompression buffer (`init_size` from its
    /// runtime start).
    pub end: u64,
    /// The setup header to copy into `boot_params` at 0x1f1 (bzImage only).
    pub setup_header: Option<&'a [u8]>,
    /// Load address of the protected-mode kernel (bzImage only), for `code32_start`.
    pub load_address: u64,
    /// Most command-line characters the kernel accepts.
    pub command_line_limit: u32,
    /// Highest byte an initrd may occupy.
    pub initrd_addr_max: u64,
}

/// Reads `bytes` as an ELF vmlinux or a bzImage.
pub fn read_kernel(bytes: &[u8]) -> Result<KernelImage<'_>, LinuxPackError> {
    if Elf::is_elf(bytes) {
        return read_elf(bytes);
    }
    if get_u16(bytes, BOOT_FLAG) == BOOT_FLAG_MAGIC && get_u32(bytes, HEADER) == HEADER_MAGIC {
        return read_bzimage(bytes);
    }
    Err(LinuxPackError::UnknownKernelFormat { size: bytes.len() })
}

fn align_up(value: u64, alignment: u64) -> Option<u64> {
    let mask = alignment.checked_sub(1)?;
    value.checked_add(mask).map(|sum| sum & !mask)
}

fn read_bzimage(bytes: &[u8]) -> Result<KernelImage<'_>, LinuxPackError> {
    let protocol = get_u16(bytes, VERSION);
    if protocol < MIN_BOOT_PROTOCOL {
        return Err(LinuxPackError::BootProtocolTooOld { protocol });
    }
    let xloadflags = get_u16(bytes, XLOADFLAGS);
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LinuxPackError::No64BitEntry { xloadflags });
    }
    let loadflags = bytes.get(LOADFLAGS).copied().unwrap_or(0);
    if loadflags & LOADED_HIGH == 0 {
        return Err(LinuxPackError::NotBzImage { loadflags });
    }

    let setup_sects = match bytes.get(SETUP_SECTS).copied().unwrap_or(0) {
        0 => 4,
        sectors => usize::from(sectors),
    };
    let protected_mode_offset = (setup_sects + 1) * 512;
    let protected_mode = bytes
        .get(protected_mode_offset..)
        .filter(|rest| !rest.is_empty())
        .ok_or(LinuxPackError::TruncatedKernel {
            size: bytes.len(),
            needed: protected_mode_offset + 1,
        })?;
    // The jump at 0x200 skips the header: its offset byte gives the header's end.
    let header_end = (JUMP + 2 + usize::from(bytes.get(JUMP + 1).copied().unwrap_or(0)))
        .min(SETUP_HEADER_AREA_END);
    let setup_header =
        bytes
            .get(SETUP_HEADER..header_end)
            .ok_or(LinuxPackError::TruncatedKernel {
                size: bytes.len(),
                needed: header_end,
            })?;

    let relocatable = bytes.get(RELOCATABLE_KERNEL).copied().unwrap_or(0) != 0;
    let alignment = u64::from(get_u32(bytes, KERNEL_ALIGNMENT)).max(PAGE_SIZE);
    let pref_address = get_u64(bytes, PREF_ADDRESS);
    let init_size = u64::from(get_u32(bytes, INIT_SIZE));
    let code32_start = u64::from(get_u32(bytes, CODE32_START));

    // A relocatable kernel goes to its preferred address, so that the load address and the
    // runtime start coincide. Otherwise it goes to code32_start.
    let load_address = if relocatable && pref_address >= KERNEL_MIN_GPA {
        pref_address
    } else if code32_start >= KERNEL_MIN_GPA {
        code32_start
    } else {
        DEFAULT_LOAD_ADDRESS
    };
    if !alignment.is_power_of_two() {
        return Err(LinuxPackError::InvalidKernelAlignment { alignment });
    }
    // Runtime start as boot.rst defines it, raised to pref_address, so that the range also
    // covers a decompressor that does not run below its preferred address.
    let runtime_start = if relocatable {
        align_up(load_address, alignment)
            .ok_or(LinuxPackError::KernelTooHigh { end: load_address })?
            .max(pref_address)
    } else {
        pref_address.max(KERNEL_MIN_GPA)
    };
    let image_end = load_address
        .checked_add(protected_mode.len() as u64)
        .ok_or(LinuxPackError::KernelTooHigh { end: load_address })?;
    let work_end = runtime_start
        .checked_add(init_size)
        .ok_or(LinuxPackError::KernelTooHigh { end: runtime_start })?;

    Ok(KernelImage {
        format: KernelFormat::BzImage { protocol },
        pieces: vec![KernelPiece {
            gpa: load_address,
            data: protected_mode,
        }],
        entry: load_address + ENTRY_64_OFFSET,
        start: load_address.min(runtime_start),
        end: image_end.max(work_end),
        setup_header: Some(setup_header),
        load_address,
        command_line_limit: get_u32(bytes, CMDLINE_SIZE),
        initrd_addr_max: u64::from(get_u32(bytes, INITRD_ADDR_MAX)),
    })
}

fn read_elf(bytes: &[u8]) -> Result<KernelImage<'_>, LinuxPackError> {
    let elf = Elf::parse(bytes)?;
    let mut pieces = Vec::new();
    let mut start = u64::MAX;
    let mut end = 0u64;
    for segment in elf.segments()? {
        let segment = segment?;
        if segment.mem_size == 0 {
            continue;
        }
        if segment.paddr < KERNEL_MIN_GPA {
            return Err(LinuxPackError::KernelBelowOneMiB { gpa: segment.paddr });
        }
        let segment_end = segment
            .paddr
            .checked_add(segment.mem_size)
            .ok_or(LinuxPackError::KernelTooHigh { end: u64::MAX })?;
        start = start.min(segment.paddr);
        end = end.max(segment_end);
        if !segment.data.is_empty() {
            pieces.push(KernelPiece {
                gpa: segment.paddr,
                data: segment.data,
            });
        }
    }
    if end == 0 {
        return Err(LinuxPackError::Elf(ElfError::NoLoadableSegment));
    }
    let entry = elf.physical_entry()?;
    if entry < start || entry >= end {
        return Err(LinuxPackError::EntryOutsideKernel { entry, start, end });
    }
    Ok(KernelImage {
        format: KernelFormat::Elf,
        pieces,
        entry,
        start,
        end,
        setup_header: None,
        load_address: start,
        command_line_limit: ELF_COMMAND_LINE_LIMIT,
        initrd_addr_max: ELF_INITRD_ADDR_MAX,
    })
}
