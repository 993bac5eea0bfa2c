//! Relocation: RelocatableRegion and PageTableRelocationRegion headers.
//!
//! A relocatable region may move as a whole to another base within the limits its header sets.
//! Every import, range and VMSA GPA inside it moves by the same offset. The RIP and GDTR of the
//! named VP move with it when the header sets the matching flags. The page table region stays
//! at the file's address. When any region moves, [`page_tables`] rebuilds the tables so that
//! they identity-map the moved regions at their new addresses.
//!
//! The loader decodes these headers itself (see [`crate::parse`]), because igvm 0.5 accepts
//! them only next to a VBS VP context. Each region of the chosen platform gets, in file order:
//! 1. the requested base, for the first region only, if it is aligned, within the limits and
//!    leaves the region in RAM;
//! 2. otherwise the file's base, if it meets the same conditions;
//! 3. otherwise the lowest aligned base at or above the minimum that leaves the region in RAM
//!    and outside the MMIO ranges. The region must also clear every import that does not move,
//!    the page table region and the regions placed before it.
//!
//! The maximum is the highest address the region may reach, as igvm 0.5's
//! `IgvmRelocatableRegion::relocation_base_valid` reads it: a base is valid if the region ends
//! at or below the maximum.

mod page_tables;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use igvm::hv_defs::Vtl;
use igvm::{IgvmDirectiveHeader, IgvmInitializationHeader};
use log::{info, warn};

use crate::error::LoadError;
use crate::parse::ParsedFile;
use crate::plan::{
    HeaderRef, LaunchOp, PageData, PageKind, VpContext, VpState, PAGE_SIZE_2M, PAGE_SIZE_4K,
};
use crate::validate::MemoryLayout;
use page_tables::{MovedRange, TableRegion};

/// CR0.PG: paging enabled.
const X64_CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension, part of 4-level paging.
const X64_CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: 5-level paging, which the rebuild does not walk.
const X64_CR4_LA57: u64 = 1 << 12;
/// EFER.LME: long mode enabled, which selects 4-level paging with CR4.PAE.
const X64_EFER_LME: u64 = 1 << 8;

/// A RelocatableRegion header of the chosen platform.
#[derive(Debug, Clone, Copy)]
struct RegionHeader {
    header: HeaderRef,
    base: u64,
    size: u64,
    alignment: u64,
    minimum: u64,
    maximum: u64,
    apply_rip: bool,
    apply_gdtr: bool,
    vp_index: u16,
    vtl: Vtl,
}

impl RegionHeader {
    fn from_header(header: HeaderRef, init: &IgvmInitializationHeader) -> Option<Self> {
        match init {
            IgvmInitializationHeader::RelocatableRegion {
                relocation_alignment,
                relocation_region_gpa,
                relocation_region_size,
                minimum_relocation_gpa,
                maximum_relocation_gpa,
                apply_rip_offset,
                apply_gdtr_offset,
                vp_index,
                vtl,
                ..
            } => Some(Self {
                header,
                base: *relocation_region_gpa,
                size: *relocation_region_size,
                alignment: *relocation_alignment,
                minimum: *minimum_relocation_gpa,
                maximum: *maximum_relocation_gpa,
                apply_rip: *apply_rip_offset,
                apply_gdtr: *apply_gdtr_offset,
                vp_index: *vp_index,
                vtl: *vtl,
            }),
            _ => None,
        }
    }

    fn contains(&self, gpa: u64) -> bool {
        gpa >= self.base && gpa - self.base < self.size
    }

    /// Returns true if `base` is aligned, within the limits, reachable by an i64 offset and
    /// leaves the region in RAM.
    fn accepts(&self, base: u64, layout: &MemoryLayout) -> bool {
        let aligned = self.alignment != 0 && base.is_multiple_of(self.alignment);
        let within_limits = base >= self.minimum
            && base
                .checked_add(self.size)
                .is_some_and(|end| end <= self.maximum);
        aligned
            && within_limits
            && signed_offset(self.base, base).is_some()
            && layout.contains_ram(base, self.size)
    }
}

