//! AMD SEV-SNP launch on KVM (Linux 6.11 and later; `KVM_X86_SNP_VM`).
//!
//! The launch follows the sequence of the KVM API documentation
//! (`Documentation/virt/kvm/x86/amd-memory-encryption.rst`) and of the kernel's SNP selftests:
//!
//! 1. `KVM_CREATE_VM(KVM_X86_SNP_VM)`, `KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL, 1 << 12)`;
//! 2. `KVM_SEV_INIT2` with vp 0's `SEV_FEATURES` without `SNP_ACTIVE`;
//! 3. per memory region a guest_memfd, `KVM_SET_USER_MEMORY_REGION2` and
//!    `KVM_SET_MEMORY_ATTRIBUTES(PRIVATE)`; shared page data is written to the shared half;
//! 4. the VMM's platform devices, then the vCPUs with their CPUID and registers (vp *n* from the
//!    file's VMSA *n* through [`KvmSnpVcpuState`], other vCPUs at reset);
//! 5. `KVM_SEV_SNP_LAUNCH_START` with the file's guest policy;
//! 6. one `KVM_SEV_SNP_LAUNCH_UPDATE` per plan operation, in plan order: NORMAL (empty pages as
//!    NORMAL zeros), UNMEASURED for unmeasured and parameter pages, SECRETS, and CPUID filled from
//!    vCPU 0's CPUID table;
//! 7. `KVM_SEV_SNP_LAUNCH_FINISH` with the file's ID block and `--host-data`; KVM measures one
//!    VMSA per vCPU here.
//!
//! Every ioctl goes through [`SnpVmOps`]: [`KvmSnpOps`] issues it, [`SnpRecorder`] records it.
//!
//! When the firmware rejects the CPUID page (`EIO` with firmware error `INVALID_PARAM`), it has
//! written the values it accepts into the page. igvmm logs the changed leaves and retries once
//! with the corrected page, unless `--strict-cpuid` requests an error. The CPUID page contents are
//! not measured, so the retry does not change the launch digest.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use igvm_loader::measure::{
    self, snp_page_type, KvmSnpVcpuState, Measurement, SnpMode, SnpPageType,
};
use igvm_loader::plan::{LaunchOp, PageData, PageKind, Plan, Platform};
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_sev_cmd, kvm_sev_init, kvm_sev_snp_launch_finish,
    kvm_sev_snp_launch_start, kvm_sev_snp_launch_update, CpuId, Msrs,
    KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
};
use vm_memory::{GuestMemoryMmap, MmapRegion};

use super::ffi::{
    self, SnpCpuidFunction, SnpCpuidPage, KVM_CAP_EXIT_HYPERCALL, KVM_MEMORY_ATTRIBUTE_PRIVATE,
    KVM_MEM_GUEST_MEMFD, KVM_SEV_INIT2, KVM_SEV_SNP_LAUNCH_FINISH, KVM_SEV_SNP_LAUNCH_START,
    KVM_SEV_SNP_LAUNCH_UPDATE, KVM_X86_SNP_VM, SEV_RET_INVALID_PARAM, SNP_CPUID_MAX_ENTRIES,
};
use super::kvm_vm::KvmCocoVm;
use super::memory::{ranges_of, ConversionExits, GuestRange, PrivateMemoryOps, PAGE_SIZE};
use super::snp_regs::{vcpu_registers, SnpVcpuRegisters};
use super::{CocoError, CocoExits, ExitAction, LaunchedVm, PlatformSetup, SnpHost};

/// `SNP policy` bit 17, which must be one.
pub const SNP_POLICY_RSVD_MBO: u64 = 1 << 17;
/// The hypercalls whose exits igvmm handles: only `KVM_HC_MAP_GPA_RANGE`.
pub const EXIT_HYPERCALL_MASK: u64 = 1 << ffi::KVM_HC_MAP_GPA_RANGE;

