//! Assembles the demo guest of `igvmm run --demo` with iced-x86, so that the repository contains
//! its source and no binary. The code lands in `$OUT_DIR/demo_guest.bin`, which `src/demo.rs`
//! includes.
//!
//! The guest runs in 32-bit protected mode with flat segments and paging off, at
//! `DEMO_CODE_GPA`. It prints on COM1:
//! 1. a greeting,
//! 2. the VP count and memory map from the IGVM parameter areas the loader filled,
//! 3. the fw_cfg signature and each file of the fw_cfg directory with its size (port I/O; each
//!    64-byte directory entry is read with `rep insb`),
//! 4. the length and CRC-32 of `opt/igvm/corim`, read by fw_cfg DMA, when that file exists,
//! 5. "demo done",
//!
//! then writes `DEMO_SUCCESS_VALUE` to the debug-exit port 0x501 and halts with interrupts
//! disabled in case nothing claims that port.

use std::error::Error;
use std::path::PathBuf;

use iced_x86::code_asm::*;

include!("src/demo_layout.rs");

/// COM1 transmit register.
const COM1_DATA: u32 = 0x3F8;
/// fw_cfg selector port.
const FW_CFG_SELECTOR: u32 = 0x510;
/// fw_cfg data port.
const FW_CFG_DATA: u32 = 0x511;
/// fw_cfg DMA address register, high half (big-endian).
const FW_CFG_DMA_HIGH: u32 = 0x514;
/// fw_cfg DMA address register, low half; writing it starts the transfer.
const FW_CFG_DMA_LOW: u32 = 0x518;
/// fw_cfg feature bitmap selector and its DMA bit.
const FW_CFG_ID: u32 = 0x01;
const FW_CFG_ID_DMA: u32 = 0x02;
/// fw_cfg file directory selector.
const FW_CFG_FILE_DIR: u32 = 0x19;
/// DMA control bits: error, read, select.
const DMA_ERROR: u32 = 0x01;
const DMA_READ: u32 = 0x02;
const DMA_SELECT: u32 = 0x08;
/// QEMU's debug-exit port.
const DEBUG_EXIT: u32 = 0x501;
/// Size of an IGVM memory-map entry.
const MEMORY_MAP_ENTRY: u32 = 24;
/// Size of a fw_cfg directory entry.
const DIR_ENTRY: u32 = 64;
/// Reflected CRC-32 (IEEE 802.3) polynomial.
const CRC32_POLYNOMIAL: u32 = 0xEDB8_8320;

/// Returns a 32-bit absolute address; every demo address lies below 4 GiB.
fn abs(gpa: u64) -> u32 {
    gpa as u32
}

/// Labels of the subroutines.
struct Labels {
    putc: CodeLabel,
    puts: CodeLabel,
    print_hex32: CodeLabel,
    hex_digits: CodeLabel,
    print_dec: CodeLabel,
    newline: CodeLabel,
}

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/demo_layout.rs");
    let code = assemble().map_err(|error| format!("assembling the demo guest: {error}"))?;
    let strings_offset = (DEMO_STRINGS_GPA - DEMO_CODE_GPA) as usize;
    let strings = Strings::new();
    if code.len() > strings_offset {
        return Err("the demo code overlaps its strings; move DEMO_STRINGS_GPA".into());
    }
    let mut image = code;
    image.resize(strings_offset, 0);
    image.extend_from_slice(&strings.data);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("demo_guest.bin"), image)?;
    Ok(())
}

fn assemble() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(32)?;
    let mut labels = Labels {
        putc: a.create_label(),
        puts: a.create_label(),
        print_hex32: a.create_label(),
        hex_digits: a.create_label(),
        print_dec: a.create_label(),
        newline: a.create_label(),
    };
    let strings = Strings::new();

    a.cld()?;
    a.mov(esi, strings.greeting)?;
    a.call(labels.puts)?;

    vp_count(&mut a, &labels, &strings)?;
    memory_map(&mut a, &labels, &strings)?;
    fw_cfg_files(&mut a, &labels, &strings)?;
    corim_crc(&mut a, &labels, &strings)?;

    a.mov(esi, strings.done)?;
    a.call(labels.puts)?;
    a.mov(dx, DEBUG_EXIT)?;
    a.mov(al, u32::from(DEMO_SUCCESS_VALUE))?;
    a.out(dx, al)?;
    let mut halt = a.create_label();
    a.set_label(&mut halt)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(halt)?;

    subroutines(&mut a, &mut labels)?;
    a.assemble(DEMO_CODE_GPA)
}

