//! Test support for igvmm: guest programs assembled with iced-x86 and the IGVM files that carry
//! them.
//!
//! Integration tests under `tests/` build a guest with [`asm::GuestAsm`], place it with the
//! addresses in [`layout`], wrap it in an IGVM file with [`igvm_file::IgvmBuilder`] and boot it
//! on KVM.

pub mod asm;
#[cfg(test)]
mod bare_kvm;
pub mod fw_cfg;
pub mod guest;
pub mod harness;
pub mod igvm_file;
pub mod layout;
