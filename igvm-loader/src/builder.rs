//! Writing IGVM files with the igvm crate: a native image around a PC firmware image, and a
//! small general builder for the demo guest and for tests.

use igvm::{
    IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader, IgvmRevision,
};
use igvm_defs::{
    IgvmNativeVpContextX64, IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType,
    IgvmVariableHeaderType, IGVM_VHF_RELOCATABLE_REGION_APPLY_GDTR,
    IGVM_VHF_RELOCATABLE_REGION_APPLY_RIP, IGVM_VHF_RELOCATABLE_REGION_IS_VTL2,
    IGVM_VHS_PAGE_TABLE_RELOCATION, IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_RELOCATABLE_REGION,
    IGVM_VHS_SUPPORTED_PLATFORM,
};
use thiserror::Error;
use zerocopy::{FromZeros, IntoBytes};

use crate::error::{error_chain, guard_igvm, LoadError};
use crate::params::ParameterKind;
use crate::plan::{Platform, PAGE_SIZE_2M, PAGE_SIZE_4K};
use crate::raw;

/// Compatibility mask of the native platform in files this module writes. COCONUT-SVSM's
/// igvmbuilder uses the same bit for native.
pub const NATIVE_COMPATIBILITY_MASK: u32 = 0x2;
/// Largest firmware image [`firmware_image`] accepts.
pub const MAX_FIRMWARE_SIZE: usize = 16 << 20;
/// End of the firmware window below 1 MiB: the legacy BIOS area ends at 1 MiB.
const LOW_FIRMWARE_END: u64 = 0x10_0000;
/// Size of the firmware copy below 1 MiB (0xE0000..0x100000).
const LOW_FIRMWARE_SIZE: usize = 128 << 10;
/// The firmware's last byte sits just below 4 GiB, where the reset vector is.
const FOUR_GIB: u64 = 1 << 32;

/// Code segment attributes of the reset state: present, code, execute/read, accessed.
pub const REAL_MODE_CODE_ATTRIBUTES: u16 = 0x9B;
/// Data segment attributes of the reset state: present, data, read/write, accessed.
pub const REAL_MODE_DATA_ATTRIBUTES: u16 = 0x93;

/// An error of writing an IGVM file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BuildError {
    /// A firmware image whose size is zero, not a multiple of 4 KiB or above 16 MiB.
    #[error("firmware image is {size} bytes; it must be a non-zero multiple of 4096 bytes and at most {MAX_FIRMWARE_SIZE}")]
    InvalidFirmwareSize {
        /// Image size in bytes.
        size: usize,
    },
    /// An address that is not aligned to the page or area it starts.
    #[error("{what} at {gpa:#x} is not aligned to {alignment:#x} bytes")]
    Unaligned {
        /// The kind of object placed.
        what: &'static str,
        /// Its address.
        gpa: u64,
        /// The alignment it needs.
        alignment: u64,
    },
    /// Page data longer than the page.
    #[error("page at {gpa:#x} gets {size} bytes of data, more than its {page_size} bytes")]
    DataTooLarge {
        /// Page address.
        gpa: u64,
        /// Data length.
        size: usize,
        /// Page size.
        page_size: u64,
    },
    /// A page size other than 4 KiB or 2 MiB.
    #[error("page size {size:#x} is neither 4 KiB nor 2 MiB")]
    InvalidPageSize {
        /// The size.
        size: u64,
    },
    /// A platform the builder cannot declare.
    #[error("cannot declare platform {platform} with mask {mask:#x}")]
    InvalidPlatform {
        /// The platform.
        platform: Platform,
        /// The mask.
        mask: u32,
    },
    /// The igvm crate refused the headers.
    #[error("igvm crate refused the file: {message}")]
    Igvm {
        /// The crate's message.
        message: String,
    },
}

impl From<igvm::Error> for BuildError {
    fn from(error: igvm::Error) -> Self {
        BuildError::Igvm {
            message: error_chain(&error),
        }
    }
}

impl From<LoadError> for BuildError {
    fn from(error: LoadError) -> Self {
        BuildError::Igvm {
            message: error.to_string(),
        }
    }
}

/// Returns the register state of an x86 processor after reset, with CS:IP at F000:FFF0 and
/// the CS base at 0xFFFF0000, so the first fetch is the reset vector at 0xFFFFFFF0.
///
/// Other segments have base 0 and limit 0xFFFF, GDTR and IDTR have limit 0xFFFF, RFLAGS is 0x2
/// and CR0 is 0x60000010 (CD, NW and ET set).
pub fn real_mode_reset_context() -> IgvmNativeVpContextX64 {
    let mut context = IgvmNativeVpContextX64::new_zeroed();
    context.rip = 0xFFF0;
    context.rflags = 0x2;
    context.code_selector = 0xF000;
    context.code_base = 0xFFFF_0000;
    context.code_limit = 0xFFFF;
    context.code_attributes = REAL_MODE_CODE_ATTRIBUTES;
    context.data_selector = 0;
    context.data_base = 0;
    context.data_limit = 0xFFFF;
    context.data_attributes = REAL_MODE_DATA_ATTRIBUTES;
    context.gdtr_limit = 0xFFFF;
    context.idtr_limit = 0xFFFF;
    context.cr0 = 0x6000_0010;
    context
}

