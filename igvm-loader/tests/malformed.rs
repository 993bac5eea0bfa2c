//! A corpus of malformed IGVM files and the typed error the loader must return for each.
//!
//! Every file is built here, in code: a valid native file is written with the igvm crate
//! (`IgvmFile::new` and `serialize`), split into its variable headers and file data, and then
//! changed at byte level or reassembled with bad headers. Each case names what is wrong, the
//! `LoadError` variant expected, and text that the one-line message must contain: the header
//! type and its index, or the offending offset or size.
//!
//! `corpus_rejects_every_case` prints a table of case names and variants (cargo shows it when
//! the test fails, or always with `--nocapture`), and fails listing every case that loaded,
//! panicked, or gave another variant or message. Inputs that got past the loader's own checks
//! to the igvm crate, or that made it allocate without bound, have their own tests below the
//! corpus, named after the expected behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::mem::offset_of;
use std::panic::{catch_unwind, AssertUnwindSafe};

use igvm::hv_defs::Vtl;
use igvm::registers::X86Register;
use igvm::{
    IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader, IgvmRevision,
};
use igvm_defs::{
    IgvmNativeVpContextX64, IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType,
    IgvmVariableHeaderType as Vht, RequiredMemoryFlags, IGVM_VHS_CORIM_DATA, IGVM_VHS_ERROR_RANGE,
    IGVM_VHS_GUEST_POLICY, IGVM_VHS_PAGE_DATA, IGVM_VHS_PAGE_TABLE_RELOCATION, IGVM_VHS_PARAMETER,
    IGVM_VHS_PARAMETER_AREA, IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_RELOCATABLE_REGION,
    IGVM_VHS_REQUIRED_MEMORY, IGVM_VHS_SUPPORTED_PLATFORM, IGVM_VHS_VP_CONTEXT,
    IGVM_VHT_OPTIONAL_BIT, IGVM_VHT_RANGE_DIRECTIVE, IGVM_VHT_RANGE_PLATFORM,
};
use igvm_loader::host::{HostDescription, MemoryKind, MemoryRegion, PlatformChoice};
use igvm_loader::plan::{HeaderRef, Platform};
use igvm_loader::{load, parse, LoadError, LoadOptions};
use zerocopy::{FromZeros, IntoBytes};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE: u64 = 4 * KIB;

/// Compatibility mask of the native platform in the base file.
const NATIVE: u32 = 0x1;

/// Offsets of the fixed header fields (the same in format versions 1 and 2).
const FIXED_MAGIC: usize = 0;
const FIXED_VERSION: usize = 4;
const FIXED_VARIABLE_HEADER_OFFSET: usize = 8;
const FIXED_VARIABLE_HEADER_SIZE: usize = 12;
const FIXED_TOTAL_FILE_SIZE: usize = 16;
const FIXED_CHECKSUM: usize = 20;
const FIXED_V1_SIZE: usize = 24;
const FIXED_V2_SIZE: usize = 32;
/// Offsets of the version 2 fields: architecture and page size.
const FIXED_V2_ARCHITECTURE: usize = 24;
const FIXED_V2_PAGE_SIZE: usize = 28;

/// Positions of the directives in the base file (see [`base_file`]).
const PAGE_A: usize = 0;
const PAGE_B: usize = 1;
const PAGE_ZERO: usize = 2;
const AREA: usize = 3;
const VP_COUNT: usize = 4;
const COMMAND_LINE: usize = 5;
const INSERT: usize = 6;
const REQUIRED: usize = 7;
const CONTEXT: usize = 8;

/// GPAs used by the base file.
const PAGE_A_GPA: u64 = MIB;
const PAGE_B_GPA: u64 = MIB + PAGE;
const PAGE_ZERO_GPA: u64 = MIB + 2 * PAGE;
const INSERT_GPA: u64 = 2 * MIB;
const REQUIRED_GPA: u64 = 3 * MIB;

/// Start of the 32-bit MMIO hole of the test host.
const MMIO_BASE: u64 = 3 * GIB;

// ---------------------------------------------------------------------------------------------
// Host descriptions
// ---------------------------------------------------------------------------------------------

/// Returns a PC-like guest: RAM from 0 (up to 3 GiB), the rest from 4 GiB, and the MMIO hole
/// between.
fn host(memory: u64, cpus: u32) -> HostDescription {
    let low = memory.min(MMIO_BASE);
    let mut memory_map = vec![MemoryRegion {
        base: 0,
        size: low,
        kind: MemoryKind::Ram,
    }];
    if memory > low {
        memory_map.push(MemoryRegion {
            base: 4 * GIB,
            size: memory - low,
            kind: MemoryKind::Ram,
        });
    }
    HostDescription {
        memory_map,
        vp_count: cpus,
        command_line: "console=ttyS0".to_string(),
        mmio_ranges: vec![(MMIO_BASE, GIB)],
        madt: Vec::new(),
        srat: Vec::new(),
        slit: Vec::new(),
        pptt: Vec::new(),
    }
}

/// `run --platform native --memory 512M --cpus 1`.
fn native_options() -> LoadOptions {
    options_with(512 * MIB, 1)
}

fn options_with(memory: u64, cpus: u32) -> LoadOptions {
    LoadOptions {
        choice: PlatformChoice::Exact(Platform::Native),
        host: host(memory, cpus),
        relocation_base: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Valid files written with the igvm crate
// ---------------------------------------------------------------------------------------------

fn native_platform(mask: u32) -> IgvmPlatformHeader {
    IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
        compatibility_mask: mask,
        highest_vtl: 0,
        platform_type: IgvmPlatformType::NATIVE,
        platform_version: 1,
        shared_gpa_boundary: 0,
    })
}

fn page(gpa: u64, data: Vec<u8>) -> IgvmDirectiveHeader {
    IgvmDirectiveHeader::PageData {
        gpa,
        compatibility_mask: NATIVE,
        flags: IgvmPageDataFlags::new(),
        data_type: IgvmPageDataType::NORMAL,
        data,
    }
}

/// Returns a 64-bit entry state with RIP in the first page.
fn context() -> IgvmNativeVpContextX64 {
    let mut context = IgvmNativeVpContextX64::new_zeroed();
    context.rip = PAGE_A_GPA;
    context.rflags = 0x2;
    context.cr0 = 0x8000_0011;
    context.cr4 = 0x20;
    context.efer = 0x500;
    context.code_attributes = 0xA09B;
    context
}

fn native_context(vp_index: u16) -> IgvmDirectiveHeader {
    IgvmDirectiveHeader::X64NativeVpContext {
        compatibility_mask: NATIVE,
        vp_index,
        context: Box::new(context()),
    }
}

/// Returns the directives of the base file, in the order the `PAGE_A`..`CONTEXT` constants
/// give.
fn base_directives() -> Vec<IgvmDirectiveHeader> {
    vec![
        page(PAGE_A_GPA, vec![0xA5; PAGE as usize]),
        page(PAGE_B_GPA, b"second page".to_vec()),
        page(PAGE_ZERO_GPA, Vec::new()),
        IgvmDirectiveHeader::ParameterArea {
            number_of_bytes: PAGE,
            parameter_area_index: 0,
            initial_data: Vec::new(),
        },
        IgvmDirectiveHeader::VpCount(IGVM_VHS_PARAMETER {
            parameter_area_index: 0,
            byte_offset: 0,
        }),
        IgvmDirectiveHeader::CommandLine(IGVM_VHS_PARAMETER {
            parameter_area_index: 0,
            byte_offset: 64,
        }),
        IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
            gpa: INSERT_GPA,
            compatibility_mask: NATIVE,
            parameter_area_index: 0,
        }),
        IgvmDirectiveHeader::RequiredMemory {
            gpa: REQUIRED_GPA,
            compatibility_mask: NATIVE,
            number_of_bytes: PAGE as u32,
            vtl2_protectable: false,
        },
        native_context(0),
    ]
}

fn serialize(
    platforms: Vec<IgvmPlatformHeader>,
    initializations: Vec<IgvmInitializationHeader>,
    directives: Vec<IgvmDirectiveHeader>,
) -> Vec<u8> {
    let file = IgvmFile::new(IgvmRevision::V1, platforms, initializations, directives)
        .expect("the igvm crate accepts the headers");
    let mut bytes = Vec::new();
    file.serialize(&mut bytes)
        .expect("the igvm crate serializes the file");
    bytes
}

/// Returns a valid native file: three pages, a parameter area with the vCPU count and the command
/// line, a RequiredMemory range and the VP context of vCPU 0.
fn base_file() -> Vec<u8> {
    serialize(vec![native_platform(NATIVE)], Vec::new(), base_directives())
}

/// Returns the base file with `extra` directives inserted before the VP context.
fn base_with(extra: Vec<IgvmDirectiveHeader>) -> Vec<u8> {
    let mut directives = base_directives();
    let context = directives
        .pop()
        .expect("the base file ends with its VP context");
    directives.extend(extra);
    directives.push(context);
    serialize(vec![native_platform(NATIVE)], Vec::new(), directives)
}

