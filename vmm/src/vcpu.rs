//! The vCPU threads: one thread per vCPU runs `KVM_RUN` in a loop and hands each exit to the
//! port or MMIO bus, until a stop condition fires anywhere in the VM.
//!
//! Port I/O arrives as `KVM_EXIT_IO` with `count` elements of `size` bytes. String instructions
//! (`rep insb`, `rep outsw`, ...) have `count > 1`, and each element is one bus access to the
//! same port. A device's action after a write can stop the VM (debug exit, reset). Triple faults,
//! KVM internal errors and failed entries stop it with a crash report. When the coordinator
//! kicks the thread out of `KVM_RUN` (`EINTR`), the thread answers a pending halt sample and
//! goes back in, unless the VM is stopping.
//!
//! An SEV-SNP or TDX guest also produces exits that only its backend understands: memory faults
//! (implicit private/shared conversions), `KVM_HC_MAP_GPA_RANGE` hypercalls, termination and
//! fatal-error system events, and `KVM_EXIT_TDX` (40), which kvm-ioctls reports as
//! `VcpuExit::Unsupported`. The loop hands those to the VM's [`CocoExits`] handler first. A native
//! VM has no handler, and those exits stop it with a crash report.

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

use crate::coco::{CocoExits, ExitAction};
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
    /// The SEV-SNP or TDX exit handler; `None` for a native VM.
    pub coco: Option<Arc<dyn CocoExits>>,
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
#[derive(Debug, PartialEq)]
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
    /// A confidential-VM exit that the platform's handler finished.
    Handled,
    /// The platform's handler stopped the VM, for the reason in the text.
    Terminated(String),
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
                Ok(VcpuExit::Unsupported(reason)) => {
                    let coco = self.coco.as_deref();
                    let exit = route_unsupported(coco, self.index, reason, self.fd.get_kvm_run());
                    self.handle(exit)
                }
                Ok(exit) => {
                    let exit = classify(exit, &self.mmio_bus, self.coco.as_deref(), self.index);
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
            Exit::Handled => {
                self.activity.count_exit();
                Flow::Continue
            }
            Exit::Terminated(message) => Flow::Stop(StopReason::Terminated(message)),
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
        DeviceAction::Exit(value) => Flow::Stop(StopReason::DebugExit { value }),
        DeviceAction::Reset => Flow::Stop(StopReason::Reset(source)),
    }
}

/// Copies what is needed out of a borrowed exit, finishing MMIO on the spot. `coco` is the
/// SEV-SNP or TDX handler of vCPU `vcpu`; it gets memory faults, hypercalls and system events
/// before they count as unhandled.
fn classify(exit: VcpuExit<'_>, mmio_bus: &Bus, coco: Option<&dyn CocoExits>, vcpu: u32) -> Exit {
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
        VcpuExit::SystemEvent(kind, data) => {
            let action = coco.map_or(ExitAction::NotHandled, |handler| {
                handler.system_event(vcpu, kind, data)
            });
            from_action(action, Exit::SystemEvent(kind))
        }
        VcpuExit::MemoryFault { flags, gpa, size } => {
            let action = coco.map_or(ExitAction::NotHandled, |handler| {
                handler.memory_fault(vcpu, flags, gpa, size)
            });
            from_action(
                action,
                Exit::Other(format!(
                    "KVM_EXIT_MEMORY_FAULT at GPA {gpa:#x}, {size:#x} bytes, flags {flags:#x}"
                )),
            )
        }
        VcpuExit::Hypercall(hypercall) => {
            let result =
                coco.and_then(|handler| handler.hypercall(vcpu, hypercall.nr, &hypercall.args));
            match result {
                Some(ret) => {
                    log::debug!(
                        "vCPU {vcpu}: hypercall {} {:#x?} returned {ret:#x}",
                        hypercall.nr,
                        hypercall.args
                    );
                    *hypercall.ret = ret;
                    Exit::Handled
                }
                None => Exit::Other(format!("{:?}", VcpuExit::Hypercall(hypercall))),
            }
        }
        other => Exit::Other(format!("{other:?}")),
    }
}

/// Hands an exit that kvm-ioctls does not decode (`KVM_EXIT_TDX` among them) to the SEV-SNP or
/// TDX handler, which reads and fills `run`.
fn route_unsupported(
    coco: Option<&dyn CocoExits>,
    vcpu: u32,
    reason: u32,
    run: &mut kvm_run,
) -> Exit {
    let action = coco.map_or(ExitAction::NotHandled, |handler| {
        handler.unsupported_exit(vcpu, reason, run)
    });
    from_action(
        action,
        Exit::Other(format!("{:?}", VcpuExit::Unsupported(reason))),
    )
}

