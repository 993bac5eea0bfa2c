//! Arbitrary bytes as an IGVM file: parse, inspect summary, load for every platform on a fixed
//! host, the checks of each plan, and the launch measurements.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    igvmm_fuzz::exercise_loader(data);
});
