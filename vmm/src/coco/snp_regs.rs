//! SEV-SNP vCPU state as KVM ioctl structures, and a model of the VMSA that KVM builds from them.
//!
//! [`vcpu_registers`] turns a [`KvmSnpVcpuState`] into the arguments of `KVM_SET_REGS`,
//! `KVM_SET_SREGS`, `KVM_SET_FPU`, `KVM_SET_XCRS`, `KVM_SET_DEBUGREGS` and `KVM_SET_MSRS`.
//! [`kvm_sync_vmsa`] models what KVM then writes into the VMSA at `LAUNCH_FINISH`, starting from
//! those ioctl arguments rather than from the state struct, so a test can check one against the
//! other: Linux `arch/x86/kvm/svm/svm.c` (`svm_set_segment`, `svm_set_efer`, `svm_set_cr0`,
//! `svm_set_cr4`) and `arch/x86/kvm/svm/sev.c` (`sev_es_sync_vmsa`), Linux 6.12 to 7.3.

use igvm::snp_defs::{SevFeatures, SevSelector, SevVmsa};
use igvm_loader::measure::vmsa::{
    KvmSnpVcpuState, SegmentRegister, CR0_CD, CR0_NW, CR4_MCE, EFER_SVME, RESET_PAT, RFLAGS_FIXED,
    SEV_FEATURE_SNP_ACTIVE,
};
use kvm_bindings::{
    kvm_debugregs, kvm_dtable, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_xcr,
    kvm_xcrs,
};
use zerocopy::FromZeros;

/// `IA32_PAT`.
pub const MSR_IA32_CR_PAT: u32 = 0x277;

/// The register ioctls that load one SEV-SNP vCPU, in the order igvmm issues them.
///
/// `sregs.apic_base`, `sregs.cr8` and `sregs.interrupt_bitmap` are left at zero here; the KVM
/// implementation keeps the vCPU's own values for them (it reads `KVM_GET_SREGS` first).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnpVcpuRegisters {
    /// `KVM_SET_REGS`.
    pub regs: kvm_regs,
    /// `KVM_SET_SREGS` (segment, descriptor-table and control registers, EFER).
    pub sregs: kvm_sregs,
    /// `KVM_SET_FPU`.
    pub fpu: kvm_fpu,
    /// `KVM_SET_XCRS`.
    pub xcrs: kvm_xcrs,
    /// `KVM_SET_DEBUGREGS`.
    pub debugregs: kvm_debugregs,
    /// `KVM_SET_MSRS` entries.
    pub msrs: [kvm_msr_entry; 1],
}

