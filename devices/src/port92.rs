//! System control port A at I/O port 0x92 ("fast A20 gate" and fast reset).
//!
//! Behaviour follows QEMU's `hw/i386/port92.c`: the port stores the byte written and reads it
//! back. Bit 1 is the A20 gate. Setting bit 0 when it was clear requests a system reset, which
//! the device returns as [`DeviceAction::Reset`].
//!
//! Limits:
//! - The A20 bit is only stored. KVM guests always run with A20 enabled, so clearing it does
//!   not wrap addresses at 1 MiB.
//! - QEMU clears bit 0 when the machine resets. The VMM may keep this device across a reset,
//!   so the device clears bit 0 itself when it requests the reset. A guest that reads the port
//!   afterwards gets the value QEMU returns after the reset.
//! - A multi-byte access is taken as string I/O to the port, one byte at a time.

use log::debug;

use crate::bus::{BusDevice, DeviceAction};

/// I/O port of the device.
pub const PORT92_PORT: u64 = 0x92;
/// Number of I/O ports the device decodes.
pub const PORT92_PORT_COUNT: u64 = 1;
/// Bit that resets the system when it goes from 0 to 1.
pub const PORT92_FAST_RESET: u8 = 0x01;
/// Bit that enables the A20 address line.
pub const PORT92_A20_ENABLE: u8 = 0x02;

/// System control port A.
#[derive(Debug, Default)]
pub struct Port92 {
    /// Byte last written by the guest, bit 0 cleared after a reset request.
    value: u8,
}

impl Port92 {
    /// Creates the port with every bit clear, as QEMU does.
    pub fn new() -> Self {
        Self::default()
    }
}

impl BusDevice for Port92 {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(self.value);
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) -> DeviceAction {
        for &value in data {
            let rising_reset =
                value & PORT92_FAST_RESET != 0 && self.value & PORT92_FAST_RESET == 0;
            self.value = value;
            if rising_reset {
                debug!("port 0x92: reset requested");
                self.value &= !PORT92_FAST_RESET;
                return DeviceAction::Reset;
            }
        }
        DeviceAction::None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn read(device: &mut Port92) -> u8 {
        let mut byte = [0xAAu8];
        device.read(PORT92_PORT, 0, &mut byte);
        byte[0]
    }

    #[test]
    fn a20_bit_reads_back() {
        let mut device = Port92::new();
        assert_eq!(read(&mut device), 0);
        assert_eq!(
            device.write(PORT92_PORT, 0, &[PORT92_A20_ENABLE]),
            DeviceAction::None
        );
        assert_eq!(read(&mut device), PORT92_A20_ENABLE);
        assert_eq!(device.write(PORT92_PORT, 0, &[0xF0]), DeviceAction::None);
        assert_eq!(read(&mut device), 0xF0);
    }

    #[test]
    fn fast_reset_bit_resets() {
        let mut device = Port92::new();
        assert_eq!(
            device.write(PORT92_PORT, 0, &[PORT92_A20_ENABLE | PORT92_FAST_RESET]),
            DeviceAction::Reset
        );
        // Bit 0 is clear again, as after QEMU's reset, so the next request resets again.
        assert_eq!(read(&mut device), PORT92_A20_ENABLE);
        assert_eq!(
            device.write(PORT92_PORT, 0, &[PORT92_FAST_RESET]),
            DeviceAction::Reset
        );
    }

    #[test]
    fn string_write_stops_at_reset() {
        let mut device = Port92::new();
        assert_eq!(
            device.write(PORT92_PORT, 0, &[0x02, 0x03, 0x00]),
            DeviceAction::Reset
        );
        assert_eq!(read(&mut device), 0x02);
        assert_eq!(device.write(PORT92_PORT, 0, &[]), DeviceAction::None);
        assert_eq!(read(&mut device), 0x02);
    }
}
