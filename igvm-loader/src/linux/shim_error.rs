//! Errors that stop the boot shim before it starts the kernel.
//!
//! The shim prints one of these on COM1 as a single line and stops the VM. The types are
//! shared with igvm-loader so that host tests check the same values and the same text.
//!
//! Messages are written through [`MessageSink`] rather than `core::fmt`, because the shim must
//! not run `core::fmt`: the precompiled `core` uses SSE instructions there, which some KVM
//! hosts cannot emulate (see the shim's build flags in `build.rs`). On the host, `Display`
//! produces the same text through [`FormatterSink`].

use core::fmt;

/// Receives the pieces of a message.
pub trait MessageSink {
    /// Appends text.
    fn text(&mut self, text: &str);
    /// Appends `value` in lowercase hexadecimal with a `0x` prefix, as `{:#x}` prints it.
    fn hex(&mut self, value: u64);
    /// Appends `value` in decimal.
    fn decimal(&mut self, value: u64);
}

/// Writes `value` as `0x` and lowercase hex digits into `buffer`; returns the text.
pub fn format_hex(value: u64, buffer: &mut [u8; 18]) -> &str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut start = buffer.len();
    let mut rest = value;
    loop {
        start -= 1;
        if let (Some(slot), Some(digit)) =
            (buffer.get_mut(start), DIGITS.get((rest & 0xf) as usize))
        {
            *slot = *digit;
        }
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    start -= 2;
    if let Some(prefix) = buffer.get_mut(start..start + 2) {
        prefix.copy_from_slice(b"0x");
    }
    buffer
        .get(start..)
        .and_then(|text| core::str::from_utf8(text).ok())
        .unwrap_or("")
}

/// Writes `value` in decimal into `buffer`; returns the text.
pub fn format_decimal(value: u64, buffer: &mut [u8; 20]) -> &str {
    let mut start = buffer.len();
    let mut rest = value;
    loop {
        start -= 1;
        if let Some(slot) = buffer.get_mut(start) {
            *slot = b'0' + (rest % 10) as u8;
        }
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    buffer
        .get(start..)
        .and_then(|text| core::str::from_utf8(text).ok())
        .unwrap_or("")
}

/// A [`MessageSink`] that hands every byte of the message to a function, such as a port write.
pub struct ByteSink<F: FnMut(u8)>(pub F);

impl<F: FnMut(u8)> MessageSink for ByteSink<F> {
    fn text(&mut self, text: &str) {
        for byte in text.bytes() {
            (self.0)(byte);
        }
    }

    fn hex(&mut self, value: u64) {
        let mut buffer = [0u8; 18];
        let text = format_hex(value, &mut buffer);
        self.text(text);
    }

    fn decimal(&mut self, value: u64) {
        let mut buffer = [0u8; 20];
        let text = format_decimal(value, &mut buffer);
        self.text(text);
    }
}

/// A [`MessageSink`] over a `core::fmt::Formatter`, for `Display` on the host. It keeps the
/// first error and writes nothing after it.
pub struct FormatterSink<'a, 'b> {
    formatter: &'a mut fmt::Formatter<'b>,
    /// The result of the writes so far.
    pub result: fmt::Result,
}

impl<'a, 'b> FormatterSink<'a, 'b> {
    /// Returns a sink writing to `formatter`.
    pub fn new(formatter: &'a mut fmt::Formatter<'b>) -> Self {
        Self {
            formatter,
            result: Ok(()),
        }
    }
}

impl MessageSink for FormatterSink<'_, '_> {
    fn text(&mut self, text: &str) {
        if self.result.is_ok() {
            self.result = self.formatter.write_str(text);
        }
    }

    fn hex(&mut self, value: u64) {
        if self.result.is_ok() {
            self.result = write!(self.formatter, "{value:#x}");
        }
    }

    fn decimal(&mut self, value: u64) {
        if self.result.is_ok() {
            self.result = write!(self.formatter, "{value}");
        }
    }
}

/// Maximum length of a fw_cfg file name, without its NUL (QEMU's `FW_CFG_MAX_FILE_PATH`
/// minus one).
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
        let len = field
            .iter()
            .position(|byte| *byte == 0)
            .unwrap_or(field.len());
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

impl FileName {
    /// Writes the name in double quotes, with `?` in place of bytes that are not printable
    /// ASCII.
    pub fn describe(&self, out: &mut dyn MessageSink) {
        out.text("\"");
        for byte in self.as_bytes() {
            let printable = [*byte];
            let shown = match core::str::from_utf8(&printable) {
                Ok(text) if byte.is_ascii_graphic() || *byte == b' ' => text,
                _ => "?",
            };
            out.text(shown);
        }
        out.text("\"");
    }
}

impl fmt::Debug for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sink = FormatterSink::new(f);
        self.describe(&mut sink);
        sink.result
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
    /// ALLOCATE requests an alignment that is not a power of two.
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

impl LoaderError {
    /// Writes the one-line description.
    pub fn describe(&self, out: &mut dyn MessageSink) {
        match self {
            LoaderError::InvalidFileName => {
                out.text("file name is empty or not NUL-terminated within 56 bytes")
            }
            LoaderError::FileNotFound { name } => {
                out.text("fw_cfg has no file ");
                name.describe(out);
            }
            LoaderError::AlreadyAllocated { name } => {
                name.describe(out);
                out.text(" is already allocated");
            }
            LoaderError::InvalidAlignment { name, align } => {
                out.text("alignment ");
                out.hex(u64::from(*align));
                out.text(" of ");
                name.describe(out);
                out.text(" is not a power of two");
            }
            LoaderError::InvalidZone { name, zone } => {
                out.text("zone ");
                out.decimal(u64::from(*zone));
                out.text(" of ");
                name.describe(out);
                out.text(" is neither HIGH (1) nor FSEG (2)");
            }
            LoaderError::ZoneFull {
                name,
                size,
                available,
            } => {
                name.describe(out);
                out.text(" is ");
                out.decimal(u64::from(*size));
                out.text(" bytes but its zone has ");
                out.decimal(*available);
                out.text(" bytes left");
            }
            LoaderError::TooManyFiles { limit } => {
                out.text("more than ");
                out.decimal(*limit as u64);
                out.text(" files are allocated");
            }
            LoaderError::NotAllocated { name } => {
                name.describe(out);
                out.text(" was never allocated");
            }
            LoaderError::InvalidPointerSize { size } => {
                out.text("pointer size ");
                out.decimal(u64::from(*size));
                out.text(" is not 1, 2, 4 or 8");
            }
            LoaderError::OutOfFile {
                name,
                offset,
                length,
                file_size,
            } => {
                out.decimal(*length);
                out.text(" bytes at offset ");
                out.hex(*offset);
                out.text(" lie outside ");
                name.describe(out);
                out.text(" (");
                out.decimal(*file_size as u64);
                out.text(" bytes)");
            }
            LoaderError::PointerOutOfRange { source, value } => {
                out.text("pointer value ");
                out.hex(*value);
                out.text(" does not point into ");
                source.describe(out);
                out.text(" or its result overflows");
            }
            LoaderError::ReadFailed { name } => {
                out.text("fw_cfg reported an error reading ");
                name.describe(out);
            }
        }
    }
}

impl fmt::Display for LoaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sink = FormatterSink::new(f);
        self.describe(&mut sink);
        sink.result
    }
}

