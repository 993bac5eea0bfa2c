//! KVM confidential-VM ABI that kvm-bindings 0.14 lacks, and checks of what it has.
//!
//! Layouts and numbers follow the Linux 6.16 to 7.3 UAPI headers (`include/uapi/linux/kvm.h`,
//! `arch/x86/include/uapi/asm/kvm.h`, `include/uapi/linux/kvm_para.h`): the TDX command,
//! capability, init-VM and init-memory-region structures, the TDX exit of `struct kvm_run`, the
//! SNP CPUID page of the SEV-SNP firmware ABI, and the ioctls that kvm-ioctls 0.25 does not wrap
//! (vCPU-scope `KVM_MEMORY_ENCRYPT_OP`, system-scope `KVM_GET_DEVICE_ATTR`, VM-scope
//! `KVM_SET_TSC_KHZ`). Every struct has compile-time size and offset assertions, and every ioctl
//! number is computed from its `_IOC` fields and asserted against the header value.

use std::mem::{offset_of, size_of};
use std::os::fd::AsRawFd;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_create_guest_memfd, kvm_device_attr, kvm_enable_cap,
    kvm_memory_attributes, kvm_sev_cmd, kvm_sev_init, kvm_sev_snp_launch_finish,
    kvm_sev_snp_launch_start, kvm_sev_snp_launch_update, kvm_userspace_memory_region2,
};

// ---------------------------------------------------------------------------------------------
// ioctl numbers

const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
/// The KVM ioctl type byte.
const KVMIO: u64 = 0xAE;

/// Builds an ioctl number from its fields, as the Linux `_IOC` macro does on x86.
const fn ioc(direction: u64, number: u64, size: usize) -> u64 {
    (direction << 30) | ((size as u64) << 16) | (KVMIO << 8) | number
}

/// `KVM_CREATE_VM`, `_IO(KVMIO, 0x01)`; the argument is the VM type.
pub const KVM_CREATE_VM: u64 = ioc(IOC_NONE, 0x01, 0);
/// `KVM_ENABLE_CAP`, `_IOW(KVMIO, 0xa3, struct kvm_enable_cap)`.
pub const KVM_ENABLE_CAP: u64 = ioc(IOC_WRITE, 0xA3, size_of::<kvm_enable_cap>());
/// `KVM_SET_TSC_KHZ`, `_IO(KVMIO, 0xa2)`; on the VM fd it sets the default of every vCPU.
pub const KVM_SET_TSC_KHZ: u64 = ioc(IOC_NONE, 0xA2, 0);
/// `KVM_MEMORY_ENCRYPT_OP`, `_IOWR(KVMIO, 0xba, unsigned long)`: the size field is that of a
/// pointer, not of the command structure. The same number serves the VM and the vCPU fds.
pub const KVM_MEMORY_ENCRYPT_OP: u64 = ioc(IOC_READ | IOC_WRITE, 0xBA, size_of::<u64>());
/// `KVM_GET_DEVICE_ATTR`, `_IOW(KVMIO, 0xe2, struct kvm_device_attr)`, issued on `/dev/kvm` for
/// the `KVM_X86_GRP_SEV` attributes.
pub const KVM_GET_DEVICE_ATTR: u64 = ioc(IOC_WRITE, 0xE2, size_of::<kvm_device_attr>());
/// `KVM_SET_USER_MEMORY_REGION2`, `_IOW(KVMIO, 0x49, struct kvm_userspace_memory_region2)`.
pub const KVM_SET_USER_MEMORY_REGION2: u64 =
    ioc(IOC_WRITE, 0x49, size_of::<kvm_userspace_memory_region2>());
/// `KVM_SET_MEMORY_ATTRIBUTES`, `_IOW(KVMIO, 0xd2, struct kvm_memory_attributes)`.
pub const KVM_SET_MEMORY_ATTRIBUTES: u64 = ioc(IOC_WRITE, 0xD2, size_of::<kvm_memory_attributes>());
/// `KVM_CREATE_GUEST_MEMFD`, `_IOWR(KVMIO, 0xd4, struct kvm_create_guest_memfd)`.
pub const KVM_CREATE_GUEST_MEMFD: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0xD4,
    size_of::<kvm_create_guest_memfd>(),
);

