//! The demo guest of `igvmm run --demo` and `igvmm pack --demo`.
//!
//! `build.rs` assembles the guest from source with iced-x86 (see there for what it prints).
//! This module wraps it in a native IGVM file. The code and its strings are page data. The
//! loader fills a VP count parameter area and a memory-map parameter area. The VP context
//! starts 32-bit protected mode with flat 4 GiB segments and paging off.

use igvm_defs::IgvmNativeVpContextX64;
use igvm_loader::builder::{BuildError, IgvmBuilder};
use igvm_loader::ParameterKind;

include!("demo_layout.rs");

/// The assembled guest: code from `DEMO_CODE_GPA`, strings from `DEMO_STRINGS_GPA`.
pub const DEMO_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/demo_guest.bin"));

/// Flat 32-bit code segment attributes: G, D/B, present, code, execute/read, accessed.
const FLAT_CODE_ATTRIBUTES: u16 = 0xC09B;
/// Flat 32-bit data segment attributes: G, D/B, present, data, read/write, accessed.
const FLAT_DATA_ATTRIBUTES: u16 = 0xC093;
/// CR0 with PE (protected mode) and ET.
const CR0_PROTECTED: u64 = 0x11;

/// Returns the register state the demo starts with.
fn vp_context() -> IgvmNativeVpContextX64 {
    IgvmNativeVpContextX64 {
        rax: 0,
        rcx: 0,
        rdx: 0,
        rbx: 0,
        rsp: DEMO_STACK_TOP,
        rbp: 0,
        rsi: 0,
        rdi: 0,
        r8: 0,
        r9: 0,
        r10: 0,
        r11: 0,
        r12: 0,
        r13: 0,
        r14: 0,
        r15: 0,
        rip: DEMO_CODE_GPA,
        rflags: 0x2,
        idtr_base: 0,
        idtr_limit: 0,
        reserved: [0; 2],
        gdtr_limit: 0,
        gdtr_base: 0,
        code_selector: 0x8,
        code_attributes: FLAT_CODE_ATTRIBUTES,
        code_base: 0,
        code_limit: 0xFFFF_FFFF,
        data_selector: 0x10,
        data_attributes: FLAT_DATA_ATTRIBUTES,
        data_base: 0,
        data_limit: 0xFFFF_FFFF,
        gs_base: 0,
        cr0: CR0_PROTECTED,
        cr3: 0,
        cr4: 0,
        efer: 0,
    }
}

/// Returns the demo's IGVM file.
pub fn image() -> Result<Vec<u8>, BuildError> {
    let mut builder = IgvmBuilder::native();
    builder.pages(DEMO_CODE_GPA, DEMO_GUEST)?;
    builder.parameter_area(0, 0x1000, &[(ParameterKind::VpCount, 0)], DEMO_VP_COUNT_GPA)?;
    builder.parameter_area(
        1,
        DEMO_MEMORY_MAP_SIZE,
        &[(ParameterKind::MemoryMap, 0)],
        DEMO_MEMORY_MAP_GPA,
    )?;
    builder.native_vp_context(0, vp_context());
    builder.build()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn guest_holds_code_and_strings() {
        let strings_offset = (DEMO_STRINGS_GPA - DEMO_CODE_GPA) as usize;
        assert!(DEMO_GUEST.len() > strings_offset);
        // The first instruction is CLD.
        assert_eq!(DEMO_GUEST[0], 0xFC);
        let strings = &DEMO_GUEST[strings_offset..];
        assert!(strings.starts_with(b"igvmm demo guest: 32-bit protected mode\n\0"));
        assert!(strings
            .windows(15)
            .any(|window| window == b"opt/igvm/corim\0"));
    }

    #[test]
    fn image_parses_with_native_platform() {
        let bytes = image().unwrap();
        let parsed = igvm_loader::parse(&bytes).unwrap();
        let platforms = parsed.platforms();
        assert_eq!(platforms.len(), 1);
        assert_eq!(
            platforms[0].platform,
            Some(igvm_loader::plan::Platform::Native)
        );
        assert_eq!(
            devices::debug_exit::exit_status(u32::from(DEMO_SUCCESS_VALUE)),
            1
        );
    }
}