/// Writes a native IGVM file that loads a PC firmware image the way a PC maps its flash.
///
/// The image ends at 0xFFFFFFFF, as 4 KiB pages. Its last 128 KiB (or all of a smaller image)
/// is also placed so that it ends at 1 MiB, which puts a 128 KiB image's copy at 0xE0000. The
/// only vCPU starts in real mode at F000:FFF0 ([`real_mode_reset_context`]). Pages of zeros are
/// written as empty PageData headers.
pub fn firmware_image(image: &[u8]) -> Result<Vec<u8>, BuildError> {
    let size = image.len();
    if size == 0 || !size.is_multiple_of(PAGE_SIZE_4K as usize) || size > MAX_FIRMWARE_SIZE {
        return Err(BuildError::InvalidFirmwareSize { size });
    }
    let mut builder = IgvmBuilder::native();
    builder.pages(FOUR_GIB - size as u64, image)?;
    let low_size = size.min(LOW_FIRMWARE_SIZE);
    let low_copy = image.get(size - low_size..).unwrap_or_default();
    builder.pages(LOW_FIRMWARE_END - low_size as u64, low_copy)?;
    builder.native_vp_context(0, real_mode_reset_context());
    builder.build()
}

/// One page of [`IgvmBuilder::page`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSpec {
    /// Guest physical address, aligned to `size`.
    pub gpa: u64,
    /// [`PAGE_SIZE_4K`] or [`PAGE_SIZE_2M`].
    pub size: u64,
    /// Contents, at most `size` bytes; empty for a page of zeros.
    pub data: Vec<u8>,
    /// IGVM page data type.
    pub data_type: IgvmPageDataType,
    /// The IGVM unmeasured flag.
    pub unmeasured: bool,
    /// The IGVM shared flag.
    pub shared: bool,
}

impl PageSpec {
    /// Returns a measured 4 KiB page of type NORMAL.
    pub fn normal(gpa: u64, data: &[u8]) -> Self {
        Self {
            gpa,
            size: PAGE_SIZE_4K,
            data: data.to_vec(),
            data_type: IgvmPageDataType::NORMAL,
            unmeasured: false,
            shared: false,
        }
    }
}

/// Collects headers and writes an IGVM file (format version 1).
///
/// Headers that take a compatibility mask get the builder's current mask: by default every
/// platform declared so far, or the mask set with [`IgvmBuilder::set_mask`].
#[derive(Debug, Clone, Default)]
pub struct IgvmBuilder {
    platforms: Vec<IGVM_VHS_SUPPORTED_PLATFORM>,
    initializations: Vec<IgvmInitializationHeader>,
    directives: Vec<IgvmDirectiveHeader>,
    /// Data of 2 MiB pages, by directive index, attached after serialization.
    large_pages: Vec<(usize, Vec<u8>)>,
    mask: Option<u32>,
}

impl IgvmBuilder {
    /// Returns a builder with no platform.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns a builder with one native platform, mask [`NATIVE_COMPATIBILITY_MASK`].
    pub fn native() -> Self {
        let mut builder = Self::new();
        builder.platforms.push(supported_platform(
            IgvmPlatformType::NATIVE,
            NATIVE_COMPATIBILITY_MASK,
            0,
            0,
        ));
        builder
    }

    /// Declares a platform with a single-bit compatibility mask.
    pub fn platform(
        &mut self,
        platform: Platform,
        mask: u32,
        shared_gpa_boundary: u64,
    ) -> Result<&mut Self, BuildError> {
        let (platform_type, highest_vtl) = match platform {
            Platform::Native => (IgvmPlatformType::NATIVE, 0),
            Platform::SevSnp => (IgvmPlatformType::SEV_SNP, 0),
            Platform::Tdx => (IgvmPlatformType::TDX, 0),
            Platform::Vbs => (IgvmPlatformType::VSM_ISOLATION, 0),
        };
        if mask.count_ones() != 1 {
            return Err(BuildError::InvalidPlatform { platform, mask });
        }
        self.platforms.push(supported_platform(
            platform_type,
            mask,
            highest_vtl,
            shared_gpa_boundary,
        ));
        Ok(self)
    }

    /// Sets the compatibility mask of headers added from now on.
    pub fn set_mask(&mut self, mask: u32) -> &mut Self {
        self.mask = Some(mask);
        self
    }

