//! QEMU's firmware configuration device (fw_cfg) on x86 I/O ports 0x510..0x51B, with DMA.
//!
//! The guest-visible interface follows QEMU's `docs/specs/fw_cfg.rst` and the behaviour of
//! `hw/nvram/fw_cfg.c`:
//! - Port 0x510 takes a 16-bit little-endian selector write, which picks an item and rewinds
//!   its read offset. Port 0x511 returns the item's next byte on each read. A one-byte read of
//!   port 0x510 does the same, because QEMU maps both ports to one handler.
//! - Ports 0x514..0x51B hold the big-endian guest-physical address of a DMA descriptor
//!   `{ be32 control, be32 length, be64 address }`. A 4-byte write to 0x514 sets the high half,
//!   a 4-byte write to 0x518 adds the low half and starts the transfer, and an 8-byte write to
//!   0x514 sets the whole address and starts it. Reads return the bytes of "QEMU CFG".
//! - Selector 0x19 is the file directory: a big-endian count, then 64-byte entries
//!   `{ be32 size, be16 select, u16 reserved, char name[56] }` sorted by name, with selectors
//!   numbered from 0x20 in that order.
//!
//! [`FwCfg::new`] creates the legacy items that SeaBIOS and OVMF read, with the values QEMU
//! gives a machine without NUMA. They are the signature, ID, UUID, RAM size, nographic, CPU
//! counts, NUMA, boot menu, IRQ0 override and the empty legacy ACPI and SMBIOS lists. The VMM adds
//! files such as `etc/e820`, `etc/boot-fail-wait` and `bootorder` with [`FwCfg::add_file`],
//! using [`e820_bytes`], [`boot_fail_wait_bytes`] and [`bootorder_bytes`] for their contents.
//!
//! Limits:
//! - Every item is read-only. A DMA write sets the ERROR bit, as QEMU does for items added
//!   with `read_only = true`, and data-port writes are ignored as in QEMU 2.4 and later.
//! - The legacy "select callback" that lets QEMU build ACPI tables when they are first read
//!   does not exist: items are plain bytes fixed before the guest starts.
//! - Only the x86 port-I/O layout is implemented, not the MMIO layout of Arm and RISC-V.
//! - An access wider than one byte to ports 0x510/0x511 is taken as string I/O (`rep insb`)
//!   and returns that many consecutive item bytes.

use std::collections::BTreeMap;

use log::{debug, trace};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus::{BusDevice, DeviceAction};

/// First I/O port of the device (the selector register).
pub const FW_CFG_PORT_BASE: u64 = 0x510;
/// Number of I/O ports the device decodes: selector, data, two unused ports and the 8-byte DMA
/// address register. This is also the length in the ACPI `_CRS` of the `QEMU0002` device.
pub const FW_CFG_PORT_COUNT: u64 = 0x0C;

/// Offset of the 16-bit selector register.
const SELECTOR_OFFSET: u64 = 0;
/// Offset of the 8-bit data register.
const DATA_OFFSET: u64 = 1;
/// Offset of the high half of the big-endian DMA address register.
const DMA_HIGH_OFFSET: u64 = 4;
/// Offset of the low half of the DMA address register. Writing it starts the transfer.
const DMA_LOW_OFFSET: u64 = 8;
/// Length of the DMA address register.
const DMA_REGISTER_LEN: u64 = 8;

/// Value returned by reads of the DMA address register, byte for byte.
pub const DMA_SIGNATURE: [u8; 8] = *b"QEMU CFG";

/// Selector of the 4-byte signature "QEMU".
pub const FW_CFG_SIGNATURE: u16 = 0x00;
/// Selector of the little-endian feature bitmap ([`FW_CFG_ID_TRADITIONAL`] | [`FW_CFG_ID_DMA`]).
pub const FW_CFG_ID: u16 = 0x01;
/// Selector of the 16-byte machine UUID.
pub const FW_CFG_UUID: u16 = 0x02;
/// Selector of the RAM size in bytes (u64 LE).
pub const FW_CFG_RAM_SIZE: u16 = 0x03;
/// Selector of the "no graphics" flag (u16 LE); SeaBIOS moves its console to COM1 when it is 1.
pub const FW_CFG_NOGRAPHIC: u16 = 0x04;
/// Selector of the number of boot CPUs (u16 LE).
pub const FW_CFG_NB_CPUS: u16 = 0x05;
/// Selector of the NUMA table: u64 LE node count, then a node per APIC ID, then memory per node.
pub const FW_CFG_NUMA: u16 = 0x0D;
/// Selector of the boot-menu flag (u16 LE).
pub const FW_CFG_BOOT_MENU: u16 = 0x0E;
/// Selector of the CPU limit (u16 LE). On x86 QEMU stores the APIC-ID limit here.
pub const FW_CFG_MAX_CPUS: u16 = 0x0F;
/// Selector of the file directory.
pub const FW_CFG_FILE_DIR: u16 = 0x19;
/// Selector of the first file. File `i` in name order has selector `FW_CFG_FILE_FIRST + i`.
pub const FW_CFG_FILE_FIRST: u16 = 0x20;
/// Selector bit for the architecture-specific item space.
pub const FW_CFG_ARCH_LOCAL: u16 = 0x8000;
/// Old write-enable selector bit, ignored since QEMU 2.4.
pub const FW_CFG_WRITE_CHANNEL: u16 = 0x4000;
/// Selector bits that index an item inside its space.
pub const FW_CFG_ENTRY_MASK: u16 = !(FW_CFG_ARCH_LOCAL | FW_CFG_WRITE_CHANNEL);
/// Current-item value after a selector beyond the item space. Reads then return 0.
pub const FW_CFG_INVALID: u16 = 0xFFFF;
/// x86 selector of the legacy ACPI table list (empty here, as in QEMU without `-acpitable`).
pub const FW_CFG_ACPI_TABLES: u16 = FW_CFG_ARCH_LOCAL;
/// x86 selector of the legacy SMBIOS entry list (empty here).
pub const FW_CFG_SMBIOS_ENTRIES: u16 = FW_CFG_ARCH_LOCAL | 0x01;
/// x86 selector of the IRQ0 override flag (u32 LE 1: the PIT is wired to GSI 2).
pub const FW_CFG_IRQ0_OVERRIDE: u16 = FW_CFG_ARCH_LOCAL | 0x02;

/// [`FW_CFG_ID`] bit: the port-I/O interface is present (always set).
pub const FW_CFG_ID_TRADITIONAL: u32 = 0x01;
/// [`FW_CFG_ID`] bit: the DMA interface is present.
pub const FW_CFG_ID_DMA: u32 = 0x02;

