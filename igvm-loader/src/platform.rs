//! Platform headers of a file and the choice of the platform to launch.

use igvm_defs::IgvmPlatformType;

use crate::error::{LoadError, PlatformList};
use crate::host::PlatformChoice;
use crate::plan::{HeaderRef, Platform};

/// A SupportedPlatform header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformHeader {
    /// Position in the file.
    pub header: HeaderRef,
    /// The platform type as the file gives it.
    pub platform_type: IgvmPlatformType,
    /// The igvmm platform for this type, if igvmm supports it.
    pub platform: Option<Platform>,
    /// The single-bit compatibility mask of this platform.
    pub compatibility_mask: u32,
    /// Highest VTL the guest uses (0 on platforms without VTLs).
    pub highest_vtl: u8,
    /// GPA at and above which memory is host-visible (SNP vTOM, TDX shared bit), or 0.
    pub shared_gpa_boundary: u64,
}

/// Returns the igvmm platform for an IGVM platform type, if there is one.
pub fn platform_from_type(platform_type: IgvmPlatformType) -> Option<Platform> {
    match platform_type {
        IgvmPlatformType::NATIVE => Some(Platform::Native),
        IgvmPlatformType::SEV_SNP => Some(Platform::SevSnp),
        IgvmPlatformType::TDX => Some(Platform::Tdx),
        IgvmPlatformType::VSM_ISOLATION => Some(Platform::Vbs),
        _ => None,
    }
}

/// Returns the name of an IGVM platform type, as `inspect` prints it.
pub fn platform_type_name(platform_type: IgvmPlatformType) -> &'static str {
    match platform_type {
        IgvmPlatformType::NATIVE => "native",
        IgvmPlatformType::VSM_ISOLATION => "vsm-isolation",
        IgvmPlatformType::SEV_SNP => "sev-snp",
        IgvmPlatformType::TDX => "tdx",
        IgvmPlatformType::SEV => "sev",
        IgvmPlatformType::SEV_ES => "sev-es",
        IgvmPlatformType::CCA => "cca",
        _ => "unknown",
    }
}

/// Platforms that `Auto` may pick, strongest first. VBS is never picked: igvmm cannot launch it.
const AUTO_PREFERENCE: [Platform; 3] = [Platform::SevSnp, Platform::Tdx, Platform::Native];

/// Picks the platform header to launch and returns it with its igvmm platform.
///
/// `Auto` takes the strongest platform that both the file and the host support (SEV-SNP, then
/// TDX, then native). `Exact` takes the named platform or fails.
pub(crate) fn choose<'a>(
    platforms: &'a [PlatformHeader],
    choice: &PlatformChoice,
) -> Result<(&'a PlatformHeader, Platform), LoadError> {
    let in_file: Vec<Platform> = platforms.iter().filter_map(|p| p.platform).collect();
    let find = |wanted: Platform| {
        platforms
            .iter()
            .find(|p| p.platform == Some(wanted))
            .map(|header| (header, wanted))
    };

    match choice {
        PlatformChoice::Exact(requested) => {
            find(*requested).ok_or_else(|| LoadError::PlatformNotInFile {
                requested: *requested,
                available: PlatformList(in_file.clone()),
            })
        }
        PlatformChoice::Auto { host_supports } => AUTO_PREFERENCE
            .iter()
            .filter(|candidate| host_supports.contains(candidate))
            .find_map(|candidate| find(*candidate))
            .ok_or_else(|| LoadError::NoCommonPlatform {
                file: PlatformList(in_file.clone()),
                host: PlatformList(host_supports.clone()),
            }),
    }
}
