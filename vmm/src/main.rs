//! The `igvmm` binary.

use std::process::ExitCode;

use clap::Parser;

use vmm::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The guest's debug console (port 0x402) logs at info level, so -v shows it.
    let default_level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format_timestamp(None)
        .init();

    let result = match cli.command {
        Command::Run(args) => vmm::commands::run::main(args),
        Command::Inspect(args) => vmm::commands::inspect::main(args),
        Command::Measure(args) => vmm::commands::measure::main(args),
        Command::Pack(args) => vmm::commands::pack::main(args),
        Command::Corim(command) => vmm::commands::corim::main(command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            vmm::commands::write_stderr(&format!("igvmm: {error}\n"));
            ExitCode::FAILURE
        }
    }
}
