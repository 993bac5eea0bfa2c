//! Confidential-VM backends: AMD SEV-SNP ([`snp`]) and Intel TDX ([`tdx`]) on Linux KVM.
//!
//! Both backends execute a [`Plan`](igvm_loader::plan::Plan) through KVM's confidential-VM
//! ioctls, so that the hardware measures what the measurement models in
//! [`igvm_loader::measure`] predict. Every ioctl of a backend goes through one trait
//! ([`snp::SnpVmOps`], [`tdx::TdxVmOps`]). The KVM implementation issues it, and a recorder keeps
//! the calls, their arguments and the page bytes for tests. The layouts follow the Linux 6.16 to
//! 7.3 UAPI ([`ffi`]).
//!
//! Entry points for `igvmm run`: [`probe_snp`] / [`probe_tdx`] check the host and name what it
//! lacks; [`snp::launch_on_host`] / [`tdx::launch_on_host`] create and measure the guest and
//! return a [`LaunchedVm`]; the vCPU loop passes the exits it does not handle itself to
//! [`CocoExits`].
//!
//! Known gaps: no hardware run has been made yet. On the development machines (no SEV-SNP, TDX or
//! guest_memfd) these paths are verified by layout assertions, recorded ioctl sequences and
//! replays of the recordings through the measurement models.

pub mod ffi;
pub mod kvm_vm;
pub mod memory;
pub mod snp;
pub mod snp_regs;
pub mod tdx;

pub use snp::launch_on_host as launch_snp;
pub use tdx::launch_on_host as launch_tdx;

use std::fs::File;
use std::sync::Arc;

use igvm_loader::measure::{MeasureError, Measurement};
use kvm_bindings::kvm_run;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

