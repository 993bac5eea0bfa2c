//! Measurement models against independent values: the digests that igvm 0.5, COCONUT-SVSM's
//! igvmmeasure and td-shim compute for the conformance files, and igvm 0.5's
//! `generate_snp_measurement` / `generate_tdx_measurement` on files generated here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;

use igvm::snp_defs::{SevFeatures, SevSelector, SevVmsa};
use igvm::{
    IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader, IgvmRevision,
};
use igvm_defs::{
    IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType, IGVM_VHS_PARAMETER,
    IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_SUPPORTED_PLATFORM,
};
use igvm_loader::measure::{
    self, hex_upper, plan_for_measurement, KvmSnpVcpuState, MeasureError, MeasureNote, MrtdHasher,
    SnpMode, VmsaError, KVM_VMSA_GPA,
};
use igvm_loader::plan::{PageData, PageKind, Platform};
use zerocopy::{FromZeros, IntoBytes};

const QEMU_SNP_FILE_DIGEST: &str = "583EBEC47ED943C6D6BF1D787F63776BFB15B1573E3B06013B2EBC77D8CF2BAD2038648B9A5F37C1D51EACD64C92C1F8";
const HYPERV_SNP_FILE_DIGEST: &str = "9AEFA1E053B32D9B3BEE7B2163F03EFDBDD4B0E9A0EB3C36D1C57D0163B1B57F69D077880C7C135548B7B11518189902";
const TDP_MRTD: &str = "86B13FD8548F38F4895E1AC6292C35588E272B294A2E8C0393043F963C9705CD5D20B5126279F31EA908793DA09EBA3F";
const TDP_MRTD_TD_SHIM: &str = "25B80151DE1ED39A7627A59CD24C317F8EDC1A018EE23C2483DEB031EBEC116EBEBEAF52B1099DA6E2D53E4503FD8410";

