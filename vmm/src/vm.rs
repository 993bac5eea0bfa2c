//! The KVM virtual machine: in-kernel interrupt controllers and PIT, KVM's private pages, guest
//! memory slots, the two device buses and interrupt lines, and vCPU creation.
//!
//! The in-kernel irqchip provides the dual 8259 PIC, the I/O APIC and one local APIC per vCPU;
//! GSIs 0..15 reach both the PIC and the I/O APIC. Devices raise their ISA line through an
//! eventfd registered with `KVM_IRQFD`, so an interrupt never needs a vCPU exit.

use std::sync::Arc;

use devices::bus::Bus;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::cpuid;
use crate::error::VmmError;
use crate::memory::{KVM_IDENTITY_MAP_GPA, KVM_TSS_GPA};

/// Offset of the LVT LINT0 register in the local APIC page.
const APIC_LVT_LINT0: usize = 0x350;
/// Offset of the LVT LINT1 register in the local APIC page.
const APIC_LVT_LINT1: usize = 0x360;
/// LVT delivery mode ExtINT (bits 10:8 = 7): LINT0 passes 8259 PIC interrupts to the CPU.
const APIC_DELIVERY_EXTINT: u32 = 0x700;
/// LVT delivery mode NMI (bits 10:8 = 4).
const APIC_DELIVERY_NMI: u32 = 0x400;
/// The APIC ID 0xFF is the xAPIC broadcast ID, so at most 255 vCPUs have their own ID.
const MAX_XAPIC_VCPUS: u32 = 255;

/// A KVM VM with its memory and device buses.
pub struct Vm {
    /// The KVM system handle.
    kvm: Kvm,
    /// The VM, shared with the backend of a confidential VM.
    fd: Arc<VmFd>,
    /// Guest memory, mapped into the VM.
    memory: GuestMemoryMmap,
    /// KVM_GET_SUPPORTED_CPUID.
    supported_cpuid: Vec<kvm_cpuid_entry2>,
    /// Port I/O devices.
    pub io_bus: Bus,
    /// MMIO devices.
    pub mmio_bus: Bus,
}

/// Opens /dev/kvm.
pub fn open_kvm() -> Result<Kvm, VmmError> {
    Kvm::new().map_err(VmmError::OpenKvm)
}

/// Returns KVM_GET_SUPPORTED_CPUID of `kvm`.
pub fn supported_cpuid(kvm: &Kvm) -> Result<Vec<kvm_cpuid_entry2>, VmmError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map(|cpuid| cpuid.as_slice().to_vec())
        .map_err(|error| VmmError::kvm("KVM_GET_SUPPORTED_CPUID", error))
}

/// Returns the largest vCPU count a VM on `kvm` may have.
pub fn max_vcpus(kvm: &Kvm) -> u32 {
    u32::try_from(kvm.get_max_vcpus())
        .unwrap_or(u32::MAX)
        .min(MAX_XAPIC_VCPUS)
}

impl Vm {
    /// Creates the VM: KVM's private pages, the irqchip and PIT, and one memory slot per
    /// region of `memory`.
    pub fn new(kvm: Kvm, memory: GuestMemoryMmap) -> Result<Self, VmmError> {
        let supported_cpuid = supported_cpuid(&kvm)?;
        let fd = kvm
            .create_vm()
            .map_err(|error| VmmError::kvm("KVM_CREATE_VM", error))?;
        fd.set_tss_address(KVM_TSS_GPA as usize)
            .map_err(|error| VmmError::kvm("KVM_SET_TSS_ADDR", error))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_GPA)
            .map_err(|error| VmmError::kvm("KVM_SET_IDENTITY_MAP_ADDR", error))?;
        create_irqchip_and_pit(&fd)
            .map_err(|(operation, error)| VmmError::kvm(operation, error))?;

