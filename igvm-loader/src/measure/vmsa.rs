//! The SEV-SNP vCPU state that a KVM launch can express, and the VMSA that KVM builds from it.
//!
//! KVM has no ioctl that takes a VMSA. At `KVM_SEV_SNP_LAUNCH_FINISH` it builds each vCPU's VMSA
//! from the registers the VMM set with `KVM_SET_REGS`, `KVM_SET_SREGS`, `KVM_SET_FPU`,
//! `KVM_SET_XCRS`, `KVM_SET_DEBUGREGS` and `KVM_SET_MSRS` (Linux `arch/x86/kvm/svm/sev.c`,
//! `sev_es_sync_vmsa`), places it at GPA [`KVM_VMSA_GPA`] and measures it. [`KvmSnpVcpuState`]
//! contains exactly the registers that igvmm programs, the same set that QEMU's IGVM loader accepts
//! (`target/i386/sev.c`, `check_vmsa_supported`). The SEV-SNP backend programs KVM from this
//! struct and the measurement model hashes [`KvmSnpVcpuState::to_kvm_vmsa`], so both use the
//! same values.
//!
//! KVM changes some values on the way in (Linux 6.12 to 7.3, `arch/x86/kvm/svm/svm.c`):
//! `EFER.SVME` is set, `CR0.CD` and `CR0.NW` are cleared (the default `KVM_X86_QUIRK_CD_NW_CLEARED`),
//! the host's `CR4.MCE` is set, `RFLAGS` bit 1 is set, CPL is taken from `SS.DPL`, the GDTR and
//! IDTR selector and attribute fields are zero, and `SEV_FEATURES` gets `SNP_ACTIVE`.
//! [`KvmSnpVcpuState::to_kvm_vmsa`] applies these changes. The model assumes that the host runs
//! with `CR4.MCE` set, as every SEV-SNP host does.

use igvm::snp_defs::{SevFeatures, SevSelector, SevVmsa};
use zerocopy::{FromZeros, IntoBytes};

/// The GPA at which KVM places and measures every VMSA.
pub const KVM_VMSA_GPA: u64 = 0xFFFF_FFFF_F000;

/// `EFER.SVME`: KVM sets it in every SVM guest's EFER.
pub const EFER_SVME: u64 = 1 << 12;
/// `CR0.CD`, cleared by KVM while `KVM_X86_QUIRK_CD_NW_CLEARED` is enabled.
pub const CR0_CD: u64 = 1 << 30;
/// `CR0.NW`, cleared by KVM while `KVM_X86_QUIRK_CD_NW_CLEARED` is enabled.
pub const CR0_NW: u64 = 1 << 29;
/// `CR4.MCE`, copied from the host's CR4 by KVM.
pub const CR4_MCE: u64 = 1 << 6;
/// `RFLAGS` bit 1, always set.
pub const RFLAGS_FIXED: u64 = 1 << 1;
/// `DR7` bit 10, the only bit `sev_es_sync_vmsa` accepts.
pub const DR7_FIXED_1: u64 = 1 << 10;

/// `SEV_FEATURES` bit 0 (`SNP_ACTIVE`); KVM adds it for every SEV-SNP VMSA.
pub const SEV_FEATURE_SNP_ACTIVE: u64 = 1 << 0;
/// `SEV_FEATURES` bit 3 (`RESTRICTED_INJECTION`).
pub const SEV_FEATURE_RESTRICTED_INJECTION: u64 = 1 << 3;
/// `SEV_FEATURES` bit 4 (`ALTERNATE_INJECTION`).
pub const SEV_FEATURE_ALTERNATE_INJECTION: u64 = 1 << 4;
/// `SEV_FEATURES` bit 5 (`DEBUG_SWAP`).
pub const SEV_FEATURE_DEBUG_SWAP: u64 = 1 << 5;
/// `SEV_FEATURES` bit 9 (`SECURE_TSC`).
pub const SEV_FEATURE_SECURE_TSC: u64 = 1 << 9;
/// The `SEV_FEATURES` bits that `KVM_SEV_INIT2.vmsa_features` can carry (Linux
/// `arch/x86/include/asm/svm.h`, `SVM_SEV_FEAT_*`). Which of them a host accepts is reported by
/// the `KVM_X86_SEV_VMSA_FEATURES` attribute.
pub const KVM_SEV_FEATURES_DEFINED: u64 = SEV_FEATURE_SNP_ACTIVE
    | SEV_FEATURE_RESTRICTED_INJECTION
    | SEV_FEATURE_ALTERNATE_INJECTION
    | SEV_FEATURE_DEBUG_SWAP
    | SEV_FEATURE_SECURE_TSC;

