//! The `igvmm pack` subcommand: write an IGVM file around a firmware image or the demo guest,
//! optionally with a CoRIM.

use std::path::Path;
use std::process::ExitCode;

use clap::ValueEnum;

use igvm_loader::builder;
use igvm_loader::corim;
use igvm_loader::plan::Platform;

use crate::cli::{FilePlatformArg, PackArgs};
use crate::commands::corim::CorimCommandError;
use crate::commands::{self, write_stdout, written_line};
use crate::demo;

/// Runs the subcommand.
pub fn main(args: PackArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    check_platforms(&args)?;
    // Clap makes exactly one source present, and --initrd and --cmdline need --kernel.
    let mut image = if args.demo {
        demo::image()?
    } else if let Some(firmware) = &args.firmware {
        builder::firmware_image(&read_input(firmware)?)
            .map_err(|error| format!("{}: {error}", firmware.display()))?
    } else if let Some(kernel) = &args.kernel {
        let initrd = match &args.initrd {
            Some(path) => Some(read_input(path)?),
            None => None,
        };
        igvm_loader::linux::pack_kernel(&igvm_loader::linux::KernelPackOptions {
            kernel: read_input(kernel)?,
            initrd,
            command_line: args.cmdline.clone().unwrap_or_default(),
        })
        .map_err(|error| format!("{}: {error}", kernel.display()))?
    } else {
        return Err("pack needs a source: --firmware FILE, --kernel FILE or --demo".into());
    };

    if let Some(document_path) = &args.corim {
        let document = read_input(document_path)?;
        let signature = match &args.corim_signature {
            Some(path) => Some(read_input(path)?),
            None => None,
        };
        let platform = corim_platform(&image, args.corim_platform)?;
        image = embed_corim(&image, platform, &document, signature.as_deref())?;
    }
    if args.corim_auto {
        image = add_launch_measurement_corims(&image, args.corim_svn)?;
    }

    std::fs::write(&args.output, &image)
        .map_err(|error| format!("cannot write {}: {error}", args.output.display()))?;
    write_stdout(&written_line(&args.output, image.len()))?;
    Ok(ExitCode::SUCCESS)
}

/// Returns `image` with `document` (and `signature`) as the CoRIM of `platform`, replacing the
/// one it has. A document or signature that does not decode is embedded with a warning, because
/// the CoRIM never reaches guest memory and `igvmm run --strict-corim` checks it at launch.
pub fn embed_corim(
    image: &[u8],
    platform: Platform,
    document: &[u8],
    signature: Option<&[u8]>,
) -> Result<Vec<u8>, CorimCommandError> {
    let mask = commands::corim::platform_mask(image, platform)?;
    let embedded = corim::add_or_replace(image, mask, document, signature)?;
    if let Err(error) = corim::inspect(document, signature) {
        log::warn!("embedding a CoRIM that does not decode: {error}");
    }
    Ok(embedded)
}

/// Rejects a `--platform` list that names a platform `pack` cannot write for the chosen source,
/// with the reason. Every source is native-only for now.
fn check_platforms(args: &PackArgs) -> Result<(), String> {
    if args.platform.is_empty() {
        return Err("--platform needs at least one of native, sev-snp, tdx".to_string());
    }
    for platform in &args.platform {
        let reason = match (platform, args.kernel.is_some()) {
            (FilePlatformArg::Native, _) => continue,
            (FilePlatformArg::SevSnp, true) => {
                "pack --kernel cannot write an SEV-SNP file yet: the boot shim reaches COM1 and \
                 fw_cfg by port I/O without a GHCB, does not validate guest memory with PVALIDATE, \
                 and does not pass the CPUID and secrets pages to Linux"
            }
            (FilePlatformArg::Tdx, true) => {
                "pack --kernel cannot write a TDX file yet: the boot shim reaches COM1 and fw_cfg \
                 by port I/O without TDVMCALL, does not accept guest memory, and does not start \
                 the APs through the ACPI multiprocessor wakeup mailbox"
            }
            (FilePlatformArg::SevSnp | FilePlatformArg::Tdx, false) => {
                "pack --firmware and pack --demo write native files only: neither a PC firmware \
                 image such as SeaBIOS nor the demo guest runs as a confidential guest"
            }
        };
        let name = platform
            .to_possible_value()
            .map(|value| value.get_name().to_string())
            .unwrap_or_default();
        return Err(format!("--platform {name}: {reason}"));
    }
    Ok(())
}

fn read_input(path: &Path) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    crate::config::read_input_file(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()).into())
}

/// Returns the platform a `--corim` applies to: the one named, or the file's only platform.
fn corim_platform(
    image: &[u8],
    named: Option<FilePlatformArg>,
) -> Result<Platform, Box<dyn std::error::Error>> {
    if let Some(named) = named {
        return Ok(named.into());
    }
    let platforms: Vec<Platform> = igvm_loader::parse(image)?
        .platforms()
        .iter()
        .filter_map(|header| header.platform)
        .collect();
    match platforms.as_slice() {
        [only] => Ok(*only),
        _ => Err("the image has several platforms; name one with --corim-platform".into()),
    }
}

/// Adds a launch-measurement CoRIM endorsing `svn` for every SEV-SNP and TDX platform of the
/// image, with igvmm's predicted measurement of a KVM launch as the reference value
/// ([`corim::with_launch_corims`]).
pub fn add_launch_measurement_corims(
    image: &[u8],
    svn: u64,
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let measurable = igvm_loader::parse(image)?
        .platforms()
        .iter()
        .filter_map(|header| header.platform)
        .any(|platform| matches!(platform, Platform::SevSnp | Platform::Tdx));
    if !measurable {
        return Err(
            "--corim-auto needs a platform with a launch measurement (sev-snp or tdx); this image has none"
                .into(),
        );
    }
    Ok(corim::with_launch_corims(image, svn)?)
}
