//! Raw mode for a terminal on stdin, restored when the guard drops.
//!
//! In raw mode every key goes to the guest as typed: no line editing, no echo, no signals from
//! Ctrl-C or Ctrl-Z, and no CR-to-LF translation. Output post-processing (LF to CR LF) stays on,
//! so the guest's lines start at the left margin. Ctrl-A x quits igvmm (see
//! [`crate::console`]).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Puts a terminal into raw mode and restores its previous settings on drop.
pub struct RawModeGuard {
    /// The terminal's file descriptor (stdin).
    fd: i32,
    /// The settings before raw mode.
    saved: libc::termios,
}

impl RawModeGuard {
    /// Switches `fd` to raw mode if it is a terminal. Returns `Ok(None)` when it is not one.
    pub fn enter(fd: BorrowedFd<'_>) -> io::Result<Option<Self>> {
        let raw_fd = fd.as_raw_fd();
        // SAFETY: isatty only inspects the descriptor, which `fd` keeps open.
        if unsafe { libc::isatty(raw_fd) } != 1 {
            return Ok(None);
        }
        // SAFETY: termios is a plain C struct for which all-zero bytes are a valid value.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes into `saved`, a valid termios, for an open descriptor.
        if unsafe { libc::tcgetattr(raw_fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        raw.c_iflag &= !(libc::IGNBRK
            | libc::BRKINT
            | libc::PARMRK
            | libc::ISTRIP
            | libc::INLCR
            | libc::IGNCR
            | libc::ICRNL
            | libc::IXON);
        raw.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
        raw.c_cflag = (raw.c_cflag & !(libc::CSIZE | libc::PARENB)) | libc::CS8;
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: tcsetattr reads `raw`, a valid termios, for an open descriptor.
        if unsafe { libc::tcsetattr(raw_fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(Self { fd: raw_fd, saved }))
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        // SAFETY: tcsetattr reads `saved`, the settings tcgetattr returned for this descriptor.
        // stdin stays open for the life of the process.
        if unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) } != 0 {
            log::warn!(
                "failed to restore the terminal settings: {}",
                io::Error::last_os_error()
            );
        }
    }
}
