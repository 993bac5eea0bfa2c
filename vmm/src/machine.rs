//! The machine model: the device behind each I/O port, and the items fw_cfg offers.
//!
//! | ports | device |
//! |---|---|
//! | 0x60, 0x64 | i8042 (reset through command 0xFE) |
//! | 0x70..0x71 | CMOS RAM and RTC |
//! | 0x92 | system control port A (fast reset, A20) |
//! | 0x3F8..0x3FF | COM1, IRQ 4 through an irqfd |
//! | 0x402 | debug console |
//! | 0x501..0x502 | debug exit |
//! | 0x510..0x51B | fw_cfg with DMA |
//!
//! The PIC, PIT and I/O APIC are KVM's. Every other port reads all-ones and ignores writes.
//!
//! fw_cfg carries the legacy items QEMU's x86 machines have (signature, ID, RAM size,
//! nographic = 1, CPU counts, ...) and these files: `etc/e820`, `etc/boot-fail-wait` (never
//! reboot), the ACPI linker/loader files `etc/table-loader`, `etc/acpi/tables` and
//! `etc/acpi/rsdp`, and, when the image carries a CoRIM for the launched platform,
//! `opt/igvm/corim`, `opt/igvm/corim-signature` and the SP800-155 Event3
//! `opt/org.tianocode/sp800155evt/0`.

use std::sync::{Arc, Mutex};

use devices::bus::{Bus, SharedDevice};
use devices::cmos::{Cmos, CMOS_PORT_BASE, CMOS_PORT_COUNT};
use devices::debug_exit::{DebugExit, DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_COUNT};
use devices::debugcon::{Debugcon, DEBUGCON_PORT, DEBUGCON_PORT_COUNT};
use devices::fw_cfg::{self, FwCfg, FwCfgConfig, FW_CFG_PORT_BASE, FW_CFG_PORT_COUNT};
use devices::i8042::{I8042, I8042_COMMAND_PORT, I8042_DATA_PORT};
use devices::port92::{Port92, PORT92_PORT, PORT92_PORT_COUNT};
use devices::serial::{Serial, COM1_IRQ, COM1_PORT_BASE, SERIAL_PORT_COUNT};
use devices::{acpi, sp800155};
use igvm_loader::corim::ReferenceMatch;
use igvm_loader::host::MemoryKind;
use igvm_loader::measure::Measurement;
use igvm_loader::plan::{HostOnlyData, Platform};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::EventStrings;
use crate::console::{self, DebugconConfig, SerialConfig};
use crate::error::VmmError;
use crate::memory::MemoryLayout;
use crate::vm::Vm;

/// fw_cfg file with the raw CoRIM document.
pub const CORIM_FILE: &str = "opt/igvm/corim";
/// fw_cfg file with the CoRIM's COSE_Sign1 signature.
pub const CORIM_SIGNATURE_FILE: &str = "opt/igvm/corim-signature";
/// fw_cfg file with the Linux/SeaBIOS memory map.
pub const E820_FILE: &str = "etc/e820";
/// fw_cfg file with SeaBIOS's reboot delay after a failed boot.
pub const BOOT_FAIL_WAIT_FILE: &str = "etc/boot-fail-wait";

/// The inputs the devices are built from.
pub struct MachineConfig<'a> {
    /// Guest RAM layout.
    pub layout: &'a MemoryLayout,
    /// Number of vCPUs.
    pub cpus: u16,
    /// The destination of COM1.
    pub serial: &'a SerialConfig,
    /// The destination of the debug console.
    pub debugcon: &'a DebugconConfig,
    /// The CoRIM of the launched platform.
    pub host_only: &'a HostOnlyData,
    /// Strings of the SP800-155 event.
    pub event: &'a EventStrings,
    /// Whether a CoRIM problem is an error rather than a warning.
    pub strict_corim: bool,
}

/// The devices the VMM talks to after setup.
pub struct Machine {
    /// COM1, fed by the console input thread.
    pub serial: Arc<Mutex<Serial>>,
    /// The fw_cfg device, kept for its statistics.
    pub fw_cfg: Arc<Mutex<FwCfg>>,
}

fn device_error(device: &'static str) -> impl Fn(String) -> VmmError {
    move |message| VmmError::Device { device, message }
}

fn insert(bus: &mut Bus, device: SharedDevice, base: u64, len: u64) -> Result<(), VmmError> {
    bus.insert(device, base, len)
        .map_err(|error| device_error("the port bus")(error.to_string()))
}

