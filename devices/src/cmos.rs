//! CMOS RAM and real-time clock (Motorola MC146818) at I/O ports 0x70 (index) and 0x71 (data).
//!
//! The byte layout follows QEMU's `hw/rtc/mc146818rtc.c` and the memory-size bytes that QEMU's
//! `pc_cmos_init` stores for the BIOS:
//! - 0x15/0x16: base memory in KiB, at most 640.
//! - 0x17/0x18 and 0x30/0x31: memory between 1 MiB and 4 GiB in KiB, at most 65535 (64 MiB).
//! - 0x34/0x35: memory between 16 MiB and 4 GiB in 64 KiB units, at most 65535.
//! - 0x5B..0x5D: memory above 4 GiB in 64 KiB units (24 bits).
//! - 0x5F: number of CPUs minus one.
//!
//! The clock registers (0x00..0x09 and the century byte 0x32) are computed from the host clock
//! in UTC at each read, in BCD or binary and in 24-hour or 12-hour form as register B selects.
//! Register A never shows an update in progress and register D always reports valid RAM and
//! time.
//!
//! Limits:
//! - The guest cannot set the clock: writes to the clock registers are stored but reads keep
//!   returning the host time. QEMU instead keeps an offset from the host clock.
//! - There are no alarm, periodic or update-ended interrupts: register C always reads 0 and the
//!   device has no interrupt line.
//! - A read of port 0x70 returns the selected index with bit 7 (the NMI mask) cleared. QEMU
//!   returns 0xFF there. The readback lets firmware that polls the port detect the device.
//! - An access wider than one byte is taken as string I/O to the same port, one byte at a time.

use std::time::{SystemTime, UNIX_EPOCH};

use log::debug;

use crate::bus::{BusDevice, DeviceAction};

/// First I/O port of the device (the index register).
pub const CMOS_PORT_BASE: u64 = 0x70;
/// Number of I/O ports the device decodes.
pub const CMOS_PORT_COUNT: u64 = 2;

/// Offset of the index register.
const INDEX_OFFSET: u64 = 0;
/// Offset of the data register.
const DATA_OFFSET: u64 = 1;
/// Index-register bit that masks NMIs on a PC; it is not part of the index.
pub const INDEX_NMI_DISABLE: u8 = 0x80;
/// Index-register bits that select a CMOS byte.
pub const INDEX_MASK: u8 = 0x7F;
/// Size of the CMOS RAM, clock registers included.
pub const CMOS_SIZE: usize = 128;

/// Clock register: seconds.
pub const RTC_SECONDS: u8 = 0x00;
/// Clock register: minutes.
pub const RTC_MINUTES: u8 = 0x02;
/// Clock register: hours (bit 7 is PM in 12-hour mode).
pub const RTC_HOURS: u8 = 0x04;
/// Clock register: day of the week, 1 = Sunday.
pub const RTC_DAY_OF_WEEK: u8 = 0x06;
/// Clock register: day of the month.
pub const RTC_DAY_OF_MONTH: u8 = 0x07;
/// Clock register: month, 1 = January.
pub const RTC_MONTH: u8 = 0x08;
/// Clock register: year within the century.
pub const RTC_YEAR: u8 = 0x09;
/// Status register A: update-in-progress flag and divider/rate selection.
pub const RTC_REG_A: u8 = 0x0A;
/// Status register B: mode bits.
pub const RTC_REG_B: u8 = 0x0B;
/// Status register C: interrupt flags, cleared by reading.
pub const RTC_REG_C: u8 = 0x0C;
/// Status register D: valid RAM and time flag.
pub const RTC_REG_D: u8 = 0x0D;
/// Century, as the IBM PC/AT stores it (and QEMU).
pub const RTC_CENTURY: u8 = 0x32;
/// Century, as the IBM PS/2 stores it. QEMU reads it as an alias of [`RTC_CENTURY`].
pub const RTC_PS2_CENTURY: u8 = 0x37;

