//! Intel TDX launch on KVM (Linux 6.16 and later; `KVM_X86_TDX_VM`).
//!
//! The launch follows the KVM TDX documentation (`Documentation/virt/kvm/x86/intel-tdx.rst`):
//!
//! 1. `KVM_CREATE_VM(KVM_X86_TDX_VM)`, split irqchip (24 pins), hypercall exits for
//!    `KVM_HC_MAP_GPA_RANGE` (TDVMCALL MapGPA);
//! 2. `KVM_TDX_CAPABILITIES`, then `KVM_TDX_INIT_VM` with the TD attributes (SEPT_VE_DISABLE on
//!    and DEBUG off unless asked), XFAM, MRCONFIGID, MROWNER, MROWNERCONFIG and vCPU 0's CPUID
//!    table reduced to the configurable bits, with a guest physical address width of 48;
//! 3. per memory region a guest_memfd, `KVM_SET_USER_MEMORY_REGION2` and
//!    `KVM_SET_MEMORY_ATTRIBUTES(PRIVATE)`; shared page data is written to the shared half;
//! 4. the VMM's platform setup, then per vCPU `KVM_CREATE_VCPU`, `KVM_TDX_INIT_VCPU` (RCX = the
//!    file's VP context RCX, or 0) and `KVM_SET_CPUID2`;
//! 5. one `KVM_TDX_INIT_MEM_REGION` per plan operation, in plan order, with
//!    `KVM_TDX_MEASURE_MEMORY_REGION` for measured pages (empty pages included) and without it for
//!    parameter and unmeasured pages, so every populated page is added with `TDH.MEM.PAGE.ADD`;
//! 6. `KVM_TDX_FINALIZE_VM`.
//!
//! The TDX module fixes every vCPU's initial state (32-bit protected mode at `0xFFFFFFF0`), so a
//! VP context in the file must agree with it ([`check_vp_contexts`]). Every ioctl goes through
//! [`TdxVmOps`]: [`KvmTdxOps`] issues it, [`TdxRecorder`] records it.
//!
//! At run time, `KVM_EXIT_TDX` (40) carries the TDVMCALLs that KVM leaves to userspace
//! ([`TdxExits`]): `GetTdVmCallInfo` leaf 1 returns the kernel's TDVMCALLs plus
//! `SetupEventNotifyInterrupt`. `SetupEventNotifyInterrupt` records the vector. `GetQuote` returns
//! `SUBFUNC_UNSUPPORTED`, because igvmm does not forward quotes to a Quote Generation
//! Service (`--quote-socket` is rejected at launch). MapGPA arrives as a hypercall exit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use igvm_loader::measure::{self, tdx_page_measured, Measurement};
use igvm_loader::plan::{LaunchOp, PageData, Plan, Platform, VpState};
use kvm_bindings::{kvm_cpuid_entry2, kvm_run, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use vm_memory::{GuestMemoryMmap, MmapRegion};

use super::ffi::{
    self, KvmRunTdx, KvmTdxCapabilities, KvmTdxCmd, KvmTdxInitMemRegion, KvmTdxInitVm,
    KVM_CAP_EXIT_HYPERCALL, KVM_CAP_SPLIT_IRQCHIP, KVM_EXIT_TDX, KVM_MEMORY_ATTRIBUTE_PRIVATE,
    KVM_TDX_CAPABILITIES, KVM_TDX_FINALIZE_VM, KVM_TDX_INIT_MEM_REGION, KVM_TDX_INIT_VCPU,
    KVM_TDX_INIT_VM, KVM_TDX_MEASURE_MEMORY_REGION, KVM_X86_TDX_VM, TDX_ATTR_DEBUG,
    TDX_ATTR_SEPT_VE_DISABLE,
};
use super::kvm_vm::KvmCocoVm;
use super::memory::{ranges_of, ConversionExits, GuestRange, PrivateMemoryOps, PAGE_SIZE};
use super::snp::EXIT_HYPERCALL_MASK;
use super::{CocoError, CocoExits, ExitAction, LaunchedVm, PlatformSetup, TdxHost};

/// Number of I/O APIC pins of the split irqchip (as QEMU uses).
pub const SPLIT_IRQCHIP_PINS: u64 = 24;
/// Guest physical address width the TD gets (4-level EPT; the shared bit is GPA bit 47).
pub const GUEST_PHYS_BITS: u32 = 48;
/// The XSAVE user state components igvmm enables when the host supports them: x87, SSE, AVX,
/// AVX-512 (opmask, ZMM_Hi256, Hi16_ZMM) and PKRU.
pub const DEFAULT_XFAM_MASK: u64 = 0x2E7;
/// `GetTdVmCallInfo` leaf 1 R11 bit for `GetQuote` (Linux `TDVMCALLINFO_GET_QUOTE`).
pub const TDVMCALLINFO_GET_QUOTE: u64 = 1 << 0;
/// `GetTdVmCallInfo` leaf 1 R11 bit for `SetupEventNotifyInterrupt` (Linux
/// `TDVMCALLINFO_SETUP_EVENT_NOTIFY_INTERRUPT`).
pub const TDVMCALLINFO_SETUP_EVENT_NOTIFY_INTERRUPT: u64 = 1 << 1;

/// The ioctls of a TDX launch and of memory conversions.
pub trait TdxVmOps: PrivateMemoryOps {
    /// `KVM_CREATE_VM`.
    fn create_vm(&mut self, vm_type: u64) -> Result<(), CocoError>;
    /// `KVM_ENABLE_CAP` on the VM with `args[0] = arg`.
    fn enable_cap(&mut self, cap: u32, arg: u64) -> Result<(), CocoError>;
    /// `KVM_TDX_CAPABILITIES`.
    fn capabilities(&mut self) -> Result<Box<KvmTdxCapabilities>, CocoError>;
    /// `KVM_TDX_INIT_VM`.
    fn init_vm(&mut self, init: &KvmTdxInitVm) -> Result<(), CocoError>;
    /// `KVM_CREATE_GUEST_MEMFD`; returns an id for [`Self::set_user_memory_region2`].
    fn create_guest_memfd(&mut self, size: u64) -> Result<u32, CocoError>;
    /// `KVM_SET_USER_MEMORY_REGION2` with `KVM_MEM_GUEST_MEMFD`.
    fn set_user_memory_region2(
        &mut self,
        slot: u32,
        gpa: u64,
        size: u64,
        guest_memfd: u32,
        guest_memfd_offset: u64,
    ) -> Result<(), CocoError>;
    /// Writes bytes into the shared half of guest memory.
    fn write_shared(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), CocoError>;
    /// Runs the VMM's platform setup before the first vCPU.
    fn setup_platform(&mut self) -> Result<(), CocoError>;
    /// `KVM_CREATE_VCPU`.
    fn create_vcpu(&mut self, index: u32) -> Result<(), CocoError>;
    /// `KVM_TDX_INIT_VCPU` with `rcx` as the vCPU's initial RCX (and R8).
    fn init_vcpu(&mut self, index: u32, rcx: u64) -> Result<(), CocoError>;
    /// `KVM_SET_CPUID2`.
    fn set_cpuid(&mut self, index: u32, cpuid: &[kvm_cpuid_entry2]) -> Result<(), CocoError>;
    /// `KVM_TDX_INIT_MEM_REGION` on vCPU `vcpu` for `source.len() / 4096` pages at `gpa`,
    /// looping until KVM has added them all.
    fn init_mem_region(
        &mut self,
        vcpu: u32,
        gpa: u64,
        source: &[u8],
        measure: bool,
    ) -> Result<(), CocoError>;
    /// `KVM_TDX_FINALIZE_VM`.
    fn finalize_vm(&mut self) -> Result<(), CocoError>;
}

/// What the launch needs besides the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct TdxLaunchConfig {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// The CPUID table of each vCPU; vCPU 0's table, reduced to the configurable bits, goes to
    /// `KVM_TDX_INIT_VM`.
    pub cpuid: Vec<Vec<kvm_cpuid_entry2>>,
    /// Set the DEBUG attribute (the TD then has no confidentiality).
    pub debug: bool,
    /// MRCONFIGID.
    pub mrconfigid: [u8; 48],
    /// MROWNER.
    pub mrowner: [u8; 48],
    /// MROWNERCONFIG.
    pub mrownerconfig: [u8; 48],
    /// XFAM; `None` takes [`DEFAULT_XFAM_MASK`] within what the host supports.
    pub xfam: Option<u64>,
}

