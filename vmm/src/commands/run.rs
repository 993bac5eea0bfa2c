//! The `igvmm run` subcommand.

use std::process::ExitCode;

use crate::cli::RunArgs;

/// Runs the subcommand.
pub fn main(_args: RunArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    Err("not implemented yet".into())
}
