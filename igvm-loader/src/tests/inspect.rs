//! Summaries of the conformance files and of a file with a CoRIM.

use igvm::IgvmInitializationHeader;

use super::fixtures::*;
use crate::builder::IgvmBuilder;
use crate::host::PlatformChoice;
use crate::inspect::{summarize, CpuMode};
use crate::load::load;
use crate::plan::Platform;
use crate::ParameterKind;

#[test]
fn summarizes_all_conformance_files() {
    let names = [
        "msigvm-capi-testdata.igvm",
        "tiny-native-snp-hyperv-policy.igvm",
        "tiny-qemu-snp-native.igvm",
        "tiny-tdp-synthetic.igvm",
    ];
    for name in names {
        let summary = summarize(&conformance(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!summary.platforms.is_empty(), "{name}");
        assert!(summary.to_string().contains("platforms:"), "{name}");
    }
}

#[test]
fn summarizes_tiny_qemu() {
    let summary = summarize(&conformance("tiny-qemu-snp-native.igvm")).unwrap();
    assert_eq!(summary.format_version, 2);
    let platforms: Vec<(&str, u32)> = summary
        .platforms
        .iter()
        .map(|p| (p.platform_type, p.compatibility_mask))
        .collect();
    assert_eq!(platforms, vec![("sev-snp", 0x1), ("native", 0x2)]);
    assert_eq!(summary.header_counts.get("PageData"), Some(&31));
    assert_eq!(summary.header_counts.get("ParameterInsert"), Some(&4));
    assert_eq!(summary.header_counts.get("VpContext"), Some(&2));
    assert_eq!(summary.header_counts.get("GuestPolicy"), Some(&1));
    assert_eq!(summary.page_data_bytes, 31 * 0x1000);
    assert_eq!(summary.page_data_file_bytes, 18 * 0x1000);

    let area0 = summary
        .parameter_areas
        .iter()
        .find(|a| a.area_index == 0)
        .unwrap();
    assert_eq!(area0.size, 0x1000);
    assert_eq!(
        area0.parameters,
        vec![
            (ParameterKind::VpCount, 0),
            (ParameterKind::EnvironmentInfo, 4)
        ]
    );
    assert_eq!(area0.inserts, vec![(0x801_0000, 0x3)]);

    let contexts: Vec<(&str, u16, CpuMode)> = summary
        .vp_contexts
        .iter()
        .map(|c| (c.format, c.vp_index, c.mode))
        .collect();
    // The native context runs with paging and EFER.LMA but a 32-bit code segment; the VMSA
    // starts in 32-bit protected mode without paging.
    assert_eq!(
        contexts,
        vec![
            ("native", 0, CpuMode::Compatibility),
            ("sev-snp", 0, CpuMode::Protected)
        ]
    );
    assert_eq!(summary.vp_contexts[0].entry, Some(0x10002));
    assert!(summary.corim.is_empty());
}

#[test]
fn summarizes_vbs_file() {
    let summary = summarize(&conformance("msigvm-capi-testdata.igvm")).unwrap();
    assert_eq!(summary.platforms[0].platform_type, "vsm-isolation");
    assert_eq!(summary.header_counts.get("GuestPolicy"), Some(&2));
    assert_eq!(summary.header_counts.get("PageData"), Some(&8));
}

#[test]
fn summarizes_corim_and_keeps_it_host_only() {
    let document = b"\xd9\x01\xf5\xa1\x00\x61x".to_vec();
    let mut builder = IgvmBuilder::native();
    builder.pages(0x1000, &[1]).unwrap();
    builder.initialization(IgvmInitializationHeader::CorimDocument {
        compatibility_mask: NATIVE_MASK,
        document: document.clone(),
    });
    builder.initialization(IgvmInitializationHeader::CorimSignature {
        compatibility_mask: NATIVE_MASK,
        signature: vec![0xD2; 40],
    });
    let file = builder.build().unwrap();

    let summary = summarize(&file).unwrap();
    assert_eq!(summary.corim.len(), 1);
    let corim = &summary.corim[0];
    assert_eq!(corim.platforms, vec!["native"]);
    assert_eq!(corim.size, document.len());
    assert_eq!(corim.signature_size, Some(40));
    assert!(corim.signed());
    // SHA-256 of the document bytes, from Python's hashlib.
    assert_eq!(
        corim.sha256,
        "d569087fb6d1c2bede098db03ce10ca2eac24a38867f42a7871f30e8e9d8cd07"
    );

    let plan = load(
        &file,
        &options(PlatformChoice::Exact(Platform::Native), host_512m()),
    )
    .unwrap();
    assert_eq!(plan.host_only.corim_document, Some(document.clone()));
    assert_eq!(plan.host_only.corim_signature, Some(vec![0xD2; 40]));
    // The CoRIM never becomes a page.
    assert_eq!(plan.operations.len(), 1);
}
