//! SEV-SNP backend through the recorder: the exact ioctl sequence for a conformance file, and the
//! launch digest recomputed from the recorded calls alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::sync::Arc;

use igvm_loader::host::{HostDescription, MemoryKind, MemoryRegion, PlatformChoice};
use igvm_loader::measure::{self, hex_upper, SnpLaunchDigest, SnpMode, SnpPageType, KVM_VMSA_GPA};
use igvm_loader::plan::{Plan, Platform, VpState};
use igvm_loader::{load, LoadOptions};
use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use vmm::coco::ffi::{
    SnpCpuidPage, KVM_CAP_EXIT_HYPERCALL, KVM_MEMORY_ATTRIBUTE_PRIVATE, KVM_MEM_GUEST_MEMFD,
};
use vmm::coco::memory::GuestRange;
use vmm::coco::snp::{self, SnpCall, SnpLaunchConfig, SnpRecorder};
use vmm::coco::snp_regs::kvm_sync_vmsa;
use vmm::coco::{CocoError, ExitAction};
use zerocopy::IntoBytes;

/// KVM-launch digest of tiny-qemu-snp-native.igvm with one vCPU: the VMSA is measured after
/// the CPUID and SECRETS pages that the file places after it.
const QEMU_SNP_KVM_DIGEST: &str = "AA9169F94BC32C746EEA672387446948B52662E59A0035E73F005CD8FDDBD1CB5FD33D9326A11671E56687D75BB5EF03";
/// The digest of the same file as written (igvm 0.5, igvmmeasure).
const QEMU_SNP_FILE_DIGEST: &str = "583EBEC47ED943C6D6BF1D787F63776BFB15B1573E3B06013B2EBC77D8CF2BAD2038648B9A5F37C1D51EACD64C92C1F8";
const RAM: u64 = 0x1000_0000;
const SIGNATURE: u32 = 0x00A0_0F11;

fn conformance(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

fn host(vp_count: u32) -> HostDescription {
    HostDescription {
        memory_map: vec![MemoryRegion {
            base: 0,
            size: RAM,
            kind: MemoryKind::Ram,
        }],
        vp_count,
        command_line: String::new(),
        mmio_ranges: Vec::new(),
        madt: Vec::new(),
        srat: Vec::new(),
        slit: Vec::new(),
        pptt: Vec::new(),
    }
}

fn snp_plan(name: &str, vp_count: u32) -> Plan<'static> {
    load(
        &conformance(name),
        &LoadOptions {
            choice: PlatformChoice::Exact(Platform::SevSnp),
            host: host(vp_count),
            relocation_base: None,
        },
    )
    .unwrap()
    .into_owned()
}

fn cpuid_table() -> Vec<kvm_cpuid_entry2> {
    let leaf = |function, index, flags, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
        function,
        index,
        flags,
        eax,
        ebx,
        ecx,
        edx,
        padding: [0; 3],
    };
    vec![
        leaf(0, 0, 0, 0xD, 0x6874_7541, 0x444D_4163, 0x6974_6E65),
        leaf(1, 0, 0, SIGNATURE, 0x0080_0800, 0xFED8_3203, 0x178B_FBFF),
        leaf(
            7,
            0,
            KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            0,
            0x219C_97A9,
            0x0040_068C,
            0,
        ),
        leaf(
            0xD,
            0,
            KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            0x7,
            0x340,
            0x340,
            0,
        ),
        leaf(0xD, 1, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0xF, 0x340, 0, 0),
        leaf(0x8000_0000, 0, 0, 0x8000_0021, 0, 0, 0),
        leaf(0x8000_0008, 0, 0, 0x3030, 0, 0, 0),
    ]
}

fn config(vcpus: u32) -> SnpLaunchConfig {
    SnpLaunchConfig {
        vcpus,
        cpuid: vec![cpuid_table(); vcpus as usize],
        host_data: [0xA5; 32],
        strict_cpuid: false,
        supported_vmsa_features: Some(0x28),
        supported_policy_bits: None,
    }
}

