//! Parsing: raw header walk and checks, then the igvm crate, with file positions kept.

use igvm::hv_defs::Vtl;
use igvm::{
    IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader, IgvmRevision,
};
use igvm_defs::{
    IgvmVariableHeaderType as Vht, IGVM_VHF_RELOCATABLE_REGION_APPLY_GDTR,
    IGVM_VHF_RELOCATABLE_REGION_APPLY_RIP, IGVM_VHF_RELOCATABLE_REGION_IS_VTL2, IGVM_VHS_PAGE_DATA,
    IGVM_VHS_PAGE_TABLE_RELOCATION, IGVM_VHS_RELOCATABLE_REGION,
};
use zerocopy::FromBytes;

use crate::error::{guard_igvm, LoadError};
use crate::headers::Section;
use crate::plan::{HeaderRef, PAGE_SIZE_2M, PAGE_SIZE_4K};
use crate::platform::{platform_from_type, PlatformHeader};
use crate::precheck;
use crate::raw::{self, Action, RawFile, RawHeader};

/// An IGVM file parsed by the igvm crate, with the file position of every header.
///
/// Produced by [`parse`]. The crate parsed the file without an isolation filter, so every
/// platform's headers are present; [`crate::load_parsed`] filters by compatibility mask.
/// `'a` is the lifetime of the file's bytes, which [`ParsedFile::page_data`] returns slices of.
#[derive(Debug, Clone)]
pub struct ParsedFile<'a> {
    /// The file as the igvm crate parsed it, without skipped optional headers and without
    /// the version string.
    ///
    /// Its PageData directives carry no data: the crate parsed a copy of the file in which every
    /// PageData header has file offset 0, so that it did not copy the pages. Read the data with
    /// [`ParsedFile::page_data`].
    pub igvm: IgvmFile,
    /// IGVM format version from the fixed header (1 or 2).
    pub format_version: u32,
    /// The file's revision, for writing it again with `IgvmFile::new` (igvm 0.5 does not expose
    /// the revision of a parsed file).
    pub revision: IgvmRevision,
    /// File positions of `igvm.platforms()`, in the same order.
    pub platform_refs: Vec<HeaderRef>,
    /// File positions of `igvm.initializations()`, in the same order.
    pub initialization_refs: Vec<HeaderRef>,
    /// RelocatableRegion and PageTableRelocationRegion headers with their file positions, in
    /// file order. The loader decodes them itself because igvm 0.5 accepts them only next to a
    /// VBS VP context, so they are not in `igvm`.
    pub relocation_headers: Vec<(HeaderRef, IgvmInitializationHeader)>,
    /// File positions of `igvm.directives()`, in the same order.
    pub directive_refs: Vec<HeaderRef>,
    /// Optional headers of unknown types that were skipped, with their type as in the file.
    pub skipped_headers: Vec<HeaderRef>,
    /// Text of the VersionString header (0x107), if the file has one.
    pub version_string: Option<String>,
    /// The file data of each directive, by position in `igvm.directives()`: 4 KiB or 2 MiB of
    /// the file for a PageData header with file data, empty for every other directive.
    pub(crate) page_data: Vec<&'a [u8]>,
}

impl<'a> ParsedFile<'a> {
    /// Returns the platform headers.
    pub fn platforms(&self) -> Vec<PlatformHeader> {
        self.igvm
            .platforms()
            .iter()
            .zip(&self.platform_refs)
            .map(
                |(IgvmPlatformHeader::SupportedPlatform(info), header)| PlatformHeader {
                    header: *header,
                    platform_type: info.platform_type,
                    platform: platform_from_type(info.platform_type),
                    compatibility_mask: info.compatibility_mask,
                    highest_vtl: info.highest_vtl,
                    shared_gpa_boundary: info.shared_gpa_boundary,
                },
            )
            .collect()
    }

    /// Iterates over the initialization headers with their file positions, in file order: those
    /// in `igvm` and the relocation headers.
    pub fn initializations(
        &self,
    ) -> impl Iterator<Item = (HeaderRef, &IgvmInitializationHeader)> + '_ {
        let mut headers: Vec<(HeaderRef, &IgvmInitializationHeader)> = self
            .initialization_refs
            .iter()
            .copied()
            .zip(self.igvm.initializations())
            .chain(
                self.relocation_headers
                    .iter()
                    .map(|(header, init)| (*header, init)),
            )
            .collect();
        headers.sort_by_key(|(header, _)| header.index);
        headers.into_iter()
    }

    /// Iterates over the directive headers with their file positions.
    pub fn directives(&self) -> impl Iterator<Item = (HeaderRef, &IgvmDirectiveHeader)> + '_ {
        self.directive_refs
            .iter()
            .copied()
            .zip(self.igvm.directives())
    }

    /// Returns the data of the PageData directive at `position` in `igvm.directives()`, a slice
    /// of the file: all 2 MiB for a large page with data, 4 KiB for a small one, empty for a
    /// zero page or another directive.
    pub fn page_data(&self, position: usize) -> &'a [u8] {
        self.page_data.get(position).copied().unwrap_or_default()
    }
}

