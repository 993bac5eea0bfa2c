//! CoRIM handling on real files: generation with igvm 0.5's builder, decoding of the reference
//! value, and rewriting only the CoRIM headers of a file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;

use ciborium::Value;
use igvm::{IgvmFile, IgvmInitializationHeader};
use igvm_loader::corim::{
    self, CorimError, CorimWarning, ReferenceMatch, LAUNCH_MEASUREMENT_PROFILE, NI_SHA384,
};
use igvm_loader::measure::{self, hex_upper, plan_for_measurement, SnpMode};
use igvm_loader::plan::Platform;

fn conformance(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

const QEMU_SNP_FILE_DIGEST: &str = "583EBEC47ED943C6D6BF1D787F63776BFB15B1573E3B06013B2EBC77D8CF2BAD2038648B9A5F37C1D51EACD64C92C1F8";
const TDP_MRTD: &str = "86B13FD8548F38F4895E1AC6292C35588E272B294A2E8C0393043F963C9705CD5D20B5126279F31EA908793DA09EBA3F";

fn encode(value: &Value) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::into_writer(value, &mut bytes).unwrap();
    bytes
}

fn detached_signature() -> Vec<u8> {
    encode(&Value::Tag(
        18,
        Box::new(Value::Array(vec![
            Value::Bytes(vec![0xA1, 0x01, 0x38, 0x22]),
            Value::Map(vec![]),
            Value::Null,
            Value::Bytes(vec![0x5A; 96]),
        ])),
    ))
}

#[test]
fn generated_corim_carries_igvm_digest() {
    let file = conformance("tiny-qemu-snp-native.igvm");
    let document = corim::launch_measurement_corim(&file, Platform::SevSnp, 1, None).unwrap();
    let report = corim::inspect(&document, None).unwrap();
    assert_eq!(report.id.as_deref(), Some("AMD/SEV-SNP/launch-measurement"));
    assert_eq!(report.profile.as_deref(), Some(LAUNCH_MEASUREMENT_PROFILE));
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let reference = report.reference_for(Platform::SevSnp).unwrap();
    assert_eq!(
        (
            reference.vendor.as_str(),
            reference.model.as_str(),
            reference.mkey.as_str()
        ),
        ("AMD", "SEV-SNP", "MEASUREMENT")
    );
    assert_eq!(reference.algorithm, NI_SHA384);
    // igvm 0.5's builder takes igvm's digest, which measures the VMSA where the file puts it.
    assert_eq!(hex_upper(&reference.digest), QEMU_SNP_FILE_DIGEST);
}

#[test]
fn generated_corim_with_kvm_digest() {
    let file = conformance("tiny-qemu-snp-native.igvm");
    let plan = plan_for_measurement(&file, Platform::SevSnp, 1).unwrap();
    let kvm = measure::measure_snp(
        &plan,
        SnpMode::KvmLaunch {
            vcpus: 1,
            cpuid_1_eax: 0,
        },
    )
    .unwrap();
    let document =
        corim::launch_measurement_corim(&file, Platform::SevSnp, 1, Some(&kvm.digest)).unwrap();
    let report = corim::inspect(&document, None).unwrap();
    assert_eq!(
        report.compare(Platform::SevSnp, &kvm.digest),
        ReferenceMatch::Match
    );
    // Both copies of the digest (reference value and endorsement condition) were replaced.
    assert_eq!(report.references.len(), 1);
    let builder_digest = corim::launch_measurement_corim(&file, Platform::SevSnp, 1, None)
        .map(|plain| {
            corim::inspect(&plain, None).unwrap().references[0]
                .digest
                .clone()
        })
        .unwrap();
    assert_eq!(hex_upper(&builder_digest), QEMU_SNP_FILE_DIGEST);
    assert!(!document
        .windows(48)
        .any(|window| window == builder_digest.as_slice()));
}

#[test]
fn tdx_corim_reference_is_mrtd() {
    let file = conformance("tiny-tdp-synthetic.igvm");
    let document = corim::launch_measurement_corim(&file, Platform::Tdx, 7, None).unwrap();
    let report = corim::inspect(&document, None).unwrap();
    let reference = report.reference_for(Platform::Tdx).unwrap();
    assert_eq!(reference.mkey, "MRTD");
    assert_eq!(hex_upper(&reference.digest), TDP_MRTD);
    let wrong = [0u8; 48];
    assert_eq!(
        report.compare(Platform::Tdx, &wrong),
        ReferenceMatch::Mismatch {
            reference: reference.digest.clone()
        }
    );
    assert_eq!(
        report.compare(Platform::SevSnp, &wrong),
        ReferenceMatch::NoReference
    );
}

/// Splits a file into its variable headers as `(type, body)`, for comparisons.
fn headers(file: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let read = |offset: usize| u32::from_le_bytes(file[offset..offset + 4].try_into().unwrap());
    let start = read(8) as usize;
    let end = start + read(12) as usize;
    let mut offset = start;
    let mut headers = Vec::new();
    while offset < end {
        let header_type = read(offset);
        let len = read(offset + 4) as usize;
        headers.push((header_type, file[offset + 8..offset + 8 + len].to_vec()));
        offset = (offset + 8 + len).next_multiple_of(8);
    }
    headers
}

