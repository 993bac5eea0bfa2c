//! The `igvmm corim` subcommand.

use std::process::ExitCode;

use crate::cli::CorimCommand;

/// Runs the subcommand.
pub fn main(_command: CorimCommand) -> Result<ExitCode, Box<dyn std::error::Error>> {
    Err("not implemented yet".into())
}