const _: () = assert!(KVM_CREATE_VM == 0xAE01);
const _: () = assert!(KVM_ENABLE_CAP == 0x4068_AEA3);
const _: () = assert!(KVM_SET_TSC_KHZ == 0xAEA2);
const _: () = assert!(KVM_MEMORY_ENCRYPT_OP == 0xC008_AEBA);
const _: () = assert!(KVM_GET_DEVICE_ATTR == 0x4018_AEE2);
const _: () = assert!(KVM_SET_USER_MEMORY_REGION2 == 0x40A0_AE49);
const _: () = assert!(KVM_SET_MEMORY_ATTRIBUTES == 0x4020_AED2);
const _: () = assert!(KVM_CREATE_GUEST_MEMFD == 0xC040_AED4);

// ---------------------------------------------------------------------------------------------
// Capabilities and VM types

/// `KVM_CAP_SPLIT_IRQCHIP`.
pub const KVM_CAP_SPLIT_IRQCHIP: u32 = 121;
/// `KVM_CAP_EXIT_HYPERCALL`: its value is the mask of hypercalls that may exit to userspace.
pub const KVM_CAP_EXIT_HYPERCALL: u32 = 201;
/// `KVM_CAP_USER_MEMORY2`.
pub const KVM_CAP_USER_MEMORY2: u32 = 231;
/// `KVM_CAP_MEMORY_ATTRIBUTES`: its value is the mask of supported attributes.
pub const KVM_CAP_MEMORY_ATTRIBUTES: u32 = 233;
/// `KVM_CAP_GUEST_MEMFD`.
pub const KVM_CAP_GUEST_MEMFD: u32 = 234;
/// `KVM_CAP_VM_TYPES`: its value is the bitmap of accepted `KVM_CREATE_VM` types.
pub const KVM_CAP_VM_TYPES: u32 = 235;
/// `KVM_CAP_X86_APIC_BUS_CYCLES_NS`.
pub const KVM_CAP_X86_APIC_BUS_CYCLES_NS: u32 = 237;

const _: () = assert!(KVM_CAP_SPLIT_IRQCHIP == kvm_bindings::KVM_CAP_SPLIT_IRQCHIP);
const _: () = assert!(KVM_CAP_EXIT_HYPERCALL == kvm_bindings::KVM_CAP_EXIT_HYPERCALL);
const _: () = assert!(KVM_CAP_USER_MEMORY2 == kvm_bindings::KVM_CAP_USER_MEMORY2);
const _: () = assert!(KVM_CAP_MEMORY_ATTRIBUTES == kvm_bindings::KVM_CAP_MEMORY_ATTRIBUTES);
const _: () = assert!(KVM_CAP_GUEST_MEMFD == kvm_bindings::KVM_CAP_GUEST_MEMFD);
const _: () = assert!(KVM_CAP_VM_TYPES == kvm_bindings::KVM_CAP_VM_TYPES);
const _: () =
    assert!(KVM_CAP_X86_APIC_BUS_CYCLES_NS == kvm_bindings::KVM_CAP_X86_APIC_BUS_CYCLES_NS);

/// `KVM_X86_SNP_VM`.
pub const KVM_X86_SNP_VM: u64 = 4;
/// `KVM_X86_TDX_VM`.
pub const KVM_X86_TDX_VM: u64 = 5;
const _: () = assert!(KVM_X86_SNP_VM == kvm_bindings::KVM_X86_SNP_VM as u64);
const _: () = assert!(KVM_X86_TDX_VM == kvm_bindings::KVM_X86_TDX_VM as u64);

/// `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
pub const KVM_MEMORY_ATTRIBUTE_PRIVATE: u64 = 1 << 3;
/// `KVM_MEM_GUEST_MEMFD`: the memory slot has a guest_memfd for its private half.
pub const KVM_MEM_GUEST_MEMFD: u32 = 1 << 2;
const _: () =
    assert!(KVM_MEMORY_ATTRIBUTE_PRIVATE == kvm_bindings::KVM_MEMORY_ATTRIBUTE_PRIVATE as u64);
const _: () = assert!(KVM_MEM_GUEST_MEMFD == kvm_bindings::KVM_MEM_GUEST_MEMFD);

// ---------------------------------------------------------------------------------------------
// Hypercall and memory-fault exits

