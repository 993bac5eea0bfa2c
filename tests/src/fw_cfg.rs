//! Guest-side fw_cfg access (QEMU's x86 port interface) and host-side decoding of what the guest
//! prints.
//!
//! The interface, as QEMU's `docs/specs/fw_cfg.rst` describes it: a 16-bit little-endian
//! selector write to port 0x510, byte reads from port 0x511, and a DMA address register at
//! 0x514 (high half) and 0x518 (low half, which starts the transfer), both big-endian. A DMA
//! descriptor is `{ be32 control; be32 length; be64 address; }` in guest memory; the device
//! writes `control` back as 0 on success or with bit 0 (error) set.
//!
//! The guest helpers here are for long mode and use `rax`, `rcx`, `rdx`, `rdi` and `rsi`.

use iced_x86::code_asm::*;

use crate::asm::{AsmResult, GuestAsm};

/// Selector register (16-bit write).
pub const PORT_SELECTOR: u16 = 0x510;
/// Data register (8-bit read).
pub const PORT_DATA: u16 = 0x511;
/// DMA address, high 32 bits (big-endian).
pub const PORT_DMA_HIGH: u16 = 0x514;
/// DMA address, low 32 bits (big-endian); writing it starts the transfer.
pub const PORT_DMA_LOW: u16 = 0x518;

/// Item 0: the signature "QEMU".
pub const SELECTOR_SIGNATURE: u16 = 0x00;
/// Item 1: the interface ID (bit 0 traditional interface, bit 1 DMA).
pub const SELECTOR_ID: u16 = 0x01;
/// Item 0x19: the file directory.
pub const SELECTOR_FILE_DIR: u16 = 0x19;

/// DMA control bit: the device reports an error.
pub const DMA_ERROR: u32 = 0x01;
/// DMA control bit: read from the item into guest memory.
pub const DMA_READ: u32 = 0x02;
/// DMA control bit: skip bytes of the item.
pub const DMA_SKIP: u32 = 0x04;
/// DMA control bit: select the item in the upper 16 bits first.
pub const DMA_SELECT: u32 = 0x08;
/// DMA control bit: write guest memory into the item.
pub const DMA_WRITE: u32 = 0x10;

/// Size of one directory entry: be32 size, be16 select, u16 reserved, char name[56].
pub const DIR_ENTRY_SIZE: usize = 64;

/// A file in the fw_cfg directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Item size in bytes.
    pub size: u32,
    /// Selector of the item.
    pub select: u16,
    /// Name, without the NUL padding.
    pub name: String,
}

/// Decodes a directory item (`be32 count` followed by the entries).
pub fn parse_directory(bytes: &[u8]) -> Option<Vec<DirEntry>> {
    let count = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let entry = bytes.get(4 + i * DIR_ENTRY_SIZE..4 + (i + 1) * DIR_ENTRY_SIZE)?;
        let size = u32::from_be_bytes(entry.get(..4)?.try_into().ok()?);
        let select = u16::from_be_bytes(entry.get(4..6)?.try_into().ok()?);
        let name_bytes = entry.get(8..)?;
        let end = name_bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name_bytes.len());
        let name = String::from_utf8_lossy(name_bytes.get(..end)?).into_owned();
        entries.push(DirEntry { size, select, name });
    }
    Some(entries)
}

/// Returns the 16-byte DMA descriptor bytes for `control`, `length` and `address`.
pub fn dma_descriptor(control: u32, length: u32, address: u64) -> [u8; 16] {
    let mut descriptor = [0u8; 16];
    descriptor[..4].copy_from_slice(&control.to_be_bytes());
    descriptor[4..8].copy_from_slice(&length.to_be_bytes());
    descriptor[8..].copy_from_slice(&address.to_be_bytes());
    descriptor
}

/// Emits a selector write of the constant `selector`.
pub fn select(g: &mut GuestAsm, selector: u16) -> AsmResult<()> {
    g.a.mov(dx, PORT_SELECTOR as u32)?;
    g.a.mov(ax, selector as u32)?;
    g.a.out(dx, ax)
}

/// Emits a selector write of the selector in `ax`.
pub fn select_ax(g: &mut GuestAsm) -> AsmResult<()> {
    g.a.mov(dx, PORT_SELECTOR as u32)?;
    g.a.out(dx, ax)
}

/// Emits `rep insb` from the data port: `ecx` bytes of the selected item to `rdi`.
pub fn read_data_rep(g: &mut GuestAsm) -> AsmResult<()> {
    g.a.mov(dx, PORT_DATA as u32)?;
    g.a.rep().insb()
}