/// Parses an IGVM file.
///
/// Unknown headers with the optional bit are skipped with a warning. Everything the igvm crate
/// would reject without naming the header is checked first, so that the error names the header
/// type and its index in the file. Errors the crate still finds are [`LoadError::Igvm`].
///
/// The page data is not copied: the returned file refers to `file` for it.
pub fn parse(file: &[u8]) -> Result<ParsedFile<'_>, LoadError> {
    let raw_file = raw::walk(file)?;
    precheck::check(&raw_file)?;

    let crate_input = raw::rebuild_for_crate(&raw_file);
    let igvm = guard_igvm("parsing the file", || {
        IgvmFile::new_from_binary(&crate_input, None)
    })??;

    let refs = |section| -> Vec<HeaderRef> {
        raw_file.kept(section).map(|header| header.header).collect()
    };
    let platform_refs = refs(Section::Platform);
    let initialization_refs = refs(Section::Initialization);
    let directive_refs = refs(Section::Directive);
    if platform_refs.len() != igvm.platforms().len()
        || initialization_refs.len() != igvm.initializations().len()
        || directive_refs.len() != igvm.directives().len()
    {
        return Err(LoadError::Igvm {
            message: "the crate returned a different number of headers than the file has"
                .to_string(),
        });
    }

    let relocation_headers = raw_file
        .read(Section::Initialization)
        .filter(|header| header.action == Action::TakeRelocation)
        .map(|header| Ok((header.header, decode_relocation(header)?)))
        .collect::<Result<Vec<_>, LoadError>>()?;

    let page_data = raw_file
        .kept(Section::Directive)
        .map(|header| page_data(&raw_file, header))
        .collect::<Result<Vec<_>, LoadError>>()?;

    let version_string = raw_file
        .headers
        .iter()
        .find(|header| header.action == Action::TakeVersionString)
        .map(|header| {
            String::from_utf8_lossy(header.body)
                .trim_end_matches('\0')
                .to_string()
        });
    let skipped_headers = raw_file
        .headers
        .iter()
        .filter(|header| header.action == Action::Skip)
        .map(|header| header.header)
        .collect();

    Ok(ParsedFile {
        igvm,
        format_version: raw_file.format_version,
        revision: raw_file.revision(),
        platform_refs,
        initialization_refs,
        relocation_headers,
        directive_refs,
        skipped_headers,
        version_string,
        page_data,
    })
}

/// Returns the file data of a PageData header, or an empty slice for a page without file data
/// and for every other header.
fn page_data<'a>(raw_file: &RawFile<'a>, header: &RawHeader<'_>) -> Result<&'a [u8], LoadError> {
    if Vht(header.header.header_type) != Vht::IGVM_VHT_PAGE_DATA {
        return Ok(&[]);
    }
    let (page, _) = IGVM_VHS_PAGE_DATA::read_from_prefix(header.body).map_err(|_| {
        LoadError::TruncatedHeader {
            header: header.header,
        }
    })?;
    if page.file_offset == 0 {
        return Ok(&[]);
    }
    let size = if page.flags.is_2mb_page() {
        PAGE_SIZE_2M
    } else {
        PAGE_SIZE_4K
    };
    raw_file
        .file_data(page.file_offset, size)
        .ok_or(LoadError::FileDataOutOfRange {
            header: header.header,
            offset: page.file_offset,
            size,
        })
}

/// Decodes a RelocatableRegion or PageTableRelocationRegion body as igvm 0.5 would. The flags
/// other than IS_VTL2, APPLY_RIP and APPLY_GDTR are ignored, as the crate ignores them.
fn decode_relocation(header: &RawHeader<'_>) -> Result<IgvmInitializationHeader, LoadError> {
    let href = header.header;
    let truncated = || LoadError::TruncatedHeader { header: href };
    let vtl = |vtl: u8| {
        Vtl::try_from(vtl).map_err(|_| LoadError::InvalidRelocationHeader {
            header: href,
            reason: format!("VTL {vtl} is not 0, 1 or 2"),
        })
    };
    match Vht(href.header_type) {
        Vht::IGVM_VHT_RELOCATABLE_REGION => {
            let (region, _) = IGVM_VHS_RELOCATABLE_REGION::read_from_prefix(header.body)
                .map_err(|_| truncated())?;
            let flag = |bit: u8| region.flags & bit == bit;
            Ok(IgvmInitializationHeader::RelocatableRegion {
                compatibility_mask: region.compatibility_mask,
                relocation_alignment: region.relocation_alignment,
                relocation_region_gpa: region.relocation_region_gpa,
                relocation_region_size: region.relocation_region_size,
                minimum_relocation_gpa: region.minimum_relocation_gpa,
                maximum_relocation_gpa: region.maximum_relocation_gpa,
                is_vtl2: flag(IGVM_VHF_RELOCATABLE_REGION_IS_VTL2),
                apply_rip_offset: flag(IGVM_VHF_RELOCATABLE_REGION_APPLY_RIP),
                apply_gdtr_offset: flag(IGVM_VHF_RELOCATABLE_REGION_APPLY_GDTR),
                vp_index: region.vp_index,
                vtl: vtl(region.vtl)?,
            })
        }
        Vht::IGVM_VHT_PAGE_TABLE_RELOCATION_REGION => {
            let (region, _) = IGVM_VHS_PAGE_TABLE_RELOCATION::read_from_prefix(header.body)
                .map_err(|_| truncated())?;
            Ok(IgvmInitializationHeader::PageTableRelocationRegion {
                compatibility_mask: region.compatibility_mask,
                gpa: region.gpa,
                size: region.size,
                used_size: region.used_size,
                vp_index: region.vp_index,
                vtl: vtl(region.vtl)?,
            })
        }
        _ => Err(LoadError::InvalidHeader {
            header: href,
            reason: "it is not a relocation header".to_string(),
        }),
    }
}
