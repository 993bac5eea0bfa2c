//! The IGVM binary layout below the igvm crate: the fixed header, the variable header walk, and
//! the rebuild of a file without the headers that the crate would reject or that the loader
//! reads itself.
//!
//! An IGVM file is a fixed header (24 bytes in format version 1, 32 in version 2), a section of
//! variable headers (each a type, a length and a body padded to 8 bytes) and a file data section.
//! The fixed header's CRC32 covers the fixed header, with the checksum field as zero, and the
//! variable header section. File offsets in headers count from the start of the file.

use std::mem::{offset_of, size_of};

use igvm::{Arch, IgvmRevision};
use igvm_defs::{
    IgvmPlatformType, IgvmVariableHeaderType as Vht, VbsVpContextHeader, VbsVpContextRegister,
    IGVM_VHS_CORIM_DATA, IGVM_VHS_PAGE_DATA, IGVM_VHS_PARAMETER_AREA, IGVM_VHS_SUPPORTED_PLATFORM,
    IGVM_VHS_VP_CONTEXT, IGVM_VHT_OPTIONAL_BIT,
};
use log::warn;
use zerocopy::FromBytes;

use crate::error::LoadError;
use crate::headers::{support, Section, Support};
use crate::plan::{HeaderRef, PAGE_SIZE_4K};

/// The "IGVM" magic in little-endian order.
pub(crate) const IGVM_MAGIC: u32 = 0x4D56_4749;
/// Size of the format version 1 fixed header.
const FIXED_HEADER_V1_SIZE: usize = 24;
/// Size of the format version 2 fixed header (adds architecture and page size).
const FIXED_HEADER_V2_SIZE: usize = 32;
/// Byte offsets of the fixed header fields shared by both versions.
const OFFSET_MAGIC: usize = 0;
const OFFSET_FORMAT_VERSION: usize = 4;
const OFFSET_VARIABLE_HEADER_OFFSET: usize = 8;
const OFFSET_VARIABLE_HEADER_SIZE: usize = 12;
const OFFSET_TOTAL_FILE_SIZE: usize = 16;
const OFFSET_CHECKSUM: usize = 20;
/// Byte offsets of the version 2 fields.
const OFFSET_ARCHITECTURE: usize = 24;
const OFFSET_PAGE_SIZE: usize = 28;
/// Size of the type and length fields in front of every variable header.
const VARIABLE_HEADER_PREFIX: usize = 8;

/// Handling of a variable header before the igvm crate parses the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Passed to the crate unchanged.
    Keep,
    /// A known type marked optional: passed to the crate with the optional bit cleared.
    ClearOptionalBit,
    /// The version string: removed, its text kept by the loader.
    TakeVersionString,
    /// A RelocatableRegion or PageTableRelocationRegion: removed, decoded by the loader.
    /// igvm 0.5 accepts these headers only next to a VBS VP context for the same platform.
    TakeRelocation,
    /// An unknown optional header: removed.
    Skip,
}

/// One variable header as it sits in the file.
#[derive(Debug, Clone)]
pub(crate) struct RawHeader<'a> {
    /// Position in the file. Kept headers carry their type without the optional bit.
    pub header: HeaderRef,
    /// The section the header belongs to.
    pub section: Section,
    /// File offset of the type field.
    pub offset: usize,
    /// Bytes from the type field to the next header, padding included.
    pub span: usize,
    /// The body (the `length` bytes after the type and length fields).
    pub body: &'a [u8],
    /// Its handling before the crate parses the file.
    pub action: Action,
}

/// The fixed header fields and the variable headers of a file.
#[derive(Debug, Clone)]
pub(crate) struct RawFile<'a> {
    /// The whole file.
    pub bytes: &'a [u8],
    /// Format version from the fixed header (1 or 2).
    pub format_version: u32,
    /// Offset of the variable header section.
    pub variable_header_offset: usize,
    /// Size of the variable header section.
    pub variable_header_size: usize,
    /// Every variable header, in file order.
    pub headers: Vec<RawHeader<'a>>,
    /// Size of the fixed header (24 or 32 bytes).
    fixed_header_size: usize,
}

