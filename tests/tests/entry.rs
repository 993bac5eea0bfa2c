//! Boots one guest per entry mode and checks the segment state each VP context set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use iced_x86::code_asm::*;
use igvmm_tests::asm::{GuestAsm, Mode};
use igvmm_tests::guest;
use igvmm_tests::harness::{boot, debug_exit, VmConfig};

/// Prints `marker`, then CS and DS as four hex digits each, then exits with 0x11.
fn marker_guest(mode: Mode, marker: &str) -> Vec<u8> {
    guest::simple_file(mode, |g: &mut GuestAsm| {
        g.print(marker)?;
        g.print(" cs=")?;
        g.a.xor(eax, eax)?;
        g.a.mov(ax, cs)?;
        g.print_hex32(eax, 4)?;
        g.print(" ds=")?;
        g.a.xor(eax, eax)?;
        g.a.mov(ax, ds)?;
        g.print_hex32(eax, 4)?;
        g.print("\n")?;
        g.exit(0x11)
    })
    .unwrap()
}

#[test]
fn entry_real_mode() {
    let outcome = boot(&marker_guest(Mode::Real, "real"), &VmConfig::default()).unwrap();
    assert_eq!(outcome.text(), "real cs=0000 ds=0000\n");
    assert_eq!(outcome.stop, debug_exit(0x11));
}

#[test]
fn entry_protected_mode() {
    let outcome = boot(&marker_guest(Mode::Protected, "protected"), &VmConfig::default()).unwrap();
    assert_eq!(outcome.text(), "protected cs=0008 ds=0010\n");
    assert_eq!(outcome.stop, debug_exit(0x11));
}

#[test]
fn entry_long_mode() {
    let outcome = boot(&marker_guest(Mode::Long, "long"), &VmConfig::default()).unwrap();
    assert_eq!(outcome.text(), "long cs=0018 ds=0010\n");
    assert_eq!(outcome.stop, debug_exit(0x11));
}

#[test]
fn entry_long_mode_efer() {
    // EFER (MSR 0xC0000080) must show LME and LMA, as the VP context gave them.
    let file = guest::simple_file(Mode::Long, |g| {
        g.a.mov(ecx, 0xc000_0080u32)?;
        g.a.rdmsr()?;
        g.a.and(eax, 0x500u32)?;
        g.print("efer=")?;
        g.print_hex32(eax, 4)?;
        g.print("\n")?;
        g.exit(0)
    })
    .unwrap();
    let outcome = boot(&file, &VmConfig::default()).unwrap();
    assert_eq!(outcome.text(), "efer=0500\n");
    assert_eq!(outcome.stop, debug_exit(0));
}