/// The ioctls of an SEV-SNP launch and of memory conversions.
pub trait SnpVmOps: PrivateMemoryOps {
    /// `KVM_CREATE_VM`.
    fn create_vm(&mut self, vm_type: u64) -> Result<(), CocoError>;
    /// `KVM_ENABLE_CAP` on the VM with `args[0] = arg`.
    fn enable_cap(&mut self, cap: u32, arg: u64) -> Result<(), CocoError>;
    /// `KVM_SEV_INIT2`.
    fn sev_init2(&mut self, init: &kvm_sev_init) -> Result<(), CocoError>;
    /// `KVM_CREATE_GUEST_MEMFD`; returns an id for [`Self::set_user_memory_region2`].
    fn create_guest_memfd(&mut self, size: u64) -> Result<u32, CocoError>;
    /// `KVM_SET_USER_MEMORY_REGION2` with `KVM_MEM_GUEST_MEMFD`; the shared half is the VMM's
    /// mapping of `[gpa, gpa + size)`.
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
    /// Runs the VMM's platform setup (irqchip, PIT) before the first vCPU.
    fn setup_platform(&mut self) -> Result<(), CocoError>;
    /// `KVM_CREATE_VCPU` and `KVM_SET_CPUID2`.
    fn create_vcpu(&mut self, index: u32, cpuid: &[kvm_cpuid_entry2]) -> Result<(), CocoError>;
    /// `KVM_SET_REGS`, `KVM_SET_SREGS`, `KVM_SET_FPU`, `KVM_SET_XCRS`, `KVM_SET_DEBUGREGS` and
    /// `KVM_SET_MSRS`.
    fn set_vcpu_registers(
        &mut self,
        index: u32,
        registers: &SnpVcpuRegisters,
    ) -> Result<(), CocoError>;
    /// `KVM_SEV_SNP_LAUNCH_START`.
    fn launch_start(&mut self, start: &kvm_sev_snp_launch_start) -> Result<(), CocoError>;
    /// `KVM_SEV_SNP_LAUNCH_UPDATE` of `source.len()` bytes (a multiple of 4 KiB) at
    /// `gfn_start`, looping until KVM has processed them all. When the firmware rejects a CPUID
    /// page, the page it wrote back is copied into `source` and the error is
    /// [`CocoError::Firmware`].
    fn launch_update(
        &mut self,
        gfn_start: u64,
        page_type: u8,
        source: &mut [u8],
    ) -> Result<(), CocoError>;
    /// `KVM_SEV_SNP_LAUNCH_FINISH`; `id_block` and `id_auth` are set when `id_block_en` is.
    fn launch_finish(
        &mut self,
        finish: &kvm_sev_snp_launch_finish,
        id_block: Option<&[u8]>,
        id_auth: Option<&[u8]>,
    ) -> Result<(), CocoError>;
}

/// What the launch needs besides the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct SnpLaunchConfig {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// The CPUID table of each vCPU, in index order. vCPU 0's table fills the CPUID page, and
    /// its leaf 1 EAX is the RDX of vCPUs that start at reset.
    pub cpuid: Vec<Vec<kvm_cpuid_entry2>>,
    /// `HOST_DATA` for the attestation report.
    pub host_data: [u8; 32],
    /// Fail instead of retrying when the firmware corrects the CPUID page.
    pub strict_cpuid: bool,
    /// `KVM_X86_SEV_VMSA_FEATURES`, when known; INIT2 features outside it are rejected early.
    pub supported_vmsa_features: Option<u64>,
    /// `KVM_X86_SNP_POLICY_BITS`, when known; policy bits outside it are rejected early.
    pub supported_policy_bits: Option<u64>,
}

/// The outcome of a launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpLaunchReport {
    /// The launch digest igvmm predicts for this launch.
    pub predicted: Measurement,
    /// `LAUNCH_UPDATE` calls issued (retries included).
    pub launch_updates: usize,
    /// CPUID pages that were retried after the firmware corrected them.
    pub cpuid_retries: usize,
}

/// Returns CPUID leaf 1 EAX (the processor signature) of a CPUID table, or 0.
pub fn cpuid_signature(entries: &[kvm_cpuid_entry2]) -> u32 {
    entries
        .iter()
        .find(|entry| entry.function == 1)
        .map_or(0, |entry| entry.eax)
}

/// Builds the SNP CPUID page from a vCPU's CPUID table; returns it and the number of entries
/// left out because the page has room for 64.
///
/// Leaf 0xD subleaves 0 and 1 describe the XSAVE area for XCR0 = 1 (`EBX = 0x240`,
/// `XCR0_IN = 1`), because the guest computes larger sizes itself from the other subleaves; QEMU
/// fills the page the same way.
pub fn snp_cpuid_page(entries: &[kvm_cpuid_entry2]) -> (SnpCpuidPage, usize) {
    let mut page = SnpCpuidPage {
        count: 0,
        reserved1: 0,
        reserved2: 0,
        functions: [SnpCpuidFunction::default(); SNP_CPUID_MAX_ENTRIES],
    };
    let mut count = 0usize;
    for (slot, entry) in page.functions.iter_mut().zip(entries) {
        let ecx_in = if entry.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0 {
            entry.index
        } else {
            0
        };
        let mut function = SnpCpuidFunction {
            eax_in: entry.function,
            ecx_in,
            xcr0_in: 0,
            xss_in: 0,
            eax: entry.eax,
            ebx: entry.ebx,
            ecx: entry.ecx,
            edx: entry.edx,
            reserved: 0,
        };
        if entry.function == 0xD && ecx_in <= 1 {
            function.ebx = 0x240;
            function.xcr0_in = 1;
            function.xss_in = 0;
        }
        *slot = function;
        count += 1;
    }
    page.count = count as u32;
    (page, entries.len().saturating_sub(count))
}

