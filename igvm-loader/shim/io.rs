//! Port I/O, and the COM1 and debug-console writers the shim reports through.

use core::arch::asm;

use crate::layout::{COM1_PORT, DEBUGCON_PORT};
use crate::shim_error::ByteSink;

/// COM1 line status register.
const COM1_LINE_STATUS: u16 = COM1_PORT + 5;
/// Line status bit: the transmit holding register is empty.
const LINE_STATUS_THR_EMPTY: u8 = 0x20;
/// How often the shim polls the line status before it sends a byte anyway, so that a serial
/// port that never reports ready cannot hang it.
const TRANSMIT_POLLS: u32 = 100_000;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port output touches no memory; the shim only addresses devices of the PC
    // platform (COM1, the debug console, fw_cfg, the debug-exit port).
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a 16-bit value to an I/O port.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Sends a byte to COM1 once the transmitter is ready.
fn com1_byte(byte: u8) {
    for _ in 0..TRANSMIT_POLLS {
        if inb(COM1_LINE_STATUS) & LINE_STATUS_THR_EMPTY != 0 {
            break;
        }
    }
    outb(COM1_PORT, byte);
}

/// Sends a byte to the debug console at port 0x402, which igvmm logs and QEMU's `-debugcon`
/// shows.
fn debugcon_byte(byte: u8) {
    outb(DEBUGCON_PORT, byte);
}

/// Returns a message sink that writes to COM1.
pub fn com1() -> ByteSink<fn(u8)> {
    ByteSink(com1_byte)
}

/// Returns a message sink that writes to the debug console.
pub fn debugcon() -> ByteSink<fn(u8)> {
    ByteSink(debugcon_byte)
}
