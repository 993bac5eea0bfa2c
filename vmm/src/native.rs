//! The native backend: carries out a [`Plan`] for the native platform on an ordinary KVM VM.
//!
//! Every launch operation is a copy into guest memory, in plan order; measurement attributes
//! (measured, unmeasured, parameter, shared) make no difference without isolation. The vCPU
//! with a native VP context starts from it. The BSP without one starts from the x86 reset
//! state at F000:FFF0. An AP without one waits for INIT and SIPI from the BSP. That is KVM's
//! initial state for an AP when the local APIC is in the kernel.

use std::collections::HashSet;

use igvm_defs::IgvmNativeVpContextX64;
use igvm_loader::plan::{LaunchOp, PageData, PageKind, Plan, Platform, VpState, PAGE_SIZE_4K};
use kvm_bindings::{kvm_mp_state, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::VmmError;
use crate::regs;

/// A page of zeros, written over pages an earlier operation filled.
const ZERO_PAGE: [u8; PAGE_SIZE_4K as usize] = [0; PAGE_SIZE_4K as usize];

/// Returns the GPA of every 4 KiB page the plan writes, in plan order.
pub fn plan_pages<'p>(plan: &'p Plan<'_>) -> impl Iterator<Item = u64> + 'p {
    plan.operations
        .iter()
        .flat_map(|op| op.pages_4k().map(|page| page.gpa))
}

/// Checks that the native backend can carry out `plan` on a VM with `cpus` vCPUs, and returns
/// the native VP context of each vCPU (`None` where the plan has none).
pub fn vp_contexts(
    plan: &Plan,
    cpus: u32,
) -> Result<Vec<Option<IgvmNativeVpContextX64>>, VmmError> {
    if plan.platform != Platform::Native {
        return Err(VmmError::Unsupported(format!(
            "the plan is for platform {}, not native",
            plan.platform
        )));
    }
    for op in &plan.operations {
        check_op(op)?;
    }
    let mut contexts = vec![None; usize::try_from(cpus).unwrap_or(0)];
    for context in &plan.vp_contexts {
        let VpState::Native(state) = &context.state else {
            return Err(VmmError::Unsupported(format!(
                "{}: an SNP VMSA cannot start a native vCPU",
                context.source
            )));
        };
        let Some(slot) = contexts.get_mut(usize::from(context.vp_index)) else {
            return Err(VmmError::Unsupported(format!(
                "the file has a VP context for vCPU {}, but the VM has {cpus} vCPUs; raise --cpus",
                context.vp_index
            )));
        };
        if slot.is_some() {
            return Err(VmmError::Unsupported(format!(
                "{}: a second VP context for vCPU {}",
                context.source, context.vp_index
            )));
        }
        *slot = Some(**state);
    }
    Ok(contexts)
}

/// Rejects page kinds that only exist on SEV-SNP.
fn check_op(op: &LaunchOp) -> Result<(), VmmError> {
    match op.kind {
        PageKind::Normal | PageKind::Unmeasured | PageKind::Parameter { .. } | PageKind::Shared => {
            Ok(())
        }
        PageKind::Secrets | PageKind::Cpuid | PageKind::CpuidXf => {
            Err(VmmError::Unsupported(format!(
                "{}: page kind {:?} at GPA {:#x} exists only on SEV-SNP",
                op.source, op.kind, op.gpa
            )))
        }
    }
}

/// Copies the plan's pages into `memory`, in plan order. Guest memory starts zeroed, so a
/// page of zeros is written only over a page that an earlier operation filled.
pub fn write_pages(plan: &Plan, memory: &GuestMemoryMmap) -> Result<(), VmmError> {
    let mut filled: HashSet<u64> = HashSet::new();
    for op in &plan.operations {
        if let PageData::Bytes(bytes) = &op.data {
            if bytes.len() as u64 > op.size {
                return Err(VmmError::Unsupported(format!(
                    "{}: {} bytes of data for a {:#x}-byte page at GPA {:#x}",
                    op.source,
                    bytes.len(),
                    op.size,
                    op.gpa
                )));
            }
        }
        for page in op.pages_4k() {
            let was_filled = filled.contains(&page.gpa);
            match page.bytes {
                Some(bytes) => {
                    write(memory, page.gpa, bytes)?;
                    // Data shorter than the page leaves zeros after it; an earlier page may
                    // have put something there.
                    let tail = ZERO_PAGE.get(bytes.len()..).unwrap_or_default();
                    if was_filled && !tail.is_empty() {
                        write(memory, page.gpa + bytes.len() as u64, tail)?;
                    }
                    filled.insert(page.gpa);
                }
                None if was_filled => {
                    write(memory, page.gpa, &ZERO_PAGE)?;
                    filled.remove(&page.gpa);
                }
                None => {}
            }
        }
    }
    Ok(())
}

fn write(memory: &GuestMemoryMmap, gpa: u64, data: &[u8]) -> Result<(), VmmError> {
    memory
        .write_slice(data, GuestAddress(gpa))
        .map_err(|error| VmmError::GuestMemory {
            gpa,
            len: data.len(),
            message: error.to_string(),
        })
}

/// Sets the initial state of vCPU `index`: the native context if there is one, otherwise the
/// reset state for the BSP and wait-for-SIPI for an AP.
pub fn set_initial_state(
    vcpu: &VcpuFd,
    index: u32,
    context: Option<&IgvmNativeVpContextX64>,
) -> Result<(), VmmError> {
    let kvm_error = |operation: &'static str| {
        move |error| VmmError::kvm(format!("{operation} on vCPU {index}"), error)
    };
    let mut sregs = vcpu.get_sregs().map_err(kvm_error("KVM_GET_SREGS"))?;
    let regs = match context {
        Some(context) => {
            regs::apply_native_sregs(&mut sregs, context).map_err(|source| VmmError::Regs {
                vcpu: index,
                source,
            })?;
            regs::native_regs(context)
        }
        None if index == 0 => {
            regs::apply_reset_sregs(&mut sregs);
            regs::reset_regs()
        }
        None => {
            log::debug!("vCPU {index} has no VP context and waits for INIT/SIPI");
            return Ok(());
        }
    };
    vcpu.set_sregs(&sregs).map_err(kvm_error("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(kvm_error("KVM_SET_REGS"))?;
    if index != 0 {
        let runnable = kvm_mp_state {
            mp_state: KVM_MP_STATE_RUNNABLE,
        };
        vcpu.set_mp_state(runnable)
            .map_err(kvm_error("KVM_SET_MP_STATE"))?;
    }
    log::debug!(
        "vCPU {index} starts at CS:RIP {:#x}:{:#x} (CR0 {:#x}, EFER {:#x})",
        sregs.cs.selector,
        regs.rip,
        sregs.cr0,
        sregs.efer
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use igvm_loader::plan::{HeaderRef, HostOnlyData, PAGE_SIZE_2M};
    use vm_memory::GuestAddress;

    use super::*;

    fn op(gpa: u64, size: u64, data: PageData, kind: PageKind) -> LaunchOp {
        LaunchOp {
            gpa,
            size,
            kind,
            data,
            source: HeaderRef {
                header_type: 0x302,
                index: 0,
            },
        }
    }

    fn plan(operations: Vec<LaunchOp<'static>>) -> Plan<'static> {
        Plan {
            platform: Platform::Native,
            compatibility_mask: 2,
            shared_gpa_boundary: 0,
            operations,
            vp_contexts: Vec::new(),
            guest_policy: None,
            snp_id_block: None,
            required_memory: Vec::new(),
            error_ranges: Vec::new(),
            host_only: HostOnlyData::default(),
        }
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap()
    }

    #[test]
    fn pages_land_in_order() {
        let plan = plan(vec![
            op(
                0x1000,
                PAGE_SIZE_4K,
                PageData::Bytes(vec![0xAA; 16].into()),
                PageKind::Normal,
            ),
            op(
                0x2000,
                PAGE_SIZE_4K,
                PageData::Bytes(vec![0xBB; 4096].into()),
                PageKind::Unmeasured,
            ),
            // A later zero page clears what the first operation wrote.
            op(0x1000, PAGE_SIZE_4K, PageData::Zero, PageKind::Normal),
            op(
                0x3000,
                PAGE_SIZE_4K,
                PageData::Bytes(vec![1, 2, 3].into()),
                PageKind::Parameter { area_index: 0 },
            ),
        ]);
        let memory = memory();
        write_pages(&plan, &memory).unwrap();
        let mut page = [0u8; 4096];
        memory.read_slice(&mut page, GuestAddress(0x1000)).unwrap();
        assert!(page.iter().all(|byte| *byte == 0));
        memory.read_slice(&mut page, GuestAddress(0x2000)).unwrap();
        assert!(page.iter().all(|byte| *byte == 0xBB));
        memory.read_slice(&mut page, GuestAddress(0x3000)).unwrap();
        assert_eq!(&page[..4], &[1, 2, 3, 0]);
    }

    #[test]
    fn short_data_overwrites_with_zero_tail() {
        let plan = plan(vec![
            op(
                0x1000,
                PAGE_SIZE_4K,
                PageData::Bytes(vec![0xAA; 4096].into()),
                PageKind::Normal,
            ),
            op(
                0x1000,
                PAGE_SIZE_4K,
                PageData::Bytes(vec![0x11; 8].into()),
                PageKind::Normal,
            ),
        ]);
        let memory = memory();
        write_pages(&plan, &memory).unwrap();
        let mut page = [0u8; 4096];
        memory.read_slice(&mut page, GuestAddress(0x1000)).unwrap();
        assert_eq!(&page[..8], &[0x11; 8]);
        assert!(page[8..].iter().all(|byte| *byte == 0));
    }

    #[test]
    fn two_mib_operation_covers_512_pages() {
        let mut data = vec![0u8; 0x2000];
        data[0x1FFF] = 0x5A;
        let plan = plan(vec![op(
            0x20_0000,
            PAGE_SIZE_2M,
            PageData::Bytes(data.into()),
            PageKind::Normal,
        )]);
        assert_eq!(plan_pages(&plan).count(), 512);
        let memory = memory();
        write_pages(&plan, &memory).unwrap();
        assert_eq!(
            memory.read_obj::<u8>(GuestAddress(0x20_1FFF)).unwrap(),
            0x5A
        );
    }

    #[test]
    fn write_outside_memory_fails() {
        let plan = plan(vec![op(
            0x100_0000,
            PAGE_SIZE_4K,
            PageData::Bytes(vec![1].into()),
            PageKind::Normal,
        )]);
        assert!(matches!(
            write_pages(&plan, &memory()),
            Err(VmmError::GuestMemory {
                gpa: 0x100_0000,
                len: 1,
                ..
            })
        ));
    }

    #[test]
    fn rejects_snp_pages_and_other_platforms() {
        let secrets = plan(vec![op(
            0x1000,
            PAGE_SIZE_4K,
            PageData::Zero,
            PageKind::Secrets,
        )]);
        assert!(matches!(
            vp_contexts(&secrets, 1),
            Err(VmmError::Unsupported(_))
        ));
        let mut snp = plan(Vec::new());
        snp.platform = Platform::SevSnp;
        assert!(matches!(
            vp_contexts(&snp, 1),
            Err(VmmError::Unsupported(_))
        ));
        assert_eq!(vp_contexts(&plan(Vec::new()), 2).unwrap(), vec![None, None]);
    }
}