/// Describes the leaves the firmware changed between `sent` and `corrected`.
pub fn cpuid_changes(sent: &[u8], corrected: &[u8]) -> Vec<String> {
    let sent = SnpCpuidPage::from_page(sent);
    let corrected = SnpCpuidPage::from_page(corrected);
    let mut changes = Vec::new();
    if sent.count != corrected.count {
        changes.push(format!("count {} -> {}", sent.count, corrected.count));
    }
    for (before, after) in sent.functions.iter().zip(corrected.functions.iter()) {
        if before == after {
            continue;
        }
        let registers = [
            ("eax", before.eax, after.eax),
            ("ebx", before.ebx, after.ebx),
            ("ecx", before.ecx, after.ecx),
            ("edx", before.edx, after.edx),
        ];
        let mut parts: Vec<String> = registers
            .iter()
            .filter(|(_, old, new)| old != new)
            .map(|(name, old, new)| format!("{name} {old:#x} -> {new:#x}"))
            .collect();
        if parts.is_empty() {
            parts.push("inputs changed".into());
        }
        changes.push(format!(
            "leaf {:#x}.{:#x}: {}",
            after.eax_in,
            after.ecx_in,
            parts.join(" ")
        ));
    }
    changes
}

/// Builds the source bytes of a launch operation: file data zero-padded to the operation size,
/// or the CPUID page for CPUID operations.
fn operation_source(op: &LaunchOp, cpuid_page: &[u8; 4096]) -> Result<Vec<u8>, CocoError> {
    let size = usize::try_from(op.size).map_err(|_| CocoError::OutsideMemory {
        gpa: op.gpa,
        size: op.size,
    })?;
    let mut source = vec![0u8; size];
    match (op.kind, &op.data) {
        (PageKind::Cpuid | PageKind::CpuidXf, _) => {
            // The file's CPUID contents are replaced by the host's table, as QEMU does.
            for chunk in source.chunks_exact_mut(4096) {
                chunk.copy_from_slice(cpuid_page);
            }
        }
        (PageKind::Secrets, _) | (_, PageData::Zero) => {}
        (_, PageData::Bytes(bytes)) => {
            let len = bytes.len().min(size);
            if let (Some(target), Some(data)) = (source.get_mut(..len), bytes.get(..len)) {
                target.copy_from_slice(data);
            }
        }
    }
    Ok(source)
}

