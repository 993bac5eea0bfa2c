//! One test per malformed input: each checks the error variant and the header it names.

use igvm::IgvmDirectiveHeader;
use igvm_defs::{IgvmPageDataFlags, IgvmPageDataType};

use super::fixtures::*;
use crate::builder::{real_mode_reset_context, IgvmBuilder, PageSpec};
use crate::error::LoadError;
use crate::load::{load, load_parsed};
use crate::parse::parse;
use crate::plan::{HeaderRef, PAGE_SIZE_2M};
use crate::raw::{assemble, assemble_data_offset};

fn directive(index: usize, header_type: u32) -> HeaderRef {
    HeaderRef { header_type, index }
}

fn load_native(builder: &IgvmBuilder) -> Result<crate::plan::Plan<'static>, LoadError> {
    load(&builder.build().unwrap(), &native_options()).map(crate::plan::Plan::into_owned)
}

#[test]
fn rejects_page_outside_ram() {
    let mut builder = IgvmBuilder::native();
    builder.pages(0x1000, &[1]).unwrap();
    builder.pages(0x4000_0000, &[2]).unwrap();
    let error = load_native(&builder).unwrap_err();
    assert_eq!(
        error,
        LoadError::PageOutsideRam {
            header: directive(1, PAGE_DATA),
            gpa: 0x4000_0000,
            size: 0x1000
        }
    );
}

#[test]
fn rejects_page_in_mmio_hole() {
    let mut builder = IgvmBuilder::native();
    builder.pages(0xC000_0000, &[2]).unwrap();
    let error = load_native(&builder).unwrap_err();
    assert_eq!(
        error,
        LoadError::PageInMmioHole {
            header: directive(0, PAGE_DATA),
            gpa: 0xC000_0000,
            mmio_base: 0xC000_0000,
            mmio_size: 0x4000_0000
        }
    );
}

#[test]
fn rejects_overlapping_page_data() {
    let mut builder = IgvmBuilder::native();
    builder.pages(0x1000, &[1]).unwrap();
    builder.pages(0x2000, &[2]).unwrap();
    builder.pages(0x1000, &[3]).unwrap();
    let error = load_native(&builder).unwrap_err();
    assert_eq!(
        error,
        LoadError::OverlappingPages {
            header: directive(2, PAGE_DATA),
            other: directive(0, PAGE_DATA),
            gpa: 0x1000
        }
    );
}

#[test]
fn rejects_small_page_inside_large_page() {
    let mut builder = IgvmBuilder::native();
    builder
        .page(PageSpec {
            size: PAGE_SIZE_2M,
            ..PageSpec::normal(0x20_0000, &[7; 16])
        })
        .unwrap();
    builder.pages(0x3F_F000, &[1]).unwrap();
    let error = load_native(&builder).unwrap_err();
    assert_eq!(
        error,
        LoadError::OverlappingPages {
            header: directive(1, PAGE_DATA),
            other: directive(0, PAGE_DATA),
            gpa: 0x3F_F000
        }
    );
}

#[test]
fn rejects_parameter_insert_over_page() {
    let mut builder = IgvmBuilder::native();
    builder.pages(0x5000, &[1]).unwrap();
    builder
        .parameter_area(0, 0x2000, &[(crate::ParameterKind::VpCount, 0)], 0x4000)
        .unwrap();
    let error = load_native(&builder).unwrap_err();
    assert_eq!(
        error,
        LoadError::OverlappingPages {
            header: directive(3, PARAMETER_INSERT),
            other: directive(0, PAGE_DATA),
            gpa: 0x5000
        }
    );
}

#[test]
fn rejects_misaligned_large_page() {
    let mut builder = IgvmBuilder::native();
    builder.directive(IgvmDirectiveHeader::PageData {
        gpa: 0x20_1000,
        compatibility_mask: NATIVE_MASK,
        flags: IgvmPageDataFlags::new().with_is_2mb_page(true),
        data_type: IgvmPageDataType::NORMAL,
        data: Vec::new(),
    });
    let error = load_native(&builder).unwrap_err();
    assert_eq!(
        error,
        LoadError::MisalignedLargePage {
            header: directive(0, PAGE_DATA),
            gpa: 0x20_1000
        }
    );
}

