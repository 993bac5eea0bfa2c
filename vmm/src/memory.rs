//! Guest physical memory: the PC layout of RAM around the 32-bit MMIO hole, the check of a
//! requested size against host limits, and the anonymous mappings that back guest RAM.
//!
//! RAM up to 3 GiB (`LOW_RAM_END`) starts at GPA 0. The rest starts at 4 GiB, so that
//! 3 GiB..4 GiB stays free for MMIO, the local APIC, the I/O APIC and firmware. KVM's private
//! pages for the real-mode TSS and identity map sit just below the firmware area and are reported
//! as reserved, as QEMU reports them in `etc/e820`. Pages that an IGVM file places outside RAM (a
//! firmware image below 4 GiB, for example) get their own backing and appear in no memory map.

use igvm_loader::host::{MemoryKind, MemoryRegion};
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

/// Size of a guest page in bytes.
pub const PAGE_SIZE: u64 = 0x1000;
/// End of RAM below the 32-bit MMIO hole: guest RAM past 3 GiB continues at [`HIGH_RAM_START`].
pub const LOW_RAM_END: u64 = 0xC000_0000;
/// Start of the RAM above the 32-bit MMIO hole.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// GPA of the page KVM uses as the identity-mapped page table for real mode on Intel hosts.
pub const KVM_IDENTITY_MAP_GPA: u64 = 0xFEFF_C000;
/// GPA of the three pages KVM uses for the real-mode TSS on Intel hosts.
pub const KVM_TSS_GPA: u64 = 0xFEFF_D000;
/// Length of KVM's private area (identity map page plus TSS pages), reserved in the memory map.
pub const KVM_PRIVATE_AREA_SIZE: u64 = 0x4000;
/// First byte of the firmware window: the 16 MiB below 4 GiB, where a PC maps its flash. Image
/// pages outside guest RAM are accepted only there, as firmware.
pub const FIRMWARE_WINDOW_START: u64 = 0xFF00_0000;
/// First byte after the firmware window: 4 GiB.
pub const FIRMWARE_WINDOW_END: u64 = 0x1_0000_0000;
/// GPA of the I/O APIC registers, emulated by KVM's in-kernel irqchip.
pub const IOAPIC_GPA: u64 = 0xFEC0_0000;
/// GPA of the local APIC registers, emulated by KVM.
pub const LAPIC_GPA: u64 = 0xFEE0_0000;
/// Smallest guest RAM igvmm accepts.
pub const MIN_RAM_BYTES: u64 = 2 << 20;
/// Address space the VMM itself needs next to guest RAM, for the address-space limit check
/// (an estimate: code, heap, thread stacks and the KVM run structures).
pub const VMM_ADDRESS_SPACE_OVERHEAD: u64 = 256 << 20;

