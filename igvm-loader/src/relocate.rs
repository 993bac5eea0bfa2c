//! Relocation: RelocatableRegion and PageTableRelocationRegion headers.
//!
//! A relocatable region may move as a whole to another base within the limits its header sets.
//! Every import, range and VMSA GPA inside it moves by the same offset. The RIP and GDTR of the
//! named VP move with it when the header sets the matching flags. The page table region stays
//! at the file's address. When any region moves, igvm's `PageTableRelocationBuilder` rebuilds
//! the tables so that they identity-map the moved regions at their new addresses.
//!
//! Only the first relocatable region of the chosen platform takes the requested base. The
//! others stay at the file's base.

use std::collections::{BTreeMap, BTreeSet};

use igvm::page_table::{CpuPagingState, PageTableRelocationBuilder};
use igvm::{IgvmInitializationHeader, IgvmRelocatableRegion};
use log::{info, warn};
use range_map_vec::RangeMap;

use crate::error::{guard_igvm, LoadError};
use crate::parse::ParsedFile;
use crate::plan::{HeaderRef, LaunchOp, PageData, PageKind, VpContext, VpState, PAGE_SIZE_4K};
use crate::validate::MemoryLayout;

/// CR4.LA57: 5-level paging, which igvm 0.5 cannot relocate.
const X64_CR4_LA57: u64 = 1 << 12;

/// A relocatable region and where it ends up.
#[derive(Debug, Clone)]
pub(crate) struct MovedRegion {
    /// The RelocatableRegion header.
    pub header: HeaderRef,
    /// Base in the file.
    pub old_base: u64,
    /// Size in bytes.
    pub size: u64,
    /// Base chosen for this launch.
    pub new_base: u64,
    /// Whether the RIP of `vp_index` moves with the region.
    pub apply_rip: bool,
    /// Whether the GDTR base of `vp_index` moves with the region.
    pub apply_gdtr: bool,
    /// The VP whose registers move.
    pub vp_index: u16,
}

impl MovedRegion {
    fn contains_old(&self, gpa: u64) -> bool {
        gpa >= self.old_base && gpa - self.old_base < self.size
    }

    /// Returns the signed relocation offset. [`choose_base`] only moves a region by an offset
    /// that fits in i64.
    fn offset(&self) -> i64 {
        signed_offset(self.old_base, self.new_base).unwrap_or(0)
    }

    fn moves(&self) -> bool {
        self.new_base != self.old_base
    }
}

/// The page table region while its pages are collected for the rebuild.
struct PageTableRebuild {
    header: HeaderRef,
    gpa: u64,
    used_size: u64,
    vp_index: u16,
    builder: PageTableRelocationBuilder,
    /// Kind and source of each page the file puts in the region.
    pages: BTreeMap<u64, (PageKind, HeaderRef)>,
    /// Contents of those pages, for the structure check before the rebuild.
    tables: BTreeMap<u64, Vec<u8>>,
    /// Operation index where the rebuilt tables go: where the first table page was.
    insert_at: Option<usize>,
}

/// The relocation decided for one launch.
pub(crate) struct Relocation {
    regions: Vec<MovedRegion>,
    page_table: Option<PageTableRebuild>,
}

