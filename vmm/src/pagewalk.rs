//! A software walk of the guest's 4-level page tables, used to explain a crash at an address.
//!
//! It follows the tables the way the processor would for an instruction fetch. It stops at the
//! first entry that would fault, and reports why in the processor's terms: not present, reserved
//! bits set, or a 1 GiB page that this KVM does not offer. 32-bit, PAE and 5-level paging are
//! not walked, and the result reports that instead.

use std::fmt;

use crate::regs::{CR0_PG, CR4_LA57, CR4_PAE, EFER_LMA};

/// Entry bit 0: present.
const PTE_PRESENT: u64 = 1 << 0;
/// Entry bit 7: page size (a leaf in a PDPTE or PDE).
const PTE_PAGE_SIZE: u64 = 1 << 7;
/// Entry bit 63: execute disable.
const PTE_NO_EXECUTE: u64 = 1 << 63;
/// Physical address bits 51:12 of an entry.
const PTE_ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// EFER.NXE: execute-disable bits are valid.
const EFER_NXE: u64 = 1 << 11;

/// A paging-structure level of 4-level paging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Page-map level 4.
    Pml4,
    /// Page-directory pointer table.
    Pdpt,
    /// Page directory.
    Pd,
    /// Page table.
    Pt,
}

impl Level {
    /// Returns the name of an entry at this level, as the Intel SDM writes it.
    pub fn entry_name(self) -> &'static str {
        match self {
            Level::Pml4 => "PML4E",
            Level::Pdpt => "PDPTE",
            Level::Pd => "PDE",
            Level::Pt => "PTE",
        }
    }

    /// Returns the bit position of the lowest linear-address bit this level indexes.
    fn shift(self) -> u32 {
        match self {
            Level::Pml4 => 39,
            Level::Pdpt => 30,
            Level::Pd => 21,
            Level::Pt => 12,
        }
    }

    fn next(self) -> Option<Level> {
        match self {
            Level::Pml4 => Some(Level::Pdpt),
            Level::Pdpt => Some(Level::Pd),
            Level::Pd => Some(Level::Pt),
            Level::Pt => None,
        }
    }
}

/// The control registers and address a walk starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkInput {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// The linear address to translate.
    pub linear: u64,
    /// Guest physical address width (CPUID 0x8000_0008 EAX\[7:0\]).
    pub phys_bits: u8,
    /// Whether KVM offers 1 GiB pages (CPUID 0x8000_0001 EDX bit 26).
    pub page_1gb: bool,
}

/// One entry read during the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkStep {
    /// The level of the entry.
    pub level: Level,
    /// Index of the entry in its table.
    pub index: u64,
    /// GPA of the entry.
    pub entry_gpa: u64,
    /// The entry value.
    pub entry: u64,
}

/// The reason a walk stopped before reaching a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkFault {
    /// The linear address is not canonical for 48-bit addresses.
    NonCanonical,
    /// An entry lies outside guest memory.
    TableOutsideMemory {
        /// The level whose entry could not be read.
        level: Level,
        /// GPA of that entry.
        gpa: u64,
    },
    /// An entry has the present bit clear.
    NotPresent(Level),
    /// An entry sets bits that must be zero at its level.
    ReservedBits {
        /// The level of the entry.
        level: Level,
        /// The offending bits.
        bits: u64,
    },
    /// A PDPTE maps a 1 GiB page on a KVM that does not offer them.
    Page1GbUnsupported,
    /// An entry clears the execute permission (NX) for a fetch.
    NoExecute(Level),
}

impl fmt::Display for WalkFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalkFault::NonCanonical => f.write_str("the address is not canonical"),
            WalkFault::TableOutsideMemory { level, gpa } => write!(
                f,
                "the {} at GPA {gpa:#x} lies outside guest memory",
                level.entry_name()
            ),
            WalkFault::NotPresent(level) => write!(f, "{} is not present", level.entry_name()),
            WalkFault::ReservedBits { level, bits } => write!(
                f,
                "{} sets reserved bits {bits:#x}",
                level.entry_name()
            ),
            WalkFault::Page1GbUnsupported => f.write_str(
                "PDPTE maps a 1 GiB page, but this KVM does not offer 1 GiB pages (CPUID 0x80000001 EDX bit 26)",
            ),
            WalkFault::NoExecute(level) => write!(
                f,
                "{} sets execute-disable (bit 63), so the fetch faults",
                level.entry_name()
            ),
        }
    }
}