/// Error in the memory configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryError {
    /// The `--memory` value is not a number with an optional K, M, G or T suffix.
    #[error("invalid memory size {0:?}: expected a number of bytes with an optional K, M, G or T suffix, for example 512M")]
    InvalidSize(String),
    /// The size does not fit in 64 bits.
    #[error("memory size {0:?} is too large")]
    SizeOverflow(String),
    /// The size is not a whole number of 4 KiB pages.
    #[error("memory size {0} bytes is not a multiple of 4 KiB")]
    Unaligned(u64),
    /// The size is below [`MIN_RAM_BYTES`].
    #[error("memory size {bytes} bytes is below the minimum of {minimum} bytes (2M)")]
    TooSmall {
        /// Requested size.
        bytes: u64,
        /// Smallest size accepted.
        minimum: u64,
    },
    /// The guest would need more address space than `RLIMIT_AS` leaves.
    #[error("--memory {requested} needs more address space than the process limit allows (RLIMIT_AS {limit} bytes); lower --memory or raise the limit with `ulimit -v`")]
    AddressSpaceLimit {
        /// Requested guest RAM, formatted.
        requested: String,
        /// The soft RLIMIT_AS in bytes.
        limit: u64,
    },
    /// Strict overcommit is on and the commit limit does not leave room for guest RAM.
    #[error("--memory {requested} exceeds what the kernel still allows to commit ({available} bytes: CommitLimit minus Committed_AS, vm.overcommit_memory=2); lower --memory")]
    CommitLimit {
        /// Requested guest RAM, formatted.
        requested: String,
        /// Commit limit minus committed memory, in bytes.
        available: u64,
    },
    /// The host has less free memory than the guest may use.
    #[error("--memory {requested} exceeds the host's available memory ({available} bytes: MemAvailable plus SwapFree in /proc/meminfo); lower --memory")]
    HostMemory {
        /// Requested guest RAM, formatted.
        requested: String,
        /// MemAvailable plus SwapFree in bytes.
        available: u64,
    },
    /// A page that the guest image places would land on a page the platform owns.
    #[error("the image places a page at GPA {gpa:#x}, inside {owner}")]
    ReservedPage {
        /// GPA of the page.
        gpa: u64,
        /// The owner of the page.
        owner: &'static str,
    },
    /// A page of the guest image lies outside guest RAM and outside the firmware window.
    #[error("the image places a page at GPA {gpa:#x}, outside guest RAM and outside the firmware window {start:#x}..{end:#x}; {}", ram_hint(*memory_needed))]
    OutsideRam {
        /// GPA of the page.
        gpa: u64,
        /// First byte of the firmware window.
        start: u64,
        /// First byte after the firmware window.
        end: u64,
        /// The smallest `--memory` that puts this page in RAM. Where the caller checked every
        /// page of the image, it covers all pages outside RAM. `None` when a page lies in the
        /// hole below 4 GiB.
        memory_needed: Option<u64>,
    },
    /// A page of the guest image lies beyond the guest physical address width.
    #[error("the image places a page at GPA {gpa:#x}, beyond the {bits}-bit guest physical address space")]
    BeyondAddressWidth {
        /// GPA of the page.
        gpa: u64,
        /// Guest physical address bits.
        bits: u8,
    },
    /// Guest RAM would end beyond the guest physical address width.
    #[error("--memory {requested} puts guest RAM up to GPA {end:#x}, beyond the {bits}-bit guest physical address space; lower --memory")]
    RamBeyondAddressWidth {
        /// Requested guest RAM, formatted.
        requested: String,
        /// First GPA after guest RAM.
        end: u64,
        /// Guest physical address bits.
        bits: u8,
    },
    /// mmap of guest memory failed.
    #[error("failed to allocate guest memory: {0}")]
    Allocate(String),
}

/// Returns the smallest whole number of MiB of `--memory` that puts the 4 KiB page at `gpa` in
/// RAM, or `None` for a page in the hole below 4 GiB, where RAM never goes.
pub fn memory_for_page(gpa: u64) -> Option<u64> {
    const MIB: u64 = 1 << 20;
    let end = gpa.checked_add(PAGE_SIZE)?;
    let bytes = if end <= LOW_RAM_END {
        end
    } else if gpa >= HIGH_RAM_START {
        end.checked_sub(HIGH_RAM_START)?.checked_add(LOW_RAM_END)?
    } else {
        return None;
    };
    bytes.checked_next_multiple_of(MIB)
}

/// Formats the advice at the end of an [`MemoryError::OutsideRam`] message.
fn ram_hint(memory_needed: Option<u64>) -> String {
    match memory_needed {
        Some(bytes) => format!("run with --memory {} or more", format_size(bytes)),
        None => {
            "the image has a page in the hole below 4 GiB, where no --memory puts RAM".to_string()
        }
    }
}