impl Relocation {
    /// Reads the relocation headers for `mask`, picks a base for each region and prepares the
    /// page table rebuild when a region moves.
    pub(crate) fn prepare(
        parsed: &ParsedFile,
        mask: u32,
        requested_base: Option<u64>,
        layout: &MemoryLayout,
    ) -> Result<Self, LoadError> {
        let applies = |header_mask: u32| header_mask & mask == mask;
        let mut region_refs = Vec::new();
        let mut page_table_ref = None;
        for (header, init) in parsed.initializations() {
            match init {
                IgvmInitializationHeader::RelocatableRegion {
                    compatibility_mask, ..
                } if applies(*compatibility_mask) => region_refs.push(header),
                IgvmInitializationHeader::PageTableRelocationRegion {
                    compatibility_mask,
                    gpa,
                    size,
                    ..
                } if applies(*compatibility_mask) => {
                    // The region must be RAM before igvm allocates a buffer of its size.
                    if !layout.contains_ram(*gpa, *size) {
                        return Err(LoadError::RelocationOutsideRam {
                            header,
                            gpa: *gpa,
                            size: *size,
                        });
                    }
                    page_table_ref = Some(header);
                }
                _ => {}
            }
        }
        if region_refs.is_empty() && page_table_ref.is_none() {
            return Ok(Self {
                regions: Vec::new(),
                page_table: None,
            });
        }

        let (crate_regions, crate_builder) = guard_igvm("reading relocation headers", || {
            parsed.igvm.relocations(mask)
        })?;
        let crate_regions = crate_regions.unwrap_or_default();

        let mut regions = Vec::new();
        for (position, (header, region)) in region_refs.iter().zip(&crate_regions).enumerate() {
            let requested = if position == 0 { requested_base } else { None };
            let new_base =
                choose_base(*header, region, requested, layout, page_table_ref.is_some());
            if !layout.contains_ram(new_base, region.size) {
                return Err(LoadError::RelocationOutsideRam {
                    header: *header,
                    gpa: new_base,
                    size: region.size,
                });
            }
            if new_base != region.base_gpa {
                info!(
                    "{header}: relocating {:#x} bytes from {:#x} to {new_base:#x}",
                    region.size, region.base_gpa
                );
            }
            regions.push(MovedRegion {
                header: *header,
                old_base: region.base_gpa,
                size: region.size,
                new_base,
                apply_rip: region.apply_rip_offset,
                apply_gdtr: region.apply_gdtr_offset,
                vp_index: region.vp_index,
            });
        }

        let any_moves = regions.iter().any(MovedRegion::moves);
        let page_table = match (page_table_ref, crate_builder) {
            (Some(header), Some(builder)) if any_moves => Some(PageTableRebuild {
                header,
                gpa: builder.gpa,
                used_size: builder.used_size,
                vp_index: builder.vp_index,
                builder,
                pages: BTreeMap::new(),
                tables: BTreeMap::new(),
                insert_at: None,
            }),
            _ => None,
        };
        Ok(Self {
            regions,
            page_table,
        })
    }

    /// Returns where `gpa` lands and the region that moved it, if one did.
    pub(crate) fn map(&self, gpa: u64) -> (u64, Option<HeaderRef>) {
        match self
            .regions
            .iter()
            .find(|r| r.moves() && r.contains_old(gpa))
        {
            Some(region) => (
                region.new_base + (gpa - region.old_base),
                Some(region.header),
            ),
            None => (gpa, None),
        }
    }

    /// Returns true if the page at `gpa` belongs to the page tables being rebuilt.
    pub(crate) fn is_page_table_page(&self, gpa: u64) -> bool {
        self.page_table
            .as_ref()
            .is_some_and(|pt| gpa >= pt.gpa && gpa - pt.gpa < pt.builder.size)
    }

    /// Returns true once a page table page has been collected; operations recorded after that
    /// point come after the rebuilt tables.
    pub(crate) fn page_tables_started(&self) -> bool {
        self.page_table
            .as_ref()
            .is_some_and(|pt| pt.insert_at.is_some())
    }

    /// Hands a page of the page table region to the rebuild instead of the plan.
    pub(crate) fn collect_page_table_page(
        &mut self,
        source: HeaderRef,
        gpa: u64,
        size: u64,
        data: &[u8],
        kind: PageKind,
        next_op: usize,
    ) -> Result<(), LoadError> {
        let Some(pt) = self.page_table.as_mut() else {
            return Ok(());
        };
        let fail = |message: String| LoadError::PageTableRelocation {
            header: pt.header,
            message,
        };
        if size != PAGE_SIZE_4K {
            return Err(fail(format!(
                "{source} puts a large page at {gpa:#x} inside the page table region"
            )));
        }
        if gpa
            .checked_sub(pt.gpa)
            .is_none_or(|offset| offset >= pt.used_size)
        {
            return Err(fail(format!(
                "{source} puts a page at {gpa:#x}, beyond the used size {:#x} of the region",
                pt.used_size
            )));
        }
        pt.builder
            .set_page_data(gpa, data)
            .map_err(|error| fail(format!("{source}: {error}")))?;
        pt.pages.insert(gpa, (kind, source));
        pt.tables.insert(gpa, data.to_vec());
        pt.insert_at.get_or_insert(next_op);
        Ok(())
    }