/// A reason a confidential VM cannot be created or run.
#[derive(Debug, thiserror::Error)]
pub enum CocoError {
    /// The host lacks what the platform needs; every missing item is named.
    #[error("this host cannot run {platform} guests: {}", missing.join("; "))]
    HostLacks {
        /// `SEV-SNP` or `TDX`.
        platform: &'static str,
        /// The missing items.
        missing: Vec<String>,
    },
    /// A KVM ioctl or system call failed.
    #[error("{operation} failed: {source}")]
    Io {
        /// The operation, for example `KVM_SEV_INIT2`.
        operation: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The SEV firmware rejected a command.
    #[error("{operation} failed: {source} (SEV firmware error {fw_error:#x})")]
    Firmware {
        /// The command.
        operation: String,
        /// The ioctl error.
        #[source]
        source: std::io::Error,
        /// The firmware status (`SEV_RET_*`).
        fw_error: u32,
    },
    /// The TDX module rejected a command.
    #[error("{operation} failed: {source} (TDX module status {hw_error:#x})")]
    TdxModule {
        /// The command.
        operation: String,
        /// The ioctl error.
        #[source]
        source: std::io::Error,
        /// The SEAMCALL status.
        hw_error: u64,
    },
    /// The plan's VP contexts cannot be launched.
    #[error(transparent)]
    Plan(#[from] MeasureError),
    /// The SEV-SNP plan has no guest policy.
    #[error("the file has no SEV-SNP GuestPolicy header; LAUNCH_START needs a policy")]
    MissingPolicy,
    /// The plan is for another platform.
    #[error("the plan is for {found}, not {expected}")]
    WrongPlatform {
        /// The platform of the backend.
        expected: &'static str,
        /// The plan's platform.
        found: String,
    },
    /// vp 0's `SEV_FEATURES` requests features the host's KVM does not offer.
    #[error(
        "vp 0 requests SEV_FEATURES {requested:#x} for KVM_SEV_INIT2, but this host supports only \
         {supported:#x} (KVM_X86_SEV_VMSA_FEATURES); unsupported bits {missing:#x}"
    )]
    UnsupportedVmsaFeatures {
        /// The features without `SNP_ACTIVE`.
        requested: u64,
        /// The features KVM reported.
        supported: u64,
        /// `requested & !supported`.
        missing: u64,
    },
    /// The firmware corrected the CPUID page and `--strict-cpuid` is set.
    #[error("the SEV firmware rejected the CPUID page at {gpa:#x}; it changed: {}", changes.join(", "))]
    CpuidRejected {
        /// GPA of the page.
        gpa: u64,
        /// The changed leaves.
        changes: Vec<String>,
    },
    /// An operation's GPA is outside guest memory.
    #[error("the page at {gpa:#x}+{size:#x} is outside the guest memory slots")]
    OutsideMemory {
        /// First byte.
        gpa: u64,
        /// Length.
        size: u64,
    },
    /// A conversion request from the guest is invalid.
    #[error("cannot convert {gpa:#x}+{size:#x}: {reason}")]
    InvalidConversion {
        /// First byte.
        gpa: u64,
        /// Length.
        size: u64,
        /// Why.
        reason: &'static str,
    },
    /// A TDX VP context differs from the fixed initial state of a TD vCPU.
    #[error(
        "VP context for vp {vp_index} sets {field} = {value:#x}, but the TDX module starts every \
         vCPU with {expected:#x}; remove the context or match the TDX initial state"
    )]
    TdxVpContext {
        /// VP index.
        vp_index: u16,
        /// Register name.
        field: &'static str,
        /// The file's value.
        value: u64,
        /// The TDX module's value.
        expected: u64,
    },
    /// A TDX plan has an SEV-SNP VMSA.
    #[error("the TDX plan has an SEV-SNP VMSA for vp {vp_index}")]
    TdxSnpContext {
        /// VP index.
        vp_index: u16,
    },
    /// A TDX request is not supported by this host's TDX module or KVM.
    #[error(
        "{what} is not supported by this host: requested {requested:#x}, supported {supported:#x}"
    )]
    TdxUnsupported {
        /// `attributes` or `XFAM`.
        what: &'static str,
        /// Requested bits.
        requested: u64,
        /// Supported bits.
        supported: u64,
    },
    /// A command-line value is invalid.
    #[error("{option}: {reason}")]
    InvalidOption {
        /// The option.
        option: &'static str,
        /// The problem.
        reason: String,
    },
    /// Writing launch data into guest memory failed.
    #[error("writing {len} bytes at {gpa:#x} into guest memory failed")]
    GuestWrite {
        /// GPA.
        gpa: u64,
        /// Length.
        len: usize,
    },
}

impl CocoError {
    /// Wraps a kvm-ioctls error for `operation`.
    pub(crate) fn kvm(operation: impl Into<String>, error: kvm_ioctls::Error) -> Self {
        CocoError::Io {
            operation: operation.into(),
            source: std::io::Error::from_raw_os_error(error.errno()),
        }
    }
}

/// The confidential-VM capabilities of a host, as the probes read them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// `KVM_CHECK_EXTENSION(KVM_CAP_VM_TYPES)` on `/dev/kvm`.
    pub vm_types: i32,
    /// `KVM_CAP_GUEST_MEMFD`.
    pub guest_memfd: i32,
    /// `KVM_CAP_MEMORY_ATTRIBUTES`.
    pub memory_attributes: i32,
    /// `KVM_CAP_USER_MEMORY2`.
    pub user_memory2: i32,
    /// `KVM_CAP_EXIT_HYPERCALL`.
    pub exit_hypercall: i32,
    /// The error from opening `/dev/sev`, if opening failed.
    pub dev_sev_error: Option<String>,
}

const SNP_VM_TYPE_BIT: i32 = 1 << 4;
const TDX_VM_TYPE_BIT: i32 = 1 << 5;
const HC_MAP_GPA_RANGE_BIT: i32 = 1 << 12;