/// DMA control bit set by the device when the transfer failed.
pub const DMA_CTL_ERROR: u32 = 0x01;
/// DMA control bit: copy item bytes to guest memory.
pub const DMA_CTL_READ: u32 = 0x02;
/// DMA control bit: advance the item offset without copying.
pub const DMA_CTL_SKIP: u32 = 0x04;
/// DMA control bit: select the item in bits 16..31 of the control word first.
pub const DMA_CTL_SELECT: u32 = 0x08;
/// DMA control bit: copy guest memory into the item (rejected, all items are read-only).
pub const DMA_CTL_WRITE: u32 = 0x10;

/// Size of the DMA descriptor in guest memory.
const DMA_DESCRIPTOR_LEN: usize = 16;
/// Number of file slots QEMU reserves by default. The directory has at least this many entries.
pub const FILE_SLOTS_DEFAULT: usize = 0x20;
/// Maximum length of a file name, without its NUL terminator.
pub const FILE_NAME_MAX: usize = 55;
/// Size of the name field of a directory entry, NUL terminator included.
const FILE_NAME_FIELD: usize = FILE_NAME_MAX + 1;
/// Size of one directory entry.
const DIR_ENTRY_LEN: usize = 64;
/// Maximum number of files: the selectors from 0x20 up to the end of the 14-bit item space.
pub const FILE_COUNT_MAX: usize = (FW_CFG_ENTRY_MASK - FW_CFG_FILE_FIRST) as usize + 1;
/// Items must be smaller than this, because sizes are 32-bit in the directory and DMA.
const ITEM_LEN_LIMIT: usize = u32::MAX as usize;
/// Largest piece of zeros written to guest memory at once when a DMA read runs past an item.
const ZERO_CHUNK_LEN: usize = 64 * 1024;
/// Source of zeros for DMA reads past the end of an item.
static ZERO_CHUNK: [u8; ZERO_CHUNK_LEN] = [0; ZERO_CHUNK_LEN];

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;
/// e820 type of ACPI reclaimable memory.
pub const E820_ACPI: u32 = 3;
/// e820 type of ACPI NVS memory.
pub const E820_NVS: u32 = 4;
/// e820 type of unusable memory.
pub const E820_UNUSABLE: u32 = 5;
/// Size of one `etc/e820` entry: `{ u64 base, u64 length, u32 type }`, packed, little-endian.
pub const E820_ENTRY_LEN: usize = 20;

/// Error from adding an item or a file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    /// The file name is empty.
    #[error("fw_cfg file name is empty")]
    EmptyName,
    /// The file name does not fit the 56-byte directory field with its NUL terminator.
    #[error("fw_cfg file name {name:?} is {len} bytes long; the maximum is 55")]
    NameTooLong {
        /// The rejected name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The file name contains a NUL byte, which would end it early in the directory.
    #[error("fw_cfg file name {name:?} contains a NUL byte")]
    NameContainsNul {
        /// The rejected name.
        name: String,
    },
    /// A file with this name exists already.
    #[error("fw_cfg file {name:?} already exists")]
    DuplicateFile {
        /// The duplicated name.
        name: String,
    },
    /// The selector space has no room for another file.
    #[error("fw_cfg has no selector left for file {name:?}; at most 16352 files fit")]
    TooManyFiles {
        /// The name of the file that did not fit.
        name: String,
    },
    /// The item is 4 GiB or larger, which the 32-bit sizes of the interface cannot describe.
    #[error("fw_cfg item {item} is {len} bytes long; items must be smaller than 4 GiB")]
    ItemTooLarge {
        /// The file name, or the selector in hex.
        item: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The key is the file directory, indexes 0x20 or above, or has the old write-channel bit.
    #[error("fw_cfg key {key:#06x} is not a legacy item key; use a key below 0x20 other than 0x19, or 0x8000 | n with n below 0x20")]
    ReservedKey {
        /// The rejected key.
        key: u16,
    },
}

/// Values that [`FwCfg::new`] puts in the legacy items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwCfgConfig {
    /// RAM size in bytes ([`FW_CFG_RAM_SIZE`]).
    pub ram_size: u64,
    /// Number of boot CPUs ([`FW_CFG_NB_CPUS`]).
    pub boot_cpus: u16,
    /// Limit on APIC IDs ([`FW_CFG_MAX_CPUS`]); the NUMA item has one entry per APIC ID below it.
    pub max_cpus: u16,
    /// Whether the machine has no display ([`FW_CFG_NOGRAPHIC`]).
    pub nographic: bool,
    /// Whether the firmware should offer a boot menu ([`FW_CFG_BOOT_MENU`]).
    pub boot_menu: bool,
    /// Machine UUID ([`FW_CFG_UUID`]); QEMU gives all zeros unless `-uuid` is set.
    pub uuid: [u8; 16],
}

impl FwCfgConfig {
    /// Returns the configuration QEMU would use for `cpus` CPUs with APIC IDs 0..cpus, no
    /// display, no boot menu and a zero UUID.
    pub fn new(ram_size: u64, cpus: u16) -> Self {
        Self {
            ram_size,
            boot_cpus: cpus,
            max_cpus: cpus,
            nographic: true,
            boot_menu: false,
            uuid: [0; 16],
        }
    }
}

/// Access counters, for diagnostics and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FwCfgStats {
    /// Selector writes through the port and through DMA SELECT.
    pub selects: u64,
    /// Bytes returned by data-port reads, zeros past the end of an item included.
    pub pio_bytes: u64,
    /// Bytes written to guest memory by DMA reads, zero fill included.
    pub dma_bytes: u64,
    /// DMA transfers started.
    pub dma_transfers: u64,
    /// DMA transfers that ended with the ERROR bit (or with an unreadable descriptor).
    pub dma_errors: u64,
    /// Accesses with a width or offset the device does not decode.
    pub invalid_accesses: u64,
}

/// One file: its name and contents.
#[derive(Debug)]
struct FwCfgFile {
    /// Name as listed in the directory.
    name: String,
    /// Contents.
    data: Vec<u8>,
}

/// All items of the device, apart from the position of the guest inside them.
#[derive(Debug, Default)]
struct Items {
    /// Legacy items by selector (generic keys below 0x20 and arch-local keys with bit 15).
    legacy: BTreeMap<u16, Vec<u8>>,
    /// Files sorted by name. File `i` has selector `FW_CFG_FILE_FIRST + i`.
    files: Vec<FwCfgFile>,
    /// Encoded file directory, rebuilt after each added file.
    directory: Vec<u8>,
}

