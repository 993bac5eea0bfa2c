//! Checks of the plan against the guest's memory layout: RAM, MMIO ranges, overlapping imports
//! and VP contexts.

use std::collections::HashMap;

use crate::error::LoadError;
use crate::host::{HostDescription, MemoryKind};
use crate::plan::{GpaRange, HeaderRef, LaunchOp, VpContext, PAGE_SIZE_4K};

/// Maximum vCPU count an IGVM file can address, because VP indices are 16-bit.
const MAX_VP_COUNT: u32 = 1 << 16;

/// Guest RAM and MMIO ranges of a host description, sorted and merged.
#[derive(Debug, Clone)]
pub(crate) struct MemoryLayout {
    /// RAM as `(start, end)` pairs, end exclusive, adjacent regions merged.
    ram: Vec<(u64, u64)>,
    /// MMIO ranges as `(base, size)`.
    mmio: Vec<(u64, u64)>,
    /// Total RAM in bytes.
    ram_bytes: u64,
}

fn invalid_host(reason: String) -> LoadError {
    LoadError::InvalidHostDescription { reason }
}

impl MemoryLayout {
    /// Checks the host description and builds the layout. Regions must be 4 KiB aligned, must
    /// not overlap and must not wrap around the address space.
    pub(crate) fn from_host(host: &HostDescription) -> Result<Self, LoadError> {
        if host.vp_count == 0 || host.vp_count > MAX_VP_COUNT {
            return Err(invalid_host(format!(
                "vp_count is {}; it must be between 1 and {MAX_VP_COUNT}",
                host.vp_count
            )));
        }

        let mut regions = Vec::new();
        for region in &host.memory_map {
            let end = region.base.checked_add(region.size).ok_or_else(|| {
                invalid_host(format!(
                    "memory region {:#x}+{:#x} wraps around the address space",
                    region.base, region.size
                ))
            })?;
            if region.base % PAGE_SIZE_4K != 0 || region.size % PAGE_SIZE_4K != 0 {
                return Err(invalid_host(format!(
                    "memory region {:#x}+{:#x} is not 4 KiB aligned",
                    region.base, region.size
                )));
            }
            regions.push((region.base, end, region.kind));
        }
        regions.sort_by_key(|(start, _, _)| *start);
        for pair in regions.windows(2) {
            if let [(start_a, end_a, _), (start_b, _, _)] = pair {
                if start_b < end_a {
                    return Err(invalid_host(format!(
                        "memory regions at {start_a:#x} and {start_b:#x} overlap"
                    )));
                }
            }
        }

        let mut ram: Vec<(u64, u64)> = Vec::new();
        for (start, end, kind) in regions {
            if kind != MemoryKind::Ram || start == end {
                continue;
            }
            match ram.last_mut() {
                Some((_, last_end)) if *last_end == start => *last_end = end,
                _ => ram.push((start, end)),
            }
        }
        let ram_bytes = ram.iter().map(|(start, end)| end - start).sum();

        let mut mmio = Vec::new();
        for (base, size) in &host.mmio_ranges {
            if base.checked_add(*size).is_none() {
                return Err(invalid_host(format!(
                    "MMIO range {base:#x}+{size:#x} wraps around the address space"
                )));
            }
            mmio.push((*base, *size));
        }

        Ok(Self {
            ram,
            mmio,
            ram_bytes,
        })
    }

    /// Returns the total RAM in bytes.
    pub(crate) fn ram_bytes(&self) -> u64 {
        self.ram_bytes
    }

    /// Returns true if `[gpa, gpa + size)` lies inside one contiguous stretch of RAM.
    pub(crate) fn contains_ram(&self, gpa: u64, size: u64) -> bool {
        let Some(end) = gpa.checked_add(size) else {
            return false;
        };
        self.ram
            .iter()
            .any(|(start, ram_end)| *start <= gpa && end <= *ram_end)
    }

    /// Returns the RAM as `(start, end)` pairs, end exclusive, sorted, adjacent regions merged.
    pub(crate) fn ram_ranges(&self) -> &[(u64, u64)] {
        &self.ram
    }

    /// Returns the MMIO ranges as `(base, size)` pairs.
    pub(crate) fn mmio_ranges(&self) -> &[(u64, u64)] {
        &self.mmio
    }

