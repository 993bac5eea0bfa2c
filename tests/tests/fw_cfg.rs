//! fw_cfg from the guest: signature, interface ID, file directory and `etc/e820`, each read
//! once by port I/O and once by DMA, compared with what the host configured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use iced_x86::code_asm::*;
use igvm_loader::host::MemoryKind;
use igvm_loader::plan::HostOnlyData;
use igvmm_tests::asm::{GuestAsm, Mode};
use igvmm_tests::fw_cfg::{
    self, DMA_READ, DMA_SELECT, SELECTOR_FILE_DIR, SELECTOR_ID, SELECTOR_SIGNATURE,
};
use igvmm_tests::guest;
use igvmm_tests::harness::{boot, debug_exit, fw_cfg_files, host_description, VmConfig};
use igvmm_tests::layout::{GUEST_RAM, SCRATCH_GPA, VARS_GPA};

const DESCRIPTOR_GPA: u64 = VARS_GPA + 0x100;
const PORT_DIR_BUFFER: u64 = SCRATCH_GPA;
const DMA_DIR_BUFFER: u64 = SCRATCH_GPA + 0x4_0000;
const PORT_FILE_BUFFER: u64 = SCRATCH_GPA + 0x8_0000;
const DMA_FILE_BUFFER: u64 = SCRATCH_GPA + 0xc_0000;

/// Prints `label`, then `ebp` bytes at `buffer` as hex.
fn dump(g: &mut GuestAsm, label: &str, buffer: u64) {
    g.print(label).unwrap();
    g.a.mov(esi, buffer as u32).unwrap();
    g.call_hexdump().unwrap();
}

fn print_control(g: &mut GuestAsm) {
    g.print(" control=").unwrap();
    g.print_hex32(eax, 8).unwrap();
}

fn fw_cfg_guest() -> Vec<u8> {
    let mut g = GuestAsm::new(Mode::Long).unwrap();

    // Signature and ID by port.
    for (label, selector, buffer) in [
        ("port sig=", SELECTOR_SIGNATURE, SCRATCH_GPA + 0xf000),
        (" id=", SELECTOR_ID, SCRATCH_GPA + 0xf010),
    ] {
        fw_cfg::select(&mut g, selector).unwrap();
        g.a.mov(rdi, buffer).unwrap();
        g.a.mov(ecx, 4u32).unwrap();
        fw_cfg::read_data_rep(&mut g).unwrap();
        g.a.mov(ebp, 4u32).unwrap();
        dump(&mut g, label, buffer);
    }
    g.print("\n").unwrap();

    // Signature by DMA.
    g.a.mov(
        eax,
        (u32::from(SELECTOR_SIGNATURE) << 16) | DMA_SELECT | DMA_READ,
    )
    .unwrap();
    g.a.mov(ecx, 4u32).unwrap();
    g.a.mov(rdi, SCRATCH_GPA + 0xf020).unwrap();
    fw_cfg::dma_from_registers(&mut g, DESCRIPTOR_GPA).unwrap();
    g.a.mov(r15d, eax).unwrap();
    g.a.mov(ebp, 4u32).unwrap();
    dump(&mut g, "dma sig=", SCRATCH_GPA + 0xf020);
    g.a.mov(eax, r15d).unwrap();
    print_control(&mut g);
    g.print("\n").unwrap();

    // Directory by port, and the e820 entry in it.
    fw_cfg::find_file(&mut g, "etc/e820", PORT_DIR_BUFFER).unwrap();
    g.print("count=").unwrap();
    g.print_hex32(r12d, 8).unwrap();
    g.print(" select=").unwrap();
    g.print_hex32(r13d, 4).unwrap();
    g.print(" size=").unwrap();
    g.print_hex32(r14d, 8).unwrap();
    g.print("\n").unwrap();
    g.a.mov(ebp, r12d).unwrap();
    g.a.shl(ebp, 6).unwrap();
    g.a.add(ebp, 4).unwrap();
    dump(&mut g, "port dir=", PORT_DIR_BUFFER);
    g.print("\n").unwrap();

    // Directory by DMA, the same length.
    g.a.mov(
        eax,
        (u32::from(SELECTOR_FILE_DIR) << 16) | DMA_SELECT | DMA_READ,
    )
    .unwrap();
    g.a.mov(ecx, r12d).unwrap();
    g.a.shl(ecx, 6).unwrap();
    g.a.add(ecx, 4).unwrap();
    g.a.mov(rdi, DMA_DIR_BUFFER).unwrap();
    fw_cfg::dma_from_registers(&mut g, DESCRIPTOR_GPA).unwrap();
    g.a.mov(r15d, eax).unwrap();
    g.a.mov(ebp, r12d).unwrap();
    g.a.shl(ebp, 6).unwrap();
    g.a.add(ebp, 4).unwrap();
    dump(&mut g, "dma dir=", DMA_DIR_BUFFER);
    g.a.mov(eax, r15d).unwrap();
    print_control(&mut g);
    g.print("\n").unwrap();

    // etc/e820 both ways.
    fw_cfg::read_item_port(&mut g, PORT_FILE_BUFFER).unwrap();
    g.a.mov(ebp, r14d).unwrap();
    dump(&mut g, "port e820=", PORT_FILE_BUFFER);
    g.print("\n").unwrap();
    fw_cfg::read_item_dma(&mut g, DMA_FILE_BUFFER, DESCRIPTOR_GPA).unwrap();
    g.a.mov(r15d, eax).unwrap();
    g.a.mov(ebp, r14d).unwrap();
    dump(&mut g, "dma e820=", DMA_FILE_BUFFER);
    g.a.mov(eax, r15d).unwrap();
    print_control(&mut g);
    g.print("\n").unwrap();

    g.exit(0).unwrap();
    let mut builder = guest::image(Mode::Long, &guest::assemble(g).unwrap());
    builder.zero_pages(VARS_GPA, 1);
    builder.build().unwrap()
}

