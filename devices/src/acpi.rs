//! ACPI tables for the igvmm machine, built with the `acpi_tables` crate.
//!
//! Two forms are produced:
//! - The three fw_cfg files of QEMU's linker/loader interface ([`build_fw_cfg_files`]):
//!   `etc/acpi/tables` contains DSDT, FADT, MADT and XSDT one after another, with every pointer
//!   stored as an offset into that file and every checksum byte zero. `etc/acpi/rsdp` contains
//!   the RSDP. `etc/table-loader` contains the 128-byte commands that tell SeaBIOS or OVMF where
//!   to place both files, which pointers to relocate and which checksums to compute. The
//!   command layout is QEMU's `BiosLinkerLoaderEntry` (hw/acpi/bios-linker-loader.c).
//! - Standalone tables with valid checksums, for IGVM parameter areas: [`madt`], [`srat`],
//!   [`slit`] and [`pptt`].
//!
//! The machine has no PCI bus and no ACPI PM registers, so the FADT describes a
//! hardware-reduced ACPI platform (`HW_REDUCED_ACPI`), as QEMU's microvm machine does for the
//! same reason. Debian's `bios-microvm.bin` SeaBIOS is built for that machine. A classic FADT
//! would need PM1 event and control blocks, which Linux's ACPICA writes during ACPI enable.
//! With a hardware-reduced FADT, Linux (`acpi_generic_reduced_hw_init` in
//! arch/x86/kernel/acpi/boot.c) replaces the legacy PIC with a null one and skips the PIT
//! timer setup. Interrupts then go through the I/O APIC that the MADT describes.
//!
//! The FADT's reset register points to the i8042 command port 0x64 with value 0xFE, which
//! [`crate::i8042`] turns into a reset. SeaBIOS and Linux both honour it. There are no sleep
//! control and status registers, so the tables offer no ACPI power-off: a guest that powers off
//! halts instead.
//!
//! The DSDT describes two devices under `\_SB`:
//! - `FWCF`: the fw_cfg device (`_HID "QEMU0002"`, ports 0x510..0x51B). Linux binds its
//!   `qemu_fw_cfg` driver only through this node.
//! - `COM1`: the 16550 at 0x3F8 with IRQ 4 (`_HID PNP0501`).

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::pptt::{ProcessorNode, PPTT};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::slit::SLIT;
use acpi_tables::srat::{MemoryAffinity, SRAT};
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use zerocopy::byteorder::{LE, U16, U32};
use zerocopy::{Immutable, IntoBytes};

use crate::fw_cfg::{FW_CFG_PORT_BASE, FW_CFG_PORT_COUNT};
use crate::i8042::{COMMAND_PULSE_RESET, I8042_COMMAND_PORT};
use crate::serial::{COM1_IRQ, COM1_PORT_BASE, SERIAL_PORT_COUNT};

/// OEM ID in every table header.
pub const OEM_ID: [u8; 6] = *b"IGVMM ";
/// OEM table ID in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"IGVMMTBL";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;

/// Physical address of every CPU's local APIC.
pub const LOCAL_APIC_ADDRESS: u32 = 0xFEE0_0000;
/// Physical address of the I/O APIC (KVM's in-kernel IOAPIC).
pub const IO_APIC_ADDRESS: u32 = 0xFEC0_0000;
/// First GSI of the I/O APIC.
pub const IO_APIC_GSI_BASE: u32 = 0;
/// Largest CPU count the tables describe. CPU `i` has APIC ID `i` and the I/O APIC takes the
/// next ID, and xAPIC IDs are 8 bits with 0xFF reserved for broadcast.
pub const MAX_CPUS: u16 = 254;

/// fw_cfg file with the linker/loader commands.
pub const TABLE_LOADER_FILE: &str = "etc/table-loader";
/// fw_cfg file with the ACPI tables other than the RSDP.
pub const TABLES_FILE: &str = "etc/acpi/tables";
/// fw_cfg file with the RSDP.
pub const RSDP_FILE: &str = "etc/acpi/rsdp";

/// Linker/loader command: allocate memory for a file and copy it there.
pub const LOADER_ALLOCATE: u32 = 1;
/// Linker/loader command: add the address of one file to a pointer inside another.
pub const LOADER_ADD_POINTER: u32 = 2;
/// Linker/loader command: compute a checksum over a range of a file.
pub const LOADER_ADD_CHECKSUM: u32 = 3;
/// ALLOCATE zone: anywhere below 4 GiB.
pub const LOADER_ZONE_HIGH: u8 = 1;
/// ALLOCATE zone: the BIOS F segment (0xE0000..0xFFFFF), where OSes search for the RSDP.
pub const LOADER_ZONE_FSEG: u8 = 2;
/// Size of one linker/loader command.
pub const LOADER_COMMAND_LEN: usize = 128;
/// Size of a file-name field in a linker/loader command, NUL terminator included.
const LOADER_FILE_NAME_LEN: usize = 56;
/// Alignment QEMU requests for `etc/acpi/tables` (a FACS needs 64).
const TABLES_ALIGN: u32 = 64;
/// Alignment of the RSDP, which OSes search for on 16-byte boundaries.
const RSDP_ALIGN: u32 = 16;

