//! Command-line interface of the `igvmm` binary.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::console::{ConsoleError, DebugconConfig, SerialConfig};
use crate::memory::{self, MemoryError};

/// igvmm: a minimal VMM that boots IGVM guests on Linux KVM.
#[derive(Debug, Parser)]
#[command(name = "igvmm", version, about, long_about = None)]
pub struct Cli {
    /// Raise the log level (-v info, -vv debug, -vvv trace). RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load an IGVM file and run it on KVM.
    Run(RunArgs),
    /// Show what an IGVM file contains.
    Inspect(InspectArgs),
    /// Predict the launch measurement of an IGVM file.
    Measure(MeasureArgs),
    /// Build an IGVM file from a firmware image, a kernel or the built-in demo.
    Pack(PackArgs),
    /// Extract or replace the CoRIM headers of an IGVM file.
    #[command(subcommand)]
    Corim(CorimCommand),
}

/// Platform selection for `run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlatformArg {
    /// The strongest platform that both the file and the host support.
    Auto,
    /// No isolation.
    Native,
    /// AMD SEV-SNP.
    SevSnp,
    /// Intel TDX.
    Tdx,
}

/// A platform that has a launch measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MeasuredPlatformArg {
    /// AMD SEV-SNP launch digest.
    SevSnp,
    /// Intel TDX MRTD.
    Tdx,
}

/// A platform an IGVM file can declare: the target of `pack --platform` and of a CoRIM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FilePlatformArg {
    /// The native platform.
    Native,
    /// AMD SEV-SNP.
    SevSnp,
    /// Intel TDX.
    Tdx,
}

impl From<FilePlatformArg> for igvm_loader::plan::Platform {
    fn from(platform: FilePlatformArg) -> Self {
        match platform {
            FilePlatformArg::Native => Self::Native,
            FilePlatformArg::SevSnp => Self::SevSnp,
            FilePlatformArg::Tdx => Self::Tdx,
        }
    }
}

/// Arguments of `igvmm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The IGVM file to run.
    #[arg(required_unless_present = "demo", conflicts_with = "demo")]
    pub file: Option<PathBuf>,

    /// Run the built-in demo guest instead of a file.
    #[arg(long)]
    pub demo: bool,

    /// Guest RAM, in bytes or with a K, M, G or T suffix (binary units), at least 2M.
    #[arg(long, default_value = "512M", value_parser = memory_size, allow_hyphen_values = true)]
    pub memory: u64,

    /// Number of virtual CPUs, 1 to 254 (KVM may allow fewer).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=254))]
    pub cpus: u32,

    /// Isolation platform to launch.
    #[arg(long, value_enum, default_value_t = PlatformArg::Auto)]
    pub platform: PlatformArg,

    /// Kernel command line for the IGVM CommandLine parameter.
    #[arg(long)]
    pub cmdline: Option<String>,

    /// Destination of the COM1 console: stdio, file:PATH or none.
    #[arg(long, default_value = "stdio", value_parser = serial_destination)]
    pub serial: SerialConfig,

    /// Destination of the debug console on port 0x402: log (info-level log lines with target
    /// guest-debugcon, shown with -v), file:PATH or none.
    #[arg(long, default_value = "log", value_parser = debugcon_destination)]
    pub debugcon: DebugconConfig,

    /// Treat a CoRIM that does not decode, or whose reference value disagrees with the predicted
    /// measurement, as an error instead of a warning.
    #[arg(long)]
    pub strict_corim: bool,

    /// Platform manufacturer string of the SP800-155 event.
    #[arg(long, default_value = "igvmm")]
    pub event_manufacturer: String,

    /// Platform model string of the SP800-155 event.
    #[arg(long, default_value = "igvmm-kvm")]
    pub event_model: String,

    /// Platform version string of the SP800-155 event.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    pub event_version: String,

    /// SEV-SNP: treat a CPUID page that the firmware corrects as an error instead of retrying.
    #[arg(long)]
    pub strict_cpuid: bool,

    /// SEV-SNP: 32 bytes of HOST_DATA for the attestation report, as 64 hex digits.
    #[arg(long, value_parser = hex_bytes::<32>)]
    pub host_data: Option<[u8; 32]>,

    /// TDX: MRCONFIGID, 48 bytes as 96 hex digits.
    #[arg(long, value_parser = hex_bytes::<48>)]
    pub mrconfigid: Option<[u8; 48]>,

    /// TDX: MROWNER, 48 bytes as 96 hex digits.
    #[arg(long, value_parser = hex_bytes::<48>)]
    pub mrowner: Option<[u8; 48]>,

    /// TDX: MROWNERCONFIG, 48 bytes as 96 hex digits.
    #[arg(long, value_parser = hex_bytes::<48>)]
    pub mrownerconfig: Option<[u8; 48]>,

    /// TDX: enable the DEBUG attribute (off by default; a debug TD has no confidentiality).
    #[arg(long)]
    pub tdx_debug: bool,

    /// TDX: path of a Quote Generation Service socket for GetQuote. Forwarding is not
    /// implemented yet, so a TDX launch with this option fails, and without it every GetQuote
    /// gets the "unsupported" status.
    #[arg(long)]
    pub quote_socket: Option<PathBuf>,
}