        for (slot, region) in memory.iter().enumerate() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|error| VmmError::Device {
                    device: "guest memory",
                    message: error.to_string(),
                })?;
            let slot = u32::try_from(slot).unwrap_or(u32::MAX);
            let mapping = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `host` is the start of a live anonymous mapping of `region.len()` bytes
            // owned by `memory`, which the Vm keeps until after the VM fd is closed.
            unsafe { fd.set_user_memory_region(mapping) }.map_err(|error| {
                VmmError::kvm(
                    format!(
                        "KVM_SET_USER_MEMORY_REGION (slot {slot}, GPA {:#x}, {:#x} bytes)",
                        mapping.guest_phys_addr, mapping.memory_size
                    ),
                    error,
                )
            })?;
        }

        Ok(Self {
            kvm,
            fd: Arc::new(fd),
            memory,
            supported_cpuid,
            io_bus: Bus::new(),
            mmio_bus: Bus::new(),
        })
    }

    /// Wraps a launched SEV-SNP or TDX VM, whose backend created the VM, its memory slots and
    /// its interrupt controllers, so that the devices and vCPU threads can use it. `memory` is
    /// the shared half of guest memory.
    pub fn from_confidential(
        kvm: Kvm,
        fd: Arc<VmFd>,
        memory: GuestMemoryMmap,
    ) -> Result<Self, VmmError> {
        let supported_cpuid = supported_cpuid(&kvm)?;
        Ok(Self {
            kvm,
            fd,
            memory,
            supported_cpuid,
            io_bus: Bus::new(),
            mmio_bus: Bus::new(),
        })
    }

    /// Returns guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Returns KVM_GET_SUPPORTED_CPUID.
    pub fn supported_cpuid(&self) -> &[kvm_cpuid_entry2] {
        &self.supported_cpuid
    }

    /// Returns the KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Returns the size of a vCPU's `kvm_run` mapping.
    pub fn run_size(&self) -> usize {
        self.fd.run_size()
    }

    /// Routes `event` to interrupt line `gsi`: a write to the eventfd raises the line.
    pub fn register_irqfd(&self, event: &EventFd, gsi: u32) -> Result<(), VmmError> {
        self.fd
            .register_irqfd(event, gsi)
            .map_err(|error| VmmError::kvm(format!("KVM_IRQFD for GSI {gsi}"), error))
    }

    /// Creates vCPU `index` of `cpus`, with its CPUID table and its LINT0/LINT1 pins wired as
    /// on a PC (ExtINT and NMI).
    pub fn create_vcpu(&self, index: u32, cpus: u32) -> Result<VcpuFd, VmmError> {
        let vcpu = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(|error| VmmError::kvm(format!("KVM_CREATE_VCPU {index}"), error))?;
        let entries = cpuid::for_vcpu(&self.supported_cpuid, index, cpus);
        let table = cpuid::to_kvm(&entries).map_err(|error| VmmError::Device {
            device: "CPUID",
            message: format!("table of {} entries: {error:?}", entries.len()),
        })?;
        vcpu.set_cpuid2(&table)
            .map_err(|error| VmmError::kvm(format!("KVM_SET_CPUID2 on vCPU {index}"), error))?;

        let mut lapic = vcpu
            .get_lapic()
            .map_err(|error| VmmError::kvm(format!("KVM_GET_LAPIC on vCPU {index}"), error))?;
        set_lvt(&mut lapic.regs, APIC_LVT_LINT0, APIC_DELIVERY_EXTINT);
        set_lvt(&mut lapic.regs, APIC_LVT_LINT1, APIC_DELIVERY_NMI);
        vcpu.set_lapic(&lapic)
            .map_err(|error| VmmError::kvm(format!("KVM_SET_LAPIC on vCPU {index}"), error))?;
        Ok(vcpu)
    }

    /// Returns the buses, shared with the vCPU threads.
    pub fn shared_buses(&self) -> (Arc<Bus>, Arc<Bus>) {
        (
            Arc::new(self.io_bus.clone()),
            Arc::new(self.mmio_bus.clone()),
        )
    }
}

/// Creates the in-kernel irqchip (PIC, I/O APIC, local APICs) and the PIT. Returns the failing
/// ioctl with its error.
pub fn create_irqchip_and_pit(fd: &VmFd) -> Result<(), (&'static str, kvm_ioctls::Error)> {
    fd.create_irq_chip()
        .map_err(|error| ("KVM_CREATE_IRQCHIP", error))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    fd.create_pit2(pit)
        .map_err(|error| ("KVM_CREATE_PIT2", error))
}

/// Sets the delivery mode of an LVT register in a `kvm_lapic_state` page, keeping its other
/// bits apart from the mask bit, which it clears.
fn set_lvt(regs: &mut [std::os::raw::c_char], offset: usize, delivery: u32) {
    let Some(bytes) = regs.get_mut(offset..offset + 4) else {
        return;
    };
    let mut value = [0u8; 4];
    for (out, byte) in value.iter_mut().zip(bytes.iter()) {
        *out = *byte as u8;
    }
    let current = u32::from_le_bytes(value);
    // Bits 10:8 are the delivery mode and bit 16 is the mask.
    let updated = (current & !0x0001_0700) | delivery;
    for (slot, byte) in bytes.iter_mut().zip(updated.to_le_bytes()) {
        *slot = byte as std::os::raw::c_char;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn lvt_delivery_mode() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        // A masked LVT with vector 0x20, as after reset.
        regs[APIC_LVT_LINT0] = 0x20;
        regs[APIC_LVT_LINT0 + 2] = 0x01;
        set_lvt(&mut regs, APIC_LVT_LINT0, APIC_DELIVERY_EXTINT);
        assert_eq!(
            [
                regs[APIC_LVT_LINT0] as u8,
                regs[APIC_LVT_LINT0 + 1] as u8,
                regs[APIC_LVT_LINT0 + 2] as u8,
                regs[APIC_LVT_LINT0 + 3] as u8
            ],
            [0x20, 0x07, 0x00, 0x00]
        );
        set_lvt(&mut regs[..0x10], APIC_LVT_LINT1, APIC_DELIVERY_NMI);
    }
}
