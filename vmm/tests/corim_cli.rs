//! CoRIM handling of the `igvmm` binary and library: `pack --corim` and `--corim-auto`, the
//! `corim` subcommands, the decoded CoRIM in `inspect`, and the checks `run` makes before it
//! publishes a CoRIM through fw_cfg.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{conformance_dir, kvm_available};
use igvm::IgvmFile;
use igvm_loader::corim::{self, ReferenceMatch, IGVM_VHT_CORIM_DOCUMENT, IGVM_VHT_CORIM_SIGNATURE};
use igvm_loader::measure::{self, Measurement, SnpMode};
use igvm_loader::plan::{HostOnlyData, Platform};
use vmm::machine::{self, CORIM_FILE};
use vmm::{EventStrings, GuestImage, PlatformRequest, VmConfig, VmmError};

/// MRTD of tiny-tdp-synthetic.igvm under the igvm 0.5 rule (igvm 0.5 computes the same value).
const TDP_MRTD: &str = "86B13FD8548F38F4895E1AC6292C35588E272B294A2E8C0393043F963C9705CD5D20B5126279F31EA908793DA09EBA3F";
/// KVM-launch digest of tiny-qemu-snp-native.igvm with one vCPU.
const QEMU_SNP_KVM_DIGEST: &str = "AA9169F94BC32C746EEA672387446948B52662E59A0035E73F005CD8FDDBD1CB5FD33D9326A11671E56687D75BB5EF03";
/// Bytes that are not one CBOR data item: 0xFF is a lone "break" code.
const BAD_CBOR: [u8; 3] = [0xFF, 0x00, 0x01];

fn igvmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_igvmm"))
        .args(args)
        .env_remove("RUST_LOG")
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

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("corim_cli");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn conformance(name: &str) -> Vec<u8> {
    let file = conformance_dir().join(name);
    std::fs::read(&file).unwrap_or_else(|error| panic!("reading {}: {error}", file.display()))
}

/// Returns igvmm's prediction for a one-vCPU launch of `file` on `platform`.
fn predicted(file: &[u8], platform: Platform) -> Measurement {
    let plan = measure::plan_for_measurement(file, platform, 1).unwrap();
    match platform {
        Platform::Tdx => measure::measure_tdx(&plan).unwrap(),
        _ => measure::measure_snp(
            &plan,
            SnpMode::KvmLaunch {
                vcpus: 1,
                cpuid_1_eax: 0,
            },
        )
        .unwrap(),
    }
}

/// Packs the demo guest with `document` (and `signature`) as its native CoRIM.
fn demo_with_corim(name: &str, document: &[u8], signature: Option<&[u8]>) -> PathBuf {
    let document_path = scratch(&format!("{name}.cbor"));
    std::fs::write(&document_path, document).unwrap();
    let image = scratch(&format!("{name}.igvm"));
    let mut args = vec![
        "pack".to_string(),
        "--demo".into(),
        "--corim".into(),
        path(&document_path).into(),
        "--corim-platform".into(),
        "native".into(),
        "-o".into(),
        path(&image).into(),
    ];
    if let Some(signature) = signature {
        let signature_path = scratch(&format!("{name}.cose"));
        std::fs::write(&signature_path, signature).unwrap();
        args.push("--corim-signature".into());
        args.push(path(&signature_path).into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let packed = igvmm(&args);
    assert_eq!(packed.status.code(), Some(0), "{}", stderr(&packed));
    image
}

// ---------------------------------------------------------------------------------------------
// run: decoding with and without --strict-corim

#[test]
fn bad_cbor_warns_without_strict() {
    if !kvm_available("bad_cbor_warns_without_strict") {
        return;
    }
    let image = demo_with_corim("bad-cbor", &BAD_CBOR, None);
    let output = igvmm(&["run", path(&image)]);
    assert!(stdout(&output).ends_with("demo done\n"), "{output:?}");
    // Outside --demo the debug-exit status is QEMU's (0 << 1) | 1.
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.contains("the CoRIM does not decode: the CoRIM document is not valid CBOR"),
        "{text}"
    );
}

#[test]
fn bad_cbor_fails_with_strict() {
    if !kvm_available("bad_cbor_fails_with_strict") {
        return;
    }
    let image = demo_with_corim("bad-cbor-strict", &BAD_CBOR, None);
    let output = igvmm(&["run", "--strict-corim", path(&image)]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "", "the guest must not run");
    let text = stderr(&output);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with(
            "igvmm: --strict-corim: the CoRIM does not decode: the CoRIM document is not valid CBOR"
        ),
        "{text}"
    );
}