/// Arguments of `igvmm inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The IGVM file.
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `igvmm measure`.
#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// The IGVM file.
    pub file: PathBuf,
    /// The platform whose measurement to predict.
    #[arg(long, value_enum)]
    pub platform: MeasuredPlatformArg,
    /// Number of virtual CPUs the guest will be launched with, 1 to 254 (SEV-SNP measures one
    /// VMSA per vCPU).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=254))]
    pub cpus: u32,
    /// Print JSON with the platform, vCPU count, pages measured and time taken.
    #[arg(long)]
    pub json: bool,
    /// Compute the digest that the file describes, for any host, instead of the digest of a KVM
    /// launch by igvmm.
    #[arg(long)]
    pub file_digest: bool,
    /// SEV-SNP with --cpus above 1: CPUID leaf 1 EAX (the processor signature, hexadecimal) of
    /// the host that will run the guest. KVM puts it in RDX of every vCPU that starts at reset,
    /// so it is part of those vCPUs' VMSAs. Default: this machine's CPUID leaf 1 EAX.
    #[arg(long, value_parser = parse_cpuid_signature)]
    pub cpuid_signature: Option<u32>,
}

/// Parses a processor signature such as `0xA00F11` or `a00f11`.
fn parse_cpuid_signature(text: &str) -> Result<u32, String> {
    let digits = text
        .trim()
        .trim_start_matches("0x")
        .trim_start_matches("0X");
    u32::from_str_radix(digits, 16)
        .map_err(|error| format!("{text:?} is not a 32-bit hexadecimal number: {error}"))
}

/// Arguments of `igvmm pack`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("source").required(true).multiple(false))]
pub struct PackArgs {
    /// A PC firmware image (for example SeaBIOS) to place below 4 GiB.
    #[arg(long, group = "source")]
    pub firmware: Option<PathBuf>,
    /// Write the built-in demo guest.
    #[arg(long, group = "source")]
    pub demo: bool,
    /// A Linux kernel (bzImage or ELF vmlinux).
    #[arg(long, group = "source")]
    pub kernel: Option<PathBuf>,
    /// An initrd for --kernel.
    #[arg(long, requires = "kernel", conflicts_with_all = ["demo", "firmware"])]
    pub initrd: Option<PathBuf>,
    /// Default kernel command line for --kernel; `igvmm run --cmdline` overrides it.
    #[arg(long, requires = "kernel", conflicts_with_all = ["demo", "firmware"])]
    pub cmdline: Option<String>,
    /// Platforms the file declares, comma-separated. Only native is written yet: sev-snp and
    /// tdx are rejected with the reason.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "native")]
    pub platform: Vec<FilePlatformArg>,
    /// Output IGVM file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// A CoRIM document to embed.
    #[arg(long)]
    pub corim: Option<PathBuf>,
    /// The COSE_Sign1 signature of --corim.
    #[arg(long, requires = "corim")]
    pub corim_signature: Option<PathBuf>,
    /// The platform --corim applies to. Default: the image's only platform, native for every
    /// image `pack` writes.
    #[arg(long, value_enum, requires = "corim")]
    pub corim_platform: Option<FilePlatformArg>,
    /// Generate a launch-measurement CoRIM for each measurable platform (sev-snp, tdx), with
    /// igvmm's predicted measurement of a KVM launch with one vCPU as the reference value. The
    /// images `pack` writes today are native only, so this fails with the reason.
    #[arg(long, conflicts_with = "corim")]
    pub corim_auto: bool,
    /// The security version number that the generated CoRIMs endorse.
    #[arg(long, default_value_t = 0, requires = "corim_auto")]
    pub corim_svn: u64,
}

/// `igvmm corim` subcommands.
#[derive(Debug, Subcommand)]
pub enum CorimCommand {
    /// Write the CoRIM document of one platform to a file. When the IGVM file also has the
    /// document's signature, write it to the same path with `.cose` appended.
    Extract {
        /// The IGVM file.
        file: PathBuf,
        /// The platform whose CoRIM to extract.
        #[arg(long, value_enum)]
        platform: FilePlatformArg,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Add or replace the CoRIM headers of an IGVM file, leaving every other header untouched.
    Add {
        /// The input IGVM file.
        input: PathBuf,
        /// The platform the CoRIM applies to.
        #[arg(long, value_enum)]
        platform: FilePlatformArg,
        /// The CoRIM document.
        #[arg(long)]
        document: PathBuf,
        /// Its COSE_Sign1 signature.
        #[arg(long)]
        signature: Option<PathBuf>,
        /// Output IGVM file.
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// Parses and checks `--memory`. Clap's error line already names the option and the value.
fn memory_size(text: &str) -> Result<u64, String> {
    let bytes = memory::parse_size(text).map_err(|error| match error {
        MemoryError::InvalidSize(_) => {
            "expected a number of bytes with an optional K, M, G or T suffix, for example 512M"
                .to_string()
        }
        other => other.to_string(),
    })?;
    // The alignment and minimum checks. The host's limits are checked at launch.
    memory::MemoryLayout::new(bytes).map_err(|error| error.to_string())?;
    Ok(bytes)
}

/// Parses `--serial`.
fn serial_destination(text: &str) -> Result<SerialConfig, String> {
    SerialConfig::parse(text).map_err(expected_form)
}

/// Parses `--debugcon`.
fn debugcon_destination(text: &str) -> Result<DebugconConfig, String> {
    DebugconConfig::parse(text).map_err(expected_form)
}

/// Returns the accepted forms of a console option, for clap's error line.
fn expected_form(error: ConsoleError) -> String {
    let ConsoleError::InvalidOption { expected, .. } = error;
    format!("expected {expected}")
}

/// Parses a hexadecimal option of `N` bytes.
fn hex_bytes<const N: usize>(text: &str) -> Result<[u8; N], String> {
    crate::coco::parse_hex::<N>("value", text).map_err(|error| match error {
        crate::coco::CocoError::InvalidOption { reason, .. } => reason,
        other => other.to_string(),
    })
}
