//! Tests of the Linux packer and of the shared code the boot shim runs: e820 construction,
//! command-line choice, the ACPI table loader, kernel parsing and the IGVM file layout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::config::ShimConfig;
use super::elf::ElfError;
use super::layout::*;
use super::shim_error::{format_decimal, format_hex, ByteSink, FileName, LoaderError, ShimError};
use super::table_loader::{self, FileRef, FileSource, Zone};
use super::zero_page::{self, *};
use super::*;
use crate::host::{HostDescription, MemoryKind, MemoryRegion, PlatformChoice};
use crate::plan::{PageData, PageKind, Plan, Platform, VpState};
use crate::{load, LoadOptions};

const MIB: u64 = 1 << 20;

// ---- IGVM memory maps and e820 tables ----

fn memory_map(entries: &[(u64, u64, u16)]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for &(start, size, igvm_type) in entries.iter().chain([(0, 0, 0)].iter()) {
        bytes.extend_from_slice(&(start / PAGE_SIZE).to_le_bytes());
        bytes.extend_from_slice(&(size / PAGE_SIZE).to_le_bytes());
        bytes.extend_from_slice(&igvm_type.to_le_bytes());
        bytes.extend_from_slice(&[0; 6]);
    }
    bytes
}

fn e820_table(page: &[u8]) -> Vec<(u64, u64, u32)> {
    let count = usize::from(page[E820_ENTRIES]);
    (0..count)
        .map(|index| {
            let offset = E820_TABLE + index * E820_ENTRY_SIZE;
            (
                get_u64(page, offset),
                get_u64(page, offset + 8),
                get_u32(page, offset + 16),
            )
        })
        .collect()
}

#[test]
fn e820_reserves_shim_acpi_and_legacy_ranges() {
    let map = memory_map(&[(0, 512 * MIB, 0), (0xfeff_c000, 0x4000, 1)]);
    let mut page = vec![0u8; ZERO_PAGE_SIZE];
    let count = write_e820(&mut page, &map, &SHIM_RESERVED_RANGES).unwrap();
    assert_eq!(count, 7);
    assert_eq!(page[0x1e8], 7);
    assert_eq!(
        e820_table(&page),
        vec![
            (0, 0x8000, E820_RAM),
            (0x8000, 0x28000, E820_RESERVED),
            (0x30000, 0x10000, E820_ACPI),
            (0x40000, 0x60000, E820_RAM),
            (0xa0000, 0x60000, E820_RESERVED),
            (0x10_0000, 512 * MIB - 0x10_0000, E820_RAM),
            (0xfeff_c000, 0x4000, E820_RESERVED),
        ]
    );
    // The first entry, byte by byte: address 0, size 0x8000, type 1.
    assert_eq!(
        &page[0x2d0..0x2d0 + 20],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    );
    // Nothing beyond the seventh entry is written.
    assert!(page[0x2d0 + 7 * 20..0xd00].iter().all(|byte| *byte == 0));
}

#[test]
fn e820_keeps_high_ram_and_persistent_memory() {
    let map = memory_map(&[
        (0, 3 << 30, 0),
        (0xfeff_c000, 0x4000, 1),
        (1 << 32, 1 << 30, 0),
        (5 << 30, 256 * MIB, 2),
    ]);
    let mut page = vec![0u8; ZERO_PAGE_SIZE];
    write_e820(&mut page, &map, &SHIM_RESERVED_RANGES).unwrap();
    let table = e820_table(&page);
    assert_eq!(table.len(), 9);
    assert_eq!(table[5], (0x10_0000, (3 << 30) - 0x10_0000, E820_RAM));
    assert_eq!(table[7], (1 << 32, 1 << 30, E820_RAM));
    assert_eq!(table[8], (5 << 30, 256 * MIB, E820_PMEM));
}

#[test]
fn e820_rejects_shim_range_outside_ram() {
    // RAM starts at 1 MiB, so the shim's pages below it are not RAM.
    let map = memory_map(&[(MIB, 512 * MIB, 0)]);
    let mut page = vec![0u8; ZERO_PAGE_SIZE];
    assert_eq!(
        write_e820(&mut page, &map, &SHIM_RESERVED_RANGES),
        Err(ShimError::ReservedRangeNotRam {
            start: SHIM_REGION_START,
            end: SHIM_REGION_END
        })
    );
    assert_eq!(page[E820_ENTRIES], 0);
}

#[test]
fn e820_rejects_empty_map() {
    let mut page = vec![0u8; ZERO_PAGE_SIZE];
    assert_eq!(
        write_e820(&mut page, &memory_map(&[]), &[]),
        Err(ShimError::MemoryMapEmpty)
    );
}

#[test]
fn e820_rejects_more_than_128_entries() {
    let entries: Vec<(u64, u64, u16)> = (0..129u64).map(|i| (i * 2 * MIB, MIB, 0)).collect();
    let mut page = vec![0u8; ZERO_PAGE_SIZE];
    assert_eq!(
        write_e820(&mut page, &memory_map(&entries), &[]),
        Err(ShimError::TooManyE820Entries { limit: 128 })
    );
    let fits: Vec<(u64, u64, u16)> = entries[..128].to_vec();
    assert_eq!(write_e820(&mut page, &memory_map(&fits), &[]), Ok(128));
}