/// Parses a `--memory` value: a byte count with an optional binary suffix K, M, G or T
/// (case-insensitive).
pub fn parse_size(text: &str) -> Result<u64, MemoryError> {
    let trimmed = text.trim();
    let (digits, shift) = match trimmed.char_indices().last() {
        Some((at, suffix)) if suffix.is_ascii_alphabetic() => {
            let shift = match suffix.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(MemoryError::InvalidSize(text.to_string())),
            };
            (trimmed.get(..at).unwrap_or_default(), shift)
        }
        _ => (trimmed, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MemoryError::InvalidSize(text.to_string()));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| MemoryError::SizeOverflow(text.to_string()))?;
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| MemoryError::SizeOverflow(text.to_string()))
}

/// Formats a byte count with the largest binary suffix that divides it exactly.
pub fn format_size(bytes: u64) -> String {
    for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// The host's memory limits that bound guest RAM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostLimits {
    /// `MemAvailable` from /proc/meminfo, in bytes.
    pub mem_available: Option<u64>,
    /// `SwapFree` from /proc/meminfo, in bytes.
    pub swap_free: Option<u64>,
    /// `CommitLimit` from /proc/meminfo, in bytes.
    pub commit_limit: Option<u64>,
    /// `Committed_AS` from /proc/meminfo, in bytes.
    pub committed: Option<u64>,
    /// `vm.overcommit_memory` (0 heuristic, 1 always, 2 strict).
    pub overcommit_mode: Option<u32>,
    /// Soft `RLIMIT_AS` in bytes; `None` when unlimited.
    pub address_space_limit: Option<u64>,
}

impl HostLimits {
    /// Reads the limits of this process and host from /proc. A file that cannot be read leaves
    /// its fields unknown, and an unknown limit is not checked.
    pub fn read() -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let overcommit = std::fs::read_to_string("/proc/sys/vm/overcommit_memory")
            .ok()
            .and_then(|text| text.trim().parse().ok());
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        Self {
            mem_available: meminfo_bytes(&meminfo, "MemAvailable"),
            swap_free: meminfo_bytes(&meminfo, "SwapFree"),
            commit_limit: meminfo_bytes(&meminfo, "CommitLimit"),
            committed: meminfo_bytes(&meminfo, "Committed_AS"),
            overcommit_mode: overcommit,
            address_space_limit: address_space_limit(&limits),
        }
    }

    /// Checks that `bytes` of guest RAM fit within these limits.
    pub fn check(&self, bytes: u64) -> Result<(), MemoryError> {
        let requested = format_size(bytes);
        if let Some(limit) = self.address_space_limit {
            if bytes.saturating_add(VMM_ADDRESS_SPACE_OVERHEAD) > limit {
                return Err(MemoryError::AddressSpaceLimit { requested, limit });
            }
        }
        if self.overcommit_mode == Some(2) {
            if let (Some(limit), Some(committed)) = (self.commit_limit, self.committed) {
                let available = limit.saturating_sub(committed);
                if bytes > available {
                    return Err(MemoryError::CommitLimit {
                        requested,
                        available,
                    });
                }
            }
        }
        if let Some(mem_available) = self.mem_available {
            let available = mem_available.saturating_add(self.swap_free.unwrap_or(0));
            if bytes > available {
                return Err(MemoryError::HostMemory {
                    requested,
                    available,
                });
            }
        }
        Ok(())
    }
}

/// Returns the value of a `Name:  1234 kB` line of /proc/meminfo in bytes.
fn meminfo_bytes(meminfo: &str, name: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(':')?;
        let mut fields = rest.split_whitespace();
        let value: u64 = fields.next()?.parse().ok()?;
        match fields.next() {
            Some("kB") => value.checked_mul(1024),
            None => Some(value),
            Some(_) => None,
        }
    })
}

/// Returns the soft limit of the "Max address space" line of /proc/self/limits, or `None` when
/// it is unlimited or missing.
fn address_space_limit(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max address space"))?;
    let soft = line
        .strip_prefix("Max address space")?
        .split_whitespace()
        .next()?;
    soft.parse().ok()
}

/// A range of guest physical addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaRange {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl GpaRange {
    /// Returns the first byte after the range (saturating).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }

    /// Returns whether `gpa` lies inside the range.
    pub fn contains(&self, gpa: u64) -> bool {
        gpa >= self.start && gpa < self.end()
    }
}

