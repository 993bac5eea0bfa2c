//! Why the boot shim could not start the kernel.
//!
//! The shim prints one of these on COM1 as a single line and stops the VM. The type is shared
//! with igvm-loader so that host tests can check the same values, and it implements
//! `core::fmt::Display` by hand because the freestanding shim has no `std` and no `thiserror`.

use core::fmt;

/// Longest fw_cfg file name, without its NUL (QEMU's `FW_CFG_MAX_FILE_PATH` minus one).
pub const FILE_NAME_MAX: usize = 55;

/// A fw_cfg file name as it appears in a table-loader command.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FileName {
    bytes: [u8; FILE_NAME_MAX],
    len: usize,
}

impl FileName {
    /// Returns the name that `field` holds up to its first NUL, or `None` when the name is
    /// empty or longer than [`FILE_NAME_MAX`].
    pub fn from_field(field: &[u8]) -> Option<Self> {
        let len = field.iter().position(|byte| *byte == 0).unwrap_or(field.len());
        if len == 0 || len > FILE_NAME_MAX {
            return None;
        }
        let mut bytes = [0u8; FILE_NAME_MAX];
        bytes.get_mut(..len)?.copy_from_slice(field.get(..len)?);
        Some(Self { bytes, len })
    }

    /// Returns the name bytes without a NUL.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.as_bytes() {
            let shown = if byte.is_ascii_graphic() || *byte == b' ' {
                char::from(*byte)
            } else {
                '?'
            };
            fmt::Write::write_char(f, shown)?;
        }
        Ok(())
    }
}

impl fmt::Debug for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// A table-loader command that could not be carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoaderError {
    /// A command's file name field is empty or has no NUL within its 56 bytes.
    InvalidFileName,
    /// ALLOCATE names a file that fw_cfg does not have.
    FileNotFound {
        /// The file.
        name: FileName,
    },
    /// ALLOCATE names a file that an earlier command allocated.
    AlreadyAllocated {
        /// The file.
        name: FileName,
    },
    /// ALLOCATE asks for an alignment that is not a power of two.
    InvalidAlignment {
        /// The file.
        name: FileName,
        /// The alignment requested.
        align: u32,
    },
    /// ALLOCATE names a zone other than HIGH (1) and FSEG (2).
    InvalidZone {
        /// The file.
        name: FileName,
        /// The zone requested.
        zone: u8,
    },
    /// The file does not fit in what is left of its zone.
    ZoneFull {
        /// The file.
        name: FileName,
        /// The file size in bytes.
        size: u32,
        /// The bytes left in the zone after alignment.
        available: u64,
    },
    /// More files than the shim keeps track of.
    TooManyFiles {
        /// The number of files the shim can allocate.
        limit: usize,
    },
    /// ADD_POINTER or ADD_CHECKSUM names a file that no ALLOCATE placed.
    NotAllocated {
        /// The file.
        name: FileName,
    },
    /// ADD_POINTER with a pointer size other than 1, 2, 4 or 8 bytes.
    InvalidPointerSize {
        /// The size given.
        size: u8,
    },
    /// A pointer, checksum or checksummed range that does not lie inside its file.
    OutOfFile {
        /// The file.
        name: FileName,
        /// First byte of the access.
        offset: u64,
        /// Length of the access.
        length: u64,
        /// The file size.
        file_size: usize,
    },
    /// ADD_POINTER found a pointer that does not point into its source file, or a result that
    /// does not fit in the pointer.
    PointerOutOfRange {
        /// The file the pointer points into.
        source: FileName,
        /// The value found at the pointer.
        value: u64,
    },
    /// The fw_cfg device reported an error while the file was read.
    ReadFailed {
        /// The file.
        name: FileName,
    },
}

impl fmt::Display for LoaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoaderError::InvalidFileName => {
                f.write_str("file name is empty or not NUL-terminated within 56 bytes")
            }
            LoaderError::FileNotFound { name } => write!(f, "fw_cfg has no file {name:?}"),
            LoaderError::AlreadyAllocated { name } => write!(f, "{name:?} is already allocated"),
            LoaderError::InvalidAlignment { name, align } => {
                write!(f, "alignment {align:#x} of {name:?} is not a power of two")
            }
            LoaderError::InvalidZone { name, zone } => {
                write!(f, "zone {zone} of {name:?} is neither HIGH (1) nor FSEG (2)")
            }
            LoaderError::ZoneFull {
                name,
                size,
                available,
            } => write!(
                f,
                "{name:?} is {size} bytes but its zone has {available} bytes left"
            ),
            LoaderError::TooManyFiles { limit } => {
                write!(f, "more than {limit} files are allocated")
            }
            LoaderError::NotAllocated { name } => write!(f, "{name:?} was never allocated"),
            LoaderError::InvalidPointerSize { size } => {
                write!(f, "pointer size {size} is not 1, 2, 4 or 8")
            }
            LoaderError::OutOfFile {
                name,
                offset,
                length,
                file_size,
            } => write!(
                f,
                "{length} bytes at offset {offset:#x} lie outside {name:?} ({file_size} bytes)"
            ),
            LoaderError::PointerOutOfRange { source, value } => write!(
                f,
                "pointer value {value:#x} does not point into {source:?} or its result overflows"
            ),
            LoaderError::ReadFailed { name } => {
                write!(f, "fw_cfg reported an error reading {name:?}")
            }
        }
    }
}