/// `KVM_HC_MAP_GPA_RANGE` (`include/uapi/linux/kvm_para.h`).
pub const KVM_HC_MAP_GPA_RANGE: u64 = 12;
/// `KVM_MAP_GPA_RANGE_PAGE_SZ_2M`.
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_2M: u64 = 1 << 0;
/// `KVM_MAP_GPA_RANGE_PAGE_SZ_1G`.
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_1G: u64 = 1 << 1;
/// `KVM_MAP_GPA_RANGE_ENCRYPTED`: convert to private; without it, convert to shared.
pub const KVM_MAP_GPA_RANGE_ENCRYPTED: u64 = 1 << 4;
/// `KVM_EXIT_HYPERCALL_LONG_MODE`.
pub const KVM_EXIT_HYPERCALL_LONG_MODE: u64 = 1 << 0;
/// `KVM_MEMORY_EXIT_FLAG_PRIVATE`: the faulting access was private.
pub const KVM_MEMORY_EXIT_FLAG_PRIVATE: u64 = 1 << 3;
/// `KVM_EXIT_MEMORY_FAULT`.
pub const KVM_EXIT_MEMORY_FAULT: u32 = 39;
/// `KVM_SYSTEM_EVENT_SEV_TERM`: the SEV guest asked to terminate.
pub const KVM_SYSTEM_EVENT_SEV_TERM: u32 = 6;
/// `KVM_SYSTEM_EVENT_TDX_FATAL`: `TDG.VP.VMCALL<ReportFatalError>`.
pub const KVM_SYSTEM_EVENT_TDX_FATAL: u32 = 7;
const _: () = assert!(KVM_EXIT_MEMORY_FAULT == kvm_bindings::KVM_EXIT_MEMORY_FAULT);
const _: () =
    assert!(KVM_MEMORY_EXIT_FLAG_PRIVATE == kvm_bindings::KVM_MEMORY_EXIT_FLAG_PRIVATE as u64);

// ---------------------------------------------------------------------------------------------
// SEV-SNP

/// `KVM_SEV_INIT2` command id.
pub const KVM_SEV_INIT2: u32 = 22;
/// `KVM_SEV_SNP_LAUNCH_START` command id.
pub const KVM_SEV_SNP_LAUNCH_START: u32 = 100;
/// `KVM_SEV_SNP_LAUNCH_UPDATE` command id.
pub const KVM_SEV_SNP_LAUNCH_UPDATE: u32 = 101;
/// `KVM_SEV_SNP_LAUNCH_FINISH` command id.
pub const KVM_SEV_SNP_LAUNCH_FINISH: u32 = 102;
const _: () = assert!(KVM_SEV_INIT2 == kvm_bindings::sev_cmd_id_KVM_SEV_INIT2);
const _: () =
    assert!(KVM_SEV_SNP_LAUNCH_START == kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_START);
const _: () =
    assert!(KVM_SEV_SNP_LAUNCH_UPDATE == kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE);
const _: () =
    assert!(KVM_SEV_SNP_LAUNCH_FINISH == kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH);

/// `KVM_X86_GRP_SEV`: the device-attribute group of `/dev/kvm` for SEV.
pub const KVM_X86_GRP_SEV: u32 = 1;
/// `KVM_X86_SEV_VMSA_FEATURES`: the `SEV_FEATURES` bits `KVM_SEV_INIT2` accepts.
pub const KVM_X86_SEV_VMSA_FEATURES: u64 = 0;
/// `KVM_X86_SNP_POLICY_BITS` (Linux 6.19 and later): the SNP policy bits the firmware accepts.
pub const KVM_X86_SNP_POLICY_BITS: u64 = 1;
const _: () = assert!(KVM_X86_GRP_SEV == kvm_bindings::KVM_X86_GRP_SEV);
const _: () = assert!(KVM_X86_SEV_VMSA_FEATURES == kvm_bindings::KVM_X86_SEV_VMSA_FEATURES as u64);

/// SEV firmware status `INVALID_PARAM`; on a CPUID page it means the firmware rewrote the page
/// with the values it accepts.
pub const SEV_RET_INVALID_PARAM: u32 = 0x16;

/// Size of the SNP ID block passed to `LAUNCH_FINISH`.
pub const SNP_ID_BLOCK_SIZE: usize = 96;
/// Size of the SNP ID authentication information structure.
pub const SNP_ID_AUTH_SIZE: usize = 4096;