/// The guest physical memory layout for a given amount of RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayout {
    /// RAM ranges in ascending order.
    ram: Vec<GpaRange>,
    /// Ranges that the platform owns and the memory map reports as reserved.
    reserved: Vec<GpaRange>,
    /// Ranges outside RAM where the image places firmware pages.
    firmware: Vec<GpaRange>,
}

impl MemoryLayout {
    /// Lays out `ram_bytes` of RAM around the 32-bit hole.
    pub fn new(ram_bytes: u64) -> Result<Self, MemoryError> {
        if !ram_bytes.is_multiple_of(PAGE_SIZE) {
            return Err(MemoryError::Unaligned(ram_bytes));
        }
        if ram_bytes < MIN_RAM_BYTES {
            return Err(MemoryError::TooSmall {
                bytes: ram_bytes,
                minimum: MIN_RAM_BYTES,
            });
        }
        let low = ram_bytes.min(LOW_RAM_END);
        let mut ram = vec![GpaRange { start: 0, len: low }];
        let high = ram_bytes - low;
        if high > 0 {
            ram.push(GpaRange {
                start: HIGH_RAM_START,
                len: high,
            });
        }
        let reserved = vec![GpaRange {
            start: KVM_IDENTITY_MAP_GPA,
            len: KVM_PRIVATE_AREA_SIZE,
        }];
        Ok(Self {
            ram,
            reserved,
            firmware: Vec::new(),
        })
    }

    /// Records the ranges outside RAM that hold firmware pages (see
    /// [`MemoryLayout::loader_memory_map`]).
    pub fn set_firmware(&mut self, ranges: Vec<GpaRange>) {
        self.firmware = ranges;
    }

    /// Returns the memory map handed to the loader: [`MemoryLayout::memory_map`] plus the
    /// firmware ranges.
    ///
    /// NOTE: the firmware ranges are reported as RAM because igvm-loader accepts page imports
    /// only into RAM, so the IGVM memory-map parameter lists the firmware window as usable
    /// memory. `etc/e820` leaves it out.
    pub fn loader_memory_map(&self) -> Vec<MemoryRegion> {
        let mut map = self.memory_map();
        map.extend(self.firmware.iter().map(|range| MemoryRegion {
            base: range.start,
            size: range.len,
            kind: MemoryKind::Ram,
        }));
        map.sort_by_key(|region| region.base);
        map
    }

    /// Checks that all RAM lies below `1 << phys_bits`.
    pub fn check_address_width(&self, phys_bits: u8) -> Result<(), MemoryError> {
        let limit = 1u64.checked_shl(u32::from(phys_bits)).unwrap_or(u64::MAX);
        let end = self.ram.iter().map(GpaRange::end).max().unwrap_or(0);
        if end > limit {
            return Err(MemoryError::RamBeyondAddressWidth {
                requested: format_size(self.ram_bytes()),
                end,
                bits: phys_bits,
            });
        }
        Ok(())
    }

    /// Returns the RAM ranges in ascending order.
    pub fn ram(&self) -> &[GpaRange] {
        &self.ram
    }

