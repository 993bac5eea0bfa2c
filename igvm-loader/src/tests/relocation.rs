//! Relocation of a generated relocatable file.
//!
//! igvm 0.5 accepts relocation headers only together with a VBS VP context for the same
//! compatibility mask. The file therefore declares VSM (mask 0x1) and native (mask 0x2)
//! platforms, with a VBS context for the first and a native context for the second.

use igvm::hv_defs::Vtl;
use igvm::registers::X86Register;
use igvm::{IgvmDirectiveHeader, IgvmInitializationHeader};
use igvm_defs::IgvmNativeVpContextX64;
use zerocopy::FromZeros;

use super::fixtures::*;
use crate::builder::IgvmBuilder;
use crate::error::LoadError;
use crate::load::load;
use crate::plan::{HeaderRef, PageData, Platform, VpState};

const VSM: u32 = 0x1;
const NATIVE: u32 = 0x2;
const BOTH: u32 = VSM | NATIVE;
const PML4: u64 = 0x10_0000;
const PDPT: u64 = 0x10_1000;
const PD: u64 = 0x10_2000;
const REGION: u64 = 0x20_0000;
const FIXED_PAGE: u64 = 0x1000;
/// Present, writable, 2 MiB page.
const LARGE_PAGE_FLAGS: u64 = 0x83;
/// Present, writable.
const TABLE_FLAGS: u64 = 0x3;

fn table(entries: &[(usize, u64)]) -> Vec<u8> {
    let mut bytes = vec![0u8; 0x1000];
    for (index, value) in entries {
        bytes[index * 8..index * 8 + 8].copy_from_slice(&value.to_le_bytes());
    }
    bytes
}

/// Builds a relocatable file. A 2 MiB region at 2 MiB contains code and a GDT. Page tables at
/// 1 MiB identity-map the first 4 MiB with 2 MiB pages. A fixed page sits at 4 KiB, and
/// `extra_fixed_page` adds a second one.
fn relocatable_file(extra_fixed_page: Option<u64>) -> Vec<u8> {
    relocatable_file_with_pml4(extra_fixed_page, &table(&[(0, PDPT | TABLE_FLAGS)]))
}

/// Builds the relocatable file of [`relocatable_file`] with the given PML4 page.
fn relocatable_file_with_pml4(extra_fixed_page: Option<u64>, pml4: &[u8]) -> Vec<u8> {
    let mut builder = IgvmBuilder::new();
    builder.platform(Platform::Vbs, VSM, 0).unwrap();
    builder.platform(Platform::Native, NATIVE, 0).unwrap();
    builder.initialization(IgvmInitializationHeader::RelocatableRegion {
        compatibility_mask: BOTH,
        relocation_alignment: 0x20_0000,
        relocation_region_gpa: REGION,
        relocation_region_size: 0x20_0000,
        minimum_relocation_gpa: 0,
        maximum_relocation_gpa: 0x4000_0000,
        is_vtl2: false,
        apply_rip_offset: true,
        apply_gdtr_offset: true,
        vp_index: 0,
        vtl: Vtl::Vtl0,
    });
    builder.initialization(IgvmInitializationHeader::PageTableRelocationRegion {
        compatibility_mask: BOTH,
        gpa: PML4,
        size: 0x4000,
        used_size: 0x3000,
        vp_index: 0,
        vtl: Vtl::Vtl0,
    });

    builder.set_mask(BOTH);
    builder.pages(FIXED_PAGE, b"fixed").unwrap();
    if let Some(gpa) = extra_fixed_page {
        builder.pages(gpa, b"above").unwrap();
    }
    builder.pages(PML4, pml4).unwrap();
    builder
        .pages(PDPT, &table(&[(0, PD | TABLE_FLAGS)]))
        .unwrap();
    builder
        .pages(
            PD,
            &table(&[(0, LARGE_PAGE_FLAGS), (1, REGION | LARGE_PAGE_FLAGS)]),
        )
        .unwrap();
    builder.pages(REGION, b"code").unwrap();
    builder.pages(REGION + 0x1000, b"gdt").unwrap();

    builder.set_mask(VSM);
    builder.directive(IgvmDirectiveHeader::X64VbsVpContext {
        vtl: Vtl::Vtl0,
        registers: vec![
            X86Register::Rip(REGION + 0x10),
            X86Register::Cr3(PML4),
            X86Register::Cr0(0x8000_0001),
        ],
        compatibility_mask: VSM,
    });
    builder.set_mask(NATIVE);
    let mut context = IgvmNativeVpContextX64::new_zeroed();
    context.rip = REGION + 0x10;
    context.gdtr_base = REGION + 0x1000;
    context.gdtr_limit = 0x17;
    context.cr0 = 0x8000_0011;
    context.cr3 = PML4;
    context.cr4 = 0x20;
    context.efer = 0x500;
    context.code_attributes = 0xA09B;
    builder.native_vp_context(0, context);
    builder.build().unwrap()
}

