//! Guests that misuse devices or the CPU. Each run must end in a reported stop, with the
//! reason QEMU's behavior implies, and never panic or hang igvmm.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use iced_x86::code_asm::*;
use igvmm_tests::asm::{AsmResult, GuestAsm, Mode};
use igvmm_tests::fw_cfg::{
    self, DMA_ERROR, DMA_READ, DMA_SELECT, DMA_SKIP, DMA_WRITE, SELECTOR_SIGNATURE,
};
use igvmm_tests::guest;
use igvmm_tests::harness::{boot, debug_exit, HarnessError, VmConfig};
use igvmm_tests::layout::{self, GUEST_RAM, SCRATCH_GPA, VARS_GPA};
use vmm::StopReason;

/// Where descriptors built by these guests go.
const DESCRIPTOR_GPA: u64 = VARS_GPA + 0x100;
/// A guest-physical address below 4 GiB with neither RAM nor a device behind it.
const UNMAPPED_GPA: u64 = 0xd000_0000;

/// Prints "sig=" and the first four bytes of fw_cfg item 0 read by port I/O, to show that the
/// device still works after the misuse.
fn print_signature_by_port(g: &mut GuestAsm) -> AsmResult<()> {
    fw_cfg::select(g, SELECTOR_SIGNATURE)?;
    g.a.mov(rdi, SCRATCH_GPA + 0x800)?;
    g.a.mov(ecx, 4u32)?;
    fw_cfg::read_data_rep(g)?;
    g.print("sig=")?;
    g.a.mov(esi, (SCRATCH_GPA + 0x800) as u32)?;
    g.a.mov(ebp, 4u32)?;
    g.call_hexdump()?;
    g.print("\n")
}

/// Emits one DMA transfer described by constants and prints "control=<value>\n".
fn dma_and_print(
    g: &mut GuestAsm,
    descriptor_gpa: u64,
    control: u32,
    length: u32,
    address: u64,
) -> AsmResult<()> {
    g.a.mov(eax, control)?;
    g.a.mov(ecx, length)?;
    g.a.mov(rdi, address)?;
    fw_cfg::dma_from_registers(g, descriptor_gpa)?;
    g.print("control=")?;
    g.print_hex32(eax, 8)?;
    g.print("\n")
}

fn run(file: Vec<u8>) -> (String, StopReason) {
    let outcome = boot(&file, &VmConfig::default()).expect("igvmm must report a stop");
    (outcome.text(), outcome.stop)
}

const SIGNATURE_LINE: &str = "sig=51454d55\n";

#[test]
fn dma_descriptor_unmapped() {
    // Nothing backs the descriptor: QEMU can neither read it nor report the error in it, and
    // the guest simply goes on.
    let file = guest::simple_file(Mode::Long, |g| {
        for address in [UNMAPPED_GPA, 0x10_0000_0000] {
            fw_cfg::start_dma(g, address)?;
        }
        g.print("survived\n")?;
        print_signature_by_port(g)?;
        g.exit(0)
    })
    .unwrap();
    let (text, stop) = run(file);
    assert_eq!(text, format!("survived\n{SIGNATURE_LINE}"));
    assert_eq!(stop, debug_exit(0));
}

#[test]
fn dma_descriptor_straddles_ram_end() {
    // The control and length words are the last 8 bytes of RAM; the address word is beyond.
    // QEMU fails the descriptor read and writes ERROR into the control word it can reach.
    let descriptor = GUEST_RAM - 8;
    let file = guest::simple_file(Mode::Long, |g| {
        g.a.mov(rdx, descriptor)?;
        g.a.mov(
            eax,
            ((u32::from(SELECTOR_SIGNATURE) << 16) | DMA_SELECT | DMA_READ).swap_bytes(),
        )?;
        g.a.mov(dword_ptr(rdx), eax)?;
        g.a.mov(eax, 4u32.swap_bytes())?;
        g.a.mov(dword_ptr(rdx + 4), eax)?;
        fw_cfg::start_dma(g, descriptor)?;
        fw_cfg::read_back_control(g, descriptor)?;
        g.print("control=")?;
        g.print_hex32(eax, 8)?;
        g.print("\n")?;
        print_signature_by_port(g)?;
        g.exit(0)
    })
    .unwrap();
    let (text, stop) = run(file);
    assert_eq!(text, format!("control={DMA_ERROR:08x}\n{SIGNATURE_LINE}"));
    assert_eq!(stop, debug_exit(0));
}