#[test]
fn add_keeps_every_other_header() {
    let file = conformance("tiny-qemu-snp-native.igvm");
    let document = corim::launch_measurement_corim(&file, Platform::SevSnp, 1, None).unwrap();
    let signature = detached_signature();
    let rewritten = corim::add_or_replace(&file, 1, &document, Some(&signature)).unwrap();

    // The igvm crate accepts the result and finds the same headers plus the CoRIM pair.
    let before = IgvmFile::new_from_binary(&file, None).unwrap();
    let after = IgvmFile::new_from_binary(&rewritten, None).unwrap();
    assert_eq!(before.platforms(), after.platforms());
    assert_eq!(before.directives(), after.directives());
    let added: Vec<&IgvmInitializationHeader> = after
        .initializations()
        .iter()
        .filter(|header| !before.initializations().contains(header))
        .collect();
    assert_eq!(
        added,
        [
            &IgvmInitializationHeader::CorimDocument {
                compatibility_mask: 1,
                document: document.clone()
            },
            &IgvmInitializationHeader::CorimSignature {
                compatibility_mask: 1,
                signature: signature.clone()
            }
        ]
    );

    // Every original header keeps its bytes, except the file offsets that moved with the data
    // by exactly the 48 bytes of the two new headers.
    let old = headers(&file);
    let new: Vec<(u32, Vec<u8>)> = headers(&rewritten)
        .into_iter()
        .filter(|(header_type, _)| *header_type != 0x104 && *header_type != 0x105)
        .collect();
    assert_eq!(old.len(), new.len());
    for ((old_type, old_body), (new_type, new_body)) in old.iter().zip(&new) {
        assert_eq!(old_type, new_type);
        let offset_field = matches!(old_type, 0x301 | 0x302 | 0x304).then_some(12);
        match offset_field {
            Some(field) => {
                let offset =
                    |body: &[u8]| u32::from_le_bytes(body[field..field + 4].try_into().unwrap());
                let (old_offset, new_offset) = (offset(old_body), offset(new_body));
                if old_offset == 0 {
                    assert_eq!(new_offset, 0);
                } else {
                    assert_eq!(new_offset, old_offset + 48);
                }
                assert_eq!(old_body[..field], new_body[..field]);
                assert_eq!(old_body[field + 4..], new_body[field + 4..]);
            }
            None => assert_eq!(old_body, new_body),
        }
    }

    // The data section is the old one, moved, followed by the two payloads.
    let old_data_start = 24 + u32::from_le_bytes(file[12..16].try_into().unwrap()) as usize;
    let new_data_start = 24 + u32::from_le_bytes(rewritten[12..16].try_into().unwrap()) as usize;
    assert_eq!(new_data_start, old_data_start + 48);
    assert_eq!(
        &rewritten[new_data_start..new_data_start + file.len() - old_data_start],
        &file[old_data_start..]
    );

    // The measurement does not change: the CoRIM is host-only.
    let before_digest = measure::measure_snp(
        &plan_for_measurement(&file, Platform::SevSnp, 1).unwrap(),
        SnpMode::FileDigest,
    )
    .unwrap();
    let after_digest = measure::measure_snp(
        &plan_for_measurement(&rewritten, Platform::SevSnp, 1).unwrap(),
        SnpMode::FileDigest,
    )
    .unwrap();
    assert_eq!(before_digest.digest, after_digest.digest);
}

#[test]
fn replace_is_stable_and_extract_round_trips() {
    let file = conformance("tiny-qemu-snp-native.igvm");
    let first = corim::launch_measurement_corim(&file, Platform::SevSnp, 1, None).unwrap();
    let once = corim::add_or_replace(&file, 1, &first, Some(&detached_signature())).unwrap();
    let second = corim::launch_measurement_corim(&file, Platform::SevSnp, 2, None).unwrap();
    let twice = corim::add_or_replace(&once, 1, &second, None).unwrap();

    // The replaced payloads ended the file, so they are gone; the file did not grow.
    assert_eq!(twice.len(), file.len() + 24 + second.len());
    assert_eq!(
        corim::extract(&twice, Platform::SevSnp).unwrap(),
        Some((second.clone(), None))
    );
    assert_eq!(corim::extract(&twice, Platform::Native).unwrap(), None);
    // Replacing with the same document again gives the same bytes.
    assert_eq!(
        corim::add_or_replace(&twice, 1, &second, None).unwrap(),
        twice
    );
    assert!(IgvmFile::new_from_binary(&twice, None).is_ok());
}