impl core::error::Error for LoaderError {}

/// An error that stops the shim before it starts the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShimError {
    /// The configuration page has no magic: the file was not written by `pack_kernel`.
    ConfigMissing {
        /// GPA of the expected page.
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
    /// The fw_cfg signature item does not read "QEMU": no device is at the I/O ports.
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
        /// The failure.
        error: LoaderError,
    },
    /// The table loader left no RSDP: `etc/acpi/rsdp` was never allocated, or it does not start
    /// with "RSD PTR ".
    RsdpMissing,
}

impl ShimError {
    /// Writes the one-line description.
    pub fn describe(&self, out: &mut dyn MessageSink) {
        match self {
            ShimError::ConfigMissing { gpa } => {
                out.text("no shim configuration at ");
                out.hex(*gpa);
                out.text("; the IGVM file was not written by igvmm pack --kernel");
            }
            ShimError::MemoryMapEmpty => out.text("the IGVM memory map parameter is empty"),
            ShimError::TooManyE820Entries { limit } => {
                out.text("the memory map needs more than ");
                out.decimal(*limit as u64);
                out.text(" e820 entries");
            }
            ShimError::ReservedRangeNotRam { start, end } => {
                out.text("range ");
                out.hex(*start);
                out.text("..");
                out.hex(*end);
                out.text(" that the shim needs is not RAM in the IGVM memory map");
            }
            ShimError::CommandLineUnterminated { size } => {
                out.text("the IGVM command line parameter has no NUL within its ");
                out.decimal(*size as u64);
                out.text(" bytes");
            }
            ShimError::CommandLineTooLong { length, limit } => {
                out.text("the command line is ");
                out.decimal(*length as u64);
                out.text(" characters but the kernel accepts at most ");
                out.decimal(u64::from(*limit));
            }
            ShimError::FwCfgMissing { port } => {
                out.text("no fw_cfg device answers at port ");
                out.hex(u64::from(*port));
                out.text("; the ACPI tables come from fw_cfg");
            }
            ShimError::FwCfgFileMissing { name } => {
                out.text("fw_cfg has no file ");
                name.describe(out);
            }
            ShimError::FwCfgFileTooLarge { name, size, limit } => {
                out.text("fw_cfg file ");
                name.describe(out);
                out.text(" is ");
                out.decimal(u64::from(*size));
                out.text(" bytes, more than the ");
                out.decimal(*limit);
                out.text(" bytes the shim reserves");
            }
            ShimError::FwCfgReadFailed { name } => {
                out.text("fw_cfg reported an error reading ");
                name.describe(out);
            }
            ShimError::TableLoader { command, error } => {
                out.text("etc/table-loader command ");
                out.decimal(*command as u64);
                out.text(": ");
                error.describe(out);
            }
            ShimError::RsdpMissing => out.text(
                "the ACPI table loader produced no RSDP (etc/acpi/rsdp starting with \"RSD PTR \")",
            ),
        }
    }
}

impl fmt::Display for ShimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sink = FormatterSink::new(f);
        self.describe(&mut sink);
        sink.result
    }
}

impl core::error::Error for ShimError {}