#[test]
fn dma_target_unmapped() {
    let file = guest::simple_file(Mode::Long, |g| {
        let read_signature = (u32::from(SELECTOR_SIGNATURE) << 16) | DMA_SELECT | DMA_READ;
        dma_and_print(g, DESCRIPTOR_GPA, read_signature, 4, UNMAPPED_GPA)?;
        dma_and_print(g, DESCRIPTOR_GPA, read_signature, 4, 0xffff_ffff_ffff_fffc)?;
        print_signature_by_port(g)?;
        g.exit(0)
    })
    .unwrap();
    let (text, stop) = run(file);
    assert_eq!(
        text,
        format!("control={DMA_ERROR:08x}\ncontrol={DMA_ERROR:08x}\n{SIGNATURE_LINE}")
    );
    assert_eq!(stop, debug_exit(0));
}

#[test]
fn dma_target_straddles_ram_end() {
    let file = guest::simple_file(Mode::Long, |g| {
        let read_signature = (u32::from(SELECTOR_SIGNATURE) << 16) | DMA_SELECT | DMA_READ;
        dma_and_print(g, DESCRIPTOR_GPA, read_signature, 4, GUEST_RAM - 2)?;
        print_signature_by_port(g)?;
        g.exit(0)
    })
    .unwrap();
    let (text, stop) = run(file);
    assert_eq!(text, format!("control={DMA_ERROR:08x}\n{SIGNATURE_LINE}"));
    assert_eq!(stop, debug_exit(0));
}

#[test]
fn dma_length_near_4g_read() {
    // A read past the end of an item zero-fills guest memory, as in QEMU, until the transfer
    // runs off the end of RAM and fails. The program, stack and descriptor lie below the target.
    let target = SCRATCH_GPA;
    let mut g = GuestAsm::new(Mode::Long).unwrap();
    let read_signature = (u32::from(SELECTOR_SIGNATURE) << 16) | DMA_SELECT | DMA_READ;
    dma_and_print(&mut g, DESCRIPTOR_GPA, read_signature, 0xffff_f000, target).unwrap();
    g.print("head=").unwrap();
    g.a.mov(esi, target as u32).unwrap();
    g.a.mov(ebp, 8u32).unwrap();
    g.call_hexdump().unwrap();
    g.print("\n").unwrap();
    g.exit(0).unwrap();
    let mut builder = guest::image(Mode::Long, &guest::assemble(g).unwrap());
    // A pattern after the four signature bytes, so the zero fill shows.
    builder.page_data(target, &[0xee; 16]);
    let (text, stop) = run(builder.build().unwrap());
    assert_eq!(
        text,
        format!("control={DMA_ERROR:08x}\nhead=51454d5500000000\n")
    );
    assert_eq!(stop, debug_exit(0));
}

#[test]
fn dma_length_near_4g_skip() {
    // SKIP moves the offset past the end without touching memory; a following port read
    // returns zeros.
    let file = guest::simple_file(Mode::Long, |g| {
        let skip_signature = (u32::from(SELECTOR_SIGNATURE) << 16) | DMA_SELECT | DMA_SKIP;
        dma_and_print(g, DESCRIPTOR_GPA, skip_signature, 0xffff_ffff, 0)?;
        g.a.mov(rdi, SCRATCH_GPA)?;
        g.a.mov(ecx, 4u32)?;
        fw_cfg::read_data_rep(g)?;
        g.print("after=")?;
        g.a.mov(esi, SCRATCH_GPA as u32)?;
        g.a.mov(ebp, 4u32)?;
        g.call_hexdump()?;
        g.print("\n")?;
        g.exit(0)
    })
    .unwrap();
    let (text, stop) = run(file);
    assert_eq!(text, "control=00000000\nafter=00000000\n");
    assert_eq!(stop, debug_exit(0));
}