#[test]
fn signature_without_tag_18_is_reported() {
    if !kvm_available("signature_without_tag_18_is_reported") {
        return;
    }
    let document = corim::launch_measurement_corim(
        &conformance("tiny-tdp-synthetic.igvm"),
        Platform::Tdx,
        0,
        None,
    )
    .unwrap();
    // An empty CBOR array where the COSE_Sign1 (tag 18) belongs.
    let image = demo_with_corim("untagged-signature", &document, Some(&[0x80]));

    let output = igvmm(&["run", path(&image)]);
    assert!(stdout(&output).ends_with("demo done\n"), "{output:?}");
    let warning =
        "the CoRIM signature must be a COSE_Sign1 (CBOR tag 18), found an array of 0 items";
    assert!(stderr(&output).contains(warning), "{}", stderr(&output));

    let output = igvmm(&["run", "--strict-corim", path(&image)]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        format!("igvmm: --strict-corim: the CoRIM does not decode: {warning}\n")
    );
}

// ---------------------------------------------------------------------------------------------
// run: which CoRIM is published, and the reference value check

#[test]
fn corim_for_other_platform_publishes_nothing() {
    // tiny-qemu-snp-native.igvm carries sev-snp and native; the CoRIM is for sev-snp only.
    let original = conformance("tiny-qemu-snp-native.igvm");
    let document = corim::launch_measurement_corim(&original, Platform::SevSnp, 0, None).unwrap();
    let file =
        vmm::commands::pack::embed_corim(&original, Platform::SevSnp, &document, None).unwrap();

    // The native launch that `run --platform native` loads has no CoRIM, so no fw_cfg file.
    let mut config = VmConfig::new(GuestImage::Igvm(file.clone()));
    config.platform = PlatformRequest::Native;
    let guest = vmm::load_guest(&config, 48).unwrap();
    assert_eq!(guest.plan.platform, Platform::Native);
    assert_eq!(guest.plan.host_only, HostOnlyData::default());
    let files =
        machine::corim_files(&guest.plan.host_only, &EventStrings::default(), true).unwrap();
    assert!(files.is_empty(), "{:?}", names(&files));

    // The sev-snp plan of the same file carries it and publishes the document and the event.
    let plan = measure::plan_for_measurement(&file, Platform::SevSnp, 1).unwrap();
    assert_eq!(
        plan.host_only.corim_document.as_deref(),
        Some(&document[..])
    );
    let files = machine::corim_files(&plan.host_only, &EventStrings::default(), true).unwrap();
    assert_eq!(
        names(&files),
        [CORIM_FILE, "opt/org.tianocode/sp800155evt/0"]
    );
}

fn names(files: &[(String, Vec<u8>)]) -> Vec<&str> {
    files.iter().map(|(name, _)| name.as_str()).collect()
}

fn host_only(document: Vec<u8>) -> HostOnlyData {
    HostOnlyData {
        corim_document: Some(document),
        corim_signature: None,
    }
}

#[test]
fn reference_value_matches_prediction() {
    let file = conformance("tiny-tdp-synthetic.igvm");
    let mrtd = predicted(&file, Platform::Tdx);
    assert_eq!(mrtd.digest_hex(), TDP_MRTD);
    let document =
        corim::launch_measurement_corim(&file, Platform::Tdx, 0, Some(&mrtd.digest)).unwrap();
    let result =
        machine::check_corim_reference(&host_only(document), Platform::Tdx, &mrtd, true).unwrap();
    assert_eq!(result, Some(ReferenceMatch::Match));
}

#[test]
fn reference_mismatch_warns_or_fails() {
    let file = conformance("tiny-tdp-synthetic.igvm");
    let mrtd = predicted(&file, Platform::Tdx);
    let wrong = [0x11u8; 48];
    let document = corim::launch_measurement_corim(&file, Platform::Tdx, 0, Some(&wrong)).unwrap();
    let data = host_only(document);

    let result = machine::check_corim_reference(&data, Platform::Tdx, &mrtd, false).unwrap();
    assert_eq!(
        result,
        Some(ReferenceMatch::Mismatch {
            reference: wrong.to_vec()
        })
    );

    let error = machine::check_corim_reference(&data, Platform::Tdx, &mrtd, true).unwrap_err();
    assert!(matches!(error, VmmError::Corim(_)), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "--strict-corim: the CoRIM reference value {} differs from the predicted measurement \
             {TDP_MRTD}",
            "11".repeat(48)
        )
    );
}