impl Items {
    /// Returns the item behind a selector that [`FwCfg::select`] accepted, or `None` when the
    /// selector names no item.
    fn get(&self, selector: u16) -> Option<&[u8]> {
        if selector == FW_CFG_INVALID {
            return None;
        }
        if selector & FW_CFG_ARCH_LOCAL != 0 {
            return self.legacy.get(&selector).map(Vec::as_slice);
        }
        let index = selector & FW_CFG_ENTRY_MASK;
        if index == FW_CFG_FILE_DIR {
            return Some(&self.directory);
        }
        if index >= FW_CFG_FILE_FIRST {
            let file = self.files.get(usize::from(index - FW_CFG_FILE_FIRST))?;
            return Some(&file.data);
        }
        self.legacy.get(&index).map(Vec::as_slice)
    }

    /// Number of file slots, which bounds the valid selectors. QEMU fixes it at 0x20 by
    /// default, and here it grows with the number of files.
    fn file_slots(&self) -> usize {
        self.files.len().max(FILE_SLOTS_DEFAULT)
    }

    fn rebuild_directory(&mut self) {
        let slots = self.file_slots();
        let mut directory = Vec::with_capacity(4 + slots * DIR_ENTRY_LEN);
        // The count fits: add_file caps the number of files at FILE_COUNT_MAX.
        let count = u32::try_from(self.files.len()).unwrap_or(u32::MAX);
        directory.extend_from_slice(&count.to_be_bytes());
        for (index, file) in self.files.iter().enumerate() {
            // Both conversions fit: sizes are checked in add_file, and index < FILE_COUNT_MAX.
            let size = u32::try_from(file.data.len()).unwrap_or(u32::MAX);
            let select = u16::try_from(index)
                .ok()
                .and_then(|index| index.checked_add(FW_CFG_FILE_FIRST))
                .unwrap_or(FW_CFG_INVALID);
            directory.extend_from_slice(&size.to_be_bytes());
            directory.extend_from_slice(&select.to_be_bytes());
            directory.extend_from_slice(&[0, 0]);
            let mut name = [0u8; FILE_NAME_FIELD];
            for (slot, byte) in name.iter_mut().zip(file.name.bytes()) {
                *slot = byte;
            }
            directory.extend_from_slice(&name);
        }
        directory.resize(4 + slots * DIR_ENTRY_LEN, 0);
        self.directory = directory;
    }
}

/// The fw_cfg device: items, the guest's current selection and the DMA address register.
pub struct FwCfg {
    /// Guest memory that DMA descriptors and transfers address.
    memory: GuestMemoryMmap,
    /// Items and files.
    items: Items,
    /// Currently selected item, with the write-channel bit cleared, or [`FW_CFG_INVALID`].
    selector: u16,
    /// Offset of the next byte to return from the selected item.
    offset: u32,
    /// DMA descriptor address assembled from the two halves of the DMA register.
    dma_address: u64,
    /// Counters returned by [`FwCfg::stats`].
    stats: FwCfgStats,
}

impl FwCfg {
    /// Creates the device with the legacy items that QEMU's x86 machines provide, no files, and
    /// the signature selected (QEMU's state after reset). DMA transfers go to `memory`.
    pub fn new(memory: GuestMemoryMmap, config: &FwCfgConfig) -> Self {
        let mut items = Items::default();
        let legacy = &mut items.legacy;
        legacy.insert(FW_CFG_SIGNATURE, b"QEMU".to_vec());
        legacy.insert(
            FW_CFG_ID,
            (FW_CFG_ID_TRADITIONAL | FW_CFG_ID_DMA)
                .to_le_bytes()
                .to_vec(),
        );
        legacy.insert(FW_CFG_UUID, config.uuid.to_vec());
        legacy.insert(FW_CFG_RAM_SIZE, config.ram_size.to_le_bytes().to_vec());
        legacy.insert(
            FW_CFG_NOGRAPHIC,
            u16::from(config.nographic).to_le_bytes().to_vec(),
        );
        legacy.insert(FW_CFG_NB_CPUS, config.boot_cpus.to_le_bytes().to_vec());
        legacy.insert(FW_CFG_MAX_CPUS, config.max_cpus.to_le_bytes().to_vec());
        legacy.insert(
            FW_CFG_BOOT_MENU,
            u16::from(config.boot_menu).to_le_bytes().to_vec(),
        );
        // No NUMA: a zero node count, then a zero node number for each APIC ID below the
        // limit, and no per-node memory sizes (hw/i386/fw_cfg.c, fw_cfg_arch_create).
        let numa_words = 1 + usize::from(config.max_cpus);
        legacy.insert(FW_CFG_NUMA, vec![0; numa_words * 8]);
        legacy.insert(FW_CFG_ACPI_TABLES, Vec::new());
        legacy.insert(FW_CFG_SMBIOS_ENTRIES, Vec::new());
        legacy.insert(FW_CFG_IRQ0_OVERRIDE, 1u32.to_le_bytes().to_vec());
        items.rebuild_directory();

        Self {
            memory,
            items,
            selector: FW_CFG_SIGNATURE,
            offset: 0,
            dma_address: 0,
            stats: FwCfgStats::default(),
        }
    }

