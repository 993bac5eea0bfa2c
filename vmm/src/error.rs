//! Errors of the VMM library.

use std::io;
use std::path::PathBuf;

use igvm_loader::plan::{HeaderRef, Platform};

use crate::coco::CocoError;
use crate::console::ConsoleError;
use crate::memory::MemoryError;
use crate::regs::RegsError;

/// An error that keeps igvmm from starting or running a guest.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0}; check that the kvm module is loaded and that this user may open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("{operation} failed: {source}")]
    Kvm {
        /// The ioctl and its subject, for example "KVM_SET_SREGS on vCPU 0".
        operation: String,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The memory configuration is invalid or does not fit the host.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The VP context of a vCPU cannot be loaded.
    #[error("vCPU {vcpu}: {source}")]
    Regs {
        /// The vCPU index.
        vcpu: u32,
        /// The problem with the context.
        #[source]
        source: RegsError,
    },
    /// The requested vCPU count is outside what KVM and the APIC allow.
    #[error("--cpus {requested} is out of range: this host supports 1 to {max} vCPUs")]
    CpuCount {
        /// The requested count.
        requested: u32,
        /// The largest count accepted.
        max: u32,
    },
    /// The image file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadImage {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The image path names a directory.
    #[error("{0} is a directory, not an IGVM file")]
    ImageIsDirectory(PathBuf),
    /// The loader rejected the file.
    #[error(transparent)]
    Load(#[from] igvm_loader::LoadError),
    /// The plan requires something the native backend cannot do.
    #[error("the native backend cannot launch this image: {0}")]
    Unsupported(String),
    /// Writing the image into guest memory failed.
    #[error("failed to write {len} bytes of guest memory at GPA {gpa:#x}: {message}")]
    GuestMemory {
        /// The GPA of the first byte.
        gpa: u64,
        /// How many bytes.
        len: usize,
        /// The vm-memory error.
        message: String,
    },
    /// A device could not be set up.
    #[error("failed to set up {device}: {message}")]
    Device {
        /// The device.
        device: &'static str,
        /// What failed.
        message: String,
    },
    /// A console option is invalid.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// A console or debug-console sink could not be opened.
    #[error("failed to open {what}: {source}")]
    Sink {
        /// The sink being opened.
        what: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A thread could not be started.
    #[error("failed to start the {name} thread: {source}")]
    Thread {
        /// The thread's name.
        name: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A signal handler could not be installed.
    #[error("failed to install the {signal} handler: {message}")]
    Signal {
        /// The signal.
        signal: &'static str,
        /// The errno text.
        message: String,
    },
    /// A vCPU thread did not leave KVM_RUN after being kicked.
    #[error("vCPU {0} did not stop within 5 s of the stop request")]
    VcpuHang(u32),
    /// A vCPU thread panicked.
    #[error("the thread of vCPU {0} panicked")]
    VcpuPanic(u32),
    /// A page of the guest image lands where it cannot be backed; the header that places it is
    /// named.
    #[error("{header}: {source}")]
    ImagePage {
        /// The PageData header.
        header: HeaderRef,
        /// Why the page cannot be backed.
        #[source]
        source: MemoryError,
    },
    /// The SEV-SNP or TDX backend failed, or the host lacks what it needs.
    #[error(transparent)]
    Coco(#[from] CocoError),
    /// A caller's plan is for another platform than the one requested.
    #[error("the plan is for the {plan} platform, but {requested} was requested")]
    PlanPlatform {
        /// The plan's platform.
        plan: Platform,
        /// The requested platform.
        requested: Platform,
    },
    /// A CoRIM problem that `--strict-corim` turns into an error.
    #[error("--strict-corim: {0}")]
    Corim(String),
}

impl VmmError {
    /// Wraps a KVM ioctl error with the operation that failed.
    pub fn kvm(operation: impl Into<String>, source: kvm_ioctls::Error) -> Self {
        VmmError::Kvm {
            operation: operation.into(),
            source,
        }
    }
}
