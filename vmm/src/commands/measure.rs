//! The `igvmm measure` subcommand: the launch measurement a platform will report for a file.
//!
//! The file is loaded into a plan exactly as `igvmm run` loads it, with a host description that
//! covers every page of the file ([`igvm_loader::measure::measurement_host`]); the platform's
//! measurement model then replays the plan (see [`igvm_loader::measure`]). For SEV-SNP the
//! default is the digest of a KVM launch by igvmm with `--cpus` vCPUs; `--file-digest` gives the
//! digest the file describes, as igvm 0.5 and COCONUT-SVSM's igvmmeasure compute it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use igvm_loader::measure::{self, MeasureError, Measurement, SnpMode};
use igvm_loader::plan::Platform;
use serde_json::json;

use crate::cli::{MeasureArgs, MeasuredPlatformArg};
use crate::commands::run::map_image;
use crate::commands::write_stdout;

/// A reason `igvmm measure` cannot produce a digest.
#[derive(Debug, thiserror::Error)]
pub enum MeasureCommandError {
    /// The loader rejected the file for this platform.
    #[error("cannot load the file for {platform}: {source}")]
    Load {
        /// The platform.
        platform: Platform,
        /// The loader's error.
        #[source]
        source: igvm_loader::LoadError,
    },
    /// The model rejected the plan.
    #[error("{source}{hint}")]
    Measure {
        /// The model's error.
        #[source]
        source: MeasureError,
        /// A suggestion for the user, or empty.
        hint: &'static str,
    },
}

/// How to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasureOptions {
    /// Number of vCPUs of the launch.
    pub vcpus: u32,
    /// Measure the file as written instead of a KVM launch (SEV-SNP only).
    pub file_digest: bool,
    /// CPUID leaf 1 EAX of vCPUs without a VP context (SEV-SNP KVM launches only).
    pub cpuid_signature: u32,
}

/// A measurement with the time it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasureOutput {
    /// The measurement.
    pub measurement: Measurement,
    /// Time spent loading the file into a plan.
    pub load_time: Duration,
    /// Time spent replaying the plan.
    pub measure_time: Duration,
}

impl MeasureOutput {
    /// Returns the page data rate of the replay in MiB/s (4 KiB per measured page).
    pub fn mib_per_second(&self) -> f64 {
        let mib = self.measurement.pages as f64 * 4096.0 / (1024.0 * 1024.0);
        let seconds = self.measure_time.as_secs_f64();
        if seconds > 0.0 {
            mib / seconds
        } else {
            0.0
        }
    }
}

/// Returns CPUID leaf 1 EAX of this machine (0 on other architectures).
pub fn host_cpuid_signature() -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 1 exists on every x86-64 processor.
        std::arch::x86_64::__cpuid(1).eax
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// Predicts the measurement of `file` on `platform`.
pub fn measure_file(
    file: &[u8],
    platform: Platform,
    options: &MeasureOptions,
) -> Result<MeasureOutput, MeasureCommandError> {
    let start = Instant::now();
    let plan = measure::plan_for_measurement(file, platform, options.vcpus.max(1))
        .map_err(|source| MeasureCommandError::Load { platform, source })?;
    let load_time = start.elapsed();

    let start = Instant::now();
    let result = match platform {
        Platform::Tdx => measure::measure_tdx(&plan),
        _ if options.file_digest => measure::measure_snp(&plan, SnpMode::FileDigest),
        _ => measure::measure_snp(
            &plan,
            SnpMode::KvmLaunch {
                vcpus: options.vcpus,
                cpuid_1_eax: options.cpuid_signature,
            },
        ),
    };
    let measurement = result.map_err(|source| {
        let hint = match &source {
            MeasureError::Vmsa { .. } => {
                "; --file-digest gives the digest the file describes for other hosts"
            }
            _ => "",
        };
        MeasureCommandError::Measure { source, hint }
    })?;
    Ok(MeasureOutput {
        measurement,
        load_time,
        measure_time: start.elapsed(),
    })
}

