//! Guest code assembled with iced-x86's `code_asm`, with serial-port and debug-exit helpers.
//!
//! A [`GuestAsm`] wraps a [`CodeAssembler`] for one processor mode and adds subroutines that every
//! test guest needs: writing a byte, a string or a hexadecimal number to COM1, and stopping the VM
//! through the debug-exit port. The subroutines use only 32-bit registers (and `rbx` for 64-bit
//! numbers in long mode), so the same code works in real, protected and long mode.
//!
//! Register use of the subroutines, which callers must expect to lose:
//! - `putc`: `al` is the byte; clobbers `ah` and `dx`.
//! - `hex32`: `ebx` is the value, `edi` the digit count (1 to 8); clobbers `eax`, `ecx`, `edx`, `edi`.
//! - `hex64` (long mode only): `rbx` is the value, `edi` the digit count (1 to 16); same clobbers.
//! - `puts`: `esi` points to a NUL-terminated string; clobbers `eax`, `edx`, `esi`.
//! - `hexdump`: `esi` points to `ebp` bytes, printed as two hex digits each; clobbers `eax`,
//!   `ebx`, `ecx`, `edx`, `edi`, `esi` and `ebp`.
//!
//! Pointers are 32-bit (`esi`), so in long mode the data they point to must lie below 4 GiB.
//!
//! Strings are emitted inline, one `putc` call per byte, so the code has no data section and stays
//! position-independent (the relocation test moves it).

use iced_x86::code_asm::*;

/// COM1 transmit/receive register.
pub const COM1: u16 = 0x3f8;
/// COM1 line status register.
pub const COM1_LSR: u16 = 0x3fd;
/// Line status bit: the receive buffer contains a byte.
pub const LSR_DATA_READY: u8 = 0x01;
/// Line status bit: the transmit holding register is empty.
pub const LSR_THR_EMPTY: u8 = 0x20;
/// QEMU isa-debug-exit port: writing `v` stops the VM with status `(v << 1) | 1`.
pub const DEBUG_EXIT_PORT: u16 = 0x501;

/// The processor mode a piece of guest code runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 16-bit real mode.
    Real,
    /// 32-bit protected mode with a flat GDT and paging off.
    Protected,
    /// 64-bit long mode with identity-mapped page tables.
    Long,
}

impl Mode {
    /// Returns the code size in bits.
    pub fn bitness(self) -> u32 {
        match self {
            Mode::Real => 16,
            Mode::Protected => 32,
            Mode::Long => 64,
        }
    }
}

/// Error from assembling guest code.
pub type AsmResult<T> = Result<T, IcedError>;

/// An assembler for one guest program, with the serial and exit helpers.
pub struct GuestAsm {
    /// The underlying assembler; tests add their own instructions through it.
    pub a: CodeAssembler,
    mode: Mode,
    putc: CodeLabel,
    getc: CodeLabel,
    hex32: CodeLabel,
    hex64: CodeLabel,
    puts: CodeLabel,
    hexdump: CodeLabel,
}

impl GuestAsm {
    /// Creates an assembler for code that runs in `mode`.
    pub fn new(mode: Mode) -> AsmResult<Self> {
        let mut a = CodeAssembler::new(mode.bitness())?;
        let putc = a.create_label();
        let getc = a.create_label();
        let hex32 = a.create_label();
        let hex64 = a.create_label();
        let puts = a.create_label();
        let hexdump = a.create_label();
        Ok(Self {
            a,
            mode,
            putc,
            getc,
            hex32,
            hex64,
            puts,
            hexdump,
        })
    }

    /// Returns the mode the code runs in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Emits a call to `putc` with the byte already in `al`.
    pub fn call_putc(&mut self) -> AsmResult<()> {
        self.a.call(self.putc)
    }

    /// Emits code that writes `text` to COM1, one byte at a time.
    pub fn print(&mut self, text: &str) -> AsmResult<()> {
        self.print_bytes(text.as_bytes())
    }

    /// Emits code that writes `bytes` to COM1. It keeps every register except the flags (it
    /// saves `eax` and `edx` on the stack), so a value computed before a label is printed is
    /// still there for the number that follows.
    pub fn print_bytes(&mut self, bytes: &[u8]) -> AsmResult<()> {
        self.push_scratch()?;
        for &byte in bytes {
            self.a.mov(al, byte as u32)?;
            self.a.call(self.putc)?;
        }
        self.pop_scratch()
    }