/// Returns a file with VSM (mask 0x1) and native (mask 0x2) platforms and one relocatable region at
/// 2 MiB that both share. igvm 0.5 accepts a relocatable region only with a VBS context for
/// the same mask, so vCPU 0 gets a VBS context for VSM and a native context for native.
fn relocatable_file() -> Vec<u8> {
    const VSM_MASK: u32 = 0x1;
    const NATIVE_MASK: u32 = 0x2;
    let platforms = vec![
        IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
            compatibility_mask: VSM_MASK,
            highest_vtl: 0,
            platform_type: IgvmPlatformType::VSM_ISOLATION,
            platform_version: 1,
            shared_gpa_boundary: 0,
        }),
        native_platform(NATIVE_MASK),
    ];
    let initializations = vec![IgvmInitializationHeader::RelocatableRegion {
        compatibility_mask: VSM_MASK | NATIVE_MASK,
        relocation_alignment: 2 * MIB,
        relocation_region_gpa: 2 * MIB,
        relocation_region_size: 2 * MIB,
        minimum_relocation_gpa: 0,
        maximum_relocation_gpa: 256 * MIB,
        is_vtl2: false,
        apply_rip_offset: false,
        apply_gdtr_offset: false,
        vp_index: 0,
        vtl: Vtl::Vtl0,
    }];
    let both = |gpa: u64, data: &[u8]| IgvmDirectiveHeader::PageData {
        gpa,
        compatibility_mask: VSM_MASK | NATIVE_MASK,
        flags: IgvmPageDataFlags::new(),
        data_type: IgvmPageDataType::NORMAL,
        data: data.to_vec(),
    };
    let directives = vec![
        both(2 * MIB, b"relocatable code"),
        both(4 * MIB, b"fixed page"),
        IgvmDirectiveHeader::X64VbsVpContext {
            vtl: Vtl::Vtl0,
            registers: vec![X86Register::Rip(2 * MIB)],
            compatibility_mask: VSM_MASK,
        },
        IgvmDirectiveHeader::X64NativeVpContext {
            compatibility_mask: NATIVE_MASK,
            vp_index: 0,
            context: Box::new(context()),
        },
    ];
    serialize(platforms, initializations, directives)
}

// ---------------------------------------------------------------------------------------------
// Byte-level editing
// ---------------------------------------------------------------------------------------------

/// One variable header of a [`RawImage`].
#[derive(Debug, Clone)]
struct RawHeader {
    /// Type field as written, optional bit included.
    header_type: u32,
    /// Length field; `None` writes the body length.
    length: Option<u32>,
    /// The body, without padding.
    body: Vec<u8>,
    /// A u32 file offset inside the body (position in the body, offset from the start of
    /// the file data section). It is rewritten on assembly, so the header keeps pointing at
    /// its data when headers are added or removed.
    data_ref: Option<(usize, u32)>,
}

/// An IGVM file split into its fixed header, variable headers and file data, reassembled with
/// consistent sizes and a correct checksum by [`RawImage::bytes`].
#[derive(Debug, Clone)]
struct RawImage {
    /// The fixed header (24 or 32 bytes); sizes and checksum are rewritten on assembly.
    fixed: Vec<u8>,
    headers: Vec<RawHeader>,
    data: Vec<u8>,
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn write_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn write_u64(bytes: &mut [u8], offset: usize, value: u64) {
    bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

fn align_8(value: usize) -> usize {
    (value + 7) & !7
}

/// Position of the file offset field in the body of a header type, if it has one.
fn file_offset_field(header_type: u32) -> Option<usize> {
    match Vht(header_type & !IGVM_VHT_OPTIONAL_BIT) {
        Vht::IGVM_VHT_PAGE_DATA => Some(offset_of!(IGVM_VHS_PAGE_DATA, file_offset)),
        Vht::IGVM_VHT_PARAMETER_AREA => Some(offset_of!(IGVM_VHS_PARAMETER_AREA, file_offset)),
        Vht::IGVM_VHT_VP_CONTEXT => Some(offset_of!(IGVM_VHS_VP_CONTEXT, file_offset)),
        Vht::IGVM_VHT_CORIM_DOCUMENT | Vht::IGVM_VHT_CORIM_SIGNATURE => {
            Some(offset_of!(IGVM_VHS_CORIM_DATA, file_offset))
        }
        _ => None,
    }
}

/// Recomputes the checksum of a file whose fixed header sizes are valid.
fn fix_checksum(bytes: &mut [u8]) {
    let fixed_size = if read_u32(bytes, FIXED_VERSION) == 2 {
        FIXED_V2_SIZE
    } else {
        FIXED_V1_SIZE
    };
    let start = read_u32(bytes, FIXED_VARIABLE_HEADER_OFFSET) as usize;
    let end = start + read_u32(bytes, FIXED_VARIABLE_HEADER_SIZE) as usize;
    let mut fixed = bytes[..fixed_size].to_vec();
    write_u32(&mut fixed, FIXED_CHECKSUM, 0);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&fixed);
    hasher.update(&bytes[start..end]);
    write_u32(bytes, FIXED_CHECKSUM, hasher.finalize());
}

impl RawImage {
    fn from_bytes(bytes: &[u8]) -> Self {
        let fixed_size = match read_u32(bytes, FIXED_VERSION) {
            2 => FIXED_V2_SIZE,
            _ => FIXED_V1_SIZE,
        };
        let start = read_u32(bytes, FIXED_VARIABLE_HEADER_OFFSET) as usize;
        let end = start + read_u32(bytes, FIXED_VARIABLE_HEADER_SIZE) as usize;
        let mut headers = Vec::new();
        let mut offset = start;
        while offset < end {
            let header_type = read_u32(bytes, offset);
            let length = read_u32(bytes, offset + 4) as usize;
            let body = bytes[offset + 8..offset + 8 + length].to_vec();
            let data_ref = file_offset_field(header_type).and_then(|field| {
                let value = read_u32(&body, field);
                (value != 0).then(|| (field, value - end as u32))
            });
            headers.push(RawHeader {
                header_type,
                length: None,
                body,
                data_ref,
            });
            offset = align_8(offset + 8 + length);
        }
        Self {
            fixed: bytes[..fixed_size].to_vec(),
            headers,
            data: bytes[end..].to_vec(),
        }
    }

    fn variable_header_size(&self) -> usize {
        self.headers
            .iter()
            .map(|header| align_8(8 + header.body.len()))
            .sum()
    }

    /// File offset of the first byte of the file data section.
    fn data_start(&self) -> u32 {
        (self.fixed.len() + self.variable_header_size()) as u32
    }

    fn bytes(&self) -> Vec<u8> {
        let data_start = self.data_start();
        let mut variable_headers = Vec::new();
        for header in &self.headers {
            let mut body = header.body.clone();
            if let Some((field, relative)) = header.data_ref {
                write_u32(&mut body, field, data_start + relative);
            }
            let length = header.length.unwrap_or(body.len() as u32);
            variable_headers.extend_from_slice(&header.header_type.to_le_bytes());
            variable_headers.extend_from_slice(&length.to_le_bytes());
            variable_headers.extend_from_slice(&body);
            variable_headers.resize(align_8(variable_headers.len()), 0);
        }
        let mut out = self.fixed.clone();
        out.extend_from_slice(&variable_headers);
        out.extend_from_slice(&self.data);
        let total = out.len() as u32;
        write_u32(
            &mut out,
            FIXED_VARIABLE_HEADER_OFFSET,
            self.fixed.len() as u32,
        );
        write_u32(
            &mut out,
            FIXED_VARIABLE_HEADER_SIZE,
            variable_headers.len() as u32,
        );
        write_u32(&mut out, FIXED_TOTAL_FILE_SIZE, total);
        fix_checksum(&mut out);
        out
    }

    /// Position in `headers` of the `index`-th header of a section (0-based, in file order).
    fn position(&self, range: &std::ops::RangeInclusive<u32>, index: usize) -> usize {
        self.headers
            .iter()
            .enumerate()
            .filter(|(_, header)| range.contains(&(header.header_type & !IGVM_VHT_OPTIONAL_BIT)))
            .nth(index)
            .map(|(position, _)| position)
            .expect("the section has that many headers")
    }

    fn platform(&mut self, index: usize) -> &mut RawHeader {
        let position = self.position(&IGVM_VHT_RANGE_PLATFORM, index);
        &mut self.headers[position]
    }

    fn directive(&mut self, index: usize) -> &mut RawHeader {
        let position = self.position(&IGVM_VHT_RANGE_DIRECTIVE, index);
        &mut self.headers[position]
    }

    /// Inserts a header before the `index`-th directive.
    fn insert_directive(&mut self, index: usize, header: RawHeader) {
        let position = self.position(&IGVM_VHT_RANGE_DIRECTIVE, index);
        self.headers.insert(position, header);
    }

    /// Inserts an initialization header after the platform headers and any initialization
    /// headers already present.
    fn push_initialization(&mut self, header: RawHeader) {
        let position = self.position(&IGVM_VHT_RANGE_DIRECTIVE, 0);
        self.headers.insert(position, header);
    }

    /// Appends bytes to the file data section and returns their offset inside it.
    fn add_data(&mut self, bytes: &[u8]) -> u32 {
        let relative = self.data.len() as u32;
        self.data.extend_from_slice(bytes);
        relative
    }
}

impl RawHeader {
    fn new(header_type: Vht, body: &[u8]) -> Self {
        Self {
            header_type: header_type.0,
            length: None,
            body: body.to_vec(),
            data_ref: None,
        }
    }

    /// Returns a header whose file offset field points at `relative` in the file data section.
    fn with_data(header_type: Vht, body: &[u8], relative: u32) -> Self {
        let field = file_offset_field(header_type.0).expect("the header type has file data");
        Self {
            data_ref: Some((field, relative)),
            ..Self::new(header_type, body)
        }
    }

    fn set_u32(&mut self, field: usize, value: u32) -> &mut Self {
        if self
            .data_ref
            .is_some_and(|(data_field, _)| data_field == field)
        {
            self.data_ref = None;
        }
        write_u32(&mut self.body, field, value);
        self
    }

