//! Test support for igvmm: guest programs assembled with iced-x86 and the IGVM files that carry
//! them.
//!
//! Integration tests under `tests/` build a guest with [`asm::GuestAsm`], place it with the
//! addresses in [`layout`] and wrap it in an IGVM file with [`igvm_file::IgvmBuilder`]. They boot
//! it on KVM with [`harness::boot`], which captures COM1 and stops a VM that outlives its
//! deadline. [`fw_cfg`] contains the guest-side fw_cfg routines.

pub mod asm;
#[cfg(test)]
mod bare_kvm;
pub mod fw_cfg;
pub mod guest;
pub mod harness;
pub mod igvm_file;
pub mod layout;
