//! The benchmark guests: 64 KiB PC firmware images whose reset vector jumps to 16-bit real-mode
//! code at the start of the image.
//!
//! A PC maps its firmware so that the image ends at 4 GiB, and QEMU and `igvmm pack --firmware`
//! also copy a 64 KiB image to 0xF0000. After reset CS has base 0xFFFF0000 and IP 0xFFF0, so
//! a near jump at offset 0xFFF0 reaches offset 0 of the image without changing CS. Every guest
//! sets SS:SP to 0000:7C00 and DS, ES and FS to 0 before anything else, and ends by writing
//! [`EXIT_VALUE`] to the debug-exit port.
//!
//! Timed guests read the TSC before and after the timed section and print the difference on the
//! debug console (port 0x402) as `NAME=` and 16 hex digits, one line each. The start value
//! is kept at FS:0x600, so the timed code may change DS and ES.

use iced_x86::code_asm::*;

/// Size of every image.
pub const IMAGE_SIZE: usize = 64 * 1024;
/// Offset of the reset vector in the image (linear address 0xFFFFFFF0).
const RESET_VECTOR_OFFSET: usize = IMAGE_SIZE - 16;
/// GPA of the image's last byte plus one.
pub const IMAGE_END: u64 = 1 << 32;
/// GPA where the image is copied below 1 MiB.
pub const LOW_COPY_GPA: u64 = 0x10_0000 - IMAGE_SIZE as u64;

/// COM1 transmit register.
pub const COM1: u16 = 0x3F8;
/// COM1 line status register.
pub const COM1_LSR: u16 = 0x3FD;
/// Line status bit: the transmit holding register is empty.
const LSR_THR_EMPTY: u32 = 0x20;
/// Debug console port (QEMU's isa-debugcon, igvmm's `--debugcon`).
pub const DEBUGCON: u16 = 0x402;
/// QEMU isa-debug-exit port.
pub const DEBUG_EXIT: u16 = 0x501;
/// Value the guests write to the debug-exit port.
pub const EXIT_VALUE: u8 = 0x10;
/// Process exit status of igvmm and QEMU after the guest writes [`EXIT_VALUE`]:
/// `(value << 1) | 1`.
pub const EXIT_STATUS: i32 = ((EXIT_VALUE as i32) << 1) | 1;
/// The line the hello and spin guests print on COM1.
pub const HELLO_LINE: &str = "igvmm-bench: hello\n";

/// Initial stack pointer (SS = 0).
const STACK_TOP: u32 = 0x7C00;
/// Offset in segment FS = 0 of the TSC value at the start of a timed section.
const TSC_START: u64 = 0x600;

/// fw_cfg selector register.
const FW_CFG_SELECTOR: u16 = 0x510;
/// fw_cfg data register.
const FW_CFG_DATA: u16 = 0x511;
/// fw_cfg DMA address register, high half (big-endian).
const FW_CFG_DMA_HIGH: u16 = 0x514;
/// fw_cfg DMA address register, low half; writing it starts the transfer.
const FW_CFG_DMA_LOW: u16 = 0x518;
/// fw_cfg DMA control bits: read into guest memory, after selecting the item.
const FW_CFG_DMA_READ: u32 = 0x02;
const FW_CFG_DMA_SELECT: u32 = 0x08;
/// Physical address of the fw_cfg DMA descriptor (DS = 0).
const DMA_DESCRIPTOR: u64 = 0x1000;

/// Bytes moved by one `rep outsb` or `rep insb` of the timed loops (half a segment).
pub const STRING_CHUNK: u32 = 0x8000;
/// Segment that contains the serial guest's 64 KiB of text.
const SERIAL_TEXT_SEGMENT: u32 = 0x1000;

/// Error of assembling a guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// iced-x86 rejected an instruction.
    #[error("iced-x86 rejected the guest code: {0}")]
    Asm(#[from] IcedError),
    /// The code reaches into the reset vector.
    #[error(
        "the guest code is {0} bytes; at most {RESET_VECTOR_OFFSET} fit below the reset vector"
    )]
    TooLarge(usize),
}

/// Result of assembling a guest.
pub type AsmResult<T> = Result<T, GuestError>;