/// Register A bit: an update is in progress, the clock registers may be inconsistent.
pub const REG_A_UIP: u8 = 0x80;
/// Register A value after reset: 32.768 kHz time base, 1024 Hz periodic rate (QEMU's value).
pub const REG_A_DEFAULT: u8 = 0x26;
/// Register B bit: updates are stopped so that the guest can set the clock.
pub const REG_B_SET: u8 = 0x80;
/// Register B bit: the clock registers are binary instead of BCD.
pub const REG_B_BINARY: u8 = 0x04;
/// Register B bit: hours run from 0 to 23 instead of 1 to 12 with a PM flag.
pub const REG_B_24_HOUR: u8 = 0x02;
/// Register B value after reset: 24-hour BCD, no interrupts (QEMU's value).
pub const REG_B_DEFAULT: u8 = REG_B_24_HOUR;
/// Register D bit: the CMOS RAM and time are valid (the battery is good).
pub const REG_D_VALID: u8 = 0x80;
/// Hours-register bit that marks PM in 12-hour mode.
const HOURS_PM: u8 = 0x80;

/// Base memory in KiB, low byte (high byte at the next index).
pub const CMOS_BASE_MEMORY: u8 = 0x15;
/// Memory from 1 MiB in KiB, low byte, as the AT BIOS stores it.
pub const CMOS_EXTENDED_MEMORY: u8 = 0x17;
/// Memory from 1 MiB in KiB, low byte, as POST reports it.
pub const CMOS_EXTENDED_MEMORY_POST: u8 = 0x30;
/// Memory from 16 MiB to 4 GiB in 64 KiB units, low byte.
pub const CMOS_MEMORY_ABOVE_16M: u8 = 0x34;
/// Memory above 4 GiB in 64 KiB units, lowest of three bytes.
pub const CMOS_MEMORY_ABOVE_4G: u8 = 0x5B;
/// Number of CPUs minus one.
pub const CMOS_CPU_COUNT: u8 = 0x5F;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Source of the current time, which tests replace.
pub type Clock = fn() -> SystemTime;

/// Counters for diagnostics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CmosStats {
    /// Accesses at an offset beyond the two ports.
    pub invalid_accesses: u64,
    /// Writes to the clock registers, which do not change the time the guest reads.
    pub ignored_clock_writes: u64,
}

/// The CMOS RAM with its clock.
pub struct Cmos {
    /// CMOS bytes. Reads of the clock registers come from the host clock instead.
    data: [u8; CMOS_SIZE],
    /// Byte selected by the last write to port 0x70, NMI bit cleared.
    index: u8,
    /// Time source.
    clock: Clock,
    /// Counters returned by [`Cmos::stats`].
    stats: CmosStats,
}

impl Cmos {
    /// Creates the CMOS with the memory-size bytes for `below_4g` bytes of RAM below 4 GiB (the
    /// first MiB included) and `above_4g` bytes above it, and the CPU count byte for `cpus`
    /// CPUs. The clock reads the host time.
    pub fn new(below_4g: u64, above_4g: u64, cpus: u16) -> Self {
        Self::with_clock(below_4g, above_4g, cpus, SystemTime::now)
    }

    /// Creates the CMOS as [`Cmos::new`] does, with the clock read from `clock`.
    pub fn with_clock(below_4g: u64, above_4g: u64, cpus: u16, clock: Clock) -> Self {
        let mut cmos = Self {
            data: [0; CMOS_SIZE],
            index: 0,
            clock,
            stats: CmosStats::default(),
        };
        cmos.store(RTC_REG_A, REG_A_DEFAULT);
        cmos.store(RTC_REG_B, REG_B_DEFAULT);
        cmos.store(RTC_REG_D, REG_D_VALID);

        let base_kib = (below_4g / KIB).min(640);
        cmos.store_u16(CMOS_BASE_MEMORY, base_kib);
        let extended_kib = (below_4g.saturating_sub(MIB) / KIB).min(0xFFFF);
        cmos.store_u16(CMOS_EXTENDED_MEMORY, extended_kib);
        cmos.store_u16(CMOS_EXTENDED_MEMORY_POST, extended_kib);
        let above_16m = (below_4g.saturating_sub(16 * MIB) / (64 * KIB)).min(0xFFFF);
        cmos.store_u16(CMOS_MEMORY_ABOVE_16M, above_16m);
        let above_4g_units = above_4g / (64 * KIB);
        let [low, middle, high, ..] = above_4g_units.to_le_bytes();
        cmos.store(CMOS_MEMORY_ABOVE_4G, low);
        cmos.store(CMOS_MEMORY_ABOVE_4G + 1, middle);
        cmos.store(CMOS_MEMORY_ABOVE_4G + 2, high);
        // The byte wraps for more than 256 CPUs, as QEMU's does.
        cmos.store(CMOS_CPU_COUNT, cpus.wrapping_sub(1) as u8);
        cmos
    }

