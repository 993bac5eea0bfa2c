//! Coordination between the threads of a running VM: the stop handle that every thread may
//! fire, the per-vCPU activity counters, and the detector that notices when every vCPU has
//! halted for good.
//!
//! With KVM's in-kernel irqchip a `HLT` never reaches userspace: the vCPU thread blocks inside
//! `KVM_RUN` until an interrupt arrives. So the coordinator samples instead. When no vCPU has
//! exited to userspace for one tick, it kicks every vCPU out of `KVM_RUN` with a signal. Each
//! vCPU thread then reads its own `KVM_GET_MP_STATE` and RFLAGS and publishes the result. Two
//! rounds in a row may find every vCPU halted with interrupts disabled (or still waiting for a
//! SIPI), with no exit in between. The VM has then stopped, because only an NMI could wake it,
//! and no device of igvmm sends one.

use std::borrow::Borrow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::VmmError;
use crate::exit::{StopReason, StopRequest};

/// The end of a run: a stop reason or an error inside a vCPU thread.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The VM stopped.
    Stopped(StopReason),
    /// A thread hit an error that ended the run.
    Failed(VmmError),
}

#[derive(Debug, Default)]
struct StopState {
    /// The first outcome reported; later ones are logged and dropped.
    outcome: Mutex<Option<Outcome>>,
    /// Signalled when `outcome` is set.
    changed: Condvar,
    /// Set together with `outcome`, readable without the lock.
    stopping: AtomicBool,
}

/// A handle to stop a running VM, shared by the vCPU threads, the console and the caller.
///
/// The first stop reason wins. Clones refer to the same VM.
#[derive(Debug, Clone, Default)]
pub struct StopHandle {
    state: Arc<StopState>,
}

impl StopHandle {
    /// Creates a handle for one run.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the VM to stop; `run_vm` then returns [`StopReason::Requested`] with
    /// [`StopRequest::Caller`], unless another reason came first.
    pub fn request_stop(&self) {
        self.stop(StopReason::Requested(StopRequest::Caller));
    }

    /// Returns whether a stop reason or error has been reported.
    pub fn is_stopping(&self) -> bool {
        self.state.stopping.load(Ordering::Acquire)
    }

    /// Reports a stop reason.
    pub(crate) fn stop(&self, reason: StopReason) {
        self.finish(Outcome::Stopped(reason));
    }

    /// Reports an error that ends the run.
    pub(crate) fn fail(&self, error: VmmError) {
        self.finish(Outcome::Failed(error));
    }

    fn lock(&self) -> MutexGuard<'_, Option<Outcome>> {
        self.state
            .outcome
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn finish(&self, outcome: Outcome) {
        let mut slot = self.lock();
        if slot.is_some() {
            log::debug!("stop already requested; ignoring {outcome:?}");
            return;
        }
        log::debug!("stopping: {outcome:?}");
        *slot = Some(outcome);
        self.state.stopping.store(true, Ordering::Release);
        self.state.changed.notify_all();
    }

    /// Waits up to `timeout` for a stop, and returns whether one was reported.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let slot = self.lock();
        if slot.is_some() {
            return true;
        }
        let (slot, _) = self
            .state
            .changed
            .wait_timeout(slot, timeout)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.is_some()
    }

    /// Takes the outcome after the run has ended.
    pub(crate) fn take_outcome(&self) -> Option<Outcome> {
        self.lock().take()
    }
}

/// The state a sample of a vCPU found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuRunState {
    /// Runnable: executing guest code or about to.
    Running,
    /// Halted with RFLAGS.IF set: an interrupt will wake it.
    HaltedInterruptsOn,
    /// Halted with RFLAGS.IF clear.
    HaltedInterruptsOff,
    /// An application processor that has not received INIT/SIPI.
    WaitingForSipi,
}

