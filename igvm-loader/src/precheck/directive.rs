//! Directive headers: igvm 0.5's `IgvmDirectiveHeader::validate`, its parse checks and
//! `validate_directive_headers`.

use std::collections::HashMap;
use std::mem::size_of;

use igvm::registers::{AArch64Register, X86Register};
use igvm::Arch;
use igvm_defs::{
    IgvmNativeVpContextX64, IgvmPageDataType, IgvmPlatformType, IgvmVariableHeaderType as Vht,
    IgvmVpContextAArch64Cca, VbsVpContextHeader, VbsVpContextRegister, IGVM_VHS_ERROR_RANGE,
    IGVM_VHS_PAGE_DATA, IGVM_VHS_PARAMETER, IGVM_VHS_PARAMETER_AREA, IGVM_VHS_PARAMETER_INSERT,
    IGVM_VHS_REQUIRED_MEMORY, IGVM_VHS_VP_CONTEXT,
};
use zerocopy::FromBytes;

use super::initialization::RelocationClaims;
use super::{check_aligned, decode, file_range, invalid, RawPlatform};
use crate::error::LoadError;
use crate::headers::Section;
use crate::plan::{HeaderRef, PAGE_SIZE_2M, PAGE_SIZE_4K};
use crate::platform::platform_type_name;
use crate::raw::{RawFile, RawHeader};

/// State of a parameter area: declared, then consumed by one insert.
struct AreaState {
    inserted_by: Option<HeaderRef>,
    declared_by: HeaderRef,
}

pub(super) fn check(
    raw: &RawFile<'_>,
    arch: Arch,
    platforms: &[RawPlatform],
    relocation: &RelocationClaims,
) -> Result<(), LoadError> {
    let mut areas: HashMap<u32, AreaState> = HashMap::new();

    for header in raw.kept(Section::Directive) {
        let href = header.header;
        match Vht(href.header_type) {
            Vht::IGVM_VHT_PAGE_DATA => check_page_data(raw, header)?,
            Vht::IGVM_VHT_PARAMETER_AREA => {
                let area: IGVM_VHS_PARAMETER_AREA = decode(header)?;
                check_aligned(href, "area size", area.number_of_bytes, PAGE_SIZE_4K)?;
                if area.file_offset != 0 {
                    file_range(raw, href, area.file_offset, area.number_of_bytes)?;
                }
                let state = AreaState {
                    inserted_by: None,
                    declared_by: href,
                };
                if let Some(first) = areas.insert(area.parameter_area_index, state) {
                    return Err(LoadError::ParameterAreaRedeclared {
                        header: href,
                        area_index: area.parameter_area_index,
                        first: first.declared_by,
                    });
                }
            }
            Vht::IGVM_VHT_PARAMETER_INSERT => {
                let insert: IGVM_VHS_PARAMETER_INSERT = decode(header)?;
                check_aligned(href, "GPA", insert.gpa, PAGE_SIZE_4K)?;
                let state = usable_area(&mut areas, href, insert.parameter_area_index)?;
                state.inserted_by = Some(href);
                let in_page_tables = relocation.page_table_regions.iter().find(|region| {
                    region.mask & insert.compatibility_mask != 0
                        && insert.gpa >= region.gpa
                        && insert.gpa - region.gpa < region.size
                });
                if let Some(region) = in_page_tables {
                    return Err(invalid(
                        href,
                        format!("it inserts into the page table region of {}", region.header),
                    ));
                }
            }
            Vht::IGVM_VHT_VP_CONTEXT => check_vp_context(raw, arch, platforms, header)?,
            Vht::IGVM_VHT_REQUIRED_MEMORY => {
                let range: IGVM_VHS_REQUIRED_MEMORY = decode(header)?;
                check_aligned(href, "GPA", range.gpa, PAGE_SIZE_4K)?;
                check_aligned(href, "size", u64::from(range.number_of_bytes), PAGE_SIZE_4K)?;
                if range.reserved != 0 {
                    return Err(invalid(href, "the reserved field is not zero"));
                }
            }
            Vht::IGVM_VHT_ERROR_RANGE => {
                let range: IGVM_VHS_ERROR_RANGE = decode(header)?;
                check_aligned(href, "GPA", range.gpa, PAGE_SIZE_4K)?;
            }
            Vht::IGVM_VHT_VP_COUNT_PARAMETER
            | Vht::IGVM_VHT_SRAT
            | Vht::IGVM_VHT_MADT
            | Vht::IGVM_VHT_MMIO_RANGES
            | Vht::IGVM_VHT_MEMORY_MAP
            | Vht::IGVM_VHT_COMMAND_LINE
            | Vht::IGVM_VHT_SLIT
            | Vht::IGVM_VHT_PPTT
            | Vht::IGVM_VHT_DEVICE_TREE
            | Vht::IGVM_VHT_ENVIRONMENT_INFO_PARAMETER => {
                let parameter: IGVM_VHS_PARAMETER = decode(header)?;
                usable_area(&mut areas, href, parameter.parameter_area_index)?;
            }
            _ => {}
        }
    }

    Ok(())
}

fn check_page_data(raw: &RawFile<'_>, header: &RawHeader<'_>) -> Result<(), LoadError> {
    let href = header.header;
    let page: IGVM_VHS_PAGE_DATA = decode(header)?;
    check_aligned(href, "GPA", page.gpa, PAGE_SIZE_4K)?;
    let known_type = matches!(
        page.data_type,
        IgvmPageDataType::NORMAL
            | IgvmPageDataType::SECRETS
            | IgvmPageDataType::CPUID_DATA
            | IgvmPageDataType::CPUID_XF
    );
    if !known_type {
        return Err(invalid(
            href,
            format!("page data type {:#x} is unknown", page.data_type.0),
        ));
    }
    if page.reserved != 0 {
        return Err(invalid(href, "the reserved field is not zero"));
    }
    if page.file_offset != 0 {
        let size = if page.flags.is_2mb_page() {
            PAGE_SIZE_2M
        } else {
            PAGE_SIZE_4K
        };
        file_range(raw, href, page.file_offset, size)?;
    }
    Ok(())
}

