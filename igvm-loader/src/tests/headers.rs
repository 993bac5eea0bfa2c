//! Header walk: optional headers, unknown headers, file-level indices and the rebuilt file.

use igvm::{IgvmDirectiveHeader, IgvmInitializationHeader};
use zerocopy::IntoBytes;

use super::fixtures::*;
use crate::error::LoadError;
use crate::load::load;
use crate::parse::parse;
use crate::plan::{HeaderRef, PageData};
use crate::raw::{assemble, assemble_data_offset};

const UNKNOWN_DIRECTIVE: u32 = 0x3F0;
const OPTIONAL: u32 = 0x8000_0000;

/// Builds a native file: an unknown directive of type `unknown_type`, then a page with data.
fn file_with_unknown_header(unknown_type: u32) -> Vec<u8> {
    let probe = vec![
        native_platform(),
        (unknown_type, vec![0xAA; 12]),
        (PAGE_DATA, page_body(0x1000, NATIVE_MASK, 0, false)),
    ];
    let data_offset = assemble_data_offset(&probe);
    let headers = vec![
        native_platform(),
        (unknown_type, vec![0xAA; 12]),
        (
            PAGE_DATA,
            page_body(0x1000, NATIVE_MASK, data_offset, false),
        ),
    ];
    let mut data = vec![0u8; 0x1000];
    data[..5].copy_from_slice(b"hello");
    assemble(&headers, &data)
}

#[test]
fn optional_unknown_header_is_skipped() {
    let file = file_with_unknown_header(UNKNOWN_DIRECTIVE | OPTIONAL);
    let parsed = parse(&file).unwrap();
    assert_eq!(
        parsed.skipped_headers,
        vec![HeaderRef {
            header_type: UNKNOWN_DIRECTIVE | OPTIONAL,
            index: 0
        }]
    );
    // The page keeps its file-level index although the skipped header is gone.
    assert_eq!(
        parsed.directive_refs,
        vec![HeaderRef {
            header_type: PAGE_DATA,
            index: 1
        }]
    );

    // The file data moved nowhere: the page still reads its bytes.
    let plan = load(&file, &native_options()).unwrap();
    assert_eq!(plan.operations.len(), 1);
    let PageData::Bytes(bytes) = &plan.operations[0].data else {
        panic!("expected page bytes, got {:?}", plan.operations[0].data);
    };
    assert_eq!(&bytes[..5], b"hello");
    assert_eq!(bytes.len(), 0x1000);
}

#[test]
fn unknown_header_without_optional_bit_is_rejected() {
    let file = file_with_unknown_header(UNKNOWN_DIRECTIVE);
    assert_eq!(
        parse(&file).unwrap_err(),
        LoadError::UnknownHeader {
            header: HeaderRef {
                header_type: UNKNOWN_DIRECTIVE,
                index: 0
            }
        }
    );
}

#[test]
fn optional_known_header_is_kept() {
    let probe = vec![
        native_platform(),
        (
            PAGE_DATA | OPTIONAL,
            page_body(0x2000, NATIVE_MASK, 0, false),
        ),
    ];
    let offset = assemble_data_offset(&probe);
    let headers = vec![
        native_platform(),
        (
            PAGE_DATA | OPTIONAL,
            page_body(0x2000, NATIVE_MASK, offset, false),
        ),
    ];
    let file = assemble(&headers, &[0x5A; 0x1000]);
    let plan = load(&file, &native_options()).unwrap();
    assert_eq!(plan.operations.len(), 1);
    assert_eq!(plan.operations[0].gpa, 0x2000);
    assert_eq!(plan.operations[0].source.header_type, PAGE_DATA);
    assert_eq!(
        plan.operations[0].data,
        PageData::Bytes(vec![0x5A; 0x1000].into())
    );
}

