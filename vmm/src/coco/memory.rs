//! Private guest memory for SEV-SNP and TDX guests: guest_memfd slots, the shared half of each
//! slot, and conversions between private and shared.
//!
//! Every slot has a guest_memfd for its private pages and an anonymous mapping (the VMM's
//! `GuestMemoryMmap` region) for its shared pages (`KVM_SET_USER_MEMORY_REGION2` with
//! `KVM_MEM_GUEST_MEMFD`). KVM takes each page from one or the other according to the page's
//! `KVM_MEMORY_ATTRIBUTE_PRIVATE` attribute, which only the VMM sets. A conversion sets the
//! attribute for the range and discards the other copy: a hole is punched in the guest_memfd when
//! a range becomes shared, and the shared pages are dropped (`MADV_DONTNEED`) when it becomes
//! private. This follows the KVM API documentation (`Documentation/virt/kvm/api.rst`, sections
//! on `KVM_SET_MEMORY_ATTRIBUTES` and `KVM_EXIT_MEMORY_FAULT`) and QEMU's `kvm_convert_memory`.

use std::os::fd::{AsRawFd, OwnedFd};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::ffi::{KVM_MAP_GPA_RANGE_ENCRYPTED, KVM_MEMORY_ATTRIBUTE_PRIVATE};
use super::CocoError;

/// Size of a base page.
pub const PAGE_SIZE: u64 = 4096;

/// A range of guest physical addresses backed by one memory slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRange {
    /// First byte.
    pub gpa: u64,
    /// Length in bytes.
    pub size: u64,
}

impl GuestRange {
    /// Returns whether `[gpa, gpa + size)` lies inside this range.
    pub fn contains(&self, gpa: u64, size: u64) -> bool {
        let (Some(end), Some(own_end)) = (gpa.checked_add(size), self.gpa.checked_add(self.size))
        else {
            return false;
        };
        gpa >= self.gpa && end <= own_end
    }
}

/// Returns the ranges of the regions of `memory`, in GPA order.
pub fn ranges_of(memory: &GuestMemoryMmap) -> Vec<GuestRange> {
    let mut ranges: Vec<GuestRange> = memory
        .iter()
        .map(|region| GuestRange {
            gpa: region.start_addr().0,
            size: region.len(),
        })
        .collect();
    ranges.sort_by_key(|range| range.gpa);
    ranges
}

/// The operations a conversion needs. The SEV-SNP and TDX ops traits extend it, and their
/// recorders implement it too.
pub trait PrivateMemoryOps {
    /// `KVM_SET_MEMORY_ATTRIBUTES` for `[gpa, gpa + size)`.
    fn set_memory_attributes(&self, gpa: u64, size: u64, attributes: u64) -> Result<(), CocoError>;
    /// Releases the private copy of `[gpa, gpa + size)` (a hole punched in its guest_memfd).
    fn discard_private(&self, gpa: u64, size: u64) -> Result<(), CocoError>;
    /// Releases the shared copy of `[gpa, gpa + size)`.
    fn discard_shared(&self, gpa: u64, size: u64) -> Result<(), CocoError>;
}

impl<T: PrivateMemoryOps> PrivateMemoryOps for std::sync::Arc<T> {
    fn set_memory_attributes(&self, gpa: u64, size: u64, attributes: u64) -> Result<(), CocoError> {
        self.as_ref().set_memory_attributes(gpa, size, attributes)
    }

    fn discard_private(&self, gpa: u64, size: u64) -> Result<(), CocoError> {
        self.as_ref().discard_private(gpa, size)
    }

    fn discard_shared(&self, gpa: u64, size: u64) -> Result<(), CocoError> {
        self.as_ref().discard_shared(gpa, size)
    }
}

/// Converts `[gpa, gpa + size)` to private or shared: sets the attribute, then discards the
/// other copy. The range must be page aligned, non-empty and inside one of `ranges`.
pub fn convert(
    ops: &impl PrivateMemoryOps,
    ranges: &[GuestRange],
    gpa: u64,
    size: u64,
    to_private: bool,
) -> Result<(), CocoError> {
    if size == 0 || !gpa.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
        return Err(CocoError::InvalidConversion {
            gpa,
            size,
            reason: "the range must be non-empty and 4 KiB aligned",
        });
    }
    if !ranges.iter().any(|range| range.contains(gpa, size)) {
        return Err(CocoError::InvalidConversion {
            gpa,
            size,
            reason: "the range is not inside one guest memory slot",
        });
    }
    log::debug!(
        "converting {gpa:#x}+{size:#x} to {}",
        if to_private { "private" } else { "shared" }
    );
    if to_private {
        ops.set_memory_attributes(gpa, size, KVM_MEMORY_ATTRIBUTE_PRIVATE)?;
        ops.discard_shared(gpa, size)
    } else {
        ops.set_memory_attributes(gpa, size, 0)?;
        ops.discard_private(gpa, size)
    }
}

