//! Page data operations: 4 KiB and 2 MiB pages, flags and empty pages.

use igvm_defs::IgvmPageDataType;

use super::fixtures::*;
use crate::builder::{IgvmBuilder, PageSpec};
use crate::host::PlatformChoice;
use crate::load::load;
use crate::plan::{PageData, PageKind, Platform, PAGE_SIZE_2M, PAGE_SIZE_4K};

#[test]
fn large_pages_become_2m_operations() {
    let mut data = vec![0u8; PAGE_SIZE_2M as usize];
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = (i / PAGE_SIZE_4K as usize) as u8;
    }
    let mut builder = IgvmBuilder::native();
    builder
        .page(PageSpec {
            size: PAGE_SIZE_2M,
            ..PageSpec::normal(0x20_0000, &data)
        })
        .unwrap();
    builder
        .page(PageSpec {
            size: PAGE_SIZE_2M,
            ..PageSpec::normal(0x40_0000, &[])
        })
        .unwrap();
    builder.pages(0x60_0000, &[9; 10]).unwrap();
    let file = builder.build().unwrap();
    let plan = load(&file, &native_options()).unwrap();

    let shape: Vec<(u64, u64, PageKind)> = plan
        .operations
        .iter()
        .map(|op| (op.gpa, op.size, op.kind))
        .collect();
    assert_eq!(
        shape,
        vec![
            (0x20_0000, PAGE_SIZE_2M, PageKind::Normal),
            (0x40_0000, PAGE_SIZE_2M, PageKind::Normal),
            (0x60_0000, PAGE_SIZE_4K, PageKind::Normal),
        ]
    );
    assert_eq!(
        plan.operations[0].data,
        PageData::Bytes(data.clone().into())
    );
    assert_eq!(plan.operations[1].data, PageData::Zero);

    let pages: Vec<_> = plan.operations[0].pages_4k().collect();
    assert_eq!(pages.len(), 512);
    assert_eq!(pages[1].gpa, 0x20_1000);
    assert_eq!(pages[1].bytes, Some(&data[0x1000..0x2000]));
    assert_eq!(pages[511].bytes.unwrap()[0], 255);
    assert!(plan.operations[1]
        .pages_4k()
        .all(|page| page.bytes.is_none()));

    let mut expected_small = vec![9u8; 10];
    expected_small.resize(PAGE_SIZE_4K as usize, 0);
    assert_eq!(
        plan.operations[2].data,
        PageData::Bytes(expected_small.into())
    );
}

#[test]
fn flags_and_types_map_to_kinds() {
    let mut builder = IgvmBuilder::new();
    builder.platform(Platform::SevSnp, 0x1, 0).unwrap();
    builder
        .page(PageSpec {
            unmeasured: true,
            ..PageSpec::normal(0x1000, &[1])
        })
        .unwrap();
    builder
        .page(PageSpec {
            shared: true,
            ..PageSpec::normal(0x2000, &[2])
        })
        .unwrap();
    for (gpa, data_type) in [
        (0x3000, IgvmPageDataType::SECRETS),
        (0x4000, IgvmPageDataType::CPUID_DATA),
        (0x5000, IgvmPageDataType::CPUID_XF),
    ] {
        builder
            .page(PageSpec {
                data_type,
                ..PageSpec::normal(gpa, &[])
            })
            .unwrap();
    }
    builder.pages(0x6000, &[0; 8]).unwrap();
    let file = builder.build().unwrap();
    let plan = load(
        &file,
        &options(PlatformChoice::Exact(Platform::SevSnp), host_512m()),
    )
    .unwrap();
    let kinds: Vec<PageKind> = plan.operations.iter().map(|op| op.kind).collect();
    assert_eq!(
        kinds,
        vec![
            PageKind::Unmeasured,
            PageKind::Shared,
            PageKind::Secrets,
            PageKind::Cpuid,
            PageKind::CpuidXf,
            PageKind::Normal,
        ]
    );
    // All-zero data is written as an empty page and comes back as a zero page.
    assert_eq!(plan.operations[5].data, PageData::Zero);
}