impl<'a> RawFile<'a> {
    /// Returns the architecture of the file: x64 for format version 1.
    pub(crate) fn arch(&self) -> Arch {
        match self.revision() {
            IgvmRevision::V1 => Arch::X64,
            IgvmRevision::V2 { arch, .. } => arch,
        }
    }

    /// Returns the igvm revision of the file, as the crate needs it to write the file again.
    pub(crate) fn revision(&self) -> IgvmRevision {
        if self.format_version == 1 {
            return IgvmRevision::V1;
        }
        let architecture = read_u32(self.bytes, OFFSET_ARCHITECTURE).unwrap_or(0);
        let page_size = read_u32(self.bytes, OFFSET_PAGE_SIZE).unwrap_or(0);
        let arch = if architecture == 1 {
            Arch::AArch64
        } else {
            Arch::X64
        };
        IgvmRevision::V2 { arch, page_size }
    }

    /// Returns the offset of the file data section, where valid file offsets start.
    pub(crate) fn file_data_start(&self) -> usize {
        self.variable_header_offset + self.variable_header_size
    }

    /// Returns `size` bytes of file data at `offset`, if they lie in the file data section.
    pub(crate) fn file_data(&self, offset: u32, size: u64) -> Option<&'a [u8]> {
        let start = usize::try_from(offset).ok()?;
        if start < self.file_data_start() {
            return None;
        }
        let end = start.checked_add(usize::try_from(size).ok()?)?;
        self.bytes.get(start..end)
    }

    /// Returns the headers of one section that the crate will see, in file order.
    pub(crate) fn kept(&self, section: Section) -> impl Iterator<Item = &RawHeader<'_>> + '_ {
        self.headers.iter().filter(move |header| {
            header.section == section
                && matches!(header.action, Action::Keep | Action::ClearOptionalBit)
        })
    }

    /// Returns the headers of one section that the crate or the loader reads, in file order:
    /// the kept headers and the relocation headers.
    pub(crate) fn read(&self, section: Section) -> impl Iterator<Item = &RawHeader<'_>> + '_ {
        self.headers.iter().filter(move |header| {
            header.section == section
                && matches!(
                    header.action,
                    Action::Keep | Action::ClearOptionalBit | Action::TakeRelocation
                )
        })
    }
}

fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let field = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(field.try_into().ok()?))
}

fn write_u32(bytes: &mut [u8], offset: usize, value: u32) {
    if let Some(field) = bytes.get_mut(offset..offset + 4) {
        field.copy_from_slice(&value.to_le_bytes());
    }
}

fn align_8(value: usize) -> Option<usize> {
    value.checked_add(7).map(|v| v & !7)
}

/// Computes the header checksum: CRC32 of the fixed header with a zero checksum field, followed
/// by the variable header section.
fn header_checksum(fixed_header: &[u8], variable_headers: &[u8]) -> u32 {
    let mut fixed = fixed_header.to_vec();
    write_u32(&mut fixed, OFFSET_CHECKSUM, 0);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&fixed);
    hasher.update(variable_headers);
    hasher.finalize()
}

fn invalid_fixed_header(reason: String) -> LoadError {
    LoadError::InvalidFixedHeader { reason }
}

