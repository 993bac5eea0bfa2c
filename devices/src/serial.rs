//! COM1: a 16550A UART at I/O port 0x3F8, interrupt line IRQ 4.
//!
//! The register model is vm-superio's [`vm_superio::Serial`] (8 registers, 64-byte receive FIFO,
//! the THR-empty and received-data interrupts). This file adapts it to the [`BusDevice`]
//! trait, raises the interrupt through an [`EventFd`] that the VMM registers as a KVM irqfd
//! for GSI 4, and keeps the VMM running when the output sink fails.
//!
//! Limits:
//! - Transmitted bytes go to the sink at once, so the line speed set through the divisor latch
//!   has no effect and the transmitter is always empty.
//! - An access wider than one byte is taken as string I/O (`rep insb`/`rep outsb`) to the same
//!   register: each byte is one access, in order. A 16550 has only byte-wide registers.
//! - The modem-status lines are fixed at DCD, DSR and CTS asserted, as vm-superio sets them.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use log::{debug, warn};
use vm_superio::serial::SerialEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusDevice, DeviceAction};

/// I/O port base of COM1.
pub const COM1_PORT_BASE: u64 = 0x3F8;
/// Number of I/O ports that a 16550 decodes.
pub const SERIAL_PORT_COUNT: u64 = 8;
/// ISA interrupt line of COM1.
pub const COM1_IRQ: u32 = 4;

