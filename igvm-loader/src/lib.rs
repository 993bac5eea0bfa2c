//! igvm-loader turns an IGVM file into a [`plan::Plan`] that any VMM backend can execute.
//!
//! It depends on no hypervisor interface, so other VMMs can reuse it.

pub mod host;
pub mod plan;