const REGIONS: [GuestRange; 1] = [GuestRange { gpa: 0, size: RAM }];

/// `(gfn, page type, pages)` of every LAUNCH_UPDATE for tiny-qemu-snp-native.igvm, in order.
fn expected_updates() -> Vec<(u64, u8, u64)> {
    let unmeasured = SnpPageType::Unmeasured as u8;
    let normal = SnpPageType::Normal as u8;
    let mut updates = vec![
        // The four parameter areas, inserted before any page data.
        (0x8012, unmeasured, 1),
        (0x8011, unmeasured, 1),
        (0x8013, unmeasured, 1),
        (0x8010, unmeasured, 1),
    ];
    for gfn in [
        0x8002, 0x8003, 0x8004, 0x8000, 0x8001, 0x800F, 0x8016, 0x8017, 0x8005, 0x8018,
    ] {
        updates.push((gfn, normal, 1));
    }
    // Empty pages, launched as NORMAL pages of zeros.
    for gfn in 0x8006..=0x800C {
        updates.push((gfn, normal, 1));
    }
    for gfn in [
        0x800D, 0x10, 0x17, 0x18, 0x19, 0x1A, 0x16, 0x11, 0x12, 0x13, 0x14, 0x15,
    ] {
        updates.push((gfn, normal, 1));
    }
    updates.push((0x1B, SnpPageType::Cpuid as u8, 1));
    updates.push((0x8015, SnpPageType::Secrets as u8, 1));
    updates
}

#[test]
fn qemu_snp_golden_ioctl_sequence() {
    let plan = snp_plan("tiny-qemu-snp-native.igvm", 1);
    let mut recorder = SnpRecorder::default();
    let report = snp::launch(&mut recorder, &plan, &REGIONS, &config(1)).unwrap();
    let calls = recorder.calls();

    assert_eq!(calls[0], SnpCall::CreateVm { vm_type: 4 });
    assert_eq!(
        calls[1],
        SnpCall::EnableCap {
            cap: KVM_CAP_EXIT_HYPERCALL,
            arg: 1 << 12
        }
    );
    // vp 0's SEV_FEATURES are 0x29; INIT2 takes them without SNP_ACTIVE.
    assert_eq!(
        calls[2],
        SnpCall::SevInit2 {
            vmsa_features: 0x28,
            flags: 0,
            ghcb_version: 0
        }
    );
    assert_eq!(calls[3], SnpCall::CreateGuestMemfd { size: RAM });
    assert_eq!(
        calls[4],
        SnpCall::SetUserMemoryRegion2 {
            slot: 0,
            flags: KVM_MEM_GUEST_MEMFD,
            gpa: 0,
            size: RAM,
            guest_memfd: 0,
            guest_memfd_offset: 0
        }
    );
    assert_eq!(
        calls[5],
        SnpCall::SetMemoryAttributes {
            gpa: 0,
            size: RAM,
            attributes: KVM_MEMORY_ATTRIBUTE_PRIVATE
        }
    );
    assert_eq!(calls[6], SnpCall::SetupPlatform);
    assert_eq!(
        calls[7],
        SnpCall::CreateVcpu {
            index: 0,
            cpuid: cpuid_table()
        }
    );
    let SnpCall::SetVcpuRegisters {
        index: 0,
        registers,
    } = &calls[8]
    else {
        panic!("call 8 is {:?}", calls[8]);
    };
    assert_eq!(registers.regs.rip, 0x10002);
    assert_eq!(registers.regs.rsp, 0x16FA8);
    assert_eq!(registers.regs.rax, 1);
    assert_eq!(registers.sregs.cr0, 0x31);
    assert_eq!(registers.sregs.cr3, 0x1A000);
    assert_eq!(registers.sregs.cr4, 0x60);
    assert_eq!(registers.sregs.efer, 0x1800);
    assert_eq!(
        (
            registers.sregs.cs.selector,
            registers.sregs.cs.type_,
            registers.sregs.cs.db
        ),
        (8, 0xB, 1)
    );
    assert_eq!((registers.fpu.fcw, registers.fpu.mxcsr), (0, 0));
    assert_eq!(registers.xcrs.xcrs[0].value, 1);
    assert_eq!((registers.debugregs.dr6, registers.debugregs.dr7), (0, 0));
    assert_eq!(registers.msrs[0].data, 0x0007_0406_0007_0406);
    assert_eq!(
        calls[9],
        SnpCall::LaunchStart {
            policy: 0x30000,
            gosvw: [0; 16],
            flags: 0
        }
    );

    let updates: Vec<(u64, u8, u64)> = calls[10..calls.len() - 1]
        .iter()
        .map(|call| match call {
            SnpCall::LaunchUpdate {
                gfn_start,
                page_type,
                data,
            } => (*gfn_start, *page_type, data.len() as u64 / 4096),
            other => panic!("expected LAUNCH_UPDATE, found {other:?}"),
        })
        .collect();
    assert_eq!(updates, expected_updates());

    assert_eq!(
        calls.last().unwrap(),
        &SnpCall::LaunchFinish {
            id_block_en: 0,
            auth_key_en: 0,
            host_data: [0xA5; 32],
            id_block: None,
            id_auth: None
        }
    );
    assert_eq!(report.launch_updates, 35);
    assert_eq!(report.cpuid_retries, 0);
    assert_eq!(report.predicted.digest_hex(), QEMU_SNP_KVM_DIGEST);
}