    /// Saves `eax`/`rax` and `edx`/`rdx`, the registers `putc` changes.
    fn push_scratch(&mut self) -> AsmResult<()> {
        if self.mode == Mode::Long {
            self.a.push(rax)?;
            self.a.push(rdx)
        } else {
            self.a.push(eax)?;
            self.a.push(edx)
        }
    }

    fn pop_scratch(&mut self) -> AsmResult<()> {
        if self.mode == Mode::Long {
            self.a.pop(rdx)?;
            self.a.pop(rax)
        } else {
            self.a.pop(edx)?;
            self.a.pop(eax)
        }
    }

    /// Emits code that prints the 32-bit register `value` as `digits` lowercase hex digits.
    /// Clobbers `eax`, `ebx`, `ecx`, `edx` and `edi` (unless `value` is `ebx`, which is kept).
    pub fn print_hex32(&mut self, value: AsmRegister32, digits: u32) -> AsmResult<()> {
        if value != ebx {
            self.a.mov(ebx, value)?;
        }
        self.a.mov(edi, digits.clamp(1, 8))?;
        self.a.call(self.hex32)
    }

    /// Emits code that prints the 32-bit immediate `value`'s low `digits` nibbles; used to
    /// print constants computed on the host next to guest values.
    pub fn print_hex32_imm(&mut self, value: u32, digits: u32) -> AsmResult<()> {
        self.a.mov(ebx, value)?;
        self.a.mov(edi, digits.clamp(1, 8))?;
        self.a.call(self.hex32)
    }

    /// Emits code that prints the 64-bit register `value` as `digits` hex digits. Long mode
    /// only. Clobbers `rax`, `rbx`, `rcx`, `rdx` and `rdi` (unless `value` is `rbx`).
    pub fn print_hex64(&mut self, value: AsmRegister64, digits: u32) -> AsmResult<()> {
        if value != rbx {
            self.a.mov(rbx, value)?;
        }
        self.a.mov(edi, digits.clamp(1, 16))?;
        self.a.call(self.hex64)
    }

    /// Emits a call to `puts`: prints the NUL-terminated string at `esi`.
    pub fn call_puts(&mut self) -> AsmResult<()> {
        self.a.call(self.puts)
    }

    /// Emits a call to `hexdump`: prints `ebp` bytes at `esi` as hex digit pairs.
    pub fn call_hexdump(&mut self) -> AsmResult<()> {
        self.a.call(self.hexdump)
    }

    /// Emits code that waits for a byte on COM1 and leaves it in `al`. Clobbers `dx`.
    pub fn call_getc(&mut self) -> AsmResult<()> {
        self.a.call(self.getc)
    }

    /// Emits code that writes `value` to the debug-exit port and then halts with interrupts
    /// off, in case the VMM lets the guest run on.
    pub fn exit(&mut self, value: u8) -> AsmResult<()> {
        self.a.mov(dx, DEBUG_EXIT_PORT as u32)?;
        self.a.mov(al, value as u32)?;
        self.a.out(dx, al)?;
        self.halt_forever()
    }

    /// Emits `cli; hlt` in a loop.
    pub fn halt_forever(&mut self) -> AsmResult<()> {
        let mut again = self.a.create_label();
        self.a.set_label(&mut again)?;
        self.a.cli()?;
        self.a.hlt()?;
        self.a.jmp(again)
    }

    /// Emits the subroutines and assembles the program for load address `origin` (the offset
    /// within the code segment in real mode, the linear address otherwise).
    pub fn assemble(mut self, origin: u64) -> AsmResult<Vec<u8>> {
        self.emit_subroutines()?;
        self.a.assemble(origin)
    }

