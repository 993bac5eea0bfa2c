//! Page placement: a 2 MiB page, a relocated image, and headers a loader must skip or reject.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use iced_x86::code_asm::*;
use igvmm_tests::asm::{GuestAsm, Mode};
use igvmm_tests::guest;
use igvmm_tests::harness::{boot, debug_exit, VmConfig};
use igvmm_tests::igvm_file::{
    PageTableRelocation, RelocatableRegion, PAGE_SIZE_2M, UNKNOWN_OPTIONAL_HEADER,
};
use igvmm_tests::layout::{self, PAGE_TABLE_BYTES, PML4_GPA};

/// GPA of the 2 MiB page.
const LARGE_PAGE_GPA: u64 = 0x200_0000;

/// Returns the 2 MiB of data the large page carries: a pattern that differs in every 4 KiB page, so a
/// page placed at the wrong offset shows.
fn large_page_data() -> Vec<u8> {
    (0..PAGE_SIZE_2M as u32)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 12) ^ 0x5a) as u8)
        .collect()
}

fn qword_at(data: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(data.get(offset..offset + 8).unwrap().try_into().unwrap())
}

/// Offsets the guest reads in the large page: the start, the second and the 300th 4 KiB page,
/// and the last qword.
const LARGE_PAGE_PROBES: [(&str, u64); 4] = [
    ("first", 0),
    ("second_page", 0x1008),
    ("middle", 0x12_c010),
    ("last", PAGE_SIZE_2M - 8),
];

#[test]
fn page_2mb_contents() {
    let mut g = GuestAsm::new(Mode::Long).unwrap();
    for (label, offset) in LARGE_PAGE_PROBES {
        g.print(label).unwrap();
        g.print("=").unwrap();
        g.a.mov(rsi, LARGE_PAGE_GPA + offset).unwrap();
        g.a.mov(rax, qword_ptr(rsi)).unwrap();
        g.print_hex64(rax, 16).unwrap();
        g.print("\n").unwrap();
    }
    g.exit(0).unwrap();

    let data = large_page_data();
    let mut builder = guest::image(Mode::Long, &guest::assemble(g).unwrap());
    builder.page_2mb(LARGE_PAGE_GPA, &data);
    let outcome = boot(&builder.build().unwrap(), &VmConfig::default()).unwrap();
    let expected: String = LARGE_PAGE_PROBES
        .iter()
        .map(|(label, offset)| format!("{label}={:016x}\n", qword_at(&data, *offset as usize)))
        .collect();
    assert_eq!(outcome.text(), expected);
    assert_eq!(outcome.stop, debug_exit(0));
}

#[test]
fn page_2mb_zero() {
    // A 2 MiB page without file data is 2 MiB of zeros.
    let mut g = GuestAsm::new(Mode::Long).unwrap();
    g.a.mov(rsi, LARGE_PAGE_GPA + PAGE_SIZE_2M - 8).unwrap();
    g.a.mov(rax, qword_ptr(rsi)).unwrap();
    g.print("last=").unwrap();
    g.print_hex64(rax, 16).unwrap();
    g.print("\n").unwrap();
    g.exit(0).unwrap();
    let mut builder = guest::image(Mode::Long, &guest::assemble(g).unwrap());
    builder.page_2mb(LARGE_PAGE_GPA, &[]);
    let outcome = boot(&builder.build().unwrap(), &VmConfig::default()).unwrap();
    assert_eq!(outcome.text(), "last=0000000000000000\n");
    assert_eq!(outcome.stop, debug_exit(0));
}

/// Region the relocatable program is built for, and the only base it may move to.
const RELOCATABLE_GPA: u64 = 0x20_0000;
const RELOCATED_GPA: u64 = 0x60_0000;

#[test]
fn relocation_moves_rip() {
    // The file allows exactly one base, which is not the one it was built for. igvmm passes
    // no base, so the loader must pick that one, and the guest prints the new address.
    let outcome = boot(&relocatable_file(), &VmConfig::default()).unwrap();
    assert_eq!(outcome.text(), format!("rip={RELOCATED_GPA:016x}\n"));
    assert_eq!(outcome.stop, debug_exit(0));
}

/// Builds the relocation test's file, whose program prints the address of its first
/// instruction.
fn relocatable_file() -> Vec<u8> {
    let mut g = GuestAsm::new(Mode::Long).unwrap();
    let mut start = g.a.create_label();
    g.a.set_label(&mut start).unwrap();
    g.a.lea(rax, ptr(start)).unwrap();
    g.print("rip=").unwrap();
    g.print_hex64(rax, 16).unwrap();
    g.print("\n").unwrap();
    g.exit(0).unwrap();
    let code = g.assemble(RELOCATABLE_GPA).unwrap();

    let mut builder = igvmm_tests::igvm_file::IgvmBuilder::new();
    builder
        .page_data(layout::GDT_GPA, &layout::gdt())
        .page_data(PML4_GPA, &layout::identity_page_tables(PML4_GPA))
        .page_data(RELOCATABLE_GPA, &code)
        .vp_context(0, layout::long_mode_context(RELOCATABLE_GPA, PML4_GPA))
        .relocatable_region(RelocatableRegion {
            gpa: RELOCATABLE_GPA,
            size: PAGE_SIZE_2M,
            alignment: PAGE_SIZE_2M,
            minimum_gpa: RELOCATED_GPA,
            // The maximum is the highest address the region may reach, so this allows one base.
            maximum_gpa: RELOCATED_GPA + PAGE_SIZE_2M,
            apply_rip_offset: true,
            apply_gdtr_offset: false,
            vp_index: 0,
        })
        .page_table_relocation(PageTableRelocation {
            gpa: PML4_GPA,
            size: PAGE_TABLE_BYTES,
            used_size: PAGE_TABLE_BYTES,
            vp_index: 0,
        });
    builder.build().unwrap()
}

