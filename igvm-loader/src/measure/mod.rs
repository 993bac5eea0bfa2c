//! Launch-measurement models that replay a [`Plan`]'s operations.
//!
//! The models walk the same [`LaunchOp`] list that a backend executes, page by page:
//!
//! - SEV-SNP ([`measure_snp`]): NORMAL pages (empty pages as NORMAL zeros), UNMEASURED for
//!   unmeasured and parameter pages, SECRETS and CPUID with zero contents, shared pages skipped.
//!   In [`SnpMode::KvmLaunch`] the VMSAs follow every page, one per vCPU at [`KVM_VMSA_GPA`], as
//!   KVM measures them at `LAUNCH_FINISH`. In [`SnpMode::FileDigest`] each VMSA is measured where
//!   its directive sits, at the file's GPA, as igvm 0.5 and COCONUT-SVSM's igvmmeasure do.
//! - TDX ([`measure_tdx`]): one `MEM.PAGE.ADD` per populated page, plus sixteen `MR.EXTEND`s for
//!   measured pages (empty pages included); parameter and unmeasured pages are added without
//!   MEASURE; shared pages are skipped. VP contexts are not measured.
//!
//! A 2 MiB operation is 512 pages of 4 KiB in ascending order, on both platforms, as KVM issues
//! them. igvm 0.5 measures a 2 MiB page data header as a single 4 KiB page instead.

pub mod snp;
pub mod tdx;
pub mod vmsa;

use std::fmt;

use crate::plan::{LaunchOp, PageKind, Plan, Platform, VpContext, VpState};

pub use snp::{SnpLaunchDigest, SnpPageType, DIGEST_LEN};
pub use tdx::MrtdHasher;
pub use vmsa::{KvmSnpVcpuState, VmsaError, KVM_VMSA_GPA};

/// Most vCPUs a model accepts: IGVM VP indices are 16-bit.
pub const MAX_VCPUS: u32 = 1 << 16;

/// The placement of VMSAs in the SEV-SNP model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnpMode {
    /// The digest of a KVM launch by igvmm: every page in plan order, then one VMSA per vCPU at
    /// [`KVM_VMSA_GPA`], built by KVM from the vCPU registers. vCPU *n* takes the file's VP
    /// context *n* when the file has one, otherwise KVM's reset state.
    KvmLaunch {
        /// Number of vCPUs that exist at `LAUNCH_FINISH`.
        vcpus: u32,
        /// CPUID leaf 1 EAX of the vCPUs (the processor signature), which KVM's reset state puts
        /// in RDX. Only vCPUs without a VP context in the file use it.
        cpuid_1_eax: u32,
    },
    /// The digest the file describes for any host: each VMSA where its directive sits, at the
    /// file's GPA, with the file's bytes.
    FileDigest,
}

/// A fact about a measurement that the caller should show to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeasureNote {
    /// The file places page directives after this VP context. KVM measures the VMSA after every
    /// page, so the KVM digest differs from the file's digest.
    PagesAfterVmsa {
        /// VP index of the context.
        vp_index: u16,
        /// Number of launch operations that follow it in the file.
        operations_after: usize,
    },
    /// KVM writes a different value into this VMSA field than the file contains.
    VmsaAdjusted {
        /// VP index of the context.
        vp_index: u16,
        /// The `SevVmsa` field.
        field: &'static str,
        /// The file's value.
        file_value: u64,
        /// The value KVM writes.
        kvm_value: u64,
    },
    /// These vCPUs have no VP context in the file, so KVM measures their reset state.
    ResetStateVcpus {
        /// First vCPU index measured from its reset state.
        first: u32,
        /// Number of such vCPUs.
        count: u32,
        /// The RDX value (CPUID leaf 1 EAX) in their VMSAs.
        cpuid_1_eax: u32,
    },
}