#[test]
fn optional_header_in_platform_section_is_skipped() {
    let headers = vec![
        (0x20 | OPTIONAL, vec![1, 2, 3]),
        native_platform(),
        (PAGE_DATA, page_body(0x2000, NATIVE_MASK, 0, false)),
    ];
    let file = assemble(&headers, &[]);
    let parsed = parse(&file).unwrap();
    assert_eq!(
        parsed.skipped_headers,
        vec![HeaderRef {
            header_type: 0x20 | OPTIONAL,
            index: 0
        }]
    );
    assert_eq!(parsed.platform_refs[0].index, 1);
}

#[test]
fn file_without_file_data_parses() {
    // igvm 0.5 rejects a file that ends right after its headers; the loader pads it.
    let headers = vec![
        native_platform(),
        (PAGE_DATA, page_body(0x2000, NATIVE_MASK, 0, false)),
    ];
    let file = assemble(&headers, &[]);
    let plan = load(&file, &native_options()).unwrap();
    assert_eq!(plan.operations.len(), 1);
    assert_eq!(plan.operations[0].data, PageData::Zero);
}

#[test]
fn version_string_is_kept_as_text() {
    let headers = vec![
        native_platform(),
        (0x107, b"v1.2.3\0".to_vec()),
        (PAGE_DATA, page_body(0x2000, NATIVE_MASK, 0, false)),
    ];
    let file = assemble(&headers, &[0; 8]);
    let parsed = parse(&file).unwrap();
    assert_eq!(parsed.version_string.as_deref(), Some("v1.2.3"));
    assert_eq!(parsed.directive_refs[0].index, 0);
}

#[test]
fn header_after_later_section_is_rejected() {
    let headers = vec![
        native_platform(),
        (PAGE_DATA, page_body(0x2000, NATIVE_MASK, 0, false)),
        (0x101, vec![0; 16]),
    ];
    assert_eq!(
        parse(&assemble(&headers, &[0; 8])).unwrap_err(),
        LoadError::HeaderOutOfOrder {
            header: HeaderRef {
                header_type: 0x101,
                index: 0
            }
        }
    );
}

#[test]
fn wrong_body_length_is_rejected() {
    let headers = vec![native_platform(), (PAGE_DATA, vec![0; 16])];
    assert_eq!(
        parse(&assemble(&headers, &[0; 8])).unwrap_err(),
        LoadError::InvalidHeaderLength {
            header: HeaderRef {
                header_type: PAGE_DATA,
                index: 0
            },
            length: 16,
            expected: 24
        }
    );
}

#[test]
fn error_names_header_type_and_index() {
    let error = LoadError::PageOutsideRam {
        header: HeaderRef {
            header_type: PAGE_DATA,
            index: 7,
        },
        gpa: 0x4000_0000,
        size: 0x1000,
    };
    assert_eq!(
        error.to_string(),
        "PageData header 0x302 at directive index 7 places 0x1000 bytes at 0x40000000, outside guest RAM"
    );
}

#[test]
fn revision_round_trips_through_igvm() {
    let file = conformance("tiny-qemu-snp-native.igvm");
    let parsed = parse(&file).unwrap();
    assert_eq!(
        parsed.revision,
        igvm::IgvmRevision::V2 {
            arch: igvm::Arch::X64,
            page_size: 0x1000
        }
    );

    // Writing the parsed headers again with that revision gives a file that loads to the same
    // plan. The crate's PageData directives carry no data, so it is put back from the file.
    let directives: Vec<IgvmDirectiveHeader> = parsed
        .igvm
        .directives()
        .iter()
        .enumerate()
        .map(|(position, directive)| match directive {
            IgvmDirectiveHeader::PageData {
                gpa,
                compatibility_mask,
                flags,
                data_type,
                data,
            } => {
                assert!(data.is_empty(), "the crate copied page data");
                IgvmDirectiveHeader::PageData {
                    gpa: *gpa,
                    compatibility_mask: *compatibility_mask,
                    flags: *flags,
                    data_type: *data_type,
                    data: parsed.page_data(position).to_vec(),
                }
            }
            other => other.clone(),
        })
        .collect();
    let rewritten = igvm::IgvmFile::new(
        parsed.revision,
        parsed.igvm.platforms().to_vec(),
        parsed.igvm.initializations().to_vec(),
        directives,
    )
    .unwrap();
    let mut bytes = Vec::new();
    rewritten.serialize(&mut bytes).unwrap();
    assert_eq!(bytes[4], 2);
    assert_eq!(
        load(&bytes, &native_options()).unwrap(),
        load(&file, &native_options()).unwrap()
    );
}

