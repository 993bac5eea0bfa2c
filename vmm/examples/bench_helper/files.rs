//! The large IGVM file of the load and measurement benchmarks, the memcpy reference, and the
//! TSC frequency.

use std::time::{Duration, Instant};

use igvm::IgvmInitializationHeader;
use igvm_loader::builder::{self, IgvmBuilder, PageSpec, NATIVE_COMPATIBILITY_MASK};
use igvm_loader::plan::{Platform, PAGE_SIZE_4K};

/// Compatibility mask of the SEV-SNP platform in the large file.
const SNP_MASK: u32 = 0x1;
/// Compatibility mask of the TDX platform in the large file.
const TDX_MASK: u32 = 0x4;
/// First GPA of the page data.
const DATA_GPA: u64 = 0x10_0000;
/// GPA of the page that contains the reset vector.
const RESET_PAGE_GPA: u64 = 0xFFFF_F000;
/// SEV-SNP guest policy: SMT allowed, bit 17 (reserved, must be 1) set.
const SNP_POLICY: u64 = 0x3_0000;
/// Code at the reset vector: `mov dx, 0x501; mov al, 0x10; out dx, al; hlt; jmp $-1`, so
/// the guest's first instruction leads straight to the debug exit.
const EXIT_AT_RESET: [u8; 9] = [0xBA, 0x01, 0x05, 0xB0, 0x10, 0xEE, 0xF4, 0xEB, 0xFD];

/// Returns an IGVM file with `mib` MiB of pseudo-random 4 KiB pages at 1 MiB and a reset-vector
/// page that exits at once. Every page is in the native, SEV-SNP and TDX platforms. The native
/// platform starts vCPU 0 at the reset vector; SEV-SNP gets a guest policy.
pub fn large_igvm(mib: u64) -> Result<Vec<u8>, String> {
    let mut file = IgvmBuilder::native();
    file.platform(Platform::SevSnp, SNP_MASK, 0)
        .and_then(|file| file.platform(Platform::Tdx, TDX_MASK, 0))
        .map_err(|error| error.to_string())?;
    file.initialization(IgvmInitializationHeader::GuestPolicy {
        policy: SNP_POLICY,
        compatibility_mask: SNP_MASK,
    });
    let all = NATIVE_COMPATIBILITY_MASK | SNP_MASK | TDX_MASK;
    file.set_mask(all);

    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let pages = mib * (1 << 20) / PAGE_SIZE_4K;
    let mut data = vec![0u8; PAGE_SIZE_4K as usize];
    for index in 0..pages {
        for word in data.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.page(PageSpec::normal(DATA_GPA + index * PAGE_SIZE_4K, &data))
            .map_err(|error| error.to_string())?;
    }

    let mut reset_page = vec![0u8; PAGE_SIZE_4K as usize];
    let offset = PAGE_SIZE_4K as usize - 16;
    if let Some(slot) = reset_page.get_mut(offset..offset + EXIT_AT_RESET.len()) {
        slot.copy_from_slice(&EXIT_AT_RESET);
    }
    file.page(PageSpec::normal(RESET_PAGE_GPA, &reset_page))
        .map_err(|error| error.to_string())?;
    file.set_mask(NATIVE_COMPATIBILITY_MASK);
    file.native_vp_context(0, builder::real_mode_reset_context());
    file.build().map_err(|error| error.to_string())
}

/// Copies the first `len` bytes of `source` into a new anonymous mapping, as the VMM copies
/// page data into fresh guest RAM, and returns the time the copy took. Every page of the
/// target is faulted in by the copy.
pub fn memcpy_fresh(source: &[u8], len: usize) -> Result<Duration, String> {
    let source = source
        .get(..len)
        .ok_or(format!("the source has fewer than {len} bytes"))?;
    let target = FreshMapping::new(len)?;
    let start = Instant::now();
    // SAFETY: `target` maps `len` writable bytes that nothing else references, and `source` is
    // `len` bytes of another allocation, so the ranges do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(source.as_ptr(), target.address, len) };
    let elapsed = start.elapsed();
    std::hint::black_box(target.address);
    Ok(elapsed)
}

/// An anonymous private mapping, unmapped on drop. A new mapping has no pages yet, whereas
/// malloc may return memory that an earlier allocation already faulted in.
struct FreshMapping {
    address: *mut u8,
    len: usize,
}

impl FreshMapping {
    fn new(len: usize) -> Result<Self, String> {
        // SAFETY: an anonymous mapping with no address hint has no preconditions; the result is
        // checked against MAP_FAILED.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(format!(
                "mmap of {len} bytes failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self {
            address: address.cast(),
            len,
        })
    }
}

impl Drop for FreshMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this address and length.
        unsafe { libc::munmap(self.address.cast(), self.len) };
    }
}

/// Returns the TSC frequency in Hz and its source. The sources, in order: CPUID leaf 0x15
/// (crystal clock times the TSC ratio), leaf 0x16 (base frequency in MHz), and the `cpu MHz`
/// line of /proc/cpuinfo. Linux reports the TSC frequency there when the CPU has the
/// `tsc_known_freq` flag.
pub fn tsc_hz() -> Result<(f64, String), String> {
    let max_leaf = std::arch::x86_64::__cpuid(0).eax;
    if max_leaf >= 0x15 {
        let leaf = std::arch::x86_64::__cpuid(0x15);
        if leaf.eax != 0 && leaf.ebx != 0 && leaf.ecx != 0 {
            let hz = f64::from(leaf.ecx) * f64::from(leaf.ebx) / f64::from(leaf.eax);
            return Ok((hz, "CPUID leaf 0x15".into()));
        }
    }
    if max_leaf >= 0x16 {
        let mhz = std::arch::x86_64::__cpuid(0x16).eax & 0xFFFF;
        if mhz != 0 {
            return Ok((f64::from(mhz) * 1e6, "CPUID leaf 0x16".into()));
        }
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")
        .map_err(|error| format!("reading /proc/cpuinfo failed: {error}"))?;
    let known = cpuinfo.lines().any(|line| {
        line.starts_with("flags") && line.split_whitespace().any(|flag| flag == "tsc_known_freq")
    });
    let mhz: f64 = cpuinfo
        .lines()
        .find_map(|line| {
            line.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse()
                .ok()
        })
        .ok_or("CPUID leaves 0x15 and 0x16 are empty and /proc/cpuinfo has no cpu MHz line")?;
    let source = if known {
        "host /proc/cpuinfo cpu MHz (flag tsc_known_freq; CPUID 0x15 and 0x16 are empty)"
    } else {
        "host /proc/cpuinfo cpu MHz (an estimate: no tsc_known_freq flag, CPUID 0x15 and 0x16 are empty)"
    };
    Ok((mhz * 1e6, source.into()))
}