/// The default `IA32_PAT` value after reset.
pub const RESET_PAT: u64 = 0x0007_0406_0007_0406;
/// The default x87 control word after reset (`FNINIT`).
pub const RESET_X87_FCW: u16 = 0x37F;
/// The default `MXCSR` after reset.
pub const RESET_MXCSR: u32 = 0x1F80;

/// The attribute bits KVM can express for a segment (type, S, DPL, P, AVL, L, D/B, G).
const SEGMENT_ATTRIB_MASK: u16 = 0x0FFF;
/// `P` (present) bit of a VMCB segment attribute.
const SEGMENT_ATTRIB_PRESENT: u16 = 1 << 7;

/// A reason why a file's VMSA cannot be launched on KVM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmsaError {
    /// KVM places every VMSA at [`KVM_VMSA_GPA`]; a file VMSA elsewhere cannot be reproduced.
    #[error("the VMSA is at GPA {gpa:#x}, but KVM always places the VMSA at {KVM_VMSA_GPA:#x}")]
    Gpa {
        /// The GPA the file gives.
        gpa: u64,
    },
    /// A field that a KVM launch cannot set is not zero.
    #[error(
        "VMSA field `{field}` is {value:#x}, but KVM builds the VMSA from vCPU registers and cannot \
         set this field; it must be zero"
    )]
    NotExpressible {
        /// Name of the `SevVmsa` field.
        field: &'static str,
        /// Its value (the first 8 bytes for wider fields).
        value: u64,
    },
    /// A field has a value that KVM rejects or cannot represent.
    #[error("VMSA field `{field}` is {value:#x}: {reason}")]
    InvalidValue {
        /// Name of the `SevVmsa` field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// KVM's requirement.
        reason: &'static str,
    },
}

/// A segment register as KVM stores it in the VMCB: selector, attribute (VMCB format), limit and
/// base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentRegister {
    /// The selector.
    pub selector: u16,
    /// Attribute bits in VMCB order: type (3:0), S (4), DPL (6:5), P (7), AVL (8), L (9), D/B (10),
    /// G (11).
    pub attrib: u16,
    /// The limit in bytes.
    pub limit: u32,
    /// The base address.
    pub base: u64,
}

impl SegmentRegister {
    /// Returns the descriptor privilege level.
    pub fn dpl(&self) -> u8 {
        ((self.attrib >> 5) & 3) as u8
    }

    /// Whether the present bit is set.
    pub fn present(&self) -> bool {
        self.attrib & SEGMENT_ATTRIB_PRESENT != 0
    }

    fn to_vmsa(self) -> SevSelector {
        SevSelector {
            selector: self.selector,
            attrib: self.attrib,
            limit: self.limit,
            base: self.base,
        }
    }
}

/// A descriptor-table register (GDTR or IDTR): KVM keeps only base and limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DescriptorTable {
    /// The base address.
    pub base: u64,
    /// The limit; the field of `struct kvm_dtable` has 16 bits.
    pub limit: u16,
}

/// The state of one SEV-SNP vCPU that igvmm programs into KVM before `LAUNCH_FINISH`.
///
/// Values are what the VMM passes to KVM; [`Self::to_kvm_vmsa`] models what KVM then writes into
/// the VMSA. Every other VMSA field is zero in KVM's VMSA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvmSnpVcpuState {
    /// ES (`KVM_SET_SREGS`).
    pub es: SegmentRegister,
    /// CS.
    pub cs: SegmentRegister,
    /// SS; its DPL becomes the CPL.
    pub ss: SegmentRegister,
    /// DS.
    pub ds: SegmentRegister,
    /// FS.
    pub fs: SegmentRegister,
    /// GS.
    pub gs: SegmentRegister,
    /// LDTR.
    pub ldtr: SegmentRegister,
    /// TR.
    pub tr: SegmentRegister,
    /// GDTR.
    pub gdtr: DescriptorTable,
    /// IDTR.
    pub idtr: DescriptorTable,
    /// EFER as passed to `KVM_SET_SREGS`.
    pub efer: u64,
    /// CR0 as passed to `KVM_SET_SREGS`.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4 as passed to `KVM_SET_SREGS`.
    pub cr4: u64,
    /// XCR0 (`KVM_SET_XCRS`).
    pub xcr0: u64,
    /// DR6 (`KVM_SET_DEBUGREGS`).
    pub dr6: u64,
    /// DR7 (`KVM_SET_DEBUGREGS`); only bit 10 may be set.
    pub dr7: u64,
    /// RAX (`KVM_SET_REGS`).
    pub rax: u64,
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RSP.
    pub rsp: u64,
    /// RBP.
    pub rbp: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
    /// RIP.
    pub rip: u64,
    /// RFLAGS as passed to `KVM_SET_REGS`.
    pub rflags: u64,
    /// `IA32_PAT` (`KVM_SET_MSRS`, MSR 0x277).
    pub g_pat: u64,
    /// The x87 control word (`KVM_SET_FPU`).
    pub x87_fcw: u16,
    /// MXCSR (`KVM_SET_FPU`).
    pub mxcsr: u32,
    /// `SEV_FEATURES` of the VM: `KVM_SEV_INIT2.vmsa_features` plus `SNP_ACTIVE`. KVM applies one
    /// value to every vCPU.
    pub sev_features: u64,
}