#[test]
fn qemu_snp_page_bytes_match_the_plan() {
    let plan = snp_plan("tiny-qemu-snp-native.igvm", 1);
    let mut recorder = SnpRecorder::default();
    snp::launch(&mut recorder, &plan, &REGIONS, &config(1)).unwrap();
    let updates: Vec<(u64, Vec<u8>)> = recorder
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            SnpCall::LaunchUpdate {
                gfn_start, data, ..
            } => Some((gfn_start, data)),
            _ => None,
        })
        .collect();
    let page = |gfn: u64| &updates.iter().find(|(g, _)| *g == gfn).unwrap().1;

    // The payload at 0x10000 starts with two NOPs, then `lea rsi, [rip+0x13]`.
    assert_eq!(&page(0x10)[..5], &[0x90, 0x90, 0x48, 0x8D, 0x35]);
    assert_eq!(page(0x8007), &vec![0u8; 4096]);
    assert_eq!(page(0x8015), &vec![0u8; 4096]);

    // The CPUID page comes from vCPU 0's table, not from the file.
    let cpuid = SnpCpuidPage::from_page(page(0x1B));
    assert_eq!(cpuid.count, 7);
    let xsave = cpuid.entries()[3];
    assert_eq!(
        (xsave.eax_in, xsave.ecx_in, xsave.ebx, xsave.xcr0_in),
        (0xD, 0, 0x240, 1)
    );
    assert_eq!(cpuid.entries()[1].eax, SIGNATURE);
}

/// Recomputes the launch digest from the recorded calls: each LAUNCH_UPDATE in order, then the
/// VMSA that KVM builds from each vCPU's recorded registers.
fn replay(calls: &[SnpCall]) -> SnpLaunchDigest {
    let vmsa_features = calls
        .iter()
        .find_map(|call| match call {
            SnpCall::SevInit2 { vmsa_features, .. } => Some(*vmsa_features),
            _ => None,
        })
        .unwrap();
    let mut digest = SnpLaunchDigest::new();
    for call in calls {
        if let SnpCall::LaunchUpdate {
            gfn_start,
            page_type,
            data,
        } = call
        {
            let page_type = SnpPageType::from_u8(*page_type).unwrap();
            for (index, page) in data.chunks(4096).enumerate() {
                digest.update_page(page_type, (gfn_start + index as u64) * 4096, Some(page));
            }
        }
    }
    for call in calls {
        if let SnpCall::SetVcpuRegisters { registers, .. } = call {
            let vmsa = kvm_sync_vmsa(registers, vmsa_features);
            digest.update_page(SnpPageType::Vmsa, KVM_VMSA_GPA, Some(vmsa.as_bytes()));
        }
    }
    digest
}

