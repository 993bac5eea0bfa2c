//! A small port-I/O and MMIO bus: address ranges mapped to devices.
//!
//! The vCPU run loop hands every `KVM_EXIT_IO` and `KVM_EXIT_MMIO` to [`Bus::read`] or
//! [`Bus::write`]. Reads from unclaimed addresses return all-ones, as on a PC; writes to them are
//! counted and dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What a device asks the VMM to do after an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAction {
    /// Nothing; the guest continues.
    None,
    /// Stop the VM: the guest wrote this value to the debug-exit port. The process exit status
    /// is [`crate::debug_exit::exit_status`] of it.
    Exit(u32),
    /// The guest asked for a system reset (i8042 command 0xFE, port 0xCF9).
    Reset,
}

/// A device that claims a range of the bus.
pub trait BusDevice: Send {
    /// Fills `data` for a read of `data.len()` bytes at `offset` from the start of the device's
    /// range.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Handles a write of `data` at `offset` from the start of the device's range.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]) -> DeviceAction;
}

/// A device shared between the bus and its owner (for example the event loop that feeds the
/// serial port).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Mapping {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// Error from [`Bus::insert`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The range is empty or wraps around.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps")]
    InvalidRange {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

/// An address space of devices, used once for port I/O and once for MMIO.
#[derive(Clone, Default)]
pub struct Bus {
    mappings: Vec<Mapping>,
    unclaimed_accesses: Arc<AtomicU64>,
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `device` at `base..base + len`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 => end,
            _ => return Err(BusError::InvalidRange { base, len }),
        };
        if self
            .mappings
            .iter()
            .any(|m| base < m.base + m.len && m.base < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        let at = self.mappings.partition_point(|m| m.base < base);
        self.mappings.insert(at, Mapping { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<&Mapping> {
        let at = self.mappings.partition_point(|m| m.base <= addr);
        let mapping = self.mappings.get(at.checked_sub(1)?)?;
        (addr - mapping.base < mapping.len).then_some(mapping)
    }

    /// Dispatches a read. Returns `false` (and fills `data` with 0xFF) when nothing claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some(mapping) => {
                let mut device = mapping
                    .device
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                device.read(mapping.base, addr - mapping.base, data);
                true
            }
            None => {
                data.fill(0xff);
                self.unclaimed_accesses.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Dispatches a write. Returns `None` when nothing claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<DeviceAction> {
        match self.find(addr) {
            Some(mapping) => {
                let mut device = mapping
                    .device
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                Some(device.write(mapping.base, addr - mapping.base, data))
            }
            None => {
                self.unclaimed_accesses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Returns how many accesses hit no device.
    pub fn unclaimed_accesses(&self) -> u64 {
        self.unclaimed_accesses.load(Ordering::Relaxed)
    }
}