/// Checks that a field KVM cannot set is zero; `$field` is a field path of `SevVmsa`.
macro_rules! require_zero {
    ($vmsa:expr, $($field:ident).+) => {{
        let bytes = $vmsa.$($field).+.as_bytes();
        if bytes.iter().any(|byte| *byte != 0) {
            return Err(VmsaError::NotExpressible {
                field: stringify!($($field).+),
                value: first_u64(bytes),
            });
        }
    }};
}

/// Returns the first (up to) 8 bytes as a little-endian number, for error messages.
fn first_u64(bytes: &[u8]) -> u64 {
    let mut value = [0u8; 8];
    for (target, byte) in value.iter_mut().zip(bytes) {
        *target = *byte;
    }
    u64::from_le_bytes(value)
}

impl KvmSnpVcpuState {
    /// Extracts the KVM-settable state from a file's VMSA.
    ///
    /// Rejects a VMSA at any GPA other than [`KVM_VMSA_GPA`], any non-zero field outside the set
    /// that igvmm programs (the error names the field), and values KVM refuses or cannot hold:
    /// DR7 bits other than bit 10, upper halves of DR6/DR7, XCR0 without x87, segment attribute
    /// bits 15:12, GDTR/IDTR selector or attribute, limits above 0xFFFF for GDTR/IDTR and
    /// `SEV_FEATURES` bits that `KVM_SEV_INIT2` has no name for.
    pub fn from_file_vmsa(vmsa: &SevVmsa, gpa: u64) -> Result<Self, VmsaError> {
        if gpa != KVM_VMSA_GPA {
            return Err(VmsaError::Gpa { gpa });
        }
        Self::check_not_expressible(vmsa)?;

        let es = segment("es", &vmsa.es)?;
        let cs = segment("cs", &vmsa.cs)?;
        let ss = segment("ss", &vmsa.ss)?;
        let ds = segment("ds", &vmsa.ds)?;
        let fs = segment("fs", &vmsa.fs)?;
        let gs = segment("gs", &vmsa.gs)?;
        let ldtr = segment("ldtr", &vmsa.ldtr)?;
        let tr = segment("tr", &vmsa.tr)?;
        let gdtr = descriptor_table("gdtr", &vmsa.gdtr)?;
        let idtr = descriptor_table("idtr", &vmsa.idtr)?;

        if vmsa.dr7 & !DR7_FIXED_1 != 0 {
            return Err(VmsaError::InvalidValue {
                field: "dr7",
                value: vmsa.dr7,
                reason: "KVM fails LAUNCH_FINISH when DR7 has bits other than bit 10",
            });
        }
        if vmsa.dr6 >> 32 != 0 {
            return Err(VmsaError::InvalidValue {
                field: "dr6",
                value: vmsa.dr6,
                reason: "KVM_SET_DEBUGREGS rejects bits 63:32",
            });
        }
        if vmsa.xcr0 & 1 == 0 {
            return Err(VmsaError::InvalidValue {
                field: "xcr0",
                value: vmsa.xcr0,
                reason: "KVM_SET_XCRS requires bit 0 (x87)",
            });
        }
        let sev_features = vmsa.sev_features.into_bits();
        if sev_features & !KVM_SEV_FEATURES_DEFINED != 0 {
            return Err(VmsaError::InvalidValue {
                field: "sev_features",
                value: sev_features,
                reason: "KVM_SEV_INIT2 accepts only SNP_ACTIVE (0), RESTRICTED_INJECTION (3), \
                         ALTERNATE_INJECTION (4), DEBUG_SWAP (5) and SECURE_TSC (9)",
            });
        }

        Ok(Self {
            es,
            cs,
            ss,
            ds,
            fs,
            gs,
            ldtr,
            tr,
            gdtr,
            idtr,
            efer: vmsa.efer,
            cr0: vmsa.cr0,
            cr3: vmsa.cr3,
            cr4: vmsa.cr4,
            xcr0: vmsa.xcr0,
            dr6: vmsa.dr6,
            dr7: vmsa.dr7,
            rax: vmsa.rax,
            rbx: vmsa.rbx,
            rcx: vmsa.rcx,
            rdx: vmsa.rdx,
            rsi: vmsa.rsi,
            rdi: vmsa.rdi,
            rsp: vmsa.rsp,
            rbp: vmsa.rbp,
            r8: vmsa.r8,
            r9: vmsa.r9,
            r10: vmsa.r10,
            r11: vmsa.r11,
            r12: vmsa.r12,
            r13: vmsa.r13,
            r14: vmsa.r14,
            r15: vmsa.r15,
            rip: vmsa.rip,
            rflags: vmsa.rflags,
            g_pat: vmsa.pat,
            x87_fcw: vmsa.x87_fcw,
            mxcsr: vmsa.mxcsr,
            sev_features: sev_features | SEV_FEATURE_SNP_ACTIVE,
        })
    }