impl VcpuRunState {
    /// Returns whether this state can only end by an event from another vCPU or an NMI.
    fn is_stopped(self) -> bool {
        matches!(
            self,
            VcpuRunState::HaltedInterruptsOff | VcpuRunState::WaitingForSipi
        )
    }
}

/// Counters a vCPU thread publishes for the coordinator.
#[derive(Debug, Default)]
pub(crate) struct VcpuActivity {
    /// Exits to userspace, not counting the ones caused by kicks.
    exits: AtomicU64,
    /// The sampling round the coordinator asked for.
    requested_round: AtomicU64,
    /// The latest sample and the round it belongs to.
    sample: Mutex<Option<(u64, VcpuRunState)>>,
}

impl VcpuActivity {
    /// Counts an exit to userspace.
    pub(crate) fn count_exit(&self) {
        self.exits.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns the sampling round the vCPU still has to sample for, if any.
    pub(crate) fn pending_round(&self) -> Option<u64> {
        let requested = self.requested_round.load(Ordering::Acquire);
        let answered = self.lock_sample().map_or(0, |(round, _)| round);
        (requested > answered).then_some(requested)
    }

    /// Publishes the state found for `round`.
    pub(crate) fn publish(&self, round: u64, state: VcpuRunState) {
        *self
            .sample
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((round, state));
    }

    fn lock_sample(&self) -> Option<(u64, VcpuRunState)> {
        *self
            .sample
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The coordinator's next step after a tick of the [`HaltDetector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HaltCheck {
    /// Nothing; some vCPU is active.
    Wait,
    /// Kick every vCPU so that it samples itself for the new round.
    Kick,
    /// Every vCPU has stopped for good.
    AllHalted,
}

/// Decides, tick by tick, whether every vCPU has halted for good.
#[derive(Debug, Default)]
pub(crate) struct HaltDetector {
    /// Exit counts seen at the previous tick.
    last_exits: Vec<u64>,
    /// The sampling round last requested.
    round: u64,
    /// Whether `round` was requested after the last exit seen, so that its samples count.
    round_is_current: bool,
    /// Consecutive rounds that found every vCPU stopped.
    stopped_rounds: u32,
}

/// Rounds in a row that must find every vCPU stopped before the VM counts as halted.
const STOPPED_ROUNDS_REQUIRED: u32 = 2;

impl HaltDetector {
    /// Creates a detector for `vcpus` vCPUs that have not exited yet.
    pub(crate) fn new(vcpus: usize) -> Self {
        Self {
            last_exits: vec![0; vcpus],
            ..Self::default()
        }
    }

    /// Looks at the activity of every vCPU once.
    pub(crate) fn tick<A: Borrow<VcpuActivity>>(&mut self, vcpus: &[A]) -> HaltCheck {
        let vcpus: Vec<&VcpuActivity> = vcpus.iter().map(Borrow::borrow).collect();
        let exits: Vec<u64> = vcpus
            .iter()
            .map(|vcpu| vcpu.exits.load(Ordering::Relaxed))
            .collect();
        if exits != self.last_exits {
            self.last_exits = exits;
            self.stopped_rounds = 0;
            self.round_is_current = false;
            return HaltCheck::Wait;
        }

        if self.round_is_current {
            let samples: Vec<Option<(u64, VcpuRunState)>> =
                vcpus.iter().map(|vcpu| vcpu.lock_sample()).collect();
            let answered = samples
                .iter()
                .all(|sample| sample.is_some_and(|(round, _)| round == self.round));
            if answered {
                let states = samples.iter().flatten().map(|(_, state)| *state);
                let all_stopped = states.clone().all(VcpuRunState::is_stopped);
                let any_halted = states
                    .clone()
                    .any(|state| state == VcpuRunState::HaltedInterruptsOff);
                if all_stopped && any_halted {
                    self.stopped_rounds += 1;
                } else {
                    self.stopped_rounds = 0;
                }
            }
            if self.stopped_rounds >= STOPPED_ROUNDS_REQUIRED {
                return HaltCheck::AllHalted;
            }
        }

        self.round += 1;
        self.round_is_current = true;
        for vcpu in vcpus {
            vcpu.requested_round.store(self.round, Ordering::Release);
        }
        HaltCheck::Kick
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn answer(vcpus: &[VcpuActivity], states: &[VcpuRunState]) {
        for (vcpu, state) in vcpus.iter().zip(states) {
            let round = vcpu.pending_round().unwrap();
            vcpu.publish(round, *state);
        }
    }

    #[test]
    fn detects_all_halted_after_two_rounds() {
        let vcpus = [VcpuActivity::default(), VcpuActivity::default()];
        let mut detector = HaltDetector::new(vcpus.len());
        let states = [
            VcpuRunState::HaltedInterruptsOff,
            VcpuRunState::WaitingForSipi,
        ];
        vcpus[0].count_exit();
        assert_eq!(detector.tick(&vcpus), HaltCheck::Wait);
        assert_eq!(detector.tick(&vcpus), HaltCheck::Kick);
        answer(&vcpus, &states);
        assert_eq!(detector.tick(&vcpus), HaltCheck::Kick);
        answer(&vcpus, &states);
        assert_eq!(detector.tick(&vcpus), HaltCheck::AllHalted);
    }

    #[test]
    fn exit_between_rounds_resets() {
        let vcpus = [VcpuActivity::default()];
        let mut detector = HaltDetector::new(vcpus.len());
        let halted = [VcpuRunState::HaltedInterruptsOff];
        assert_eq!(detector.tick(&vcpus), HaltCheck::Kick);
        answer(&vcpus, &halted);
        assert_eq!(detector.tick(&vcpus), HaltCheck::Kick);
        answer(&vcpus, &halted);
        vcpus[0].count_exit();
        assert_eq!(detector.tick(&vcpus), HaltCheck::Wait);
        assert_eq!(detector.tick(&vcpus), HaltCheck::Kick);
        answer(&vcpus, &halted);
        assert_eq!(detector.tick(&vcpus), HaltCheck::Kick);
    }

    #[test]
    fn interrupts_on_or_running_never_stop() {
        for state in [VcpuRunState::HaltedInterruptsOn, VcpuRunState::Running] {
            let vcpus = [VcpuActivity::default()];
            let mut detector = HaltDetector::new(vcpus.len());
            for _ in 0..5 {
                assert_eq!(detector.tick(&vcpus), HaltCheck::Kick);
                answer(&vcpus, &[state]);
            }
        }
        // Only APs waiting for SIPI, with no halted BSP, is not a halt either.
        let vcpus = [VcpuActivity::default()];
        let mut detector = HaltDetector::new(vcpus.len());
        for _ in 0..5 {
            assert_eq!(detector.tick(&vcpus), HaltCheck::Kick);
            answer(&vcpus, &[VcpuRunState::WaitingForSipi]);
        }
    }

    #[test]
    fn unanswered_round_does_not_count() {
        let vcpus = [VcpuActivity::default(), VcpuActivity::default()];
        let mut detector = HaltDetector::new(vcpus.len());
        for _ in 0..5 {
            assert_eq!(detector.tick(&vcpus), HaltCheck::Kick);
            let round = vcpus[0].pending_round().unwrap();
            vcpus[0].publish(round, VcpuRunState::HaltedInterruptsOff);
        }
        assert!(vcpus[1].pending_round().is_some());
    }

    #[test]
    fn first_stop_wins() {
        let handle = StopHandle::new();
        assert!(!handle.is_stopping());
        assert!(!handle.wait(Duration::from_millis(1)));
        handle.stop(StopReason::AllHalted);
        handle.request_stop();
        assert!(handle.is_stopping());
        assert!(handle.wait(Duration::from_millis(1)));
        assert!(matches!(
            handle.take_outcome(),
            Some(Outcome::Stopped(StopReason::AllHalted))
        ));
    }
}