fn conformance(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

const KVM_ONE_VCPU: SnpMode = SnpMode::KvmLaunch {
    vcpus: 1,
    cpuid_1_eax: 0x00A0_0F11,
};

/// igvm 0.5's SNP digest of `file` after moving every SnpVpContext to the end of the directives,
/// which is the order in which KVM measures them.
fn igvm_snp_digest_vmsa_last(file: &IgvmFile, mask: u32) -> String {
    let mut directives: Vec<IgvmDirectiveHeader> = file
        .directives()
        .iter()
        .filter(|d| !matches!(d, IgvmDirectiveHeader::SnpVpContext { .. }))
        .cloned()
        .collect();
    directives.extend(
        file.directives()
            .iter()
            .filter(|d| matches!(d, IgvmDirectiveHeader::SnpVpContext { .. }))
            .cloned(),
    );
    hex_upper(
        &igvm::measurement::generate_snp_measurement(file.initializations(), &directives, mask)
            .unwrap(),
    )
}

#[test]
fn qemu_snp_file_digest_matches_igvmmeasure() {
    let file = conformance("tiny-qemu-snp-native.igvm");
    let plan = plan_for_measurement(&file, Platform::SevSnp, 1).unwrap();
    let measurement = measure::measure_snp(&plan, SnpMode::FileDigest).unwrap();
    assert_eq!(measurement.digest_hex(), QEMU_SNP_FILE_DIGEST);
    assert_eq!(measurement.vmsas, 1);
}

#[test]
fn qemu_snp_kvm_digest_measures_vmsa_last() {
    // The file puts its CPUID and SECRETS pages after the VMSA directive. KVM measures the VMSA
    // at LAUNCH_FINISH, after every page, so a KVM launch cannot reproduce the file digest.
    let bytes = conformance("tiny-qemu-snp-native.igvm");
    let plan = plan_for_measurement(&bytes, Platform::SevSnp, 1).unwrap();
    let measurement = measure::measure_snp(&plan, KVM_ONE_VCPU).unwrap();

    let file = IgvmFile::new_from_binary(&bytes, None).unwrap();
    let independent = igvm_snp_digest_vmsa_last(&file, 1);
    assert_eq!(measurement.digest_hex(), independent);
    assert_eq!(
        measurement.digest_hex(),
        "AA9169F94BC32C746EEA672387446948B52662E59A0035E73F005CD8FDDBD1CB5FD33D9326A11671E56687D75BB5EF03"
    );
    assert_ne!(measurement.digest_hex(), QEMU_SNP_FILE_DIGEST);
    assert_eq!(
        measurement.notes,
        [MeasureNote::PagesAfterVmsa {
            vp_index: 0,
            operations_after: 2
        }]
    );
    assert_eq!(measurement.vmsas, 1);
}

#[test]
fn qemu_snp_vmsa_is_already_in_kvm_form() {
    let file = conformance("tiny-qemu-snp-native.igvm");
    let plan = plan_for_measurement(&file, Platform::SevSnp, 1).unwrap();
    let context = &plan.vp_contexts[0];
    let igvm_loader::plan::VpState::Snp { gpa, vmsa } = &context.state else {
        panic!("vp 0 is not an SNP context");
    };
    let state = KvmSnpVcpuState::from_file_vmsa(vmsa, *gpa).unwrap();
    assert_eq!(state.to_kvm_vmsa().as_bytes(), vmsa.as_bytes());
    assert_eq!(state.init2_vmsa_features(), 0x28);
}

#[test]
fn hyperv_snp_file_digest_matches_igvmmeasure() {
    let bytes = conformance("tiny-native-snp-hyperv-policy.igvm");
    let plan = plan_for_measurement(&bytes, Platform::SevSnp, 1).unwrap();
    let measurement = measure::measure_snp(&plan, SnpMode::FileDigest).unwrap();
    assert_eq!(measurement.digest_hex(), HYPERV_SNP_FILE_DIGEST);
}

#[test]
fn hyperv_snp_kvm_launch_rejects_vmsa_gpa() {
    let bytes = conformance("tiny-native-snp-hyperv-policy.igvm");
    let plan = plan_for_measurement(&bytes, Platform::SevSnp, 1).unwrap();
    let error = measure::measure_snp(&plan, KVM_ONE_VCPU).unwrap_err();
    match error {
        MeasureError::Vmsa {
            vp_index: 0,
            error: VmsaError::Gpa { gpa: 0x8FFF000 },
            ..
        } => {}
        other => panic!("unexpected error {other:?}"),
    }
    assert!(error_text(&bytes).contains("0x8fff000"));
}

fn error_text(bytes: &[u8]) -> String {
    let plan = plan_for_measurement(bytes, Platform::SevSnp, 1).unwrap();
    measure::measure_snp(&plan, KVM_ONE_VCPU)
        .unwrap_err()
        .to_string()
}

#[test]
fn tdp_mrtd_matches_igvm() {
    let file = conformance("tiny-tdp-synthetic.igvm");
    let plan = plan_for_measurement(&file, Platform::Tdx, 1).unwrap();
    let measurement = measure::measure_tdx(&plan).unwrap();
    assert_eq!(measurement.digest_hex(), TDP_MRTD);
}

#[test]
fn tdp_td_shim_rule_gives_other_mrtd() {
    // td-shim's tool adds zero pages without extending them and skips parameter areas. Replaying
    // the same plan under that rule reproduces td-shim's value.
    let file = conformance("tiny-tdp-synthetic.igvm");
    let plan = plan_for_measurement(&file, Platform::Tdx, 1).unwrap();
    let mut mrtd = MrtdHasher::new();
    let mut zero_ops = 0;
    let mut parameter_ops = 0;
    for op in &plan.operations {
        match (op.kind, &op.data) {
            (PageKind::Parameter { .. }, _) => parameter_ops += 1,
            (PageKind::Normal, PageData::Zero) => {
                zero_ops += 1;
                for page in op.pages_4k() {
                    mrtd.add_page(page.gpa);
                }
            }
            (PageKind::Normal, PageData::Bytes(_)) => {
                for page in op.pages_4k() {
                    mrtd.add_measured_page(page.gpa, page.bytes);
                }
            }
            (kind, _) => panic!("unexpected page kind {kind:?}"),
        }
    }
    assert_eq!((zero_ops, parameter_ops), (14, 4));
    assert_eq!(hex_upper(&mrtd.digest()), TDP_MRTD_TD_SHIM);
}

// Generated files.

const SNP_MASK: u32 = 1;
const TDX_MASK: u32 = 2;
const BOTH: u32 = SNP_MASK | TDX_MASK;

fn page(seed: u8) -> Vec<u8> {
    (0..4096u32)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn page_data(
    gpa: u64,
    mask: u32,
    data_type: IgvmPageDataType,
    flags: IgvmPageDataFlags,
    data: Vec<u8>,
) -> IgvmDirectiveHeader {
    IgvmDirectiveHeader::PageData {
        gpa,
        compatibility_mask: mask,
        flags,
        data_type,
        data,
    }
}

/// A 32-bit protected-mode VMSA in the form KVM produces.
fn kvm_form_vmsa(rip: u64) -> Box<SevVmsa> {
    let mut vmsa = SevVmsa::new_box_zeroed().unwrap();
    let flat = |attrib| SevSelector {
        selector: 0x10,
        attrib,
        limit: 0xFFFF_FFFF,
        base: 0,
    };
    vmsa.cs = SevSelector {
        selector: 8,
        ..flat(0xC9B)
    };
    vmsa.es = flat(0xC93);
    vmsa.ss = flat(0xC93);
    vmsa.ds = flat(0xC93);
    vmsa.fs = flat(0xC93);
    vmsa.gs = flat(0xC93);
    vmsa.efer = 0x1000;
    vmsa.cr0 = 0x31;
    vmsa.cr4 = 0x40;
    vmsa.xcr0 = 1;
    vmsa.rflags = 2;
    vmsa.rip = rip;
    vmsa.pat = 0x0007_0406_0007_0406;
    vmsa.x87_fcw = 0x37F;
    vmsa.mxcsr = 0x1F80;
    vmsa.sev_features = SevFeatures::from_bits(0x21);
    vmsa
}

/// Directives that cover every page kind, in an order KVM can reproduce (VP contexts last).
fn mixed_directives(vp_contexts: u16) -> Vec<IgvmDirectiveHeader> {
    let normal = IgvmPageDataFlags::new();
    let mut directives = vec![
        IgvmDirectiveHeader::ParameterArea {
            number_of_bytes: 0x2000,
            parameter_area_index: 0,
            initial_data: Vec::new(),
        },
        IgvmDirectiveHeader::VpCount(IGVM_VHS_PARAMETER {
            parameter_area_index: 0,
            byte_offset: 0,
        }),
        page_data(0x10_0000, BOTH, IgvmPageDataType::NORMAL, normal, page(1)),
        page_data(0x10_1000, BOTH, IgvmPageDataType::NORMAL, normal, page(2)),
        page_data(
            0x10_2000,
            BOTH,
            IgvmPageDataType::NORMAL,
            normal,
            vec![0xEE; 100],
        ),
        page_data(
            0x10_3000,
            BOTH,
            IgvmPageDataType::NORMAL,
            normal,
            Vec::new(),
        ),
        page_data(
            0x10_4000,
            BOTH,
            IgvmPageDataType::NORMAL,
            normal,
            Vec::new(),
        ),
        page_data(
            0x10_5000,
            BOTH,
            IgvmPageDataType::NORMAL,
            IgvmPageDataFlags::new().with_unmeasured(true),
            page(3),
        ),
        page_data(
            0x10_6000,
            BOTH,
            IgvmPageDataType::NORMAL,
            IgvmPageDataFlags::new().with_shared(true),
            page(4),
        ),
        page_data(
            0x10_7000,
            SNP_MASK,
            IgvmPageDataType::SECRETS,
            normal,
            Vec::new(),
        ),
        page_data(
            0x10_8000,
            SNP_MASK,
            IgvmPageDataType::CPUID_DATA,
            normal,
            page(5),
        ),
        page_data(
            0x10_9000,
            SNP_MASK,
            IgvmPageDataType::CPUID_XF,
            normal,
            page(6),
        ),
        IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
            gpa: 0x20_0000,
            compatibility_mask: BOTH,
            parameter_area_index: 0,
        }),
        page_data(0x10_a000, BOTH, IgvmPageDataType::NORMAL, normal, page(7)),
    ];
    for vp_index in 0..vp_contexts {
        directives.push(IgvmDirectiveHeader::SnpVpContext {
            gpa: KVM_VMSA_GPA,
            compatibility_mask: SNP_MASK,
            vp_index,
            vmsa: kvm_form_vmsa(0x10_0000 + u64::from(vp_index) * 0x10),
        });
    }
    directives
}

