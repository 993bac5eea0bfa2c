//! Relocation of generated relocatable files.
//!
//! The fixture is a native file with a 2 MiB region that contains code and a GDT. Page tables
//! at 1 MiB identity-map the first 2 MiB and the region with 2 MiB pages. A fixed page sits at
//! 4 KiB, and a native VP context starts in long mode. The file has no VBS VP context, which
//! igvm 0.5 would require next to its relocation headers.

use igvm::hv_defs::Vtl;
use igvm::registers::X86Register;
use igvm::{IgvmDirectiveHeader, IgvmInitializationHeader};
use igvm_defs::{
    IgvmNativeVpContextX64, IgvmVariableHeaderType as Vht, IGVM_VHS_PAGE_TABLE_RELOCATION,
    IGVM_VHS_RELOCATABLE_REGION,
};
use zerocopy::{FromZeros, IntoBytes};

use super::fixtures::*;
use crate::builder::IgvmBuilder;
use crate::error::LoadError;
use crate::host::{MemoryKind, MemoryRegion, PlatformChoice};
use crate::inspect::summarize;
use crate::load::load;
use crate::plan::{HeaderRef, PageData, Plan, Platform, VpState};

const VSM: u32 = 0x1;
const NATIVE: u32 = crate::builder::NATIVE_COMPATIBILITY_MASK;
const PML4: u64 = 0x10_0000;
const PDPT: u64 = 0x10_1000;
const PD: u64 = 0x10_2000;
/// First page of the page table region that the file leaves free.
const FREE_TABLE: u64 = 0x10_3000;
const REGION: u64 = 0x20_0000;
const REGION_SIZE: u64 = 0x20_0000;
const FIXED_PAGE: u64 = 0x1000;
/// Present, writable, 2 MiB page.
const LARGE_PAGE_FLAGS: u64 = 0x83;
/// Present, writable.
const TABLE_FLAGS: u64 = 0x3;
const GIB: u64 = 1 << 30;

const REGION_HEADER: HeaderRef = HeaderRef {
    header_type: 0x102,
    index: 0,
};
const PAGE_TABLE_HEADER: HeaderRef = HeaderRef {
    header_type: 0x103,
    index: 1,
};

fn table(entries: &[(usize, u64)]) -> Vec<u8> {
    let mut bytes = vec![0u8; 0x1000];
    for (index, value) in entries {
        bytes[index * 8..index * 8 + 8].copy_from_slice(&value.to_le_bytes());
    }
    bytes
}

/// The relocatable file, with fields that tests change.
struct Fixture {
    /// Region base in the file.
    region: u64,
    minimum: u64,
    maximum: u64,
    apply_rip: bool,
    vp_index: u16,
    vtl: Vtl,
    /// Size and used size of the page table region; `None` leaves the header out.
    page_tables: Option<(u64, u64)>,
    /// Contents of the PML4 page; `None` points entry 0 at the PDPT.
    pml4: Option<Vec<u8>>,
    /// Page directory entries besides the identity map of 0..2 MiB and of the region.
    pd_extra: Vec<(usize, u64)>,
    extra_fixed_page: Option<u64>,
    cr4: u64,
    /// Also declare a VSM platform with a VBS VP context, as igvm 0.5 wants.
    with_vsm: bool,
}

impl Default for Fixture {
    fn default() -> Self {
        Self {
            region: REGION,
            minimum: 0,
            maximum: GIB,
            apply_rip: true,
            vp_index: 0,
            vtl: Vtl::Vtl0,
            page_tables: Some((0x4000, 0x3000)),
            pml4: None,
            pd_extra: Vec::new(),
            extra_fixed_page: None,
            cr4: 0x20,
            with_vsm: false,
        }
    }
}

impl Fixture {
    fn mask(&self) -> u32 {
        if self.with_vsm {
            VSM | NATIVE
        } else {
            NATIVE
        }
    }

