//! Tests of the `igvmm` binary as a user runs it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::{Command, Output, Stdio};

use common::{conformance_dir, kvm_available};

fn igvmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_igvmm"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_lists_subcommands() {
    let output = igvmm(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    for subcommand in ["run", "inspect", "measure", "pack", "corim"] {
        assert!(
            text.lines()
                .any(|line| line.trim_start().starts_with(subcommand)),
            "--help does not list {subcommand}:\n{text}"
        );
    }
    let run_help = stdout(&igvmm(&["run", "--help"]));
    for option in [
        "--memory",
        "--cpus",
        "--platform",
        "--serial",
        "--debugcon",
        "--demo",
    ] {
        assert!(run_help.contains(option), "run --help lacks {option}");
    }
}

#[test]
fn demo_prints_map_vp_count_and_files() {
    if !kvm_available("demo_prints_map_vp_count_and_files") {
        return;
    }
    let output = igvmm(&["run", "--demo", "--cpus", "2", "--memory", "256M"]);
    // The ACPI files come from the devices crate; their sizes are whatever it builds.
    let acpi = devices::acpi::build_fw_cfg_files(2).unwrap();
    let expected = format!(
        "\
igvmm demo guest: 32-bit protected mode
vp count: 2
memory map:
  base 0x0000000000000000 size 0x0000000010000000 memory
  base 0x00000000feffc000 size 0x0000000000004000 platform-reserved
fw_cfg signature: QEMU
fw_cfg files: 5
  etc/acpi/rsdp, {} bytes
  etc/acpi/tables, {} bytes
  etc/boot-fail-wait, 4 bytes
  etc/e820, 40 bytes
  etc/table-loader, {} bytes
demo done
",
        acpi.rsdp.len(),
        acpi.tables.len(),
        acpi.table_loader.len()
    );
    assert_eq!(stdout(&output), expected, "stderr: {}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "igvmm: the demo guest finished (debug-exit value 0, reported as exit status 0)\n"
    );
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn packed_demo_runs_from_file() {
    if !kvm_available("packed_demo_runs_from_file") {
        return;
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join("cli-demo.igvm");
    let packed = igvmm(&["pack", "--demo", "-o", path.to_str().unwrap()]);
    assert_eq!(packed.status.code(), Some(0), "{}", stderr(&packed));
    let output = igvmm(&["run", path.to_str().unwrap()]);
    assert!(stdout(&output).ends_with("demo done\n"));
    // Outside --demo the debug-exit status is QEMU's (0 << 1) | 1.
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn inspect_reads_every_conformance_file() {
    let dir = conformance_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("skipped: {} is missing", dir.display());
        return;
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "igvm"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 4);
    for path in files {
        let text = igvmm(&["inspect", path.to_str().unwrap()]);
        assert_eq!(
            text.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            stderr(&text)
        );
        assert!(stdout(&text).starts_with("IGVM format version "));
        let json = igvmm(&["inspect", "--json", path.to_str().unwrap()]);
        assert_eq!(json.status.code(), Some(0));
        let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert!(value["platforms"]
            .as_array()
            .is_some_and(|list| !list.is_empty()));
        assert!(value["format_version"].as_u64().is_some());
    }
    let json = igvmm(&[
        "inspect",
        "--json",
        conformance_dir()
            .join("tiny-qemu-snp-native.igvm")
            .to_str()
            .unwrap(),
    ]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let types: Vec<&str> = value["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|platform| platform["platform_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["sev-snp", "native"]);
    assert_eq!(value["vp_contexts"][0]["entry"], 0x10002);
    let predictions: Vec<(&str, &str, &str)> = value["predicted_measurements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["platform"].as_str().unwrap(),
                entry["kind"].as_str().unwrap(),
                entry["digest"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        predictions,
        [
            ("sev-snp", "kvm-launch", "AA9169F94BC32C746EEA672387446948B52662E59A0035E73F005CD8FDDBD1CB5FD33D9326A11671E56687D75BB5EF03"),
            ("sev-snp", "file", "583EBEC47ED943C6D6BF1D787F63776BFB15B1573E3B06013B2EBC77D8CF2BAD2038648B9A5F37C1D51EACD64C92C1F8"),
        ]
    );
    // The KVM launch differs from the file digest, and the note gives the reason.
    const NOTE: &str = "the file places 2 page operations after the VMSA of vp 0; KVM measures \
                        VMSAs after all pages, so the KVM digest differs from the file digest \
                        (--file-digest)";
    assert_eq!(
        value["predicted_measurements"][0]["notes"],
        serde_json::json!([NOTE])
    );
    assert_eq!(
        value["predicted_measurements"][1]["notes"],
        serde_json::json!([])
    );
    let file = conformance_dir().join("tiny-qemu-snp-native.igvm");
    let text = stdout(&igvmm(&["inspect", file.to_str().unwrap()]));
    assert!(text.contains(&format!("\n    note: {NOTE}\n")), "{text}");
}

#[test]
fn inspect_prints_tdx_digest() {
    // The MRTD of tiny-tdp-synthetic.igvm under the igvm 0.5 rule (igvm 0.5 computes the same).
    const TDP_MRTD: &str = "86B13FD8548F38F4895E1AC6292C35588E272B294A2E8C0393043F963C9705CD5D20B5126279F31EA908793DA09EBA3F";
    let file = conformance_dir().join("tiny-tdp-synthetic.igvm");
    let text = igvmm(&["inspect", file.to_str().unwrap()]);
    assert_eq!(text.status.code(), Some(0), "{}", stderr(&text));
    let expected = format!("predicted measurements (1 vCPU):\n  tdx      mrtd        {TDP_MRTD}\n");
    assert!(
        stdout(&text).contains(&expected),
        "missing {expected:?} in:\n{}",
        stdout(&text)
    );

    let json = igvmm(&["inspect", "--json", file.to_str().unwrap()]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        value["predicted_measurements"],
        serde_json::json!([{
            "platform": "tdx",
            "kind": "mrtd",
            "digest": TDP_MRTD,
            "notes": [],
            "error": null,
        }])
    );

    // A platform whose prediction fails names the reason instead of a digest.
    let hyperv = conformance_dir().join("tiny-native-snp-hyperv-policy.igvm");
    let text = stdout(&igvmm(&["inspect", hyperv.to_str().unwrap()]));
    assert!(
        text.contains("  sev-snp  kvm-launch  unavailable: SnpVpContext header"),
        "{text}"
    );
    assert!(text.contains("  sev-snp  file        9AEFA1E053B32D9B3BEE7B2163F03EFDBDD4B0E9A0EB3C36D1C57D0163B1B57F69D077880C7C135548B7B11518189902\n"), "{text}");
}

#[test]
fn bad_memory_is_one_line() {
    // Values that do not parse, or break the layout rules, fail in clap with status 2.
    let cases = [
        (
            "12X",
            "expected a number of bytes with an optional K, M, G or T suffix, for example 512M",
        ),
        (
            "-1",
            "expected a number of bytes with an optional K, M, G or T suffix, for example 512M",
        ),
        ("1K", "memory size 1024 bytes is not a multiple of 4 KiB"),
        (
            "1M",
            "memory size 1048576 bytes is below the minimum of 2097152 bytes (2M)",
        ),
    ];
    for (size, reason) in cases {
        let output = igvmm(&["run", "--demo", "--memory", size]);
        assert_eq!(output.status.code(), Some(2), "--memory {size}");
        let text = stderr(&output);
        let first_line = text.lines().next().unwrap_or_default();
        assert_eq!(
            first_line,
            format!("error: invalid value '{size}' for '--memory <MEMORY>': {reason}")
        );
    }
    // Sizes that parse but exceed the host fail at launch with status 1.
    for size in ["1000T", "2T"] {
        let output = igvmm(&["run", "--demo", "--memory", size]);
        assert_eq!(output.status.code(), Some(1));
        let text = stderr(&output);
        assert!(
            text.starts_with(&format!("igvmm: --memory {size} ")),
            "unexpected message: {text}"
        );
        assert_eq!(text.lines().count(), 1);
    }
}

#[test]
fn bad_option_values_exit_2() {
    let cases: [(&[&str], &str); 8] = [
        (&["pack", "-o", "x.igvm"], "error: the following required arguments were not provided:"),
        (&["pack", "--demo", "--cmdline", "quiet", "-o", "x.igvm"], "error: the argument '--demo' cannot be used with '--cmdline <CMDLINE>'"),
        (&["run", "--demo", "--host-data", "zz"], "error: invalid value 'zz' for '--host-data <HOST_DATA>': 'z' at position 0 is not a hexadecimal digit; expected 64 hexadecimal digits"),
        (&["run", "--demo", "--cpus", "0"], "error: invalid value '0' for '--cpus <CPUS>': 0 is not in 1..=254"),
        (&["run", "--demo", "--cpus", "255"], "error: invalid value '255' for '--cpus <CPUS>': 255 is not in 1..=254"),
        (&["run", "--demo", "--serial", "tty"], "error: invalid value 'tty' for '--serial <SERIAL>': expected stdio, none or file:PATH"),
        (&["run", "--demo", "--debugcon", "file"], "error: invalid value 'file' for '--debugcon <DEBUGCON>': expected log, none or file:PATH"),
        (&["measure", "x.igvm", "--platform", "tdx", "--cpus", "0"], "error: invalid value '0' for '--cpus <CPUS>': 0 is not in 1..=254"),
    ];
    for (args, expected) in cases {
        let output = igvmm(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let text = stderr(&output);
        assert_eq!(
            text.lines().next().unwrap_or_default(),
            expected,
            "{args:?}"
        );
    }
}

#[test]
fn missing_file_and_directory() {
    let output = igvmm(&["run", "/nonexistent/guest.igvm"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "igvmm: cannot read /nonexistent/guest.igvm: No such file or directory (os error 2)\n"
    );
    let dir = env!("CARGO_MANIFEST_DIR");
    let output = igvmm(&["run", dir]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        format!("igvmm: {dir} is a directory, not an IGVM file\n")
    );
    let output = igvmm(&["inspect", dir]);
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn sev_snp_on_this_host_is_one_line() {
    let file = conformance_dir().join("tiny-qemu-snp-native.igvm");
    let output = igvmm(&["run", "--platform", "sev-snp", file.to_str().unwrap()]);
    assert_ne!(output.status.code(), Some(0));
    let text = stderr(&output);
    assert_eq!(text.lines().count(), 1, "more than one line: {text}");
    assert!(text.starts_with("igvmm: "), "{text}");
    assert!(text.to_lowercase().contains("sev-snp"), "{text}");
}

#[test]
fn triple_fault_report_from_cli() {
    if !kvm_available("triple_fault_report_from_cli") {
        return;
    }
    let file = conformance_dir().join("tiny-qemu-snp-native.igvm");
    if !file.exists() {
        eprintln!("skipped: {} is missing", file.display());
        return;
    }
    let output = igvmm(&["run", "--platform", "native", file.to_str().unwrap()]);
    let text = stderr(&output);
    if !text.contains("1 GiB pages") {
        eprintln!("this KVM offers 1 GiB pages; nothing to check: {text}");
        return;
    }
    assert_eq!(output.status.code(), Some(6));
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        "igvmm: guest triple fault on vCPU 0 (KVM_EXIT_SHUTDOWN) at RIP 0x10002"
    );
    assert!(text.lines().any(|line| line.trim()
        == "PDPTE maps a 1 GiB page, but this KVM does not offer 1 GiB pages (CPUID 0x80000001 EDX bit 26)"));
}

#[test]
fn coco_option_values_are_checked() {
    let output = igvmm(&["run", "--demo", "--host-data", "abcd"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output).lines().next().unwrap_or_default(),
        "error: invalid value 'abcd' for '--host-data <HOST_DATA>': 2 bytes given; \
         expected 32 bytes (64 hexadecimal digits)"
    );
    let output = igvmm(&["run", "--demo", "--mrowner", "xyz"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output).lines().next().unwrap_or_default(),
        "error: invalid value 'xyz' for '--mrowner <MROWNER>': an odd number of digits; \
         expected 96 hexadecimal digits"
    );
}

#[test]
fn coco_options_warn_on_native_launch() {
    if !kvm_available("coco_options_warn_on_native_launch") {
        return;
    }
    let mrowner = "00".repeat(48);
    let output = igvmm(&["run", "--demo", "--mrowner", &mrowner, "--strict-cpuid"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stderr(&output);
    for option in ["--strict-cpuid", "--mrowner"] {
        let warning = format!("{option} does not apply to a native launch and is ignored");
        assert!(text.contains(&warning), "missing {warning:?} in {text}");
    }
    assert!(!text.contains("--host-data"), "{text}");
}

#[test]
fn pack_kernel_rejects_empty_kernel() {
    let output = igvmm(&["pack", "--kernel", "/dev/null", "-o", "/dev/null"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "igvmm: /dev/null: the kernel (0 bytes) is neither an ELF vmlinux nor a bzImage \
         (no 0xAA55 boot flag at 0x1fe and \"HdrS\" at 0x202)\n"
    );
}

#[test]
fn pack_rejects_confidential_platforms() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pack-platform");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let output_path = dir.join("out.igvm");
    let output_arg = output_path.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--kernel", "/dev/null", "--platform", "native,sev-snp"],
            "igvmm: --platform sev-snp: pack --kernel cannot write an SEV-SNP file yet: the boot \
             shim reaches COM1 and fw_cfg by port I/O without a GHCB, does not validate guest \
             memory with PVALIDATE, and does not pass the CPUID and secrets pages to Linux\n",
        ),
        (
            &["--kernel", "/dev/null", "--platform", "tdx"],
            "igvmm: --platform tdx: pack --kernel cannot write a TDX file yet: the boot shim \
             reaches COM1 and fw_cfg by port I/O without TDVMCALL, does not accept guest memory, \
             and does not start the APs through the ACPI multiprocessor wakeup mailbox\n",
        ),
        (
            &["--demo", "--platform", "sev-snp"],
            "igvmm: --platform sev-snp: pack --firmware and pack --demo write native files only: \
             neither a PC firmware image such as SeaBIOS nor the demo guest runs as a \
             confidential guest\n",
        ),
        (
            &["--firmware", "/dev/null", "--platform", "tdx"],
            "igvmm: --platform tdx: pack --firmware and pack --demo write native files only: \
             neither a PC firmware image such as SeaBIOS nor the demo guest runs as a \
             confidential guest\n",
        ),
    ];
    for (source, expected) in cases {
        let mut args = vec!["pack"];
        args.extend_from_slice(source);
        args.extend_from_slice(&["-o", output_arg]);
        let output = igvmm(&args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&output), expected, "{args:?}");
        assert!(!output_path.exists(), "{args:?} wrote {output_arg}");
    }

    // Native, named or by default, writes the same file.
    let named = dir.join("named.igvm");
    let output = igvmm(&[
        "pack",
        "--demo",
        "--platform",
        "native",
        "-o",
        named.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let default = dir.join("default.igvm");
    let output = igvmm(&["pack", "--demo", "-o", default.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        std::fs::read(named).unwrap(),
        std::fs::read(default).unwrap()
    );
}

#[test]
fn demo_reads_corim_by_dma() {
    if !kvm_available("demo_reads_corim_by_dma") {
        return;
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    // The bytes need not be a valid CoRIM: igvmm publishes them with a warning.
    let document: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
    let document_path = dir.join("demo-corim.cbor");
    std::fs::write(&document_path, &document).unwrap();
    let image = dir.join("demo-corim.igvm");
    let packed = igvmm(&[
        "pack",
        "--demo",
        "--corim",
        document_path.to_str().unwrap(),
        "--corim-platform",
        "native",
        "-o",
        image.to_str().unwrap(),
    ]);
    assert_eq!(packed.status.code(), Some(0), "{}", stderr(&packed));

    let output = igvmm(&["run", image.to_str().unwrap()]);
    let text = stdout(&output);
    let expected = format!(
        "opt/igvm/corim: 300 bytes, crc32 {:#010x}\n",
        crc32fast::hash(&document)
    );
    assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    assert!(text.contains("  opt/igvm/corim, 300 bytes\n"));
    assert!(text.contains("  opt/org.tianocode/sp800155evt/0, "));
    assert!(text.ends_with("demo done\n"));
    assert!(stderr(&output).contains("the CoRIM does not decode"));
}

#[test]
fn memory_above_address_space_limit() {
    // About 1.9 GiB of address space cannot hold 2 GiB of guest RAM.
    let script = format!(
        "ulimit -v 2000000 && exec {} run --demo --memory 2G",
        env!("CARGO_BIN_EXE_igvmm")
    );
    let output = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "igvmm: --memory 2G needs more address space than the process limit allows (RLIMIT_AS 2048000000 bytes); lower --memory or raise the limit with `ulimit -v`\n"
    );
}

#[test]
fn full_stderr_does_not_panic() {
    let cases: [&[&str]; 2] = [
        &["inspect", "/nonexistent/guest.igvm"],
        &["measure", "/nonexistent/guest.igvm", "--platform", "tdx"],
    ];
    for args in cases {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_igvmm"))
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::from(full))
            .output()
            .unwrap();
        // 101 would be a panic.
        assert_eq!(output.status.code(), Some(1), "{args:?}");
    }
}

#[test]
fn errors_name_the_file() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("errors-name-file");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let demo = dir.join("demo.igvm");
    let output = igvmm(&["pack", "--demo", "-o", demo.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let mut bytes = std::fs::read(&demo).unwrap();
    bytes.truncate(100);
    let damaged = dir.join("damaged.igvm");
    std::fs::write(&damaged, &bytes).unwrap();
    let damaged = damaged.to_str().unwrap();
    let document = dir.join("doc.cbor");
    std::fs::write(&document, b"\xd9\x01\xf5\xa0").unwrap();
    let out = dir.join("out.igvm");

    let cases: [&[&str]; 4] = [
        &["inspect", damaged],
        &["measure", damaged, "--platform", "sev-snp"],
        &[
            "corim",
            "extract",
            damaged,
            "--platform",
            "native",
            "-o",
            out.to_str().unwrap(),
        ],
        &[
            "corim",
            "add",
            damaged,
            "--platform",
            "native",
            "--document",
            document.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    ];
    for args in cases {
        let output = igvmm(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let text = stderr(&output);
        assert!(
            text.starts_with(&format!("igvmm: {damaged}: ")),
            "{args:?}: {text}"
        );
        assert!(text.contains("total_file_size"), "{args:?}: {text}");
        assert_eq!(text.lines().count(), 1, "{args:?}: {text}");
    }

    // A platform the file lacks fails before any warning about the CoRIM itself.
    let demo = demo.to_str().unwrap();
    let output = igvmm(&[
        "corim",
        "add",
        demo,
        "--platform",
        "sev-snp",
        "--document",
        document.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        format!("igvmm: {demo}: the IGVM file has no sev-snp platform header\n")
    );
    assert!(!out.exists());

    // An empty document is rejected before any warning about its contents.
    let output = igvmm(&[
        "corim",
        "add",
        demo,
        "--platform",
        "native",
        "--document",
        "/dev/null",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        format!("igvmm: {demo}: the CoRIM document to embed is empty\n")
    );
    assert!(!out.exists());
}

#[test]
fn run_reports_paths_and_ignored_cmdline() {
    if !kvm_available("run_reports_paths_and_ignored_cmdline") {
        return;
    }
    let dir = env!("CARGO_MANIFEST_DIR");
    let output = igvmm(&["run", "--demo", "--serial", &format!("file:{dir}")]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        format!("igvmm: failed to open the serial output {dir}: Is a directory (os error 21)\n")
    );

    let packed = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cmdline-demo.igvm");
    let output = igvmm(&["pack", "--demo", "-o", packed.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let output = igvmm(&["run", packed.to_str().unwrap(), "--cmdline", "quiet"]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.contains("--cmdline is ignored: the file has no CommandLine parameter (header 0x30E) to receive it"),
        "{text}"
    );
    assert!(
        text.ends_with("igvmm: guest wrote 0x0 to the debug-exit port 0x501 (exit status 1)\n"),
        "{text}"
    );
}
