//! One module per `igvmm` subcommand.

pub mod corim;
pub mod inspect;
pub mod measure;
pub mod pack;
pub mod run;