fn load_at(file: &[u8], base: Option<u64>) -> Result<crate::plan::Plan, LoadError> {
    let mut options = native_options();
    options.relocation_base = base;
    load(file, &options)
}

fn op_bytes(plan: &crate::plan::Plan, gpa: u64) -> Vec<u8> {
    let op = plan
        .operations
        .iter()
        .find(|op| op.gpa == gpa)
        .unwrap_or_else(|| panic!("no operation at {gpa:#x}"));
    match &op.data {
        PageData::Bytes(bytes) => bytes.clone(),
        PageData::Zero => vec![0; 0x1000],
    }
}

fn entry(bytes: &[u8], index: usize) -> u64 {
    u64::from_le_bytes(bytes[index * 8..index * 8 + 8].try_into().unwrap())
}

#[test]
fn relocation_moves_region_registers_and_page_tables() {
    let plan = load_at(&relocatable_file(None), Some(0x80_0000)).unwrap();

    let gpas: Vec<u64> = plan.operations.iter().map(|op| op.gpa).collect();
    assert_eq!(
        gpas,
        vec![FIXED_PAGE, PML4, PDPT, PD, 0x80_0000, 0x80_1000],
        "the rebuilt tables replace the file's tables in place"
    );
    assert_eq!(&op_bytes(&plan, 0x80_0000)[..4], b"code");
    assert_eq!(&op_bytes(&plan, 0x80_1000)[..3], b"gdt");
    assert_eq!(&op_bytes(&plan, FIXED_PAGE)[..5], b"fixed");

    // The 2 MiB entry for the region moved from index 1 to index 4 (8 MiB); the entry for
    // 0..2 MiB stays.
    let pd = op_bytes(&plan, PD);
    assert_eq!(entry(&pd, 0), LARGE_PAGE_FLAGS);
    assert_eq!(entry(&pd, 1), 0);
    assert_eq!(entry(&pd, 4), 0x80_0000 | LARGE_PAGE_FLAGS);
    assert_eq!(entry(&op_bytes(&plan, PML4), 0), PDPT | TABLE_FLAGS);

    assert_eq!(plan.vp_contexts.len(), 1);
    let VpState::Native(context) = &plan.vp_contexts[0].state else {
        panic!("expected a native context");
    };
    assert_eq!(context.rip, 0x80_0010);
    assert_eq!(context.gdtr_base, 0x80_1000);
    assert_eq!(context.cr3, PML4);
    assert_eq!(plan.vp_contexts[0].ops_before, 6);
}

#[test]
fn relocation_keeps_file_base_without_request() {
    let plan = load_at(&relocatable_file(None), None).unwrap();
    let gpas: Vec<u64> = plan.operations.iter().map(|op| op.gpa).collect();
    assert_eq!(
        gpas,
        vec![FIXED_PAGE, PML4, PDPT, PD, REGION, REGION + 0x1000]
    );
    assert_eq!(entry(&op_bytes(&plan, PD), 1), REGION | LARGE_PAGE_FLAGS);
    let VpState::Native(context) = &plan.vp_contexts[0].state else {
        panic!("expected a native context");
    };
    assert_eq!(context.rip, REGION + 0x10);
}

#[test]
fn relocation_ignores_invalid_base() {
    let file = relocatable_file(None);
    // Misaligned, beyond the maximum, and outside RAM: all keep the file's base.
    for base in [0x90_1000, 0x4000_0000, 0x2000_0000] {
        let plan = load_at(&file, Some(base)).unwrap();
        assert!(
            plan.operations.iter().any(|op| op.gpa == REGION),
            "base {base:#x}"
        );
    }
}

