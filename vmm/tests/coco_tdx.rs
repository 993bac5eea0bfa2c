//! TDX backend through the recorder: the exact ioctl sequence for the conformance file, the MRTD
//! recomputed from the recorded INIT_MEM_REGION calls, VP-context checks and the TDVMCALL exits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::sync::Arc;

use igvm_defs::IgvmNativeVpContextX64;
use igvm_loader::measure::{hex_upper, plan_for_measurement, MrtdHasher};
use igvm_loader::plan::{HeaderRef, Plan, Platform, VpContext, VpState};
use kvm_bindings::{kvm_cpuid_entry2, kvm_run, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use vmm::coco::ffi::{
    KvmRunTdx, KvmTdxCapabilities, KVM_CAP_EXIT_HYPERCALL, KVM_CAP_SPLIT_IRQCHIP,
    KVM_MEMORY_ATTRIBUTE_PRIVATE, TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED, TDX_ATTR_DEBUG,
    TDX_ATTR_SEPT_VE_DISABLE,
};
use vmm::coco::memory::GuestRange;
use vmm::coco::tdx::{self, TdxCall, TdxLaunchConfig, TdxRecorder};
use vmm::coco::{CocoError, CocoExits, ExitAction};
use zerocopy::FromZeros;

const TDP_MRTD: &str = "86B13FD8548F38F4895E1AC6292C35588E272B294A2E8C0393043F963C9705CD5D20B5126279F31EA908793DA09EBA3F";
const MEMORY: GuestRange = GuestRange {
    gpa: 0,
    size: 1 << 32,
};

fn tdp_plan() -> Plan<'static> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/tiny-tdp-synthetic.igvm");
    plan_for_measurement(&std::fs::read(path).unwrap(), Platform::Tdx, 1)
        .unwrap()
        .into_owned()
}

fn capabilities() -> Box<KvmTdxCapabilities> {
    let mut capabilities = KvmTdxCapabilities::new_boxed();
    capabilities.supported_attrs = TDX_ATTR_DEBUG | TDX_ATTR_SEPT_VE_DISABLE | (1 << 30);
    capabilities.supported_xfam = 0x6_02FF;
    capabilities.kernel_tdvmcallinfo_1_r11 = 0;
    capabilities.user_tdvmcallinfo_1_r11 = 0b11;
    capabilities.kernel_tdvmcallinfo_1_r12 = 0x10;
    let configurable = [
        kvm_cpuid_entry2 {
            function: 1,
            eax: 0x0FFF_3FFF,
            ebx: 0,
            ecx: 0xFFFF_FFFF,
            edx: 0xFFFF_FFFF,
            ..Default::default()
        },
        kvm_cpuid_entry2 {
            function: 7,
            index: 0,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            ebx: 0x0000_FFFF,
            ..Default::default()
        },
        kvm_cpuid_entry2 {
            function: 0x8000_0008,
            eax: 0x00FF_FFFF,
            ..Default::default()
        },
    ];
    capabilities.entries[..3].copy_from_slice(&configurable);
    capabilities.cpuid.nent = 3;
    capabilities
}

fn vcpu_cpuid() -> Vec<kvm_cpuid_entry2> {
    vec![
        kvm_cpuid_entry2 {
            function: 0,
            eax: 0x23,
            ..Default::default()
        },
        kvm_cpuid_entry2 {
            function: 1,
            eax: 0x000C_06F2,
            ebx: 0x0080_0800,
            ecx: 0xFEDA_3203,
            edx: 0x178B_FBFF,
            ..Default::default()
        },
        kvm_cpuid_entry2 {
            function: 7,
            index: 0,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            ebx: 0xF1BF_07AB,
            ..Default::default()
        },
        kvm_cpuid_entry2 {
            function: 0x8000_0008,
            eax: 0x3934,
            ..Default::default()
        },
    ]
}

fn config() -> TdxLaunchConfig {
    TdxLaunchConfig {
        vcpus: 2,
        cpuid: vec![vcpu_cpuid(), vcpu_cpuid()],
        debug: false,
        mrconfigid: [0x11; 48],
        mrowner: [0; 48],
        mrownerconfig: [0; 48],
        xfam: None,
    }
}

