//! A summary of what an IGVM file contains, for `igvmm inspect`.
//!
//! The summary covers every platform of the file, including those igvmm cannot launch (VBS,
//! SEV, SEV-ES, CCA).

use std::collections::BTreeMap;
use std::fmt;

use igvm::registers::X86Register;
use igvm::{IgvmDirectiveHeader, IgvmInitializationHeader};
use sha2::{Digest, Sha256};

use crate::error::LoadError;
use crate::headers::header_type_name;
use crate::params::ParameterKind;
use crate::parse::{parse, ParsedFile};
use crate::plan::{HeaderRef, PAGE_SIZE_2M, PAGE_SIZE_4K};
use crate::platform::{platform_type_name, PlatformHeader};

/// CR0.PE: protected mode.
const CR0_PE: u64 = 1 << 0;
/// CR0.PG: paging.
const CR0_PG: u64 = 1 << 31;
/// EFER.LME: long mode enable.
const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
const EFER_LMA: u64 = 1 << 10;
/// CS.L in the segment attribute layout of IGVM native contexts and Hyper-V registers.
const ATTRIBUTES_LONG: u16 = 1 << 13;
/// CS.L in the compressed attribute layout of the SNP VMSA.
const VMSA_ATTRIBUTES_LONG: u16 = 1 << 9;

/// The processor mode a VP context starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// CR0.PE clear.
    Real,
    /// Protected mode without long mode.
    Protected,
    /// Long mode with a 32-bit code segment.
    Compatibility,
    /// 64-bit mode.
    Long,
    /// The context does not give CR0.
    Unknown,
}

impl CpuMode {
    fn from_registers(cr0: Option<u64>, efer: u64, cs_long: bool) -> Self {
        let Some(cr0) = cr0 else {
            return CpuMode::Unknown;
        };
        let long_mode = efer & EFER_LMA != 0 || (efer & EFER_LME != 0 && cr0 & CR0_PG != 0);
        if cr0 & CR0_PE == 0 {
            CpuMode::Real
        } else if long_mode && cs_long {
            CpuMode::Long
        } else if long_mode {
            CpuMode::Compatibility
        } else {
            CpuMode::Protected
        }
    }

    /// Returns the name printed by `inspect`.
    pub fn name(self) -> &'static str {
        match self {
            CpuMode::Real => "real",
            CpuMode::Protected => "protected",
            CpuMode::Compatibility => "compatibility",
            CpuMode::Long => "long",
            CpuMode::Unknown => "unknown",
        }
    }
}

/// One SupportedPlatform header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSummary {
    /// Position in the file.
    pub header: HeaderRef,
    /// Platform type name, such as "sev-snp" or "vsm-isolation".
    pub platform_type: &'static str,
    /// Compatibility mask bit.
    pub compatibility_mask: u32,
    /// Shared GPA boundary, or 0.
    pub shared_gpa_boundary: u64,
    /// Highest VTL.
    pub highest_vtl: u8,
}

/// One parameter area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterAreaSummary {
    /// The ParameterArea header.
    pub header: HeaderRef,
    /// Parameter area index.
    pub area_index: u32,
    /// Size in bytes.
    pub size: u64,
    /// Parameters written into the area, with their byte offsets.
    pub parameters: Vec<(ParameterKind, u32)>,
    /// GPA and compatibility mask of each ParameterInsert of the area.
    pub inserts: Vec<(u64, u32)>,
}

/// One VP context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpContextSummary {
    /// The VpContext header.
    pub header: HeaderRef,
    /// Context format: "native", "sev-snp", "vbs", "vbs-aarch64" or "cca".
    pub format: &'static str,
    /// Compatibility mask.
    pub compatibility_mask: u32,
    /// Virtual processor index.
    pub vp_index: u16,
    /// Entry point (RIP, or PC on Arm), when the context gives it.
    pub entry: Option<u64>,
    /// Processor mode at entry.
    pub mode: CpuMode,
}

