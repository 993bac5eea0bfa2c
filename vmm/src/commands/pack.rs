//! The `igvmm pack` subcommand: write an IGVM file around a firmware image or the demo guest,
//! optionally with a CoRIM.

use std::path::Path;
use std::process::ExitCode;

use igvm::IgvmFile;
use igvm_loader::builder;
use igvm_loader::corim;
use igvm_loader::plan::Platform;

use crate::cli::{CorimPlatformArg, PackArgs};
use crate::commands::run::read_image;
use crate::demo;

/// Runs the subcommand.
pub fn main(args: PackArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut image = if args.demo {
        demo::image()?
    } else if let Some(firmware) = &args.firmware {
        builder::firmware_image(&read_input(firmware)?)?
    } else if args.kernel.is_some() {
        return Err("pack --kernel is not supported yet; use --firmware or --demo".into());
    } else {
        return Err("pack needs a source: --firmware FILE, --kernel FILE or --demo".into());
    };
    if args.cmdline.is_some() {
        log::warn!("--cmdline applies to --kernel and is ignored");
    }

    if let Some(document_path) = &args.corim {
        let document = read_input(document_path)?;
        let signature = match &args.corim_signature {
            Some(path) => Some(read_input(path)?),
            None => None,
        };
        let platform = corim_platform(&image, args.corim_platform)?;
        let mask = corim::platform_mask(&IgvmFile::new_from_binary(&image, None)?, platform)?;
        image = corim::add_or_replace(&image, mask, &document, signature.as_deref())?;
    }
    if args.corim_auto {
        image = add_launch_measurement_corims(image)?;
    }

    std::fs::write(&args.output, &image)
        .map_err(|error| format!("cannot write {}: {error}", args.output.display()))?;
    println!("wrote {} ({} bytes)", args.output.display(), image.len());
    Ok(ExitCode::SUCCESS)
}

fn read_input(path: &Path) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    Ok(read_image(path)?)
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

/// Adds a launch-measurement CoRIM for every SEV-SNP and TDX platform of the image.
fn add_launch_measurement_corims(
    mut image: Vec<u8>,
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let measurable: Vec<Platform> = igvm_loader::parse(&image)?
        .platforms()
        .iter()
        .filter_map(|header| header.platform)
        .filter(|platform| matches!(platform, Platform::SevSnp | Platform::Tdx))
        .collect();
    if measurable.is_empty() {
        return Err(
            "--corim-auto needs a platform with a launch measurement (sev-snp or tdx); this image has none"
                .into(),
        );
    }
    for platform in measurable {
        let document = corim::launch_measurement_corim(&image, platform, 0, None)?;
        let mask = corim::platform_mask(&IgvmFile::new_from_binary(&image, None)?, platform)?;
        image = corim::add_or_replace(&image, mask, &document, None)?;
    }
    Ok(image)
}
