//! Turning a parsed file into the [`Plan`] for one platform.
//!
//! The directives of the chosen platform become launch operations in file order. Parameter
//! areas are filled from the host description when they are inserted. Initialization headers
//! give the guest policy and the CoRIM, which stays host-only. Everything is validated before
//! the plan is returned, so a backend never starts a guest from a plan that would fail halfway.

use std::borrow::Cow;
use std::collections::HashMap;

use igvm::{IgvmDirectiveHeader, IgvmInitializationHeader};
use igvm_defs::{IgvmPageDataFlags, IgvmPageDataType};
use log::{debug, info};

use crate::error::LoadError;
use crate::host::{HostDescription, PlatformChoice};
use crate::params::{ParameterKind, ParameterSource};
use crate::parse::{parse, ParsedFile};
use crate::plan::{
    GpaRange, HeaderRef, HostOnlyData, LaunchOp, PageData, PageKind, Plan, Platform, SnpIdBlock,
    VpContext, VpState, PAGE_SIZE_2M, PAGE_SIZE_4K,
};
use crate::platform::{self, PlatformHeader};
use crate::relocate::Relocation;
use crate::snp_id_block;
use crate::validate::{self, MemoryLayout};

/// Largest parameter area the loader fills.
///
/// NOTE: This is igvmm's limit, not the format's, which sets none. The loader builds every page
/// of an area in memory, and the parameters it writes (device tree, memory map, ACPI tables)
/// take well under 1 MiB, so a larger area would only add zero pages.
pub const MAX_PARAMETER_AREA_SIZE: u64 = 64 << 20;

/// Caller decisions for one launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Platform selection.
    pub choice: PlatformChoice,
    /// The machine the guest runs on; parameters are filled from it.
    pub host: HostDescription,
    /// Requested base of the file's first relocatable region. It is used when the region's
    /// alignment and limits allow it and the region then lies in RAM. Otherwise a warning is
    /// logged and the loader picks the base as for `None`: the file's base when it meets the
    /// same conditions, else the lowest free base within the limits. Files without relocatable
    /// regions ignore it.
    pub relocation_base: Option<u64>,
}

/// Parses an IGVM file and builds the plan for the platform `options` selects. The plan borrows
/// its page data from `file`.
pub fn load<'f>(file: &'f [u8], options: &LoadOptions) -> Result<Plan<'f>, LoadError> {
    let parsed = parse(file)?;
    load_parsed(&parsed, options)
}

/// Builds the plan for the platform `options` selects from an already parsed file. The plan
/// borrows its page data from the file's bytes, not from `parsed`.
pub fn load_parsed<'f>(
    parsed: &ParsedFile<'f>,
    options: &LoadOptions,
) -> Result<Plan<'f>, LoadError> {
    let layout = MemoryLayout::from_host(&options.host)?;
    let platforms = parsed.platforms();
    let (chosen, platform) = platform::choose(&platforms, &options.choice)?;
    if platform == Platform::Vbs {
        return Err(LoadError::PlatformNotLaunchable { platform });
    }
    check_masks(parsed, &platforms)?;
    let mask = chosen.compatibility_mask;
    info!("loading the IGVM file for {platform} (compatibility mask {mask:#x})");

    let init = InitializationData::collect(parsed, mask, platform)?;
    let relocation = Relocation::prepare(parsed, mask, options.relocation_base, &layout)?;

    let mut builder = PlanBuilder {
        platform,
        mask,
        layout: &layout,
        host: &options.host,
        relocation,
        parameters: ParameterSource::new(&options.host),
        ops: Vec::new(),
        imported_bytes: 0,
        moved_by: Vec::new(),
        areas: HashMap::new(),
        vp_contexts: Vec::new(),
        contexts_after_tables: Vec::new(),
        required_memory: Vec::new(),
        error_ranges: Vec::new(),
        id_block: None,
    };
    for (position, (header, directive)) in parsed.directives().enumerate() {
        builder.directive(parsed, position, header, directive)?;
    }
    builder.finish(chosen, init)
}