fn build_file(directives: Vec<IgvmDirectiveHeader>) -> (IgvmFile, Vec<u8>) {
    let platform = |mask, platform_type| {
        IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
            compatibility_mask: mask,
            highest_vtl: 0,
            platform_type,
            platform_version: 1,
            shared_gpa_boundary: 0,
        })
    };
    let file = IgvmFile::new(
        IgvmRevision::V1,
        vec![
            platform(SNP_MASK, IgvmPlatformType::SEV_SNP),
            platform(TDX_MASK, IgvmPlatformType::TDX),
        ],
        vec![IgvmInitializationHeader::GuestPolicy {
            policy: 0x30000,
            compatibility_mask: SNP_MASK,
        }],
        directives,
    )
    .unwrap();
    let mut bytes = Vec::new();
    file.serialize(&mut bytes).unwrap();
    (file, bytes)
}

fn igvm_snp(file: &IgvmFile) -> String {
    hex_upper(
        &igvm::measurement::generate_snp_measurement(
            file.initializations(),
            file.directives(),
            SNP_MASK,
        )
        .unwrap(),
    )
}

fn igvm_tdx(file: &IgvmFile) -> String {
    hex_upper(&igvm::measurement::generate_tdx_measurement(file.directives(), TDX_MASK).unwrap())
}

