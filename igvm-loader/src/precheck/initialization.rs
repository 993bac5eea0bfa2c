//! Initialization headers: igvm 0.5's `IgvmInitializationHeader::validate`, its parse checks
//! and `validate_initialization_headers`. The relocation headers, which the loader decodes
//! itself, get the same checks without the crate's rule that a VBS VP context must go with
//! them.

use std::collections::HashMap;

use igvm::hv_defs::Vtl;
use igvm::Arch;
use igvm_defs::{
    IgvmPlatformType, IgvmVariableHeaderType as Vht, IGVM_VHS_CCA_POLICY, IGVM_VHS_CORIM_DATA,
    IGVM_VHS_GUEST_POLICY, IGVM_VHS_PAGE_TABLE_RELOCATION, IGVM_VHS_RELOCATABLE_REGION,
};

use super::{check_aligned, decode, file_range, invalid, mask_bits, RawPlatform};
use crate::error::LoadError;
use crate::headers::Section;
use crate::plan::{HeaderRef, PAGE_SIZE_4K};
use crate::raw::{RawFile, RawHeader};

/// A page table relocation region, which no ParameterInsert may target.
#[derive(Debug, Clone, Copy)]
pub(super) struct PageTableRegion {
    pub header: HeaderRef,
    pub mask: u32,
    pub gpa: u64,
    pub size: u64,
}

/// Relocation facts that the directive checks need.
#[derive(Debug, Default)]
pub(super) struct RelocationClaims {
    pub page_table_regions: Vec<PageTableRegion>,
}

/// Relocation and page table regions seen so far, per mask bit, for the overlap rule.
#[derive(Default)]
struct RegionMap {
    regions: Vec<(u32, u64, u64, HeaderRef)>,
}

impl RegionMap {
    /// Records `[gpa, gpa + size)` for every bit of `mask`, failing if it overlaps a region
    /// recorded for the same bit.
    fn insert(
        &mut self,
        header: HeaderRef,
        mask: u32,
        gpa: u64,
        size: u64,
    ) -> Result<(), LoadError> {
        let end = gpa.saturating_add(size);
        for bit in mask_bits(mask) {
            let clash = self
                .regions
                .iter()
                .find(|(b, start, other_end, _)| *b == bit && gpa < *other_end && *start < end);
            if let Some((_, _, _, first)) = clash {
                return Err(invalid(header, format!("its region overlaps {first}")));
            }
            self.regions.push((bit, gpa, end, header));
        }
        Ok(())
    }
}

fn check_vtl(header: HeaderRef, vtl: u8) -> Result<(), LoadError> {
    Vtl::try_from(vtl)
        .map(|_| ())
        .map_err(|_| invalid(header, format!("VTL {vtl} is not 0, 1 or 2")))
}

