//! Builds IGVM files for test guests with the igvm crate.
//!
//! [`IgvmBuilder`] collects headers for one native platform (compatibility mask 1) and
//! serializes them with `IgvmFile::new` and `IgvmFile::serialize`. Headers that the igvm crate
//! cannot produce are spliced into the serialized bytes by [`insert_raw_header`], which moves
//! the file data, fixes every file offset, the fixed-header sizes and the CRC32 checksum:
//! - headers of an unknown type with [`IGVM_VHT_OPTIONAL_BIT`] set, which a loader must skip;
//! - relocation headers for a native file. igvm 0.5 pairs a RelocatableRegion or
//!   PageTableRelocationRegion only with a VBS VP context, so `IgvmFile::new` rejects them
//!   next to a native VP context with `NoMatchingVpContext`.

use igvm::hv_defs::Vtl;
use igvm::{
    IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader, IgvmRevision,
};
use igvm_defs::{
    IgvmNativeVpContextX64, IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType,
    IgvmVariableHeaderType, IGVM_FIXED_HEADER, IGVM_NATIVE_PLATFORM_VERSION,
    IGVM_VHF_RELOCATABLE_REGION_APPLY_GDTR, IGVM_VHF_RELOCATABLE_REGION_APPLY_RIP,
    IGVM_VHS_PAGE_TABLE_RELOCATION, IGVM_VHS_PARAMETER, IGVM_VHS_PARAMETER_INSERT,
    IGVM_VHS_RELOCATABLE_REGION, IGVM_VHS_SUPPORTED_PLATFORM, IGVM_VHS_VARIABLE_HEADER,
    IGVM_VHT_OPTIONAL_BIT, PAGE_SIZE_4K,
};
use zerocopy::{FromBytes, IntoBytes};

/// Compatibility mask of the single native platform in files from [`IgvmBuilder`].
pub const NATIVE_MASK: u32 = 1;

/// Size of a 2 MiB page.
pub const PAGE_SIZE_2M: u64 = 0x20_0000;

/// Error from building or patching an IGVM file.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The igvm crate rejected the headers.
    #[error("igvm crate rejected the file: {0}")]
    Igvm(#[from] igvm::Error),
    /// The serialized file is shorter than its headers claim.
    #[error("serialized IGVM file is malformed at byte {0:#x}")]
    Malformed(usize),
    /// A raw header position is past the end of the variable header section.
    #[error("raw header index {index} is past the {count} headers of the file")]
    IndexOutOfRange {
        /// The requested position.
        index: usize,
        /// The number of headers in the file.
        count: usize,
    },
    /// The file grew beyond the 32-bit sizes of the fixed header.
    #[error("IGVM file is larger than 4 GiB")]
    TooLarge,
}

/// A parameter that the loader fills in a parameter area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parameter {
    /// `IGVM_VHT_VP_COUNT_PARAMETER`: a u32 count of VPs.
    VpCount,
    /// `IGVM_VHT_ENVIRONMENT_INFO_PARAMETER`: a u32 bitfield.
    EnvironmentInfo,
    /// `IGVM_VHT_MEMORY_MAP`: an array of `IGVM_VHS_MEMORY_MAP_ENTRY`.
    MemoryMap,
    /// `IGVM_VHT_COMMAND_LINE`: a NUL-terminated string.
    CommandLine,
    /// `IGVM_VHT_MADT`: the ACPI MADT.
    Madt,
    /// `IGVM_VHT_SRAT`: the ACPI SRAT.
    Srat,
    /// `IGVM_VHT_SLIT`: the ACPI SLIT.
    Slit,
    /// `IGVM_VHT_PPTT`: the ACPI PPTT.
    Pptt,
    /// `IGVM_VHT_MMIO_RANGES`: two `IGVM_VHS_MEMORY_RANGE`s.
    MmioRanges,
    /// `IGVM_VHT_DEVICE_TREE`: a flattened device tree.
    DeviceTree,
}

