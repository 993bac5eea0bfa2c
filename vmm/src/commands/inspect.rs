//! The `igvmm inspect` subcommand.

use std::process::ExitCode;

use crate::cli::InspectArgs;

/// Runs the subcommand.
pub fn main(_args: InspectArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    Err("not implemented yet".into())
}