    /// Adds a read-only file and lists it in the directory.
    ///
    /// Files are kept sorted by name, so adding one renumbers the selectors of the files that
    /// sort after it, as in QEMU. Add all files before the guest starts: a guest that looked
    /// up a selector earlier would read the wrong file.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<(), FwCfgError> {
        validate_file_name(name)?;
        if data.len() >= ITEM_LEN_LIMIT {
            return Err(FwCfgError::ItemTooLarge {
                item: name.to_owned(),
                len: data.len(),
            });
        }
        let position = match self
            .items
            .files
            .binary_search_by(|file| file.name.as_bytes().cmp(name.as_bytes()))
        {
            Ok(_) => {
                return Err(FwCfgError::DuplicateFile {
                    name: name.to_owned(),
                })
            }
            Err(position) => position,
        };
        if self.items.files.len() >= FILE_COUNT_MAX {
            return Err(FwCfgError::TooManyFiles {
                name: name.to_owned(),
            });
        }
        debug!("fw_cfg: file {name:?}, {} bytes", data.len());
        self.items.files.insert(
            position,
            FwCfgFile {
                name: name.to_owned(),
                data,
            },
        );
        self.items.rebuild_directory();
        Ok(())
    }

    /// Adds a legacy item, or replaces the one with the same key (as QEMU's
    /// `fw_cfg_modify_bytes_read`). Valid keys are the generic keys below
    /// [`FW_CFG_FILE_FIRST`] other than [`FW_CFG_FILE_DIR`], and arch-local keys
    /// `FW_CFG_ARCH_LOCAL | n` with `n` below [`FW_CFG_FILE_FIRST`]. QEMU bounds arch-local
    /// keys by the same limit as file selectors, and every x86 key it defines is below 0x20.
    pub fn add_item(&mut self, key: u16, data: Vec<u8>) -> Result<(), FwCfgError> {
        let arch_local = key & FW_CFG_ARCH_LOCAL != 0;
        let index = key & FW_CFG_ENTRY_MASK;
        let reserved = key & FW_CFG_WRITE_CHANNEL != 0
            || index >= FW_CFG_FILE_FIRST
            || (!arch_local && index == FW_CFG_FILE_DIR);
        if reserved {
            return Err(FwCfgError::ReservedKey { key });
        }
        if data.len() >= ITEM_LEN_LIMIT {
            return Err(FwCfgError::ItemTooLarge {
                item: format!("{key:#06x}"),
                len: data.len(),
            });
        }
        self.items.legacy.insert(key, data);
        Ok(())
    }

    /// Returns the names and sizes of the files, in directory order.
    pub fn files(&self) -> impl Iterator<Item = (&str, usize)> {
        self.items
            .files
            .iter()
            .map(|file| (file.name.as_str(), file.data.len()))
    }

    /// Returns the access counters.
    pub fn stats(&self) -> FwCfgStats {
        self.stats
    }

    /// Selects an item and rewinds it, as a selector write or a DMA SELECT does.
    fn select(&mut self, key: u16) {
        self.stats.selects += 1;
        self.offset = 0;
        let index = usize::from(key & FW_CFG_ENTRY_MASK);
        let entry_limit = usize::from(FW_CFG_FILE_FIRST) + self.items.file_slots();
        self.selector = if index >= entry_limit {
            FW_CFG_INVALID
        } else {
            key & !FW_CFG_WRITE_CHANNEL
        };
        trace!("fw_cfg: select {key:#06x}");
    }

    /// Fills `out` with the next bytes of the selected item, zeros past its end.
    fn read_data(&mut self, out: &mut [u8]) {
        let data = self.items.get(self.selector).unwrap_or(&[]);
        let remaining = data.get(self.offset as usize..).unwrap_or(&[]);
        let mut source = remaining.iter();
        for byte in out.iter_mut() {
            *byte = source.next().copied().unwrap_or(0);
        }
        let consumed = out.len().min(remaining.len());
        // The sum stays below the item length, which is below 4 GiB.
        self.offset = self
            .offset
            .saturating_add(u32::try_from(consumed).unwrap_or(u32::MAX));
        self.stats.pio_bytes += out.len() as u64;
    }

    /// Runs the DMA transfer described at `self.dma_address`, following QEMU's
    /// `fw_cfg_dma_transfer`, then writes the resulting control word back.
    fn run_dma(&mut self) {
        self.stats.dma_transfers += 1;
        let descriptor_address = GuestAddress(self.dma_address);
        // The guest writes the full address again before each transfer.
        self.dma_address = 0;

        let mut descriptor = [0u8; DMA_DESCRIPTOR_LEN];
        if self
            .memory
            .read_slice(&mut descriptor, descriptor_address)
            .is_err()
        {
            debug!(
                "fw_cfg: DMA descriptor at {:#x} is not in guest memory",
                descriptor_address.0
            );
            self.stats.dma_errors += 1;
            self.store_control(descriptor_address, DMA_CTL_ERROR);
            return;
        }
        let (control, mut length, mut address) = decode_descriptor(&descriptor);
        trace!(
            "fw_cfg: DMA control {control:#x} length {length:#x} address {:#x}",
            address.0
        );

        if control & DMA_CTL_SELECT != 0 {
            // The selector is the upper half of the control word.
            self.select((control >> 16) as u16);
        }

        // QEMU picks one operation, READ over WRITE over SKIP; with none the transfer only
        // selects.
        let operation = if control & DMA_CTL_READ != 0 {
            DmaOperation::Read
        } else if control & DMA_CTL_WRITE != 0 {
            DmaOperation::Write
        } else if control & DMA_CTL_SKIP != 0 {
            DmaOperation::Skip
        } else {
            length = 0;
            DmaOperation::Skip
        };

        let mut status = 0;
        while length > 0 && status & DMA_CTL_ERROR == 0 {
            let data = self.items.get(self.selector).unwrap_or(&[]);
            let remaining = data.get(self.offset as usize..).unwrap_or(&[]);
            let chunk_len = if remaining.is_empty() {
                // Past the end of the item: a read fills zeros, a write fails, a skip just
                // consumes the length.
                match operation {
                    DmaOperation::Read => {
                        if write_zeros(&self.memory, address, u64::from(length)).is_err() {
                            status |= DMA_CTL_ERROR;
                        } else {
                            self.stats.dma_bytes += u64::from(length);
                        }
                    }
                    DmaOperation::Write => status |= DMA_CTL_ERROR,
                    DmaOperation::Skip => {}
                }
                length
            } else {
                let chunk_len = remaining.len().min(length as usize);
                match operation {
                    DmaOperation::Read => {
                        let bytes = remaining.get(..chunk_len).unwrap_or(&[]);
                        if self.memory.write_slice(bytes, address).is_err() {
                            status |= DMA_CTL_ERROR;
                        } else {
                            self.stats.dma_bytes += chunk_len as u64;
                        }
                    }
                    // Every item is read-only, which QEMU reports with ERROR.
                    DmaOperation::Write => status |= DMA_CTL_ERROR,
                    DmaOperation::Skip => {}
                }
                // chunk_len <= length, a u32.
                let chunk_len = u32::try_from(chunk_len).unwrap_or(length);
                self.offset = self.offset.saturating_add(chunk_len);
                chunk_len
            };
            address = GuestAddress(address.0.wrapping_add(u64::from(chunk_len)));
            length -= chunk_len;
        }

        if status & DMA_CTL_ERROR != 0 {
            self.stats.dma_errors += 1;
        }
        self.store_control(descriptor_address, status);
    }

    /// Writes the control word of a descriptor back, big-endian. A failure is ignored as in
    /// QEMU, so the guest reads its own control word and its poll loop times out.
    fn store_control(&self, descriptor_address: GuestAddress, control: u32) {
        if self
            .memory
            .write_slice(&control.to_be_bytes(), descriptor_address)
            .is_err()
        {
            debug!(
                "fw_cfg: cannot write the DMA control word at {:#x}",
                descriptor_address.0
            );
        }
    }

    fn write_dma_register(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (DMA_HIGH_OFFSET, 4) => {
                self.dma_address = u64::from(be_u32(data)) << 32;
            }
            (DMA_LOW_OFFSET, 4) => {
                self.dma_address |= u64::from(be_u32(data));
                self.run_dma();
            }
            (DMA_HIGH_OFFSET, 8) => {
                let mut bytes = [0u8; 8];
                for (slot, byte) in bytes.iter_mut().zip(data) {
                    *slot = *byte;
                }
                self.dma_address = u64::from_be_bytes(bytes);
                self.run_dma();
            }
            _ => {
                self.stats.invalid_accesses += 1;
                debug!(
                    "fw_cfg: ignored {}-byte write to DMA register offset {}",
                    data.len(),
                    offset - DMA_HIGH_OFFSET
                );
            }
        }
    }
}

