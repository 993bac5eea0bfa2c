//! Guest-visible devices for igvmm.

pub mod bus;
