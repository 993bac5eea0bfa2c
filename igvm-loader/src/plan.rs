//! The launch plan: the contract between the loader and every backend.
//!
//! A [`Plan`] is the file after platform selection, validation, relocation and parameter filling.
//! Its [`LaunchOp`] list is ordered exactly as a backend must execute it. The native backend copies
//! the pages into RAM, the SEV-SNP backend issues one `SNP_LAUNCH_UPDATE` per page, and the TDX backend
//! one `KVM_TDX_INIT_MEM_REGION` per page. The measurement models replay the same list, so the
//! predicted digest and the launched guest cannot drift apart.
//!
//! A plan borrows the page bytes it imports unchanged from the IGVM file, so `Plan<'a>` lives
//! no longer than the file's bytes. [`Plan::into_owned`] copies them for a plan that must outlive
//! the file.

use std::borrow::Cow;

use igvm::snp_defs::SevVmsa;
use igvm_defs::IgvmNativeVpContextX64;

/// Size of the base page in bytes.
pub const PAGE_SIZE_4K: u64 = 0x1000;
/// Size of a large page in bytes.
pub const PAGE_SIZE_2M: u64 = 0x20_0000;

/// An isolation platform that igvmm can load or measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Platform {
    /// No isolation: the guest runs as an ordinary KVM guest.
    Native,
    /// AMD SEV-SNP.
    SevSnp,
    /// Intel TDX.
    Tdx,
    /// Hyper-V virtualization-based security; parsed for `inspect` only.
    Vbs,
}

impl Platform {
    /// Returns the name used on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Native => "native",
            Platform::SevSnp => "sev-snp",
            Platform::Tdx => "tdx",
            Platform::Vbs => "vsm-isolation",
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Position of a header in the file, for error messages and traceability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRef {
    /// IGVM variable header type (`IGVM_VHT_*`), for example 0x302 for PageData.
    pub header_type: u32,
    /// Zero-based index of the header within its section (initialization or directive), counted
    /// over the whole file before any compatibility-mask filtering.
    pub index: usize,
}

/// The platform treatment of one page of a [`LaunchOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// Measured page data. Empty data is a page of zeros that is still measured (SNP NORMAL, TDX
    /// PAGE.ADD + MR.EXTEND).
    Normal,
    /// Page data with the IGVM unmeasured flag (SNP UNMEASURED, TDX PAGE.ADD only).
    Unmeasured,
    /// A page of a parameter area placed by a ParameterInsert, already filled by the loader (SNP
    /// UNMEASURED, TDX PAGE.ADD only).
    Parameter {
        /// The parameter area index from the file.
        area_index: u32,
    },
    /// The SNP secrets page (SNP SECRETS); the firmware fills it.
    Secrets,
    /// The SNP CPUID page (SNP CPUID); the VMM fills it from the host's supported CPUID.
    Cpuid,
    /// The SNP extended-state CPUID page (`IGVM_PAGE_DATA_TYPE_CPUID_XF`), launched as SNP CPUID.
    CpuidXf,
    /// Page data with the IGVM shared flag: written to shared memory, never measured.
    Shared,
}

/// The bytes of a launch operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageData<'a> {
    /// A page (or 2 MiB page) of zeros, from an empty PageData header.
    Zero,
    /// At most the operation's size; shorter data is padded with zeros. Page data that the
    /// loader imports unchanged is borrowed from the file. Parameter areas and relocated page
    /// tables are built by the loader and owned.
    Bytes(Cow<'a, [u8]>),
}

impl PageData<'_> {
    /// Copies borrowed bytes, so that the data no longer refers to the file.
    pub fn into_owned(self) -> PageData<'static> {
        match self {
            PageData::Zero => PageData::Zero,
            PageData::Bytes(bytes) => PageData::Bytes(Cow::Owned(bytes.into_owned())),
        }
    }
}

/// One step of the launch: place `size` bytes at `gpa`, with the platform treatment `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOp<'a> {
    /// Guest physical address, aligned to `size`.
    pub gpa: u64,
    /// [`PAGE_SIZE_4K`] or [`PAGE_SIZE_2M`]. Backends and measurements treat a 2 MiB operation as 512
    /// 4 KiB pages in ascending order (see [`LaunchOp::pages_4k`]).
    pub size: u64,
    /// The platform treatment of these pages.
    pub kind: PageKind,
    /// The contents.
    pub data: PageData<'a>,
    /// The header this operation came from.
    pub source: HeaderRef,
}

/// One 4 KiB page of a [`LaunchOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page4k<'a> {
    /// Guest physical address of the page.
    pub gpa: u64,
    /// The page bytes, at most 4096. `None` or a short slice means the rest is zeros.
    pub bytes: Option<&'a [u8]>,
}

