//! Code shared by the loader fuzz targets: the fixed host the files are loaded for, the checks
//! every accepted plan must pass, and the IGVM-aware mutations of `mutate_valid`.

use igvm_loader::host::{HostDescription, MemoryKind, MemoryRegion, PlatformChoice};
use igvm_loader::measure::{measure_snp, measure_tdx, plan_for_measurement, SnpMode};
use igvm_loader::plan::{Plan, Platform, PAGE_SIZE_2M, PAGE_SIZE_4K};
use igvm_loader::{load_parsed, parse, LoadOptions, ParsedFile};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Guest RAM below the MMIO hole: large enough for the conformance files' VMSA at 0x8FFF000.
pub const LOW_RAM: u64 = 256 * MIB;
/// Guest RAM above 4 GiB.
pub const HIGH_RAM: u64 = 64 * MIB;
/// vCPUs of the fixed host.
pub const VP_COUNT: u32 = 2;
/// Processor signature for the SEV-SNP model of KVM's reset state (a Zen 3 part).
const CPUID_1_EAX: u32 = 0x00A0_0F11;

/// Returns the host every file is loaded for: 256 MiB below 3 GiB, the 32-bit MMIO hole, 64 MiB from
/// 4 GiB, two vCPUs and small stand-ins for the ACPI tables.
pub fn host() -> HostDescription {
    HostDescription {
        memory_map: vec![
            MemoryRegion {
                base: 0,
                size: LOW_RAM,
                kind: MemoryKind::Ram,
            },
            MemoryRegion {
                base: 0xFEFF_C000,
                size: 0x4000,
                kind: MemoryKind::Reserved,
            },
            MemoryRegion {
                base: 4 * GIB,
                size: HIGH_RAM,
                kind: MemoryKind::Ram,
            },
        ],
        vp_count: VP_COUNT,
        command_line: "console=ttyS0".to_string(),
        mmio_ranges: vec![(3 * GIB, GIB)],
        madt: b"APIC table bytes".to_vec(),
        srat: b"SRAT table bytes".to_vec(),
        slit: Vec::new(),
        pptt: b"PPTT".to_vec(),
    }
}

/// Returns whether `[gpa, gpa + size)` lies in one RAM region of `host`.
fn in_ram(host: &HostDescription, gpa: u64, size: u64) -> bool {
    let Some(end) = gpa.checked_add(size) else {
        return false;
    };
    host.memory_map
        .iter()
        .filter(|region| region.kind == MemoryKind::Ram)
        .any(|region| gpa >= region.base && end <= region.base + region.size)
}

/// Asserts what a plan promises its backend: pages of 4 KiB or 2 MiB, aligned, inside RAM,
/// never overlapping, data no longer than the page, and at most one VP context per vCPU that
/// the host creates. A plan that breaks one of these would reach a backend, so the loader's
/// validation has a hole.
pub fn check_plan(plan: &Plan) {
    let host = host();
    let mut ranges = Vec::new();
    for op in &plan.operations {
        assert!(
            op.size == PAGE_SIZE_4K || op.size == PAGE_SIZE_2M,
            "{:?} has size {:#x}",
            op.source,
            op.size
        );
        assert_eq!(op.gpa % op.size, 0, "{:?} is misaligned", op.source);
        assert!(
            in_ram(&host, op.gpa, op.size),
            "{:?} at {:#x} is outside RAM",
            op.source,
            op.gpa
        );
        if let igvm_loader::plan::PageData::Bytes(bytes) = &op.data {
            assert!(
                bytes.len() as u64 <= op.size,
                "{:?} data too long",
                op.source
            );
        }
        ranges.push((op.gpa, op.gpa + op.size));
    }
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        if let [(_, first_end), (second_start, _)] = pair {
            assert!(first_end <= second_start, "plan operations overlap");
        }
    }

    let mut seen = std::collections::BTreeSet::new();
    for context in &plan.vp_contexts {
        assert!(u32::from(context.vp_index) < VP_COUNT);
        assert!(seen.insert(context.vp_index), "two contexts for one vCPU");
    }
}

fn measure(plan: &Plan) {
    match plan.platform {
        Platform::SevSnp => {
            let _ = measure_snp(plan, SnpMode::FileDigest);
            let _ = measure_snp(
                plan,
                SnpMode::KvmLaunch {
                    vcpus: VP_COUNT,
                    cpuid_1_eax: CPUID_1_EAX,
                },
            );
        }
        Platform::Tdx => {
            let _ = measure_tdx(plan);
        }
        Platform::Native | Platform::Vbs => {}
    }
}

