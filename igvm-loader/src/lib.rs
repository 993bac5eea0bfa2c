//! igvm-loader turns an IGVM file into a [`plan::Plan`] that any VMM backend can execute.
//!
//! It depends on no hypervisor interface, so other VMMs can reuse it. [`parse`] reads a file
//! with the igvm crate and keeps every header's position; [`load`] picks the platform, fills
//! the parameters from a [`host::HostDescription`], relocates, validates and returns the plan.

pub mod builder;
pub mod error;
pub mod host;
pub mod inspect;
pub mod measure;
pub mod plan;

mod headers;
mod load;
mod params;
mod parse;
mod platform;
mod precheck;
mod raw;
mod relocate;
mod snp_id_block;
mod validate;

#[cfg(test)]
mod tests;

pub use error::LoadError;
pub use headers::header_type_name;
pub use load::{load, load_parsed, LoadOptions, MAX_PARAMETER_AREA_SIZE};
pub use params::ParameterKind;
pub use parse::{parse, ParsedFile};
pub use platform::{platform_from_type, platform_type_name, PlatformHeader};
pub mod corim;
pub mod linux;