    /// Moves the RIP and GDTR of VPs whose region moved, then rebuilds the page tables and
    /// puts them in the plan where the first page table page was.
    ///
    /// `after_tables[i]` is true if context `i` came after the first page table page.
    pub(crate) fn finish(
        self,
        ops: &mut Vec<LaunchOp>,
        moved_by: &mut Vec<Option<HeaderRef>>,
        contexts: &mut [VpContext],
        after_tables: &[bool],
    ) -> Result<(), LoadError> {
        for region in self.regions.iter().filter(|r| r.moves()) {
            adjust_registers(region, contexts)?;
        }

        let Some(pt) = self.page_table else {
            return Ok(());
        };
        let fail = |message: String| LoadError::PageTableRelocation {
            header: pt.header,
            message,
        };
        let context = contexts
            .iter()
            .find(|c| c.vp_index == pt.vp_index)
            .ok_or_else(|| fail(format!("no VP context for vCPU {} gives CR3", pt.vp_index)))?;
        let (cr3, cr4) = match &context.state {
            VpState::Native(native) => (native.cr3, native.cr4),
            VpState::Snp { vmsa, .. } => (vmsa.cr3, vmsa.cr4),
        };
        if cr4 & X64_CR4_LA57 != 0 {
            return Err(fail("5-level paging cannot be relocated".to_string()));
        }
        if cr3 < pt.gpa || cr3 - pt.gpa >= pt.used_size {
            return Err(fail(format!(
                "CR3 {cr3:#x} is outside the used part of the region at {:#x}",
                pt.gpa
            )));
        }

        check_table_structure(&pt.tables, (pt.gpa, pt.builder.size), pt.used_size, cr3)
            .map_err(fail)?;

        let mut offsets = RangeMap::new();
        for region in self.regions.iter().filter(|r| r.moves()) {
            let last = region.old_base + (region.size - 1);
            if !offsets.insert(region.old_base..=last, region.offset()) {
                return Err(fail(format!("{} overlaps another region", region.header)));
            }
        }
        let builder = pt.builder;
        let tables = guard_igvm("rebuilding page tables", move || {
            builder.build(0, offsets, CpuPagingState { cr3, cr4 })
        })?
        .map_err(|error| fail(error.to_string()))?;

        let mut new_ops = Vec::new();
        for (page, bytes) in tables.chunks(PAGE_SIZE_4K as usize).enumerate() {
            let gpa = pt.gpa + page as u64 * PAGE_SIZE_4K;
            let (kind, source) = pt
                .pages
                .get(&gpa)
                .copied()
                .unwrap_or((PageKind::Normal, pt.header));
            new_ops.push(LaunchOp {
                gpa,
                size: PAGE_SIZE_4K,
                kind,
                data: PageData::Bytes(bytes.to_vec()),
                source,
            });
        }

        let insert_at = pt.insert_at.unwrap_or(ops.len()).min(ops.len());
        let added = new_ops.len();
        ops.splice(insert_at..insert_at, new_ops);
        moved_by.splice(insert_at..insert_at, std::iter::repeat_n(None, added));
        for (context, after) in contexts.iter_mut().zip(after_tables) {
            if *after {
                context.ops_before += added;
            }
        }
        Ok(())
    }
}

/// Picks the base of one region: the requested base when the region allows it and it lies in
/// RAM, otherwise the file's base.
///
/// NOTE: igvm 0.5's page table rebuild moves page table entries the wrong way for a negative
/// offset (`relocate_address` subtracts the offset cast to u64), so with a page table region
/// only bases at or above the file's base are used.
fn choose_base(
    header: HeaderRef,
    region: &IgvmRelocatableRegion,
    requested: Option<u64>,
    layout: &MemoryLayout,
    has_page_tables: bool,
) -> u64 {
    let Some(base) = requested else {
        return region.base_gpa;
    };
    if has_page_tables && base < region.base_gpa {
        warn!(
            "{header}: requested base {base:#x} is below the file's base {:#x}, and igvm 0.5 \
             cannot rebuild page tables for a downward move; keeping the file's base",
            region.base_gpa
        );
        return region.base_gpa;
    }
    let aligned = region.relocation_alignment != 0 && base % region.relocation_alignment == 0;
    let within_limits = base >= region.minimum_relocation_gpa
        && base
            .checked_add(region.size)
            .is_some_and(|end| end <= region.maximum_relocation_gpa);
    let offset_fits = signed_offset(region.base_gpa, base).is_some();
    if aligned && within_limits && offset_fits && layout.contains_ram(base, region.size) {
        return base;
    }
    warn!(
        "{header}: requested base {base:#x} is not usable (alignment {:#x}, limits {:#x}..{:#x}, \
         must lie in RAM); keeping the file's base {:#x}",
        region.relocation_alignment,
        region.minimum_relocation_gpa,
        region.maximum_relocation_gpa,
        region.base_gpa
    );
    region.base_gpa
}

