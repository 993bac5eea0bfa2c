//! The reference loop of the serial benchmark: the same firmware image on a VM made with
//! kvm-ioctls alone, with one vCPU, no devices and no irqchip. Port writes to COM1 are counted
//! and dropped, the debug console is collected, and the debug-exit port ends the run. That is
//! the least work any VMM can do per port exit.

use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::guests::{self, COM1, COM1_LSR, DEBUGCON, DEBUG_EXIT};

/// Guest RAM of the reference VM, as igvmm's default.
const RAM_BYTES: usize = 512 << 20;
/// KVM's real-mode TSS on Intel hosts, at the GPA igvmm uses (unused on AMD).
const TSS_GPA: usize = 0xFEFF_D000;
/// Line status the reference loop returns: transmitter empty and idle.
const LSR_IDLE: u8 = 0x60;
/// Maximum run time before the loop gives up.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Counts and timing of one reference run.
#[derive(Debug, Default)]
pub struct RawRun {
    /// Bytes the guest wrote to COM1.
    pub com1_bytes: u64,
    /// `KVM_RUN` exits handled.
    pub exits: u64,
    /// Text the guest wrote to the debug console.
    pub debugcon: String,
    /// Host time from the first `KVM_RUN` to the debug exit.
    pub elapsed: Duration,
}

/// Runs `image` (a 64 KiB firmware image) until it writes to the debug-exit port.
pub fn run_firmware(image: &[u8]) -> Result<RawRun, String> {
    let image_gpa = guests::IMAGE_END - image.len() as u64;
    let memory = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), RAM_BYTES),
        (GuestAddress(image_gpa), image.len()),
    ])
    .map_err(|error| format!("allocating guest memory failed: {error}"))?;
    memory
        .write_slice(image, GuestAddress(image_gpa))
        .map_err(|error| format!("writing the image failed: {error}"))?;
    memory
        .write_slice(image, GuestAddress(guests::LOW_COPY_GPA))
        .map_err(|error| format!("writing the image copy failed: {error}"))?;

    let kvm = Kvm::new().map_err(|error| format!("opening /dev/kvm failed: {error}"))?;
    let vm = kvm
        .create_vm()
        .map_err(|error| format!("KVM_CREATE_VM failed: {error}"))?;
    vm.set_tss_address(TSS_GPA)
        .map_err(|error| format!("KVM_SET_TSS_ADDR failed: {error}"))?;
    for (slot, region) in memory.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|error| format!("guest memory region has no host address: {error}"))?;
        let mapping = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: `host` is the start of a mapping of `region.len()` bytes owned by `memory`,
        // which lives until this function returns, after `vm` is dropped.
        unsafe { vm.set_user_memory_region(mapping) }
            .map_err(|error| format!("KVM_SET_USER_MEMORY_REGION failed: {error}"))?;
    }
    // A new vCPU is in the reset state: CS base 0xFFFF0000, IP 0xFFF0, real mode.
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|error| format!("KVM_CREATE_VCPU failed: {error}"))?;

    let mut run = RawRun::default();
    let mut debugcon = Vec::new();
    let start = Instant::now();
    loop {
        let exit = vcpu
            .run()
            .map_err(|error| format!("KVM_RUN failed: {error}"))?;
        run.exits += 1;
        match exit {
            VcpuExit::IoOut(COM1, data) => run.com1_bytes += data.len() as u64,
            VcpuExit::IoOut(DEBUGCON, data) => debugcon.extend_from_slice(data),
            VcpuExit::IoOut(DEBUG_EXIT, _) => break,
            VcpuExit::IoOut(..) => {}
            VcpuExit::IoIn(COM1_LSR, data) => data.fill(LSR_IDLE),
            VcpuExit::IoIn(_, data) => data.fill(0xFF),
            other => return Err(format!("unexpected exit {other:?}")),
        }
        // Reading the clock on every exit would add to the loop being measured.
        if run.exits % 4096 == 0 && start.elapsed() > TIMEOUT {
            return Err(format!("the guest did not exit within {TIMEOUT:?}"));
        }
    }
    run.elapsed = start.elapsed();
    run.debugcon = String::from_utf8_lossy(&debugcon).into_owned();
    Ok(run)
}
