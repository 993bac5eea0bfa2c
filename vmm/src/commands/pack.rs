//! The `igvmm pack` subcommand.

use std::process::ExitCode;

use crate::cli::PackArgs;

/// Runs the subcommand.
pub fn main(_args: PackArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    Err("not implemented yet".into())
}