#[test]
fn corim_is_per_platform() {
    let file = conformance("tiny-native-snp-hyperv-policy.igvm");
    let snp_doc = corim::launch_measurement_corim(&file, Platform::SevSnp, 1, None).unwrap();
    let native_doc = encode(&Value::Tag(501, Box::new(Value::Map(vec![]))));
    let with_snp = corim::add_or_replace(&file, 1, &snp_doc, None).unwrap();
    let with_both = corim::add_or_replace(&with_snp, 2, &native_doc, None).unwrap();
    assert_eq!(
        corim::extract(&with_both, Platform::SevSnp)
            .unwrap()
            .unwrap()
            .0,
        snp_doc
    );
    assert_eq!(
        corim::extract(&with_both, Platform::Native)
            .unwrap()
            .unwrap()
            .0,
        native_doc
    );
    // The loader hands each platform its own document.
    let plan = plan_for_measurement(&with_both, Platform::SevSnp, 1).unwrap();
    assert_eq!(
        plan.host_only.corim_document.as_deref(),
        Some(snp_doc.as_slice())
    );
}

#[test]
fn add_rejects_unknown_mask() {
    let file = conformance("tiny-tdp-synthetic.igvm");
    let error = corim::add_or_replace(&file, 1, &[0xD9, 0x01, 0xF5, 0xA0], None).unwrap_err();
    assert!(matches!(error, CorimError::Layout(_)), "{error}");
    assert!(matches!(
        corim::extract(&file, Platform::SevSnp).unwrap_err(),
        CorimError::NoPlatform {
            platform: Platform::SevSnp
        }
    ));
}

#[test]
fn add_rejects_empty_payloads() {
    let file = conformance("tiny-qemu-snp-native.igvm");
    let document = [0xD9, 0x01, 0xF5, 0xA0];
    let error = corim::add_or_replace(&file, 1, &[], None).unwrap_err();
    assert!(matches!(error, CorimError::Empty("document")), "{error}");
    assert_eq!(error.to_string(), "the CoRIM document to embed is empty");
    let error = corim::add_or_replace(&file, 1, &document, Some(&[])).unwrap_err();
    assert!(matches!(error, CorimError::Empty("signature")), "{error}");
}

#[test]
fn signed_corim_embeds_document() {
    let file = conformance("tiny-tdp-synthetic.igvm");
    let document = corim::launch_measurement_corim(&file, Platform::Tdx, 1, None).unwrap();
    let signature = detached_signature();
    let signed = corim::signed_corim_bytes(&document, Some(&signature)).unwrap();
    let Value::Tag(18, inner) = ciborium::from_reader::<Value, _>(signed.as_slice()).unwrap()
    else {
        panic!("not a COSE_Sign1");
    };
    let Value::Array(items) = *inner else {
        panic!("not an array");
    };
    assert_eq!(items[2], Value::Bytes(document.clone()));
    assert_eq!(items[3], Value::Bytes(vec![0x5A; 96]));
    // The attached payload is reported when the result is inspected as a signature.
    let report = corim::inspect(&document, Some(&signed)).unwrap();
    assert!(report.signed);
    assert_eq!(report.warnings, [CorimWarning::AttachedPayload]);
}

#[test]
fn auto_corims_carry_predictions() {
    let file = conformance("tiny-qemu-snp-native.igvm");
    let with_corims = corim::with_launch_corims(&file, 4).unwrap();
    let (document, signature) = corim::extract(&with_corims, Platform::SevSnp)
        .unwrap()
        .unwrap();
    assert_eq!(signature, None);
    let reference = corim::inspect(&document, None).unwrap().references[0]
        .digest
        .clone();
    assert_eq!(
        hex_upper(&reference),
        "AA9169F94BC32C746EEA672387446948B52662E59A0035E73F005CD8FDDBD1CB5FD33D9326A11671E56687D75BB5EF03"
    );
    // The native platform has no launch measurement and gets no CoRIM.
    assert_eq!(
        corim::extract(&with_corims, Platform::Native).unwrap(),
        None
    );

    // The Hyper-V layout cannot be launched on KVM, so its CoRIM carries the file digest.
    let hyperv = conformance("tiny-native-snp-hyperv-policy.igvm");
    let with_corims = corim::with_launch_corims(&hyperv, 1).unwrap();
    let (document, _) = corim::extract(&with_corims, Platform::SevSnp)
        .unwrap()
        .unwrap();
    let reference = corim::inspect(&document, None).unwrap().references[0]
        .digest
        .clone();
    assert_eq!(
        hex_upper(&reference),
        "9AEFA1E053B32D9B3BEE7B2163F03EFDBDD4B0E9A0EB3C36D1C57D0163B1B57F69D077880C7C135548B7B11518189902"
    );

    let tdp = conformance("tiny-tdp-synthetic.igvm");
    let with_corims = corim::with_launch_corims(&tdp, 1).unwrap();
    let (document, _) = corim::extract(&with_corims, Platform::Tdx)
        .unwrap()
        .unwrap();
    let reference = corim::inspect(&document, None).unwrap().references[0]
        .digest
        .clone();
    assert_eq!(hex_upper(&reference), TDP_MRTD);
}