/// Present bit of a page table entry.
const PTE_PRESENT: u64 = 1 << 0;
/// Large-page bit of a page directory or PDPT entry.
const PTE_LARGE_PAGE: u64 = 1 << 7;
/// Physical address bits of a page table entry.
const PTE_ADDRESS: u64 = 0x000F_FFFF_FFFF_F000;
/// Entries per page table.
const PTE_COUNT: usize = 512;

/// Checks the page tables that igvm's rebuild walks from CR3. Every table that an entry points
/// to inside the region must lie in the region's used part, and no table may be reached twice.
///
/// igvm 0.5 indexes its table list without a bounds check, so a table outside the used part
/// makes it panic. It also walks every reference again, so shared tables multiply the walk up
/// to 512^3 entries.
fn check_table_structure(
    tables: &BTreeMap<u64, Vec<u8>>,
    region: (u64, u64),
    used_size: u64,
    cr3: u64,
) -> Result<(), String> {
    let (region_gpa, region_size) = region;
    let offset_in_region = |gpa: u64| gpa.checked_sub(region_gpa).filter(|o| *o < region_size);
    let mut visited = BTreeSet::new();
    // Tables still to read, with their level: 3 is the PML4, 0 a table of 4 KiB pages.
    let mut pending = vec![(cr3 & PTE_ADDRESS, 3u8)];
    while let Some((table_gpa, level)) = pending.pop() {
        if !visited.insert(table_gpa) {
            return Err(format!("page table {table_gpa:#x} is referenced twice"));
        }
        // A page the file leaves out of the region has only zero entries.
        let Some(table) = tables.get(&table_gpa) else {
            continue;
        };
        for entry_bytes in table.chunks_exact(8).take(PTE_COUNT) {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(entry_bytes);
            let entry = u64::from_le_bytes(raw);
            let points_to_table = match level {
                3 => true,
                1 | 2 => entry & PTE_LARGE_PAGE == 0,
                _ => false,
            };
            if entry & PTE_PRESENT == 0 || !points_to_table {
                continue;
            }
            let next = entry & PTE_ADDRESS;
            // igvm walks only tables inside the region and leaves the others as they are.
            let Some(offset) = offset_in_region(next) else {
                continue;
            };
            if offset >= used_size {
                return Err(format!(
                    "page table {table_gpa:#x} points to {next:#x}, beyond the used size {used_size:#x}"
                ));
            }
            pending.push((next, level - 1));
        }
    }
    Ok(())
}

/// Returns `to - from` if it fits in i64.
fn signed_offset(from: u64, to: u64) -> Option<i64> {
    i64::try_from(i128::from(to) - i128::from(from)).ok()
}

fn adjust_registers(region: &MovedRegion, contexts: &mut [VpContext]) -> Result<(), LoadError> {
    if !region.apply_rip && !region.apply_gdtr {
        return Ok(());
    }
    let Some(context) = contexts.iter_mut().find(|c| c.vp_index == region.vp_index) else {
        warn!(
            "{}: no VP context for vCPU {}, so no RIP or GDTR moves with the region",
            region.header, region.vp_index
        );
        return Ok(());
    };
    let offset = region.offset();
    let moved = |value: u64, what: &str| {
        value
            .checked_add_signed(offset)
            .ok_or_else(|| LoadError::InvalidRelocationHeader {
                header: region.header,
                reason: format!("{what} {value:#x} overflows when moved by {offset:#x}"),
            })
    };
    match &mut context.state {
        VpState::Native(native) => {
            if region.apply_rip {
                native.rip = moved(native.rip, "RIP")?;
            }
            if region.apply_gdtr {
                native.gdtr_base = moved(native.gdtr_base, "GDTR base")?;
            }
        }
        VpState::Snp { vmsa, .. } => {
            if region.apply_rip {
                vmsa.rip = moved(vmsa.rip, "RIP")?;
            }
            if region.apply_gdtr {
                vmsa.gdtr.base = moved(vmsa.gdtr.base, "GDTR base")?;
            }
        }
    }
    Ok(())
}