pub(super) fn check(
    raw: &RawFile<'_>,
    arch: Arch,
    platforms: &[RawPlatform],
) -> Result<RelocationClaims, LoadError> {
    let mut claims = RelocationClaims::default();
    let mut regions = RegionMap::default();
    let mut page_table_masks = 0u32;
    let mut corim_documents: HashMap<u32, HeaderRef> = HashMap::new();
    let mut corim_signatures: HashMap<u32, HeaderRef> = HashMap::new();

    // The relocation headers never reach the crate, so the loader checks them all here.
    for header in raw.read(Section::Initialization) {
        let href = header.header;
        match Vht(href.header_type) {
            Vht::IGVM_VHT_GUEST_POLICY => {
                let policy: IGVM_VHS_GUEST_POLICY = decode(header)?;
                if policy.reserved != 0 {
                    return Err(invalid(href, "the reserved field is not zero"));
                }
            }
            Vht::IGVM_VHT_CCA_POLICY => check_cca_policy(header, arch, platforms)?,
            Vht::IGVM_VHT_RELOCATABLE_REGION => {
                let region: IGVM_VHS_RELOCATABLE_REGION = decode(header)?;
                check_relocatable_region(href, &region)?;
                regions.insert(
                    href,
                    region.compatibility_mask,
                    region.relocation_region_gpa,
                    region.relocation_region_size,
                )?;
            }
            Vht::IGVM_VHT_PAGE_TABLE_RELOCATION_REGION => {
                let region: IGVM_VHS_PAGE_TABLE_RELOCATION = decode(header)?;
                check_page_table_region(href, &region)?;
                if region.compatibility_mask & page_table_masks != 0 {
                    return Err(invalid(
                        href,
                        "a platform already has a page table relocation region",
                    ));
                }
                page_table_masks |= region.compatibility_mask;
                regions.insert(href, region.compatibility_mask, region.gpa, region.size)?;
                claims.page_table_regions.push(PageTableRegion {
                    header: href,
                    mask: region.compatibility_mask,
                    gpa: region.gpa,
                    size: region.size,
                });
            }
            Vht::IGVM_VHT_CORIM_DOCUMENT => {
                let data: IGVM_VHS_CORIM_DATA = decode(header)?;
                check_corim_payload(raw, header, &data)?;
                for bit in mask_bits(data.compatibility_mask) {
                    if let Some(first) = corim_documents.insert(bit, href) {
                        return Err(invalid_corim(
                            header,
                            format!("{first} already carries the document for mask {bit:#x}"),
                        ));
                    }
                }
            }
            Vht::IGVM_VHT_CORIM_SIGNATURE => {
                let data: IGVM_VHS_CORIM_DATA = decode(header)?;
                check_corim_payload(raw, header, &data)?;
                for bit in mask_bits(data.compatibility_mask) {
                    if !corim_documents.contains_key(&bit) {
                        return Err(invalid_corim(
                            header,
                            format!("no earlier CoRIM document for mask {bit:#x}"),
                        ));
                    }
                    if let Some(first) = corim_signatures.insert(bit, href) {
                        return Err(invalid_corim(
                            header,
                            format!("{first} already carries the signature for mask {bit:#x}"),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(claims)
}

fn check_cca_policy(
    header: &RawHeader<'_>,
    arch: Arch,
    platforms: &[RawPlatform],
) -> Result<(), LoadError> {
    let href = header.header;
    let policy: IGVM_VHS_CCA_POLICY = decode(header)?;
    if arch != Arch::AArch64 {
        return Err(invalid(href, "a CCA policy needs an AArch64 file"));
    }
    if policy.reserved != 0 || policy.reserved2 != [0; 6] {
        return Err(invalid(href, "a reserved field is not zero"));
    }
    if policy.attributes_required_zeroes & policy.attributes_required_ones != 0 {
        return Err(invalid(href, "an attribute is required both zero and one"));
    }
    for bit in mask_bits(policy.compatibility_mask) {
        let is_cca = platforms.iter().any(|p| {
            p.info.compatibility_mask == bit && p.info.platform_type == IgvmPlatformType::CCA
        });
        if !is_cca {
            return Err(invalid(
                href,
                format!("mask {bit:#x} is not a CCA platform"),
            ));
        }
    }
    Ok(())
}

fn check_relocatable_region(
    href: HeaderRef,
    region: &IGVM_VHS_RELOCATABLE_REGION,
) -> Result<(), LoadError> {
    let alignment = region.relocation_alignment;
    if alignment == 0 {
        return Err(invalid_relocation(href, "relocation alignment is zero"));
    }
    if region.relocation_region_size == 0 {
        return Err(invalid_relocation(href, "region size is zero"));
    }
    if region
        .relocation_region_gpa
        .checked_add(region.relocation_region_size)
        .is_none()
    {
        return Err(invalid_relocation(href, "region end overflows 64 bits"));
    }
    check_aligned(
        href,
        "region size",
        region.relocation_region_size,
        PAGE_SIZE_4K,
    )?;
    check_aligned(href, "relocation alignment", alignment, PAGE_SIZE_4K)?;
    check_aligned(href, "region base", region.relocation_region_gpa, alignment)?;
    check_aligned(
        href,
        "minimum base",
        region.minimum_relocation_gpa,
        alignment,
    )?;
    check_aligned(
        href,
        "maximum address",
        region.maximum_relocation_gpa,
        alignment,
    )?;
    // The region must end at or below the maximum, as igvm 0.5's `relocation_base_valid` reads
    // it. Both limits are aligned, so the minimum is a valid base whenever any base is.
    let fits = region
        .minimum_relocation_gpa
        .checked_add(region.relocation_region_size)
        .is_some_and(|end| end <= region.maximum_relocation_gpa);
    if !fits {
        return Err(LoadError::InvalidRelocationHeader {
            header: href,
            reason: format!(
                "no base between the minimum {:#x} and the maximum address {:#x} fits the \
                 {:#x}-byte region",
                region.minimum_relocation_gpa,
                region.maximum_relocation_gpa,
                region.relocation_region_size
            ),
        });
    }
    check_vtl(href, region.vtl)
}

fn check_page_table_region(
    href: HeaderRef,
    region: &IGVM_VHS_PAGE_TABLE_RELOCATION,
) -> Result<(), LoadError> {
    if region.size == 0 {
        return Err(invalid_relocation(href, "region size is zero"));
    }
    if region.gpa.checked_add(region.size).is_none() {
        return Err(invalid_relocation(href, "region end overflows 64 bits"));
    }
    if region.used_size > region.size {
        return Err(invalid_relocation(href, "used size exceeds region size"));
    }
    check_aligned(href, "region base", region.gpa, PAGE_SIZE_4K)?;
    check_aligned(href, "region size", region.size, PAGE_SIZE_4K)?;
    check_aligned(href, "used size", region.used_size, PAGE_SIZE_4K)?;
    if region.reserved != 0 {
        return Err(invalid(href, "the reserved field is not zero"));
    }
    check_vtl(href, region.vtl)
}

fn check_corim_payload(
    raw: &RawFile<'_>,
    header: &RawHeader<'_>,
    data: &IGVM_VHS_CORIM_DATA,
) -> Result<(), LoadError> {
    if data.reserved != 0 {
        return Err(invalid_corim(
            header,
            "the reserved field is not zero".to_string(),
        ));
    }
    if data.file_offset == 0 || data.size_bytes == 0 {
        return Err(invalid_corim(header, "the payload is empty".to_string()));
    }
    file_range(
        raw,
        header.header,
        data.file_offset,
        u64::from(data.size_bytes),
    )
    .map(|_| ())
}

fn invalid_relocation(header: HeaderRef, reason: &str) -> LoadError {
    LoadError::InvalidRelocationHeader {
        header,
        reason: reason.to_string(),
    }
}

fn invalid_corim(header: &RawHeader<'_>, reason: String) -> LoadError {
    LoadError::InvalidCorim {
        header: header.header,
        reason,
    }
}