/// A real-mode program under construction, with a `hex32` subroutine that prints `ebx` as eight
/// hex digits on the debug console.
struct RealMode {
    a: CodeAssembler,
    hex32: CodeLabel,
}

impl RealMode {
    /// Starts a program: interrupts off, the stack and the data segments set up.
    fn new() -> AsmResult<Self> {
        let mut a = CodeAssembler::new(16)?;
        let hex32 = a.create_label();
        a.cli()?;
        a.xor(ax, ax)?;
        a.mov(ss, ax)?;
        a.mov(sp, STACK_TOP)?;
        a.mov(ds, ax)?;
        a.mov(es, ax)?;
        a.mov(fs, ax)?;
        Ok(Self { a, hex32 })
    }

    /// Writes `text` to `port`, one `out` per byte; with `wait_thr` it first waits for the
    /// COM1 transmitter to be empty, as a driver does.
    fn print(&mut self, port: u16, text: &str, wait_thr: bool) -> AsmResult<()> {
        for byte in text.bytes() {
            if wait_thr {
                let mut wait = self.a.create_label();
                self.a.set_label(&mut wait)?;
                self.a.mov(dx, u32::from(COM1_LSR))?;
                self.a.in_(al, dx)?;
                self.a.test(al, LSR_THR_EMPTY)?;
                self.a.jz(wait)?;
            }
            self.a.mov(dx, u32::from(port))?;
            self.a.mov(al, u32::from(byte))?;
            self.a.out(dx, al)?;
        }
        Ok(())
    }

    /// Stores the TSC at FS:[`TSC_START`]; clobbers eax and edx.
    fn start_timer(&mut self) -> AsmResult<()> {
        self.a.rdtsc()?;
        self.a.mov(dword_ptr(TSC_START).fs(), eax)?;
        self.a.mov(dword_ptr(TSC_START + 4).fs(), edx)?;
        Ok(())
    }

    /// Prints `name=` and the TSC cycles since [`RealMode::start_timer`] on the debug console.
    fn report_timer(&mut self, name: &str) -> AsmResult<()> {
        self.a.rdtsc()?;
        self.a.sub(eax, dword_ptr(TSC_START).fs())?;
        self.a.sbb(edx, dword_ptr(TSC_START + 4).fs())?;
        self.a.push(eax)?;
        self.a.push(edx)?;
        self.print(DEBUGCON, &format!("{name}="), false)?;
        self.a.pop(ebx)?;
        self.a.call(self.hex32)?;
        self.a.pop(ebx)?;
        self.a.call(self.hex32)?;
        self.print(DEBUGCON, "\n", false)
    }

    /// Writes [`EXIT_VALUE`] to the debug-exit port, then halts with interrupts off.
    fn exit(&mut self) -> AsmResult<()> {
        self.a.mov(dx, u32::from(DEBUG_EXIT))?;
        self.a.mov(al, u32::from(EXIT_VALUE))?;
        self.a.out(dx, al)?;
        let mut halt = self.a.create_label();
        self.a.set_label(&mut halt)?;
        self.a.hlt()?;
        self.a.jmp(halt)?;
        Ok(())
    }

    /// Adds the subroutines and returns the firmware image.
    fn finish(mut self) -> AsmResult<Vec<u8>> {
        // hex32: print ebx as eight hex digits, most significant first; clobbers eax, cx, dx.
        let a = &mut self.a;
        a.set_label(&mut self.hex32)?;
        a.mov(cx, 8u32)?;
        let mut digit = a.create_label();
        let mut decimal = a.create_label();
        a.set_label(&mut digit)?;
        a.rol(ebx, 4u32)?;
        a.mov(al, bl)?;
        a.and(al, 0x0Fu32)?;
        a.cmp(al, 10u32)?;
        a.jb(decimal)?;
        a.add(al, u32::from(b'a' - 10 - b'0'))?;
        a.set_label(&mut decimal)?;
        a.add(al, u32::from(b'0'))?;
        a.mov(dx, u32::from(DEBUGCON))?;
        a.out(dx, al)?;
        a.loop_(digit)?;
        a.ret()?;

        let code = self.a.assemble(0)?;
        image_from_code(&code)
    }
}

