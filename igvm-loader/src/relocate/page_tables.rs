//! The page table rebuild for a PageTableRelocationRegion.
//!
//! The tables in the region identity-map the guest with 4-level x64 paging. When relocatable
//! regions move, every leaf entry whose mapping overlaps a moved region moves to the virtual
//! address that identity-maps the region's new place, and the old entry is cleared. A leaf
//! whose mapping size exceeds the move stays, because it still covers the region. Tables
//! outside the region are neither walked nor changed. A moved entry that needs a table that
//! does not exist yet gets one from the unused part of the region.
//!
//! These are the rules of the `IGVM_VHS_PAGE_TABLE_RELOCATION` description in igvm_defs 0.5.
//! igvm 0.5's `PageTableRelocationBuilder` implements them too, but it moves entries up by the
//! absolute offset when a region moves down, indexes its table list without bounds checks and
//! asserts on conflicting entries, so the loader walks the tables itself.

use std::collections::{BTreeMap, BTreeSet};

use log::debug;

use crate::plan::PAGE_SIZE_4K;

/// Present bit of a page table entry.
const PTE_PRESENT: u64 = 1 << 0;
/// Writable bit of a page table entry.
const PTE_WRITABLE: u64 = 1 << 1;
/// User-accessible bit of a page table entry.
const PTE_USER: u64 = 1 << 2;
/// Large-page bit of a PDPT or page directory entry.
const PTE_LARGE_PAGE: u64 = 1 << 7;
/// Address bits of an entry that points to a table or maps a 4 KiB page.
const PTE_ADDRESS_4K: u64 = 0x000F_FFFF_FFFF_F000;
/// Address bits of an entry that maps a 2 MiB page; bit 12 is the PAT bit there.
const PTE_ADDRESS_2M: u64 = 0x000F_FFFF_FFE0_0000;
/// Address bits of an entry that maps a 1 GiB page.
const PTE_ADDRESS_1G: u64 = 0x000F_FFFF_C000_0000;
/// Entries per page table.
const PTE_COUNT: usize = 512;
/// Level of the PML4; level 0 is a table of 4 KiB pages.
const PML4_LEVEL: u8 = 3;
/// End of the lower canonical half, the only addresses an identity map of RAM can use.
const LOWER_HALF_END: u64 = 1 << 47;

/// The page table region of a PageTableRelocationRegion header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableRegion {
    /// First byte.
    pub gpa: u64,
    /// Size in bytes. The rebuild adds tables in the part above `used_size`.
    pub size: u64,
    /// Bytes at the start of the region that the file's tables may use.
    pub used_size: u64,
}

impl TableRegion {
    /// Returns the offset of `gpa` in the region, if the region contains it.
    pub(crate) fn offset_of(&self, gpa: u64) -> Option<u64> {
        gpa.checked_sub(self.gpa)
            .filter(|offset| *offset < self.size)
    }
}

/// A relocatable region that moves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MovedRange {
    /// Base in the file.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// New base minus the file's base.
    pub offset: i64,
}

/// A leaf entry on its way to its new virtual address.
struct MovedEntry {
    level: u8,
    value: u64,
    old_va: u64,
}

/// Returns the bytes one entry maps at `level`.
fn mapping_size(level: u8) -> u64 {
    1 << (12 + 9 * u32::from(level))
}

/// Returns the index of `va`'s entry in a table of `level`.
fn entry_index(va: u64, level: u8) -> usize {
    ((va >> (12 + 9 * u32::from(level))) & (PTE_COUNT as u64 - 1)) as usize
}

fn leaf_address_mask(level: u8) -> u64 {
    match level {
        2 => PTE_ADDRESS_1G,
        1 => PTE_ADDRESS_2M,
        _ => PTE_ADDRESS_4K,
    }
}

/// Returns true if a present entry at `level` points to another table.
fn points_to_table(entry: u64, level: u8) -> bool {
    match level {
        PML4_LEVEL => true,
        1 | 2 => entry & PTE_LARGE_PAGE == 0,
        _ => false,
    }
}