#[test]
fn generated_snp_equals_igvm_in_both_modes() {
    let (file, bytes) = build_file(mixed_directives(1));
    let plan = plan_for_measurement(&bytes, Platform::SevSnp, 1).unwrap();
    let expected = igvm_snp(&file);

    let kvm = measure::measure_snp(&plan, KVM_ONE_VCPU).unwrap();
    assert_eq!(kvm.digest_hex(), expected);
    assert!(kvm.notes.is_empty(), "{:?}", kvm.notes);
    // Ten private page operations, two parameter pages and one VMSA; the shared page is skipped.
    assert_eq!(kvm.pages, 10 + 2 + 1);

    let file_mode = measure::measure_snp(&plan, SnpMode::FileDigest).unwrap();
    assert_eq!(file_mode.digest_hex(), expected);
}

#[test]
fn generated_tdx_equals_igvm() {
    let (file, bytes) = build_file(mixed_directives(1));
    let plan = plan_for_measurement(&bytes, Platform::Tdx, 1).unwrap();
    let measurement = measure::measure_tdx(&plan).unwrap();
    assert_eq!(measurement.digest_hex(), igvm_tdx(&file));
    // Seven private pages for TDX plus two parameter pages are added; six are extended.
    assert_eq!(
        (measurement.pages, measurement.pages_with_contents),
        (7 + 2, 6)
    );
}

#[test]
fn generated_snp_several_vp_contexts() {
    let (file, bytes) = build_file(mixed_directives(3));
    let expected = igvm_snp(&file);
    let plan = plan_for_measurement(&bytes, Platform::SevSnp, 3).unwrap();
    let file_mode = measure::measure_snp(&plan, SnpMode::FileDigest).unwrap();
    assert_eq!(file_mode.digest_hex(), expected);
    assert_eq!(file_mode.vmsas, 3);

    // All three VMSAs are last, at KVM's GPA and in KVM's form, so a 3-vCPU KVM launch
    // measures the same bytes.
    let kvm = measure::measure_snp(
        &plan,
        SnpMode::KvmLaunch {
            vcpus: 3,
            cpuid_1_eax: 0,
        },
    )
    .unwrap();
    assert_eq!(kvm.digest_hex(), expected);

    let too_few = measure::measure_snp(&plan, KVM_ONE_VCPU).unwrap_err();
    assert_eq!(
        too_few,
        MeasureError::VpBeyondVcpus {
            vp_index: 1,
            vcpus: 1
        }
    );
}

