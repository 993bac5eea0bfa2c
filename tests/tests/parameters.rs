//! IGVM parameters: the guest dumps what the loader wrote into each parameter area, and the
//! test compares it with the host description igvmm built for the same configuration.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use iced_x86::code_asm::*;
use igvm_loader::host::{HostDescription, MemoryKind};
use igvmm_tests::asm::{GuestAsm, Mode};
use igvmm_tests::guest;
use igvmm_tests::harness::{boot, debug_exit, host_description, Outcome, VmConfig};
use igvmm_tests::igvm_file::Parameter;
use igvmm_tests::layout::{GUEST_RAM, PARAM_GPA};

/// Size of each parameter area.
const AREA_SIZE: u64 = 0x2000;

/// Boots a guest whose only parameter area (at PARAM_GPA) contains `parameter` at offset 0, and
/// whose program `dump` prints it.
fn boot_with_parameter(
    parameter: Parameter,
    config: &VmConfig,
    dump: impl FnOnce(&mut GuestAsm),
) -> Outcome {
    let mut g = GuestAsm::new(Mode::Long).unwrap();
    dump(&mut g);
    g.exit(0).unwrap();
    let mut builder = guest::image(Mode::Long, &guest::assemble(g).unwrap());
    builder.parameter_area(PARAM_GPA, AREA_SIZE, &[(parameter, 0)]);
    let outcome = boot(&builder.build().unwrap(), config).unwrap();
    assert_eq!(
        outcome.stop,
        debug_exit(0),
        "{parameter:?}: {}",
        outcome.text()
    );
    outcome
}

/// Emits code that prints "<name>=<hex of count bytes at PARAM_GPA + offset>\n".
fn dump_bytes(g: &mut GuestAsm, name: &str, offset: u64, count: u32) {
    g.print(name).unwrap();
    g.print("=").unwrap();
    g.a.mov(esi, (PARAM_GPA + offset) as u32).unwrap();
    g.a.mov(ebp, count).unwrap();
    g.call_hexdump().unwrap();
    g.print("\n").unwrap();
}

/// Emits code that prints an ACPI table at PARAM_GPA: "sig=<4 chars> len=<u32>\n" then
/// "table=<hex of len bytes, at most the area size>\n".
fn dump_acpi_table(g: &mut GuestAsm) {
    g.print("sig=").unwrap();
    for i in 0..4 {
        g.a.mov(rsi, PARAM_GPA).unwrap();
        g.a.mov(al, byte_ptr(rsi + i)).unwrap();
        g.call_putc().unwrap();
    }
    g.a.mov(rsi, PARAM_GPA).unwrap();
    g.a.mov(r12d, dword_ptr(rsi + 4)).unwrap();
    g.print(" len=").unwrap();
    g.print_hex32(r12d, 8).unwrap();
    g.print("\ntable=").unwrap();
    // Never dump past the area, whatever length the table claims.
    let mut bounded = g.a.create_label();
    g.a.mov(eax, AREA_SIZE as u32).unwrap();
    g.a.cmp(r12d, eax).unwrap();
    g.a.jbe(bounded).unwrap();
    g.a.mov(r12d, eax).unwrap();
    g.a.set_label(&mut bounded).unwrap();
    g.a.mov(esi, PARAM_GPA as u32).unwrap();
    g.a.mov(ebp, r12d).unwrap();
    g.call_hexdump().unwrap();
    g.print("\n").unwrap();
}

fn two_cpus() -> VmConfig {
    VmConfig {
        cpus: 2,
        ..VmConfig::default()
    }
}

fn host(config: &VmConfig) -> HostDescription {
    host_description(config).unwrap()
}

#[test]
fn parameter_vp_count() {
    let config = two_cpus();
    let outcome = boot_with_parameter(Parameter::VpCount, &config, |g| {
        g.a.mov(rsi, PARAM_GPA).unwrap();
        g.a.mov(eax, dword_ptr(rsi)).unwrap();
        g.print("vp_count=").unwrap();
        g.print_hex32(eax, 8).unwrap();
        g.print("\n").unwrap();
    });
    assert_eq!(outcome.text(), "vp_count=00000002\n");
}

