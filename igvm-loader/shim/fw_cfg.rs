//! The QEMU fw_cfg device as a guest reads it: selector port 0x510, data port 0x511, and the DMA
//! address register at 0x514 (big-endian, the write of the low half at 0x518 starts the
//! transfer), as QEMU's docs/specs/fw_cfg.rst defines them.
//!
//! The file directory (selector 0x19) is read through the data port. File contents go through
//! DMA when the device advertises it in `FW_CFG_ID`, and through the data port otherwise.

use core::arch::asm;
use core::sync::atomic::{compiler_fence, Ordering};

use crate::io::{inb, outw};
use crate::table_loader::{FileRef, FileSource};

/// Selector register (16-bit, little-endian).
pub const SELECTOR_PORT: u16 = 0x510;
/// Data register (8-bit).
const DATA_PORT: u16 = 0x511;
/// High half of the DMA address register.
const DMA_HIGH_PORT: u16 = 0x514;
/// Low half of the DMA address register; writing it starts the transfer.
const DMA_LOW_PORT: u16 = 0x518;

/// Selector of the "QEMU" signature.
const SIGNATURE_SELECTOR: u16 = 0x00;
/// Selector of the feature bitmap.
const ID_SELECTOR: u16 = 0x01;
/// Selector of the file directory.
const FILE_DIR_SELECTOR: u16 = 0x19;
/// Feature bit: the DMA interface exists.
const ID_DMA: u32 = 1 << 1;
/// Bytes of one directory entry: be32 size, be16 selector, u16 reserved, char name[56].
const DIR_ENTRY_SIZE: usize = 64;
/// Offset of the name in a directory entry.
const DIR_ENTRY_NAME: usize = 8;
/// Most directory entries the selector space allows (0x20..=0x3fff).
const MAX_FILES: u32 = 0x3fe0;

/// DMA control bit: the device reports an error.
const DMA_ERROR: u32 = 1 << 0;
/// DMA control bit: read from the item.
const DMA_READ: u32 = 1 << 1;
/// DMA control bit: select the item in bits 31:16 first.
const DMA_SELECT: u32 = 1 << 3;
/// How often the shim polls an unfinished DMA transfer before it gives up.
const DMA_POLLS: u32 = 10_000_000;

/// The DMA access structure in guest memory; every field is big-endian.
#[repr(C, align(16))]
struct DmaAccess {
    control: u32,
    length: u32,
    address: u64,
}

/// A fw_cfg device whose signature item reads "QEMU".
pub struct FwCfg {
    dma: bool,
}

impl FwCfg {
    /// Checks the signature and reads the feature bits. Returns `None` when the signature is
    /// not "QEMU", which is what a missing device reads as.
    pub fn probe() -> Option<Self> {
        let mut signature = [0u8; 4];
        read_item(SIGNATURE_SELECTOR, &mut signature);
        if &signature != b"QEMU" {
            return None;
        }
        let mut id = [0u8; 4];
        read_item(ID_SELECTOR, &mut id);
        Some(Self {
            dma: u32::from_le_bytes(id) & ID_DMA != 0,
        })
    }
}

fn select(selector: u16) {
    outw(SELECTOR_PORT, selector);
}

fn read_data(buffer: &mut [u8]) {
    for byte in buffer.iter_mut() {
        *byte = inb(DATA_PORT);
    }
}

/// Selects an item and reads its first `buffer.len()` bytes through the data port.
fn read_item(selector: u16, buffer: &mut [u8]) {
    select(selector);
    read_data(buffer);
}

/// Reads the first `buffer.len()` bytes of an item by DMA; returns false on a device error.
fn read_dma(selector: u16, buffer: &mut [u8]) -> bool {
    let Ok(length) = u32::try_from(buffer.len()) else {
        return false;
    };
    let mut access = DmaAccess {
        control: ((u32::from(selector) << 16) | DMA_SELECT | DMA_READ).to_be(),
        length: length.to_be(),
        address: (buffer.as_mut_ptr() as u64).to_be(),
    };
    let access_address = core::ptr::addr_of_mut!(access) as u64;
    compiler_fence(Ordering::SeqCst);
    // SAFETY: the device reads the access structure and writes `length` bytes to `buffer`.
    // Both are live, exclusively borrowed and identity-mapped for the whole transfer, which
    // QEMU and igvmm finish before the port write returns; the loop below waits otherwise.
    // The register takes the address big-endian, hence the byte swaps.
    unsafe {
        asm!(
            "out dx, eax",
            in("dx") DMA_HIGH_PORT,
            in("eax") ((access_address >> 32) as u32).swap_bytes(),
            options(nostack, preserves_flags)
        );
        asm!(
            "out dx, eax",
            in("dx") DMA_LOW_PORT,
            in("eax") (access_address as u32).swap_bytes(),
            options(nostack, preserves_flags)
        );
    }
    for _ in 0..DMA_POLLS {
        // SAFETY: `access` is a live local; the device may have written it, so read it
        // volatile.
        let control = u32::from_be(unsafe { core::ptr::read_volatile(&access.control) });
        if control & DMA_ERROR != 0 {
            return false;
        }
        if control == 0 {
            compiler_fence(Ordering::SeqCst);
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

impl FileSource for FwCfg {
    fn find(&mut self, name: &[u8]) -> Option<FileRef> {
        let mut count = [0u8; 4];
        read_item(FILE_DIR_SELECTOR, &mut count);
        let count = u32::from_be_bytes(count).min(MAX_FILES);
        let mut entry = [0u8; DIR_ENTRY_SIZE];
        // Read every entry, so the data offset stays in step, and remember the match.
        let mut found = None;
        for _ in 0..count {
            read_data(&mut entry);
            let entry_name = entry.get(DIR_ENTRY_NAME..).unwrap_or_default();
            let length = entry_name
                .iter()
                .position(|byte| *byte == 0)
                .unwrap_or(entry_name.len());
            if found.is_none() && entry_name.get(..length) == Some(name) {
                let size = u32::from_be_bytes(crate::zero_page::get(&entry, 0));
                let key = u16::from_be_bytes(crate::zero_page::get(&entry, 4));
                found = Some(FileRef { key, size });
            }
        }
        found
    }

    fn read(&mut self, file: FileRef, dest: &mut [u8]) -> bool {
        if dest.is_empty() {
            return true;
        }
        if self.dma {
            read_dma(file.key, dest)
        } else {
            read_item(file.key, dest);
            true
        }
    }
}