/// The measurement of one platform of a file, for `igvmm inspect`.
#[derive(Debug)]
pub struct PlatformDigest {
    /// The platform.
    pub platform: Platform,
    /// The kind of measurement: `kvm-launch` (1 vCPU), `file` or `mrtd`.
    pub kind: &'static str,
    /// The measurement or why there is none.
    pub result: Result<Measurement, MeasureCommandError>,
}

/// Returns the predicted measurements of every measurable platform the file carries: for
/// SEV-SNP the digest of a one-vCPU KVM launch and the file digest, for TDX the MRTD.
pub fn platform_digests(file: &[u8]) -> Vec<PlatformDigest> {
    let platforms: Vec<Platform> = match igvm_loader::parse(file) {
        Ok(parsed) => parsed
            .platforms()
            .iter()
            .filter_map(|header| header.platform)
            .filter(|platform| matches!(platform, Platform::SevSnp | Platform::Tdx))
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut digests = Vec::new();
    for platform in platforms {
        let options = MeasureOptions {
            vcpus: 1,
            file_digest: false,
            cpuid_signature: host_cpuid_signature(),
        };
        if platform == Platform::SevSnp {
            digests.push(PlatformDigest {
                platform,
                kind: "kvm-launch",
                result: measure_file(file, platform, &options).map(|output| output.measurement),
            });
            let file_options = MeasureOptions {
                file_digest: true,
                ..options
            };
            digests.push(PlatformDigest {
                platform,
                kind: "file",
                result: measure_file(file, platform, &file_options)
                    .map(|output| output.measurement),
            });
        } else {
            digests.push(PlatformDigest {
                platform,
                kind: "mrtd",
                result: measure_file(file, platform, &options).map(|output| output.measurement),
            });
        }
    }
    digests
}

/// Runs the subcommand.
pub fn main(args: MeasureArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let file = map_image(&args.file)?;
    let platform = match args.platform {
        MeasuredPlatformArg::SevSnp => Platform::SevSnp,
        MeasuredPlatformArg::Tdx => Platform::Tdx,
    };
    if args.file_digest && platform == Platform::Tdx {
        log::warn!("--file-digest has no effect on TDX: the MRTD does not depend on VP contexts");
    }
    let options = MeasureOptions {
        vcpus: args.cpus,
        file_digest: args.file_digest,
        cpuid_signature: args.cpuid_signature.unwrap_or_else(host_cpuid_signature),
    };
    let output = measure_file(&file, platform, &options)
        .map_err(|error| format!("{}: {error}", args.file.display()))?;
    let measurement = &output.measurement;
    for note in &measurement.notes {
        log::warn!("{note}");
    }
    if args.json {
        let mode = match (platform, args.file_digest) {
            (Platform::Tdx, _) => "mrtd",
            (_, true) => "file",
            (_, false) => "kvm-launch",
        };
        let notes: Vec<String> = measurement.notes.iter().map(ToString::to_string).collect();
        let value = json!({
            "platform": platform.name(),
            "digest": measurement.digest_hex(),
            "mode": mode,
            "vcpus": options.vcpus,
            "pages_measured": measurement.pages,
            "pages_with_contents": measurement.pages_with_contents,
            "vmsas": measurement.vmsas,
            "bytes_hashed": measurement.bytes_hashed,
            "load_seconds": output.load_time.as_secs_f64(),
            "measure_seconds": output.measure_time.as_secs_f64(),
            "mib_per_second": output.mib_per_second(),
            "notes": notes,
        });
        write_stdout(&format!("{}\n", serde_json::to_string_pretty(&value)?))?;
    } else {
        write_stdout(&format!("{}\n", measurement.digest_hex()))?;
    }
    Ok(ExitCode::SUCCESS)
}