/// Returns the state of a declared, not yet inserted parameter area.
fn usable_area(
    areas: &mut HashMap<u32, AreaState>,
    header: HeaderRef,
    area_index: u32,
) -> Result<&mut AreaState, LoadError> {
    let state = areas
        .get_mut(&area_index)
        .ok_or(LoadError::ParameterAreaUndeclared { header, area_index })?;
    if let Some(insert) = state.inserted_by {
        return Err(LoadError::ParameterAreaAlreadyInserted {
            header,
            area_index,
            insert,
        });
    }
    Ok(state)
}

/// Checks a VP context against the platform its mask names, as igvm reads it.
fn check_vp_context(
    raw: &RawFile<'_>,
    arch: Arch,
    platforms: &[RawPlatform],
    header: &RawHeader<'_>,
) -> Result<(), LoadError> {
    let href = header.header;
    let context: IGVM_VHS_VP_CONTEXT = decode(header)?;
    let mask = context.compatibility_mask;
    let platform = platforms
        .iter()
        .find(|p| p.info.compatibility_mask == mask)
        .ok_or_else(|| {
            invalid(
                href,
                format!("compatibility mask {mask:#x} does not name exactly one platform"),
            )
        })?;

    match platform.info.platform_type {
        IgvmPlatformType::VSM_ISOLATION => {
            check_vbs_context(raw, arch, href, &context)?;
        }
        IgvmPlatformType::SEV_SNP | IgvmPlatformType::SEV_ES => {
            check_aligned(href, "VMSA GPA", context.gpa.get(), PAGE_SIZE_4K)?;
            file_range(raw, href, context.file_offset, PAGE_SIZE_4K)?;
        }
        IgvmPlatformType::NATIVE | IgvmPlatformType::SEV => {
            let page = file_range(raw, href, context.file_offset, PAGE_SIZE_4K)?;
            check_zero_tail(href, page, size_of::<IgvmNativeVpContextX64>())?;
        }
        IgvmPlatformType::CCA => {
            let page = file_range(raw, href, context.file_offset, PAGE_SIZE_4K)?;
            check_zero_tail(href, page, size_of::<IgvmVpContextAArch64Cca>())?;
        }
        other => {
            return Err(invalid(
                href,
                format!("platform {} has no VP context", platform_type_name(other)),
            ));
        }
    }
    Ok(())
}

/// Checks that the 4 KiB of context data hold nothing after the context structure.
fn check_zero_tail(header: HeaderRef, page: &[u8], used: usize) -> Result<(), LoadError> {
    let tail = page.get(used..).unwrap_or_default();
    match tail.iter().position(|byte| *byte != 0) {
        None => Ok(()),
        Some(position) => Err(invalid(
            header,
            format!(
                "its context data has a non-zero byte at offset {:#x}, after the context",
                used + position
            ),
        )),
    }
}

/// Checks a VBS VP context as igvm reads it: a register count, then that many registers of one
/// VTL that the crate can name, for VP 0.
fn check_vbs_context(
    raw: &RawFile<'_>,
    arch: Arch,
    header: HeaderRef,
    context: &IGVM_VHS_VP_CONTEXT,
) -> Result<(), LoadError> {
    let invalid_context = |reason: String| LoadError::InvalidVbsContext { header, reason };
    if context.vp_index != 0 {
        return Err(invalid_context(format!(
            "vp_index is {}; igvm 0.5 reads VBS contexts for VP 0 only",
            context.vp_index
        )));
    }
    let count_size = size_of::<VbsVpContextHeader>() as u64;
    let count_bytes = file_range(raw, header, context.file_offset, count_size)?;
    let register_count = VbsVpContextHeader::read_from_prefix(count_bytes)
        .map(|(value, _)| value.register_count)
        .map_err(|_| invalid_context("register count is truncated".to_string()))?;
    let list_size = u64::from(register_count) * size_of::<VbsVpContextRegister>() as u64;
    let bytes = file_range(raw, header, context.file_offset, count_size + list_size)?;
    let registers = bytes
        .get(size_of::<VbsVpContextHeader>()..)
        .unwrap_or_default();

    let mut vtl = None;
    for chunk in registers.chunks_exact(size_of::<VbsVpContextRegister>()) {
        let register = VbsVpContextRegister::read_from_bytes(chunk)
            .map_err(|_| invalid_context("register is truncated".to_string()))?;
        match vtl {
            None if register.vtl > 2 => {
                return Err(invalid_context(format!(
                    "VTL {} is not 0, 1 or 2",
                    register.vtl
                )));
            }
            None => vtl = Some(register.vtl),
            Some(first) if first != register.vtl => {
                return Err(invalid_context(format!(
                    "registers name both VTL {first} and VTL {}",
                    register.vtl
                )));
            }
            Some(_) => {}
        }
        let supported = match arch {
            Arch::X64 => X86Register::try_from(register).is_ok(),
            Arch::AArch64 => AArch64Register::try_from(register).is_ok(),
        };
        if !supported {
            return Err(invalid_context(format!(
                "register {:#x} is not one igvm 0.5 supports",
                register.register_name.get()
            )));
        }
    }
    match vtl {
        Some(_) => Ok(()),
        None => Err(invalid_context("the context has no registers".to_string())),
    }
}