impl fmt::Display for MeasureNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MeasureNote::PagesAfterVmsa {
                vp_index,
                operations_after,
            } => write!(
                f,
                "the file places {operations_after} page operations after the VMSA of vp \
                 {vp_index}; KVM measures VMSAs after all pages, so the KVM digest differs from \
                 the file digest (--file-digest)"
            ),
            MeasureNote::VmsaAdjusted {
                vp_index,
                field,
                file_value,
                kvm_value,
            } => write!(
                f,
                "vp {vp_index}: KVM writes VMSA field {field} = {kvm_value:#x} where the file has \
                 {file_value:#x}"
            ),
            MeasureNote::ResetStateVcpus {
                first,
                count,
                cpuid_1_eax,
            } => write!(
                f,
                "{count} vCPUs from index {first} have no VP context in the file; their VMSAs are \
                 KVM's reset state with RDX = CPUID(1).EAX = {cpuid_1_eax:#x}"
            ),
        }
    }
}

/// A predicted launch measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    /// The platform measured.
    pub platform: Platform,
    /// The SEV-SNP launch digest or the TDX MRTD.
    pub digest: [u8; DIGEST_LEN],
    /// 4 KiB pages measured: SNP `LAUNCH_UPDATE` pages including VMSAs, or TDX `PAGE.ADD`s.
    pub pages: u64,
    /// Pages whose contents were hashed: SNP NORMAL and VMSA pages, or TDX extended pages.
    pub pages_with_contents: u64,
    /// VMSAs measured (SEV-SNP only).
    pub vmsas: u32,
    /// Bytes fed to SHA-384 for page contents (SNP) or for PAGE.ADD and MR.EXTEND records (TDX).
    pub bytes_hashed: u64,
    /// Facts about this prediction to show to the user.
    pub notes: Vec<MeasureNote>,
}

impl Measurement {
    /// Returns the digest as upper-case hexadecimal.
    pub fn digest_hex(&self) -> String {
        hex_upper(&self.digest)
    }
}

/// A reason why a plan cannot be measured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeasureError {
    /// The plan targets another platform.
    #[error("the plan is for platform {found}, not {expected}")]
    WrongPlatform {
        /// The platform the model measures.
        expected: Platform,
        /// The plan's platform.
        found: Platform,
    },
    /// A KVM launch needs at least one vCPU.
    #[error("a KVM launch needs at least one vCPU")]
    NoVcpus,
    /// More vCPUs than IGVM VP indices can name.
    #[error("{vcpus} vCPUs requested; IGVM VP indices allow at most {MAX_VCPUS}")]
    TooManyVcpus {
        /// The requested count.
        vcpus: u32,
    },
    /// A VMSA cannot be produced by KVM.
    #[error("SnpVpContext header {header_index} (vp {vp_index}): {error}")]
    Vmsa {
        /// VP index of the context.
        vp_index: u16,
        /// Directive index of the header.
        header_index: usize,
        /// The problem.
        error: VmsaError,
    },
    /// The file has a VP context for a vCPU the launch does not create.
    #[error(
        "the file has a VP context for vp {vp_index}, but the guest has only {vcpus} vCPUs; \
         raise the vCPU count"
    )]
    VpBeyondVcpus {
        /// VP index of the context.
        vp_index: u16,
        /// Number of vCPUs.
        vcpus: u32,
    },
    /// Two VP contexts name the same VP.
    #[error("the file has two VP contexts for vp {vp_index}")]
    DuplicateVp {
        /// The duplicated index.
        vp_index: u16,
    },
    /// KVM applies one `SEV_FEATURES` value to every vCPU.
    #[error(
        "vp {vp_index} has SEV_FEATURES {found:#x} but vp 0 has {expected:#x}; KVM applies one \
         value to every vCPU"
    )]
    SevFeaturesDiffer {
        /// VP index of the context that differs.
        vp_index: u16,
        /// The features of vp 0.
        expected: u64,
        /// The features of this context.
        found: u64,
    },
    /// A VP context of the wrong kind for the platform.
    #[error(
        "header {header_index}: a native VP context for vp {vp_index} cannot start an SEV-SNP vCPU"
    )]
    NativeContextOnSnp {
        /// VP index of the context.
        vp_index: u16,
        /// Directive index of the header.
        header_index: usize,
    },
}

