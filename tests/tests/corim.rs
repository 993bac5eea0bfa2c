//! CoRIM documents in IGVM files: the host serves them through fw_cfg and never places them in
//! guest memory or the launch plan.
//!
//! The guest walks the fw_cfg directory, and reads `opt/igvm/corim`, `opt/igvm/corim-signature`
//! and the SP800-155 Event3 file `opt/org.tianocode/sp800155evt/0` once by port I/O and once by
//! DMA. It prints small files in full (hex) and, for large ones, the length and a CRC-32 that it
//! computes itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;

use iced_x86::code_asm::*;
use igvm_loader::host::PlatformChoice;
use igvm_loader::plan::{HostOnlyData, PageData, Plan, Platform};
use igvm_loader::LoadOptions;
use igvmm_tests::asm::{GuestAsm, Mode};
use igvmm_tests::fw_cfg;
use igvmm_tests::guest;
use igvmm_tests::harness::{boot, debug_exit, fw_cfg_files, host_description, load, VmConfig};
use igvmm_tests::igvm_file::{self, IgvmBuilder};
use igvmm_tests::layout::{SCRATCH_GPA, VARS_GPA};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

const CORIM_FILE: &str = "opt/igvm/corim";
const SIGNATURE_FILE: &str = "opt/igvm/corim-signature";
const EVENT_FILE: &str = "opt/org.tianocode/sp800155evt/0";
/// Largest Event3 igvmm publishes; a larger one is left out.
const EVENT_LIMIT: usize = 65_504;

const DESCRIPTOR_GPA: u64 = VARS_GPA + 0x100;
const DIR_BUFFER: u64 = SCRATCH_GPA;
const PORT_BUFFER: u64 = 0x20_0000;
const DMA_BUFFER: u64 = 0x40_0000;

/// Returns a CBOR `tagged-unsigned-corim-map` (tag 501) with an id and one concise-mid-tag (tag 506)
/// whose byte string is `filler_len` bytes of a pattern.
fn corim_document(filler_len: usize) -> Vec<u8> {
    let mut doc = vec![0xd9, 0x01, 0xf5, 0xa2];
    // 0: "igvmm-test"
    doc.push(0x00);
    doc.push(0x60 | 10);
    doc.extend_from_slice(b"igvmm-test");
    // 1: [ #6.506(bstr) ]
    doc.extend_from_slice(&[0x01, 0x81, 0xd9, 0x01, 0xfa]);
    doc.push(0x5a);
    doc.extend_from_slice(&(filler_len as u32).to_be_bytes());
    doc.extend((0..filler_len).map(|i| (i * 13 + i / 251) as u8));
    doc
}

/// Returns a COSE_Sign1 (tag 18) with protected header {1: -7} (ES256), an empty unprotected map, a
/// detached (nil) payload and 64 signature bytes.
fn cose_sign1_detached() -> Vec<u8> {
    let mut sig = vec![0xd2, 0x84, 0x43, 0xa1, 0x01, 0x26, 0xa0, 0xf6, 0x58, 0x40];
    sig.extend((0..64u8).map(|i| i.wrapping_mul(7) ^ 0xa5));
    sig
}

fn hello_code() -> Vec<u8> {
    let mut g = GuestAsm::new(Mode::Long).unwrap();
    g.print("hi\n").unwrap();
    g.exit(0).unwrap();
    guest::assemble(g).unwrap()
}

/// Assembles the guest that reads the three files. With `large`, it prints CRC-32s of the
/// file contents instead of the contents.
fn reader_code(large: bool) -> Vec<u8> {
    let mut g = GuestAsm::new(Mode::Long).unwrap();
    for name in [CORIM_FILE, SIGNATURE_FILE, EVENT_FILE] {
        let mut absent = g.a.create_label();
        fw_cfg::find_file(&mut g, name, DIR_BUFFER).unwrap();
        g.print(name).unwrap();
        g.print(" select=").unwrap();
        g.print_hex32(r13d, 4).unwrap();
        g.print(" size=").unwrap();
        g.print_hex32(r14d, 8).unwrap();
        g.print("\n").unwrap();
        g.a.test(r13d, r13d).unwrap();
        g.a.jz(absent).unwrap();

        fw_cfg::read_item_port(&mut g, PORT_BUFFER).unwrap();
        fw_cfg::read_item_dma(&mut g, DMA_BUFFER, DESCRIPTOR_GPA).unwrap();
        g.a.mov(r15d, eax).unwrap();
        for (label, buffer) in [("port", PORT_BUFFER), ("dma", DMA_BUFFER)] {
            g.print(label).unwrap();
            if large {
                g.a.mov(rsi, buffer).unwrap();
                g.a.mov(ecx, r14d).unwrap();
                fw_cfg::crc32(&mut g).unwrap();
                g.print(" crc=").unwrap();
                g.print_hex32(eax, 8).unwrap();
            } else {
                g.print(" data=").unwrap();
                g.a.mov(esi, buffer as u32).unwrap();
                g.a.mov(ebp, r14d).unwrap();
                g.call_hexdump().unwrap();
            }
            g.print("\n").unwrap();
        }
        g.print("control=").unwrap();
        g.print_hex32(r15d, 8).unwrap();
        g.print("\n").unwrap();
        g.a.set_label(&mut absent).unwrap();
        g.a.nop().unwrap();
    }
    g.exit(0).unwrap();
    guest::assemble(g).unwrap()
}

