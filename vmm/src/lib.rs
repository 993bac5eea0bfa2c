//! igvmm: a minimal VMM that boots IGVM guests on Linux KVM.
//!
//! The binary is a thin CLI over this library; integration tests call the same entry points.
//!
//! # From the command line to the vCPU loop
//!
//! 1. `main.rs` parses the command line ([`cli`]) and calls the subcommand in [`commands`].
//!    `igvmm run` turns its arguments into a [`VmConfig`] and calls [`run_vm`].
//! 2. [`run_vm`] ([`runner`]) chooses the backend. A named confidential platform
//!    (`--platform sev-snp|tdx`) must pass its host probe ([`coco::probe_snp`],
//!    [`coco::probe_tdx`]) or the run fails; it never falls back to native. `auto` takes SEV-SNP
//!    or TDX only when the file carries it and the probe passes.
//! 3. It checks the vCPU count and the RAM size against KVM and the host
//!    ([`memory::HostLimits`]) and lays out guest RAM around the 32-bit hole
//!    ([`memory::MemoryLayout`]). igvm-loader gets that layout, the vCPU count and the ACPI
//!    tables ([`host_description`]), and returns a [`igvm_loader::plan::Plan`] for the chosen
//!    platform.
//! 4. The native backend ([`native`]) writes the plan's pages into freshly mapped guest memory
//!    ([`load_guest`]) and, once the VM exists, sets each vCPU's registers from its VP context
//!    ([`regs`]), or from the reset state for a BSP without one. APs without a context wait for
//!    INIT/SIPI. [`vm::Vm`] creates the KVM VM (in-kernel irqchip and PIT, memory slots, vCPUs
//!    with the CPUID of [`cpuid`]).
//! 5. An SEV-SNP or TDX plan goes to [`coco`] instead, which creates the VM, its guest_memfd
//!    slots and vCPUs, and measures the pages through KVM's confidential-VM ioctls. The CoRIM
//!    reference value, if any, is compared with the predicted measurement.
//! 6. [`machine`] builds the devices of the `devices` crate, maps them on the port bus and fills
//!    fw_cfg (e820, ACPI, CoRIM files).
//! 7. One thread per vCPU ([`vcpu`]) runs `KVM_RUN` and dispatches port and MMIO exits to the
//!    buses, and the exits only confidential VMs produce to the backend's
//!    [`coco::CocoExits`]. A console thread ([`console`]) feeds COM1 from stdin or a
//!    [`SerialCapture`].
//! 8. The calling thread coordinates ([`control`]): it waits for the first stop reason from
//!    any thread, turns SIGINT/SIGTERM into a stop ([`signals`]), and samples halted vCPUs,
//!    because with the in-kernel LAPIC a `HLT` never reaches userspace. Then it kicks every
//!    vCPU out of `KVM_RUN`, joins the threads and returns the [`StopReason`] ([`exit`]), with
//!    a crash report ([`report`], [`pagewalk`]) for a triple fault or KVM failure.

pub mod cli;
pub mod coco;
mod coco_run;
pub mod commands;
pub mod config;
pub mod console;
pub mod control;
pub mod cpuid;
pub mod demo;
pub mod error;
pub mod exit;
pub mod machine;
pub mod memory;
pub mod native;
pub mod pagewalk;
pub mod regs;
pub mod report;
pub mod runner;
pub mod signals;
pub mod terminal;
pub mod vcpu;
pub mod vm;

pub use config::{CocoOptions, EventStrings, GuestImage, PlatformRequest, VmConfig};
pub use console::{DebugconConfig, SerialCapture, SerialConfig, SharedBuffer};
pub use control::StopHandle;
pub use error::VmmError;
pub use exit::StopReason;
pub use runner::{host_description, load_guest, run_vm, LoadedGuest};