/// Creates the devices and maps them on the VM's port bus.
pub fn attach(vm: &mut Vm, config: &MachineConfig<'_>) -> Result<Machine, VmmError> {
    let serial_output =
        console::open_serial_output(config.serial).map_err(|source| VmmError::Sink {
            what: match config.serial {
                SerialConfig::File(path) => format!("the serial output {}", path.display()),
                _ => "the serial output".into(),
            },
            source,
        })?;
    let interrupt = EventFd::new(EFD_NONBLOCK).map_err(|error| {
        device_error("COM1")(format!("creating the interrupt eventfd failed: {error}"))
    })?;
    vm.register_irqfd(&interrupt, COM1_IRQ)?;
    let serial = Arc::new(Mutex::new(Serial::new(interrupt, serial_output)));

    let debugcon_output = config.debugcon.open().map_err(|source| VmmError::Sink {
        what: match config.debugcon {
            DebugconConfig::File(path) => format!("the debug console output {}", path.display()),
            _ => "the debug console output".into(),
        },
        source,
    })?;
    let layout = config.layout;
    let cmos = Cmos::new(layout.low_ram_bytes(), layout.high_ram_bytes(), config.cpus);

    let mut fw_cfg = FwCfg::new(
        vm.memory().clone(),
        &FwCfgConfig::new(layout.ram_bytes(), config.cpus),
    );
    for (name, data) in fw_cfg_files(config)? {
        fw_cfg
            .add_file(&name, data)
            .map_err(|error| device_error("fw_cfg")(error.to_string()))?;
    }
    let fw_cfg = Arc::new(Mutex::new(fw_cfg));

    let i8042: SharedDevice = Arc::new(Mutex::new(I8042::new()));
    let bus = &mut vm.io_bus;
    insert(bus, serial.clone(), COM1_PORT_BASE, SERIAL_PORT_COUNT)?;
    insert(
        bus,
        Arc::new(Mutex::new(cmos)),
        CMOS_PORT_BASE,
        CMOS_PORT_COUNT,
    )?;
    insert(bus, fw_cfg.clone(), FW_CFG_PORT_BASE, FW_CFG_PORT_COUNT)?;
    insert(bus, i8042.clone(), I8042_DATA_PORT, 1)?;
    insert(bus, i8042, I8042_COMMAND_PORT, 1)?;
    insert(
        bus,
        Arc::new(Mutex::new(DebugExit::new())),
        DEBUG_EXIT_PORT,
        DEBUG_EXIT_PORT_COUNT,
    )?;
    insert(
        bus,
        Arc::new(Mutex::new(Debugcon::new(debugcon_output))),
        DEBUGCON_PORT,
        DEBUGCON_PORT_COUNT,
    )?;
    insert(
        bus,
        Arc::new(Mutex::new(Port92::new())),
        PORT92_PORT,
        PORT92_PORT_COUNT,
    )?;
    Ok(Machine { serial, fw_cfg })
}

/// Returns the fw_cfg files of the machine, name and contents.
pub fn fw_cfg_files(config: &MachineConfig<'_>) -> Result<Vec<(String, Vec<u8>)>, VmmError> {
    let e820: Vec<(u64, u64, u32)> = config
        .layout
        .memory_map()
        .iter()
        .map(|region| {
            let kind = match region.kind {
                MemoryKind::Ram => fw_cfg::E820_RAM,
                MemoryKind::Reserved | MemoryKind::Persistent => fw_cfg::E820_RESERVED,
            };
            (region.base, region.size, kind)
        })
        .collect();
    let acpi = acpi::build_fw_cfg_files(config.cpus)
        .map_err(|error| device_error("the ACPI tables")(error.to_string()))?;
    let mut files = vec![
        (E820_FILE.to_string(), fw_cfg::e820_bytes(&e820)),
        (
            BOOT_FAIL_WAIT_FILE.to_string(),
            fw_cfg::boot_fail_wait_bytes(None).to_vec(),
        ),
        (acpi::TABLE_LOADER_FILE.to_string(), acpi.table_loader),
        (acpi::TABLES_FILE.to_string(), acpi.tables),
        (acpi::RSDP_FILE.to_string(), acpi.rsdp),
    ];
    files.extend(corim_files(
        config.host_only,
        config.event,
        config.strict_corim,
    )?);
    Ok(files)
}

/// Returns the CoRIM files: the document, its signature, and the SP800-155 Event3 whose RIM
/// locator embeds the signed CoRIM.
///
/// A CoRIM that does not decode (a document that is not CBOR tag 501, a signature that is not
/// CBOR tag 18) is a warning. So is an Event3 that cannot be built (a signature whose attached
/// payload differs from the document, an event above 65,504 bytes), and the event is then left
/// out. With `strict` both are errors.
pub fn corim_files(
    host_only: &HostOnlyData,
    event: &EventStrings,
    strict: bool,
) -> Result<Vec<(String, Vec<u8>)>, VmmError> {
    let Some(document) = &host_only.corim_document else {
        return Ok(Vec::new());
    };
    let signature = host_only.corim_signature.as_deref();
    match igvm_loader::corim::inspect(document, signature) {
        Ok(report) => {
            for warning in &report.warnings {
                log::info!("{warning}");
            }
        }
        Err(error) => corim_problem(format!("the CoRIM does not decode: {error}"), strict)?,
    }
    let mut files = vec![(CORIM_FILE.to_string(), document.clone())];
    if let Some(signature) = signature {
        files.push((CORIM_SIGNATURE_FILE.to_string(), signature.to_vec()));
    }

    let signed = match igvm_loader::corim::signed_corim_bytes(document, signature) {
        Ok(signed) => signed,
        Err(error) => {
            corim_problem(
                format!("no SP800-155 event: the signed CoRIM cannot be built: {error}"),
                strict,
            )?;
            return Ok(files);
        }
    };
    let fields = sp800155::Event3Fields {
        platform_manufacturer_id: 0,
        platform_manufacturer: &event.manufacturer,
        platform_model: &event.model,
        platform_version: &event.version,
        firmware_manufacturer: "",
        firmware_manufacturer_id: 0,
        firmware_version: "",
        rim_locator: &signed,
    };
    match sp800155::build_event3(&fields) {
        Ok(bytes) => files.push((sp800155::fw_cfg_file_name(0), bytes)),
        Err(error) => corim_problem(format!("no SP800-155 event: {error}"), strict)?,
    }
    Ok(files)
}

