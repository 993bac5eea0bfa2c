//! The `igvmm run` subcommand.
//!
//! It builds a [`VmConfig`] from the arguments, runs the guest, prints the stop reason as one
//! line on stderr (followed by the registers and page walk after a crash), and exits with the
//! status that [`crate::exit`] lists. `--demo` exits 0 when the demo guest reports success
//! through the debug-exit port. The same image run from a file exits 1 there, as QEMU would.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::{PlatformArg, RunArgs};
use crate::config::{EventStrings, GuestImage, PlatformRequest, VmConfig};
use crate::console::{DebugconConfig, SerialConfig};
use crate::demo::{self, DEMO_SUCCESS_STATUS};
use crate::error::VmmError;
use crate::exit::StopReason;
use crate::memory;
use crate::runner::run_vm;

/// Runs the subcommand.
pub fn main(args: RunArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let platform = match args.platform {
        PlatformArg::Auto => PlatformRequest::Auto,
        PlatformArg::Native => PlatformRequest::Native,
        // A named confidential platform never falls back to native. The probes name what
        // this host lacks.
        PlatformArg::SevSnp => {
            crate::coco::probe_snp()?;
            return Err(VmmError::PlatformUnavailable("sev-snp").into());
        }
        PlatformArg::Tdx => {
            crate::coco::probe_tdx()?;
            return Err(VmmError::PlatformUnavailable("tdx").into());
        }
    };
    warn_unused_coco_options(&args);

    let memory_bytes = memory::parse_size(&args.memory)?;
    let serial = SerialConfig::parse(&args.serial)?;
    let debugcon = DebugconConfig::parse(&args.debugcon)?;
    let image = if args.demo {
        demo::image()?
    } else {
        match &args.file {
            Some(path) => read_image(path)?,
            None => return Err("no IGVM file given; pass a file or --demo".into()),
        }
    };

    let mut config = VmConfig::new(GuestImage::Igvm(image));
    config.memory_bytes = memory_bytes;
    config.cpus = args.cpus;
    config.platform = platform;
    config.cmdline = args.cmdline.clone().unwrap_or_default();
    config.serial = serial;
    config.debugcon = debugcon;
    config.event = EventStrings {
        manufacturer: args.event_manufacturer.clone(),
        model: args.event_model.clone(),
        version: args.event_version.clone(),
    };
    config.strict_corim = args.strict_corim;
    config.handle_signals = true;

    let reason = run_vm(config)?;
    eprintln!("igvmm: {reason}");
    if let Some(report) = reason.crash_report() {
        eprint!("{report}");
    }
    let demo_succeeded = args.demo
        && reason
            == StopReason::DebugExit {
                status: DEMO_SUCCESS_STATUS,
            };
    let status = if demo_succeeded {
        0
    } else {
        reason.exit_status()
    };
    Ok(ExitCode::from(status))
}

/// Reads an IGVM file, with errors that name the path.
pub fn read_image(path: &Path) -> Result<Vec<u8>, VmmError> {
    if path.is_dir() {
        return Err(VmmError::ImageIsDirectory(path.to_path_buf()));
    }
    std::fs::read(path).map_err(|source| VmmError::ReadImage {
        path: path.to_path_buf(),
        source,
    })
}

/// Warns about options that only the confidential backends read.
fn warn_unused_coco_options(args: &RunArgs) {
    let unused = [
        ("--strict-cpuid", args.strict_cpuid),
        ("--host-data", args.host_data.is_some()),
        ("--mrconfigid", args.mrconfigid.is_some()),
        ("--mrowner", args.mrowner.is_some()),
        ("--mrownerconfig", args.mrownerconfig.is_some()),
        ("--tdx-debug", args.tdx_debug),
        ("--quote-socket", args.quote_socket.is_some()),
    ];
    for (option, given) in unused {
        if given {
            log::warn!(
                "{option} applies to sev-snp or tdx launches and is ignored for a native launch"
            );
        }
    }
}
