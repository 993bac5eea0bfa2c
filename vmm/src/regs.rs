//! Initial vCPU registers: an IGVM native VP context translated to `kvm_regs`/`kvm_sregs`, and
//! the architectural reset state for files without one.
//!
//! The IGVM segment attributes use the layout of bits 40..55 of a segment descriptor. Bits 3:0
//! are the type, bit 4 is S, bits 6:5 are the DPL and bit 7 is P. Bits 11:8 (limit bits 19:16
//! in a descriptor) must be zero. Bit 12 is AVL, bit 13 L, bit 14 D/B and bit 15 G. The limit field is the
//! byte-granular limit, already scaled. The data attributes apply to ES, DS, SS, FS and GS.
//! TR and LDTR keep the values KVM gives a fresh vCPU.

use igvm_defs::IgvmNativeVpContextX64;
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type, always 1 on modern processors.
pub const CR0_ET: u64 = 1 << 4;
/// CR0.NW: not write-through; set at reset.
pub const CR0_NW: u64 = 1 << 29;
/// CR0.CD: cache disable; set at reset.
pub const CR0_CD: u64 = 1 << 30;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: 5-level paging.
pub const CR4_LA57: u64 = 1 << 12;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1, which always reads as 1.
pub const RFLAGS_FIXED: u64 = 1 << 1;
/// RFLAGS.IF: maskable interrupts enabled.
pub const RFLAGS_IF: u64 = 1 << 9;

/// Selector of the code segment at reset.
pub const RESET_CS_SELECTOR: u16 = 0xF000;
/// Base of the code segment at reset: the last 64 KiB below 4 GiB.
pub const RESET_CS_BASE: u64 = 0xFFFF_0000;
/// Instruction pointer at reset; with the CS base the first fetch is at 0xFFFF_FFF0.
pub const RESET_RIP: u64 = 0xFFF0;

/// Error in a VP context.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegsError {
    /// Segment attributes with limit bits set in bits 11:8, which the IGVM format requires to
    /// be zero.
    #[error("VP context {segment} attributes {attributes:#06x} have bits 11:8 set; IGVM requires them to be zero")]
    AttributeLimitBits {
        /// "code" or "data".
        segment: &'static str,
        /// The attribute value.
        attributes: u16,
    },
    /// Long mode enabled with paging on but without PAE.
    #[error("VP context enables long mode with paging (EFER {efer:#x}, CR0 {cr0:#x}) but CR4.PAE is clear (CR4 {cr4:#x})")]
    LongModeWithoutPae {
        /// EFER value.
        efer: u64,
        /// CR0 value.
        cr0: u64,
        /// CR4 value.
        cr4: u64,
    },
    /// Paging on without protected mode.
    #[error("VP context sets CR0.PG without CR0.PE (CR0 {0:#x})")]
    PagingWithoutProtection(u64),
}

/// Decodes IGVM segment attributes into `segment`, keeping its base, limit and selector.
fn apply_attributes(segment: &mut kvm_segment, attributes: u16) {
    segment.type_ = (attributes & 0xF) as u8;
    segment.s = ((attributes >> 4) & 1) as u8;
    segment.dpl = ((attributes >> 5) & 3) as u8;
    segment.present = ((attributes >> 7) & 1) as u8;
    segment.avl = ((attributes >> 12) & 1) as u8;
    segment.l = ((attributes >> 13) & 1) as u8;
    segment.db = ((attributes >> 14) & 1) as u8;
    segment.g = ((attributes >> 15) & 1) as u8;
    segment.unusable = u8::from(segment.present == 0);
}

/// Builds a segment from an IGVM selector, attribute, base and limit.
fn segment(
    name: &'static str,
    selector: u16,
    attributes: u16,
    base: u64,
    limit: u32,
) -> Result<kvm_segment, RegsError> {
    if attributes & 0x0F00 != 0 {
        return Err(RegsError::AttributeLimitBits {
            segment: name,
            attributes,
        });
    }
    let mut segment = kvm_segment {
        base,
        limit,
        selector,
        ..Default::default()
    };
    apply_attributes(&mut segment, attributes);
    Ok(segment)
}