#[test]
fn rejects_page_data_larger_than_page() {
    let mut builder = IgvmBuilder::native();
    builder
        .page(PageSpec {
            size: PAGE_SIZE_2M,
            ..PageSpec::normal(0x20_0000, &[7; 16])
        })
        .unwrap();
    let file = builder.build().unwrap();
    let longer = vec![7u8; PAGE_SIZE_2M as usize + 1];
    let mut parsed = parse(&file).unwrap();
    // A 2 MiB page's data comes from the file; make it one byte longer than the page, as a
    // corrupted parse would.
    parsed.page_data[0] = &longer;
    let error = load_parsed(&parsed, &native_options()).unwrap_err();
    assert_eq!(
        error,
        LoadError::PageDataTooLarge {
            header: directive(0, PAGE_DATA),
            size: PAGE_SIZE_2M + 1,
            page_size: PAGE_SIZE_2M
        }
    );
}

#[test]
fn rejects_required_memory_beyond_ram() {
    let mut builder = IgvmBuilder::native();
    builder.required_memory(0x1F00_0000, 0x200_0000).unwrap();
    let error = load_native(&builder).unwrap_err();
    assert_eq!(
        error,
        LoadError::RangeOutsideRam {
            header: directive(0, 0x305),
            gpa: 0x1F00_0000,
            size: 0x200_0000
        }
    );
}

#[test]
fn rejects_insert_into_undeclared_area() {
    let file = assemble(
        &[
            native_platform(),
            (PARAMETER_AREA, area_body(0x1000, 0)),
            (PARAMETER_INSERT, insert_body(0x1000, NATIVE_MASK, 5)),
        ],
        &[0; 8],
    );
    assert_eq!(
        parse(&file).unwrap_err(),
        LoadError::ParameterAreaUndeclared {
            header: directive(1, PARAMETER_INSERT),
            area_index: 5
        }
    );
}

#[test]
fn rejects_parameter_for_undeclared_area() {
    let file = assemble(
        &[native_platform(), (VP_COUNT, parameter_body(3, 0))],
        &[0; 8],
    );
    assert_eq!(
        parse(&file).unwrap_err(),
        LoadError::ParameterAreaUndeclared {
            header: directive(0, VP_COUNT),
            area_index: 3
        }
    );
}

#[test]
fn rejects_parameter_area_declared_twice() {
    let file = assemble(
        &[
            native_platform(),
            (PARAMETER_AREA, area_body(0x1000, 2)),
            (PAGE_DATA, page_body(0x5000, NATIVE_MASK, 0, false)),
            (PARAMETER_AREA, area_body(0x2000, 2)),
        ],
        &[0; 8],
    );
    assert_eq!(
        parse(&file).unwrap_err(),
        LoadError::ParameterAreaRedeclared {
            header: directive(2, PARAMETER_AREA),
            area_index: 2,
            first: directive(0, PARAMETER_AREA)
        }
    );
}

#[test]
fn rejects_parameter_after_insert() {
    let file = assemble(
        &[
            native_platform(),
            (PARAMETER_AREA, area_body(0x1000, 0)),
            (PARAMETER_INSERT, insert_body(0x1000, NATIVE_MASK, 0)),
            (VP_COUNT, parameter_body(0, 0)),
        ],
        &[0; 8],
    );
    assert_eq!(
        parse(&file).unwrap_err(),
        LoadError::ParameterAreaAlreadyInserted {
            header: directive(2, VP_COUNT),
            area_index: 0,
            insert: directive(1, PARAMETER_INSERT)
        }
    );
}

#[test]
fn rejects_parameter_that_does_not_fit() {
    let mut builder = IgvmBuilder::native();
    builder
        .parameter_area(
            0,
            0x1000,
            &[(crate::ParameterKind::CommandLine, 0xFF8)],
            0x4000,
        )
        .unwrap();
    let error = load_native(&builder).unwrap_err();
    assert_eq!(
        error,
        LoadError::ParameterDoesNotFit {
            header: directive(1, 0x30E),
            area_index: 0,
            offset: 0xFF8,
            needed: "console=ttyS0".len() as u64 + 1,
            area_size: 0x1000
        }
    );
}

#[test]
fn rejects_two_contexts_for_one_vcpu() {
    let mut builder = IgvmBuilder::native();
    builder.native_vp_context(0, real_mode_reset_context());
    builder.pages(0x1000, &[1]).unwrap();
    builder.native_vp_context(0, real_mode_reset_context());
    let error = load_native(&builder).unwrap_err();
    assert_eq!(
        error,
        LoadError::DuplicateVpContext {
            header: directive(2, 0x304),
            vp_index: 0,
            first: directive(0, 0x304)
        }
    );
}

