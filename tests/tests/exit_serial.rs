//! Debug-exit status propagation and serial input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use iced_x86::code_asm::*;
use igvmm_tests::asm::Mode;
use igvmm_tests::guest;
use igvmm_tests::harness::{boot, debug_exit, VmConfig};
use vmm::StopReason;

fn exit_guest(value: u8) -> Vec<u8> {
    guest::simple_file(Mode::Long, |g| {
        g.print("bye\n")?;
        g.exit(value)
    })
    .unwrap()
}

/// QEMU's isa-debug-exit turns a write of `v` into process status `(v << 1) | 1`.
#[test]
fn exit_status_values() {
    for (value, status) in [(0u8, 1u8), (1, 3), (0x7f, 0xff)] {
        let outcome = boot(&exit_guest(value), &VmConfig::default()).unwrap();
        assert_eq!(outcome.text(), "bye\n", "value {value:#x}");
        assert_eq!(
            outcome.stop,
            StopReason::DebugExit {
                value: u32::from(value)
            },
            "value {value:#x}"
        );
        assert_eq!(outcome.stop.exit_status(), status, "value {value:#x}");
    }
}

/// The guest echoes bytes from COM1 until it reads a newline.
#[test]
fn serial_input_echo() {
    let file = guest::simple_file(Mode::Long, |g| {
        g.print("echo:")?;
        let mut again = g.a.create_label();
        let mut done = g.a.create_label();
        g.a.set_label(&mut again)?;
        g.call_getc()?;
        g.a.mov(bl, al)?;
        g.call_putc()?;
        g.a.cmp(bl, b'\n' as u32)?;
        g.a.je(done)?;
        g.a.jmp(again)?;
        g.a.set_label(&mut done)?;
        g.exit(0)
    })
    .unwrap();
    let config = VmConfig {
        serial_input: b"hello, guest\n".to_vec(),
        ..VmConfig::default()
    };
    let outcome = boot(&file, &config).unwrap();
    assert_eq!(outcome.text(), "echo:hello, guest\n");
    assert_eq!(outcome.stop, debug_exit(0));
}

/// Input longer than the 16550 FIFO (64 bytes in vm-superio) still arrives in full as the
/// guest drains it.
#[test]
fn serial_input_beyond_fifo() {
    let input: Vec<u8> = (0..200u32)
        .map(|i| b'a' + (i % 26) as u8)
        .chain(std::iter::once(b'\n'))
        .collect();
    let file = guest::simple_file(Mode::Long, |g| {
        let mut again = g.a.create_label();
        let mut done = g.a.create_label();
        g.a.set_label(&mut again)?;
        g.call_getc()?;
        g.a.mov(bl, al)?;
        g.call_putc()?;
        g.a.cmp(bl, b'\n' as u32)?;
        g.a.je(done)?;
        g.a.jmp(again)?;
        g.a.set_label(&mut done)?;
        g.exit(0)
    })
    .unwrap();
    let config = VmConfig {
        serial_input: input.clone(),
        ..VmConfig::default()
    };
    let outcome = boot(&file, &config).unwrap();
    assert_eq!(outcome.serial, input);
    assert_eq!(outcome.stop, debug_exit(0));
}