#[test]
fn qemu_snp_replay_gives_kvm_digest() {
    let plan = snp_plan("tiny-qemu-snp-native.igvm", 1);
    let mut recorder = SnpRecorder::default();
    snp::launch(&mut recorder, &plan, &REGIONS, &config(1)).unwrap();
    let calls = recorder.calls();
    assert_eq!(hex_upper(&replay(&calls).digest()), QEMU_SNP_KVM_DIGEST);

    // The VMSA that KVM builds equals the file's VMSA byte for byte. So the only difference from
    // the file digest is where the VMSA is measured. The file places the CPUID and SECRETS pages
    // after it, and measuring it before those two pages gives the file digest.
    let VpState::Snp {
        vmsa: file_vmsa, ..
    } = &plan.vp_contexts[0].state
    else {
        panic!("vp 0 has no VMSA");
    };
    let registers = calls
        .iter()
        .find_map(|call| match call {
            SnpCall::SetVcpuRegisters { registers, .. } => Some(registers.clone()),
            _ => None,
        })
        .unwrap();
    let kvm_vmsa = kvm_sync_vmsa(&registers, 0x28);
    assert_eq!(kvm_vmsa.as_bytes(), file_vmsa.as_bytes());

    let mut file_order = SnpLaunchDigest::new();
    let updates: Vec<&SnpCall> = calls
        .iter()
        .filter(|call| matches!(call, SnpCall::LaunchUpdate { .. }))
        .collect();
    for (position, call) in updates.iter().enumerate() {
        if position == updates.len() - 2 {
            file_order.update_page(SnpPageType::Vmsa, KVM_VMSA_GPA, Some(kvm_vmsa.as_bytes()));
        }
        if let SnpCall::LaunchUpdate {
            gfn_start,
            page_type,
            data,
        } = call
        {
            file_order.update_page(
                SnpPageType::from_u8(*page_type).unwrap(),
                gfn_start * 4096,
                Some(data),
            );
        }
    }
    assert_eq!(hex_upper(&file_order.digest()), QEMU_SNP_FILE_DIGEST);
}

#[test]
fn replay_with_aps_matches_model() {
    let plan = snp_plan("tiny-qemu-snp-native.igvm", 3);
    let mut recorder = SnpRecorder::default();
    let report = snp::launch(&mut recorder, &plan, &REGIONS, &config(3)).unwrap();
    let calls = recorder.calls();
    let vcpus = calls
        .iter()
        .filter(|call| matches!(call, SnpCall::CreateVcpu { .. }))
        .count();
    assert_eq!(vcpus, 3);
    let replayed = replay(&calls);
    assert_eq!(replayed.pages(), 35 + 3);
    assert_eq!(hex_upper(&replayed.digest()), report.predicted.digest_hex());
    let model = measure::measure_snp(
        &plan,
        SnpMode::KvmLaunch {
            vcpus: 3,
            cpuid_1_eax: SIGNATURE,
        },
    )
    .unwrap();
    assert_eq!(model.digest, replayed.digest());

    // An AP starts at reset with RDX = CPUID(1).EAX.
    let SnpCall::SetVcpuRegisters {
        index: 2,
        registers,
    } = calls
        .iter()
        .filter(|call| matches!(call, SnpCall::SetVcpuRegisters { .. }))
        .nth(2)
        .unwrap()
    else {
        panic!("no registers for vCPU 2");
    };
    assert_eq!(registers.regs.rdx, u64::from(SIGNATURE));
    assert_eq!(registers.regs.rip, 0xFFF0);
    assert_eq!(registers.sregs.cs.base, 0xFFFF_0000);
}