/// Loads a parsed file for each platform on the fixed host, checks and measures each plan.
fn load_every_platform(parsed: &ParsedFile) {
    let host = host();
    for platform in [Platform::Native, Platform::SevSnp, Platform::Tdx] {
        let options = LoadOptions {
            choice: PlatformChoice::Exact(platform),
            host: host.clone(),
            relocation_base: None,
        };
        if let Ok(plan) = load_parsed(parsed, &options) {
            check_plan(&plan);
            measure(&plan);
        }
    }
    // A requested relocation base exercises the relocation and page table rebuild paths.
    let options = LoadOptions {
        choice: PlatformChoice::Auto {
            host_supports: vec![Platform::Native, Platform::SevSnp, Platform::Tdx],
        },
        host,
        relocation_base: Some(64 * MIB),
    };
    if let Ok(plan) = load_parsed(parsed, &options) {
        check_plan(&plan);
    }
}

/// Runs every loader entry point that takes a file: `parse`, the `inspect` summary, `load`
/// for each platform on the fixed host with the measurement of each plan, and the
/// measurement's own host (`igvmm measure`).
pub fn exercise_loader(data: &[u8]) {
    let Ok(parsed) = parse(data) else {
        return;
    };
    let summary = igvm_loader::inspect::summarize_parsed(&parsed);
    let _ = summary.to_string();
    load_every_platform(&parsed);
    for platform in [Platform::SevSnp, Platform::Tdx] {
        if let Ok(plan) = plan_for_measurement(data, platform, VP_COUNT) {
            measure(&plan);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// IGVM-aware mutation
// ---------------------------------------------------------------------------------------------

const FIXED_VERSION: usize = 4;
const FIXED_VARIABLE_HEADER_OFFSET: usize = 8;
const FIXED_VARIABLE_HEADER_SIZE: usize = 12;
const FIXED_TOTAL_FILE_SIZE: usize = 16;
const FIXED_CHECKSUM: usize = 20;
const FIXED_V1_SIZE: usize = 24;
const FIXED_V2_SIZE: usize = 32;

fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let field = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(field.try_into().ok()?))
}

fn write_u32(bytes: &mut [u8], offset: usize, value: u32) {
    if let Some(field) = offset
        .checked_add(4)
        .and_then(|end| bytes.get_mut(offset..end))
    {
        field.copy_from_slice(&value.to_le_bytes());
    }
}

fn write_u64(bytes: &mut [u8], offset: usize, value: u64) {
    if let Some(field) = offset
        .checked_add(8)
        .and_then(|end| bytes.get_mut(offset..end))
    {
        field.copy_from_slice(&value.to_le_bytes());
    }
}

/// The variable header section of a file, as far as its fixed header is consistent.
struct Layout {
    start: usize,
    end: usize,
}

fn find_layout(data: &[u8]) -> Option<Layout> {
    let start = read_u32(data, FIXED_VARIABLE_HEADER_OFFSET)? as usize;
    let size = read_u32(data, FIXED_VARIABLE_HEADER_SIZE)? as usize;
    let end = start.checked_add(size)?;
    (end <= data.len()).then_some(Layout { start, end })
}

/// Offsets of the variable headers (their type fields) and their padded lengths.
fn headers(data: &[u8], layout: &Layout) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut offset = layout.start;
    while offset.saturating_add(8) <= layout.end {
        let Some(length) = read_u32(data, offset + 4) else {
            break;
        };
        let span = (8 + length as usize + 7) & !7;
        if offset.saturating_add(span) > layout.end {
            break;
        }
        found.push((offset, span));
        offset += span;
    }
    found
}

/// Rewrites the total size and the checksum, so that a mutation reaches the header checks
/// instead of failing at the checksum. Does nothing when the fixed header is too damaged.
pub fn repair(data: &mut [u8]) {
    let fixed_size = match read_u32(data, FIXED_VERSION) {
        Some(2) => FIXED_V2_SIZE,
        _ => FIXED_V1_SIZE,
    };
    if data.len() < fixed_size {
        return;
    }
    let Ok(total) = u32::try_from(data.len()) else {
        return;
    };
    write_u32(data, FIXED_TOTAL_FILE_SIZE, total);
    let Some(layout) = find_layout(data) else {
        return;
    };
    let mut fixed = data.get(..fixed_size).unwrap_or_default().to_vec();
    write_u32(&mut fixed, FIXED_CHECKSUM, 0);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&fixed);
    hasher.update(data.get(layout.start..layout.end).unwrap_or_default());
    write_u32(data, FIXED_CHECKSUM, hasher.finalize());
}

