//! Linux's `struct boot_params` (the "zero page"): field offsets, the e820 table built from the
//! IGVM memory map, and the command-line choice.
//!
//! Offsets follow Linux's Documentation/arch/x86/zero-page.rst and boot.rst. The setup header
//! occupies 0x1f1 up to `0x202 + byte at 0x201`. The packer fills the fields fixed at pack time
//! (setup header, initrd), and the shim fills those known only at launch (e820, command line,
//! RSDP). The file uses only `core`, because the freestanding shim compiles it too. Every access
//! goes through bounds-checked helpers, so a short slice never panics.

use super::layout;
use super::shim_error::ShimError;

/// Size of `struct boot_params`.
pub const ZERO_PAGE_SIZE: usize = 4096;

/// `acpi_rsdp_addr`: physical address of the RSDP (u64).
pub const ACPI_RSDP_ADDR: usize = 0x070;
/// `ext_ramdisk_image`: bits 63:32 of the initrd address (u32).
pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
/// `ext_ramdisk_size`: bits 63:32 of the initrd size (u32).
pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
/// `ext_cmd_line_ptr`: bits 63:32 of the command-line address (u32).
pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
/// `e820_entries`: number of entries in the e820 table (u8).
pub const E820_ENTRIES: usize = 0x1e8;
/// `sentinel`: must stay zero, or the kernel clears fields it thinks a broken loader left (u8).
pub const SENTINEL: usize = 0x1ef;
/// Start of `struct setup_header`.
pub const SETUP_HEADER: usize = 0x1f1;
/// `setup_sects`: size of the real-mode setup in 512-byte sectors; 0 means 4 (u8).
pub const SETUP_SECTS: usize = 0x1f1;
/// `vid_mode` (u16).
pub const VID_MODE: usize = 0x1fa;
/// `boot_flag`: 0xAA55 (u16).
pub const BOOT_FLAG: usize = 0x1fe;
/// `jump`: a short jump whose offset byte gives the end of the setup header (u16).
pub const JUMP: usize = 0x200;
/// `header`: "HdrS" (u32).
pub const HEADER: usize = 0x202;
/// `version`: boot protocol version, major in the high byte (u16).
pub const VERSION: usize = 0x206;
/// `type_of_loader` (u8).
pub const TYPE_OF_LOADER: usize = 0x210;
/// `loadflags` (u8).
pub const LOADFLAGS: usize = 0x211;
/// `code32_start`: load address of the protected-mode kernel (u32).
pub const CODE32_START: usize = 0x214;
/// `ramdisk_image`: bits 31:0 of the initrd address (u32).
pub const RAMDISK_IMAGE: usize = 0x218;
/// `ramdisk_size`: bits 31:0 of the initrd size (u32).
pub const RAMDISK_SIZE: usize = 0x21c;
/// `cmd_line_ptr`: bits 31:0 of the command-line address (u32).
pub const CMD_LINE_PTR: usize = 0x228;
/// `initrd_addr_max`: highest byte an initrd may occupy (u32).
pub const INITRD_ADDR_MAX: usize = 0x22c;
/// `kernel_alignment` (u32).
pub const KERNEL_ALIGNMENT: usize = 0x230;
/// `relocatable_kernel` (u8).
pub const RELOCATABLE_KERNEL: usize = 0x234;
/// `xloadflags` (u16).
pub const XLOADFLAGS: usize = 0x236;
/// `cmdline_size`: most characters of command line, without the NUL (u32).
pub const CMDLINE_SIZE: usize = 0x238;
/// `pref_address`: preferred load address (u64).
pub const PREF_ADDRESS: usize = 0x258;
/// `init_size`: memory the kernel needs from its runtime start before it reads the memory
/// map (u32).
pub const INIT_SIZE: usize = 0x260;
/// `e820_table`: 128 entries of 20 bytes.
pub const E820_TABLE: usize = 0x2d0;
/// Entries that fit in `e820_table`.
pub const E820_MAX_ENTRIES: usize = 128;
/// Bytes of one e820 entry: u64 address, u64 size, u32 type.
pub const E820_ENTRY_SIZE: usize = 20;