impl LaunchOp<'_> {
    /// Copies borrowed bytes, so that the operation no longer refers to the file.
    pub fn into_owned(self) -> LaunchOp<'static> {
        LaunchOp {
            gpa: self.gpa,
            size: self.size,
            kind: self.kind,
            data: self.data.into_owned(),
            source: self.source,
        }
    }

    /// Iterates over the operation as 4 KiB pages in ascending GPA order.
    pub fn pages_4k(&self) -> impl Iterator<Item = Page4k<'_>> + '_ {
        let count = self.size / PAGE_SIZE_4K;
        (0..count).map(move |i| {
            let offset = (i * PAGE_SIZE_4K) as usize;
            let bytes = match &self.data {
                PageData::Zero => None,
                PageData::Bytes(data) => data
                    .get(offset..)
                    .map(|rest| rest.get(..PAGE_SIZE_4K as usize).unwrap_or(rest))
                    .filter(|slice| !slice.is_empty()),
            };
            Page4k {
                gpa: self.gpa + i * PAGE_SIZE_4K,
                bytes,
            }
        })
    }
}

/// The initial register state of one virtual processor, as the file gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VpState {
    /// `IGVM_VHS_VP_CONTEXT` with the native x64 layout.
    Native(Box<IgvmNativeVpContextX64>),
    /// An SNP VMSA and the GPA the file places it at.
    Snp {
        /// GPA given by the file. KVM always places VMSAs at `0xFFFF_FFFF_F000`.
        gpa: u64,
        /// The VMSA bytes from the file.
        vmsa: Box<SevVmsa>,
    },
}

/// A VP context and where it sits in the directive stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpContext {
    /// Virtual processor index; 0 is the bootstrap processor.
    pub vp_index: u16,
    /// The register state.
    pub state: VpState,
    /// Number of [`LaunchOp`]s that precede this context in file order. A measurement of the file as
    /// written (`--file-digest`) measures the VMSA at this point; KVM measures it after every page.
    pub ops_before: usize,
    /// The header this context came from.
    pub source: HeaderRef,
}

/// A guest physical address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaRange {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
}

impl GpaRange {
    /// Returns the first byte after the range, or `None` on overflow.
    pub fn end(&self) -> Option<u64> {
        self.start.checked_add(self.size)
    }
}

/// The SNP ID block and its authentication keys, from the SnpIdBlock directive, in the
/// firmware's `SNP_LAUNCH_FINISH` layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpIdBlock {
    /// The 96-byte ID block.
    pub id_block: Vec<u8>,
    /// The 4096-byte ID authentication information structure.
    pub id_auth: Vec<u8>,
    /// Whether the author key is present (`auth_key_en`).
    pub author_key_enabled: bool,
}

/// Data that the host keeps and serves to the guest, and that never enters guest memory or the
/// launch measurement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostOnlyData {
    /// The CoRIM document (`IGVM_VHT_CORIM_DOCUMENT`) for the chosen platform.
    pub corim_document: Option<Vec<u8>>,
    /// Its COSE_Sign1 signature (`IGVM_VHT_CORIM_SIGNATURE`), when the file has one.
    pub corim_signature: Option<Vec<u8>>,
}

/// Everything a backend needs to launch the guest. `'a` is the lifetime of the IGVM file's
/// bytes, from which the page data is borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<'a> {
    /// The chosen platform.
    pub platform: Platform,
    /// The compatibility mask bit of the chosen platform header.
    pub compatibility_mask: u32,
    /// The shared GPA boundary from the platform header (SNP vTOM, TDX shared bit), or 0.
    pub shared_gpa_boundary: u64,
    /// Page operations, in the order a backend must execute them.
    pub operations: Vec<LaunchOp<'a>>,
    /// VP contexts for the chosen platform, in file order.
    pub vp_contexts: Vec<VpContext>,
    /// The GuestPolicy value for the chosen platform (SNP guest policy or IGVM TDX policy).
    pub guest_policy: Option<u64>,
    /// The SNP ID block, when the file has one for this platform.
    pub snp_id_block: Option<SnpIdBlock>,
    /// RequiredMemory ranges.
    pub required_memory: Vec<GpaRange>,
    /// ErrorRange ranges, where the guest reports errors.
    pub error_ranges: Vec<GpaRange>,
    /// Host-only data (CoRIM).
    pub host_only: HostOnlyData,
}

impl Plan<'_> {
    /// Copies the page data borrowed from the file, so that the plan outlives it.
    pub fn into_owned(self) -> Plan<'static> {
        Plan {
            platform: self.platform,
            compatibility_mask: self.compatibility_mask,
            shared_gpa_boundary: self.shared_gpa_boundary,
            operations: self
                .operations
                .into_iter()
                .map(LaunchOp::into_owned)
                .collect(),
            vp_contexts: self.vp_contexts,
            guest_policy: self.guest_policy,
            snp_id_block: self.snp_id_block,
            required_memory: self.required_memory,
            error_ranges: self.error_ranges,
            host_only: self.host_only,
        }
    }
}