    fn build(&self) -> Vec<u8> {
        let mask = self.mask();
        let mut builder = if self.with_vsm {
            let mut builder = IgvmBuilder::native();
            builder.platform(Platform::Vbs, VSM, 0).unwrap();
            builder
        } else {
            IgvmBuilder::native()
        };
        builder.initialization(IgvmInitializationHeader::RelocatableRegion {
            compatibility_mask: mask,
            relocation_alignment: REGION_SIZE,
            relocation_region_gpa: self.region,
            relocation_region_size: REGION_SIZE,
            minimum_relocation_gpa: self.minimum,
            maximum_relocation_gpa: self.maximum,
            is_vtl2: false,
            apply_rip_offset: self.apply_rip,
            apply_gdtr_offset: true,
            vp_index: self.vp_index,
            vtl: self.vtl,
        });
        if let Some((size, used_size)) = self.page_tables {
            builder.initialization(IgvmInitializationHeader::PageTableRelocationRegion {
                compatibility_mask: mask,
                gpa: PML4,
                size,
                used_size,
                vp_index: 0,
                vtl: Vtl::Vtl0,
            });
        }

        builder.set_mask(mask);
        builder.pages(FIXED_PAGE, b"fixed").unwrap();
        if let Some(gpa) = self.extra_fixed_page {
            builder.pages(gpa, b"above").unwrap();
        }
        let pml4 = self
            .pml4
            .clone()
            .unwrap_or_else(|| table(&[(0, PDPT | TABLE_FLAGS)]));
        builder.pages(PML4, &pml4).unwrap();
        builder
            .pages(PDPT, &table(&[(0, PD | TABLE_FLAGS)]))
            .unwrap();
        let mut pd = vec![
            (0, LARGE_PAGE_FLAGS),
            ((self.region >> 21) as usize, self.region | LARGE_PAGE_FLAGS),
        ];
        pd.extend(&self.pd_extra);
        builder.pages(PD, &table(&pd)).unwrap();
        builder.pages(self.region, b"code").unwrap();
        builder.pages(self.region + 0x1000, b"gdt").unwrap();

        if self.with_vsm {
            builder.set_mask(VSM);
            builder.directive(IgvmDirectiveHeader::X64VbsVpContext {
                vtl: Vtl::Vtl0,
                registers: vec![X86Register::Rip(self.region + 0x10)],
                compatibility_mask: VSM,
            });
        }
        builder.set_mask(NATIVE);
        let mut context = IgvmNativeVpContextX64::new_zeroed();
        context.rip = self.region + 0x10;
        context.gdtr_base = self.region + 0x1000;
        context.gdtr_limit = 0x17;
        context.cr0 = 0x8000_0011;
        context.cr3 = PML4;
        context.cr4 = self.cr4;
        context.efer = 0x500;
        context.code_attributes = 0xA09B;
        builder.native_vp_context(0, context);
        builder.build().unwrap()
    }
}

fn load_at(file: &[u8], base: Option<u64>) -> Result<Plan<'_>, LoadError> {
    let mut options = native_options();
    options.relocation_base = base;
    load(file, &options)
}

/// Loads with `ram` bytes of guest RAM from 0 and no MMIO range.
fn load_with_ram(file: &[u8], base: Option<u64>, ram: u64) -> Result<Plan<'_>, LoadError> {
    let mut host = host_512m();
    host.memory_map = vec![MemoryRegion {
        base: 0,
        size: ram,
        kind: MemoryKind::Ram,
    }];
    host.mmio_ranges.clear();
    let mut options = options(PlatformChoice::Exact(Platform::Native), host);
    options.relocation_base = base;
    load(file, &options)
}

fn op_bytes(plan: &Plan, gpa: u64) -> Vec<u8> {
    let op = plan
        .operations
        .iter()
        .find(|op| op.gpa == gpa)
        .unwrap_or_else(|| panic!("no operation at {gpa:#x}"));
    match &op.data {
        PageData::Bytes(bytes) => bytes.to_vec(),
        PageData::Zero => vec![0; 0x1000],
    }
}

fn gpas(plan: &Plan) -> Vec<u64> {
    plan.operations.iter().map(|op| op.gpa).collect()
}

fn entry(bytes: &[u8], index: usize) -> u64 {
    u64::from_le_bytes(bytes[index * 8..index * 8 + 8].try_into().unwrap())
}

fn native_context<'p>(plan: &'p Plan<'_>) -> &'p IgvmNativeVpContextX64 {
    assert_eq!(plan.vp_contexts.len(), 1);
    match &plan.vp_contexts[0].state {
        VpState::Native(context) => context,
        other => panic!("expected a native context, got {other:?}"),
    }
}

