//! Boots Debian's SeaBIOS for QEMU's microvm machine, packed as an IGVM file, until it reports
//! "No bootable device". The firmware comes from `scripts/fetch-seabios.sh`; without apt-get or
//! a reachable mirror the tests print why and skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vmm::exit::StopRequest;
use vmm::{DebugconConfig, GuestImage, SharedBuffer, StopReason};

use common::{captured_config, kvm_available, run_limited};

/// What SeaBIOS prints on COM1 once it has tried every boot device.
const NO_BOOT_DEVICE: &str = "No bootable device";
/// How long SeaBIOS may take to get there.
const BOOT_LIMIT: Duration = Duration::from_secs(30);

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Fetches bios-microvm.bin into the repository's seabios/ directory once per test process, or
/// returns why not.
fn fetch_seabios() -> Result<PathBuf, String> {
    static FETCHED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FETCHED.get_or_init(run_fetch_script).clone()
}

fn run_fetch_script() -> Result<PathBuf, String> {
    let dir = repository().join("seabios");
    let output = Command::new(repository().join("scripts/fetch-seabios.sh"))
        .arg(&dir)
        .output()
        .map_err(|error| format!("cannot run scripts/fetch-seabios.sh: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "scripts/fetch-seabios.sh failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(dir.join("bios-microvm.bin"))
}

/// Packs the firmware with `igvmm pack` and returns the IGVM file's path.
fn pack(firmware: &Path, name: &str) -> PathBuf {
    let image = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let output = Command::new(env!("CARGO_BIN_EXE_igvmm"))
        .args(["pack", "--firmware"])
        .arg(firmware)
        .arg("-o")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "igvmm pack failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    image
}

fn firmware_or_skip(test: &str) -> Option<PathBuf> {
    if !kvm_available(test) {
        return None;
    }
    match fetch_seabios() {
        Ok(firmware) => Some(firmware),
        Err(reason) => {
            eprintln!("{test}: skipped, SeaBIOS is not available: {reason}");
            None
        }
    }
}

#[test]
fn seabios_reaches_no_bootable_device() {
    let Some(firmware) = firmware_or_skip("seabios_reaches_no_bootable_device") else {
        return;
    };
    let image = std::fs::read(pack(&firmware, "seabios-library.igvm")).unwrap();
    let (mut config, serial) = captured_config(GuestImage::Igvm(image));
    config.memory_bytes = 256 << 20;
    let debugcon = SharedBuffer::new();
    config.debugcon = DebugconConfig::Capture(debugcon.clone());

    let stop = config.stop.clone();
    let watcher = {
        let serial = serial.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let reached = serial.wait_for(NO_BOOT_DEVICE, BOOT_LIMIT);
            stop.request_stop();
            (reached, start.elapsed())
        })
    };
    let reason = run_limited(config, BOOT_LIMIT + Duration::from_secs(10)).unwrap();
    let (reached, elapsed) = watcher.join().unwrap();

    let console = serial.text();
    let log = debugcon.text();
    assert!(
        reached,
        "no {NO_BOOT_DEVICE:?} within {BOOT_LIMIT:?}; stopped with {reason:?}\nCOM1:\n{console}\ndebug console:\n{log}"
    );
    eprintln!("SeaBIOS reached {NO_BOOT_DEVICE:?} after {elapsed:?}");
    assert_eq!(reason, StopReason::Requested(StopRequest::Caller));
    // The banner goes to the debug console; with nographic = 1 the boot messages go to COM1.
    assert!(log.starts_with("SeaBIOS (version "), "debug console: {log}");
    assert!(log.contains("Found QEMU fw_cfg"), "debug console: {log}");
    assert!(log.contains("QEMU fw_cfg DMA interface supported"));
    assert!(log.contains("qemu/e820: addr 0x0000000000000000 len 0x0000000010000000 [RAM]"));
    assert!(console.contains("SeaBIOS (version "), "COM1: {console}");
    assert!(console.contains(NO_BOOT_DEVICE));
}

#[test]
fn seabios_from_cli_stops_on_sigterm() {
    let Some(firmware) = firmware_or_skip("seabios_from_cli_stops_on_sigterm") else {
        return;
    };
    let image = pack(&firmware, "seabios-cli.igvm");
    // -v shows the debug console on port 0x402, where SeaBIOS logs its banner.
    let mut child = Command::new(env!("CARGO_BIN_EXE_igvmm"))
        .arg("-v")
        .arg("run")
        .arg(&image)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let stdout = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let stdout = stdout.clone();
        let mut pipe = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(count) = pipe.read(&mut buffer) {
                if count == 0 {
                    break;
                }
                stdout.lock().unwrap().extend_from_slice(&buffer[..count]);
            }
        })
    };

    let deadline = Instant::now() + BOOT_LIMIT;
    let reached = loop {
        let text = String::from_utf8_lossy(&stdout.lock().unwrap()).into_owned();
        if text.contains(NO_BOOT_DEVICE) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();

    assert!(
        reached,
        "no {NO_BOOT_DEVICE:?} on stdout; stderr:\n{stderr}"
    );
    assert_eq!(status.code(), Some(143), "stderr:\n{stderr}");
    assert!(
        stderr.contains("[INFO  guest-debugcon] SeaBIOS (version "),
        "stderr:\n{stderr}"
    );
    assert_eq!(
        stderr.lines().last(),
        Some("igvmm: stopped by signal SIGTERM")
    );
}
