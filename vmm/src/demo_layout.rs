// Guest physical addresses of the demo guest. `build.rs` includes this file to assemble the
// guest, and `demo.rs` includes it to place the guest in its IGVM file, so both agree.

/// GPA of the demo code; execution starts at its first byte.
pub const DEMO_CODE_GPA: u64 = 0x1_0000;
/// Initial stack pointer (the stack grows down through ordinary RAM).
pub const DEMO_STACK_TOP: u64 = 0x8000;
/// GPA of parameter area 0, which contains the VP count at offset 0.
pub const DEMO_VP_COUNT_GPA: u64 = 0x9000;
/// GPA of parameter area 1, which contains the IGVM memory map at offset 0.
pub const DEMO_MEMORY_MAP_GPA: u64 = 0xA000;
/// Size of the memory-map parameter area: 170 entries of 24 bytes fit.
pub const DEMO_MEMORY_MAP_SIZE: u64 = 0x1000;
/// Scratch RAM for one fw_cfg DMA descriptor (16 bytes).
pub const DEMO_DMA_DESCRIPTOR_GPA: u64 = 0xB000;
/// Scratch RAM for one 64-byte fw_cfg directory entry.
pub const DEMO_DIR_ENTRY_GPA: u64 = 0xC000;
/// Scratch RAM for the size of `opt/igvm/corim` found in the directory (u32).
pub const DEMO_CORIM_SIZE_GPA: u64 = 0xC100;
/// Scratch RAM for the selector of `opt/igvm/corim` (u32, zero when the file is missing).
pub const DEMO_CORIM_SELECT_GPA: u64 = 0xC104;
/// RAM that receives `opt/igvm/corim` by DMA.
pub const DEMO_DMA_BUFFER_GPA: u64 = 0x2_0000;
/// The largest `opt/igvm/corim` the demo reads.
pub const DEMO_DMA_BUFFER_SIZE: u64 = 0x6_0000;
/// The value the demo writes to the debug-exit port when it has printed everything.
pub const DEMO_SUCCESS_VALUE: u8 = 0;
/// GPA of the demo's strings, right after the page of code.
pub const DEMO_STRINGS_GPA: u64 = DEMO_CODE_GPA + 0x1000;