/// Prints "vp count: N".
fn vp_count(a: &mut CodeAssembler, labels: &Labels, strings: &Strings) -> Result<(), IcedError> {
    a.mov(esi, strings.vp_count)?;
    a.call(labels.puts)?;
    a.mov(eax, dword_ptr(abs(DEMO_VP_COUNT_GPA)))?;
    a.call(labels.print_dec)?;
    a.call(labels.newline)
}

/// Prints "memory map:" and one line per entry until the all-zero terminator.
fn memory_map(a: &mut CodeAssembler, labels: &Labels, strings: &Strings) -> Result<(), IcedError> {
    a.mov(esi, strings.memory_map)?;
    a.call(labels.puts)?;
    a.mov(ebx, DEMO_MEMORY_MAP_GPA as u32)?;
    let mut next = a.create_label();
    let mut done = a.create_label();
    a.set_label(&mut next)?;
    a.cmp(ebx, (DEMO_MEMORY_MAP_GPA + DEMO_MEMORY_MAP_SIZE) as u32)?;
    a.jae(done)?;
    // number_of_pages (u64 at offset 8) is zero only in the terminator.
    a.mov(eax, dword_ptr(ebx + 8))?;
    a.or(eax, dword_ptr(ebx + 12))?;
    a.jz(done)?;

    a.mov(esi, strings.entry_base)?;
    a.call(labels.puts)?;
    print_pages_as_bytes(a, labels, 0)?;
    a.mov(esi, strings.entry_size)?;
    a.call(labels.puts)?;
    print_pages_as_bytes(a, labels, 8)?;

    // entry_type (u16 at offset 16): 0 memory, 1 platform-reserved, 2 persistent.
    a.movzx(eax, word_ptr(ebx + 16))?;
    let mut named = a.create_label();
    a.mov(esi, strings.type_memory)?;
    a.cmp(eax, 0)?;
    a.je(named)?;
    a.mov(esi, strings.type_reserved)?;
    a.cmp(eax, 1)?;
    a.je(named)?;
    a.mov(esi, strings.type_persistent)?;
    a.cmp(eax, 2)?;
    a.je(named)?;
    a.mov(esi, strings.type_other)?;
    a.set_label(&mut named)?;
    a.call(labels.puts)?;
    a.call(labels.newline)?;
    a.add(ebx, MEMORY_MAP_ENTRY)?;
    a.jmp(next)?;
    a.set_label(&mut done)
}

/// Prints the u64 page number at `[ebx + offset]` as a 16-digit byte address.
fn print_pages_as_bytes(
    a: &mut CodeAssembler,
    labels: &Labels,
    offset: u32,
) -> Result<(), IcedError> {
    // High half: (hi << 12) | (lo >> 20). Low half: lo << 12.
    a.mov(al, u32::from(b'0'))?;
    a.call(labels.putc)?;
    a.mov(al, u32::from(b'x'))?;
    a.call(labels.putc)?;
    a.mov(eax, dword_ptr(ebx + offset + 4))?;
    a.shl(eax, 12)?;
    a.mov(ecx, dword_ptr(ebx + offset))?;
    a.shr(ecx, 20)?;
    a.or(eax, ecx)?;
    a.call(labels.hex_digits)?;
    a.mov(eax, dword_ptr(ebx + offset))?;
    a.shl(eax, 12)?;
    a.call(labels.hex_digits)
}

/// Selects fw_cfg item `selector` through the selector port.
fn select(a: &mut CodeAssembler, selector: u32) -> Result<(), IcedError> {
    a.mov(dx, FW_CFG_SELECTOR)?;
    a.mov(ax, selector)?;
    a.out(dx, ax)
}