/// Reads the fixed header, checks the checksum and walks the variable headers.
///
/// Unknown headers with the optional bit are marked [`Action::Skip`] and logged. An unknown
/// header without it, a header out of section order, a truncated header or a known header
/// with a body of the wrong size is an error.
pub(crate) fn walk(bytes: &[u8]) -> Result<RawFile<'_>, LoadError> {
    let too_short = || LoadError::FileTooShort { size: bytes.len() };
    let magic = read_u32(bytes, OFFSET_MAGIC).ok_or_else(too_short)?;
    if magic != IGVM_MAGIC {
        return Err(LoadError::InvalidMagic { magic });
    }
    let format_version = read_u32(bytes, OFFSET_FORMAT_VERSION).ok_or_else(too_short)?;
    let fixed_header_size = match format_version {
        1 => FIXED_HEADER_V1_SIZE,
        2 => FIXED_HEADER_V2_SIZE,
        version => return Err(LoadError::UnsupportedFormatVersion { version }),
    };
    let fixed_header = bytes.get(..fixed_header_size).ok_or_else(too_short)?;
    let field = |offset| read_u32(fixed_header, offset).ok_or_else(too_short);
    let variable_header_offset = field(OFFSET_VARIABLE_HEADER_OFFSET)? as usize;
    let variable_header_size = field(OFFSET_VARIABLE_HEADER_SIZE)? as usize;
    let total_file_size = field(OFFSET_TOTAL_FILE_SIZE)? as usize;
    let stored_checksum = field(OFFSET_CHECKSUM)?;

    if format_version == 2 {
        let architecture = field(OFFSET_ARCHITECTURE)?;
        if architecture > 1 {
            return Err(invalid_fixed_header(format!(
                "architecture {architecture} at byte offset {OFFSET_ARCHITECTURE} is neither \
                 x64 (0) nor AArch64 (1)"
            )));
        }
        let page_size = field(OFFSET_PAGE_SIZE)?;
        if u64::from(page_size) != PAGE_SIZE_4K {
            return Err(invalid_fixed_header(format!(
                "page size {page_size:#x} at byte offset {OFFSET_PAGE_SIZE} is not supported; \
                 igvm 0.5 reads 4 KiB pages only"
            )));
        }
    }
    if total_file_size != bytes.len() {
        return Err(invalid_fixed_header(format!(
            "total_file_size is {total_file_size} but the file is {} bytes",
            bytes.len()
        )));
    }
    if variable_header_offset < fixed_header_size || !variable_header_offset.is_multiple_of(8) {
        return Err(invalid_fixed_header(format!(
            "variable_header_offset {variable_header_offset:#x} must be 8-byte aligned and at least {fixed_header_size:#x}"
        )));
    }
    let variable_header_end = variable_header_offset
        .checked_add(variable_header_size)
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| {
            invalid_fixed_header(format!(
                "variable header section {variable_header_offset:#x}+{variable_header_size:#x} runs past the end of the file"
            ))
        })?;
    let variable_headers = bytes
        .get(variable_header_offset..variable_header_end)
        .ok_or_else(too_short)?;

    let computed = header_checksum(fixed_header, variable_headers);
    if computed != stored_checksum {
        return Err(LoadError::ChecksumMismatch {
            stored: stored_checksum,
            computed,
        });
    }

    let headers = walk_variable_headers(bytes, variable_header_offset, variable_header_end)?;
    Ok(RawFile {
        bytes,
        format_version,
        variable_header_offset,
        variable_header_size,
        headers,
        fixed_header_size,
    })
}

/// Per-section header counters, for [`HeaderRef::index`].
#[derive(Default)]
struct SectionCounters {
    platform: usize,
    initialization: usize,
    directive: usize,
}

impl SectionCounters {
    fn slot(&mut self, section: Section) -> &mut usize {
        match section {
            Section::Platform => &mut self.platform,
            Section::Initialization => &mut self.initialization,
            Section::Directive => &mut self.directive,
        }
    }

    /// Returns the index the next header of `section` gets, and counts it.
    fn take(&mut self, section: Section) -> usize {
        let slot = self.slot(section);
        let index = *slot;
        *slot += 1;
        index
    }
}