    /// Returns the compatibility mask the next header gets.
    pub fn mask(&self) -> u32 {
        self.mask.unwrap_or_else(|| {
            self.platforms
                .iter()
                .fold(0, |all, platform| all | platform.compatibility_mask)
        })
    }

    /// Adds one page.
    pub fn page(&mut self, spec: PageSpec) -> Result<&mut Self, BuildError> {
        if spec.size != PAGE_SIZE_4K && spec.size != PAGE_SIZE_2M {
            return Err(BuildError::InvalidPageSize { size: spec.size });
        }
        if !spec.gpa.is_multiple_of(spec.size) {
            return Err(BuildError::Unaligned {
                what: "page",
                gpa: spec.gpa,
                alignment: spec.size,
            });
        }
        if spec.data.len() as u64 > spec.size {
            return Err(BuildError::DataTooLarge {
                gpa: spec.gpa,
                size: spec.data.len(),
                page_size: spec.size,
            });
        }
        let flags = IgvmPageDataFlags::new()
            .with_is_2mb_page(spec.size == PAGE_SIZE_2M)
            .with_unmeasured(spec.unmeasured)
            .with_shared(spec.shared);
        let mut data = spec.data;
        if spec.size == PAGE_SIZE_2M && !data.is_empty() {
            data.resize(PAGE_SIZE_2M as usize, 0);
            self.large_pages.push((self.directives.len(), data));
            data = Vec::new();
        }
        self.directives.push(IgvmDirectiveHeader::PageData {
            gpa: spec.gpa,
            compatibility_mask: self.mask(),
            flags,
            data_type: spec.data_type,
            data,
        });
        Ok(self)
    }

    /// Adds measured 4 KiB pages holding `data` from `gpa` on; the last page is padded with
    /// zeros. Pages that are all zeros are written without file data.
    pub fn pages(&mut self, gpa: u64, data: &[u8]) -> Result<&mut Self, BuildError> {
        if !gpa.is_multiple_of(PAGE_SIZE_4K) {
            return Err(BuildError::Unaligned {
                what: "page",
                gpa,
                alignment: PAGE_SIZE_4K,
            });
        }
        for (index, chunk) in data.chunks(PAGE_SIZE_4K as usize).enumerate() {
            let page_data = if chunk.iter().all(|byte| *byte == 0) {
                &[][..]
            } else {
                chunk
            };
            self.page(PageSpec::normal(
                gpa + index as u64 * PAGE_SIZE_4K,
                page_data,
            ))?;
        }
        Ok(self)
    }

    /// Declares parameter area `area_index` of `size` bytes, writes `parameters` (kind and byte
    /// offset) into it and inserts it at `gpa`.
    pub fn parameter_area(
        &mut self,
        area_index: u32,
        size: u64,
        parameters: &[(ParameterKind, u32)],
        gpa: u64,
    ) -> Result<&mut Self, BuildError> {
        if !size.is_multiple_of(PAGE_SIZE_4K) || size == 0 {
            return Err(BuildError::Unaligned {
                what: "parameter area size",
                gpa: size,
                alignment: PAGE_SIZE_4K,
            });
        }
        if !gpa.is_multiple_of(PAGE_SIZE_4K) {
            return Err(BuildError::Unaligned {
                what: "parameter insert",
                gpa,
                alignment: PAGE_SIZE_4K,
            });
        }
        self.directives.push(IgvmDirectiveHeader::ParameterArea {
            number_of_bytes: size,
            parameter_area_index: area_index,
            initial_data: Vec::new(),
        });
        for (kind, offset) in parameters {
            self.directives.push(kind.directive(area_index, *offset));
        }
        self.directives.push(IgvmDirectiveHeader::ParameterInsert(
            IGVM_VHS_PARAMETER_INSERT {
                gpa,
                compatibility_mask: self.mask(),
                parameter_area_index: area_index,
            },
        ));
        Ok(self)
    }

    /// Adds the native register state of vCPU `vp_index`.
    pub fn native_vp_context(
        &mut self,
        vp_index: u16,
        context: IgvmNativeVpContextX64,
    ) -> &mut Self {
        self.directives
            .push(IgvmDirectiveHeader::X64NativeVpContext {
                compatibility_mask: self.mask(),
                vp_index,
                context: Box::new(context),
            });
        self
    }

    /// Adds a RequiredMemory range.
    pub fn required_memory(&mut self, gpa: u64, size: u32) -> Result<&mut Self, BuildError> {
        if !gpa.is_multiple_of(PAGE_SIZE_4K) || u64::from(size) % PAGE_SIZE_4K != 0 {
            return Err(BuildError::Unaligned {
                what: "required memory",
                gpa,
                alignment: PAGE_SIZE_4K,
            });
        }
        self.directives.push(IgvmDirectiveHeader::RequiredMemory {
            gpa,
            compatibility_mask: self.mask(),
            number_of_bytes: size,
            vtl2_protectable: false,
        });
        Ok(self)
    }

