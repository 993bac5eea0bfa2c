//! Guest physical addresses of the Linux boot shim and of what it hands to the kernel.
//!
//! This file is compiled twice: into igvm-loader, which places the pages, and into the
//! freestanding shim, which reads them. It therefore uses only `core`.
//!
//! Everything the shim owns lies between [`SHIM_REGION_START`] and [`SHIM_REGION_END`], below
//! 640 KiB, and the e820 map the kernel receives marks that range reserved. The rest of the
//! memory below 640 KiB stays usable, because Linux needs some of it for the real-mode trampoline
//! that starts the application processors.
//!
//! | GPA | contents |
//! |---|---|
//! | 0x8000 | GDT with Linux's `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18) ([`GDT_GPA`]) |
//! | 0x9000 | shim configuration written at pack time ([`CONFIG_GPA`]) |
//! | 0xA000 | boot_params, the "zero page" ([`ZERO_PAGE_GPA`]) |
//! | 0xB000 | default kernel command line ([`DEFAULT_COMMAND_LINE_GPA`]) |
//! | 0xC000..0x10000 | shim stack ([`STACK_TOP`]) |
//! | 0x10000..0x20000 | shim code and data ([`SHIM_IMAGE_GPA`]) |
//! | 0x20000..0x22000 | IGVM parameter area: memory map, then command line ([`PARAMETER_AREA_GPA`]) |
//! | 0x22000..0x28000 | identity-mapping page tables ([`PAGE_TABLES_GPA`]) |
//! | 0x28000..0x30000 | copy of fw_cfg `etc/table-loader` ([`LOADER_SCRIPT_GPA`]) |
//! | 0x30000..0x40000 | ACPI tables of the loader's HIGH zone ([`ACPI_HIGH_ZONE_GPA`]), e820 type ACPI |
//! | 0xA0000..0x100000 | legacy VGA and BIOS area, reserved; the RSDP goes to its F segment |
//! | 0x100000.. | the kernel, then the initrd |

/// Size of a page in bytes.
pub const PAGE_SIZE: u64 = 0x1000;

/// First byte of the memory the shim owns.
pub const SHIM_REGION_START: u64 = 0x8000;
/// GPA of the GDT the shim runs on and hands to the kernel.
pub const GDT_GPA: u64 = 0x8000;
/// GPA of the shim's configuration page (`super::config`).
pub const CONFIG_GPA: u64 = 0x9000;
/// GPA of `struct boot_params`, passed to the kernel in RSI.
pub const ZERO_PAGE_GPA: u64 = 0xA000;
/// GPA of the NUL-terminated command line given to `igvmm pack --cmdline`.
pub const DEFAULT_COMMAND_LINE_GPA: u64 = 0xB000;
/// Bytes available for the default command line, its NUL included.
pub const DEFAULT_COMMAND_LINE_SIZE: u64 = PAGE_SIZE;
/// Lowest address of the shim stack.
pub const STACK_BOTTOM: u64 = 0xC000;
/// Initial stack pointer of the shim.
pub const STACK_TOP: u64 = 0x10000;
/// GPA where the shim image is linked and loaded.
pub const SHIM_IMAGE_GPA: u64 = 0x10000;
/// Largest shim image, code and data together.
pub const SHIM_IMAGE_MAX: u64 = 0x10000;
/// GPA where the IGVM parameter area is inserted.
pub const PARAMETER_AREA_GPA: u64 = 0x20000;
/// Size of the parameter area.
pub const PARAMETER_AREA_SIZE: u64 = 0x2000;
/// Offset of the IGVM memory map in the parameter area.
pub const MEMORY_MAP_OFFSET: u64 = 0;
/// Bytes reserved for the memory map: 170 entries of 24 bytes.
pub const MEMORY_MAP_SIZE: u64 = 0x1000;
/// Offset of the IGVM command line in the parameter area.
pub const COMMAND_LINE_OFFSET: u64 = 0x1000;
/// Bytes reserved for the command line, its NUL included.
pub const COMMAND_LINE_SIZE: u64 = 0x1000;
/// GPA of the PML4; a PDPT and four page directories follow.
pub const PAGE_TABLES_GPA: u64 = 0x22000;
/// Bytes of page tables at [`PAGE_TABLES_GPA`].
pub const PAGE_TABLES_SIZE: u64 = 6 * PAGE_SIZE;
/// GPA where the shim copies the fw_cfg file `etc/table-loader`.
pub const LOADER_SCRIPT_GPA: u64 = 0x28000;
/// Largest `etc/table-loader` the shim accepts: 256 commands of 128 bytes.
pub const LOADER_SCRIPT_MAX: u64 = 0x8000;
/// First byte after the memory the shim owns.
pub const SHIM_REGION_END: u64 = 0x30000;

/// GPA of the memory that receives files the ACPI table loader allocates in its HIGH zone.
pub const ACPI_HIGH_ZONE_GPA: u64 = 0x30000;
/// Size of the HIGH zone.
pub const ACPI_HIGH_ZONE_SIZE: u64 = 0x10000;
/// GPA of the memory that receives files the table loader allocates in its FSEG zone: the
/// BIOS F segment, where an operating system also searches for the RSDP by its signature.
pub const ACPI_FSEG_ZONE_GPA: u64 = 0xF0000;
/// Size of the FSEG zone.
pub const ACPI_FSEG_ZONE_SIZE: u64 = 0x10000;

/// Start of the legacy VGA and BIOS area, which a PC memory map reports as reserved.
pub const LEGACY_AREA_START: u64 = 0xA0000;
/// End of the legacy area: 1 MiB.
pub const LEGACY_AREA_END: u64 = 0x10_0000;

/// Lowest address a kernel or initrd may use: everything below 1 MiB belongs to the shim and
/// the legacy area.
pub const KERNEL_MIN_GPA: u64 = LEGACY_AREA_END;

/// GDT selector of the 64-bit code segment (Linux's `__BOOT_CS`).
pub const BOOT_CS: u16 = 0x10;
/// GDT selector of the flat data segment (Linux's `__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;

/// COM1, where the shim reports a failure.
pub const COM1_PORT: u16 = 0x3f8;
/// The debug console port, where the shim reports its progress.
pub const DEBUGCON_PORT: u16 = 0x402;
/// The debug-exit port: writing `v` stops the VM with status `(v << 1) | 1`.
pub const DEBUG_EXIT_PORT: u16 = 0x501;
/// The value the shim writes to [`DEBUG_EXIT_PORT`] when it cannot start the kernel.
pub const FAILURE_EXIT_VALUE: u8 = 0x4c;