fn correct_leaf_7(page: &mut [u8]) {
    let mut cpuid = SnpCpuidPage::from_page(page);
    cpuid.functions[2].ebx &= !0x0000_0100;
    page.copy_from_slice(&cpuid.to_page());
}

#[test]
fn corrected_cpuid_page_is_retried_once() {
    let plan = snp_plan("tiny-qemu-snp-native.igvm", 1);
    let mut recorder = SnpRecorder::with_cpuid_correction(correct_leaf_7);
    let report = snp::launch(&mut recorder, &plan, &REGIONS, &config(1)).unwrap();
    assert_eq!(report.cpuid_retries, 1);
    let cpuid_updates: Vec<Vec<u8>> = recorder
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            SnpCall::LaunchUpdate {
                page_type: 6, data, ..
            } => Some(data),
            _ => None,
        })
        .collect();
    assert_eq!(cpuid_updates.len(), 2);
    let first = SnpCpuidPage::from_page(&cpuid_updates[0]);
    let second = SnpCpuidPage::from_page(&cpuid_updates[1]);
    assert_eq!(first.functions[2].ebx, 0x219C_97A9);
    assert_eq!(second.functions[2].ebx, 0x219C_96A9);
    // CPUID contents are not measured, so the retry leaves the digest unchanged.
    assert_eq!(report.predicted.digest_hex(), QEMU_SNP_KVM_DIGEST);
    assert_eq!(
        snp::cpuid_changes(&cpuid_updates[0], &cpuid_updates[1]),
        ["leaf 0x7.0x0: ebx 0x219c97a9 -> 0x219c96a9"]
    );
}

