//! The `igvmm measure` subcommand.

use std::process::ExitCode;

use crate::cli::MeasureArgs;

/// Runs the subcommand.
pub fn main(_args: MeasureArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    Err("not implemented yet".into())
}
