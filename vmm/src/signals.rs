//! Signals: the real-time signal that kicks a vCPU thread out of `KVM_RUN`, and SIGINT/SIGTERM,
//! which stop the VM cleanly.
//!
//! Both handlers only touch atomics, which is async-signal-safe. The kick handler does nothing
//! at all: its only purpose is to make the blocked `KVM_RUN` ioctl return `EINTR`. A kick that
//! arrives just before the thread enters `KVM_RUN` is lost, so callers repeat kicks until the
//! thread has reacted.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use libc::siginfo_t;
use vmm_sys_util::signal::{register_signal_handler, Killable};

/// The stop signal received and not yet handled, or 0.
static PENDING_STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Returns the signal number used to kick vCPU threads: the first real-time signal, which the
/// C library leaves to applications.
pub fn kick_signal() -> c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_signal: c_int, _info: *mut siginfo_t, _context: *mut std::os::raw::c_void) {}

extern "C" fn on_stop_signal(
    signal: c_int,
    _info: *mut siginfo_t,
    _context: *mut std::os::raw::c_void,
) {
    PENDING_STOP_SIGNAL.store(signal, Ordering::SeqCst);
}

/// Installs the kick handler once per process. Returns the errno text if `sigaction` failed.
pub fn install_kick_handler() -> Result<(), String> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            register_signal_handler(kick_signal(), on_kick).map_err(|error| error.to_string())
        })
        .clone()
}

/// Installs handlers that record SIGINT and SIGTERM for [`take_stop_signal`], replacing the
/// default action of ending the process. They stay installed for the life of the process.
pub fn install_stop_handlers() -> Result<(), String> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        register_signal_handler(signal, on_stop_signal).map_err(|error| error.to_string())?;
    }
    Ok(())
}

/// Returns and clears the SIGINT or SIGTERM received since the last call.
pub fn take_stop_signal() -> Option<i32> {
    match PENDING_STOP_SIGNAL.swap(0, Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// Sends the kick signal to a thread that has not been joined yet.
pub fn kick<T>(thread: &std::thread::JoinHandle<T>) {
    if let Err(error) = thread.kill(kick_signal()) {
        log::debug!("failed to kick a vCPU thread: {error}");
    }
}