/// The outcome of a launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxLaunchReport {
    /// The MRTD igvmm predicts for this launch.
    pub predicted: Measurement,
    /// The TD attributes passed to `KVM_TDX_INIT_VM`.
    pub attributes: u64,
    /// The XFAM passed to `KVM_TDX_INIT_VM`.
    pub xfam: u64,
    /// The initial RCX of every vCPU.
    pub init_vcpu_rcx: u64,
    /// `KVM_TDX_INIT_MEM_REGION` calls issued.
    pub mem_regions: usize,
}

/// The initial state the TDX module gives every vCPU (`TDH.VP.INIT`), as far as an IGVM native
/// VP context can express it.
mod initial_state {
    pub const RIP: u64 = 0xFFFF_FFF0;
    pub const RFLAGS: u64 = 0x2;
    pub const CR0: u64 = 0x21;
    pub const CR3: u64 = 0;
    pub const CR4: u64 = 0x2040;
    pub const EFER: u64 = 0x901;
    pub const CODE_ATTRIBUTES: u64 = 0xC09B;
    pub const DATA_ATTRIBUTES: u64 = 0xC093;
    pub const FLAT_LIMIT: u64 = 0xFFFF_FFFF;
    pub const GDTR_LIMIT: u64 = 0xFFFF;
}