/// Interrupt line of the UART, raised by writing to an eventfd that KVM routes to a GSI.
#[derive(Debug)]
struct EventFdTrigger(EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Counters for the serial port, read by the VMM for diagnostics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SerialStats {
    /// Bytes the guest transmitted that reached the output sink.
    pub bytes_out: u64,
    /// Bytes the guest transmitted that the output sink rejected (for example a closed stdout).
    pub output_errors: u64,
    /// Failed writes to the interrupt eventfd and to the input-drained eventfd.
    pub interrupt_errors: u64,
    /// Bytes of host input placed in the receive FIFO.
    pub bytes_in: u64,
    /// Accesses at an offset beyond the eight UART registers.
    pub invalid_accesses: u64,
}

/// COM1 as seen by the guest: a vm-superio 16550 with an eventfd interrupt.
pub struct Serial {
    /// The UART registers and receive FIFO.
    uart: vm_superio::Serial<EventFdTrigger, UartEvents, Box<dyn Write + Send>>,
    /// Counters returned by [`Serial::stats`].
    stats: SerialStats,
}

impl Serial {
    /// Creates the UART. `interrupt` is signalled whenever the UART raises its interrupt line.
    /// Bytes the guest transmits are written to `output` and flushed one by one.
    pub fn new(interrupt: EventFd, output: Box<dyn Write + Send>) -> Self {
        Self::build(interrupt, output, None)
    }

    /// Creates the UART as [`Serial::new`] does, and also signals `input_drained` each time a
    /// guest read of the data register leaves the receive FIFO empty (also when it was empty
    /// before). An event loop with host input that the FIFO could not take waits on it before
    /// calling [`Serial::enqueue_input`] again.
    pub fn with_input_drained_event(
        interrupt: EventFd,
        output: Box<dyn Write + Send>,
        input_drained: EventFd,
    ) -> Self {
        Self::build(interrupt, output, Some(input_drained))
    }

    fn build(
        interrupt: EventFd,
        output: Box<dyn Write + Send>,
        input_drained: Option<EventFd>,
    ) -> Self {
        let events = UartEvents {
            bytes_out: AtomicU64::new(0),
            input_drained,
            input_drained_errors: AtomicU64::new(0),
        };
        Self {
            uart: vm_superio::Serial::with_events(EventFdTrigger(interrupt), events, output),
            stats: SerialStats::default(),
        }
    }

    /// Returns the interrupt eventfd.
    pub fn interrupt_event(&self) -> &EventFd {
        &self.uart.interrupt_evt().0
    }

    /// Places host input (for example stdin bytes) in the receive FIFO and raises the
    /// received-data interrupt if the guest enabled it.
    ///
    /// Returns how many leading bytes of `input` were taken. The FIFO has room for 64 bytes, so
    /// the caller keeps the rest and offers it again after the guest has read the FIFO (see
    /// [`Serial::fifo_capacity`]). In loopback mode the UART takes no host input and this
    /// returns 0.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let capacity = self.uart.fifo_capacity();
        if input.is_empty() || capacity == 0 {
            return 0;
        }
        let taken = match self.uart.enqueue_raw_bytes(input) {
            Ok(taken) => taken,
            Err(vm_superio::serial::Error::Trigger(error)) => {
                // vm-superio queues the bytes before it signals the interrupt, so they are
                // in the FIFO even though the signal failed.
                self.count_interrupt_error(&error);
                capacity.min(input.len())
            }
            Err(error) => {
                debug!("serial: receive FIFO rejected input: {error}");
                0
            }
        };
        self.stats.bytes_in += taken as u64;
        taken
    }

    /// Returns how many bytes the receive FIFO can still take.
    pub fn fifo_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Returns the counters.
    pub fn stats(&self) -> SerialStats {
        let events = self.uart.events();
        SerialStats {
            bytes_out: events.bytes_out.load(Ordering::Relaxed),
            interrupt_errors: self.stats.interrupt_errors
                + events.input_drained_errors.load(Ordering::Relaxed),
            ..self.stats
        }
    }

    fn count_interrupt_error(&mut self, error: &io::Error) {
        self.stats.interrupt_errors += 1;
        if self.stats.interrupt_errors == 1 {
            warn!("serial: failed to signal the COM1 interrupt eventfd: {error}");
        } else {
            debug!("serial: failed to signal the COM1 interrupt eventfd: {error}");
        }
    }

    fn write_register(&mut self, offset: u8, value: u8) {
        match self.uart.write(offset, value) {
            Ok(()) => {}
            Err(vm_superio::serial::Error::IOError(error)) => {
                self.stats.output_errors += 1;
                if self.stats.output_errors == 1 {
                    warn!("serial: output sink failed, dropping guest output: {error}");
                } else {
                    debug!("serial: output sink failed: {error}");
                }
            }
            Err(vm_superio::serial::Error::Trigger(error)) => self.count_interrupt_error(&error),
            // vm-superio returns FullFifo only from enqueue_raw_bytes.
            Err(vm_superio::serial::Error::FullFifo) => {}
        }
    }
}

/// vm-superio event hooks: the output byte count and the optional FIFO-drained signal.
#[derive(Debug)]
struct UartEvents {
    /// Bytes written and flushed to the output sink.
    bytes_out: AtomicU64,
    /// Signalled when the guest empties the receive FIFO.
    input_drained: Option<EventFd>,
    /// Failed writes to `input_drained`.
    input_drained_errors: AtomicU64,
}

impl SerialEvents for UartEvents {
    fn buffer_read(&self) {}

    fn out_byte(&self) {
        self.bytes_out.fetch_add(1, Ordering::Relaxed);
    }

    fn tx_lost_byte(&self) {}