#[test]
fn strict_cpuid_rejects_correction() {
    let plan = snp_plan("tiny-qemu-snp-native.igvm", 1);
    let mut recorder = SnpRecorder::with_cpuid_correction(correct_leaf_7);
    let strict = SnpLaunchConfig {
        strict_cpuid: true,
        ..config(1)
    };
    let error = snp::launch(&mut recorder, &plan, &REGIONS, &strict).unwrap_err();
    match error {
        CocoError::CpuidRejected { gpa, changes } => {
            assert_eq!(gpa, 0x1B000);
            assert_eq!(changes, ["leaf 0x7.0x0: ebx 0x219c97a9 -> 0x219c96a9"]);
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(!recorder
        .calls()
        .iter()
        .any(|call| matches!(call, SnpCall::LaunchFinish { .. })));
}

#[test]
fn unsupported_vmsa_features_fail_before_any_ioctl() {
    let plan = snp_plan("tiny-qemu-snp-native.igvm", 1);
    let mut recorder = SnpRecorder::default();
    let only_debug_swap = SnpLaunchConfig {
        supported_vmsa_features: Some(0x20),
        ..config(1)
    };
    let error = snp::launch(&mut recorder, &plan, &REGIONS, &only_debug_swap).unwrap_err();
    assert!(matches!(
        error,
        CocoError::UnsupportedVmsaFeatures {
            requested: 0x28,
            supported: 0x20,
            missing: 0x8
        }
    ));
    assert!(recorder.calls().is_empty());
}

#[test]
fn hyperv_vmsa_gpa_fails_before_any_ioctl() {
    let plan = snp_plan("tiny-native-snp-hyperv-policy.igvm", 1);
    let mut recorder = SnpRecorder::default();
    let error = snp::launch(&mut recorder, &plan, &REGIONS, &config(1)).unwrap_err();
    assert!(
        error.to_string().contains("the VMSA is at GPA 0x8fff000"),
        "{error}"
    );
    assert!(recorder.calls().is_empty());
}

#[test]
fn pages_outside_memory_are_rejected() {
    let plan = snp_plan("tiny-qemu-snp-native.igvm", 1);
    let mut recorder = SnpRecorder::default();
    let small = [GuestRange {
        gpa: 0,
        size: 0x800_0000,
    }];
    let error = snp::launch(&mut recorder, &plan, &small, &config(1)).unwrap_err();
    assert!(
        matches!(error, CocoError::OutsideMemory { gpa: 0x8012000, .. }),
        "{error}"
    );
}

#[test]
fn runtime_conversions_go_through_ops() {
    let recorder = Arc::new(SnpRecorder::default());
    let exits = snp::recorder_exits(recorder.clone(), REGIONS.to_vec());
    // MAP_GPA_RANGE to shared, then a private memory fault that converts back.
    assert_eq!(exits.hypercall(0, 12, &[0x20_0000, 4, 0, 0, 0, 0]), Some(0));
    assert_eq!(
        exits.memory_fault(0, 1 << 3, 0x20_0000, 0x1000),
        ExitAction::Resume
    );
    assert_eq!(exits.hypercall(0, 11, &[0; 6]), None);
    assert_eq!(
        recorder.calls(),
        [
            SnpCall::SetMemoryAttributes {
                gpa: 0x20_0000,
                size: 0x4000,
                attributes: 0
            },
            SnpCall::DiscardPrivate {
                gpa: 0x20_0000,
                size: 0x4000
            },
            SnpCall::SetMemoryAttributes {
                gpa: 0x20_0000,
                size: 0x1000,
                attributes: KVM_MEMORY_ATTRIBUTE_PRIVATE
            },
            SnpCall::DiscardShared {
                gpa: 0x20_0000,
                size: 0x1000
            },
        ]
    );
    // A fault outside guest memory stops the VM instead of looping.
    assert!(matches!(
        exits.memory_fault(1, 0, RAM, 0x1000),
        ExitAction::Stop(_)
    ));
    assert!(matches!(
        exits.system_event(0, 6, &[0x0001_3000]),
        ExitAction::Stop(text) if text.contains("reason set 3, code 0x1")
    ));
}

/// Runs only on a host that passes the SEV-SNP probe: launches the conformance file on KVM with
/// the serial console discarded and checks that the launch finishes.
#[test]
#[ignore = "needs an SEV-SNP host"]
fn snp_launch_on_hardware() {
    let host = match vmm::coco::probe_snp() {
        Ok(host) => host,
        Err(error) => {
            eprintln!("skipped: {error}");
            return;
        }
    };
    // The file requests RESTRICTED_INJECTION, which KVM does not offer, so keep only the
    // features this host supports.
    let mut plan = snp_plan("tiny-qemu-snp-native.igvm", 1);
    let supported = host.vmsa_features.unwrap_or(0);
    if let VpState::Snp { vmsa, .. } = &mut plan.vp_contexts[0].state {
        let features = vmsa.sev_features.into_bits() & (supported | 1);
        vmsa.sev_features = igvm::snp_defs::SevFeatures::from_bits(features);
    }
    let expected = measure::measure_snp(
        &plan,
        SnpMode::KvmLaunch {
            vcpus: 1,
            cpuid_1_eax: SIGNATURE,
        },
    )
    .unwrap();
    let memory = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(
        vm_memory::GuestAddress(0),
        RAM as usize,
    )])
    .unwrap();
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    let config = SnpLaunchConfig {
        cpuid: vec![supported.as_slice().to_vec()],
        supported_vmsa_features: None,
        ..config(1)
    };
    let launched = snp::launch_on_host(
        host,
        &plan,
        memory,
        config,
        Box::new(|vm| {
            vm.create_irq_chip()
                .map_err(|error| vmm::coco::CocoError::Io {
                    operation: "KVM_CREATE_IRQCHIP".into(),
                    source: std::io::Error::from_raw_os_error(error.errno()),
                })
        }),
    )
    .unwrap();
    // With one vCPU that has a VP context, the CPUID signature does not enter the digest.
    assert_eq!(launched.predicted.digest, expected.digest);
    assert_eq!(launched.vcpus.len(), 1);
}
