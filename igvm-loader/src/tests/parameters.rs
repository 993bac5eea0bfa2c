//! The bytes the loader writes for each parameter kind.

use super::fixtures::*;
use crate::builder::IgvmBuilder;
use crate::host::{HostDescription, MemoryKind, MemoryRegion, PlatformChoice};
use crate::load::load;
use crate::plan::{PageData, PageKind, Plan, Platform};
use crate::ParameterKind;

const AREA_GPA: u64 = 0x10_0000;

/// Returns a host with three vCPUs, RAM split around a reserved BIOS area, and two MMIO ranges
/// given out of order.
fn host() -> HostDescription {
    HostDescription {
        memory_map: vec![
            MemoryRegion {
                base: 0x10_0000,
                size: 0x1000_0000 - 0x10_0000,
                kind: MemoryKind::Ram,
            },
            MemoryRegion {
                base: 0,
                size: 0xA_0000,
                kind: MemoryKind::Ram,
            },
            MemoryRegion {
                base: 0xF_0000,
                size: 0x1_0000,
                kind: MemoryKind::Reserved,
            },
        ],
        vp_count: 3,
        command_line: "console=ttyS0 quiet".to_string(),
        mmio_ranges: vec![(0xF000_0000, 0x100_0000), (0xC000_0000, 0x2000_0000)],
        madt: madt(),
        srat: b"SRAT-bytes".to_vec(),
        slit: b"SLIT-bytes".to_vec(),
        pptt: b"PPTT-bytes".to_vec(),
    }
}

/// Loads a native file with one 4 KiB parameter area holding `kind` at `offset`, and returns
/// the area's bytes.
fn area_bytes(kind: ParameterKind, offset: u32) -> Vec<u8> {
    let mut builder = IgvmBuilder::native();
    builder
        .parameter_area(4, 0x1000, &[(kind, offset)], AREA_GPA)
        .unwrap();
    let file = builder.build().unwrap();
    let plan = load(
        &file,
        &options(PlatformChoice::Exact(Platform::Native), host()),
    )
    .unwrap();
    area_of(&plan, 4)
}