fn platform_ref(index: usize) -> HeaderRef {
    HeaderRef {
        header_type: SUPPORTED_PLATFORM,
        index,
    }
}

#[test]
fn platform_mask_used_twice_is_rejected() {
    let headers = vec![
        native_platform(),
        (
            SUPPORTED_PLATFORM,
            platform_body(igvm_defs::IgvmPlatformType::SEV_SNP, NATIVE_MASK),
        ),
    ];
    assert_eq!(
        parse(&assemble(&headers, &[0; 8])).unwrap_err(),
        LoadError::InvalidHeader {
            header: platform_ref(1),
            reason: "compatibility mask 0x2 is already used by SupportedPlatform header 0x1 at \
                     platform index 0"
                .to_string()
        }
    );
}

#[test]
fn platform_type_declared_twice_is_rejected() {
    let headers = vec![
        native_platform(),
        (
            SUPPORTED_PLATFORM,
            platform_body(igvm_defs::IgvmPlatformType::NATIVE, 0x4),
        ),
    ];
    let error = parse(&assemble(&headers, &[0; 8])).unwrap_err();
    assert!(
        matches!(&error, LoadError::InvalidHeader { header, reason }
            if *header == platform_ref(1) && reason.contains("already declared")),
        "{error}"
    );
}

#[test]
fn misaligned_page_gpa_is_rejected() {
    let headers = vec![
        native_platform(),
        (PAGE_DATA, page_body(0x1800, NATIVE_MASK, 0, false)),
    ];
    assert_eq!(
        parse(&assemble(&headers, &[0; 8])).unwrap_err(),
        LoadError::InvalidHeader {
            header: HeaderRef {
                header_type: PAGE_DATA,
                index: 0
            },
            reason: "GPA 0x1800 is not a multiple of 0x1000".to_string()
        }
    );
}

#[test]
fn truncated_header_names_its_type() {
    // The section ends 4 bytes into the page header: its type is readable, its length is not.
    let headers = vec![
        native_platform(),
        (PAGE_DATA, page_body(0x1000, NATIVE_MASK, 0, false)),
    ];
    let mut file = assemble(&headers, &[0; 8]);
    let size = u32::from_le_bytes(file[12..16].try_into().unwrap()) - 28;
    file[12..16].copy_from_slice(&size.to_le_bytes());
    file[20..24].fill(0);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&file[..24]);
    hasher.update(&file[24..24 + size as usize]);
    let checksum = hasher.finalize();
    file[20..24].copy_from_slice(&checksum.to_le_bytes());
    assert_eq!(
        parse(&file).unwrap_err(),
        LoadError::TruncatedHeader {
            header: HeaderRef {
                header_type: PAGE_DATA,
                index: 0
            }
        }
    );
}

#[test]
fn version_2_page_size_is_checked() {
    let mut file = conformance("tiny-qemu-snp-native.igvm");
    file[28..32].copy_from_slice(&0x1_0000u32.to_le_bytes());
    let error = parse(&file).unwrap_err();
    assert!(
        matches!(&error, LoadError::InvalidFixedHeader { reason } if reason.contains("page size 0x10000")),
        "{error}"
    );
}

/// Returns whether `part` lies inside `whole`, so that it is a slice of it and not a copy.
fn is_inside(part: &[u8], whole: &[u8]) -> bool {
    let whole = whole.as_ptr_range();
    let part = part.as_ptr_range();
    whole.start <= part.start && part.end <= whole.end
}