impl Parameter {
    fn header(self, info: IGVM_VHS_PARAMETER) -> IgvmDirectiveHeader {
        match self {
            Parameter::VpCount => IgvmDirectiveHeader::VpCount(info),
            Parameter::EnvironmentInfo => IgvmDirectiveHeader::EnvironmentInfo(info),
            Parameter::MemoryMap => IgvmDirectiveHeader::MemoryMap(info),
            Parameter::CommandLine => IgvmDirectiveHeader::CommandLine(info),
            Parameter::Madt => IgvmDirectiveHeader::Madt(info),
            Parameter::Srat => IgvmDirectiveHeader::Srat(info),
            Parameter::Slit => IgvmDirectiveHeader::Slit(info),
            Parameter::Pptt => IgvmDirectiveHeader::Pptt(info),
            Parameter::MmioRanges => IgvmDirectiveHeader::MmioRanges(info),
            Parameter::DeviceTree => IgvmDirectiveHeader::DeviceTree(info),
        }
    }
}

/// A RelocatableRegion initialization header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelocatableRegion {
    /// GPA the region is built for.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Alignment of any new base.
    pub alignment: u64,
    /// Lowest base the loader may choose.
    pub minimum_gpa: u64,
    /// Highest base the loader may choose.
    pub maximum_gpa: u64,
    /// Whether the loader adds the relocation offset to RIP of `vp_index`.
    pub apply_rip_offset: bool,
    /// Whether the loader adds the relocation offset to the GDTR base of `vp_index`.
    pub apply_gdtr_offset: bool,
    /// The VP whose registers the flags apply to.
    pub vp_index: u16,
}

/// A PageTableRelocationRegion initialization header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageTableRelocation {
    /// GPA of the region that contains the page tables (CR3 points into it).
    pub gpa: u64,
    /// Size of the region in bytes.
    pub size: u64,
    /// Bytes of the region that hold page tables.
    pub used_size: u64,
    /// The VP whose CR3 the loader fixes.
    pub vp_index: u16,
}

/// A header spliced into the serialized bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawHeader {
    /// Index among all variable headers where it goes.
    index: usize,
    /// `IGVM_VHS_VARIABLE_HEADER::typ`.
    typ: u32,
    /// The body, padded to 8 bytes when written.
    body: Vec<u8>,
}

/// Collects the headers of a native IGVM file.
#[derive(Debug, Clone, Default)]
pub struct IgvmBuilder {
    initialization: Vec<IgvmInitializationHeader>,
    directives: Vec<IgvmDirectiveHeader>,
    relocatable_regions: Vec<RelocatableRegion>,
    page_table_relocation: Option<PageTableRelocation>,
    raw_headers: Vec<RawHeader>,
    /// 2 MiB of file data for PageData directives, by directive index.
    large_pages: Vec<(usize, Vec<u8>)>,
    next_area_index: u32,
}

impl IgvmBuilder {
    /// Creates an empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` as 4 KiB PageData headers starting at `gpa` (4 KiB aligned). The last page
    /// is padded with zeros.
    pub fn page_data(&mut self, gpa: u64, bytes: &[u8]) -> &mut Self {
        for (i, chunk) in bytes.chunks(PAGE_SIZE_4K as usize).enumerate() {
            // The serializer pads to 4 KiB anyway; padding here keeps the headers equal to what
            // a parser returns.
            let mut data = chunk.to_vec();
            data.resize(PAGE_SIZE_4K as usize, 0);
            self.directives.push(IgvmDirectiveHeader::PageData {
                gpa: gpa + i as u64 * PAGE_SIZE_4K,
                compatibility_mask: NATIVE_MASK,
                flags: IgvmPageDataFlags::new(),
                data_type: IgvmPageDataType::NORMAL,
                data,
            });
        }
        self
    }

    /// Adds `count` empty 4 KiB PageData headers (pages of zeros) from `gpa`.
    pub fn zero_pages(&mut self, gpa: u64, count: u64) -> &mut Self {
        for i in 0..count {
            self.directives.push(IgvmDirectiveHeader::PageData {
                gpa: gpa + i * PAGE_SIZE_4K,
                compatibility_mask: NATIVE_MASK,
                flags: IgvmPageDataFlags::new(),
                data_type: IgvmPageDataType::NORMAL,
                data: Vec::new(),
            });
        }
        self
    }