#[test]
fn e820_stops_at_terminator_and_truncated_entry() {
    let mut map = memory_map(&[(0, 64 * MIB, 0)]);
    // An entry after the terminator is ignored, and so is a partial entry at the end.
    map.extend_from_slice(&memory_map(&[(128 * MIB, MIB, 0)]));
    map.extend_from_slice(&[1, 2, 3]);
    let mut page = vec![0u8; ZERO_PAGE_SIZE];
    assert_eq!(write_e820(&mut page, &map, &[]), Ok(1));
    assert_eq!(e820_table(&page), vec![(0, 64 * MIB, E820_RAM)]);
}

// ---- command line and zero-page setters ----

fn terminated(text: &str, size: usize) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(size, 0);
    bytes
}

#[test]
fn command_line_prefers_parameter() {
    let parameter = terminated("console=ttyS0 quiet", 4096);
    let default = terminated("console=hvc0", 4096);
    assert_eq!(
        choose_command_line(&parameter, &default, 2047),
        Ok(CommandLineChoice::Parameter(19))
    );
}

#[test]
fn command_line_falls_back_to_default() {
    let parameter = vec![0u8; 4096];
    let default = terminated("console=ttyS0", 4096);
    assert_eq!(
        choose_command_line(&parameter, &default, 2047),
        Ok(CommandLineChoice::Default(13))
    );
}

#[test]
fn command_line_longer_than_limit_fails() {
    let parameter = terminated(&"x".repeat(300), 4096);
    let default = terminated("", 4096);
    assert_eq!(
        choose_command_line(&parameter, &default, 255),
        Err(ShimError::CommandLineTooLong {
            length: 300,
            limit: 255
        })
    );
    assert_eq!(
        choose_command_line(&parameter, &default, 300),
        Ok(CommandLineChoice::Parameter(300))
    );
}

#[test]
fn command_line_without_nul_fails() {
    let parameter = vec![b'a'; 16];
    assert_eq!(
        choose_command_line(&parameter, &[0], 2047),
        Err(ShimError::CommandLineUnterminated { size: 16 })
    );
}

#[test]
fn setters_write_documented_offsets() {
    let mut page = vec![0u8; ZERO_PAGE_SIZE];
    zero_page::set_command_line(&mut page, 0x1_2345_6789);
    zero_page::set_rsdp(&mut page, 0xf_0000);
    zero_page::set_ramdisk(&mut page, 0x0400_0000, 0x0012_3456);
    assert_eq!(&page[0x228..0x22c], &0x2345_6789u32.to_le_bytes());
    assert_eq!(&page[0x0c8..0x0cc], &1u32.to_le_bytes());
    assert_eq!(&page[0x070..0x078], &0xf_0000u64.to_le_bytes());
    assert_eq!(&page[0x218..0x21c], &0x0400_0000u32.to_le_bytes());
    assert_eq!(&page[0x21c..0x220], &0x0012_3456u32.to_le_bytes());
    assert_eq!(&page[0x0c0..0x0c8], &[0; 8]);
    // Setters on a short slice write nothing and do not panic.
    let mut short = [0u8; 16];
    zero_page::set_rsdp(&mut short, 1);
    assert_eq!(short, [0; 16]);
}

#[test]
fn config_round_trips() {
    let config = ShimConfig {
        kernel_entry: 0x100_0200,
        command_line_limit: 2047,
    };
    let bytes = config.encode();
    assert_eq!(&bytes[..8], b"IGVMLNX1");
    assert_eq!(&bytes[8..16], &0x100_0200u64.to_le_bytes());
    assert_eq!(&bytes[16..20], &2047u32.to_le_bytes());
    assert_eq!(ShimConfig::decode(&bytes), Some(config));
    assert_eq!(ShimConfig::decode(&[0u8; 24]), None);
    assert_eq!(ShimConfig::decode(&bytes[..12]), None);
}

// ---- ACPI table loader ----