/// A relocatable region and where it ends up.
#[derive(Debug, Clone)]
pub(crate) struct MovedRegion {
    region: RegionHeader,
    /// Base chosen for this launch.
    new_base: u64,
}

impl MovedRegion {
    /// Returns the signed relocation offset. [`RegionHeader::accepts`] only passes bases whose
    /// offset fits in i64.
    fn offset(&self) -> i64 {
        signed_offset(self.region.base, self.new_base).unwrap_or(0)
    }

    fn moves(&self) -> bool {
        self.new_base != self.region.base
    }
}

/// A page the file puts in the page table region.
struct TablePage {
    kind: PageKind,
    source: HeaderRef,
    data: Vec<u8>,
}

/// The page table region of the chosen platform.
struct PageTableRegion {
    header: HeaderRef,
    region: TableRegion,
    vp_index: u16,
    vtl: Vtl,
    /// Whether a region moves, so that the tables are rebuilt.
    rebuild: bool,
    /// The pages the file puts in the region, by GPA, while a rebuild collects them.
    pages: BTreeMap<u64, TablePage>,
    /// Operation index where the rebuilt tables go: where the first table page was.
    insert_at: Option<usize>,
}

/// The relocation decided for one launch.
pub(crate) struct Relocation {
    regions: Vec<MovedRegion>,
    page_table: Option<PageTableRegion>,
}

impl Relocation {
    /// Reads the relocation headers for `mask` and picks a base for each region.
    pub(crate) fn prepare(
        parsed: &ParsedFile,
        mask: u32,
        requested_base: Option<u64>,
        layout: &MemoryLayout,
    ) -> Result<Self, LoadError> {
        let applies = |header_mask: u32| header_mask & mask == mask;
        let mut headers = Vec::new();
        let mut page_table = None;
        for (header, init) in parsed.initializations() {
            match init {
                IgvmInitializationHeader::RelocatableRegion {
                    compatibility_mask, ..
                } if applies(*compatibility_mask) => {
                    headers.extend(RegionHeader::from_header(header, init));
                }
                IgvmInitializationHeader::PageTableRelocationRegion {
                    compatibility_mask,
                    gpa,
                    size,
                    used_size,
                    vp_index,
                    vtl,
                } if applies(*compatibility_mask) => {
                    if !layout.contains_ram(*gpa, *size) {
                        return Err(LoadError::RelocationOutsideRam {
                            header,
                            gpa: *gpa,
                            size: *size,
                        });
                    }
                    page_table = Some(PageTableRegion {
                        header,
                        region: TableRegion {
                            gpa: *gpa,
                            size: *size,
                            used_size: *used_size,
                        },
                        vp_index: *vp_index,
                        vtl: *vtl,
                        rebuild: false,
                        pages: BTreeMap::new(),
                        insert_at: None,
                    });
                }
                _ => {}
            }
        }
        if headers.is_empty() {
            return Ok(Self {
                regions: Vec::new(),
                page_table,
            });
        }

        let fixed = fixed_ranges(parsed, mask, &headers, page_table.as_ref());
        let mut regions: Vec<MovedRegion> = Vec::new();
        for (position, region) in headers.iter().enumerate() {
            let requested = if position == 0 { requested_base } else { None };
            let mut blockers = fixed.clone();
            blockers.extend(
                layout
                    .mmio_ranges()
                    .iter()
                    .map(|(base, size)| (*base, base.saturating_add(*size))),
            );
            blockers.extend(
                regions
                    .iter()
                    .map(|r| (r.new_base, r.new_base.saturating_add(r.region.size))),
            );
            let blockers = merge_ranges(blockers);
            let new_base = choose_base(region, requested, layout, &blockers)?;
            if new_base != region.base {
                info!(
                    "{}: relocating {:#x} bytes from {:#x} to {new_base:#x}",
                    region.header, region.size, region.base
                );
            }
            regions.push(MovedRegion {
                region: *region,
                new_base,
            });
        }

        if let Some(page_table) = page_table.as_mut() {
            page_table.rebuild = regions.iter().any(MovedRegion::moves);
        }
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
            .find(|r| r.moves() && r.region.contains(gpa))
        {
            Some(moved) => (
                moved.new_base + (gpa - moved.region.base),
                Some(moved.region.header),
            ),
            None => (gpa, None),
        }
    }