    fn emit_subroutines(&mut self) -> AsmResult<()> {
        let a = &mut self.a;

        // putc: wait until the transmit holding register is empty, then send `al`.
        a.set_label(&mut self.putc)?;
        a.mov(ah, al)?;
        let mut wait_tx = a.create_label();
        a.set_label(&mut wait_tx)?;
        a.mov(dx, COM1_LSR as u32)?;
        a.in_(al, dx)?;
        a.test(al, LSR_THR_EMPTY as u32)?;
        a.jz(wait_tx)?;
        a.mov(al, ah)?;
        a.mov(dx, COM1 as u32)?;
        a.out(dx, al)?;
        a.ret()?;

        // getc: wait until the receive buffer contains a byte, then read it into `al`.
        a.set_label(&mut self.getc)?;
        a.mov(dx, COM1_LSR as u32)?;
        a.in_(al, dx)?;
        a.test(al, LSR_DATA_READY as u32)?;
        a.jz(self.getc)?;
        a.mov(dx, COM1 as u32)?;
        a.in_(al, dx)?;
        a.ret()?;

        // hex32: print the low `edi` nibbles of `ebx`, most significant first.
        a.set_label(&mut self.hex32)?;
        a.dec(edi)?;
        a.mov(ecx, edi)?;
        a.shl(ecx, 2)?;
        a.mov(eax, ebx)?;
        a.shr(eax, cl)?;
        Self::emit_nibble_to_putc(a, self.putc)?;
        a.test(edi, edi)?;
        a.jnz(self.hex32)?;
        a.ret()?;

        // puts: print bytes from `esi` up to the NUL.
        a.set_label(&mut self.puts)?;
        a.mov(al, byte_ptr(esi))?;
        a.test(al, al)?;
        let mut puts_done = a.create_label();
        a.jz(puts_done)?;
        a.call(self.putc)?;
        a.inc(esi)?;
        a.jmp(self.puts)?;
        a.set_label(&mut puts_done)?;
        a.ret()?;

        // hexdump: print `ebp` bytes from `esi` as two digits each.
        a.set_label(&mut self.hexdump)?;
        a.test(ebp, ebp)?;
        let mut dump_done = a.create_label();
        a.jz(dump_done)?;
        a.movzx(ebx, byte_ptr(esi))?;
        a.mov(edi, 2u32)?;
        a.call(self.hex32)?;
        a.inc(esi)?;
        a.dec(ebp)?;
        a.jmp(self.hexdump)?;
        a.set_label(&mut dump_done)?;
        a.ret()?;

        // hex64: the same for `rbx` in long mode.
        a.set_label(&mut self.hex64)?;
        if self.mode == Mode::Long {
            a.dec(edi)?;
            a.mov(ecx, edi)?;
            a.shl(ecx, 2)?;
            a.mov(rax, rbx)?;
            a.shr(rax, cl)?;
            Self::emit_nibble_to_putc(a, self.putc)?;
            a.test(edi, edi)?;
            a.jnz(self.hex64)?;
        }
        a.ret()?;
        Ok(())
    }

    /// Turns the low nibble of `eax` into an ASCII hex digit and sends it.
    fn emit_nibble_to_putc(a: &mut CodeAssembler, putc: CodeLabel) -> AsmResult<()> {
        a.and(eax, 0xf)?;
        a.cmp(al, 10)?;
        let mut decimal = a.create_label();
        a.jb(decimal)?;
        a.add(al, (b'a' - 10 - b'0') as u32)?;
        a.set_label(&mut decimal)?;
        a.add(al, b'0' as u32)?;
        a.call(putc)
    }
}

/// Formats `value` the way [`GuestAsm::print_hex32`] and [`GuestAsm::print_hex64`] print it.
pub fn hex(value: u64, digits: u32) -> String {
    let digits = digits.clamp(1, 16) as usize;
    let masked = if digits >= 16 {
        value
    } else {
        value & ((1u64 << (digits * 4)) - 1)
    };
    format!("{masked:0digits$x}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hex_masks_to_digit_count() {
        assert_eq!(hex(0x1234_5678, 4), "5678");
        assert_eq!(hex(0xab, 8), "000000ab");
        assert_eq!(hex(u64::MAX, 16), "ffffffffffffffff");
    }

    #[test]
    fn exit_encodes_out_to_debug_port() {
        let mut guest = GuestAsm::new(Mode::Protected).unwrap();
        guest.exit(0x7f).unwrap();
        let code = guest.assemble(0x8000).unwrap();
        // mov dx, 0x501 (66 BA 01 05); mov al, 0x7f (B0 7F); out dx, al (EE)
        assert_eq!(
            code.get(..7),
            Some(&[0x66, 0xba, 0x01, 0x05, 0xb0, 0x7f, 0xee][..])
        );
    }

    #[test]
    fn all_modes_assemble() {
        for mode in [Mode::Real, Mode::Protected, Mode::Long] {
            let mut guest = GuestAsm::new(mode).unwrap();
            guest.print("ok\n").unwrap();
            guest.a.mov(eax, 0x1234u32).unwrap();
            guest.print_hex32(eax, 8).unwrap();
            guest.exit(0).unwrap();
            let code = guest.assemble(0x8000).unwrap();
            assert!(code.len() > 20, "{mode:?} produced {} bytes", code.len());
        }
    }
}