/// The result a `KVM_HC_MAP_GPA_RANGE` hypercall returns to the guest.
pub fn map_gpa_range(ops: &impl PrivateMemoryOps, ranges: &[GuestRange], args: &[u64; 6]) -> u64 {
    let [gpa, pages, attributes, ..] = *args;
    let to_private = attributes & KVM_MAP_GPA_RANGE_ENCRYPTED != 0;
    let Some(size) = pages.checked_mul(PAGE_SIZE) else {
        log::warn!("MAP_GPA_RANGE with {pages} pages overflows; returning EINVAL");
        return libc::EINVAL as u64;
    };
    match convert(ops, ranges, gpa, size, to_private) {
        Ok(()) => 0,
        Err(error) => {
            log::warn!("MAP_GPA_RANGE {gpa:#x}+{size:#x} failed: {error}; returning EINVAL");
            libc::EINVAL as u64
        }
    }
}

/// One guest_memfd slot.
#[derive(Debug)]
pub struct GmemSlot {
    /// The GPA range of the slot.
    pub range: GuestRange,
    /// The guest_memfd; the slot starts at offset 0.
    pub fd: OwnedFd,
}

/// The private and shared halves of guest memory on a real host.
#[derive(Debug)]
pub struct GmemBacking {
    /// The shared half: one anonymous mapping per slot.
    pub shared: GuestMemoryMmap,
    /// The private half.
    pub slots: Vec<GmemSlot>,
}

impl GmemBacking {
    /// Returns the slot holding `[gpa, gpa + size)`.
    fn slot(&self, gpa: u64, size: u64) -> Result<&GmemSlot, CocoError> {
        self.slots
            .iter()
            .find(|slot| slot.range.contains(gpa, size))
            .ok_or(CocoError::InvalidConversion {
                gpa,
                size,
                reason: "the range is not inside one guest memory slot",
            })
    }