/// Returns the SEV-SNP `LAUNCH_UPDATE` page type for a page kind, or `None` for shared pages,
/// which stay out of the launch.
pub fn snp_page_type(kind: PageKind) -> Option<SnpPageType> {
    match kind {
        PageKind::Normal => Some(SnpPageType::Normal),
        PageKind::Unmeasured | PageKind::Parameter { .. } => Some(SnpPageType::Unmeasured),
        PageKind::Secrets => Some(SnpPageType::Secrets),
        PageKind::Cpuid | PageKind::CpuidXf => Some(SnpPageType::Cpuid),
        PageKind::Shared => None,
    }
}

/// How a page of a kind enters a TD: `Some(true)` for `KVM_TDX_INIT_MEM_REGION` with
/// `KVM_TDX_MEASURE_MEMORY_REGION`, `Some(false)` without it, `None` for shared pages, which stay
/// out of the TD's private memory.
///
/// Secrets and CPUID pages have no meaning on TDX; like igvm 0.5, igvmm adds and measures them as
/// ordinary page data.
pub fn tdx_page_measured(kind: PageKind) -> Option<bool> {
    match kind {
        PageKind::Normal | PageKind::Secrets | PageKind::Cpuid | PageKind::CpuidXf => Some(true),
        PageKind::Unmeasured | PageKind::Parameter { .. } => Some(false),
        PageKind::Shared => None,
    }
}

/// Returns the state igvmm programs into each of `vcpus` SEV-SNP vCPUs, in vCPU order.
///
/// vCPU *n* takes the file's SNP VP context *n*, checked by [`KvmSnpVcpuState::from_file_vmsa`];
/// a vCPU without one takes [`KvmSnpVcpuState::reset`] with `cpuid_1_eax` and the `SEV_FEATURES`
/// of vp 0 (or none when vp 0 has no context). The SEV-SNP backend and the model both call this.
pub fn snp_vcpu_states(
    plan: &Plan,
    vcpus: u32,
    cpuid_1_eax: u32,
) -> Result<Vec<KvmSnpVcpuState>, MeasureError> {
    if plan.platform != Platform::SevSnp {
        return Err(MeasureError::WrongPlatform {
            expected: Platform::SevSnp,
            found: plan.platform,
        });
    }
    if vcpus == 0 {
        return Err(MeasureError::NoVcpus);
    }
    if vcpus > MAX_VCPUS {
        return Err(MeasureError::TooManyVcpus { vcpus });
    }
    let mut from_file: Vec<Option<KvmSnpVcpuState>> = vec![None; vcpus as usize];
    for context in &plan.vp_contexts {
        let (gpa, vmsa) = match &context.state {
            VpState::Snp { gpa, vmsa } => (*gpa, vmsa),
            VpState::Native(_) => {
                return Err(MeasureError::NativeContextOnSnp {
                    vp_index: context.vp_index,
                    header_index: context.source.index,
                })
            }
        };
        let slot = from_file.get_mut(usize::from(context.vp_index)).ok_or(
            MeasureError::VpBeyondVcpus {
                vp_index: context.vp_index,
                vcpus,
            },
        )?;
        if slot.is_some() {
            return Err(MeasureError::DuplicateVp {
                vp_index: context.vp_index,
            });
        }
        let state =
            KvmSnpVcpuState::from_file_vmsa(vmsa, gpa).map_err(|error| MeasureError::Vmsa {
                vp_index: context.vp_index,
                header_index: context.source.index,
                error,
            })?;
        *slot = Some(state);
    }

    let vm_features = from_file
        .first()
        .and_then(|state| state.as_ref())
        .map(|state| state.sev_features)
        .unwrap_or(vmsa::SEV_FEATURE_SNP_ACTIVE);
    let mut states = Vec::with_capacity(from_file.len());
    for (index, state) in from_file.into_iter().enumerate() {
        let state = match state {
            Some(state) => {
                if state.sev_features != vm_features {
                    return Err(MeasureError::SevFeaturesDiffer {
                        vp_index: index as u16,
                        expected: vm_features,
                        found: state.sev_features,
                    });
                }
                state
            }
            None => KvmSnpVcpuState::reset(cpuid_1_eax, vm_features),
        };
        states.push(state);
    }
    Ok(states)
}