/// Places `code` at offset 0 of a 64 KiB image and a jump to it at the reset vector.
fn image_from_code(code: &[u8]) -> AsmResult<Vec<u8>> {
    if code.len() > RESET_VECTOR_OFFSET {
        return Err(GuestError::TooLarge(code.len()));
    }
    let mut image = vec![0u8; IMAGE_SIZE];
    if let Some(slot) = image.get_mut(..code.len()) {
        slot.copy_from_slice(code);
    }
    // jmp near rel16: the target offset 0 minus the offset after the 3-byte instruction.
    let displacement = 0u16.wrapping_sub((RESET_VECTOR_OFFSET + 3) as u16);
    let [low, high] = displacement.to_le_bytes();
    if let Some(slot) = image.get_mut(RESET_VECTOR_OFFSET..RESET_VECTOR_OFFSET + 3) {
        slot.copy_from_slice(&[0xE9, low, high]);
    }
    Ok(image)
}

/// Assembles the start-up guest, which prints [`HELLO_LINE`] on COM1 and exits.
pub fn hello() -> AsmResult<Vec<u8>> {
    let mut guest = RealMode::new()?;
    guest.print(COM1, HELLO_LINE, true)?;
    guest.exit()?;
    guest.finish()
}

/// Assembles the memory guest, which prints [`HELLO_LINE`] on COM1 and then loops forever, so
/// that the VMM's memory can be read while it runs.
pub fn spin() -> AsmResult<Vec<u8>> {
    let mut guest = RealMode::new()?;
    guest.print(COM1, HELLO_LINE, true)?;
    let mut forever = guest.a.create_label();
    guest.a.set_label(&mut forever)?;
    guest.a.jmp(forever)?;
    guest.finish()
}

/// Assembles the serial guest, which writes `total` bytes of text to COM1 with `rep outsb`,
/// without polling the line status, and reports the cycles as `serial-cycles`.
///
/// The text is 64 KiB at 0x10000, lines of 63 letters and a newline, sent over and over.
/// `total` must be a multiple of [`STRING_CHUNK`].
pub fn serial(total: u32) -> AsmResult<Vec<u8>> {
    let mut guest = RealMode::new()?;
    let a = &mut guest.a;

    // Fill ES:0..0xFFFF with the text: byte i is '\n' when i % 64 == 63, else 'A' + i % 16.
    a.mov(ax, SERIAL_TEXT_SEGMENT)?;
    a.mov(es, ax)?;
    a.xor(di, di)?;
    let mut fill = a.create_label();
    let mut newline = a.create_label();
    let mut store = a.create_label();
    a.set_label(&mut fill)?;
    a.mov(ax, di)?;
    a.and(ax, 63u32)?;
    a.cmp(ax, 63u32)?;
    a.je(newline)?;
    a.mov(ax, di)?;
    a.and(al, 15u32)?;
    a.add(al, u32::from(b'A'))?;
    a.jmp(store)?;
    a.set_label(&mut newline)?;
    a.mov(al, u32::from(b'\n'))?;
    a.set_label(&mut store)?;
    a.stosb()?;
    a.test(di, di)?;
    a.jnz(fill)?;

    guest.start_timer()?;
    let a = &mut guest.a;
    a.mov(ax, SERIAL_TEXT_SEGMENT)?;
    a.mov(ds, ax)?;
    a.xor(si, si)?;
    a.mov(dx, u32::from(COM1))?;
    a.mov(bx, total / STRING_CHUNK)?;
    let mut send = a.create_label();
    a.set_label(&mut send)?;
    a.mov(cx, STRING_CHUNK)?;
    a.rep().outsb()?;
    a.dec(bx)?;
    a.jnz(send)?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    guest.report_timer("serial-cycles")?;
    guest.exit()?;
    guest.finish()
}

/// Selector, sizes and destinations of the fw_cfg guest's reads.
#[derive(Debug, Clone, Copy)]
pub struct FwCfgLayout {
    /// Selector of the file to read.
    pub selector: u16,
    /// Bytes read through the data port, a multiple of [`STRING_CHUNK`].
    pub pio_bytes: u32,
    /// Destination of the port reads, 16-byte aligned and below 1 MiB.
    pub pio_gpa: u32,
    /// Bytes read by each DMA transfer.
    pub dma_bytes: u32,
    /// Destination of the DMA transfers.
    pub dma_gpa: u32,
}

