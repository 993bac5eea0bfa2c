//! Where test guests put things in memory, and the CPU state each entry mode starts with.
//!
//! The layout keeps everything a real-mode guest touches below 64 KiB:
//!
//! | GPA | contents |
//! |---|---|
//! | 0x0000..0x1000 | real-mode stack (SP starts at 0x1000) |
//! | 0x1000 | GDT ([`GDT_GPA`]) |
//! | 0x2000 | AP start-up code for INIT/SIPI ([`AP_TRAMPOLINE_GPA`], SIPI vector 2) |
//! | 0x3000 | variables shared between vCPUs and fw_cfg DMA descriptors ([`VARS_GPA`]) |
//! | 0x8000..0x10000 | the program ([`CODE_GPA`]) |
//! | 0x10000..0x20000 | parameter areas ([`PARAM_GPA`]) |
//! | 0x20000..0x26000 | long-mode page tables ([`PML4_GPA`]) |
//! | below 0x80000 | protected and long mode stack ([`STACK_TOP`]) |
//! | 0x100000.. | scratch buffer for fw_cfg reads ([`SCRATCH_GPA`]) |

use igvm_defs::IgvmNativeVpContextX64;

/// GPA of the GDT.
pub const GDT_GPA: u64 = 0x1000;
/// GPA of the code that an AP started by INIT/SIPI runs (SIPI vector [`AP_SIPI_VECTOR`]).
pub const AP_TRAMPOLINE_GPA: u64 = 0x2000;
/// SIPI vector that starts an AP at [`AP_TRAMPOLINE_GPA`].
pub const AP_SIPI_VECTOR: u8 = (AP_TRAMPOLINE_GPA >> 12) as u8;
/// GPA of a page of variables and DMA descriptors.
pub const VARS_GPA: u64 = 0x3000;
/// GPA where the program is loaded and starts.
pub const CODE_GPA: u64 = 0x8000;
/// Largest program that fits below [`PARAM_GPA`].
pub const CODE_MAX: usize = 0x8000;
/// GPA of the first parameter area.
pub const PARAM_GPA: u64 = 0x10000;
/// GPA of the PML4; the PDPT and four page directories follow.
pub const PML4_GPA: u64 = 0x20000;
/// Number of bytes of page tables at [`PML4_GPA`].
pub const PAGE_TABLE_BYTES: u64 = 6 * 0x1000;
/// Initial stack pointer in protected and long mode.
pub const STACK_TOP: u64 = 0x80000;
/// Initial stack pointer in real mode (SS base 0).
pub const REAL_MODE_STACK_TOP: u64 = 0x1000;
/// GPA of a scratch buffer for data the guest reads.
pub const SCRATCH_GPA: u64 = 0x10_0000;
/// Guest RAM that the tests give a VM.
pub const GUEST_RAM: u64 = 128 << 20;

/// GDT selector of the flat 32-bit code segment.
pub const CODE32_SELECTOR: u16 = 0x08;
/// GDT selector of the flat data segment.
pub const DATA_SELECTOR: u16 = 0x10;
/// GDT selector of the 64-bit code segment.
pub const CODE64_SELECTOR: u16 = 0x18;

/// Segment attributes in the VP context format (the descriptor's bits 40..56: type, S, DPL,
/// P, then AVL, L, D/B and G in bits 12..15).
pub mod attributes {
    /// Present, code, execute/read, accessed; 16-bit with byte granularity.
    pub const CODE16: u16 = 0x009b;
    /// Present, data, read/write, accessed; 16-bit with byte granularity.
    pub const DATA16: u16 = 0x0093;
    /// Present, code, execute/read, accessed; 32-bit (D) with 4 KiB granularity (G).
    pub const CODE32: u16 = 0xc09b;
    /// Present, data, read/write, accessed; 32-bit (B) with 4 KiB granularity (G).
    pub const DATA32: u16 = 0xc093;
    /// Present, code, execute/read, accessed; long mode (L) with 4 KiB granularity (G).
    pub const CODE64: u16 = 0xa09b;
}

/// CR0 bits.
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1 << 0;
    /// Extension type; always 1 on modern processors.
    pub const ET: u64 = 1 << 4;
    /// Numeric error reporting.
    pub const NE: u64 = 1 << 5;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// The local APIC in xAPIC mode: its MMIO base, the register offsets a guest uses to start an
/// AP, and the interrupt command values.
pub mod lapic {
    /// Physical address of every CPU's local APIC registers.
    pub const BASE: u64 = 0xfee0_0000;
    /// Spurious interrupt vector register. Bit 8 enables the APIC in software.
    pub const SVR: i32 = 0xf0;
    /// Interrupt command register, low half: writing it sends the IPI.
    pub const ICR_LOW: i32 = 0x300;
    /// Interrupt command register, high half: the destination APIC ID in bits 24..31.
    pub const ICR_HIGH: i32 = 0x310;
    /// ICR: INIT, level assert.
    pub const ICR_INIT: u32 = 0x0000_4500;
    /// ICR: start-up, level assert, with the vector in the low byte.
    pub const ICR_STARTUP: u32 = 0x0000_4600;
}

/// CR4 bit: physical address extension, required for long mode.
pub const CR4_PAE: u64 = 1 << 5;
/// EFER bit: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER bit: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always set.
pub const RFLAGS_RESERVED: u64 = 0x2;