impl HostFacts {
    /// Reads the capabilities from `/dev/kvm` and tries to open `/dev/sev` when `with_sev`.
    pub fn read(kvm: &Kvm, with_sev: bool) -> Self {
        let check = |cap: u32| kvm.check_extension_raw(libc::c_ulong::from(cap));
        let dev_sev_error = if with_sev {
            open_dev_sev().err().map(|error| error.to_string())
        } else {
            None
        };
        HostFacts {
            vm_types: check(ffi::KVM_CAP_VM_TYPES),
            guest_memfd: check(ffi::KVM_CAP_GUEST_MEMFD),
            memory_attributes: check(ffi::KVM_CAP_MEMORY_ATTRIBUTES),
            user_memory2: check(ffi::KVM_CAP_USER_MEMORY2),
            exit_hypercall: check(ffi::KVM_CAP_EXIT_HYPERCALL),
            dev_sev_error,
        }
    }

    fn common_missing(&self, missing: &mut Vec<String>) {
        if self.guest_memfd <= 0 {
            missing.push(format!(
                "KVM_CAP_GUEST_MEMFD is {} (no guest_memfd)",
                self.guest_memfd
            ));
        }
        if self.memory_attributes < 0
            || (self.memory_attributes as u64) & ffi::KVM_MEMORY_ATTRIBUTE_PRIVATE == 0
        {
            missing.push(format!(
                "KVM_CAP_MEMORY_ATTRIBUTES is {:#x} (no KVM_MEMORY_ATTRIBUTE_PRIVATE)",
                self.memory_attributes
            ));
        }
        if self.user_memory2 <= 0 {
            missing.push("KVM_CAP_USER_MEMORY2 is 0".to_string());
        }
        if self.exit_hypercall & HC_MAP_GPA_RANGE_BIT == 0 {
            missing.push(format!(
                "KVM_CAP_EXIT_HYPERCALL is {:#x} (no KVM_HC_MAP_GPA_RANGE exits)",
                self.exit_hypercall
            ));
        }
    }

    /// Lists what an SEV-SNP launch needs and this host lacks.
    pub fn snp_missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if self.vm_types & SNP_VM_TYPE_BIT == 0 {
            missing.push(format!(
                "KVM_CAP_VM_TYPES is {:#x} (no KVM_X86_SNP_VM, bit 4)",
                self.vm_types
            ));
        }
        if let Some(error) = &self.dev_sev_error {
            missing.push(format!("/dev/sev cannot be opened ({error})"));
        }
        self.common_missing(&mut missing);
        missing
    }

    /// Lists what a TDX launch needs and this host lacks.
    pub fn tdx_missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if self.vm_types & TDX_VM_TYPE_BIT == 0 {
            missing.push(format!(
                "KVM_CAP_VM_TYPES is {:#x} (no KVM_X86_TDX_VM, bit 5)",
                self.vm_types
            ));
        }
        self.common_missing(&mut missing);
        missing
    }
}

/// Opens the SEV firmware device, which SEV-SNP launch commands need.
pub fn open_dev_sev() -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/sev")
}

fn open_kvm(platform: &'static str) -> Result<Kvm, CocoError> {
    Kvm::new().map_err(|error| CocoError::HostLacks {
        platform,
        missing: vec![format!("/dev/kvm cannot be opened ({error})")],
    })
}

/// A host that passed the SEV-SNP probe.
#[derive(Debug)]
pub struct SnpHost {
    /// `/dev/kvm`.
    pub kvm: Kvm,
    /// `/dev/sev`, kept open until `LAUNCH_FINISH`.
    pub sev: File,
    /// `KVM_X86_SEV_VMSA_FEATURES`, when KVM reports it.
    pub vmsa_features: Option<u64>,
    /// `KVM_X86_SNP_POLICY_BITS` (Linux 6.19 and later), when KVM reports it.
    pub policy_bits: Option<u64>,
}

