//! The `igvmm run` subcommand.
//!
//! It builds a [`VmConfig`] from the arguments, runs the guest, prints the stop reason as one
//! line on stderr (followed by the registers and page walk after a crash), and exits with the
//! status that [`crate::exit`] lists. `--demo` exits 0 when the demo guest reports success
//! through the debug-exit port. The same image run from a file exits 1 there, as QEMU would.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use crate::cli::{PlatformArg, RunArgs};
use crate::config::{CocoOptions, EventStrings, GuestImage, MappedFile, PlatformRequest, VmConfig};
use crate::console::SerialConfig;

use crate::commands::write_stderr;
use crate::demo::{self, DEMO_SUCCESS_VALUE};
use crate::error::VmmError;
use crate::exit::StopReason;
use crate::runner::run_vm;

/// Runs the subcommand.
pub fn main(args: RunArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    // A named confidential platform never falls back to native: `run_vm` fails with the probe's
    // list of what this host lacks.
    let platform = match args.platform {
        PlatformArg::Auto => PlatformRequest::Auto,
        PlatformArg::Native => PlatformRequest::Native,
        PlatformArg::SevSnp => PlatformRequest::SevSnp,
        PlatformArg::Tdx => PlatformRequest::Tdx,
    };
    let coco = coco_options(&args);

    let image = if args.demo {
        GuestImage::Igvm(demo::image()?)
    } else {
        match &args.file {
            Some(path) => GuestImage::IgvmFile(map_image(path)?),
            None => return Err("no IGVM file given; pass a file or --demo".into()),
        }
    };

    let mut config = VmConfig::new(image);
    config.memory_bytes = args.memory;
    config.cpus = args.cpus;
    config.platform = platform;
    config.cmdline = args.cmdline.clone().unwrap_or_default();
    config.serial = args.serial.clone();
    config.debugcon = args.debugcon.clone();
    config.event = EventStrings {
        manufacturer: args.event_manufacturer.clone(),
        model: args.event_model.clone(),
        version: args.event_version.clone(),
    };
    config.strict_corim = args.strict_corim;
    config.coco = coco;
    config.handle_signals = true;

    let file_name = args.file.as_ref().map(|path| path.display().to_string());
    let reason = match run_vm(config) {
        Ok(reason) => reason,
        Err(error @ (VmmError::Load(_) | VmmError::ImagePage { .. })) => match file_name {
            Some(name) => return Err(format!("{name}: {error}").into()),
            None => return Err(error.into()),
        },
        Err(error) => return Err(error.into()),
    };
    let demo_succeeded = args.demo
        && reason
            == StopReason::DebugExit {
                value: u32::from(DEMO_SUCCESS_VALUE),
            };
    if demo_succeeded {
        write_stderr(
            "igvmm: the demo guest finished (debug-exit value 0, reported as exit status 0)\n",
        );
        return Ok(ExitCode::SUCCESS);
    }
    // On a terminal the guest's last line may lack its newline, so the report starts a new line.
    let console_on_terminal = matches!(args.serial, SerialConfig::Stdio)
        && std::io::stdout().is_terminal()
        && std::io::stderr().is_terminal();
    let line_start = if console_on_terminal { "\r\n" } else { "" };
    write_stderr(&format!("{line_start}igvmm: {reason}\n"));
    if let Some(report) = reason.crash_report() {
        write_stderr(&report.to_string());
    }
    Ok(ExitCode::from(reason.exit_status()))
}

/// Reads an IGVM file, with errors that name the path.
pub fn read_image(path: &Path) -> Result<Vec<u8>, VmmError> {
    if path.is_dir() {
        return Err(VmmError::ImageIsDirectory(path.to_path_buf()));
    }
    crate::config::read_input_file(path).map_err(|source| VmmError::ReadImage {
        path: path.to_path_buf(),
        source,
    })
}

/// Maps an IGVM file read-only, with errors that name the path. The file must not be modified
/// while the VM runs (see [`MappedFile`]).
pub fn map_image(path: &Path) -> Result<MappedFile, VmmError> {
    if path.is_dir() {
        return Err(VmmError::ImageIsDirectory(path.to_path_buf()));
    }
    MappedFile::open(path).map_err(|source| VmmError::ReadImage {
        path: path.to_path_buf(),
        source,
    })
}

/// Returns the SEV-SNP and TDX options.
fn coco_options(args: &RunArgs) -> CocoOptions {
    CocoOptions {
        host_data: args.host_data,
        strict_cpuid: args.strict_cpuid,
        mrconfigid: args.mrconfigid,
        mrowner: args.mrowner,
        mrownerconfig: args.mrownerconfig,
        tdx_debug: args.tdx_debug,
        quote_socket: args.quote_socket.clone(),
    }
}