/// Predicts the SEV-SNP launch digest of `plan`.
pub fn measure_snp(plan: &Plan, mode: SnpMode) -> Result<Measurement, MeasureError> {
    if plan.platform != Platform::SevSnp {
        return Err(MeasureError::WrongPlatform {
            expected: Platform::SevSnp,
            found: plan.platform,
        });
    }
    let mut chain = SnpLaunchDigest::new();
    let mut notes = Vec::new();
    let mut vmsas = 0u32;

    match mode {
        SnpMode::KvmLaunch { vcpus, cpuid_1_eax } => {
            let states = snp_vcpu_states(plan, vcpus, cpuid_1_eax)?;
            collect_kvm_notes(plan, &states, cpuid_1_eax, &mut notes);
            let digests = normal_page_digests(&plan.operations);
            let mut next_digest = digests.iter();
            for op in &plan.operations {
                measure_snp_operation(&mut chain, op, &mut next_digest);
            }
            for state in &states {
                let vmsa = state.to_kvm_vmsa();
                chain.update_page(
                    SnpPageType::Vmsa,
                    KVM_VMSA_GPA,
                    Some(zerocopy::IntoBytes::as_bytes(&vmsa)),
                );
                vmsas += 1;
            }
        }
        SnpMode::FileDigest => {
            let mut contexts: Vec<&VpContext> = plan.vp_contexts.iter().collect();
            contexts.sort_by_key(|context| context.ops_before);
            let mut pending = contexts.into_iter().peekable();
            let digests = normal_page_digests(&plan.operations);
            let mut next_digest = digests.iter();
            for (index, op) in plan.operations.iter().enumerate() {
                while let Some(context) = pending.next_if(|context| context.ops_before <= index) {
                    vmsas += measure_file_vmsa(&mut chain, context);
                }
                measure_snp_operation(&mut chain, op, &mut next_digest);
            }
            for context in pending {
                vmsas += measure_file_vmsa(&mut chain, context);
            }
        }
    }

    Ok(Measurement {
        platform: Platform::SevSnp,
        digest: chain.digest(),
        pages: chain.pages(),
        pages_with_contents: chain.bytes_hashed() / 4096,
        vmsas,
        bytes_hashed: chain.bytes_hashed(),
        notes,
    })
}

/// Below this many NORMAL pages the contents are hashed on the calling thread.
const PARALLEL_MIN_PAGES: usize = 1024;
/// Most threads used for hashing page contents.
const MAX_HASH_THREADS: usize = 8;

/// Returns the contents digest of every NORMAL page of `operations`, in plan order. Large plans
/// are hashed on several threads; the chain itself stays sequential.
fn normal_page_digests(operations: &[LaunchOp]) -> Vec<[u8; DIGEST_LEN]> {
    let mut pages: Vec<Option<&[u8]>> = Vec::new();
    for op in operations {
        if snp_page_type(op.kind) == Some(SnpPageType::Normal) {
            pages.extend(op.pages_4k().map(|page| page.bytes));
        }
    }
    let threads = if pages.len() >= PARALLEL_MIN_PAGES {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(MAX_HASH_THREADS)
    } else {
        1
    };
    snp::page_digests(&pages, threads)
}

/// Chains every 4 KiB page of one operation; NORMAL pages take their contents digest from
/// `digests`, which [`normal_page_digests`] filled in the same order.
fn measure_snp_operation<'a>(
    chain: &mut SnpLaunchDigest,
    op: &LaunchOp,
    digests: &mut impl Iterator<Item = &'a [u8; DIGEST_LEN]>,
) {
    let Some(page_type) = snp_page_type(op.kind) else {
        return;
    };
    for page in op.pages_4k() {
        if page_type == SnpPageType::Normal {
            match digests.next() {
                Some(digest) => chain.update_with_contents_digest(page_type, page.gpa, digest),
                // Not reached: the digests were computed from the same operations.
                None => chain.update_page(page_type, page.gpa, page.bytes),
            }
        } else {
            chain.update_page(page_type, page.gpa, page.bytes);
        }
    }
}

