//! Runs the COCONUT-SVSM native conformance file: as shipped it triple-faults on a KVM without
//! 1 GiB pages, and a copy whose page tables use 2 MiB pages runs its payload.
//!
//! The file's native VP context gives CS the attributes 0xC09B (D/B set, L clear), because
//! COCONUT's stage 2 starts as 32-bit code in compatibility mode. The payload at 0x10002 is
//! 64-bit code, though: its first instruction is `lea rsi, [rip + 0x11]`, which compatibility
//! mode decodes as `dec eax; lea esi, [0x11]`. So the 2 MiB copy prints 20 bytes from GPA 0x11
//! (zeros), and prints the marker only when the copy's code segment is also made 64-bit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use igvm::{IgvmDirectiveHeader, IgvmFile};
use vmm::{GuestImage, PlatformRequest, StopReason};

use common::{captured_config, conformance_dir, kvm_available, run_limited};

const FILE: &str = "tiny-qemu-snp-native.igvm";
/// The builder's page-directory-pointer table; entry 0 maps the first 1 GiB with one page.
const PDPT_GPA: u64 = 0x19000;
/// A page of the builder's tables that the copy turns into a page directory.
const PD_GPA: u64 = 0x17000;
/// Present, writable, accessed, dirty, page size.
const LARGE_PAGE_FLAGS: u64 = 0xE3;
/// Present, writable, accessed: a pointer to the next table.
const TABLE_FLAGS: u64 = 0x63;
/// A 64-bit code segment: G, L, present, code, execute/read, accessed.
const LONG_MODE_CODE_ATTRIBUTES: u16 = 0xA09B;

fn read_file() -> Option<Vec<u8>> {
    let path = conformance_dir().join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            eprintln!("skipped: cannot read {}: {error}", path.display());
            None
        }
    }
}

/// Rewrites the identity map of the first 1 GiB from one 1 GiB page to 512 pages of 2 MiB: PDPT
/// entry 0 points to a page directory at `PD_GPA`, and the other 1 GiB entries go away. With
/// `long_mode_cs` the native context's code segment also becomes a 64-bit one.
fn with_2mib_pages(bytes: &[u8], long_mode_cs: bool) -> Vec<u8> {
    let file = IgvmFile::new_from_binary(bytes, None).unwrap();
    let mut pd = vec![0u8; 4096];
    for (index, entry) in pd.chunks_mut(8).enumerate() {
        let value = ((index as u64) << 21) | LARGE_PAGE_FLAGS;
        entry.copy_from_slice(&value.to_le_bytes());
    }
    let mut rewritten = 0;
    let directives: Vec<IgvmDirectiveHeader> = file
        .directives()
        .iter()
        .cloned()
        .map(|mut header| {
            match &mut header {
                IgvmDirectiveHeader::PageData { gpa, data, .. } if *gpa == PDPT_GPA => {
                    // Entry 0 points to the new page directory; entries 1..3 (more 1 GiB
                    // pages) go away; entry 4, the builder's mapping above 4 GiB, stays.
                    let mut table = data.clone();
                    table.resize(4096, 0);
                    table[..8].copy_from_slice(&(PD_GPA | TABLE_FLAGS).to_le_bytes());
                    table[8..32].fill(0);
                    *data = table;
                    rewritten += 1;
                }
                IgvmDirectiveHeader::PageData { gpa, data, .. } if *gpa == PD_GPA => {
                    *data = pd.clone();
                    rewritten += 1;
                }
                IgvmDirectiveHeader::X64NativeVpContext { context, .. } if long_mode_cs => {
                    assert_eq!(context.code_attributes, 0xC09B);
                    context.code_attributes = LONG_MODE_CODE_ATTRIBUTES;
                }
                _ => {}
            }
            header
        })
        .collect();
    assert_eq!(rewritten, 2, "the file's page tables moved");
    let copy = IgvmFile::new(
        igvm::IgvmRevision::V1,
        file.platforms().to_vec(),
        file.initializations().to_vec(),
        directives,
    )
    .unwrap();
    let mut out = Vec::new();
    copy.serialize(&mut out).unwrap();
    out
}

/// Runs an IGVM image and returns the stop reason and the COM1 bytes.
fn run_image(image: Vec<u8>) -> (StopReason, Vec<u8>) {
    let (mut config, capture) = captured_config(GuestImage::Igvm(image));
    config.memory_bytes = 512 << 20;
    config.platform = PlatformRequest::Native;
    let reason = run_limited(config, Duration::from_secs(20)).unwrap();
    (reason, capture.output().contents())
}

#[test]
fn one_gib_page_triple_faults_with_report() {
    if !kvm_available("one_gib_page_triple_faults_with_report") {
        return;
    }
    let Some(bytes) = read_file() else {
        return;
    };
    let (reason, output) = run_image(bytes);
    let StopReason::TripleFault(report) = &reason else {
        panic!("expected a triple fault, got {reason:?}");
    };
    if report.details.last().map(String::as_str) == Some("  maps to GPA 0x10002") {
        eprintln!("this KVM offers 1 GiB pages; the file boots as built");
        return;
    }
    assert_eq!(report.regs.rip, 0x10002);
    assert_eq!(report.sregs.cr3, 0x1A000);
    assert_eq!(
        report.details,
        vec![
            "page walk for RIP (linear address 0x10002):".to_string(),
            "  PML4E[0] at GPA 0x1a000 = 0x19063".to_string(),
            "  PDPTE[0] at GPA 0x19000 = 0xe3".to_string(),
            "  PDPTE maps a 1 GiB page, but this KVM does not offer 1 GiB pages (CPUID 0x80000001 EDX bit 26)"
                .to_string(),
        ]
    );
    assert!(output.is_empty());
}

#[test]
fn two_mib_copy_runs_payload_in_compatibility_mode() {
    if !kvm_available("two_mib_copy_runs_payload_in_compatibility_mode") {
        return;
    }
    let Some(bytes) = read_file() else {
        return;
    };
    let (reason, output) = run_image(with_2mib_pages(&bytes, false));
    assert_eq!(output, [0u8; 20]);
    assert_eq!(reason, StopReason::AllHalted);
}

#[test]
fn two_mib_copy_with_64_bit_cs_prints_marker() {
    if !kvm_available("two_mib_copy_with_64_bit_cs_prints_marker") {
        return;
    }
    let Some(bytes) = read_file() else {
        return;
    };
    let (reason, output) = run_image(with_2mib_pages(&bytes, true));
    assert_eq!(output, b"IGVM-NATIVE-TINY-OK\n");
    assert_eq!(reason, StopReason::AllHalted);
}