/// Assembles the fw_cfg guest. It reads the first `pio_bytes` of the file through the data
/// port with `rep insb` (`fw-cfg-pio-cycles`). Then it reads `dma_bytes` by DMA twice into the
/// same memory: `fw-cfg-dma-cycles` times the first transfer, into untouched memory, and
/// `fw-cfg-dma-warm-cycles` the second. After each transfer it prints the control word that
/// the device left (`fw-cfg-dma-control`, 0 on success).
pub fn fw_cfg(layout: FwCfgLayout) -> AsmResult<Vec<u8>> {
    let mut guest = RealMode::new()?;
    let a = &mut guest.a;
    a.mov(dx, u32::from(FW_CFG_SELECTOR))?;
    a.mov(ax, u32::from(layout.selector))?;
    a.out(dx, ax)?;
    a.mov(ax, layout.pio_gpa >> 4)?;
    a.mov(es, ax)?;
    a.xor(di, di)?;
    guest.start_timer()?;
    // rdtsc in start_timer overwrites edx, so the port goes into dx afterwards.
    let a = &mut guest.a;
    a.mov(dx, u32::from(FW_CFG_DATA))?;
    a.mov(bx, layout.pio_bytes / STRING_CHUNK)?;
    let mut chunk = a.create_label();
    a.set_label(&mut chunk)?;
    a.mov(cx, STRING_CHUNK)?;
    a.rep().insb()?;
    // Move ES forward by the chunk instead of letting DI wrap inside the segment.
    a.mov(ax, es)?;
    a.add(ax, STRING_CHUNK >> 4)?;
    a.mov(es, ax)?;
    a.xor(di, di)?;
    a.dec(bx)?;
    a.jnz(chunk)?;
    guest.report_timer("fw-cfg-pio-cycles")?;

    let control = (u32::from(layout.selector) << 16) | FW_CFG_DMA_SELECT | FW_CFG_DMA_READ;
    for name in ["fw-cfg-dma-cycles", "fw-cfg-dma-warm-cycles"] {
        // The descriptor is big-endian: { control, length, address high, address low }.
        let a = &mut guest.a;
        a.mov(dword_ptr(DMA_DESCRIPTOR), control.swap_bytes())?;
        a.mov(dword_ptr(DMA_DESCRIPTOR + 4), layout.dma_bytes.swap_bytes())?;
        a.mov(dword_ptr(DMA_DESCRIPTOR + 8), 0u32)?;
        a.mov(dword_ptr(DMA_DESCRIPTOR + 12), layout.dma_gpa.swap_bytes())?;
        guest.start_timer()?;
        let a = &mut guest.a;
        a.mov(dx, u32::from(FW_CFG_DMA_HIGH))?;
        a.xor(eax, eax)?;
        a.out(dx, eax)?;
        a.mov(dx, u32::from(FW_CFG_DMA_LOW))?;
        a.mov(eax, (DMA_DESCRIPTOR as u32).swap_bytes())?;
        a.out(dx, eax)?;
        // Wait until the device clears every control bit but ERROR (bit 0 of the big-endian
        // word, so bit 24 of the little-endian load).
        let mut wait = a.create_label();
        a.set_label(&mut wait)?;
        a.mov(eax, dword_ptr(DMA_DESCRIPTOR))?;
        a.test(eax, 0xFEFF_FFFFu32)?;
        a.jnz(wait)?;
        guest.report_timer(name)?;
        guest.print(DEBUGCON, "fw-cfg-dma-control=", false)?;
        let a = &mut guest.a;
        a.mov(ebx, dword_ptr(DMA_DESCRIPTOR))?;
        a.bswap(ebx)?;
        a.call(guest.hex32)?;
        guest.print(DEBUGCON, "\n", false)?;
    }
    guest.exit()?;
    guest.finish()
}

/// Returns the value of `name=HEX` in debug-console text, or `None` when the line is missing.
pub fn parse_report(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix(name)?.strip_prefix('=')?;
        u64::from_str_radix(value, 16).ok()
    })
}