fn file_with(code: &[u8], document: Option<&[u8]>, signature: Option<&[u8]>) -> Vec<u8> {
    let mut builder: IgvmBuilder = guest::image(Mode::Long, code);
    builder.zero_pages(VARS_GPA, 1);
    if let Some(document) = document {
        builder.corim(document, signature);
    }
    builder.build().unwrap()
}

/// What the guest printed for one file.
#[derive(Debug, Default)]
struct FileReport {
    size: usize,
    port: String,
    dma: String,
    control: String,
}

/// Splits the guest output into one report per file; absent files have size 0 and no data.
fn reports(text: &str) -> Vec<(String, FileReport)> {
    let mut out: Vec<(String, FileReport)> = Vec::new();
    for line in text.lines() {
        if let Some((name, rest)) = line.split_once(" select=") {
            let select = rest.get(..4).unwrap_or_default();
            let size = rest
                .split_once("size=")
                .map(|(_, s)| usize::from_str_radix(s, 16).unwrap())
                .unwrap_or(0);
            let report = FileReport {
                size: if select == "0000" { 0 } else { size },
                ..FileReport::default()
            };
            out.push((name.to_string(), report));
        } else if let Some((_, report)) = out.last_mut() {
            if let Some(v) = line.strip_prefix("port ") {
                report.port = v.to_string();
            } else if let Some(v) = line.strip_prefix("dma ") {
                report.dma = v.to_string();
            } else if let Some(v) = line.strip_prefix("control=") {
                report.control = v.to_string();
            }
        }
    }
    out
}

fn report<'a>(all: &'a [(String, FileReport)], name: &str) -> &'a FileReport {
    &all.iter().find(|(n, _)| n == name).unwrap().1
}

/// Parses an SP800-155 Event3 and returns (RIM locator type, RIM locator bytes).
fn event3_locator(event: &[u8]) -> (u32, Vec<u8>) {
    assert_eq!(event.get(..16), Some(&b"SP800-155 Event3"[..]));
    let mut at = 16 + 4 + 16;
    let skip_string = |at: &mut usize| {
        let len = usize::from(*event.get(*at).unwrap());
        *at += 1 + len;
    };
    // Platform manufacturer, model, version, firmware manufacturer strings.
    for _ in 0..4 {
        skip_string(&mut at);
    }
    at += 4; // FirmwareManufacturerId
    skip_string(&mut at); // FirmwareVersion
    let u32_at = |at: usize| u32::from_le_bytes(event.get(at..at + 4).unwrap().try_into().unwrap());
    let locator_type = u32_at(at);
    let locator_len = u32_at(at + 4) as usize;
    let locator = event.get(at + 8..at + 8 + locator_len).unwrap().to_vec();
    let cert_len = u32_at(at + 12 + locator_len) as usize;
    assert_eq!(
        at + 16 + locator_len + cert_len,
        event.len(),
        "Event3 length"
    );
    (locator_type, locator)
}

/// Returns the bytes igvmm publishes as `name` for a plan carrying `document` and `signature`.
fn host_file(document: &[u8], signature: Option<&[u8]>, name: &str) -> Option<Vec<u8>> {
    let host_only = HostOnlyData {
        corim_document: Some(document.to_vec()),
        corim_signature: signature.map(<[u8]>::to_vec),
    };
    fw_cfg_files(&VmConfig::default(), &host_only)
        .unwrap()
        .into_iter()
        .find(|(file, _)| file == name)
        .map(|(_, bytes)| bytes)
}

