//! An interpreter for QEMU's ACPI linker/loader script, the fw_cfg file `etc/table-loader`.
//!
//! The script is a list of 128-byte commands (QEMU `BiosLinkerLoaderEntry`, in
//! hw/acpi/bios-linker-loader.c), all integers little-endian:
//!
//! - ALLOCATE (1): `char file[56]; u32 align; u8 zone` loads a fw_cfg file into guest memory,
//!   aligned, in the HIGH zone (anywhere below 4 GiB) or the FSEG zone (the BIOS F segment).
//! - ADD_POINTER (2): `char dest[56]; char src[56]; u32 offset; u8 size` adds the address where
//!   `src` was loaded to the `size`-byte integer at `offset` in `dest`.
//! - ADD_CHECKSUM (3): `char file[56]; u32 offset; u32 start; u32 length` subtracts the byte
//!   sum of `start..start + length` from the byte at `offset`, so the range sums to zero.
//! - WRITE_POINTER (4) requests that the firmware write an address back into a fw_cfg file,
//!   which QEMU uses for vmgenid and GHES. igvmm offers neither, so the interpreter skips it.
//!   It also skips command 0 (padding) and unknown commands.
//!
//! Beyond the bounds of each file, the interpreter checks that a pointer points into its source
//! file before relocation and that the relocated value fits in the pointer.
//!
//! The module uses only `core` and no allocation, because the freestanding boot shim runs it;
//! the host tests run it on files in memory.

use super::shim_error::{FileName, LoaderError, ShimError};

/// Bytes of one command.
pub const COMMAND_SIZE: usize = 128;
/// Command: load a file into a zone.
pub const COMMAND_ALLOCATE: u32 = 1;
/// Command: relocate a pointer.
pub const COMMAND_ADD_POINTER: u32 = 2;
/// Command: compute a checksum.
pub const COMMAND_ADD_CHECKSUM: u32 = 3;
/// Command: write a pointer back into fw_cfg; skipped.
pub const COMMAND_WRITE_POINTER: u32 = 4;
/// ALLOCATE zone: anywhere below 4 GiB.
pub const ZONE_HIGH: u8 = 1;
/// ALLOCATE zone: the BIOS F segment.
pub const ZONE_FSEG: u8 = 2;
/// Files the interpreter can allocate. QEMU's x86 machines allocate two (`etc/acpi/tables` and
/// `etc/acpi/rsdp`), and a few more with a TPM or vmgenid.
pub const MAX_FILES: usize = 8;

/// Bytes of a file-name field.
const NAME_FIELD: usize = 56;
const NAME_OFFSET: usize = 4;
const SECOND_NAME_OFFSET: usize = NAME_OFFSET + NAME_FIELD;
const ALLOCATE_ALIGN_OFFSET: usize = 60;
const ALLOCATE_ZONE_OFFSET: usize = 64;
const POINTER_OFFSET_OFFSET: usize = 116;
const POINTER_SIZE_OFFSET: usize = 120;
const CHECKSUM_RESULT_OFFSET: usize = 60;
const CHECKSUM_START_OFFSET: usize = 64;
const CHECKSUM_LENGTH_OFFSET: usize = 68;

/// A file the [`FileSource`] found: a handle and the file size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRef {
    /// Handle for reading the file again (the fw_cfg selector in the shim).
    pub key: u16,
    /// File size in bytes.
    pub size: u32,
}

/// Source of the files that ALLOCATE loads: fw_cfg in the shim, a list of files in the tests.
pub trait FileSource {
    /// Looks a file up by name (without NUL).
    fn find(&mut self, name: &[u8]) -> Option<FileRef>;
    /// Fills `dest` with the first `dest.len()` bytes of the file; returns false when the
    /// device reports an error.
    fn read(&mut self, file: FileRef, dest: &mut [u8]) -> bool;
}

/// Guest memory that files of one zone are loaded into.
pub struct Zone<'m> {
    /// Guest physical address of `memory`.
    pub base: u64,
    /// The memory, which the interpreter fills from the start.
    pub memory: &'m mut [u8],
    /// Bytes of `memory` used so far.
    pub used: usize,
}

impl<'m> Zone<'m> {
    /// Returns an empty zone over `memory` at `base`.
    pub fn new(base: u64, memory: &'m mut [u8]) -> Self {
        Self {
            base,
            memory,
            used: 0,
        }
    }
}

/// Placement of one loaded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// The fw_cfg file name.
    pub name: FileName,
    /// 0 for the HIGH zone, 1 for FSEG.
    zone: usize,
    /// Offset of the file in its zone.
    offset: usize,
    /// File size.
    pub size: usize,
    /// Guest physical address of the file.
    pub gpa: u64,
}