#[test]
fn dma_write_read_only_item() {
    // Every item igvmm serves is read-only: a DMA write sets ERROR and changes nothing.
    let file = guest::simple_file(Mode::Long, |g| {
        g.a.mov(rdx, SCRATCH_GPA)?;
        g.a.mov(dword_ptr(rdx), u32::from_le_bytes(*b"XXXX"))?;
        let write_signature = (u32::from(SELECTOR_SIGNATURE) << 16) | DMA_SELECT | DMA_WRITE;
        dma_and_print(g, DESCRIPTOR_GPA, write_signature, 4, SCRATCH_GPA)?;
        // The directory is read-only too.
        let write_directory = (u32::from(fw_cfg::SELECTOR_FILE_DIR) << 16) | DMA_SELECT | DMA_WRITE;
        dma_and_print(g, DESCRIPTOR_GPA, write_directory, 4, SCRATCH_GPA)?;
        print_signature_by_port(g)?;
        g.exit(0)
    })
    .unwrap();
    let (text, stop) = run(file);
    assert_eq!(
        text,
        format!("control={DMA_ERROR:08x}\ncontrol={DMA_ERROR:08x}\n{SIGNATURE_LINE}")
    );
    assert_eq!(stop, debug_exit(0));
}

#[test]
fn selector_beyond_directory() {
    // QEMU turns a selector past the file slots into the invalid item: port reads give zeros,
    // and a DMA read zero-fills the target and succeeds.
    let file = guest::simple_file(Mode::Long, |g| {
        for selector in [0x3fffu16, 0x1234] {
            fw_cfg::select(g, selector)?;
            g.a.mov(rdi, SCRATCH_GPA)?;
            g.a.mov(ecx, 4u32)?;
            fw_cfg::read_data_rep(g)?;
            g.print("port=")?;
            g.a.mov(esi, SCRATCH_GPA as u32)?;
            g.a.mov(ebp, 4u32)?;
            g.call_hexdump()?;
            g.print("\n")?;

            g.a.mov(rdx, SCRATCH_GPA + 0x10)?;
            g.a.mov(dword_ptr(rdx), 0xaaaa_aaaau32)?;
            let read = (u32::from(selector) << 16) | DMA_SELECT | DMA_READ;
            dma_and_print(g, DESCRIPTOR_GPA, read, 4, SCRATCH_GPA + 0x10)?;
            g.print("dma=")?;
            g.a.mov(esi, (SCRATCH_GPA + 0x10) as u32)?;
            g.a.mov(ebp, 4u32)?;
            g.call_hexdump()?;
            g.print("\n")?;
        }
        g.exit(0)
    })
    .unwrap();
    let (text, stop) = run(file);
    let round = "port=00000000\ncontrol=00000000\ndma=00000000\n";
    assert_eq!(text, format!("{round}{round}"));
    assert_eq!(stop, debug_exit(0));
}

#[test]
fn unclaimed_port_storm() {
    // 20,000 reads and writes over 256 ports nothing claims; every read returns 0xff.
    const ITERATIONS: u32 = 20_000;
    let file = guest::simple_file(Mode::Long, |g| {
        let mut again = g.a.create_label();
        g.a.mov(ebx, 0xffu32)?;
        g.a.mov(r8d, ITERATIONS)?;
        g.a.set_label(&mut again)?;
        g.a.mov(edx, r8d)?;
        g.a.and(edx, 0xffu32)?;
        g.a.or(edx, 0x2000u32)?;
        g.a.in_(al, dx)?;
        g.a.and(bl, al)?;
        g.a.out(dx, al)?;
        g.a.dec(r8d)?;
        g.a.jnz(again)?;
        g.print("and=")?;
        g.print_hex32(ebx, 2)?;
        g.print("\n")?;
        g.exit(0)
    })
    .unwrap();
    let (text, stop) = run(file);
    assert_eq!(text, "and=ff\n");
    assert_eq!(stop, debug_exit(0));
}

#[test]
fn mmio_unmapped_reads_all_ones() {
    let file = guest::simple_file(Mode::Long, |g| {
        g.a.mov(rsi, UNMAPPED_GPA)?;
        g.a.mov(eax, dword_ptr(rsi))?;
        g.print("before=")?;
        g.print_hex32(eax, 8)?;
        g.a.mov(rsi, UNMAPPED_GPA)?;
        g.a.mov(dword_ptr(rsi), 0x1234_5678u32)?;
        g.a.mov(eax, dword_ptr(rsi))?;
        g.print(" after=")?;
        g.print_hex32(eax, 8)?;
        g.print("\n")?;
        g.exit(0)
    })
    .unwrap();
    let (text, stop) = run(file);
    assert_eq!(text, "before=ffffffff after=ffffffff\n");
    assert_eq!(stop, debug_exit(0));
}