    /// Rejects every non-zero field outside the KVM-settable set. `cpl` is allowed, because KVM
    /// derives it from SS.DPL.
    fn check_not_expressible(vmsa: &SevVmsa) -> Result<(), VmsaError> {
        require_zero!(vmsa, pl0_ssp);
        require_zero!(vmsa, pl1_ssp);
        require_zero!(vmsa, pl2_ssp);
        require_zero!(vmsa, pl3_ssp);
        require_zero!(vmsa, u_cet);
        require_zero!(vmsa, vmsa_reserved1);
        require_zero!(vmsa, vmpl);
        require_zero!(vmsa, vmsa_reserved2);
        require_zero!(vmsa, vmsa_reserved3);
        require_zero!(vmsa, xss);
        require_zero!(vmsa, dr0);
        require_zero!(vmsa, dr1);
        require_zero!(vmsa, dr2);
        require_zero!(vmsa, dr3);
        require_zero!(vmsa, dr0_addr_mask);
        require_zero!(vmsa, dr1_addr_mask);
        require_zero!(vmsa, dr2_addr_mask);
        require_zero!(vmsa, dr3_addr_mask);
        require_zero!(vmsa, vmsa_reserved4);
        require_zero!(vmsa, s_cet);
        require_zero!(vmsa, ssp);
        require_zero!(vmsa, interrupt_ssp_table_addr);
        require_zero!(vmsa, star);
        require_zero!(vmsa, lstar);
        require_zero!(vmsa, cstar);
        require_zero!(vmsa, sfmask);
        require_zero!(vmsa, kernel_gs_base);
        require_zero!(vmsa, sysenter_cs);
        require_zero!(vmsa, sysenter_esp);
        require_zero!(vmsa, sysenter_eip);
        require_zero!(vmsa, cr2);
        require_zero!(vmsa, vmsa_reserved5);
        require_zero!(vmsa, dbgctl);
        require_zero!(vmsa, last_branch_from_ip);
        require_zero!(vmsa, last_branch_to_ip);
        require_zero!(vmsa, last_excp_from_ip);
        require_zero!(vmsa, last_excp_to_ip);
        require_zero!(vmsa, vmsa_reserved6);
        require_zero!(vmsa, spec_ctrl);
        // PKRU, TSC_AUX, TSC_SCALE and TSC_OFFSET live here in the firmware layout.
        require_zero!(vmsa, vmsa_reserved7);
        require_zero!(vmsa, vmsa_reserved8);
        require_zero!(vmsa, vmsa_reserved9);
        require_zero!(vmsa, exit_info1);
        require_zero!(vmsa, exit_info2);
        require_zero!(vmsa, exit_int_info);
        require_zero!(vmsa, next_rip);
        require_zero!(vmsa, v_intr_cntrl);
        require_zero!(vmsa, guest_error_code);
        require_zero!(vmsa, virtual_tom);
        require_zero!(vmsa, tlb_id);
        require_zero!(vmsa, pcpu_id);
        require_zero!(vmsa, event_inject);
        require_zero!(vmsa, xsave_valid_bitmap);
        require_zero!(vmsa, x87dp);
        require_zero!(vmsa, x87_ftw);
        require_zero!(vmsa, x87_fsw);
        require_zero!(vmsa, x87_op);
        require_zero!(vmsa, x87_ds);
        require_zero!(vmsa, x87_cs);
        require_zero!(vmsa, x87_rip);
        require_zero!(vmsa, x87_registers1);
        require_zero!(vmsa, x87_registers2);
        require_zero!(vmsa, x87_registers3);
        require_zero!(vmsa, xmm_registers);
        require_zero!(vmsa, ymm_registers);
        require_zero!(vmsa, vmsa_padding);
        require_zero!(vmsa, gdtr.selector);
        require_zero!(vmsa, gdtr.attrib);
        require_zero!(vmsa, idtr.selector);
        require_zero!(vmsa, idtr.attrib);

        // The named checks above cover every field outside the settable set. This pass catches a
        // field that a future `SevVmsa` layout adds.
        let mut rest = *vmsa;
        Self::clear_settable_fields(&mut rest);
        if let Some(offset) = rest.as_bytes().iter().position(|byte| *byte != 0) {
            return Err(VmsaError::NotExpressible {
                field: "byte at this offset",
                value: offset as u64,
            });
        }
        Ok(())
    }