/// Launches `plan` through `ops`: the whole sequence of the module documentation.
pub fn launch(
    ops: &mut impl SnpVmOps,
    plan: &Plan,
    regions: &[GuestRange],
    config: &SnpLaunchConfig,
) -> Result<SnpLaunchReport, CocoError> {
    if plan.platform != Platform::SevSnp {
        return Err(CocoError::WrongPlatform {
            expected: "sev-snp",
            found: plan.platform.to_string(),
        });
    }
    let vcpu0_cpuid = config.cpuid.first().map(Vec::as_slice).unwrap_or_default();
    let signature = cpuid_signature(vcpu0_cpuid);
    let states = measure::snp_vcpu_states(plan, config.vcpus, signature)?;
    let vmsa_features = states
        .first()
        .map_or(0, KvmSnpVcpuState::init2_vmsa_features);
    if let Some(supported) = config.supported_vmsa_features {
        if vmsa_features & !supported != 0 {
            return Err(CocoError::UnsupportedVmsaFeatures {
                requested: vmsa_features,
                supported,
                missing: vmsa_features & !supported,
            });
        }
    }
    let policy = plan.guest_policy.ok_or(CocoError::MissingPolicy)?;
    if policy & SNP_POLICY_RSVD_MBO == 0 {
        return Err(CocoError::InvalidOption {
            option: "SEV-SNP guest policy",
            reason: format!("{policy:#x} lacks bit 17, which must be one"),
        });
    }
    if let Some(bits) = config.supported_policy_bits {
        if policy & !bits != 0 {
            return Err(CocoError::InvalidOption {
                option: "SEV-SNP guest policy",
                reason: format!(
                    "{policy:#x} has bits {:#x} that this host's firmware does not support",
                    policy & !bits
                ),
            });
        }
    }
    let predicted = measure::measure_snp(
        plan,
        SnpMode::KvmLaunch {
            vcpus: config.vcpus,
            cpuid_1_eax: signature,
        },
    )?;
    log::info!("predicted SEV-SNP launch digest {}", predicted.digest_hex());

    // Steps 1 and 2: the VM, hypercall exits and SEV-SNP initialization.
    ops.create_vm(KVM_X86_SNP_VM)?;
    ops.enable_cap(KVM_CAP_EXIT_HYPERCALL, EXIT_HYPERCALL_MASK)?;
    ops.sev_init2(&kvm_sev_init {
        vmsa_features,
        ..Default::default()
    })?;

    // Step 3: private memory.
    for (slot, region) in regions.iter().enumerate() {
        let gmem = ops.create_guest_memfd(region.size)?;
        ops.set_user_memory_region2(slot as u32, region.gpa, region.size, gmem, 0)?;
        ops.set_memory_attributes(region.gpa, region.size, KVM_MEMORY_ATTRIBUTE_PRIVATE)?;
    }
    let inside = |op: &LaunchOp| regions.iter().any(|r| r.contains(op.gpa, op.size));
    for op in &plan.operations {
        if !inside(op) {
            return Err(CocoError::OutsideMemory {
                gpa: op.gpa,
                size: op.size,
            });
        }
        if op.kind == PageKind::Shared {
            ops.set_memory_attributes(op.gpa, op.size, 0)?;
            if let PageData::Bytes(bytes) = &op.data {
                ops.write_shared(op.gpa, bytes)?;
            }
        }
    }

    // Step 4: platform devices and vCPUs.
    ops.setup_platform()?;
    for (index, state) in states.iter().enumerate() {
        let cpuid = config
            .cpuid
            .get(index)
            .map(Vec::as_slice)
            .unwrap_or(vcpu0_cpuid);
        ops.create_vcpu(index as u32, cpuid)?;
        ops.set_vcpu_registers(index as u32, &vcpu_registers(state))?;
    }

    // Step 5.
    ops.launch_start(&kvm_sev_snp_launch_start {
        policy,
        ..Default::default()
    })?;

    // Step 6: the pages, in plan order.
    let (cpuid_page, dropped) = snp_cpuid_page(vcpu0_cpuid);
    if dropped > 0
        && plan
            .operations
            .iter()
            .any(|op| snp_page_type(op.kind) == Some(SnpPageType::Cpuid))
    {
        log::warn!(
            "the SNP CPUID page holds 64 leaves; {dropped} leaves of the vCPU table are left out"
        );
    }
    let cpuid_page = cpuid_page.to_page();
    let mut launch_updates = 0;
    let mut cpuid_retries = 0;
    for op in &plan.operations {
        let Some(page_type) = snp_page_type(op.kind) else {
            continue;
        };
        let mut source = operation_source(op, &cpuid_page)?;
        let sent = source.clone();
        launch_updates += 1;
        match ops.launch_update(op.gpa / PAGE_SIZE, page_type as u8, &mut source) {
            Ok(()) => {}
            Err(CocoError::Firmware {
                fw_error: SEV_RET_INVALID_PARAM,
                ..
            }) if page_type == SnpPageType::Cpuid => {
                let changes = cpuid_changes(&sent, &source);
                if config.strict_cpuid {
                    return Err(CocoError::CpuidRejected {
                        gpa: op.gpa,
                        changes,
                    });
                }
                log::warn!(
                    "the SEV firmware corrected the CPUID page at {:#x}: {}; retrying with its values",
                    op.gpa,
                    changes.join(", ")
                );
                cpuid_retries += 1;
                launch_updates += 1;
                ops.launch_update(op.gpa / PAGE_SIZE, page_type as u8, &mut source)?;
            }
            Err(error) => return Err(error),
        }
    }

    // Step 7.
    let mut finish = kvm_sev_snp_launch_finish {
        host_data: config.host_data,
        ..Default::default()
    };
    let id_block = plan.snp_id_block.as_ref();
    if let Some(block) = id_block {
        finish.id_block_en = 1;
        finish.auth_key_en = u8::from(block.author_key_enabled);
    }
    ops.launch_finish(
        &finish,
        id_block.map(|block| block.id_block.as_slice()),
        id_block.map(|block| block.id_auth.as_slice()),
    )?;
    log::info!(
        "SEV-SNP launch finished: {launch_updates} LAUNCH_UPDATE calls, {} vCPUs",
        config.vcpus
    );
    Ok(SnpLaunchReport {
        predicted,
        launch_updates,
        cpuid_retries,
    })
}

// ---------------------------------------------------------------------------------------------
// KVM implementation

/// Size of the staging buffer that `LAUNCH_UPDATE` copies from: one 2 MiB operation.
const STAGING_SIZE: usize = 2 << 20;

/// [`SnpVmOps`] on a real host.
pub struct KvmSnpOps<'a> {
    base: KvmCocoVm<'a>,
    sev: std::fs::File,
    staging: MmapRegion,
}