fn decode_table(data: &[u8]) -> Vec<u64> {
    let mut entries = vec![0u64; PTE_COUNT];
    for (slot, bytes) in entries.iter_mut().zip(data.chunks_exact(8)) {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(bytes);
        *slot = u64::from_le_bytes(raw);
    }
    entries
}

fn encode_table(entries: &[u64]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|entry| entry.to_le_bytes())
        .collect()
}

/// Rebuilds the tables in `region` for the moved ranges.
///
/// `pages` contains the page data the file puts in the region's used part, by GPA; a page
/// missing there is zero. Returns the contents of every page the file gave, changed or not,
/// followed by the tables the rebuild added, each with its GPA and sorted by GPA. The error is
/// a one-line description of the table or entry that cannot be rebuilt.
pub(crate) fn rebuild(
    region: TableRegion,
    pages: &BTreeMap<u64, Vec<u8>>,
    cr3: u64,
    moved: &[MovedRange],
) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let mut tables: BTreeMap<u64, Vec<u64>> = pages
        .iter()
        .map(|(gpa, data)| (*gpa, decode_table(data)))
        .collect();
    let root = cr3 & PTE_ADDRESS_4K;
    let moves = detach_moved_entries(region, &mut tables, root, moved)?;
    attach_moved_entries(region, &mut tables, root, &moves)?;
    Ok(tables
        .into_iter()
        .map(|(gpa, entries)| (gpa, encode_table(&entries)))
        .collect())
}

/// Walks the tables from `root` and takes out every leaf entry that must move. Returns the
/// entries by their new virtual address, with the new physical address already in them.
fn detach_moved_entries(
    region: TableRegion,
    tables: &mut BTreeMap<u64, Vec<u64>>,
    root: u64,
    moved: &[MovedRange],
) -> Result<BTreeMap<u64, MovedEntry>, String> {
    let mut moves = BTreeMap::new();
    let mut visited = BTreeSet::new();
    // Tables still to read: GPA, level and the first virtual address they map.
    let mut pending = vec![(root, PML4_LEVEL, 0u64)];
    while let Some((table_gpa, level, table_va)) = pending.pop() {
        // A tree of tables maps each address once. A table reached twice would map two ranges,
        // which an identity map cannot do.
        if !visited.insert(table_gpa) {
            return Err(format!("page table {table_gpa:#x} is referenced twice"));
        }
        // A page the file leaves out of the region has only zero entries.
        let Some(table) = tables.get_mut(&table_gpa) else {
            continue;
        };
        let span = mapping_size(level);
        for (index, entry) in table.iter_mut().enumerate() {
            if *entry & PTE_PRESENT == 0 {
                continue;
            }
            // At most 511 entries of 512 GiB each, so the sum stays below 2^48.
            let va = table_va + index as u64 * span;
            if points_to_table(*entry, level) {
                let next = *entry & PTE_ADDRESS_4K;
                let Some(offset) = region.offset_of(next) else {
                    continue;
                };
                if offset >= region.used_size {
                    return Err(format!(
                        "page table {table_gpa:#x} points to {next:#x}, beyond the used size {:#x}",
                        region.used_size
                    ));
                }
                pending.push((next, level - 1, va));
                continue;
            }

            let Some(offset) = leaf_offset(va, span, moved)? else {
                continue;
            };
            let new_va = va
                .checked_add_signed(offset)
                .filter(|new_va| new_va % span == 0)
                .ok_or_else(|| {
                    format!(
                        "the entry for VA {va:#x} maps {span:#x} bytes, so it cannot move by \
                         {offset:#x}; the region's alignment must be a multiple of the mapping size"
                    )
                })?;
            if new_va
                .checked_add(span)
                .is_none_or(|end| end > LOWER_HALF_END)
            {
                return Err(format!(
                    "the entry for VA {va:#x} would move to {new_va:#x}, above the lower half of \
                     the 4-level address space"
                ));
            }
            let mask = leaf_address_mask(level);
            let address = (*entry & mask)
                .checked_add_signed(offset)
                .filter(|address| address & !mask == 0)
                .ok_or_else(|| {
                    format!("the entry {entry:#x} for VA {va:#x} cannot move by {offset:#x}")
                })?;
            let value = (*entry & !mask) | address;
            let moved_entry = MovedEntry {
                level,
                value,
                old_va: va,
            };
            if let Some(other) = moves.insert(new_va, moved_entry) {
                return Err(format!(
                    "the entries for VA {:#x} and VA {va:#x} both move to {new_va:#x}",
                    other.old_va
                ));
            }
            *entry = 0;
        }
    }
    Ok(moves)
}