/// One CoRIM document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorimSummary {
    /// The CorimDocument header.
    pub header: HeaderRef,
    /// Compatibility mask.
    pub compatibility_mask: u32,
    /// Platform type names the mask covers.
    pub platforms: Vec<&'static str>,
    /// Document size in bytes.
    pub size: usize,
    /// SHA-256 of the document, lowercase hex.
    pub sha256: String,
    /// Size of the COSE_Sign1 signature for the same mask, if there is one.
    pub signature_size: Option<usize>,
}

impl CorimSummary {
    /// Returns true if a signature covers this document.
    pub fn signed(&self) -> bool {
        self.signature_size.is_some()
    }
}

/// The contents of an IGVM file, summarized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    /// IGVM format version.
    pub format_version: u32,
    /// SupportedPlatform headers, in file order.
    pub platforms: Vec<PlatformSummary>,
    /// Number of headers of each type, by type name.
    pub header_counts: BTreeMap<&'static str, usize>,
    /// Guest memory that PageData headers describe, all platforms together (4 KiB or 2 MiB per
    /// header).
    pub page_data_bytes: u64,
    /// File data that PageData headers carry; empty pages carry none.
    pub page_data_file_bytes: u64,
    /// Parameter areas, in file order.
    pub parameter_areas: Vec<ParameterAreaSummary>,
    /// VP contexts, in file order.
    pub vp_contexts: Vec<VpContextSummary>,
    /// CoRIM documents, in file order.
    pub corim: Vec<CorimSummary>,
    /// Optional headers of unknown types that were skipped.
    pub skipped_headers: Vec<HeaderRef>,
    /// Text of the VersionString header.
    pub version_string: Option<String>,
}

/// Parses `file` and summarizes it.
pub fn summarize(file: &[u8]) -> Result<FileSummary, LoadError> {
    Ok(summarize_parsed(&parse(file)?))
}

/// Summarizes an already parsed file.
pub fn summarize_parsed(parsed: &ParsedFile) -> FileSummary {
    let platforms = parsed.platforms();

    let mut header_counts = BTreeMap::new();
    let positions = parsed
        .platform_refs
        .iter()
        .chain(&parsed.initialization_refs)
        .chain(parsed.relocation_headers.iter().map(|(header, _)| header))
        .chain(&parsed.directive_refs);
    for header in positions {
        *header_counts
            .entry(header_type_name(header.header_type))
            .or_insert(0) += 1;
    }
    if parsed.version_string.is_some() {
        *header_counts.entry("VersionString").or_insert(0) += 1;
    }

    let mut summary = FileSummary {
        format_version: parsed.format_version,
        platforms: platforms
            .iter()
            .map(|p| PlatformSummary {
                header: p.header,
                platform_type: platform_type_name(p.platform_type),
                compatibility_mask: p.compatibility_mask,
                shared_gpa_boundary: p.shared_gpa_boundary,
                highest_vtl: p.highest_vtl,
            })
            .collect(),
        header_counts,
        page_data_bytes: 0,
        page_data_file_bytes: 0,
        parameter_areas: Vec::new(),
        vp_contexts: Vec::new(),
        corim: corim_summaries(parsed, &platforms),
        skipped_headers: parsed.skipped_headers.clone(),
        version_string: parsed.version_string.clone(),
    };
    summarize_directives(parsed, &mut summary);
    summary
}