/// Checks the plan's VP contexts against the TDX module's fixed initial state and returns the
/// `KVM_TDX_INIT_VCPU` value (the RCX every vCPU starts with): the contexts' RCX, or 0.
///
/// A context may leave a register at zero where the module sets it (RBX = address width,
/// RDX = CPUID signature, RSI = vCPU index, GDTR limit), or give the module's value. RCX and R8
/// must be equal, because the module loads both from the same value, and all contexts must agree
/// on it. Any other difference is an error that names the register.
pub fn check_vp_contexts(plan: &Plan) -> Result<u64, CocoError> {
    let mut rcx: Option<u64> = None;
    for context in &plan.vp_contexts {
        let vp_index = context.vp_index;
        let native = match &context.state {
            VpState::Native(native) => native,
            VpState::Snp { .. } => return Err(CocoError::TdxSnpContext { vp_index }),
        };
        let mismatch = |field: &'static str, value: u64, expected: u64| {
            Err(CocoError::TdxVpContext {
                vp_index,
                field,
                value,
                expected,
            })
        };
        use initial_state::*;
        let exact: [(&'static str, u64, u64); 16] = [
            ("rip", native.rip, RIP),
            ("rflags", native.rflags, RFLAGS),
            ("cr0", native.cr0, CR0),
            ("cr3", native.cr3, CR3),
            ("cr4", native.cr4, CR4),
            ("efer", native.efer, EFER),
            (
                "code_attributes",
                u64::from(native.code_attributes),
                CODE_ATTRIBUTES,
            ),
            ("code_base", u64::from(native.code_base), 0),
            ("code_limit", u64::from(native.code_limit), FLAT_LIMIT),
            (
                "data_attributes",
                u64::from(native.data_attributes),
                DATA_ATTRIBUTES,
            ),
            ("data_base", u64::from(native.data_base), 0),
            ("data_limit", u64::from(native.data_limit), FLAT_LIMIT),
            ("gdtr_base", native.gdtr_base, 0),
            ("idtr_base", native.idtr_base, 0),
            ("gs_base", native.gs_base, 0),
            ("rsp", native.rsp, 0),
        ];
        for (field, value, expected) in exact {
            if value != expected {
                return mismatch(field, value, expected);
            }
        }
        let zero: [(&'static str, u64); 10] = [
            ("rax", native.rax),
            ("rbp", native.rbp),
            ("rdi", native.rdi),
            ("r9", native.r9),
            ("r10", native.r10),
            ("r11", native.r11),
            ("r12", native.r12),
            ("r13", native.r13),
            ("r14", native.r14),
            ("r15", native.r15),
        ];
        for (field, value) in zero {
            if value != 0 {
                return mismatch(field, value, 0);
            }
        }
        let module_set: [(&'static str, u64, u64); 3] = [
            ("rbx", native.rbx, u64::from(GUEST_PHYS_BITS)),
            ("rsi", native.rsi, u64::from(vp_index)),
            ("gdtr_limit", u64::from(native.gdtr_limit), GDTR_LIMIT),
        ];
        for (field, value, expected) in module_set {
            if value != 0 && value != expected {
                return mismatch(field, value, expected);
            }
        }
        if native.rdx != 0 {
            return mismatch("rdx", native.rdx, 0);
        }
        if native.idtr_limit != 0 && native.idtr_limit != 0xFFFF {
            return mismatch("idtr_limit", u64::from(native.idtr_limit), 0);
        }
        if native.r8 != native.rcx {
            return mismatch("r8", native.r8, native.rcx);
        }
        match rcx {
            Some(first) if first != native.rcx => return mismatch("rcx", native.rcx, first),
            _ => rcx = Some(native.rcx),
        }
    }
    Ok(rcx.unwrap_or(0))
}

/// Returns the CPUID entries of `table` that KVM lets a TD configure, each reduced to the
/// configurable bits, with leaf 0x80000008 EAX[23:16] set to [`GUEST_PHYS_BITS`].
pub fn filter_cpuid(
    table: &[kvm_cpuid_entry2],
    configurable: &[kvm_cpuid_entry2],
) -> Vec<kvm_cpuid_entry2> {
    let same_leaf = |a: &kvm_cpuid_entry2, b: &kvm_cpuid_entry2| {
        a.function == b.function
            && (a.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0
                || b.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0
                || a.index == b.index)
    };
    let mut filtered = Vec::new();
    for entry in table {
        let Some(mask) = configurable.iter().find(|cap| same_leaf(entry, cap)) else {
            continue;
        };
        let mut entry = *entry;
        entry.eax &= mask.eax;
        entry.ebx &= mask.ebx;
        entry.ecx &= mask.ecx;
        entry.edx &= mask.edx;
        filtered.push(entry);
    }
    let address_width = |entry: &mut kvm_cpuid_entry2| {
        entry.eax = (entry.eax & !0x00FF_0000) | (GUEST_PHYS_BITS << 16);
    };
    match filtered
        .iter_mut()
        .find(|entry| entry.function == 0x8000_0008)
    {
        Some(entry) => address_width(entry),
        None => {
            let mut entry = kvm_cpuid_entry2 {
                function: 0x8000_0008,
                ..Default::default()
            };
            address_width(&mut entry);
            filtered.push(entry);
        }
    }
    filtered
}

fn operation_source(op: &LaunchOp) -> Result<Vec<u8>, CocoError> {
    let size = usize::try_from(op.size).map_err(|_| CocoError::OutsideMemory {
        gpa: op.gpa,
        size: op.size,
    })?;
    let mut source = vec![0u8; size];
    if let PageData::Bytes(bytes) = &op.data {
        for (target, byte) in source.iter_mut().zip(bytes.iter()) {
            *target = *byte;
        }
    }
    Ok(source)
}

/// Launches `plan` through `ops`: the whole sequence of the module documentation.
pub fn launch(
    ops: &mut impl TdxVmOps,
    plan: &Plan,
    regions: &[GuestRange],
    config: &TdxLaunchConfig,
) -> Result<TdxLaunchReport, CocoError> {
    if plan.platform != Platform::Tdx {
        return Err(CocoError::WrongPlatform {
            expected: "tdx",
            found: plan.platform.to_string(),
        });
    }
    if config.vcpus == 0 {
        return Err(CocoError::Plan(measure::MeasureError::NoVcpus));
    }
    let init_vcpu_rcx = check_vp_contexts(plan)?;
    let predicted = measure::measure_tdx(plan)?;
    log::info!("predicted TDX MRTD {}", predicted.digest_hex());

    // The IGVM TDX policy: bit 0 allows debug, bit 1 requests SEPT_VE_DISABLE.
    let (debug_allowed, sept_ve_disable) = match plan.guest_policy {
        Some(policy) => (policy & 1 != 0, policy & 2 != 0),
        None => (true, true),
    };
    if config.debug && !debug_allowed {
        return Err(CocoError::InvalidOption {
            option: "--tdx-debug",
            reason: "the file's TDX policy does not allow a debug TD".into(),
        });
    }
    let mut attributes = 0;
    if sept_ve_disable {
        attributes |= TDX_ATTR_SEPT_VE_DISABLE;
    }
    if config.debug {
        attributes |= TDX_ATTR_DEBUG;
    }

    // Step 1.
    ops.create_vm(KVM_X86_TDX_VM)?;
    ops.enable_cap(KVM_CAP_SPLIT_IRQCHIP, SPLIT_IRQCHIP_PINS)?;
    ops.enable_cap(KVM_CAP_EXIT_HYPERCALL, EXIT_HYPERCALL_MASK)?;

    // Step 2.
    let capabilities = ops.capabilities()?;
    if attributes & !capabilities.supported_attrs != 0 {
        return Err(CocoError::TdxUnsupported {
            what: "TD attributes",
            requested: attributes,
            supported: capabilities.supported_attrs,
        });
    }
    let xfam = config
        .xfam
        .unwrap_or(capabilities.supported_xfam & DEFAULT_XFAM_MASK);
    if xfam & !capabilities.supported_xfam != 0 {
        return Err(CocoError::TdxUnsupported {
            what: "XFAM",
            requested: xfam,
            supported: capabilities.supported_xfam,
        });
    }
    let vcpu0_cpuid = config.cpuid.first().map(Vec::as_slice).unwrap_or_default();
    let td_cpuid = filter_cpuid(vcpu0_cpuid, capabilities.cpuid_entries());
    let init = KvmTdxInitVm::new_boxed(
        attributes,
        xfam,
        &config.mrconfigid,
        &config.mrowner,
        &config.mrownerconfig,
        &td_cpuid,
    );
    ops.init_vm(&init)?;

    // Step 3.
    for (slot, region) in regions.iter().enumerate() {
        let gmem = ops.create_guest_memfd(region.size)?;
        ops.set_user_memory_region2(slot as u32, region.gpa, region.size, gmem, 0)?;
        ops.set_memory_attributes(region.gpa, region.size, KVM_MEMORY_ATTRIBUTE_PRIVATE)?;
    }
    for op in &plan.operations {
        if !regions
            .iter()
            .any(|region| region.contains(op.gpa, op.size))
        {
            return Err(CocoError::OutsideMemory {
                gpa: op.gpa,
                size: op.size,
            });
        }
        if tdx_page_measured(op.kind).is_none() {
            ops.set_memory_attributes(op.gpa, op.size, 0)?;
            if let PageData::Bytes(bytes) = &op.data {
                ops.write_shared(op.gpa, bytes)?;
            }
        }
    }

    // Step 4.
    ops.setup_platform()?;
    for index in 0..config.vcpus {
        ops.create_vcpu(index)?;
        ops.init_vcpu(index, init_vcpu_rcx)?;
        let cpuid = config
            .cpuid
            .get(index as usize)
            .map(Vec::as_slice)
            .unwrap_or(vcpu0_cpuid);
        ops.set_cpuid(index, cpuid)?;
    }

    // Step 5.
    let mut mem_regions = 0;
    for op in &plan.operations {
        let Some(measured) = tdx_page_measured(op.kind) else {
            continue;
        };
        let source = operation_source(op)?;
        ops.init_mem_region(0, op.gpa, &source, measured)?;
        mem_regions += 1;
    }

    // Step 6.
    ops.finalize_vm()?;
    log::info!(
        "TDX launch finished: {mem_regions} INIT_MEM_REGION calls, {} vCPUs, attributes {attributes:#x}, XFAM {xfam:#x}",
        config.vcpus
    );
    Ok(TdxLaunchReport {
        predicted,
        attributes,
        xfam,
        init_vcpu_rcx,
        mem_regions,
    })
}

// ---------------------------------------------------------------------------------------------
// KVM implementation

/// Size of the staging buffer `KVM_TDX_INIT_MEM_REGION` copies from: one 2 MiB operation.
const STAGING_SIZE: usize = 2 << 20;

/// [`TdxVmOps`] on a real host.
pub struct KvmTdxOps<'a> {
    base: KvmCocoVm<'a>,
    staging: MmapRegion,
    capabilities: Option<Box<KvmTdxCapabilities>>,
}

fn tdx_error(name: &str, error: std::io::Error, cmd: &KvmTdxCmd) -> CocoError {
    if cmd.hw_error != 0 {
        CocoError::TdxModule {
            operation: name.to_string(),
            source: error,
            hw_error: cmd.hw_error,
        }
    } else {
        CocoError::Io {
            operation: name.to_string(),
            source: error,
        }
    }
}

impl<'a> KvmTdxOps<'a> {
    /// Prepares a launch on `host` with `shared` as the shared half of guest memory.
    pub fn new(
        host: TdxHost,
        shared: GuestMemoryMmap,
        setup: PlatformSetup<'a>,
    ) -> Result<Self, CocoError> {
        let staging = MmapRegion::new(STAGING_SIZE).map_err(|error| CocoError::Io {
            operation: "allocating the INIT_MEM_REGION staging buffer".into(),
            source: std::io::Error::other(error.to_string()),
        })?;
        Ok(Self {
            base: KvmCocoVm::new(host.kvm, shared, setup),
            staging,
            capabilities: None,
        })
    }

    fn vm_command(&self, name: &str, id: u32, data: u64) -> Result<(), CocoError> {
        let mut cmd = KvmTdxCmd {
            id,
            data,
            ..Default::default()
        };
        ffi::tdx_command(self.base.vm()?.as_ref(), &mut cmd)
            .map_err(|error| tdx_error(name, error, &cmd))
    }

    /// Ends the launch and hands the TD to the vCPU loop.
    pub fn into_launched(self, predicted: Measurement) -> Result<LaunchedVm, CocoError> {
        let vm = self.base.vm()?.clone();
        let capabilities = self.capabilities.clone();
        let (kvm, vcpus, memory, private) = self.base.into_runtime()?;
        let ranges = private
            .backing
            .slots
            .iter()
            .map(|slot| slot.range)
            .collect();
        let exits = TdxExits::new(
            ConversionExits {
                memory: private,
                ranges,
            },
            capabilities.as_deref(),
        );
        Ok(LaunchedVm {
            kvm,
            vm,
            vcpus,
            memory,
            exits: Arc::new(exits),
            predicted,
        })
    }
}

impl PrivateMemoryOps for KvmTdxOps<'_> {
    fn set_memory_attributes(&self, gpa: u64, size: u64, attributes: u64) -> Result<(), CocoError> {
        self.base.set_memory_attributes(gpa, size, attributes)
    }

    fn discard_private(&self, gpa: u64, size: u64) -> Result<(), CocoError> {
        self.base.discard_private(gpa, size)
    }

    fn discard_shared(&self, gpa: u64, size: u64) -> Result<(), CocoError> {
        self.base.discard_shared(gpa, size)
    }
}