    /// Returns the counters.
    pub fn stats(&self) -> CmosStats {
        self.stats
    }

    fn store(&mut self, index: u8, value: u8) {
        if let Some(byte) = self.data.get_mut(usize::from(index & INDEX_MASK)) {
            *byte = value;
        }
    }

    fn load(&self, index: u8) -> u8 {
        self.data
            .get(usize::from(index & INDEX_MASK))
            .copied()
            .unwrap_or(0)
    }

    /// Stores the low 16 bits of `value` at `index` and `index + 1`, little-endian.
    fn store_u16(&mut self, index: u8, value: u64) {
        let [low, high, ..] = value.to_le_bytes();
        self.store(index, low);
        self.store(index + 1, high);
    }

    /// Encodes a clock field in BCD, or in binary when register B has the binary bit set.
    fn encode(&self, value: u8) -> u8 {
        if self.load(RTC_REG_B) & REG_B_BINARY != 0 {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    /// Returns the clock register at `index` for the current host time.
    fn clock_register(&self, index: u8) -> u8 {
        let time = CalendarTime::from(self.clock);
        match index {
            RTC_SECONDS => self.encode(time.second),
            RTC_MINUTES => self.encode(time.minute),
            RTC_HOURS => {
                if self.load(RTC_REG_B) & REG_B_24_HOUR != 0 {
                    self.encode(time.hour)
                } else {
                    let hour = match time.hour % 12 {
                        0 => 12,
                        hour => hour,
                    };
                    let pm = if time.hour >= 12 { HOURS_PM } else { 0 };
                    self.encode(hour) | pm
                }
            }
            RTC_DAY_OF_WEEK => self.encode(time.weekday),
            RTC_DAY_OF_MONTH => self.encode(time.day),
            RTC_MONTH => self.encode(time.month),
            RTC_YEAR => self.encode(time.year_of_century),
            _ => self.encode(time.century),
        }
    }

    fn read_data(&mut self) -> u8 {
        match self.index {
            RTC_SECONDS | RTC_MINUTES | RTC_HOURS | RTC_DAY_OF_WEEK | RTC_DAY_OF_MONTH
            | RTC_MONTH | RTC_YEAR | RTC_CENTURY | RTC_PS2_CENTURY => {
                self.clock_register(self.index)
            }
            RTC_REG_A => self.load(RTC_REG_A) & !REG_A_UIP,
            // No interrupt source exists, so no flag is ever set.
            RTC_REG_C => 0,
            RTC_REG_D => REG_D_VALID,
            index => self.load(index),
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.index {
            RTC_SECONDS | RTC_MINUTES | RTC_HOURS | RTC_DAY_OF_WEEK | RTC_DAY_OF_MONTH
            | RTC_MONTH | RTC_YEAR | RTC_CENTURY | RTC_PS2_CENTURY => {
                self.stats.ignored_clock_writes += 1;
                debug!(
                    "cmos: clock register {:#04x} write {value:#04x} ignored",
                    self.index
                );
            }
            // The update-in-progress flag is read-only.
            RTC_REG_A => self.store(RTC_REG_A, value & !REG_A_UIP),
            // Registers C and D are read-only.
            RTC_REG_C | RTC_REG_D => {}
            index => self.store(index, value),
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        for byte in data.iter_mut() {
            *byte = match offset {
                INDEX_OFFSET => self.index,
                DATA_OFFSET => self.read_data(),
                _ => {
                    self.stats.invalid_accesses += 1;
                    0xff
                }
            };
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) -> DeviceAction {
        for &value in data {
            match offset {
                INDEX_OFFSET => self.index = value & INDEX_MASK,
                DATA_OFFSET => self.write_data(value),
                _ => self.stats.invalid_accesses += 1,
            }
        }
        DeviceAction::None
    }
}

/// A UTC date and time broken into the fields the clock registers hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CalendarTime {
    second: u8,
    minute: u8,
    hour: u8,
    /// Day of the week, 1 = Sunday.
    weekday: u8,
    day: u8,
    month: u8,
    year_of_century: u8,
    century: u8,
}

impl CalendarTime {
    /// Converts seconds since 1970-01-01 UTC to calendar fields (proleptic Gregorian calendar).
    fn from_unix_seconds(seconds: u64) -> Self {
        let days = seconds / 86_400;
        let second_of_day = seconds % 86_400;
        // 1970-01-01 was a Thursday, day 5 when Sunday is 1.
        let weekday = ((days + 4) % 7) as u8 + 1;

        // Shift the epoch to 0000-03-01 so that leap days fall at the end of each year, then
        // split into 400-year eras of 146,097 days.
        let shifted = days + 719_468;
        let era = shifted / 146_097;
        let day_of_era = shifted % 146_097;
        let year_of_era =
            (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_from_march = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
        let month = if month_from_march < 10 {
            month_from_march + 3
        } else {
            month_from_march - 9
        };
        let year = era * 400 + year_of_era + u64::from(month <= 2);

        // The clock registers have two decimal digits, so years beyond 9999 wrap the century.
        Self {
            second: (second_of_day % 60) as u8,
            minute: (second_of_day / 60 % 60) as u8,
            hour: (second_of_day / 3_600) as u8,
            weekday,
            day: day as u8,
            month: month as u8,
            year_of_century: (year % 100) as u8,
            century: (year / 100 % 100) as u8,
        }
    }
}

impl From<Clock> for CalendarTime {
    fn from(clock: Clock) -> Self {
        // A host clock before 1970 reads as the epoch.
        let seconds = clock()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0);
        Self::from_unix_seconds(seconds)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// 2024-02-29 23:59:58 UTC, a Thursday.
    const LEAP_DAY_SECONDS: u64 = 1_709_251_198;

    fn leap_day_clock() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(LEAP_DAY_SECONDS)
    }

    fn cmos() -> Cmos {
        Cmos::with_clock(256 * MIB, 0, 2, leap_day_clock)
    }

    fn read_byte(cmos: &mut Cmos, index: u8) -> u8 {
        cmos.write(CMOS_PORT_BASE, INDEX_OFFSET, &[index]);
        let mut byte = [0u8];
        cmos.read(CMOS_PORT_BASE, DATA_OFFSET, &mut byte);
        byte[0]
    }

    fn write_byte(cmos: &mut Cmos, index: u8, value: u8) {
        cmos.write(CMOS_PORT_BASE, INDEX_OFFSET, &[index]);
        cmos.write(CMOS_PORT_BASE, DATA_OFFSET, &[value]);
    }

    #[test]
    fn calendar_conversion() {
        let epoch = CalendarTime::from_unix_seconds(0);
        assert_eq!(
            (
                epoch.century,
                epoch.year_of_century,
                epoch.month,
                epoch.day,
                epoch.weekday
            ),
            (19, 70, 1, 1, 5)
        );
        let leap = CalendarTime::from_unix_seconds(LEAP_DAY_SECONDS);
        assert_eq!(
            leap,
            CalendarTime {
                second: 58,
                minute: 59,
                hour: 23,
                weekday: 5,
                day: 29,
                month: 2,
                year_of_century: 24,
                century: 20,
            }
        );
        // 2000-03-01 00:00:00 UTC, a Wednesday, just after a century leap day.
        let march = CalendarTime::from_unix_seconds(951_868_800);
        assert_eq!(
            (march.century, march.year_of_century, march.month, march.day),
            (20, 0, 3, 1)
        );
        assert_eq!(march.weekday, 4);
        // 2100-03-01 is not preceded by a leap day.
        let next_century = CalendarTime::from_unix_seconds(4_107_542_400);
        assert_eq!(
            (next_century.century, next_century.month, next_century.day),
            (21, 3, 1)
        );
    }

    #[test]
    fn clock_reads_bcd_24_hour() {
        let mut cmos = cmos();
        assert_eq!(read_byte(&mut cmos, RTC_SECONDS), 0x58);
        assert_eq!(read_byte(&mut cmos, RTC_MINUTES), 0x59);
        assert_eq!(read_byte(&mut cmos, RTC_HOURS), 0x23);
        assert_eq!(read_byte(&mut cmos, RTC_DAY_OF_WEEK), 0x05);
        assert_eq!(read_byte(&mut cmos, RTC_DAY_OF_MONTH), 0x29);
        assert_eq!(read_byte(&mut cmos, RTC_MONTH), 0x02);
        assert_eq!(read_byte(&mut cmos, RTC_YEAR), 0x24);
        assert_eq!(read_byte(&mut cmos, RTC_CENTURY), 0x20);
        assert_eq!(read_byte(&mut cmos, RTC_PS2_CENTURY), 0x20);
    }

    #[test]
    fn clock_reads_binary_12_hour() {
        let mut cmos = cmos();
        write_byte(&mut cmos, RTC_REG_B, REG_B_BINARY);
        assert_eq!(read_byte(&mut cmos, RTC_SECONDS), 58);
        assert_eq!(read_byte(&mut cmos, RTC_HOURS), HOURS_PM | 11);
        assert_eq!(read_byte(&mut cmos, RTC_YEAR), 24);
    }

    #[test]
    fn status_registers() {
        let mut cmos = cmos();
        assert_eq!(read_byte(&mut cmos, RTC_REG_A), 0x26);
        assert_eq!(read_byte(&mut cmos, RTC_REG_B), 0x02);
        assert_eq!(read_byte(&mut cmos, RTC_REG_C), 0x00);
        assert_eq!(read_byte(&mut cmos, RTC_REG_D), 0x80);
        // UIP cannot be set, C and D cannot be written.
        write_byte(&mut cmos, RTC_REG_A, 0xA6);
        write_byte(&mut cmos, RTC_REG_C, 0xF0);
        write_byte(&mut cmos, RTC_REG_D, 0x00);
        assert_eq!(read_byte(&mut cmos, RTC_REG_A), 0x26);
        assert_eq!(read_byte(&mut cmos, RTC_REG_C), 0x00);
        assert_eq!(read_byte(&mut cmos, RTC_REG_D), 0x80);
    }

    #[test]
    fn memory_bytes_small_guest() {
        let mut cmos = Cmos::with_clock(256 * MIB, 0, 4, leap_day_clock);
        assert_eq!(read_byte(&mut cmos, 0x15), 0x80);
        assert_eq!(read_byte(&mut cmos, 0x16), 0x02);
        // 255 MiB above 1 MiB is more than 64 MiB, so the field saturates.
        assert_eq!(read_byte(&mut cmos, 0x17), 0xFF);
        assert_eq!(read_byte(&mut cmos, 0x18), 0xFF);
        assert_eq!(read_byte(&mut cmos, 0x30), 0xFF);
        assert_eq!(read_byte(&mut cmos, 0x31), 0xFF);
        // (256 - 16) MiB / 64 KiB = 3840 = 0x0F00.
        assert_eq!(read_byte(&mut cmos, 0x34), 0x00);
        assert_eq!(read_byte(&mut cmos, 0x35), 0x0F);
        assert_eq!(read_byte(&mut cmos, 0x5B), 0);
        assert_eq!(read_byte(&mut cmos, 0x5C), 0);
        assert_eq!(read_byte(&mut cmos, 0x5D), 0);
        assert_eq!(read_byte(&mut cmos, 0x5F), 3);
    }

    #[test]
    fn memory_bytes_large_guest() {
        let mut cmos = Cmos::with_clock(3 * 1024 * MIB, 5 * 1024 * MIB, 1, leap_day_clock);
        // (3 GiB - 16 MiB) / 64 KiB = 48896 = 0xBF00.
        assert_eq!(read_byte(&mut cmos, 0x34), 0x00);
        assert_eq!(read_byte(&mut cmos, 0x35), 0xBF);
        // 5 GiB / 64 KiB = 81920 = 0x01_4000.
        assert_eq!(read_byte(&mut cmos, 0x5B), 0x00);
        assert_eq!(read_byte(&mut cmos, 0x5C), 0x40);
        assert_eq!(read_byte(&mut cmos, 0x5D), 0x01);
        assert_eq!(read_byte(&mut cmos, 0x5F), 0);
    }

    #[test]
    fn memory_bytes_tiny_guest() {
        let mut cmos = Cmos::with_clock(512 * KIB, 0, 1, leap_day_clock);
        assert_eq!(read_byte(&mut cmos, 0x15), 0x00);
        assert_eq!(read_byte(&mut cmos, 0x16), 0x02);
        assert_eq!(read_byte(&mut cmos, 0x17), 0);
        assert_eq!(read_byte(&mut cmos, 0x34), 0);
    }

    #[test]
    fn index_readback_masks_nmi_bit() {
        let mut cmos = cmos();
        cmos.write(
            CMOS_PORT_BASE,
            INDEX_OFFSET,
            &[INDEX_NMI_DISABLE | RTC_REG_D],
        );
        let mut byte = [0u8];
        cmos.read(CMOS_PORT_BASE, INDEX_OFFSET, &mut byte);
        assert_eq!(byte, [RTC_REG_D]);
        cmos.read(CMOS_PORT_BASE, DATA_OFFSET, &mut byte);
        assert_eq!(byte, [REG_D_VALID]);
    }

    #[test]
    fn ram_bytes_store_guest_writes() {
        let mut cmos = cmos();
        write_byte(&mut cmos, 0x0F, 0xFE);
        write_byte(&mut cmos, 0x7F, 0x5A);
        assert_eq!(read_byte(&mut cmos, 0x0F), 0xFE);
        assert_eq!(read_byte(&mut cmos, 0x7F), 0x5A);
    }

    #[test]
    fn clock_writes_are_ignored() {
        let mut cmos = cmos();
        write_byte(&mut cmos, RTC_SECONDS, 0x00);
        write_byte(&mut cmos, RTC_YEAR, 0x99);
        assert_eq!(read_byte(&mut cmos, RTC_SECONDS), 0x58);
        assert_eq!(read_byte(&mut cmos, RTC_YEAR), 0x24);
        assert_eq!(cmos.stats().ignored_clock_writes, 2);
    }

    #[test]
    fn bad_accesses_change_nothing() {
        let mut cmos = cmos();
        cmos.write(CMOS_PORT_BASE, INDEX_OFFSET, &[0x40]);
        cmos.write(CMOS_PORT_BASE, 2, &[0x11]);
        cmos.write(CMOS_PORT_BASE, u64::MAX, &[0x11, 0x22]);
        let mut bytes = [0u8; 2];
        cmos.read(CMOS_PORT_BASE, 5, &mut bytes);
        assert_eq!(bytes, [0xff, 0xff]);
        cmos.read(CMOS_PORT_BASE, DATA_OFFSET, &mut []);
        cmos.write(CMOS_PORT_BASE, DATA_OFFSET, &[]);
        assert_eq!(cmos.stats().invalid_accesses, 5);
        assert_eq!(cmos.index, 0x40);
        assert_eq!(read_byte(&mut cmos, 0x40), 0);
        assert_eq!(read_byte(&mut cmos, RTC_REG_B), REG_B_DEFAULT);
    }

    #[test]
    fn string_write_then_read() {
        let mut cmos = cmos();
        cmos.write(CMOS_PORT_BASE, INDEX_OFFSET, &[0x50]);
        cmos.write(CMOS_PORT_BASE, DATA_OFFSET, &[1, 2, 3]);
        let mut bytes = [0u8; 2];
        cmos.read(CMOS_PORT_BASE, DATA_OFFSET, &mut bytes);
        assert_eq!(bytes, [3, 3]);
    }

    #[test]
    fn pre_epoch_clock_reads_epoch() {
        fn before_epoch() -> SystemTime {
            UNIX_EPOCH - Duration::from_secs(10)
        }
        let mut cmos = Cmos::with_clock(MIB, 0, 1, before_epoch);
        assert_eq!(read_byte(&mut cmos, RTC_YEAR), 0x70);
        assert_eq!(read_byte(&mut cmos, RTC_CENTURY), 0x19);
    }
}