    /// Zeroes the fields that igvmm programs (and `cpl`, which KVM derives).
    fn clear_settable_fields(vmsa: &mut SevVmsa) {
        let zero_selector = SevSelector {
            selector: 0,
            attrib: 0,
            limit: 0,
            base: 0,
        };
        for selector in [
            &mut vmsa.es,
            &mut vmsa.cs,
            &mut vmsa.ss,
            &mut vmsa.ds,
            &mut vmsa.fs,
            &mut vmsa.gs,
            &mut vmsa.ldtr,
            &mut vmsa.tr,
        ] {
            *selector = zero_selector;
        }
        vmsa.gdtr.base = 0;
        vmsa.gdtr.limit = 0;
        vmsa.idtr.base = 0;
        vmsa.idtr.limit = 0;
        vmsa.cpl = 0;
        for register in [
            &mut vmsa.efer,
            &mut vmsa.cr0,
            &mut vmsa.cr3,
            &mut vmsa.cr4,
            &mut vmsa.xcr0,
            &mut vmsa.dr6,
            &mut vmsa.dr7,
            &mut vmsa.rax,
            &mut vmsa.rbx,
            &mut vmsa.rcx,
            &mut vmsa.rdx,
            &mut vmsa.rsi,
            &mut vmsa.rdi,
            &mut vmsa.rsp,
            &mut vmsa.rbp,
            &mut vmsa.r8,
            &mut vmsa.r9,
            &mut vmsa.r10,
            &mut vmsa.r11,
            &mut vmsa.r12,
            &mut vmsa.r13,
            &mut vmsa.r14,
            &mut vmsa.r15,
            &mut vmsa.rip,
            &mut vmsa.rflags,
            &mut vmsa.pat,
        ] {
            *register = 0;
        }
        vmsa.x87_fcw = 0;
        vmsa.mxcsr = 0;
        vmsa.sev_features = SevFeatures::from_bits(0);
    }

    /// Returns the state of a vCPU that the VMM leaves at reset, as KVM's reset code sets it up
    /// (Linux `arch/x86/kvm/svm/svm.c`, `init_vmcb`, and `kvm_vcpu_reset`): real mode at
    /// `F000:FFF0`, and RDX contains the processor signature `cpuid_1_eax` (CPUID leaf 1, EAX, of the
    /// vCPU). `sev_features` is the VM's `KVM_SEV_INIT2.vmsa_features`.
    pub fn reset(cpuid_1_eax: u32, sev_features: u64) -> Self {
        let data = SegmentRegister {
            selector: 0,
            attrib: 0x93,
            limit: 0xFFFF,
            base: 0,
        };
        Self {
            es: data,
            cs: SegmentRegister {
                selector: 0xF000,
                attrib: 0x9B,
                limit: 0xFFFF,
                base: 0xFFFF_0000,
            },
            ss: data,
            ds: data,
            fs: data,
            gs: data,
            ldtr: SegmentRegister {
                selector: 0,
                attrib: 0x82,
                limit: 0xFFFF,
                base: 0,
            },
            tr: SegmentRegister {
                selector: 0,
                attrib: 0x8B,
                limit: 0xFFFF,
                base: 0,
            },
            gdtr: DescriptorTable {
                base: 0,
                limit: 0xFFFF,
            },
            idtr: DescriptorTable {
                base: 0,
                limit: 0xFFFF,
            },
            efer: 0,
            // CD, NW and ET: the architectural reset value. KVM clears CD and NW.
            cr0: 0x6000_0010,
            cr3: 0,
            cr4: 0,
            xcr0: 1,
            dr6: 0xFFFF_0FF0,
            dr7: DR7_FIXED_1,
            rax: 0,
            rbx: 0,
            rcx: 0,
            rdx: u64::from(cpuid_1_eax),
            rsi: 0,
            rdi: 0,
            rsp: 0,
            rbp: 0,
            r8: 0,
            r9: 0,
            r10: 0,
            r11: 0,
            r12: 0,
            r13: 0,
            r14: 0,
            r15: 0,
            rip: 0xFFF0,
            rflags: RFLAGS_FIXED,
            g_pat: RESET_PAT,
            x87_fcw: RESET_X87_FCW,
            mxcsr: RESET_MXCSR,
            sev_features: sev_features | SEV_FEATURE_SNP_ACTIVE,
        }
    }