/// Emits code that reads the data port once into `al`.
pub fn read_data_byte(g: &mut GuestAsm) -> AsmResult<()> {
    g.a.mov(dx, PORT_DATA as u32)?;
    g.a.in_(al, dx)
}

/// Emits code that fills the descriptor at `descriptor_gpa` from registers and starts the
/// transfer: `eax` is the control word, `ecx` the length, `rdi` the target address (all in host
/// order; the code swaps them to big-endian). Afterwards `eax` contains the control word the
/// device wrote back, in host order. Clobbers `rax`, `rcx`, `rdx`, `rdi`.
pub fn dma_from_registers(g: &mut GuestAsm, descriptor_gpa: u64) -> AsmResult<()> {
    let a = &mut g.a;
    a.mov(rdx, descriptor_gpa)?;
    a.bswap(eax)?;
    a.mov(dword_ptr(rdx), eax)?;
    a.bswap(ecx)?;
    a.mov(dword_ptr(rdx + 4), ecx)?;
    a.bswap(rdi)?;
    a.mov(qword_ptr(rdx + 8), rdi)?;
    start_dma(g, descriptor_gpa)?;
    read_back_control(g, descriptor_gpa)
}

/// Emits the two DMA address writes that start a transfer with the descriptor at
/// `descriptor_gpa`. Clobbers `eax` and `dx`.
pub fn start_dma(g: &mut GuestAsm, descriptor_gpa: u64) -> AsmResult<()> {
    let a = &mut g.a;
    a.mfence()?;
    a.mov(eax, (descriptor_gpa >> 32) as u32)?;
    a.bswap(eax)?;
    a.mov(dx, PORT_DMA_HIGH as u32)?;
    a.out(dx, eax)?;
    a.mov(eax, descriptor_gpa as u32)?;
    a.bswap(eax)?;
    a.mov(dx, PORT_DMA_LOW as u32)?;
    a.out(dx, eax)
}

/// Emits code that loads the control word of the descriptor at `descriptor_gpa` into `eax`
/// in host order. The transfer is synchronous in QEMU and igvmm, so this reads it once.
pub fn read_back_control(g: &mut GuestAsm, descriptor_gpa: u64) -> AsmResult<()> {
    g.a.mov(rdx, descriptor_gpa)?;
    g.a.mov(eax, dword_ptr(rdx))?;
    g.a.bswap(eax)
}

/// Emits inline code that computes the CRC-32 (IEEE, reflected, as zlib) of
/// `ecx` bytes at `rsi` into `eax`. Clobbers `rcx`, `rdx`, `rsi`, `r8`.
pub fn crc32(g: &mut GuestAsm) -> AsmResult<()> {
    let a = &mut g.a;
    let mut byte_loop = a.create_label();
    let mut bit_loop = a.create_label();
    let mut no_xor = a.create_label();
    let mut done = a.create_label();
    a.mov(eax, 0xffff_ffffu32)?;
    a.test(ecx, ecx)?;
    a.jz(done)?;
    a.set_label(&mut byte_loop)?;
    a.movzx(edx, byte_ptr(rsi))?;
    a.xor(eax, edx)?;
    a.mov(r8d, 8u32)?;
    a.set_label(&mut bit_loop)?;
    a.shr(eax, 1)?;
    a.jnc(no_xor)?;
    a.xor(eax, 0xedb8_8320u32)?;
    a.set_label(&mut no_xor)?;
    a.dec(r8d)?;
    a.jnz(bit_loop)?;
    a.inc(rsi)?;
    a.dec(ecx)?;
    a.jnz(byte_loop)?;
    a.set_label(&mut done)?;
    a.not(eax)
}

