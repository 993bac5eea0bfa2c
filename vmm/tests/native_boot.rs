//! Boots hand-built plans on KVM through the library API and checks what the guest printed and
//! why it stopped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use iced_x86::code_asm::*;
use igvm_loader::plan::Plan;
use vmm::exit::{ResetSource, StopRequest};
use vmm::{GuestImage, StopReason, VmmError};

use common::{assemble, captured_config, flat32_context, kvm_available, pages, plan, run_limited};

const LIMIT: Duration = Duration::from_secs(20);
const CODE: u64 = 0x1_0000;
const STACK: u64 = 0x8000;

/// Emits code that writes `text` to COM1 one immediate byte at a time.
fn print(a: &mut CodeAssembler, text: &str) -> Result<(), IcedError> {
    a.mov(dx, 0x3F8u32)?;
    for byte in text.bytes() {
        a.mov(al, u32::from(byte))?;
        a.out(dx, al)?;
    }
    Ok(())
}

/// Emits `cli; hlt` in a loop.
fn halt(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut again = a.create_label();
    a.set_label(&mut again)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(again)
}

/// Builds a plan whose BSP runs the code of `build` in 32-bit protected mode.
fn flat32_plan(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Plan<'static> {
    let code = assemble(32, CODE, build);
    plan(pages(CODE, &code), vec![(0, flat32_context(CODE, STACK))])
}

/// Runs `plan` on `cpus` vCPUs and returns the stop reason and the bytes written to COM1.
fn run_plan(plan: Plan<'static>, cpus: u32) -> (Result<StopReason, VmmError>, Vec<u8>) {
    let (mut config, capture) = captured_config(GuestImage::Plan(Box::new(plan)));
    config.cpus = cpus;
    let result = run_limited(config, LIMIT);
    (result, capture.output().contents())
}

#[test]
fn reset_vector_without_context() {
    if !kvm_available("reset_vector_without_context") {
        return;
    }
    // One page at 0xFFFFF000: code at CS offset 0xF000 and the reset vector at 0xFFF0, which
    // jumps there. The page lies outside RAM, so the VMM must back it.
    let body = assemble(16, 0xF000, |a| {
        print(a, "real mode\n")?;
        a.mov(dx, 0x501u32)?;
        a.mov(al, 0x21u32)?;
        a.out(dx, al)?;
        halt(a)
    });
    let vector = assemble(16, 0xFFF0, |a| a.jmp(0xF000u64));
    let mut page = vec![0u8; 4096];
    page[..body.len()].copy_from_slice(&body);
    page[0xFF0..0xFF0 + vector.len()].copy_from_slice(&vector);
    let (result, output) = run_plan(plan(pages(0xFFFF_F000, &page), Vec::new()), 1);
    assert_eq!(output, b"real mode\n");
    assert_eq!(result.unwrap(), StopReason::DebugExit { value: 0x21 });
}

#[test]
fn halt_with_interrupts_off_stops() {
    if !kvm_available("halt_with_interrupts_off_stops") {
        return;
    }
    let (result, output) = run_plan(
        flat32_plan(|a| {
            print(a, "protected\n")?;
            halt(a)
        }),
        1,
    );
    assert_eq!(output, b"protected\n");
    assert_eq!(result.unwrap(), StopReason::AllHalted);
}

#[test]
fn ap_without_context_waits_for_sipi() {
    if !kvm_available("ap_without_context_waits_for_sipi") {
        return;
    }
    // The AP never receives INIT/SIPI; the BSP halts, so the VM counts as halted.
    let (result, output) = run_plan(
        flat32_plan(|a| {
            print(a, "bsp\n")?;
            halt(a)
        }),
        2,
    );
    assert_eq!(output, b"bsp\n");
    assert_eq!(result.unwrap(), StopReason::AllHalted);
}

#[test]
fn ap_starts_from_its_context() {
    if !kvm_available("ap_starts_from_its_context") {
        return;
    }
    let ap_code = CODE + 0x1000;
    let bsp = assemble(32, CODE, |a| {
        print(a, "B")?;
        halt(a)
    });
    let ap = assemble(32, ap_code, |a| {
        print(a, "A")?;
        halt(a)
    });
    let mut operations = pages(CODE, &bsp);
    operations.extend(pages(ap_code, &ap));
    let plan = plan(
        operations,
        vec![
            (0, flat32_context(CODE, STACK)),
            (1, flat32_context(ap_code, STACK - 0x1000)),
        ],
    );
    let (result, output) = run_plan(plan, 2);
    let mut bytes = output;
    bytes.sort_unstable();
    assert_eq!(bytes, b"AB");
    assert_eq!(result.unwrap(), StopReason::AllHalted);
}