/// `(gpa, pages, measure)` of every INIT_MEM_REGION for tiny-tdp-synthetic.igvm, in order.
fn expected_regions() -> Vec<(u64, u64, bool)> {
    let mut regions = vec![
        // Parameter areas: PAGE.ADD without MEASURE.
        (0x8012000, 1, false),
        (0x8011000, 1, false),
        (0x8013000, 1, false),
        (0x8010000, 1, false),
    ];
    let measured = [
        0x8002000, 0x8003000, 0x8004000, 0x8000000, 0x8001000, 0x800F000, 0x8016000, 0x8017000,
        0x8005000, 0x8018000, 0x8006000, 0x8007000, 0x8008000, 0x8009000, 0x800A000, 0x800B000,
        0x800C000, 0x800D000, 0x10000, 0x17000, 0x18000, 0x19000, 0x1A000, 0x16000, 0x11000,
        0x12000, 0x13000, 0x14000, 0x15000, 0xFFFFF000, 0x8014000, 0x8015000,
    ];
    // Every page data header is measured, empty pages included.
    regions.extend(measured.iter().map(|gpa| (*gpa, 1, true)));
    regions
}

#[test]
fn tdp_golden_ioctl_sequence() {
    let plan = tdp_plan();
    let mut recorder = TdxRecorder::new(capabilities());
    let report = tdx::launch(&mut recorder, &plan, &[MEMORY], &config()).unwrap();
    let calls = recorder.calls();

    assert_eq!(calls[0], TdxCall::CreateVm { vm_type: 5 });
    assert_eq!(
        calls[1],
        TdxCall::EnableCap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            arg: 24
        }
    );
    assert_eq!(
        calls[2],
        TdxCall::EnableCap {
            cap: KVM_CAP_EXIT_HYPERCALL,
            arg: 1 << 12
        }
    );
    assert_eq!(calls[3], TdxCall::Capabilities);
    let TdxCall::InitVm {
        attributes,
        xfam,
        mrconfigid,
        mrowner,
        cpuid,
        ..
    } = &calls[4]
    else {
        panic!("call 4 is {:?}", calls[4]);
    };
    assert_eq!(*attributes, TDX_ATTR_SEPT_VE_DISABLE);
    assert_eq!(*xfam, 0x6_02FF & 0x2E7);
    assert_eq!(mrconfigid, &[0x1111_1111_1111_1111; 6]);
    assert_eq!(mrowner, &[0; 6]);
    // Leaf 0 is not configurable and is dropped; the others keep only configurable bits, and
    // leaf 0x80000008 gets a 48-bit guest physical address width.
    let leaves: Vec<(u32, u32, u32)> = cpuid.iter().map(|e| (e.function, e.eax, e.ebx)).collect();
    assert_eq!(
        leaves,
        [
            (1, 0x000C_06F2, 0),
            (7, 0, 0x0000_07AB),
            (0x8000_0008, 0x0030_3934, 0)
        ]
    );
    assert_eq!(calls[5], TdxCall::CreateGuestMemfd { size: 1 << 32 });
    assert_eq!(
        calls[6],
        TdxCall::SetUserMemoryRegion2 {
            slot: 0,
            gpa: 0,
            size: 1 << 32,
            guest_memfd: 0,
            guest_memfd_offset: 0
        }
    );
    assert_eq!(
        calls[7],
        TdxCall::SetMemoryAttributes {
            gpa: 0,
            size: 1 << 32,
            attributes: KVM_MEMORY_ATTRIBUTE_PRIVATE
        }
    );
    assert_eq!(calls[8], TdxCall::SetupPlatform);
    assert_eq!(
        &calls[9..15],
        &[
            TdxCall::CreateVcpu { index: 0 },
            TdxCall::InitVcpu { index: 0, rcx: 0 },
            TdxCall::SetCpuid {
                index: 0,
                entries: 4
            },
            TdxCall::CreateVcpu { index: 1 },
            TdxCall::InitVcpu { index: 1, rcx: 0 },
            TdxCall::SetCpuid {
                index: 1,
                entries: 4
            },
        ]
    );
    let regions: Vec<(u64, u64, bool)> = calls[15..calls.len() - 1]
        .iter()
        .map(|call| match call {
            TdxCall::InitMemRegion {
                vcpu: 0,
                gpa,
                nr_pages,
                measure,
                ..
            } => (*gpa, *nr_pages, *measure),
            other => panic!("expected INIT_MEM_REGION on vCPU 0, found {other:?}"),
        })
        .collect();
    assert_eq!(regions, expected_regions());
    assert_eq!(calls.last().unwrap(), &TdxCall::FinalizeVm);
    assert_eq!(report.mem_regions, 36);
    assert_eq!(report.predicted.digest_hex(), TDP_MRTD);
}