    /// Returns the total RAM in bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.ram.iter().map(|range| range.len).sum()
    }

    /// Returns the RAM below 4 GiB in bytes.
    pub fn low_ram_bytes(&self) -> u64 {
        self.ram
            .iter()
            .filter(|range| range.start < HIGH_RAM_START)
            .map(|range| range.len)
            .sum()
    }

    /// Returns the RAM above 4 GiB in bytes.
    pub fn high_ram_bytes(&self) -> u64 {
        self.ram_bytes() - self.low_ram_bytes()
    }

    /// Returns whether `gpa` is RAM.
    pub fn is_ram(&self, gpa: u64) -> bool {
        self.ram.iter().any(|range| range.contains(gpa))
    }

    /// Returns the memory map that the IGVM memory-map parameter and `etc/e820` report: RAM and
    /// reserved ranges, sorted by base.
    pub fn memory_map(&self) -> Vec<MemoryRegion> {
        let ram = self.ram.iter().map(|range| MemoryRegion {
            base: range.start,
            size: range.len,
            kind: MemoryKind::Ram,
        });
        let reserved = self.reserved.iter().map(|range| MemoryRegion {
            base: range.start,
            size: range.len,
            kind: MemoryKind::Reserved,
        });
        let mut map: Vec<MemoryRegion> = ram.chain(reserved).collect();
        map.sort_by_key(|region| region.base);
        map
    }

    /// Checks that the 4 KiB page at `page` can hold part of the guest image: it lies below
    /// `1 << phys_bits`, outside KVM's private area and the APIC windows, which KVM owns, and
    /// in guest RAM or the firmware window.
    pub fn check_image_page(&self, page: u64, phys_bits: u8) -> Result<(), MemoryError> {
        let page = page & !(PAGE_SIZE - 1);
        let limit = 1u64.checked_shl(u32::from(phys_bits)).unwrap_or(u64::MAX);
        if page >= limit || page.saturating_add(PAGE_SIZE) > limit {
            return Err(MemoryError::BeyondAddressWidth {
                gpa: page,
                bits: phys_bits,
            });
        }
        let owned = [
            (
                GpaRange {
                    start: KVM_IDENTITY_MAP_GPA,
                    len: KVM_PRIVATE_AREA_SIZE,
                },
                "KVM's real-mode TSS and identity map",
            ),
            (
                GpaRange {
                    start: IOAPIC_GPA,
                    len: PAGE_SIZE,
                },
                "the I/O APIC registers",
            ),
            (
                GpaRange {
                    start: LAPIC_GPA,
                    len: PAGE_SIZE,
                },
                "the local APIC registers",
            ),
        ];
        if let Some((_, owner)) = owned.iter().find(|(range, _)| range.contains(page)) {
            return Err(MemoryError::ReservedPage { gpa: page, owner });
        }
        if !self.is_ram(page) && !(FIRMWARE_WINDOW_START..FIRMWARE_WINDOW_END).contains(&page) {
            return Err(MemoryError::OutsideRam {
                gpa: page,
                start: FIRMWARE_WINDOW_START,
                end: FIRMWARE_WINDOW_END,
                memory_needed: memory_for_page(page),
            });
        }
        Ok(())
    }

    /// Returns the ranges outside RAM that must be backed so that every page in `pages` (GPAs of
    /// 4 KiB pages, in any order) lands in guest memory. Adjacent pages merge into one range.
    ///
    /// Every page must pass [`MemoryLayout::check_image_page`].
    pub fn extra_backing(
        &self,
        pages: impl IntoIterator<Item = u64>,
        phys_bits: u8,
    ) -> Result<Vec<GpaRange>, MemoryError> {
        let mut outside: Vec<u64> = Vec::new();
        for gpa in pages {
            let page = gpa & !(PAGE_SIZE - 1);
            self.check_image_page(page, phys_bits)?;
            if !self.is_ram(page) {
                outside.push(page);
            }
        }
        outside.sort_unstable();
        outside.dedup();
        let mut ranges: Vec<GpaRange> = Vec::new();
        for page in outside {
            match ranges.last_mut() {
                Some(last) if last.end() == page => last.len += PAGE_SIZE,
                _ => ranges.push(GpaRange {
                    start: page,
                    len: PAGE_SIZE,
                }),
            }
        }
        Ok(ranges)
    }
}