#[test]
fn rejects_context_beyond_vp_count() {
    let mut builder = IgvmBuilder::native();
    builder.native_vp_context(0, real_mode_reset_context());
    builder.native_vp_context(1, real_mode_reset_context());
    let error = load_native(&builder).unwrap_err();
    assert_eq!(
        error,
        LoadError::VpIndexOutOfRange {
            header: directive(1, 0x304),
            vp_index: 1,
            vp_count: 1
        }
    );

    let mut two_cpus = native_options();
    two_cpus.host.vp_count = 2;
    let file = builder.build().unwrap();
    let plan = load(&file, &two_cpus).unwrap();
    assert_eq!(plan.vp_contexts.len(), 2);
}

#[test]
fn rejects_secrets_page_on_native() {
    for (data_type, name) in [
        (IgvmPageDataType::SECRETS, "SECRETS"),
        (IgvmPageDataType::CPUID_DATA, "CPUID_DATA"),
        (IgvmPageDataType::CPUID_XF, "CPUID_XF"),
    ] {
        let mut builder = IgvmBuilder::native();
        builder
            .page(PageSpec {
                data_type,
                ..PageSpec::normal(0x3000, &[])
            })
            .unwrap();
        let error = load_native(&builder).unwrap_err();
        assert_eq!(
            error,
            LoadError::PageTypeNotSupported {
                header: directive(0, PAGE_DATA),
                data_type: name,
                platform: crate::plan::Platform::Native
            }
        );
    }
}

#[test]
fn rejects_corim_signature_without_document() {
    let headers = vec![
        native_platform(),
        (CORIM_SIGNATURE, corim_body(NATIVE_MASK, 0, 4)),
    ];
    let offset = assemble_data_offset(&headers);
    let headers = vec![
        native_platform(),
        (CORIM_SIGNATURE, corim_body(NATIVE_MASK, offset, 4)),
    ];
    let error = parse(&assemble(&headers, b"sign")).unwrap_err();
    assert!(
        matches!(
            &error,
            LoadError::InvalidCorim { header, reason }
                if *header == directive(0, CORIM_SIGNATURE) && reason.contains("no earlier CoRIM document")
        ),
        "{error}"
    );
}

#[test]
fn rejects_second_corim_document_for_platform() {
    let probe = vec![
        native_platform(),
        (CORIM_DOCUMENT, corim_body(NATIVE_MASK, 0, 4)),
        (CORIM_DOCUMENT, corim_body(NATIVE_MASK, 0, 4)),
    ];
    let offset = assemble_data_offset(&probe);
    let headers = vec![
        native_platform(),
        (CORIM_DOCUMENT, corim_body(NATIVE_MASK, offset, 4)),
        (CORIM_DOCUMENT, corim_body(NATIVE_MASK, offset, 4)),
    ];
    let error = parse(&assemble(&headers, b"cbor")).unwrap_err();
    assert!(
        matches!(
            &error,
            LoadError::InvalidCorim { header, reason }
                if *header == directive(1, CORIM_DOCUMENT) && reason.contains("already carries")
        ),
        "{error}"
    );
}

#[test]
fn rejects_corim_outside_file() {
    let headers = vec![
        native_platform(),
        (CORIM_DOCUMENT, corim_body(NATIVE_MASK, 0x10_0000, 4)),
    ];
    let error = parse(&assemble(&headers, b"cbor")).unwrap_err();
    assert_eq!(
        error,
        LoadError::FileDataOutOfRange {
            header: directive(0, CORIM_DOCUMENT),
            offset: 0x10_0000,
            size: 4
        }
    );
}

#[test]
fn rejects_file_offset_inside_headers() {
    // igvm 0.5 subtracts the file data start from the offset and would underflow.
    let headers = vec![
        native_platform(),
        (PAGE_DATA, page_body(0x1000, NATIVE_MASK, 8, false)),
    ];
    let error = parse(&assemble(&headers, &[0; 0x1000])).unwrap_err();
    assert_eq!(
        error,
        LoadError::FileDataOutOfRange {
            header: directive(0, PAGE_DATA),
            offset: 8,
            size: 0x1000
        }
    );
}