/// The files an interpreter run placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    files: [Option<Allocation>; MAX_FILES],
}

impl Placement {
    /// Returns where `name` was loaded, if it was.
    pub fn find(&self, name: &[u8]) -> Option<&Allocation> {
        self.files
            .iter()
            .flatten()
            .find(|allocation| allocation.name.as_bytes() == name)
    }

    /// Iterates over the files in the order they were allocated.
    pub fn iter(&self) -> impl Iterator<Item = &Allocation> {
        self.files.iter().flatten()
    }
}

/// Runs the commands of `script` (a whole `etc/table-loader`; a trailing partial command is
/// ignored) with files from `source`, loading them into `high` and `fseg`.
pub fn run<'m>(
    script: &[u8],
    source: &mut dyn FileSource,
    high: &mut Zone<'m>,
    fseg: &mut Zone<'m>,
) -> Result<Placement, ShimError> {
    let mut interpreter = Interpreter {
        source,
        zones: [high, fseg],
        placement: Placement {
            files: [None; MAX_FILES],
        },
    };
    for (index, command) in script.chunks_exact(COMMAND_SIZE).enumerate() {
        interpreter
            .command(command)
            .map_err(|error| ShimError::TableLoader {
                command: index,
                error,
            })?;
    }
    Ok(interpreter.placement)
}

fn u32_at(command: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(super::zero_page::get(command, offset))
}

fn name_at(command: &[u8], offset: usize) -> Result<FileName, LoaderError> {
    let field = command
        .get(offset..offset + NAME_FIELD)
        .ok_or(LoaderError::InvalidFileName)?;
    // A name that fills all 56 bytes has no NUL, which QEMU never writes.
    if !field.contains(&0) {
        return Err(LoaderError::InvalidFileName);
    }
    FileName::from_field(field).ok_or(LoaderError::InvalidFileName)
}

struct Interpreter<'s, 'z, 'm> {
    source: &'s mut dyn FileSource,
    zones: [&'z mut Zone<'m>; 2],
    placement: Placement,
}

