//! The smallest i8042 keyboard controller that lets a guest reset the machine through it.
//!
//! Ports 0x60 (data) and 0x64 (status on read, command on write) of the PC keyboard controller.
//! The guest finds a controller that passed its self-test, has no keyboard or mouse attached
//! and never has a byte to deliver. The one command that acts is 0xFE, "pulse the reset
//! line", which Linux (`reboot=kbd`) and many firmwares use to restart the machine. It returns
//! [`DeviceAction::Reset`].
//!
//! Limits:
//! - Every other command (self-test 0xAA, configuration byte 0x20/0x60, interface tests, the
//!   A20 output port 0xD1, ...) is accepted, counted and ignored, and produces no reply byte.
//!   A guest that waits for a reply finds the output buffer empty and times out. The FADT
//!   built by [`crate::acpi`] leaves the 8042 flag of `IAPC_BOOT_ARCH` clear and the DSDT
//!   lists no PS/2 device, so Linux does not probe the controller.
//! - Bytes written to port 0x60 are counted and ignored.
//!
//! The device decodes absolute port numbers (`base + offset`), so the VMM can map it either as
//! two one-port ranges at 0x60 and 0x64 or as one range 0x60..0x65. Other ports in such a range
//! read 0xFF.

use log::debug;

use crate::bus::{BusDevice, DeviceAction};

/// Data port: reads the output buffer, writes go to the keyboard.
pub const I8042_DATA_PORT: u64 = 0x60;
/// Status port on read, command port on write.
pub const I8042_COMMAND_PORT: u64 = 0x64;

/// Status bit: the output buffer contains a byte for the guest.
pub const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Status bit: the controller has not yet taken the last byte the guest wrote.
pub const STATUS_INPUT_FULL: u8 = 0x02;
/// Status bit: the system flag, set once the controller passed its self-test.
pub const STATUS_SYSTEM_FLAG: u8 = 0x04;
/// Status bit: the last byte written went to the command port, not the data port.
pub const STATUS_LAST_WRITE_COMMAND: u8 = 0x08;
/// Status bit: the keyboard is not inhibited by the keyboard lock.
pub const STATUS_KEYBOARD_UNLOCKED: u8 = 0x10;

/// Command: pulse the CPU reset line.
pub const COMMAND_PULSE_RESET: u8 = 0xFE;

/// Counters for diagnostics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct I8042Stats {
    /// Commands other than [`COMMAND_PULSE_RESET`], all ignored.
    pub ignored_commands: u64,
    /// Bytes written to the data port, all ignored.
    pub ignored_data_writes: u64,
    /// Accesses to ports other than 0x60 and 0x64.
    pub invalid_accesses: u64,
}

/// The keyboard controller.
#[derive(Debug)]
pub struct I8042 {
    /// Status register as the guest reads it from port 0x64.
    status: u8,
    /// Counters returned by [`I8042::stats`].
    stats: I8042Stats,
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    /// Creates a controller that passed its self-test and has no output pending.
    pub fn new() -> Self {
        Self {
            status: STATUS_SYSTEM_FLAG | STATUS_KEYBOARD_UNLOCKED,
            stats: I8042Stats::default(),
        }
    }

    /// Returns the counters.
    pub fn stats(&self) -> I8042Stats {
        self.stats
    }

    fn command(&mut self, command: u8) -> DeviceAction {
        self.status |= STATUS_LAST_WRITE_COMMAND;
        if command == COMMAND_PULSE_RESET {
            debug!("i8042: reset requested");
            return DeviceAction::Reset;
        }
        self.stats.ignored_commands += 1;
        debug!("i8042: command {command:#04x} ignored");
        DeviceAction::None
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let value = match base.checked_add(offset) {
            Some(I8042_COMMAND_PORT) => self.status,
            // The output buffer is always empty.
            Some(I8042_DATA_PORT) => 0,
            _ => {
                self.stats.invalid_accesses += 1;
                0xff
            }
        };
        data.fill(value);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) -> DeviceAction {
        let port = base.checked_add(offset);
        for &value in data {
            match port {
                Some(I8042_COMMAND_PORT) => {
                    if self.command(value) == DeviceAction::Reset {
                        return DeviceAction::Reset;
                    }
                }
                Some(I8042_DATA_PORT) => {
                    self.status &= !STATUS_LAST_WRITE_COMMAND;
                    self.stats.ignored_data_writes += 1;
                }
                _ => self.stats.invalid_accesses += 1,
            }
        }
        DeviceAction::None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn status(device: &mut I8042) -> u8 {
        let mut byte = [0u8];
        device.read(I8042_COMMAND_PORT, 0, &mut byte);
        byte[0]
    }

    #[test]
    fn initial_status() {
        let mut device = I8042::new();
        assert_eq!(status(&mut device), 0x14);
        let mut byte = [0xAAu8];
        device.read(I8042_DATA_PORT, 0, &mut byte);
        assert_eq!(byte, [0]);
    }

    #[test]
    fn pulse_reset_command() {
        let mut device = I8042::new();
        assert_eq!(
            device.write(I8042_COMMAND_PORT, 0, &[COMMAND_PULSE_RESET]),
            DeviceAction::Reset
        );
        // Mapped as one range starting at 0x60.
        assert_eq!(
            device.write(I8042_DATA_PORT, 4, &[COMMAND_PULSE_RESET]),
            DeviceAction::Reset
        );
        assert_eq!(device.stats().ignored_commands, 0);
    }

    #[test]
    fn other_commands_are_counted() {
        let mut device = I8042::new();
        for command in [0xAA, 0x20, 0x60, 0xD1, 0xFF, 0x00] {
            assert_eq!(
                device.write(I8042_COMMAND_PORT, 0, &[command]),
                DeviceAction::None
            );
        }
        assert_eq!(device.stats().ignored_commands, 6);
        assert_eq!(status(&mut device), 0x1C);
        device.write(I8042_DATA_PORT, 0, &[0x47]);
        assert_eq!(device.stats().ignored_data_writes, 1);
        assert_eq!(status(&mut device), 0x14);
    }

    #[test]
    fn string_write_stops_at_reset() {
        let mut device = I8042::new();
        assert_eq!(
            device.write(I8042_COMMAND_PORT, 0, &[0xAA, COMMAND_PULSE_RESET, 0x20]),
            DeviceAction::Reset
        );
        assert_eq!(device.stats().ignored_commands, 1);
    }

    #[test]
    fn bad_ports_change_nothing() {
        let mut device = I8042::new();
        let mut bytes = [0u8; 2];
        device.read(I8042_DATA_PORT, 1, &mut bytes);
        assert_eq!(bytes, [0xff, 0xff]);
        device.read(u64::MAX, 1, &mut bytes);
        assert_eq!(
            device.write(I8042_DATA_PORT, 1, &[COMMAND_PULSE_RESET]),
            DeviceAction::None
        );
        assert_eq!(device.write(u64::MAX, 5, &[0xFE]), DeviceAction::None);
        device.write(I8042_COMMAND_PORT, 0, &[]);
        assert_eq!(device.stats().invalid_accesses, 4);
        assert_eq!(status(&mut device), 0x14);
    }
}
