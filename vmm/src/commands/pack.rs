//! The `igvmm pack` subcommand: write an IGVM file around a firmware image or the demo guest,
//! optionally with a CoRIM.

use std::path::Path;
use std::process::ExitCode;

use igvm::IgvmFile;
use igvm_loader::builder;
use igvm_loader::corim;
use igvm_loader::plan::Platform;

use crate::cli::{CorimPlatformArg, PackArgs};
use crate::commands::write_stdout;
use crate::demo;

/// Runs the subcommand.
pub fn main(args: PackArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if args.initrd.is_some() && args.kernel.is_none() {
        return Err("--initrd applies to --kernel only".into());
    }
    let mut image = if args.demo {
        demo::image()?
    } else if let Some(firmware) = &args.firmware {
        builder::firmware_image(&read_input(firmware)?)?
    } else if let Some(kernel) = &args.kernel {
        let initrd = match &args.initrd {
            Some(path) => Some(read_input(path)?),
            None => None,
        };
        igvm_loader::linux::pack_kernel(&igvm_loader::linux::KernelPackOptions {
            kernel: read_input(kernel)?,
            initrd,
            command_line: args.cmdline.clone().unwrap_or_default(),
        })?
    } else {
        return Err("pack needs a source: --firmware FILE, --kernel FILE or --demo".into());
    };
    if args.cmdline.is_some() && args.kernel.is_none() {
        log::warn!("--cmdline applies to --kernel and is ignored");
    }

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
    write_stdout(&format!(
        "wrote {} ({} bytes)\n",
        args.output.display(),
        image.len()
    ))?;
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
) -> Result<Vec<u8>, corim::CorimError> {
    if let Err(error) = corim::inspect(document, signature) {
        log::warn!("embedding a CoRIM that does not decode: {error}");
    }
    let parsed = IgvmFile::new_from_binary(image, None)
        .map_err(|error| corim::CorimError::InvalidFile(error.to_string()))?;
    let mask = corim::platform_mask(&parsed, platform)?;
    corim::add_or_replace(image, mask, document, signature)
}

fn read_input(path: &Path) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    if path.is_dir() {
        return Err(format!("{} is a directory, not a file", path.display()).into());
    }
    std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()).into())
}

/// Returns the platform a `--corim` applies to: the one named, or the file's only platform.
fn corim_platform(
    image: &[u8],
    named: Option<CorimPlatformArg>,
) -> Result<Platform, Box<dyn std::error::Error>> {
    if let Some(named) = named {
        return Ok(match named {
            CorimPlatformArg::Native => Platform::Native,
            CorimPlatformArg::SevSnp => Platform::SevSnp,
            CorimPlatformArg::Tdx => Platform::Tdx,
        });
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
