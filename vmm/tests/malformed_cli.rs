//! `igvmm run` and `igvmm inspect` on malformed IGVM files and bad paths.
//!
//! Each case writes a file, built here from a valid native file that the igvm crate writes, and
//! runs the `igvmm` binary on it. The user-visible result must be a non-zero exit status, exactly
//! one line on stderr that names the problem, and nothing on stdout, so no guest ran.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use igvm::{IgvmDirectiveHeader, IgvmFile, IgvmPlatformHeader, IgvmRevision};
use igvm_defs::{
    IgvmNativeVpContextX64, IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType,
    IGVM_VHS_PARAMETER, IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_SUPPORTED_PLATFORM,
};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 0x1000;
const NATIVE: u32 = 0x1;

/// Offsets of fixed header fields.
const FIXED_VERSION: usize = 4;
const FIXED_VARIABLE_HEADER_OFFSET: usize = 8;
const FIXED_VARIABLE_HEADER_SIZE: usize = 12;
const FIXED_TOTAL_FILE_SIZE: usize = 16;
const FIXED_CHECKSUM: usize = 20;
const FIXED_V1_SIZE: usize = 24;

/// Directive positions in [`base_file`].
const PAGE_B: usize = 1;
const INSERT: usize = 4;
const REQUIRED: usize = 5;

/// How long one igvmm invocation may take before the test kills it.
const TIMEOUT: Duration = Duration::from_secs(60);

fn page(gpa: u64, data: Vec<u8>) -> IgvmDirectiveHeader {
    IgvmDirectiveHeader::PageData {
        gpa,
        compatibility_mask: NATIVE,
        flags: IgvmPageDataFlags::new(),
        data_type: IgvmPageDataType::NORMAL,
        data,
    }
}

/// Returns a VP context in the x86 reset state. No guest runs in these tests, so any state
/// does.
fn context(vp_index: u16) -> IgvmDirectiveHeader {
    let context: IgvmNativeVpContextX64 = igvm_loader::builder::real_mode_reset_context();
    IgvmDirectiveHeader::X64NativeVpContext {
        compatibility_mask: NATIVE,
        vp_index,
        context: Box::new(context),
    }
}

/// Returns a valid native file: two pages at 1 MiB, a parameter area with the vCPU count inserted after
/// them, a RequiredMemory page at 3 MiB, then `extra` and the VP context of vCPU 0.
fn file_with(extra: Vec<IgvmDirectiveHeader>) -> Vec<u8> {
    let mut directives = vec![
        page(MIB, vec![0xF4; PAGE as usize]),
        page(MIB + PAGE, b"data".to_vec()),
        IgvmDirectiveHeader::ParameterArea {
            number_of_bytes: PAGE,
            parameter_area_index: 0,
            initial_data: Vec::new(),
        },
        IgvmDirectiveHeader::VpCount(IGVM_VHS_PARAMETER {
            parameter_area_index: 0,
            byte_offset: 0,
        }),
        IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
            gpa: MIB + 2 * PAGE,
            compatibility_mask: NATIVE,
            parameter_area_index: 0,
        }),
        IgvmDirectiveHeader::RequiredMemory {
            gpa: 3 * MIB,
            compatibility_mask: NATIVE,
            number_of_bytes: PAGE as u32,
            vtl2_protectable: false,
        },
    ];
    directives.extend(extra);
    directives.push(context(0));
    let platform = IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
        compatibility_mask: NATIVE,
        highest_vtl: 0,
        platform_type: IgvmPlatformType::NATIVE,
        platform_version: 1,
        shared_gpa_boundary: 0,
    });
    let file = IgvmFile::new(IgvmRevision::V1, vec![platform], Vec::new(), directives)
        .expect("the igvm crate accepts the headers");
    let mut bytes = Vec::new();
    file.serialize(&mut bytes)
        .expect("the igvm crate serializes the file");
    bytes
}