impl TdxVmOps for KvmTdxOps<'_> {
    fn create_vm(&mut self, vm_type: u64) -> Result<(), CocoError> {
        self.base.create_vm(vm_type)
    }

    fn enable_cap(&mut self, cap: u32, arg: u64) -> Result<(), CocoError> {
        self.base.enable_cap(cap, arg)
    }

    fn capabilities(&mut self) -> Result<Box<KvmTdxCapabilities>, CocoError> {
        let mut capabilities = KvmTdxCapabilities::new_boxed();
        let data = std::ptr::addr_of_mut!(*capabilities) as u64;
        self.vm_command("KVM_TDX_CAPABILITIES", KVM_TDX_CAPABILITIES, data)?;
        self.capabilities = Some(capabilities.clone());
        Ok(capabilities)
    }

    fn init_vm(&mut self, init: &KvmTdxInitVm) -> Result<(), CocoError> {
        let mut init = Box::new(*init);
        let data = std::ptr::addr_of_mut!(*init) as u64;
        // TDH.MNG.CREATE can run out of entropy; KVM then returns EAGAIN and the call is retried
        // (QEMU retries up to 10000 times).
        let mut attempts = 0;
        loop {
            match self.vm_command("KVM_TDX_INIT_VM", KVM_TDX_INIT_VM, data) {
                Err(CocoError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::EAGAIN) && attempts < 10_000 =>
                {
                    attempts += 1;
                }
                result => return result,
            }
        }
    }

    fn create_guest_memfd(&mut self, size: u64) -> Result<u32, CocoError> {
        self.base.create_guest_memfd(size)
    }

    fn set_user_memory_region2(
        &mut self,
        slot: u32,
        gpa: u64,
        size: u64,
        guest_memfd: u32,
        guest_memfd_offset: u64,
    ) -> Result<(), CocoError> {
        self.base
            .set_user_memory_region2(slot, gpa, size, guest_memfd, guest_memfd_offset)
    }

    fn write_shared(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), CocoError> {
        self.base.write_shared(gpa, bytes)
    }

    fn setup_platform(&mut self) -> Result<(), CocoError> {
        self.base.setup_platform()
    }

    fn create_vcpu(&mut self, index: u32) -> Result<(), CocoError> {
        self.base.create_vcpu(index)
    }

    fn init_vcpu(&mut self, index: u32, rcx: u64) -> Result<(), CocoError> {
        let mut cmd = KvmTdxCmd {
            id: KVM_TDX_INIT_VCPU,
            data: rcx,
            ..Default::default()
        };
        ffi::tdx_command(self.base.vcpu(index)?, &mut cmd)
            .map_err(|error| tdx_error(&format!("KVM_TDX_INIT_VCPU on vCPU {index}"), error, &cmd))
    }

    fn set_cpuid(&mut self, index: u32, cpuid: &[kvm_cpuid_entry2]) -> Result<(), CocoError> {
        let table = CpuId::from_entries(cpuid).map_err(|_| CocoError::Io {
            operation: format!("building the CPUID table of vCPU {index}"),
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        self.base
            .vcpu(index)?
            .set_cpuid2(&table)
            .map_err(|error| CocoError::kvm(format!("KVM_SET_CPUID2 on vCPU {index}"), error))
    }

    fn init_mem_region(
        &mut self,
        vcpu: u32,
        gpa: u64,
        source: &[u8],
        measure: bool,
    ) -> Result<(), CocoError> {
        let name = format!("KVM_TDX_INIT_MEM_REGION at {gpa:#x}");
        let mut done = 0usize;
        while done < source.len() {
            let chunk_len = (source.len() - done).min(STAGING_SIZE);
            let Some(chunk) = source.get(done..done + chunk_len) else {
                break;
            };
            // SAFETY: the staging region is this struct's own anonymous mapping of STAGING_SIZE
            // bytes and `chunk_len <= STAGING_SIZE`; nothing else references it during this call.
            let staging =
                unsafe { std::slice::from_raw_parts_mut(self.staging.as_ptr(), chunk_len) };
            staging.copy_from_slice(chunk);
            let mut region = KvmTdxInitMemRegion {
                source_addr: self.staging.as_ptr() as u64,
                gpa: gpa + done as u64,
                nr_pages: chunk_len as u64 / PAGE_SIZE,
            };
            // KVM advances the region as it adds pages; EINTR and EAGAIN leave work to redo.
            while region.nr_pages > 0 {
                let mut cmd = KvmTdxCmd {
                    id: KVM_TDX_INIT_MEM_REGION,
                    flags: if measure {
                        KVM_TDX_MEASURE_MEMORY_REGION
                    } else {
                        0
                    },
                    data: std::ptr::addr_of_mut!(region) as u64,
                    hw_error: 0,
                };
                match ffi::tdx_command(self.base.vcpu(vcpu)?, &mut cmd) {
                    Ok(()) => {}
                    Err(error)
                        if matches!(error.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) => {}
                    Err(error) => return Err(tdx_error(&name, error, &cmd)),
                }
            }
            done += chunk_len;
        }
        Ok(())
    }

    fn finalize_vm(&mut self) -> Result<(), CocoError> {
        self.vm_command("KVM_TDX_FINALIZE_VM", KVM_TDX_FINALIZE_VM, 0)
    }
}

/// Launches `plan` on a host that passed [`super::probe_tdx`].
///
/// `setup` creates the VMM's devices before the vCPUs exist; the split irqchip is already
/// enabled, so it must not create a full in-kernel irqchip. `quote_socket` must be `None`:
/// igvmm does not forward quotes yet.
pub fn launch_on_host(
    host: TdxHost,
    plan: &Plan,
    memory: GuestMemoryMmap,
    config: TdxLaunchConfig,
    quote_socket: Option<&std::path::Path>,
    setup: PlatformSetup<'_>,
) -> Result<LaunchedVm, CocoError> {
    if let Some(path) = quote_socket {
        return Err(CocoError::InvalidOption {
            option: "--quote-socket",
            reason: format!(
                "quote forwarding to {} is not implemented; run without it, and GetQuote is \
                 answered as unsupported",
                path.display()
            ),
        });
    }
    let regions = ranges_of(&memory);
    let mut ops = KvmTdxOps::new(host, memory, setup)?;
    let report = launch(&mut ops, plan, &regions, &config)?;
    ops.into_launched(report.predicted)
}

// ---------------------------------------------------------------------------------------------
// Run-time exits

/// The exits of a running TD.
pub struct TdxExits<M> {
    conversions: ConversionExits<M>,
    /// TDVMCALLs the kernel handles (GetTdVmCallInfo leaf 1, R11 and R12).
    kernel_r11: u64,
    kernel_r12: u64,
    /// TDVMCALLs the kernel forwards to userspace (R11).
    user_r11: u64,
    /// The vector registered with SetupEventNotifyInterrupt, or 0.
    notify_vector: AtomicU64,
}

impl<M> TdxExits<M> {
    /// Creates the handler; `capabilities` gives the kernel's TDVMCALL lists.
    pub fn new(conversions: ConversionExits<M>, capabilities: Option<&KvmTdxCapabilities>) -> Self {
        Self {
            conversions,
            kernel_r11: capabilities.map_or(0, |c| c.kernel_tdvmcallinfo_1_r11),
            kernel_r12: capabilities.map_or(0, |c| c.kernel_tdvmcallinfo_1_r12),
            user_r11: capabilities.map_or(0, |c| c.user_tdvmcallinfo_1_r11),
            notify_vector: AtomicU64::new(0),
        }
    }

    /// Returns the vector the guest registered for event notification, if any.
    pub fn notify_vector(&self) -> Option<u8> {
        u8::try_from(self.notify_vector.load(Ordering::Relaxed))
            .ok()
            .filter(|vector| *vector != 0)
    }

    /// Handles one TDVMCALL and writes its results into `exit`, the `tdx` member of `kvm_run`.
    pub fn handle_tdvmcall(&self, vcpu: u32, exit: &mut KvmRunTdx) {
        let [ret, args @ ..] = &mut exit.args;
        match exit.nr {
            ffi::TDVMCALL_GET_TD_VM_CALL_INFO => {
                // Only leaf 1 reaches userspace; r11..r14 follow the leaf in `args`.
                let [leaf, r11, r12, r13, r14] = args;
                if *leaf == 1 {
                    *r11 = self.kernel_r11
                        | (self.user_r11 & TDVMCALLINFO_SETUP_EVENT_NOTIFY_INTERRUPT);
                    *r12 = self.kernel_r12;
                    *r13 = 0;
                    *r14 = 0;
                    *ret = ffi::TDVMCALL_STATUS_SUCCESS;
                } else {
                    *ret = ffi::TDVMCALL_STATUS_INVALID_OPERAND;
                }
            }
            ffi::TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT => {
                // KVM has checked that the vector is 32..=255.
                let vector = args[0];
                self.notify_vector.store(vector, Ordering::Relaxed);
                log::debug!("vCPU {vcpu}: TDX event notification vector {vector}");
                *ret = ffi::TDVMCALL_STATUS_SUCCESS;
            }
            ffi::TDVMCALL_GET_QUOTE => {
                log::warn!(
                    "vCPU {vcpu}: the TD asked for a quote (buffer {:#x}, {} bytes); igvmm does \
                     not forward quotes, answering SUBFUNC_UNSUPPORTED",
                    args[0],
                    args[1]
                );
                *ret = ffi::TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED;
            }
            other => {
                log::debug!("vCPU {vcpu}: unsupported TDVMCALL {other:#x}");
                *ret = ffi::TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED;
            }
        }
    }
}

/// Reads the `tdx` member of the `kvm_run` exit union.
pub fn read_tdx_exit(run: &kvm_run) -> KvmRunTdx {
    // SAFETY: every member of the exit union is plain old data. KvmRunTdx (64 bytes, alignment
    // 8) fits in the union's 256-byte padding member, so its first 64 bytes are initialized
    // memory of the right size and alignment.
    unsafe { std::ptr::read(std::ptr::addr_of!(run.__bindgen_anon_1).cast::<KvmRunTdx>()) }
}

/// Writes the `tdx` member of the `kvm_run` exit union.
pub fn write_tdx_exit(run: &mut kvm_run, exit: &KvmRunTdx) {
    // SAFETY: as in `read_tdx_exit`; the union is at least as large and as aligned as
    // KvmRunTdx, and any bit pattern is valid for it.
    unsafe {
        std::ptr::write(
            std::ptr::addr_of_mut!(run.__bindgen_anon_1).cast::<KvmRunTdx>(),
            *exit,
        )
    }
}

/// Decodes `TDG.VP.VMCALL<ReportFatalError>` from the 16 GPRs of a `KVM_SYSTEM_EVENT_TDX_FATAL`
/// event (in `VCPU_REGS_*` order: RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15).
pub fn describe_fatal_error(data: &[u64]) -> String {
    let register = |index: usize| data.get(index).copied().unwrap_or(0);
    let error_code = register(12);
    // The message is carried in R14, R15, RBX, RDI, RSI, R8, R9 and RDX (GHCI).
    let mut message = Vec::new();
    for index in [14, 15, 3, 7, 6, 8, 9, 2] {
        message.extend_from_slice(&register(index).to_le_bytes());
    }
    let end = message
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(message.len());
    let text: String = message
        .get(..end)
        .unwrap_or_default()
        .iter()
        .map(|byte| {
            if byte.is_ascii_graphic() || *byte == b' ' {
                char::from(*byte)
            } else {
                '.'
            }
        })
        .collect();
    format!(
        "error code {error_code:#x}, R13 {:#x}, message {text:?}",
        register(13)
    )
}

impl<M: PrivateMemoryOps + Send + Sync> CocoExits for TdxExits<M> {
    fn memory_fault(&self, vcpu: u32, flags: u64, gpa: u64, size: u64) -> ExitAction {
        self.conversions.memory_fault(vcpu, flags, gpa, size)
    }

    fn hypercall(&self, _vcpu: u32, nr: u64, args: &[u64; 6]) -> Option<u64> {
        self.conversions.hypercall(nr, args)
    }

    fn system_event(&self, vcpu: u32, event_type: u32, data: &[u64]) -> ExitAction {
        if event_type == ffi::KVM_SYSTEM_EVENT_TDX_FATAL {
            ExitAction::Stop(format!(
                "vCPU {vcpu}: the TD reported a fatal error: {}",
                describe_fatal_error(data)
            ))
        } else {
            ExitAction::NotHandled
        }
    }

    fn unsupported_exit(&self, vcpu: u32, reason: u32, run: &mut kvm_run) -> ExitAction {
        if reason != KVM_EXIT_TDX {
            return ExitAction::NotHandled;
        }
        let mut exit = read_tdx_exit(run);
        self.handle_tdvmcall(vcpu, &mut exit);
        write_tdx_exit(run, &exit);
        ExitAction::Resume
    }
}

// ---------------------------------------------------------------------------------------------
// Recorder

/// One recorded [`TdxVmOps`] call.
#[derive(Debug, Clone, PartialEq)]
pub enum TdxCall {
    /// `KVM_CREATE_VM`.
    CreateVm {
        /// VM type.
        vm_type: u64,
    },
    /// `KVM_ENABLE_CAP`.
    EnableCap {
        /// Capability.
        cap: u32,
        /// `args[0]`.
        arg: u64,
    },
    /// `KVM_TDX_CAPABILITIES`.
    Capabilities,
    /// `KVM_TDX_INIT_VM`.
    InitVm {
        /// Attributes.
        attributes: u64,
        /// XFAM.
        xfam: u64,
        /// MRCONFIGID words.
        mrconfigid: [u64; 6],
        /// MROWNER words.
        mrowner: [u64; 6],
        /// MROWNERCONFIG words.
        mrownerconfig: [u64; 6],
        /// CPUID entries.
        cpuid: Vec<kvm_cpuid_entry2>,
    },
    /// `KVM_CREATE_GUEST_MEMFD`.
    CreateGuestMemfd {
        /// Size.
        size: u64,
    },
    /// `KVM_SET_USER_MEMORY_REGION2`.
    SetUserMemoryRegion2 {
        /// Slot.
        slot: u32,
        /// GPA.
        gpa: u64,
        /// Size.
        size: u64,
        /// guest_memfd id.
        guest_memfd: u32,
        /// Offset.
        guest_memfd_offset: u64,
    },
    /// `KVM_SET_MEMORY_ATTRIBUTES`.
    SetMemoryAttributes {
        /// GPA.
        gpa: u64,
        /// Size.
        size: u64,
        /// Attributes.
        attributes: u64,
    },
    /// A write into shared memory.
    WriteShared {
        /// GPA.
        gpa: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The VMM's platform setup.
    SetupPlatform,
    /// `KVM_CREATE_VCPU`.
    CreateVcpu {
        /// Index.
        index: u32,
    },
    /// `KVM_TDX_INIT_VCPU`.
    InitVcpu {
        /// Index.
        index: u32,
        /// Initial RCX.
        rcx: u64,
    },
    /// `KVM_SET_CPUID2`.
    SetCpuid {
        /// Index.
        index: u32,
        /// Number of entries.
        entries: usize,
    },
    /// `KVM_TDX_INIT_MEM_REGION`.
    InitMemRegion {
        /// vCPU used.
        vcpu: u32,
        /// GPA.
        gpa: u64,
        /// Pages.
        nr_pages: u64,
        /// `KVM_TDX_MEASURE_MEMORY_REGION` set.
        measure: bool,
        /// Source bytes.
        data: Vec<u8>,
    },
    /// `KVM_TDX_FINALIZE_VM`.
    FinalizeVm,
    /// Discard of private pages.
    DiscardPrivate {
        /// GPA.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// Discard of shared pages.
    DiscardShared {
        /// GPA.
        gpa: u64,
        /// Size.
        size: u64,
    },
}

/// A [`TdxVmOps`] that records every call instead of issuing it.
#[derive(Debug)]
pub struct TdxRecorder {
    calls: Mutex<Vec<TdxCall>>,
    guest_memfds: u32,
    /// The result of `KVM_TDX_CAPABILITIES`.
    pub capabilities: Box<KvmTdxCapabilities>,
}

impl TdxRecorder {
    /// Creates a recorder whose capabilities are `capabilities`.
    pub fn new(capabilities: Box<KvmTdxCapabilities>) -> Self {
        Self {
            calls: Mutex::new(Vec::new()),
            guest_memfds: 0,
            capabilities,
        }
    }

    /// Returns the calls recorded so far.
    pub fn calls(&self) -> Vec<TdxCall> {
        self.calls
            .lock()
            .map(|calls| calls.clone())
            .unwrap_or_default()
    }

    fn record(&self, call: TdxCall) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call);
        }
    }
}