/// Returns the GDT bytes: null, flat 32-bit code, flat data, 64-bit code.
pub fn gdt() -> Vec<u8> {
    let descriptors: [u64; 4] = [
        0,
        // base 0, limit 0xfffff pages, attributes CODE32
        0x00cf_9b00_0000_ffff,
        // base 0, limit 0xfffff pages, attributes DATA32
        0x00cf_9300_0000_ffff,
        // base 0, limit 0xfffff pages, attributes CODE64
        0x00af_9b00_0000_ffff,
    ];
    descriptors.iter().flat_map(|d| d.to_le_bytes()).collect()
}

/// Page table entry bits.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_LARGE: u64 = 1 << 7;

/// Returns page tables, to be loaded at `pml4_gpa`, that identity-map the first 4 GiB with
/// 2 MiB pages. The host KVM here offers no 1 GiB pages, so the PDPT points at four page
/// directories.
pub fn identity_page_tables(pml4_gpa: u64) -> Vec<u8> {
    let mut tables = vec![0u8; PAGE_TABLE_BYTES as usize];
    let pdpt_gpa = pml4_gpa + 0x1000;
    let pd_gpa = pml4_gpa + 0x2000;

    let mut put = |offset: usize, value: u64| {
        if let Some(slot) = tables.get_mut(offset..offset + 8) {
            slot.copy_from_slice(&value.to_le_bytes());
        }
    };

    put(0, pdpt_gpa | PTE_PRESENT | PTE_WRITABLE);
    for gib in 0..4u64 {
        put(
            0x1000 + gib as usize * 8,
            (pd_gpa + gib * 0x1000) | PTE_PRESENT | PTE_WRITABLE,
        );
    }
    for entry in 0..(4 * 512u64) {
        put(
            0x2000 + entry as usize * 8,
            (entry << 21) | PTE_PRESENT | PTE_WRITABLE | PTE_LARGE,
        );
    }
    tables
}

/// Returns a VP context that starts in real mode at `cs_base + ip` with every data segment at
/// base 0.
pub fn real_mode_context(cs_base: u32, ip: u16) -> IgvmNativeVpContextX64 {
    IgvmNativeVpContextX64 {
        rip: ip as u64,
        rsp: REAL_MODE_STACK_TOP,
        rflags: RFLAGS_RESERVED,
        code_selector: (cs_base >> 4) as u16,
        code_attributes: attributes::CODE16,
        code_base: cs_base,
        code_limit: 0xffff,
        data_selector: 0,
        data_attributes: attributes::DATA16,
        data_base: 0,
        data_limit: 0xffff,
        idtr_limit: 0x3ff,
        gdtr_limit: 0xffff,
        cr0: cr0::ET,
        ..zeroed_context()
    }
}

/// Returns a VP context that starts in 32-bit protected mode (paging off) at `eip` with the
/// flat GDT at [`GDT_GPA`].
pub fn protected_mode_context(eip: u32) -> IgvmNativeVpContextX64 {
    IgvmNativeVpContextX64 {
        rip: eip as u64,
        rsp: STACK_TOP,
        rflags: RFLAGS_RESERVED,
        gdtr_base: GDT_GPA,
        gdtr_limit: (gdt().len() - 1) as u16,
        code_selector: CODE32_SELECTOR,
        code_attributes: attributes::CODE32,
        code_base: 0,
        code_limit: 0xffff_ffff,
        data_selector: DATA_SELECTOR,
        data_attributes: attributes::DATA32,
        data_base: 0,
        data_limit: 0xffff_ffff,
        cr0: cr0::PE | cr0::ET | cr0::NE,
        ..zeroed_context()
    }
}

/// Returns a VP context that starts in 64-bit long mode at `rip`, with page tables at
/// `pml4_gpa` and the GDT at [`GDT_GPA`].
pub fn long_mode_context(rip: u64, pml4_gpa: u64) -> IgvmNativeVpContextX64 {
    IgvmNativeVpContextX64 {
        rip,
        rsp: STACK_TOP,
        rflags: RFLAGS_RESERVED,
        gdtr_base: GDT_GPA,
        gdtr_limit: (gdt().len() - 1) as u16,
        code_selector: CODE64_SELECTOR,
        code_attributes: attributes::CODE64,
        code_base: 0,
        code_limit: 0xffff_ffff,
        data_selector: DATA_SELECTOR,
        data_attributes: attributes::DATA32,
        data_base: 0,
        data_limit: 0xffff_ffff,
        cr0: cr0::PE | cr0::ET | cr0::NE | cr0::PG,
        cr3: pml4_gpa,
        cr4: CR4_PAE,
        efer: EFER_LME | EFER_LMA,
        ..zeroed_context()
    }
}

fn zeroed_context() -> IgvmNativeVpContextX64 {
    <IgvmNativeVpContextX64 as zerocopy::FromZeros>::new_zeroed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tables: &[u8], offset: usize) -> u64 {
        let mut bytes = [0u8; 8];
        if let Some(slice) = tables.get(offset..offset + 8) {
            bytes.copy_from_slice(slice);
        }
        u64::from_le_bytes(bytes)
    }

    #[test]
    fn page_tables_map_lapic_with_2m_page() {
        let tables = identity_page_tables(PML4_GPA);
        assert_eq!(entry(&tables, 0), (PML4_GPA + 0x1000) | 3);
        assert_eq!(entry(&tables, 0x1000 + 3 * 8), (PML4_GPA + 0x5000) | 3);
        // 0xFEE00000 is entry 0x1f7 of the fourth directory.
        let lapic_pde = entry(&tables, 0x2000 + (0xfee0_0000u64 >> 21) as usize * 8);
        assert_eq!(lapic_pde, 0xfee0_0000 | 0x83);
    }

    #[test]
    fn gdt_has_four_descriptors() {
        assert_eq!(gdt().len(), 32);
    }
}