fn base_file() -> Vec<u8> {
    file_with(Vec::new())
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn write_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn write_u64(bytes: &mut [u8], offset: usize, value: u64) {
    bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

fn fix_checksum(bytes: &mut [u8]) {
    let start = read_u32(bytes, FIXED_VARIABLE_HEADER_OFFSET) as usize;
    let end = start + read_u32(bytes, FIXED_VARIABLE_HEADER_SIZE) as usize;
    let mut fixed = bytes[..FIXED_V1_SIZE].to_vec();
    write_u32(&mut fixed, FIXED_CHECKSUM, 0);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&fixed);
    hasher.update(&bytes[start..end]);
    write_u32(bytes, FIXED_CHECKSUM, hasher.finalize());
}

/// Returns the file offset of the type field of each variable header, in file order.
fn header_offsets(bytes: &[u8]) -> Vec<usize> {
    let start = read_u32(bytes, FIXED_VARIABLE_HEADER_OFFSET) as usize;
    let end = start + read_u32(bytes, FIXED_VARIABLE_HEADER_SIZE) as usize;
    let mut offsets = Vec::new();
    let mut offset = start;
    while offset < end {
        offsets.push(offset);
        let length = read_u32(bytes, offset + 4) as usize;
        offset += (8 + length + 7) & !7;
    }
    offsets
}

/// Returns the file offset of the body of directive `index` (the platform header is first).
fn directive_body(bytes: &[u8], index: usize) -> usize {
    header_offsets(bytes)[1 + index] + 8
}

/// Position of the file offset field in the bodies of PageData, ParameterArea and VpContext.
const FILE_OFFSET_FIELD: usize = 12;

/// Returns `file` without its first variable header (the SupportedPlatform header), with the
/// file offsets of the remaining headers moved down to match.
fn without_platform_header(file: &[u8]) -> Vec<u8> {
    let offsets = header_offsets(file);
    let (first, second) = (offsets[0], offsets[1]);
    let removed = second - first;
    let mut out = file[..first].to_vec();
    out.extend_from_slice(&file[second..]);
    let size = read_u32(&out, FIXED_VARIABLE_HEADER_SIZE) - removed as u32;
    write_u32(&mut out, FIXED_VARIABLE_HEADER_SIZE, size);
    let total = out.len() as u32;
    write_u32(&mut out, FIXED_TOTAL_FILE_SIZE, total);
    for offset in header_offsets(&out) {
        let header_type = read_u32(&out, offset);
        if matches!(header_type, 0x301 | 0x302 | 0x304) {
            let field = offset + 8 + FILE_OFFSET_FIELD;
            let value = read_u32(&out, field);
            if value != 0 {
                write_u32(&mut out, field, value - removed as u32);
            }
        }
    }
    fix_checksum(&mut out);
    out
}

/// Applies `edit` to the base file and fixes the checksum.
fn edited(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut file = base_file();
    edit(&mut file);
    fix_checksum(&mut file);
    file
}

/// One bad input and the error message expected for it.
struct Case {
    name: &'static str,
    /// What to pass as the file argument.
    input: Input,
    /// Extra arguments for `run`, before the file.
    run_args: &'static [&'static str],
    /// Text the stderr line of `run` must contain; `None` skips `run`.
    run_needle: Option<&'static str>,
    /// Text the stderr line of `inspect` must contain; `None` skips `inspect`, for files whose
    /// headers are valid and which fail only against a host.
    inspect_needle: Option<&'static str>,
}

enum Input {
    Bytes(Vec<u8>),
    Missing,
    Directory,
}