/// Returns the general-purpose registers of a native VP context.
pub fn native_regs(context: &IgvmNativeVpContextX64) -> kvm_regs {
    kvm_regs {
        rax: context.rax,
        rbx: context.rbx,
        rcx: context.rcx,
        rdx: context.rdx,
        rsi: context.rsi,
        rdi: context.rdi,
        rsp: context.rsp,
        rbp: context.rbp,
        r8: context.r8,
        r9: context.r9,
        r10: context.r10,
        r11: context.r11,
        r12: context.r12,
        r13: context.r13,
        r14: context.r14,
        r15: context.r15,
        rip: context.rip,
        rflags: context.rflags | RFLAGS_FIXED,
    }
}

/// Applies the special registers of a native VP context to `sregs`, which contains the vCPU's
/// current (reset) values. TR, LDTR, CR2, CR8 and the APIC base stay as they are.
///
/// When the context enables long mode with paging, EFER.LMA is set as the processor would set
/// it, because KVM rejects LME plus PG without LMA.
pub fn apply_native_sregs(
    sregs: &mut kvm_sregs,
    context: &IgvmNativeVpContextX64,
) -> Result<(), RegsError> {
    if context.cr0 & CR0_PG != 0 && context.cr0 & CR0_PE == 0 {
        return Err(RegsError::PagingWithoutProtection(context.cr0));
    }
    let mut efer = context.efer;
    if efer & EFER_LME != 0 && context.cr0 & CR0_PG != 0 {
        if context.cr4 & CR4_PAE == 0 {
            return Err(RegsError::LongModeWithoutPae {
                efer,
                cr0: context.cr0,
                cr4: context.cr4,
            });
        }
        efer |= EFER_LMA;
    }

    sregs.cs = segment(
        "code",
        context.code_selector,
        context.code_attributes,
        u64::from(context.code_base),
        context.code_limit,
    )?;
    let data = segment(
        "data",
        context.data_selector,
        context.data_attributes,
        u64::from(context.data_base),
        context.data_limit,
    )?;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.ss = data;
    sregs.gs = kvm_segment {
        base: context.gs_base,
        ..data
    };
    sregs.gdt.base = context.gdtr_base;
    sregs.gdt.limit = context.gdtr_limit;
    sregs.idt.base = context.idtr_base;
    sregs.idt.limit = context.idtr_limit;
    sregs.cr0 = context.cr0;
    sregs.cr3 = context.cr3;
    sregs.cr4 = context.cr4;
    sregs.efer = efer;
    Ok(())
}

/// Returns the reset values of the general-purpose registers: RIP 0xFFF0, RFLAGS 0x2 and
/// every other register zero. On hardware EDX would contain the processor signature, which
/// guests read from CPUID instead.
pub fn reset_regs() -> kvm_regs {
    kvm_regs {
        rip: RESET_RIP,
        rflags: RFLAGS_FIXED,
        ..Default::default()
    }
}