fn kvm_segment_from(segment: &SegmentRegister) -> kvm_segment {
    let attrib = segment.attrib;
    let bit = |shift: u16| ((attrib >> shift) & 1) as u8;
    let present = bit(7);
    kvm_segment {
        base: segment.base,
        limit: segment.limit,
        selector: segment.selector,
        type_: (attrib & 0xF) as u8,
        present,
        dpl: ((attrib >> 5) & 3) as u8,
        db: bit(10),
        s: bit(4),
        l: bit(9),
        g: bit(11),
        avl: bit(8),
        // KVM builds the VMCB P bit as `present && !unusable`.
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Returns the register ioctl arguments that load `state` into a vCPU.
pub fn vcpu_registers(state: &KvmSnpVcpuState) -> SnpVcpuRegisters {
    let regs = kvm_regs {
        rax: state.rax,
        rbx: state.rbx,
        rcx: state.rcx,
        rdx: state.rdx,
        rsi: state.rsi,
        rdi: state.rdi,
        rsp: state.rsp,
        rbp: state.rbp,
        r8: state.r8,
        r9: state.r9,
        r10: state.r10,
        r11: state.r11,
        r12: state.r12,
        r13: state.r13,
        r14: state.r14,
        r15: state.r15,
        rip: state.rip,
        rflags: state.rflags,
    };
    let sregs = kvm_sregs {
        cs: kvm_segment_from(&state.cs),
        ds: kvm_segment_from(&state.ds),
        es: kvm_segment_from(&state.es),
        fs: kvm_segment_from(&state.fs),
        gs: kvm_segment_from(&state.gs),
        ss: kvm_segment_from(&state.ss),
        tr: kvm_segment_from(&state.tr),
        ldt: kvm_segment_from(&state.ldtr),
        gdt: kvm_dtable {
            base: state.gdtr.base,
            limit: state.gdtr.limit,
            padding: [0; 3],
        },
        idt: kvm_dtable {
            base: state.idtr.base,
            limit: state.idtr.limit,
            padding: [0; 3],
        },
        cr0: state.cr0,
        cr2: 0,
        cr3: state.cr3,
        cr4: state.cr4,
        cr8: 0,
        efer: state.efer,
        apic_base: 0,
        interrupt_bitmap: [0; 4],
    };
    let fpu = kvm_fpu {
        fcw: state.x87_fcw,
        mxcsr: state.mxcsr,
        ..Default::default()
    };
    let mut xcrs = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    xcrs.xcrs[0] = kvm_xcr {
        xcr: 0,
        reserved: 0,
        value: state.xcr0,
    };
    let debugregs = kvm_debugregs {
        dr6: state.dr6,
        dr7: state.dr7,
        ..Default::default()
    };
    let msrs = [kvm_msr_entry {
        index: MSR_IA32_CR_PAT,
        reserved: 0,
        data: state.g_pat,
    }];
    SnpVcpuRegisters {
        regs,
        sregs,
        fpu,
        xcrs,
        debugregs,
        msrs,
    }
}

/// `svm_set_segment`: the VMCB attribute KVM stores for a `kvm_segment`.
fn vmcb_segment(segment: &kvm_segment) -> SevSelector {
    let present = segment.present & 1 != 0 && segment.unusable == 0;
    let attrib = u16::from(segment.type_ & 0xF)
        | (u16::from(segment.s & 1) << 4)
        | (u16::from(segment.dpl & 3) << 5)
        | (u16::from(present) << 7)
        | (u16::from(segment.avl & 1) << 8)
        | (u16::from(segment.l & 1) << 9)
        | (u16::from(segment.db & 1) << 10)
        | (u16::from(segment.g & 1) << 11);
    SevSelector {
        selector: segment.selector,
        attrib,
        limit: segment.limit,
        base: segment.base,
    }
}

/// Models the VMSA that KVM's `sev_es_sync_vmsa` writes at `LAUNCH_FINISH` for a vCPU loaded
/// with `registers`, in a VM whose `KVM_SEV_INIT2.vmsa_features` is `vmsa_features`.
///
/// The model assumes that the host runs with `CR4.MCE` set and that `KVM_X86_QUIRK_CD_NW_CLEARED`
/// is enabled (KVM's default). The VM type is SEV-SNP, so KVM copies the x87, SSE and AVX state. Fields KVM
/// does not set from these ioctls are zero.
pub fn kvm_sync_vmsa(registers: &SnpVcpuRegisters, vmsa_features: u64) -> SevVmsa {
    let SnpVcpuRegisters {
        regs,
        sregs,
        fpu,
        xcrs,
        debugregs,
        msrs,
    } = registers;
    let mut vmsa = SevVmsa::new_zeroed();
    vmsa.es = vmcb_segment(&sregs.es);
    vmsa.cs = vmcb_segment(&sregs.cs);
    vmsa.ss = vmcb_segment(&sregs.ss);
    vmsa.ds = vmcb_segment(&sregs.ds);
    vmsa.fs = vmcb_segment(&sregs.fs);
    vmsa.gs = vmcb_segment(&sregs.gs);
    vmsa.ldtr = vmcb_segment(&sregs.ldt);
    vmsa.tr = vmcb_segment(&sregs.tr);
    vmsa.gdtr.base = sregs.gdt.base;
    vmsa.gdtr.limit = u32::from(sregs.gdt.limit);
    vmsa.idtr.base = sregs.idt.base;
    vmsa.idtr.limit = u32::from(sregs.idt.limit);
    vmsa.cpl = sregs.ss.dpl & 3;
    vmsa.efer = sregs.efer | EFER_SVME;
    vmsa.cr0 = sregs.cr0 & !(CR0_CD | CR0_NW);
    vmsa.cr3 = sregs.cr3;
    vmsa.cr4 = sregs.cr4 | CR4_MCE;
    vmsa.dr6 = debugregs.dr6;
    vmsa.dr7 = debugregs.dr7;
    vmsa.rflags = regs.rflags | RFLAGS_FIXED;
    vmsa.rip = regs.rip;
    vmsa.rsp = regs.rsp;
    vmsa.rax = regs.rax;
    vmsa.rbx = regs.rbx;
    vmsa.rcx = regs.rcx;
    vmsa.rdx = regs.rdx;
    vmsa.rsi = regs.rsi;
    vmsa.rdi = regs.rdi;
    vmsa.rbp = regs.rbp;
    vmsa.r8 = regs.r8;
    vmsa.r9 = regs.r9;
    vmsa.r10 = regs.r10;
    vmsa.r11 = regs.r11;
    vmsa.r12 = regs.r12;
    vmsa.r13 = regs.r13;
    vmsa.r14 = regs.r14;
    vmsa.r15 = regs.r15;
    vmsa.pat = msrs
        .iter()
        .find(|entry| entry.index == MSR_IA32_CR_PAT)
        .map_or(RESET_PAT, |entry| entry.data);
    let xcr_count = (xcrs.nr_xcrs as usize).min(xcrs.xcrs.len());
    vmsa.xcr0 = xcrs
        .xcrs
        .get(..xcr_count)
        .unwrap_or_default()
        .iter()
        .find(|xcr| xcr.xcr == 0)
        .map_or(1, |xcr| xcr.value);
    vmsa.sev_features = SevFeatures::from_bits(vmsa_features | SEV_FEATURE_SNP_ACTIVE);

    vmsa.x87dp = fpu.last_dp;
    vmsa.mxcsr = fpu.mxcsr;
    vmsa.x87_ftw = u16::from(fpu.ftwx);
    vmsa.x87_fsw = fpu.fsw;
    vmsa.x87_fcw = fpu.fcw;
    vmsa.x87_op = fpu.last_opcode;
    vmsa.x87_rip = fpu.last_ip;
    // The VMSA packs the eight 80-bit x87 registers back to back (80 bytes).
    let mut x87 = [0u8; 80];
    for (index, register) in fpu.fpr.iter().enumerate() {
        if let (Some(target), Some(source)) =
            (x87.get_mut(index * 10..index * 10 + 10), register.get(..10))
        {
            target.copy_from_slice(source);
        }
    }
    vmsa.x87_registers1
        .copy_from_slice(x87.get(..32).unwrap_or(&[0; 32]));
    vmsa.x87_registers2
        .copy_from_slice(x87.get(32..64).unwrap_or(&[0; 32]));
    vmsa.x87_registers3
        .copy_from_slice(x87.get(64..80).unwrap_or(&[0; 16]));
    for (register, xmm) in vmsa.xmm_registers.iter_mut().zip(fpu.xmm.iter()) {
        let mut low = [0u8; 8];
        let mut high = [0u8; 8];
        low.copy_from_slice(xmm.get(..8).unwrap_or(&[0; 8]));
        high.copy_from_slice(xmm.get(8..16).unwrap_or(&[0; 8]));
        register.low = u64::from_le_bytes(low);
        register.high = u64::from_le_bytes(high);
    }
    vmsa
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use igvm_loader::measure::vmsa::KVM_VMSA_GPA;
    use zerocopy::IntoBytes;

    use super::*;

    #[test]
    fn reset_state_round_trips_through_kvm_model() {
        let state = KvmSnpVcpuState::reset(0x00A2_0F12, 0x20);
        let registers = vcpu_registers(&state);
        assert_eq!(registers.sregs.cr0, 0x6000_0010);
        assert_eq!(registers.sregs.tr.type_, 0xB);
        assert_eq!(registers.sregs.tr.present, 1);
        let modeled = kvm_sync_vmsa(&registers, state.init2_vmsa_features());
        assert_eq!(modeled.as_bytes(), state.to_kvm_vmsa().as_bytes());
    }

    #[test]
    fn file_vmsa_round_trips_through_kvm_model() {
        let mut vmsa = SevVmsa::new_zeroed();
        let data = SevSelector {
            selector: 0x10,
            attrib: 0xA93,
            limit: 0xFFFF_FFFF,
            base: 0,
        };
        vmsa.es = data;
        vmsa.ss = data;
        vmsa.ds = data;
        vmsa.fs = data;
        vmsa.gs = SevSelector {
            base: 0xFFFF_8000_0000_0000,
            ..data
        };
        vmsa.cs = SevSelector {
            selector: 8,
            attrib: 0xA9B,
            ..data
        };
        // A not-present TR and LDTR must stay not present.
        vmsa.tr = SevSelector {
            selector: 0,
            attrib: 0x0B,
            limit: 0x67,
            base: 0x1000,
        };
        vmsa.gdtr.base = 0x2000;
        vmsa.gdtr.limit = 0x27;
        vmsa.efer = 0x1D00;
        vmsa.cr0 = 0x8000_0031;
        vmsa.cr3 = 0x3000;
        vmsa.cr4 = 0x668;
        vmsa.xcr0 = 7;
        vmsa.dr7 = 0x400;
        vmsa.rflags = 0x202;
        vmsa.rip = 0xFFFF_8000_0010_0000;
        vmsa.rsi = 0x4000;
        vmsa.r15 = 15;
        vmsa.pat = 0x0007_0406_0007_0406;
        vmsa.x87_fcw = 0x37F;
        vmsa.mxcsr = 0x1F80;
        vmsa.sev_features = SevFeatures::from_bits(0x21);
        let state = KvmSnpVcpuState::from_file_vmsa(&vmsa, KVM_VMSA_GPA).unwrap();
        let registers = vcpu_registers(&state);
        assert_eq!(registers.sregs.tr.present, 0);
        assert_eq!(registers.sregs.tr.unusable, 1);
        let modeled = kvm_sync_vmsa(&registers, state.init2_vmsa_features());
        assert_eq!(modeled.as_bytes(), vmsa.as_bytes());
    }

    #[test]
    fn kvm_model_applies_svm_changes() {
        let mut state = KvmSnpVcpuState::reset(0, 0);
        state.efer = 0x500;
        state.cr4 = 0x20;
        state.ss.attrib = 0x93 | (3 << 5);
        let modeled = kvm_sync_vmsa(&vcpu_registers(&state), 0);
        assert_eq!(modeled.efer, 0x1500);
        assert_eq!(modeled.cr4, 0x60);
        assert_eq!(modeled.cr0, 0x10);
        assert_eq!(modeled.cpl, 3);
        assert_eq!(modeled.sev_features.into_bits(), 1);
    }
}