/// Checks that every compatibility mask names at least one declared platform.
fn check_masks(parsed: &ParsedFile, platforms: &[PlatformHeader]) -> Result<(), LoadError> {
    let declared = platforms
        .iter()
        .fold(0u32, |all, p| all | p.compatibility_mask);
    let initialization_masks = parsed
        .initializations()
        .map(|(header, init)| (header, Some(initialization_mask(init))));
    let directive_masks = parsed
        .directives()
        .map(|(header, directive)| (header, directive.compatibility_mask()));
    for (header, mask) in initialization_masks.chain(directive_masks) {
        if let Some(mask) = mask {
            if mask & declared == 0 {
                return Err(LoadError::MaskMatchesNoPlatform { header, mask });
            }
        }
    }
    Ok(())
}

/// Returns the compatibility mask of an initialization header.
fn initialization_mask(header: &IgvmInitializationHeader) -> u32 {
    match header {
        IgvmInitializationHeader::GuestPolicy {
            compatibility_mask, ..
        }
        | IgvmInitializationHeader::CcaPolicy {
            compatibility_mask, ..
        }
        | IgvmInitializationHeader::RelocatableRegion {
            compatibility_mask, ..
        }
        | IgvmInitializationHeader::PageTableRelocationRegion {
            compatibility_mask, ..
        }
        | IgvmInitializationHeader::CorimDocument {
            compatibility_mask, ..
        }
        | IgvmInitializationHeader::CorimSignature {
            compatibility_mask, ..
        } => *compatibility_mask,
    }
}

/// The initialization headers that apply to the chosen platform.
struct InitializationData {
    guest_policy: Option<u64>,
    host_only: HostOnlyData,
}

impl InitializationData {
    fn collect(parsed: &ParsedFile, mask: u32, platform: Platform) -> Result<Self, LoadError> {
        let mut policy: Option<(HeaderRef, u64)> = None;
        let mut host_only = HostOnlyData::default();
        for (header, init) in parsed.initializations() {
            if initialization_mask(init) & mask == 0 {
                continue;
            }
            match init {
                IgvmInitializationHeader::GuestPolicy { policy: value, .. } => {
                    if let Some((first, _)) = policy {
                        return Err(LoadError::DuplicateHeader { header, first });
                    }
                    policy = Some((header, *value));
                }
                IgvmInitializationHeader::CorimDocument { document, .. } => {
                    host_only.corim_document = Some(document.clone());
                }
                IgvmInitializationHeader::CorimSignature { signature, .. } => {
                    host_only.corim_signature = Some(signature.clone());
                }
                IgvmInitializationHeader::CcaPolicy { .. } => {
                    return Err(LoadError::UnsupportedHeader {
                        header,
                        platform,
                        reason: "a CCA policy applies to Arm CCA only".to_string(),
                    });
                }
                // Relocation headers are read by `Relocation::prepare`.
                IgvmInitializationHeader::RelocatableRegion { .. }
                | IgvmInitializationHeader::PageTableRelocationRegion { .. } => {}
            }
        }
        Ok(Self {
            guest_policy: policy.map(|(_, value)| value),
            host_only,
        })
    }
}

/// A declared parameter area and the parameters written into it so far.
struct Area {
    size: u64,
    initial_data: Vec<u8>,
    parameters: Vec<(HeaderRef, ParameterKind, u32)>,
}

/// Collects the plan while the directives are walked in file order. `'f` is the lifetime of the
/// file's bytes.
struct PlanBuilder<'a, 'f> {
    platform: Platform,
    mask: u32,
    layout: &'a MemoryLayout,
    host: &'a HostDescription,
    relocation: Relocation,
    parameters: ParameterSource<'a>,
    ops: Vec<LaunchOp<'f>>,
    /// Sum of the operation sizes.
    imported_bytes: u64,
    /// For each operation, the relocatable region that moved it.
    moved_by: Vec<Option<HeaderRef>>,
    areas: HashMap<u32, Area>,
    vp_contexts: Vec<VpContext>,
    /// For each VP context, whether it came after the first page table page.
    contexts_after_tables: Vec<bool>,
    required_memory: Vec<GpaRange>,
    error_ranges: Vec<GpaRange>,
    id_block: Option<(HeaderRef, IgvmDirectiveHeader)>,
}

