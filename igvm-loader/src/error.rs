//! Errors of parsing, platform choice, validation and plan building.
//!
//! Every variant that concerns one header names it through [`HeaderRef`], whose `Display` reads
//! like "PageData header 0x302 at directive index 7".

use std::fmt;

use thiserror::Error;

use crate::headers::{header_type_name, Section};
use crate::plan::{HeaderRef, Platform};

impl fmt::Display for HeaderRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let section = Section::of(self.header_type).map_or("unknown-section", Section::name);
        write!(
            f,
            "{} header {:#x} at {} index {}",
            header_type_name(self.header_type),
            self.header_type,
            section,
            self.index
        )
    }
}

/// A list of platforms for messages, such as "native, sev-snp" or "none".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformList(pub Vec<Platform>);

impl fmt::Display for PlatformList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.0.iter().map(|p| p.name()).collect();
        f.write_str(&names.join(", "))
    }
}

/// An error of parsing an IGVM file or of turning it into a plan.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LoadError {
    /// The file is shorter than its fixed header.
    #[error("file is {size} bytes, shorter than the IGVM fixed header")]
    FileTooShort {
        /// File size in bytes.
        size: usize,
    },
    /// The magic value is not "IGVM".
    #[error("invalid IGVM magic {magic:#x}, expected 0x4d564749")]
    InvalidMagic {
        /// The value found.
        magic: u32,
    },
    /// The format version is neither 1 nor 2.
    #[error("unsupported IGVM format version {version}; versions 1 and 2 are supported")]
    UnsupportedFormatVersion {
        /// The version found.
        version: u32,
    },
    /// The fixed header describes sections that do not fit the file.
    #[error("invalid fixed header: {reason}")]
    InvalidFixedHeader {
        /// The inconsistency.
        reason: String,
    },
    /// The CRC32 of the fixed and variable headers does not match the stored checksum.
    #[error("header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// Checksum in the fixed header.
        stored: u32,
        /// Checksum of the bytes.
        computed: u32,
    },
    /// A variable header runs past the end of the variable header section.
    #[error("{header} is truncated: it runs past the end of the variable header section")]
    TruncatedHeader {
        /// The header.
        header: HeaderRef,
    },
    /// A known header has a body of the wrong size.
    #[error("{header} has a body of {length} bytes, expected {expected}")]
    InvalidHeaderLength {
        /// The header.
        header: HeaderRef,
        /// Body length from the file.
        length: u32,
        /// Body length the format defines.
        expected: usize,
    },
    /// A header field that breaks a rule of the format or of igvm 0.5.
    #[error("{header} is invalid: {reason}")]
    InvalidHeader {
        /// The header.
        header: HeaderRef,
        /// The broken rule.
        reason: String,
    },
    /// A header appears after a header of a later section.
    #[error("{header} appears after a header of a later section")]
    HeaderOutOfOrder {
        /// The header.
        header: HeaderRef,
    },
    /// A header type that is not known and does not carry the optional bit.
    #[error("{header} has an unknown type and is not marked optional")]
    UnknownHeader {
        /// The header.
        header: HeaderRef,
    },
    /// A header refers to file data outside the file data section.
    #[error("{header} refers to {size} bytes of file data at offset {offset:#x}, outside the file data section")]
    FileDataOutOfRange {
        /// The header.
        header: HeaderRef,
        /// File offset from the header.
        offset: u32,
        /// Bytes the header needs.
        size: u64,
    },
    /// The file has no SupportedPlatform header.
    #[error("the file has no SupportedPlatform header")]
    NoPlatformHeader,
    /// A SupportedPlatform header whose compatibility mask does not have exactly one bit set.
    #[error(
        "{header} has compatibility mask {mask:#x}; a platform mask must have exactly one bit set"
    )]
    InvalidPlatformMask {
        /// The header.
        header: HeaderRef,
        /// The mask.
        mask: u32,
    },
    /// A RelocatableRegion or PageTableRelocationRegion header with impossible values.
    #[error("{header} is invalid: {reason}")]
    InvalidRelocationHeader {
        /// The header.
        header: HeaderRef,
        /// The problem.
        reason: String,
    },
    /// A VBS VP context whose register list cannot be read.
    #[error("{header} is an invalid VBS VP context: {reason}")]
    InvalidVbsContext {
        /// The header.
        header: HeaderRef,
        /// The problem.
        reason: String,
    },
    /// A parameter area index declared a second time.
    #[error("{header} declares parameter area {area_index} again (first declared by {first})")]
    ParameterAreaRedeclared {
        /// The second declaration.
        header: HeaderRef,
        /// Parameter area index.
        area_index: u32,
        /// The first declaration.
        first: HeaderRef,
    },
    /// A parameter or insert names a parameter area that was never declared.
    #[error(
        "{header} uses parameter area {area_index}, which no earlier ParameterArea header declares"
    )]
    ParameterAreaUndeclared {
        /// The header.
        header: HeaderRef,
        /// Parameter area index.
        area_index: u32,
    },
    /// A parameter or insert names a parameter area that an earlier header already inserted.
    #[error("{header} uses parameter area {area_index} after {insert} inserted it")]
    ParameterAreaAlreadyInserted {
        /// The header.
        header: HeaderRef,
        /// Parameter area index.
        area_index: u32,
        /// The insert that consumed the area.
        insert: HeaderRef,
    },
    /// A CoRIM document or signature that the format does not allow.
    #[error("{header} is an invalid CoRIM header: {reason}")]
    InvalidCorim {
        /// The header.
        header: HeaderRef,
        /// The problem.
        reason: String,
    },
    /// The igvm crate rejected the file.
    #[error("igvm crate rejected the file: {message}")]
    Igvm {
        /// The crate's message, with its sources.
        message: String,
    },
    /// The igvm crate panicked on this input; the panic was caught.
    #[error("igvm crate failed while {operation}: {message}")]
    IgvmPanic {
        /// The operation the loader requested from the crate.
        operation: &'static str,
        /// The panic message.
        message: String,
    },
    /// The requested platform is not in the file.
    #[error("the file does not support platform {requested} (it supports: {available})")]
    PlatformNotInFile {
        /// The platform the caller requested.
        requested: Platform,
        /// Platforms the file carries.
        available: PlatformList,
    },
    /// No platform of the file is supported by the host.
    #[error("no platform is supported by both the file ({file}) and the host ({host})")]
    NoCommonPlatform {
        /// Platforms the file carries.
        file: PlatformList,
        /// Platforms the host can launch.
        host: PlatformList,
    },
    /// The chosen platform can be inspected but not launched.
    #[error("platform {platform} can be inspected but not launched")]
    PlatformNotLaunchable {
        /// The platform.
        platform: Platform,
    },
    /// A header whose compatibility mask matches none of the file's platforms.
    #[error(
        "{header} has compatibility mask {mask:#x}, which matches no SupportedPlatform header"
    )]
    MaskMatchesNoPlatform {
        /// The header.
        header: HeaderRef,
        /// The mask.
        mask: u32,
    },
    /// A header that the chosen platform cannot carry out.
    #[error("{header} cannot be loaded on {platform}: {reason}")]
    UnsupportedHeader {
        /// The header.
        header: HeaderRef,
        /// The chosen platform.
        platform: Platform,
        /// Why.
        reason: String,
    },
    /// A page data type that only SEV-SNP can honour, on another platform.
    #[error("{header} has page data type {data_type}, which {platform} cannot honour")]
    PageTypeNotSupported {
        /// The header.
        header: HeaderRef,
        /// Name of the IGVM page data type.
        data_type: &'static str,
        /// The chosen platform.
        platform: Platform,
    },
    /// A second header of a kind that may appear once per platform.
    #[error("{header} repeats {first} for the same platform")]
    DuplicateHeader {
        /// The repeated header.
        header: HeaderRef,
        /// The first one.
        first: HeaderRef,
    },
    /// A 2 MiB page whose GPA is not 2 MiB aligned.
    #[error("{header} places a 2 MiB page at {gpa:#x}, which is not 2 MiB aligned")]
    MisalignedLargePage {
        /// The header.
        header: HeaderRef,
        /// The page GPA.
        gpa: u64,
    },
    /// Page data longer than its page.
    #[error("{header} carries {size} bytes of data for a page of {page_size} bytes")]
    PageDataTooLarge {
        /// The header.
        header: HeaderRef,
        /// Data length.
        size: u64,
        /// Page size.
        page_size: u64,
    },
    /// A page that is not entirely inside guest RAM.
    #[error("{header} places {size:#x} bytes at {gpa:#x}, outside guest RAM")]
    PageOutsideRam {
        /// The header.
        header: HeaderRef,
        /// First byte.
        gpa: u64,
        /// Length.
        size: u64,
    },
    /// A page in an MMIO range of the host description.
    #[error(
        "{header} places a page at {gpa:#x}, inside the MMIO range {mmio_base:#x}+{mmio_size:#x}"
    )]
    PageInMmioHole {
        /// The header.
        header: HeaderRef,
        /// Page GPA.
        gpa: u64,
        /// MMIO range base.
        mmio_base: u64,
        /// MMIO range size.
        mmio_size: u64,
    },
    /// Two imports cover the same guest page.
    #[error("{header} overlaps {other} at {gpa:#x}")]
    OverlappingPages {
        /// The later import.
        header: HeaderRef,
        /// The earlier import.
        other: HeaderRef,
        /// First overlapping byte.
        gpa: u64,
    },
    /// A RequiredMemory or ErrorRange range that is not entirely inside guest RAM.
    #[error("{header} needs {size:#x} bytes at {gpa:#x}, outside guest RAM")]
    RangeOutsideRam {
        /// The header.
        header: HeaderRef,
        /// First byte.
        gpa: u64,
        /// Length.
        size: u64,
    },
    /// A parameter area larger than guest RAM or than the loader's limit.
    #[error("{header} declares a parameter area of {size:#x} bytes, more than guest RAM or the 64 MiB the loader fills")]
    ParameterAreaTooLarge {
        /// The header.
        header: HeaderRef,
        /// Declared size.
        size: u64,
    },
    /// Imports that add up to more than guest RAM, so some must overlap or lie outside it.
    #[error("{header} brings the imported pages to {imported:#x} bytes, more than the {ram:#x} bytes of guest RAM")]
    ImportsExceedRam {
        /// The import that crossed the limit.
        header: HeaderRef,
        /// Bytes imported with it.
        imported: u64,
        /// Guest RAM in bytes.
        ram: u64,
    },
    /// A parameter that does not fit in its area at its offset.
    #[error("{header} needs {needed} bytes at offset {offset:#x} of parameter area {area_index}, which is {area_size} bytes")]
    ParameterDoesNotFit {
        /// The parameter header.
        header: HeaderRef,
        /// Parameter area index.
        area_index: u32,
        /// Offset inside the area.
        offset: u32,
        /// Bytes the parameter needs.
        needed: u64,
        /// Area size.
        area_size: u64,
    },
    /// The device tree for a DeviceTree parameter could not be built.
    #[error("{header}: cannot build the device tree: {message}")]
    DeviceTree {
        /// The parameter header.
        header: HeaderRef,
        /// The vm-fdt message.
        message: String,
    },
    /// Two VP contexts for the same virtual processor.
    #[error("{header} is a second VP context for vCPU {vp_index} (the first is {first})")]
    DuplicateVpContext {
        /// The second context.
        header: HeaderRef,
        /// Virtual processor index.
        vp_index: u16,
        /// The first context.
        first: HeaderRef,
    },
    /// A VP context for a virtual processor the host will not create.
    #[error("{header} is a VP context for vCPU {vp_index}, but the guest has {vp_count} vCPUs")]
    VpIndexOutOfRange {
        /// The header.
        header: HeaderRef,
        /// Virtual processor index.
        vp_index: u16,
        /// vCPU count of the host description.
        vp_count: u32,
    },
    /// An SNP ID block without a GuestPolicy header for the same platform.
    #[error("{header} needs a GuestPolicy header for the same platform, because the ID block signs the policy")]
    IdBlockWithoutPolicy {
        /// The SnpIdBlock header.
        header: HeaderRef,
    },
    /// A relocated region that lands on pages that do not move.
    #[error("{region} moves {page} to {gpa:#x}, where it overlaps {other}")]
    RelocationOverlapsFixedPages {
        /// The RelocatableRegion header.
        region: HeaderRef,
        /// The moved import.
        page: HeaderRef,
        /// The import that does not move.
        other: HeaderRef,
        /// First overlapping byte.
        gpa: u64,
    },
    /// A relocatable or page table region that is not entirely inside guest RAM.
    #[error("{header} puts its region {gpa:#x}+{size:#x} outside guest RAM")]
    RelocationOutsideRam {
        /// The region header.
        header: HeaderRef,
        /// Region base after relocation.
        gpa: u64,
        /// Region size.
        size: u64,
    },
    /// A relocatable region for which no base within its limits lies in RAM and clears the
    /// pages that do not move.
    #[error(
        "{header} cannot place its {size:#x}-byte region: no aligned base at or above \
         {minimum:#x} keeps it below {maximum:#x}, in RAM and clear of the pages that do not move"
    )]
    RelocationNoBase {
        /// The RelocatableRegion header.
        header: HeaderRef,
        /// Region size in bytes.
        size: u64,
        /// Lowest base the header allows.
        minimum: u64,
        /// Highest address the region may reach.
        maximum: u64,
    },
    /// The page tables could not be rebuilt for the relocated regions.
    #[error("{header}: cannot rebuild the page tables: {message}")]
    PageTableRelocation {
        /// The PageTableRelocationRegion header.
        header: HeaderRef,
        /// What failed.
        message: String,
    },
    /// The host description cannot describe a guest.
    #[error("invalid host description: {reason}")]
    InvalidHostDescription {
        /// The problem.
        reason: String,
    },
}

/// Formats an error and its chain of sources on one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

/// Maps an igvm crate error to [`LoadError::Igvm`], keeping the crate's message.
impl From<igvm::Error> for LoadError {
    fn from(error: igvm::Error) -> Self {
        LoadError::Igvm {
            message: error_chain(&error),
        }
    }
}

/// Runs igvm crate code that may panic on malformed input, turning a panic into
/// [`LoadError::IgvmPanic`].
///
/// The loader checks beforehand the inputs that make igvm 0.5 panic as far as they were found
/// by reading its source (out-of-range file offsets, zero-sized relocation regions, VBS register
/// lists). This catch covers the rest.
/// The default panic hook still prints the panic message to stderr.
pub(crate) fn guard_igvm<T>(
    operation: &'static str,
    f: impl FnOnce() -> T,
) -> Result<T, LoadError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let message = if let Some(text) = payload.downcast_ref::<&str>() {
            (*text).to_string()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "unknown panic".to_string()
        };
        LoadError::IgvmPanic { operation, message }
    })
}
