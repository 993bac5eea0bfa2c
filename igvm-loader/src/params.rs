//! IGVM parameters: what the loader writes into parameter areas from the host description.
//!
//! Layouts follow igvm_defs 0.5: `IGVM_VHS_MEMORY_MAP_ENTRY` arrays, `IGVM_VHS_MMIO_RANGES`, the
//! `IgvmEnvironmentInfo` bitfield, a little-endian u32 vCPU count, a NUL-terminated command line,
//! ACPI tables as the host built them, and a flattened device tree.

use igvm::IgvmDirectiveHeader;
use igvm_defs::{
    dt::IGVM_DT_IGVM_TYPE_PROPERTY, IgvmEnvironmentInfo, MemoryMapEntryType,
    IGVM_VHS_MEMORY_MAP_ENTRY, IGVM_VHS_MEMORY_RANGE, IGVM_VHS_MMIO_RANGES, IGVM_VHS_PARAMETER,
};
use log::{debug, warn};
use vm_fdt::FdtWriter;
use zerocopy::IntoBytes;

use crate::error::LoadError;
use crate::headers::header_type_name;
use crate::host::{HostDescription, MemoryKind};
use crate::plan::{HeaderRef, PAGE_SIZE_4K};

/// A kind of IGVM parameter: a value the loader writes into a parameter area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParameterKind {
    /// Number of vCPUs, a little-endian u32 (`IGVM_VHT_VP_COUNT_PARAMETER`).
    VpCount,
    /// ACPI SRAT from the host description (`IGVM_VHT_SRAT`).
    Srat,
    /// ACPI MADT from the host description (`IGVM_VHT_MADT`).
    Madt,
    /// Up to two MMIO ranges as `IGVM_VHS_MMIO_RANGES` (`IGVM_VHT_MMIO_RANGES`).
    MmioRanges,
    /// The guest memory map as `IGVM_VHS_MEMORY_MAP_ENTRY` entries (`IGVM_VHT_MEMORY_MAP`).
    MemoryMap,
    /// The command line, NUL-terminated (`IGVM_VHT_COMMAND_LINE`).
    CommandLine,
    /// ACPI SLIT from the host description (`IGVM_VHT_SLIT`).
    Slit,
    /// ACPI PPTT from the host description (`IGVM_VHT_PPTT`).
    Pptt,
    /// A flattened device tree (`IGVM_VHT_DEVICE_TREE`).
    DeviceTree,
    /// The `IgvmEnvironmentInfo` bitfield, a u32 (`IGVM_VHT_ENVIRONMENT_INFO_PARAMETER`).
    EnvironmentInfo,
}

impl ParameterKind {
    /// Every parameter kind.
    pub const ALL: [ParameterKind; 10] = [
        ParameterKind::VpCount,
        ParameterKind::Srat,
        ParameterKind::Madt,
        ParameterKind::MmioRanges,
        ParameterKind::MemoryMap,
        ParameterKind::CommandLine,
        ParameterKind::Slit,
        ParameterKind::Pptt,
        ParameterKind::DeviceTree,
        ParameterKind::EnvironmentInfo,
    ];

    /// Returns the IGVM variable header type of this parameter.
    pub fn header_type(self) -> u32 {
        match self {
            ParameterKind::VpCount => 0x307,
            ParameterKind::Srat => 0x308,
            ParameterKind::Madt => 0x309,
            ParameterKind::MmioRanges => 0x30A,
            ParameterKind::MemoryMap => 0x30C,
            ParameterKind::CommandLine => 0x30E,
            ParameterKind::Slit => 0x30F,
            ParameterKind::Pptt => 0x310,
            ParameterKind::DeviceTree => 0x312,
            ParameterKind::EnvironmentInfo => 0x313,
        }
    }