    /// Adds one PageData header with the 2 MiB flag at `gpa` (2 MiB aligned), with `data`
    /// (at most 2 MiB, padded with zeros) as its 2 MiB of file data. Empty `data` gives a
    /// 2 MiB page of zeros with no file data.
    ///
    /// igvm 0.5 serializes at most 4 KiB per PageData header, so the header is serialized
    /// without data and [`IgvmBuilder::build`] appends the 2 MiB to the file data section and
    /// points the header at it.
    pub fn page_2mb(&mut self, gpa: u64, data: &[u8]) -> &mut Self {
        if !data.is_empty() {
            let mut large = data.to_vec();
            large.resize(PAGE_SIZE_2M as usize, 0);
            self.large_pages.push((self.directives.len(), large));
        }
        self.directives.push(IgvmDirectiveHeader::PageData {
            gpa,
            compatibility_mask: NATIVE_MASK,
            flags: IgvmPageDataFlags::new().with_is_2mb_page(true),
            data_type: IgvmPageDataType::NORMAL,
            data: Vec::new(),
        });
        self
    }

    /// Declares a parameter area of `size` bytes at `gpa`, requests each of `parameters` at its
    /// byte offset, and inserts the area. Returns the area index.
    pub fn parameter_area(&mut self, gpa: u64, size: u64, parameters: &[(Parameter, u32)]) -> u32 {
        let index = self.next_area_index;
        self.next_area_index += 1;
        self.directives.push(IgvmDirectiveHeader::ParameterArea {
            number_of_bytes: size,
            parameter_area_index: index,
            initial_data: Vec::new(),
        });
        for &(parameter, byte_offset) in parameters {
            self.directives.push(parameter.header(IGVM_VHS_PARAMETER {
                parameter_area_index: index,
                byte_offset,
            }));
        }
        self.directives.push(IgvmDirectiveHeader::ParameterInsert(
            IGVM_VHS_PARAMETER_INSERT {
                gpa,
                compatibility_mask: NATIVE_MASK,
                parameter_area_index: index,
            },
        ));
        index
    }

    /// Adds a native x64 VP context for `vp_index`.
    pub fn vp_context(&mut self, vp_index: u16, context: IgvmNativeVpContextX64) -> &mut Self {
        self.directives
            .push(IgvmDirectiveHeader::X64NativeVpContext {
                compatibility_mask: NATIVE_MASK,
                vp_index,
                context: Box::new(context),
            });
        self
    }

    /// Adds a RelocatableRegion header.
    pub fn relocatable_region(&mut self, region: RelocatableRegion) -> &mut Self {
        self.relocatable_regions.push(region);
        self
    }

    /// Adds the PageTableRelocationRegion header.
    pub fn page_table_relocation(&mut self, region: PageTableRelocation) -> &mut Self {
        self.page_table_relocation = Some(region);
        self
    }

    /// Adds a CoRIM document and, when given, its COSE_Sign1 signature for the native platform.
    pub fn corim(&mut self, document: &[u8], signature: Option<&[u8]>) -> &mut Self {
        self.initialization
            .push(IgvmInitializationHeader::CorimDocument {
                compatibility_mask: NATIVE_MASK,
                document: document.to_vec(),
            });
        if let Some(signature) = signature {
            self.initialization
                .push(IgvmInitializationHeader::CorimSignature {
                    compatibility_mask: NATIVE_MASK,
                    signature: signature.to_vec(),
                });
        }
        self
    }

    /// Splices a header of type `typ` with `body` into the file at variable-header position
    /// `index` (0 is before the platform header). Use [`IGVM_VHT_OPTIONAL_BIT`] in `typ` for a
    /// header a loader may skip.
    pub fn raw_header(&mut self, index: usize, typ: u32, body: &[u8]) -> &mut Self {
        self.raw_headers.push(RawHeader {
            index,
            typ,
            body: body.to_vec(),
        });
        self
    }