#[test]
fn corim_small_fw_cfg() {
    let document = corim_document(96);
    let signature = cose_sign1_detached();
    let file = file_with(&reader_code(false), Some(&document), Some(&signature));
    let outcome = boot(&file, &VmConfig::default()).unwrap();
    let text = outcome.text();
    assert_eq!(outcome.stop, debug_exit(0), "{text}");
    let all = reports(&text);

    let corim = report(&all, CORIM_FILE);
    assert_eq!(corim.size, document.len());
    assert_eq!(corim.port, format!("data={}", hex::encode(&document)));
    assert_eq!(corim.dma, corim.port);
    assert_eq!(corim.control, "00000000");

    let sig = report(&all, SIGNATURE_FILE);
    assert_eq!(sig.size, signature.len());
    assert_eq!(sig.port, format!("data={}", hex::encode(&signature)));
    assert_eq!(sig.dma, sig.port);
    assert_eq!(sig.control, "00000000");

    let event = report(&all, EVENT_FILE);
    assert_eq!(event.dma, event.port);
    assert_eq!(event.control, "00000000");
    let event_bytes = hex::decode(event.port.trim_start_matches("data=")).unwrap();
    assert_eq!(event_bytes.len(), event.size);
    assert_eq!(
        Some(&event_bytes),
        host_file(&document, Some(&signature), EVENT_FILE).as_ref()
    );
    let (locator_type, locator) = event3_locator(&event_bytes);
    assert_eq!(locator_type, 0, "raw-data RIM locator");
    // The locator is the COSE_Sign1 with the document attached: the nil payload (0xf6) is
    // replaced by a byte string head and the document.
    assert!(document.len() > 23, "the length needs a one-byte argument");
    assert!(document.len() < 256, "the length needs a one-byte argument");
    assert_eq!(locator.get(..7), signature.get(..7));
    assert_eq!(locator.get(7..9), Some(&[0x58, document.len() as u8][..]));
    let payload_at = 9;
    assert_eq!(
        locator.get(payload_at..payload_at + document.len()),
        Some(&document[..])
    );
    assert_eq!(
        locator.get(payload_at + document.len()..),
        signature.get(8..)
    );
}

#[test]
fn corim_large_fw_cfg() {
    let document = corim_document(100 * 1024);
    assert!(document.len() >= 64 * 1024);
    let signature = cose_sign1_detached();
    let file = file_with(&reader_code(true), Some(&document), Some(&signature));
    let outcome = boot(&file, &VmConfig::default()).unwrap();
    let text = outcome.text();
    assert_eq!(outcome.stop, debug_exit(0), "{text}");
    let all = reports(&text);

    let corim = report(&all, CORIM_FILE);
    assert_eq!(corim.size, document.len());
    let crc = format!("crc={:08x}", crc32fast::hash(&document));
    assert_eq!(corim.port, crc);
    assert_eq!(corim.dma, crc);
    assert_eq!(corim.control, "00000000");

    let sig = report(&all, SIGNATURE_FILE);
    assert_eq!(sig.size, signature.len());
    assert_eq!(sig.port, format!("crc={:08x}", crc32fast::hash(&signature)));

    // The signed CoRIM does not fit one Event3, so the event is left out.
    assert!(document.len() + signature.len() > EVENT_LIMIT);
    assert_eq!(report(&all, EVENT_FILE).size, 0);
    assert_eq!(host_file(&document, Some(&signature), EVENT_FILE), None);
}

#[test]
fn corim_unsigned_event_embeds_document() {
    let document = corim_document(40);
    let file = file_with(&reader_code(false), Some(&document), None);
    let outcome = boot(&file, &VmConfig::default()).unwrap();
    let text = outcome.text();
    assert_eq!(outcome.stop, debug_exit(0), "{text}");
    let all = reports(&text);
    assert_eq!(report(&all, CORIM_FILE).size, document.len());
    assert_eq!(report(&all, SIGNATURE_FILE).size, 0);
    let event = report(&all, EVENT_FILE);
    assert_eq!(event.dma, event.port);
    let event_bytes = hex::decode(event.port.trim_start_matches("data=")).unwrap();
    assert_eq!(
        Some(&event_bytes),
        host_file(&document, None, EVENT_FILE).as_ref()
    );
    let (locator_type, locator) = event3_locator(&event_bytes);
    assert_eq!(locator_type, 0);
    assert_eq!(locator, document);
}

#[test]
fn corim_files_absent_without_headers() {
    let file = file_with(&reader_code(false), None, None);
    let outcome = boot(&file, &VmConfig::default()).unwrap();
    let text = outcome.text();
    assert_eq!(outcome.stop, debug_exit(0), "{text}");
    let all = reports(&text);
    for name in [CORIM_FILE, SIGNATURE_FILE, EVENT_FILE] {
        assert_eq!(report(&all, name).size, 0, "{name} must not exist");
    }
}