/// Returns the value after `key=` on the line that starts with `prefix`.
fn field<'a>(text: &'a str, prefix: &str, key: &str) -> &'a str {
    let line = text
        .lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"));
    line.split(' ')
        .find_map(|part| part.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= on line {line:?}"))
}

/// Returns the e820 table expected for the host's memory map: 20-byte little-endian entries
/// `{ base, length, type }`, type 1 for RAM and 2 for reserved.
fn expected_e820(config: &VmConfig) -> Vec<u8> {
    let mut regions = host_description(config).unwrap().memory_map;
    regions.sort_by_key(|region| region.base);
    let mut bytes = Vec::new();
    for region in regions {
        let kind: u32 = match region.kind {
            MemoryKind::Ram => 1,
            MemoryKind::Reserved => 2,
            MemoryKind::Persistent => 7,
        };
        bytes.extend_from_slice(&region.base.to_le_bytes());
        bytes.extend_from_slice(&region.size.to_le_bytes());
        bytes.extend_from_slice(&kind.to_le_bytes());
    }
    bytes
}

#[test]
fn fw_cfg_port_and_dma() {
    let config = VmConfig::default();
    let outcome = boot(&fw_cfg_guest(), &config).unwrap();
    let text = outcome.text();
    assert_eq!(outcome.stop, debug_exit(0), "{text}");

    // "QEMU", and ID 3: traditional interface and DMA.
    assert_eq!(field(&text, "port sig=", "sig"), "51454d55");
    assert_eq!(field(&text, "port sig=", "id"), "03000000");
    assert_eq!(field(&text, "dma sig=", "sig"), "51454d55");
    assert_eq!(field(&text, "dma sig=", "control"), "00000000");

    let port_dir = hex::decode(field(&text, "port dir=", "dir")).unwrap();
    let dma_dir = hex::decode(field(&text, "dma dir=", "dir")).unwrap();
    assert_eq!(field(&text, "dma dir=", "control"), "00000000");
    assert_eq!(port_dir, dma_dir);
    let entries = fw_cfg::parse_directory(&port_dir).unwrap();
    let count = u32::from_str_radix(field(&text, "count=", "count"), 16).unwrap();
    assert_eq!(entries.len(), count as usize);

    // QEMU keeps files sorted by name and numbers them from 0x20.
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for (index, entry) in entries.iter().enumerate() {
        assert_eq!(usize::from(entry.select), 0x20 + index, "{}", entry.name);
    }

    // The same files, sizes and names igvmm configures for this machine.
    let mut host_files: Vec<(String, usize)> = fw_cfg_files(&config, &HostOnlyData::default())
        .unwrap()
        .into_iter()
        .map(|(name, data)| (name, data.len()))
        .collect();
    host_files.sort();
    let guest_files: Vec<(String, usize)> = entries
        .iter()
        .map(|e| (e.name.clone(), e.size as usize))
        .collect();
    assert_eq!(guest_files, host_files);

    let e820 = expected_e820(&config);
    let e820_entry = entries.iter().find(|e| e.name == "etc/e820").unwrap();
    assert_eq!(e820_entry.size as usize, e820.len());
    assert_eq!(
        field(&text, "count=", "select"),
        format!("{:04x}", e820_entry.select)
    );
    assert_eq!(
        field(&text, "count=", "size"),
        format!("{:08x}", e820.len())
    );
    assert_eq!(field(&text, "port e820=", "e820"), hex::encode(&e820));
    assert_eq!(field(&text, "dma e820=", "e820"), hex::encode(&e820));
    assert_eq!(field(&text, "dma e820=", "control"), "00000000");

    // The RAM entries cover exactly the configured RAM.
    let ram: u64 = e820
        .chunks(20)
        .filter(|entry| entry.get(16..20) == Some(&1u32.to_le_bytes()[..]))
        .map(|entry| u64::from_le_bytes(entry.get(8..16).unwrap().try_into().unwrap()))
        .sum();
    assert_eq!(ram, GUEST_RAM);
}