/// Operation of a DMA transfer on the bytes of the selected item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DmaOperation {
    Read,
    Write,
    Skip,
}

/// Splits a DMA descriptor into control, length and address.
fn decode_descriptor(descriptor: &[u8; DMA_DESCRIPTOR_LEN]) -> (u32, u32, GuestAddress) {
    let [c0, c1, c2, c3, l0, l1, l2, l3, a0, a1, a2, a3, a4, a5, a6, a7] = *descriptor;
    (
        u32::from_be_bytes([c0, c1, c2, c3]),
        u32::from_be_bytes([l0, l1, l2, l3]),
        GuestAddress(u64::from_be_bytes([a0, a1, a2, a3, a4, a5, a6, a7])),
    )
}

/// Decodes four bytes (the caller checked the length) as a big-endian u32.
fn be_u32(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    for (slot, byte) in bytes.iter_mut().zip(data) {
        *slot = *byte;
    }
    u32::from_be_bytes(bytes)
}

/// Writes `length` zero bytes to guest memory at `address`, a bounded piece at a time so that a
/// length near 4 GiB allocates nothing.
fn write_zeros(memory: &GuestMemoryMmap, address: GuestAddress, length: u64) -> Result<(), ()> {
    let mut done = 0u64;
    while done < length {
        let piece = (length - done).min(ZERO_CHUNK_LEN as u64) as usize;
        let target = address.0.checked_add(done).ok_or(())?;
        let zeros = ZERO_CHUNK.get(..piece).ok_or(())?;
        memory
            .write_slice(zeros, GuestAddress(target))
            .map_err(|_| ())?;
        done += piece as u64;
    }
    Ok(())
}

