//! Boots one guest per entry mode and checks the segment state each VP context set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use iced_x86::code_asm::*;
use igvmm_tests::asm::{GuestAsm, Mode};
use igvmm_tests::guest;
use igvmm_tests::harness::{boot, debug_exit, VmConfig};
use igvmm_tests::layout;

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
    let outcome = boot(
        &marker_guest(Mode::Protected, "protected"),
        &VmConfig::default(),
    )
    .unwrap();
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

/// Where the 32-bit and 64-bit parts of the mode-switch guest go.
const SWITCH_PROTECTED_GPA: u64 = layout::CODE_GPA + 0x800;
const SWITCH_LONG_GPA: u64 = layout::CODE_GPA + 0x1000;

#[test]
fn entry_real_to_long_switch() {
    // The guest starts in real mode and switches to protected and then long mode itself,
    // as firmware does: lgdt, CR0.PE and a far jump, then PAE, CR3, EFER.LME, CR0.PG and a
    // far jump to the 64-bit code segment.
    let mut real = GuestAsm::new(Mode::Real).unwrap();
    real.print("real>").unwrap();
    real.a.cli().unwrap();
    real.a.lgdt(ptr(layout::VARS_GPA as u32)).unwrap();
    real.a.mov(eax, cr0).unwrap();
    real.a.or(eax, 1).unwrap();
    real.a.mov(cr0, eax).unwrap();
    real.a
        .jmp_far(layout::CODE32_SELECTOR, SWITCH_PROTECTED_GPA as u32)
        .unwrap();
    let real = guest::assemble(real).unwrap();

    let mut protected = GuestAsm::new(Mode::Protected).unwrap();
    protected
        .a
        .mov(ax, u32::from(layout::DATA_SELECTOR))
        .unwrap();
    for segment in [ds, es, ss] {
        protected.a.mov(segment, ax).unwrap();
    }
    protected.a.mov(esp, layout::STACK_TOP as u32).unwrap();
    protected.print("protected cs=").unwrap();
    protected.a.xor(eax, eax).unwrap();
    protected.a.mov(ax, cs).unwrap();
    protected.print_hex32(eax, 4).unwrap();
    protected.print(">").unwrap();
    protected.a.mov(eax, cr4).unwrap();
    protected.a.or(eax, layout::CR4_PAE as u32).unwrap();
    protected.a.mov(cr4, eax).unwrap();
    protected.a.mov(eax, layout::PML4_GPA as u32).unwrap();
    protected.a.mov(cr3, eax).unwrap();
    protected.a.mov(ecx, 0xc000_0080u32).unwrap();
    protected.a.rdmsr().unwrap();
    protected.a.or(eax, layout::EFER_LME as u32).unwrap();
    protected.a.wrmsr().unwrap();
    protected.a.mov(eax, cr0).unwrap();
    protected.a.or(eax, 0x8000_0000u32).unwrap();
    protected.a.mov(cr0, eax).unwrap();
    protected
        .a
        .jmp_far(layout::CODE64_SELECTOR, SWITCH_LONG_GPA as u32)
        .unwrap();
    let protected = protected.assemble(SWITCH_PROTECTED_GPA).unwrap();

    let mut long = GuestAsm::new(Mode::Long).unwrap();
    long.a.mov(rsp, layout::STACK_TOP).unwrap();
    long.print("long cs=").unwrap();
    long.a.xor(eax, eax).unwrap();
    long.a.mov(ax, cs).unwrap();
    long.print_hex32(eax, 4).unwrap();
    long.a.mov(ecx, 0xc000_0080u32).unwrap();
    long.a.rdmsr().unwrap();
    long.a.and(eax, 0x500u32).unwrap();
    long.print(" efer=").unwrap();
    long.print_hex32(eax, 4).unwrap();
    long.print("\n").unwrap();
    long.exit(0x22).unwrap();
    let long = long.assemble(SWITCH_LONG_GPA).unwrap();

    assert!(real.len() <= 0x800, "real-mode part overlaps the next one");
    assert!(
        protected.len() <= 0x800,
        "protected-mode part overlaps the next one"
    );
    // One image of the three parts at their fixed offsets from CODE_GPA.
    let mut code = vec![0u8; 0x1000 + long.len()];
    code.get_mut(..real.len()).unwrap().copy_from_slice(&real);
    code.get_mut(0x800..0x800 + protected.len())
        .unwrap()
        .copy_from_slice(&protected);
    code.get_mut(0x1000..).unwrap().copy_from_slice(&long);
    let mut builder = guest::image(Mode::Real, &code);
    // The GDTR image that the real-mode part loads: limit, then base.
    let gdt_len = layout::gdt().len() as u16;
    let mut gdtr = (gdt_len - 1).to_le_bytes().to_vec();
    gdtr.extend_from_slice(&(layout::GDT_GPA as u32).to_le_bytes());
    builder.page_data(layout::VARS_GPA, &gdtr);

    let outcome = boot(&builder.build().unwrap(), &VmConfig::default()).unwrap();
    assert_eq!(
        outcome.text(),
        "real>protected cs=0008>long cs=0018 efer=0500\n"
    );
    assert_eq!(outcome.stop, debug_exit(0x22));
}