fn walk_variable_headers(
    bytes: &[u8],
    start: usize,
    end: usize,
) -> Result<Vec<RawHeader<'_>>, LoadError> {
    let mut headers = Vec::new();
    let mut counters = SectionCounters::default();
    let mut stage = Section::Platform;
    let mut offset = start;

    while offset < end {
        // A header whose type field is cut off is reported as type 0 in the current section.
        let remaining = end - offset;
        let file_type = if remaining >= 4 {
            read_u32(bytes, offset).unwrap_or(0)
        } else {
            0
        };

        // Headers of unknown types outside every section range are counted in the current one.
        let section = Section::of(file_type).unwrap_or(stage);
        let index = counters.take(section);
        let file_ref = HeaderRef {
            header_type: file_type,
            index,
        };
        let length = read_u32(bytes, offset + 4)
            .filter(|_| remaining >= VARIABLE_HEADER_PREFIX)
            .ok_or(LoadError::TruncatedHeader { header: file_ref })?;

        let body_start = offset + VARIABLE_HEADER_PREFIX;
        let body_end = body_start.checked_add(length as usize);
        let next = align_8(body_start.saturating_add(length as usize));
        let (body, next) = match (body_end, next) {
            (Some(body_end), Some(next)) if next <= end => (bytes.get(body_start..body_end), next),
            _ => (None, end),
        };
        let body = body.ok_or(LoadError::TruncatedHeader { header: file_ref })?;

        let optional = file_type & IGVM_VHT_OPTIONAL_BIT != 0;
        let action = match support(file_type) {
            Support::Parsed { body_size } => {
                if length as usize != body_size {
                    return Err(LoadError::InvalidHeaderLength {
                        header: file_ref,
                        length,
                        expected: body_size,
                    });
                }
                if is_relocation(file_type) {
                    Action::TakeRelocation
                } else if optional {
                    Action::ClearOptionalBit
                } else {
                    Action::Keep
                }
            }
            Support::VersionString => Action::TakeVersionString,
            Support::Unknown if optional => {
                warn!(
                    "skipping optional IGVM header of unknown type {file_type:#x} at {} index {index}",
                    section.name()
                );
                Action::Skip
            }
            Support::Unknown => return Err(LoadError::UnknownHeader { header: file_ref }),
        };

        if action != Action::Skip {
            if section < stage {
                return Err(LoadError::HeaderOutOfOrder { header: file_ref });
            }
            stage = section;
        }

        let header_type = match action {
            Action::Skip => file_type,
            _ => file_type & !IGVM_VHT_OPTIONAL_BIT,
        };
        headers.push(RawHeader {
            header: HeaderRef { header_type, index },
            section,
            offset,
            span: next - offset,
            body,
            action,
        });
        offset = next;
    }

    Ok(headers)
}

/// Returns true for RelocatableRegion and PageTableRelocationRegion, with or without the
/// optional bit.
fn is_relocation(header_type: u32) -> bool {
    matches!(
        Vht(header_type & !IGVM_VHT_OPTIONAL_BIT),
        Vht::IGVM_VHT_RELOCATABLE_REGION | Vht::IGVM_VHT_PAGE_TABLE_RELOCATION_REGION
    )
}

