//! SupportedPlatform headers: igvm 0.5's `IgvmPlatformHeader::validate` and
//! `validate_platform_headers`, plus the rule that each compatibility mask names one platform.

use igvm::Arch;
use igvm_defs::{IgvmPlatformType, IGVM_VHS_SUPPORTED_PLATFORM};

use super::{arch_name, decode, invalid, RawPlatform};
use crate::error::LoadError;
use crate::headers::Section;
use crate::platform::platform_type_name;
use crate::raw::RawFile;

/// The platform version every known platform type has in igvm_defs 0.5.
const PLATFORM_VERSION: u16 = 1;

pub(super) fn check(raw: &RawFile<'_>, arch: Arch) -> Result<Vec<RawPlatform>, LoadError> {
    let mut platforms: Vec<RawPlatform> = Vec::new();
    for header in raw.kept(Section::Platform) {
        let href = header.header;
        let info: IGVM_VHS_SUPPORTED_PLATFORM = decode(header)?;
        let mask = info.compatibility_mask;
        if mask.count_ones() != 1 {
            return Err(LoadError::InvalidPlatformMask { header: href, mask });
        }
        if let Some(first) = platforms.iter().find(|p| p.info.compatibility_mask == mask) {
            return Err(invalid(
                href,
                format!(
                    "compatibility mask {mask:#x} is already used by {}",
                    first.header
                ),
            ));
        }
        if info.highest_vtl != 0 && info.highest_vtl != 2 {
            return Err(invalid(
                href,
                format!("highest VTL {} is neither 0 nor 2", info.highest_vtl),
            ));
        }

        let platform_type = info.platform_type;
        let needed_arch = match platform_type {
            IgvmPlatformType::VSM_ISOLATION => None,
            IgvmPlatformType::NATIVE
            | IgvmPlatformType::SEV_SNP
            | IgvmPlatformType::TDX
            | IgvmPlatformType::SEV
            | IgvmPlatformType::SEV_ES => Some(Arch::X64),
            IgvmPlatformType::CCA => Some(Arch::AArch64),
            other => {
                return Err(invalid(
                    href,
                    format!("platform type {:#x} is unknown", other.0),
                ));
            }
        };
        let name = platform_type_name(platform_type);
        if needed_arch.is_some_and(|needed| needed != arch) {
            return Err(invalid(
                href,
                format!("platform {name} does not exist on {}", arch_name(arch)),
            ));
        }
        if info.platform_version != PLATFORM_VERSION {
            return Err(invalid(
                href,
                format!(
                    "platform version {} of {name} is not {PLATFORM_VERSION}",
                    info.platform_version
                ),
            ));
        }
        let boundary_forbidden = matches!(
            platform_type,
            IgvmPlatformType::NATIVE | IgvmPlatformType::VSM_ISOLATION
        );
        if boundary_forbidden && info.shared_gpa_boundary != 0 {
            return Err(invalid(
                href,
                format!(
                    "platform {name} has shared GPA boundary {:#x}; it must be 0",
                    info.shared_gpa_boundary
                ),
            ));
        }
        if let Some(first) = platforms
            .iter()
            .find(|p| p.info.platform_type == platform_type)
        {
            return Err(invalid(
                href,
                format!("platform {name} is already declared by {}", first.header),
            ));
        }
        platforms.push(RawPlatform { header: href, info });
    }
    if platforms.is_empty() {
        return Err(LoadError::NoPlatformHeader);
    }
    Ok(platforms)
}
