//! Valid IGVM files, mutated with knowledge of the format, through the same loader entry points
//! as `parse_plan`.
//!
//! The corpus starts from the conformance files and generated guests that `scripts/fuzz.sh`
//! copies in. The mutator changes header fields to edge values, copies or removes whole
//! headers (keeping file offsets pointing at their data) or mutates bytes, and then fixes the
//! total size and the CRC32, so that most inputs get past the checksum to the header checks.

#![no_main]

use libfuzzer_sys::{fuzz_mutator, fuzz_target};

fuzz_target!(|data: &[u8]| {
    igvmm_fuzz::exercise_loader(data);
});

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    igvmm_fuzz::mutate(data, size, max_size, seed)
});