/// The VMSA KVM builds for an AP left at reset, written out field by field.
fn ap_reset_vmsa(signature: u32, sev_features: u64) -> Box<SevVmsa> {
    let mut vmsa = SevVmsa::new_box_zeroed().unwrap();
    let data = SevSelector {
        selector: 0,
        attrib: 0x93,
        limit: 0xFFFF,
        base: 0,
    };
    vmsa.es = data;
    vmsa.ss = data;
    vmsa.ds = data;
    vmsa.fs = data;
    vmsa.gs = data;
    vmsa.cs = SevSelector {
        selector: 0xF000,
        attrib: 0x9B,
        limit: 0xFFFF,
        base: 0xFFFF_0000,
    };
    vmsa.ldtr = SevSelector {
        attrib: 0x82,
        ..data
    };
    vmsa.tr = SevSelector {
        attrib: 0x8B,
        ..data
    };
    vmsa.gdtr.limit = 0xFFFF;
    vmsa.idtr.limit = 0xFFFF;
    vmsa.efer = 0x1000;
    vmsa.cr4 = 0x40;
    vmsa.cr0 = 0x10;
    vmsa.dr7 = 0x400;
    vmsa.dr6 = 0xFFFF_0FF0;
    vmsa.rflags = 2;
    vmsa.rip = 0xFFF0;
    vmsa.rdx = u64::from(signature);
    vmsa.pat = 0x0007_0406_0007_0406;
    vmsa.xcr0 = 1;
    vmsa.mxcsr = 0x1F80;
    vmsa.x87_fcw = 0x37F;
    vmsa.sev_features = SevFeatures::from_bits(sev_features);
    vmsa
}

#[test]
fn kvm_launch_with_aps_differs_from_igvm() {
    // A BSP-only file launched with 2 vCPUs: KVM also measures the AP's reset VMSA, which
    // igvm 0.5 does not know about. The expected digest is igvm's over the file plus that VMSA.
    let (file, bytes) = build_file(mixed_directives(1));
    let plan = plan_for_measurement(&bytes, Platform::SevSnp, 2).unwrap();
    let kvm = measure::measure_snp(
        &plan,
        SnpMode::KvmLaunch {
            vcpus: 2,
            cpuid_1_eax: 0x00A0_0F11,
        },
    )
    .unwrap();
    assert_ne!(kvm.digest_hex(), igvm_snp(&file));
    assert_eq!(kvm.vmsas, 2);

    let mut directives = file.directives().to_vec();
    directives.push(IgvmDirectiveHeader::SnpVpContext {
        gpa: KVM_VMSA_GPA,
        compatibility_mask: SNP_MASK,
        vp_index: 1,
        vmsa: ap_reset_vmsa(0x00A0_0F11, 0x21),
    });
    let expected = hex_upper(
        &igvm::measurement::generate_snp_measurement(file.initializations(), &directives, SNP_MASK)
            .unwrap(),
    );
    assert_eq!(kvm.digest_hex(), expected);
    assert!(kvm.notes.contains(&MeasureNote::ResetStateVcpus {
        first: 1,
        count: 1,
        cpuid_1_eax: 0x00A0_0F11
    }));
}

fn large_page_directives() -> Vec<IgvmDirectiveHeader> {
    let mut directives = mixed_directives(0);
    directives.push(page_data(
        0x40_0000,
        BOTH,
        IgvmPageDataType::NORMAL,
        IgvmPageDataFlags::new().with_is_2mb_page(true),
        Vec::new(),
    ));
    directives.push(IgvmDirectiveHeader::SnpVpContext {
        gpa: KVM_VMSA_GPA,
        compatibility_mask: SNP_MASK,
        vp_index: 0,
        vmsa: kvm_form_vmsa(0x10_0000),
    });
    directives
}

/// The same directives with the 2 MiB page written as 512 pages of 4 KiB.
fn split_large_page(directives: &[IgvmDirectiveHeader]) -> Vec<IgvmDirectiveHeader> {
    let mut split = Vec::new();
    for directive in directives {
        match directive {
            IgvmDirectiveHeader::PageData {
                gpa,
                compatibility_mask,
                flags,
                data_type,
                data,
            } if flags.is_2mb_page() => {
                assert!(data.is_empty());
                for index in 0..512u64 {
                    split.push(page_data(
                        gpa + index * 4096,
                        *compatibility_mask,
                        *data_type,
                        flags.with_is_2mb_page(false),
                        Vec::new(),
                    ));
                }
            }
            other => split.push(other.clone()),
        }
    }
    split
}