/// Allocates guest memory for the RAM of `layout` and the `extra` ranges, sorted by GPA.
///
/// The mappings are anonymous, private and `MAP_NORESERVE` (vm-memory's default), so the host
/// commits pages only when the guest touches them. Each mapping is advised with
/// `MADV_HUGEPAGE`. Where transparent huge pages are set to `madvise`, the host then backs it
/// with 2 MiB pages when it can and faults once per 2 MiB instead of once per 4 KiB. The cost is
/// that a guest touching one byte of a 2 MiB range makes the host commit the whole 2 MiB.
pub fn allocate(layout: &MemoryLayout, extra: &[GpaRange]) -> Result<GuestMemoryMmap, MemoryError> {
    let mut ranges: Vec<GpaRange> = layout.ram().iter().chain(extra).copied().collect();
    ranges.sort_by_key(|range| range.start);
    let mut regions = Vec::with_capacity(ranges.len());
    for range in ranges {
        let len = usize::try_from(range.len)
            .map_err(|_| MemoryError::Allocate(format!("range {:#x} is too large", range.len)))?;
        regions.push((GuestAddress(range.start), len));
    }
    let memory = GuestMemoryMmap::from_ranges(&regions)
        .map_err(|error| MemoryError::Allocate(error.to_string()))?;
    advise_huge_pages(&memory);
    Ok(memory)
}

