//! The fw_cfg benchmark, built from the vmm library because `igvmm run` has no option that adds
//! a fw_cfg file.
//!
//! It assembles the machine as `vmm::run_vm` does (the memory layout, `Vm::new`,
//! `machine::attach` and the reset state of `native::set_initial_state`), adds one file of
//! pseudo-random bytes to the fw_cfg device, and runs the vCPU on this thread. Port exits go to
//! the same port bus, one bus access per element of a string instruction, as
//! `VcpuRunner::handle_io` in vmm/src/vcpu.rs dispatches them. After the guest exits, the bytes
//! that landed in guest memory are compared with the file.

use std::time::{Duration, Instant};

use igvm_loader::plan::HostOnlyData;
use kvm_bindings::{kvm_run, KVM_EXIT_IO_IN};
use kvm_ioctls::VcpuExit;
use vm_memory::{Bytes, GuestAddress};
use vmm::console::{DebugconConfig, SerialConfig, SharedBuffer};
use vmm::machine::{self, MachineConfig};
use vmm::memory::{self, GpaRange, MemoryLayout};
use vmm::vm::{self, Vm};
use vmm::EventStrings;

use devices::bus::DeviceAction;
use devices::fw_cfg::FW_CFG_FILE_FIRST;

use crate::guests::{self, FwCfgLayout};

/// Name of the benchmark file in the fw_cfg directory.
const FILE_NAME: &str = "opt/igvmm-bench/blob";
/// Guest RAM, as igvmm's default.
const RAM_BYTES: u64 = 512 << 20;
/// Destination of the port reads.
const PIO_GPA: u32 = 0x2_0000;
/// Destination of the DMA transfers.
const DMA_GPA: u32 = 0x100_0000;
/// Maximum run time before the loop gives up.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Timings of one run, in guest TSC cycles.
#[derive(Debug, Clone, Copy)]
pub struct FwCfgRun {
    /// Port reads of `pio_bytes`.
    pub pio_cycles: u64,
    /// First DMA transfer of `dma_bytes`, into untouched guest memory.
    pub dma_cycles: u64,
    /// Second DMA transfer into the same memory.
    pub dma_warm_cycles: u64,
    /// Port exits handled.
    pub exits: u64,
    /// Host time from the first `KVM_RUN` to the debug exit.
    pub elapsed: Duration,
}

/// Returns `len` reproducible pseudo-random bytes (xorshift64).
pub fn pattern(len: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Runs the fw_cfg guest with a file of `dma_bytes` and returns its timings. With `huge_pages`
/// guest RAM is advised with `MADV_HUGEPAGE` again, and a refusal is an error.
/// `memory::allocate` already gives the same advice but ignores a refusal.
pub fn run(dma_bytes: u32, pio_bytes: u32, huge_pages: bool) -> Result<FwCfgRun, String> {
    let error = |context: &str| {
        let context = context.to_string();
        move |error: vmm::VmmError| format!("{context}: {error}")
    };
    let layout = MemoryLayout::new(RAM_BYTES).map_err(|e| format!("memory layout: {e}"))?;
    let image_gpa = guests::IMAGE_END - guests::IMAGE_SIZE as u64;
    let extra = [GpaRange {
        start: image_gpa,
        len: guests::IMAGE_SIZE as u64,
    }];
    let guest_memory =
        memory::allocate(&layout, &extra).map_err(|e| format!("guest memory: {e}"))?;
    if huge_pages {
        advise_huge_pages(&guest_memory)?;
    }
    let kvm = vm::open_kvm().map_err(error("opening KVM"))?;
    let mut vm = Vm::new(kvm, guest_memory).map_err(error("creating the VM"))?;

    let debugcon = SharedBuffer::new();
    let machine = machine::attach(
        &mut vm,
        &MachineConfig {
            layout: &layout,
            cpus: 1,
            serial: &SerialConfig::None,
            debugcon: &DebugconConfig::Capture(debugcon.clone()),
            host_only: &HostOnlyData::default(),
            event: &EventStrings::default(),
            strict_corim: false,
        },
    )
    .map_err(error("attaching the devices"))?;

    let file = pattern(dma_bytes as usize);
    let selector = {
        let mut fw_cfg = machine
            .fw_cfg
            .lock()
            .map_err(|_| "the fw_cfg lock is poisoned".to_string())?;
        fw_cfg
            .add_file(FILE_NAME, file.clone())
            .map_err(|e| format!("adding {FILE_NAME}: {e}"))?;
        let index = fw_cfg
            .files()
            .position(|(name, _)| name == FILE_NAME)
            .ok_or("the fw_cfg directory lacks the benchmark file")?;
        FW_CFG_FILE_FIRST + u16::try_from(index).map_err(|_| "too many fw_cfg files")?
    };

    let image = guests::fw_cfg(FwCfgLayout {
        selector,
        pio_bytes,
        pio_gpa: PIO_GPA,
        dma_bytes,
        dma_gpa: DMA_GPA,
    })
    .map_err(|e| format!("assembling the guest: {e}"))?;
    for gpa in [image_gpa, guests::LOW_COPY_GPA] {
        vm.memory()
            .write_slice(&image, GuestAddress(gpa))
            .map_err(|e| format!("writing the image at {gpa:#x}: {e}"))?;
    }

    let mut vcpu = vm.create_vcpu(0, 1).map_err(error("creating the vCPU"))?;
    vmm::native::set_initial_state(&vcpu, 0, None).map_err(error("setting the reset state"))?;
    let run_size = vm.run_size();
    let (io_bus, _) = vm.shared_buses();

    let start = Instant::now();
    let mut exits = 0u64;
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoIn(..) | VcpuExit::IoOut(..)) => {}
            Ok(other) => return Err(format!("unexpected exit {other:?}")),
            Err(e) => return Err(format!("KVM_RUN failed: {e}")),
        }
        exits += 1;
        if let Some(DeviceAction::Exit(_)) = dispatch_io(vcpu.get_kvm_run(), run_size, &io_bus)? {
            break;
        }
        if exits.is_multiple_of(4096) && start.elapsed() > TIMEOUT {
            return Err(format!("the guest did not exit within {TIMEOUT:?}"));
        }
    }
    let elapsed = start.elapsed();

    let text = debugcon.text();
    let copied = check_copy(
        &vm,
        PIO_GPA,
        file.get(..pio_bytes as usize).unwrap_or_default(),
    )
    .and_then(|()| check_copy(&vm, DMA_GPA, &file));
    copied.map_err(|error| format!("{error} (selector {selector:#x}, debug console {text:?})"))?;
    let report = |name: &str| {
        guests::parse_report(&text, name)
            .ok_or(format!("the guest did not report {name}: {text:?}"))
    };
    if report("fw-cfg-dma-control")? != 0 {
        return Err(format!("a DMA transfer failed: {text:?}"));
    }
    Ok(FwCfgRun {
        pio_cycles: report("fw-cfg-pio-cycles")?,
        dma_cycles: report("fw-cfg-dma-cycles")?,
        dma_warm_cycles: report("fw-cfg-dma-warm-cycles")?,
        exits,
        elapsed,
    })
}