    /// Returns the `KVM_SEV_INIT2.vmsa_features` value: the features without `SNP_ACTIVE`, which
    /// KVM adds itself.
    pub fn init2_vmsa_features(&self) -> u64 {
        self.sev_features & !SEV_FEATURE_SNP_ACTIVE
    }

    /// Returns the current privilege level KVM records: SS.DPL.
    pub fn cpl(&self) -> u8 {
        self.ss.dpl()
    }

    /// Builds the VMSA that KVM's `sev_es_sync_vmsa` produces from this state.
    pub fn to_kvm_vmsa(&self) -> SevVmsa {
        let mut vmsa = SevVmsa::new_zeroed();
        vmsa.es = self.es.to_vmsa();
        vmsa.cs = self.cs.to_vmsa();
        vmsa.ss = self.ss.to_vmsa();
        vmsa.ds = self.ds.to_vmsa();
        vmsa.fs = self.fs.to_vmsa();
        vmsa.gs = self.gs.to_vmsa();
        vmsa.ldtr = self.ldtr.to_vmsa();
        vmsa.tr = self.tr.to_vmsa();
        vmsa.gdtr.base = self.gdtr.base;
        vmsa.gdtr.limit = u32::from(self.gdtr.limit);
        vmsa.idtr.base = self.idtr.base;
        vmsa.idtr.limit = u32::from(self.idtr.limit);
        vmsa.cpl = self.cpl();
        vmsa.efer = self.efer | EFER_SVME;
        vmsa.cr0 = self.cr0 & !(CR0_CD | CR0_NW);
        vmsa.cr3 = self.cr3;
        vmsa.cr4 = self.cr4 | CR4_MCE;
        vmsa.xcr0 = self.xcr0;
        vmsa.dr6 = self.dr6;
        vmsa.dr7 = self.dr7;
        vmsa.rax = self.rax;
        vmsa.rbx = self.rbx;
        vmsa.rcx = self.rcx;
        vmsa.rdx = self.rdx;
        vmsa.rsi = self.rsi;
        vmsa.rdi = self.rdi;
        vmsa.rsp = self.rsp;
        vmsa.rbp = self.rbp;
        vmsa.r8 = self.r8;
        vmsa.r9 = self.r9;
        vmsa.r10 = self.r10;
        vmsa.r11 = self.r11;
        vmsa.r12 = self.r12;
        vmsa.r13 = self.r13;
        vmsa.r14 = self.r14;
        vmsa.r15 = self.r15;
        vmsa.rip = self.rip;
        vmsa.rflags = self.rflags | RFLAGS_FIXED;
        vmsa.pat = self.g_pat;
        vmsa.x87_fcw = self.x87_fcw;
        vmsa.mxcsr = self.mxcsr;
        vmsa.sev_features = SevFeatures::from_bits(self.sev_features | SEV_FEATURE_SNP_ACTIVE);
        vmsa
    }