#[test]
fn relocation_plan_moves_region() {
    // The loader alone, asked for the only base the file allows.
    let options = igvm_loader::LoadOptions {
        choice: igvm_loader::host::PlatformChoice::Exact(igvm_loader::plan::Platform::Native),
        host: igvmm_tests::harness::host_description(&VmConfig::default()).unwrap(),
        relocation_base: Some(RELOCATED_GPA),
    };
    let file = relocatable_file();
    let plan = igvm_loader::load(&file, &options).unwrap();
    let rip = match plan.vp_contexts.first().map(|vp| &vp.state) {
        Some(igvm_loader::plan::VpState::Native(context)) => context.rip,
        other => panic!("expected a native VP context, got {other:?}"),
    };
    assert_eq!(rip, RELOCATED_GPA);
    let code_ops: Vec<u64> = plan
        .operations
        .iter()
        .map(|op| op.gpa)
        .filter(|gpa| (RELOCATED_GPA..RELOCATED_GPA + PAGE_SIZE_2M).contains(gpa))
        .collect();
    assert_eq!(code_ops, vec![RELOCATED_GPA]);
    assert!(
        !plan
            .operations
            .iter()
            .any(|op| (RELOCATABLE_GPA..RELOCATABLE_GPA + PAGE_SIZE_2M).contains(&op.gpa)),
        "a page stayed at the file's base"
    );

    // The first page directory follows the PML4 and the PDPT. The 2 MiB entry that mapped the
    // file's base is gone; the identity entry for the new base was already there.
    let pd_gpa = PML4_GPA + 0x2000;
    let pd = plan
        .operations
        .iter()
        .find(|op| op.gpa == pd_gpa)
        .and_then(|op| op.pages_4k().next())
        .and_then(|page| page.bytes)
        .expect("the page directory is imported with data");
    let pd_entry = |index: usize| qword_at(pd, index * 8);
    let large_page = 0x83;
    assert_eq!(pd_entry(0), large_page);
    assert_eq!(pd_entry((RELOCATABLE_GPA / PAGE_SIZE_2M) as usize), 0);
    assert_eq!(
        pd_entry((RELOCATED_GPA / PAGE_SIZE_2M) as usize),
        RELOCATED_GPA | large_page
    );
}

fn hello_builder() -> igvmm_tests::igvm_file::IgvmBuilder {
    let code = guest::assemble({
        let mut g = GuestAsm::new(Mode::Long).unwrap();
        g.print("still here\n").unwrap();
        g.exit(0).unwrap();
        g
    })
    .unwrap();
    guest::image(Mode::Long, &code)
}

#[test]
fn unknown_optional_header_skipped() {
    // (position among the variable headers, type): a directive-range type between the GDT
    // page and the page tables, an initialization-range type right after the platform header,
    // a directive-range type after the last header, and a type outside every range.
    let count = igvmm_tests::igvm_file::header_spans(&hello_builder().build().unwrap())
        .unwrap()
        .len();
    let cases = [
        (2, UNKNOWN_OPTIONAL_HEADER),
        (1, igvm_defs::IGVM_VHT_OPTIONAL_BIT | 0x1ff),
        (count, UNKNOWN_OPTIONAL_HEADER),
        (2, igvm_defs::IGVM_VHT_OPTIONAL_BIT | 0xfff),
    ];
    for (position, header_type) in cases {
        let mut builder = hello_builder();
        builder.raw_header(position, header_type, b"ignore this header body");
        let outcome = boot(&builder.build().unwrap(), &VmConfig::default())
            .unwrap_or_else(|error| panic!("type {header_type:#x} at {position}: {error}"));
        assert_eq!(
            outcome.text(),
            "still here\n",
            "type {header_type:#x} at {position}"
        );
        assert_eq!(
            outcome.stop,
            debug_exit(0),
            "type {header_type:#x} at {position}"
        );
    }
}

#[test]
fn unknown_required_header_rejected() {
    let mut builder = hello_builder();
    // The same header without the optional bit must stop the load, not be skipped.
    builder.raw_header(
        2,
        UNKNOWN_OPTIONAL_HEADER & !igvm_defs::IGVM_VHT_OPTIONAL_BIT,
        b"x",
    );
    let result = boot(&builder.build().unwrap(), &VmConfig::default());
    let error = result.expect_err("a file with an unknown required header must not boot");
    let message = error.to_string();
    assert!(
        message.contains("0x3ff"),
        "error names the header type: {message}"
    );
}