/// Prints the signature and the file directory. Leaves the selector of `opt/igvm/corim` at
/// `DEMO_CORIM_SELECT_GPA` and its size at `DEMO_CORIM_SIZE_GPA` (both zero when the file is
/// missing).
fn fw_cfg_files(
    a: &mut CodeAssembler,
    labels: &Labels,
    strings: &Strings,
) -> Result<(), IcedError> {
    let corim_size = DEMO_CORIM_SIZE_GPA;
    let corim_select = DEMO_CORIM_SELECT_GPA;
    a.mov(dword_ptr(abs(corim_size)), 0)?;
    a.mov(dword_ptr(abs(corim_select)), 0)?;

    a.mov(esi, strings.signature)?;
    a.call(labels.puts)?;
    select(a, 0)?;
    a.mov(ecx, 4)?;
    a.mov(dx, FW_CFG_DATA)?;
    let mut signature = a.create_label();
    a.set_label(&mut signature)?;
    a.in_(al, dx)?;
    a.call(labels.putc)?;
    a.loop_(signature)?;
    a.call(labels.newline)?;

    // The directory: a big-endian count, then 64-byte entries.
    select(a, FW_CFG_FILE_DIR)?;
    a.mov(dx, FW_CFG_DATA)?;
    a.mov(edi, DEMO_DIR_ENTRY_GPA as u32)?;
    a.mov(ecx, 4)?;
    a.rep().insb()?;
    a.mov(ebx, dword_ptr(abs(DEMO_DIR_ENTRY_GPA)))?;
    a.bswap(ebx)?;
    a.mov(esi, strings.files)?;
    a.call(labels.puts)?;
    a.mov(eax, ebx)?;
    a.call(labels.print_dec)?;
    a.call(labels.newline)?;

    let mut next = a.create_label();
    let mut done = a.create_label();
    a.set_label(&mut next)?;
    a.test(ebx, ebx)?;
    a.jz(done)?;
    // Read one entry with string I/O: { be32 size, be16 select, u16 reserved, name[56] }.
    a.mov(dx, FW_CFG_DATA)?;
    a.mov(edi, DEMO_DIR_ENTRY_GPA as u32)?;
    a.mov(ecx, DIR_ENTRY)?;
    a.rep().insb()?;
    a.mov(esi, strings.indent)?;
    a.call(labels.puts)?;
    // The name is NUL-terminated within its 56 bytes; force a NUL at the end in case.
    a.mov(byte_ptr(abs(DEMO_DIR_ENTRY_GPA + 63)), 0)?;
    a.mov(esi, (DEMO_DIR_ENTRY_GPA + 8) as u32)?;
    a.call(labels.puts)?;
    a.mov(esi, strings.comma)?;
    a.call(labels.puts)?;
    a.mov(eax, dword_ptr(abs(DEMO_DIR_ENTRY_GPA)))?;
    a.bswap(eax)?;
    a.call(labels.print_dec)?;
    a.mov(esi, strings.bytes)?;
    a.call(labels.puts)?;
    a.call(labels.newline)?;

    // Remember opt/igvm/corim: compare the name with its NUL.
    let mut not_corim = a.create_label();
    a.mov(esi, (DEMO_DIR_ENTRY_GPA + 8) as u32)?;
    a.mov(edi, strings.corim_name)?;
    a.mov(ecx, strings.corim_name_len)?;
    a.repe().cmpsb()?;
    a.jne(not_corim)?;
    a.mov(eax, dword_ptr(abs(DEMO_DIR_ENTRY_GPA)))?;
    a.bswap(eax)?;
    a.mov(dword_ptr(abs(corim_size)), eax)?;
    a.movzx(eax, word_ptr(abs(DEMO_DIR_ENTRY_GPA + 4)))?;
    a.xchg(al, ah)?;
    a.mov(dword_ptr(abs(corim_select)), eax)?;
    a.set_label(&mut not_corim)?;
    a.dec(ebx)?;
    a.jmp(next)?;
    a.set_label(&mut done)
}

