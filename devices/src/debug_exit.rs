//! QEMU's `isa-debug-exit` device: a guest write to port 0x501 ends the VM with a status code.
//!
//! As in QEMU's `hw/misc/debugexit.c`, writing value `v` (1 to 4 bytes, little-endian) exits
//! with status `(v << 1) | 1`, so a guest can never report 0 and a test harness can tell a
//! deliberate exit from a crash. A process exit status has 8 bits, so the device keeps the
//! low 8 bits of that value: `v = 0x10` gives 33, `v = 0x80` gives 1. QEMU passes the full
//! value to `exit()`, which the host truncates the same way. Reads return 0.
//!
//! Limits: an access wider than 4 bytes (string I/O) is ignored and counted, since QEMU's device
//! never sees one.

use log::debug;

use crate::bus::{BusDevice, DeviceAction};

/// I/O port of the device (QEMU's default `iobase`).
pub const DEBUG_EXIT_PORT: u64 = 0x501;
/// Number of I/O ports the device decodes (QEMU's default `iosize`).
pub const DEBUG_EXIT_PORT_COUNT: u64 = 2;
/// Widest write the device accepts, in bytes.
const MAX_WRITE_LEN: usize = 4;
/// Bits of a process exit status.
const EXIT_STATUS_MASK: u64 = 0xFF;

/// Counters for diagnostics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DebugExitStats {
    /// Writes with no bytes or more than four, ignored.
    pub invalid_accesses: u64,
}

/// The debug-exit port.
#[derive(Debug, Default)]
pub struct DebugExit {
    /// Counters returned by [`DebugExit::stats`].
    stats: DebugExitStats,
}

impl DebugExit {
    /// Creates the device.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the counters.
    pub fn stats(&self) -> DebugExitStats {
        self.stats
    }
}

/// Returns the exit status for a guest write of `value`: `((value << 1) | 1) & 0xFF`.
pub fn exit_status(value: u32) -> u8 {
    (((u64::from(value) << 1) | 1) & EXIT_STATUS_MASK) as u8
}

impl BusDevice for DebugExit {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) -> DeviceAction {
        if data.is_empty() || data.len() > MAX_WRITE_LEN {
            self.stats.invalid_accesses += 1;
            debug!(
                "debug-exit: ignored {}-byte write at offset {offset}",
                data.len()
            );
            return DeviceAction::None;
        }
        let mut bytes = [0u8; MAX_WRITE_LEN];
        for (slot, byte) in bytes.iter_mut().zip(data) {
            *slot = *byte;
        }
        let value = u32::from_le_bytes(bytes);
        debug!("debug-exit: guest wrote {value:#x}");
        DeviceAction::Exit(value)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_values() {
        assert_eq!(exit_status(0), 1);
        assert_eq!(exit_status(0x10), 33);
        assert_eq!(exit_status(0x7F), 255);
        assert_eq!(exit_status(0x80), 1);
        assert_eq!(exit_status(u32::MAX), 255);
    }

    #[test]
    fn writes_of_each_width_exit() {
        let mut device = DebugExit::new();
        assert_eq!(
            device.write(DEBUG_EXIT_PORT, 0, &[0x10]),
            DeviceAction::Exit(0x10)
        );
        assert_eq!(
            device.write(DEBUG_EXIT_PORT, 0, &[0x31, 0x12]),
            DeviceAction::Exit(0x1231)
        );
        assert_eq!(
            device.write(DEBUG_EXIT_PORT, 1, &[2, 0, 0]),
            DeviceAction::Exit(2)
        );
        assert_eq!(
            device.write(DEBUG_EXIT_PORT, 0, &[0, 0, 0, 0x80]),
            DeviceAction::Exit(0x8000_0000)
        );
    }

    #[test]
    fn bad_writes_are_ignored() {
        let mut device = DebugExit::new();
        assert_eq!(device.write(DEBUG_EXIT_PORT, 0, &[]), DeviceAction::None);
        assert_eq!(
            device.write(DEBUG_EXIT_PORT, 0, &[1; 5]),
            DeviceAction::None
        );
        assert_eq!(
            device.write(DEBUG_EXIT_PORT, u64::MAX, &[1; 64]),
            DeviceAction::None
        );
        assert_eq!(device.stats().invalid_accesses, 3);
    }

    #[test]
    fn reads_return_zero() {
        let mut device = DebugExit::new();
        let mut bytes = [0xAAu8; 4];
        device.read(DEBUG_EXIT_PORT, 0, &mut bytes);
        assert_eq!(bytes, [0; 4]);
    }
}