/// Field values that sit on the edges the loader checks: zero, page and large-page sizes and
/// their neighbours, the MMIO hole, the end of the fixed host's RAM, and values that overflow.
const INTERESTING: [u64; 16] = [
    0,
    1,
    0xFFF,
    0x1000,
    0x1001,
    0x20_0000,
    0x1F_F000,
    LOW_RAM - 0x1000,
    LOW_RAM,
    0xC000_0000,
    0xFEE0_0000,
    0xFFFF_F000,
    0xFFFF_FFFF,
    0x1_0000_0000,
    1 << 40,
    u64::MAX,
];

/// A small deterministic generator seeded by libFuzzer's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*; the seed is never 0 after the OR.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, limit: usize) -> usize {
        if limit == 0 {
            0
        } else {
            (self.next() % limit as u64) as usize
        }
    }
}

/// Positions of the u32 file offset field in header bodies, by header type.
fn file_offset_field(header_type: u32) -> Option<usize> {
    match header_type & !0x8000_0000 {
        0x301 | 0x302 | 0x304 => Some(12),
        0x104 | 0x105 => Some(4),
        _ => None,
    }
}

/// Overwrites an aligned u32 or u64 inside one variable header body with an interesting value.
fn mutate_field(data: &mut [u8], layout: &Layout, rng: &mut Rng) -> bool {
    let found = headers(data, layout);
    let Some(&(offset, span)) = found.get(rng.below(found.len())) else {
        return false;
    };
    let body_words = (span - 8) / 4;
    if body_words == 0 {
        return false;
    }
    let field = offset + 8 + 4 * rng.below(body_words);
    let value = INTERESTING
        .get(rng.below(INTERESTING.len()))
        .copied()
        .unwrap_or(0);
    if rng.next().is_multiple_of(2) && field + 8 <= offset + span {
        write_u64(data, field, value);
    } else {
        write_u32(data, field, value as u32);
    }
    true
}

/// Copies one variable header in front of another (or removes one), moving the file data and
/// the file offsets in the other headers so that they still point at their data.
fn move_headers(
    data: &mut [u8],
    size: usize,
    max_size: usize,
    layout: &Layout,
    rng: &mut Rng,
) -> Option<usize> {
    let found = headers(data, layout);
    let &(source, span) = found.get(rng.below(found.len()))?;
    let &(target, _) = found.get(rng.below(found.len()))?;
    let remove = rng.next().is_multiple_of(3);

    let mut file = data.get(..size)?.to_vec();
    let delta: i64 = if remove {
        file.drain(source..source + span);
        -(span as i64)
    } else {
        if size + span > max_size {
            return None;
        }
        let copy = file.get(source..source + span)?.to_vec();
        file.splice(target..target, copy);
        span as i64
    };
    let variable_header_size = read_u32(&file, FIXED_VARIABLE_HEADER_SIZE)?;
    let new_size = u32::try_from(i64::from(variable_header_size) + delta).ok()?;
    write_u32(&mut file, FIXED_VARIABLE_HEADER_SIZE, new_size);
    if let Some(new_layout) = find_layout(&file) {
        for (offset, _) in headers(&file, &new_layout) {
            let Some(header_type) = read_u32(&file, offset) else {
                continue;
            };
            let Some(field) = file_offset_field(header_type) else {
                continue;
            };
            let position = offset + 8 + field;
            match read_u32(&file, position) {
                Some(0) | None => {}
                Some(value) => {
                    let moved = i64::from(value) + delta;
                    write_u32(&mut file, position, u32::try_from(moved).unwrap_or(0));
                }
            }
        }
    }
    let out = data.get_mut(..file.len())?;
    out.copy_from_slice(&file);
    Some(file.len())
}

/// Mutates a `mutate_valid` input with a header field change, a header copy or removal, or a
/// libFuzzer byte mutation, then calls [`repair`]. Returns the new size.
pub fn mutate(data: &mut [u8], size: usize, max_size: usize, seed: u32) -> usize {
    let mut rng = Rng(u64::from(seed) << 1 | 1);
    let size = size.min(data.len());
    let new_size = match (
        rng.next() % 4,
        find_layout(data.get(..size).unwrap_or_default()),
    ) {
        (0, Some(layout)) if mutate_field(data, &layout, &mut rng) => size,
        (1, Some(layout)) => move_headers(data, size, max_size, &layout, &mut rng)
            .unwrap_or_else(|| libfuzzer_sys::fuzzer_mutate(data, size, max_size)),
        _ => libfuzzer_sys::fuzzer_mutate(data, size, max_size),
    };
    if let Some(file) = data.get_mut(..new_size) {
        repair(file);
    }
    new_size
}