/// Reads `opt/igvm/corim` by DMA and prints its length and CRC-32, if the file exists.
fn corim_crc(a: &mut CodeAssembler, labels: &Labels, strings: &Strings) -> Result<(), IcedError> {
    let corim_size = DEMO_CORIM_SIZE_GPA;
    let corim_select = DEMO_CORIM_SELECT_GPA;
    let descriptor = DEMO_DMA_DESCRIPTOR_GPA;
    let mut skip = a.create_label();
    let mut failed = a.create_label();
    let mut print = a.create_label();

    a.cmp(dword_ptr(abs(corim_select)), 0)?;
    a.je(skip)?;
    a.mov(esi, strings.corim_name)?;
    a.call(labels.puts)?;
    a.mov(esi, strings.colon)?;
    a.call(labels.puts)?;
    a.mov(eax, dword_ptr(abs(corim_size)))?;
    a.call(labels.print_dec)?;
    a.mov(esi, strings.bytes)?;
    a.call(labels.puts)?;

    // DMA needs bit 1 of the feature bitmap and a file that fits the buffer.
    select(a, FW_CFG_ID)?;
    a.mov(dx, FW_CFG_DATA)?;
    a.in_(al, dx)?;
    a.test(al, FW_CFG_ID_DMA)?;
    a.jz(failed)?;
    a.cmp(dword_ptr(abs(corim_size)), DEMO_DMA_BUFFER_SIZE as u32)?;
    a.ja(failed)?;

    // Descriptor, all big-endian: control = select << 16 | SELECT | READ, length, address.
    a.mov(eax, dword_ptr(abs(corim_select)))?;
    a.shl(eax, 16)?;
    a.or(eax, DMA_SELECT | DMA_READ)?;
    a.bswap(eax)?;
    a.mov(dword_ptr(abs(descriptor)), eax)?;
    a.mov(eax, dword_ptr(abs(corim_size)))?;
    a.bswap(eax)?;
    a.mov(dword_ptr(abs(descriptor + 4)), eax)?;
    a.mov(dword_ptr(abs(descriptor + 8)), 0)?;
    a.mov(eax, DEMO_DMA_BUFFER_GPA as u32)?;
    a.bswap(eax)?;
    a.mov(dword_ptr(abs(descriptor + 12)), eax)?;
    // Start: high half of the descriptor address, then the low half.
    a.mov(dx, FW_CFG_DMA_HIGH)?;
    a.xor(eax, eax)?;
    a.out(dx, eax)?;
    a.mov(dx, FW_CFG_DMA_LOW)?;
    a.mov(eax, descriptor as u32)?;
    a.bswap(eax)?;
    a.out(dx, eax)?;
    // Wait until the device clears every bit but ERROR.
    let mut poll = a.create_label();
    a.set_label(&mut poll)?;
    a.mov(eax, dword_ptr(abs(descriptor)))?;
    a.bswap(eax)?;
    a.test(eax, DMA_ERROR)?;
    a.jnz(failed)?;
    a.test(eax, eax)?;
    a.jnz(poll)?;

    // CRC-32 of the buffer, bit by bit.
    a.mov(esi, DEMO_DMA_BUFFER_GPA as u32)?;
    a.mov(ecx, dword_ptr(abs(corim_size)))?;
    a.mov(eax, 0xFFFF_FFFFu32)?;
    let mut byte_loop = a.create_label();
    let mut bit_loop = a.create_label();
    let mut no_xor = a.create_label();
    let mut crc_done = a.create_label();
    a.set_label(&mut byte_loop)?;
    a.test(ecx, ecx)?;
    a.jz(crc_done)?;
    a.xor(al, byte_ptr(esi))?;
    a.inc(esi)?;
    a.mov(edx, 8)?;
    a.set_label(&mut bit_loop)?;
    a.shr(eax, 1)?;
    a.jnc(no_xor)?;
    a.xor(eax, CRC32_POLYNOMIAL)?;
    a.set_label(&mut no_xor)?;
    a.dec(edx)?;
    a.jnz(bit_loop)?;
    a.dec(ecx)?;
    a.jmp(byte_loop)?;
    a.set_label(&mut crc_done)?;
    a.not(eax)?;
    a.push(eax)?;
    a.mov(esi, strings.crc)?;
    a.call(labels.puts)?;
    a.pop(eax)?;
    a.call(labels.print_hex32)?;
    a.jmp(print)?;

    a.set_label(&mut failed)?;
    a.mov(esi, strings.dma_failed)?;
    a.call(labels.puts)?;
    a.set_label(&mut print)?;
    a.call(labels.newline)?;
    a.set_label(&mut skip)
}