/// Offset of the checksum byte in a system description table header.
const HEADER_CHECKSUM_OFFSET: usize = 9;
/// Offset of the length field in a system description table header.
const HEADER_LENGTH_OFFSET: usize = 4;
/// Size of a system description table header.
const HEADER_LEN: usize = 36;
/// Offset of the MADT flags.
const MADT_FLAGS_OFFSET: usize = 40;
/// MADT flag: the machine also has dual 8259 PICs (KVM's in-kernel PIC).
const MADT_PCAT_COMPAT: u32 = 1;
/// Offset of the checksum over the first 20 bytes of the RSDP.
const RSDP_CHECKSUM_OFFSET: usize = 8;
/// Length of the RSDP part covered by [`RSDP_CHECKSUM_OFFSET`] (the ACPI 1.0 structure).
const RSDP_V1_LEN: usize = 20;
/// Offset of the checksum over the whole RSDP.
const RSDP_EXTENDED_CHECKSUM_OFFSET: usize = 32;
/// Offset of the XSDT address in the RSDP.
const RSDP_XSDT_ADDRESS_OFFSET: usize = 24;

/// FADT `IAPC_BOOT_ARCH` bit: there is no VGA hardware to probe.
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;

/// MADT structure type of an interrupt source override.
const MADT_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
/// MADT structure type of a local APIC NMI.
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// ISA IRQ of the PIT.
const PIT_ISA_IRQ: u8 = 0;
/// GSI the PIT is wired to on the I/O APIC.
const PIT_GSI: u32 = 2;
/// MPS INTI flags "conforms to the bus": edge-triggered, active high for ISA.
const MPS_INTI_CONFORMS: u16 = 0;
/// Processor UID that stands for every processor in a local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xFF;
/// Local APIC input wired to NMI.
const NMI_LINT: u8 = 1;

/// SRAT structure type of a processor local APIC affinity.
const SRAT_LOCAL_APIC_AFFINITY: u8 = 0;
/// Size of a processor local APIC affinity structure.
const SRAT_LOCAL_APIC_AFFINITY_LEN: u8 = 16;
/// SRAT affinity flag: the entry is in use.
const SRAT_ENABLED: u32 = 1;

/// Error from building ACPI tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    /// The CPU count is 0 or more than the tables can describe.
    #[error("cannot describe {cpus} CPUs in ACPI tables; use 1 to 254 CPUs")]
    InvalidCpuCount {
        /// The rejected count.
        cpus: u16,
    },
    /// The tables file grew past 4 GiB, which 32-bit loader offsets cannot address.
    #[error("ACPI tables are {len} bytes long; the linker/loader addresses at most 4 GiB")]
    TablesTooLarge {
        /// Length of the tables file.
        len: usize,
    },
}

/// The three fw_cfg files that hand the ACPI tables to firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiFwCfgFiles {
    /// Contents of [`TABLE_LOADER_FILE`].
    pub table_loader: Vec<u8>,
    /// Contents of [`TABLES_FILE`].
    pub tables: Vec<u8>,
    /// Contents of [`RSDP_FILE`].
    pub rsdp: Vec<u8>,
}

/// Builds the linker/loader form of the DSDT, FADT, MADT, XSDT and RSDP for `cpus` CPUs.
pub fn build_fw_cfg_files(cpus: u16) -> Result<AcpiFwCfgFiles, AcpiError> {
    let madt = madt(cpus)?;
    let mut tables = Vec::new();
    let mut loader = TableLoader::default();
    loader.allocate(TABLES_FILE, TABLES_ALIGN, LOADER_ZONE_HIGH);
    loader.allocate(RSDP_FILE, RSDP_ALIGN, LOADER_ZONE_FSEG);

    let dsdt_offset = append_table(&mut tables, &mut loader, &dsdt(), &[])?;
    let dsdt_pointer = u64::from(dsdt_offset);
    let fadt = fadt(dsdt_pointer);
    let fadt_pointers = [
        TablePointer {
            offset: FADT_DSDT_OFFSET,
            size: 4,
        },
        TablePointer {
            offset: FADT_X_DSDT_OFFSET,
            size: 8,
        },
    ];
    let fadt_offset = append_table(&mut tables, &mut loader, &fadt, &fadt_pointers)?;
    let madt_offset = append_table(&mut tables, &mut loader, &madt, &[])?;

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let entries = [fadt_offset, madt_offset];
    for entry in entries {
        xsdt.add_entry(u64::from(entry));
    }
    let xsdt_pointers: Vec<TablePointer> = (0..entries.len())
        .map(|index| TablePointer {
            offset: HEADER_LEN + index * 8,
            size: 8,
        })
        .collect();
    let xsdt_offset = append_table(&mut tables, &mut loader, &aml_bytes(&xsdt), &xsdt_pointers)?;

    let mut rsdp = aml_bytes(&Rsdp::new(OEM_ID, u64::from(xsdt_offset)));
    set_byte(&mut rsdp, RSDP_CHECKSUM_OFFSET, 0);
    set_byte(&mut rsdp, RSDP_EXTENDED_CHECKSUM_OFFSET, 0);
    loader.add_pointer(RSDP_FILE, TABLES_FILE, RSDP_XSDT_ADDRESS_OFFSET as u32, 8);
    loader.add_checksum(
        RSDP_FILE,
        RSDP_CHECKSUM_OFFSET as u32,
        0,
        RSDP_V1_LEN as u32,
    );
    loader.add_checksum(
        RSDP_FILE,
        RSDP_EXTENDED_CHECKSUM_OFFSET as u32,
        0,
        rsdp.len() as u32,
    );

    Ok(AcpiFwCfgFiles {
        table_loader: loader.into_bytes(),
        tables,
        rsdp,
    })
}