fn platforms_of_mask(platforms: &[PlatformHeader], mask: u32) -> Vec<&'static str> {
    platforms
        .iter()
        .filter(|p| p.compatibility_mask & mask != 0)
        .map(|p| platform_type_name(p.platform_type))
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn corim_summaries(parsed: &ParsedFile, platforms: &[PlatformHeader]) -> Vec<CorimSummary> {
    let signatures: Vec<(u32, usize)> = parsed
        .initializations()
        .filter_map(|(_, init)| match init {
            IgvmInitializationHeader::CorimSignature {
                compatibility_mask,
                signature,
            } => Some((*compatibility_mask, signature.len())),
            _ => None,
        })
        .collect();
    parsed
        .initializations()
        .filter_map(|(header, init)| match init {
            IgvmInitializationHeader::CorimDocument {
                compatibility_mask,
                document,
            } => Some(CorimSummary {
                header,
                compatibility_mask: *compatibility_mask,
                platforms: platforms_of_mask(platforms, *compatibility_mask),
                size: document.len(),
                sha256: sha256_hex(document),
                signature_size: signatures
                    .iter()
                    .find(|(mask, _)| mask & compatibility_mask != 0)
                    .map(|(_, size)| *size),
            }),
            _ => None,
        })
        .collect()
}

fn summarize_directives(parsed: &ParsedFile, summary: &mut FileSummary) {
    for (position, (header, directive)) in parsed.directives().enumerate() {
        if let Some((kind, parameter)) = ParameterKind::of_directive(directive) {
            if let Some(area) = summary
                .parameter_areas
                .iter_mut()
                .find(|a| a.area_index == parameter.parameter_area_index)
            {
                area.parameters.push((kind, parameter.byte_offset));
            }
            continue;
        }
        match directive {
            IgvmDirectiveHeader::PageData { flags, .. } => {
                summary.page_data_bytes += if flags.is_2mb_page() {
                    PAGE_SIZE_2M
                } else {
                    PAGE_SIZE_4K
                };
                summary.page_data_file_bytes += parsed.page_data(position).len() as u64;
            }
            IgvmDirectiveHeader::ParameterArea {
                number_of_bytes,
                parameter_area_index,
                ..
            } => summary.parameter_areas.push(ParameterAreaSummary {
                header,
                area_index: *parameter_area_index,
                size: *number_of_bytes,
                parameters: Vec::new(),
                inserts: Vec::new(),
            }),
            IgvmDirectiveHeader::ParameterInsert(insert) => {
                if let Some(area) = summary
                    .parameter_areas
                    .iter_mut()
                    .find(|a| a.area_index == insert.parameter_area_index)
                {
                    area.inserts.push((insert.gpa, insert.compatibility_mask));
                }
            }
            _ => {
                if let Some(context) = vp_context_summary(header, directive) {
                    summary.vp_contexts.push(context);
                }
            }
        }
    }
}

fn vp_context_summary(
    header: HeaderRef,
    directive: &IgvmDirectiveHeader,
) -> Option<VpContextSummary> {
    let summary = |format, compatibility_mask, vp_index, entry, mode| VpContextSummary {
        header,
        format,
        compatibility_mask,
        vp_index,
        entry,
        mode,
    };
    match directive {
        IgvmDirectiveHeader::X64NativeVpContext {
            compatibility_mask,
            vp_index,
            context,
        } => Some(summary(
            "native",
            *compatibility_mask,
            *vp_index,
            Some(context.rip),
            CpuMode::from_registers(
                Some(context.cr0),
                context.efer,
                context.code_attributes & ATTRIBUTES_LONG != 0,
            ),
        )),
        IgvmDirectiveHeader::SnpVpContext {
            compatibility_mask,
            vp_index,
            vmsa,
            ..
        } => Some(summary(
            "sev-snp",
            *compatibility_mask,
            *vp_index,
            Some(vmsa.rip),
            CpuMode::from_registers(
                Some(vmsa.cr0),
                vmsa.efer,
                vmsa.cs.attrib & VMSA_ATTRIBUTES_LONG != 0,
            ),
        )),
        IgvmDirectiveHeader::X64VbsVpContext {
            registers,
            compatibility_mask,
            ..
        } => {
            let mut rip = None;
            let mut cr0 = None;
            let mut efer = 0;
            let mut cs_long = false;
            for register in registers {
                match register {
                    X86Register::Rip(value) => rip = Some(*value),
                    X86Register::Cr0(value) => cr0 = Some(*value),
                    X86Register::Efer(value) => efer = *value,
                    X86Register::Cs(segment) => {
                        cs_long = segment.attributes & ATTRIBUTES_LONG != 0;
                    }
                    _ => {}
                }
            }
            Some(summary(
                "vbs",
                *compatibility_mask,
                0,
                rip,
                CpuMode::from_registers(cr0, efer, cs_long),
            ))
        }
        IgvmDirectiveHeader::AArch64VbsVpContext {
            compatibility_mask, ..
        } => Some(summary(
            "vbs-aarch64",
            *compatibility_mask,
            0,
            None,
            CpuMode::Unknown,
        )),
        IgvmDirectiveHeader::AArch64CcaVpContext {
            compatibility_mask,
            vp_index,
            context,
        } => Some(summary(
            "cca",
            *compatibility_mask,
            *vp_index,
            Some(context.pc),
            CpuMode::Unknown,
        )),
        _ => None,
    }
}

