//! The vCPU threads: one thread per vCPU runs `KVM_RUN` in a loop and hands each exit to the
//! port or MMIO bus, until a stop condition fires anywhere in the VM.
//!
//! Port I/O arrives as `KVM_EXIT_IO` with `count` elements of `size` bytes. String instructions
//! (`rep insb`, `rep outsw`, ...) have `count > 1`, and each element is one bus access to the
//! same port. A device's action after a write can stop the VM (debug exit, reset). Triple faults,
//! KVM internal errors and failed entries stop it with a crash report. When the coordinator
//! kicks the thread out of `KVM_RUN` (`EINTR`), the thread answers a pending halt sample and
//! goes back in, unless the VM is stopping.

use std::sync::Arc;
use std::thread::JoinHandle;

use devices::bus::{Bus, DeviceAction};
use kvm_bindings::{
    kvm_run, KVM_EXIT_IO_IN, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_MP_STATE_HALTED,
    KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_UNINITIALIZED, KVM_SYSTEM_EVENT_RESET,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::control::{StopHandle, VcpuActivity, VcpuRunState};
use crate::error::VmmError;
use crate::exit::{ResetSource, StopReason};
use crate::pagewalk::{self, WalkInput};
use crate::regs::{EFER_LMA, RFLAGS_IF};
use crate::report::{CrashReport, InternalError};

/// Words of `internal.data` that an emulation failure with instruction bytes fills with its
/// flags, `insn_size` and `insn_bytes` (the `emulation_failure` member of `struct kvm_run`).
const EMULATION_FAILURE_HEADER_WORDS: usize = 3;

/// The guest CPU features that the page walk of a crash report depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PagingFeatures {
    /// Guest physical address width.
    pub phys_bits: u8,
    /// Whether 1 GiB pages are offered.
    pub page_1gb: bool,
}

/// Everything a vCPU thread owns or shares.
pub(crate) struct VcpuRunner {
    /// The vCPU index (also its APIC ID).
    pub index: u32,
    /// The vCPU.
    pub fd: VcpuFd,
    /// Port I/O devices.
    pub io_bus: Arc<Bus>,
    /// MMIO devices.
    pub mmio_bus: Arc<Bus>,
    /// Guest memory, for crash reports.
    pub memory: GuestMemoryMmap,
    /// Stops the whole VM.
    pub stop: StopHandle,
    /// This vCPU's counters for the halt detector.
    pub activity: Arc<VcpuActivity>,
    /// Size of the `kvm_run` mapping, which bounds the port I/O data.
    pub run_size: usize,
    /// CPU features for crash reports.
    pub paging: PagingFeatures,
}

/// The next step after an exit.
enum Flow {
    /// Enter the guest again.
    Continue,
    /// Stop the VM.
    Stop(StopReason),
    /// End the run with an error.
    Fail(VmmError),
}

/// An exit with its borrowed data already handled or copied out.
enum Exit {
    /// Port I/O; the data is still in `kvm_run`.
    Io,
    /// MMIO finished; a write may have asked for an action.
    Mmio {
        /// The address.
        address: u64,
        /// The device's action after a write.
        action: Option<DeviceAction>,
    },
    /// `KVM_EXIT_HLT` (only without the in-kernel LAPIC).
    Hlt,
    /// `KVM_EXIT_INTR`.
    Interrupted,
    /// `KVM_EXIT_SHUTDOWN`: a triple fault.
    Shutdown,
    /// `KVM_EXIT_INTERNAL_ERROR`.
    InternalError,
    /// `KVM_EXIT_FAIL_ENTRY`.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
        /// Host CPU.
        cpu: u32,
    },
    /// `KVM_EXIT_SYSTEM_EVENT`.
    SystemEvent(u32),
    /// Any other exit, described.
    Other(String),
}

