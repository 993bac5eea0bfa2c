//! The fw_cfg device driven by a guest: selector and data port accesses of any width and
//! offset, DMA descriptors with any control word, length and address, and writes to guest
//! memory between them.
//!
//! Guest memory is two 64 KiB regions with a 64 KiB hole between them, so that DMA transfers
//! and descriptors cross region ends and the hole. Besides "no panic, no hang", the target
//! checks what the guest can rely on. The DMA register reads back "QEMU CFG" and unused ports
//! read all-ones. Each started transfer is counted once and leaves a control word of 0 or
//! ERROR. Selecting key 0 always reads "QEMU".

#![no_main]

use arbitrary::Arbitrary;
use devices::bus::BusDevice;
use devices::fw_cfg::{
    FwCfg, FwCfgConfig, DMA_CTL_ERROR, DMA_SIGNATURE, FW_CFG_PORT_BASE, FW_CFG_PORT_COUNT,
    FW_CFG_SIGNATURE,
};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Size of each guest memory region.
const REGION: u64 = 0x1_0000;
/// Start of the second region, after a hole of one region.
const SECOND_REGION: u64 = 2 * REGION;
/// Addresses from the input are reduced below this, which covers both regions and the hole.
const ADDRESS_SPAN: u64 = 3 * REGION + 0x100;

/// Offset of the selector register.
const SELECTOR: u64 = 0;
/// Offset of the data register.
const DATA: u64 = 1;
/// Offset of the high half of the DMA address register.
const DMA_HIGH: u64 = 4;
/// Offset of the low half of the DMA address register.
const DMA_LOW: u64 = 8;

#[derive(Arbitrary, Debug)]
enum Op {
    /// A 2-byte write to the selector register.
    Select(u16),
    /// A read of `len % 9` bytes at port offset `offset % 16`.
    Read { offset: u8, len: u8 },
    /// A write of up to 8 bytes at port offset `offset % 16`.
    Write { offset: u8, bytes: Vec<u8> },
    /// A DMA transfer: the descriptor is written to guest memory (where it fits) and its address
    /// is written to the DMA register as one 8-byte write or as two 4-byte halves.
    Dma {
        descriptor: u32,
        control: u32,
        length: u32,
        address: u32,
        /// Uses the raw 32-bit address instead of one reduced to the memory span.
        raw_address: bool,
        split: bool,
    },
    /// A guest store to memory, which may change a descriptor or the bytes a transfer reads.
    Store { address: u32, bytes: Vec<u8> },
    /// Selects key 0 and reads the signature through the data port.
    CheckSignature,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Length of an extra file, at most 96 KiB, so that it spans a region end.
    big_file: u16,
    ops: Vec<Op>,
}

fn memory() -> Option<GuestMemoryMmap> {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(SECOND_REGION), REGION as usize),
    ])
    .ok()
}

fn reduce(address: u32) -> u64 {
    u64::from(address) % ADDRESS_SPAN
}

fn port_read(device: &mut FwCfg, offset: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0xAA; len];
    device.read(FW_CFG_PORT_BASE, offset, &mut bytes);
    bytes
}

fn check_read(offset: u64, bytes: &[u8]) {
    match offset {
        DMA_HIGH..=11 => {
            for (position, byte) in (offset - DMA_HIGH..).zip(bytes) {
                let expected = DMA_SIGNATURE.get(position as usize).copied().unwrap_or(0);
                assert_eq!(*byte, expected, "DMA register byte {position}");
            }
        }
        SELECTOR | DATA => {}
        _ => assert!(
            bytes.iter().all(|byte| *byte == 0xFF),
            "unused port {offset}"
        ),
    }
}

fn run_dma(device: &mut FwCfg, memory: &GuestMemoryMmap, op: &Op) {
    let Op::Dma {
        descriptor,
        control,
        length,
        address,
        raw_address,
        split,
    } = op
    else {
        return;
    };
    let descriptor = reduce(*descriptor);
    let target = if *raw_address {
        u64::from(*address)
    } else {
        reduce(*address)
    };
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&control.to_be_bytes());
    bytes[4..8].copy_from_slice(&length.to_be_bytes());
    bytes[8..].copy_from_slice(&target.to_be_bytes());
    let descriptor_in_memory = memory.write_slice(&bytes, GuestAddress(descriptor)).is_ok();

    let transfers = device.stats().dma_transfers;
    if *split {
        device.write(FW_CFG_PORT_BASE, DMA_HIGH, &0u32.to_be_bytes());
        device.write(
            FW_CFG_PORT_BASE,
            DMA_LOW,
            &(descriptor as u32).to_be_bytes(),
        );
    } else {
        device.write(FW_CFG_PORT_BASE, DMA_HIGH, &descriptor.to_be_bytes());
    }
    assert_eq!(device.stats().dma_transfers, transfers + 1);

    if descriptor_in_memory {
        let mut word = [0u8; 4];
        if memory
            .read_slice(&mut word, GuestAddress(descriptor))
            .is_ok()
        {
            let control = u32::from_be_bytes(word);
            assert!(
                control == 0 || control == DMA_CTL_ERROR,
                "control word {control:#x} after a transfer"
            );
        }
    }
}

fuzz_target!(|input: Input| {
    let Some(memory) = memory() else {
        return;
    };
    let mut device = FwCfg::new(memory.clone(), &FwCfgConfig::new(256 << 20, 2));
    let files: [(&str, Vec<u8>); 4] = [
        ("bootorder", Vec::new()),
        ("etc/e820", vec![0x11; 40]),
        ("opt/igvm/corim", (0..=255u8).cycle().take(1000).collect()),
        ("opt/big", vec![0x5A; usize::from(input.big_file) + 0x8000]),
    ];
    for (name, data) in files {
        if device.add_file(name, data).is_err() {
            return;
        }
    }

    for op in &input.ops {
        match op {
            Op::Select(key) => {
                device.write(FW_CFG_PORT_BASE, SELECTOR, &key.to_le_bytes());
            }
            Op::Read { offset, len } => {
                let offset = u64::from(*offset) % 16;
                let bytes = port_read(&mut device, offset, usize::from(*len) % 9);
                check_read(offset, &bytes);
            }
            Op::Write { offset, bytes } => {
                let offset = u64::from(*offset) % 16;
                let bytes = bytes.get(..bytes.len().min(8)).unwrap_or_default();
                device.write(FW_CFG_PORT_BASE, offset, bytes);
            }
            Op::Dma { .. } => run_dma(&mut device, &memory, op),
            Op::Store { address, bytes } => {
                let _ = memory.write_slice(bytes, GuestAddress(reduce(*address)));
            }
            Op::CheckSignature => {
                device.write(FW_CFG_PORT_BASE, SELECTOR, &FW_CFG_SIGNATURE.to_le_bytes());
                let signature: Vec<u8> = (0..4)
                    .flat_map(|_| port_read(&mut device, DATA, 1))
                    .collect();
                assert_eq!(signature, b"QEMU");
            }
        }
    }
    // Accesses beyond the decoded range are the bus's business, but must not panic either.
    let _ = port_read(&mut device, FW_CFG_PORT_COUNT + 3, 4);
    let _ = port_read(&mut device, u64::MAX, 2);
});
