//! Runs a test guest through igvmm's library entry point, [`vmm::run_vm`], with COM1 captured
//! in memory and a deadline, so that a hung VM fails its test instead of hanging the test run.

use std::sync::mpsc;
use std::time::Duration;

use igvm_loader::host::HostDescription;
use vmm::memory::MemoryLayout;
use vmm::{GuestImage, LoadedGuest, SerialCapture, SerialConfig, StopReason, VmmError};

use crate::layout::GUEST_RAM;

/// Default deadline for one VM run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a VM may take to stop after the deadline asked it to.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The machine a test guest runs on.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Number of vCPUs.
    pub cpus: u32,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Command line for the IGVM CommandLine parameter; `None` leaves it empty.
    pub cmdline: Option<String>,
    /// Bytes typed into COM1 before the guest starts.
    pub serial_input: Vec<u8>,
    /// Deadline for the whole run.
    pub timeout: Duration,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            cpus: 1,
            memory: GUEST_RAM,
            cmdline: None,
            serial_input: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    /// Every byte the guest wrote to COM1.
    pub serial: Vec<u8>,
    /// Why igvmm stopped the VM.
    pub stop: StopReason,
}

impl Outcome {
    /// Returns the serial output as text, with invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.serial).into_owned()
    }
}

/// Error from [`boot`].
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// igvmm returned an error instead of a stop reason.
    #[error("igvmm failed: {error}; serial output so far: {serial:?}")]
    Vmm {
        /// The error.
        error: VmmError,
        /// Serial output before the failure.
        serial: String,
    },
    /// The run did not end before the deadline, and a stop request did not end it either.
    #[error("the VM did not stop within {timeout:?}; serial output so far: {serial:?}")]
    Hung {
        /// The deadline.
        timeout: Duration,
        /// Serial output before the deadline.
        serial: String,
    },
    /// The run did not end before the deadline; igvmm stopped it on request.
    #[error("the VM ran past the {timeout:?} deadline and was stopped; serial output: {serial:?}")]
    TimedOut {
        /// The deadline.
        timeout: Duration,
        /// Serial output before the stop.
        serial: String,
    },
    /// The thread running igvmm panicked.
    #[error("igvmm panicked; serial output so far: {serial:?}")]
    Panicked {
        /// Serial output before the panic.
        serial: String,
    },
    /// Setting up the serial capture failed.
    #[error("serial capture setup failed: {0}")]
    Capture(#[from] std::io::Error),
}

/// Boots the IGVM file `file` on KVM with `config` and waits until the guest stops or the
/// deadline passes.
pub fn boot(file: &[u8], config: &VmConfig) -> Result<Outcome, HarnessError> {
    let capture = SerialCapture::new()?;
    if !config.serial_input.is_empty() {
        capture.send_input(&config.serial_input)?;
    }
    let mut vm_config = vmm_config(file, config);
    vm_config.serial = SerialConfig::Capture(capture.clone());
    let stop = vm_config.stop.clone();

    let (sender, receiver) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("igvmm-test-vm".into())
        .spawn(move || {
            let result = vmm::run_vm(vm_config);
            // The receiver is gone only when the test gave up waiting.
            let _ = sender.send(result);
        })?;

    let serial = || capture.output().contents();
    let result = match receiver.recv_timeout(config.timeout) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let _ = thread.join();
            return Err(HarnessError::Panicked {
                serial: String::from_utf8_lossy(&serial()).into_owned(),
            });
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            stop.request_stop();
            let text = String::from_utf8_lossy(&serial()).into_owned();
            return match receiver.recv_timeout(STOP_GRACE) {
                Ok(_) => Err(HarnessError::TimedOut {
                    timeout: config.timeout,
                    serial: text,
                }),
                Err(_) => Err(HarnessError::Hung {
                    timeout: config.timeout,
                    serial: text,
                }),
            };
        }
    };
    let _ = thread.join();
    match result {
        Ok(stop) => Ok(Outcome {
            serial: serial(),
            stop,
        }),
        Err(error) => Err(HarnessError::Vmm {
            error,
            serial: String::from_utf8_lossy(&serial()).into_owned(),
        }),
    }
}

/// Returns igvmm's configuration for running `file` on the machine `config` describes, with no
/// console.
pub fn vmm_config(file: &[u8], config: &VmConfig) -> vmm::VmConfig {
    let mut vm_config = vmm::VmConfig::new(GuestImage::Igvm(file.to_vec()));
    vm_config.memory_bytes = config.memory;
    vm_config.cpus = config.cpus;
    vm_config.cmdline = config.cmdline.clone().unwrap_or_default();
    vm_config
}

/// Returns the host description igvmm hands the loader for `config` and a file that places no
/// pages outside RAM ([`vmm::host_description`], which `run_vm` builds its own from).
pub fn host_description(config: &VmConfig) -> Result<HostDescription, VmmError> {
    vmm::host_description(
        config.memory,
        config.cpus,
        config.cmdline.as_deref().unwrap_or_default(),
    )
}

/// Guest physical address width for [`load`]: 48 bits, the width of x86-64 hosts with 4-level
/// paging, which covers every GPA the test guests use.
pub const LOAD_PHYS_BITS: u8 = 48;

/// Loads `file` into guest memory for `config` as igvmm does before the first vCPU runs
/// ([`vmm::load_guest`]), without creating a VM.
pub fn load(file: &[u8], config: &VmConfig) -> Result<LoadedGuest<'static>, VmmError> {
    vmm::load_guest(&vmm_config(file, config), LOAD_PHYS_BITS).map(LoadedGuest::into_owned)
}

/// A fw_cfg file: name and contents.
pub type FwCfgFile = (String, Vec<u8>);

/// Returns the fw_cfg files igvmm publishes for `config` when the plan carries `host_only`:
/// name and contents, in the order igvmm adds them.
pub fn fw_cfg_files(
    config: &VmConfig,
    host_only: &igvm_loader::plan::HostOnlyData,
) -> Result<Vec<FwCfgFile>, Box<dyn std::error::Error>> {
    let layout = MemoryLayout::new(config.memory)?;
    let machine = vmm::machine::MachineConfig {
        layout: &layout,
        cpus: u16::try_from(config.cpus)?,
        serial: &SerialConfig::None,
        debugcon: &vmm::DebugconConfig::None,
        host_only,
        event: &vmm::EventStrings::default(),
        strict_corim: false,
    };
    Ok(vmm::machine::fw_cfg_files(&machine)?)
}

/// Returns the stop reason for a guest that wrote `value` to the debug-exit port: QEMU's
/// isa-debug-exit status `(value << 1) | 1`, as the low 8 bits a process status keeps.
pub fn debug_exit(value: u8) -> StopReason {
    StopReason::DebugExit {
        value: u32::from(value),
    }
}
