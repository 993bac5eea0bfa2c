//! IGVM variable header types: names, sections and the body sizes the format defines.

use std::mem::size_of;

use igvm_defs::{
    IgvmVariableHeaderType as Vht, IGVM_VHS_CCA_POLICY, IGVM_VHS_CORIM_DATA, IGVM_VHS_ERROR_RANGE,
    IGVM_VHS_GUEST_POLICY, IGVM_VHS_PAGE_DATA, IGVM_VHS_PAGE_TABLE_RELOCATION, IGVM_VHS_PARAMETER,
    IGVM_VHS_PARAMETER_AREA, IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_RELOCATABLE_REGION,
    IGVM_VHS_REQUIRED_MEMORY, IGVM_VHS_SNP_ID_BLOCK, IGVM_VHS_SUPPORTED_PLATFORM,
    IGVM_VHS_VBS_MEASUREMENT, IGVM_VHS_VP_CONTEXT, IGVM_VHT_OPTIONAL_BIT, IGVM_VHT_RANGE_DIRECTIVE,
    IGVM_VHT_RANGE_INIT, IGVM_VHT_RANGE_PLATFORM,
};

/// The three sections of the variable header area, in the order a file must use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Section {
    Platform,
    Initialization,
    Directive,
}

impl Section {
    /// Returns the section a header type belongs to, ignoring the optional bit.
    pub(crate) fn of(header_type: u32) -> Option<Section> {
        let base = header_type & !IGVM_VHT_OPTIONAL_BIT;
        if IGVM_VHT_RANGE_PLATFORM.contains(&base) {
            Some(Section::Platform)
        } else if IGVM_VHT_RANGE_INIT.contains(&base) {
            Some(Section::Initialization)
        } else if IGVM_VHT_RANGE_DIRECTIVE.contains(&base) {
            Some(Section::Directive)
        } else {
            None
        }
    }

    /// Returns the section name used in messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Section::Platform => "platform",
            Section::Initialization => "initialization",
            Section::Directive => "directive",
        }
    }
}

/// Returns the name of an IGVM variable header type, ignoring the optional bit, or "unknown".
pub fn header_type_name(header_type: u32) -> &'static str {
    match Vht(header_type & !IGVM_VHT_OPTIONAL_BIT) {
        Vht::IGVM_VHT_SUPPORTED_PLATFORM => "SupportedPlatform",
        Vht::IGVM_VHT_GUEST_POLICY => "GuestPolicy",
        Vht::IGVM_VHT_RELOCATABLE_REGION => "RelocatableRegion",
        Vht::IGVM_VHT_PAGE_TABLE_RELOCATION_REGION => "PageTableRelocationRegion",
        Vht::IGVM_VHT_CORIM_DOCUMENT => "CorimDocument",
        Vht::IGVM_VHT_CORIM_SIGNATURE => "CorimSignature",
        Vht::IGVM_VHT_CCA_POLICY => "CcaPolicy",
        Vht::IGVM_VHT_VERSION_STRING => "VersionString",
        Vht::IGVM_VHT_PARAMETER_AREA => "ParameterArea",
        Vht::IGVM_VHT_PAGE_DATA => "PageData",
        Vht::IGVM_VHT_PARAMETER_INSERT => "ParameterInsert",
        Vht::IGVM_VHT_VP_CONTEXT => "VpContext",
        Vht::IGVM_VHT_REQUIRED_MEMORY => "RequiredMemory",
        Vht::IGVM_VHT_VP_COUNT_PARAMETER => "VpCount",
        Vht::IGVM_VHT_SRAT => "Srat",
        Vht::IGVM_VHT_MADT => "Madt",
        Vht::IGVM_VHT_MMIO_RANGES => "MmioRanges",
        Vht::IGVM_VHT_SNP_ID_BLOCK => "SnpIdBlock",
        Vht::IGVM_VHT_MEMORY_MAP => "MemoryMap",
        Vht::IGVM_VHT_ERROR_RANGE => "ErrorRange",
        Vht::IGVM_VHT_COMMAND_LINE => "CommandLine",
        Vht::IGVM_VHT_SLIT => "Slit",
        Vht::IGVM_VHT_PPTT => "Pptt",
        Vht::IGVM_VHT_VBS_MEASUREMENT => "VbsMeasurement",
        Vht::IGVM_VHT_DEVICE_TREE => "DeviceTree",
        Vht::IGVM_VHT_ENVIRONMENT_INFO_PARAMETER => "EnvironmentInfo",
        _ => "unknown",
    }
}