const _: () = assert!(size_of::<kvm_sev_cmd>() == 24);
const _: () = assert!(offset_of!(kvm_sev_cmd, data) == 8);
const _: () = assert!(offset_of!(kvm_sev_cmd, error) == 16);
const _: () = assert!(offset_of!(kvm_sev_cmd, sev_fd) == 20);
const _: () = assert!(size_of::<kvm_sev_init>() == 48);
const _: () = assert!(offset_of!(kvm_sev_init, ghcb_version) == 12);
const _: () = assert!(size_of::<kvm_sev_snp_launch_start>() == 64);
const _: () = assert!(offset_of!(kvm_sev_snp_launch_start, gosvw) == 8);
const _: () = assert!(offset_of!(kvm_sev_snp_launch_start, flags) == 24);
const _: () = assert!(size_of::<kvm_sev_snp_launch_update>() == 64);
const _: () = assert!(offset_of!(kvm_sev_snp_launch_update, len) == 16);
const _: () = assert!(offset_of!(kvm_sev_snp_launch_update, type_) == 24);
const _: () = assert!(offset_of!(kvm_sev_snp_launch_update, flags) == 26);
const _: () = assert!(size_of::<kvm_sev_snp_launch_finish>() == 88);
const _: () = assert!(offset_of!(kvm_sev_snp_launch_finish, id_block_en) == 16);
const _: () = assert!(offset_of!(kvm_sev_snp_launch_finish, vcek_disabled) == 18);
const _: () = assert!(offset_of!(kvm_sev_snp_launch_finish, host_data) == 19);
const _: () = assert!(offset_of!(kvm_sev_snp_launch_finish, flags) == 54);
const _: () = assert!(size_of::<kvm_userspace_memory_region2>() == 160);
const _: () = assert!(offset_of!(kvm_userspace_memory_region2, guest_memfd_offset) == 32);
const _: () = assert!(offset_of!(kvm_userspace_memory_region2, guest_memfd) == 40);
const _: () = assert!(size_of::<kvm_memory_attributes>() == 32);
const _: () = assert!(size_of::<kvm_create_guest_memfd>() == 64);
const _: () = assert!(size_of::<kvm_device_attr>() == 24);

/// Number of entries the SNP CPUID page holds.
pub const SNP_CPUID_MAX_ENTRIES: usize = 64;

/// One leaf of the SNP CPUID page (SEV-SNP firmware ABI, `SNP_CPUID_FUNCTION`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnpCpuidFunction {
    /// The leaf (EAX input).
    pub eax_in: u32,
    /// The subleaf (ECX input).
    pub ecx_in: u32,
    /// The XCR0 value the output assumes.
    pub xcr0_in: u64,
    /// The IA32_XSS value the output assumes.
    pub xss_in: u64,
    /// Output EAX.
    pub eax: u32,
    /// Output EBX.
    pub ebx: u32,
    /// Output ECX.
    pub ecx: u32,
    /// Output EDX.
    pub edx: u32,
    /// Reserved.
    pub reserved: u64,
}

/// The SNP CPUID page header and table (SEV-SNP firmware ABI, `SNP_CPUID_PAGE`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnpCpuidPage {
    /// Number of valid entries.
    pub count: u32,
    /// Reserved.
    pub reserved1: u32,
    /// Reserved.
    pub reserved2: u64,
    /// The leaves.
    pub functions: [SnpCpuidFunction; SNP_CPUID_MAX_ENTRIES],
}

const _: () = assert!(size_of::<SnpCpuidFunction>() == 48);
const _: () = assert!(offset_of!(SnpCpuidFunction, eax) == 24);
const _: () = assert!(size_of::<SnpCpuidPage>() == 16 + 64 * 48);
const _: () = assert!(offset_of!(SnpCpuidPage, functions) == 16);

impl SnpCpuidPage {
    /// Encodes the page as 4096 bytes (little endian, zero-padded).
    pub fn to_page(&self) -> [u8; 4096] {
        let mut page = [0u8; 4096];
        let mut writer = ByteWriter::new(&mut page);
        writer.u32(self.count);
        writer.u32(self.reserved1);
        writer.u64(self.reserved2);
        for function in &self.functions {
            writer.u32(function.eax_in);
            writer.u32(function.ecx_in);
            writer.u64(function.xcr0_in);
            writer.u64(function.xss_in);
            writer.u32(function.eax);
            writer.u32(function.ebx);
            writer.u32(function.ecx);
            writer.u32(function.edx);
            writer.u64(function.reserved);
        }
        page
    }