fn plan_for(file: &[u8]) -> Plan<'_> {
    let options = LoadOptions {
        choice: PlatformChoice::Exact(Platform::Native),
        host: host_description(&VmConfig::default()).unwrap(),
        relocation_base: None,
    };
    igvm_loader::load(file, &options).unwrap()
}

/// Returns every 32-byte window of `bytes`.
fn windows(bytes: &[u8]) -> HashSet<&[u8]> {
    bytes.windows(32).collect()
}

#[test]
fn corim_not_in_plan() {
    let document = corim_document(8 * 1024);
    let signature = cose_sign1_detached();
    let file = file_with(&hello_code(), Some(&document), Some(&signature));
    let plan = plan_for(&file);
    assert_eq!(
        plan.host_only.corim_document.as_deref(),
        Some(&document[..])
    );
    assert_eq!(
        plan.host_only.corim_signature.as_deref(),
        Some(&signature[..])
    );

    let secret = windows(&document)
        .union(&windows(&signature))
        .copied()
        .collect::<HashSet<&[u8]>>();
    for op in &plan.operations {
        if let PageData::Bytes(data) = &op.data {
            let leaked = data.windows(32).any(|w| secret.contains(w));
            assert!(
                !leaked,
                "launch operation at {:#x} contains CoRIM bytes",
                op.gpa
            );
        }
    }
}

#[test]
fn corim_strip_keeps_operations() {
    let document = corim_document(2048);
    let signature = cose_sign1_detached();
    let with_corim = file_with(&hello_code(), Some(&document), Some(&signature));
    let stripped = igvm_file::remove_headers(&with_corim, |typ| {
        typ == igvm_defs::IgvmVariableHeaderType::IGVM_VHT_CORIM_DOCUMENT.0
            || typ == igvm_defs::IgvmVariableHeaderType::IGVM_VHT_CORIM_SIGNATURE.0
    })
    .unwrap();
    assert!(stripped.len() < with_corim.len());

    let full = plan_for(&with_corim);
    let bare = plan_for(&stripped);
    assert_eq!(full.operations.len(), bare.operations.len());
    assert!(
        full.operations == bare.operations,
        "launch operations differ"
    );
    assert!(full.vp_contexts == bare.vp_contexts, "VP contexts differ");
    assert_eq!(bare.host_only.corim_document, None);
    assert_eq!(bare.host_only.corim_signature, None);
}

/// Returns whether any 32-byte window of `secret` occurs in guest RAM. All-zero pages are
/// skipped: the CoRIM test data has no run of 32 zeros, so a match needs a non-zero byte, and
/// each non-zero page is scanned with 31 bytes of its neighbors on both sides.
fn ram_contains_window(
    memory: &vm_memory::GuestMemoryMmap,
    secret: &HashSet<&[u8]>,
) -> Option<u64> {
    for region in memory.iter() {
        let start = region.start_addr().0;
        let len = region.len();
        let mut bytes = vec![0u8; len as usize];
        memory.read_slice(&mut bytes, GuestAddress(start)).unwrap();
        for (page_index, page) in bytes.chunks(4096).enumerate() {
            if page.iter().all(|&b| b == 0) {
                continue;
            }
            let from = (page_index * 4096).saturating_sub(31);
            let to = ((page_index + 1) * 4096 + 31).min(bytes.len());
            let scanned = bytes.get(from..to).unwrap();
            if let Some(at) = scanned.windows(32).position(|w| secret.contains(w)) {
                return Some(start + (from + at) as u64);
            }
        }
    }
    None
}

#[test]
fn corim_not_in_guest_ram() {
    // Guest memory as igvmm's native backend fills it before the first vCPU runs
    // (`vmm::load_guest`, which `run_vm` calls).
    let document = corim_document(8 * 1024);
    let signature = cose_sign1_detached();
    let mut secret_bytes = windows(&document);
    secret_bytes.extend(windows(&signature));
    assert!(!document.windows(32).any(|w| w.iter().all(|&b| b == 0)));

    let file = file_with(&reader_code(false), Some(&document), Some(&signature));
    let guest = load(&file, &VmConfig::default()).unwrap();
    assert_eq!(guest.plan.host_only.corim_document, Some(document.clone()));
    let memory = &guest.memory;

    // The scan finds data that is there: the program's own first bytes.
    let program = reader_code(false);
    let program_head: HashSet<&[u8]> = std::iter::once(program.get(..32).unwrap()).collect();
    assert_eq!(
        ram_contains_window(memory, &program_head),
        Some(igvmm_tests::layout::CODE_GPA)
    );

    assert_eq!(ram_contains_window(memory, &secret_bytes), None);
}