/// Chains a file VMSA as written; returns the number of VMSAs measured (0 for a native context,
/// which SEV-SNP does not measure).
fn measure_file_vmsa(chain: &mut SnpLaunchDigest, context: &VpContext) -> u32 {
    match &context.state {
        VpState::Snp { gpa, vmsa } => {
            chain.update_page(
                SnpPageType::Vmsa,
                *gpa,
                Some(zerocopy::IntoBytes::as_bytes(vmsa.as_ref())),
            );
            1
        }
        VpState::Native(_) => 0,
    }
}

fn collect_kvm_notes(
    plan: &Plan,
    states: &[KvmSnpVcpuState],
    cpuid_1_eax: u32,
    notes: &mut Vec<MeasureNote>,
) {
    let total_ops = plan.operations.len();
    for context in &plan.vp_contexts {
        let VpState::Snp { vmsa, .. } = &context.state else {
            continue;
        };
        let measured_after = plan
            .operations
            .get(context.ops_before..)
            .unwrap_or_default()
            .iter()
            .filter(|op| snp_page_type(op.kind).is_some())
            .count();
        if measured_after > 0 {
            notes.push(MeasureNote::PagesAfterVmsa {
                vp_index: context.vp_index,
                operations_after: total_ops.saturating_sub(context.ops_before),
            });
        }
        if let Some(state) = states.get(usize::from(context.vp_index)) {
            for (field, file_value, kvm_value) in state.kvm_adjustments(vmsa) {
                notes.push(MeasureNote::VmsaAdjusted {
                    vp_index: context.vp_index,
                    field,
                    file_value,
                    kvm_value,
                });
            }
        }
    }
    let with_context: Vec<u16> = plan.vp_contexts.iter().map(|c| c.vp_index).collect();
    let reset: Vec<u32> = (0..states.len() as u32)
        .filter(|index| !with_context.iter().any(|vp| u32::from(*vp) == *index))
        .collect();
    if let Some(first) = reset.first() {
        notes.push(MeasureNote::ResetStateVcpus {
            first: *first,
            count: reset.len() as u32,
            cpuid_1_eax,
        });
    }
}

/// Predicts the TDX MRTD of `plan`.
pub fn measure_tdx(plan: &Plan) -> Result<Measurement, MeasureError> {
    if plan.platform != Platform::Tdx {
        return Err(MeasureError::WrongPlatform {
            expected: Platform::Tdx,
            found: plan.platform,
        });
    }
    let mut mrtd = MrtdHasher::new();
    for op in &plan.operations {
        let Some(measured) = tdx_page_measured(op.kind) else {
            continue;
        };
        for page in op.pages_4k() {
            if measured {
                mrtd.add_measured_page(page.gpa, page.bytes);
            } else {
                mrtd.add_page(page.gpa);
            }
        }
    }
    Ok(Measurement {
        platform: Platform::Tdx,
        digest: mrtd.digest(),
        pages: mrtd.page_adds(),
        pages_with_contents: mrtd.pages_extended(),
        vmsas: 0,
        bytes_hashed: mrtd.bytes_hashed(),
        notes: Vec::new(),
    })
}

/// Formats bytes as upper-case hexadecimal, the form attestation tools print.
pub fn hex_upper(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(text, "{byte:02X}");
    }
    text
}