    /// Decodes a page; missing bytes read as zero.
    pub fn from_page(page: &[u8]) -> Self {
        let mut reader = ByteReader::new(page);
        let count = reader.u32();
        let reserved1 = reader.u32();
        let reserved2 = reader.u64();
        let mut functions = [SnpCpuidFunction::default(); SNP_CPUID_MAX_ENTRIES];
        for function in &mut functions {
            *function = SnpCpuidFunction {
                eax_in: reader.u32(),
                ecx_in: reader.u32(),
                xcr0_in: reader.u64(),
                xss_in: reader.u64(),
                eax: reader.u32(),
                ebx: reader.u32(),
                ecx: reader.u32(),
                edx: reader.u32(),
                reserved: reader.u64(),
            };
        }
        Self {
            count,
            reserved1,
            reserved2,
            functions,
        }
    }

    /// Returns the valid entries (at most 64, even when `count` is larger).
    pub fn entries(&self) -> &[SnpCpuidFunction] {
        let count = (self.count as usize).min(SNP_CPUID_MAX_ENTRIES);
        self.functions.get(..count).unwrap_or_default()
    }
}

/// Writes little-endian fields into a buffer and ignores writes past its end.
struct ByteWriter<'a> {
    buffer: &'a mut [u8],
    offset: usize,
}

impl<'a> ByteWriter<'a> {
    fn new(buffer: &'a mut [u8]) -> Self {
        Self { buffer, offset: 0 }
    }

    fn bytes(&mut self, bytes: &[u8]) {
        if let Some(target) = self.buffer.get_mut(self.offset..self.offset + bytes.len()) {
            target.copy_from_slice(bytes);
        }
        self.offset += bytes.len();
    }

    fn u32(&mut self, value: u32) {
        self.bytes(&value.to_le_bytes());
    }

    fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }
}

/// Reads little-endian fields from a buffer; bytes past its end read as zero.
struct ByteReader<'a> {
    buffer: &'a [u8],
    offset: usize,
}

impl<'a> ByteReader<'a> {
    fn new(buffer: &'a [u8]) -> Self {
        Self { buffer, offset: 0 }
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut value = [0u8; N];
        if let Some(source) = self.buffer.get(self.offset..self.offset + N) {
            value.copy_from_slice(source);
        }
        self.offset += N;
        value
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

// ---------------------------------------------------------------------------------------------
// TDX

/// `KVM_TDX_CAPABILITIES` (VM fd).
pub const KVM_TDX_CAPABILITIES: u32 = 0;
/// `KVM_TDX_INIT_VM` (VM fd).
pub const KVM_TDX_INIT_VM: u32 = 1;
/// `KVM_TDX_INIT_VCPU` (vCPU fd); `data` is the initial RCX.
pub const KVM_TDX_INIT_VCPU: u32 = 2;
/// `KVM_TDX_INIT_MEM_REGION` (vCPU fd).
pub const KVM_TDX_INIT_MEM_REGION: u32 = 3;
/// `KVM_TDX_FINALIZE_VM` (VM fd).
pub const KVM_TDX_FINALIZE_VM: u32 = 4;
/// `KVM_TDX_GET_CPUID` (vCPU fd).
pub const KVM_TDX_GET_CPUID: u32 = 5;
/// `KVM_TDX_MEASURE_MEMORY_REGION`: extend MRTD with the region's contents.
pub const KVM_TDX_MEASURE_MEMORY_REGION: u32 = 1 << 0;
/// `KVM_EXIT_TDX`: a TDVMCALL forwarded to userspace.
pub const KVM_EXIT_TDX: u32 = 40;

/// TDVMCALL leaf `GetTdVmCallInfo`.
pub const TDVMCALL_GET_TD_VM_CALL_INFO: u64 = 0x10000;
/// TDVMCALL leaf `MapGPA` (arrives as a `KVM_HC_MAP_GPA_RANGE` hypercall exit).
pub const TDVMCALL_MAP_GPA: u64 = 0x10001;
/// TDVMCALL leaf `GetQuote`.
pub const TDVMCALL_GET_QUOTE: u64 = 0x10002;
/// TDVMCALL leaf `ReportFatalError` (arrives as a system event).
pub const TDVMCALL_REPORT_FATAL_ERROR: u64 = 0x10003;
/// TDVMCALL leaf `SetupEventNotifyInterrupt`.
pub const TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT: u64 = 0x10004;
/// TDVMCALL status `SUCCESS`.
pub const TDVMCALL_STATUS_SUCCESS: u64 = 0;
/// TDVMCALL status `RETRY`.
pub const TDVMCALL_STATUS_RETRY: u64 = 1;
/// TDVMCALL status `INVALID_OPERAND`.
pub const TDVMCALL_STATUS_INVALID_OPERAND: u64 = 0x8000_0000_0000_0000;
/// TDVMCALL status `SUBFUNC_UNSUPPORTED`.
pub const TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED: u64 = 0x8000_0000_0000_0003;

/// TD attribute `DEBUG` (bit 0).
pub const TDX_ATTR_DEBUG: u64 = 1 << 0;
/// TD attribute `SEPT_VE_DISABLE` (bit 28).
pub const TDX_ATTR_SEPT_VE_DISABLE: u64 = 1 << 28;

/// `struct kvm_tdx_cmd`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvmTdxCmd {
    /// The `KVM_TDX_*` command.
    pub id: u32,
    /// Per-command flags.
    pub flags: u32,
    /// A pointer to the command's structure, or an immediate value.
    pub data: u64,
    /// Output: the SEAMCALL status when the TDX module failed; must be 0 on input.
    pub hw_error: u64,
}

/// `struct kvm_cpuid2` without its entries.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvmCpuid2Header {
    /// Number of entries that follow.
    pub nent: u32,
    /// Must be zero.
    pub padding: u32,
}