impl Interpreter<'_, '_, '_> {
    fn command(&mut self, command: &[u8]) -> Result<(), LoaderError> {
        match u32_at(command, 0) {
            COMMAND_ALLOCATE => self.allocate(command),
            COMMAND_ADD_POINTER => self.add_pointer(command),
            COMMAND_ADD_CHECKSUM => self.add_checksum(command),
            _ => Ok(()),
        }
    }

    fn allocation(&self, name: &FileName) -> Result<Allocation, LoaderError> {
        self.placement
            .find(name.as_bytes())
            .copied()
            .ok_or(LoaderError::NotAllocated { name: *name })
    }

    fn file_bytes(&mut self, allocation: &Allocation) -> Option<&mut [u8]> {
        let zone = self.zones.get_mut(allocation.zone)?;
        let end = allocation.offset.checked_add(allocation.size)?;
        zone.memory.get_mut(allocation.offset..end)
    }

    /// Loads the file into the next aligned free bytes of its zone.
    fn allocate(&mut self, command: &[u8]) -> Result<(), LoaderError> {
        let name = name_at(command, NAME_OFFSET)?;
        let align = u32_at(command, ALLOCATE_ALIGN_OFFSET);
        let zone_id = command.get(ALLOCATE_ZONE_OFFSET).copied().unwrap_or(0);
        if !align.is_power_of_two() {
            return Err(LoaderError::InvalidAlignment { name, align });
        }
        let zone_index = match zone_id {
            ZONE_HIGH => 0,
            ZONE_FSEG => 1,
            zone => return Err(LoaderError::InvalidZone { name, zone }),
        };
        if self.placement.find(name.as_bytes()).is_some() {
            return Err(LoaderError::AlreadyAllocated { name });
        }
        let slot_index = self
            .placement
            .files
            .iter()
            .position(Option::is_none)
            .ok_or(LoaderError::TooManyFiles { limit: MAX_FILES })?;
        let file = self
            .source
            .find(name.as_bytes())
            .ok_or(LoaderError::FileNotFound { name })?;

        let zone = self
            .zones
            .get_mut(zone_index)
            .ok_or(LoaderError::InvalidZone {
                name,
                zone: zone_id,
            })?;
        // Align the guest physical address, not the offset in the zone.
        let mask = u64::from(align) - 1;
        let used_gpa = zone.base.saturating_add(zone.used as u64);
        let gpa = used_gpa.checked_add(mask).map(|value| value & !mask);
        let zone_end = zone.base.saturating_add(zone.memory.len() as u64);
        let available = gpa.map_or(0, |gpa| zone_end.saturating_sub(gpa));
        let size = file.size as usize;
        let Some(gpa) = gpa.filter(|_| u64::from(file.size) <= available) else {
            return Err(LoaderError::ZoneFull {
                name,
                size: file.size,
                available,
            });
        };
        let offset = (gpa - zone.base) as usize;
        let dest = zone
            .memory
            .get_mut(offset..offset + size)
            .ok_or(LoaderError::ZoneFull {
                name,
                size: file.size,
                available,
            })?;
        if !self.source.read(file, dest) {
            return Err(LoaderError::ReadFailed { name });
        }
        zone.used = offset + size;

        if let Some(slot) = self.placement.files.get_mut(slot_index) {
            *slot = Some(Allocation {
                name,
                zone: zone_index,
                offset,
                size,
                gpa,
            });
        }
        Ok(())
    }

    /// Adds the source file's address to a little-endian pointer in the destination file.
    fn add_pointer(&mut self, command: &[u8]) -> Result<(), LoaderError> {
        let dest_name = name_at(command, NAME_OFFSET)?;
        let source_name = name_at(command, SECOND_NAME_OFFSET)?;
        let offset = u32_at(command, POINTER_OFFSET_OFFSET) as usize;
        let size = command.get(POINTER_SIZE_OFFSET).copied().unwrap_or(0);
        if !matches!(size, 1 | 2 | 4 | 8) {
            return Err(LoaderError::InvalidPointerSize { size });
        }
        let width = usize::from(size);
        let source = self.allocation(&source_name)?;
        let dest = self.allocation(&dest_name)?;
        let out_of_file = LoaderError::OutOfFile {
            name: dest_name,
            offset: offset as u64,
            length: u64::from(size),
            file_size: dest.size,
        };
        let bytes = self
            .file_bytes(&dest)
            .and_then(|file| file.get_mut(offset..offset.checked_add(width)?))
            .ok_or(out_of_file)?;

        let mut value = [0u8; 8];
        if let Some(low) = value.get_mut(..width) {
            low.copy_from_slice(bytes);
        }
        let pointer = u64::from_le_bytes(value);
        let out_of_range = LoaderError::PointerOutOfRange {
            source: source_name,
            value: pointer,
        };
        if pointer >= source.size as u64 {
            return Err(out_of_range);
        }
        let relocated = pointer.checked_add(source.gpa).ok_or(out_of_range)?;
        if width < 8 && relocated >> (width * 8) != 0 {
            return Err(out_of_range);
        }
        bytes.copy_from_slice(relocated.to_le_bytes().get(..width).unwrap_or_default());
        Ok(())
    }

    /// Makes the byte sum of a range zero by adjusting one byte in it.
    fn add_checksum(&mut self, command: &[u8]) -> Result<(), LoaderError> {
        let name = name_at(command, NAME_OFFSET)?;
        let result = u32_at(command, CHECKSUM_RESULT_OFFSET) as usize;
        let start = u32_at(command, CHECKSUM_START_OFFSET) as usize;
        let length = u32_at(command, CHECKSUM_LENGTH_OFFSET) as usize;
        let file = self.allocation(&name)?;
        let out_of_file = |offset: usize, length: usize| LoaderError::OutOfFile {
            name,
            offset: offset as u64,
            length: length as u64,
            file_size: file.size,
        };
        let bytes = self.file_bytes(&file).ok_or(out_of_file(0, file.size))?;
        let sum = start
            .checked_add(length)
            .and_then(|end| bytes.get(start..end))
            .ok_or(out_of_file(start, length))?
            .iter()
            .fold(0u8, |sum, byte| sum.wrapping_add(*byte));
        let checksum = bytes.get_mut(result).ok_or(out_of_file(result, 1))?;
        *checksum = checksum.wrapping_sub(sum);
        Ok(())
    }
}

/// Name of the fw_cfg file that contains the RSDP.
pub const RSDP_FILE: &[u8] = b"etc/acpi/rsdp";
/// The RSDP signature.
pub const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";

/// Returns the address of the RSDP that `placement` loaded: the file `etc/acpi/rsdp`, which
/// must start with "RSD PTR ".
pub fn find_rsdp(
    placement: &Placement,
    high: &Zone<'_>,
    fseg: &Zone<'_>,
) -> Result<u64, ShimError> {
    let allocation = placement.find(RSDP_FILE).ok_or(ShimError::RsdpMissing)?;
    let zone = if allocation.zone == 0 { high } else { fseg };
    let signature = allocation
        .offset
        .checked_add(RSDP_SIGNATURE.len())
        .and_then(|end| zone.memory.get(allocation.offset..end));
    if signature == Some(&RSDP_SIGNATURE[..]) {
        Ok(allocation.gpa)
    } else {
        Err(ShimError::RsdpMissing)
    }
}