impl<'a> KvmSnpOps<'a> {
    /// Prepares a launch on `host` with `shared` as the shared half of guest memory.
    pub fn new(
        host: SnpHost,
        shared: GuestMemoryMmap,
        setup: PlatformSetup<'a>,
    ) -> Result<Self, CocoError> {
        let staging = MmapRegion::new(STAGING_SIZE).map_err(|error| CocoError::Io {
            operation: "allocating the LAUNCH_UPDATE staging buffer".into(),
            source: std::io::Error::other(error.to_string()),
        })?;
        Ok(Self {
            base: KvmCocoVm::new(host.kvm, shared, setup),
            sev: host.sev,
            staging,
        })
    }

    fn sev_command(&self, name: &str, id: u32, data: u64) -> Result<(), CocoError> {
        let mut cmd = kvm_sev_cmd {
            id,
            data,
            sev_fd: self.sev.as_raw_fd() as u32,
            ..Default::default()
        };
        self.base.vm()?.encrypt_op_sev(&mut cmd).map_err(|error| {
            let source = std::io::Error::from_raw_os_error(error.errno());
            if cmd.error != 0 {
                CocoError::Firmware {
                    operation: name.to_string(),
                    source,
                    fw_error: cmd.error,
                }
            } else {
                CocoError::Io {
                    operation: name.to_string(),
                    source,
                }
            }
        })
    }