fn relocation_error(header: HeaderRef, reason: &str) -> LoadError {
    LoadError::InvalidRelocationHeader {
        header,
        reason: reason.to_string(),
    }
}

#[test]
fn native_file_parses_relocation_headers() {
    let file = Fixture::default().build();
    let parsed = crate::parse::parse(&file).unwrap();
    assert!(parsed.initialization_refs.is_empty(), "the crate saw them");
    let refs: Vec<HeaderRef> = parsed.relocation_headers.iter().map(|(h, _)| *h).collect();
    assert_eq!(refs, vec![REGION_HEADER, PAGE_TABLE_HEADER]);
    assert_eq!(
        parsed.relocation_headers[0].1,
        IgvmInitializationHeader::RelocatableRegion {
            compatibility_mask: NATIVE,
            relocation_alignment: REGION_SIZE,
            relocation_region_gpa: REGION,
            relocation_region_size: REGION_SIZE,
            minimum_relocation_gpa: 0,
            maximum_relocation_gpa: GIB,
            is_vtl2: false,
            apply_rip_offset: true,
            apply_gdtr_offset: true,
            vp_index: 0,
            vtl: Vtl::Vtl0,
        }
    );
    assert_eq!(
        parsed.relocation_headers[1].1,
        IgvmInitializationHeader::PageTableRelocationRegion {
            compatibility_mask: NATIVE,
            gpa: PML4,
            size: 0x4000,
            used_size: 0x3000,
            vp_index: 0,
            vtl: Vtl::Vtl0,
        }
    );
    let in_order: Vec<HeaderRef> = parsed.initializations().map(|(h, _)| h).collect();
    assert_eq!(in_order, refs);
}

#[test]
fn inspect_counts_relocation_headers() {
    let summary = summarize(&Fixture::default().build()).unwrap();
    assert_eq!(summary.header_counts.get("RelocatableRegion"), Some(&1));
    assert_eq!(
        summary.header_counts.get("PageTableRelocationRegion"),
        Some(&1)
    );
    assert_eq!(summary.header_counts.get("PageData"), Some(&6));
}