/// Advises every region of `memory` with `MADV_HUGEPAGE`. A failure (a kernel without
/// transparent huge pages returns `EINVAL`) only costs speed, so it is logged and ignored.
fn advise_huge_pages(memory: &GuestMemoryMmap) {
    for region in memory.iter() {
        let Ok(host) = region.get_host_address(MemoryRegionAddress(0)) else {
            log::debug!(
                "guest memory at {:#x} has no host address to advise",
                region.start_addr().0
            );
            continue;
        };
        let Ok(len) = usize::try_from(region.len()) else {
            continue;
        };
        // SAFETY: `host..host + len` is exactly one live anonymous mapping that `memory` owns.
        // MADV_HUGEPAGE changes only how the kernel backs the range, never its contents.
        let result = unsafe { libc::madvise(host.cast(), len, libc::MADV_HUGEPAGE) };
        if result != 0 {
            log::debug!(
                "madvise(MADV_HUGEPAGE) failed for guest memory at {:#x}: {}",
                region.start_addr().0,
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn parse_size_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4g"), Ok(4 << 30));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
    }

    #[test]
    fn parse_size_rejects_garbage() {
        for bad in ["", "M", "12X", "1.5G", "-1M", "0x100", "12 M"] {
            assert_eq!(
                parse_size(bad),
                Err(MemoryError::InvalidSize(bad.to_string())),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_size("99999999999999999999"),
            Err(MemoryError::SizeOverflow("99999999999999999999".into()))
        );
        assert_eq!(
            parse_size("17179869184T"),
            Err(MemoryError::SizeOverflow("17179869184T".into()))
        );
    }

    #[test]
    fn format_size_picks_exact_suffix() {
        assert_eq!(format_size(512 << 20), "512M");
        assert_eq!(format_size(3 << 30), "3G");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(4097), "4097");
    }

    #[test]
    fn layout_small_guest() {
        let layout = MemoryLayout::new(512 << 20).unwrap();
        assert_eq!(
            layout.memory_map(),
            vec![
                MemoryRegion {
                    base: 0,
                    size: 512 << 20,
                    kind: MemoryKind::Ram
                },
                MemoryRegion {
                    base: 0xFEFF_C000,
                    size: 0x4000,
                    kind: MemoryKind::Reserved
                },
            ]
        );
        assert_eq!(layout.high_ram_bytes(), 0);
    }

    #[test]
    fn layout_splits_at_3g() {
        let layout = MemoryLayout::new(4 << 30).unwrap();
        assert_eq!(
            layout.ram(),
            &[
                GpaRange {
                    start: 0,
                    len: 0xC000_0000
                },
                GpaRange {
                    start: 0x1_0000_0000,
                    len: 0x4000_0000
                }
            ]
        );
        assert_eq!(layout.low_ram_bytes(), 3 << 30);
        assert_eq!(layout.high_ram_bytes(), 1 << 30);
        let map = layout.memory_map();
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].kind, MemoryKind::Reserved);
        assert_eq!(map[2].base, 0x1_0000_0000);
    }

    #[test]
    fn layout_rejects_bad_sizes() {
        assert_eq!(
            MemoryLayout::new((2 << 20) + 1),
            Err(MemoryError::Unaligned((2 << 20) + 1))
        );
        assert_eq!(
            MemoryLayout::new(1 << 20),
            Err(MemoryError::TooSmall {
                bytes: 1 << 20,
                minimum: 2 << 20
            })
        );
    }

    #[test]
    fn address_width_bounds_ram() {
        let layout = MemoryLayout::new(64 << 30).unwrap();
        assert_eq!(layout.check_address_width(48), Ok(()));
        assert_eq!(
            layout.check_address_width(36),
            Err(MemoryError::RamBeyondAddressWidth {
                requested: "64G".into(),
                end: 0x10_4000_0000,
                bits: 36
            })
        );
    }

    #[test]
    fn extra_backing_merges_firmware_pages() {
        let layout = MemoryLayout::new(64 << 20).unwrap();
        let pages = (0..32u64).map(|i| 0xFFFE_0000 + i * PAGE_SIZE).chain([
            0x1000,
            0xFF00_0000,
            0xFFFE_0000,
        ]);
        let extra = layout.extra_backing(pages, 48).unwrap();
        assert_eq!(
            extra,
            vec![
                GpaRange {
                    start: 0xFF00_0000,
                    len: PAGE_SIZE
                },
                GpaRange {
                    start: 0xFFFE_0000,
                    len: 0x2_0000
                }
            ]
        );
    }

    #[test]
    fn memory_for_page_rounds_up_to_mib() {
        assert_eq!(memory_for_page(0x100_0000), Some(17 << 20));
        assert_eq!(memory_for_page(0xBFFF_F000), Some(LOW_RAM_END));
        assert_eq!(memory_for_page(0xC000_0000), None);
        assert_eq!(memory_for_page(0xFEF0_0000), None);
        assert_eq!(
            memory_for_page(HIGH_RAM_START),
            Some(LOW_RAM_END + (1 << 20))
        );
        assert_eq!(memory_for_page(u64::MAX - 0xFFF), None);
        let error = MemoryError::OutsideRam {
            gpa: 0x100_0000,
            start: FIRMWARE_WINDOW_START,
            end: FIRMWARE_WINDOW_END,
            memory_needed: Some(66 << 20),
        };
        assert!(
            error
                .to_string()
                .ends_with("; run with --memory 66M or more"),
            "{error}"
        );
    }

    #[test]
    fn extra_backing_rejects_pages_outside_window() {
        let layout = MemoryLayout::new(64 << 20).unwrap();
        for gpa in [0x8000_0000, 0x100_0000_0000, 0xFEF0_0000] {
            assert_eq!(
                layout.extra_backing([gpa], 48),
                Err(MemoryError::OutsideRam {
                    gpa,
                    start: FIRMWARE_WINDOW_START,
                    end: FIRMWARE_WINDOW_END,
                    memory_needed: memory_for_page(gpa),
                })
            );
        }
    }

    #[test]
    fn extra_backing_rejects_kvm_pages() {
        let layout = MemoryLayout::new(64 << 20).unwrap();
        assert_eq!(
            layout.extra_backing([KVM_TSS_GPA + PAGE_SIZE], 48),
            Err(MemoryError::ReservedPage {
                gpa: KVM_TSS_GPA + PAGE_SIZE,
                owner: "KVM's real-mode TSS and identity map"
            })
        );
        assert_eq!(
            layout.extra_backing([LAPIC_GPA], 48),
            Err(MemoryError::ReservedPage {
                gpa: LAPIC_GPA,
                owner: "the local APIC registers"
            })
        );
        assert_eq!(
            layout.extra_backing([1 << 48], 48),
            Err(MemoryError::BeyondAddressWidth {
                gpa: 1 << 48,
                bits: 48
            })
        );
    }

    #[test]
    fn host_limits_checks() {
        let limits = HostLimits {
            mem_available: Some(1 << 30),
            swap_free: Some(0),
            commit_limit: Some(2 << 30),
            committed: Some(1536 << 20),
            overcommit_mode: Some(0),
            address_space_limit: None,
        };
        assert_eq!(limits.check(512 << 20), Ok(()));
        assert_eq!(
            limits.check(2 << 30),
            Err(MemoryError::HostMemory {
                requested: "2G".into(),
                available: 1 << 30
            })
        );
        let strict = HostLimits {
            overcommit_mode: Some(2),
            ..limits.clone()
        };
        assert_eq!(
            strict.check(768 << 20),
            Err(MemoryError::CommitLimit {
                requested: "768M".into(),
                available: 512 << 20
            })
        );
        let rlimited = HostLimits {
            address_space_limit: Some(512 << 20),
            ..limits
        };
        assert_eq!(
            rlimited.check(300 << 20),
            Err(MemoryError::AddressSpaceLimit {
                requested: "300M".into(),
                limit: 512 << 20
            })
        );
    }

    #[test]
    fn proc_parsers() {
        let meminfo = "MemTotal:       24000000 kB\nMemAvailable:    2048 kB\nSwapFree: 0 kB\n";
        assert_eq!(meminfo_bytes(meminfo, "MemAvailable"), Some(2048 * 1024));
        assert_eq!(meminfo_bytes(meminfo, "SwapFree"), Some(0));
        assert_eq!(meminfo_bytes(meminfo, "Committed_AS"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max address space         unlimited            unlimited            bytes     \n";
        assert_eq!(address_space_limit(limits), None);
        let limited = "Max address space         1073741824           unlimited            bytes\n";
        assert_eq!(address_space_limit(limited), Some(1 << 30));
    }

    #[test]
    fn allocate_backs_every_range() {
        use vm_memory::{Bytes, GuestMemoryBackend};
        let layout = MemoryLayout::new(4 << 20).unwrap();
        let extra = [GpaRange {
            start: 0xFFFF_F000,
            len: PAGE_SIZE,
        }];
        let memory = allocate(&layout, &extra).unwrap();
        assert_eq!(memory.num_regions(), 2);
        memory.write_obj(0xAAu8, GuestAddress(0xFFFF_FFFF)).unwrap();
        assert_eq!(
            memory.read_obj::<u8>(GuestAddress(0xFFFF_FFFF)).unwrap(),
            0xAA
        );
        assert!(memory.read_obj::<u8>(GuestAddress(4 << 20)).is_err());
    }

    #[test]
    fn allocate_advises_huge_pages() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            // This kernel has no transparent huge pages, so madvise fails and allocate logs it.
            return;
        }
        let layout = MemoryLayout::new(64 << 20).unwrap();
        let memory = allocate(&layout, &[]).unwrap();
        let region = memory.iter().next().unwrap();
        let host = region.get_host_address(MemoryRegionAddress(0)).unwrap() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        // Each mapping's entry starts with "START-END ..." in hex and ends with its "VmFlags:"
        // line, where "hg" means MADV_HUGEPAGE. The kernel may have merged the mapping with a
        // neighbour, so look for the entry that contains the address.
        let mut inside = false;
        let mut flags = None;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().and_then(|field| {
                let (start, end) = field.split_once('-')?;
                Some((
                    usize::from_str_radix(start, 16).ok()?,
                    usize::from_str_radix(end, 16).ok()?,
                ))
            });
            if let Some((start, end)) = range {
                inside = (start..end).contains(&host);
            } else if let Some(rest) = line.strip_prefix("VmFlags:") {
                if inside {
                    flags = Some(rest.to_string());
                    break;
                }
            }
        }
        let flags = flags.expect("guest memory mapping in /proc/self/smaps");
        assert!(
            flags.split_whitespace().any(|flag| flag == "hg"),
            "VmFlags of the guest memory mapping: {flags}"
        );
    }
}