/// Returns the file the igvm crate can parse: without skipped headers, the version string and
/// the relocation headers, with optional bits cleared, and with the header sizes and checksum
/// fixed.
///
/// Every PageData header gets file offset 0, so that the crate copies no page data.
/// [`crate::ParsedFile::page_data`] reads it from the original file instead. The file data
/// section holds only the bytes that the other headers with file data (parameter areas, VP
/// contexts, CoRIM payloads) make the crate read, moved together with their offsets rewritten.
/// Each range is as long as the crate reads, or ends with the original file, so the crate reads
/// the same bytes as from the original file and returns the same errors. igvm 0.5 rejects a
/// file without any file data, so an empty file data section gets 8 bytes of padding.
pub(crate) fn rebuild_for_crate(raw: &RawFile<'_>) -> Vec<u8> {
    let vbs_masks = vbs_masks(raw);
    let mut variable_headers = Vec::with_capacity(raw.variable_header_size);
    // For each file offset to rewrite: its position in `variable_headers` and the range of the
    // original file that the crate reads there.
    let mut moves: Vec<(usize, usize, usize)> = Vec::new();
    for header in &raw.headers {
        if !matches!(header.action, Action::Keep | Action::ClearOptionalBit) {
            continue;
        }
        let start = variable_headers.len();
        let bytes = raw
            .bytes
            .get(header.offset..header.offset + header.span)
            .unwrap_or_default();
        variable_headers.extend_from_slice(bytes);
        if header.action == Action::ClearOptionalBit {
            write_u32(&mut variable_headers, start, header.header.header_type);
        }

        let Some(field) = file_offset_field(header.header.header_type) else {
            continue;
        };
        let at = start + VARIABLE_HEADER_PREFIX + field;
        let offset = read_u32(&variable_headers, at).unwrap_or(0) as usize;
        if Vht(header.header.header_type) == Vht::IGVM_VHT_PAGE_DATA {
            write_u32(&mut variable_headers, at, 0);
            continue;
        }
        // Offsets below the file data section keep their meaning, because the rebuilt file
        // data section starts where the original one does.
        if offset == 0 || offset < raw.file_data_start() || offset >= raw.bytes.len() {
            continue;
        }
        let size = crate_data_size(raw, header, offset, &vbs_masks);
        let end = offset.saturating_add(size).min(raw.bytes.len());
        moves.push((at, offset, end));
    }

    // Copy the union of the ranges, so that data several headers share is copied once and the
    // rebuilt file is no larger than the original one plus the padding.
    let ranges = moves.iter().map(|&(_, start, end)| (start, end)).collect();
    let (mut file_data, segments) = copy_ranges(raw.bytes, ranges, raw.file_data_start());
    for (at, offset, _) in moves {
        // The moved offset is below the original file's size, which came from a u32 field.
        if let Some(moved) = moved_offset(&segments, offset) {
            write_u32(
                &mut variable_headers,
                at,
                u32::try_from(moved).unwrap_or(u32::MAX),
            );
        }
    }
    if file_data.is_empty() {
        file_data.extend_from_slice(&[0u8; 8]);
    }

    let fixed_and_gap = raw
        .bytes
        .get(..raw.variable_header_offset)
        .unwrap_or_default();
    let mut out = Vec::with_capacity(raw.file_data_start() + file_data.len());
    out.extend_from_slice(fixed_and_gap);
    out.extend_from_slice(&variable_headers);
    out.resize(raw.file_data_start(), 0);
    out.extend_from_slice(&file_data);

    // Both sizes fit in u32: they are at most the original ones plus 8 bytes of padding, and
    // the original total size came from a u32 field.
    let variable_header_size = u32::try_from(variable_headers.len()).unwrap_or(u32::MAX);
    let total_file_size = u32::try_from(out.len()).unwrap_or(u32::MAX);
    write_u32(&mut out, OFFSET_VARIABLE_HEADER_SIZE, variable_header_size);
    write_u32(&mut out, OFFSET_TOTAL_FILE_SIZE, total_file_size);
    let fixed_header = out
        .get(..raw.fixed_header_size)
        .unwrap_or_default()
        .to_vec();
    let checksum = header_checksum(&fixed_header, &variable_headers);
    write_u32(&mut out, OFFSET_CHECKSUM, checksum);
    out
}

/// A range of the original file, `start..end`, copied to offset `moved_to` of the rebuilt file.
#[derive(Debug, Clone, Copy)]
struct Segment {
    start: usize,
    end: usize,
    moved_to: usize,
}