    /// Returns the header type name, such as "MemoryMap".
    pub fn name(self) -> &'static str {
        header_type_name(self.header_type())
    }

    /// Returns the kind and location of a parameter directive, or `None` for other directives.
    pub fn of_directive(
        header: &IgvmDirectiveHeader,
    ) -> Option<(ParameterKind, IGVM_VHS_PARAMETER)> {
        let (kind, parameter) = match header {
            IgvmDirectiveHeader::VpCount(p) => (ParameterKind::VpCount, p),
            IgvmDirectiveHeader::Srat(p) => (ParameterKind::Srat, p),
            IgvmDirectiveHeader::Madt(p) => (ParameterKind::Madt, p),
            IgvmDirectiveHeader::MmioRanges(p) => (ParameterKind::MmioRanges, p),
            IgvmDirectiveHeader::MemoryMap(p) => (ParameterKind::MemoryMap, p),
            IgvmDirectiveHeader::CommandLine(p) => (ParameterKind::CommandLine, p),
            IgvmDirectiveHeader::Slit(p) => (ParameterKind::Slit, p),
            IgvmDirectiveHeader::Pptt(p) => (ParameterKind::Pptt, p),
            IgvmDirectiveHeader::DeviceTree(p) => (ParameterKind::DeviceTree, p),
            IgvmDirectiveHeader::EnvironmentInfo(p) => (ParameterKind::EnvironmentInfo, p),
            _ => return None,
        };
        Some((kind, *parameter))
    }

    /// Returns the directive that writes this parameter at `byte_offset` of area `area_index`.
    pub fn directive(self, area_index: u32, byte_offset: u32) -> IgvmDirectiveHeader {
        let p = IGVM_VHS_PARAMETER {
            parameter_area_index: area_index,
            byte_offset,
        };
        match self {
            ParameterKind::VpCount => IgvmDirectiveHeader::VpCount(p),
            ParameterKind::Srat => IgvmDirectiveHeader::Srat(p),
            ParameterKind::Madt => IgvmDirectiveHeader::Madt(p),
            ParameterKind::MmioRanges => IgvmDirectiveHeader::MmioRanges(p),
            ParameterKind::MemoryMap => IgvmDirectiveHeader::MemoryMap(p),
            ParameterKind::CommandLine => IgvmDirectiveHeader::CommandLine(p),
            ParameterKind::Slit => IgvmDirectiveHeader::Slit(p),
            ParameterKind::Pptt => IgvmDirectiveHeader::Pptt(p),
            ParameterKind::DeviceTree => IgvmDirectiveHeader::DeviceTree(p),
            ParameterKind::EnvironmentInfo => IgvmDirectiveHeader::EnvironmentInfo(p),
        }
    }
}

/// Produces parameter bytes from a host description. The device tree is built once.
pub(crate) struct ParameterSource<'a> {
    host: &'a HostDescription,
    device_tree: Option<Vec<u8>>,
}

impl<'a> ParameterSource<'a> {
    pub(crate) fn new(host: &'a HostDescription) -> Self {
        Self {
            host,
            device_tree: None,
        }
    }

    /// Returns the bytes of one parameter. `header` names the parameter header in errors.
    pub(crate) fn bytes(
        &mut self,
        kind: ParameterKind,
        header: HeaderRef,
    ) -> Result<Vec<u8>, LoadError> {
        let host = self.host;
        let bytes = match kind {
            ParameterKind::VpCount => host.vp_count.to_le_bytes().to_vec(),
            ParameterKind::MemoryMap => memory_map(host),
            ParameterKind::CommandLine => {
                let mut bytes = host.command_line.as_bytes().to_vec();
                bytes.push(0);
                bytes
            }
            ParameterKind::Madt => acpi_table(&host.madt, header),
            ParameterKind::Srat => acpi_table(&host.srat, header),
            ParameterKind::Slit => acpi_table(&host.slit, header),
            ParameterKind::Pptt => acpi_table(&host.pptt, header),
            ParameterKind::MmioRanges => mmio_ranges(host),
            ParameterKind::EnvironmentInfo => environment_info(),
            ParameterKind::DeviceTree => match &self.device_tree {
                Some(tree) => tree.clone(),
                None => {
                    let tree = device_tree(host).map_err(|error| LoadError::DeviceTree {
                        header,
                        message: error.to_string(),
                    })?;
                    self.device_tree = Some(tree.clone());
                    tree
                }
            },
        };
        debug!("{header}: {} bytes of {}", bytes.len(), kind.name());
        Ok(bytes)
    }
}

fn acpi_table(table: &[u8], header: HeaderRef) -> Vec<u8> {
    if table.is_empty() {
        warn!("{header}: the host provides no such ACPI table; the parameter stays zero");
    }
    table.to_vec()
}