#[test]
fn relocation_moves_region_registers_and_page_tables() {
    let file = Fixture::default().build();
    let plan = load_at(&file, Some(0x80_0000)).unwrap();

    assert_eq!(
        gpas(&plan),
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

    let context = native_context(&plan);
    assert_eq!(context.rip, 0x80_0010);
    assert_eq!(context.gdtr_base, 0x80_1000);
    assert_eq!(context.cr3, PML4);
    assert_eq!(plan.vp_contexts[0].ops_before, 6);
}

#[test]
fn relocation_moves_region_down() {
    let file = Fixture {
        region: 0x60_0000,
        ..Fixture::default()
    }
    .build();
    let plan = load_at(&file, Some(REGION)).unwrap();
    assert_eq!(
        gpas(&plan),
        vec![FIXED_PAGE, PML4, PDPT, PD, REGION, REGION + 0x1000]
    );
    let pd = op_bytes(&plan, PD);
    assert_eq!(entry(&pd, 3), 0, "the old entry is cleared");
    assert_eq!(entry(&pd, 1), REGION | LARGE_PAGE_FLAGS);
    let context = native_context(&plan);
    assert_eq!(context.rip, REGION + 0x10);
    assert_eq!(context.gdtr_base, REGION + 0x1000);
}

#[test]
fn relocation_keeps_file_base_without_request() {
    let file = Fixture::default().build();
    let plan = load_at(&file, None).unwrap();
    assert_eq!(
        gpas(&plan),
        vec![FIXED_PAGE, PML4, PDPT, PD, REGION, REGION + 0x1000]
    );
    assert_eq!(entry(&op_bytes(&plan, PD), 1), REGION | LARGE_PAGE_FLAGS);
    assert_eq!(native_context(&plan).rip, REGION + 0x10);
}

#[test]
fn relocation_ignores_invalid_request() {
    // A misaligned base and one whose region would end outside RAM: both keep the file's
    // base, which meets the limits.
    let file = Fixture::default().build();
    for base in [0x90_1000, 0x2000_0000] {
        let plan = load_at(&file, Some(base)).unwrap();
        assert!(gpas(&plan).contains(&REGION), "base {base:#x}");
    }

    // A base whose region would end above the maximum.
    let file = Fixture {
        maximum: 0x100_0000,
        ..Fixture::default()
    }
    .build();
    let plan = load_at(&file, Some(0x100_0000)).unwrap();
    assert!(gpas(&plan).contains(&REGION));
}

#[test]
fn relocation_picks_lowest_free_base() {
    // The file's base is below the minimum, so the loader picks a base. 4 MiB is taken by a
    // fixed page, so the region goes to 6 MiB.
    let file = Fixture {
        minimum: 0x40_0000,
        extra_fixed_page: Some(0x40_1000),
        ..Fixture::default()
    }
    .build();
    let plan = load_at(&file, None).unwrap();
    assert_eq!(
        gpas(&plan),
        vec![FIXED_PAGE, 0x40_1000, PML4, PDPT, PD, 0x60_0000, 0x60_1000]
    );
    let pd = op_bytes(&plan, PD);
    assert_eq!(entry(&pd, 1), 0);
    assert_eq!(entry(&pd, 3), 0x60_0000 | LARGE_PAGE_FLAGS);
    assert_eq!(native_context(&plan).rip, 0x60_0010);
}

#[test]
fn relocation_without_free_base_is_rejected() {
    // The limits lie entirely above the 512 MiB of RAM.
    let file = Fixture {
        minimum: GIB,
        maximum: 2 * GIB,
        ..Fixture::default()
    }
    .build();
    let error = load_at(&file, None).unwrap_err();
    assert_eq!(
        error,
        LoadError::RelocationNoBase {
            header: REGION_HEADER,
            size: REGION_SIZE,
            minimum: GIB,
            maximum: 2 * GIB,
        }
    );
}

#[test]
fn relocation_onto_fixed_pages_is_rejected() {
    let file = Fixture {
        extra_fixed_page: Some(0x80_1000),
        ..Fixture::default()
    }
    .build();
    let error = load_at(&file, Some(0x80_0000)).unwrap_err();
    assert_eq!(
        error,
        LoadError::RelocationOverlapsFixedPages {
            region: REGION_HEADER,
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
fn relocation_adds_table_from_free_space() {
    // 1 GiB + 2 MiB needs a page directory for the second GiB, which the rebuild takes from
    // the free page at the end of the region.
    let file = Fixture {
        maximum: 2 * GIB,
        ..Fixture::default()
    }
    .build();
    let new_base = GIB + REGION;
    let plan = load_with_ram(&file, Some(new_base), 2 * GIB).unwrap();
    assert_eq!(
        gpas(&plan),
        vec![
            FIXED_PAGE,
            PML4,
            PDPT,
            PD,
            FREE_TABLE,
            new_base,
            new_base + 0x1000
        ]
    );
    let pdpt = op_bytes(&plan, PDPT);
    assert_eq!(entry(&pdpt, 0), PD | TABLE_FLAGS);
    assert_eq!(entry(&pdpt, 1), FREE_TABLE | TABLE_FLAGS);
    assert_eq!(entry(&op_bytes(&plan, PD), 1), 0);
    let new_pd = op_bytes(&plan, FREE_TABLE);
    assert_eq!(entry(&new_pd, 1), new_base | LARGE_PAGE_FLAGS);
    let present: Vec<usize> = (0..512).filter(|i| entry(&new_pd, *i) != 0).collect();
    assert_eq!(present, vec![1]);
    assert_eq!(native_context(&plan).rip, new_base + 0x10);
    assert_eq!(plan.vp_contexts[0].ops_before, 7);
}

#[test]
fn relocation_without_free_table_is_rejected() {
    let file = Fixture {
        maximum: 2 * GIB,
        page_tables: Some((0x3000, 0x3000)),
        ..Fixture::default()
    }
    .build();
    let error = load_with_ram(&file, Some(GIB + REGION), 2 * GIB).unwrap_err();
    assert_eq!(
        error,
        LoadError::PageTableRelocation {
            header: PAGE_TABLE_HEADER,
            message: "the region has no free page for a new table to map VA 0x40200000; all \
                      0x3000 bytes are in use"
                .to_string()
        }
    );
}

#[test]
fn relocation_onto_other_mapping_is_rejected() {
    // The page directory maps 8 MiB read-only; the region's writable entry cannot replace it.
    let file = Fixture {
        pd_extra: vec![(4, 0x80_0000 | 0x81)],
        ..Fixture::default()
    }
    .build();
    let error = load_at(&file, Some(0x80_0000)).unwrap_err();
    assert_eq!(
        error,
        LoadError::PageTableRelocation {
            header: PAGE_TABLE_HEADER,
            message: "the entry for VA 0x200000 would move to 0x800000, which entry 0x800081 in \
                      page table 0x102000 already maps"
                .to_string()
        }
    );
}

#[test]
fn relocation_onto_identical_mapping_is_kept() {
    // An identity map that already covers the new place needs no new entry.
    let file = Fixture {
        pd_extra: vec![(4, 0x80_0000 | LARGE_PAGE_FLAGS)],
        ..Fixture::default()
    }
    .build();
    let plan = load_at(&file, Some(0x80_0000)).unwrap();
    let pd = op_bytes(&plan, PD);
    assert_eq!(entry(&pd, 1), 0);
    assert_eq!(entry(&pd, 4), 0x80_0000 | LARGE_PAGE_FLAGS);
}

#[test]
fn relocation_rejects_table_beyond_used_size() {
    // The region is four pages, of which three are used; the fourth is not a table.
    let file = Fixture {
        pml4: Some(table(&[
            (0, PDPT | TABLE_FLAGS),
            (1, FREE_TABLE | TABLE_FLAGS),
        ])),
        ..Fixture::default()
    }
    .build();
    let error = load_at(&file, Some(0x80_0000)).unwrap_err();
    assert_eq!(
        error,
        LoadError::PageTableRelocation {
            header: PAGE_TABLE_HEADER,
            message: "page table 0x100000 points to 0x103000, beyond the used size 0x3000"
                .to_string()
        }
    );
}

#[test]
fn relocation_rejects_shared_tables() {
    // Two PML4 entries reach the same PDPT, so it would map two ranges.
    let file = Fixture {
        pml4: Some(table(&[(0, PDPT | TABLE_FLAGS), (1, PDPT | TABLE_FLAGS)])),
        ..Fixture::default()
    }
    .build();
    let error = load_at(&file, Some(0x80_0000)).unwrap_err();
    assert_eq!(
        error,
        LoadError::PageTableRelocation {
            header: PAGE_TABLE_HEADER,
            message: "page table 0x101000 is referenced twice".to_string()
        }
    );
}

#[test]
fn relocation_needs_four_level_paging() {
    let file = Fixture {
        cr4: 0,
        ..Fixture::default()
    }
    .build();
    let error = load_at(&file, Some(0x80_0000)).unwrap_err();
    assert_eq!(
        error,
        LoadError::PageTableRelocation {
            header: PAGE_TABLE_HEADER,
            message: "vCPU 0 does not start with 4-level paging (CR0 0x80000011, CR4 0x0, EFER \
                      0x500)"
                .to_string()
        }
    );
}

#[test]
fn relocation_needs_context_of_named_vp() {
    let file = Fixture {
        vp_index: 1,
        ..Fixture::default()
    }
    .build();
    // Checked even when the region stays.
    let error = load_at(&file, None).unwrap_err();
    assert_eq!(
        error,
        relocation_error(
            REGION_HEADER,
            "it moves the RIP or GDTR of vCPU 1, which has no VP context"
        )
    );
}

#[test]
fn relocation_rejects_higher_vtl() {
    let file = Fixture {
        vtl: Vtl::Vtl2,
        ..Fixture::default()
    }
    .build();
    let error = load_at(&file, None).unwrap_err();
    assert_eq!(
        error,
        relocation_error(
            REGION_HEADER,
            "it moves the RIP or GDTR of vCPU 0 at VTL 2, but the loader starts VTL 0 only"
        )
    );
}

#[test]
fn relocation_without_page_tables() {
    // Without a page table region only the pages and registers move.
    let file = Fixture {
        page_tables: None,
        ..Fixture::default()
    }
    .build();
    let plan = load_at(&file, Some(0x80_0000)).unwrap();
    assert_eq!(
        gpas(&plan),
        vec![FIXED_PAGE, PML4, PDPT, PD, 0x80_0000, 0x80_1000]
    );
    assert_eq!(entry(&op_bytes(&plan, PD), 1), REGION | LARGE_PAGE_FLAGS);
    assert_eq!(native_context(&plan).rip, 0x80_0010);
}

#[test]
fn relocation_with_vbs_context_still_loads() {
    // A file written for igvm 0.5's rule, with a VSM platform next to native.
    let file = Fixture {
        with_vsm: true,
        ..Fixture::default()
    }
    .build();
    let plan = load_at(&file, Some(0x80_0000)).unwrap();
    assert_eq!(
        gpas(&plan),
        vec![FIXED_PAGE, PML4, PDPT, PD, 0x80_0000, 0x80_1000]
    );
    assert_eq!(native_context(&plan).rip, 0x80_0010);
}

/// Flips each byte of the relocatable file, headers and data, with the checksum fixed: the
/// relocation path returns values or errors, never a panic.
#[test]
fn relocation_corruption_never_panics() {
    let original = Fixture::default().build();
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
        for base in [None, Some(0x80_0000)] {
            let result = std::panic::catch_unwind(|| load_at(&file, base));
            match result {
                Err(_) => panics.push(position),
                Ok(Err(LoadError::IgvmPanic { .. })) => panics.push(position),
                Ok(_) => {}
            }
        }
    }
    assert!(panics.is_empty(), "panics at byte offsets {panics:?}");
}

fn region_body(edit: impl FnOnce(&mut IGVM_VHS_RELOCATABLE_REGION)) -> Vec<u8> {
    let mut body = IGVM_VHS_RELOCATABLE_REGION {
        compatibility_mask: NATIVE_MASK,
        vp_index: 0,
        vtl: 0,
        flags: 0,
        relocation_alignment: REGION_SIZE,
        relocation_region_gpa: REGION,
        relocation_region_size: REGION_SIZE,
        minimum_relocation_gpa: 0,
        maximum_relocation_gpa: GIB,
    };
    edit(&mut body);
    body.as_bytes().to_vec()
}

fn page_table_body(edit: impl FnOnce(&mut IGVM_VHS_PAGE_TABLE_RELOCATION)) -> Vec<u8> {
    let mut body = IGVM_VHS_PAGE_TABLE_RELOCATION {
        compatibility_mask: NATIVE_MASK,
        vp_index: 0,
        vtl: 0,
        reserved: 0,
        gpa: PML4,
        size: 0x4000,
        used_size: 0x3000,
    };
    edit(&mut body);
    body.as_bytes().to_vec()
}

const RELOCATABLE: u32 = Vht::IGVM_VHT_RELOCATABLE_REGION.0;
const PAGE_TABLES: u32 = Vht::IGVM_VHT_PAGE_TABLE_RELOCATION_REGION.0;

/// Each invalid relocation header, alone or with a second one, in a native file: the error
/// names the header's type and its index in the file.
#[test]
fn invalid_relocation_headers_are_named() {
    type Case = (&'static str, Vec<(u32, Vec<u8>)>, LoadError);
    let cases: Vec<Case> = vec![
        (
            "zero alignment",
            vec![(RELOCATABLE, region_body(|r| r.relocation_alignment = 0))],
            relocation_error(REGION_HEADER, "relocation alignment is zero"),
        ),
        (
            "zero size",
            vec![(RELOCATABLE, region_body(|r| r.relocation_region_size = 0))],
            relocation_error(REGION_HEADER, "region size is zero"),
        ),
        (
            "region end past 2^64",
            vec![(
                RELOCATABLE,
                region_body(|r| r.relocation_region_gpa = u64::MAX - 0x1F_FFFF),
            )],
            relocation_error(REGION_HEADER, "region end overflows 64 bits"),
        ),
        (
            "size not a multiple of 4 KiB",
            vec![(
                RELOCATABLE,
                region_body(|r| r.relocation_region_size = 0x1800),
            )],
            invalid(
                REGION_HEADER,
                "region size 0x1800 is not a multiple of 0x1000",
            ),
        ),
        (
            "alignment not a multiple of 4 KiB",
            vec![(
                RELOCATABLE,
                region_body(|r| {
                    r.relocation_alignment = 0x800;
                    r.relocation_region_gpa = 0x800;
                    r.relocation_region_size = 0x1000;
                }),
            )],
            invalid(
                REGION_HEADER,
                "relocation alignment 0x800 is not a multiple of 0x1000",
            ),
        ),
        (
            "base not aligned",
            vec![(
                RELOCATABLE,
                region_body(|r| r.relocation_region_gpa = 0x20_1000),
            )],
            invalid(
                REGION_HEADER,
                "region base 0x201000 is not a multiple of 0x200000",
            ),
        ),
        (
            "minimum not aligned",
            vec![(
                RELOCATABLE,
                region_body(|r| r.minimum_relocation_gpa = 0x1000),
            )],
            invalid(
                REGION_HEADER,
                "minimum base 0x1000 is not a multiple of 0x200000",
            ),
        ),
        (
            "maximum not aligned",
            vec![(
                RELOCATABLE,
                region_body(|r| r.maximum_relocation_gpa = GIB + 0x1000),
            )],
            invalid(
                REGION_HEADER,
                "maximum address 0x40001000 is not a multiple of 0x200000",
            ),
        ),
        (
            "maximum below minimum plus size",
            vec![(
                RELOCATABLE,
                region_body(|r| {
                    r.minimum_relocation_gpa = 0x40_0000;
                    r.maximum_relocation_gpa = 0x40_0000;
                }),
            )],
            relocation_error(
                REGION_HEADER,
                "no base between the minimum 0x400000 and the maximum address 0x400000 fits \
                 the 0x200000-byte region",
            ),
        ),
        (
            "VTL 3",
            vec![(RELOCATABLE, region_body(|r| r.vtl = 3))],
            invalid(REGION_HEADER, "VTL 3 is not 0, 1 or 2"),
        ),
        (
            "two overlapping regions",
            vec![
                (RELOCATABLE, region_body(|_| {})),
                (
                    RELOCATABLE,
                    region_body(|r| {
                        r.relocation_region_gpa = 0;
                        r.relocation_region_size = 0x40_0000;
                    }),
                ),
            ],
            invalid(
                HeaderRef {
                    header_type: RELOCATABLE,
                    index: 1,
                },
                "its region overlaps RelocatableRegion header 0x102 at initialization index 0",
            ),
        ),
        (
            "page table region inside a relocatable region",
            vec![
                (RELOCATABLE, region_body(|_| {})),
                (PAGE_TABLES, page_table_body(|p| p.gpa = REGION)),
            ],
            invalid(
                PAGE_TABLE_HEADER,
                "its region overlaps RelocatableRegion header 0x102 at initialization index 0",
            ),
        ),
        (
            "page table region used beyond its size",
            vec![(PAGE_TABLES, page_table_body(|p| p.used_size = 0x5000))],
            relocation_error(
                HeaderRef {
                    header_type: PAGE_TABLES,
                    index: 0,
                },
                "used size exceeds region size",
            ),
        ),
        (
            "page table region of zero size",
            vec![(
                PAGE_TABLES,
                page_table_body(|p| {
                    p.size = 0;
                    p.used_size = 0;
                }),
            )],
            relocation_error(
                HeaderRef {
                    header_type: PAGE_TABLES,
                    index: 0,
                },
                "region size is zero",
            ),
        ),
        (
            "page table reserved field",
            vec![(PAGE_TABLES, page_table_body(|p| p.reserved = 1))],
            invalid(
                HeaderRef {
                    header_type: PAGE_TABLES,
                    index: 0,
                },
                "the reserved field is not zero",
            ),
        ),
        (
            "two page table regions",
            vec![
                (PAGE_TABLES, page_table_body(|_| {})),
                (PAGE_TABLES, page_table_body(|p| p.gpa = 0x80_0000)),
            ],
            invalid(
                PAGE_TABLE_HEADER,
                "a platform already has a page table relocation region",
            ),
        ),
    ];
    for (name, headers, expected) in cases {
        let mut all = vec![native_platform()];
        all.extend(headers);
        let file = crate::raw::assemble(&all, &[0; 8]);
        let error = crate::parse::parse(&file).expect_err(name);
        assert_eq!(error, expected, "{name}");
    }
}

fn invalid(header: HeaderRef, reason: &str) -> LoadError {
    LoadError::InvalidHeader {
        header,
        reason: reason.to_string(),
    }
}

#[test]
fn page_table_region_outside_ram_is_rejected() {
    let file = crate::raw::assemble(
        &[
            native_platform(),
            (PAGE_TABLES, page_table_body(|p| p.gpa = 0x3000_0000)),
        ],
        &[0; 8],
    );
    let error = load(&file, &native_options()).unwrap_err();
    assert_eq!(
        error,
        LoadError::RelocationOutsideRam {
            header: HeaderRef {
                header_type: PAGE_TABLES,
                index: 0
            },
            gpa: 0x3000_0000,
            size: 0x4000
        }
    );
}

#[test]
fn parameter_insert_into_page_tables_is_rejected() {
    let file = crate::raw::assemble(
        &[
            native_platform(),
            (PAGE_TABLES, page_table_body(|_| {})),
            (PARAMETER_AREA, area_body(0x1000, 0)),
            (PARAMETER_INSERT, insert_body(PDPT, NATIVE_MASK, 0)),
        ],
        &[0; 8],
    );
    let error = crate::parse::parse(&file).unwrap_err();
    assert_eq!(
        error,
        invalid(
            HeaderRef {
                header_type: PARAMETER_INSERT,
                index: 1
            },
            "it inserts into the page table region of PageTableRelocationRegion header \
             0x103 at initialization index 0"
        )
    );
}

#[test]
fn builder_moves_file_data_behind_relocation_headers() {
    // Inserting the relocation headers moves the file data, so every file offset before and
    // after the insertion point must follow: the CoRIM document in the initialization section,
    // a 4 KiB page, a 2 MiB page and the VP context.
    let document = b"a CoRIM document".to_vec();
    let large: Vec<u8> = (0..crate::plan::PAGE_SIZE_2M as usize)
        .map(|i| (i / 4096) as u8 ^ (i as u8))
        .collect();
    let mut builder = IgvmBuilder::native();
    builder.initialization(IgvmInitializationHeader::CorimDocument {
        compatibility_mask: NATIVE,
        document: document.clone(),
    });
    builder.initialization(IgvmInitializationHeader::RelocatableRegion {
        compatibility_mask: NATIVE,
        relocation_alignment: REGION_SIZE,
        relocation_region_gpa: REGION,
        relocation_region_size: REGION_SIZE,
        minimum_relocation_gpa: 0,
        maximum_relocation_gpa: GIB,
        is_vtl2: false,
        apply_rip_offset: true,
        apply_gdtr_offset: false,
        vp_index: 0,
        vtl: Vtl::Vtl0,
    });
    builder.pages(REGION, b"code").unwrap();
    builder
        .page(crate::builder::PageSpec {
            size: crate::plan::PAGE_SIZE_2M,
            ..crate::builder::PageSpec::normal(0x40_0000, &large)
        })
        .unwrap();
    let mut context = IgvmNativeVpContextX64::new_zeroed();
    context.rip = REGION;
    builder.native_vp_context(0, context);
    let file = builder.build().unwrap();

    let parsed = crate::parse::parse(&file).unwrap();
    let headers: Vec<HeaderRef> = parsed.initializations().map(|(h, _)| h).collect();
    assert_eq!(
        headers,
        vec![
            HeaderRef {
                header_type: 0x104,
                index: 0
            },
            HeaderRef {
                header_type: 0x102,
                index: 1
            }
        ]
    );
    let plan = load_at(&file, Some(0x80_0000)).unwrap();
    assert_eq!(plan.host_only.corim_document, Some(document));
    assert_eq!(&op_bytes(&plan, 0x80_0000)[..4], b"code");
    let large_op = plan
        .operations
        .iter()
        .find(|op| op.gpa == 0x40_0000)
        .unwrap();
    assert_eq!(large_op.data, PageData::Bytes(large.into()));
    assert_eq!(native_context(&plan).rip, 0x80_0000);
}
