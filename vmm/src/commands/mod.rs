//! One module per `igvmm` subcommand.

pub mod corim;
pub mod inspect;
pub mod measure;
pub mod pack;
pub mod run;

use std::io::Write;

/// Writes `text` to standard output and flushes it. A closed pipe or a full disk is an error
/// that names the output, where `print!` would panic.
pub(crate) fn write_stdout(text: &str) -> Result<(), std::io::Error> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|error| {
            std::io::Error::new(error.kind(), format!("cannot write the output: {error}"))
        })
}

/// Returns the line that reports a written output file and its size.
pub(crate) fn written_line(path: &std::path::Path, len: usize) -> String {
    format!("wrote {} ({len} bytes)\n", path.display())
}

/// Writes `text` to standard error and drops a failed write, because standard error is where
/// igvmm reports failures. `eprint!` would panic instead.
pub fn write_stderr(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr
        .write_all(text.as_bytes())
        .and_then(|()| stderr.flush());
}