/// Copies the union of `ranges` of `bytes`, in file order, into a new buffer that will start at
/// file offset `base`. Returns the buffer and the merged ranges.
fn copy_ranges(
    bytes: &[u8],
    mut ranges: Vec<(usize, usize)>,
    base: usize,
) -> (Vec<u8>, Vec<Segment>) {
    ranges.sort_unstable();
    let mut copied = Vec::new();
    let mut segments: Vec<Segment> = Vec::new();
    for (start, end) in ranges {
        match segments.last_mut() {
            Some(last) if start <= last.end => {
                if end > last.end {
                    copied.extend_from_slice(bytes.get(last.end..end).unwrap_or_default());
                    last.end = end;
                }
            }
            _ => {
                segments.push(Segment {
                    start,
                    end,
                    moved_to: base + copied.len(),
                });
                copied.extend_from_slice(bytes.get(start..end).unwrap_or_default());
            }
        }
    }
    (copied, segments)
}

/// Returns where `offset` of the original file lies after [`copy_ranges`], or `None` if no
/// segment starts at or before it.
fn moved_offset(segments: &[Segment], offset: usize) -> Option<usize> {
    let index = segments
        .partition_point(|segment| segment.start <= offset)
        .checked_sub(1)?;
    let segment = segments.get(index)?;
    Some(segment.moved_to + offset.checked_sub(segment.start)?)
}

/// Returns the compatibility masks of the VBS (VSM isolation) SupportedPlatform headers.
fn vbs_masks(raw: &RawFile<'_>) -> Vec<u32> {
    raw.kept(Section::Platform)
        .filter_map(|header| IGVM_VHS_SUPPORTED_PLATFORM::read_from_prefix(header.body).ok())
        .filter(|(info, _)| info.platform_type == IgvmPlatformType::VSM_ISOLATION)
        .map(|(info, _)| info.compatibility_mask)
        .collect()
}

/// Returns how many bytes of file data at `offset` igvm 0.5 reads for `header`, a kept header
/// other than PageData with a file offset. The result may run past the end of the file.
fn crate_data_size(
    raw: &RawFile<'_>,
    header: &RawHeader<'_>,
    offset: usize,
    vbs_masks: &[u32],
) -> usize {
    let field = |at: usize| read_u32(header.body, at).unwrap_or(0);
    let size: u64 = match Vht(header.header.header_type) {
        Vht::IGVM_VHT_PARAMETER_AREA => IGVM_VHS_PARAMETER_AREA::read_from_prefix(header.body)
            .map_or(0, |(area, _)| area.number_of_bytes),
        Vht::IGVM_VHT_CORIM_DOCUMENT | Vht::IGVM_VHT_CORIM_SIGNATURE => {
            u64::from(field(offset_of!(IGVM_VHS_CORIM_DATA, size_bytes)))
        }
        Vht::IGVM_VHT_VP_CONTEXT => {
            let mask = field(offset_of!(IGVM_VHS_VP_CONTEXT, compatibility_mask));
            // The crate reads a VBS context when the mask equals a VBS platform's mask.
            if vbs_masks.contains(&mask) {
                // A register count, then that many registers.
                let count = read_u32(raw.bytes, offset).unwrap_or(0);
                size_of::<VbsVpContextHeader>() as u64
                    + u64::from(count) * size_of::<VbsVpContextRegister>() as u64
            } else {
                PAGE_SIZE_4K
            }
        }
        _ => 0,
    };
    usize::try_from(size).unwrap_or(usize::MAX)
}