impl<'f> PlanBuilder<'_, 'f> {
    fn applies(&self, directive: &IgvmDirectiveHeader) -> bool {
        directive
            .compatibility_mask()
            .is_none_or(|mask| mask & self.mask != 0)
    }

    fn unsupported(&self, header: HeaderRef, reason: &str) -> LoadError {
        LoadError::UnsupportedHeader {
            header,
            platform: self.platform,
            reason: reason.to_string(),
        }
    }

    fn directive(
        &mut self,
        parsed: &ParsedFile<'f>,
        position: usize,
        header: HeaderRef,
        directive: &IgvmDirectiveHeader,
    ) -> Result<(), LoadError> {
        // Parameter areas and parameters carry no mask: every platform may insert them.
        if let Some((kind, parameter)) = ParameterKind::of_directive(directive) {
            let area_index = parameter.parameter_area_index;
            let area = self
                .areas
                .get_mut(&area_index)
                .ok_or(LoadError::ParameterAreaUndeclared { header, area_index })?;
            area.parameters.push((header, kind, parameter.byte_offset));
            return Ok(());
        }
        if let IgvmDirectiveHeader::ParameterArea {
            number_of_bytes,
            parameter_area_index,
            initial_data,
        } = directive
        {
            if *number_of_bytes > self.layout.ram_bytes().min(MAX_PARAMETER_AREA_SIZE) {
                return Err(LoadError::ParameterAreaTooLarge {
                    header,
                    size: *number_of_bytes,
                });
            }
            let area = Area {
                size: *number_of_bytes,
                initial_data: initial_data.clone(),
                parameters: Vec::new(),
            };
            self.areas.insert(*parameter_area_index, area);
            return Ok(());
        }
        if !self.applies(directive) {
            return Ok(());
        }

        match directive {
            IgvmDirectiveHeader::PageData {
                gpa,
                flags,
                data_type,
                ..
            } => self.page_data(header, *gpa, *flags, *data_type, parsed.page_data(position)),
            IgvmDirectiveHeader::ParameterInsert(insert) => {
                self.insert_area(header, insert.parameter_area_index, insert.gpa)
            }
            IgvmDirectiveHeader::RequiredMemory {
                gpa,
                number_of_bytes,
                ..
            } => {
                let range = self.moved_range(*gpa, u64::from(*number_of_bytes));
                self.layout.check_range(header, range)?;
                self.required_memory.push(range);
                Ok(())
            }
            IgvmDirectiveHeader::ErrorRange {
                gpa, size_bytes, ..
            } => {
                let range = self.moved_range(*gpa, u64::from(*size_bytes));
                self.layout.check_range(header, range)?;
                self.error_ranges.push(range);
                Ok(())
            }
            IgvmDirectiveHeader::SnpVpContext {
                gpa,
                vp_index,
                vmsa,
                ..
            } => {
                if self.platform != Platform::SevSnp {
                    return Err(self.unsupported(header, "an SNP VMSA needs SEV-SNP"));
                }
                let (gpa, _) = self.relocation.map(*gpa);
                let state = VpState::Snp {
                    gpa,
                    vmsa: vmsa.clone(),
                };
                self.push_context(header, *vp_index, state);
                Ok(())
            }
            IgvmDirectiveHeader::X64NativeVpContext {
                vp_index, context, ..
            } => {
                if self.platform != Platform::Native {
                    return Err(self.unsupported(header, "a native VP context needs native"));
                }
                self.push_context(header, *vp_index, VpState::Native(context.clone()));
                Ok(())
            }
            IgvmDirectiveHeader::SnpIdBlock { .. } => {
                if self.platform != Platform::SevSnp {
                    return Err(self.unsupported(header, "an SNP ID block needs SEV-SNP"));
                }
                if let Some((first, _)) = &self.id_block {
                    return Err(LoadError::DuplicateHeader {
                        header,
                        first: *first,
                    });
                }
                self.id_block = Some((header, directive.clone()));
                Ok(())
            }
            IgvmDirectiveHeader::X64VbsVpContext { .. }
            | IgvmDirectiveHeader::AArch64VbsVpContext { .. } => {
                Err(self.unsupported(header, "VBS VP contexts are parsed but not launched"))
            }
            IgvmDirectiveHeader::AArch64CcaVpContext { .. } => {
                Err(self.unsupported(header, "Arm CCA VP contexts are not launched"))
            }
            IgvmDirectiveHeader::VbsMeasurement { .. } => {
                Err(self.unsupported(header, "VBS measurements are parsed but not launched"))
            }
            // Handled above, before the mask check.
            IgvmDirectiveHeader::ParameterArea { .. }
            | IgvmDirectiveHeader::VpCount(_)
            | IgvmDirectiveHeader::EnvironmentInfo(_)
            | IgvmDirectiveHeader::Srat(_)
            | IgvmDirectiveHeader::Madt(_)
            | IgvmDirectiveHeader::Slit(_)
            | IgvmDirectiveHeader::Pptt(_)
            | IgvmDirectiveHeader::MmioRanges(_)
            | IgvmDirectiveHeader::MemoryMap(_)
            | IgvmDirectiveHeader::CommandLine(_)
            | IgvmDirectiveHeader::DeviceTree(_) => Ok(()),
        }
    }

    fn push_op(&mut self, op: LaunchOp<'f>, moved_by: Option<HeaderRef>) {
        self.imported_bytes = self.imported_bytes.saturating_add(op.size);
        self.ops.push(op);
        self.moved_by.push(moved_by);
    }

    fn moved_range(&self, gpa: u64, size: u64) -> GpaRange {
        let (start, _) = self.relocation.map(gpa);
        GpaRange { start, size }
    }

    fn push_context(&mut self, header: HeaderRef, vp_index: u16, state: VpState) {
        self.vp_contexts.push(VpContext {
            vp_index,
            state,
            ops_before: self.ops.len(),
            source: header,
        });
        self.contexts_after_tables
            .push(self.relocation.page_tables_started());
    }

    fn page_kind(
        &self,
        header: HeaderRef,
        flags: IgvmPageDataFlags,
        data_type: IgvmPageDataType,
    ) -> Result<PageKind, LoadError> {
        let special = match data_type {
            IgvmPageDataType::NORMAL => {
                return Ok(if flags.shared() {
                    PageKind::Shared
                } else if flags.unmeasured() {
                    PageKind::Unmeasured
                } else {
                    PageKind::Normal
                });
            }
            IgvmPageDataType::SECRETS => (PageKind::Secrets, "SECRETS"),
            IgvmPageDataType::CPUID_DATA => (PageKind::Cpuid, "CPUID_DATA"),
            IgvmPageDataType::CPUID_XF => (PageKind::CpuidXf, "CPUID_XF"),
            _ => return Err(self.unsupported(header, "the page data type is unknown")),
        };
        match special {
            (kind, _) if self.platform == Platform::SevSnp => Ok(kind),
            (_, name) => Err(LoadError::PageTypeNotSupported {
                header,
                data_type: name,
                platform: self.platform,
            }),
        }
    }

    fn page_data(
        &mut self,
        header: HeaderRef,
        file_gpa: u64,
        flags: IgvmPageDataFlags,
        data_type: IgvmPageDataType,
        data: &'f [u8],
    ) -> Result<(), LoadError> {
        let size = if flags.is_2mb_page() {
            PAGE_SIZE_2M
        } else {
            PAGE_SIZE_4K
        };
        if data.len() as u64 > size {
            return Err(LoadError::PageDataTooLarge {
                header,
                size: data.len() as u64,
                page_size: size,
            });
        }
        let kind = self.page_kind(header, flags, data_type)?;
        if size == PAGE_SIZE_2M
            && !matches!(
                kind,
                PageKind::Normal | PageKind::Unmeasured | PageKind::Shared
            )
        {
            return Err(self.unsupported(header, "SECRETS and CPUID pages must be 4 KiB"));
        }

        let (gpa, moved_by) = self.relocation.map(file_gpa);
        for checked_gpa in [file_gpa, gpa] {
            if checked_gpa % size != 0 {
                return Err(LoadError::MisalignedLargePage {
                    header,
                    gpa: checked_gpa,
                });
            }
        }

        // Page tables never lie in a relocatable region. A moved page that lands in the page
        // table region stays an import, so the overlap check reports it.
        if moved_by.is_none() && self.relocation.is_page_table_page(gpa) {
            let next_op = self.ops.len();
            return self
                .relocation
                .collect_page_table_page(header, gpa, size, data, kind, next_op);
        }

        let data = if data.is_empty() {
            PageData::Zero
        } else {
            PageData::Bytes(Cow::Borrowed(data))
        };
        self.push_op(
            LaunchOp {
                gpa,
                size,
                kind,
                data,
                source: header,
            },
            moved_by,
        );
        Ok(())
    }

    /// Fills a parameter area from the host description and imports it at `file_gpa`.
    fn insert_area(
        &mut self,
        header: HeaderRef,
        area_index: u32,
        file_gpa: u64,
    ) -> Result<(), LoadError> {
        let area = self
            .areas
            .remove(&area_index)
            .ok_or(LoadError::ParameterAreaUndeclared { header, area_index })?;
        let (gpa, moved_by) = self.relocation.map(file_gpa);
        // Check the destination before allocating the area. Imports that do not overlap and lie
        // in RAM cannot add up to more than RAM, so many large areas fail here too.
        self.layout.check_import(header, gpa, area.size)?;
        let ram = self.layout.ram_bytes();
        let imported = self.imported_bytes.saturating_add(area.size);
        if imported > ram {
            return Err(LoadError::ImportsExceedRam {
                header,
                imported,
                ram,
            });
        }

        let area_size =
            usize::try_from(area.size).map_err(|_| LoadError::ParameterAreaTooLarge {
                header,
                size: area.size,
            })?;
        let mut bytes = area.initial_data;
        bytes.resize(area_size, 0);
        for (parameter_header, kind, offset) in area.parameters {
            let value = self.parameters.bytes(kind, parameter_header)?;
            let start = offset as usize;
            let slot = start
                .checked_add(value.len())
                .and_then(|end| bytes.get_mut(start..end))
                .ok_or(LoadError::ParameterDoesNotFit {
                    header: parameter_header,
                    area_index,
                    offset,
                    needed: value.len() as u64,
                    area_size: area.size,
                })?;
            slot.copy_from_slice(&value);
        }

        for (page, chunk) in bytes.chunks(PAGE_SIZE_4K as usize).enumerate() {
            self.push_op(
                LaunchOp {
                    gpa: gpa + page as u64 * PAGE_SIZE_4K,
                    size: PAGE_SIZE_4K,
                    kind: PageKind::Parameter { area_index },
                    data: PageData::Bytes(Cow::Owned(chunk.to_vec())),
                    source: header,
                },
                moved_by,
            );
        }
        Ok(())
    }

    fn finish(
        mut self,
        chosen: &PlatformHeader,
        init: InitializationData,
    ) -> Result<Plan<'f>, LoadError> {
        self.relocation.finish(
            &mut self.ops,
            &mut self.moved_by,
            &mut self.vp_contexts,
            &self.contexts_after_tables,
        )?;

        for op in &self.ops {
            self.layout.check_import(op.source, op.gpa, op.size)?;
        }
        validate::check_overlaps(&self.ops, &self.moved_by)?;
        validate::check_vp_contexts(&self.vp_contexts, self.host.vp_count)?;

        let snp_id_block: Option<SnpIdBlock> = match &self.id_block {
            Some((header, directive)) => {
                let policy = init
                    .guest_policy
                    .ok_or(LoadError::IdBlockWithoutPolicy { header: *header })?;
                snp_id_block::from_directive(directive, policy)
            }
            None => None,
        };

        debug!(
            "plan for {}: {} operations, {} VP contexts",
            self.platform,
            self.ops.len(),
            self.vp_contexts.len()
        );
        Ok(Plan {
            platform: self.platform,
            compatibility_mask: chosen.compatibility_mask,
            shared_gpa_boundary: chosen.shared_gpa_boundary,
            operations: self.ops,
            vp_contexts: self.vp_contexts,
            guest_policy: init.guest_policy,
            snp_id_block,
            required_memory: self.required_memory,
            error_ranges: self.error_ranges,
            host_only: init.host_only,
        })
    }
}
