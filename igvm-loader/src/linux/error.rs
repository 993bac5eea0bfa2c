//! Errors of `pack_kernel`.

use thiserror::Error;

use super::elf::ElfError;
use crate::builder::BuildError;

/// An error of reading the kernel or initrd, or of laying them out in guest memory.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LinuxPackError {
    /// The kernel has neither the ELF magic nor a bzImage setup header.
    #[error("the kernel ({size} bytes) is neither an ELF vmlinux nor a bzImage (no 0xAA55 boot flag at 0x1fe and \"HdrS\" at 0x202)")]
    UnknownKernelFormat {
        /// File size.
        size: usize,
    },
    /// The bzImage boot protocol predates `xloadflags`.
    #[error("the bzImage uses boot protocol {}.{:02}; version 2.12 or later is needed for the 64-bit entry point", protocol >> 8, protocol & 0xff)]
    BootProtocolTooOld {
        /// `setup_header.version`.
        protocol: u16,
    },
    /// The bzImage has no 64-bit entry point (a 32-bit kernel).
    #[error("the bzImage has no 64-bit entry point (xloadflags {xloadflags:#x} lacks XLF_KERNEL_64); only 64-bit kernels are supported")]
    No64BitEntry {
        /// `setup_header.xloadflags`.
        xloadflags: u16,
    },
    /// The kernel is a zImage, which loads below 1 MiB.
    #[error("the kernel is a zImage (loadflags {loadflags:#x} lacks LOADED_HIGH); only bzImage and ELF kernels are supported")]
    NotBzImage {
        /// `setup_header.loadflags`.
        loadflags: u8,
    },
    /// The file ends before a part its header describes.
    #[error("the kernel is {size} bytes but its header describes at least {needed} bytes")]
    TruncatedKernel {
        /// File size.
        size: usize,
        /// Bytes the header needs.
        needed: usize,
    },
    /// `kernel_alignment` is not a power of two.
    #[error("the bzImage's kernel_alignment {alignment:#x} is not a power of two")]
    InvalidKernelAlignment {
        /// The alignment.
        alignment: u64,
    },
    /// The ELF file is malformed or not an x86-64 executable.
    #[error("the ELF kernel is invalid: {0}")]
    Elf(#[from] ElfError),
    /// An ELF segment would land in the memory below 1 MiB that the boot shim uses.
    #[error("the ELF kernel loads a segment at {gpa:#x}, below 1 MiB, where the boot shim lives")]
    KernelBelowOneMiB {
        /// The segment's physical address.
        gpa: u64,
    },
    /// The kernel's memory would end past the 64-bit address space or past 4 GiB.
    #[error(
        "the kernel would use memory up to {end:#x}, beyond what the boot protocol can address"
    )]
    KernelTooHigh {
        /// The end address computed.
        end: u64,
    },
    /// The ELF entry point lies outside the loaded segments.
    #[error(
        "the ELF entry point {entry:#x} lies outside the kernel's memory {start:#x}..{end:#x}"
    )]
    EntryOutsideKernel {
        /// The physical entry point.
        entry: u64,
        /// First byte of the kernel.
        start: u64,
        /// First byte after the kernel.
        end: u64,
    },
    /// The default command line is longer than the kernel or the shim's page accepts.
    #[error("the command line is {length} characters but at most {limit} fit (the kernel's cmdline_size and the shim's 4 KiB page)")]
    CommandLineTooLong {
        /// Characters given.
        length: usize,
        /// Characters accepted.
        limit: usize,
    },
    /// The default command line contains a NUL byte.
    #[error("the command line contains a NUL byte at offset {offset}")]
    CommandLineHasNul {
        /// Offset of the NUL.
        offset: usize,
    },
    /// The initrd would end above the kernel's `initrd_addr_max` or above 4 GiB.
    #[error("the initrd would occupy {start:#x}..{end:#x}, above the kernel's limit {limit:#x}")]
    InitrdTooHigh {
        /// First byte.
        start: u64,
        /// First byte after it.
        end: u64,
        /// Highest byte allowed.
        limit: u64,
    },
    /// The boot shim was not built with this crate.
    #[error("the Linux boot shim is not available in this build of igvm-loader: {reason}")]
    ShimUnavailable {
        /// The reason the build script reported.
        reason: String,
    },
    /// The IGVM builder rejected the layout.
    #[error("failed to write the IGVM file: {0}")]
    Build(#[from] BuildError),
}
