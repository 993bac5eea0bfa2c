//! Checks on the raw headers before the igvm crate parses the file.
//!
//! igvm 0.5 reports the problems found here without saying which header is wrong. Several of
//! them also make it panic: a file offset below the file data section, a zero-sized relocation
//! region, or a VBS register list that runs off the file. These checks mirror the crate's rules,
//! as read in igvm 0.5's `lib.rs`, so that each problem gets a typed error that names the header
//! and its index in the file. What the crate still rejects becomes [`LoadError::Igvm`].

mod directive;
mod initialization;
mod platform;

use igvm::Arch;
use igvm_defs::IGVM_VHS_SUPPORTED_PLATFORM;
use zerocopy::FromBytes;

use crate::error::LoadError;
use crate::plan::HeaderRef;
use crate::raw::{RawFile, RawHeader};

/// A SupportedPlatform header and its position.
#[derive(Debug, Clone, Copy)]
struct RawPlatform {
    header: HeaderRef,
    info: IGVM_VHS_SUPPORTED_PLATFORM,
}

/// Runs every check.
pub(crate) fn check(raw: &RawFile<'_>) -> Result<(), LoadError> {
    let arch = raw.arch();
    let platforms = platform::check(raw, arch)?;
    let relocation = initialization::check(raw, arch, &platforms)?;
    directive::check(raw, arch, &platforms, &relocation)
}

/// Decodes the body of a header whose length the walk already checked.
fn decode<T: FromBytes>(header: &RawHeader<'_>) -> Result<T, LoadError> {
    T::read_from_prefix(header.body)
        .map(|(value, _)| value)
        .map_err(|_| LoadError::TruncatedHeader {
            header: header.header,
        })
}

/// Returns `size` bytes of file data at `offset`, or the error that names the header.
fn file_range<'a>(
    raw: &RawFile<'a>,
    header: HeaderRef,
    offset: u32,
    size: u64,
) -> Result<&'a [u8], LoadError> {
    raw.file_data(offset, size)
        .ok_or(LoadError::FileDataOutOfRange {
            header,
            offset,
            size,
        })
}

fn invalid(header: HeaderRef, reason: impl Into<String>) -> LoadError {
    LoadError::InvalidHeader {
        header,
        reason: reason.into(),
    }
}

/// Checks that a header field is a multiple of `alignment`.
fn check_aligned(
    header: HeaderRef,
    field: &str,
    value: u64,
    alignment: u64,
) -> Result<(), LoadError> {
    if alignment != 0 && value.is_multiple_of(alignment) {
        Ok(())
    } else {
        Err(invalid(
            header,
            format!("{field} {value:#x} is not a multiple of {alignment:#x}"),
        ))
    }
}

/// Iterates over the single-bit masks set in `mask`.
pub(crate) fn mask_bits(mask: u32) -> impl Iterator<Item = u32> {
    (0..32)
        .map(|bit| 1u32 << bit)
        .filter(move |bit| mask & bit != 0)
}

/// Returns the name of an architecture for messages.
fn arch_name(arch: Arch) -> &'static str {
    match arch {
        Arch::X64 => "x64",
        Arch::AArch64 => "AArch64",
    }
}