/// Applies the real-mode reset state to `sregs`: CS selector 0xF000 with base 0xFFFF_0000,
/// 64 KiB data segments at 0, CR0 with ET, CD and NW, paging and long mode off.
pub fn apply_reset_sregs(sregs: &mut kvm_sregs) {
    let real_mode = |selector: u16, base: u64, type_: u8| kvm_segment {
        base,
        limit: 0xFFFF,
        selector,
        type_,
        present: 1,
        s: 1,
        ..Default::default()
    };
    // Type 0xB: execute/read code, accessed. Type 0x3: read/write data, accessed.
    sregs.cs = real_mode(RESET_CS_SELECTOR, RESET_CS_BASE, 0xB);
    let data = real_mode(0, 0, 0x3);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = 0;
    sregs.gdt.limit = 0xFFFF;
    sregs.idt.base = 0;
    sregs.idt.limit = 0xFFFF;
    sregs.cr0 = CR0_ET | CR0_NW | CR0_CD;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// Returns the native context of a COCONUT-SVSM `igvmbuilder qemu --native` file: long mode
    /// enabled, a D/B code segment (compatibility mode) and flat data.
    fn long_mode_context() -> IgvmNativeVpContextX64 {
        IgvmNativeVpContextX64 {
            rax: 0,
            rcx: 0,
            rdx: 0,
            rbx: 0,
            rsp: 0x16FA8,
            rbp: 0,
            rsi: 0,
            rdi: 0,
            r8: 0,
            r9: 0,
            r10: 0,
            r11: 0,
            r12: 0,
            r13: 0,
            r14: 0,
            r15: 0,
            rip: 0x10002,
            rflags: 0,
            idtr_base: 0,
            idtr_limit: 0,
            reserved: [0; 2],
            gdtr_limit: 0x17,
            gdtr_base: 0x7000,
            code_selector: 0x8,
            code_attributes: 0xC09B,
            code_base: 0,
            code_limit: 0xFFFF_FFFF,
            data_selector: 0x10,
            data_attributes: 0xA093,
            data_base: 0,
            data_limit: 0xFFFF_FFFF,
            gs_base: 0x1234_5000,
            cr0: 0x8000_0031,
            cr3: 0x1A000,
            cr4: 0x60,
            efer: 0xD00,
        }
    }

    #[test]
    fn native_context_segments() {
        let context = long_mode_context();
        let mut sregs = kvm_sregs::default();
        apply_native_sregs(&mut sregs, &context).unwrap();
        let cs = sregs.cs;
        assert_eq!(
            (
                cs.selector,
                cs.type_,
                cs.s,
                cs.dpl,
                cs.present,
                cs.l,
                cs.db,
                cs.g,
                cs.avl
            ),
            (0x8, 0xB, 1, 0, 1, 0, 1, 1, 0)
        );
        assert_eq!((cs.base, cs.limit, cs.unusable), (0, 0xFFFF_FFFF, 0));
        let ds = sregs.ds;
        assert_eq!(
            (ds.selector, ds.type_, ds.present, ds.l, ds.db, ds.g),
            (0x10, 0x3, 1, 1, 0, 1)
        );
        assert_eq!(sregs.ss.selector, 0x10);
        assert_eq!(sregs.gs.base, 0x1234_5000);
        assert_eq!(sregs.fs.base, 0);
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (0x7000, 0x17));
        assert_eq!(
            (sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer),
            (0x8000_0031, 0x1A000, 0x60, 0xD00)
        );
    }

    #[test]
    fn native_context_regs() {
        let regs = native_regs(&long_mode_context());
        assert_eq!((regs.rip, regs.rsp, regs.rflags), (0x10002, 0x16FA8, 0x2));
    }

    #[test]
    fn long_mode_sets_lma() {
        let mut context = long_mode_context();
        context.efer = EFER_LME;
        let mut sregs = kvm_sregs::default();
        apply_native_sregs(&mut sregs, &context).unwrap();
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
    }

    #[test]
    fn rejects_inconsistent_contexts() {
        let mut context = long_mode_context();
        context.cr4 = 0;
        assert_eq!(
            apply_native_sregs(&mut kvm_sregs::default(), &context),
            Err(RegsError::LongModeWithoutPae {
                efer: 0xD00,
                cr0: 0x8000_0031,
                cr4: 0
            })
        );
        let mut context = long_mode_context();
        context.cr0 = CR0_PG;
        assert_eq!(
            apply_native_sregs(&mut kvm_sregs::default(), &context),
            Err(RegsError::PagingWithoutProtection(CR0_PG))
        );
        let mut context = long_mode_context();
        context.data_attributes = 0xC393;
        assert_eq!(
            apply_native_sregs(&mut kvm_sregs::default(), &context),
            Err(RegsError::AttributeLimitBits {
                segment: "data",
                attributes: 0xC393
            })
        );
    }

    #[test]
    fn absent_data_segment_is_unusable() {
        let mut context = long_mode_context();
        context.data_attributes = 0;
        let mut sregs = kvm_sregs::default();
        apply_native_sregs(&mut sregs, &context).unwrap();
        assert_eq!((sregs.ds.present, sregs.ds.unusable), (0, 1));
    }

    #[test]
    fn reset_state() {
        let mut sregs = kvm_sregs {
            efer: EFER_LME,
            cr0: CR0_PG | CR0_PE,
            ..Default::default()
        };
        apply_reset_sregs(&mut sregs);
        assert_eq!(
            (sregs.cs.selector, sregs.cs.base, sregs.cs.limit),
            (0xF000, 0xFFFF_0000, 0xFFFF)
        );
        assert_eq!(sregs.cr0, 0x6000_0010);
        assert_eq!(sregs.efer, 0);
        let regs = reset_regs();
        assert_eq!((regs.rip, regs.rflags), (0xFFF0, 0x2));
    }
}
