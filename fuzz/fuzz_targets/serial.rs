//! The COM1 16550 UART driven by a guest and by host input: reads and writes of any width at
//! any register offset, host input of any length, and the eventfds drained or left full.
//!
//! Besides "no panic, no hang", the target checks that the receive FIFO never contains more than
//! 64 bytes, that `enqueue_input` takes no more than it was offered and had room for, and that
//! every byte counted as transmitted reached the output sink.

#![no_main]

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arbitrary::Arbitrary;
use devices::bus::BusDevice;
use devices::serial::{Serial, COM1_PORT_BASE};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Size of the 16550A receive FIFO.
const FIFO_SIZE: usize = 64;

#[derive(Arbitrary, Debug)]
enum Op {
    /// A read of `len % 9` bytes at `offset`, reduced to 0..16 unless `raw` is set.
    Read { offset: u64, len: u8, raw: bool },
    /// A write of up to 16 bytes at `offset`, reduced to 0..16 unless `raw` is set.
    Write {
        offset: u64,
        bytes: Vec<u8>,
        raw: bool,
    },
    /// Host input offered to the receive FIFO.
    Input(Vec<u8>),
    /// The VMM consumes the interrupt eventfd, as KVM's irqfd does.
    DrainInterrupt,
    /// The event loop consumes the input-drained eventfd.
    DrainInputEvent,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// The output sink fails every write, like a closed stdout.
    broken_output: bool,
    ops: Vec<Op>,
}

/// An output sink that counts the bytes it accepts, or fails every write.
struct Sink {
    accepted: Arc<AtomicU64>,
    broken: bool,
}

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.broken {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        self.accepted
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        Ok(())
    }
}

fn offset(offset: u64, raw: bool) -> u64 {
    if raw {
        offset
    } else {
        offset % 16
    }
}

fuzz_target!(|input: Input| {
    let (Ok(interrupt), Ok(drained)) = (EventFd::new(EFD_NONBLOCK), EventFd::new(EFD_NONBLOCK))
    else {
        return;
    };
    let (Ok(interrupt_reader), Ok(drained_reader)) = (interrupt.try_clone(), drained.try_clone())
    else {
        return;
    };
    let accepted = Arc::new(AtomicU64::new(0));
    let sink = Sink {
        accepted: accepted.clone(),
        broken: input.broken_output,
    };
    let mut serial = Serial::with_input_drained_event(interrupt, Box::new(sink), drained);

    for op in &input.ops {
        match op {
            Op::Read {
                offset: at,
                len,
                raw,
            } => {
                let mut bytes = vec![0u8; usize::from(*len) % 9];
                serial.read(COM1_PORT_BASE, offset(*at, *raw), &mut bytes);
                if offset(*at, *raw) >= 8 {
                    assert!(bytes.iter().all(|byte| *byte == 0xFF));
                }
            }
            Op::Write {
                offset: at,
                bytes,
                raw,
            } => {
                let bytes = bytes.get(..bytes.len().min(16)).unwrap_or_default();
                serial.write(COM1_PORT_BASE, offset(*at, *raw), bytes);
            }
            Op::Input(bytes) => {
                let room = serial.fifo_capacity();
                let taken = serial.enqueue_input(bytes);
                assert!(
                    taken <= bytes.len(),
                    "took {taken} of {} bytes",
                    bytes.len()
                );
                assert!(taken <= room, "took {taken} bytes with room for {room}");
            }
            Op::DrainInterrupt => {
                let _ = interrupt_reader.read();
            }
            Op::DrainInputEvent => {
                let _ = drained_reader.read();
            }
        }
        assert!(serial.fifo_capacity() <= FIFO_SIZE);
    }

    let stats = serial.stats();
    assert_eq!(stats.bytes_out, accepted.load(Ordering::Relaxed));
    if input.broken_output {
        assert_eq!(stats.bytes_out, 0);
    }
});