    /// Ends the launch and hands the VM to the vCPU loop.
    pub fn into_launched(self, predicted: Measurement) -> Result<LaunchedVm, CocoError> {
        let vm = self.base.vm()?.clone();
        let (kvm, vcpus, memory, private) = self.base.into_runtime()?;
        let ranges = private
            .backing
            .slots
            .iter()
            .map(|slot| slot.range)
            .collect();
        let exits = SnpExits {
            conversions: ConversionExits {
                memory: private,
                ranges,
            },
        };
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

impl PrivateMemoryOps for KvmSnpOps<'_> {
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

impl SnpVmOps for KvmSnpOps<'_> {
    fn create_vm(&mut self, vm_type: u64) -> Result<(), CocoError> {
        self.base.create_vm(vm_type)
    }

    fn enable_cap(&mut self, cap: u32, arg: u64) -> Result<(), CocoError> {
        self.base.enable_cap(cap, arg)
    }

    fn sev_init2(&mut self, init: &kvm_sev_init) -> Result<(), CocoError> {
        let mut init = *init;
        let data = std::ptr::addr_of_mut!(init) as u64;
        self.sev_command("KVM_SEV_INIT2", KVM_SEV_INIT2, data)
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

    fn create_vcpu(&mut self, index: u32, cpuid: &[kvm_cpuid_entry2]) -> Result<(), CocoError> {
        self.base.create_vcpu(index)?;
        let table = CpuId::from_entries(cpuid).map_err(|_| CocoError::Io {
            operation: format!("building the CPUID table of vCPU {index}"),
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        self.base
            .vcpu(index)?
            .set_cpuid2(&table)
            .map_err(|error| CocoError::kvm(format!("KVM_SET_CPUID2 on vCPU {index}"), error))
    }

    fn set_vcpu_registers(
        &mut self,
        index: u32,
        registers: &SnpVcpuRegisters,
    ) -> Result<(), CocoError> {
        let vcpu = self.base.vcpu(index)?;
        let failed = |what: &str| {
            let what = format!("{what} on vCPU {index}");
            move |error: kvm_ioctls::Error| CocoError::kvm(what, error)
        };
        // Keep the APIC base, CR8 and pending interrupts that KVM set up for this vCPU.
        let current = vcpu.get_sregs().map_err(failed("KVM_GET_SREGS"))?;
        let sregs = kvm_bindings::kvm_sregs {
            apic_base: current.apic_base,
            cr8: current.cr8,
            interrupt_bitmap: current.interrupt_bitmap,
            ..registers.sregs
        };
        vcpu.set_sregs(&sregs).map_err(failed("KVM_SET_SREGS"))?;
        vcpu.set_regs(&registers.regs)
            .map_err(failed("KVM_SET_REGS"))?;
        vcpu.set_fpu(&registers.fpu)
            .map_err(failed("KVM_SET_FPU"))?;
        vcpu.set_xcrs(&registers.xcrs)
            .map_err(failed("KVM_SET_XCRS"))?;
        vcpu.set_debug_regs(&registers.debugregs)
            .map_err(failed("KVM_SET_DEBUGREGS"))?;
        let msrs = Msrs::from_entries(&registers.msrs).map_err(|_| CocoError::Io {
            operation: format!("building the MSR list of vCPU {index}"),
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        let written = vcpu.set_msrs(&msrs).map_err(failed("KVM_SET_MSRS"))?;
        if written != registers.msrs.len() {
            return Err(CocoError::Io {
                operation: format!(
                    "KVM_SET_MSRS on vCPU {index} set {written} of {} MSRs",
                    registers.msrs.len()
                ),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        Ok(())
    }

    fn launch_start(&mut self, start: &kvm_sev_snp_launch_start) -> Result<(), CocoError> {
        let mut start = *start;
        let data = std::ptr::addr_of_mut!(start) as u64;
        self.sev_command("KVM_SEV_SNP_LAUNCH_START", KVM_SEV_SNP_LAUNCH_START, data)
    }

    fn launch_update(
        &mut self,
        gfn_start: u64,
        page_type: u8,
        source: &mut [u8],
    ) -> Result<(), CocoError> {
        let name = format!("KVM_SEV_SNP_LAUNCH_UPDATE at gfn {gfn_start:#x} type {page_type}");
        let mut done = 0usize;
        while done < source.len() {
            let chunk_len = (source.len() - done).min(STAGING_SIZE);
            let Some(chunk) = source.get_mut(done..done + chunk_len) else {
                break;
            };
            // SAFETY: the staging region is this struct's own anonymous mapping of STAGING_SIZE
            // bytes and `chunk_len <= STAGING_SIZE`; nothing else references it during this call.
            let staging =
                unsafe { std::slice::from_raw_parts_mut(self.staging.as_ptr(), chunk_len) };
            staging.copy_from_slice(chunk);
            let mut update = kvm_sev_snp_launch_update {
                gfn_start: gfn_start + (done as u64) / PAGE_SIZE,
                uaddr: self.staging.as_ptr() as u64,
                len: chunk_len as u64,
                type_: page_type,
                ..Default::default()
            };
            // KVM advances gfn_start, uaddr and len; it may stop early at a slot end or on a
            // signal, so repeat until len is 0.
            while update.len > 0 {
                let data = std::ptr::addr_of_mut!(update) as u64;
                match self.sev_command(&name, KVM_SEV_SNP_LAUNCH_UPDATE, data) {
                    Ok(()) => {}
                    Err(CocoError::Io { source, .. })
                        if source.raw_os_error() == Some(libc::EAGAIN) => {}
                    Err(error) => {
                        if page_type == SnpPageType::Cpuid as u8 {
                            // The firmware wrote its corrected CPUID page over the source.
                            // SAFETY: as above; the ioctl has returned.
                            let written = unsafe {
                                std::slice::from_raw_parts(self.staging.as_ptr(), chunk_len)
                            };
                            chunk.copy_from_slice(written);
                        }
                        return Err(error);
                    }
                }
            }
            done += chunk_len;
        }
        Ok(())
    }

    fn launch_finish(
        &mut self,
        finish: &kvm_sev_snp_launch_finish,
        id_block: Option<&[u8]>,
        id_auth: Option<&[u8]>,
    ) -> Result<(), CocoError> {
        let mut finish = *finish;
        let mut block = [0u8; ffi::SNP_ID_BLOCK_SIZE];
        let mut auth = vec![0u8; ffi::SNP_ID_AUTH_SIZE];
        if finish.id_block_en != 0 {
            let (Some(id_block), Some(id_auth)) = (id_block, id_auth) else {
                return Err(CocoError::InvalidOption {
                    option: "SNP ID block",
                    reason: "id_block_en is set without an ID block".into(),
                });
            };
            for (target, byte) in block.iter_mut().zip(id_block) {
                *target = *byte;
            }
            for (target, byte) in auth.iter_mut().zip(id_auth) {
                *target = *byte;
            }
            finish.id_block_uaddr = block.as_ptr() as u64;
            finish.id_auth_uaddr = auth.as_ptr() as u64;
        }
        let data = std::ptr::addr_of_mut!(finish) as u64;
        self.sev_command("KVM_SEV_SNP_LAUNCH_FINISH", KVM_SEV_SNP_LAUNCH_FINISH, data)
    }
}

/// Launches `plan` on a host that passed [`super::probe_snp`].
///
/// `memory` is the shared half of guest memory (every region becomes one guest_memfd slot),
/// `setup` creates the VMM's in-kernel devices before the vCPUs exist.
pub fn launch_on_host(
    host: SnpHost,
    plan: &Plan,
    memory: GuestMemoryMmap,
    config: SnpLaunchConfig,
    setup: PlatformSetup<'_>,
) -> Result<LaunchedVm, CocoError> {
    let regions = ranges_of(&memory);
    let config = SnpLaunchConfig {
        supported_vmsa_features: config.supported_vmsa_features.or(host.vmsa_features),
        supported_policy_bits: config.supported_policy_bits.or(host.policy_bits),
        ..config
    };
    let mut ops = KvmSnpOps::new(host, memory, setup)?;
    let report = launch(&mut ops, plan, &regions, &config)?;
    ops.into_launched(report.predicted)
}

/// The exits of a running SEV-SNP guest.
struct SnpExits<M> {
    conversions: ConversionExits<M>,
}

impl<M: PrivateMemoryOps + Send + Sync> CocoExits for SnpExits<M> {
    fn memory_fault(&self, vcpu: u32, flags: u64, gpa: u64, size: u64) -> ExitAction {
        self.conversions.memory_fault(vcpu, flags, gpa, size)
    }

    fn hypercall(&self, _vcpu: u32, nr: u64, args: &[u64; 6]) -> Option<u64> {
        self.conversions.hypercall(nr, args)
    }

    fn system_event(&self, vcpu: u32, event_type: u32, data: &[u64]) -> ExitAction {
        if event_type == ffi::KVM_SYSTEM_EVENT_SEV_TERM {
            // data[0] contains the GHCB termination request: reason set in bits 15:12, code in
            // bits 23:16.
            let request = data.first().copied().unwrap_or(0);
            ExitAction::Stop(format!(
                "vCPU {vcpu}: the SEV-SNP guest requested termination (reason set {}, code {:#x})",
                (request >> 12) & 0xF,
                (request >> 16) & 0xFF
            ))
        } else {
            ExitAction::NotHandled
        }
    }

    fn unsupported_exit(
        &self,
        _vcpu: u32,
        _reason: u32,
        _run: &mut kvm_bindings::kvm_run,
    ) -> ExitAction {
        ExitAction::NotHandled
    }
}

// ---------------------------------------------------------------------------------------------
// Recorder

/// One recorded [`SnpVmOps`] call.
#[derive(Debug, Clone, PartialEq)]
pub enum SnpCall {
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
    /// `KVM_SEV_INIT2`.
    SevInit2 {
        /// `vmsa_features`.
        vmsa_features: u64,
        /// `flags`.
        flags: u32,
        /// `ghcb_version`.
        ghcb_version: u16,
    },
    /// `KVM_CREATE_GUEST_MEMFD`.
    CreateGuestMemfd {
        /// Size in bytes.
        size: u64,
    },
    /// `KVM_SET_USER_MEMORY_REGION2`.
    SetUserMemoryRegion2 {
        /// Slot.
        slot: u32,
        /// Flags.
        flags: u32,
        /// GPA.
        gpa: u64,
        /// Size.
        size: u64,
        /// guest_memfd id.
        guest_memfd: u32,
        /// Offset in the guest_memfd.
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
    /// `KVM_CREATE_VCPU` and `KVM_SET_CPUID2`.
    CreateVcpu {
        /// vCPU index.
        index: u32,
        /// The CPUID table.
        cpuid: Vec<kvm_cpuid_entry2>,
    },
    /// The register ioctls.
    SetVcpuRegisters {
        /// vCPU index.
        index: u32,
        /// The ioctl arguments.
        registers: Box<SnpVcpuRegisters>,
    },
    /// `KVM_SEV_SNP_LAUNCH_START`.
    LaunchStart {
        /// Guest policy.
        policy: u64,
        /// `gosvw`.
        gosvw: [u8; 16],
        /// Flags.
        flags: u16,
    },
    /// `KVM_SEV_SNP_LAUNCH_UPDATE`.
    LaunchUpdate {
        /// First GFN.
        gfn_start: u64,
        /// Page type.
        page_type: u8,
        /// The source bytes as sent.
        data: Vec<u8>,
    },
    /// `KVM_SEV_SNP_LAUNCH_FINISH`.
    LaunchFinish {
        /// `id_block_en`.
        id_block_en: u8,
        /// `auth_key_en`.
        auth_key_en: u8,
        /// `host_data`.
        host_data: [u8; 32],
        /// The ID block, when enabled.
        id_block: Option<Vec<u8>>,
        /// The ID authentication structure, when enabled.
        id_auth: Option<Vec<u8>>,
    },
    /// Discard of private pages (hole punch).
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

/// A [`SnpVmOps`] that records every call instead of issuing it.
#[derive(Debug, Default)]
pub struct SnpRecorder {
    calls: Mutex<Vec<SnpCall>>,
    guest_memfds: u32,
    /// When set, the first CPUID `LAUNCH_UPDATE` fails with `INVALID_PARAM` and this function
    /// rewrites the page, as the firmware does.
    pub cpuid_correction: Option<fn(&mut [u8])>,
}

impl SnpRecorder {
    /// Creates a recorder whose first CPUID `LAUNCH_UPDATE` is rejected and rewritten by
    /// `correct`.
    pub fn with_cpuid_correction(correct: fn(&mut [u8])) -> Self {
        Self {
            cpuid_correction: Some(correct),
            ..Self::default()
        }
    }

    /// Returns the calls recorded so far.
    pub fn calls(&self) -> Vec<SnpCall> {
        self.calls
            .lock()
            .map(|calls| calls.clone())
            .unwrap_or_default()
    }

    fn record(&self, call: SnpCall) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call);
        }
    }
}

impl PrivateMemoryOps for SnpRecorder {
    fn set_memory_attributes(&self, gpa: u64, size: u64, attributes: u64) -> Result<(), CocoError> {
        self.record(SnpCall::SetMemoryAttributes {
            gpa,
            size,
            attributes,
        });
        Ok(())
    }

    fn discard_private(&self, gpa: u64, size: u64) -> Result<(), CocoError> {
        self.record(SnpCall::DiscardPrivate { gpa, size });
        Ok(())
    }

    fn discard_shared(&self, gpa: u64, size: u64) -> Result<(), CocoError> {
        self.record(SnpCall::DiscardShared { gpa, size });
        Ok(())
    }
}

impl SnpVmOps for SnpRecorder {
    fn create_vm(&mut self, vm_type: u64) -> Result<(), CocoError> {
        self.record(SnpCall::CreateVm { vm_type });
        Ok(())
    }

    fn enable_cap(&mut self, cap: u32, arg: u64) -> Result<(), CocoError> {
        self.record(SnpCall::EnableCap { cap, arg });
        Ok(())
    }

    fn sev_init2(&mut self, init: &kvm_sev_init) -> Result<(), CocoError> {
        self.record(SnpCall::SevInit2 {
            vmsa_features: init.vmsa_features,
            flags: init.flags,
            ghcb_version: init.ghcb_version,
        });
        Ok(())
    }

    fn create_guest_memfd(&mut self, size: u64) -> Result<u32, CocoError> {
        self.record(SnpCall::CreateGuestMemfd { size });
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
        self.record(SnpCall::SetUserMemoryRegion2 {
            slot,
            flags: KVM_MEM_GUEST_MEMFD,
            gpa,
            size,
            guest_memfd,
            guest_memfd_offset,
        });
        Ok(())
    }

    fn write_shared(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), CocoError> {
        self.record(SnpCall::WriteShared {
            gpa,
            bytes: bytes.to_vec(),
        });
        Ok(())
    }

    fn setup_platform(&mut self) -> Result<(), CocoError> {
        self.record(SnpCall::SetupPlatform);
        Ok(())
    }

    fn create_vcpu(&mut self, index: u32, cpuid: &[kvm_cpuid_entry2]) -> Result<(), CocoError> {
        self.record(SnpCall::CreateVcpu {
            index,
            cpuid: cpuid.to_vec(),
        });
        Ok(())
    }

    fn set_vcpu_registers(
        &mut self,
        index: u32,
        registers: &SnpVcpuRegisters,
    ) -> Result<(), CocoError> {
        self.record(SnpCall::SetVcpuRegisters {
            index,
            registers: Box::new(*registers),
        });
        Ok(())
    }

    fn launch_start(&mut self, start: &kvm_sev_snp_launch_start) -> Result<(), CocoError> {
        self.record(SnpCall::LaunchStart {
            policy: start.policy,
            gosvw: start.gosvw,
            flags: start.flags,
        });
        Ok(())
    }

    fn launch_update(
        &mut self,
        gfn_start: u64,
        page_type: u8,
        source: &mut [u8],
    ) -> Result<(), CocoError> {
        self.record(SnpCall::LaunchUpdate {
            gfn_start,
            page_type,
            data: source.to_vec(),
        });
        if page_type == SnpPageType::Cpuid as u8 {
            if let Some(correct) = self.cpuid_correction.take() {
                correct(source);
                return Err(CocoError::Firmware {
                    operation: "KVM_SEV_SNP_LAUNCH_UPDATE".into(),
                    source: std::io::Error::from_raw_os_error(libc::EIO),
                    fw_error: SEV_RET_INVALID_PARAM,
                });
            }
        }
        Ok(())
    }

    fn launch_finish(
        &mut self,
        finish: &kvm_sev_snp_launch_finish,
        id_block: Option<&[u8]>,
        id_auth: Option<&[u8]>,
    ) -> Result<(), CocoError> {
        self.record(SnpCall::LaunchFinish {
            id_block_en: finish.id_block_en,
            auth_key_en: finish.auth_key_en,
            host_data: finish.host_data,
            id_block: id_block.map(<[u8]>::to_vec),
            id_auth: id_auth.map(<[u8]>::to_vec),
        });
        Ok(())
    }
}

/// Returns the exit handler of a recorded launch, for tests of the runtime conversions.
pub fn recorder_exits(recorder: Arc<SnpRecorder>, ranges: Vec<GuestRange>) -> Arc<dyn CocoExits> {
    Arc::new(SnpExits {
        conversions: ConversionExits {
            memory: recorder,
            ranges,
        },
    })
}
