//! A one-vCPU KVM runner for checking the guest library itself, independent of igvmm.
//!
//! It loads the PageData headers and the VP 0 context of a native IGVM file, emulates only
//! what the helper subroutines touch (COM1 transmit with an always-empty line status, and the
//! debug-exit port) and stops at the first other exit. It checks the guest programs on their
//! own, so that a broken program and a failure in igvmm are not confused. The integration tests
//! exercise igvmm's own loader, devices and run loop.

use std::time::{Duration, Instant};

use igvm::{IgvmDirectiveHeader, IgvmFile};
use igvm_defs::IgvmNativeVpContextX64;
use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit};

use crate::asm::{COM1, COM1_LSR, DEBUG_EXIT_PORT};

/// How a bare run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BareStop {
    /// The guest wrote this value to the debug-exit port.
    DebugExit(u8),
    /// The guest halted.
    Halt,
    /// Any other exit, described.
    Other(String),
    /// The deadline passed.
    Timeout,
}

/// Guest RAM of a bare run, mapped with mmap.
struct Ram {
    host: *mut u8,
    size: usize,
}

impl Ram {
    fn new(size: usize) -> Option<Self> {
        // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
        // result is checked against MAP_FAILED.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        (host != libc::MAP_FAILED).then_some(Self {
            host: host.cast(),
            size,
        })
    }

    fn slice_mut(&mut self) -> &mut [u8] {
        // SAFETY: `host` points to `size` bytes mapped read/write for the life of `self`.
        unsafe { std::slice::from_raw_parts_mut(self.host, self.size) }
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `Ram::new` with this address and size.
        unsafe {
            libc::munmap(self.host.cast(), self.size);
        }
    }
}

fn segment(selector: u16, base: u64, limit: u32, attributes: u16) -> kvm_segment {
    kvm_segment {
        base,
        limit,
        selector,
        type_: (attributes & 0xf) as u8,
        present: ((attributes >> 7) & 1) as u8,
        dpl: ((attributes >> 5) & 3) as u8,
        db: ((attributes >> 14) & 1) as u8,
        s: ((attributes >> 4) & 1) as u8,
        l: ((attributes >> 13) & 1) as u8,
        g: ((attributes >> 15) & 1) as u8,
        avl: ((attributes >> 12) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Runs VP 0 of the native IGVM file `bytes` with `ram_size` bytes of RAM until it exits, halts,
/// takes another exit or `timeout` passes. Returns `None` when `/dev/kvm` cannot be opened.
/// Returns the bytes written to COM1 and the stop.
pub fn run(bytes: &[u8], ram_size: usize, timeout: Duration) -> Option<(Vec<u8>, BareStop)> {
    let mut ram = Ram::new(ram_size)?;
    let kvm = Kvm::new().ok()?;
    let vm = kvm.create_vm().ok()?;
    let file = IgvmFile::new_from_binary(bytes, None).ok()?;

    let mut context: Option<IgvmNativeVpContextX64> = None;
    for header in file.directives() {
        match header {
            IgvmDirectiveHeader::PageData { gpa, data, .. } => {
                let start = *gpa as usize;
                if let Some(slot) = ram.slice_mut().get_mut(start..start + data.len()) {
                    slot.copy_from_slice(data);
                }
            }
            IgvmDirectiveHeader::X64NativeVpContext {
                vp_index: 0,
                context: c,
                ..
            } => context = Some(**c),
            _ => {}
        }
    }
    let context = context?;

    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: ram_size as u64,
        userspace_addr: ram.host as u64,
    };
    // SAFETY: the region describes `ram`, which stays mapped until after the VM is dropped,
    // because `vm` and `vcpu` are declared after `ram` and so are dropped first.
    unsafe { vm.set_user_memory_region(region) }.ok()?;

    let mut vcpu = vm.create_vcpu(0).ok()?;
    let mut sregs = vcpu.get_sregs().ok()?;
    sregs.cs = segment(
        context.code_selector,
        context.code_base as u64,
        context.code_limit,
        context.code_attributes,
    );
    let data = segment(
        context.data_selector,
        context.data_base as u64,
        context.data_limit,
        context.data_attributes,
    );
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gs.base = context.gs_base;
    sregs.gdt.base = context.gdtr_base;
    sregs.gdt.limit = context.gdtr_limit;
    sregs.idt.base = context.idtr_base;
    sregs.idt.limit = context.idtr_limit;
    sregs.cr0 = context.cr0;
    sregs.cr3 = context.cr3;
    sregs.cr4 = context.cr4;
    sregs.efer = context.efer;
    vcpu.set_sregs(&sregs).ok()?;
    let mut regs = vcpu.get_regs().ok()?;
    regs.rip = context.rip;
    regs.rsp = context.rsp;
    regs.rflags = context.rflags;
    vcpu.set_regs(&regs).ok()?;

    let deadline = Instant::now() + timeout;
    let mut serial = Vec::new();
    let stop = loop {
        if Instant::now() > deadline {
            break BareStop::Timeout;
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) if port == COM1 => {
                serial.extend_from_slice(data);
            }
            Ok(VcpuExit::IoOut(port, data)) if port == DEBUG_EXIT_PORT => {
                break BareStop::DebugExit(data.first().copied().unwrap_or(0));
            }
            Ok(VcpuExit::IoIn(port, data)) if port == COM1_LSR => {
                // Transmitter empty and idle.
                data.fill(0x60);
            }
            Ok(VcpuExit::Hlt) => break BareStop::Halt,
            Ok(other) => break BareStop::Other(format!("{other:?}")),
            Err(error) => break BareStop::Other(format!("KVM_RUN failed: {error}")),
        }
    };
    Some((serial, stop))
}