    /// Adds an initialization header as given.
    pub fn initialization(&mut self, header: IgvmInitializationHeader) -> &mut Self {
        self.initializations.push(header);
        self
    }

    /// Adds a directive header as given.
    pub fn directive(&mut self, header: IgvmDirectiveHeader) -> &mut Self {
        self.directives.push(header);
        self
    }

    /// Validates the headers and writes the file.
    ///
    /// The igvm crate checks and writes every header except RelocatableRegion and
    /// PageTableRelocationRegion, which igvm 0.5 accepts only next to a VBS VP context. Those
    /// go at the end of the initialization section, in the order they were added, and the
    /// loader's parser checks the whole file.
    pub fn build(&self) -> Result<Vec<u8>, BuildError> {
        let platforms = self
            .platforms
            .iter()
            .copied()
            .map(IgvmPlatformHeader::SupportedPlatform)
            .collect();
        let (relocations, initializations): (Vec<_>, Vec<_>) = self
            .initializations
            .iter()
            .cloned()
            .partition(|header| relocation_header(header).is_some());
        let file = guard_igvm("checking the headers", || {
            IgvmFile::new(
                IgvmRevision::V1,
                platforms,
                initializations,
                self.directives.clone(),
            )
        })??;
        let mut bytes = Vec::new();
        guard_igvm("writing the file", || file.serialize(&mut bytes))??;
        if !self.large_pages.is_empty() {
            bytes = raw::attach_page_data(&bytes, &self.large_pages)?;
        }
        if !relocations.is_empty() {
            let headers: Vec<(u32, Vec<u8>)> =
                relocations.iter().filter_map(relocation_header).collect();
            bytes = raw::insert_initialization_headers(&bytes, &headers)?;
            crate::parse::parse(&bytes)?;
        }
        Ok(bytes)
    }
}

/// Returns the type and body of a RelocatableRegion or PageTableRelocationRegion header.
fn relocation_header(header: &IgvmInitializationHeader) -> Option<(u32, Vec<u8>)> {
    match header {
        IgvmInitializationHeader::RelocatableRegion {
            compatibility_mask,
            relocation_alignment,
            relocation_region_gpa,
            relocation_region_size,
            minimum_relocation_gpa,
            maximum_relocation_gpa,
            is_vtl2,
            apply_rip_offset,
            apply_gdtr_offset,
            vp_index,
            vtl,
        } => {
            let flag = |set: bool, bit: u8| if set { bit } else { 0 };
            let body = IGVM_VHS_RELOCATABLE_REGION {
                compatibility_mask: *compatibility_mask,
                vp_index: *vp_index,
                vtl: *vtl as u8,
                flags: flag(*is_vtl2, IGVM_VHF_RELOCATABLE_REGION_IS_VTL2)
                    | flag(*apply_rip_offset, IGVM_VHF_RELOCATABLE_REGION_APPLY_RIP)
                    | flag(*apply_gdtr_offset, IGVM_VHF_RELOCATABLE_REGION_APPLY_GDTR),
                relocation_alignment: *relocation_alignment,
                relocation_region_gpa: *relocation_region_gpa,
                relocation_region_size: *relocation_region_size,
                minimum_relocation_gpa: *minimum_relocation_gpa,
                maximum_relocation_gpa: *maximum_relocation_gpa,
            };
            Some((
                IgvmVariableHeaderType::IGVM_VHT_RELOCATABLE_REGION.0,
                body.as_bytes().to_vec(),
            ))
        }
        IgvmInitializationHeader::PageTableRelocationRegion {
            compatibility_mask,
            gpa,
            size,
            used_size,
            vp_index,
            vtl,
        } => {
            let body = IGVM_VHS_PAGE_TABLE_RELOCATION {
                compatibility_mask: *compatibility_mask,
                vp_index: *vp_index,
                vtl: *vtl as u8,
                reserved: 0,
                gpa: *gpa,
                size: *size,
                used_size: *used_size,
            };
            Some((
                IgvmVariableHeaderType::IGVM_VHT_PAGE_TABLE_RELOCATION_REGION.0,
                body.as_bytes().to_vec(),
            ))
        }
        _ => None,
    }
}

fn supported_platform(
    platform_type: IgvmPlatformType,
    compatibility_mask: u32,
    highest_vtl: u8,
    shared_gpa_boundary: u64,
) -> IGVM_VHS_SUPPORTED_PLATFORM {
    IGVM_VHS_SUPPORTED_PLATFORM {
        compatibility_mask,
        highest_vtl,
        platform_type,
        platform_version: 1,
        shared_gpa_boundary,
    }
}
