//! The firmware image and general builders.

use super::fixtures::*;
use crate::builder::{
    firmware_image, BuildError, IgvmBuilder, PageSpec, REAL_MODE_CODE_ATTRIBUTES,
    REAL_MODE_DATA_ATTRIBUTES,
};
use crate::host::{MemoryKind, MemoryRegion};
use crate::inspect::{summarize, CpuMode};
use crate::load::load;
use crate::plan::{PageData, PageKind, VpState, PAGE_SIZE_4K};

/// A 192 KiB image whose every 4 KiB page starts with its page number; the last page is the
/// reset vector page, and page 5 is all zeros.
fn firmware() -> Vec<u8> {
    let mut image = vec![0u8; 192 << 10];
    for (page, chunk) in image.chunks_mut(PAGE_SIZE_4K as usize).enumerate() {
        if page != 5 {
            chunk[0] = page as u8 + 1;
        }
    }
    image
}

#[test]
fn firmware_image_maps_top_of_4g_and_legacy_window() {
    let image = firmware();
    let file = firmware_image(&image).unwrap();

    // RAM below 3 GiB plus a RAM window for the flash below 4 GiB.
    let mut options = native_options();
    options.host.memory_map.push(MemoryRegion {
        base: 0xFFFD_0000,
        size: 0x3_0000,
        kind: MemoryKind::Ram,
    });
    options.host.mmio_ranges = vec![(0xC000_0000, 0x3000_0000)];
    let plan = load(&file, &options).unwrap();

    // 48 pages at the top of 4 GiB, then the last 32 again below 1 MiB.
    assert_eq!(plan.operations.len(), 48 + 32);
    let top = &plan.operations[..48];
    assert_eq!(top[0].gpa, 0xFFFD_0000);
    assert_eq!(top[47].gpa, 0xFFFF_F000);
    assert_eq!(top[47].gpa + top[47].size - 1, 0xFFFF_FFFF);
    assert_eq!(top[5].data, PageData::Zero);
    let PageData::Bytes(last) = &top[47].data else {
        panic!("reset vector page has no bytes");
    };
    assert_eq!(last[..], image[image.len() - 0x1000..]);

    let low = &plan.operations[48..];
    assert_eq!(low[0].gpa, 0xE_0000);
    assert_eq!(low[31].gpa, 0xF_F000);
    assert_eq!(low[0].data, top[16].data);
    assert_eq!(low[31].data, top[47].data);
    assert!(plan.operations.iter().all(|op| op.kind == PageKind::Normal));

    assert_eq!(plan.vp_contexts.len(), 1);
    let VpState::Native(context) = &plan.vp_contexts[0].state else {
        panic!("expected a native context");
    };
    assert_eq!(context.code_selector, 0xF000);
    assert_eq!(context.code_base, 0xFFFF_0000);
    assert_eq!(context.code_limit, 0xFFFF);
    assert_eq!(context.code_attributes, REAL_MODE_CODE_ATTRIBUTES);
    assert_eq!(context.data_base, 0);
    assert_eq!(context.data_limit, 0xFFFF);
    assert_eq!(context.data_attributes, REAL_MODE_DATA_ATTRIBUTES);
    assert_eq!(context.rip, 0xFFF0);
    assert_eq!(context.rflags, 0x2);
    assert_eq!(context.cr0, 0x6000_0010);

    let summary = summarize(&file).unwrap();
    assert_eq!(summary.vp_contexts[0].mode, CpuMode::Real);
    assert_eq!(summary.platforms[0].platform_type, "native");
}

#[test]
fn firmware_image_size_is_checked() {
    for size in [0, 0x1800, (16 << 20) + 0x1000] {
        assert_eq!(
            firmware_image(&vec![1; size]).unwrap_err(),
            BuildError::InvalidFirmwareSize { size }
        );
    }
    // A small image is copied whole so that it ends at 1 MiB.
    let file = firmware_image(&[7; 0x2000]).unwrap();
    let summary = summarize(&file).unwrap();
    assert_eq!(summary.header_counts.get("PageData"), Some(&4));
}

#[test]
fn builder_rejects_bad_pages() {
    let mut builder = IgvmBuilder::native();
    assert_eq!(
        builder
            .page(PageSpec::normal(0x1000, &[0; 0x1001]))
            .unwrap_err(),
        BuildError::DataTooLarge {
            gpa: 0x1000,
            size: 0x1001,
            page_size: 0x1000
        }
    );
    assert_eq!(
        builder.page(PageSpec::normal(0x1800, &[])).unwrap_err(),
        BuildError::Unaligned {
            what: "page",
            gpa: 0x1800,
            alignment: 0x1000
        }
    );
}