/// The result of a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkOutcome {
    /// Paging is off: the linear address is the physical address.
    PagingOff {
        /// The physical address.
        gpa: u64,
    },
    /// The paging mode is one this walk does not follow.
    Unsupported(&'static str),
    /// The address maps to `gpa`.
    Mapped {
        /// Entries read.
        steps: Vec<WalkStep>,
        /// The physical address.
        gpa: u64,
    },
    /// The walk stopped at a fault.
    Fault {
        /// Entries read, the last one being the faulting entry where one was read.
        steps: Vec<WalkStep>,
        /// The reason the walk stopped.
        fault: WalkFault,
    },
}

/// Walks the page tables for an instruction fetch at `input.linear`. `read_u64` reads a
/// little-endian quadword of guest memory, returning `None` outside guest memory.
pub fn walk(input: &WalkInput, read_u64: impl Fn(u64) -> Option<u64>) -> WalkOutcome {
    if input.cr0 & CR0_PG == 0 {
        return WalkOutcome::PagingOff {
            gpa: input.linear & 0xFFFF_FFFF,
        };
    }
    if input.efer & EFER_LMA == 0 {
        return WalkOutcome::Unsupported(if input.cr4 & CR4_PAE != 0 {
            "PAE paging (32-bit mode) is not walked"
        } else {
            "32-bit paging is not walked"
        });
    }
    if input.cr4 & CR4_LA57 != 0 {
        return WalkOutcome::Unsupported("5-level paging is not walked");
    }
    let mut steps = Vec::new();
    let upper = input.linear >> 47;
    if upper != 0 && upper != 0x1_FFFF {
        return WalkOutcome::Fault {
            steps,
            fault: WalkFault::NonCanonical,
        };
    }

    let phys_bits = u32::from(input.phys_bits.clamp(32, 52));
    let beyond_phys = PTE_ADDRESS_MASK & !((1u64 << phys_bits) - 1);
    let nx_reserved = if input.efer & EFER_NXE == 0 {
        PTE_NO_EXECUTE
    } else {
        0
    };
    let mut table = input.cr3 & PTE_ADDRESS_MASK;
    let mut level = Level::Pml4;
    loop {
        let index = (input.linear >> level.shift()) & 0x1FF;
        let entry_gpa = table + index * 8;
        let Some(entry) = read_u64(entry_gpa) else {
            return WalkOutcome::Fault {
                steps,
                fault: WalkFault::TableOutsideMemory {
                    level,
                    gpa: entry_gpa,
                },
            };
        };
        steps.push(WalkStep {
            level,
            index,
            entry_gpa,
            entry,
        });
        let fault = |fault| WalkOutcome::Fault {
            steps: steps.clone(),
            fault,
        };
        if entry & PTE_PRESENT == 0 {
            return fault(WalkFault::NotPresent(level));
        }
        let is_leaf = match level {
            Level::Pml4 => {
                if entry & PTE_PAGE_SIZE != 0 {
                    return fault(WalkFault::ReservedBits {
                        level,
                        bits: PTE_PAGE_SIZE,
                    });
                }
                false
            }
            Level::Pdpt if entry & PTE_PAGE_SIZE != 0 => {
                if !input.page_1gb {
                    return fault(WalkFault::Page1GbUnsupported);
                }
                true
            }
            Level::Pdpt | Level::Pd => entry & PTE_PAGE_SIZE != 0,
            Level::Pt => true,
        };
        // Bits 29:13 of a 1 GiB leaf and bits 20:13 of a 2 MiB leaf are reserved (bit 12 is PAT).
        let leaf_reserved = match (is_leaf, level) {
            (true, Level::Pdpt) => 0x3FFF_E000,
            (true, Level::Pd) => 0x001F_E000,
            _ => 0,
        };
        let reserved = entry & (beyond_phys | nx_reserved | leaf_reserved);
        if reserved != 0 {
            return fault(WalkFault::ReservedBits {
                level,
                bits: reserved,
            });
        }
        if entry & PTE_NO_EXECUTE != 0 {
            return fault(WalkFault::NoExecute(level));
        }
        if is_leaf {
            let offset_mask = (1u64 << level.shift()) - 1;
            let gpa = (entry & PTE_ADDRESS_MASK & !offset_mask) | (input.linear & offset_mask);
            return WalkOutcome::Mapped { steps, gpa };
        }
        table = entry & PTE_ADDRESS_MASK;
        level = match level.next() {
            Some(next) => next,
            None => return WalkOutcome::Mapped { steps, gpa: table },
        };
    }
}