#[test]
fn tdp_replay_gives_mrtd() {
    let plan = tdp_plan();
    let mut recorder = TdxRecorder::new(capabilities());
    tdx::launch(&mut recorder, &plan, &[MEMORY], &config()).unwrap();
    let mut mrtd = MrtdHasher::new();
    for call in recorder.calls() {
        if let TdxCall::InitMemRegion {
            gpa, measure, data, ..
        } = call
        {
            for (index, page) in data.chunks(4096).enumerate() {
                let page_gpa = gpa + index as u64 * 4096;
                if measure {
                    mrtd.add_measured_page(page_gpa, Some(page));
                } else {
                    mrtd.add_page(page_gpa);
                }
            }
        }
    }
    assert_eq!(hex_upper(&mrtd.digest()), TDP_MRTD);
}

#[test]
fn debug_attribute_and_unsupported_bits() {
    let plan = tdp_plan();
    let mut recorder = TdxRecorder::new(capabilities());
    let debug = TdxLaunchConfig {
        debug: true,
        ..config()
    };
    let report = tdx::launch(&mut recorder, &plan, &[MEMORY], &debug).unwrap();
    assert_eq!(report.attributes, TDX_ATTR_DEBUG | TDX_ATTR_SEPT_VE_DISABLE);

    let mut no_debug = capabilities();
    no_debug.supported_attrs = TDX_ATTR_SEPT_VE_DISABLE;
    let mut recorder = TdxRecorder::new(no_debug);
    let error = tdx::launch(&mut recorder, &plan, &[MEMORY], &debug).unwrap_err();
    assert!(matches!(
        error,
        CocoError::TdxUnsupported {
            what: "TD attributes",
            ..
        }
    ));
    assert!(!recorder
        .calls()
        .iter()
        .any(|call| matches!(call, TdxCall::InitVm { .. })));
}

/// Returns a native VP context equal to the TDX module's initial state, with RCX = R8 = `rcx`.
fn tdx_context(rcx: u64) -> IgvmNativeVpContextX64 {
    let mut context = IgvmNativeVpContextX64::new_zeroed();
    context.rip = 0xFFFF_FFF0;
    context.rflags = 2;
    context.cr0 = 0x21;
    context.cr4 = 0x2040;
    context.efer = 0x901;
    context.code_attributes = 0xC09B;
    context.code_limit = 0xFFFF_FFFF;
    context.data_attributes = 0xC093;
    context.data_limit = 0xFFFF_FFFF;
    context.gdtr_limit = 0xFFFF;
    context.rcx = rcx;
    context.r8 = rcx;
    context
}

fn with_context(context: IgvmNativeVpContextX64) -> Plan<'static> {
    let mut plan = tdp_plan();
    plan.vp_contexts.push(VpContext {
        vp_index: 0,
        state: VpState::Native(Box::new(context)),
        ops_before: 0,
        source: HeaderRef {
            header_type: 0x304,
            index: 9,
        },
    });
    plan
}

#[test]
fn vp_context_matching_tdx_state_sets_rcx() {
    assert_eq!(
        tdx::check_vp_contexts(&with_context(tdx_context(0x8010000))).unwrap(),
        0x8010000
    );
    let plan = with_context(tdx_context(0x8010000));
    let mut recorder = TdxRecorder::new(capabilities());
    let report = tdx::launch(&mut recorder, &plan, &[MEMORY], &config()).unwrap();
    assert_eq!(report.init_vcpu_rcx, 0x8010000);
    assert!(recorder.calls().contains(&TdxCall::InitVcpu {
        index: 1,
        rcx: 0x8010000
    }));
}