/// Returns a host description under which every import, parameter area and memory range of the
/// file lies in RAM, for predicting a measurement without a real host.
///
/// RAM runs from 0 to the highest byte the file touches, rounded up to 2 MiB, and at least to
/// 4 GiB; there are no MMIO ranges. Parameter areas filled from this description are not
/// measured on SEV-SNP or TDX, so the prediction does not depend on it.
pub fn measurement_host(parsed: &crate::ParsedFile, vp_count: u32) -> crate::host::HostDescription {
    use igvm::IgvmDirectiveHeader;

    const MIN_RAM_END: u64 = 1 << 32;
    let mut areas = std::collections::HashMap::new();
    let mut end = MIN_RAM_END;
    for (_, directive) in parsed.directives() {
        let touched = match directive {
            IgvmDirectiveHeader::PageData { gpa, flags, .. } => {
                let size = if flags.is_2mb_page() {
                    crate::plan::PAGE_SIZE_2M
                } else {
                    crate::plan::PAGE_SIZE_4K
                };
                gpa.checked_add(size)
            }
            IgvmDirectiveHeader::ParameterArea {
                number_of_bytes,
                parameter_area_index,
                ..
            } => {
                areas.insert(*parameter_area_index, *number_of_bytes);
                None
            }
            IgvmDirectiveHeader::ParameterInsert(insert) => areas
                .get(&insert.parameter_area_index)
                .and_then(|size| insert.gpa.checked_add(*size)),
            IgvmDirectiveHeader::RequiredMemory {
                gpa,
                number_of_bytes,
                ..
            } => gpa.checked_add(u64::from(*number_of_bytes)),
            IgvmDirectiveHeader::ErrorRange {
                gpa, size_bytes, ..
            } => gpa.checked_add(u64::from(*size_bytes)),
            _ => None,
        };
        if let Some(touched) = touched {
            end = end.max(touched);
        }
    }
    let end = end
        .checked_next_multiple_of(crate::plan::PAGE_SIZE_2M)
        .unwrap_or(!(crate::plan::PAGE_SIZE_2M - 1));
    crate::host::HostDescription {
        memory_map: vec![crate::host::MemoryRegion {
            base: 0,
            size: end,
            kind: crate::host::MemoryKind::Ram,
        }],
        vp_count,
        command_line: String::new(),
        mmio_ranges: Vec::new(),
        madt: placeholder_madt(vp_count),
        srat: Vec::new(),
        slit: Vec::new(),
        pptt: Vec::new(),
    }
}

/// Builds an MADT with one enabled local APIC per vCPU, so that files with an MADT parameter
/// load without a warning. Its contents land in a parameter area, which is not measured.
fn placeholder_madt(vp_count: u32) -> Vec<u8> {
    const HEADER_LEN: usize = 36;
    let entries = vp_count.min(255) as usize;
    let length = HEADER_LEN + 8 + entries * 8;
    let mut table = Vec::with_capacity(length);
    table.extend_from_slice(b"APIC");
    table.extend_from_slice(&(length as u32).to_le_bytes());
    table.push(5); // revision
    table.push(0); // checksum, set below
    table.extend_from_slice(b"IGVMM ");
    table.extend_from_slice(b"MEASURE ");
    table.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    table.extend_from_slice(b"IGVM");
    table.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    table.extend_from_slice(&0xFEE0_0000u32.to_le_bytes()); // local APIC address
    table.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
    for index in 0..entries {
        // Processor Local APIC: type 0, length 8, UID, APIC ID, flags (enabled).
        table.extend_from_slice(&[0, 8, index as u8, index as u8]);
        table.extend_from_slice(&1u32.to_le_bytes());
    }
    let sum = table.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte));
    if let Some(checksum) = table.get_mut(9) {
        *checksum = 0u8.wrapping_sub(sum);
    }
    table
}

/// Parses `file` and builds the plan of `platform` on [`measurement_host`] with `vp_count`
/// vCPUs, ready for [`measure_snp`] or [`measure_tdx`]. The plan borrows its page data from
/// `file`.
pub fn plan_for_measurement(
    file: &[u8],
    platform: Platform,
    vp_count: u32,
) -> Result<Plan<'_>, crate::LoadError> {
    let parsed = crate::parse(file)?;
    let options = crate::LoadOptions {
        choice: crate::host::PlatformChoice::Exact(platform),
        host: measurement_host(&parsed, vp_count),
        relocation_base: None,
    };
    crate::load_parsed(&parsed, &options)
}