fn area_of(plan: &Plan, area_index: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    for op in &plan.operations {
        if op.kind == (PageKind::Parameter { area_index }) {
            let PageData::Bytes(data) = &op.data else {
                panic!("parameter page without bytes");
            };
            bytes.extend_from_slice(data);
        }
    }
    bytes
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

#[test]
fn vp_count_is_u32() {
    let bytes = area_bytes(ParameterKind::VpCount, 0x10);
    assert_eq!(bytes.len(), 0x1000);
    assert_eq!(u32_at(&bytes, 0x10), 3);
    assert!(bytes[..0x10].iter().all(|b| *b == 0));
    assert!(bytes[0x14..].iter().all(|b| *b == 0));
}

#[test]
fn environment_info_marks_memory_shared() {
    let bytes = area_bytes(ParameterKind::EnvironmentInfo, 4);
    assert_eq!(u32_at(&bytes, 4), 1);
    assert!(bytes[8..].iter().all(|b| *b == 0));
}

#[test]
fn command_line_is_nul_terminated() {
    let bytes = area_bytes(ParameterKind::CommandLine, 0x20);
    assert_eq!(&bytes[0x20..0x20 + 19], b"console=ttyS0 quiet");
    assert_eq!(bytes[0x20 + 19], 0);
}

#[test]
fn memory_map_is_sorted_with_types() {
    let bytes = area_bytes(ParameterKind::MemoryMap, 0);
    // Entries are 24 bytes: page number, page count, type (u16), flags (u16), reserved (u32).
    let entry = |i: usize| {
        let base = i * 24;
        (
            u64_at(&bytes, base),
            u64_at(&bytes, base + 8),
            u16::from_le_bytes([bytes[base + 16], bytes[base + 17]]),
        )
    };
    assert_eq!(entry(0), (0, 0xA0, 0));
    assert_eq!(entry(1), (0xF0, 0x10, 1));
    assert_eq!(entry(2), (0x100, 0x10000 - 0x100, 0));
    assert_eq!(entry(3), (0, 0, 0));
}

#[test]
fn mmio_ranges_are_sorted_pages() {
    let bytes = area_bytes(ParameterKind::MmioRanges, 8);
    assert_eq!(u64_at(&bytes, 8), 0xC_0000);
    assert_eq!(u64_at(&bytes, 16), 0x2_0000);
    assert_eq!(u64_at(&bytes, 24), 0xF_0000);
    assert_eq!(u64_at(&bytes, 32), 0x1000);
    assert!(bytes[40..].iter().all(|b| *b == 0));
}

#[test]
fn acpi_tables_are_copied() {
    let madt_bytes = area_bytes(ParameterKind::Madt, 0x100);
    assert_eq!(&madt_bytes[0x100..0x100 + madt().len()], madt().as_slice());
    assert_eq!(&madt_bytes[0x100..0x104], b"APIC");
    for (kind, expected) in [
        (ParameterKind::Srat, b"SRAT-bytes"),
        (ParameterKind::Slit, b"SLIT-bytes"),
        (ParameterKind::Pptt, b"PPTT-bytes"),
    ] {
        let bytes = area_bytes(kind, 0);
        assert_eq!(&bytes[..10], expected, "{kind:?}");
        assert!(bytes[10..].iter().all(|b| *b == 0), "{kind:?}");
    }
}

/// Reads a big-endian u32 of a flattened device tree.
fn be32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn device_tree_describes_memory_cpus_and_bootargs() {
    let bytes = area_bytes(ParameterKind::DeviceTree, 0);
    assert_eq!(be32(&bytes, 0), 0xD00D_FEED);
    let total_size = be32(&bytes, 4) as usize;
    assert!(total_size > 0x40);
    assert!(total_size <= 0x1000);
    let tree = &bytes[..total_size];
    for node in [
        &b"memory@0\0"[..],
        b"memory@100000\0",
        b"cpus\0",
        b"cpu@0\0",
        b"cpu@1\0",
        b"cpu@2\0",
        b"chosen\0",
    ] {
        assert!(
            contains(tree, node),
            "missing node {:?}",
            String::from_utf8_lossy(node)
        );
    }
    assert!(!contains(tree, b"cpu@3\0"));
    // The reserved BIOS area is not memory.
    assert!(!contains(tree, b"memory@f0000\0"));
    assert!(contains(tree, b"console=ttyS0 quiet\0"));
    // The reg property of memory@100000: base and size as two big-endian u64.
    let mut reg = 0x10_0000u64.to_be_bytes().to_vec();
    reg.extend_from_slice(&(0x1000_0000u64 - 0x10_0000).to_be_bytes());
    assert!(contains(tree, &reg));
}

#[test]
fn several_parameters_share_an_area() {
    let mut builder = IgvmBuilder::native();
    builder
        .parameter_area(
            0,
            0x2000,
            &[
                (ParameterKind::VpCount, 0),
                (ParameterKind::EnvironmentInfo, 4),
                (ParameterKind::CommandLine, 0x1000),
            ],
            AREA_GPA,
        )
        .unwrap();
    let file = builder.build().unwrap();
    let plan = load(
        &file,
        &options(PlatformChoice::Exact(Platform::Native), host()),
    )
    .unwrap();
    let pages: Vec<u64> = plan.operations.iter().map(|op| op.gpa).collect();
    assert_eq!(pages, vec![AREA_GPA, AREA_GPA + 0x1000]);
    let bytes = area_of(&plan, 0);
    assert_eq!(u32_at(&bytes, 0), 3);
    assert_eq!(u32_at(&bytes, 4), 1);
    assert_eq!(&bytes[0x1000..0x1014], b"console=ttyS0 quiet\0");
}
