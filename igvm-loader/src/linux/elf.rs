//! The loadable segments of a little-endian x86-64 ELF executable: an uncompressed Linux
//! `vmlinux`, or the boot shim that igvm-loader's build script links.
//!
//! Only the ELF header and the program headers are read (System V gABI, ELF-64 object file
//! format). The file uses only `core`, because `build.rs` includes it too. Every offset from the
//! file is checked, so a truncated or hostile file gives an [`ElfError`] and never a panic.

use core::fmt;

/// The ELF magic number.
pub const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const CLASS_64: u8 = 2;
const DATA_LITTLE_ENDIAN: u8 = 1;
const MACHINE_X86_64: u16 = 62;
const TYPE_EXEC: u16 = 2;
const PROGRAM_HEADER_SIZE: usize = 56;
const PT_LOAD: u32 = 1;
const HEADER_SIZE: usize = 64;

/// An error in an ELF file that prevents loading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    /// The file is shorter than the ELF header.
    Truncated,
    /// The file is not a 64-bit little-endian x86-64 executable.
    NotX86_64Executable {
        /// `e_ident[EI_CLASS]`.
        class: u8,
        /// `e_ident[EI_DATA]`.
        data: u8,
        /// `e_type`.
        elf_type: u16,
        /// `e_machine`.
        machine: u16,
    },
    /// The program header table does not lie inside the file or has an unexpected entry size.
    InvalidProgramHeaders {
        /// `e_phoff`.
        offset: u64,
        /// `e_phnum`.
        count: u16,
        /// `e_phentsize`.
        entry_size: u16,
    },
    /// A segment's file bytes do not lie inside the file, or it has more file bytes than memory
    /// bytes.
    InvalidSegment {
        /// Index of the program header.
        index: usize,
    },
    /// The file has no PT_LOAD segment.
    NoLoadableSegment,
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::Truncated => f.write_str("the file is shorter than the 64-byte ELF header"),
            ElfError::NotX86_64Executable {
                class,
                data,
                elf_type,
                machine,
            } => write!(
                f,
                "not a 64-bit little-endian x86-64 executable (class {class}, data {data}, type {elf_type}, machine {machine}; expected 2, 1, 2, 62)"
            ),
            ElfError::InvalidProgramHeaders {
                offset,
                count,
                entry_size,
            } => write!(
                f,
                "program header table at {offset:#x} ({count} entries of {entry_size} bytes) does not fit in the file"
            ),
            ElfError::InvalidSegment { index } => write!(
                f,
                "program header {index} describes file bytes outside the file or more file bytes than memory bytes"
            ),
            ElfError::NoLoadableSegment => f.write_str("the file has no PT_LOAD segment"),
        }
    }
}

impl core::error::Error for ElfError {}

/// One PT_LOAD segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Physical load address (`p_paddr`).
    pub paddr: u64,
    /// Virtual address (`p_vaddr`).
    pub vaddr: u64,
    /// The segment's bytes from the file (`p_filesz` bytes at `p_offset`).
    pub data: &'a [u8],
    /// Bytes in memory (`p_memsz`); those past `data` are zeros.
    pub mem_size: u64,
}

/// A parsed ELF executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elf<'a> {
    bytes: &'a [u8],
    /// The entry point (`e_entry`), a virtual address.
    pub entry: u64,
    program_headers: &'a [u8],
}

fn le_u16(bytes: &[u8], offset: usize) -> u16 {
    let mut value = [0u8; 2];
    if let Some(slice) = bytes.get(offset..offset + 2) {
        value.copy_from_slice(slice);
    }
    u16::from_le_bytes(value)
}

fn le_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut value = [0u8; 4];
    if let Some(slice) = bytes.get(offset..offset + 4) {
        value.copy_from_slice(slice);
    }
    u32::from_le_bytes(value)
}

fn le_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut value = [0u8; 8];
    if let Some(slice) = bytes.get(offset..offset + 8) {
        value.copy_from_slice(slice);
    }
    u64::from_le_bytes(value)
}