/// Builds a native file with a CoRIM document of 4 bytes inside the initial data of two parameter
/// areas, which share the same 4 KiB, then two 4 KiB pages with data. Returns the file, the
/// offset of its file data section and the areas' initial data.
fn file_with_shared_area_data() -> (Vec<u8>, usize, Vec<u8>) {
    let area = |index: u32, file_offset: u32| {
        igvm_defs::IGVM_VHS_PARAMETER_AREA {
            number_of_bytes: 0x1000,
            parameter_area_index: index,
            file_offset,
        }
        .as_bytes()
        .to_vec()
    };
    let headers = |data: u32| {
        vec![
            native_platform(),
            (CORIM_DOCUMENT, corim_body(NATIVE_MASK, data + 0x2010, 4)),
            (PARAMETER_AREA, area(0, data + 0x2000)),
            (PARAMETER_AREA, area(1, data + 0x2000)),
            (PAGE_DATA, page_body(0x1000, NATIVE_MASK, data, false)),
            (
                PAGE_DATA,
                page_body(0x2000, NATIVE_MASK, data + 0x1000, false),
            ),
        ]
    };
    let data_start = assemble_data_offset(&headers(0));
    let area_data: Vec<u8> = (0..0x1000).map(|i| (i % 251) as u8).collect();
    let mut data = vec![0xA1; 0x1000];
    data.extend_from_slice(&[0xB2; 0x1000]);
    data.extend_from_slice(&area_data);
    (
        assemble(&headers(data_start), &data),
        data_start as usize,
        area_data,
    )
}

#[test]
fn rebuilt_file_drops_page_data() {
    let (file, data_start, area_data) = file_with_shared_area_data();
    let rebuilt = crate::raw::rebuild_for_crate(&crate::raw::walk(&file).unwrap());
    // One copy of the areas' initial data, which contains the CoRIM, remains; the pages are
    // gone.
    assert_eq!(rebuilt.len(), data_start + 0x1000);
    assert_eq!(&rebuilt[data_start..], &area_data[..]);
}

#[test]
fn page_data_borrows_the_file() {
    let (file, _, area_data) = file_with_shared_area_data();
    let parsed = parse(&file).unwrap();
    let corim: Vec<&IgvmInitializationHeader> = parsed.igvm.initializations().iter().collect();
    assert_eq!(
        corim,
        [&IgvmInitializationHeader::CorimDocument {
            compatibility_mask: NATIVE_MASK,
            document: area_data[0x10..0x14].to_vec(),
        }]
    );
    let directives = parsed.igvm.directives();
    for (position, fill) in [(2, 0xA1), (3, 0xB2)] {
        let IgvmDirectiveHeader::PageData { data, .. } = &directives[position] else {
            panic!("directive {position} is not PageData");
        };
        assert!(data.is_empty(), "the crate copied page {position}");
        let page = parsed.page_data(position);
        assert_eq!(page, &[fill; 0x1000][..]);
        assert!(is_inside(page, &file), "page {position} is a copy");
    }
    for position in [0, 1] {
        let IgvmDirectiveHeader::ParameterArea { initial_data, .. } = &directives[position] else {
            panic!("directive {position} is not ParameterArea");
        };
        assert_eq!(initial_data, &area_data);
        assert!(parsed.page_data(position).is_empty());
    }

    let plan = crate::load::load_parsed(&parsed, &native_options()).unwrap();
    assert_eq!(plan.operations.len(), 2);
    for op in &plan.operations {
        let PageData::Bytes(std::borrow::Cow::Borrowed(bytes)) = &op.data else {
            panic!("operation at {:#x} does not borrow its bytes", op.gpa);
        };
        assert!(is_inside(bytes, &file), "operation at {:#x}", op.gpa);
    }
    let owned = plan.clone().into_owned();
    assert_eq!(owned, plan);
    assert!(owned
        .operations
        .iter()
        .all(|op| matches!(op.data, PageData::Bytes(std::borrow::Cow::Owned(_)))));
}