/// Checks that this host can launch SEV-SNP guests. The error names every missing item.
pub fn probe_snp() -> Result<SnpHost, CocoError> {
    let kvm = open_kvm("SEV-SNP")?;
    let facts = HostFacts::read(&kvm, true);
    let missing = facts.snp_missing();
    if !missing.is_empty() {
        return Err(CocoError::HostLacks {
            platform: "SEV-SNP",
            missing,
        });
    }
    let sev = open_dev_sev().map_err(|source| CocoError::Io {
        operation: "opening /dev/sev".into(),
        source,
    })?;
    let vmsa_features =
        ffi::get_system_attr(&kvm, ffi::KVM_X86_GRP_SEV, ffi::KVM_X86_SEV_VMSA_FEATURES).ok();
    let policy_bits =
        ffi::get_system_attr(&kvm, ffi::KVM_X86_GRP_SEV, ffi::KVM_X86_SNP_POLICY_BITS).ok();
    log::info!("SEV-SNP host: VMSA features {vmsa_features:#x?}, policy bits {policy_bits:#x?}");
    Ok(SnpHost {
        kvm,
        sev,
        vmsa_features,
        policy_bits,
    })
}

/// A host that passed the TDX probe.
#[derive(Debug)]
pub struct TdxHost {
    /// `/dev/kvm`.
    pub kvm: Kvm,
}

/// Checks that this host can launch TDX guests. The error names every missing item.
/// `KVM_TDX_CAPABILITIES` is read when the VM exists, in [`tdx::launch_on_host`].
pub fn probe_tdx() -> Result<TdxHost, CocoError> {
    let kvm = open_kvm("TDX")?;
    let facts = HostFacts::read(&kvm, false);
    let missing = facts.tdx_missing();
    if !missing.is_empty() {
        return Err(CocoError::HostLacks {
            platform: "TDX",
            missing,
        });
    }
    Ok(TdxHost { kvm })
}

/// Work the VMM does on the VM before the first vCPU exists: the in-kernel interrupt controller
/// (split for TDX), the PIT and anything else its device model needs.
pub type PlatformSetup<'a> = Box<dyn FnOnce(&VmFd) -> Result<(), CocoError> + 'a>;

/// A measured confidential VM, ready for the vCPU loop.
pub struct LaunchedVm {
    /// `/dev/kvm`.
    pub kvm: Kvm,
    /// The VM.
    pub vm: Arc<VmFd>,
    /// The vCPUs, in index order.
    pub vcpus: Vec<VcpuFd>,
    /// The shared half of guest memory, for devices.
    pub memory: GuestMemoryMmap,
    /// The handler for the exits that only confidential VMs produce.
    pub exits: Arc<dyn CocoExits>,
    /// The launch measurement that igvmm predicts for this launch.
    pub predicted: Measurement,
}

impl std::fmt::Debug for LaunchedVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchedVm")
            .field("vcpus", &self.vcpus.len())
            .field("predicted", &self.predicted.digest_hex())
            .finish()
    }
}

/// The vCPU loop's next step after a confidential-VM exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// The exit was handled; enter the guest again.
    Resume,
    /// The guest requested a stop; the text gives the reason.
    Stop(String),
    /// This handler does not handle the exit.
    NotHandled,
}

/// The exits that only SEV-SNP and TDX guests produce. The VMM's vCPU loop calls these for
/// `VcpuExit::MemoryFault`, `VcpuExit::Hypercall`, `VcpuExit::SystemEvent` and
/// `VcpuExit::Unsupported` before treating such an exit as an error.
pub trait CocoExits: Send + Sync {
    /// `KVM_EXIT_MEMORY_FAULT`: an implicit conversion of `[gpa, gpa + size)`.
    fn memory_fault(&self, vcpu: u32, flags: u64, gpa: u64, size: u64) -> ExitAction;
    /// `KVM_EXIT_HYPERCALL`: returns the value for the hypercall's `ret`, or `None` when `nr`
    /// is not `KVM_HC_MAP_GPA_RANGE`.
    fn hypercall(&self, vcpu: u32, nr: u64, args: &[u64; 6]) -> Option<u64>;
    /// `KVM_EXIT_SYSTEM_EVENT` of a type the generic loop does not know (SEV termination, TDX
    /// fatal error).
    fn system_event(&self, vcpu: u32, event_type: u32, data: &[u64]) -> ExitAction;
    /// An exit kvm-ioctls reports as `VcpuExit::Unsupported(reason)`; `run` is the vCPU's
    /// `kvm_run`, whose result fields the handler fills before the next `KVM_RUN`.
    fn unsupported_exit(&self, vcpu: u32, reason: u32, run: &mut kvm_run) -> ExitAction;
}