/// Advises every region of `memory` with `MADV_HUGEPAGE`.
fn advise_huge_pages(memory: &vm_memory::GuestMemoryMmap) -> Result<(), String> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
    for region in memory.iter() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| format!("guest memory region has no host address: {e}"))?;
        // SAFETY: the range is one live anonymous mapping owned by `memory`; madvise only
        // changes how the kernel backs it.
        let result =
            unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
        if result != 0 {
            return Err(format!(
                "madvise(MADV_HUGEPAGE) failed: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Hands the port access in `run` to `bus`, one access per element. Returns the first device
/// action other than `None`.
fn dispatch_io(
    run: &mut kvm_run,
    run_size: usize,
    bus: &devices::bus::Bus,
) -> Result<Option<DeviceAction>, String> {
    // SAFETY: the last KVM_RUN returned KVM_EXIT_IO, so `io` is the union member KVM filled in.
    let io = unsafe { run.__bindgen_anon_1.io };
    let size = usize::from(io.size);
    let len = size * io.count as usize;
    let offset = io.data_offset as usize;
    if size == 0 || offset.saturating_add(len) > run_size {
        return Err(format!(
            "port I/O data outside kvm_run: {size} x {} at {offset:#x}",
            io.count
        ));
    }
    // SAFETY: KVM placed `len` bytes of port data at `data_offset` inside the `run_size`-byte
    // kvm_run mapping (checked above), and `run` is not used while `data` lives.
    let data = unsafe {
        std::slice::from_raw_parts_mut((run as *mut kvm_run).cast::<u8>().add(offset), len)
    };

    let port = u64::from(io.port);
    if u32::from(io.direction) == KVM_EXIT_IO_IN {
        for element in data.chunks_mut(size) {
            bus.read(port, element);
        }
        return Ok(None);
    }

    for element in data.chunks(size) {
        match bus.write(port, element) {
            None | Some(DeviceAction::None) => {}
            Some(action) => return Ok(Some(action)),
        }
    }
    Ok(None)
}

/// Checks that guest memory at `gpa` contains `expected`.
fn check_copy(vm: &Vm, gpa: u32, expected: &[u8]) -> Result<(), String> {
    let mut actual = vec![0u8; expected.len()];
    vm.memory()
        .read_slice(&mut actual, GuestAddress(u64::from(gpa)))
        .map_err(|e| format!("reading guest memory at {gpa:#x}: {e}"))?;
    match actual.iter().zip(expected).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(at) => Err(format!(
            "guest memory at {:#x} differs from the fw_cfg file at offset {at:#x}",
            u64::from(gpa) + at as u64
        )),
    }
}