/// Builds an IGVM file from raw variable headers and file data, with a correct checksum.
///
/// Each header is `(type, body)`; bodies are padded to 8 bytes. `file_data` follows the
/// variable headers, so a header's file offset for byte `i` of `file_data` is
/// [`assemble_data_offset`] `+ i`. This exists to write files that the igvm crate's serializer
/// refuses to produce, such as malformed files for tests or files with 2 MiB page data.
#[cfg(test)]
pub(crate) fn assemble(headers: &[(u32, Vec<u8>)], file_data: &[u8]) -> Vec<u8> {
    let mut variable_headers = Vec::new();
    for (header_type, body) in headers {
        variable_headers.extend_from_slice(&header_type.to_le_bytes());
        let length = u32::try_from(body.len()).unwrap_or(u32::MAX);
        variable_headers.extend_from_slice(&length.to_le_bytes());
        variable_headers.extend_from_slice(body);
        let padded = align_8(variable_headers.len()).unwrap_or(variable_headers.len());
        variable_headers.resize(padded, 0);
    }

    let mut out = vec![0u8; FIXED_HEADER_V1_SIZE];
    out.extend_from_slice(&variable_headers);
    out.extend_from_slice(file_data);
    let variable_header_size = u32::try_from(variable_headers.len()).unwrap_or(u32::MAX);
    let total_file_size = u32::try_from(out.len()).unwrap_or(u32::MAX);
    write_u32(&mut out, OFFSET_MAGIC, IGVM_MAGIC);
    write_u32(&mut out, OFFSET_FORMAT_VERSION, 1);
    write_u32(
        &mut out,
        OFFSET_VARIABLE_HEADER_OFFSET,
        FIXED_HEADER_V1_SIZE as u32,
    );
    write_u32(&mut out, OFFSET_VARIABLE_HEADER_SIZE, variable_header_size);
    write_u32(&mut out, OFFSET_TOTAL_FILE_SIZE, total_file_size);
    let checksum = header_checksum(
        out.get(..FIXED_HEADER_V1_SIZE).unwrap_or_default(),
        &variable_headers,
    );
    write_u32(&mut out, OFFSET_CHECKSUM, checksum);
    out
}

/// Returns the file offset of the first byte of `file_data` in a file that [`assemble`] builds
/// from `headers`.
#[cfg(test)]
pub(crate) fn assemble_data_offset(headers: &[(u32, Vec<u8>)]) -> u32 {
    let variable_headers: usize = headers
        .iter()
        .map(|(_, body)| align_8(VARIABLE_HEADER_PREFIX + body.len()).unwrap_or(usize::MAX))
        .sum();
    u32::try_from(FIXED_HEADER_V1_SIZE + variable_headers).unwrap_or(u32::MAX)
}

/// Offset of `file_offset` in an `IGVM_VHS_PAGE_DATA` body.
const PAGE_DATA_FILE_OFFSET: usize = offset_of!(IGVM_VHS_PAGE_DATA, file_offset);

/// Returns the offset of the `file_offset` field in the body of a header type that has one.
fn file_offset_field(header_type: u32) -> Option<usize> {
    match Vht(header_type & !IGVM_VHT_OPTIONAL_BIT) {
        Vht::IGVM_VHT_PAGE_DATA => Some(PAGE_DATA_FILE_OFFSET),
        Vht::IGVM_VHT_PARAMETER_AREA => Some(offset_of!(IGVM_VHS_PARAMETER_AREA, file_offset)),
        Vht::IGVM_VHT_VP_CONTEXT => Some(offset_of!(IGVM_VHS_VP_CONTEXT, file_offset)),
        Vht::IGVM_VHT_CORIM_DOCUMENT | Vht::IGVM_VHT_CORIM_SIGNATURE => {
            Some(offset_of!(IGVM_VHS_CORIM_DATA, file_offset))
        }
        _ => None,
    }
}