    /// Returns the headers as an [`IgvmFile`], without the relocation and raw headers.
    pub fn igvm_file(&self) -> Result<IgvmFile, BuildError> {
        let platform = IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
            compatibility_mask: NATIVE_MASK,
            highest_vtl: 0,
            platform_type: IgvmPlatformType::NATIVE,
            platform_version: IGVM_NATIVE_PLATFORM_VERSION,
            shared_gpa_boundary: 0,
        });
        Ok(IgvmFile::new(
            IgvmRevision::V1,
            vec![platform],
            self.initialization.clone(),
            self.directives.clone(),
        )?)
    }

    /// Serializes the file, then splices in the relocation headers (after the platform header
    /// and the CoRIM headers) and the raw headers.
    pub fn build(&self) -> Result<Vec<u8>, BuildError> {
        let mut bytes = Vec::new();
        self.igvm_file()?.serialize(&mut bytes)?;
        for (directive_index, data) in &self.large_pages {
            let header_index = 1 + self.initialization.len() + directive_index;
            bytes = append_file_data(&bytes, header_index, data)?;
        }

        // Relocation headers go at the end of the initialization section, in the order
        // region headers then the page table header.
        let mut position = 1 + self.initialization.len();
        for region in &self.relocatable_regions {
            let mut flags = 0u8;
            if region.apply_rip_offset {
                flags |= IGVM_VHF_RELOCATABLE_REGION_APPLY_RIP;
            }
            if region.apply_gdtr_offset {
                flags |= IGVM_VHF_RELOCATABLE_REGION_APPLY_GDTR;
            }
            let header = IGVM_VHS_RELOCATABLE_REGION {
                compatibility_mask: NATIVE_MASK,
                vp_index: region.vp_index,
                vtl: Vtl::Vtl0 as u8,
                flags,
                relocation_alignment: region.alignment,
                relocation_region_gpa: region.gpa,
                relocation_region_size: region.size,
                minimum_relocation_gpa: region.minimum_gpa,
                maximum_relocation_gpa: region.maximum_gpa,
            };
            bytes = insert_raw_header(
                &bytes,
                position,
                IgvmVariableHeaderType::IGVM_VHT_RELOCATABLE_REGION.0,
                header.as_bytes(),
            )?;
            position += 1;
        }
        if let Some(region) = self.page_table_relocation {
            let header = IGVM_VHS_PAGE_TABLE_RELOCATION {
                compatibility_mask: NATIVE_MASK,
                vp_index: region.vp_index,
                vtl: Vtl::Vtl0 as u8,
                reserved: 0,
                gpa: region.gpa,
                size: region.size,
                used_size: region.used_size,
            };
            bytes = insert_raw_header(
                &bytes,
                position,
                IgvmVariableHeaderType::IGVM_VHT_PAGE_TABLE_RELOCATION_REGION.0,
                header.as_bytes(),
            )?;
        }

        for raw in &self.raw_headers {
            bytes = insert_raw_header(&bytes, raw.index, raw.typ, &raw.body)?;
        }
        Ok(bytes)
    }
}

/// One variable header as found in a serialized file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSpan {
    /// `IGVM_VHS_VARIABLE_HEADER::typ`.
    pub typ: u32,
    /// Offset of the 8-byte type/length prefix in the file.
    pub offset: usize,
    /// Length of the body as the prefix gives it.
    pub length: usize,
}

impl HeaderSpan {
    /// Offset of the next header: the body is padded to 8 bytes.
    pub fn next(&self) -> usize {
        self.offset + 8 + self.length.div_ceil(8) * 8
    }
}

fn read_fixed_header(bytes: &[u8]) -> Result<IGVM_FIXED_HEADER, BuildError> {
    IGVM_FIXED_HEADER::read_from_prefix(bytes)
        .map(|(header, _)| header)
        .map_err(|_| BuildError::Malformed(0))
}

/// Lists the variable headers of a serialized IGVM file.
pub fn header_spans(bytes: &[u8]) -> Result<Vec<HeaderSpan>, BuildError> {
    let fixed = read_fixed_header(bytes)?;
    let start = fixed.variable_header_offset as usize;
    let end = start + fixed.variable_header_size as usize;
    let mut spans = Vec::new();
    let mut offset = start;
    while offset < end {
        let prefix = bytes
            .get(offset..)
            .and_then(|rest| IGVM_VHS_VARIABLE_HEADER::read_from_prefix(rest).ok())
            .map(|(prefix, _)| prefix)
            .ok_or(BuildError::Malformed(offset))?;
        let span = HeaderSpan {
            typ: prefix.typ.0,
            offset,
            length: prefix.length as usize,
        };
        if span.next() > end {
            return Err(BuildError::Malformed(offset));
        }
        spans.push(span);
        offset = span.next();
    }
    Ok(spans)
}

