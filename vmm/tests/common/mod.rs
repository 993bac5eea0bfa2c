//! Helpers shared by the integration tests: KVM detection, guests assembled with iced-x86,
//! hand-built plans and a run with a time limit.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use iced_x86::code_asm::CodeAssembler;
use igvm_defs::IgvmNativeVpContextX64;
use igvm_loader::plan::{
    HeaderRef, HostOnlyData, LaunchOp, PageData, PageKind, Plan, Platform, VpContext, VpState,
    PAGE_SIZE_4K,
};
use vmm::{GuestImage, SerialCapture, SerialConfig, StopReason, VmConfig, VmmError};

/// Returns whether /dev/kvm can be opened; prints the reason to skip when it cannot.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(error) => {
            eprintln!("{test}: skipped, /dev/kvm is not usable: {error}");
            false
        }
    }
}

/// Returns the directory of the conformance IGVM files, next to the repository.
pub fn conformance_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance")
}

/// Assembles 16-, 32- or 64-bit code placed at `ip`.
pub fn assemble(
    bitness: u32,
    ip: u64,
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
) -> Vec<u8> {
    let mut assembler = CodeAssembler::new(bitness).unwrap();
    build(&mut assembler).unwrap();
    assembler.assemble(ip).unwrap()
}

fn source(index: usize) -> HeaderRef {
    HeaderRef {
        header_type: 0x302,
        index,
    }
}

/// Returns 4 KiB launch operations that place `bytes` from `gpa` on.
pub fn pages(gpa: u64, bytes: &[u8]) -> Vec<LaunchOp<'static>> {
    bytes
        .chunks(PAGE_SIZE_4K as usize)
        .enumerate()
        .map(|(index, chunk)| LaunchOp {
            gpa: gpa + index as u64 * PAGE_SIZE_4K,
            size: PAGE_SIZE_4K,
            kind: PageKind::Normal,
            data: PageData::Bytes(chunk.to_vec().into()),
            source: source(index),
        })
        .collect()
}

/// Returns a native plan with `operations` and a VP context per `(vp_index, context)`.
pub fn plan(
    operations: Vec<LaunchOp<'static>>,
    contexts: Vec<(u16, IgvmNativeVpContextX64)>,
) -> Plan<'static> {
    let ops = operations.len();
    Plan {
        platform: Platform::Native,
        compatibility_mask: 1,
        shared_gpa_boundary: 0,
        operations,
        vp_contexts: contexts
            .into_iter()
            .map(|(vp_index, context)| VpContext {
                vp_index,
                state: VpState::Native(Box::new(context)),
                ops_before: ops,
                source: HeaderRef {
                    header_type: 0x30C,
                    index: ops,
                },
            })
            .collect(),
        guest_policy: None,
        snp_id_block: None,
        required_memory: Vec::new(),
        error_ranges: Vec::new(),
        host_only: HostOnlyData::default(),
    }
}

/// Returns a 32-bit protected-mode context with flat 4 GiB segments and paging off.
pub fn flat32_context(rip: u64, rsp: u64) -> IgvmNativeVpContextX64 {
    IgvmNativeVpContextX64 {
        rax: 0,
        rcx: 0,
        rdx: 0,
        rbx: 0,
        rsp,
        rbp: 0,
        rsi: 0,
        rdi: 0,
        r8: 0,
        r9: 0,
        r10: 0,
        r11: 0,
        r12: 0,
        r13: 0,
        r14: 0,
        r15: 0,
        rip,
        rflags: 0x2,
        idtr_base: 0,
        idtr_limit: 0,
        reserved: [0; 2],
        gdtr_limit: 0,
        gdtr_base: 0,
        code_selector: 0x8,
        code_attributes: 0xC09B,
        code_base: 0,
        code_limit: 0xFFFF_FFFF,
        data_selector: 0x10,
        data_attributes: 0xC093,
        data_base: 0,
        data_limit: 0xFFFF_FFFF,
        gs_base: 0,
        cr0: 0x11,
        cr3: 0,
        cr4: 0,
        efer: 0,
    }
}

/// Returns a configuration for `image` with the console captured.
pub fn captured_config(image: GuestImage) -> (VmConfig, SerialCapture) {
    let capture = SerialCapture::new().unwrap();
    let mut config = VmConfig::new(image);
    config.memory_bytes = 64 << 20;
    config.serial = SerialConfig::Capture(capture.clone());
    config.debugcon = vmm::DebugconConfig::None;
    (config, capture)
}

/// Runs `config`, stopping the VM after `limit` if it has not stopped by then.
pub fn run_limited(config: VmConfig, limit: Duration) -> Result<StopReason, VmmError> {
    let stop = config.stop.clone();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            eprintln!("time limit of {limit:?} reached; stopping the VM");
            stop.request_stop();
        }
    });
    let result = vmm::run_vm(config);
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    result
}