fn cases() -> Vec<Case> {
    let both = |name, input, needle| Case {
        name,
        input: Input::Bytes(input),
        run_args: &[],
        run_needle: Some(needle),
        inspect_needle: Some(needle),
    };
    let run_only = |name, input, run_args, needle| Case {
        name,
        input: Input::Bytes(input),
        run_args,
        run_needle: Some(needle),
        inspect_needle: None,
    };
    let base = base_file();
    vec![
        Case {
            name: "file does not exist",
            input: Input::Missing,
            run_args: &[],
            run_needle: Some("No such file or directory"),
            inspect_needle: Some("No such file or directory"),
        },
        Case {
            name: "file is a directory",
            input: Input::Directory,
            run_args: &[],
            run_needle: Some("is a directory"),
            inspect_needle: Some("is a directory"),
        },
        both("0 bytes", Vec::new(), "file is 0 bytes"),
        both(
            "wrong magic",
            {
                let mut file = base.clone();
                file[..4].copy_from_slice(b"MVGI");
                file
            },
            "invalid IGVM magic 0x4947564d",
        ),
        both(
            "format version 3",
            {
                let mut file = base.clone();
                write_u32(&mut file, FIXED_VERSION, 3);
                file
            },
            "format version 3",
        ),
        both(
            "bad checksum",
            {
                let mut file = base.clone();
                let checksum = read_u32(&file, FIXED_CHECKSUM);
                write_u32(&mut file, FIXED_CHECKSUM, !checksum);
                file
            },
            "checksum mismatch",
        ),
        both(
            "truncated file",
            base[..base.len() / 2].to_vec(),
            "total_file_size",
        ),
        both(
            "unknown header without the optional bit",
            edited(|file| {
                let offset = directive_body(file, REQUIRED) - 8;
                write_u32(file, offset, 0x3F0);
            }),
            "unknown header 0x3f0 at directive index 5",
        ),
        both(
            "page data outside the file",
            edited(|file| {
                let body = directive_body(file, PAGE_B);
                write_u32(file, body + 12, 0xFFFF_0000);
            }),
            "PageData header 0x302 at directive index 1",
        ),
        both(
            "insert into an undeclared parameter area",
            edited(|file| {
                let body = directive_body(file, INSERT);
                write_u32(file, body + 12, 9);
            }),
            "ParameterInsert header 0x303 at directive index 4",
        ),
        both(
            "no platform header",
            without_platform_header(&base),
            "no SupportedPlatform header",
        ),
        run_only(
            "page in the MMIO hole",
            file_with(vec![page(0xD000_0000, b"mmio".to_vec())]),
            &[],
            "PageData header 0x302 at directive index 6",
        ),
        run_only(
            "page on the local APIC page",
            file_with(vec![page(0xFEE0_0000, b"apic".to_vec())]),
            &[],
            "PageData header 0x302 at directive index 6",
        ),
        run_only(
            "page beyond the physical address width",
            file_with(vec![page(1 << 52, b"far".to_vec())]),
            &[],
            "PageData header 0x302 at directive index 6",
        ),
        run_only(
            "parameter insert on the local APIC page",
            edited(|file| {
                let body = directive_body(file, INSERT);
                write_u64(file, body, 0xFEE0_0000);
            }),
            &[],
            "ParameterInsert header 0x303 at directive index 4",
        ),
        run_only(
            "two imports of one page",
            file_with(vec![page(MIB + PAGE, b"again".to_vec())]),
            &[],
            "overlaps",
        ),
        run_only(
            "two VP contexts for vCPU 0",
            file_with(vec![context(0)]),
            &[],
            "second VP context for vCPU 0",
        ),
        run_only(
            "VP context beyond --cpus",
            file_with(vec![context(1)]),
            &["--cpus", "1"],
            "vCPU 1",
        ),
        run_only(
            "RequiredMemory beyond --memory",
            base.clone(),
            &["--memory", "2M"],
            "RequiredMemory header 0x305 at directive index 5",
        ),
    ]
}

/// What one igvmm invocation printed.
struct Outcome {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs igvmm with `args`, with no terminal and no log filter from the environment, and kills
/// it after [`TIMEOUT`].
fn igvmm(args: &[&str]) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_igvmm"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("igvmm starts");
    let mut stdout_pipe = child.stdout.take().expect("stdout is piped");
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stdout_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout_pipe.read_to_string(&mut text);
        text
    });
    let stderr_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("igvmm can be waited for") {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            break child.wait().expect("igvmm can be waited for");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        status: status.code(),
        stdout: stdout_reader.join().expect("the stdout reader finishes"),
        stderr: stderr_reader.join().expect("the stderr reader finishes"),
    }
}

/// Checks an outcome and returns what is wrong with it.
fn problems(outcome: &Outcome, needle: &str) -> Vec<String> {
    let mut problems = Vec::new();
    match outcome.status {
        Some(0) => problems.push("exit status 0".to_string()),
        None => problems.push("killed by a signal or the timeout".to_string()),
        Some(_) => {}
    }
    let lines: Vec<&str> = outcome.stderr.lines().collect();
    if lines.len() != 1 {
        problems.push(format!(
            "{} lines on stderr: {:?}",
            lines.len(),
            outcome.stderr
        ));
    }
    if !outcome.stderr.contains(needle) {
        problems.push(format!(
            "stderr {:?} does not contain {needle:?}",
            outcome.stderr
        ));
    }
    if !outcome.stdout.is_empty() {
        problems.push(format!("stdout is not empty: {:?}", outcome.stdout));
    }
    problems
}