impl PrivateMemoryOps for TdxRecorder {
    fn set_memory_attributes(&self, gpa: u64, size: u64, attributes: u64) -> Result<(), CocoError> {
        self.record(TdxCall::SetMemoryAttributes {
            gpa,
            size,
            attributes,
        });
        Ok(())
    }

    fn discard_private(&self, gpa: u64, size: u64) -> Result<(), CocoError> {
        self.record(TdxCall::DiscardPrivate { gpa, size });
        Ok(())
    }

    fn discard_shared(&self, gpa: u64, size: u64) -> Result<(), CocoError> {
        self.record(TdxCall::DiscardShared { gpa, size });
        Ok(())
    }
}

impl TdxVmOps for TdxRecorder {
    fn create_vm(&mut self, vm_type: u64) -> Result<(), CocoError> {
        self.record(TdxCall::CreateVm { vm_type });
        Ok(())
    }

    fn enable_cap(&mut self, cap: u32, arg: u64) -> Result<(), CocoError> {
        self.record(TdxCall::EnableCap { cap, arg });
        Ok(())
    }

    fn capabilities(&mut self) -> Result<Box<KvmTdxCapabilities>, CocoError> {
        self.record(TdxCall::Capabilities);
        Ok(self.capabilities.clone())
    }

    fn init_vm(&mut self, init: &KvmTdxInitVm) -> Result<(), CocoError> {
        self.record(TdxCall::InitVm {
            attributes: init.attributes,
            xfam: init.xfam,
            mrconfigid: init.mrconfigid,
            mrowner: init.mrowner,
            mrownerconfig: init.mrownerconfig,
            cpuid: init.cpuid_entries().to_vec(),
        });
        Ok(())
    }

