//! The helper program of `scripts/bench.sh`: it writes the benchmark guests and files, and
//! makes the measurements that a shell cannot make precisely. Every measuring subcommand runs
//! its measurement `--runs` times and prints `key=value` lines, medians first.
//!
//! Usage: `cargo run --release -p vmm --example bench_helper -- SUBCOMMAND --help`

mod files;
mod fw_cfg;
mod guests;
mod process;
mod raw_kvm;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Writes benchmark guests and files, and times igvmm, QEMU and their references.
#[derive(Debug, Parser)]
#[command(name = "bench_helper")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

/// A guest program that `payload` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Payload {
    /// Prints one line on COM1 and exits through port 0x501.
    Hello,
    /// Prints one line on COM1 and loops forever.
    Spin,
    /// Writes `--serial-bytes` bytes to COM1 with `rep outsb`, reports the TSC cycles on
    /// port 0x402 and exits.
    Serial,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Write a 64 KiB firmware image of a benchmark guest.
    Payload {
        /// The guest.
        #[arg(value_enum)]
        kind: Payload,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Bytes the serial guest writes, a multiple of 32768.
        #[arg(long, default_value_t = 1 << 20)]
        serial_bytes: u32,
    },
    /// Write an IGVM file with MIB MiB of page data for the native, SEV-SNP and TDX platforms.
    LargeIgvm {
        /// MiB of page data.
        #[arg(long, default_value_t = 256)]
        mib: u64,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Time COMMAND from start to exit.
    Time {
        /// Number of runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Exit status every run must have.
        #[arg(long)]
        expect_status: Option<i32>,
        /// Text the output (stdout and stderr) of every run must contain.
        #[arg(long)]
        expect_output: Option<String>,
        /// Send the command's stdout to /dev/null instead of reading it.
        #[arg(long)]
        stdout_null: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Time COMMAND from start until PATTERN appears in its output, then kill it.
    Until {
        /// Number of runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Text to wait for, on stdout or stderr.
        #[arg(long)]
        pattern: String,
        /// Seconds to wait before giving up.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Measure the peak resident memory of COMMAND minus its guest memory, while the guest runs.
    Resident {
        /// Number of runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Text that shows the guest is running.
        #[arg(long)]
        pattern: String,
        /// Sizes in KiB of the anonymous mappings that back guest memory, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        guest_kib: Vec<u64>,
        /// A mapping up to this many KiB larger than a guest size also counts as guest memory.
        #[arg(long, default_value_t = 0)]
        slack_kib: u64,
        /// Milliseconds to wait after the pattern before reading /proc.
        #[arg(long, default_value_t = 200)]
        settle_ms: u64,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Time a copy of the first MIB MiB of FILE into untouched memory.
    Memcpy {
        /// Number of runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The file whose bytes are copied (read before timing).
        #[arg(long)]
        file: PathBuf,
        /// MiB to copy.
        #[arg(long, default_value_t = 256)]
        mib: usize,
    },
    /// Run a firmware image on a bare KVM VM that drops COM1 output; report the guest's
    /// `serial-cycles`.
    RawSerial {
        /// Number of runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The firmware image (from `payload serial`).
        #[arg(long)]
        image: PathBuf,
    },
    /// Run COMMAND with stdout to /dev/null and report NAME from the debug console file.
    DebugconCycles {
        /// Number of runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The `NAME=HEX` line to read.
        #[arg(long)]
        name: String,
        /// The file COMMAND writes the debug console to.
        #[arg(long)]
        file: PathBuf,
        /// Exit status every run must have.
        #[arg(long)]
        expect_status: Option<i32>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Read a fw_cfg file by DMA and through the data port, on a VM built from the vmm library.
    FwCfg {
        /// Number of runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// MiB read by each DMA transfer (the size of the file).
        #[arg(long, default_value_t = 16)]
        mib: u32,
        /// KiB read through the data port, a multiple of 32.
        #[arg(long, default_value_t = 256)]
        pio_kib: u32,
        /// Advise guest RAM with MADV_HUGEPAGE again. `memory::allocate` already does, so this
        /// fails loudly where that advice is refused but changes nothing otherwise.
        #[arg(long)]
        huge_pages: bool,
    },
    /// Print the TSC frequency and its source.
    TscHz,
}

/// Returns the median of `values` (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match (sorted.get(middle.wrapping_sub(1)), sorted.get(middle)) {
        (Some(low), Some(high)) if sorted.len().is_multiple_of(2) => (low + high) / 2.0,
        (_, Some(value)) => *value,
        _ => f64::NAN,
    }
}

/// Prints `NAME_median`, `NAME_min`, `NAME_max` and `NAME_values` for a series.
fn print_series(name: &str, values: &[f64]) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let list: Vec<String> = values.iter().map(|value| format!("{value:.6}")).collect();
    println!("{name}_median={:.6}", median(values));
    println!("{name}_min={min:.6}");
    println!("{name}_max={max:.6}");
    println!("{name}_values={}", list.join(","));
}

/// Runs `measure` `runs` times and collects the results.
fn repeat<T>(
    runs: usize,
    mut measure: impl FnMut() -> Result<T, String>,
) -> Result<Vec<T>, String> {
    (0..runs.max(1)).map(|_| measure()).collect()
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Task::Payload {
            kind,
            output,
            serial_bytes,
        } => {
            if serial_bytes == 0 || serial_bytes % guests::STRING_CHUNK != 0 {
                return Err(format!(
                    "--serial-bytes {serial_bytes} is not a positive multiple of 32768"
                ));
            }
            let image = match kind {
                Payload::Hello => guests::hello(),
                Payload::Spin => guests::spin(),
                Payload::Serial => guests::serial(serial_bytes),
            }
            .map_err(|error| format!("assembling the guest failed: {error}"))?;
            write(&output, &image)?;
            println!("exit_status={}", guests::EXIT_STATUS);
            Ok(())
        }
        Task::LargeIgvm { mib, output } => write(&output, &files::large_igvm(mib)?),
        Task::Time {
            runs,
            expect_status,
            expect_output,
            stdout_null,
            command,
        } => {
            let times = repeat(runs, || {
                process::time_to_exit(
                    &command,
                    expect_status,
                    expect_output.as_deref(),
                    stdout_null,
                )
            })?;
            print_series("seconds", &seconds(&times));
            Ok(())
        }
        Task::Until {
            runs,
            pattern,
            timeout,
            command,
        } => {
            let timeout = Duration::from_secs(timeout);
            let times = repeat(runs, || {
                process::time_to_pattern(&command, &pattern, timeout)
            })?;
            print_series("seconds", &seconds(&times));
            Ok(())
        }
        Task::Resident {
            runs,
            pattern,
            guest_kib,
            slack_kib,
            settle_ms,
            command,
        } => {
            let settle = Duration::from_millis(settle_ms);
            let samples = repeat(runs, || {
                process::resident(&command, &pattern, &guest_kib, slack_kib, settle)
            })?;
            let mib = |kib: u64| kib as f64 / 1024.0;
            let vmm: Vec<f64> = samples
                .iter()
                .map(|sample| mib(sample.peak_kib.saturating_sub(sample.guest_kib)))
                .collect();
            print_series("vmm_mib", &vmm);
            print_series(
                "peak_mib",
                &samples.iter().map(|s| mib(s.peak_kib)).collect::<Vec<_>>(),
            );
            print_series(
                "guest_mib",
                &samples.iter().map(|s| mib(s.guest_kib)).collect::<Vec<_>>(),
            );
            Ok(())
        }
        Task::Memcpy { runs, file, mib } => {
            let source =
                std::fs::read(&file).map_err(|error| format!("{}: {error}", file.display()))?;
            let times = repeat(runs, || files::memcpy_fresh(&source, mib << 20))?;
            print_series("seconds", &seconds(&times));
            Ok(())
        }
        Task::RawSerial { runs, image } => {
            let image =
                std::fs::read(&image).map_err(|error| format!("{}: {error}", image.display()))?;
            let results = repeat(runs, || raw_kvm::run_firmware(&image))?;
            let mut cycles = Vec::new();
            for result in &results {
                let value =
                    guests::parse_report(&result.debugcon, "serial-cycles").ok_or(format!(
                        "the guest did not report serial-cycles: {:?}",
                        result.debugcon
                    ))?;
                cycles.push(value as f64);
            }
            print_series("cycles", &cycles);
            print_series(
                "host_seconds",
                &results
                    .iter()
                    .map(|r| r.elapsed.as_secs_f64())
                    .collect::<Vec<_>>(),
            );
            if let Some(last) = results.last() {
                println!("com1_bytes={}", last.com1_bytes);
                println!("exits={}", last.exits);
            }
            Ok(())
        }
        Task::DebugconCycles {
            runs,
            name,
            file,
            expect_status,
            command,
        } => {
            let mut cycles = Vec::new();
            let mut times = Vec::new();
            for _ in 0..runs.max(1) {
                let _ = std::fs::remove_file(&file);
                times.push(process::time_to_exit(&command, expect_status, None, true)?);
                let text = std::fs::read_to_string(&file)
                    .map_err(|error| format!("{}: {error}", file.display()))?;
                let value = guests::parse_report(&text, &name)
                    .ok_or(format!("{} has no {name} line: {text:?}", file.display()))?;
                cycles.push(value as f64);
            }
            print_series("cycles", &cycles);
            print_series("process_seconds", &seconds(&times));
            Ok(())
        }
        Task::FwCfg {
            runs,
            mib,
            pio_kib,
            huge_pages,
        } => fw_cfg_task(runs, mib, pio_kib, huge_pages),
        Task::TscHz => {
            let (hz, source) = files::tsc_hz()?;
            println!("tsc_hz={hz:.0}");
            println!("tsc_source={source}");
            Ok(())
        }
    }
}