#[test]
fn relocation_downward_keeps_file_base() {
    // The region allows base 0, but igvm 0.5 cannot rebuild page tables for a downward move.
    let plan = load_at(&relocatable_file(None), Some(0)).unwrap();
    assert!(plan.operations.iter().any(|op| op.gpa == REGION));
    assert!(!plan.operations.iter().any(|op| op.gpa == 0));
}

#[test]
fn relocation_onto_fixed_pages_is_rejected() {
    let error = load_at(&relocatable_file(Some(0x80_1000)), Some(0x80_0000)).unwrap_err();
    assert_eq!(
        error,
        LoadError::RelocationOverlapsFixedPages {
            region: HeaderRef {
                header_type: 0x102,
                index: 0
            },
            page: HeaderRef {
                header_type: 0x302,
                index: 6
            },
            other: HeaderRef {
                header_type: 0x302,
                index: 1
            },
            gpa: 0x80_1000
        }
    );
}

#[test]
fn relocation_rejects_table_beyond_used_size() {
    // The region is four pages, of which three are used; the fourth is not a table.
    let pml4 = table(&[(0, PDPT | TABLE_FLAGS), (1, 0x10_3000 | TABLE_FLAGS)]);
    let error = load_at(&relocatable_file_with_pml4(None, &pml4), Some(0x80_0000)).unwrap_err();
    assert_eq!(
        error,
        LoadError::PageTableRelocation {
            header: HeaderRef {
                header_type: 0x103,
                index: 1
            },
            message: "page table 0x100000 points to 0x103000, beyond the used size 0x3000"
                .to_string()
        }
    );
}

#[test]
fn relocation_rejects_shared_tables() {
    // Two PML4 entries reach the same PDPT; igvm would walk it once per reference.
    let pml4 = table(&[(0, PDPT | TABLE_FLAGS), (1, PDPT | TABLE_FLAGS)]);
    let error = load_at(&relocatable_file_with_pml4(None, &pml4), Some(0x80_0000)).unwrap_err();
    assert!(
        matches!(&error, LoadError::PageTableRelocation { message, .. }
            if message == "page table 0x101000 is referenced twice"),
        "{error}"
    );
}

/// Flips each byte of the relocatable file, headers and data, with the checksum fixed: the
/// relocation path and igvm's page table rebuild return values or errors, never a panic.
#[test]
fn relocation_corruption_never_panics() {
    let original = relocatable_file(None);
    let header_end = 24 + u32::from_le_bytes(original[12..16].try_into().unwrap()) as usize;
    let mut panics = Vec::new();
    for position in 24..original.len() {
        let mut file = original.clone();
        file[position] ^= 0xFF;
        if original[position] == 0 && position >= header_end {
            // Flipping padding or zero data bytes rarely reaches new code; sample them.
            if position % 61 != 0 {
                continue;
            }
        }
        file[20..24].fill(0);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&file[..24]);
        hasher.update(&file[24..header_end]);
        file[20..24].copy_from_slice(&hasher.finalize().to_le_bytes());
        if let Err(LoadError::IgvmPanic { message, .. }) = load_at(&file, Some(0x80_0000)) {
            panics.push((position, message));
        }
    }
    assert!(panics.is_empty(), "igvm panicked: {panics:?}");
}

#[test]
fn relocation_needs_vbs_context() {
    // igvm 0.5 rejects relocation headers that no VBS VP context pairs with.
    let body = igvm_defs::IGVM_VHS_RELOCATABLE_REGION {
        compatibility_mask: NATIVE,
        vp_index: 0,
        vtl: 0,
        flags: 0,
        relocation_alignment: 0x20_0000,
        relocation_region_gpa: REGION,
        relocation_region_size: 0x20_0000,
        minimum_relocation_gpa: 0,
        maximum_relocation_gpa: 0x4000_0000,
    };
    let file = crate::raw::assemble(
        &[
            native_platform(),
            (0x102, zerocopy::IntoBytes::as_bytes(&body).to_vec()),
        ],
        &[0; 8],
    );
    let error = crate::parse::parse(&file).unwrap_err();
    assert!(
        matches!(&error, LoadError::InvalidHeader { header, reason }
            if header.header_type == 0x102 && reason.contains("VBS VP context")),
        "{error}"
    );
}