/// A register name and a change that sets that register.
type ContextCase = (&'static str, fn(&mut IgvmNativeVpContextX64));

#[test]
fn vp_context_contradicting_tdx_state_is_rejected() {
    let cases: [ContextCase; 5] = [
        ("cr0", |c| c.cr0 = 0x8000_0031),
        ("rip", |c| c.rip = 0x10_0000),
        ("efer", |c| c.efer = 0xD01),
        ("r8", |c| c.r8 = 1),
        ("rsp", |c| c.rsp = 0x8000),
    ];
    for (field, mutate) in cases {
        let mut context = tdx_context(0);
        mutate(&mut context);
        let error = tdx::check_vp_contexts(&with_context(context)).unwrap_err();
        match error {
            CocoError::TdxVpContext { field: named, .. } => assert_eq!(named, field),
            other => panic!("{field}: unexpected error {other}"),
        }
    }
    let text = tdx::check_vp_contexts(&with_context({
        let mut context = tdx_context(0);
        context.cr0 = 0x8000_0031;
        context
    }))
    .unwrap_err()
    .to_string();
    assert_eq!(
        text,
        "VP context for vp 0 sets cr0 = 0x80000031, but the TDX module starts every vCPU with \
         0x21; remove the context or match the TDX initial state"
    );
}

#[test]
fn tdvmcall_exits_are_answered() {
    let recorder = Arc::new(TdxRecorder::new(capabilities()));
    let exits = tdx::recorder_exits(recorder, vec![MEMORY], &capabilities());

    let mut run = kvm_run::default();
    tdx::write_tdx_exit(
        &mut run,
        &KvmRunTdx {
            flags: 0,
            nr: 0x10000,
            args: [TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED, 1, 0, 0, 0, 0],
        },
    );
    assert_eq!(exits.unsupported_exit(0, 40, &mut run), ExitAction::Resume);
    let answer = tdx::read_tdx_exit(&run);
    // R11: the kernel's TDVMCALLs plus SetupEventNotifyInterrupt; GetQuote is not offered.
    assert_eq!(answer.args, [0, 1, 0b10, 0x10, 0, 0]);

    tdx::write_tdx_exit(
        &mut run,
        &KvmRunTdx {
            flags: 0,
            nr: 0x10004,
            args: [TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED, 0xEC, 0, 0, 0, 0],
        },
    );
    assert_eq!(exits.unsupported_exit(0, 40, &mut run), ExitAction::Resume);
    assert_eq!(tdx::read_tdx_exit(&run).args[0], 0);
    assert_eq!(exits.notify_vector(), Some(0xEC));

    tdx::write_tdx_exit(
        &mut run,
        &KvmRunTdx {
            flags: 0,
            nr: 0x10002,
            args: [0, 0x7000, 0x1000, 0, 0, 0],
        },
    );
    assert_eq!(exits.unsupported_exit(0, 40, &mut run), ExitAction::Resume);
    assert_eq!(
        tdx::read_tdx_exit(&run).args[0],
        TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED
    );

    assert_eq!(
        exits.unsupported_exit(0, 43, &mut run),
        ExitAction::NotHandled
    );
}

#[test]
fn fatal_error_message_is_decoded() {
    let mut registers = [0u64; 16];
    registers[12] = 0x1_0000_0002;
    registers[14] = u64::from_le_bytes(*b"stage1: ");
    registers[15] = u64::from_le_bytes(*b"no memor");
    registers[3] = u64::from_le_bytes(*b"y\0\0\0\0\0\0\0");
    assert_eq!(
        tdx::describe_fatal_error(&registers),
        "error code 0x100000002, R13 0x0, message \"stage1: no memory\""
    );
    // Short event data must not panic.
    assert_eq!(
        tdx::describe_fatal_error(&[1]),
        "error code 0x0, R13 0x0, message \"\""
    );
}

/// Runs only on a host that passes the TDX probe.
#[test]
#[ignore = "needs a TDX host"]
fn tdx_launch_on_hardware() {
    let host = match vmm::coco::probe_tdx() {
        Ok(host) => host,
        Err(error) => {
            eprintln!("skipped: {error}");
            return;
        }
    };
    let plan = tdp_plan();
    let memory = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[
        (vm_memory::GuestAddress(0), 0x1000_0000),
        (vm_memory::GuestAddress(0xFFE0_0000), 0x20_0000),
    ])
    .unwrap();
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    let config = TdxLaunchConfig {
        vcpus: 1,
        cpuid: vec![supported.as_slice().to_vec()],
        ..config()
    };
    let launched =
        tdx::launch_on_host(host, &plan, memory, config, None, Box::new(|_| Ok(()))).unwrap();
    assert_eq!(launched.predicted.digest_hex(), TDP_MRTD);
}