/// Most CPUID entries KVM accepts (`KVM_MAX_CPUID_ENTRIES`).
pub const KVM_MAX_CPUID_ENTRIES: usize = 256;

/// `struct kvm_tdx_capabilities` with room for [`KVM_MAX_CPUID_ENTRIES`] configurable leaves.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KvmTdxCapabilities {
    /// TD attributes the module and KVM support.
    pub supported_attrs: u64,
    /// XFAM bits the module and KVM support.
    pub supported_xfam: u64,
    /// TDVMCALLs (GetTdVmCallInfo leaf 1, R11) the kernel handles.
    pub kernel_tdvmcallinfo_1_r11: u64,
    /// TDVMCALLs (R11) the kernel forwards to userspace.
    pub user_tdvmcallinfo_1_r11: u64,
    /// TDVMCALLs (R12) the kernel handles.
    pub kernel_tdvmcallinfo_1_r12: u64,
    /// TDVMCALLs (R12) the kernel forwards to userspace.
    pub user_tdvmcallinfo_1_r12: u64,
    /// Reserved.
    pub reserved: [u64; 250],
    /// The CPUID table header; set `nent` to the capacity before the call.
    pub cpuid: KvmCpuid2Header,
    /// The configurable CPUID bits.
    pub entries: [kvm_cpuid_entry2; KVM_MAX_CPUID_ENTRIES],
}

/// `struct kvm_tdx_init_vm` with room for [`KVM_MAX_CPUID_ENTRIES`] leaves.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KvmTdxInitVm {
    /// TD attributes.
    pub attributes: u64,
    /// Extended features allowed mask.
    pub xfam: u64,
    /// MRCONFIGID (SHA-384).
    pub mrconfigid: [u64; 6],
    /// MROWNER (SHA-384).
    pub mrowner: [u64; 6],
    /// MROWNERCONFIG (SHA-384).
    pub mrownerconfig: [u64; 6],
    /// Must be zero.
    pub reserved: [u64; 12],
    /// The CPUID table header.
    pub cpuid: KvmCpuid2Header,
    /// The CPUID leaves of the TD.
    pub entries: [kvm_cpuid_entry2; KVM_MAX_CPUID_ENTRIES],
}

/// `struct kvm_tdx_init_mem_region`; KVM advances it as it makes progress.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvmTdxInitMemRegion {
    /// Page-aligned host address of the source bytes.
    pub source_addr: u64,
    /// Page-aligned private GPA.
    pub gpa: u64,
    /// Number of 4 KiB pages.
    pub nr_pages: u64,
}

/// The `tdx` member of the `kvm_run` exit union (at `kvm_run` offset 32).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvmRunTdx {
    /// Always 0.
    pub flags: u64,
    /// The TDVMCALL leaf (guest R11).
    pub nr: u64,
    /// `ret` followed by the leaf's arguments: GetQuote `gpa, size`; GetTdVmCallInfo
    /// `leaf, r11, r12, r13, r14`; SetupEventNotifyInterrupt `vector`.
    pub args: [u64; 6],
}

