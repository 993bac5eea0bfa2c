//! Platform choice.

use igvm_defs::IgvmPlatformType;

use super::fixtures::*;
use crate::builder::IgvmBuilder;
use crate::error::{LoadError, PlatformList};
use crate::host::PlatformChoice;
use crate::load::load;
use crate::parse::parse;
use crate::plan::{HeaderRef, Platform};
use crate::raw::assemble;

fn auto(host_supports: &[Platform]) -> PlatformChoice {
    PlatformChoice::Auto {
        host_supports: host_supports.to_vec(),
    }
}

/// Returns a file for native (mask 0x2), SEV-SNP (0x1) and TDX (0x4), with one page each.
fn three_platform_file() -> Vec<u8> {
    let mut builder = IgvmBuilder::new();
    builder.platform(Platform::SevSnp, 0x1, 0).unwrap();
    builder.platform(Platform::Native, 0x2, 0).unwrap();
    builder.platform(Platform::Tdx, 0x4, 0).unwrap();
    for (mask, gpa) in [(0x1, 0x1000), (0x2, 0x2000), (0x4, 0x3000)] {
        builder.set_mask(mask);
        builder.pages(gpa, &[1]).unwrap();
    }
    builder.build().unwrap()
}

fn chosen(file: &[u8], choice: PlatformChoice) -> Result<(Platform, u32, u64), LoadError> {
    let plan = load(file, &options(choice, host_512m()))?;
    Ok((
        plan.platform,
        plan.compatibility_mask,
        plan.operations[0].gpa,
    ))
}

#[test]
fn auto_prefers_confidential_platform() {
    let file = three_platform_file();
    let all = [Platform::Native, Platform::SevSnp, Platform::Tdx];
    assert_eq!(
        chosen(&file, auto(&all)).unwrap(),
        (Platform::SevSnp, 0x1, 0x1000)
    );
    assert_eq!(
        chosen(&file, auto(&[Platform::Native, Platform::Tdx])).unwrap(),
        (Platform::Tdx, 0x4, 0x3000)
    );
    assert_eq!(
        chosen(&file, auto(&[Platform::Native])).unwrap(),
        (Platform::Native, 0x2, 0x2000)
    );
}

#[test]
fn auto_without_common_platform_fails() {
    let mut builder = IgvmBuilder::native();
    builder.pages(0x1000, &[1]).unwrap();
    let error = chosen(&builder.build().unwrap(), auto(&[Platform::SevSnp])).unwrap_err();
    assert_eq!(
        error,
        LoadError::NoCommonPlatform {
            file: PlatformList(vec![Platform::Native]),
            host: PlatformList(vec![Platform::SevSnp])
        }
    );
    assert_eq!(
        error.to_string(),
        "no platform is supported by both the file (native) and the host (sev-snp)"
    );
}

#[test]
fn exact_platform_must_be_in_file() {
    let file = conformance("tiny-qemu-snp-native.igvm");
    assert_eq!(
        chosen(&file, PlatformChoice::Exact(Platform::Tdx)).unwrap_err(),
        LoadError::PlatformNotInFile {
            requested: Platform::Tdx,
            available: PlatformList(vec![Platform::SevSnp, Platform::Native])
        }
    );
}

#[test]
fn vbs_is_not_launchable() {
    let file = conformance("msigvm-capi-testdata.igvm");
    assert_eq!(
        chosen(&file, PlatformChoice::Exact(Platform::Vbs)).unwrap_err(),
        LoadError::PlatformNotLaunchable {
            platform: Platform::Vbs
        }
    );
    // Auto never picks VBS.
    assert!(matches!(
        chosen(&file, auto(&[Platform::Vbs, Platform::Native])).unwrap_err(),
        LoadError::NoCommonPlatform { .. }
    ));
}

#[test]
fn file_without_platform_header_fails() {
    let file = assemble(
        &[(PAGE_DATA, page_body(0x1000, NATIVE_MASK, 0, false))],
        &[0; 8],
    );
    assert_eq!(parse(&file).unwrap_err(), LoadError::NoPlatformHeader);
}

#[test]
fn platform_mask_with_two_bits_fails() {
    let file = assemble(
        &[(
            SUPPORTED_PLATFORM,
            platform_body(IgvmPlatformType::NATIVE, 0x3),
        )],
        &[0; 8],
    );
    assert_eq!(
        parse(&file).unwrap_err(),
        LoadError::InvalidPlatformMask {
            header: HeaderRef {
                header_type: SUPPORTED_PLATFORM,
                index: 0
            },
            mask: 0x3
        }
    );
}

#[test]
fn unknown_platform_type_is_not_chosen() {
    // A SEV-ES-only file: igvmm has no launch for it.
    let file = assemble(
        &[(
            SUPPORTED_PLATFORM,
            platform_body(IgvmPlatformType::SEV_ES, 0x1),
        )],
        &[0; 8],
    );
    assert_eq!(
        chosen(&file, auto(&[Platform::Native, Platform::SevSnp])).unwrap_err(),
        LoadError::NoCommonPlatform {
            file: PlatformList(vec![]),
            host: PlatformList(vec![Platform::Native, Platform::SevSnp])
        }
    );
}