fn validate_file_name(name: &str) -> Result<(), FwCfgError> {
    if name.is_empty() {
        return Err(FwCfgError::EmptyName);
    }
    if name.len() > FILE_NAME_MAX {
        return Err(FwCfgError::NameTooLong {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    if name.bytes().any(|byte| byte == 0) {
        return Err(FwCfgError::NameContainsNul {
            name: name.to_owned(),
        });
    }
    Ok(())
}

impl BusDevice for FwCfg {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match offset {
            SELECTOR_OFFSET | DATA_OFFSET => self.read_data(data),
            DMA_HIGH_OFFSET..=11 => {
                // Each byte reads the signature at its own position. Bytes past the register
                // read 0, as QEMU's extract64 gives for out-of-range bits.
                let start = offset - DMA_HIGH_OFFSET;
                for (position, byte) in (start..).zip(data.iter_mut()) {
                    *byte = usize::try_from(position)
                        .ok()
                        .and_then(|position| DMA_SIGNATURE.get(position))
                        .copied()
                        .unwrap_or(0);
                }
            }
            _ => {
                // Ports 0x512 and 0x513 belong to no QEMU region.
                self.stats.invalid_accesses += 1;
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) -> DeviceAction {
        match (offset, data.len()) {
            (SELECTOR_OFFSET, 2) => {
                let mut bytes = [0u8; 2];
                for (slot, byte) in bytes.iter_mut().zip(data) {
                    *slot = *byte;
                }
                self.select(u16::from_le_bytes(bytes));
            }
            // Data writes have had no effect since QEMU 2.4.
            (SELECTOR_OFFSET | DATA_OFFSET, 1) => {}
            (DMA_HIGH_OFFSET..=11, _)
                if offset + data.len() as u64 <= DMA_HIGH_OFFSET + DMA_REGISTER_LEN =>
            {
                self.write_dma_register(offset, data);
            }
            _ => {
                self.stats.invalid_accesses += 1;
                debug!(
                    "fw_cfg: ignored {}-byte write at port offset {offset:#x}",
                    data.len()
                );
            }
        }
        DeviceAction::None
    }
}

/// Encodes an `etc/e820` file: one packed little-endian `{ u64 base, u64 length, u32 type }`
/// per `(base, length, type)` tuple, in the given order.
pub fn e820_bytes(entries: &[(u64, u64, u32)]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(entries.len() * E820_ENTRY_LEN);
    for &(base, length, kind) in entries {
        bytes.extend_from_slice(&base.to_le_bytes());
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes.extend_from_slice(&kind.to_le_bytes());
    }
    bytes
}

/// Encodes an `etc/boot-fail-wait` file: the milliseconds SeaBIOS waits before it reboots when
/// no boot device works, as a u32 LE. `None` encodes QEMU's default of -1, "never reboot".
pub fn boot_fail_wait_bytes(reboot_after_ms: Option<u32>) -> [u8; 4] {
    reboot_after_ms.unwrap_or(u32::MAX).to_le_bytes()
}

/// Encodes a `bootorder` file as QEMU does: the OpenFirmware device paths separated by
/// newlines, with a NUL after the last one. No paths give an empty file.
pub fn bootorder_bytes(paths: &[&str]) -> Vec<u8> {
    if paths.is_empty() {
        return Vec::new();
    }
    let mut bytes = paths.join("\n").into_bytes();
    bytes.push(0);
    bytes
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const MEMORY_SIZE: usize = 0x10_0000;
    const DESCRIPTOR: u64 = 0x1000;
    const BUFFER: u64 = 0x2000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE)]).unwrap()
    }

    fn device() -> FwCfg {
        FwCfg::new(memory(), &FwCfgConfig::new(256 << 20, 2))
    }

    fn select(device: &mut FwCfg, key: u16) {
        assert_eq!(
            device.write(FW_CFG_PORT_BASE, SELECTOR_OFFSET, &key.to_le_bytes()),
            DeviceAction::None
        );
    }

    fn read_bytes(device: &mut FwCfg, count: usize) -> Vec<u8> {
        (0..count)
            .map(|_| {
                let mut byte = [0xAAu8];
                device.read(FW_CFG_PORT_BASE, DATA_OFFSET, &mut byte);
                byte[0]
            })
            .collect()
    }

    fn read_item(device: &mut FwCfg, key: u16, count: usize) -> Vec<u8> {
        select(device, key);
        read_bytes(device, count)
    }

    fn put_descriptor(device: &FwCfg, control: u32, length: u32, address: u64) {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&control.to_be_bytes());
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(&address.to_be_bytes());
        device
            .memory
            .write_slice(&bytes, GuestAddress(DESCRIPTOR))
            .unwrap();
    }

    fn start_dma(device: &mut FwCfg, descriptor: u64) {
        let high = ((descriptor >> 32) as u32).to_be_bytes();
        let low = (descriptor as u32).to_be_bytes();
        device.write(FW_CFG_PORT_BASE, DMA_HIGH_OFFSET, &high);
        device.write(FW_CFG_PORT_BASE, DMA_LOW_OFFSET, &low);
    }

    fn control_word(device: &FwCfg, descriptor: u64) -> u32 {
        let mut bytes = [0u8; 4];
        device
            .memory
            .read_slice(&mut bytes, GuestAddress(descriptor))
            .unwrap();
        u32::from_be_bytes(bytes)
    }

    fn guest_bytes(device: &FwCfg, address: u64, count: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; count];
        device
            .memory
            .read_slice(&mut bytes, GuestAddress(address))
            .unwrap();
        bytes
    }

    #[test]
    fn signature_after_reset() {
        let mut device = device();
        assert_eq!(read_bytes(&mut device, 4), b"QEMU");
    }

    #[test]
    fn signature_read_past_end_is_zero() {
        let mut device = device();
        assert_eq!(read_item(&mut device, FW_CFG_SIGNATURE, 6), b"QEMU\0\0");
    }

    #[test]
    fn one_byte_read_of_selector_port_reads_data() {
        let mut device = device();
        select(&mut device, FW_CFG_SIGNATURE);
        let mut byte = [0u8];
        device.read(FW_CFG_PORT_BASE, SELECTOR_OFFSET, &mut byte);
        assert_eq!(byte, *b"Q");
        device.read(FW_CFG_PORT_BASE, DATA_OFFSET, &mut byte);
        assert_eq!(byte, *b"E");
    }

    #[test]
    fn string_read_fills_sequential_bytes() {
        let mut device = device();
        select(&mut device, FW_CFG_SIGNATURE);
        let mut bytes = [0xAAu8; 6];
        device.read(FW_CFG_PORT_BASE, DATA_OFFSET, &mut bytes);
        assert_eq!(&bytes, b"QEMU\0\0");
        assert_eq!(device.stats().pio_bytes, 6);
    }

    #[test]
    fn id_advertises_dma() {
        let mut device = device();
        assert_eq!(read_item(&mut device, FW_CFG_ID, 4), 3u32.to_le_bytes());
    }

    #[test]
    fn legacy_items_match_qemu() {
        let config = FwCfgConfig::new(0x1234_5678_9000, 3);
        let mut device = FwCfg::new(memory(), &config);
        assert_eq!(
            read_item(&mut device, FW_CFG_RAM_SIZE, 8),
            0x1234_5678_9000u64.to_le_bytes()
        );
        assert_eq!(read_item(&mut device, FW_CFG_NOGRAPHIC, 2), [1, 0]);
        assert_eq!(read_item(&mut device, FW_CFG_NB_CPUS, 2), [3, 0]);
        assert_eq!(read_item(&mut device, FW_CFG_MAX_CPUS, 2), [3, 0]);
        assert_eq!(read_item(&mut device, FW_CFG_BOOT_MENU, 2), [0, 0]);
        assert_eq!(read_item(&mut device, FW_CFG_UUID, 16), [0; 16]);
        assert_eq!(
            read_item(&mut device, FW_CFG_IRQ0_OVERRIDE, 4),
            1u32.to_le_bytes()
        );
        assert_eq!(device.items.get(FW_CFG_NUMA).unwrap(), &[0u8; 32][..]);
        assert_eq!(device.items.get(FW_CFG_ACPI_TABLES).unwrap().len(), 0);
        assert_eq!(device.items.get(FW_CFG_SMBIOS_ENTRIES).unwrap().len(), 0);
    }

    #[test]
    fn write_channel_bit_is_ignored() {
        let mut device = device();
        assert_eq!(
            read_item(&mut device, FW_CFG_WRITE_CHANNEL | FW_CFG_SIGNATURE, 4),
            b"QEMU"
        );
    }

    #[test]
    fn unknown_selectors_read_zero() {
        let mut device = device();
        for key in [0x06, 0x1F, 0x21, 0x3FFF, 0x8004, 0xBFFF, 0xFFFF] {
            assert_eq!(read_item(&mut device, key, 4), [0; 4], "key {key:#x}");
        }
        select(&mut device, 0x3FFF);
        assert_eq!(device.selector, FW_CFG_INVALID);
    }

    #[test]
    fn file_directory_sorted_by_name() {
        let mut device = device();
        device.add_file("opt/b", vec![1, 2, 3]).unwrap();
        device.add_file("etc/e820", vec![0; 40]).unwrap();
        device.add_file("bootorder", Vec::new()).unwrap();

        let directory = read_item(&mut device, FW_CFG_FILE_DIR, 4 + 64 * 32 + 4);
        assert_eq!(&directory[..4], &3u32.to_be_bytes());
        let expected = [
            ("bootorder", 0u32, 0x20u16),
            ("etc/e820", 40, 0x21),
            ("opt/b", 3, 0x22),
        ];
        for (index, (name, size, select)) in expected.iter().enumerate() {
            let entry = &directory[4 + index * 64..4 + (index + 1) * 64];
            assert_eq!(&entry[..4], &size.to_be_bytes(), "size of {name}");
            assert_eq!(&entry[4..6], &select.to_be_bytes(), "selector of {name}");
            assert_eq!(&entry[6..8], &[0, 0]);
            assert_eq!(&entry[8..8 + name.len()], name.as_bytes());
            assert!(entry[8 + name.len()..].iter().all(|&byte| byte == 0));
        }
        // The directory is sized for 32 slots, and reads past it return zero.
        assert!(directory[4 + 3 * 64..].iter().all(|&byte| byte == 0));
        assert_eq!(device.items.directory.len(), 4 + 64 * 32);

        assert_eq!(read_item(&mut device, 0x22, 3), [1, 2, 3]);
    }

    #[test]
    fn directory_grows_past_default_slots() {
        let mut device = device();
        for index in 0..40 {
            device
                .add_file(&format!("opt/f{index:02}"), vec![index])
                .unwrap();
        }
        assert_eq!(device.items.directory.len(), 4 + 64 * 40);
        assert_eq!(read_item(&mut device, FW_CFG_FILE_FIRST + 39, 1), [39]);
    }

    #[test]
    fn add_file_rejects_bad_names() {
        let mut device = device();
        let long = "a".repeat(56);
        assert_eq!(
            device.add_file(&long, vec![]),
            Err(FwCfgError::NameTooLong {
                name: long.clone(),
                len: 56
            })
        );
        assert!(device.add_file(&"a".repeat(55), vec![]).is_ok());
        assert_eq!(device.add_file("", vec![]), Err(FwCfgError::EmptyName));
        assert_eq!(
            device.add_file("a\0b", vec![]),
            Err(FwCfgError::NameContainsNul {
                name: "a\0b".into()
            })
        );
        device.add_file("etc/x", vec![1]).unwrap();
        assert_eq!(
            device.add_file("etc/x", vec![2]),
            Err(FwCfgError::DuplicateFile {
                name: "etc/x".into()
            })
        );
        assert_eq!(device.files().count(), 2);
    }

    #[test]
    fn add_item_rejects_reserved_keys() {
        let mut device = device();
        for key in [
            FW_CFG_FILE_DIR,
            FW_CFG_FILE_FIRST,
            0x1234,
            FW_CFG_WRITE_CHANNEL | 5,
            FW_CFG_ARCH_LOCAL | 0x20,
            0xFFFF,
        ] {
            assert_eq!(
                device.add_item(key, vec![1]),
                Err(FwCfgError::ReservedKey { key })
            );
        }
        device
            .add_item(FW_CFG_NB_CPUS, 7u16.to_le_bytes().to_vec())
            .unwrap();
        assert_eq!(read_item(&mut device, FW_CFG_NB_CPUS, 2), [7, 0]);
        device.add_item(FW_CFG_ARCH_LOCAL | 0x10, vec![9]).unwrap();
        assert_eq!(read_item(&mut device, FW_CFG_ARCH_LOCAL | 0x10, 1), [9]);
    }

    #[test]
    fn bad_port_accesses_change_nothing() {
        let mut device = device();
        select(&mut device, FW_CFG_ID);
        // One-byte and four-byte selector writes, a two-byte write at the data port, and
        // writes to unused ports are all ignored.
        device.write(FW_CFG_PORT_BASE, SELECTOR_OFFSET, &[0]);
        device.write(FW_CFG_PORT_BASE, SELECTOR_OFFSET, &[0, 0, 0, 0]);
        device.write(FW_CFG_PORT_BASE, DATA_OFFSET, &[0, 0]);
        device.write(FW_CFG_PORT_BASE, 2, &[0, 0]);
        device.write(FW_CFG_PORT_BASE, 0x100, &[0]);
        device.write(FW_CFG_PORT_BASE, u64::MAX, &[]);
        assert_eq!(device.selector, FW_CFG_ID);
        assert_eq!(read_bytes(&mut device, 4), 3u32.to_le_bytes());

        let mut bytes = [0u8; 2];
        device.read(FW_CFG_PORT_BASE, 2, &mut bytes);
        assert_eq!(bytes, [0xff, 0xff]);
        device.read(FW_CFG_PORT_BASE, u64::MAX, &mut bytes);
        assert_eq!(bytes, [0xff, 0xff]);
        device.read(FW_CFG_PORT_BASE, DATA_OFFSET, &mut []);
        assert_eq!(device.stats().invalid_accesses, 7);
    }

    #[test]
    fn dma_register_reads_signature() {
        let mut device = device();
        let mut bytes = [0u8; 8];
        device.read(FW_CFG_PORT_BASE, DMA_HIGH_OFFSET, &mut bytes);
        assert_eq!(&bytes, b"QEMU CFG");
        let mut half = [0u8; 4];
        device.read(FW_CFG_PORT_BASE, DMA_LOW_OFFSET, &mut half);
        assert_eq!(&half, b" CFG");
        let mut byte = [0u8];
        device.read(FW_CFG_PORT_BASE, 11, &mut byte);
        assert_eq!(&byte, b"G");
        let mut beyond = [0xAAu8; 4];
        device.read(FW_CFG_PORT_BASE, 10, &mut beyond);
        assert_eq!(&beyond, b"FG\0\0");
    }

    #[test]
    fn dma_read_of_file() {
        let mut device = device();
        device
            .add_file("etc/test", b"hello fw_cfg".to_vec())
            .unwrap();
        let control = (u32::from(FW_CFG_FILE_FIRST) << 16) | DMA_CTL_SELECT | DMA_CTL_READ;
        put_descriptor(&device, control, 12, BUFFER);
        start_dma(&mut device, DESCRIPTOR);
        assert_eq!(control_word(&device, DESCRIPTOR), 0);
        assert_eq!(guest_bytes(&device, BUFFER, 12), b"hello fw_cfg");
        assert_eq!(device.stats().dma_bytes, 12);
        assert_eq!(device.stats().dma_transfers, 1);
        assert_eq!(device.offset, 12);
    }

    #[test]
    fn dma_read_past_end_fills_zeros() {
        let mut device = device();
        device.add_file("etc/test", vec![7; 4]).unwrap();
        device
            .memory
            .write_slice(&[0xAA; 16], GuestAddress(BUFFER))
            .unwrap();
        let control = (u32::from(FW_CFG_FILE_FIRST) << 16) | DMA_CTL_SELECT | DMA_CTL_READ;
        put_descriptor(&device, control, 12, BUFFER);
        start_dma(&mut device, DESCRIPTOR);
        assert_eq!(control_word(&device, DESCRIPTOR), 0);
        assert_eq!(
            guest_bytes(&device, BUFFER, 16),
            [7, 7, 7, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0xAA, 0xAA, 0xAA, 0xAA]
        );
    }

    #[test]
    fn dma_read_wins_over_write_and_skip() {
        let mut device = device();
        let control = DMA_CTL_SELECT | DMA_CTL_READ | DMA_CTL_WRITE | DMA_CTL_SKIP;
        put_descriptor(&device, control, 4, BUFFER);
        start_dma(&mut device, DESCRIPTOR);
        assert_eq!(control_word(&device, DESCRIPTOR), 0);
        assert_eq!(guest_bytes(&device, BUFFER, 4), b"QEMU");
    }

    #[test]
    fn dma_write_is_rejected() {
        let mut device = device();
        device.add_file("etc/test", vec![1, 2, 3, 4]).unwrap();
        device
            .memory
            .write_slice(&[9; 4], GuestAddress(BUFFER))
            .unwrap();
        let control = (u32::from(FW_CFG_FILE_FIRST) << 16) | DMA_CTL_SELECT | DMA_CTL_WRITE;
        put_descriptor(&device, control, 4, BUFFER);
        start_dma(&mut device, DESCRIPTOR);
        assert_eq!(control_word(&device, DESCRIPTOR), DMA_CTL_ERROR);
        assert_eq!(read_item(&mut device, FW_CFG_FILE_FIRST, 4), [1, 2, 3, 4]);
        assert_eq!(device.stats().dma_errors, 1);
    }

    #[test]
    fn dma_write_past_end_is_rejected() {
        let mut device = device();
        let control = (0x1234 << 16) | DMA_CTL_SELECT | DMA_CTL_WRITE;
        put_descriptor(&device, control, 4, BUFFER);
        start_dma(&mut device, DESCRIPTOR);
        assert_eq!(control_word(&device, DESCRIPTOR), DMA_CTL_ERROR);
    }

    #[test]
    fn dma_skip_then_read() {
        let mut device = device();
        device.add_file("etc/test", b"abcdef".to_vec()).unwrap();
        let control = (u32::from(FW_CFG_FILE_FIRST) << 16) | DMA_CTL_SELECT | DMA_CTL_SKIP;
        put_descriptor(&device, control, 2, BUFFER);
        start_dma(&mut device, DESCRIPTOR);
        assert_eq!(control_word(&device, DESCRIPTOR), 0);
        put_descriptor(&device, DMA_CTL_READ, 4, BUFFER);
        start_dma(&mut device, DESCRIPTOR);
        assert_eq!(control_word(&device, DESCRIPTOR), 0);
        assert_eq!(guest_bytes(&device, BUFFER, 4), b"cdef");
    }

    #[test]
    fn dma_select_only_when_no_operation() {
        let mut device = device();
        device
            .memory
            .write_slice(&[0xAA; 4], GuestAddress(BUFFER))
            .unwrap();
        put_descriptor(
            &device,
            (u32::from(FW_CFG_ID) << 16) | DMA_CTL_SELECT,
            4,
            BUFFER,
        );
        start_dma(&mut device, DESCRIPTOR);
        assert_eq!(control_word(&device, DESCRIPTOR), 0);
        assert_eq!(guest_bytes(&device, BUFFER, 4), [0xAA; 4]);
        assert_eq!(device.selector, FW_CFG_ID);
        assert_eq!(read_bytes(&mut device, 1), [3]);
    }

    #[test]
    fn dma_unreadable_descriptor() {
        let mut device = device();
        start_dma(&mut device, MEMORY_SIZE as u64 - 8);
        start_dma(&mut device, u64::MAX - 3);
        assert_eq!(device.stats().dma_errors, 2);
        assert_eq!(device.dma_address, 0);
    }

    #[test]
    fn dma_unmapped_target_sets_error() {
        let mut device = device();
        device.add_file("etc/test", vec![5; 64]).unwrap();
        let control = (u32::from(FW_CFG_FILE_FIRST) << 16) | DMA_CTL_SELECT | DMA_CTL_READ;
        put_descriptor(&device, control, 64, MEMORY_SIZE as u64 - 32);
        start_dma(&mut device, DESCRIPTOR);
        assert_eq!(control_word(&device, DESCRIPTOR), DMA_CTL_ERROR);
    }

    #[test]
    fn dma_huge_length_is_bounded() {
        let mut device = device();
        // A zero fill of nearly 4 GiB stops at the end of guest memory with ERROR.
        put_descriptor(
            &device,
            DMA_CTL_READ,
            u32::MAX,
            MEMORY_SIZE as u64 - 0x1_0000,
        );
        start_dma(&mut device, DESCRIPTOR);
        assert_eq!(control_word(&device, DESCRIPTOR), DMA_CTL_ERROR);
        // A skip of nearly 4 GiB past the end of the item completes.
        put_descriptor(&device, DMA_CTL_SKIP, u32::MAX, 0);
        start_dma(&mut device, DESCRIPTOR);
        assert_eq!(control_word(&device, DESCRIPTOR), 0);
    }

    #[test]
    fn dma_address_resets_each_transfer() {
        let mut device = device();
        put_descriptor(&device, DMA_CTL_SELECT | DMA_CTL_READ, 4, BUFFER);
        // High half 1 selects a descriptor beyond guest memory: ERROR, nothing written.
        device.write(FW_CFG_PORT_BASE, DMA_HIGH_OFFSET, &1u32.to_be_bytes());
        device.write(
            FW_CFG_PORT_BASE,
            DMA_LOW_OFFSET,
            &(DESCRIPTOR as u32).to_be_bytes(),
        );
        assert_eq!(device.stats().dma_errors, 1);
        // The high half was cleared, so writing only the low half reaches the descriptor.
        device.write(
            FW_CFG_PORT_BASE,
            DMA_LOW_OFFSET,
            &(DESCRIPTOR as u32).to_be_bytes(),
        );
        assert_eq!(control_word(&device, DESCRIPTOR), 0);
        assert_eq!(guest_bytes(&device, BUFFER, 4), b"QEMU");
    }

    #[test]
    fn dma_eight_byte_write_starts_transfer() {
        let mut device = device();
        put_descriptor(&device, DMA_CTL_SELECT | DMA_CTL_READ, 4, BUFFER);
        device.write(FW_CFG_PORT_BASE, DMA_HIGH_OFFSET, &DESCRIPTOR.to_be_bytes());
        assert_eq!(control_word(&device, DESCRIPTOR), 0);
        assert_eq!(guest_bytes(&device, BUFFER, 4), b"QEMU");
    }

    #[test]
    fn dma_bad_register_writes_ignored() {
        let mut device = device();
        put_descriptor(&device, DMA_CTL_SELECT | DMA_CTL_READ, 4, BUFFER);
        device.write(FW_CFG_PORT_BASE, DMA_HIGH_OFFSET, &[0, 0]);
        device.write(FW_CFG_PORT_BASE, DMA_HIGH_OFFSET + 2, &[0, 0, 0x10, 0]);
        device.write(FW_CFG_PORT_BASE, DMA_LOW_OFFSET, &[0; 8]);
        device.write(FW_CFG_PORT_BASE, DMA_LOW_OFFSET + 3, &[0]);
        assert_eq!(device.stats().dma_transfers, 0);
        assert_eq!(device.stats().invalid_accesses, 4);
        assert_eq!(
            control_word(&device, DESCRIPTOR),
            DMA_CTL_SELECT | DMA_CTL_READ
        );
    }

    #[test]
    fn e820_layout() {
        let bytes = e820_bytes(&[(0, 0x9_FC00, E820_RAM), (0x10_0000, 0x7F0_0000, E820_RAM)]);
        assert_eq!(bytes.len(), 40);
        assert_eq!(&bytes[0..8], &0u64.to_le_bytes());
        assert_eq!(&bytes[8..16], &0x9_FC00u64.to_le_bytes());
        assert_eq!(&bytes[16..20], &1u32.to_le_bytes());
        assert_eq!(&bytes[20..28], &0x10_0000u64.to_le_bytes());
        assert_eq!(&bytes[28..36], &0x7F0_0000u64.to_le_bytes());
        assert_eq!(&bytes[36..40], &1u32.to_le_bytes());
    }

    #[test]
    fn boot_fail_wait_encoding() {
        assert_eq!(boot_fail_wait_bytes(None), [0xff; 4]);
        assert_eq!(boot_fail_wait_bytes(Some(5000)), 5000u32.to_le_bytes());
    }

    #[test]
    fn bootorder_encoding() {
        assert_eq!(bootorder_bytes(&[]), Vec::<u8>::new());
        assert_eq!(
            bootorder_bytes(&["/rom@genroms/a", "HALT"]),
            b"/rom@genroms/a\nHALT\0".to_vec()
        );
    }
}