fn scratch_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("malformed_cli");
    std::fs::create_dir_all(&dir).expect("the scratch directory can be created");
    dir
}

/// Writes a case's input and returns the path to pass to igvmm.
fn input_path(dir: &Path, index: usize, input: &Input) -> PathBuf {
    match input {
        Input::Bytes(bytes) => {
            let path = dir.join(format!("case-{index:02}.igvm"));
            std::fs::write(&path, bytes).expect("the case file can be written");
            path
        }
        Input::Missing => dir.join("no-such-file.igvm"),
        Input::Directory => {
            let path = dir.join("a-directory.igvm");
            std::fs::create_dir_all(&path).expect("the directory can be created");
            path
        }
    }
}

#[test]
fn valid_base_file_inspects() {
    let dir = scratch_dir();
    let path = dir.join("valid.igvm");
    std::fs::write(&path, base_file()).unwrap();
    let outcome = igvmm(&["inspect", path.to_str().unwrap()]);
    assert_eq!(outcome.status, Some(0), "stderr: {}", outcome.stderr);
    assert!(!outcome.stdout.is_empty());
}

#[test]
fn malformed_files_are_rejected_on_one_line() {
    let dir = scratch_dir();
    let mut failures = Vec::new();
    let mut runs = 0;
    for (index, case) in cases().iter().enumerate() {
        let path = input_path(&dir, index, &case.input);
        let path = path.to_str().expect("the scratch path is UTF-8");

        if let Some(needle) = case.run_needle {
            let mut args = vec!["run", "--platform", "native"];
            args.extend_from_slice(case.run_args);
            args.push(path);
            let outcome = igvmm(&args);
            runs += 1;
            println!("run     {:<44} {}", case.name, outcome.stderr.trim_end());
            for problem in problems(&outcome, needle) {
                failures.push(format!("run {}: {problem}", case.name));
            }
        }
        if let Some(needle) = case.inspect_needle {
            let outcome = igvmm(&["inspect", path]);
            runs += 1;
            println!("inspect {:<44} {}", case.name, outcome.stderr.trim_end());
            for problem in problems(&outcome, needle) {
                failures.push(format!("inspect {}: {problem}", case.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems in {runs} invocations:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `run` backs pages outside RAM (a firmware image below 4 GiB) with extra memory, and rejects
/// a page that lands on a page KVM owns or beyond the guest physical address width. That error
/// must name the PageData header that placed the page, as the loader's errors do, not only the
/// GPA.
#[test]
fn firmware_page_errors_name_the_header() {
    let dir = scratch_dir();
    let mut failures = Vec::new();
    for (name, gpa) in [
        ("page on the local APIC page", 0xFEE0_0000u64),
        ("page on KVM's identity map page", 0xFEFF_C000),
        ("page beyond the physical address width", 1 << 52),
    ] {
        let path = dir.join(format!("firmware-{gpa:x}.igvm"));
        std::fs::write(&path, file_with(vec![page(gpa, b"page".to_vec())])).unwrap();
        let outcome = igvmm(&["run", "--platform", "native", path.to_str().unwrap()]);
        println!("{name:<44} {}", outcome.stderr.trim_end());
        for problem in problems(&outcome, "PageData header 0x302 at directive index 6") {
            failures.push(format!("{name}: {problem}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `inspect` whose stdout cannot be written (a closed pipe, a full disk; /dev/full here) must
/// fail with one error line, not a panic from `print!`.
#[test]
fn inspect_with_unwritable_stdout_fails_cleanly() {
    let dev_full = Path::new("/dev/full");
    if !dev_full.exists() {
        println!("skipped: this system has no /dev/full");
        return;
    }
    let dir = scratch_dir();
    let path = dir.join("valid-for-dev-full.igvm");
    std::fs::write(&path, base_file()).unwrap();
    let stdout = std::fs::OpenOptions::new()
        .write(true)
        .open(dev_full)
        .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_igvmm"))
        .args(["inspect", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .expect("igvmm starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "igvmm panicked: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr:?}");
    assert_ne!(output.status.code(), Some(0));
    assert_ne!(
        output.status.code(),
        Some(101),
        "101 is the exit status of a panic"
    );
}