/// Emits code that reads the file directory by port I/O into `dir_buffer` (count first, entries
/// after it) and looks for `name`. Leaves the file's selector in `r13d` (0 when not found) and
/// its size in `r14d`, and the entry count in `r12d`. Clobbers `rax`, `rcx`, `rdx`, `rsi`,
/// `rdi`, `r10`, `r15`.
pub fn find_file(g: &mut GuestAsm, name: &str, dir_buffer: u64) -> AsmResult<()> {
    let mut name_label = g.a.create_label();
    let mut after_name = g.a.create_label();
    let mut search = g.a.create_label();
    let mut next = g.a.create_label();
    let mut done = g.a.create_label();

    // The name sits in the code, jumped over, so the program needs no data page.
    g.a.jmp(after_name)?;
    g.a.set_label(&mut name_label)?;
    let mut name_bytes = name.as_bytes().to_vec();
    name_bytes.push(0);
    g.a.db(&name_bytes)?;
    g.a.set_label(&mut after_name)?;

    select(g, SELECTOR_FILE_DIR)?;
    g.a.mov(rdi, dir_buffer)?;
    g.a.mov(ecx, 4u32)?;
    read_data_rep(g)?;
    g.a.mov(rax, dir_buffer)?;
    g.a.mov(eax, dword_ptr(rax))?;
    g.a.bswap(eax)?;
    g.a.mov(r12d, eax)?;
    g.a.mov(rdi, dir_buffer + 4)?;
    g.a.mov(ecx, r12d)?;
    g.a.shl(ecx, 6)?;
    read_data_rep(g)?;

    g.a.xor(r13d, r13d)?;
    g.a.xor(r14d, r14d)?;
    g.a.mov(r15, dir_buffer + 4)?;
    g.a.mov(r10d, r12d)?;
    g.a.set_label(&mut search)?;
    g.a.test(r10d, r10d)?;
    g.a.jz(done)?;
    g.a.lea(rsi, qword_ptr(r15 + 8))?;
    g.a.lea(rdi, ptr(name_label))?;
    g.a.mov(ecx, name_bytes.len() as u32)?;
    g.a.repe().cmpsb()?;
    g.a.jne(next)?;
    g.a.mov(eax, dword_ptr(r15))?;
    g.a.bswap(eax)?;
    g.a.mov(r14d, eax)?;
    g.a.movzx(eax, word_ptr(r15 + 4))?;
    g.a.xchg(al, ah)?;
    g.a.mov(r13d, eax)?;
    g.a.jmp(done)?;
    g.a.set_label(&mut next)?;
    g.a.add(r15, DIR_ENTRY_SIZE as i32)?;
    g.a.dec(r10d)?;
    g.a.jmp(search)?;
    g.a.set_label(&mut done)?;
    g.a.nop()
}

/// Emits code that selects the item in `r13w` and reads `r14d` bytes of it by port I/O
/// (`rep insb`) into `buffer`. Clobbers `rax`, `rcx`, `rdx`, `rdi`.
pub fn read_item_port(g: &mut GuestAsm, buffer: u64) -> AsmResult<()> {
    g.a.mov(eax, r13d)?;
    select_ax(g)?;
    g.a.mov(rdi, buffer)?;
    g.a.mov(ecx, r14d)?;
    read_data_rep(g)
}

/// Emits code that reads `r14d` bytes of the item in `r13w` by one DMA transfer into
/// `buffer`, with the descriptor at `descriptor_gpa`. Leaves the returned control word in
/// `eax`. Clobbers `rax`, `rcx`, `rdx`, `rdi`.
pub fn read_item_dma(g: &mut GuestAsm, buffer: u64, descriptor_gpa: u64) -> AsmResult<()> {
    g.a.mov(eax, r13d)?;
    g.a.shl(eax, 16)?;
    g.a.or(eax, DMA_SELECT | DMA_READ)?;
    g.a.mov(ecx, r14d)?;
    g.a.mov(rdi, buffer)?;
    dma_from_registers(g, descriptor_gpa)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn directory_parses_entries() {
        let mut bytes = 2u32.to_be_bytes().to_vec();
        for (size, select, name) in [(20u32, 0x20u16, "etc/e820"), (5, 0x21, "opt/x")] {
            let mut entry = [0u8; DIR_ENTRY_SIZE];
            entry[..4].copy_from_slice(&size.to_be_bytes());
            entry[4..6].copy_from_slice(&select.to_be_bytes());
            entry[8..8 + name.len()].copy_from_slice(name.as_bytes());
            bytes.extend_from_slice(&entry);
        }
        let entries = parse_directory(&bytes);
        assert_eq!(
            entries,
            Some(vec![
                DirEntry {
                    size: 20,
                    select: 0x20,
                    name: "etc/e820".into()
                },
                DirEntry {
                    size: 5,
                    select: 0x21,
                    name: "opt/x".into()
                },
            ])
        );
    }

    #[test]
    fn descriptor_is_big_endian() {
        let d = dma_descriptor(0x0019_000a, 0x40, 0x1_0000_2000);
        assert_eq!(
            d,
            [0, 0x19, 0, 0x0a, 0, 0, 0, 0x40, 0, 0, 0, 1, 0, 0, 0x20, 0]
        );
    }
}