/// `boot_flag` value.
pub const BOOT_FLAG_MAGIC: u16 = 0xAA55;
/// `header` value, "HdrS".
pub const HEADER_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` for a loader without an assigned ID.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `xloadflags` bit: the kernel has the 64-bit entry point at offset 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `loadflags` bit: the protected-mode kernel is loaded at 0x100000 or above.
pub const LOADED_HIGH: u8 = 1 << 0;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;
/// e820 type of ACPI tables the OS may reclaim once it has read them.
pub const E820_ACPI: u32 = 3;
/// e820 type of persistent memory (Linux `E820_TYPE_PMEM`).
pub const E820_PMEM: u32 = 7;
/// e820 type of specific-purpose memory (Linux `E820_TYPE_SOFT_RESERVED`).
pub const E820_SOFT_RESERVED: u32 = 0xefff_ffff;

/// Bytes of one `IGVM_VHS_MEMORY_MAP_ENTRY`.
pub const IGVM_MEMORY_MAP_ENTRY_SIZE: usize = 24;
const IGVM_MEMORY: u16 = 0;
const IGVM_PLATFORM_RESERVED: u16 = 1;
const IGVM_PERSISTENT: u16 = 2;
const IGVM_VTL2_PROTECTABLE: u16 = 3;
const IGVM_SPECIFIC_PURPOSE: u16 = 4;

/// Writes `value` little-endian at `offset`; does nothing when the page is too short.
pub fn put(page: &mut [u8], offset: usize, value: &[u8]) {
    if let Some(slot) = offset
        .checked_add(value.len())
        .and_then(|end| page.get_mut(offset..end))
    {
        slot.copy_from_slice(value);
    }
}

/// Reads `N` bytes at `offset`, or zeros when the page is too short.
pub fn get<const N: usize>(page: &[u8], offset: usize) -> [u8; N] {
    let mut value = [0u8; N];
    if let Some(slice) = offset.checked_add(N).and_then(|end| page.get(offset..end)) {
        value.copy_from_slice(slice);
    }
    value
}

/// Reads a little-endian u16 at `offset`.
pub fn get_u16(page: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(get(page, offset))
}

/// Reads a little-endian u32 at `offset`.
pub fn get_u32(page: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(get(page, offset))
}

/// Reads a little-endian u64 at `offset`.
pub fn get_u64(page: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(get(page, offset))
}

/// Sets `cmd_line_ptr` and `ext_cmd_line_ptr` to `gpa`.
pub fn set_command_line(page: &mut [u8], gpa: u64) {
    put(page, CMD_LINE_PTR, &(gpa as u32).to_le_bytes());
    put(page, EXT_CMD_LINE_PTR, &((gpa >> 32) as u32).to_le_bytes());
}

/// Sets `ramdisk_image`, `ramdisk_size` and their high halves.
pub fn set_ramdisk(page: &mut [u8], gpa: u64, size: u64) {
    put(page, RAMDISK_IMAGE, &(gpa as u32).to_le_bytes());
    put(page, EXT_RAMDISK_IMAGE, &((gpa >> 32) as u32).to_le_bytes());
    put(page, RAMDISK_SIZE, &(size as u32).to_le_bytes());
    put(page, EXT_RAMDISK_SIZE, &((size >> 32) as u32).to_le_bytes());
}

/// Sets `acpi_rsdp_addr`.
pub fn set_rsdp(page: &mut [u8], gpa: u64) {
    put(page, ACPI_RSDP_ADDR, &gpa.to_le_bytes());
}

/// A range the shim takes out of RAM and reports with its own e820 type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedRange {
    /// First byte.
    pub start: u64,
    /// First byte after the range.
    pub end: u64,
    /// The e820 type reported to the kernel.
    pub e820_type: u32,
}

/// The ranges the shim takes out of RAM, sorted by address: its own pages, the ACPI tables of
/// the HIGH zone, and the legacy VGA and BIOS area that contains the RSDP.
pub const SHIM_RESERVED_RANGES: [ReservedRange; 3] = [
    ReservedRange {
        start: layout::SHIM_REGION_START,
        end: layout::SHIM_REGION_END,
        e820_type: E820_RESERVED,
    },
    ReservedRange {
        start: layout::ACPI_HIGH_ZONE_GPA,
        end: layout::ACPI_HIGH_ZONE_GPA + layout::ACPI_HIGH_ZONE_SIZE,
        e820_type: E820_ACPI,
    },
    ReservedRange {
        start: layout::LEGACY_AREA_START,
        end: layout::LEGACY_AREA_END,
        e820_type: E820_RESERVED,
    },
];

/// One IGVM memory map entry, in bytes instead of pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MemoryMapEntry {
    start: u64,
    end: u64,
    igvm_type: u16,
}

impl MemoryMapEntry {
    fn is_ram(&self) -> bool {
        matches!(self.igvm_type, IGVM_MEMORY | IGVM_VTL2_PROTECTABLE)
    }

    fn e820_type(&self) -> u32 {
        match self.igvm_type {
            IGVM_MEMORY | IGVM_VTL2_PROTECTABLE => E820_RAM,
            IGVM_PERSISTENT => E820_PMEM,
            IGVM_SPECIFIC_PURPOSE => E820_SOFT_RESERVED,
            IGVM_PLATFORM_RESERVED => E820_RESERVED,
            _ => E820_RESERVED,
        }
    }
}

/// Iterates over the entries of an IGVM memory map parameter up to the all-zero terminator
/// (an entry with no pages) or the end of the bytes. Entries whose end overflows are cut at
/// the top of the address space.
fn memory_map_entries(bytes: &[u8]) -> impl Iterator<Item = MemoryMapEntry> + '_ {
    bytes
        .chunks_exact(IGVM_MEMORY_MAP_ENTRY_SIZE)
        .map(|entry| {
            let page = u64::from_le_bytes(get(entry, 0));
            let pages = u64::from_le_bytes(get(entry, 8));
            let igvm_type = u16::from_le_bytes(get(entry, 16));
            let start = page.saturating_mul(layout::PAGE_SIZE);
            let end = start.saturating_add(pages.saturating_mul(layout::PAGE_SIZE));
            MemoryMapEntry {
                start,
                end,
                igvm_type,
            }
        })
        .take_while(|entry| entry.end > entry.start)
}

/// Appends e820 entries to the table of a zero page.
struct E820Writer<'a> {
    page: &'a mut [u8],
    count: usize,
}

impl E820Writer<'_> {
    fn push(&mut self, start: u64, end: u64, e820_type: u32) -> Result<(), ShimError> {
        if end <= start {
            return Ok(());
        }
        if self.count >= E820_MAX_ENTRIES {
            return Err(ShimError::TooManyE820Entries {
                limit: E820_MAX_ENTRIES,
            });
        }
        let offset = E820_TABLE + self.count * E820_ENTRY_SIZE;
        put(self.page, offset, &start.to_le_bytes());
        put(self.page, offset + 8, &(end - start).to_le_bytes());
        put(self.page, offset + 16, &e820_type.to_le_bytes());
        self.count += 1;
        Ok(())
    }
}

/// Writes the e820 table of `page` from the IGVM memory map `memory_map`, with the ranges in
/// `reserved` (sorted by address, not overlapping) taken out of RAM and reported with their own
/// type. Returns the number of entries.
///
/// Each reserved range must lie inside RAM of the memory map, because the shim writes to it.
/// Entries keep the memory map's order; IGVM loaders report it sorted.
pub fn write_e820(
    page: &mut [u8],
    memory_map: &[u8],
    reserved: &[ReservedRange],
) -> Result<usize, ShimError> {
    for range in reserved {
        let covered: u64 = memory_map_entries(memory_map)
            .filter(MemoryMapEntry::is_ram)
            .map(|entry| {
                entry
                    .end
                    .min(range.end)
                    .saturating_sub(entry.start.max(range.start))
            })
            .sum();
        if covered != range.end.saturating_sub(range.start) {
            return Err(ShimError::ReservedRangeNotRam {
                start: range.start,
                end: range.end,
            });
        }
    }

    let mut writer = E820Writer { page, count: 0 };
    for entry in memory_map_entries(memory_map) {
        if !entry.is_ram() {
            writer.push(entry.start, entry.end, entry.e820_type())?;
            continue;
        }
        let mut cursor = entry.start;
        for range in reserved
            .iter()
            .filter(|range| range.start < entry.end && range.end > entry.start)
        {
            writer.push(cursor, range.start, E820_RAM)?;
            let piece_start = range.start.max(entry.start);
            let piece_end = range.end.min(entry.end);
            writer.push(piece_start, piece_end, range.e820_type)?;
            cursor = cursor.max(piece_end);
        }
        writer.push(cursor, entry.end, E820_RAM)?;
    }

    let count = writer.count;
    if count == 0 {
        return Err(ShimError::MemoryMapEmpty);
    }
    put(writer.page, E820_ENTRIES, &[count as u8]);
    Ok(count)
}

/// The command line chosen for the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandLineChoice {
    /// The IGVM CommandLine parameter, which `igvmm run --cmdline` fills; this many characters.
    Parameter(usize),
    /// The default given at pack time, because the parameter is empty; this many characters.
    Default(usize),
}

/// Chooses between the IGVM command line `parameter` and the packed `default` (both
/// NUL-terminated within their bytes): the parameter unless it is empty. Fails when the chosen
/// line has no NUL or is longer than `limit` characters, which would make the kernel cut it.
pub fn choose_command_line(
    parameter: &[u8],
    default: &[u8],
    limit: u32,
) -> Result<CommandLineChoice, ShimError> {
    let length_of = |bytes: &[u8]| {
        bytes
            .iter()
            .position(|byte| *byte == 0)
            .ok_or(ShimError::CommandLineUnterminated { size: bytes.len() })
    };
    let choice = match length_of(parameter)? {
        0 => CommandLineChoice::Default(length_of(default)?),
        length => CommandLineChoice::Parameter(length),
    };
    let (CommandLineChoice::Parameter(length) | CommandLineChoice::Default(length)) = choice;
    if length as u64 > u64::from(limit) {
        return Err(ShimError::CommandLineTooLong { length, limit });
    }
    Ok(choice)
}