#[test]
fn parameter_environment_info() {
    let outcome = boot_with_parameter(Parameter::EnvironmentInfo, &VmConfig::default(), |g| {
        g.a.mov(rsi, PARAM_GPA).unwrap();
        g.a.mov(eax, dword_ptr(rsi)).unwrap();
        g.print("env=").unwrap();
        g.print_hex32(eax, 8).unwrap();
        g.print("\n").unwrap();
    });
    // Bit 0, memory_is_shared: KVM starts every page shared, on every platform.
    assert_eq!(outcome.text(), "env=00000001\n");
}

/// `IGVM_VHS_MEMORY_MAP_ENTRY` type values.
fn igvm_memory_type(kind: MemoryKind) -> u16 {
    match kind {
        MemoryKind::Ram => 0,
        MemoryKind::Reserved => 1,
        MemoryKind::Persistent => 2,
    }
}

#[test]
fn parameter_memory_map() {
    let config = VmConfig::default();
    let outcome = boot_with_parameter(Parameter::MemoryMap, &config, |g| {
        // Print entries until the all-zero terminator (page count 0), at most one area's worth.
        let mut next = g.a.create_label();
        let mut done = g.a.create_label();
        g.a.mov(r12, PARAM_GPA).unwrap();
        g.a.mov(r13d, (AREA_SIZE / 24) as u32).unwrap();
        g.a.set_label(&mut next).unwrap();
        g.a.cmp(qword_ptr(r12 + 8), 0).unwrap();
        g.a.je(done).unwrap();
        g.print("mm ").unwrap();
        g.a.mov(rax, qword_ptr(r12)).unwrap();
        g.print_hex64(rax, 16).unwrap();
        g.print(" ").unwrap();
        g.a.mov(rax, qword_ptr(r12 + 8)).unwrap();
        g.print_hex64(rax, 16).unwrap();
        g.print(" ").unwrap();
        g.a.movzx(eax, word_ptr(r12 + 16)).unwrap();
        g.print_hex32(eax, 4).unwrap();
        g.print(" ").unwrap();
        g.a.movzx(eax, word_ptr(r12 + 18)).unwrap();
        g.print_hex32(eax, 4).unwrap();
        g.print("\n").unwrap();
        g.a.add(r12, 24).unwrap();
        g.a.dec(r13d).unwrap();
        g.a.jnz(next).unwrap();
        g.a.set_label(&mut done).unwrap();
        g.print("end\n").unwrap();
    });

    let mut regions = host(&config).memory_map;
    regions.sort_by_key(|region| region.base);
    let mut expected = String::new();
    for region in regions.iter().filter(|region| region.size != 0) {
        expected += &format!(
            "mm {:016x} {:016x} {:04x} 0000\n",
            region.base / 4096,
            region.size / 4096,
            igvm_memory_type(region.kind)
        );
    }
    expected += "end\n";
    assert_eq!(outcome.text(), expected);

    // Independently of the host description: the RAM entries add up to the configured RAM.
    let ram_pages: u64 = outcome
        .text()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields.first() == Some(&"mm") && fields.get(3) == Some(&"0000"))
                .then(|| u64::from_str_radix(fields.get(2).unwrap_or(&"0"), 16).unwrap_or(0))
        })
        .sum();
    assert_eq!(ram_pages * 4096, GUEST_RAM);
}

#[test]
fn parameter_command_line() {
    let config = VmConfig {
        cmdline: Some("console=ttyS0 igvmm.test=1 quiet".to_string()),
        ..VmConfig::default()
    };
    let outcome = boot_with_parameter(Parameter::CommandLine, &config, |g| {
        g.print("cmdline=[").unwrap();
        g.a.mov(esi, PARAM_GPA as u32).unwrap();
        g.call_puts().unwrap();
        g.print("]\n").unwrap();
    });
    assert_eq!(
        outcome.text(),
        "cmdline=[console=ttyS0 igvmm.test=1 quiet]\n"
    );
}

