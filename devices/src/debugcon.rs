//! QEMU's `isa-debugcon` device at port 0x402: a write-only console for firmware logs.
//!
//! SeaBIOS and OVMF debug builds print their log one byte at a time to this port. Every byte
//! written goes to a sink that the VMM chooses (a log file, stderr). Reads return 0xE9, QEMU's
//! default `readback` value, which firmware reads to detect the port.
//!
//! A failing sink does not stop the VM: the failure is counted and the bytes are dropped.
//! A multi-byte write is taken as string I/O (`rep outsb`) and all its bytes go to the sink
//! in order. QEMU's device (hw/char/debugcon.c) accepts only one-byte accesses, and the bus
//! cannot tell a 16-bit `out` from a two-byte string write.

use std::io::Write;

use log::{debug, warn};

use crate::bus::{BusDevice, DeviceAction};

/// I/O port SeaBIOS and OVMF use for their debug log.
pub const DEBUGCON_PORT: u64 = 0x402;
/// Number of I/O ports the device decodes.
pub const DEBUGCON_PORT_COUNT: u64 = 1;
/// Value read back from the port.
pub const DEBUGCON_READBACK: u8 = 0xE9;

/// Counters for diagnostics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DebugconStats {
    /// Bytes that reached the sink.
    pub bytes_out: u64,
    /// Writes whose bytes the sink rejected.
    pub output_errors: u64,
}

/// The debug console.
pub struct Debugcon {
    /// Destination of the bytes the guest writes.
    sink: Box<dyn Write + Send>,
    /// Counters returned by [`Debugcon::stats`].
    stats: DebugconStats,
}

impl Debugcon {
    /// Creates the console. Guest bytes are written to `sink` and flushed after each write.
    pub fn new(sink: Box<dyn Write + Send>) -> Self {
        Self {
            sink,
            stats: DebugconStats::default(),
        }
    }

    /// Returns the counters.
    pub fn stats(&self) -> DebugconStats {
        self.stats
    }
}

impl BusDevice for Debugcon {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(DEBUGCON_READBACK);
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) -> DeviceAction {
        if data.is_empty() {
            return DeviceAction::None;
        }
        match self.sink.write_all(data).and_then(|()| self.sink.flush()) {
            Ok(()) => self.stats.bytes_out += data.len() as u64,
            Err(error) => {
                self.stats.output_errors += 1;
                if self.stats.output_errors == 1 {
                    warn!("debugcon: sink failed, dropping firmware log output: {error}");
                } else {
                    debug!("debugcon: sink failed: {error}");
                }
            }
        }
        DeviceAction::None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct SharedSink(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedSink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct BrokenSink;

    impl Write for BrokenSink {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_reach_sink() {
        let sink = SharedSink::default();
        let mut device = Debugcon::new(Box::new(sink.clone()));
        for &byte in b"SeaBIOS" {
            assert_eq!(device.write(DEBUGCON_PORT, 0, &[byte]), DeviceAction::None);
        }
        device.write(DEBUGCON_PORT, 0, b" (version)\n");
        device.write(DEBUGCON_PORT, 0, &[]);
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"SeaBIOS (version)\n");
        assert_eq!(device.stats().bytes_out, 18);
    }

    #[test]
    fn reads_return_readback() {
        let mut device = Debugcon::new(Box::new(io::sink()));
        let mut bytes = [0u8; 3];
        device.read(DEBUGCON_PORT, 0, &mut bytes);
        assert_eq!(bytes, [0xE9; 3]);
    }

    #[test]
    fn broken_sink_is_counted() {
        let mut device = Debugcon::new(Box::new(BrokenSink));
        assert_eq!(device.write(DEBUGCON_PORT, 0, b"a"), DeviceAction::None);
        assert_eq!(device.write(DEBUGCON_PORT, 0, b"bc"), DeviceAction::None);
        assert_eq!(device.stats().output_errors, 2);
        assert_eq!(device.stats().bytes_out, 0);
    }
}
