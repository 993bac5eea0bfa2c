//! Guest-visible devices for igvmm.
//!
//! Each module emulates one device and implements [`bus::BusDevice`]; the VMM creates the
//! devices and maps them on its port-I/O bus. [`acpi`] and [`sp800155`] build the byte blobs
//! that the VMM publishes through [`fw_cfg`] or IGVM parameter areas.

pub mod acpi;
pub mod bus;
pub mod cmos;
pub mod debug_exit;
pub mod debugcon;
pub mod fw_cfg;
pub mod i8042;
pub mod port92;
pub mod serial;
pub mod sp800155;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use crate::bus::{Bus, DeviceAction, SharedDevice};
    use crate::{cmos, debug_exit, debugcon, fw_cfg, i8042, port92, serial};

    /// Maps every device at its PC port, as the VMM does.
    fn port_bus() -> Bus {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let serial: SharedDevice = Arc::new(Mutex::new(serial::Serial::new(
            EventFd::new(EFD_NONBLOCK).unwrap(),
            Box::new(io::sink()),
        )));
        let fw_cfg: SharedDevice = Arc::new(Mutex::new(fw_cfg::FwCfg::new(
            memory,
            &fw_cfg::FwCfgConfig::new(0x10000, 1),
        )));
        let cmos: SharedDevice = Arc::new(Mutex::new(cmos::Cmos::new(0x10000, 0, 1)));
        let i8042: SharedDevice = Arc::new(Mutex::new(i8042::I8042::new()));
        let debug_exit: SharedDevice = Arc::new(Mutex::new(debug_exit::DebugExit::new()));
        let debugcon: SharedDevice =
            Arc::new(Mutex::new(debugcon::Debugcon::new(Box::new(io::sink()))));
        let port92: SharedDevice = Arc::new(Mutex::new(port92::Port92::new()));

        let mut bus = Bus::new();
        let mappings = [
            (serial, serial::COM1_PORT_BASE, serial::SERIAL_PORT_COUNT),
            (fw_cfg, fw_cfg::FW_CFG_PORT_BASE, fw_cfg::FW_CFG_PORT_COUNT),
            (cmos, cmos::CMOS_PORT_BASE, cmos::CMOS_PORT_COUNT),
            (i8042.clone(), i8042::I8042_DATA_PORT, 1),
            (i8042, i8042::I8042_COMMAND_PORT, 1),
            (
                debug_exit,
                debug_exit::DEBUG_EXIT_PORT,
                debug_exit::DEBUG_EXIT_PORT_COUNT,
            ),
            (
                debugcon,
                debugcon::DEBUGCON_PORT,
                debugcon::DEBUGCON_PORT_COUNT,
            ),
            (port92, port92::PORT92_PORT, port92::PORT92_PORT_COUNT),
        ];
        for (device, base, len) in mappings {
            bus.insert(device, base, len).unwrap();
        }
        bus
    }

    fn read_port(bus: &Bus, port: u64) -> u8 {
        let mut byte = [0u8];
        assert!(bus.read(port, &mut byte), "port {port:#x} is unclaimed");
        byte[0]
    }

    #[test]
    fn devices_answer_on_their_ports() {
        let bus = port_bus();
        assert_eq!(read_port(&bus, 0x3FD), 0x60, "COM1 LSR");
        assert_eq!(read_port(&bus, 0x511), b'Q', "fw_cfg signature");
        assert_eq!(read_port(&bus, 0x514), b'Q', "fw_cfg DMA signature");
        bus.write(0x70, &[0x0D]).unwrap();
        assert_eq!(read_port(&bus, 0x71), 0x80, "CMOS register D");
        assert_eq!(read_port(&bus, 0x70), 0x0D, "CMOS index readback");
        assert_eq!(read_port(&bus, 0x64), 0x14, "i8042 status");
        assert_eq!(read_port(&bus, 0x402), 0xE9, "debugcon readback");
        assert_eq!(read_port(&bus, 0x92), 0x00, "port 0x92");
        assert_eq!(bus.unclaimed_accesses(), 0);
    }

    #[test]
    fn reset_and_exit_actions() {
        let bus = port_bus();
        assert_eq!(bus.write(0x64, &[0xFE]), Some(DeviceAction::Reset));
        assert_eq!(bus.write(0x92, &[0x01]), Some(DeviceAction::Reset));
        assert_eq!(bus.write(0x501, &[0x10]), Some(DeviceAction::Exit(0x10)));
        assert_eq!(bus.write(0x402, b"log"), Some(DeviceAction::None));
        assert_eq!(bus.write(0x61, &[0x00]), None);
    }
}
