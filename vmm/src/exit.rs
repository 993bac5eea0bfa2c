//! Stop reasons of a VM, and the process exit status of each.
//!
//! | status | reason |
//! |---|---|
//! | 0 | every vCPU halted with interrupts disabled |
//! | `(value << 1) \| 1` | the guest wrote `value` to the debug-exit port 0x501 (QEMU's `isa-debug-exit`) |
//! | 1 | igvmm failed before or while running the guest (also debug-exit value 0) |
//! | 2 | the command line does not parse (unknown option, missing argument, invalid choice); values that parse but are out of range get status 1 |
//! | 4 | the guest requested a reset |
//! | 6 | triple fault (`KVM_EXIT_SHUTDOWN`) |
//! | 8 | KVM could not run the guest (internal error, failed entry, unhandled exit) |
//! | 10 | the user quit through the console (Ctrl-A x) or the library caller stopped the VM |
//! | 12 | the SEV-SNP or TDX backend stopped the guest (termination request, fatal error, failed memory conversion) |
//! | 130, 143 | SIGINT, SIGTERM |
//!
//! Debug-exit statuses are always odd and the others even, so a script can tell them apart.
//! Only debug-exit value 0 shares status 1 with an igvmm error, as in QEMU.

use std::fmt;

use devices::debug_exit;

use crate::report::CrashReport;

/// Exit status when every vCPU halted with interrupts disabled.
pub const STATUS_HALTED: u8 = 0;
/// Exit status of an igvmm error.
pub const STATUS_ERROR: u8 = 1;
/// Exit status of a guest-requested reset.
pub const STATUS_RESET: u8 = 4;
/// Exit status of a triple fault.
pub const STATUS_TRIPLE_FAULT: u8 = 6;
/// Exit status when KVM could not run the guest.
pub const STATUS_KVM_FAILURE: u8 = 8;
/// Exit status of a stop requested by the user or the library caller.
pub const STATUS_REQUESTED: u8 = 10;
/// Exit status of a confidential guest that the SEV-SNP or TDX backend stopped.
pub const STATUS_TERMINATED: u8 = 12;

/// The access that requested a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetSource {
    /// A write to an I/O port (the i8042 command 0xFE at 0x64, bit 0 of port 0x92, or 0xCF9).
    Port(u16),
    /// A write to an MMIO address.
    Mmio(u64),
    /// KVM reported `KVM_SYSTEM_EVENT_RESET`.
    SystemEvent,
}

/// The source of a stop request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// Ctrl-A x on the console.
    Console,
    /// The library caller, through [`crate::StopHandle::request_stop`].
    Caller,
    /// A signal (SIGINT or SIGTERM), by number.
    Signal(i32),
}

/// The reason the VM stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// The guest wrote to the debug-exit port.
    DebugExit {
        /// The value written. The exit status is `(value << 1) | 1`, low 8 bits.
        value: u32,
    },
    /// Every vCPU halted with interrupts disabled (or waits for a SIPI that no vCPU can send).
    AllHalted,
    /// The guest requested a reset; igvmm stops instead of resetting.
    Reset(ResetSource),
    /// A vCPU triple-faulted.
    TripleFault(Box<CrashReport>),
    /// KVM could not run a vCPU: internal error, failed VM entry or an exit igvmm does not
    /// handle.
    KvmFailure(Box<CrashReport>),
    /// The user or the caller stopped the VM.
    Requested(StopRequest),
    /// The SEV-SNP or TDX backend stopped the guest: an SEV-SNP guest requested termination
    /// (GHCB termination request), a TD reported a fatal error (TDVMCALL ReportFatalError), or a
    /// memory conversion the guest needed failed. The text is the backend's description.
    Terminated(String),
}