/// Emits putc (AL to COM1), puts (NUL-terminated string at ESI), print_hex32 (EAX as
/// "0x" and 8 digits), hex_digits (the 8 digits alone), print_dec (EAX in decimal) and newline. Each keeps every register.
fn subroutines(a: &mut CodeAssembler, labels: &mut Labels) -> Result<(), IcedError> {
    a.set_label(&mut labels.putc)?;
    a.push(edx)?;
    a.mov(dx, COM1_DATA)?;
    a.out(dx, al)?;
    a.pop(edx)?;
    a.ret()?;

    a.set_label(&mut labels.puts)?;
    a.pushad()?;
    let mut puts_loop = a.create_label();
    let mut puts_end = a.create_label();
    a.set_label(&mut puts_loop)?;
    a.lodsb()?;
    a.test(al, al)?;
    a.jz(puts_end)?;
    a.call(labels.putc)?;
    a.jmp(puts_loop)?;
    a.set_label(&mut puts_end)?;
    a.popad()?;
    a.ret()?;

    a.set_label(&mut labels.newline)?;
    a.push(eax)?;
    a.mov(al, u32::from(b'\n'))?;
    a.call(labels.putc)?;
    a.pop(eax)?;
    a.ret()?;

    a.set_label(&mut labels.print_hex32)?;
    a.push(eax)?;
    a.mov(al, u32::from(b'0'))?;
    a.call(labels.putc)?;
    a.mov(al, u32::from(b'x'))?;
    a.call(labels.putc)?;
    a.pop(eax)?;
    a.call(labels.hex_digits)?;
    a.ret()?;

    a.set_label(&mut labels.hex_digits)?;
    a.pushad()?;
    a.mov(ebx, eax)?;
    a.mov(ecx, 8)?;
    let mut hex_loop = a.create_label();
    let mut hex_digit = a.create_label();
    a.set_label(&mut hex_loop)?;
    a.rol(ebx, 4)?;
    a.mov(eax, ebx)?;
    a.and(eax, 0xF)?;
    a.add(eax, u32::from(b'0'))?;
    a.cmp(eax, u32::from(b'9'))?;
    a.jbe(hex_digit)?;
    a.add(eax, u32::from(b'a' - b'9' - 1))?;
    a.set_label(&mut hex_digit)?;
    a.call(labels.putc)?;
    a.loop_(hex_loop)?;
    a.popad()?;
    a.ret()?;

    // Digits are pushed least significant first, then popped and printed.
    a.set_label(&mut labels.print_dec)?;
    a.pushad()?;
    a.mov(ebx, 10)?;
    a.xor(ecx, ecx)?;
    let mut divide = a.create_label();
    let mut emit = a.create_label();
    a.set_label(&mut divide)?;
    a.xor(edx, edx)?;
    a.div(ebx)?;
    a.push(edx)?;
    a.inc(ecx)?;
    a.test(eax, eax)?;
    a.jnz(divide)?;
    a.set_label(&mut emit)?;
    a.pop(eax)?;
    a.add(eax, u32::from(b'0'))?;
    a.call(labels.putc)?;
    a.loop_(emit)?;
    a.popad()?;
    a.ret()
}

/// Text of `opt/igvm/corim` with its NUL, as the directory stores it.
const CORIM_NAME: &[u8] = b"opt/igvm/corim\0";

/// The strings the demo prints, laid out from `DEMO_STRINGS_GPA` on: each field is the
/// address of a NUL-terminated string.
struct Strings {
    greeting: u32,
    vp_count: u32,
    memory_map: u32,
    entry_base: u32,
    entry_size: u32,
    type_memory: u32,
    type_reserved: u32,
    type_persistent: u32,
    type_other: u32,
    signature: u32,
    files: u32,
    indent: u32,
    comma: u32,
    bytes: u32,
    corim_name: u32,
    corim_name_len: u32,
    colon: u32,
    crc: u32,
    dma_failed: u32,
    done: u32,
    /// The bytes of all strings.
    data: Vec<u8>,
}

impl Strings {
    fn new() -> Self {
        let mut data = Vec::new();
        let mut add = |text: &[u8]| {
            let address = abs(DEMO_STRINGS_GPA) + data.len() as u32;
            data.extend_from_slice(text);
            address
        };
        Self {
            greeting: add(b"igvmm demo guest: 32-bit protected mode\n\0"),
            vp_count: add(b"vp count: \0"),
            memory_map: add(b"memory map:\n\0"),
            entry_base: add(b"  base \0"),
            entry_size: add(b" size \0"),
            type_memory: add(b" memory\0"),
            type_reserved: add(b" platform-reserved\0"),
            type_persistent: add(b" persistent\0"),
            type_other: add(b" other\0"),
            signature: add(b"fw_cfg signature: \0"),
            files: add(b"fw_cfg files: \0"),
            indent: add(b"  \0"),
            comma: add(b", \0"),
            bytes: add(b" bytes\0"),
            corim_name: add(CORIM_NAME),
            corim_name_len: CORIM_NAME.len() as u32,
            colon: add(b": \0"),
            crc: add(b", crc32 \0"),
            dma_failed: add(b", DMA read failed\0"),
            done: add(b"demo done\n\0"),
            data,
        }
    }
}