    /// Punches a hole in the guest_memfd behind `[gpa, gpa + size)`.
    pub fn punch_hole(&self, gpa: u64, size: u64) -> Result<(), CocoError> {
        let slot = self.slot(gpa, size)?;
        let offset = gpa - slot.range.gpa;
        let (Ok(offset), Ok(length)) = (i64::try_from(offset), i64::try_from(size)) else {
            return Err(CocoError::InvalidConversion {
                gpa,
                size,
                reason: "the range does not fit an off_t",
            });
        };
        // SAFETY: fallocate only changes the file behind the descriptor, which this struct owns;
        // no memory of this process is accessed.
        let result = unsafe {
            libc::fallocate(
                slot.fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                length,
            )
        };
        if result != 0 {
            return Err(CocoError::Io {
                operation: format!("punching a hole at {gpa:#x}+{size:#x} in guest_memfd"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Drops the shared pages behind `[gpa, gpa + size)`; they read as zeros afterwards.
    pub fn drop_shared(&self, gpa: u64, size: u64) -> Result<(), CocoError> {
        self.slot(gpa, size)?;
        let host = self
            .shared
            .get_host_address(GuestAddress(gpa))
            .map_err(|error| CocoError::InvalidConversion {
                gpa,
                size,
                reason: if matches!(error, vm_memory::GuestMemoryError::InvalidGuestAddress(_)) {
                    "the range has no shared mapping"
                } else {
                    "the shared mapping cannot be addressed"
                },
            })?;
        let length = usize::try_from(size).map_err(|_| CocoError::InvalidConversion {
            gpa,
            size,
            reason: "the range does not fit the address space",
        })?;
        // SAFETY: `host..host + length` lies inside one mapping of `self.shared` (the range is
        // inside one slot, and each slot is one region). MADV_DONTNEED on a private anonymous
        // mapping only replaces the pages with zero pages, so the mapping stays valid. The guest
        // no longer uses these pages because they were just made private.
        let result = unsafe { libc::madvise(host.cast(), length, libc::MADV_DONTNEED) };
        if result != 0 {
            return Err(CocoError::Io {
                operation: format!("madvise(MADV_DONTNEED) at {gpa:#x}+{size:#x}"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// Private memory of a real VM: the VM fd for attributes and the backing for discards.
#[derive(Debug)]
pub struct KvmPrivateMemory {
    /// The VM.
    pub vm: std::sync::Arc<kvm_ioctls::VmFd>,
    /// Both halves of guest memory.
    pub backing: GmemBacking,
}

impl PrivateMemoryOps for KvmPrivateMemory {
    fn set_memory_attributes(&self, gpa: u64, size: u64, attributes: u64) -> Result<(), CocoError> {
        self.vm
            .set_memory_attributes(kvm_bindings::kvm_memory_attributes {
                address: gpa,
                size,
                attributes,
                flags: 0,
            })
            .map_err(|error| {
                CocoError::kvm(
                    format!("KVM_SET_MEMORY_ATTRIBUTES {gpa:#x}+{size:#x} = {attributes:#x}"),
                    error,
                )
            })
    }

    fn discard_private(&self, gpa: u64, size: u64) -> Result<(), CocoError> {
        self.backing.punch_hole(gpa, size)
    }

    fn discard_shared(&self, gpa: u64, size: u64) -> Result<(), CocoError> {
        self.backing.drop_shared(gpa, size)
    }
}

/// Handles the conversion exits of a running confidential VM.
#[derive(Debug)]
pub struct ConversionExits<M> {
    /// The memory to convert.
    pub memory: M,
    /// The slots' ranges.
    pub ranges: Vec<GuestRange>,
}

impl<M: PrivateMemoryOps> ConversionExits<M> {
    /// Handles `KVM_EXIT_MEMORY_FAULT`.
    pub fn memory_fault(&self, vcpu: u32, flags: u64, gpa: u64, size: u64) -> super::ExitAction {
        let to_private = flags & super::ffi::KVM_MEMORY_EXIT_FLAG_PRIVATE != 0;
        match convert(&self.memory, &self.ranges, gpa, size, to_private) {
            Ok(()) => super::ExitAction::Resume,
            Err(error) => super::ExitAction::Stop(format!(
                "vCPU {vcpu}: memory fault at {gpa:#x}+{size:#x} cannot be resolved: {error}"
            )),
        }
    }

    /// Handles `KVM_EXIT_HYPERCALL`; only `KVM_HC_MAP_GPA_RANGE` is known.
    pub fn hypercall(&self, nr: u64, args: &[u64; 6]) -> Option<u64> {
        (nr == super::ffi::KVM_HC_MAP_GPA_RANGE)
            .then(|| map_gpa_range(&self.memory, &self.ranges, args))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Calls(Mutex<Vec<String>>);

    impl PrivateMemoryOps for Calls {
        fn set_memory_attributes(
            &self,
            gpa: u64,
            size: u64,
            attributes: u64,
        ) -> Result<(), CocoError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("attr {gpa:#x} {size:#x} {attributes}"));
            Ok(())
        }
        fn discard_private(&self, gpa: u64, size: u64) -> Result<(), CocoError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("punch {gpa:#x} {size:#x}"));
            Ok(())
        }
        fn discard_shared(&self, gpa: u64, size: u64) -> Result<(), CocoError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("drop {gpa:#x} {size:#x}"));
            Ok(())
        }
    }

    const RANGES: [GuestRange; 2] = [
        GuestRange {
            gpa: 0,
            size: 0x8000_0000,
        },
        GuestRange {
            gpa: 0x1_0000_0000,
            size: 0x4000_0000,
        },
    ];

    #[test]
    fn map_gpa_range_converts_both_ways() {
        let calls = Calls::default();
        assert_eq!(map_gpa_range(&calls, &RANGES, &[0x1000, 2, 0, 0, 0, 0]), 0);
        assert_eq!(
            map_gpa_range(&calls, &RANGES, &[0x1_0000_0000, 512, 0x11, 0, 0, 0]),
            0
        );
        assert_eq!(
            *calls.0.lock().unwrap(),
            [
                "attr 0x1000 0x2000 0",
                "punch 0x1000 0x2000",
                "attr 0x100000000 0x200000 8",
                "drop 0x100000000 0x200000",
            ]
        );
    }

    #[test]
    fn map_gpa_range_rejects_bad_ranges() {
        let calls = Calls::default();
        let einval = libc::EINVAL as u64;
        // Unaligned, empty, crossing the hole between slots, and overflowing.
        assert_eq!(
            map_gpa_range(&calls, &RANGES, &[0x1001, 1, 0, 0, 0, 0]),
            einval
        );
        assert_eq!(
            map_gpa_range(&calls, &RANGES, &[0x1000, 0, 0, 0, 0, 0]),
            einval
        );
        assert_eq!(
            map_gpa_range(&calls, &RANGES, &[0x7FFF_F000, 2, 0, 0, 0, 0]),
            einval
        );
        assert_eq!(
            map_gpa_range(&calls, &RANGES, &[0, u64::MAX, 0, 0, 0, 0]),
            einval
        );
        assert!(calls.0.lock().unwrap().is_empty());
    }
}