impl fmt::Display for FileSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "IGVM format version {}", self.format_version)?;
        if let Some(version) = &self.version_string {
            writeln!(f, "version string: {version}")?;
        }

        writeln!(f, "platforms:")?;
        for p in &self.platforms {
            writeln!(
                f,
                "  {:<14} mask {:#x}  shared GPA boundary {:#x}  highest VTL {}",
                p.platform_type, p.compatibility_mask, p.shared_gpa_boundary, p.highest_vtl
            )?;
        }

        writeln!(f, "headers:")?;
        for (name, count) in &self.header_counts {
            writeln!(f, "  {name:<26} {count}")?;
        }
        for header in &self.skipped_headers {
            writeln!(f, "  skipped optional: {header}")?;
        }
        writeln!(
            f,
            "page data: {} bytes of guest memory, {} bytes of file data",
            self.page_data_bytes, self.page_data_file_bytes
        )?;

        writeln!(f, "parameter areas:")?;
        if self.parameter_areas.is_empty() {
            writeln!(f, "  none")?;
        }
        for area in &self.parameter_areas {
            let parameters: Vec<String> = area
                .parameters
                .iter()
                .map(|(kind, offset)| format!("{}@{offset:#x}", kind.name()))
                .collect();
            let inserts: Vec<String> = area
                .inserts
                .iter()
                .map(|(gpa, mask)| format!("{gpa:#x} (mask {mask:#x})"))
                .collect();
            writeln!(
                f,
                "  area {} ({} bytes): {}; inserted at {}",
                area.area_index,
                area.size,
                or_none(&parameters),
                or_none(&inserts)
            )?;
        }

        writeln!(f, "VP contexts:")?;
        if self.vp_contexts.is_empty() {
            writeln!(f, "  none")?;
        }
        for context in &self.vp_contexts {
            let entry = context
                .entry
                .map_or_else(|| "unknown".to_string(), |rip| format!("{rip:#x}"));
            writeln!(
                f,
                "  {:<12} mask {:#x}  vCPU {}  entry {}  {} mode",
                context.format,
                context.compatibility_mask,
                context.vp_index,
                entry,
                context.mode.name()
            )?;
        }

        writeln!(f, "CoRIM:")?;
        if self.corim.is_empty() {
            writeln!(f, "  none")?;
        }
        for corim in &self.corim {
            writeln!(
                f,
                "  {} (mask {:#x}): {} bytes, SHA-256 {}, {}",
                or_none(&corim.platforms),
                corim.compatibility_mask,
                corim.size,
                corim.sha256,
                corim.signature_size.map_or_else(
                    || "unsigned".to_string(),
                    |size| format!("signed ({size}-byte COSE_Sign1)")
                )
            )?;
        }
        Ok(())
    }
}

fn or_none<T: AsRef<str>>(items: &[T]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