    /// Lists the fields where KVM's VMSA differs from the file's VMSA `file`, as
    /// `(field, file value, KVM value)`. An empty list means the file already contains KVM's values.
    pub fn kvm_adjustments(&self, file: &SevVmsa) -> Vec<(&'static str, u64, u64)> {
        let kvm = self.to_kvm_vmsa();
        let mut changes = Vec::new();
        let pairs: [(&'static str, u64, u64); 6] = [
            ("efer", file.efer, kvm.efer),
            ("cr0", file.cr0, kvm.cr0),
            ("cr4", file.cr4, kvm.cr4),
            ("rflags", file.rflags, kvm.rflags),
            ("cpl", u64::from(file.cpl), u64::from(kvm.cpl)),
            (
                "sev_features",
                file.sev_features.into_bits(),
                kvm.sev_features.into_bits(),
            ),
        ];
        for (field, file_value, kvm_value) in pairs {
            if file_value != kvm_value {
                changes.push((field, file_value, kvm_value));
            }
        }
        changes
    }
}

fn segment(name: &'static str, selector: &SevSelector) -> Result<SegmentRegister, VmsaError> {
    if selector.attrib & !SEGMENT_ATTRIB_MASK != 0 {
        return Err(VmsaError::InvalidValue {
            field: name,
            value: u64::from(selector.attrib),
            reason: "segment attribute bits 15:12 have no kvm_segment field",
        });
    }
    Ok(SegmentRegister {
        selector: selector.selector,
        attrib: selector.attrib,
        limit: selector.limit,
        base: selector.base,
    })
}

fn descriptor_table(
    name: &'static str,
    selector: &SevSelector,
) -> Result<DescriptorTable, VmsaError> {
    let limit = u16::try_from(selector.limit).map_err(|_| VmsaError::InvalidValue {
        field: name,
        value: u64::from(selector.limit),
        reason: "struct kvm_dtable has a 16-bit limit",
    })?;
    Ok(DescriptorTable {
        base: selector.base,
        limit,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// A field name and a change that sets that field.
    type FieldCase = (&'static str, fn(&mut SevVmsa));

    /// Returns a 64-bit VMSA in KVM's form, like the ones COCONUT-SVSM's igvmbuilder writes.
    fn long_mode_vmsa() -> SevVmsa {
        let mut vmsa = SevVmsa::new_zeroed();
        let code = SevSelector {
            selector: 8,
            attrib: 0xA9B,
            limit: 0xFFFF_FFFF,
            base: 0,
        };
        let data = SevSelector {
            selector: 0x10,
            attrib: 0xA93,
            limit: 0xFFFF_FFFF,
            base: 0,
        };
        vmsa.cs = code;
        vmsa.es = data;
        vmsa.ss = data;
        vmsa.ds = data;
        vmsa.fs = data;
        vmsa.gs = data;
        vmsa.efer = 0x1D00;
        vmsa.cr0 = 0x8000_0031;
        vmsa.cr3 = 0x1000;
        vmsa.cr4 = 0x60;
        vmsa.xcr0 = 1;
        vmsa.rflags = 2;
        vmsa.rip = 0x10_0000;
        vmsa.rsp = 0x8000;
        vmsa.pat = RESET_PAT;
        vmsa.sev_features = SevFeatures::from_bits(SEV_FEATURE_SNP_ACTIVE);
        vmsa
    }

    #[test]
    fn kvm_form_vmsa_round_trips() {
        let vmsa = long_mode_vmsa();
        let state = KvmSnpVcpuState::from_file_vmsa(&vmsa, KVM_VMSA_GPA).unwrap();
        assert_eq!(state.to_kvm_vmsa().as_bytes(), vmsa.as_bytes());
        assert!(state.kvm_adjustments(&vmsa).is_empty());
    }

    #[test]
    fn rejects_vmsa_at_other_gpa() {
        let error = KvmSnpVcpuState::from_file_vmsa(&long_mode_vmsa(), 0x8FFF000).unwrap_err();
        assert_eq!(error, VmsaError::Gpa { gpa: 0x8FFF000 });
    }

    #[test]
    fn rejects_virtual_tom() {
        let mut vmsa = long_mode_vmsa();
        vmsa.virtual_tom = 0x4000_0000_0000;
        let error = KvmSnpVcpuState::from_file_vmsa(&vmsa, KVM_VMSA_GPA).unwrap_err();
        assert_eq!(
            error,
            VmsaError::NotExpressible {
                field: "virtual_tom",
                value: 0x4000_0000_0000
            }
        );
    }

    #[test]
    fn rejects_cr2_vmpl_and_msrs() {
        let cases: [FieldCase; 6] = [
            ("cr2", |v| v.cr2 = 0x1234),
            ("vmpl", |v| v.vmpl = 1),
            ("lstar", |v| v.lstar = 0xFFFF_8000_0000_0000),
            ("xss", |v| v.xss = 1),
            ("xmm_registers", |v| v.xmm_registers[3].high = 5),
            ("x87_ftw", |v| v.x87_ftw = 0x5555),
        ];
        for (field, mutate) in cases {
            let mut vmsa = long_mode_vmsa();
            mutate(&mut vmsa);
            let error = KvmSnpVcpuState::from_file_vmsa(&vmsa, KVM_VMSA_GPA).unwrap_err();
            match error {
                VmsaError::NotExpressible { field: named, .. } => assert_eq!(named, field),
                other => panic!("{field}: unexpected error {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_gdtr_selector_and_attrib() {
        let mut vmsa = long_mode_vmsa();
        vmsa.gdtr.selector = 0x18;
        let error = KvmSnpVcpuState::from_file_vmsa(&vmsa, KVM_VMSA_GPA).unwrap_err();
        assert!(matches!(
            error,
            VmsaError::NotExpressible {
                field: "gdtr.selector",
                value: 0x18
            }
        ));
        let mut vmsa = long_mode_vmsa();
        vmsa.idtr.attrib = 0x82;
        let error = KvmSnpVcpuState::from_file_vmsa(&vmsa, KVM_VMSA_GPA).unwrap_err();
        assert!(matches!(
            error,
            VmsaError::NotExpressible {
                field: "idtr.attrib",
                ..
            }
        ));
    }

    #[test]
    fn rejects_dr7_bits_kvm_refuses() {
        let mut vmsa = long_mode_vmsa();
        vmsa.dr7 = 0x401;
        let error = KvmSnpVcpuState::from_file_vmsa(&vmsa, KVM_VMSA_GPA).unwrap_err();
        assert!(matches!(
            error,
            VmsaError::InvalidValue {
                field: "dr7",
                value: 0x401,
                ..
            }
        ));
        vmsa.dr7 = DR7_FIXED_1;
        assert!(KvmSnpVcpuState::from_file_vmsa(&vmsa, KVM_VMSA_GPA).is_ok());
    }

    #[test]
    fn rejects_invalid_register_values() {
        let cases: [FieldCase; 5] = [
            ("dr6", |v| v.dr6 = 1 << 40),
            ("xcr0", |v| v.xcr0 = 0),
            ("sev_features", |v| {
                v.sev_features = SevFeatures::from_bits(0x3)
            }),
            ("cs", |v| v.cs.attrib = 0x1A9B),
            ("gdtr", |v| v.gdtr.limit = 0x1_0000),
        ];
        for (field, mutate) in cases {
            let mut vmsa = long_mode_vmsa();
            mutate(&mut vmsa);
            let error = KvmSnpVcpuState::from_file_vmsa(&vmsa, KVM_VMSA_GPA).unwrap_err();
            match error {
                VmsaError::InvalidValue { field: named, .. } => assert_eq!(named, field),
                other => panic!("{field}: unexpected error {other:?}"),
            }
        }
    }

    #[test]
    fn every_unsettable_byte_is_named() {
        // Flip each byte of the VMSA alone. A byte that belongs to a settable field is accepted
        // (or rejected for its value); any other byte must be rejected with a field name rather
        // than by the fallback offset check.
        let base = long_mode_vmsa();
        for offset in 0..4096 {
            let mut bytes = base.as_bytes().to_vec();
            bytes[offset] ^= 0x01;
            let vmsa = <SevVmsa as zerocopy::FromBytes>::read_from_bytes(&bytes).unwrap();
            if let Err(VmsaError::NotExpressible { field, value }) =
                KvmSnpVcpuState::from_file_vmsa(&vmsa, KVM_VMSA_GPA)
            {
                assert_ne!(
                    field, "byte at this offset",
                    "offset {offset:#x} ({value:#x}) is not covered by a named check"
                );
            }
        }
    }

    #[test]
    fn kvm_changes_are_modeled() {
        let mut vmsa = long_mode_vmsa();
        vmsa.efer = 0xD00;
        vmsa.cr0 = 0xE000_0031;
        vmsa.cr4 = 0x20;
        vmsa.rflags = 0;
        vmsa.cpl = 3;
        vmsa.sev_features = SevFeatures::from_bits(SEV_FEATURE_DEBUG_SWAP);
        let state = KvmSnpVcpuState::from_file_vmsa(&vmsa, KVM_VMSA_GPA).unwrap();
        let kvm = state.to_kvm_vmsa();
        assert_eq!(kvm.efer, 0x1D00);
        assert_eq!(kvm.cr0, 0x8000_0031);
        assert_eq!(kvm.cr4, 0x60);
        assert_eq!(kvm.rflags, 2);
        assert_eq!(kvm.cpl, 0);
        assert_eq!(kvm.sev_features.into_bits(), 0x21);
        assert_eq!(state.init2_vmsa_features(), 0x20);
        let fields: Vec<&str> = state
            .kvm_adjustments(&vmsa)
            .iter()
            .map(|(field, _, _)| *field)
            .collect();
        assert_eq!(
            fields,
            ["efer", "cr0", "cr4", "rflags", "cpl", "sev_features"]
        );
    }

    #[test]
    fn reset_state_matches_kvm_reset_vmsa() {
        let kvm = KvmSnpVcpuState::reset(0x00A0_0F11, 0).to_kvm_vmsa();
        assert_eq!((kvm.cs.selector, kvm.cs.attrib), (0xF000, 0x9B));
        assert_eq!((kvm.cs.limit, kvm.cs.base), (0xFFFF, 0xFFFF_0000));
        assert_eq!(
            (kvm.ds.attrib, kvm.ldtr.attrib, kvm.tr.attrib),
            (0x93, 0x82, 0x8B)
        );
        assert_eq!((kvm.gdtr.limit, kvm.idtr.limit), (0xFFFF, 0xFFFF));
        assert_eq!(kvm.efer, 0x1000);
        assert_eq!(kvm.cr0, 0x10);
        assert_eq!(kvm.cr4, 0x40);
        assert_eq!((kvm.dr6, kvm.dr7), (0xFFFF_0FF0, 0x400));
        assert_eq!((kvm.rip, kvm.rflags, kvm.rdx), (0xFFF0, 2, 0x00A0_0F11));
        assert_eq!(kvm.pat, 0x0007_0406_0007_0406);
        assert_eq!((kvm.xcr0, kvm.mxcsr, kvm.x87_fcw), (1, 0x1F80, 0x37F));
        assert_eq!(kvm.sev_features.into_bits(), 1);
    }
}