impl VcpuRunner {
    /// Starts the thread.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.index))
            .spawn(move || self.run())
    }

    /// Runs the vCPU until the VM stops.
    fn run(mut self) {
        log::debug!("vCPU {} started", self.index);
        while !self.stop.is_stopping() {
            let flow = match self.fd.run() {
                Ok(exit) => {
                    let exit = classify(exit, &self.mmio_bus);
                    self.handle(exit)
                }
                Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => {
                    self.answer_sample();
                    Flow::Continue
                }
                Err(error) => Flow::Fail(VmmError::kvm(
                    format!("KVM_RUN on vCPU {}", self.index),
                    error,
                )),
            };
            match flow {
                Flow::Continue => {}
                Flow::Stop(reason) => {
                    self.stop.stop(reason);
                    break;
                }
                Flow::Fail(error) => {
                    self.stop.fail(error);
                    break;
                }
            }
        }
        log::debug!("vCPU {} stopped", self.index);
    }

    fn handle(&mut self, exit: Exit) -> Flow {
        match exit {
            Exit::Io => {
                self.activity.count_exit();
                match self.handle_io() {
                    Ok(Some((port, action))) => device_flow(action, ResetSource::Port(port)),
                    Ok(None) => Flow::Continue,
                    Err(error) => Flow::Fail(error),
                }
            }
            Exit::Mmio { address, action } => {
                self.activity.count_exit();
                match action {
                    Some(action) => device_flow(action, ResetSource::Mmio(address)),
                    None => Flow::Continue,
                }
            }
            Exit::Hlt | Exit::Interrupted => {
                self.answer_sample();
                Flow::Continue
            }
            Exit::Shutdown => {
                let report =
                    self.crash_report("KVM_EXIT_SHUTDOWN (triple fault)".to_string(), Vec::new());
                Flow::Stop(StopReason::TripleFault(Box::new(report)))
            }
            Exit::InternalError => {
                let error = self.internal_error();
                let report = self.crash_report(error.summary(), error.detail_lines());
                Flow::Stop(StopReason::KvmFailure(Box::new(report)))
            }
            Exit::FailEntry { reason, cpu } => {
                let report = self.crash_report(
                    format!(
                        "KVM_EXIT_FAIL_ENTRY, hardware entry failure reason {reason:#x} on host CPU {cpu}"
                    ),
                    Vec::new(),
                );
                Flow::Stop(StopReason::KvmFailure(Box::new(report)))
            }
            Exit::SystemEvent(KVM_SYSTEM_EVENT_RESET) => {
                Flow::Stop(StopReason::Reset(ResetSource::SystemEvent))
            }
            Exit::SystemEvent(kind) => {
                let report =
                    self.crash_report(format!("KVM_EXIT_SYSTEM_EVENT type {kind}"), Vec::new());
                Flow::Stop(StopReason::KvmFailure(Box::new(report)))
            }
            Exit::Other(description) => {
                let report = self.crash_report(format!("unhandled exit {description}"), Vec::new());
                Flow::Stop(StopReason::KvmFailure(Box::new(report)))
            }
        }
    }

    /// Dispatches the port I/O described in `kvm_run`, one bus access per element. Returns the
    /// first device action other than `None`, with its port.
    fn handle_io(&mut self) -> Result<Option<(u16, DeviceAction)>, VmmError> {
        let run_size = self.run_size;
        let run: &mut kvm_run = self.fd.get_kvm_run();
        // SAFETY: the last KVM_RUN returned KVM_EXIT_IO (classify saw VcpuExit::IoIn or IoOut),
        // so `io` is the union member KVM filled in. The read copies plain integers.
        let io = unsafe { run.__bindgen_anon_1.io };
        let size = usize::from(io.size);
        let count = usize::try_from(io.count).unwrap_or(usize::MAX);
        let offset = usize::try_from(io.data_offset).unwrap_or(usize::MAX);
        let len = size.checked_mul(count);
        let in_bounds = len
            .and_then(|len| offset.checked_add(len))
            .is_some_and(|end| end <= run_size);
        let (true, Some(len), 1 | 2 | 4) = (in_bounds, len, size) else {
            return Err(VmmError::Unsupported(format!(
                "KVM reported port I/O at port {:#x} with {} elements of {} bytes at offset {:#x}",
                io.port, io.count, io.size, io.data_offset
            )));
        };
        let base = (run as *mut kvm_run).cast::<u8>();
        // SAFETY: the kvm_run mapping is `run_size` bytes long, and KVM placed the I/O data at
        // `data_offset` inside it, which the check above confirmed. `run` is not used again,
        // so `data` is the only reference to those bytes while it lives.
        let data = unsafe { std::slice::from_raw_parts_mut(base.add(offset), len) };

        let port = u64::from(io.port);
        if u32::from(io.direction) == KVM_EXIT_IO_IN {
            for element in data.chunks_mut(size) {
                if !self.io_bus.read(port, element) {
                    log::trace!("vCPU {}: read of unclaimed port {port:#x}", self.index);
                }
            }
            log::trace!("vCPU {}: in {port:#x} -> {data:02x?}", self.index);
            return Ok(None);
        }
        log::trace!("vCPU {}: out {port:#x} <- {data:02x?}", self.index);
        for element in data.chunks(size) {
            match self.io_bus.write(port, element) {
                None => log::trace!("vCPU {}: write to unclaimed port {port:#x}", self.index),
                Some(DeviceAction::None) => {}
                Some(action) => return Ok(Some((io.port, action))),
            }
        }
        Ok(None)
    }

    /// Reads the `internal` member of `kvm_run` after `KVM_EXIT_INTERNAL_ERROR`.
    fn internal_error(&mut self) -> InternalError {
        let run = self.fd.get_kvm_run();
        // SAFETY: the last KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, so `internal` (and, for an
        // emulation failure, its `emulation_failure` view) is the member KVM filled in. The
        // reads copy plain integers.
        let (internal, emulation) = unsafe {
            (
                run.__bindgen_anon_1.internal,
                run.__bindgen_anon_1.emulation_failure,
            )
        };
        let ndata = usize::try_from(internal.ndata)
            .unwrap_or(0)
            .min(internal.data.len());
        let has_instruction = internal.suberror == KVM_INTERNAL_ERROR_EMULATION
            && emulation.flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)
                != 0;
        let (instruction, first_data_word) = if has_instruction {
            // SAFETY: KVM sets the instruction-bytes flag only after filling insn_size and
            // insn_bytes, which are plain integers.
            let bytes = unsafe { emulation.__bindgen_anon_1.__bindgen_anon_1 };
            let size = usize::from(bytes.insn_size).min(bytes.insn_bytes.len());
            let instruction = bytes.insn_bytes.get(..size).unwrap_or_default().to_vec();
            // The flags word and the 16 bytes of insn_size and insn_bytes come first in
            // `data`, and the diagnostic words follow them.
            (Some(instruction), EMULATION_FAILURE_HEADER_WORDS)
        } else {
            (None, 0)
        };
        let data = internal
            .data
            .get(first_data_word.min(ndata)..ndata)
            .unwrap_or_default()
            .to_vec();
        InternalError {
            suberror: internal.suberror,
            data,
            instruction,
        }
    }

    /// Samples the vCPU's run state for a pending halt-detector round.
    fn answer_sample(&mut self) {
        let Some(round) = self.activity.pending_round() else {
            return;
        };
        let state = match self.fd.get_mp_state() {
            Ok(mp_state) => match mp_state.mp_state {
                KVM_MP_STATE_HALTED => match self.fd.get_regs() {
                    Ok(regs) if regs.rflags & RFLAGS_IF == 0 => VcpuRunState::HaltedInterruptsOff,
                    Ok(_) => VcpuRunState::HaltedInterruptsOn,
                    Err(error) => {
                        log::debug!("vCPU {}: KVM_GET_REGS failed: {error}", self.index);
                        VcpuRunState::Running
                    }
                },
                KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED => {
                    VcpuRunState::WaitingForSipi
                }
                _ => VcpuRunState::Running,
            },
            Err(error) => {
                log::debug!("vCPU {}: KVM_GET_MP_STATE failed: {error}", self.index);
                VcpuRunState::Running
            }
        };
        log::trace!("vCPU {}: sample {round}: {state:?}", self.index);
        self.activity.publish(round, state);
    }

    /// Builds a crash report: registers, `details`, and a page walk for RIP.
    fn crash_report(&mut self, summary: String, mut details: Vec<String>) -> CrashReport {
        let regs = self.fd.get_regs().unwrap_or_else(|error| {
            details.push(format!("KVM_GET_REGS failed: {error}"));
            Default::default()
        });
        let sregs = self.fd.get_sregs().unwrap_or_else(|error| {
            details.push(format!("KVM_GET_SREGS failed: {error}"));
            Default::default()
        });
        let long_mode = sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0;
        let linear = if long_mode {
            regs.rip
        } else {
            sregs.cs.base.wrapping_add(regs.rip) & 0xFFFF_FFFF
        };
        let input = WalkInput {
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
            linear,
            phys_bits: self.paging.phys_bits,
            page_1gb: self.paging.page_1gb,
        };
        let memory = &self.memory;
        let outcome = pagewalk::walk(&input, |gpa| memory.read_obj::<u64>(GuestAddress(gpa)).ok());
        details.push(format!("page walk for RIP (linear address {linear:#x}):"));
        details.extend(
            pagewalk::describe(&outcome)
                .into_iter()
                .map(|line| format!("  {line}")),
        );
        CrashReport {
            vcpu: self.index,
            summary,
            regs,
            sregs,
            details,
        }
    }
}