    fn in_buffer_empty(&self) {
        if let Some(event) = &self.input_drained {
            if event.write(1).is_err() {
                self.input_drained_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let Ok(register) = u8::try_from(offset) else {
            self.stats.invalid_accesses += 1;
            data.fill(0xff);
            return;
        };
        if u64::from(register) >= SERIAL_PORT_COUNT {
            self.stats.invalid_accesses += 1;
            data.fill(0xff);
            return;
        }
        for byte in data.iter_mut() {
            *byte = self.uart.read(register);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) -> DeviceAction {
        let register = match u8::try_from(offset) {
            Ok(register) if u64::from(register) < SERIAL_PORT_COUNT => register,
            _ => {
                self.stats.invalid_accesses += 1;
                return DeviceAction::None;
            }
        };
        for &value in data {
            self.write_register(register, value);
        }
        DeviceAction::None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;

    /// Register offsets, as the guest driver uses them.
    const DATA: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const MSR: u64 = 6;
    const SCR: u64 = 7;

    /// An output sink whose contents the test can inspect.
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

    /// An output sink that fails like a closed stdout.
    struct BrokenSink;

    impl Write for BrokenSink {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }

        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    fn serial_with_sink() -> (Serial, SharedSink) {
        let sink = SharedSink::default();
        let serial = Serial::new(EventFd::new(EFD_NONBLOCK).unwrap(), Box::new(sink.clone()));
        (serial, sink)
    }

    fn read_register(serial: &mut Serial, offset: u64) -> u8 {
        let mut byte = [0u8];
        serial.read(COM1_PORT_BASE, offset, &mut byte);
        byte[0]
    }

    fn write_register(serial: &mut Serial, offset: u64, value: u8) {
        assert_eq!(
            serial.write(COM1_PORT_BASE, offset, &[value]),
            DeviceAction::None
        );
    }

    fn interrupt_count(serial: &Serial) -> u64 {
        serial.interrupt_event().read().unwrap_or(0)
    }

    #[test]
    fn reset_register_values() {
        let (mut serial, _) = serial_with_sink();
        assert_eq!(read_register(&mut serial, IER), 0x00);
        assert_eq!(read_register(&mut serial, IIR), 0xC1);
        assert_eq!(read_register(&mut serial, LCR), 0x03);
        assert_eq!(read_register(&mut serial, MCR), 0x08);
        assert_eq!(read_register(&mut serial, LSR), 0x60);
        assert_eq!(read_register(&mut serial, MSR), 0xB0);
        assert_eq!(read_register(&mut serial, SCR), 0x00);
    }

    #[test]
    fn transmitted_bytes_reach_sink() {
        let (mut serial, sink) = serial_with_sink();
        for &byte in b"hi\n" {
            write_register(&mut serial, DATA, byte);
        }
        serial.write(COM1_PORT_BASE, DATA, b"ok");
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hi\nok");
        assert_eq!(serial.stats().bytes_out, 5);
        assert_eq!(serial.stats().output_errors, 0);
    }

    #[test]
    fn divisor_latch_writes_do_not_transmit() {
        let (mut serial, sink) = serial_with_sink();
        write_register(&mut serial, LCR, 0x83);
        write_register(&mut serial, DATA, 0x01);
        write_register(&mut serial, IER, 0x00);
        assert_eq!(read_register(&mut serial, DATA), 0x01);
        write_register(&mut serial, LCR, 0x03);
        assert!(sink.0.lock().unwrap().is_empty());
        assert_eq!(serial.stats().bytes_out, 0);
    }

    #[test]
    fn broken_sink_is_counted() {
        let mut serial = Serial::new(EventFd::new(EFD_NONBLOCK).unwrap(), Box::new(BrokenSink));
        for &byte in b"lost" {
            write_register(&mut serial, DATA, byte);
        }
        assert_eq!(serial.stats().output_errors, 4);
        assert_eq!(serial.stats().bytes_out, 0);
        // The transmitter still looks empty, so the guest driver keeps going.
        assert_eq!(read_register(&mut serial, LSR), 0x60);
    }

    #[test]
    fn input_respects_fifo_capacity() {
        let (mut serial, _) = serial_with_sink();
        let input: Vec<u8> = (0..100).collect();
        assert_eq!(serial.enqueue_input(&input), 64);
        assert_eq!(serial.fifo_capacity(), 0);
        assert_eq!(serial.enqueue_input(&input[64..]), 0);
        assert_eq!(read_register(&mut serial, LSR) & 0x01, 0x01);
        assert_eq!(read_register(&mut serial, DATA), 0);
        assert_eq!(serial.fifo_capacity(), 1);
        assert_eq!(serial.enqueue_input(&input[64..]), 1);
        assert_eq!(serial.enqueue_input(&[]), 0);
        assert_eq!(serial.stats().bytes_in, 65);
    }

    #[test]
    fn drained_fifo_signals_event() {
        let drained = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut serial = Serial::with_input_drained_event(
            EventFd::new(EFD_NONBLOCK).unwrap(),
            Box::new(io::sink()),
            drained.try_clone().unwrap(),
        );
        assert_eq!(serial.enqueue_input(b"ab"), 2);
        assert_eq!(read_register(&mut serial, DATA), b'a');
        assert!(drained.read().is_err(), "FIFO not empty yet");
        assert_eq!(read_register(&mut serial, DATA), b'b');
        assert_eq!(drained.read().unwrap(), 1);
    }

    #[test]
    fn string_read_drains_fifo() {
        let (mut serial, _) = serial_with_sink();
        assert_eq!(serial.enqueue_input(b"abc"), 3);
        let mut bytes = [0xAAu8; 4];
        serial.read(COM1_PORT_BASE, DATA, &mut bytes);
        assert_eq!(&bytes, b"abc\0");
        assert_eq!(read_register(&mut serial, LSR) & 0x01, 0);
    }

    #[test]
    fn input_raises_interrupt_when_enabled() {
        let (mut serial, _) = serial_with_sink();
        assert_eq!(serial.enqueue_input(b"x"), 1);
        assert_eq!(interrupt_count(&serial), 0);
        // Enabling the received-data interrupt with data waiting raises it at once.
        write_register(&mut serial, IER, 0x01);
        assert_eq!(interrupt_count(&serial), 1);
        assert_eq!(read_register(&mut serial, IIR), 0xC4);
        assert_eq!(read_register(&mut serial, DATA), b'x');
        assert_eq!(serial.enqueue_input(b"y"), 1);
        assert_eq!(interrupt_count(&serial), 1);
    }

    #[test]
    fn thr_empty_interrupt() {
        let (mut serial, _) = serial_with_sink();
        write_register(&mut serial, IER, 0x02);
        assert_eq!(interrupt_count(&serial), 1);
        assert_eq!(read_register(&mut serial, IIR), 0xC2);
        // Reading IIR cleared the THR-empty source, so the next byte raises it again.
        write_register(&mut serial, DATA, b'a');
        assert_eq!(interrupt_count(&serial), 1);
    }

    #[test]
    fn loopback_takes_no_host_input() {
        let (mut serial, sink) = serial_with_sink();
        write_register(&mut serial, MCR, 0x10);
        assert_eq!(serial.enqueue_input(b"zz"), 0);
        write_register(&mut serial, DATA, b'L');
        assert_eq!(read_register(&mut serial, DATA), b'L');
        assert!(sink.0.lock().unwrap().is_empty());
    }

    #[test]
    fn bad_offsets_change_nothing() {
        let (mut serial, sink) = serial_with_sink();
        serial.write(COM1_PORT_BASE, 8, b"x");
        serial.write(COM1_PORT_BASE, u64::MAX, b"x");
        serial.write(COM1_PORT_BASE, 0x1_0000_0000, b"x");
        let mut bytes = [0u8; 2];
        serial.read(COM1_PORT_BASE, 8, &mut bytes);
        assert_eq!(bytes, [0xff, 0xff]);
        serial.read(COM1_PORT_BASE, u64::MAX, &mut bytes);
        serial.read(COM1_PORT_BASE, DATA, &mut []);
        serial.write(COM1_PORT_BASE, DATA, &[]);
        assert_eq!(serial.stats().invalid_accesses, 5);
        assert!(sink.0.lock().unwrap().is_empty());
        assert_eq!(read_register(&mut serial, LSR), 0x60);
        assert_eq!(read_register(&mut serial, SCR), 0x00);
    }
}