#[test]
fn large_pages_are_512_small_pages() {
    let directives = large_page_directives();
    let (file, bytes) = build_file(directives.clone());
    let (split_file, _) = build_file(split_large_page(&directives));

    let snp_plan = plan_for_measurement(&bytes, Platform::SevSnp, 1).unwrap();
    let snp = measure::measure_snp(&snp_plan, KVM_ONE_VCPU).unwrap();
    // igvm 0.5 measures a 2 MiB page as one 4 KiB page; igvmm measures the 512 pages KVM adds.
    assert_ne!(snp.digest_hex(), igvm_snp(&file));
    assert_eq!(snp.digest_hex(), igvm_snp(&split_file));

    let tdx_plan = plan_for_measurement(&bytes, Platform::Tdx, 1).unwrap();
    let tdx = measure::measure_tdx(&tdx_plan).unwrap();
    assert_ne!(tdx.digest_hex(), igvm_tdx(&file));
    assert_eq!(tdx.digest_hex(), igvm_tdx(&split_file));
}

#[test]
fn file_digest_places_vmsa_at_its_directive() {
    // A VMSA in the middle of the pages is measured there in file mode and last in KVM mode.
    let mut directives = mixed_directives(0);
    directives.insert(
        5,
        IgvmDirectiveHeader::SnpVpContext {
            gpa: KVM_VMSA_GPA,
            compatibility_mask: SNP_MASK,
            vp_index: 0,
            vmsa: kvm_form_vmsa(0x10_0000),
        },
    );
    let (file, bytes) = build_file(directives);
    let plan = plan_for_measurement(&bytes, Platform::SevSnp, 1).unwrap();
    let file_mode = measure::measure_snp(&plan, SnpMode::FileDigest).unwrap();
    assert_eq!(file_mode.digest_hex(), igvm_snp(&file));
    let kvm = measure::measure_snp(&plan, KVM_ONE_VCPU).unwrap();
    assert_eq!(kvm.digest_hex(), igvm_snp_digest_vmsa_last(&file, SNP_MASK));
    assert!(matches!(
        kvm.notes.first(),
        Some(MeasureNote::PagesAfterVmsa { vp_index: 0, .. })
    ));
}

#[test]
fn kvm_mode_models_register_changes() {
    // A VMSA without EFER.SVME: KVM sets it, so the KVM digest measures the changed VMSA.
    let mut directives = mixed_directives(0);
    let mut vmsa = kvm_form_vmsa(0x10_0000);
    vmsa.efer = 0;
    directives.push(IgvmDirectiveHeader::SnpVpContext {
        gpa: KVM_VMSA_GPA,
        compatibility_mask: SNP_MASK,
        vp_index: 0,
        vmsa,
    });
    let (file, bytes) = build_file(directives.clone());
    let plan = plan_for_measurement(&bytes, Platform::SevSnp, 1).unwrap();
    let kvm = measure::measure_snp(&plan, KVM_ONE_VCPU).unwrap();
    assert_ne!(kvm.digest_hex(), igvm_snp(&file));
    assert_eq!(
        kvm.notes,
        [MeasureNote::VmsaAdjusted {
            vp_index: 0,
            field: "efer",
            file_value: 0,
            kvm_value: 0x1000
        }]
    );

    let mut fixed = directives;
    if let Some(IgvmDirectiveHeader::SnpVpContext { vmsa, .. }) = fixed.last_mut() {
        vmsa.efer = 0x1000;
    }
    let (fixed_file, _) = build_file(fixed);
    assert_eq!(kvm.digest_hex(), igvm_snp(&fixed_file));
}

#[test]
fn snp_model_rejects_tdx_plan() {
    let (_, bytes) = build_file(mixed_directives(0));
    let plan = plan_for_measurement(&bytes, Platform::Tdx, 1).unwrap();
    assert_eq!(
        measure::measure_snp(&plan, SnpMode::FileDigest).unwrap_err(),
        MeasureError::WrongPlatform {
            expected: Platform::SevSnp,
            found: Platform::Tdx
        }
    );
}

#[test]
fn vcpu_count_is_bounded() {
    let (_, bytes) = build_file(mixed_directives(1));
    let plan = plan_for_measurement(&bytes, Platform::SevSnp, 1).unwrap();
    let error = measure::measure_snp(
        &plan,
        SnpMode::KvmLaunch {
            vcpus: u32::MAX,
            cpuid_1_eax: 0,
        },
    )
    .unwrap_err();
    assert_eq!(error, MeasureError::TooManyVcpus { vcpus: u32::MAX });
    let error = measure::measure_snp(
        &plan,
        SnpMode::KvmLaunch {
            vcpus: 0,
            cpuid_1_eax: 0,
        },
    )
    .unwrap_err();
    assert_eq!(error, MeasureError::NoVcpus);
}
