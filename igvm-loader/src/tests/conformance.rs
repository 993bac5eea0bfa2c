//! Loading the conformance files that COCONUT-SVSM's igvmbuilder wrote.

use std::collections::BTreeMap;

use super::fixtures::*;
use crate::host::{MemoryKind, MemoryRegion, PlatformChoice};
use crate::load::load;
use crate::plan::{GpaRange, PageData, PageKind, Plan, Platform, VpState};

const TINY_QEMU: &str = "tiny-qemu-snp-native.igvm";

fn bytes_at(plan: &Plan, gpa: u64) -> Vec<u8> {
    let op = plan
        .operations
        .iter()
        .find(|op| op.gpa == gpa)
        .unwrap_or_else(|| panic!("no operation at {gpa:#x}"));
    let PageData::Bytes(bytes) = &op.data else {
        panic!("no bytes at {gpa:#x}");
    };
    bytes.to_vec()
}

fn kind_counts(plan: &Plan) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for op in &plan.operations {
        let name = match op.kind {
            PageKind::Parameter { .. } => "Parameter".to_string(),
            other => format!("{other:?}"),
        };
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

#[test]
fn tiny_qemu_loads_natively_with_filled_parameters() {
    let file = conformance(TINY_QEMU);
    let plan = load(&file, &native_options()).unwrap();

    assert_eq!(plan.platform, Platform::Native);
    assert_eq!(plan.compatibility_mask, 0x2);
    assert_eq!(plan.guest_policy, None);
    assert_eq!(
        plan.required_memory,
        vec![GpaRange {
            start: 0x800_0000,
            size: 0x100_0000
        }]
    );
    // 29 page data headers apply to native, plus four one-page parameter areas.
    assert_eq!(plan.operations.len(), 33);
    assert!(plan
        .operations
        .iter()
        .all(|op| op.size == 0x1000 && op.gpa < 0x1000_0000));

    // Area 0 at 0x8010000: VpCount at 0, EnvironmentInfo at 4.
    let area0 = bytes_at(&plan, 0x801_0000);
    assert_eq!(u32::from_le_bytes(area0[0..4].try_into().unwrap()), 1);
    assert_eq!(u32::from_le_bytes(area0[4..8].try_into().unwrap()), 1);

    // Area 1 at 0x8012000: the memory map, one RAM entry of 512 MiB, then the terminator.
    let map = bytes_at(&plan, 0x801_2000);
    assert_eq!(u64::from_le_bytes(map[0..8].try_into().unwrap()), 0);
    assert_eq!(
        u64::from_le_bytes(map[8..16].try_into().unwrap()),
        512 * MIB / 0x1000
    );
    assert_eq!(u16::from_le_bytes([map[16], map[17]]), 0);
    assert!(map[24..48].iter().all(|b| *b == 0));

    // Area 2 at 0x8011000: the MADT.
    let madt_page = bytes_at(&plan, 0x801_1000);
    assert_eq!(&madt_page[..4], b"APIC");
    assert_eq!(&madt_page[..madt().len()], madt().as_slice());

    // Area 3 at 0x8013000: the device tree.
    let tree = bytes_at(&plan, 0x801_3000);
    assert_eq!(&tree[..4], &[0xD0, 0x0D, 0xFE, 0xED]);

    assert_eq!(plan.vp_contexts.len(), 1);
    let context = &plan.vp_contexts[0];
    assert_eq!(context.vp_index, 0);
    assert_eq!(context.ops_before, 4);
    let VpState::Native(registers) = &context.state else {
        panic!("expected a native context");
    };
    assert_eq!(registers.rip, 0x10002);
    assert_eq!(registers.cr3, 0x1A000);
    assert!(plan.host_only.corim_document.is_none());
}

#[test]
fn tiny_qemu_loads_for_snp() {
    let file = conformance(TINY_QEMU);
    let plan = load(
        &file,
        &options(PlatformChoice::Exact(Platform::SevSnp), host_512m()),
    )
    .unwrap();

    assert_eq!(plan.platform, Platform::SevSnp);
    assert_eq!(plan.compatibility_mask, 0x1);
    assert_eq!(plan.shared_gpa_boundary, 0);
    assert_eq!(plan.guest_policy, Some(0x30000));
    assert!(plan.snp_id_block.is_none());

    let expected: BTreeMap<String, usize> = [
        ("Normal".to_string(), 29),
        ("Parameter".to_string(), 4),
        ("Cpuid".to_string(), 1),
        ("Secrets".to_string(), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(kind_counts(&plan), expected);
    let zero_pages = plan
        .operations
        .iter()
        .filter(|op| op.data == PageData::Zero)
        .count();
    assert_eq!(zero_pages, 13);

    // The CPUID page and the secrets page come last, after the VMSA header in file order.
    let last: Vec<(u64, PageKind)> = plan.operations[33..]
        .iter()
        .map(|op| (op.gpa, op.kind))
        .collect();
    assert_eq!(
        last,
        vec![(0x1B000, PageKind::Cpuid), (0x801_5000, PageKind::Secrets)]
    );

    assert_eq!(plan.vp_contexts.len(), 1);
    let context = &plan.vp_contexts[0];
    assert_eq!(context.ops_before, 33);
    let VpState::Snp { gpa, vmsa } = &context.state else {
        panic!("expected a VMSA");
    };
    assert_eq!(*gpa, 0xFFFF_FFFF_F000);
    assert_ne!(vmsa.rip, 0);
}

#[test]
fn hyperv_file_loads_for_snp_with_shared_boundary() {
    let file = conformance("tiny-native-snp-hyperv-policy.igvm");
    let plan = load(
        &file,
        &options(PlatformChoice::Exact(Platform::SevSnp), host_512m()),
    )
    .unwrap();
    assert_eq!(plan.shared_gpa_boundary, 0x4000_0000_0000);
    let VpState::Snp { gpa, .. } = &plan.vp_contexts[0].state else {
        panic!("expected a VMSA");
    };
    assert_eq!(*gpa, 0x8FF_F000);
}

#[test]
fn tdx_file_loads_for_tdx() {
    let file = conformance("tiny-tdp-synthetic.igvm");
    // The file puts its reset page at 0xFFFFF000, so the last 16 MiB below 4 GiB are RAM.
    let mut host = host_512m();
    host.memory_map.push(MemoryRegion {
        base: 0xFF00_0000,
        size: 0x100_0000,
        kind: MemoryKind::Ram,
    });
    host.mmio_ranges = vec![(0xC000_0000, 0x3F00_0000)];
    let choice = PlatformChoice::Auto {
        host_supports: vec![Platform::Native, Platform::Tdx],
    };
    let plan = load(&file, &options(choice, host)).unwrap();
    assert_eq!(plan.platform, Platform::Tdx);
    let counts = kind_counts(&plan);
    assert_eq!(counts.get("Normal"), Some(&32));
    assert_eq!(counts.get("Parameter"), Some(&4));
    assert!(plan.vp_contexts.is_empty());
    assert!(plan.operations.iter().any(|op| op.gpa == 0xFFFF_F000));
}
