//! igvmm: a minimal VMM that boots IGVM guests on Linux KVM.
//!
//! The binary is a thin CLI over this library. Integration tests call the same entry points.

pub mod cli;
pub mod commands;