    /// Returns the MMIO range that `[gpa, gpa + size)` touches, if any.
    fn mmio_overlap(&self, gpa: u64, size: u64) -> Option<(u64, u64)> {
        let end = gpa.saturating_add(size);
        self.mmio
            .iter()
            .copied()
            .find(|(base, mmio_size)| gpa < base.saturating_add(*mmio_size) && *base < end)
    }

    /// Checks that an import lies in RAM and outside every MMIO range.
    pub(crate) fn check_import(
        &self,
        header: HeaderRef,
        gpa: u64,
        size: u64,
    ) -> Result<(), LoadError> {
        if let Some((mmio_base, mmio_size)) = self.mmio_overlap(gpa, size) {
            return Err(LoadError::PageInMmioHole {
                header,
                gpa,
                mmio_base,
                mmio_size,
            });
        }
        if !self.contains_ram(gpa, size) {
            return Err(LoadError::PageOutsideRam { header, gpa, size });
        }
        Ok(())
    }

    /// Checks that a RequiredMemory or ErrorRange range lies in RAM.
    pub(crate) fn check_range(&self, header: HeaderRef, range: GpaRange) -> Result<(), LoadError> {
        if self.contains_ram(range.start, range.size) {
            Ok(())
        } else {
            Err(LoadError::RangeOutsideRam {
                header,
                gpa: range.start,
                size: range.size,
            })
        }
    }
}

/// Checks that no two operations cover the same guest page.
///
/// `moved_by[i]` names the RelocatableRegion that moved operation `i`, if one did. An overlap
/// between a moved and a fixed import is reported as
/// [`LoadError::RelocationOverlapsFixedPages`].
pub(crate) fn check_overlaps(
    ops: &[LaunchOp],
    moved_by: &[Option<HeaderRef>],
) -> Result<(), LoadError> {
    struct Import {
        index: usize,
        gpa: u64,
        end: u64,
        source: HeaderRef,
        moved_by: Option<HeaderRef>,
    }

    let mut imports: Vec<Import> = ops
        .iter()
        .enumerate()
        .map(|(index, op)| Import {
            index,
            gpa: op.gpa,
            end: op.gpa.saturating_add(op.size),
            source: op.source,
            moved_by: moved_by.get(index).copied().flatten(),
        })
        .collect();
    imports.sort_by_key(|import| import.gpa);

    // The import that reaches highest among those seen so far.
    let mut reach: Option<&Import> = None;
    for import in &imports {
        if let Some(previous) = reach {
            if import.gpa < previous.end {
                let (earlier, later) = if previous.index < import.index {
                    (previous, import)
                } else {
                    (import, previous)
                };
                return Err(match (earlier.moved_by, later.moved_by) {
                    (Some(region), None) => LoadError::RelocationOverlapsFixedPages {
                        region,
                        page: earlier.source,
                        other: later.source,
                        gpa: import.gpa,
                    },
                    (None, Some(region)) => LoadError::RelocationOverlapsFixedPages {
                        region,
                        page: later.source,
                        other: earlier.source,
                        gpa: import.gpa,
                    },
                    _ => LoadError::OverlappingPages {
                        header: later.source,
                        other: earlier.source,
                        gpa: import.gpa,
                    },
                });
            }
        }
        if reach.is_none_or(|previous| import.end > previous.end) {
            reach = Some(import);
        }
    }
    Ok(())
}

/// Checks that each vCPU has at most one VP context and that every context names a vCPU the
/// host creates.
pub(crate) fn check_vp_contexts(contexts: &[VpContext], vp_count: u32) -> Result<(), LoadError> {
    let mut seen: HashMap<u16, HeaderRef> = HashMap::new();
    for context in contexts {
        if let Some(first) = seen.insert(context.vp_index, context.source) {
            return Err(LoadError::DuplicateVpContext {
                header: context.source,
                vp_index: context.vp_index,
                first,
            });
        }
        if u32::from(context.vp_index) >= vp_count {
            return Err(LoadError::VpIndexOutOfRange {
                header: context.source,
                vp_index: context.vp_index,
                vp_count,
            });
        }
    }
    Ok(())
}