/// Boots a guest that dumps the ACPI table `parameter` and compares it with `table` from the
/// host description.
fn check_acpi_parameter(
    parameter: Parameter,
    signature: &str,
    pick: fn(&HostDescription) -> Vec<u8>,
) {
    let config = two_cpus();
    let outcome = boot_with_parameter(parameter, &config, dump_acpi_table);
    let table = pick(&host(&config));
    assert!(
        table.len() >= 36,
        "the host description has no {signature} table ({} bytes)",
        table.len()
    );
    assert_eq!(table.get(..4), Some(signature.as_bytes()));
    let length = u32::from_le_bytes(table.get(4..8).unwrap().try_into().unwrap());
    assert_eq!(length as usize, table.len(), "{signature} length field");
    let checksum = table.iter().fold(0u8, |sum, &b| sum.wrapping_add(b));
    assert_eq!(checksum, 0, "{signature} checksum");
    let expected = format!(
        "sig={signature} len={length:08x}\ntable={}\n",
        hex::encode(&table)
    );
    assert_eq!(outcome.text(), expected);
}

#[test]
fn parameter_madt() {
    check_acpi_parameter(Parameter::Madt, "APIC", |host| host.madt.clone());
}

#[test]
fn parameter_srat() {
    check_acpi_parameter(Parameter::Srat, "SRAT", |host| host.srat.clone());
}

#[test]
fn parameter_slit() {
    check_acpi_parameter(Parameter::Slit, "SLIT", |host| host.slit.clone());
}

#[test]
fn parameter_pptt() {
    check_acpi_parameter(Parameter::Pptt, "PPTT", |host| host.pptt.clone());
}

#[test]
fn parameter_mmio_ranges() {
    let config = VmConfig::default();
    let outcome = boot_with_parameter(Parameter::MmioRanges, &config, |g| {
        dump_bytes(g, "mmio", 0, 32);
    });
    let mut ranges = host(&config).mmio_ranges;
    ranges.sort();
    let mut expected = Vec::new();
    for slot in 0..2 {
        let (base, size) = ranges.get(slot).copied().unwrap_or((0, 0));
        expected.extend_from_slice(&(base / 4096).to_le_bytes());
        expected.extend_from_slice(&size.div_ceil(4096).to_le_bytes());
    }
    assert_eq!(outcome.text(), format!("mmio={}\n", hex::encode(expected)));
    assert!(
        !ranges.is_empty(),
        "igvmm reports no MMIO range to the guest"
    );
}

#[test]
fn parameter_device_tree() {
    let config = VmConfig {
        cpus: 2,
        cmdline: Some("dt-bootargs-check".to_string()),
        ..VmConfig::default()
    };
    let outcome = boot_with_parameter(Parameter::DeviceTree, &config, |g| {
        g.a.mov(rsi, PARAM_GPA).unwrap();
        g.a.mov(eax, dword_ptr(rsi)).unwrap();
        g.a.bswap(eax).unwrap();
        g.print("magic=").unwrap();
        g.print_hex32(eax, 8).unwrap();
        g.a.mov(rsi, PARAM_GPA).unwrap();
        g.a.mov(r12d, dword_ptr(rsi + 4)).unwrap();
        g.a.bswap(r12d).unwrap();
        g.print(" size=").unwrap();
        g.print_hex32(r12d, 8).unwrap();
        g.print("\nfdt=").unwrap();
        let mut bounded = g.a.create_label();
        g.a.mov(eax, AREA_SIZE as u32).unwrap();
        g.a.cmp(r12d, eax).unwrap();
        g.a.jbe(bounded).unwrap();
        g.a.mov(r12d, eax).unwrap();
        g.a.set_label(&mut bounded).unwrap();
        g.a.mov(esi, PARAM_GPA as u32).unwrap();
        g.a.mov(ebp, r12d).unwrap();
        g.call_hexdump().unwrap();
        g.print("\n").unwrap();
    });
    let text = outcome.text();
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("magic=d00dfeed size="), "{header}");
    let size =
        usize::from_str_radix(header.trim_start_matches("magic=d00dfeed size="), 16).unwrap();
    let fdt = hex::decode(lines.next().unwrap_or_default().trim_start_matches("fdt=")).unwrap();
    assert_eq!(fdt.len(), size);
    // The blob names both CPUs, carries the command line and describes the RAM at 0.
    let contains = |needle: &[u8]| fdt.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"cpu@0\0"), "no cpu@0 node");
    assert!(contains(b"cpu@1\0"), "no cpu@1 node");
    assert!(contains(b"memory@0\0"), "no memory@0 node");
    assert!(contains(b"dt-bootargs-check\0"), "no bootargs");
    assert!(contains(b"bootargs\0"), "no bootargs property name");
}