impl<'a> Elf<'a> {
    /// Returns whether `bytes` start with the ELF magic.
    pub fn is_elf(bytes: &[u8]) -> bool {
        bytes.starts_with(&ELF_MAGIC)
    }

    /// Parses the ELF header and checks the program header table.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        let header = bytes.get(..HEADER_SIZE).ok_or(ElfError::Truncated)?;
        let class = header.get(4).copied().unwrap_or(0);
        let data = header.get(5).copied().unwrap_or(0);
        let elf_type = le_u16(header, 16);
        let machine = le_u16(header, 18);
        if !header.starts_with(&ELF_MAGIC)
            || class != CLASS_64
            || data != DATA_LITTLE_ENDIAN
            || elf_type != TYPE_EXEC
            || machine != MACHINE_X86_64
        {
            return Err(ElfError::NotX86_64Executable {
                class,
                data,
                elf_type,
                machine,
            });
        }
        let entry = le_u64(header, 24);
        let offset = le_u64(header, 32);
        let entry_size = le_u16(header, 54);
        let count = le_u16(header, 56);
        let invalid = ElfError::InvalidProgramHeaders {
            offset,
            count,
            entry_size,
        };
        if usize::from(entry_size) != PROGRAM_HEADER_SIZE {
            return Err(invalid);
        }
        let start = usize::try_from(offset).map_err(|_| invalid)?;
        let program_headers = start
            .checked_add(usize::from(count) * PROGRAM_HEADER_SIZE)
            .and_then(|end| bytes.get(start..end))
            .ok_or(invalid)?;
        Ok(Self {
            bytes,
            entry,
            program_headers,
        })
    }

    /// Returns the PT_LOAD segments in program-header order.
    pub fn segments(&self) -> Result<SegmentIter<'a>, ElfError> {
        let iter = SegmentIter {
            bytes: self.bytes,
            program_headers: self.program_headers,
            index: 0,
        };
        // Check every segment once, so that callers can iterate without errors.
        let mut any = false;
        for segment in iter.clone() {
            segment?;
            any = true;
        }
        if !any {
            return Err(ElfError::NoLoadableSegment);
        }
        Ok(iter)
    }

    /// Returns the physical address of the entry point: `e_entry` translated through the
    /// segment whose virtual range contains it, or `e_entry` itself when no segment's virtual
    /// range does (Debian's 6.12 vmlinux gives a physical `e_entry`, 0x1000b53).
    pub fn physical_entry(&self) -> Result<u64, ElfError> {
        for segment in self.segments()?.flatten() {
            let offset = self.entry.wrapping_sub(segment.vaddr);
            if self.entry >= segment.vaddr && offset < segment.mem_size {
                return Ok(segment.paddr.wrapping_add(offset));
            }
        }
        Ok(self.entry)
    }
}

/// Iterator over PT_LOAD segments; yields an error for a segment outside the file.
#[derive(Debug, Clone)]
pub struct SegmentIter<'a> {
    bytes: &'a [u8],
    program_headers: &'a [u8],
    index: usize,
}

impl<'a> Iterator for SegmentIter<'a> {
    type Item = Result<Segment<'a>, ElfError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let start = self.index.checked_mul(PROGRAM_HEADER_SIZE)?;
            let header = self
                .program_headers
                .get(start..start.checked_add(PROGRAM_HEADER_SIZE)?)?;
            let index = self.index;
            self.index += 1;
            if le_u32(header, 0) != PT_LOAD {
                continue;
            }
            let file_offset = le_u64(header, 8);
            let vaddr = le_u64(header, 16);
            let paddr = le_u64(header, 24);
            let file_size = le_u64(header, 32);
            let mem_size = le_u64(header, 40);
            let data = usize::try_from(file_offset)
                .ok()
                .zip(usize::try_from(file_size).ok())
                .and_then(|(offset, size)| self.bytes.get(offset..offset.checked_add(size)?))
                .filter(|_| file_size <= mem_size);
            return Some(match data {
                Some(data) => Ok(Segment {
                    paddr,
                    vaddr,
                    data,
                    mem_size,
                }),
                None => Err(ElfError::InvalidSegment { index }),
            });
        }
    }
}