/// Runs the fw_cfg benchmark and prints cycles and rates (GiB/s for DMA, MiB/s for the port),
/// with a memcpy of the same size into untouched memory as the reference.
fn fw_cfg_task(runs: usize, mib: u32, pio_kib: u32, huge_pages: bool) -> Result<(), String> {
    let dma_bytes = mib.checked_mul(1 << 20).ok_or("--mib is too large")?;
    let pio_bytes = pio_kib
        .checked_mul(1 << 10)
        .ok_or("--pio-kib is too large")?;
    if pio_bytes == 0 || pio_bytes % guests::STRING_CHUNK != 0 || pio_bytes > dma_bytes {
        return Err(format!(
            "--pio-kib {pio_kib} must be a positive multiple of 32, at most --mib"
        ));
    }
    let (hz, source) = files::tsc_hz()?;
    let results = repeat(runs, || fw_cfg::run(dma_bytes, pio_bytes, huge_pages))?;
    let gib =
        |bytes: u32, cycles: u64| f64::from(bytes) / f64::from(1u32 << 30) / (cycles as f64 / hz);
    let dma: Vec<f64> = results
        .iter()
        .map(|r| gib(dma_bytes, r.dma_cycles))
        .collect();
    let warm: Vec<f64> = results
        .iter()
        .map(|r| gib(dma_bytes, r.dma_warm_cycles))
        .collect();
    let pio: Vec<f64> = results
        .iter()
        .map(|r| gib(pio_bytes, r.pio_cycles) * 1024.0)
        .collect();
    print_series("dma_gib_per_s", &dma);
    print_series("dma_warm_gib_per_s", &warm);
    print_series("pio_mib_per_s", &pio);
    print_series(
        "dma_cycles",
        &results
            .iter()
            .map(|r| r.dma_cycles as f64)
            .collect::<Vec<_>>(),
    );
    print_series(
        "host_seconds",
        &results
            .iter()
            .map(|r| r.elapsed.as_secs_f64())
            .collect::<Vec<_>>(),
    );
    if let Some(last) = results.last() {
        println!("exits={}", last.exits);
    }

    let source_bytes = fw_cfg::pattern(dma_bytes as usize);
    let copies = repeat(runs, || {
        files::memcpy_fresh(&source_bytes, dma_bytes as usize)
    })?;
    let copy_rates: Vec<f64> = copies
        .iter()
        .map(|time| f64::from(dma_bytes) / f64::from(1u32 << 30) / time.as_secs_f64())
        .collect();
    print_series("memcpy_gib_per_s", &copy_rates);
    println!("tsc_hz={hz:.0}");
    println!("tsc_source={source}");
    Ok(())
}

fn seconds(times: &[Duration]) -> Vec<f64> {
    times.iter().map(Duration::as_secs_f64).collect()
}

fn write(path: &PathBuf, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes)
        .map_err(|error| format!("writing {} failed: {error}", path.display()))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench_helper: {error}");
            ExitCode::FAILURE
        }
    }
}