    fn set_u64(&mut self, field: usize, value: u64) -> &mut Self {
        write_u64(&mut self.body, field, value);
        self
    }

    /// Writes an absolute file offset into the file offset field.
    fn set_file_offset(&mut self, value: u32) -> &mut Self {
        let field = file_offset_field(self.header_type).expect("the header type has file data");
        self.set_u32(field, value)
    }
}

// Header bodies, encoded with the igvm_defs layouts.

fn platform_body(platform_type: IgvmPlatformType, mask: u32) -> Vec<u8> {
    IGVM_VHS_SUPPORTED_PLATFORM {
        compatibility_mask: mask,
        highest_vtl: 0,
        platform_type,
        platform_version: 1,
        shared_gpa_boundary: 0,
    }
    .as_bytes()
    .to_vec()
}

fn page_body(
    gpa: u64,
    mask: u32,
    flags: IgvmPageDataFlags,
    data_type: IgvmPageDataType,
) -> Vec<u8> {
    IGVM_VHS_PAGE_DATA {
        gpa,
        compatibility_mask: mask,
        file_offset: 0,
        flags,
        data_type,
        reserved: 0,
    }
    .as_bytes()
    .to_vec()
}

fn zero_page(gpa: u64) -> RawHeader {
    RawHeader::new(
        Vht::IGVM_VHT_PAGE_DATA,
        &page_body(
            gpa,
            NATIVE,
            IgvmPageDataFlags::new(),
            IgvmPageDataType::NORMAL,
        ),
    )
}

fn area_body(index: u32, size: u64, file_offset: u32) -> Vec<u8> {
    IGVM_VHS_PARAMETER_AREA {
        number_of_bytes: size,
        parameter_area_index: index,
        file_offset,
    }
    .as_bytes()
    .to_vec()
}

fn parameter(header_type: Vht, area_index: u32, byte_offset: u32) -> RawHeader {
    let body = IGVM_VHS_PARAMETER {
        parameter_area_index: area_index,
        byte_offset,
    };
    RawHeader::new(header_type, body.as_bytes())
}

fn insert(area_index: u32, gpa: u64) -> RawHeader {
    let body = IGVM_VHS_PARAMETER_INSERT {
        gpa,
        compatibility_mask: NATIVE,
        parameter_area_index: area_index,
    };
    RawHeader::new(Vht::IGVM_VHT_PARAMETER_INSERT, body.as_bytes())
}

fn required_memory(gpa: u64, size: u32) -> RawHeader {
    let body = IGVM_VHS_REQUIRED_MEMORY {
        gpa,
        compatibility_mask: NATIVE,
        number_of_bytes: size,
        flags: RequiredMemoryFlags::new(),
        reserved: 0,
    };
    RawHeader::new(Vht::IGVM_VHT_REQUIRED_MEMORY, body.as_bytes())
}

fn corim_header(header_type: Vht, mask: u32, relative: u32, size: u32) -> RawHeader {
    let body = IGVM_VHS_CORIM_DATA {
        compatibility_mask: mask,
        file_offset: 0,
        size_bytes: size,
        reserved: 0,
    };
    RawHeader::with_data(header_type, body.as_bytes(), relative)
}

fn relocatable_region_body(gpa: u64, size: u64, alignment: u64) -> Vec<u8> {
    IGVM_VHS_RELOCATABLE_REGION {
        compatibility_mask: NATIVE,
        vp_index: 0,
        vtl: 0,
        flags: 0,
        relocation_alignment: alignment,
        relocation_region_gpa: gpa,
        relocation_region_size: size,
        minimum_relocation_gpa: 0,
        maximum_relocation_gpa: 256 * MIB,
    }
    .as_bytes()
    .to_vec()
}

fn base_image() -> RawImage {
    RawImage::from_bytes(&base_file())
}

// ---------------------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------------------

/// One malformed file and the error the loader must return for it.
struct Case {
    name: &'static str,
    file: Vec<u8>,
    options: LoadOptions,
    /// The expected variant as written in the match pattern.
    expected: &'static str,
    matches: fn(&LoadError) -> bool,
    /// Text the message must contain: the header and its index, or the offset or size.
    needle: String,
}

/// Expands to the pattern text and a function that tests an error against the pattern.
macro_rules! variant {
    ($pattern:pat) => {
        (stringify!($pattern), |error: &LoadError| {
            matches!(error, $pattern)
        })
    };
}

/// Returns a header as messages name it, for example "PageData header 0x302 at directive
/// index 1".
fn named(name: &str, header_type: Vht, section: &str, index: usize) -> String {
    format!(
        "{name} header {:#x} at {section} index {index}",
        header_type.0
    )
}

fn directive_ref(name: &str, header_type: Vht, index: usize) -> String {
    named(name, header_type, "directive", index)
}

fn header_ref(header_type: Vht, index: usize) -> HeaderRef {
    HeaderRef {
        header_type: header_type.0,
        index,
    }
}

struct Corpus {
    cases: Vec<Case>,
}

impl Corpus {
    fn add(
        &mut self,
        name: &'static str,
        file: Vec<u8>,
        options: LoadOptions,
        (expected, matches): (&'static str, fn(&LoadError) -> bool),
        needle: impl Into<String>,
    ) {
        self.cases.push(Case {
            name,
            file,
            options,
            expected,
            matches,
            needle: needle.into(),
        });
    }
}

const PAGE_DATA: &str = "PageData";

#[allow(clippy::too_many_lines)]
fn corpus() -> Vec<Case> {
    let base = base_file();
    let mut corpus = Corpus { cases: Vec::new() };
    let native = native_options;

    // --- The fixed header ---------------------------------------------------------------------

    corpus.add(
        "empty file",
        Vec::new(),
        native(),
        variant!(LoadError::FileTooShort { size: 0 }),
        "file is 0 bytes",
    );
    corpus.add(
        "three bytes",
        b"IGV".to_vec(),
        native(),
        variant!(LoadError::FileTooShort { size: 3 }),
        "file is 3 bytes",
    );
    corpus.add(
        "truncated inside the fixed header",
        base[..20].to_vec(),
        native(),
        variant!(LoadError::FileTooShort { size: 20 }),
        "file is 20 bytes",
    );
    corpus.add(
        "truncated inside the file data",
        base[..base.len() - 100].to_vec(),
        native(),
        variant!(LoadError::InvalidFixedHeader { .. }),
        format!("but the file is {} bytes", base.len() - 100),
    );
    {
        // The same truncation with the total size fixed: the last page's data runs off the
        // end of the file. The last data in the file is the VP context of directive 8.
        let mut file = base[..base.len() - 100].to_vec();
        let size = file.len() as u32;
        write_u32(&mut file, FIXED_TOTAL_FILE_SIZE, size);
        fix_checksum(&mut file);
        corpus.add(
            "truncated file with a consistent size",
            file,
            native(),
            variant!(LoadError::FileDataOutOfRange { .. }),
            directive_ref("VpContext", Vht::IGVM_VHT_VP_CONTEXT, CONTEXT),
        );
    }
    corpus.add(
        "only the fixed and variable headers",
        {
            let image = base_image();
            let mut file = base[..image.data_start() as usize].to_vec();
            let size = file.len() as u32;
            write_u32(&mut file, FIXED_TOTAL_FILE_SIZE, size);
            fix_checksum(&mut file);
            file
        },
        native(),
        variant!(LoadError::FileDataOutOfRange {
            header: HeaderRef {
                header_type: 0x302,
                index: 0
            },
            ..
        }),
        directive_ref(PAGE_DATA, Vht::IGVM_VHT_PAGE_DATA, PAGE_A),
    );
    {
        let mut file = base.clone();
        write_u32(&mut file, FIXED_MAGIC, u32::from_le_bytes(*b"MVGI"));
        corpus.add(
            "wrong magic",
            file,
            native(),
            variant!(LoadError::InvalidMagic { magic: 0x4947_564d }),
            "0x4947564d",
        );
    }
    corpus.add(
        "an ELF file",
        {
            let mut file = b"\x7fELF\x02\x01\x01".to_vec();
            file.resize(4096, 0);
            file
        },
        native(),
        variant!(LoadError::InvalidMagic { magic: 0x464c_457f }),
        "0x464c457f",
    );
    for (name, version) in [("format version 0", 0u32), ("format version 3", 3)] {
        let mut file = base.clone();
        write_u32(&mut file, FIXED_VERSION, version);
        corpus.add(
            name,
            file,
            native(),
            variant!(LoadError::UnsupportedFormatVersion { .. }),
            format!("version {version}"),
        );
    }
    {
        let mut file = base.clone();
        let stored = read_u32(&file, FIXED_CHECKSUM);
        write_u32(&mut file, FIXED_CHECKSUM, stored ^ 0x8000_0001);
        corpus.add(
            "bad CRC32 checksum",
            file,
            native(),
            variant!(LoadError::ChecksumMismatch { .. }),
            format!("stored {:#010x}", stored ^ 0x8000_0001),
        );
    }
    {
        // One flipped bit in the first page's GPA, the checksum left as it was. The first
        // directive follows the 24-byte SupportedPlatform header.
        let mut file = base.clone();
        file[FIXED_V1_SIZE + 24 + 8 + 2] ^= 0x10;
        corpus.add(
            "variable header changed after the checksum",
            file,
            native(),
            variant!(LoadError::ChecksumMismatch { .. }),
            "checksum mismatch",
        );
    }
    {
        let mut file = base.clone();
        write_u32(&mut file, FIXED_TOTAL_FILE_SIZE, u32::MAX);
        corpus.add(
            "total_file_size of 4 GiB",
            file,
            native(),
            variant!(LoadError::InvalidFixedHeader { .. }),
            "total_file_size is 4294967295",
        );
    }
    {
        let mut file = base.clone();
        let size = file.len() as u32;
        write_u32(&mut file, FIXED_VARIABLE_HEADER_SIZE, size);
        corpus.add(
            "variable header section overruns the file",
            file,
            native(),
            variant!(LoadError::InvalidFixedHeader { .. }),
            format!("0x18+{:#x}", base.len()),
        );
    }
    {
        let mut file = base.clone();
        write_u32(&mut file, FIXED_VARIABLE_HEADER_SIZE, u32::MAX);
        corpus.add(
            "variable header size of 4 GiB",
            file,
            native(),
            variant!(LoadError::InvalidFixedHeader { .. }),
            "0x18+0xffffffff",
        );
    }
    {
        let mut file = base.clone();
        write_u32(&mut file, FIXED_VARIABLE_HEADER_OFFSET, u32::MAX - 7);
        corpus.add(
            "variable header offset past the end of the file",
            file,
            native(),
            variant!(LoadError::InvalidFixedHeader { .. }),
            "0xfffffff8",
        );
    }
    {
        let mut file = base.clone();
        write_u32(&mut file, FIXED_VARIABLE_HEADER_OFFSET, 16);
        corpus.add(
            "variable header offset inside the fixed header",
            file,
            native(),
            variant!(LoadError::InvalidFixedHeader { .. }),
            "variable_header_offset 0x10",
        );
    }
    {
        let mut file = base.clone();
        write_u32(&mut file, FIXED_VARIABLE_HEADER_OFFSET, 28);
        corpus.add(
            "misaligned variable header offset",
            file,
            native(),
            variant!(LoadError::InvalidFixedHeader { .. }),
            "variable_header_offset 0x1c",
        );
    }

    // --- Variable header framing -------------------------------------------------------------

    {
        let mut image = base_image();
        image.directive(PAGE_B).length = Some(0xFFFF_FFF0);
        corpus.add(
            "header length overruns the file",
            image.bytes(),
            native(),
            variant!(LoadError::TruncatedHeader {
                header: HeaderRef {
                    header_type: 0x302,
                    index: 1
                }
            }),
            directive_ref(PAGE_DATA, Vht::IGVM_VHT_PAGE_DATA, PAGE_B),
        );
    }
    {
        // The section ends 8 bytes before the end of the last header (the VP context).
        let mut file = base.clone();
        let size = read_u32(&file, FIXED_VARIABLE_HEADER_SIZE);
        write_u32(&mut file, FIXED_VARIABLE_HEADER_SIZE, size - 8);
        fix_checksum(&mut file);
        corpus.add(
            "last header cut by the section size",
            file,
            native(),
            variant!(LoadError::TruncatedHeader {
                header: HeaderRef {
                    header_type: 0x304,
                    index: 8
                }
            }),
            directive_ref("VpContext", Vht::IGVM_VHT_VP_CONTEXT, CONTEXT),
        );
    }
    {
        // Only the type field of a header fits in the section.
        let mut image = base_image();
        let mut file = image.bytes();
        let size = read_u32(&file, FIXED_VARIABLE_HEADER_SIZE);
        let last = image.directive(CONTEXT);
        let cut = align_8(8 + last.body.len()) as u32 - 4;
        write_u32(&mut file, FIXED_VARIABLE_HEADER_SIZE, size - cut);
        fix_checksum(&mut file);
        corpus.add(
            "section ends inside a header's length field",
            file,
            native(),
            variant!(LoadError::TruncatedHeader { .. }),
            "index 8 is truncated",
        );
    }
    {
        let mut image = base_image();
        let header = image.directive(PAGE_B);
        header.body.clear();
        header.data_ref = None;
        corpus.add(
            "zero-length PageData header",
            image.bytes(),
            native(),
            variant!(LoadError::InvalidHeaderLength {
                length: 0,
                expected: 24,
                ..
            }),
            directive_ref(PAGE_DATA, Vht::IGVM_VHT_PAGE_DATA, PAGE_B),
        );
    }
    {
        let mut image = base_image();
        image.directive(INSERT).body.extend_from_slice(&[0; 8]);
        corpus.add(
            "ParameterInsert body longer than the format defines",
            image.bytes(),
            native(),
            variant!(LoadError::InvalidHeaderLength {
                length: 24,
                expected: 16,
                ..
            }),
            directive_ref("ParameterInsert", Vht::IGVM_VHT_PARAMETER_INSERT, INSERT),
        );
    }
    {
        let mut image = base_image();
        image.platform(0).body.truncate(8);
        corpus.add(
            "SupportedPlatform body too short",
            image.bytes(),
            native(),
            variant!(LoadError::InvalidHeaderLength { .. }),
            named(
                "SupportedPlatform",
                Vht::IGVM_VHT_SUPPORTED_PLATFORM,
                "platform",
                0,
            ),
        );
    }
    {
        let mut image = base_image();
        image.insert_directive(CONTEXT, RawHeader::new(Vht(0x3F0), &[0; 16]));
        corpus.add(
            "unknown directive type without the optional bit",
            image.bytes(),
            native(),
            variant!(LoadError::UnknownHeader {
                header: HeaderRef {
                    header_type: 0x3F0,
                    index: 8
                }
            }),
            "unknown header 0x3f0 at directive index 8",
        );
    }
    {
        let mut image = base_image();
        image.insert_directive(PAGE_A, RawHeader::new(Vht(0), &[]));
        corpus.add(
            "header of type 0 and length 0",
            image.bytes(),
            native(),
            variant!(LoadError::UnknownHeader { .. }),
            "header 0x0",
        );
    }
    {
        let mut image = base_image();
        image.insert_directive(PAGE_A, RawHeader::new(Vht(0x250), &[1; 8]));
        corpus.add(
            "header type between the initialization and directive ranges",
            image.bytes(),
            native(),
            variant!(LoadError::UnknownHeader { .. }),
            "header 0x250",
        );
    }
    {
        // A SupportedPlatform header after the directives.
        let mut image = base_image();
        let platform = image.platform(0).clone();
        image.headers.push(platform);
        corpus.add(
            "platform header after the directives",
            image.bytes(),
            native(),
            variant!(LoadError::HeaderOutOfOrder { .. }),
            named(
                "SupportedPlatform",
                Vht::IGVM_VHT_SUPPORTED_PLATFORM,
                "platform",
                1,
            ),
        );
    }
    {
        let mut image = base_image();
        let policy = IGVM_VHS_GUEST_POLICY {
            policy: 0x30000,
            compatibility_mask: NATIVE,
            reserved: 0,
        };
        image.headers.push(RawHeader::new(
            Vht::IGVM_VHT_GUEST_POLICY,
            policy.as_bytes(),
        ));
        corpus.add(
            "initialization header after the directives",
            image.bytes(),
            native(),
            variant!(LoadError::HeaderOutOfOrder { .. }),
            named(
                "GuestPolicy",
                Vht::IGVM_VHT_GUEST_POLICY,
                "initialization",
                0,
            ),
        );
    }

    // --- Platforms ------------------------------------------------------------------------------

    {
        let mut image = base_image();
        image
            .headers
            .remove(image.position(&IGVM_VHT_RANGE_PLATFORM, 0));
        corpus.add(
            "no platform header",
            image.bytes(),
            native(),
            variant!(LoadError::NoPlatformHeader),
            "no SupportedPlatform header",
        );
    }
    for (name, mask) in [
        ("platform mask with two bits", 0x3u32),
        ("platform mask of zero", 0),
    ] {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_SUPPORTED_PLATFORM, compatibility_mask);
        image.platform(0).set_u32(field, mask);
        corpus.add(
            name,
            image.bytes(),
            native(),
            variant!(LoadError::InvalidPlatformMask { .. }),
            named(
                "SupportedPlatform",
                Vht::IGVM_VHT_SUPPORTED_PLATFORM,
                "platform",
                0,
            ),
        );
    }
    {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_PAGE_DATA, compatibility_mask);
        image.directive(PAGE_B).set_u32(field, 0x4);
        corpus.add(
            "page mask matching no platform",
            image.bytes(),
            native(),
            variant!(LoadError::MaskMatchesNoPlatform { mask: 0x4, .. }),
            directive_ref(PAGE_DATA, Vht::IGVM_VHT_PAGE_DATA, PAGE_B),
        );
    }
    {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_REQUIRED_MEMORY, compatibility_mask);
        image.directive(REQUIRED).set_u32(field, 0x8000_0000);
        corpus.add(
            "RequiredMemory mask matching no platform",
            image.bytes(),
            native(),
            variant!(LoadError::MaskMatchesNoPlatform { .. }),
            directive_ref("RequiredMemory", Vht::IGVM_VHT_REQUIRED_MEMORY, REQUIRED),
        );
    }
    {
        // An SEV-SNP-only file, run with --platform native.
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_SUPPORTED_PLATFORM, platform_type);
        image.platform(0).body[field] = IgvmPlatformType::SEV_SNP.0;
        corpus.add(
            "file without the requested platform",
            image.bytes(),
            native(),
            variant!(LoadError::PlatformNotInFile {
                requested: Platform::Native,
                ..
            }),
            "does not support platform native (it supports: sev-snp)",
        );
    }

    // --- File data ------------------------------------------------------------------------------

    {
        let mut image = base_image();
        image.directive(PAGE_B).set_file_offset(u32::MAX - 0xFFF);
        corpus.add(
            "page data offset beyond the file",
            image.bytes(),
            native(),
            variant!(LoadError::FileDataOutOfRange {
                offset: 0xFFFF_F000,
                ..
            }),
            directive_ref(PAGE_DATA, Vht::IGVM_VHT_PAGE_DATA, PAGE_B),
        );
    }
    {
        let mut image = base_image();
        image.directive(PAGE_B).set_file_offset(8);
        corpus.add(
            "page data offset inside the headers",
            image.bytes(),
            native(),
            variant!(LoadError::FileDataOutOfRange { offset: 8, .. }),
            "at offset 0x8",
        );
    }
    {
        // The page starts inside the file but its 4 KiB run past the end.
        let mut image = base_image();
        let near_end = image.data_start() + image.data.len() as u32 - 0x100;
        image.directive(PAGE_A).set_file_offset(near_end);
        corpus.add(
            "page data runs past the end of the file",
            image.bytes(),
            native(),
            variant!(LoadError::FileDataOutOfRange { size: 4096, .. }),
            format!("4096 bytes of file data at offset {near_end:#x}"),
        );
    }
    {
        // The 2 MiB flag on a page with 4 KiB of data: 2 MiB from its offset are read.
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_PAGE_DATA, flags);
        image.directive(PAGE_B).set_u32(
            field,
            IgvmPageDataFlags::new().with_is_2mb_page(true).into(),
        );
        corpus.add(
            "2 MiB page with 4 KiB of file data",
            image.bytes(),
            native(),
            variant!(LoadError::FileDataOutOfRange {
                size: 0x20_0000,
                ..
            }),
            directive_ref(PAGE_DATA, Vht::IGVM_VHT_PAGE_DATA, PAGE_B),
        );
    }
    {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_PARAMETER_AREA, number_of_bytes);
        let header = image.directive(AREA);
        header.set_u64(field, 4 * GIB);
        header.set_file_offset(u32::MAX);
        corpus.add(
            "parameter area with 4 GiB of initial data",
            image.bytes(),
            native(),
            variant!(LoadError::FileDataOutOfRange {
                size: 0x1_0000_0000,
                ..
            }),
            directive_ref("ParameterArea", Vht::IGVM_VHT_PARAMETER_AREA, AREA),
        );
    }
    {
        let mut image = base_image();
        image.directive(CONTEXT).set_file_offset(0);
        corpus.add(
            "VP context with file offset 0",
            image.bytes(),
            native(),
            variant!(LoadError::FileDataOutOfRange { offset: 0, .. }),
            directive_ref("VpContext", Vht::IGVM_VHT_VP_CONTEXT, CONTEXT),
        );
    }

    // --- CoRIM ----------------------------------------------------------------------------------

    {
        let mut image = base_image();
        let relative = image.add_data(b"corim document");
        let mut header = corim_header(Vht::IGVM_VHT_CORIM_DOCUMENT, NATIVE, relative, 14);
        header.set_file_offset(0x0100_0000);
        image.push_initialization(header);
        corpus.add(
            "CoRIM document outside the file",
            image.bytes(),
            native(),
            variant!(LoadError::FileDataOutOfRange {
                offset: 0x0100_0000,
                ..
            }),
            named(
                "CorimDocument",
                Vht::IGVM_VHT_CORIM_DOCUMENT,
                "initialization",
                0,
            ),
        );
    }
    {
        let mut image = base_image();
        let relative = image.add_data(b"corim document");
        image.push_initialization(corim_header(
            Vht::IGVM_VHT_CORIM_DOCUMENT,
            NATIVE,
            relative,
            u32::MAX,
        ));
        corpus.add(
            "CoRIM document of 4 GiB",
            image.bytes(),
            native(),
            variant!(LoadError::FileDataOutOfRange {
                size: 0xFFFF_FFFF,
                ..
            }),
            named(
                "CorimDocument",
                Vht::IGVM_VHT_CORIM_DOCUMENT,
                "initialization",
                0,
            ),
        );
    }
    {
        let mut image = base_image();
        let relative = image.add_data(b"corim document");
        image.push_initialization(corim_header(
            Vht::IGVM_VHT_CORIM_DOCUMENT,
            NATIVE,
            relative,
            14,
        ));
        let mut signature = corim_header(Vht::IGVM_VHT_CORIM_SIGNATURE, NATIVE, relative, 14);
        write_u32(
            &mut signature.body,
            offset_of!(IGVM_VHS_CORIM_DATA, size_bytes),
            64,
        );
        image.push_initialization(signature);
        corpus.add(
            "CoRIM signature running past the end of the file",
            image.bytes(),
            native(),
            variant!(LoadError::FileDataOutOfRange { size: 64, .. }),
            named(
                "CorimSignature",
                Vht::IGVM_VHT_CORIM_SIGNATURE,
                "initialization",
                1,
            ),
        );
    }
    {
        let mut image = base_image();
        let relative = image.add_data(b"corim document");
        image.push_initialization(corim_header(
            Vht::IGVM_VHT_CORIM_DOCUMENT,
            NATIVE,
            relative,
            0,
        ));
        corpus.add(
            "empty CoRIM document",
            image.bytes(),
            native(),
            variant!(LoadError::InvalidCorim { .. }),
            named(
                "CorimDocument",
                Vht::IGVM_VHT_CORIM_DOCUMENT,
                "initialization",
                0,
            ),
        );
    }
    {
        let mut image = base_image();
        let relative = image.add_data(b"signature bytes");
        image.push_initialization(corim_header(
            Vht::IGVM_VHT_CORIM_SIGNATURE,
            NATIVE,
            relative,
            15,
        ));
        corpus.add(
            "CoRIM signature without a document",
            image.bytes(),
            native(),
            variant!(LoadError::InvalidCorim { .. }),
            named(
                "CorimSignature",
                Vht::IGVM_VHT_CORIM_SIGNATURE,
                "initialization",
                0,
            ),
        );
    }
    {
        let mut image = base_image();
        let relative = image.add_data(b"corim document");
        for _ in 0..2 {
            image.push_initialization(corim_header(
                Vht::IGVM_VHT_CORIM_DOCUMENT,
                NATIVE,
                relative,
                14,
            ));
        }
        corpus.add(
            "two CoRIM documents for one platform",
            image.bytes(),
            native(),
            variant!(LoadError::InvalidCorim { .. }),
            named(
                "CorimDocument",
                Vht::IGVM_VHT_CORIM_DOCUMENT,
                "initialization",
                1,
            ),
        );
    }

    // --- Relocation -----------------------------------------------------------------------------

    for (name, size, alignment, reason) in [
        (
            "relocatable region of size 0",
            0u64,
            2 * MIB,
            "region size is zero",
        ),
        (
            "relocatable region with alignment 0",
            2 * MIB,
            0,
            "relocation alignment is zero",
        ),
        (
            "relocatable region ending past 2^64",
            u64::MAX,
            2 * MIB,
            "region end overflows 64 bits",
        ),
    ] {
        let mut image = base_image();
        image.push_initialization(RawHeader::new(
            Vht::IGVM_VHT_RELOCATABLE_REGION,
            &relocatable_region_body(2 * MIB, size, alignment),
        ));
        corpus.add(
            name,
            image.bytes(),
            native(),
            variant!(LoadError::InvalidRelocationHeader { .. }),
            format!(
                "{} is invalid: {reason}",
                named(
                    "RelocatableRegion",
                    Vht::IGVM_VHT_RELOCATABLE_REGION,
                    "initialization",
                    0
                )
            ),
        );
    }
    {
        let mut image = base_image();
        let body = IGVM_VHS_PAGE_TABLE_RELOCATION {
            compatibility_mask: NATIVE,
            vp_index: 0,
            vtl: 0,
            reserved: 0,
            gpa: 4 * MIB,
            size: 2 * PAGE,
            used_size: 3 * PAGE,
        };
        image.push_initialization(RawHeader::new(
            Vht::IGVM_VHT_PAGE_TABLE_RELOCATION_REGION,
            body.as_bytes(),
        ));
        corpus.add(
            "page table region used beyond its size",
            image.bytes(),
            native(),
            variant!(LoadError::InvalidRelocationHeader { .. }),
            named(
                "PageTableRelocationRegion",
                Vht::IGVM_VHT_PAGE_TABLE_RELOCATION_REGION,
                "initialization",
                0,
            ),
        );
    }
    {
        // The region at 2 MiB moves to 4 MiB, where the file puts a page that does not move.
        let mut options = native_options();
        options.relocation_base = Some(4 * MIB);
        corpus.add(
            "relocated region lands on a fixed page",
            relocatable_file(),
            options,
            variant!(LoadError::RelocationOverlapsFixedPages {
                region: HeaderRef {
                    header_type: 0x102,
                    index: 0
                },
                gpa: 0x40_0000,
                ..
            }),
            format!(
                "{} moves {} to 0x400000",
                named(
                    "RelocatableRegion",
                    Vht::IGVM_VHT_RELOCATABLE_REGION,
                    "initialization",
                    0
                ),
                directive_ref(PAGE_DATA, Vht::IGVM_VHT_PAGE_DATA, 0)
            ),
        );
    }

    // --- Guest physical addresses ---------------------------------------------------------------

    corpus.add(
        "page above guest memory",
        base_with(vec![page(512 * MIB, Vec::new())]),
        native(),
        variant!(LoadError::PageOutsideRam {
            gpa: 0x2000_0000,
            ..
        }),
        directive_ref(PAGE_DATA, Vht::IGVM_VHT_PAGE_DATA, 8),
    );
    corpus.add(
        "page at the top of the address space",
        base_with(vec![page(u64::MAX - 0xFFF, b"top".to_vec())]),
        native(),
        variant!(LoadError::PageOutsideRam { .. }),
        directive_ref(PAGE_DATA, Vht::IGVM_VHT_PAGE_DATA, 8),
    );
    corpus.add(
        "page in the MMIO hole",
        base_with(vec![page(MMIO_BASE + 0x10_0000, b"mmio".to_vec())]),
        options_with(4 * GIB, 1),
        variant!(LoadError::PageInMmioHole {
            gpa: 0xC010_0000,
            mmio_base: 0xC000_0000,
            ..
        }),
        directive_ref(PAGE_DATA, Vht::IGVM_VHT_PAGE_DATA, 8),
    );
    corpus.add(
        "parameter insert in the MMIO hole",
        {
            let mut image = base_image();
            let field = offset_of!(IGVM_VHS_PARAMETER_INSERT, gpa);
            image.directive(INSERT).set_u64(field, 0xFEE0_0000);
            image.bytes()
        },
        native(),
        variant!(LoadError::PageInMmioHole {
            gpa: 0xFEE0_0000,
            ..
        }),
        directive_ref("ParameterInsert", Vht::IGVM_VHT_PARAMETER_INSERT, INSERT),
    );
    {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_PAGE_DATA, flags);
        image.directive(PAGE_ZERO).set_u32(
            field,
            IgvmPageDataFlags::new().with_is_2mb_page(true).into(),
        );
        corpus.add(
            "2 MiB page not 2 MiB aligned",
            image.bytes(),
            native(),
            variant!(LoadError::MisalignedLargePage { gpa: 0x10_2000, .. }),
            directive_ref(PAGE_DATA, Vht::IGVM_VHT_PAGE_DATA, PAGE_ZERO),
        );
    }
    corpus.add(
        "two imports of one page",
        base_with(vec![page(PAGE_B_GPA, b"again".to_vec())]),
        native(),
        variant!(LoadError::OverlappingPages { gpa: 0x10_1000, .. }),
        format!(
            "{} overlaps {}",
            directive_ref(PAGE_DATA, Vht::IGVM_VHT_PAGE_DATA, 8),
            directive_ref(PAGE_DATA, Vht::IGVM_VHT_PAGE_DATA, PAGE_B)
        ),
    );
    {
        // A zero 2 MiB page at 0 covers the page at 1 MiB.
        let mut image = base_image();
        let mut large = zero_page(0);
        let field = offset_of!(IGVM_VHS_PAGE_DATA, flags);
        large.set_u32(
            field,
            IgvmPageDataFlags::new().with_is_2mb_page(true).into(),
        );
        image.insert_directive(CONTEXT, large);
        corpus.add(
            "2 MiB page covering 4 KiB pages",
            image.bytes(),
            native(),
            variant!(LoadError::OverlappingPages { .. }),
            directive_ref(PAGE_DATA, Vht::IGVM_VHT_PAGE_DATA, 8),
        );
    }
    {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_PARAMETER_INSERT, gpa);
        image.directive(INSERT).set_u64(field, PAGE_A_GPA);
        corpus.add(
            "parameter insert over page data",
            image.bytes(),
            native(),
            variant!(LoadError::OverlappingPages { .. }),
            format!(
                "{} overlaps {}",
                directive_ref("ParameterInsert", Vht::IGVM_VHT_PARAMETER_INSERT, INSERT),
                directive_ref(PAGE_DATA, Vht::IGVM_VHT_PAGE_DATA, PAGE_A)
            ),
        );
    }

    // --- Parameter areas ------------------------------------------------------------------------

    {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_PARAMETER_INSERT, parameter_area_index);
        image.directive(INSERT).set_u32(field, 7);
        corpus.add(
            "insert into an undeclared parameter area",
            image.bytes(),
            native(),
            variant!(LoadError::ParameterAreaUndeclared { area_index: 7, .. }),
            directive_ref("ParameterInsert", Vht::IGVM_VHT_PARAMETER_INSERT, INSERT),
        );
    }
    {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_PARAMETER, parameter_area_index);
        image.directive(COMMAND_LINE).set_u32(field, 3);
        corpus.add(
            "parameter in an undeclared parameter area",
            image.bytes(),
            native(),
            variant!(LoadError::ParameterAreaUndeclared { area_index: 3, .. }),
            directive_ref("CommandLine", Vht::IGVM_VHT_COMMAND_LINE, COMMAND_LINE),
        );
    }
    {
        let mut image = base_image();
        let area = RawHeader::new(Vht::IGVM_VHT_PARAMETER_AREA, &area_body(0, PAGE, 0));
        image.insert_directive(VP_COUNT, area);
        corpus.add(
            "parameter area declared twice",
            image.bytes(),
            native(),
            variant!(LoadError::ParameterAreaRedeclared { area_index: 0, .. }),
            format!(
                "{} declares parameter area 0 again (first declared by {})",
                directive_ref("ParameterArea", Vht::IGVM_VHT_PARAMETER_AREA, 4),
                directive_ref("ParameterArea", Vht::IGVM_VHT_PARAMETER_AREA, AREA)
            ),
        );
    }
    {
        let mut image = base_image();
        image.insert_directive(REQUIRED, insert(0, 4 * MIB));
        corpus.add(
            "parameter area inserted twice",
            image.bytes(),
            native(),
            variant!(LoadError::ParameterAreaAlreadyInserted { area_index: 0, .. }),
            directive_ref("ParameterInsert", Vht::IGVM_VHT_PARAMETER_INSERT, 7),
        );
    }
    {
        let mut image = base_image();
        image.insert_directive(REQUIRED, parameter(Vht::IGVM_VHT_MEMORY_MAP, 0, 128));
        corpus.add(
            "parameter after its area was inserted",
            image.bytes(),
            native(),
            variant!(LoadError::ParameterAreaAlreadyInserted { area_index: 0, .. }),
            directive_ref("MemoryMap", Vht::IGVM_VHT_MEMORY_MAP, 7),
        );
    }
    {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_PARAMETER, byte_offset);
        image.directive(VP_COUNT).set_u32(field, PAGE as u32 - 2);
        corpus.add(
            "vCPU count parameter past the end of its area",
            image.bytes(),
            native(),
            variant!(LoadError::ParameterDoesNotFit {
                offset: 0xFFE,
                needed: 4,
                ..
            }),
            directive_ref("VpCount", Vht::IGVM_VHT_VP_COUNT_PARAMETER, VP_COUNT),
        );
    }
    {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_PARAMETER, byte_offset);
        image.directive(COMMAND_LINE).set_u32(field, u32::MAX);
        corpus.add(
            "command line at offset 4 GiB - 1",
            image.bytes(),
            native(),
            variant!(LoadError::ParameterDoesNotFit {
                offset: 0xFFFF_FFFF,
                ..
            }),
            directive_ref("CommandLine", Vht::IGVM_VHT_COMMAND_LINE, COMMAND_LINE),
        );
    }
    {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_PARAMETER_AREA, number_of_bytes);
        image.directive(AREA).set_u64(field, 1 << 40);
        corpus.add(
            "parameter area of 1 TiB",
            image.bytes(),
            native(),
            variant!(LoadError::ParameterAreaTooLarge {
                size: 0x100_0000_0000,
                ..
            }),
            directive_ref("ParameterArea", Vht::IGVM_VHT_PARAMETER_AREA, AREA),
        );
    }

    // --- VP contexts and memory ranges ----------------------------------------------------------

    corpus.add(
        "two VP contexts for vCPU 0",
        base_with(vec![native_context(0)]),
        native(),
        variant!(LoadError::DuplicateVpContext { vp_index: 0, .. }),
        format!(
            "{} is a second VP context for vCPU 0",
            directive_ref("VpContext", Vht::IGVM_VHT_VP_CONTEXT, 9)
        ),
    );
    corpus.add(
        "VP context for a vCPU beyond --cpus",
        base_with(vec![native_context(1)]),
        native(),
        variant!(LoadError::VpIndexOutOfRange {
            vp_index: 1,
            vp_count: 1,
            ..
        }),
        directive_ref("VpContext", Vht::IGVM_VHT_VP_CONTEXT, 8),
    );
    corpus.add(
        "VP context for vCPU 65535",
        base_with(vec![native_context(u16::MAX)]),
        options_with(512 * MIB, 4),
        variant!(LoadError::VpIndexOutOfRange {
            vp_index: 65535,
            vp_count: 4,
            ..
        }),
        directive_ref("VpContext", Vht::IGVM_VHT_VP_CONTEXT, 8),
    );
    corpus.add(
        "RequiredMemory beyond --memory",
        base_file(),
        options_with(3 * MIB, 1),
        variant!(LoadError::RangeOutsideRam {
            gpa: 0x30_0000,
            size: 0x1000,
            ..
        }),
        directive_ref("RequiredMemory", Vht::IGVM_VHT_REQUIRED_MEMORY, REQUIRED),
    );
    {
        let mut image = base_image();
        image.insert_directive(CONTEXT, required_memory(256 * MIB, 0xFFFF_F000));
        corpus.add(
            "RequiredMemory of 4 GiB",
            image.bytes(),
            native(),
            variant!(LoadError::RangeOutsideRam {
                gpa: 0x1000_0000,
                size: 0xFFFF_F000,
                ..
            }),
            directive_ref("RequiredMemory", Vht::IGVM_VHT_REQUIRED_MEMORY, 8),
        );
    }
    {
        let mut image = base_image();
        let body = IGVM_VHS_ERROR_RANGE {
            gpa: 4 * GIB,
            compatibility_mask: NATIVE,
            size_bytes: 0x1000,
        };
        image.insert_directive(
            CONTEXT,
            RawHeader::new(Vht::IGVM_VHT_ERROR_RANGE, body.as_bytes()),
        );
        corpus.add(
            "ErrorRange outside guest memory",
            image.bytes(),
            native(),
            variant!(LoadError::RangeOutsideRam {
                gpa: 0x1_0000_0000,
                ..
            }),
            directive_ref("ErrorRange", Vht::IGVM_VHT_ERROR_RANGE, 8),
        );
    }

    // --- Page types -----------------------------------------------------------------------------

    {
        let mut image = base_image();
        image.insert_directive(
            CONTEXT,
            RawHeader::new(
                Vht::IGVM_VHT_PAGE_DATA,
                &page_body(
                    8 * MIB,
                    NATIVE,
                    IgvmPageDataFlags::new(),
                    IgvmPageDataType::SECRETS,
                ),
            ),
        );
        corpus.add(
            "SNP secrets page on native",
            image.bytes(),
            native(),
            variant!(LoadError::PageTypeNotSupported {
                data_type: "SECRETS",
                platform: Platform::Native,
                ..
            }),
            directive_ref(PAGE_DATA, Vht::IGVM_VHT_PAGE_DATA, 8),
        );
    }
    {
        let mut image = base_image();
        let policy = IGVM_VHS_GUEST_POLICY {
            policy: 0x30000,
            compatibility_mask: NATIVE,
            reserved: 0,
        };
        for _ in 0..2 {
            image.push_initialization(RawHeader::new(
                Vht::IGVM_VHT_GUEST_POLICY,
                policy.as_bytes(),
            ));
        }
        corpus.add(
            "two guest policies for one platform",
            image.bytes(),
            native(),
            variant!(LoadError::DuplicateHeader { .. }),
            format!(
                "{} repeats {}",
                named(
                    "GuestPolicy",
                    Vht::IGVM_VHT_GUEST_POLICY,
                    "initialization",
                    1
                ),
                named(
                    "GuestPolicy",
                    Vht::IGVM_VHT_GUEST_POLICY,
                    "initialization",
                    0
                )
            ),
        );
    }

    corpus.cases
}