/// Offset of the 32-bit DSDT address in the FADT.
const FADT_DSDT_OFFSET: usize = core::mem::offset_of!(FADTBuilder, dsdt);
/// Offset of the 64-bit DSDT address in the FADT.
const FADT_X_DSDT_OFFSET: usize = core::mem::offset_of!(FADTBuilder, x_dsdt);

/// A pointer inside a table that the loader relocates by the address of the tables file.
struct TablePointer {
    /// Offset of the pointer from the start of its table.
    offset: usize,
    /// Width of the pointer in bytes.
    size: u8,
}

/// Appends `table` to the tables file with its checksum byte cleared, and adds the loader
/// commands that relocate its pointers and then compute its checksum. Returns its offset.
///
/// OVMF stores the checksum of the range, the checksum byte included, so the byte must be zero
/// in the file. SeaBIOS subtracts the sum and accepts either.
fn append_table(
    tables: &mut Vec<u8>,
    loader: &mut TableLoader,
    table: &[u8],
    pointers: &[TablePointer],
) -> Result<u32, AcpiError> {
    let start = tables.len();
    let end = start.saturating_add(table.len());
    let start_offset = u32::try_from(start).map_err(|_| AcpiError::TablesTooLarge { len: end })?;
    let table_len =
        u32::try_from(table.len()).map_err(|_| AcpiError::TablesTooLarge { len: end })?;
    if u32::try_from(end).is_err() {
        return Err(AcpiError::TablesTooLarge { len: end });
    }
    tables.extend_from_slice(table);
    set_byte(tables, start + HEADER_CHECKSUM_OFFSET, 0);

    for pointer in pointers {
        // Pointer offsets are fixed positions inside the table, far below 4 GiB.
        let offset = start_offset.saturating_add(pointer.offset as u32);
        loader.add_pointer(TABLES_FILE, TABLES_FILE, offset, pointer.size);
    }
    loader.add_checksum(
        TABLES_FILE,
        start_offset.saturating_add(HEADER_CHECKSUM_OFFSET as u32),
        start_offset,
        table_len,
    );
    Ok(start_offset)
}

/// Builds the DSDT: `\_SB.FWCF` (fw_cfg) and `\_SB.COM1` (16550 at 0x3F8, IRQ 4).
pub fn dsdt() -> Vec<u8> {
    let fwcf_hid = aml::Name::new("_HID".into(), &"QEMU0002");
    // Present, enabled and decoding, but hidden from the user interface.
    let fwcf_sta = aml::Name::new("_STA".into(), &0x0Bu8);
    let fwcf_io = aml::IO::new(
        FW_CFG_PORT_BASE as u16,
        FW_CFG_PORT_BASE as u16,
        0x01,
        FW_CFG_PORT_COUNT as u8,
    );
    let fwcf_crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&fwcf_io]));
    let fwcf = aml::Device::new("FWCF".into(), vec![&fwcf_hid, &fwcf_sta, &fwcf_crs]);

    let com1_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com1_uid = aml::Name::new("_UID".into(), &1u8);
    // Present, enabled, shown and decoding.
    let com1_sta = aml::Name::new("_STA".into(), &0x0Fu8);
    // QEMU's ISA serial port uses alignment 0 for its fixed range.
    let com1_io = aml::IO::new(
        COM1_PORT_BASE as u16,
        COM1_PORT_BASE as u16,
        0x00,
        SERIAL_PORT_COUNT as u8,
    );
    let com1_irq = IrqNoFlags::new(COM1_IRQ);
    let com1_crs = aml::Name::new(
        "_CRS".into(),
        &aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]),
    );
    let com1 = aml::Device::new(
        "COM1".into(),
        vec![&com1_hid, &com1_uid, &com1_sta, &com1_crs],
    );

    let system_bus = aml::Scope::new("\\_SB_".into(), vec![&fwcf, &com1]);
    let mut dsdt = Sdt::new(
        *b"DSDT",
        HEADER_LEN as u32,
        2,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    let mut body = Vec::new();
    system_bus.to_aml_bytes(&mut body);
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

/// Builds a hardware-reduced FADT whose DSDT and X_DSDT fields both hold `dsdt_address`
/// (truncated to 32 bits in DSDT, as the table-loader places tables below 4 GiB).
pub fn fadt(dsdt_address: u64) -> Vec<u8> {
    let mut builder = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup);
    builder.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        I8042_COMMAND_PORT,
    );
    builder.reset_value = COMMAND_PULSE_RESET;
    builder.iapc_boot_arch = IAPC_BOOT_ARCH_NO_VGA.into();
    builder.dsdt = (dsdt_address as u32).into();
    builder.x_dsdt = dsdt_address.into();
    aml_bytes(&builder.finalize())
}