    /// Returns true if the page at `gpa` belongs to the page tables being rebuilt.
    pub(crate) fn is_page_table_page(&self, gpa: u64) -> bool {
        self.page_table
            .as_ref()
            .is_some_and(|pt| pt.rebuild && pt.region.offset_of(gpa).is_some())
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
        let header = pt.header;
        let fail = |message: String| LoadError::PageTableRelocation { header, message };
        if size != PAGE_SIZE_4K {
            return Err(fail(format!(
                "{source} puts a large page at {gpa:#x} inside the page table region"
            )));
        }
        if pt
            .region
            .offset_of(gpa)
            .is_none_or(|offset| offset >= pt.region.used_size)
        {
            return Err(fail(format!(
                "{source} puts a page at {gpa:#x}, beyond the used size {:#x} of the region",
                pt.region.used_size
            )));
        }
        if let Some(first) = pt.pages.get(&gpa) {
            return Err(LoadError::OverlappingPages {
                header: source,
                other: first.source,
                gpa,
            });
        }
        let mut page = data.to_vec();
        page.resize(PAGE_SIZE_4K as usize, 0);
        pt.pages.insert(
            gpa,
            TablePage {
                kind,
                source,
                data: page,
            },
        );
        pt.insert_at.get_or_insert(next_op);
        Ok(())
    }

    /// Checks the VPs the headers name, moves the RIP and GDTR of VPs whose region moved, then
    /// rebuilds the page tables and puts them in the plan where the first page table page was.
    ///
    /// `after_tables[i]` is true if context `i` came after the first page table page.
    pub(crate) fn finish(
        self,
        ops: &mut Vec<LaunchOp<'_>>,
        moved_by: &mut Vec<Option<HeaderRef>>,
        contexts: &mut [VpContext],
        after_tables: &[bool],
    ) -> Result<(), LoadError> {
        for moved in &self.regions {
            let region = &moved.region;
            if region.apply_rip || region.apply_gdtr {
                let action = "moves the RIP or GDTR of";
                find_context(region.header, region.vp_index, region.vtl, action, contexts)?;
            }
        }
        if let Some(pt) = &self.page_table {
            find_context(pt.header, pt.vp_index, pt.vtl, "reads CR3 of", contexts)?;
        }
        for moved in self.regions.iter().filter(|r| r.moves()) {
            adjust_registers(moved, contexts)?;
        }

        let Some(pt) = self.page_table.filter(|pt| pt.rebuild) else {
            return Ok(());
        };
        let moved_ranges: Vec<MovedRange> = self
            .regions
            .iter()
            .filter(|r| r.moves())
            .map(|r| MovedRange {
                start: r.region.base,
                size: r.region.size,
                offset: r.offset(),
            })
            .collect();
        let new_ops = rebuild_page_tables(&pt, contexts, &moved_ranges)?;

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

/// Returns the context of `vp_index`, or the error that names `header`. `action` describes what
/// the header does with the context, for the message.
fn find_context<'a>(
    header: HeaderRef,
    vp_index: u16,
    vtl: Vtl,
    action: &str,
    contexts: &'a mut [VpContext],
) -> Result<&'a mut VpContext, LoadError> {
    if vtl != Vtl::Vtl0 {
        return Err(LoadError::InvalidRelocationHeader {
            header,
            reason: format!(
                "it {action} vCPU {vp_index} at VTL {}, but the loader starts VTL 0 only",
                vtl as u8
            ),
        });
    }
    contexts
        .iter_mut()
        .find(|c| c.vp_index == vp_index)
        .ok_or_else(|| LoadError::InvalidRelocationHeader {
            header,
            reason: format!("it {action} vCPU {vp_index}, which has no VP context"),
        })
}

