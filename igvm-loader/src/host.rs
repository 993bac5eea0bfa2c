//! The host's description of the machine that will run the guest.
//!
//! The loader fills IGVM parameter areas (memory map, VP count, command line, ACPI tables, device
//! tree, MMIO ranges, environment information) from this description. The VMM builds the ACPI
//! table bytes itself, so the loader stays free of any device model.

use crate::plan::Platform;

/// The type of a guest memory region, as the IGVM memory map and e820 report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// Usable RAM.
    Ram,
    /// Reserved by the platform (for example the BIOS area or the MMIO hole).
    Reserved,
    /// Persistent memory.
    Persistent,
}

/// One region of guest physical address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
    /// The content type of the region.
    pub kind: MemoryKind,
}

/// The machine the guest will see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDescription {
    /// Guest RAM and reserved regions, sorted by base and not overlapping.
    pub memory_map: Vec<MemoryRegion>,
    /// Number of virtual processors.
    pub vp_count: u32,
    /// Kernel command line for the CommandLine parameter.
    pub command_line: String,
    /// MMIO ranges the guest may use for devices (at most two are reported, as the IGVM
    /// parameter defines).
    pub mmio_ranges: Vec<(u64, u64)>,
    /// MADT bytes (with the ACPI header) for the Madt parameter.
    pub madt: Vec<u8>,
    /// SRAT bytes for the Srat parameter.
    pub srat: Vec<u8>,
    /// SLIT bytes for the Slit parameter.
    pub slit: Vec<u8>,
    /// PPTT bytes for the Pptt parameter.
    pub pptt: Vec<u8>,
}

impl HostDescription {
    /// Returns the total RAM in bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.memory_map
            .iter()
            .filter(|region| region.kind == MemoryKind::Ram)
            .map(|region| region.size)
            .sum()
    }
}

/// The platform request of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformChoice {
    /// The strongest platform that both the file and the host support (SEV-SNP and TDX over
    /// native).
    Auto {
        /// Platforms this host can launch.
        host_supports: Vec<Platform>,
    },
    /// Exactly this platform; an error if the file does not carry it.
    Exact(Platform),
}