/// Handling of a header type before the igvm crate parses the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Support {
    /// The igvm crate parses it; the body must be exactly this many bytes.
    Parsed { body_size: usize },
    /// The version string: removed before parsing and kept as text.
    VersionString,
    /// A type that neither the crate nor the loader supports.
    Unknown,
}

/// Returns how a header type is handled, ignoring the optional bit.
pub(crate) fn support(header_type: u32) -> Support {
    let parsed = |body_size| Support::Parsed { body_size };
    match Vht(header_type & !IGVM_VHT_OPTIONAL_BIT) {
        Vht::IGVM_VHT_SUPPORTED_PLATFORM => parsed(size_of::<IGVM_VHS_SUPPORTED_PLATFORM>()),
        Vht::IGVM_VHT_GUEST_POLICY => parsed(size_of::<IGVM_VHS_GUEST_POLICY>()),
        Vht::IGVM_VHT_RELOCATABLE_REGION => parsed(size_of::<IGVM_VHS_RELOCATABLE_REGION>()),
        Vht::IGVM_VHT_PAGE_TABLE_RELOCATION_REGION => {
            parsed(size_of::<IGVM_VHS_PAGE_TABLE_RELOCATION>())
        }
        Vht::IGVM_VHT_CORIM_DOCUMENT | Vht::IGVM_VHT_CORIM_SIGNATURE => {
            parsed(size_of::<IGVM_VHS_CORIM_DATA>())
        }
        Vht::IGVM_VHT_CCA_POLICY => parsed(size_of::<IGVM_VHS_CCA_POLICY>()),
        Vht::IGVM_VHT_VERSION_STRING => Support::VersionString,
        Vht::IGVM_VHT_PARAMETER_AREA => parsed(size_of::<IGVM_VHS_PARAMETER_AREA>()),
        Vht::IGVM_VHT_PAGE_DATA => parsed(size_of::<IGVM_VHS_PAGE_DATA>()),
        Vht::IGVM_VHT_PARAMETER_INSERT => parsed(size_of::<IGVM_VHS_PARAMETER_INSERT>()),
        Vht::IGVM_VHT_VP_CONTEXT => parsed(size_of::<IGVM_VHS_VP_CONTEXT>()),
        Vht::IGVM_VHT_REQUIRED_MEMORY => parsed(size_of::<IGVM_VHS_REQUIRED_MEMORY>()),
        Vht::IGVM_VHT_SNP_ID_BLOCK => parsed(size_of::<IGVM_VHS_SNP_ID_BLOCK>()),
        Vht::IGVM_VHT_ERROR_RANGE => parsed(size_of::<IGVM_VHS_ERROR_RANGE>()),
        Vht::IGVM_VHT_VBS_MEASUREMENT => parsed(size_of::<IGVM_VHS_VBS_MEASUREMENT>()),
        Vht::IGVM_VHT_VP_COUNT_PARAMETER
        | Vht::IGVM_VHT_SRAT
        | Vht::IGVM_VHT_MADT
        | Vht::IGVM_VHT_MMIO_RANGES
        | Vht::IGVM_VHT_MEMORY_MAP
        | Vht::IGVM_VHT_COMMAND_LINE
        | Vht::IGVM_VHT_SLIT
        | Vht::IGVM_VHT_PPTT
        | Vht::IGVM_VHT_DEVICE_TREE
        | Vht::IGVM_VHT_ENVIRONMENT_INFO_PARAMETER => parsed(size_of::<IGVM_VHS_PARAMETER>()),
        _ => Support::Unknown,
    }
}