/// Compares the launch-measurement reference value of the CoRIM in `host_only` with
/// `predicted`, igvmm's prediction for `platform`. A mismatch is a warning, or with `strict` an
/// error. Returns the comparison, or `None` when there is no CoRIM or it does not decode, which
/// [`corim_files`] reports.
pub fn check_corim_reference(
    host_only: &HostOnlyData,
    platform: Platform,
    predicted: &Measurement,
    strict: bool,
) -> Result<Option<ReferenceMatch>, VmmError> {
    let Some(document) = &host_only.corim_document else {
        return Ok(None);
    };
    let Ok(report) = igvm_loader::corim::inspect(document, host_only.corim_signature.as_deref())
    else {
        return Ok(None);
    };
    let comparison = report.compare(platform, &predicted.digest);
    match &comparison {
        ReferenceMatch::Match => log::info!("{comparison} ({})", predicted.digest_hex()),
        ReferenceMatch::NoReference => log::info!("{comparison} ({platform})"),
        ReferenceMatch::Mismatch { .. } => {
            corim_problem(format!("{comparison} {}", predicted.digest_hex()), strict)?
        }
    }
    Ok(Some(comparison))
}

/// Logs a CoRIM problem as a warning, or returns it as an error when `strict`.
fn corim_problem(message: String, strict: bool) -> Result<(), VmmError> {
    if strict {
        Err(VmmError::Corim(message))
    } else {
        log::warn!("{message}");
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn strings() -> EventStrings {
        EventStrings {
            manufacturer: "igvmm".into(),
            model: "igvmm-kvm".into(),
            version: "0.1.0".into(),
        }
    }

    fn config<'a>(
        layout: &'a MemoryLayout,
        host_only: &'a HostOnlyData,
        event: &'a EventStrings,
    ) -> MachineConfig<'a> {
        MachineConfig {
            layout,
            cpus: 2,
            serial: &SerialConfig::None,
            debugcon: &DebugconConfig::None,
            host_only,
            event,
            strict_corim: false,
        }
    }

    #[test]
    fn files_without_corim() {
        let layout = MemoryLayout::new(512 << 20).unwrap();
        let host_only = HostOnlyData::default();
        let event = strings();
        let files = fw_cfg_files(&config(&layout, &host_only, &event)).unwrap();
        let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc/e820",
                "etc/boot-fail-wait",
                "etc/table-loader",
                "etc/acpi/tables",
                "etc/acpi/rsdp"
            ]
        );
        let e820 = &files[0].1;
        assert_eq!(e820.len(), 40);
        assert_eq!(&e820[..8], &0u64.to_le_bytes());
        assert_eq!(&e820[8..16], &(512u64 << 20).to_le_bytes());
        assert_eq!(&e820[16..20], &1u32.to_le_bytes());
        assert_eq!(&e820[20..28], &0xFEFF_C000u64.to_le_bytes());
        assert_eq!(&e820[28..36], &0x4000u64.to_le_bytes());
        assert_eq!(&e820[36..40], &2u32.to_le_bytes());
        assert_eq!(files[1].1, vec![0xFF; 4]);
    }

    #[test]
    fn unsigned_corim_embeds_document() {
        // Not a valid CoRIM: without `strict` the files are still published, with a warning.
        let document = vec![0xA0];
        let host_only = HostOnlyData {
            corim_document: Some(document.clone()),
            corim_signature: None,
        };
        let files = corim_files(&host_only, &strings(), false).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0], (CORIM_FILE.to_string(), document.clone()));
        assert_eq!(files[1].0, "opt/org.tianocode/sp800155evt/0");
        let event = sp800155::parse_event3(&files[1].1).unwrap();
        assert_eq!(event.rim_locator, document);
        assert!(corim_files(&host_only, &strings(), true).is_err());
    }

    #[test]
    fn oversized_event_is_left_out() {
        let host_only = HostOnlyData {
            corim_document: Some(vec![0; 70_000]),
            corim_signature: None,
        };
        let files = corim_files(&host_only, &strings(), false).unwrap();
        let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, [CORIM_FILE]);
    }
}