/// Builds the MADT for `cpus` CPUs.
///
/// It lists a local APIC per CPU (processor UID and APIC ID `i`) and the I/O APIC with ID
/// `cpus` at 0xFEC00000 and GSI base 0. ISA IRQ 0 is overridden to GSI 2, and LINT1 of every
/// local APIC is wired to NMI. The PCAT_COMPAT flag is set because KVM's in-kernel irqchip
/// includes the 8259 pair.
pub fn madt(cpus: u16) -> Result<Vec<u8>, AcpiError> {
    let cpus = validate_cpu_count(cpus)?;
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LOCAL_APIC_ADDRESS),
    );
    for cpu in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(cpus, IO_APIC_ADDRESS, IO_APIC_GSI_BASE));
    madt.add_structure(InterruptSourceOverride::new(
        PIT_ISA_IRQ,
        PIT_GSI,
        MPS_INTI_CONFORMS,
    ));
    madt.add_structure(LocalApicNmi::new(
        ALL_PROCESSORS,
        MPS_INTI_CONFORMS,
        NMI_LINT,
    ));

    let mut bytes = aml_bytes(&madt);
    set_bytes(
        &mut bytes,
        MADT_FLAGS_OFFSET,
        &MADT_PCAT_COMPAT.to_le_bytes(),
    );
    update_checksum(&mut bytes);
    Ok(bytes)
}

/// Builds an SRAT with one proximity domain (0) that contains all `cpus` CPUs (by APIC ID) and
/// every RAM range in `ram`, given as `(base, length)` pairs. Empty ranges are left out.
pub fn srat(cpus: u16, ram: &[(u64, u64)]) -> Result<Vec<u8>, AcpiError> {
    let cpus = validate_cpu_count(cpus)?;
    let mut srat = SRAT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for &(base, length) in ram.iter().filter(|(_, length)| *length > 0) {
        srat.add_memory_affinity(MemoryAffinity::new(0, base, length).enabled());
    }
    let mut bytes = aml_bytes(&srat);

    // acpi_tables 0.2 has no x86 processor affinity structure, so these are appended here.
    for apic_id in 0..cpus {
        let mut structure = [0u8; SRAT_LOCAL_APIC_AFFINITY_LEN as usize];
        let fields: [(usize, &[u8]); 4] = [
            (0, &[SRAT_LOCAL_APIC_AFFINITY, SRAT_LOCAL_APIC_AFFINITY_LEN]),
            // Byte 2 is bits 0..7 of the proximity domain, bytes 9..11 bits 8..31: all zero.
            (3, &[apic_id]),
            (4, &SRAT_ENABLED.to_le_bytes()),
            // Byte 8 is the local SAPIC EID and bytes 12..15 the clock domain: zero.
            (8, &[0]),
        ];
        for (offset, value) in fields {
            set_bytes(&mut structure, offset, value);
        }
        bytes.extend_from_slice(&structure);
    }
    update_length(&mut bytes);
    update_checksum(&mut bytes);
    Ok(bytes)
}

/// Builds a SLIT for the single proximity domain: distance 10 to itself.
pub fn slit() -> Vec<u8> {
    aml_bytes(&SLIT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION, 1))
}

/// Builds a PPTT with one physical package of `cpus` single-thread cores. Core `i` has ACPI
/// processor ID `i`, which is the UID of its local APIC in the MADT.
pub fn pptt(cpus: u16) -> Result<Vec<u8>, AcpiError> {
    let cpus = validate_cpu_count(cpus)?;
    let mut pptt = PPTT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let package = pptt.add_processor(ProcessorNode::new(None, 0).physical());
    for cpu in 0..cpus {
        pptt.add_processor(
            ProcessorNode::new(Some(&package), u32::from(cpu))
                .valid()
                .leaf(),
        );
    }
    Ok(aml_bytes(&pptt))
}

fn validate_cpu_count(cpus: u16) -> Result<u8, AcpiError> {
    match u8::try_from(cpus) {
        Ok(count) if (1..=MAX_CPUS).contains(&cpus) => Ok(count),
        _ => Err(AcpiError::InvalidCpuCount { cpus }),
    }
}

/// Serializes an `acpi_tables` object.
fn aml_bytes(object: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    object.to_aml_bytes(&mut bytes);
    bytes
}

/// Copies `value` into `bytes` at `offset`, skipping positions past the end.
fn set_bytes(bytes: &mut [u8], offset: usize, value: &[u8]) {
    if let Some(target) = bytes.get_mut(offset..) {
        for (slot, byte) in target.iter_mut().zip(value) {
            *slot = *byte;
        }
    }
}

fn set_byte(bytes: &mut [u8], offset: usize, value: u8) {
    set_bytes(bytes, offset, &[value]);
}

/// Writes the table length into the header.
fn update_length(table: &mut [u8]) {
    let length = u32::try_from(table.len()).unwrap_or(u32::MAX);
    set_bytes(table, HEADER_LENGTH_OFFSET, &length.to_le_bytes());
}

/// Sets the header checksum so that all bytes of the table sum to zero.
fn update_checksum(table: &mut [u8]) {
    set_byte(table, HEADER_CHECKSUM_OFFSET, 0);
    let sum = table.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte));
    set_byte(table, HEADER_CHECKSUM_OFFSET, 0u8.wrapping_sub(sum));
}

/// ACPI `IRQNoFlags()` resource descriptor: a short IRQ descriptor without the flags byte,
/// which means edge-triggered, active-high and exclusive.
struct IrqNoFlags {
    /// Bit mask of the ISA IRQs the device uses.
    mask: u16,
}

impl IrqNoFlags {
    /// Small resource item 0x04 (IRQ) with a 2-byte body.
    const TAG: u8 = (0x04 << 3) | 2;

    fn new(irq: u32) -> Self {
        Self {
            mask: 1u16.checked_shl(irq).unwrap_or(0),
        }
    }
}

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(Self::TAG);
        sink.word(self.mask);
    }
}