#[test]
fn triple_fault_reported() {
    // An empty IDT turns the #UD from ud2 into a double and then a triple fault.
    let file = guest::simple_file(Mode::Long, |g| {
        g.print("faulting\n")?;
        // A 10-byte IDTR image of zeros: limit 0, base 0.
        g.a.mov(rdx, VARS_GPA)?;
        g.a.mov(qword_ptr(rdx), 0i32)?;
        g.a.mov(word_ptr(rdx + 8), 0u32)?;
        g.a.lidt(ptr(rdx))?;
        g.a.ud2()?;
        Ok(())
    })
    .unwrap();
    let (text, stop) = run(file);
    assert_eq!(text, "faulting\n");
    assert!(
        matches!(stop, StopReason::TripleFault(_)),
        "stop reason: {stop}"
    );
    let report = stop
        .crash_report()
        .expect("a triple fault carries a crash report");
    assert_eq!(report.vcpu, 0);
    assert_eq!(stop.exit_status(), 6);
}

#[test]
fn halt_all_vcpus() {
    // VP 0 halts with interrupts off. VP 1 has no context and waits for a SIPI that no vCPU sends.
    let file = guest::simple_file(Mode::Long, |g| {
        g.print("halting\n")?;
        g.halt_forever()
    })
    .unwrap();
    let config = VmConfig {
        cpus: 2,
        ..VmConfig::default()
    };
    let outcome = boot(&file, &config).expect("igvmm must report a stop");
    assert_eq!(outcome.text(), "halting\n");
    assert_eq!(outcome.stop, StopReason::AllHalted);
    assert_eq!(outcome.stop.exit_status(), 0);
}

#[test]
fn halt_all_vcpus_with_contexts() {
    // Both VPs start from contexts and halt with interrupts off.
    let code = guest::assemble({
        let mut g = GuestAsm::new(Mode::Long).unwrap();
        g.print("halting\n").unwrap();
        g.halt_forever().unwrap();
        g
    })
    .unwrap();
    let mut builder = guest::image(Mode::Long, &code);
    let ap_code = {
        let mut g = GuestAsm::new(Mode::Long).unwrap();
        g.halt_forever().unwrap();
        g.assemble(layout::CODE_GPA + 0x4000).unwrap()
    };
    builder.page_data(layout::CODE_GPA + 0x4000, &ap_code);
    let mut ap = layout::long_mode_context(layout::CODE_GPA + 0x4000, layout::PML4_GPA);
    ap.rsp = layout::STACK_TOP - 0x8000;
    builder.vp_context(1, ap);
    let config = VmConfig {
        cpus: 2,
        ..VmConfig::default()
    };
    let outcome = boot(&builder.build().unwrap(), &config).expect("igvmm must report a stop");
    assert_eq!(outcome.text(), "halting\n");
    assert_eq!(outcome.stop, StopReason::AllHalted);
}

#[test]
fn spinning_guest_hits_deadline() {
    // A guest that spins with interrupts enabled runs forever, as in QEMU. At the deadline the
    // harness requests a stop, and igvmm must end the run promptly.
    let file = guest::simple_file(Mode::Long, |g| {
        g.print("spinning\n")?;
        g.a.sti()?;
        let mut again = g.a.create_label();
        g.a.set_label(&mut again)?;
        g.a.pause()?;
        g.a.jmp(again)
    })
    .unwrap();
    let config = VmConfig {
        timeout: std::time::Duration::from_secs(3),
        ..VmConfig::default()
    };
    let started = std::time::Instant::now();
    let error = boot(&file, &config).expect_err("a spinning guest never stops on its own");
    assert!(
        matches!(error, HarnessError::TimedOut { .. }),
        "expected a stop on request, got: {error}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(13),
        "igvmm took {:?} to stop",
        started.elapsed()
    );
}