/// Turns a device action into a flow; `source` names the access for a reset.
fn device_flow(action: DeviceAction, source: ResetSource) -> Flow {
    match action {
        DeviceAction::None => Flow::Continue,
        DeviceAction::Exit(status) => Flow::Stop(StopReason::DebugExit {
            status: u8::try_from(status & 0xFF).unwrap_or(u8::MAX),
        }),
        DeviceAction::Reset => Flow::Stop(StopReason::Reset(source)),
    }
}

/// Copies what is needed out of a borrowed exit, finishing MMIO on the spot.
fn classify(exit: VcpuExit<'_>, mmio_bus: &Bus) -> Exit {
    match exit {
        VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => Exit::Io,
        VcpuExit::MmioRead(address, data) => {
            if !mmio_bus.read(address, data) {
                log::trace!("read of unclaimed MMIO address {address:#x}");
            }
            Exit::Mmio {
                address,
                action: None,
            }
        }
        VcpuExit::MmioWrite(address, data) => {
            let action = mmio_bus.write(address, data);
            if action.is_none() {
                log::trace!("write to unclaimed MMIO address {address:#x}");
            }
            Exit::Mmio {
                address,
                action: action.filter(|action| *action != DeviceAction::None),
            }
        }
        VcpuExit::Hlt => Exit::Hlt,
        VcpuExit::Intr => Exit::Interrupted,
        VcpuExit::Shutdown => Exit::Shutdown,
        VcpuExit::InternalError => Exit::InternalError,
        VcpuExit::FailEntry(reason, cpu) => Exit::FailEntry { reason, cpu },
        VcpuExit::SystemEvent(kind, _) => Exit::SystemEvent(kind),
        VcpuExit::MemoryFault { flags, gpa, size } => Exit::Other(format!(
            "KVM_EXIT_MEMORY_FAULT at GPA {gpa:#x}, {size:#x} bytes, flags {flags:#x}"
        )),
        other => Exit::Other(format!("{other:?}")),
    }
}
