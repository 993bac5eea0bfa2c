//! The `igvmm` binary's confidential-computing commands: `measure`, `corim`, and `run` on a host
//! without SEV-SNP or TDX.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const QEMU_SNP_KVM_DIGEST: &str = "AA9169F94BC32C746EEA672387446948B52662E59A0035E73F005CD8FDDBD1CB5FD33D9326A11671E56687D75BB5EF03";
const QEMU_SNP_FILE_DIGEST: &str = "583EBEC47ED943C6D6BF1D787F63776BFB15B1573E3B06013B2EBC77D8CF2BAD2038648B9A5F37C1D51EACD64C92C1F8";
const HYPERV_SNP_FILE_DIGEST: &str = "9AEFA1E053B32D9B3BEE7B2163F03EFDBDD4B0E9A0EB3C36D1C57D0163B1B57F69D077880C7C135548B7B11518189902";
const TDP_MRTD: &str = "86B13FD8548F38F4895E1AC6292C35588E272B294A2E8C0393043F963C9705CD5D20B5126279F31EA908793DA09EBA3F";

fn conformance(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance")
        .join(name)
}

fn igvmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_igvmm"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn measure_prints_digests() {
    let qemu = conformance("tiny-qemu-snp-native.igvm");
    let hyperv = conformance("tiny-native-snp-hyperv-policy.igvm");
    let tdp = conformance("tiny-tdp-synthetic.igvm");
    let cases: [(&Path, &[&str], &str); 4] = [
        (&qemu, &["--platform", "sev-snp"], QEMU_SNP_KVM_DIGEST),
        (
            &qemu,
            &["--platform", "sev-snp", "--file-digest"],
            QEMU_SNP_FILE_DIGEST,
        ),
        (
            &hyperv,
            &["--platform", "sev-snp", "--file-digest"],
            HYPERV_SNP_FILE_DIGEST,
        ),
        (&tdp, &["--platform", "tdx"], TDP_MRTD),
    ];
    for (file, options, digest) in cases {
        let mut args = vec!["measure", path(file)];
        args.extend_from_slice(options);
        let output = igvmm(&args);
        assert!(output.status.success(), "{args:?}: {output:?}");
        assert_eq!(stdout(&output), digest, "{args:?}");
    }
}

#[test]
fn measure_refuses_hyperv_vmsa_for_kvm() {
    let hyperv = conformance("tiny-native-snp-hyperv-policy.igvm");
    let output = igvmm(&["measure", path(&hyperv), "--platform", "sev-snp"]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "the VMSA is at GPA 0x8fff000, but KVM always places the VMSA at 0xfffffffff000"
        ),
        "{stderr}"
    );
}

#[test]
fn measure_json_has_counts() {
    let qemu = conformance("tiny-qemu-snp-native.igvm");
    let output = igvmm(&[
        "measure",
        path(&qemu),
        "--platform",
        "sev-snp",
        "--cpus",
        "2",
        "--cpuid-signature",
        "0xA00F11",
        "--json",
    ]);
    assert!(output.status.success(), "{output:?}");
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["platform"], "sev-snp");
    assert_eq!(value["mode"], "kvm-launch");
    assert_eq!(value["vcpus"], 2);
    assert_eq!(value["vmsas"], 2);
    assert_eq!(value["pages_measured"], 35 + 2);
    assert!(value["measure_seconds"].as_f64().unwrap() >= 0.0);
    assert!(value["mib_per_second"].as_f64().is_some());
    assert_ne!(value["digest"], QEMU_SNP_KVM_DIGEST);
    assert_eq!(value["notes"].as_array().unwrap().len(), 2);
}

#[test]
fn corim_add_then_extract() {
    let directory = std::env::temp_dir().join(format!("igvmm-coco-cli-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let tdp = conformance("tiny-tdp-synthetic.igvm");
    let document = igvm_loader::corim::launch_measurement_corim(
        &std::fs::read(&tdp).unwrap(),
        igvm_loader::plan::Platform::Tdx,
        3,
        None,
    )
    .unwrap();
    let document_path = directory.join("doc.cbor");
    std::fs::write(&document_path, &document).unwrap();
    let with_corim = directory.join("with-corim.igvm");
    let output = igvmm(&[
        "corim",
        "add",
        path(&tdp),
        "--platform",
        "tdx",
        "--document",
        path(&document_path),
        "-o",
        path(&with_corim),
    ]);
    assert!(output.status.success(), "{output:?}");

    let extracted = directory.join("extracted.cbor");
    let output = igvmm(&[
        "corim",
        "extract",
        path(&with_corim),
        "--platform",
        "tdx",
        "-o",
        path(&extracted),
    ]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(std::fs::read(&extracted).unwrap(), document);

    // The measurement does not change.
    let output = igvmm(&["measure", path(&with_corim), "--platform", "tdx"]);
    assert_eq!(stdout(&output), TDP_MRTD);

    // A document that is not a tagged CoRIM is added with a warning that gives the reason, as
    // `pack --corim` does; `run --strict-corim` rejects it at launch.
    std::fs::write(&document_path, [0xA0]).unwrap();
    let output = igvmm(&[
        "corim",
        "add",
        path(&tdp),
        "--platform",
        "tdx",
        "--document",
        path(&document_path),
        "-o",
        path(&directory.join("bad.igvm")),
    ]);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains(
        "adding a CoRIM that does not decode: the CoRIM document must be a \
         tagged-unsigned-corim-map (CBOR tag 501), found a map of 0 entries"
    ));
    std::fs::remove_dir_all(&directory).unwrap();
}

fn assert_host_lacks(platform: &str, name: &str, file: &str) {
    if platform == "sev-snp" && vmm::coco::probe_snp().is_ok()
        || platform == "tdx" && vmm::coco::probe_tdx().is_ok()
    {
        eprintln!("skipped: this host supports {name}");
        return;
    }
    let file = conformance(file);
    let output = igvmm(&["run", "--platform", platform, path(&file)]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with(&format!("igvmm: this host cannot run {name} guests: ")),
        "{stderr}"
    );
    assert!(lines[0].contains("KVM_CAP_VM_TYPES"), "{stderr}");
}

#[test]
fn run_snp_names_what_host_lacks() {
    assert_host_lacks("sev-snp", "SEV-SNP", "tiny-qemu-snp-native.igvm");
}

#[test]
fn run_tdx_names_what_host_lacks() {
    assert_host_lacks("tdx", "TDX", "tiny-tdp-synthetic.igvm");
}