/// Returns the offset by which the leaf entry for `[va, va + span)` moves, if it moves.
///
/// An entry moves when it maps part of a moved region and the move is at least its mapping
/// size. Regions that move by less stay covered by the entry where it is.
fn leaf_offset(va: u64, span: u64, moved: &[MovedRange]) -> Result<Option<i64>, String> {
    let end = va.saturating_add(span);
    let mut found: Option<i64> = None;
    let overlapping = moved
        .iter()
        .filter(|range| range.start < end && va < range.start.saturating_add(range.size));
    for range in overlapping {
        if range.offset.unsigned_abs() < span {
            continue;
        }
        match found {
            Some(offset) if offset != range.offset => {
                return Err(format!(
                    "the entry for VA {va:#x} maps regions that move by {offset:#x} and {:#x}",
                    range.offset
                ));
            }
            _ => found = Some(range.offset),
        }
    }
    Ok(found)
}

/// Puts each moved entry at its new virtual address, adding tables from the free part of the
/// region where the path to that address has none.
fn attach_moved_entries(
    region: TableRegion,
    tables: &mut BTreeMap<u64, Vec<u64>>,
    root: u64,
    moves: &BTreeMap<u64, MovedEntry>,
) -> Result<(), String> {
    let mut next_free = region.used_size;
    for (new_va, moved) in moves {
        let new_va = *new_va;
        let mut table_gpa = root;
        let mut level = PML4_LEVEL;
        loop {
            let index = entry_index(new_va, level);
            let table = tables
                .entry(table_gpa)
                .or_insert_with(|| vec![0; PTE_COUNT]);
            let Some(slot) = table.get_mut(index) else {
                return Err(format!("page table {table_gpa:#x} has no entry {index}"));
            };

            if level == moved.level {
                if *slot & PTE_PRESENT == 0 {
                    *slot = moved.value;
                } else if *slot == moved.value {
                    debug!("the entry for VA {new_va:#x} already exists as it would be moved");
                } else {
                    return Err(format!(
                        "the entry for VA {:#x} would move to {new_va:#x}, which entry {:#x} in \
                         page table {table_gpa:#x} already maps",
                        moved.old_va, *slot
                    ));
                }
                break;
            }

            if *slot & PTE_PRESENT == 0 {
                if next_free >= region.size {
                    return Err(format!(
                        "the region has no free page for a new table to map VA {new_va:#x}; all \
                         {:#x} bytes are in use",
                        region.size
                    ));
                }
                let new_table = region.gpa + next_free;
                next_free += PAGE_SIZE_4K;
                *slot = new_table | PTE_PRESENT | PTE_WRITABLE | (moved.value & PTE_USER);
                tables.insert(new_table, vec![0; PTE_COUNT]);
                table_gpa = new_table;
            } else if points_to_table(*slot, level) {
                let next = *slot & PTE_ADDRESS_4K;
                if region.offset_of(next).is_none() {
                    return Err(format!(
                        "VA {new_va:#x} is mapped through page table {next:#x}, outside the region"
                    ));
                }
                table_gpa = next;
            } else {
                return Err(format!(
                    "VA {new_va:#x} is already mapped by a large page in page table {table_gpa:#x}"
                ));
            }
            level -= 1;
        }
    }
    Ok(())
}