#[test]
fn reference_check_skips_what_it_cannot_compare() {
    let file = conformance("tiny-tdp-synthetic.igvm");
    let mrtd = predicted(&file, Platform::Tdx);

    // A CoRIM for another platform has no TDX reference value.
    let snp_file = conformance("tiny-qemu-snp-native.igvm");
    let snp_document =
        corim::launch_measurement_corim(&snp_file, Platform::SevSnp, 0, None).unwrap();
    let result =
        machine::check_corim_reference(&host_only(snp_document), Platform::Tdx, &mrtd, true)
            .unwrap();
    assert_eq!(result, Some(ReferenceMatch::NoReference));

    // A CoRIM that does not decode is left to the decoding check, and no CoRIM is no check.
    let result =
        machine::check_corim_reference(&host_only(BAD_CBOR.to_vec()), Platform::Tdx, &mrtd, true)
            .unwrap();
    assert_eq!(result, None);
    let result =
        machine::check_corim_reference(&HostOnlyData::default(), Platform::Tdx, &mrtd, true)
            .unwrap();
    assert_eq!(result, None);
}

// ---------------------------------------------------------------------------------------------
// pack --corim-auto, inspect, corim extract and corim add

#[test]
fn pack_demo_corim_auto_needs_measurable_platform() {
    let output = igvmm(&[
        "pack",
        "--demo",
        "--corim-auto",
        "-o",
        path(&scratch("demo-auto.igvm")),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "igvmm: --corim-auto needs a platform with a launch measurement (sev-snp or tdx); this \
         image has none\n"
    );
}

/// Writes `file` with igvmm's launch-measurement CoRIMs added, as `pack --corim-auto` adds them.
fn with_auto_corims(name: &str, file: &[u8]) -> (PathBuf, Vec<u8>) {
    let bytes = vmm::commands::pack::add_launch_measurement_corims(file, 3).unwrap();
    let output = scratch(name);
    std::fs::write(&output, &bytes).unwrap();
    (output, bytes)
}

#[test]
fn corim_auto_shows_in_inspect() {
    let (tdx_path, _) = with_auto_corims("tdp-auto.igvm", &conformance("tiny-tdp-synthetic.igvm"));
    let output = igvmm(&["inspect", path(&tdx_path)]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    let expected = format!(
        "CoRIM contents:\n  tdx: unsigned, decodes, profile {}\n    reference Intel TDX MRTD: \
         {TDP_MRTD}\n    tdx mrtd: match\n",
        corim::LAUNCH_MEASUREMENT_PROFILE
    );
    assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");

    let output = igvmm(&["inspect", "--json", path(&tdx_path)]);
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let corim = &value["corim"][0];
    assert_eq!(corim["platforms"], serde_json::json!(["tdx"]));
    assert_eq!(corim["signed"], false);
    assert_eq!(corim["decoded"], true);
    assert_eq!(corim["references"][0]["digest"], TDP_MRTD);
    assert_eq!(corim["references"][0]["algorithm"], corim::NI_SHA384);
    assert_eq!(corim["comparisons"][0]["result"], "match");

    // SEV-SNP: the reference value is the KVM-launch digest, not the file digest.
    let (snp_path, _) =
        with_auto_corims("qemu-auto.igvm", &conformance("tiny-qemu-snp-native.igvm"));
    let output = igvmm(&["inspect", "--json", path(&snp_path)]);
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let corim = &value["corim"][0];
    assert_eq!(corim["platforms"], serde_json::json!(["sev-snp"]));
    assert_eq!(corim["references"][0]["digest"], QEMU_SNP_KVM_DIGEST);
    let results: Vec<(&str, &str)> = corim["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["kind"].as_str().unwrap(),
                entry["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(results, [("kvm-launch", "match"), ("file", "mismatch")]);

    // The CoRIM is not measured.
    let output = igvmm(&["measure", path(&tdx_path), "--platform", "tdx"]);
    assert_eq!(stdout(&output), format!("{TDP_MRTD}\n"));
}

#[test]
fn corim_extract_add_round_trip() {
    let original = conformance("tiny-tdp-synthetic.igvm");
    let (auto_path, auto_bytes) = with_auto_corims("tdp-round-trip.igvm", &original);
    let (document, signature) = corim::extract(&auto_bytes, Platform::Tdx).unwrap().unwrap();
    assert_eq!(signature, None);

    let extracted = scratch("tdp-round-trip.cbor");
    let output = igvmm(&[
        "corim",
        "extract",
        path(&auto_path),
        "--platform",
        "tdx",
        "-o",
        path(&extracted),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(std::fs::read(&extracted).unwrap(), document);

    // Adding the extracted document to the original file rebuilds the same bytes.
    let original_path = scratch("tdp-original.igvm");
    std::fs::write(&original_path, &original).unwrap();
    let rebuilt = scratch("tdp-rebuilt.igvm");
    let output = igvmm(&[
        "corim",
        "add",
        path(&original_path),
        "--platform",
        "tdx",
        "--document",
        path(&extracted),
        "-o",
        path(&rebuilt),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        std::fs::read(&rebuilt).unwrap() == auto_bytes,
        "the files differ"
    );
}

/// One variable header of an IGVM file: its type without the optional bit, and its body.
#[derive(Debug, PartialEq)]
struct RawHeader {
    header_type: u32,
    body: Vec<u8>,
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

/// Returns the variable headers of `file`, with the `file_offset` field of the headers that
/// reference file data set to zero, because adding a CoRIM header moves that data.
fn raw_headers(file: &[u8]) -> Vec<RawHeader> {
    // Body offsets of `file_offset` in IGVM_VHS_PARAMETER_AREA (0x301), IGVM_VHS_PAGE_DATA
    // (0x302) and IGVM_VHS_VP_CONTEXT (0x304).
    const FILE_OFFSET_AT_12: [u32; 3] = [0x301, 0x302, 0x304];
    let start = read_u32(file, 8) as usize;
    let end = start + read_u32(file, 12) as usize;
    let mut headers = Vec::new();
    let mut offset = start;
    while offset < end {
        let header_type = read_u32(file, offset) & !(1 << 31);
        let len = read_u32(file, offset + 4) as usize;
        let mut body = file[offset + 8..offset + 8 + len].to_vec();
        if FILE_OFFSET_AT_12.contains(&header_type) {
            body[12..16].fill(0);
        }
        headers.push(RawHeader { header_type, body });
        offset = (offset + 8 + len).next_multiple_of(8);
    }
    headers
}

fn without_corim(headers: Vec<RawHeader>) -> Vec<RawHeader> {
    headers
        .into_iter()
        .filter(|header| {
            header.header_type != IGVM_VHT_CORIM_DOCUMENT
                && header.header_type != IGVM_VHT_CORIM_SIGNATURE
        })
        .collect()
}

#[test]
fn corim_add_leaves_other_headers_untouched() {
    let original = conformance("tiny-qemu-snp-native.igvm");
    let original_path = scratch("qemu-original.igvm");
    std::fs::write(&original_path, &original).unwrap();
    let document = corim::launch_measurement_corim(&original, Platform::SevSnp, 1, None).unwrap();
    let document_path = scratch("qemu-snp.cbor");
    std::fs::write(&document_path, &document).unwrap();
    let with_corim = scratch("qemu-with-corim.igvm");
    let output = igvmm(&[
        "corim",
        "add",
        path(&original_path),
        "--platform",
        "sev-snp",
        "--document",
        path(&document_path),
        "-o",
        path(&with_corim),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let rewritten = std::fs::read(&with_corim).unwrap();

    // The fixed header keeps its magic, format version and revision fields.
    assert_eq!(rewritten[..8], original[..8]);
    let before = raw_headers(&original);
    let after = raw_headers(&rewritten);
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(
        after
            .iter()
            .filter(|header| header.header_type == IGVM_VHT_CORIM_DOCUMENT)
            .count(),
        1
    );
    assert!(
        without_corim(after) == without_corim(before),
        "a header other than the CoRIM changed"
    );

    // The data the headers reference moved with them: the parsed files agree header by header.
    let before = IgvmFile::new_from_binary(&original, None).unwrap();
    let after = IgvmFile::new_from_binary(&rewritten, None).unwrap();
    assert_eq!(after.platforms(), before.platforms());
    assert_eq!(after.directives(), before.directives());
    let other_headers: Vec<_> = after
        .initializations()
        .iter()
        .filter(|header| {
            !matches!(
                header,
                igvm::IgvmInitializationHeader::CorimDocument { .. }
                    | igvm::IgvmInitializationHeader::CorimSignature { .. }
            )
        })
        .cloned()
        .collect();
    assert_eq!(other_headers, before.initializations());
}