/// Turns a confidential-VM handler's decision into an exit; `unhandled` is the exit when the
/// handler did not take it.
fn from_action(action: ExitAction, unhandled: Exit) -> Exit {
    match action {
        ExitAction::Resume => Exit::Handled,
        ExitAction::Stop(message) => Exit::Terminated(message),
        ExitAction::NotHandled => unhandled,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::sync::Mutex;

    use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
    use kvm_ioctls::HypercallExit;

    use super::*;
    use crate::coco::ffi::{
        KVM_EXIT_TDX, KVM_HC_MAP_GPA_RANGE, KVM_SYSTEM_EVENT_SEV_TERM,
        TDVMCALL_GET_TD_VM_CALL_INFO, TDVMCALL_STATUS_SUCCESS,
    };
    use crate::coco::memory::{ConversionExits, GuestRange, PrivateMemoryOps};
    use crate::coco::tdx::{read_tdx_exit, write_tdx_exit, TdxExits};
    use crate::coco::CocoError;

    /// A handler that records every call and returns the configured results.
    struct FakeExits {
        calls: Mutex<Vec<String>>,
        action: ExitAction,
        hypercall_ret: Option<u64>,
    }

    impl FakeExits {
        fn new(action: ExitAction, hypercall_ret: Option<u64>) -> Self {
            Self {
                calls: Mutex::new(Vec::new()),
                action,
                hypercall_ret,
            }
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl CocoExits for FakeExits {
        fn memory_fault(&self, vcpu: u32, flags: u64, gpa: u64, size: u64) -> ExitAction {
            self.calls.lock().unwrap().push(format!(
                "memory_fault vcpu {vcpu} flags {flags:#x} gpa {gpa:#x} size {size:#x}"
            ));
            self.action.clone()
        }

        fn hypercall(&self, vcpu: u32, nr: u64, args: &[u64; 6]) -> Option<u64> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("hypercall vcpu {vcpu} nr {nr} args {args:x?}"));
            self.hypercall_ret
        }

        fn system_event(&self, vcpu: u32, event_type: u32, data: &[u64]) -> ExitAction {
            self.calls.lock().unwrap().push(format!(
                "system_event vcpu {vcpu} type {event_type} data {data:x?}"
            ));
            self.action.clone()
        }

        fn unsupported_exit(&self, vcpu: u32, reason: u32, run: &mut kvm_run) -> ExitAction {
            self.calls
                .lock()
                .unwrap()
                .push(format!("unsupported_exit vcpu {vcpu} reason {reason}"));
            run.exit_reason = 0xAB;
            self.action.clone()
        }
    }

    #[test]
    fn memory_fault_goes_to_handler() {
        let bus = Bus::new();
        let fake = FakeExits::new(ExitAction::Resume, None);
        let exit = VcpuExit::MemoryFault {
            flags: 8,
            gpa: 0x1000,
            size: 0x2000,
        };
        assert_eq!(classify(exit, &bus, Some(&fake), 2), Exit::Handled);
        assert_eq!(
            fake.calls(),
            ["memory_fault vcpu 2 flags 0x8 gpa 0x1000 size 0x2000"]
        );

        let failing = FakeExits::new(ExitAction::Stop("cannot convert".into()), None);
        let exit = VcpuExit::MemoryFault {
            flags: 0,
            gpa: 0x3000,
            size: 0x1000,
        };
        assert_eq!(
            classify(exit, &bus, Some(&failing), 0),
            Exit::Terminated("cannot convert".into())
        );
    }

    #[test]
    fn memory_fault_without_handler_is_unhandled() {
        let exit = VcpuExit::MemoryFault {
            flags: 8,
            gpa: 0x1000,
            size: 0x2000,
        };
        assert_eq!(
            classify(exit, &Bus::new(), None, 0),
            Exit::Other("KVM_EXIT_MEMORY_FAULT at GPA 0x1000, 0x2000 bytes, flags 0x8".to_string())
        );
    }

    #[test]
    fn hypercall_result_reaches_kvm_run() {
        let bus = Bus::new();
        let fake = FakeExits::new(ExitAction::NotHandled, Some(0));
        let mut ret = 0xDEAD;
        let exit = VcpuExit::Hypercall(HypercallExit {
            nr: KVM_HC_MAP_GPA_RANGE,
            args: [0x8000, 4, 0x10, 0, 0, 0],
            ret: &mut ret,
            longmode: 1,
        });
        assert_eq!(classify(exit, &bus, Some(&fake), 1), Exit::Handled);
        assert_eq!(ret, 0);
        assert_eq!(
            fake.calls(),
            ["hypercall vcpu 1 nr 12 args [8000, 4, 10, 0, 0, 0]"]
        );

        // A hypercall the handler does not know, and any hypercall on a native VM, stays
        // unhandled and leaves `ret` alone.
        let unknown = FakeExits::new(ExitAction::NotHandled, None);
        for coco in [Some(&unknown as &dyn CocoExits), None] {
            let mut ret = 0xDEAD;
            let exit = VcpuExit::Hypercall(HypercallExit {
                nr: 99,
                args: [0; 6],
                ret: &mut ret,
                longmode: 1,
            });
            let Exit::Other(description) = classify(exit, &bus, coco, 0) else {
                panic!("an unknown hypercall must stay unhandled");
            };
            assert!(description.starts_with("Hypercall("), "{description}");
            assert_eq!(ret, 0xDEAD);
        }
    }

    #[test]
    fn system_events_go_to_handler_first() {
        let bus = Bus::new();
        let stopping = FakeExits::new(
            ExitAction::Stop("the SEV-SNP guest requested termination".into()),
            None,
        );
        let data = [0x3_1000u64];
        assert_eq!(
            classify(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SEV_TERM, &data),
                &bus,
                Some(&stopping),
                0
            ),
            Exit::Terminated("the SEV-SNP guest requested termination".into())
        );
        assert_eq!(
            stopping.calls(),
            ["system_event vcpu 0 type 6 data [31000]"]
        );

        // Events the handler does not take keep their generic meaning.
        let passing = FakeExits::new(ExitAction::NotHandled, None);
        assert_eq!(
            classify(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]),
                &bus,
                Some(&passing),
                0
            ),
            Exit::SystemEvent(KVM_SYSTEM_EVENT_RESET)
        );
        assert_eq!(
            classify(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                &bus,
                None,
                0
            ),
            Exit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN)
        );
    }

    #[test]
    fn unsupported_exit_gets_kvm_run() {
        let fake = FakeExits::new(ExitAction::Resume, None);
        let mut run = kvm_run::default();
        assert_eq!(
            route_unsupported(Some(&fake), 3, KVM_EXIT_TDX, &mut run),
            Exit::Handled
        );
        assert_eq!(run.exit_reason, 0xAB);
        assert_eq!(fake.calls(), ["unsupported_exit vcpu 3 reason 40"]);

        let mut run = kvm_run::default();
        assert_eq!(
            route_unsupported(None, 0, KVM_EXIT_TDX, &mut run),
            Exit::Other("Unsupported(40)".into())
        );
        assert_eq!(run.exit_reason, 0);
    }

    /// Private-memory operations that a TDVMCALL never reaches.
    struct NoMemory;

    impl PrivateMemoryOps for NoMemory {
        fn set_memory_attributes(&self, gpa: u64, size: u64, _: u64) -> Result<(), CocoError> {
            Err(CocoError::OutsideMemory { gpa, size })
        }

        fn discard_private(&self, gpa: u64, size: u64) -> Result<(), CocoError> {
            Err(CocoError::OutsideMemory { gpa, size })
        }

        fn discard_shared(&self, gpa: u64, size: u64) -> Result<(), CocoError> {
            Err(CocoError::OutsideMemory { gpa, size })
        }
    }

    #[test]
    fn tdx_tdvmcall_result_in_kvm_run() {
        // The TDX backend's own handler, reached through the loop's routing: GetTdVmCallInfo
        // leaf 1 succeeds, and its result is written to the `tdx` member of `kvm_run`.
        let exits = TdxExits::new(
            ConversionExits {
                memory: NoMemory,
                ranges: vec![GuestRange {
                    gpa: 0,
                    size: 0x1000_0000,
                }],
            },
            None,
        );
        let mut run = kvm_run::default();
        let mut request = read_tdx_exit(&run);
        request.nr = TDVMCALL_GET_TD_VM_CALL_INFO;
        request.args = [0xFFFF, 1, 0, 0, 0, 0];
        write_tdx_exit(&mut run, &request);

        assert_eq!(
            route_unsupported(Some(&exits), 0, KVM_EXIT_TDX, &mut run),
            Exit::Handled
        );
        let answer = read_tdx_exit(&run);
        assert_eq!(answer.args[0], TDVMCALL_STATUS_SUCCESS);
        assert_eq!(answer.args[1], 1);

        // Another unsupported exit reason is not the TDX backend's.
        assert_eq!(
            route_unsupported(Some(&exits), 0, 41, &mut run),
            Exit::Other("Unsupported(41)".into())
        );
    }
}