/// Offset of the `file_offset` field in the body of header types that point at file data.
fn file_offset_field(typ: u32) -> Option<usize> {
    match IgvmVariableHeaderType(typ) {
        IgvmVariableHeaderType::IGVM_VHT_PAGE_DATA
        | IgvmVariableHeaderType::IGVM_VHT_PARAMETER_AREA
        | IgvmVariableHeaderType::IGVM_VHT_VP_CONTEXT => Some(12),
        IgvmVariableHeaderType::IGVM_VHT_CORIM_DOCUMENT
        | IgvmVariableHeaderType::IGVM_VHT_CORIM_SIGNATURE => Some(4),
        _ => None,
    }
}

fn read_u32(bytes: &[u8], offset: usize) -> Result<u32, BuildError> {
    bytes
        .get(offset..offset + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(BuildError::Malformed(offset))
}

fn write_u32(bytes: &mut [u8], offset: usize, value: u32) -> Result<(), BuildError> {
    bytes
        .get_mut(offset..offset + 4)
        .ok_or(BuildError::Malformed(offset))?
        .copy_from_slice(&value.to_le_bytes());
    Ok(())
}

/// Recomputes the fixed header's CRC32, taken over the fixed header (checksum field zero) and
/// the variable header section.
pub fn fix_checksum(bytes: &mut [u8]) -> Result<(), BuildError> {
    let fixed = read_fixed_header(bytes)?;
    let checksum_offset = std::mem::offset_of!(IGVM_FIXED_HEADER, checksum);
    write_u32(bytes, checksum_offset, 0)?;
    let end = fixed.variable_header_offset as usize + fixed.variable_header_size as usize;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(
        bytes
            .get(..std::mem::size_of::<IGVM_FIXED_HEADER>())
            .ok_or(BuildError::Malformed(0))?,
    );
    hasher.update(
        bytes
            .get(fixed.variable_header_offset as usize..end)
            .ok_or(BuildError::Malformed(end))?,
    );
    write_u32(bytes, checksum_offset, hasher.finalize())
}

/// Returns `bytes` with a header of type `typ` and body `body` inserted before variable header
/// number `index` (or at the end when `index` equals the header count). The file data moves
/// by the size of the new header, so every file offset, the fixed header's sizes and its
/// checksum are updated.
pub fn insert_raw_header(
    bytes: &[u8],
    index: usize,
    typ: u32,
    body: &[u8],
) -> Result<Vec<u8>, BuildError> {
    let fixed = read_fixed_header(bytes)?;
    let spans = header_spans(bytes)?;
    let section_end = fixed.variable_header_offset as usize + fixed.variable_header_size as usize;
    let at = match spans.get(index) {
        Some(span) => span.offset,
        None if index == spans.len() => section_end,
        None => {
            return Err(BuildError::IndexOutOfRange {
                index,
                count: spans.len(),
            })
        }
    };

    let mut header = Vec::new();
    header.extend_from_slice(&typ.to_le_bytes());
    header.extend_from_slice(&(body.len() as u32).to_le_bytes());
    header.extend_from_slice(body);
    header.resize(8 + body.len().div_ceil(8) * 8, 0);
    let delta = u32::try_from(header.len()).map_err(|_| BuildError::TooLarge)?;

    let mut out = Vec::with_capacity(bytes.len() + header.len());
    out.extend_from_slice(bytes.get(..at).ok_or(BuildError::Malformed(at))?);
    out.extend_from_slice(&header);
    out.extend_from_slice(bytes.get(at..).ok_or(BuildError::Malformed(at))?);

    // File offsets are absolute, and the data section moved by `delta`.
    for span in &spans {
        let Some(field) = file_offset_field(span.typ) else {
            continue;
        };
        let moved = if span.offset >= at { delta as usize } else { 0 };
        let position = span.offset + moved + 8 + field;
        let value = read_u32(&out, position)?;
        if value != 0 {
            let shifted = value.checked_add(delta).ok_or(BuildError::TooLarge)?;
            write_u32(&mut out, position, shifted)?;
        }
    }

    let size_offset = std::mem::offset_of!(IGVM_FIXED_HEADER, variable_header_size);
    let total_offset = std::mem::offset_of!(IGVM_FIXED_HEADER, total_file_size);
    let new_size = fixed
        .variable_header_size
        .checked_add(delta)
        .ok_or(BuildError::TooLarge)?;
    let new_total = u32::try_from(out.len()).map_err(|_| BuildError::TooLarge)?;
    write_u32(&mut out, size_offset, new_size)?;
    write_u32(&mut out, total_offset, new_total)?;
    fix_checksum(&mut out)?;
    Ok(out)
}

/// Returns `bytes` with `data` appended to the file data section and the `file_offset` of
/// variable header number `header_index` pointing at it. The checksum covers only the headers,
/// so it is recomputed for the changed offset.
pub fn append_file_data(
    bytes: &[u8],
    header_index: usize,
    data: &[u8],
) -> Result<Vec<u8>, BuildError> {
    let spans = header_spans(bytes)?;
    let span = spans.get(header_index).ok_or(BuildError::IndexOutOfRange {
        index: header_index,
        count: spans.len(),
    })?;
    let field = file_offset_field(span.typ).ok_or(BuildError::Malformed(span.offset))?;
    let offset = u32::try_from(bytes.len()).map_err(|_| BuildError::TooLarge)?;

    let mut out = bytes.to_vec();
    out.extend_from_slice(data);
    write_u32(&mut out, span.offset + 8 + field, offset)?;
    let total = u32::try_from(out.len()).map_err(|_| BuildError::TooLarge)?;
    write_u32(
        &mut out,
        std::mem::offset_of!(IGVM_FIXED_HEADER, total_file_size),
        total,
    )?;
    fix_checksum(&mut out)?;
    Ok(out)
}

/// Returns `bytes` without the variable headers whose type satisfies `drop`. Their file data
/// stays in the data section, unreferenced. The data section moves back by the removed size,
/// so the file offsets of the kept headers, the fixed header's sizes and its checksum are
/// updated.
pub fn remove_headers(bytes: &[u8], drop: impl Fn(u32) -> bool) -> Result<Vec<u8>, BuildError> {
    let fixed = read_fixed_header(bytes)?;
    let spans = header_spans(bytes)?;
    let section_start = fixed.variable_header_offset as usize;
    let section_end = section_start + fixed.variable_header_size as usize;

    let mut section = Vec::new();
    let mut kept = Vec::new();
    for span in &spans {
        if drop(span.typ) {
            continue;
        }
        let start = section_start + section.len();
        section.extend_from_slice(
            bytes
                .get(span.offset..span.next())
                .ok_or(BuildError::Malformed(span.offset))?,
        );
        kept.push((start, span.typ));
    }
    let removed = u32::try_from(fixed.variable_header_size as usize - section.len())
        .map_err(|_| BuildError::TooLarge)?;

    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(bytes.get(..section_start).ok_or(BuildError::Malformed(0))?);
    out.extend_from_slice(&section);
    out.extend_from_slice(
        bytes
            .get(section_end..)
            .ok_or(BuildError::Malformed(section_end))?,
    );

    for (start, typ) in kept {
        let Some(field) = file_offset_field(typ) else {
            continue;
        };
        let position = start + 8 + field;
        let value = read_u32(&out, position)?;
        if value != 0 {
            let shifted = value
                .checked_sub(removed)
                .ok_or(BuildError::Malformed(position))?;
            write_u32(&mut out, position, shifted)?;
        }
    }

    let size_offset = std::mem::offset_of!(IGVM_FIXED_HEADER, variable_header_size);
    let total_offset = std::mem::offset_of!(IGVM_FIXED_HEADER, total_file_size);
    let new_total = u32::try_from(out.len()).map_err(|_| BuildError::TooLarge)?;
    write_u32(&mut out, size_offset, section.len() as u32)?;
    write_u32(&mut out, total_offset, new_total)?;
    fix_checksum(&mut out)?;
    Ok(out)
}

/// Header type of the optional unknown header the tests inject: bit 31 set on a directive
/// type that IGVM does not define.
pub const UNKNOWN_OPTIONAL_HEADER: u32 = IGVM_VHT_OPTIONAL_BIT | 0x3ff;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::layout;

    fn sample() -> IgvmBuilder {
        let mut builder = IgvmBuilder::new();
        builder
            .page_data(0x8000, &[0x90; 5000])
            .zero_pages(0x20000, 2)
            .parameter_area(0x10000, 0x1000, &[(Parameter::VpCount, 0)]);
        builder.vp_context(0, layout::protected_mode_context(0x8000));
        builder
    }

    #[test]
    fn builder_round_trips_through_igvm_parser() {
        let bytes = sample().build().unwrap();
        let file = IgvmFile::new_from_binary(&bytes, None).unwrap();
        let expected = sample().igvm_file().unwrap();
        assert_eq!(file.directives().len(), expected.directives().len());
        assert!(file.directives() == expected.directives());
    }

    #[test]
    fn raw_header_keeps_data_offsets() {
        let plain = sample().build().unwrap();
        let mut builder = sample();
        // After the platform header, where an optional header is still before directives.
        builder.raw_header(1, UNKNOWN_OPTIONAL_HEADER, b"skip me");
        let patched = builder.build().unwrap();
        assert_eq!(patched.len(), plain.len() + 16);

        let spans = header_spans(&patched).unwrap();
        assert_eq!(spans.get(1).map(|s| s.typ), Some(UNKNOWN_OPTIONAL_HEADER));

        // Removing the header again gives the original bytes back.
        let stripped = remove_headers(&patched, |t| t == UNKNOWN_OPTIONAL_HEADER).unwrap();
        assert_eq!(stripped, plain);
    }

    #[test]
    fn raw_header_checksum_is_valid() {
        let mut builder = sample();
        // A directive-range header the igvm crate can parse, so its parser checks the CRC
        // and the moved file offsets: a second copy of the VP count parameter would be
        // invalid, so insert a RequiredMemory header.
        let required = igvm_defs::IGVM_VHS_REQUIRED_MEMORY {
            gpa: 0x100000,
            compatibility_mask: NATIVE_MASK,
            number_of_bytes: 0x1000,
            flags: Default::default(),
            reserved: 0,
        };
        let count = header_spans(&builder.build().unwrap()).unwrap().len();
        builder.raw_header(
            count,
            IgvmVariableHeaderType::IGVM_VHT_REQUIRED_MEMORY.0,
            required.as_bytes(),
        );
        let bytes = builder.build().unwrap();
        let file = IgvmFile::new_from_binary(&bytes, None).unwrap();
        let data_pages: Vec<_> = file
            .directives()
            .iter()
            .filter_map(|d| match d {
                IgvmDirectiveHeader::PageData { gpa, data, .. } => Some((*gpa, data.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            data_pages.first().map(|p| p.1.first().copied()),
            Some(Some(0x90))
        );
        assert_eq!(data_pages.len(), 4);
        assert!(matches!(
            file.directives().last(),
            Some(IgvmDirectiveHeader::RequiredMemory { gpa: 0x100000, .. })
        ));
    }

    #[test]
    fn native_relocation_rejected_by_igvm_crate() {
        let mut builder = sample();
        builder.relocatable_region(RelocatableRegion {
            gpa: 0x200000,
            size: 0x200000,
            alignment: 0x200000,
            minimum_gpa: 0x200000,
            maximum_gpa: 0x400000,
            apply_rip_offset: true,
            apply_gdtr_offset: false,
            vp_index: 0,
        });
        let bytes = builder.build().unwrap();
        let spans = header_spans(&bytes).unwrap();
        assert_eq!(
            spans.get(1).map(|s| s.typ),
            Some(IgvmVariableHeaderType::IGVM_VHT_RELOCATABLE_REGION.0)
        );
        // igvm 0.5 only pairs relocation headers with VBS VP contexts.
        assert!(matches!(
            IgvmFile::new_from_binary(&bytes, None),
            Err(igvm::Error::NoMatchingVpContext)
        ));
    }

    #[test]
    fn corim_headers_serialize() {
        let mut builder = sample();
        builder.corim(b"\xd9\x01\xf5\xa0", Some(b"\xd2\x84"));
        let bytes = builder.build().unwrap();
        let file = IgvmFile::new_from_binary(&bytes, None).unwrap();
        assert_eq!(file.initializations().len(), 2);
    }
}