const _: () = assert!(size_of::<KvmTdxCmd>() == 24);
const _: () = assert!(offset_of!(KvmTdxCmd, data) == 8);
const _: () = assert!(offset_of!(KvmTdxCmd, hw_error) == 16);
const _: () = assert!(offset_of!(KvmTdxCapabilities, reserved) == 48);
const _: () = assert!(offset_of!(KvmTdxCapabilities, cpuid) == 2048);
const _: () = assert!(offset_of!(KvmTdxCapabilities, entries) == 2056);
const _: () = assert!(size_of::<KvmTdxCapabilities>() == 2056 + 40 * KVM_MAX_CPUID_ENTRIES);
const _: () = assert!(offset_of!(KvmTdxInitVm, mrconfigid) == 16);
const _: () = assert!(offset_of!(KvmTdxInitVm, mrowner) == 64);
const _: () = assert!(offset_of!(KvmTdxInitVm, mrownerconfig) == 112);
const _: () = assert!(offset_of!(KvmTdxInitVm, reserved) == 160);
const _: () = assert!(offset_of!(KvmTdxInitVm, cpuid) == 256);
const _: () = assert!(offset_of!(KvmTdxInitVm, entries) == 264);
const _: () = assert!(size_of::<KvmTdxInitMemRegion>() == 24);
const _: () = assert!(size_of::<KvmRunTdx>() == 64);
const _: () = assert!(size_of::<kvm_cpuid_entry2>() == 40);
// The TDX overlay must fit the 256-byte exit union of `struct kvm_run`, which starts at 32.
const _: () = assert!(size_of::<KvmRunTdx>() <= 256);

impl KvmTdxCapabilities {
    /// Returns a zeroed structure whose CPUID capacity is [`KVM_MAX_CPUID_ENTRIES`].
    pub fn new_boxed() -> Box<Self> {
        Box::new(Self {
            supported_attrs: 0,
            supported_xfam: 0,
            kernel_tdvmcallinfo_1_r11: 0,
            user_tdvmcallinfo_1_r11: 0,
            kernel_tdvmcallinfo_1_r12: 0,
            user_tdvmcallinfo_1_r12: 0,
            reserved: [0; 250],
            cpuid: KvmCpuid2Header {
                nent: KVM_MAX_CPUID_ENTRIES as u32,
                padding: 0,
            },
            entries: [kvm_cpuid_entry2::default(); KVM_MAX_CPUID_ENTRIES],
        })
    }

    /// Returns the configurable CPUID entries KVM reported.
    pub fn cpuid_entries(&self) -> &[kvm_cpuid_entry2] {
        let count = (self.cpuid.nent as usize).min(KVM_MAX_CPUID_ENTRIES);
        self.entries.get(..count).unwrap_or_default()
    }
}