fn memory_type(kind: MemoryKind) -> MemoryMapEntryType {
    match kind {
        MemoryKind::Ram => MemoryMapEntryType::MEMORY,
        MemoryKind::Reserved => MemoryMapEntryType::PLATFORM_RESERVED,
        MemoryKind::Persistent => MemoryMapEntryType::PERSISTENT,
    }
}

/// Builds the memory map: one entry per region sorted by base, then an all-zero entry that
/// marks the end. RAM is the only MEMORY type; reserved regions are PLATFORM_RESERVED.
fn memory_map(host: &HostDescription) -> Vec<u8> {
    let mut regions = host.memory_map.clone();
    regions.sort_by_key(|region| region.base);
    let mut bytes = Vec::new();
    for region in regions.iter().filter(|region| region.size != 0) {
        let entry = IGVM_VHS_MEMORY_MAP_ENTRY {
            starting_gpa_page_number: region.base / PAGE_SIZE_4K,
            number_of_pages: region.size / PAGE_SIZE_4K,
            entry_type: memory_type(region.kind),
            flags: 0,
            reserved: 0,
        };
        bytes.extend_from_slice(entry.as_bytes());
    }
    let terminator = IGVM_VHS_MEMORY_MAP_ENTRY {
        starting_gpa_page_number: 0,
        number_of_pages: 0,
        entry_type: MemoryMapEntryType::MEMORY,
        flags: 0,
        reserved: 0,
    };
    bytes.extend_from_slice(terminator.as_bytes());
    bytes
}

/// Builds `IGVM_VHS_MMIO_RANGES` from the first two MMIO ranges by base; unused slots are zero.
fn mmio_ranges(host: &HostDescription) -> Vec<u8> {
    let mut ranges = host.mmio_ranges.clone();
    ranges.sort();
    if ranges.len() > 2 {
        debug!(
            "MmioRanges reports 2 of {} MMIO ranges, as the parameter format allows",
            ranges.len()
        );
    }
    let mut slots = [IGVM_VHS_MEMORY_RANGE {
        starting_gpa_page_number: 0,
        number_of_pages: 0,
    }; 2];
    for (slot, (base, size)) in slots.iter_mut().zip(ranges) {
        slot.starting_gpa_page_number = base / PAGE_SIZE_4K;
        slot.number_of_pages = size.div_ceil(PAGE_SIZE_4K);
    }
    IGVM_VHS_MMIO_RANGES { mmio_ranges: slots }
        .as_bytes()
        .to_vec()
}

/// Builds the environment information. `memory_is_shared` is set on every platform: KVM starts
/// every guest page shared, and only the pages the plan launches become private, so an SNP or
/// TDX guest must convert the rest before use (QEMU reports the same value).
fn environment_info() -> Vec<u8> {
    let info = IgvmEnvironmentInfo::new().with_memory_is_shared(true);
    u32::from(info).to_le_bytes().to_vec()
}

/// Builds a flattened device tree: a `memory@` node per RAM or persistent region (with the
/// IGVM memory type property), a `cpus` node with one `cpu@N` per vCPU, and `/chosen/bootargs`.
/// MMIO ranges and devices are not described.
fn device_tree(host: &HostDescription) -> Result<Vec<u8>, vm_fdt::Error> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;

    let mut regions = host.memory_map.clone();
    regions.sort_by_key(|region| region.base);
    for region in regions
        .iter()
        .filter(|r| r.size != 0 && r.kind != MemoryKind::Reserved)
    {
        let node = fdt.begin_node(&format!("memory@{:x}", region.base))?;
        fdt.property_string("device_type", "memory")?;
        fdt.property_array_u64("reg", &[region.base, region.size])?;
        let igvm_type: u16 = memory_type(region.kind).0;
        fdt.property_u32(IGVM_DT_IGVM_TYPE_PROPERTY, u32::from(igvm_type))?;
        fdt.end_node(node)?;
    }

    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for vp_index in 0..host.vp_count {
        let cpu = fdt.begin_node(&format!("cpu@{vp_index:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_u32("reg", vp_index)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", &host.command_line)?;
    fdt.end_node(chosen)?;

    fdt.end_node(root)?;
    fdt.finish()
}