/// Parses `digits` hexadecimal digits into `N` bytes for a command-line option.
pub fn parse_hex<const N: usize>(option: &'static str, text: &str) -> Result<[u8; N], CocoError> {
    let text = text.trim();
    let text = text.strip_prefix("0x").unwrap_or(text);
    let bytes = hex::decode(text).map_err(|error| {
        let problem = match error {
            hex::FromHexError::InvalidHexCharacter { c, index } => {
                format!("{c:?} at position {index} is not a hexadecimal digit")
            }
            hex::FromHexError::OddLength => "an odd number of digits".to_string(),
            other => other.to_string(),
        };
        CocoError::InvalidOption {
            option,
            reason: format!("{problem}; expected {} hexadecimal digits", N * 2),
        }
    })?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| CocoError::InvalidOption {
        option,
        reason: format!(
            "{} bytes given; expected {N} bytes ({} hexadecimal digits)",
            bytes.len(),
            N * 2
        ),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn development_host_lacks_are_all_named() {
        // The values the development machines report (kvm_pvm, no SEV or TDX).
        let facts = HostFacts {
            vm_types: 1,
            guest_memfd: 0,
            memory_attributes: 0,
            user_memory2: 1,
            exit_hypercall: 0x1000,
            dev_sev_error: Some("No such file or directory (os error 2)".into()),
        };
        let error = CocoError::HostLacks {
            platform: "SEV-SNP",
            missing: facts.snp_missing(),
        };
        assert_eq!(
            error.to_string(),
            "this host cannot run SEV-SNP guests: KVM_CAP_VM_TYPES is 0x1 (no KVM_X86_SNP_VM, \
             bit 4); /dev/sev cannot be opened (No such file or directory (os error 2)); \
             KVM_CAP_GUEST_MEMFD is 0 (no guest_memfd); KVM_CAP_MEMORY_ATTRIBUTES is 0x0 (no \
             KVM_MEMORY_ATTRIBUTE_PRIVATE)"
        );
        assert_eq!(
            facts.tdx_missing(),
            [
                "KVM_CAP_VM_TYPES is 0x1 (no KVM_X86_TDX_VM, bit 5)",
                "KVM_CAP_GUEST_MEMFD is 0 (no guest_memfd)",
                "KVM_CAP_MEMORY_ATTRIBUTES is 0x0 (no KVM_MEMORY_ATTRIBUTE_PRIVATE)",
            ]
        );
    }

    #[test]
    fn capable_host_lacks_nothing() {
        let facts = HostFacts {
            vm_types: 0x3D,
            guest_memfd: 1,
            memory_attributes: 8,
            user_memory2: 1,
            exit_hypercall: 0x1000,
            dev_sev_error: None,
        };
        assert!(facts.snp_missing().is_empty());
        assert!(facts.tdx_missing().is_empty());
    }

    #[test]
    fn hex_options_need_exact_length() {
        assert_eq!(parse_hex::<2>("--x", "0xAbCd").unwrap(), [0xAB, 0xCD]);
        let error = parse_hex::<32>("--host-data", "abcd").unwrap_err();
        assert_eq!(
            error.to_string(),
            "--host-data: 2 bytes given; expected 32 bytes (64 hexadecimal digits)"
        );
        assert_eq!(
            parse_hex::<2>("--x", "zz00").unwrap_err().to_string(),
            "--x: 'z' at position 0 is not a hexadecimal digit; expected 4 hexadecimal digits"
        );
    }
}