/// Formats a walk outcome as report lines, one per entry read and one for the result.
pub fn describe(outcome: &WalkOutcome) -> Vec<String> {
    let step_lines = |steps: &[WalkStep]| -> Vec<String> {
        steps
            .iter()
            .map(|step| {
                format!(
                    "{}[{}] at GPA {:#x} = {:#x}",
                    step.level.entry_name(),
                    step.index,
                    step.entry_gpa,
                    step.entry
                )
            })
            .collect()
    };
    match outcome {
        WalkOutcome::PagingOff { gpa } => vec![format!("paging is off; physical address {gpa:#x}")],
        WalkOutcome::Unsupported(why) => vec![(*why).to_string()],
        WalkOutcome::Mapped { steps, gpa } => {
            let mut lines = step_lines(steps);
            lines.push(format!("maps to GPA {gpa:#x}"));
            lines
        }
        WalkOutcome::Fault { steps, fault } => {
            let mut lines = step_lines(steps);
            lines.push(fault.to_string());
            lines
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Long mode, paging on, the tables of a COCONUT-SVSM native file at 0x1a000.
    fn input(linear: u64, page_1gb: bool) -> WalkInput {
        WalkInput {
            cr0: 0x8000_0031,
            cr3: 0x1A000,
            cr4: 0x60,
            efer: 0xD00,
            linear,
            phys_bits: 48,
            page_1gb,
        }
    }

    fn memory(entries: &[(u64, u64)]) -> impl Fn(u64) -> Option<u64> {
        let map: HashMap<u64, u64> = entries.iter().copied().collect();
        move |gpa| (gpa < 0x100_0000).then(|| map.get(&gpa).copied().unwrap_or(0))
    }

    #[test]
    fn one_gib_page_without_support() {
        let read = memory(&[(0x1A000, 0x19063), (0x19000, 0xE3)]);
        let outcome = walk(&input(0x10002, false), read);
        let WalkOutcome::Fault { steps, fault } = &outcome else {
            panic!("expected a fault, got {outcome:?}");
        };
        assert_eq!(*fault, WalkFault::Page1GbUnsupported);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1].entry_gpa, 0x19000);
        let lines = describe(&outcome);
        assert_eq!(lines[0], "PML4E[0] at GPA 0x1a000 = 0x19063");
        assert_eq!(lines[1], "PDPTE[0] at GPA 0x19000 = 0xe3");
        assert_eq!(
            lines[2],
            "PDPTE maps a 1 GiB page, but this KVM does not offer 1 GiB pages (CPUID 0x80000001 EDX bit 26)"
        );
    }

    #[test]
    fn one_gib_page_with_support() {
        let read = memory(&[(0x1A000, 0x19063), (0x19000, 0xE3)]);
        assert_eq!(
            walk(&input(0x1234_5678, true), read),
            WalkOutcome::Mapped {
                steps: vec![
                    WalkStep {
                        level: Level::Pml4,
                        index: 0,
                        entry_gpa: 0x1A000,
                        entry: 0x19063
                    },
                    WalkStep {
                        level: Level::Pdpt,
                        index: 0,
                        entry_gpa: 0x19000,
                        entry: 0xE3
                    }
                ],
                gpa: 0x1234_5678
            }
        );
    }

    #[test]
    fn two_mib_and_4k_pages() {
        let read = memory(&[
            (0x1A000, 0x19063),
            (0x19000, 0x17063),
            (0x17000, 0x0000_00E3),
            (0x17008, 0x16063),
            (0x16000 + 5 * 8, 0xABC_D063),
        ]);
        let WalkOutcome::Mapped { gpa, steps } = walk(&input(0x10_0042, false), &read) else {
            panic!("2 MiB page not mapped");
        };
        assert_eq!((gpa, steps.len()), (0x10_0042, 3));
        let WalkOutcome::Mapped { gpa, steps } = walk(&input(0x20_5123, false), &read) else {
            panic!("4 KiB page not mapped");
        };
        assert_eq!((gpa, steps.len()), (0xABC_D123, 4));
    }

    #[test]
    fn names_the_failing_level() {
        let read = memory(&[(0x1A000, 0x19063), (0x19000, 0x17063)]);
        let outcome = walk(&input(0x40_0000, false), read);
        assert_eq!(
            describe(&outcome).last().map(String::as_str),
            Some("PDE is not present")
        );
        let read = memory(&[(0x1A000, 0x190E3)]);
        let outcome = walk(&input(0, false), read);
        assert!(matches!(
            outcome,
            WalkOutcome::Fault {
                fault: WalkFault::ReservedBits {
                    level: Level::Pml4,
                    bits: 0x80
                },
                ..
            }
        ));
    }

    #[test]
    fn reserved_address_bits_and_nx() {
        let read = memory(&[(0x1A000, 0x0001_0000_0001_9063)]);
        let narrow = WalkInput {
            phys_bits: 40,
            ..input(0, false)
        };
        assert!(matches!(
            walk(&narrow, read),
            WalkOutcome::Fault {
                fault: WalkFault::ReservedBits {
                    level: Level::Pml4,
                    bits: 0x0001_0000_0000_0000
                },
                ..
            }
        ));
        let read = memory(&[(0x1A000, PTE_NO_EXECUTE | 0x19063)]);
        let no_nxe = WalkInput {
            efer: 0x500,
            ..input(0, false)
        };
        assert!(matches!(
            walk(&no_nxe, &read),
            WalkOutcome::Fault {
                fault: WalkFault::ReservedBits { .. },
                ..
            }
        ));
        assert!(matches!(
            walk(&input(0, false), &read),
            WalkOutcome::Fault {
                fault: WalkFault::NoExecute(Level::Pml4),
                ..
            }
        ));
    }

    #[test]
    fn table_outside_memory() {
        let read = memory(&[(0x1A000, 0x4000_0063)]);
        assert_eq!(
            walk(&input(0, false), read),
            WalkOutcome::Fault {
                steps: vec![WalkStep {
                    level: Level::Pml4,
                    index: 0,
                    entry_gpa: 0x1A000,
                    entry: 0x4000_0063
                }],
                fault: WalkFault::TableOutsideMemory {
                    level: Level::Pdpt,
                    gpa: 0x4000_0000
                }
            }
        );
    }

    #[test]
    fn other_modes() {
        let read = memory(&[]);
        let real = WalkInput {
            cr0: 0x10,
            ..input(0xFFFF_FFF0, false)
        };
        assert_eq!(
            walk(&real, &read),
            WalkOutcome::PagingOff { gpa: 0xFFFF_FFF0 }
        );
        let pae = WalkInput {
            efer: 0,
            ..input(0, false)
        };
        assert!(matches!(walk(&pae, &read), WalkOutcome::Unsupported(_)));
        assert_eq!(
            walk(&input(0x0000_8000_0000_0000, false), &read),
            WalkOutcome::Fault {
                steps: vec![],
                fault: WalkFault::NonCanonical
            }
        );
    }
}
