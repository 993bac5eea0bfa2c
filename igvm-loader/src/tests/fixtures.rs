//! Host descriptions, conformance files and raw header bodies shared by the loader tests.

use std::path::PathBuf;

use igvm_defs::{
    IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType, IGVM_VHS_CORIM_DATA, IGVM_VHS_PAGE_DATA,
    IGVM_VHS_PARAMETER, IGVM_VHS_PARAMETER_AREA, IGVM_VHS_PARAMETER_INSERT,
    IGVM_VHS_SUPPORTED_PLATFORM,
};
use zerocopy::IntoBytes;

use crate::host::{HostDescription, MemoryKind, MemoryRegion, PlatformChoice};
use crate::load::LoadOptions;
use crate::plan::Platform;

pub const MIB: u64 = 1 << 20;

/// Returns a MADT as a host would pass it. Only the ACPI header and the local APIC address
/// matter here.
pub fn madt() -> Vec<u8> {
    let mut table = b"APIC".to_vec();
    table.extend_from_slice(&44u32.to_le_bytes());
    table.resize(36, 0);
    table.extend_from_slice(&0xFEE0_0000u32.to_le_bytes());
    table.extend_from_slice(&1u32.to_le_bytes());
    table
}

/// Returns a guest with 512 MiB of RAM from 0, the MMIO hole at 3 GiB and one vCPU.
pub fn host_512m() -> HostDescription {
    HostDescription {
        memory_map: vec![MemoryRegion {
            base: 0,
            size: 512 * MIB,
            kind: MemoryKind::Ram,
        }],
        vp_count: 1,
        command_line: "console=ttyS0".to_string(),
        mmio_ranges: vec![(0xC000_0000, 0x4000_0000)],
        madt: madt(),
        srat: b"SRAT-table".to_vec(),
        slit: b"SLIT-table".to_vec(),
        pptt: b"PPTT-table".to_vec(),
    }
}

pub fn options(choice: PlatformChoice, host: HostDescription) -> LoadOptions {
    LoadOptions {
        choice,
        host,
        relocation_base: None,
    }
}

pub fn native_options() -> LoadOptions {
    options(PlatformChoice::Exact(Platform::Native), host_512m())
}

/// Reads a conformance file from the shared directory next to the repository.
pub fn conformance(name: &str) -> Vec<u8> {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "..",
        "shared",
        "conformance",
        name,
    ]
    .iter()
    .collect();
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn platform_body(platform_type: IgvmPlatformType, mask: u32) -> Vec<u8> {
    IGVM_VHS_SUPPORTED_PLATFORM {
        compatibility_mask: mask,
        highest_vtl: 0,
        platform_type,
        platform_version: 1,
        shared_gpa_boundary: 0,
    }
    .as_bytes()
    .to_vec()
}

pub fn page_body(gpa: u64, mask: u32, file_offset: u32, large: bool) -> Vec<u8> {
    IGVM_VHS_PAGE_DATA {
        gpa,
        compatibility_mask: mask,
        file_offset,
        flags: IgvmPageDataFlags::new().with_is_2mb_page(large),
        data_type: IgvmPageDataType::NORMAL,
        reserved: 0,
    }
    .as_bytes()
    .to_vec()
}

pub fn area_body(size: u64, index: u32) -> Vec<u8> {
    IGVM_VHS_PARAMETER_AREA {
        number_of_bytes: size,
        parameter_area_index: index,
        file_offset: 0,
    }
    .as_bytes()
    .to_vec()
}

pub fn parameter_body(index: u32, offset: u32) -> Vec<u8> {
    IGVM_VHS_PARAMETER {
        parameter_area_index: index,
        byte_offset: offset,
    }
    .as_bytes()
    .to_vec()
}

pub fn insert_body(gpa: u64, mask: u32, index: u32) -> Vec<u8> {
    IGVM_VHS_PARAMETER_INSERT {
        gpa,
        compatibility_mask: mask,
        parameter_area_index: index,
    }
    .as_bytes()
    .to_vec()
}

pub fn corim_body(mask: u32, file_offset: u32, size: u32) -> Vec<u8> {
    IGVM_VHS_CORIM_DATA {
        compatibility_mask: mask,
        file_offset,
        size_bytes: size,
        reserved: 0,
    }
    .as_bytes()
    .to_vec()
}

/// Header types used by raw test files.
pub const SUPPORTED_PLATFORM: u32 = 0x1;
pub const CORIM_DOCUMENT: u32 = 0x104;
pub const CORIM_SIGNATURE: u32 = 0x105;
pub const PARAMETER_AREA: u32 = 0x301;
pub const PAGE_DATA: u32 = 0x302;
pub const PARAMETER_INSERT: u32 = 0x303;
pub const VP_COUNT: u32 = 0x307;
pub const NATIVE_MASK: u32 = 0x2;

/// Returns the raw native platform header with mask [`NATIVE_MASK`].
pub fn native_platform() -> (u32, Vec<u8>) {
    (
        SUPPORTED_PLATFORM,
        platform_body(IgvmPlatformType::NATIVE, NATIVE_MASK),
    )
}
