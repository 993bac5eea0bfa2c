//! The configuration of [`crate::run_vm`]: the guest image and the machine to run it on.

use std::path::PathBuf;

use igvm_loader::plan::{Plan, Platform};

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

/// The platform to launch a guest on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformRequest {
    /// The strongest platform that the file carries and this host supports: SEV-SNP or TDX when
    /// the file has that platform and the host passes its probe, native otherwise.
    Auto,
    /// The native platform.
    Native,
    /// AMD SEV-SNP; fails when the host lacks it, never falls back to native.
    SevSnp,
    /// Intel TDX; fails when the host lacks it, never falls back to native.
    Tdx,
}

/// The launch options that only the SEV-SNP and TDX backends read. `None` and `false` are the
/// defaults of a launch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CocoOptions {
    /// SEV-SNP `HOST_DATA` for the attestation report (default all zeros).
    pub host_data: Option<[u8; 32]>,
    /// SEV-SNP: fail instead of retrying when the firmware corrects the CPUID page.
    pub strict_cpuid: bool,
    /// TDX MRCONFIGID (default all zeros).
    pub mrconfigid: Option<[u8; 48]>,
    /// TDX MROWNER (default all zeros).
    pub mrowner: Option<[u8; 48]>,
    /// TDX MROWNERCONFIG (default all zeros).
    pub mrownerconfig: Option<[u8; 48]>,
    /// TDX: set the DEBUG attribute.
    pub tdx_debug: bool,
    /// TDX: the Quote Generation Service socket. The TDX backend rejects it, because igvmm does
    /// not forward quotes.
    pub quote_socket: Option<PathBuf>,
}

impl CocoOptions {
    /// Returns the command-line names of the options that are set but that `platform` does not
    /// read.
    pub fn unused_on(&self, platform: Platform) -> Vec<&'static str> {
        let snp = [
            ("--host-data", self.host_data.is_some()),
            ("--strict-cpuid", self.strict_cpuid),
        ];
        let tdx = [
            ("--mrconfigid", self.mrconfigid.is_some()),
            ("--mrowner", self.mrowner.is_some()),
            ("--mrownerconfig", self.mrownerconfig.is_some()),
            ("--tdx-debug", self.tdx_debug),
            ("--quote-socket", self.quote_socket.is_some()),
        ];
        let unused: Vec<(&'static str, bool)> = match platform {
            Platform::SevSnp => tdx.to_vec(),
            Platform::Tdx => snp.to_vec(),
            Platform::Native | Platform::Vbs => snp.iter().chain(&tdx).copied().collect(),
        };
        unused
            .into_iter()
            .filter(|(_, given)| *given)
            .map(|(option, _)| option)
            .collect()
    }
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
    /// The platform to launch on. A [`GuestImage::Plan`] runs on the plan's own platform, which
    /// an explicit request must name.
    pub platform: PlatformRequest,
    /// The command line for the IGVM CommandLine parameter.
    pub cmdline: String,
    /// The destination of COM1.
    pub serial: SerialConfig,
    /// The destination of the debug console on port 0x402.
    pub debugcon: DebugconConfig,
    /// Strings of the SP800-155 event.
    pub event: EventStrings,
    /// Whether a CoRIM that does not decode, whose event cannot be built, or whose reference
    /// value differs from the predicted measurement is an error instead of a warning.
    pub strict_corim: bool,
    /// Options of the SEV-SNP and TDX launches.
    pub coco: CocoOptions,
    /// Stops the VM from another thread; `run_vm` also fires it when the guest stops.
    pub stop: StopHandle,
    /// Whether SIGINT and SIGTERM stop the VM. Only the process's main program should set
    /// this, because the handlers stay installed for the life of the process.
    pub handle_signals: bool,
}

impl VmConfig {
    /// Returns a configuration for `image` with 512 MiB of RAM, one vCPU, automatic platform
    /// choice, no console, the debug console in the log and no signal handling.
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
            coco: CocoOptions::default(),
            stop: StopHandle::new(),
            handle_signals: false,
        }
    }
}
