//! The `igvmm corim` subcommands: extract a platform's CoRIM document, or add or replace it.
//!
//! `extract` writes the document to the output file and, when the file also has a signature, the
//! COSE_Sign1 to the output path with `.cose` appended. `add` checks that the document is a
//! tagged unsigned CoRIM (CBOR tag 501) and the signature a COSE_Sign1 (CBOR tag 18), then
//! rewrites only the CoRIM headers of that platform ([`igvm_loader::corim::add_or_replace`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use igvm_loader::corim::{self, ReferenceMatch};
use igvm_loader::plan::Platform;

use crate::cli::{CorimCommand, FilePlatformArg};
use crate::commands::measure::{host_cpuid_signature, measure_file, MeasureOptions};

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
    /// The CoRIM library rejected the input.
    #[error(transparent)]
    Corim(#[from] corim::CorimError),
    /// The file has no CoRIM for the platform.
    #[error("the file has no CoRIM document for {0}")]
    NoCorim(Platform),
}

fn platform_of(arg: FilePlatformArg) -> Platform {
    match arg {
        FilePlatformArg::Native => Platform::Native,
        FilePlatformArg::SevSnp => Platform::SevSnp,
        FilePlatformArg::Tdx => Platform::Tdx,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CorimCommandError> {
    std::fs::read(path).map_err(|source| CorimCommandError::Io {
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

/// Writes the CoRIM of `platform` from `file` to `output` (and its signature next to it).
/// Returns whether a signature was written.
pub fn extract(file: &[u8], platform: Platform, output: &Path) -> Result<bool, CorimCommandError> {
    let (document, signature) =
        corim::extract(file, platform)?.ok_or(CorimCommandError::NoCorim(platform))?;
    write(output, &document)?;
    if let Some(signature) = signature {
        write(&signature_path(output), &signature)?;
        return Ok(true);
    }
    Ok(false)
}

/// Checks the document and signature, logs warnings and the comparison with igvmm's predicted
/// measurement, and returns the file with the CoRIM headers of `platform` replaced.
pub fn add(
    file: &[u8],
    platform: Platform,
    document: &[u8],
    signature: Option<&[u8]>,
) -> Result<Vec<u8>, CorimCommandError> {
    let report = corim::inspect(document, signature)?;
    for warning in &report.warnings {
        log::warn!("{warning}");
    }
    if matches!(platform, Platform::SevSnp | Platform::Tdx) {
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
    let parsed = igvm::IgvmFile::new_from_binary(file, None)
        .map_err(|error| corim::CorimError::InvalidFile(error.to_string()))?;
    let mask = corim::platform_mask(&parsed, platform)?;
    Ok(corim::add_or_replace(file, mask, document, signature)?)
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
            let signed = extract(&bytes, platform_of(platform), &output)?;
            if signed {
                eprintln!(
                    "igvmm: wrote the CoRIM signature to {}",
                    signature_path(&output).display()
                );
            }
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
            let rewritten = add(
                &bytes,
                platform_of(platform),
                &document,
                signature.as_deref(),
            )?;
            write(&output, &rewritten)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