impl KvmTdxInitVm {
    /// Builds the structure; at most [`KVM_MAX_CPUID_ENTRIES`] entries are kept.
    pub fn new_boxed(
        attributes: u64,
        xfam: u64,
        mrconfigid: &[u8; 48],
        mrowner: &[u8; 48],
        mrownerconfig: &[u8; 48],
        cpuid: &[kvm_cpuid_entry2],
    ) -> Box<Self> {
        let words = |bytes: &[u8; 48]| {
            let mut words = [0u64; 6];
            for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut value = [0u8; 8];
                value.copy_from_slice(chunk);
                *word = u64::from_le_bytes(value);
            }
            words
        };
        let mut entries = [kvm_cpuid_entry2::default(); KVM_MAX_CPUID_ENTRIES];
        let count = cpuid.len().min(KVM_MAX_CPUID_ENTRIES);
        for (slot, entry) in entries.iter_mut().zip(cpuid) {
            *slot = *entry;
        }
        Box::new(Self {
            attributes,
            xfam,
            mrconfigid: words(mrconfigid),
            mrowner: words(mrowner),
            mrownerconfig: words(mrownerconfig),
            reserved: [0; 12],
            cpuid: KvmCpuid2Header {
                nent: count as u32,
                padding: 0,
            },
            entries,
        })
    }

    /// Returns the CPUID entries in use.
    pub fn cpuid_entries(&self) -> &[kvm_cpuid_entry2] {
        let count = (self.cpuid.nent as usize).min(KVM_MAX_CPUID_ENTRIES);
        self.entries.get(..count).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// ioctls kvm-ioctls does not wrap

/// Issues `KVM_MEMORY_ENCRYPT_OP` with a TDX command on a VM or vCPU fd. On failure the returned
/// error carries the errno, and `cmd.hw_error` contains the TDX module status.
pub fn tdx_command(fd: &impl AsRawFd, cmd: &mut KvmTdxCmd) -> std::io::Result<()> {
    // SAFETY: `cmd` is a live, exclusively borrowed `struct kvm_tdx_cmd` of the size KVM reads
    // and writes for this ioctl; the structure `cmd.data` points to (if any) is owned by the
    // caller and outlives the call.
    let result =
        unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(fd, KVM_MEMORY_ENCRYPT_OP as _, cmd) };
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads a `u64` device attribute of `/dev/kvm` (`KVM_GET_DEVICE_ATTR` on the system fd).
pub fn get_system_attr(kvm: &impl AsRawFd, group: u32, attr: u64) -> std::io::Result<u64> {
    let mut value: u64 = 0;
    let request = kvm_device_attr {
        flags: 0,
        group,
        attr,
        addr: std::ptr::addr_of_mut!(value) as u64,
    };
    // SAFETY: KVM reads the 24-byte `kvm_device_attr` and writes one `u64` through `addr`, which
    // points to `value`, alive for the whole call.
    let result =
        unsafe { vmm_sys_util::ioctl::ioctl_with_ref(kvm, KVM_GET_DEVICE_ATTR as _, &request) };
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// Sets the default TSC frequency of a VM's vCPUs (`KVM_SET_TSC_KHZ` on the VM fd).
pub fn set_vm_tsc_khz(vm: &impl AsRawFd, khz: u32) -> std::io::Result<()> {
    // SAFETY: this ioctl takes its argument by value and touches no user memory.
    let result = unsafe {
        vmm_sys_util::ioctl::ioctl_with_val(vm, KVM_SET_TSC_KHZ as _, u64::from(khz) as _)
    };
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_page_round_trips() {
        let mut page = SnpCpuidPage {
            count: 2,
            reserved1: 0,
            reserved2: 0,
            functions: [SnpCpuidFunction::default(); SNP_CPUID_MAX_ENTRIES],
        };
        page.functions[0] = SnpCpuidFunction {
            eax_in: 0xD,
            ecx_in: 1,
            xcr0_in: 1,
            xss_in: 0,
            eax: 0xF,
            ebx: 0x240,
            ecx: 0,
            edx: 0,
            reserved: 0,
        };
        page.functions[1].eax_in = 0x8000_0008;
        page.functions[1].eax = 0x3030;
        let bytes = page.to_page();
        assert_eq!(&bytes[..4], &2u32.to_le_bytes());
        // Entry 0 starts at 16: eax_in, ecx_in, xcr0_in, xss_in, then eax at 40, ebx at 44.
        assert_eq!(&bytes[16..20], &0xDu32.to_le_bytes());
        assert_eq!(&bytes[24..32], &1u64.to_le_bytes());
        assert_eq!(&bytes[44..48], &0x240u32.to_le_bytes());
        assert_eq!(&bytes[64..68], &0x8000_0008u32.to_le_bytes());
        assert_eq!(SnpCpuidPage::from_page(&bytes), page);
        assert_eq!(page.entries().len(), 2);
    }

    #[test]
    fn cpuid_page_count_is_clamped() {
        let mut bytes = [0u8; 4096];
        bytes[..4].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(SnpCpuidPage::from_page(&bytes).entries().len(), 64);
        // A truncated page reads as zeros where bytes are missing.
        assert_eq!(SnpCpuidPage::from_page(&bytes[..3]).count, 0);
    }

    #[test]
    fn init_vm_packs_measurement_registers() {
        let mut mrconfigid = [0u8; 48];
        mrconfigid[0] = 0x11;
        mrconfigid[47] = 0x22;
        let entry = kvm_cpuid_entry2 {
            function: 0x8000_0008,
            eax: 0x0030_3030,
            ..Default::default()
        };
        let init = KvmTdxInitVm::new_boxed(
            TDX_ATTR_SEPT_VE_DISABLE,
            0x3,
            &mrconfigid,
            &[0; 48],
            &[0; 48],
            &[entry],
        );
        assert_eq!(init.mrconfigid[0], 0x11);
        assert_eq!(init.mrconfigid[5], 0x22 << 56);
        assert_eq!(init.cpuid.nent, 1);
        assert_eq!(init.cpuid_entries(), &[entry]);
    }
}