impl core::error::Error for LoaderError {}

/// Why the shim stopped instead of starting the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShimError {
    /// The configuration page has no magic: the file was not written by `pack_kernel`.
    ConfigMissing {
        /// Where the page was expected.
        gpa: u64,
    },
    /// The IGVM memory map parameter has no entry.
    MemoryMapEmpty,
    /// The memory map needs more e820 entries than the zero page holds.
    TooManyE820Entries {
        /// Entries the zero page holds.
        limit: usize,
    },
    /// A range the shim reserves for itself is not RAM in the IGVM memory map.
    ReservedRangeNotRam {
        /// First byte of the range.
        start: u64,
        /// First byte after the range.
        end: u64,
    },
    /// The command line parameter has no NUL within its bytes.
    CommandLineUnterminated {
        /// Bytes in the parameter.
        size: usize,
    },
    /// The command line is longer than the kernel accepts.
    CommandLineTooLong {
        /// Characters in the command line.
        length: usize,
        /// Characters the kernel accepts (`cmdline_size`).
        limit: u32,
    },
    /// No fw_cfg device answers at the I/O ports.
    FwCfgMissing {
        /// The selector port.
        port: u16,
    },
    /// fw_cfg has no file that the shim needs.
    FwCfgFileMissing {
        /// The file.
        name: FileName,
    },
    /// A fw_cfg file is larger than the memory the shim keeps for it.
    FwCfgFileTooLarge {
        /// The file.
        name: FileName,
        /// Its size.
        size: u32,
        /// The bytes the shim keeps for it.
        limit: u64,
    },
    /// The fw_cfg device reported an error while the shim read a file.
    FwCfgReadFailed {
        /// The file.
        name: FileName,
    },
    /// A table-loader command failed.
    TableLoader {
        /// Zero-based index of the 128-byte command in `etc/table-loader`.
        command: usize,
        /// What went wrong.
        error: LoaderError,
    },
    /// The table loader left no RSDP: `etc/acpi/rsdp` was never allocated, or it does not start
    /// with "RSD PTR ".
    RsdpMissing,
}

impl fmt::Display for ShimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShimError::ConfigMissing { gpa } => write!(
                f,
                "no shim configuration at {gpa:#x}; the IGVM file was not written by igvmm pack --kernel"
            ),
            ShimError::MemoryMapEmpty => f.write_str("the IGVM memory map parameter is empty"),
            ShimError::TooManyE820Entries { limit } => write!(
                f,
                "the memory map needs more than {limit} e820 entries"
            ),
            ShimError::ReservedRangeNotRam { start, end } => write!(
                f,
                "range {start:#x}..{end:#x} that the shim needs is not RAM in the IGVM memory map"
            ),
            ShimError::CommandLineUnterminated { size } => write!(
                f,
                "the IGVM command line parameter has no NUL within its {size} bytes"
            ),
            ShimError::CommandLineTooLong { length, limit } => write!(
                f,
                "the command line is {length} characters but the kernel accepts at most {limit}"
            ),
            ShimError::FwCfgMissing { port } => write!(
                f,
                "no fw_cfg device answers at port {port:#x}; the ACPI tables come from fw_cfg"
            ),
            ShimError::FwCfgFileMissing { name } => write!(f, "fw_cfg has no file {name:?}"),
            ShimError::FwCfgFileTooLarge { name, size, limit } => write!(
                f,
                "fw_cfg file {name:?} is {size} bytes, more than the {limit} bytes the shim reserves"
            ),
            ShimError::FwCfgReadFailed { name } => {
                write!(f, "fw_cfg reported an error reading {name:?}")
            }
            ShimError::TableLoader { command, error } => {
                write!(f, "etc/table-loader command {command}: {error}")
            }
            ShimError::RsdpMissing => f.write_str(
                "the ACPI table loader produced no RSDP (etc/acpi/rsdp starting with \"RSD PTR \")",
            ),
        }
    }
}

impl core::error::Error for ShimError {}