#[test]
fn rejects_zero_sized_relocation_region() {
    // The crate refuses to write a relocation header without a VBS context, so write the
    // header raw.
    let body = igvm_defs::IGVM_VHS_RELOCATABLE_REGION {
        compatibility_mask: NATIVE_MASK,
        vp_index: 0,
        vtl: 0,
        flags: 0,
        relocation_alignment: 0x1000,
        relocation_region_gpa: 0,
        relocation_region_size: 0,
        minimum_relocation_gpa: 0,
        maximum_relocation_gpa: 0x10_0000,
    };
    let file = assemble(
        &[
            native_platform(),
            (0x102, zerocopy::IntoBytes::as_bytes(&body).to_vec()),
        ],
        &[0; 8],
    );
    let error = parse(&file).unwrap_err();
    assert_eq!(
        error,
        LoadError::InvalidRelocationHeader {
            header: directive(0, 0x102),
            reason: "region size is zero".to_string()
        }
    );
}

#[test]
fn rejects_bad_checksum() {
    let mut file = IgvmBuilder::native().build().unwrap();
    file[20] ^= 1;
    assert!(matches!(
        parse(&file).unwrap_err(),
        LoadError::ChecksumMismatch { .. }
    ));
}

#[test]
fn rejects_truncated_file() {
    let mut builder = IgvmBuilder::native();
    builder.pages(0x1000, &[1]).unwrap();
    let file = builder.build().unwrap();
    let error = parse(&file[..file.len() - 1]).unwrap_err();
    assert!(
        matches!(&error, LoadError::InvalidFixedHeader { reason } if reason.contains("total_file_size")),
        "{error}"
    );
    assert_eq!(
        parse(&file[..10]).unwrap_err(),
        LoadError::FileTooShort { size: 10 }
    );
}

#[test]
fn rejects_mask_matching_no_platform() {
    let mut builder = IgvmBuilder::native();
    builder.set_mask(0x8);
    builder.pages(0x1000, &[1]).unwrap();
    let error = load_native(&builder).unwrap_err();
    assert_eq!(
        error,
        LoadError::MaskMatchesNoPlatform {
            header: directive(0, PAGE_DATA),
            mask: 0x8
        }
    );
}

/// Flips each byte of the variable headers of the conformance files, with the checksum fixed so
/// the igvm crate parses them too: every result is a value or an error, and igvm never panics.
#[test]
fn header_corruption_never_panics() {
    let names = [
        "tiny-qemu-snp-native.igvm",
        "tiny-native-snp-hyperv-policy.igvm",
        "tiny-tdp-synthetic.igvm",
        "msigvm-capi-testdata.igvm",
    ];
    let mut panics = Vec::new();
    for name in names {
        let original = conformance(name);
        let fixed_size = if original[4] == 2 { 32 } else { 24 };
        let header_size = u32::from_le_bytes(original[12..16].try_into().unwrap()) as usize;
        let header_end = fixed_size + header_size;
        for position in fixed_size..header_end {
            for flip in [0x01u8, 0xFF] {
                let mut file = original.clone();
                file[position] ^= flip;
                file[20..24].fill(0);
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(&file[..fixed_size]);
                hasher.update(&file[fixed_size..header_end]);
                let checksum = hasher.finalize();
                file[20..24].copy_from_slice(&checksum.to_le_bytes());
                let parsed = match parse(&file) {
                    Ok(parsed) => parsed,
                    Err(LoadError::IgvmPanic { message, .. }) => {
                        panics.push((name, position, flip, message));
                        continue;
                    }
                    Err(_) => continue,
                };
                for platform in [
                    crate::plan::Platform::Native,
                    crate::plan::Platform::SevSnp,
                    crate::plan::Platform::Tdx,
                ] {
                    let choice = crate::host::PlatformChoice::Exact(platform);
                    if let Err(LoadError::IgvmPanic { message, .. }) =
                        load_parsed(&parsed, &options(choice, host_512m()))
                    {
                        panics.push((name, position, flip, message));
                    }
                }
            }
        }
    }
    assert!(panics.is_empty(), "igvm panicked: {panics:?}");
}

#[test]
fn rejects_imports_beyond_ram_size() {
    // 64 KiB of RAM and three parameter areas of 32 KiB: the third cannot fit.
    let mut builder = IgvmBuilder::native();
    for (index, gpa) in [(0u32, 0x0), (1, 0x8000), (2, 0x8000)] {
        builder
            .parameter_area(index, 0x8000, &[(crate::ParameterKind::VpCount, 0)], gpa)
            .unwrap();
    }
    let mut small = native_options();
    small.host.memory_map[0].size = 0x1_0000;
    small.host.mmio_ranges.clear();
    let error = load(&builder.build().unwrap(), &small).unwrap_err();
    assert_eq!(
        error,
        LoadError::ImportsExceedRam {
            header: directive(8, PARAMETER_INSERT),
            imported: 0x1_8000,
            ram: 0x1_0000
        }
    );
}