/// Rebuilds the tables of `pt` and returns them as launch operations, in GPA order.
fn rebuild_page_tables(
    pt: &PageTableRegion,
    contexts: &mut [VpContext],
    moved: &[MovedRange],
) -> Result<Vec<LaunchOp<'static>>, LoadError> {
    let header = pt.header;
    let fail = |message: String| LoadError::PageTableRelocation { header, message };
    let context = find_context(pt.header, pt.vp_index, pt.vtl, "reads CR3 of", contexts)?;
    let (cr0, cr3, cr4, efer) = match &context.state {
        VpState::Native(native) => (native.cr0, native.cr3, native.cr4, native.efer),
        VpState::Snp { vmsa, .. } => (vmsa.cr0, vmsa.cr3, vmsa.cr4, vmsa.efer),
    };
    if cr4 & X64_CR4_LA57 != 0 {
        return Err(fail("5-level paging cannot be relocated".to_string()));
    }
    let four_level = cr0 & X64_CR0_PG != 0 && cr4 & X64_CR4_PAE != 0 && efer & X64_EFER_LME != 0;
    if !four_level {
        return Err(fail(format!(
            "vCPU {} does not start with 4-level paging (CR0 {cr0:#x}, CR4 {cr4:#x}, EFER \
             {efer:#x})",
            pt.vp_index
        )));
    }
    if pt
        .region
        .offset_of(cr3)
        .is_none_or(|offset| offset >= pt.region.used_size)
    {
        return Err(fail(format!(
            "CR3 {cr3:#x} is outside the used part of the region at {:#x}",
            pt.region.gpa
        )));
    }

    let pages: BTreeMap<u64, Vec<u8>> = pt
        .pages
        .iter()
        .map(|(gpa, page)| (*gpa, page.data.clone()))
        .collect();
    let tables = page_tables::rebuild(pt.region, &pages, cr3, moved).map_err(fail)?;
    Ok(tables
        .into_iter()
        .map(|(gpa, bytes)| {
            let (kind, source) = pt
                .pages
                .get(&gpa)
                .map_or((PageKind::Normal, pt.header), |page| {
                    (page.kind, page.source)
                });
            LaunchOp {
                gpa,
                size: PAGE_SIZE_4K,
                kind,
                data: PageData::Bytes(Cow::Owned(bytes)),
                source,
            }
        })
        .collect())
}

/// Returns the ranges, sorted and merged, that the imports of `mask` which no region moves
/// cover, together with the page table region.
fn fixed_ranges(
    parsed: &ParsedFile,
    mask: u32,
    regions: &[RegionHeader],
    page_table: Option<&PageTableRegion>,
) -> Vec<(u64, u64)> {
    let moves = |gpa: u64| regions.iter().any(|region| region.contains(gpa));
    let mut ranges = Vec::new();
    let mut area_sizes: HashMap<u32, u64> = HashMap::new();
    for (_, directive) in parsed.directives() {
        if let IgvmDirectiveHeader::ParameterArea {
            number_of_bytes,
            parameter_area_index,
            ..
        } = directive
        {
            area_sizes.insert(*parameter_area_index, *number_of_bytes);
            continue;
        }
        if directive
            .compatibility_mask()
            .is_some_and(|directive_mask| directive_mask & mask == 0)
        {
            continue;
        }
        let import = match directive {
            IgvmDirectiveHeader::PageData { gpa, flags, .. } => {
                let size = if flags.is_2mb_page() {
                    PAGE_SIZE_2M
                } else {
                    PAGE_SIZE_4K
                };
                Some((*gpa, size))
            }
            IgvmDirectiveHeader::ParameterInsert(insert) => area_sizes
                .get(&insert.parameter_area_index)
                .map(|size| (insert.gpa, *size)),
            IgvmDirectiveHeader::SnpVpContext { gpa, .. } => Some((*gpa, PAGE_SIZE_4K)),
            _ => None,
        };
        if let Some((gpa, size)) = import.filter(|(gpa, _)| !moves(*gpa)) {
            ranges.push((gpa, gpa.saturating_add(size)));
        }
    }
    if let Some(pt) = page_table {
        let region = pt.region;
        ranges.push((region.gpa, region.gpa.saturating_add(region.size)));
    }
    merge_ranges(ranges)
}

