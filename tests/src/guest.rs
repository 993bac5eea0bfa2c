//! Standard test images: a program, the GDT, page tables and the VP context for its mode.

use crate::asm::{AsmResult, GuestAsm, Mode};
use crate::igvm_file::IgvmBuilder;
use crate::layout::{self, CODE_GPA, GDT_GPA, PML4_GPA};

/// Assembles `program` for [`CODE_GPA`] (CS base 0 in real mode).
pub fn assemble(program: GuestAsm) -> AsmResult<Vec<u8>> {
    program.assemble(CODE_GPA)
}

/// Returns a builder that loads `code` at [`CODE_GPA`], the GDT at [`GDT_GPA`], the identity
/// page tables at [`PML4_GPA`], and starts VP 0 in `mode` at [`CODE_GPA`].
pub fn image(mode: Mode, code: &[u8]) -> IgvmBuilder {
    let mut builder = IgvmBuilder::new();
    builder
        .page_data(GDT_GPA, &layout::gdt())
        .page_data(PML4_GPA, &layout::identity_page_tables(PML4_GPA))
        .page_data(CODE_GPA, code);
    builder.vp_context(0, entry_context(mode, CODE_GPA));
    builder
}

/// Returns the VP context that starts `mode` code at `gpa`.
pub fn entry_context(mode: Mode, gpa: u64) -> igvm_defs::IgvmNativeVpContextX64 {
    match mode {
        Mode::Real => layout::real_mode_context(0, gpa as u16),
        Mode::Protected => layout::protected_mode_context(gpa as u32),
        Mode::Long => layout::long_mode_context(gpa, PML4_GPA),
    }
}

/// Builds the IGVM file for a program that `body` writes, in `mode`, with no other headers.
pub fn simple_file(
    mode: Mode,
    body: impl FnOnce(&mut GuestAsm) -> AsmResult<()>,
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut program = GuestAsm::new(mode)?;
    body(&mut program)?;
    let code = assemble(program)?;
    Ok(image(mode, &code).build()?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use iced_x86::code_asm::*;

    use super::*;
    use crate::bare_kvm::{self, BareStop};

    fn run_bare(file: &[u8]) -> Option<(String, BareStop)> {
        let (serial, stop) = bare_kvm::run(file, 4 << 20, Duration::from_secs(10))?;
        Some((String::from_utf8_lossy(&serial).into_owned(), stop))
    }

    fn hex_program(mode: Mode) -> Vec<u8> {
        simple_file(mode, |g| {
            g.print("mode ")?;
            g.a.mov(eax, 0x1234_abcdu32)?;
            g.print_hex32(eax, 8)?;
            g.print(" ")?;
            g.print_hex32_imm(0x5a, 2)?;
            if g.mode() == Mode::Long {
                g.print(" ")?;
                g.a.mov(rax, 0x0123_4567_89ab_cdefu64)?;
                g.print_hex64(rax, 16)?;
            }
            g.print("\n")?;
            g.exit(3)
        })
        .unwrap()
    }

    #[test]
    fn hex_output_on_bare_kvm_real_mode() {
        let Some((serial, stop)) = run_bare(&hex_program(Mode::Real)) else {
            eprintln!("skipped: /dev/kvm is not usable");
            return;
        };
        assert_eq!(serial, "mode 1234abcd 5a\n");
        assert_eq!(stop, BareStop::DebugExit(3));
    }

    #[test]
    fn hex_output_on_bare_kvm_protected_mode() {
        let Some((serial, stop)) = run_bare(&hex_program(Mode::Protected)) else {
            eprintln!("skipped: /dev/kvm is not usable");
            return;
        };
        assert_eq!(serial, "mode 1234abcd 5a\n");
        assert_eq!(stop, BareStop::DebugExit(3));
    }

    #[test]
    fn hex_output_on_bare_kvm_long_mode() {
        let Some((serial, stop)) = run_bare(&hex_program(Mode::Long)) else {
            eprintln!("skipped: /dev/kvm is not usable");
            return;
        };
        assert_eq!(serial, "mode 1234abcd 5a 0123456789abcdef\n");
        assert_eq!(stop, BareStop::DebugExit(3));
    }

    #[test]
    fn crc32_in_guest_matches_host() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut builder = {
            let mut g = GuestAsm::new(Mode::Long).unwrap();
            g.a.mov(rsi, layout::SCRATCH_GPA).unwrap();
            g.a.mov(ecx, data.len() as u32).unwrap();
            crate::fw_cfg::crc32(&mut g).unwrap();
            g.print_hex32(eax, 8).unwrap();
            g.a.mov(esi, layout::SCRATCH_GPA as u32).unwrap();
            g.a.mov(ebp, 4u32).unwrap();
            g.call_hexdump().unwrap();
            g.exit(0).unwrap();
            image(Mode::Long, &assemble(g).unwrap())
        };
        builder.page_data(layout::SCRATCH_GPA, &data);
        let Some((serial, stop)) = run_bare(&builder.build().unwrap()) else {
            eprintln!("skipped: /dev/kvm is not usable");
            return;
        };
        let expected = format!(
            "{:08x}{}",
            crc32fast::hash(&data),
            hex::encode(data.get(..4).unwrap())
        );
        assert_eq!(serial, expected);
        assert_eq!(stop, BareStop::DebugExit(0));
    }
}
