//! The configuration page: what the packer decided about the kernel, for the boot shim.
//!
//! The packer writes it at `CONFIG_GPA` and the shim reads it first. Like the other shared
//! modules it uses only `core`, because the freestanding shim compiles it too.

/// Magic value at offset 0 of the configuration page.
pub const CONFIG_MAGIC: [u8; 8] = *b"IGVMLNX1";
/// Bytes of the encoded configuration.
pub const CONFIG_LEN: usize = 24;

const ENTRY_OFFSET: usize = 8;
const COMMAND_LINE_LIMIT_OFFSET: usize = 16;

/// The shim's configuration: the kernel's entry point and command-line limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShimConfig {
    /// Physical address of the kernel's 64-bit entry point.
    pub kernel_entry: u64,
    /// Most characters of command line the kernel accepts, without the NUL
    /// (`setup_header.cmdline_size`).
    pub command_line_limit: u32,
}

impl ShimConfig {
    /// Returns the encoded configuration: magic, entry and command-line limit, little-endian,
    /// and four bytes of zeros.
    pub fn encode(&self) -> [u8; CONFIG_LEN] {
        let mut bytes = [0u8; CONFIG_LEN];
        let fields: [(usize, &[u8]); 3] = [
            (0, &CONFIG_MAGIC),
            (ENTRY_OFFSET, &self.kernel_entry.to_le_bytes()),
            (
                COMMAND_LINE_LIMIT_OFFSET,
                &self.command_line_limit.to_le_bytes(),
            ),
        ];
        for (offset, value) in fields {
            if let Some(slot) = bytes.get_mut(offset..offset + value.len()) {
                slot.copy_from_slice(value);
            }
        }
        bytes
    }

    /// Decodes a configuration, or returns `None` when the magic is missing.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.get(..CONFIG_MAGIC.len())? != CONFIG_MAGIC {
            return None;
        }
        Some(Self {
            kernel_entry: u64::from_le_bytes(
                bytes.get(ENTRY_OFFSET..ENTRY_OFFSET + 8)?.try_into().ok()?,
            ),
            command_line_limit: u32::from_le_bytes(
                bytes
                    .get(COMMAND_LINE_LIMIT_OFFSET..COMMAND_LINE_LIMIT_OFFSET + 4)?
                    .try_into()
                    .ok()?,
            ),
        })
    }
}