/// Sorts `[start, end)` ranges and merges those that overlap or touch.
fn merge_ranges(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|(start, end)| start < end);
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some((_, last_end)) if start <= *last_end => *last_end = (*last_end).max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// Picks the base of one region, as the module documentation describes. `blockers` are sorted,
/// merged ranges that the region must not overlap when the loader picks the base itself.
fn choose_base(
    region: &RegionHeader,
    requested: Option<u64>,
    layout: &MemoryLayout,
    blockers: &[(u64, u64)],
) -> Result<u64, LoadError> {
    if let Some(base) = requested {
        if region.accepts(base, layout) {
            return Ok(base);
        }
        warn!(
            "{}: requested base {base:#x} is not usable (alignment {:#x}, region {:#x} bytes \
             between {:#x} and {:#x}, must lie in RAM); choosing a base instead",
            region.header, region.alignment, region.size, region.minimum, region.maximum
        );
    }
    let is_clear = |base: u64| first_blocker(blockers, base, base + region.size).is_none();
    if region.accepts(region.base, layout) && is_clear(region.base) {
        return Ok(region.base);
    }
    lowest_free_base(region, layout, blockers)
        .filter(|base| region.accepts(*base, layout))
        .ok_or(LoadError::RelocationNoBase {
            header: region.header,
            size: region.size,
            minimum: region.minimum,
            maximum: region.maximum,
        })
}

/// Returns the first blocker that overlaps `[start, end)`.
fn first_blocker(blockers: &[(u64, u64)], start: u64, end: u64) -> Option<(u64, u64)> {
    // The blockers are disjoint and sorted, so their ends are sorted too.
    let index = blockers.partition_point(|(_, blocker_end)| *blocker_end <= start);
    blockers
        .get(index)
        .copied()
        .filter(|(blocker_start, _)| *blocker_start < end)
}

/// Returns the lowest aligned base at or above the region's minimum whose region lies in one
/// stretch of RAM, ends at or below the maximum and overlaps no blocker.
fn lowest_free_base(
    region: &RegionHeader,
    layout: &MemoryLayout,
    blockers: &[(u64, u64)],
) -> Option<u64> {
    let align_up = |value: u64| -> Option<u64> {
        let alignment = region.alignment;
        if alignment == 0 {
            return None;
        }
        value.div_ceil(alignment).checked_mul(alignment)
    };
    for (ram_start, ram_end) in layout.ram_ranges() {
        let limit = (*ram_end).min(region.maximum);
        let Some(mut base) = align_up((*ram_start).max(region.minimum)) else {
            continue;
        };
        // Each pass either returns or moves the base past one more blocker.
        while let Some(end) = base.checked_add(region.size).filter(|end| *end <= limit) {
            match first_blocker(blockers, base, end) {
                None => return Some(base),
                Some((_, blocker_end)) => match align_up(blocker_end) {
                    Some(next) => base = next,
                    None => break,
                },
            }
        }
    }
    None
}

/// Returns `to - from` if it fits in i64.
fn signed_offset(from: u64, to: u64) -> Option<i64> {
    i64::try_from(i128::from(to) - i128::from(from)).ok()
}

fn adjust_registers(moved: &MovedRegion, contexts: &mut [VpContext]) -> Result<(), LoadError> {
    let region = &moved.region;
    if !region.apply_rip && !region.apply_gdtr {
        return Ok(());
    }
    let action = "moves the RIP or GDTR of";
    let context = find_context(region.header, region.vp_index, region.vtl, action, contexts)?;
    let offset = moved.offset();
    let shift = |value: u64, register: &str| {
        value
            .checked_add_signed(offset)
            .ok_or_else(|| LoadError::InvalidRelocationHeader {
                header: region.header,
                reason: format!("{register} {value:#x} overflows when moved by {offset:#x}"),
            })
    };
    match &mut context.state {
        VpState::Native(native) => {
            if region.apply_rip {
                native.rip = shift(native.rip, "RIP")?;
            }
            if region.apply_gdtr {
                native.gdtr_base = shift(native.gdtr_base, "GDTR base")?;
            }
        }
        VpState::Snp { vmsa, .. } => {
            if region.apply_rip {
                vmsa.rip = shift(vmsa.rip, "RIP")?;
            }
            if region.apply_gdtr {
                vmsa.gdtr.base = shift(vmsa.gdtr.base, "GDTR base")?;
            }
        }
    }
    Ok(())
}