/// fw_cfg files held in memory.
struct Files(Vec<(&'static str, Vec<u8>)>);

impl FileSource for Files {
    fn find(&mut self, name: &[u8]) -> Option<FileRef> {
        self.0
            .iter()
            .position(|(file, _)| file.as_bytes() == name)
            .map(|index| FileRef {
                key: index as u16,
                size: self.0[index].1.len() as u32,
            })
    }

    fn read(&mut self, file: FileRef, dest: &mut [u8]) -> bool {
        let data = &self.0[usize::from(file.key)].1;
        dest.copy_from_slice(&data[..dest.len()]);
        true
    }
}

fn name_field(name: &str) -> [u8; 56] {
    let mut field = [0u8; 56];
    field[..name.len()].copy_from_slice(name.as_bytes());
    field
}

fn allocate(file: &str, align: u32, zone: u8) -> Vec<u8> {
    let mut command = vec![0u8; 128];
    command[0..4].copy_from_slice(&1u32.to_le_bytes());
    command[4..60].copy_from_slice(&name_field(file));
    command[60..64].copy_from_slice(&align.to_le_bytes());
    command[64] = zone;
    command
}

fn add_pointer(dest: &str, source: &str, offset: u32, size: u8) -> Vec<u8> {
    let mut command = vec![0u8; 128];
    command[0..4].copy_from_slice(&2u32.to_le_bytes());
    command[4..60].copy_from_slice(&name_field(dest));
    command[60..116].copy_from_slice(&name_field(source));
    command[116..120].copy_from_slice(&offset.to_le_bytes());
    command[120] = size;
    command
}

fn add_checksum(file: &str, result: u32, start: u32, length: u32) -> Vec<u8> {
    let mut command = vec![0u8; 128];
    command[0..4].copy_from_slice(&3u32.to_le_bytes());
    command[4..60].copy_from_slice(&name_field(file));
    command[60..64].copy_from_slice(&result.to_le_bytes());
    command[64..68].copy_from_slice(&start.to_le_bytes());
    command[68..72].copy_from_slice(&length.to_le_bytes());
    command
}

/// Returns a 36-byte RSDP whose XSDT address (offset 24) is an offset into the tables file.
fn rsdp_blob(xsdt_offset: u64) -> Vec<u8> {
    let mut rsdp = vec![0u8; 36];
    rsdp[..8].copy_from_slice(b"RSD PTR ");
    rsdp[15] = 2;
    rsdp[20..24].copy_from_slice(&36u32.to_le_bytes());
    rsdp[24..32].copy_from_slice(&xsdt_offset.to_le_bytes());
    rsdp
}

struct LoaderRun {
    result: Result<Option<u64>, ShimError>,
    high: Vec<u8>,
    fseg: Vec<u8>,
}

const HIGH_BASE: u64 = 0x30000;
const FSEG_BASE: u64 = 0xf0000;

fn run_loader(script: &[Vec<u8>], files: Vec<(&'static str, Vec<u8>)>) -> LoaderRun {
    let script: Vec<u8> = script.concat();
    let mut files = Files(files);
    let mut high_memory = vec![0u8; 0x1000];
    let mut fseg_memory = vec![0u8; 0x100];
    let result = {
        let mut high = Zone::new(HIGH_BASE, &mut high_memory);
        let mut fseg = Zone::new(FSEG_BASE, &mut fseg_memory);
        table_loader::run(&script, &mut files, &mut high, &mut fseg)
            .map(|placement| table_loader::find_rsdp(&placement, &high, &fseg).ok())
    };
    LoaderRun {
        result,
        high: high_memory,
        fseg: fseg_memory,
    }
}

fn standard_files() -> Vec<(&'static str, Vec<u8>)> {
    let mut tables = vec![0u8; 100];
    tables[..4].copy_from_slice(b"XSDT");
    tables[10..20].copy_from_slice(&[7; 10]);
    vec![("etc/acpi/rsdp", rsdp_blob(0)), ("etc/acpi/tables", tables)]
}

#[test]
fn loader_places_links_and_checksums() {
    let run = run_loader(
        &[
            allocate("etc/acpi/tables", 64, 1),
            allocate("etc/acpi/rsdp", 16, 2),
            add_pointer("etc/acpi/rsdp", "etc/acpi/tables", 24, 8),
            add_checksum("etc/acpi/rsdp", 8, 0, 20),
            add_checksum("etc/acpi/tables", 9, 0, 100),
        ],
        standard_files(),
    );
    assert_eq!(run.result, Ok(Some(FSEG_BASE)));
    // The XSDT pointer now contains the address the tables were loaded at.
    assert_eq!(&run.fseg[24..32], &HIGH_BASE.to_le_bytes());
    let sum = |bytes: &[u8]| bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b));
    assert_eq!(sum(&run.fseg[..20]), 0);
    assert_ne!(run.fseg[8], 0);
    assert_eq!(sum(&run.high[..100]), 0);
    assert_eq!(&run.high[..4], b"XSDT");
}

#[test]
fn loader_aligns_each_allocation() {
    let files = vec![
        ("a", vec![1u8; 10]),
        ("b", vec![2u8; 10]),
        ("etc/acpi/rsdp", rsdp_blob(0)),
    ];
    let run = run_loader(
        &[
            allocate("a", 1, 1),
            allocate("b", 0x100, 1),
            allocate("etc/acpi/rsdp", 16, 1),
        ],
        files,
    );
    // "b" starts at the next 256-byte boundary, the RSDP at the next 16-byte one after it.
    assert_eq!(run.result, Ok(Some(HIGH_BASE + 0x110)));
    assert_eq!(&run.high[..10], &[1; 10]);
    assert_eq!(&run.high[0x100..0x10a], &[2; 10]);
    assert_eq!(&run.high[0x110..0x118], b"RSD PTR ");
}

#[test]
fn loader_skips_write_pointer_and_unknown_commands() {
    let mut write_pointer = add_pointer("etc/acpi/rsdp", "etc/acpi/tables", 0, 8);
    write_pointer[0..4].copy_from_slice(&4u32.to_le_bytes());
    let mut unknown = vec![0u8; 128];
    unknown[0] = 0x77;
    let run = run_loader(
        &[
            vec![0u8; 128],
            allocate("etc/acpi/rsdp", 16, 2),
            write_pointer,
            unknown,
        ],
        standard_files(),
    );
    assert_eq!(run.result, Ok(Some(FSEG_BASE)));
}

fn loader_error(script: &[Vec<u8>]) -> (usize, LoaderError) {
    match run_loader(script, standard_files()).result {
        Err(ShimError::TableLoader { command, error }) => (command, error),
        other => panic!("expected a table-loader error, got {other:?}"),
    }
}

fn file_name(name: &str) -> FileName {
    FileName::from_field(name.as_bytes()).unwrap()
}

#[test]
fn loader_rejects_bad_allocations() {
    assert_eq!(
        loader_error(&[allocate("etc/missing", 16, 1)]),
        (
            0,
            LoaderError::FileNotFound {
                name: file_name("etc/missing")
            }
        )
    );
    assert_eq!(
        loader_error(&[allocate("etc/acpi/rsdp", 24, 2)]),
        (
            0,
            LoaderError::InvalidAlignment {
                name: file_name("etc/acpi/rsdp"),
                align: 24
            }
        )
    );
    assert_eq!(
        loader_error(&[allocate("etc/acpi/rsdp", 16, 3)]),
        (
            0,
            LoaderError::InvalidZone {
                name: file_name("etc/acpi/rsdp"),
                zone: 3
            }
        )
    );
    assert_eq!(
        loader_error(&[
            allocate("etc/acpi/rsdp", 16, 2),
            allocate("etc/acpi/rsdp", 16, 2)
        ]),
        (
            1,
            LoaderError::AlreadyAllocated {
                name: file_name("etc/acpi/rsdp")
            }
        )
    );
    // The FSEG zone of the test has 0x100 bytes; the 100-byte tables fit once 64-byte aligned
    // after the RSDP, but not twice.
    assert_eq!(
        loader_error(&[
            allocate("etc/acpi/rsdp", 16, 2),
            allocate("etc/acpi/tables", 128, 2),
            allocate("etc/acpi/tables", 128, 1),
        ]),
        (
            2,
            LoaderError::AlreadyAllocated {
                name: file_name("etc/acpi/tables")
            }
        )
    );
    assert_eq!(
        loader_error(&[
            allocate("etc/acpi/rsdp", 16, 2),
            allocate("etc/acpi/tables", 0x100, 2),
        ]),
        (
            1,
            LoaderError::ZoneFull {
                name: file_name("etc/acpi/tables"),
                size: 100,
                available: 0
            }
        )
    );
}

#[test]
fn loader_rejects_bad_pointers() {
    let setup = || {
        vec![
            allocate("etc/acpi/tables", 64, 1),
            allocate("etc/acpi/rsdp", 16, 2),
        ]
    };
    let mut script = setup();
    script.push(add_pointer("etc/acpi/rsdp", "etc/acpi/tables", 24, 3));
    assert_eq!(
        loader_error(&script),
        (2, LoaderError::InvalidPointerSize { size: 3 })
    );

    let mut script = setup();
    script.push(add_pointer("etc/acpi/rsdp", "etc/acpi/tables", 32, 8));
    assert_eq!(
        loader_error(&script),
        (
            2,
            LoaderError::OutOfFile {
                name: file_name("etc/acpi/rsdp"),
                offset: 32,
                length: 8,
                file_size: 36
            }
        )
    );

    // Offset 0 of the RSDP contains "RSD PTR ", far beyond the 100-byte tables file.
    let mut script = setup();
    script.push(add_pointer("etc/acpi/rsdp", "etc/acpi/tables", 0, 8));
    assert_eq!(
        loader_error(&script),
        (
            2,
            LoaderError::PointerOutOfRange {
                source: file_name("etc/acpi/tables"),
                value: u64::from_le_bytes(*b"RSD PTR ")
            }
        )
    );

    let script = vec![
        allocate("etc/acpi/rsdp", 16, 2),
        add_pointer("etc/acpi/rsdp", "etc/acpi/tables", 24, 8),
    ];
    assert_eq!(
        loader_error(&script),
        (
            1,
            LoaderError::NotAllocated {
                name: file_name("etc/acpi/tables")
            }
        )
    );
}

#[test]
fn loader_rejects_pointer_result_too_wide() {
    // A one-byte pointer of value 0 into a file at 0x30000 cannot hold the result.
    let run = run_loader(
        &[
            allocate("etc/acpi/tables", 64, 1),
            allocate("etc/acpi/rsdp", 16, 2),
            add_pointer("etc/acpi/rsdp", "etc/acpi/tables", 24, 1),
        ],
        standard_files(),
    );
    assert_eq!(
        run.result,
        Err(ShimError::TableLoader {
            command: 2,
            error: LoaderError::PointerOutOfRange {
                source: file_name("etc/acpi/tables"),
                value: 0
            }
        })
    );
}

#[test]
fn loader_rejects_checksum_outside_file() {
    let script = vec![
        allocate("etc/acpi/rsdp", 16, 2),
        add_checksum("etc/acpi/rsdp", 8, 20, 17),
    ];
    assert_eq!(
        loader_error(&script),
        (
            1,
            LoaderError::OutOfFile {
                name: file_name("etc/acpi/rsdp"),
                offset: 20,
                length: 17,
                file_size: 36
            }
        )
    );
    let script = vec![
        allocate("etc/acpi/rsdp", 16, 2),
        add_checksum("etc/acpi/rsdp", 36, 0, 20),
    ];
    assert_eq!(
        loader_error(&script),
        (
            1,
            LoaderError::OutOfFile {
                name: file_name("etc/acpi/rsdp"),
                offset: 36,
                length: 1,
                file_size: 36
            }
        )
    );
}

#[test]
fn loader_rejects_unterminated_name() {
    let mut command = allocate("x", 16, 1);
    command[4..60].copy_from_slice(&[b'a'; 56]);
    assert_eq!(loader_error(&[command]), (0, LoaderError::InvalidFileName));
}

#[test]
fn loader_without_rsdp_reports_missing() {
    let run = run_loader(&[allocate("etc/acpi/tables", 64, 1)], standard_files());
    assert_eq!(run.result, Ok(None));
    let mut files = Files(standard_files());
    let mut high_memory = vec![0u8; 0x100];
    let mut fseg_memory = vec![0u8; 0x100];
    let mut high = Zone::new(HIGH_BASE, &mut high_memory);
    let mut fseg = Zone::new(FSEG_BASE, &mut fseg_memory);
    let placement = table_loader::run(&[], &mut files, &mut high, &mut fseg).unwrap();
    assert_eq!(
        table_loader::find_rsdp(&placement, &high, &fseg),
        Err(ShimError::RsdpMissing)
    );
}

#[test]
fn shim_errors_print_one_line() {
    let error = ShimError::TableLoader {
        command: 3,
        error: LoaderError::FileNotFound {
            name: file_name("etc/acpi/tables"),
        },
    };
    assert_eq!(
        error.to_string(),
        "etc/table-loader command 3: fw_cfg has no file \"etc/acpi/tables\""
    );
    assert_eq!(
        ShimError::CommandLineTooLong {
            length: 3000,
            limit: 2047
        }
        .to_string(),
        "the command line is 3000 characters but the kernel accepts at most 2047"
    );
}

/// Returns the message the shim prints for `error`, written through the shim's byte sink.
fn shim_text(error: &ShimError) -> String {
    let mut bytes = Vec::new();
    error.describe(&mut ByteSink(|byte| bytes.push(byte)));
    String::from_utf8(bytes).unwrap()
}

#[test]
fn shim_text_matches_display() {
    let errors = [
        ShimError::ConfigMissing { gpa: 0x9000 },
        ShimError::ReservedRangeNotRam {
            start: 0x8000,
            end: 0x30000,
        },
        ShimError::FwCfgMissing { port: 0x510 },
        ShimError::FwCfgFileTooLarge {
            name: file_name("etc/table-loader"),
            size: 40000,
            limit: 32768,
        },
        ShimError::TableLoader {
            command: 12,
            error: LoaderError::PointerOutOfRange {
                source: FileName::from_field(b"etc/\x01tables").unwrap(),
                value: u64::MAX,
            },
        },
        ShimError::TableLoader {
            command: 0,
            error: LoaderError::OutOfFile {
                name: file_name("etc/acpi/rsdp"),
                offset: 0,
                length: 8,
                file_size: 0,
            },
        },
    ];
    for error in errors {
        assert_eq!(shim_text(&error), error.to_string());
    }
    assert_eq!(
        shim_text(&errors[4]),
        "etc/table-loader command 12: pointer value 0xffffffffffffffff does not point into \"etc/?tables\" or its result overflows"
    );
    assert_eq!(
        shim_text(&errors[0]),
        "no shim configuration at 0x9000; the IGVM file was not written by igvmm pack --kernel"
    );
}

#[test]
fn number_formatting_matches_core() {
    for value in [
        0,
        1,
        9,
        10,
        0xf,
        0x10,
        0xdead_beef,
        u64::from(u32::MAX),
        u64::MAX,
    ] {
        let mut hex = [0u8; 18];
        assert_eq!(format_hex(value, &mut hex), format!("{value:#x}"));
        let mut decimal = [0u8; 20];
        assert_eq!(format_decimal(value, &mut decimal), value.to_string());
    }
}

// ---- kernels ----

/// Returns a bzImage with one setup sector, boot protocol 2.15, 64-bit entry, relocatable, preferring
/// 16 MiB, with `payload` as its protected-mode kernel.
fn bzimage(payload: &[u8], init_size: u32) -> Vec<u8> {
    let mut image = vec![0u8; 1024];
    image[SETUP_SECTS] = 1;
    image[BOOT_FLAG..BOOT_FLAG + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
    // jmp short over the header: the header ends at 0x202 + 0x6a = 0x26c.
    image[JUMP] = 0xeb;
    image[JUMP + 1] = 0x6a;
    image[HEADER..HEADER + 4].copy_from_slice(b"HdrS");
    image[VERSION..VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
    image[LOADFLAGS] = LOADED_HIGH;
    image[CODE32_START..CODE32_START + 4].copy_from_slice(&0x10_0000u32.to_le_bytes());
    image[INITRD_ADDR_MAX..INITRD_ADDR_MAX + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    image[KERNEL_ALIGNMENT..KERNEL_ALIGNMENT + 4].copy_from_slice(&0x20_0000u32.to_le_bytes());
    image[RELOCATABLE_KERNEL] = 1;
    image[XLOADFLAGS..XLOADFLAGS + 2].copy_from_slice(&1u16.to_le_bytes());
    image[CMDLINE_SIZE..CMDLINE_SIZE + 4].copy_from_slice(&2048u32.to_le_bytes());
    image[PREF_ADDRESS..PREF_ADDRESS + 8].copy_from_slice(&0x100_0000u64.to_le_bytes());
    image[INIT_SIZE..INIT_SIZE + 4].copy_from_slice(&init_size.to_le_bytes());
    image.extend_from_slice(payload);
    image
}

/// Returns an ELF64 x86-64 executable with one PT_LOAD segment of `code` at physical `paddr` and
/// virtual `vaddr`, `bss` zero bytes after it, and its entry at `entry`.
fn elf(code: &[u8], paddr: u64, vaddr: u64, bss: u64, entry: u64) -> Vec<u8> {
    let mut file = vec![0u8; 0x1000];
    file[..4].copy_from_slice(b"\x7fELF");
    file[4] = 2;
    file[5] = 1;
    file[6] = 1;
    file[16..18].copy_from_slice(&2u16.to_le_bytes());
    file[18..20].copy_from_slice(&62u16.to_le_bytes());
    file[20..24].copy_from_slice(&1u32.to_le_bytes());
    file[24..32].copy_from_slice(&entry.to_le_bytes());
    file[32..40].copy_from_slice(&64u64.to_le_bytes());
    file[52..54].copy_from_slice(&64u16.to_le_bytes());
    file[54..56].copy_from_slice(&56u16.to_le_bytes());
    file[56..58].copy_from_slice(&1u16.to_le_bytes());
    let header = &mut file[64..120];
    header[0..4].copy_from_slice(&1u32.to_le_bytes());
    header[4..8].copy_from_slice(&5u32.to_le_bytes());
    header[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
    header[16..24].copy_from_slice(&vaddr.to_le_bytes());
    header[24..32].copy_from_slice(&paddr.to_le_bytes());
    header[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    header[40..48].copy_from_slice(&(code.len() as u64 + bss).to_le_bytes());
    header[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
    file.extend_from_slice(code);
    file
}

#[test]
fn bzimage_loads_at_preferred_address() {
    let payload = vec![0x90u8; 0x3000];
    let file = bzimage(&payload, 0x80_0000);
    let kernel = read_kernel(&file).unwrap();
    assert_eq!(kernel.format, KernelFormat::BzImage { protocol: 0x020f });
    assert_eq!(kernel.load_address, 0x100_0000);
    assert_eq!(kernel.entry, 0x100_0200);
    assert_eq!(kernel.start, 0x100_0000);
    assert_eq!(kernel.end, 0x180_0000);
    assert_eq!(kernel.pieces.len(), 1);
    assert_eq!(kernel.pieces[0].gpa, 0x100_0000);
    assert_eq!(kernel.pieces[0].data, &payload[..]);
    assert_eq!(kernel.setup_header.unwrap(), &file[0x1f1..0x26c]);
    assert_eq!(kernel.command_line_limit, 2048);
    assert_eq!(kernel.initrd_addr_max, 0x7fff_ffff);
}

#[test]
fn bzimage_not_relocatable_loads_at_code32_start() {
    let mut file = bzimage(&[0xcc; 0x100], 0x40_0000);
    file[RELOCATABLE_KERNEL] = 0;
    let kernel = read_kernel(&file).unwrap();
    assert_eq!(kernel.load_address, 0x10_0000);
    assert_eq!(kernel.entry, 0x10_0200);
    // It moves itself to pref_address and needs init_size from there.
    assert_eq!(kernel.start, 0x10_0000);
    assert_eq!(kernel.end, 0x140_0000);
}

#[test]
fn bzimage_rejections() {
    let mut old = bzimage(&[0; 16], 0);
    old[VERSION..VERSION + 2].copy_from_slice(&0x020au16.to_le_bytes());
    assert_eq!(
        read_kernel(&old),
        Err(LinuxPackError::BootProtocolTooOld { protocol: 0x020a })
    );
    let mut no_64 = bzimage(&[0; 16], 0);
    no_64[XLOADFLAGS] = 0;
    assert_eq!(
        read_kernel(&no_64),
        Err(LinuxPackError::No64BitEntry { xloadflags: 0 })
    );
    let mut zimage = bzimage(&[0; 16], 0);
    zimage[LOADFLAGS] = 0;
    assert_eq!(
        read_kernel(&zimage),
        Err(LinuxPackError::NotBzImage { loadflags: 0 })
    );
    let header_only = bzimage(&[], 0);
    assert_eq!(
        read_kernel(&header_only),
        Err(LinuxPackError::TruncatedKernel {
            size: 1024,
            needed: 1025
        })
    );
    assert_eq!(
        read_kernel(&[0u8; 300]),
        Err(LinuxPackError::UnknownKernelFormat { size: 300 })
    );
}

#[test]
fn elf_entry_converted_to_physical() {
    let code = vec![0xf4u8; 0x2000];
    let file = elf(
        &code,
        0x100_0000,
        0xffff_ffff_8100_0000,
        0x5000,
        0xffff_ffff_8100_0010,
    );
    let kernel = read_kernel(&file).unwrap();
    assert_eq!(kernel.format, KernelFormat::Elf);
    assert_eq!(kernel.entry, 0x100_0010);
    assert_eq!(kernel.start, 0x100_0000);
    assert_eq!(kernel.end, 0x100_7000);
    assert_eq!(kernel.setup_header, None);
    assert_eq!(kernel.command_line_limit, 2047);

    // A physical e_entry, as Linux links vmlinux (ENTRY(phys_startup_64)), stays as it is.
    let file = elf(&code, 0x100_0000, 0xffff_ffff_8100_0000, 0, 0x100_0000);
    assert_eq!(read_kernel(&file).unwrap().entry, 0x100_0000);
}

#[test]
fn elf_rejections() {
    let low = elf(&[0; 16], 0x8_0000, 0x8_0000, 0, 0x8_0000);
    assert_eq!(
        read_kernel(&low),
        Err(LinuxPackError::KernelBelowOneMiB { gpa: 0x8_0000 })
    );
    let outside = elf(&[0; 16], 0x100_0000, 0x100_0000, 0, 0x200_0000);
    assert_eq!(
        read_kernel(&outside),
        Err(LinuxPackError::EntryOutsideKernel {
            entry: 0x200_0000,
            start: 0x100_0000,
            end: 0x100_0010
        })
    );
    let mut arm = elf(&[0; 16], 0x100_0000, 0x100_0000, 0, 0x100_0000);
    arm[18] = 183;
    assert!(matches!(
        read_kernel(&arm),
        Err(LinuxPackError::Elf(ElfError::NotX86_64Executable {
            machine: 183,
            ..
        }))
    ));
    let truncated = elf(&[0; 16], 0x100_0000, 0x100_0000, 0, 0x100_0000);
    assert_eq!(
        read_kernel(&truncated[..0x1008]),
        Err(LinuxPackError::Elf(ElfError::InvalidSegment { index: 0 }))
    );
    assert_eq!(
        read_kernel(&truncated[..40]),
        Err(LinuxPackError::Elf(ElfError::Truncated))
    );
}

// ---- the IGVM file ----

fn host(command_line: &str) -> HostDescription {
    HostDescription {
        memory_map: vec![
            MemoryRegion {
                base: 0,
                size: 256 * MIB,
                kind: MemoryKind::Ram,
            },
            MemoryRegion {
                base: 0xfeff_c000,
                size: 0x4000,
                kind: MemoryKind::Reserved,
            },
        ],
        vp_count: 2,
        command_line: command_line.to_string(),
        mmio_ranges: Vec::new(),
        madt: Vec::new(),
        srat: Vec::new(),
        slit: Vec::new(),
        pptt: Vec::new(),
    }
}

fn load_native<'f>(file: &'f [u8], command_line: &str) -> Plan<'f> {
    load(
        file,
        &LoadOptions {
            choice: PlatformChoice::Exact(Platform::Native),
            host: host(command_line),
            relocation_base: None,
        },
    )
    .unwrap()
}

/// Returns the 4 KiB page a plan places at `gpa`, or `None` when no operation covers it.
fn page_at(plan: &Plan, gpa: u64) -> Option<Vec<u8>> {
    let op = plan
        .operations
        .iter()
        .find(|op| op.gpa <= gpa && gpa < op.gpa + op.size)?;
    let mut page = vec![0u8; PAGE_SIZE as usize];
    if let PageData::Bytes(bytes) = &op.data {
        let offset = (gpa - op.gpa) as usize;
        let available = bytes.len().saturating_sub(offset).min(page.len());
        page[..available].copy_from_slice(&bytes[offset..offset + available]);
    }
    Some(page)
}

fn pack(kernel: Vec<u8>, initrd: Option<Vec<u8>>, command_line: &str) -> PackedKernel {
    pack_kernel_with_layout(&KernelPackOptions {
        kernel,
        initrd,
        command_line: command_line.to_string(),
    })
    .unwrap()
}

#[test]
fn packed_bzimage_layout() {
    let payload: Vec<u8> = (0..0x2100u32).map(|i| (i % 251) as u8).collect();
    let kernel = bzimage(&payload, 0x40_0000);
    let initrd: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8 + 1).collect();
    let packed = pack(kernel.clone(), Some(initrd.clone()), "console=ttyS0");
    assert_eq!(
        packed.layout,
        KernelLayout {
            format: KernelFormat::BzImage { protocol: 0x020f },
            entry: 0x100_0200,
            kernel_start: 0x100_0000,
            kernel_end: 0x140_0000,
            initrd: Some((0x140_0000, 5000)),
            command_line_limit: 2048,
        }
    );

    let plan = load_native(&packed.igvm, "");
    let zero = page_at(&plan, ZERO_PAGE_GPA).unwrap();
    // The setup header comes from the bzImage; the loader fields from the packer.
    assert_eq!(&zero[0x1f1..0x210], &kernel[0x1f1..0x210]);
    assert_eq!(zero[TYPE_OF_LOADER], 0xff);
    assert_eq!(&zero[0x211..0x214], &kernel[0x211..0x214]);
    assert_eq!(get_u32(&zero, CODE32_START), 0x100_0000);
    assert_eq!(get_u32(&zero, RAMDISK_IMAGE), 0x140_0000);
    assert_eq!(get_u32(&zero, RAMDISK_SIZE), 5000);
    assert_eq!(&zero[0x220..0x26c], &kernel[0x220..0x26c]);
    // The shim fills the rest at run time.
    assert_eq!(zero[E820_ENTRIES], 0);
    assert_eq!(get_u32(&zero, CMD_LINE_PTR), 0);
    assert_eq!(get_u64(&zero, ACPI_RSDP_ADDR), 0);
    assert_eq!(zero[SENTINEL], 0);

    let config = ShimConfig::decode(&page_at(&plan, CONFIG_GPA).unwrap()).unwrap();
    assert_eq!(config.kernel_entry, 0x100_0200);
    assert_eq!(config.command_line_limit, 2048);

    let default = page_at(&plan, DEFAULT_COMMAND_LINE_GPA).unwrap();
    assert_eq!(&default[..14], b"console=ttyS0\0");

    assert_eq!(&page_at(&plan, 0x100_0000).unwrap()[..], &payload[..0x1000]);
    assert_eq!(
        &page_at(&plan, 0x100_2000).unwrap()[..0x100],
        &payload[0x2000..]
    );
    assert_eq!(&page_at(&plan, 0x140_1000).unwrap()[..904], &initrd[4096..]);
    assert!(page_at(&plan, 0x100_3000).is_none());

    // The kernel's working memory is required RAM.
    assert_eq!(plan.required_memory.len(), 1);
    assert_eq!(plan.required_memory[0].start, 0x100_0000);
    assert_eq!(plan.required_memory[0].size, 0x40_0000);
}

#[test]
fn packed_file_starts_shim_in_long_mode() {
    let packed = pack(bzimage(&[0xf4; 16], 0x10_0000), None, "");
    let plan = load_native(&packed.igvm, "");
    assert_eq!(plan.platform, Platform::Native);
    assert_eq!(plan.vp_contexts.len(), 1);
    let VpState::Native(context) = &plan.vp_contexts[0].state else {
        panic!("expected a native VP context");
    };
    let (shim, entry) = shim_image::SHIM.unwrap();
    assert_eq!(context.rip, entry);
    assert_eq!(context.rsp, STACK_TOP - 8);
    assert_eq!(context.code_selector, 0x10);
    assert_eq!(context.data_selector, 0x18);
    assert_eq!(context.cr3, PAGE_TABLES_GPA);
    assert_eq!(context.efer & 0x500, 0x500);
    assert_eq!(context.rflags & 0x200, 0);

    let gdt = page_at(&plan, GDT_GPA).unwrap();
    assert_eq!(&gdt[0x10..0x18], &0x00af_9b00_0000_ffffu64.to_le_bytes());
    assert_eq!(&gdt[0x18..0x20], &0x00cf_9300_0000_ffffu64.to_le_bytes());

    let tables = page_at(&plan, PAGE_TABLES_GPA + 2 * PAGE_SIZE).unwrap();
    assert_eq!(get_u64(&tables, 8), 0x20_0000 | 0x83);
    let last_directory = page_at(&plan, PAGE_TABLES_GPA + 5 * PAGE_SIZE).unwrap();
    assert_eq!(get_u64(&last_directory, 511 * 8), 0xffe0_0000 | 0x83);

    assert_eq!(
        &page_at(&plan, SHIM_IMAGE_GPA).unwrap()[..],
        &shim[..0x1000]
    );
    // No initrd: the ramdisk fields stay zero.
    let zero = page_at(&plan, ZERO_PAGE_GPA).unwrap();
    assert_eq!(get_u32(&zero, RAMDISK_IMAGE), 0);
}

#[test]
fn packed_parameter_area_holds_map_and_command_line() {
    let packed = pack(bzimage(&[0xf4; 16], 0x10_0000), None, "default");
    let plan = load_native(&packed.igvm, "console=ttyS0 loglevel=8");
    let parameter_ops: Vec<_> = plan
        .operations
        .iter()
        .filter(|op| matches!(op.kind, PageKind::Parameter { area_index: 0 }))
        .collect();
    assert_eq!(parameter_ops.len(), 2);
    assert_eq!(parameter_ops[0].gpa, PARAMETER_AREA_GPA);
    let map = page_at(&plan, PARAMETER_AREA_GPA).unwrap();
    // First entry: page 0, 256 MiB of pages, type MEMORY.
    assert_eq!(get_u64(&map, 0), 0);
    assert_eq!(get_u64(&map, 8), 256 * MIB / PAGE_SIZE);
    let command_line = page_at(&plan, PARAMETER_AREA_GPA + COMMAND_LINE_OFFSET).unwrap();
    assert_eq!(&command_line[..25], b"console=ttyS0 loglevel=8\0");

    // What the shim computes from these pages.
    let mut zero = page_at(&plan, ZERO_PAGE_GPA).unwrap();
    let count = write_e820(&mut zero, &map, &SHIM_RESERVED_RANGES).unwrap();
    assert_eq!(count, 7);
    let default = page_at(&plan, DEFAULT_COMMAND_LINE_GPA).unwrap();
    assert_eq!(
        choose_command_line(&command_line, &default, packed.layout.command_line_limit),
        Ok(CommandLineChoice::Parameter(24))
    );
}

#[test]
fn packed_elf_layout() {
    let code = vec![0xf4u8; 0x1800];
    let kernel = elf(
        &code,
        0x100_0000,
        0xffff_ffff_8100_0000,
        0x10_0000,
        0x100_0000,
    );
    let packed = pack(kernel, Some(vec![1; 10]), "");
    assert_eq!(packed.layout.format, KernelFormat::Elf);
    assert_eq!(packed.layout.kernel_end, 0x110_1800);
    assert_eq!(packed.layout.initrd, Some((0x120_0000, 10)));
    let plan = load_native(&packed.igvm, "");
    let zero = page_at(&plan, ZERO_PAGE_GPA).unwrap();
    assert_eq!(get_u16(&zero, BOOT_FLAG), 0xaa55);
    assert_eq!(get_u32(&zero, HEADER), 0x5372_6448);
    assert_eq!(zero[TYPE_OF_LOADER], 0xff);
    assert_eq!(get_u32(&zero, CMDLINE_SIZE), 2047);
    assert_eq!(get_u32(&zero, RAMDISK_IMAGE), 0x120_0000);
    assert_eq!(
        &page_at(&plan, 0x100_1000).unwrap()[..0x800],
        &code[0x1000..]
    );
}

#[test]
fn pack_rejects_bad_command_lines() {
    let options = |command_line: String| KernelPackOptions {
        kernel: bzimage(&[0xf4; 16], 0x10_0000),
        initrd: None,
        command_line,
    };
    assert_eq!(
        pack_kernel(&options("a".repeat(2049))),
        Err(LinuxPackError::CommandLineTooLong {
            length: 2049,
            limit: 2048
        })
    );
    assert_eq!(
        pack_kernel(&options("a\0b".to_string())),
        Err(LinuxPackError::CommandLineHasNul { offset: 1 })
    );
    assert!(pack_kernel(&options("a".repeat(2048))).is_ok());
}

#[test]
fn pack_rejects_initrd_above_limit() {
    let mut kernel = bzimage(&[0xf4; 16], 0x10_0000);
    kernel[INITRD_ADDR_MAX..INITRD_ADDR_MAX + 4].copy_from_slice(&0x120_0000u32.to_le_bytes());
    let result = pack_kernel(&KernelPackOptions {
        kernel,
        initrd: Some(vec![1; 0x1000]),
        command_line: String::new(),
    });
    assert_eq!(
        result,
        Err(LinuxPackError::InitrdTooHigh {
            start: 0x120_0000,
            end: 0x120_1000,
            limit: 0x120_0000
        })
    );
}
