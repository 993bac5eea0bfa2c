//! The `igvmm corim` subcommands: extract a platform's CoRIM document, or add or replace it.
//!
//! `extract` writes the document to the output file and, when the file also has a signature, the
//! COSE_Sign1 to the output path with `.cose` appended. `add` checks that the document is a
//! tagged unsigned CoRIM (CBOR tag 501) and the signature a COSE_Sign1 (CBOR tag 18), and warns
//! when they are not. It then rewrites only the CoRIM headers of that platform
//! ([`igvm_loader::corim::add_or_replace`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use igvm_loader::corim::{self, ReferenceMatch};
use igvm_loader::plan::Platform;

use crate::cli::CorimCommand;
use crate::commands::measure::{host_cpuid_signature, measure_file, MeasureOptions};
use crate::commands::{write_stdout, written_line};

/// A reason a `corim` subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CorimCommandError {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// `cannot read` or `cannot write`.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The input is not a valid IGVM file.
    #[error(transparent)]
    File(#[from] igvm_loader::LoadError),
    /// The CoRIM library rejected the input.
    #[error(transparent)]
    Corim(#[from] corim::CorimError),
    /// Standard output could not be written.
    #[error(transparent)]
    Stdout(std::io::Error),
    /// The file has no CoRIM for the platform.
    #[error("the file has no CoRIM document for {0}")]
    NoCorim(Platform),
}

fn read(path: &Path) -> Result<Vec<u8>, CorimCommandError> {
    crate::config::read_input_file(path).map_err(|source| CorimCommandError::Io {
        action: "cannot read",
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), CorimCommandError> {
    std::fs::write(path, bytes).map_err(|source| CorimCommandError::Io {
        action: "cannot write",
        path: path.to_path_buf(),
        source,
    })
}

/// Returns the path `output` with `.cose` appended, where `extract` puts the signature.
pub fn signature_path(output: &Path) -> PathBuf {
    let mut path = output.as_os_str().to_os_string();
    path.push(".cose");
    PathBuf::from(path)
}

/// Returns the compatibility mask of `platform` in `file`. The loader parses the file here,
/// because its errors name the wrong header and field and the CoRIM library's parse does not.
pub fn platform_mask(file: &[u8], platform: Platform) -> Result<u32, CorimCommandError> {
    let parsed = igvm_loader::parse(file)?;
    let mask = parsed
        .platforms()
        .iter()
        .find(|header| header.platform == Some(platform))
        .map(|header| header.compatibility_mask);
    Ok(mask.ok_or(corim::CorimError::NoPlatform { platform })?)
}

/// Writes the CoRIM of `platform` from `file` to `output` (and its signature next to it).
/// Returns each file written with its size.
pub fn extract(
    file: &[u8],
    platform: Platform,
    output: &Path,
) -> Result<Vec<(PathBuf, usize)>, CorimCommandError> {
    // The mask is not needed, but the call reports a damaged file or a missing platform.
    platform_mask(file, platform)?;
    let (document, signature) =
        corim::extract(file, platform)?.ok_or(CorimCommandError::NoCorim(platform))?;
    write(output, &document)?;
    let mut written = vec![(output.to_path_buf(), document.len())];
    if let Some(signature) = signature {
        let path = signature_path(output);
        write(&path, &signature)?;
        written.push((path, signature.len()));
    }
    Ok(written)
}

/// Checks the document and signature, logs warnings and the comparison with igvmm's predicted
/// measurement, and returns the file with the CoRIM headers of `platform` replaced.
///
/// A document or signature that does not decode is added with a warning, as `pack --corim`
/// does: the CoRIM never reaches guest memory, and `igvmm run --strict-corim` rejects it at
/// launch.
pub fn add(
    file: &[u8],
    platform: Platform,
    document: &[u8],
    signature: Option<&[u8]>,
) -> Result<Vec<u8>, CorimCommandError> {
    let mask = platform_mask(file, platform)?;
    let rewritten = corim::add_or_replace(file, mask, document, signature)?;
    match corim::inspect(document, signature) {
        Ok(report) => {
            for warning in &report.warnings {
                log::warn!("{warning}");
            }
            if matches!(platform, Platform::SevSnp | Platform::Tdx) {
                compare_with_prediction(file, platform, &report);
            }
        }
        Err(error) => log::warn!("adding a CoRIM that does not decode: {error}"),
    }
    Ok(rewritten)
}

/// Logs how the CoRIM's launch-measurement reference value compares with igvmm's predicted
/// measurement of a KVM launch with one vCPU.
fn compare_with_prediction(file: &[u8], platform: Platform, report: &corim::CorimReport) {
    let options = MeasureOptions {
        vcpus: 1,
        file_digest: false,
        cpuid_signature: host_cpuid_signature(),
    };
    match measure_file(file, platform, &options) {
        Ok(output) => match report.compare(platform, &output.measurement.digest) {
            ReferenceMatch::Match => log::info!("{}", ReferenceMatch::Match),
            other => log::warn!("{other} ({})", output.measurement.digest_hex()),
        },
        Err(error) => log::warn!("the predicted measurement is unavailable: {error}"),
    }
}

/// Puts the input file's path in front of an error about its contents. Errors that already
/// name a path (reading or writing a file) stay as they are.
fn name_input(path: &Path, error: CorimCommandError) -> Box<dyn std::error::Error> {
    match error {
        CorimCommandError::Io { .. } | CorimCommandError::Stdout(_) => error.into(),
        other => format!("{}: {other}", path.display()).into(),
    }
}

/// Runs the subcommand.
pub fn main(command: CorimCommand) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match command {
        CorimCommand::Extract {
            file,
            platform,
            output,
        } => {
            let bytes = read(&file)?;
            let written = extract(&bytes, platform.into(), &output)
                .map_err(|error| name_input(&file, error))?;
            let report: String = written
                .iter()
                .map(|(path, len)| written_line(path, *len))
                .collect();
            write_stdout(&report).map_err(CorimCommandError::Stdout)?;
        }
        CorimCommand::Add {
            input,
            platform,
            document,
            signature,
            output,
        } => {
            let bytes = read(&input)?;
            let document = read(&document)?;
            let signature = signature.as_deref().map(read).transpose()?;
            let rewritten = add(&bytes, platform.into(), &document, signature.as_deref())
                .map_err(|error| name_input(&input, error))?;
            write(&output, &rewritten)?;
            write_stdout(&written_line(&output, rewritten.len()))
                .map_err(CorimCommandError::Stdout)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