/// MADT interrupt source override: an ISA IRQ delivered on another GSI.
#[repr(C)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    kind: u8,
    length: u8,
    /// 0: ISA.
    bus: u8,
    source: u8,
    gsi: U32<LE>,
    flags: U16<LE>,
}

impl InterruptSourceOverride {
    fn new(source: u8, gsi: u32, flags: u16) -> Self {
        Self {
            kind: MADT_INTERRUPT_SOURCE_OVERRIDE,
            length: core::mem::size_of::<Self>() as u8,
            bus: 0,
            source,
            gsi: gsi.into(),
            flags: flags.into(),
        }
    }
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// MADT local APIC NMI: which LINT input of which processor receives NMIs.
#[repr(C)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalApicNmi {
    kind: u8,
    length: u8,
    processor_uid: u8,
    flags: U16<LE>,
    lint: u8,
}

impl LocalApicNmi {
    fn new(processor_uid: u8, flags: u16, lint: u8) -> Self {
        Self {
            kind: MADT_LOCAL_APIC_NMI,
            length: core::mem::size_of::<Self>() as u8,
            processor_uid,
            flags: flags.into(),
            lint,
        }
    }
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// Builder for the `etc/table-loader` command list.
#[derive(Default)]
struct TableLoader {
    /// Encoded commands.
    bytes: Vec<u8>,
}

impl TableLoader {
    fn command(&mut self, command: u32, fields: &[(usize, &[u8])]) {
        let mut entry = [0u8; LOADER_COMMAND_LEN];
        set_bytes(&mut entry, 0, &command.to_le_bytes());
        for (offset, value) in fields {
            set_bytes(&mut entry, *offset, value);
        }
        self.bytes.extend_from_slice(&entry);
    }

    /// ALLOCATE: `{ u32 command, char file[56], u32 align, u8 zone }`.
    fn allocate(&mut self, file: &str, align: u32, zone: u8) {
        let name = loader_file_name(file);
        self.command(
            LOADER_ALLOCATE,
            &[(4, &name), (60, &align.to_le_bytes()), (64, &[zone])],
        );
    }

    /// ADD_POINTER: `{ u32 command, char dest_file[56], char src_file[56], u32 offset, u8 size }`.
    fn add_pointer(&mut self, destination: &str, source: &str, offset: u32, size: u8) {
        let destination = loader_file_name(destination);
        let source = loader_file_name(source);
        self.command(
            LOADER_ADD_POINTER,
            &[
                (4, &destination),
                (60, &source),
                (116, &offset.to_le_bytes()),
                (120, &[size]),
            ],
        );
    }

    /// ADD_CHECKSUM: `{ u32 command, char file[56], u32 result_offset, u32 start, u32 length }`.
    fn add_checksum(&mut self, file: &str, result_offset: u32, start: u32, length: u32) {
        let name = loader_file_name(file);
        self.command(
            LOADER_ADD_CHECKSUM,
            &[
                (4, &name),
                (60, &result_offset.to_le_bytes()),
                (64, &start.to_le_bytes()),
                (68, &length.to_le_bytes()),
            ],
        );
    }

    fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Encodes a file name for a loader command: NUL-padded to 56 bytes, cut at 55.
fn loader_file_name(name: &str) -> [u8; LOADER_FILE_NAME_LEN] {
    let mut field = [0u8; LOADER_FILE_NAME_LEN];
    for (slot, byte) in field
        .iter_mut()
        .take(LOADER_FILE_NAME_LEN - 1)
        .zip(name.bytes())
    {
        *slot = byte;
    }
    field
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte))
    }

    fn u16_at(bytes: &[u8], offset: usize) -> u16 {
        u16::from_le_bytes(bytes[offset..offset + 2].try_into().unwrap())
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    /// Checks the header of a standalone table: signature, length field and checksum.
    fn check_header(table: &[u8], signature: &[u8; 4]) {
        assert_eq!(&table[..4], signature);
        assert_eq!(
            u32_at(table, 4) as usize,
            table.len(),
            "length of {signature:?}"
        );
        assert_eq!(sum(table), 0, "checksum of {signature:?}");
        assert_eq!(&table[10..16], &OEM_ID);
        assert_eq!(&table[16..24], &OEM_TABLE_ID);
    }

    #[test]
    fn dsdt_describes_fw_cfg_and_com1() {
        let dsdt = dsdt();
        check_header(&dsdt, b"DSDT");
        assert_eq!(dsdt[8], 2, "revision 2 for 64-bit integers");
        assert!(contains(&dsdt, b"QEMU0002"));
        assert!(contains(
            &dsdt,
            &[0x47, 0x01, 0x10, 0x05, 0x10, 0x05, 0x01, 0x0C]
        ));

        // Device (FWCF) { Name (_HID, "QEMU0002") Name (_STA, 0x0B)
        //                 Name (_CRS, ResourceTemplate () { IO (Decode16, 0x510, 0x510, 1, 12) }) }
        let mut fwcf = vec![0x5B, 0x82, 0x2E];
        fwcf.extend_from_slice(b"FWCF");
        fwcf.extend_from_slice(b"\x08_HID\x0DQEMU0002\x00");
        fwcf.extend_from_slice(b"\x08_STA\x0A\x0B");
        fwcf.extend_from_slice(b"\x08_CRS\x11\x0D\x0A\x0A");
        fwcf.extend_from_slice(&[0x47, 0x01, 0x10, 0x05, 0x10, 0x05, 0x01, 0x0C, 0x79, 0x00]);
        assert!(contains(&dsdt, &fwcf), "FWCF device bytes");

        // EISAID ("PNP0501") is 0x0105D041; IRQNoFlags () {4} is 0x22 0x10 0x00.
        assert!(contains(&dsdt, b"COM1"));
        assert!(contains(&dsdt, b"\x08_HID\x0C\x41\xD0\x05\x01"));
        assert!(contains(&dsdt, b"\x08_UID\x01"));
        assert!(contains(
            &dsdt,
            &[0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x00, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00]
        ));
        // Scope (\_SB) right after the header.
        assert_eq!(&dsdt[36..37], &[0x10]);
        assert!(contains(&dsdt[36..44], b"\\_SB_"));
    }

    #[test]
    fn fadt_is_hardware_reduced() {
        let fadt = fadt(0x1234_5678);
        check_header(&fadt, b"FACP");
        let flags = u32_at(&fadt, 112);
        assert_eq!(flags, (1 << 20) | (1 << 10));
        // Reset register: system I/O, 8 bits, offset 0, byte access, port 0x64.
        assert_eq!(&fadt[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(&fadt, 120), 0x64);
        assert_eq!(fadt[128], 0xFE);
        assert_eq!(u16_at(&fadt, 109), IAPC_BOOT_ARCH_NO_VGA);
        assert_eq!(u32_at(&fadt, FADT_DSDT_OFFSET), 0x1234_5678);
        assert_eq!(u64_at(&fadt, FADT_X_DSDT_OFFSET), 0x1234_5678);
        assert_eq!((FADT_DSDT_OFFSET, FADT_X_DSDT_OFFSET), (40, 140));
        // No PM timer, no PM1 blocks.
        assert_eq!(u32_at(&fadt, 76), 0);
        assert_eq!(u32_at(&fadt, 56), 0);
    }

    #[test]
    fn madt_for_four_cpus() {
        let madt = madt(4).unwrap();
        check_header(&madt, b"APIC");
        assert_eq!(madt.len(), 44 + 4 * 8 + 12 + 10 + 6);
        assert_eq!(u32_at(&madt, 36), 0xFEE0_0000);
        assert_eq!(u32_at(&madt, 40), MADT_PCAT_COMPAT);

        let mut structures = Vec::new();
        let mut offset = 44;
        while offset < madt.len() {
            let length = madt[offset + 1] as usize;
            structures.push(&madt[offset..offset + length]);
            offset += length;
        }
        assert_eq!(offset, madt.len());
        assert_eq!(structures.len(), 7);
        for (cpu, structure) in structures[..4].iter().enumerate() {
            assert_eq!(structure, &[0, 8, cpu as u8, cpu as u8, 1, 0, 0, 0]);
        }
        assert_eq!(
            structures[4],
            &[1, 12, 4, 0, 0x00, 0x00, 0xC0, 0xFE, 0, 0, 0, 0]
        );
        assert_eq!(structures[5], &[2, 10, 0, 0, 2, 0, 0, 0, 0, 0]);
        assert_eq!(structures[6], &[4, 6, 0xFF, 0, 0, 1]);
    }

    #[test]
    fn cpu_count_limits() {
        assert_eq!(madt(0), Err(AcpiError::InvalidCpuCount { cpus: 0 }));
        assert_eq!(madt(255), Err(AcpiError::InvalidCpuCount { cpus: 255 }));
        assert_eq!(
            srat(300, &[]),
            Err(AcpiError::InvalidCpuCount { cpus: 300 })
        );
        assert_eq!(pptt(0), Err(AcpiError::InvalidCpuCount { cpus: 0 }));
        assert_eq!(
            build_fw_cfg_files(u16::MAX),
            Err(AcpiError::InvalidCpuCount { cpus: u16::MAX })
        );
        let madt = madt(MAX_CPUS).unwrap();
        assert_eq!(sum(&madt), 0);
        // The I/O APIC takes the ID after the last CPU.
        assert_eq!(madt[44 + 254 * 8 + 2], 254);
    }

    #[test]
    fn srat_one_node() {
        let ram = [(0, 0x9_F000), (0x10_0000, 0x7FF0_0000), (0x1_0000_0000, 0)];
        let srat = srat(2, &ram).unwrap();
        check_header(&srat, b"SRAT");
        assert_eq!(srat.len(), 48 + 2 * 40 + 2 * 16);
        assert_eq!(u32_at(&srat, 36), 1, "reserved field must be 1");

        let first = &srat[48..88];
        assert_eq!((first[0], first[1]), (1, 40));
        assert_eq!(u32_at(first, 2), 0, "proximity domain");
        assert_eq!(u64_at(first, 8), 0);
        assert_eq!(u64_at(first, 16), 0x9_F000);
        assert_eq!(u32_at(first, 28), 1, "enabled");
        let second = &srat[88..128];
        assert_eq!(u64_at(second, 8), 0x10_0000);
        assert_eq!(u64_at(second, 16), 0x7FF0_0000);

        for cpu in 0..2 {
            let offset = 128 + cpu * 16;
            let mut expected = [0u8; 16];
            expected[1] = 16;
            expected[3] = cpu as u8;
            expected[4] = 1;
            assert_eq!(&srat[offset..offset + 16], &expected);
        }
    }

    #[test]
    fn slit_one_node() {
        let slit = slit();
        check_header(&slit, b"SLIT");
        assert_eq!(slit.len(), 36 + 8 + 1);
        assert_eq!(u64_at(&slit, 36), 1);
        assert_eq!(slit[44], 10);
    }

    #[test]
    fn pptt_one_package() {
        let pptt = pptt(3).unwrap();
        check_header(&pptt, b"PPTT");
        assert_eq!(pptt.len(), 36 + 4 * 20);
        let package = &pptt[36..56];
        assert_eq!((package[0], package[1]), (0, 20));
        assert_eq!(u32_at(package, 4), 1, "physical package");
        assert_eq!(u32_at(package, 8), 0, "no parent");
        for cpu in 0..3 {
            let node = &pptt[56 + cpu * 20..76 + cpu * 20];
            assert_eq!((node[0], node[1]), (0, 20));
            assert_eq!(u32_at(node, 4), 0x0A, "processor ID valid, leaf");
            assert_eq!(u32_at(node, 8), 36, "parent is the package");
            assert_eq!(u32_at(node, 12), cpu as u32);
            assert_eq!(u32_at(node, 16), 0, "no private resources");
        }
    }

    #[test]
    fn loader_commands_layout() {
        let files = build_fw_cfg_files(2).unwrap();
        let loader = &files.table_loader;
        assert_eq!(loader.len() % LOADER_COMMAND_LEN, 0);
        // Two allocations, five table checksums and pointers, and the RSDP commands.
        let commands: Vec<&[u8]> = loader.chunks(LOADER_COMMAND_LEN).collect();
        assert_eq!(commands.len(), 2 + 2 + 1 + 1 + 1 + 2 + 1 + 1 + 2);

        let allocate_tables = commands[0];
        assert_eq!(u32_at(allocate_tables, 0), LOADER_ALLOCATE);
        assert_eq!(
            &allocate_tables[4..4 + TABLES_FILE.len()],
            TABLES_FILE.as_bytes()
        );
        assert!(allocate_tables[4 + TABLES_FILE.len()..60]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(u32_at(allocate_tables, 60), 64);
        assert_eq!(allocate_tables[64], LOADER_ZONE_HIGH);
        assert!(allocate_tables[65..].iter().all(|&b| b == 0));

        let allocate_rsdp = commands[1];
        assert_eq!(u32_at(allocate_rsdp, 0), LOADER_ALLOCATE);
        assert_eq!(&allocate_rsdp[4..4 + RSDP_FILE.len()], RSDP_FILE.as_bytes());
        assert_eq!(u32_at(allocate_rsdp, 60), 16);
        assert_eq!(allocate_rsdp[64], LOADER_ZONE_FSEG);

        // The first table is the DSDT: only a checksum command.
        let dsdt_checksum = commands[2];
        assert_eq!(u32_at(dsdt_checksum, 0), LOADER_ADD_CHECKSUM);
        assert_eq!(u32_at(dsdt_checksum, 60), 9);
        assert_eq!(u32_at(dsdt_checksum, 64), 0);
        assert_eq!(u32_at(dsdt_checksum, 68), u32_at(&files.tables, 4));

        // Then the FADT's two DSDT pointers.
        let dsdt_pointer = commands[3];
        let fadt_offset = u32_at(&files.tables, 4);
        assert_eq!(u32_at(dsdt_pointer, 0), LOADER_ADD_POINTER);
        assert_eq!(
            &dsdt_pointer[4..4 + TABLES_FILE.len()],
            TABLES_FILE.as_bytes()
        );
        assert_eq!(
            &dsdt_pointer[60..60 + TABLES_FILE.len()],
            TABLES_FILE.as_bytes()
        );
        assert_eq!(u32_at(dsdt_pointer, 116), fadt_offset + 40);
        assert_eq!(dsdt_pointer[120], 4);
        assert_eq!(u32_at(commands[4], 116), fadt_offset + 140);
        assert_eq!(commands[4][120], 8);

        let last = commands[commands.len() - 1];
        assert_eq!(u32_at(last, 0), LOADER_ADD_CHECKSUM);
        assert_eq!(&last[4..4 + RSDP_FILE.len()], RSDP_FILE.as_bytes());
        assert_eq!(u32_at(last, 60), 32);
        assert_eq!(u32_at(last, 68), 36);
    }

    #[test]
    fn loader_files_have_zero_checksums() {
        let files = build_fw_cfg_files(1).unwrap();
        let mut offset = 0;
        let mut signatures = Vec::new();
        while offset < files.tables.len() {
            let table = &files.tables[offset..];
            signatures.push(table[..4].to_vec());
            assert_eq!(table[9], 0);
            offset += u32_at(table, 4) as usize;
        }
        assert_eq!(offset, files.tables.len());
        assert_eq!(signatures, [b"DSDT", b"FACP", b"APIC", b"XSDT"]);
        assert_eq!(files.rsdp.len(), 36);
        assert_eq!(&files.rsdp[..8], b"RSD PTR ");
        assert_eq!((files.rsdp[8], files.rsdp[32]), (0, 0));
    }

    /// Firmware memory after running the loader: each file at its address.
    struct LoadedFiles {
        files: BTreeMap<String, (u64, Vec<u8>)>,
    }

    impl LoadedFiles {
        /// Returns the memory from `address` to the end of the file that contains it.
        fn at(&self, address: u64) -> &[u8] {
            for (base, data) in self.files.values() {
                if address >= *base && address < base + data.len() as u64 {
                    return &data[(address - base) as usize..];
                }
            }
            panic!("address {address:#x} is in no loaded file");
        }
    }

    fn file_name(field: &[u8]) -> String {
        let end = field.iter().position(|&b| b == 0).unwrap();
        String::from_utf8(field[..end].to_vec()).unwrap()
    }

    /// Runs the loader commands as OVMF's QemuFwCfgAcpiPlatformDxe does: allocate, relocate
    /// pointers (rejecting values outside the source file) and store the checksum of the range
    /// with the checksum byte included.
    fn run_loader(files: &AcpiFwCfgFiles) -> LoadedFiles {
        let contents: BTreeMap<&str, &[u8]> = [
            (TABLES_FILE, files.tables.as_slice()),
            (RSDP_FILE, files.rsdp.as_slice()),
        ]
        .into_iter()
        .collect();
        let mut loaded = BTreeMap::new();
        let mut next_high = 0x7FF0_0010u64;
        let mut next_fseg = 0xF_0004u64;

        for command in files.table_loader.chunks(LOADER_COMMAND_LEN) {
            match u32_at(command, 0) {
                LOADER_ALLOCATE => {
                    let name = file_name(&command[4..60]);
                    let align = u64::from(u32_at(command, 60));
                    assert!(align.is_power_of_two());
                    let next = match command[64] {
                        LOADER_ZONE_HIGH => &mut next_high,
                        LOADER_ZONE_FSEG => &mut next_fseg,
                        zone => panic!("unknown zone {zone}"),
                    };
                    let base = next.next_multiple_of(align);
                    let data = contents[name.as_str()].to_vec();
                    *next = base + data.len() as u64;
                    assert!(loaded.insert(name, (base, data)).is_none());
                }
                LOADER_ADD_POINTER => {
                    let destination = file_name(&command[4..60]);
                    let source = file_name(&command[60..116]);
                    let offset = u32_at(command, 116) as usize;
                    let size = command[120] as usize;
                    let (source_base, source_len) = {
                        let (base, data) = &loaded[&source];
                        (*base, data.len() as u64)
                    };
                    let (_, data) = loaded.get_mut(&destination).unwrap();
                    let mut value = [0u8; 8];
                    value[..size].copy_from_slice(&data[offset..offset + size]);
                    let pointer = u64::from_le_bytes(value);
                    assert!(
                        pointer < source_len,
                        "pointer {pointer:#x} outside {source}"
                    );
                    let patched = (pointer + source_base).to_le_bytes();
                    assert!(patched[size..].iter().all(|&b| b == 0), "pointer overflow");
                    data[offset..offset + size].copy_from_slice(&patched[..size]);
                }
                LOADER_ADD_CHECKSUM => {
                    let name = file_name(&command[4..60]);
                    let result = u32_at(command, 60) as usize;
                    let start = u32_at(command, 64) as usize;
                    let length = u32_at(command, 68) as usize;
                    let (_, data) = loaded.get_mut(&name).unwrap();
                    data[result] = 0u8.wrapping_sub(sum(&data[start..start + length]));
                }
                other => panic!("unknown loader command {other}"),
            }
        }
        LoadedFiles { files: loaded }
    }

    /// Returns the table at `address` after checking its signature and checksum.
    fn table_at<'a>(memory: &'a LoadedFiles, address: u64, signature: &[u8; 4]) -> &'a [u8] {
        let rest = memory.at(address);
        assert_eq!(&rest[..4], signature);
        let table = &rest[..u32_at(rest, 4) as usize];
        assert_eq!(sum(table), 0, "checksum of {signature:?} after loading");
        table
    }

    #[test]
    fn loader_links_rsdp_to_dsdt() {
        let files = build_fw_cfg_files(2).unwrap();
        let memory = run_loader(&files);

        let (rsdp_base, rsdp) = &memory.files[RSDP_FILE];
        assert_eq!(rsdp_base % 16, 0);
        assert!((0xE_0000..0x10_0000).contains(rsdp_base));
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        assert_eq!(rsdp[15], 2, "revision");
        assert_eq!(u32_at(rsdp, 20), 36, "length");
        assert_eq!(u32_at(rsdp, 16), 0, "no RSDT");
        assert_eq!(memory.files[TABLES_FILE].0 % 64, 0);

        let xsdt = table_at(&memory, u64_at(rsdp, 24), b"XSDT");
        assert_eq!(xsdt.len(), 36 + 2 * 8);
        let fadt = table_at(&memory, u64_at(xsdt, 36), b"FACP");
        let madt = table_at(&memory, u64_at(xsdt, 44), b"APIC");
        assert_eq!(madt[44 + 2 * 8 + 2], 2, "I/O APIC ID");

        let x_dsdt = u64_at(fadt, FADT_X_DSDT_OFFSET);
        assert_eq!(u64::from(u32_at(fadt, FADT_DSDT_OFFSET)), x_dsdt);
        let dsdt = table_at(&memory, x_dsdt, b"DSDT");
        assert!(contains(dsdt, b"QEMU0002"));
        assert_eq!(x_dsdt, memory.files[TABLES_FILE].0, "DSDT is first");
    }

    #[test]
    fn irq_descriptor_mask() {
        let mut bytes = Vec::new();
        IrqNoFlags::new(4).to_aml_bytes(&mut bytes);
        assert_eq!(bytes, [0x22, 0x10, 0x00]);
        bytes.clear();
        IrqNoFlags::new(40).to_aml_bytes(&mut bytes);
        assert_eq!(bytes, [0x22, 0x00, 0x00]);
    }
}