/// Inserts variable headers, given as `(type, body)`, at the end of the initialization
/// section of a file, and moves the file data behind them.
///
/// Every non-zero file offset in the known headers grows by the inserted size, and the header
/// sizes and checksum are fixed. This writes headers that igvm 0.5's serializer refuses, such
/// as relocation headers in a file without a VBS VP context. Unknown optional headers keep
/// their bodies as they are, so the file must not have any that point to file data.
pub(crate) fn insert_initialization_headers(
    file: &[u8],
    inserted: &[(u32, Vec<u8>)],
) -> Result<Vec<u8>, LoadError> {
    let too_large = || invalid_fixed_header("the file exceeds 4 GiB".to_string());
    let raw = walk(file)?;
    let mut extra = Vec::new();
    for (header_type, body) in inserted {
        let length = u32::try_from(body.len()).map_err(|_| too_large())?;
        extra.extend_from_slice(&header_type.to_le_bytes());
        extra.extend_from_slice(&length.to_le_bytes());
        extra.extend_from_slice(body);
        extra.resize(align_8(extra.len()).ok_or_else(too_large)?, 0);
    }
    let delta = u32::try_from(extra.len()).map_err(|_| too_large())?;

    let insert_at = raw
        .headers
        .iter()
        .find(|header| header.section == Section::Directive)
        .map_or(raw.file_data_start(), |header| header.offset);
    let mut out = Vec::with_capacity(file.len() + extra.len());
    out.extend_from_slice(file.get(..insert_at).unwrap_or_default());
    out.extend_from_slice(&extra);
    out.extend_from_slice(file.get(insert_at..).unwrap_or_default());

    for header in &raw.headers {
        let Some(field) = file_offset_field(header.header.header_type) else {
            continue;
        };
        let shift = if header.offset >= insert_at {
            extra.len()
        } else {
            0
        };
        let position = header.offset + shift + VARIABLE_HEADER_PREFIX + field;
        let offset = read_u32(&out, position).unwrap_or(0);
        if offset != 0 {
            let moved = offset.checked_add(delta).ok_or_else(too_large)?;
            write_u32(&mut out, position, moved);
        }
    }

    let variable_header_size = raw.variable_header_size + extra.len();
    let variable_header_size = u32::try_from(variable_header_size).map_err(|_| too_large())?;
    let total_file_size = u32::try_from(out.len()).map_err(|_| too_large())?;
    write_u32(&mut out, OFFSET_VARIABLE_HEADER_SIZE, variable_header_size);
    write_u32(&mut out, OFFSET_TOTAL_FILE_SIZE, total_file_size);
    let fixed_header = out
        .get(..raw.fixed_header_size)
        .unwrap_or_default()
        .to_vec();
    let variable_headers = out
        .get(raw.variable_header_offset..raw.file_data_start() + extra.len())
        .unwrap_or_default()
        .to_vec();
    write_u32(
        &mut out,
        OFFSET_CHECKSUM,
        header_checksum(&fixed_header, &variable_headers),
    );
    Ok(out)
}

/// Appends file data for PageData directives of a serialized file and points them at it.
///
/// `pages` contains `(directive index, data)` pairs, and the directives must be PageData headers
/// without file data. This writes 2 MiB page data, which igvm 0.5's serializer cannot.
pub(crate) fn attach_page_data(
    file: &[u8],
    pages: &[(usize, Vec<u8>)],
) -> Result<Vec<u8>, LoadError> {
    let raw = walk(file)?;
    let mut out = file.to_vec();
    for (directive_index, data) in pages {
        let header = raw
            .headers
            .iter()
            .find(|h| h.section == Section::Directive && h.header.index == *directive_index)
            .ok_or_else(|| invalid_fixed_header(format!("no directive {directive_index}")))?;
        let file_offset = u32::try_from(out.len())
            .map_err(|_| invalid_fixed_header("the file exceeds 4 GiB".to_string()))?;
        write_u32(
            &mut out,
            header.offset + VARIABLE_HEADER_PREFIX + PAGE_DATA_FILE_OFFSET,
            file_offset,
        );
        out.extend_from_slice(data);
    }
    let total_file_size = u32::try_from(out.len())
        .map_err(|_| invalid_fixed_header("the file exceeds 4 GiB".to_string()))?;
    write_u32(&mut out, OFFSET_TOTAL_FILE_SIZE, total_file_size);
    let fixed_header = out
        .get(..raw.fixed_header_size)
        .unwrap_or_default()
        .to_vec();
    let variable_headers = out
        .get(raw.variable_header_offset..raw.file_data_start())
        .unwrap_or_default()
        .to_vec();
    write_u32(
        &mut out,
        OFFSET_CHECKSUM,
        header_checksum(&fixed_header, &variable_headers),
    );
    Ok(out)
}
