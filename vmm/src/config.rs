//! The configuration of [`crate::run_vm`]: the guest image and the machine to run it on.

use igvm_loader::plan::Plan;

use crate::console::{DebugconConfig, SerialConfig};
use crate::control::StopHandle;

/// Default guest RAM: 512 MiB.
pub const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;

/// The guest to run.
#[derive(Debug, Clone)]
pub enum GuestImage {
    /// The bytes of an IGVM file; the loader turns them into a plan for this machine.
    Igvm(Vec<u8>),
    /// A plan built by the caller, run as it is. Its parameter areas are not filled from
    /// this machine.
    Plan(Box<Plan>),
}

/// The platform to launch an IGVM file on. The confidential platforms have their own backends,
/// which [`crate::run_vm`] does not reach; it refuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformRequest {
    /// The strongest platform the file carries that this backend can launch, which is native.
    Auto,
    /// The native platform.
    Native,
}

/// The strings of the SP800-155 Event3 that carries the CoRIM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventStrings {
    /// Platform manufacturer.
    pub manufacturer: String,
    /// Platform model.
    pub model: String,
    /// Platform version.
    pub version: String,
}

impl Default for EventStrings {
    fn default() -> Self {
        Self {
            manufacturer: "igvmm".into(),
            model: "igvmm-kvm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// Everything [`crate::run_vm`] needs.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The guest.
    pub image: GuestImage,
    /// Guest RAM in bytes, a multiple of 4 KiB.
    pub memory_bytes: u64,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Platform choice for an IGVM file.
    pub platform: PlatformRequest,
    /// The command line for the IGVM CommandLine parameter.
    pub cmdline: String,
    /// The destination of COM1.
    pub serial: SerialConfig,
    /// The destination of the debug console on port 0x402.
    pub debugcon: DebugconConfig,
    /// Strings of the SP800-155 event.
    pub event: EventStrings,
    /// Whether a CoRIM that does not decode, or whose event cannot be built, is an error.
    pub strict_corim: bool,
    /// Stops the VM from another thread; `run_vm` also fires it when the guest stops.
    pub stop: StopHandle,
    /// Whether SIGINT and SIGTERM stop the VM. Only the process's main program should set
    /// this, because the handlers stay installed for the life of the process.
    pub handle_signals: bool,
}

impl VmConfig {
    /// Returns a configuration for `image` with 512 MiB of RAM, one vCPU, the native platform,
    /// no console, the debug console in the log and no signal handling.
    pub fn new(image: GuestImage) -> Self {
        Self {
            image,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            cpus: 1,
            platform: PlatformRequest::Auto,
            cmdline: String::new(),
            serial: SerialConfig::None,
            debugcon: DebugconConfig::Log,
            event: EventStrings::default(),
            strict_corim: false,
            stop: StopHandle::new(),
            handle_signals: false,
        }
    }
}
