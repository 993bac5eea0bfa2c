//! Unit tests of the loader.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod builder;
mod conformance;
mod fixtures;
mod headers;
mod inspect;
mod malformed;
mod pages;
mod parameters;
mod platform;
mod relocation;
mod snp;