/// Extracts the variant name from an error's `Debug` text.
fn variant_name(error: &LoadError) -> String {
    let debug = format!("{error:?}");
    debug
        .split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Runs one case and returns why it failed, if it did.
fn check(case: &Case) -> (String, Option<String>) {
    let outcome = catch_unwind(AssertUnwindSafe(|| load(&case.file, &case.options)));
    let error = match outcome {
        Err(_) => return ("panic".to_string(), Some("the loader panicked".to_string())),
        Ok(Ok(_)) => {
            return (
                "Ok".to_string(),
                Some("the file loaded without an error".to_string()),
            )
        }
        Ok(Err(error)) => error,
    };
    let variant = variant_name(&error);
    let message = error.to_string();
    let mut problems = Vec::new();
    if !(case.matches)(&error) {
        problems.push(format!("expected {}, got {error:?}", case.expected));
    }
    if message.is_empty() || message.contains('\n') {
        problems.push(format!("message is not one line: {message:?}"));
    }
    if !message.contains(&case.needle) {
        problems.push(format!(
            "message {message:?} does not contain {:?}",
            case.needle
        ));
    }
    if matches!(error, LoadError::IgvmPanic { .. } | LoadError::Igvm { .. }) {
        problems.push(format!(
            "the igvm crate's error does not name the header: {message}"
        ));
    }
    let problem = (!problems.is_empty()).then(|| problems.join("; "));
    (format!("{variant}: {message}"), problem)
}

#[test]
fn base_files_load() {
    let file = base_file();
    let plan = load(&file, &native_options()).expect("the base file loads");
    assert_eq!(plan.platform, Platform::Native);
    // Three pages and the one-page parameter area.
    assert_eq!(plan.operations.len(), 4);
    assert_eq!(plan.vp_contexts.len(), 1);
    assert_eq!(plan.required_memory.len(), 1);

    // The reassembled base file is byte-for-byte the serialized one.
    assert_eq!(base_image().bytes(), base_file());

    let file = relocatable_file();
    let plan = load(&file, &native_options()).expect("the relocatable file loads");
    assert_eq!(plan.operations.len(), 2);
}

#[test]
fn corpus_rejects_every_case() {
    let cases = corpus();
    assert!(cases.len() >= 40, "the corpus has {} cases", cases.len());

    let mut names: Vec<&str> = cases.iter().map(|case| case.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names are not unique");

    let mut failures = Vec::new();
    println!("{:<58} result", "case");
    for case in &cases {
        let (result, problem) = check(case);
        println!("{:<58} {result}", case.name);
        if let Some(problem) = problem {
            failures.push(format!("{}: {problem}", case.name));
        }
    }
    println!("{} cases, {} failed", cases.len(), failures.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn parse_alone_rejects_file_level_damage() {
    // Damage that `parse` must catch before any host description is involved.
    for case in corpus().iter().filter(|case| {
        matches!(
            case.expected.split([' ', '{']).next(),
            Some(
                "LoadError::FileTooShort"
                    | "LoadError::InvalidMagic"
                    | "LoadError::ChecksumMismatch"
                    | "LoadError::TruncatedHeader"
                    | "LoadError::InvalidHeaderLength"
                    | "LoadError::UnknownHeader"
                    | "LoadError::NoPlatformHeader"
            )
        )
    }) {
        let error = parse(&case.file).expect_err(case.name);
        assert!((case.matches)(&error), "{}: {error:?}", case.name);
    }
}

#[test]
fn optional_unknown_header_is_skipped() {
    let mut image = base_image();
    image.insert_directive(
        CONTEXT,
        RawHeader {
            header_type: 0x3F0 | IGVM_VHT_OPTIONAL_BIT,
            ..RawHeader::new(Vht(0), &[0xEE; 12])
        },
    );
    let file = image.bytes();
    let parsed = parse(&file).expect("an optional unknown header is skipped");
    assert_eq!(
        parsed.skipped_headers,
        vec![header_ref(Vht(0x3F0 | IGVM_VHT_OPTIONAL_BIT), 8)]
    );
    let plan = load(&file, &native_options()).expect("the file loads");
    assert_eq!(plan.operations.len(), 4);
}

// ---------------------------------------------------------------------------------------------
// Inputs that once reached the igvm crate or an unbounded allocation
// ---------------------------------------------------------------------------------------------

/// Asserts that `error` is a typed loader error, not the igvm crate's, with a one-line
/// message that contains `needle`. Returns the problem as text.
fn precise_error_problem(error: &LoadError, needle: &str) -> Option<String> {
    let message = error.to_string();
    let mut problems = Vec::new();
    if matches!(error, LoadError::Igvm { .. } | LoadError::IgvmPanic { .. }) {
        problems.push(format!(
            "the igvm crate's error, not a typed one: {error:?}"
        ));
    }
    if message.contains('\n') {
        problems.push(format!("message is not one line: {message:?}"));
    }
    if !message.contains(needle) {
        problems.push(format!("message {message:?} does not name {needle:?}"));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Returns the base file with a second SupportedPlatform header, VSM with the native mask, and
/// its VP context moved to vCPU 1.
fn shared_mask_file() -> Vec<u8> {
    let mut image = base_image();
    image.headers.insert(
        1,
        RawHeader::new(
            Vht::IGVM_VHT_SUPPORTED_PLATFORM,
            &platform_body(IgvmPlatformType::VSM_ISOLATION, NATIVE),
        ),
    );
    image
        .directive(CONTEXT)
        .set_u32(offset_of!(IGVM_VHS_VP_CONTEXT, vp_index), 1);
    image.bytes()
}

/// Two SupportedPlatform headers with the same compatibility mask, native first and VSM
/// second, and a VP context for vCPU 1 with that mask.
///
/// igvm 0.5 maps a mask to the last platform header that declares it, so it reads this
/// context as a VBS register list, and there `assert_eq!(vp_index, 0)` panics. The loader
/// must reject the second header before the crate parses the file. A caught panic would
/// still print to stderr, give a three-line `IgvmPanic` message and abort a libFuzzer run.
#[test]
fn platforms_sharing_a_mask_get_a_typed_error() {
    let error =
        load(&shared_mask_file(), &options_with(512 * MIB, 2)).expect_err("the file is invalid");
    let needle = named(
        "SupportedPlatform",
        Vht::IGVM_VHT_SUPPORTED_PLATFORM,
        "platform",
        1,
    );
    if let Some(problem) = precise_error_problem(&error, &needle) {
        panic!("{problem}");
    }
}

/// A variable header section that ends 4 bytes into the last header: its type field (0x304,
/// VpContext) is in the section, its length field is not. The error should name the type
/// that was read, not type 0 in "unknown-section".
#[test]
fn truncated_header_names_its_type() {
    let image = base_image();
    let mut file = image.bytes();
    let size = read_u32(&file, FIXED_VARIABLE_HEADER_SIZE);
    let last = image.headers.last().expect("the base file has headers");
    let cut = align_8(8 + last.body.len()) as u32 - 4;
    write_u32(&mut file, FIXED_VARIABLE_HEADER_SIZE, size - cut);
    fix_checksum(&mut file);

    let error = parse(&file).expect_err("the last header is cut");
    assert_eq!(
        error,
        LoadError::TruncatedHeader {
            header: header_ref(Vht::IGVM_VHT_VP_CONTEXT, CONTEXT)
        }
    );
}

/// Inputs that pass the loader's own checks and are then rejected by the igvm crate, whose
/// message names neither the header nor its index. Each should get a typed error naming the
/// header (or, for the fixed header, the field and its byte offset).
#[test]
fn crate_rejections_name_the_header() {
    let mut inputs: Vec<(&str, Vec<u8>, String)> = Vec::new();
    let page_b = directive_ref(PAGE_DATA, Vht::IGVM_VHT_PAGE_DATA, PAGE_B);
    {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_PAGE_DATA, gpa);
        image.directive(PAGE_B).set_u64(field, PAGE_B_GPA + 0x800);
        inputs.push((
            "4 KiB page at a misaligned GPA",
            image.bytes(),
            page_b.clone(),
        ));
    }
    {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_PAGE_DATA, data_type);
        image.directive(PAGE_B).body[field] = 0x77;
        inputs.push(("unknown page data type", image.bytes(), page_b.clone()));
    }
    {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_PAGE_DATA, reserved);
        image.directive(PAGE_B).body[field] = 1;
        inputs.push(("PageData reserved field not zero", image.bytes(), page_b));
    }
    {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_PARAMETER_AREA, number_of_bytes);
        image.directive(AREA).set_u64(field, 100);
        inputs.push((
            "parameter area size not a multiple of 4 KiB",
            image.bytes(),
            directive_ref("ParameterArea", Vht::IGVM_VHT_PARAMETER_AREA, AREA),
        ));
    }
    {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_REQUIRED_MEMORY, gpa);
        image.directive(REQUIRED).set_u64(field, REQUIRED_GPA + 1);
        inputs.push((
            "RequiredMemory at a misaligned GPA",
            image.bytes(),
            directive_ref("RequiredMemory", Vht::IGVM_VHT_REQUIRED_MEMORY, REQUIRED),
        ));
    }
    {
        // Bytes after the native context in its 4 KiB of file data must be zero.
        let mut image = base_image();
        let (_, relative) = image
            .directive(CONTEXT)
            .data_ref
            .expect("the context has data");
        image.data[relative as usize + 4000] = 1;
        inputs.push((
            "native VP context page with trailing bytes",
            image.bytes(),
            directive_ref("VpContext", Vht::IGVM_VHT_VP_CONTEXT, CONTEXT),
        ));
    }
    {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_VP_CONTEXT, compatibility_mask);
        image.directive(CONTEXT).set_u32(field, 0x3);
        inputs.push((
            "VP context mask of two bits",
            image.bytes(),
            directive_ref("VpContext", Vht::IGVM_VHT_VP_CONTEXT, CONTEXT),
        ));
    }
    {
        let mut image = base_image();
        let field = offset_of!(IGVM_VHS_SUPPORTED_PLATFORM, platform_type);
        image.platform(0).body[field] = 0x7F;
        inputs.push((
            "platform header of unknown type",
            image.bytes(),
            named(
                "SupportedPlatform",
                Vht::IGVM_VHT_SUPPORTED_PLATFORM,
                "platform",
                0,
            ),
        ));
    }
    {
        let mut image = base_image();
        image.headers.insert(
            1,
            RawHeader::new(
                Vht::IGVM_VHT_SUPPORTED_PLATFORM,
                &platform_body(IgvmPlatformType::NATIVE, 0x2),
            ),
        );
        inputs.push((
            "two native platform headers",
            image.bytes(),
            named(
                "SupportedPlatform",
                Vht::IGVM_VHT_SUPPORTED_PLATFORM,
                "platform",
                1,
            ),
        ));
    }
    {
        let mut image = base_image();
        image.fixed.resize(FIXED_V2_SIZE, 0);
        write_u32(&mut image.fixed, FIXED_VERSION, 2);
        write_u32(&mut image.fixed, FIXED_V2_ARCHITECTURE, 9);
        write_u32(&mut image.fixed, FIXED_V2_PAGE_SIZE, PAGE as u32);
        inputs.push((
            "format version 2 with unknown architecture 9",
            image.bytes(),
            "architecture".to_string(),
        ));
        write_u32(&mut image.fixed, FIXED_V2_ARCHITECTURE, 0);
        write_u32(&mut image.fixed, FIXED_V2_PAGE_SIZE, 0x1_0000);
        inputs.push((
            "format version 2 with 64 KiB pages",
            image.bytes(),
            "page size".to_string(),
        ));
    }

    let mut failures = Vec::new();
    for (name, file, needle) in &inputs {
        match load(file, &native_options()) {
            Ok(_) => failures.push(format!("{name}: the file loaded")),
            Err(error) => {
                println!("{name:<48} {error}");
                if let Some(problem) = precise_error_problem(&error, needle) {
                    failures.push(format!("{name}: {problem}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} inputs got an imprecise error:\n{}",
        failures.len(),
        inputs.len(),
        failures.join("\n")
    );
}

/// Environment variable that makes [`measure_huge_parameter_area_in_child`] run.
const CHILD_ENV: &str = "IGVMM_MALFORMED_CHILD";

/// Returns the base file with a parameter area of 1 TiB (inserted at 2 MiB) and its one
/// platform header of type `platform_type`. A TDX file has no VP context header, so the context is
/// left out there.
fn huge_area_file(platform_type: IgvmPlatformType) -> Vec<u8> {
    let mut image = base_image();
    if platform_type == IgvmPlatformType::TDX {
        let context = image.position(&IGVM_VHT_RANGE_DIRECTIVE, CONTEXT);
        image.headers.remove(context);
    }
    let field = offset_of!(IGVM_VHS_PARAMETER_AREA, number_of_bytes);
    image.directive(AREA).set_u64(field, 1 << 40);
    let field = offset_of!(IGVM_VHS_SUPPORTED_PLATFORM, platform_type);
    image.platform(0).body[field] = platform_type.0;
    image.bytes()
}

/// `plan_for_measurement` (behind `igvmm measure`) sizes guest RAM from the highest address the
/// file touches. Without a bound on parameter areas, a 1 TiB area fits that RAM and the loader
/// allocates all of it: the process aborts with "memory allocation of 1099511627776 bytes
/// failed". The measurement must reject the area instead. The call runs in a child process, so
/// that an abort fails only this test.
#[test]
fn measure_rejects_huge_parameter_area() {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let output = std::process::Command::new(exe)
        .args([
            "--exact",
            "measure_huge_parameter_area_in_child",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .expect("the test binary starts");
    // libtest prints the child's panic on stdout, the allocation failure goes to stderr.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reason = stdout
        .lines()
        .chain(stderr.lines())
        .find(|line| {
            line.contains("memory allocation") || line.contains(": Err(") || line.contains(": Ok(")
        })
        .unwrap_or_default();
    assert!(
        output.status.success(),
        "plan_for_measurement on a file with a 1 TiB parameter area ended with {}: {reason}",
        output.status
    );
}

/// Runs the measurement for [`measure_rejects_huge_parameter_area`] in its child process.
#[test]
#[ignore = "run by measure_rejects_huge_parameter_area in a child process"]
fn measure_huge_parameter_area_in_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // `igvmm measure` measures SEV-SNP and TDX files; the native case uses the same host.
    for (platform_type, platform) in [
        (IgvmPlatformType::SEV_SNP, Platform::SevSnp),
        (IgvmPlatformType::TDX, Platform::Tdx),
        (IgvmPlatformType::NATIVE, Platform::Native),
    ] {
        let file = huge_area_file(platform_type);
        let result = igvm_loader::measure::plan_for_measurement(&file, platform, 1);
        assert!(
            matches!(result, Err(LoadError::ParameterAreaTooLarge { .. })),
            "{platform}: {:?}",
            result.map(|plan| plan.operations.len())
        );
    }
}

/// The same file under `run`: guest RAM bounds the area, so it gets a typed error.
#[test]
fn run_rejects_huge_parameter_area() {
    let file = huge_area_file(IgvmPlatformType::NATIVE);
    let error = load(&file, &native_options()).expect_err("the area exceeds RAM");
    assert!(
        matches!(error, LoadError::ParameterAreaTooLarge { size, .. } if size == 1 << 40),
        "{error:?}"
    );
}

/// Environment variable naming the directory that [`export_corpus`] writes to.
const EXPORT_ENV: &str = "IGVMM_CORPUS_DIR";

/// Writes every corpus case, the base files and the inputs of the failing tests above as
/// `.igvm` files into the directory that `IGVMM_CORPUS_DIR` names, as fuzzing seeds
/// (`scripts/fuzz.sh` runs it).
#[test]
#[ignore = "writes files; run by scripts/fuzz.sh with IGVMM_CORPUS_DIR set"]
fn export_corpus() {
    let Some(dir) = std::env::var_os(EXPORT_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("the corpus directory can be created");
    let slug = |name: &str| -> String {
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect()
    };
    let mut files = vec![
        ("base".to_string(), base_file()),
        ("relocatable".to_string(), relocatable_file()),
        ("shared-mask".to_string(), shared_mask_file()),
        (
            "huge-parameter-area-snp".to_string(),
            huge_area_file(IgvmPlatformType::SEV_SNP),
        ),
    ];
    for case in corpus() {
        files.push((format!("case-{}", slug(case.name)), case.file));
    }
    for (name, bytes) in &files {
        std::fs::write(dir.join(format!("malformed-{name}.igvm")), bytes)
            .expect("the corpus file can be written");
    }
    println!("wrote {} files to {}", files.len(), dir.display());
}
