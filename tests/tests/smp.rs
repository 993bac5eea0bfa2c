//! Two vCPUs: both started from VP contexts, and an AP started by INIT/SIPI from the BSP.
//!
//! Each vCPU prints its initial APIC ID (CPUID leaf 1, EBX bits 31:24). The BSP prints first,
//! then sets a flag in the variables page. The AP waits for the flag, prints, and sets it again,
//! which lets the BSP exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use iced_x86::code_asm::*;
use igvmm_tests::asm::{AsmResult, GuestAsm, Mode};
use igvmm_tests::guest;
use igvmm_tests::harness::{boot, debug_exit, VmConfig};
use igvmm_tests::layout::lapic::{
    BASE as LAPIC_BASE, ICR_HIGH as LAPIC_ICR_HIGH, ICR_INIT, ICR_LOW as LAPIC_ICR_LOW,
    ICR_STARTUP, SVR as LAPIC_SVR,
};
use igvmm_tests::layout::{self, AP_SIPI_VECTOR, AP_TRAMPOLINE_GPA, CODE_GPA, PML4_GPA, VARS_GPA};

/// Where the AP's long-mode program goes when VP 1 has its own context.
const AP_CODE_GPA: u64 = CODE_GPA + 0x4000;

/// Prints "<who> apic=<id>\n" with the ID from CPUID.
fn print_apic_id(g: &mut GuestAsm, role: &str) -> AsmResult<()> {
    g.a.mov(eax, 1u32)?;
    g.a.cpuid()?;
    g.a.shr(ebx, 24)?;
    g.print(role)?;
    g.print(" apic=")?;
    g.print_hex32(ebx, 2)?;
    g.print("\n")
}

/// Long mode: spins until the byte at VARS_GPA equals `value`.
fn wait_flag_64(g: &mut GuestAsm, value: u8) -> AsmResult<()> {
    let mut again = g.a.create_label();
    g.a.mov(rdx, VARS_GPA)?;
    g.a.set_label(&mut again)?;
    g.a.pause()?;
    g.a.cmp(byte_ptr(rdx), value as u32)?;
    g.a.jne(again)
}

fn set_flag_64(g: &mut GuestAsm, value: u8) -> AsmResult<()> {
    g.a.mov(rdx, VARS_GPA)?;
    g.a.mov(byte_ptr(rdx), value as u32)
}

/// Assembles the BSP program: print, hand over to the AP, wait for it, exit.
fn bsp_program(start_ap: bool) -> Vec<u8> {
    let mut g = GuestAsm::new(Mode::Long).unwrap();
    print_apic_id(&mut g, "bsp").unwrap();
    if start_ap {
        let a = &mut g.a;
        a.mov(rdi, LAPIC_BASE).unwrap();
        // Software-enable the local APIC (SVR bit 8, spurious vector 0xff).
        a.mov(dword_ptr(rdi + LAPIC_SVR), 0x1ffu32).unwrap();
        a.mov(dword_ptr(rdi + LAPIC_ICR_HIGH), 1u32 << 24).unwrap();
        a.mov(dword_ptr(rdi + LAPIC_ICR_LOW), ICR_INIT).unwrap();
        a.mov(dword_ptr(rdi + LAPIC_ICR_HIGH), 1u32 << 24).unwrap();
        a.mov(
            dword_ptr(rdi + LAPIC_ICR_LOW),
            ICR_STARTUP | u32::from(AP_SIPI_VECTOR),
        )
        .unwrap();
    }
    set_flag_64(&mut g, 1).unwrap();
    wait_flag_64(&mut g, 2).unwrap();
    g.exit(0).unwrap();
    guest::assemble(g).unwrap()
}

/// Assembles the AP program for VP 1 when it has a long-mode VP context.
fn ap_program_64() -> Vec<u8> {
    let mut g = GuestAsm::new(Mode::Long).unwrap();
    wait_flag_64(&mut g, 1).unwrap();
    print_apic_id(&mut g, "ap").unwrap();
    set_flag_64(&mut g, 2).unwrap();
    g.halt_forever().unwrap();
    g.assemble(AP_CODE_GPA).unwrap()
}

/// Assembles the real-mode start-up code for an AP started by SIPI: CS base AP_TRAMPOLINE_GPA, IP 0,
/// data segments at base 0.
fn ap_trampoline_16() -> Vec<u8> {
    let mut g = GuestAsm::new(Mode::Real).unwrap();
    g.a.xor(ax, ax).unwrap();
    g.a.mov(ss, ax).unwrap();
    g.a.mov(ds, ax).unwrap();
    g.a.mov(sp, layout::REAL_MODE_STACK_TOP as u32).unwrap();
    let mut again = g.a.create_label();
    g.a.set_label(&mut again).unwrap();
    g.a.pause().unwrap();
    g.a.cmp(byte_ptr(VARS_GPA as u32), 1u32).unwrap();
    g.a.jne(again).unwrap();
    print_apic_id(&mut g, "ap").unwrap();
    g.a.mov(byte_ptr(VARS_GPA as u32), 2u32).unwrap();
    g.halt_forever().unwrap();
    g.assemble(0).unwrap()
}

#[test]
fn smp_two_vp_contexts() {
    let mut builder = guest::image(Mode::Long, &bsp_program(false));
    builder.zero_pages(VARS_GPA, 1);
    builder.page_data(AP_CODE_GPA, &ap_program_64());
    let mut ap_context = layout::long_mode_context(AP_CODE_GPA, PML4_GPA);
    ap_context.rsp = layout::STACK_TOP - 0x8000;
    builder.vp_context(1, ap_context);
    let config = VmConfig {
        cpus: 2,
        ..VmConfig::default()
    };
    let outcome = boot(&builder.build().unwrap(), &config).unwrap();
    assert_eq!(outcome.text(), "bsp apic=00\nap apic=01\n");
    assert_eq!(outcome.stop, debug_exit(0));
}

#[test]
fn smp_init_sipi_start() {
    let mut builder = guest::image(Mode::Long, &bsp_program(true));
    builder.zero_pages(VARS_GPA, 1);
    builder.page_data(AP_TRAMPOLINE_GPA, &ap_trampoline_16());
    let config = VmConfig {
        cpus: 2,
        ..VmConfig::default()
    };
    let outcome = boot(&builder.build().unwrap(), &config).unwrap();
    assert_eq!(outcome.text(), "bsp apic=00\nap apic=01\n");
    assert_eq!(outcome.stop, debug_exit(0));
}