    fn create_guest_memfd(&mut self, size: u64) -> Result<u32, CocoError> {
        self.record(TdxCall::CreateGuestMemfd { size });
        self.guest_memfds += 1;
        Ok(self.guest_memfds - 1)
    }

    fn set_user_memory_region2(
        &mut self,
        slot: u32,
        gpa: u64,
        size: u64,
        guest_memfd: u32,
        guest_memfd_offset: u64,
    ) -> Result<(), CocoError> {
        self.record(TdxCall::SetUserMemoryRegion2 {
            slot,
            gpa,
            size,
            guest_memfd,
            guest_memfd_offset,
        });
        Ok(())
    }

    fn write_shared(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), CocoError> {
        self.record(TdxCall::WriteShared {
            gpa,
            bytes: bytes.to_vec(),
        });
        Ok(())
    }

    fn setup_platform(&mut self) -> Result<(), CocoError> {
        self.record(TdxCall::SetupPlatform);
        Ok(())
    }

    fn create_vcpu(&mut self, index: u32) -> Result<(), CocoError> {
        self.record(TdxCall::CreateVcpu { index });
        Ok(())
    }

    fn init_vcpu(&mut self, index: u32, rcx: u64) -> Result<(), CocoError> {
        self.record(TdxCall::InitVcpu { index, rcx });
        Ok(())
    }

    fn set_cpuid(&mut self, index: u32, cpuid: &[kvm_cpuid_entry2]) -> Result<(), CocoError> {
        self.record(TdxCall::SetCpuid {
            index,
            entries: cpuid.len(),
        });
        Ok(())
    }

    fn init_mem_region(
        &mut self,
        vcpu: u32,
        gpa: u64,
        source: &[u8],
        measure: bool,
    ) -> Result<(), CocoError> {
        self.record(TdxCall::InitMemRegion {
            vcpu,
            gpa,
            nr_pages: source.len() as u64 / PAGE_SIZE,
            measure,
            data: source.to_vec(),
        });
        Ok(())
    }

    fn finalize_vm(&mut self) -> Result<(), CocoError> {
        self.record(TdxCall::FinalizeVm);
        Ok(())
    }
}

/// Returns a TDX exit handler over a recorder, for tests of the runtime exits.
pub fn recorder_exits(
    recorder: Arc<TdxRecorder>,
    ranges: Vec<GuestRange>,
    capabilities: &KvmTdxCapabilities,
) -> TdxExits<Arc<TdxRecorder>> {
    TdxExits::new(
        ConversionExits {
            memory: recorder,
            ranges,
        },
        Some(capabilities),
    )
}