#[test]
fn context_for_missing_vcpu_is_rejected() {
    if !kvm_available("context_for_missing_vcpu_is_rejected") {
        return;
    }
    let code = assemble(32, CODE, halt);
    let plan = plan(
        pages(CODE, &code),
        vec![
            (0, flat32_context(CODE, STACK)),
            (3, flat32_context(CODE, STACK)),
        ],
    );
    let (result, _) = run_plan(plan, 2);
    let error = result.unwrap_err().to_string();
    assert_eq!(
        error,
        "the native backend cannot launch this image: the file has a VP context for vCPU 3, but the VM has 2 vCPUs; raise --cpus"
    );
}

#[test]
fn i8042_and_port92_reset() {
    if !kvm_available("i8042_and_port92_reset") {
        return;
    }
    let (result, _) = run_plan(
        flat32_plan(|a| {
            a.mov(al, 0xFEu32)?;
            a.out(0x64u32, al)?;
            halt(a)
        }),
        1,
    );
    assert_eq!(result.unwrap(), StopReason::Reset(ResetSource::Port(0x64)));

    let (result, _) = run_plan(
        flat32_plan(|a| {
            a.mov(al, 0x01u32)?;
            a.out(0x92u32, al)?;
            halt(a)
        }),
        1,
    );
    let reason = result.unwrap();
    assert_eq!(reason, StopReason::Reset(ResetSource::Port(0x92)));
    assert_eq!(
        reason.to_string(),
        "guest requested reset (write to port 0x92)"
    );
    assert_eq!(reason.exit_status(), 4);
}

#[test]
fn unclaimed_port_reads_all_ones() {
    if !kvm_available("unclaimed_port_reads_all_ones") {
        return;
    }
    // COM2 does not exist: its line status register reads 0xFF. Bytes go out as they are.
    let (result, output) = run_plan(
        flat32_plan(|a| {
            a.mov(dx, 0x2FDu32)?;
            a.in_(al, dx)?;
            a.mov(dx, 0x3F8u32)?;
            a.out(dx, al)?;
            a.mov(dx, 0x2F8u32)?;
            a.in_(ax, dx)?;
            a.mov(dx, 0x3F8u32)?;
            a.out(dx, al)?;
            a.mov(al, ah)?;
            a.out(dx, al)?;
            halt(a)
        }),
        1,
    );
    assert_eq!(output, [0xFF, 0xFF, 0xFF]);
    assert_eq!(result.unwrap(), StopReason::AllHalted);
}

#[test]
fn string_io_reaches_serial() {
    if !kvm_available("string_io_reaches_serial") {
        return;
    }
    let text = b"rep outsb works\n";
    let data = CODE + 0x800;
    let code = assemble(32, CODE, |a| {
        a.cld()?;
        a.mov(esi, data as u32)?;
        a.mov(ecx, text.len() as u32)?;
        a.mov(dx, 0x3F8u32)?;
        a.rep().outsb()?;
        halt(a)
    });
    let mut page = vec![0u8; 4096];
    page[..code.len()].copy_from_slice(&code);
    page[0x800..0x800 + text.len()].copy_from_slice(text);
    let plan = plan(pages(CODE, &page), vec![(0, flat32_context(CODE, STACK))]);
    let (result, output) = run_plan(plan, 1);
    assert_eq!(output, text);
    assert_eq!(result.unwrap(), StopReason::AllHalted);
}

#[test]
fn serial_input_echo_and_console_quit() {
    if !kvm_available("serial_input_echo_and_console_quit") {
        return;
    }
    // The guest polls the line status register and echoes each received byte.
    let plan = flat32_plan(|a| {
        let mut poll = a.create_label();
        a.set_label(&mut poll)?;
        a.mov(dx, 0x3FDu32)?;
        a.in_(al, dx)?;
        a.test(al, 1u32)?;
        a.jz(poll)?;
        a.mov(dx, 0x3F8u32)?;
        a.in_(al, dx)?;
        a.out(dx, al)?;
        a.jmp(poll)
    });
    let (config, capture) = captured_config(GuestImage::Plan(Box::new(plan)));
    let typist = {
        let capture = capture.clone();
        std::thread::spawn(move || {
            capture.send_input(b"ping\x01\x01").unwrap();
            let echoed = capture.wait_for("ping\x01", Duration::from_secs(10));
            capture.send_input(b"\x01x").unwrap();
            echoed
        })
    };
    let result = run_limited(config, LIMIT);
    assert!(typist.join().unwrap(), "the guest did not echo the input");
    assert_eq!(capture.text(), "ping\x01");
    let reason = result.unwrap();
    assert_eq!(reason, StopReason::Requested(StopRequest::Console));
    assert_eq!(reason.exit_status(), 10);
}