impl StopReason {
    /// Returns the process exit status for this reason.
    pub fn exit_status(&self) -> u8 {
        match self {
            StopReason::DebugExit { value } => debug_exit::exit_status(*value),
            StopReason::AllHalted => STATUS_HALTED,
            StopReason::Reset(_) => STATUS_RESET,
            StopReason::TripleFault(_) => STATUS_TRIPLE_FAULT,
            StopReason::KvmFailure(_) => STATUS_KVM_FAILURE,
            StopReason::Requested(StopRequest::Signal(signal)) => {
                128u8.saturating_add(u8::try_from(*signal).unwrap_or(0))
            }
            StopReason::Requested(_) => STATUS_REQUESTED,
            StopReason::Terminated(_) => STATUS_TERMINATED,
        }
    }

    /// Returns the crash report of a triple fault or KVM failure.
    pub fn crash_report(&self) -> Option<&CrashReport> {
        match self {
            StopReason::TripleFault(report) | StopReason::KvmFailure(report) => Some(report),
            _ => None,
        }
    }
}

impl fmt::Display for StopReason {
    /// Writes the one-line summary that igvmm prints on stderr.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::DebugExit { value } => write!(
                f,
                "guest wrote {value:#x} to the debug-exit port 0x501 (exit status {})",
                debug_exit::exit_status(*value)
            ),
            StopReason::AllHalted => {
                f.write_str("guest stopped: every vCPU halted with interrupts disabled")
            }
            StopReason::Reset(ResetSource::Port(port)) => {
                write!(f, "guest requested reset (write to port {port:#x})")
            }
            StopReason::Reset(ResetSource::Mmio(address)) => {
                write!(
                    f,
                    "guest requested reset (write to MMIO address {address:#x})"
                )
            }
            StopReason::Reset(ResetSource::SystemEvent) => {
                f.write_str("guest requested reset (KVM system event)")
            }
            StopReason::TripleFault(report) => write!(
                f,
                "guest triple fault on vCPU {} (KVM_EXIT_SHUTDOWN) at RIP {:#x}",
                report.vcpu, report.regs.rip
            ),
            StopReason::KvmFailure(report) => write!(
                f,
                "KVM could not run vCPU {}: {}",
                report.vcpu, report.summary
            ),
            StopReason::Requested(StopRequest::Console) => {
                f.write_str("stopped from the console (Ctrl-A x)")
            }
            StopReason::Requested(StopRequest::Caller) => f.write_str("stopped by the caller"),
            StopReason::Requested(StopRequest::Signal(signal)) => {
                write!(f, "stopped by signal {}", signal_name(*signal))
            }
            StopReason::Terminated(message) => write!(f, "confidential VM stopped: {message}"),
        }
    }
}

/// Returns the name of a stop signal.
fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "SIGINT".to_string(),
        libc::SIGTERM => "SIGTERM".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_distinct() {
        let reasons = [
            StopReason::AllHalted,
            StopReason::DebugExit { value: 0 },
            StopReason::DebugExit { value: 0x10 },
            StopReason::Reset(ResetSource::Port(0x64)),
            StopReason::Requested(StopRequest::Console),
            StopReason::Requested(StopRequest::Signal(libc::SIGINT)),
            StopReason::Requested(StopRequest::Signal(libc::SIGTERM)),
            StopReason::Terminated("vCPU 0: the TD reported a fatal error".into()),
        ];
        let statuses: Vec<u8> = reasons.iter().map(StopReason::exit_status).collect();
        assert_eq!(statuses, vec![0, 1, 0x21, 4, 10, 130, 143, 12]);
    }

    #[test]
    fn messages() {
        assert_eq!(
            StopReason::Reset(ResetSource::Port(0x92)).to_string(),
            "guest requested reset (write to port 0x92)"
        );
        assert_eq!(
            StopReason::DebugExit { value: 3 }.to_string(),
            "guest wrote 0x3 to the debug-exit port 0x501 (exit status 7)"
        );
        assert_eq!(
            StopReason::Requested(StopRequest::Signal(libc::SIGTERM)).to_string(),
            "stopped by signal SIGTERM"
        );
    }
}