#[test]
fn caller_stops_spinning_guest() {
    if !kvm_available("caller_stops_spinning_guest") {
        return;
    }
    let plan = flat32_plan(|a| {
        print(a, "spin\n")?;
        let mut spin = a.create_label();
        a.set_label(&mut spin)?;
        a.jmp(spin)
    });
    let (config, capture) = captured_config(GuestImage::Plan(Box::new(plan)));
    let stop = config.stop.clone();
    let stopper = std::thread::spawn(move || {
        let printed = capture.wait_for("spin\n", Duration::from_secs(10));
        stop.request_stop();
        printed
    });
    let result = run_limited(config, LIMIT);
    assert!(stopper.join().unwrap());
    assert_eq!(result.unwrap(), StopReason::Requested(StopRequest::Caller));
}

#[test]
fn triple_fault_names_missing_pml4e() {
    if !kvm_available("triple_fault_names_missing_pml4e") {
        return;
    }
    // Long mode with CR3 at a page of zeros: the first fetch faults, and so do the #PF and #DF
    // deliveries, because the IDT is empty.
    let mut context = flat32_context(CODE, STACK);
    context.code_attributes = 0xA09B;
    context.cr0 = 0x8000_0011;
    context.cr3 = 0x5000;
    context.cr4 = 0x20;
    context.efer = 0x500;
    let mut operations = pages(0x5000, &[0u8; 8]);
    operations.extend(pages(CODE, &[0x90; 16]));
    let (result, _) = run_plan(plan(operations, vec![(0, context)]), 1);
    let reason = result.unwrap();
    let StopReason::TripleFault(report) = &reason else {
        panic!("expected a triple fault, got {reason:?}");
    };
    assert_eq!(report.regs.rip, CODE);
    assert_eq!(
        report.details,
        vec![
            "page walk for RIP (linear address 0x10000):".to_string(),
            "  PML4E[0] at GPA 0x5000 = 0x0".to_string(),
            "  PML4E is not present".to_string(),
        ]
    );
    assert_eq!(reason.exit_status(), 6);
}

#[test]
fn bad_configuration_is_rejected() {
    if !kvm_available("bad_configuration_is_rejected") {
        return;
    }
    let code = assemble(32, CODE, halt);
    let image = GuestImage::Plan(Box::new(plan(
        pages(CODE, &code),
        vec![(0, flat32_context(CODE, STACK))],
    )));
    let (mut config, _) = captured_config(image.clone());
    config.cpus = 0;
    assert!(matches!(
        vmm::run_vm(config),
        Err(VmmError::CpuCount { requested: 0, .. })
    ));
    let (mut config, _) = captured_config(image);
    config.memory_bytes = 1 << 20;
    assert_eq!(
        vmm::run_vm(config).unwrap_err().to_string(),
        "memory size 1048576 bytes is below the minimum of 2097152 bytes (2M)"
    );
}

#[test]
fn emulation_failure_is_reported() {
    if !kvm_available("emulation_failure_is_reported") {
        return;
    }
    // An x87 load from an address no device claims is MMIO that KVM's emulator cannot do.
    let (result, _) = run_plan(
        flat32_plan(|a| {
            a.fld(dword_ptr(0xD000_0000u32))?;
            halt(a)
        }),
        1,
    );
    let reason = result.unwrap();
    let StopReason::KvmFailure(report) = &reason else {
        panic!("expected a KVM failure, got {reason:?}");
    };
    assert_eq!(
        report.summary,
        "KVM_EXIT_INTERNAL_ERROR, suberror 1 (emulation failure)"
    );
    assert_eq!(report.regs.rip, CODE);
    assert!(
        report
            .details
            .iter()
            .any(|line| line.starts_with("instruction bytes: d905000000d0")),
        "{:?}",
        report.details
    );
    assert_eq!(
        reason.to_string(),
        "KVM could not run vCPU 0: KVM_EXIT_INTERNAL_ERROR, suberror 1 (emulation failure)"
    );
    assert_eq!(reason.exit_status(), 8);
}
