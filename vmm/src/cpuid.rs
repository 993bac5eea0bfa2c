//! The CPUID table of each vCPU: KVM_GET_SUPPORTED_CPUID with the topology of `--cpus`.
//!
//! Every vCPU is one core of one package, with one thread per core, and its APIC ID is its vCPU
//! index. These leaves are rewritten to describe that topology:
//! - leaf 1: initial APIC ID, logical processor count, HTT;
//! - leaves 0xB and 0x1F: x2APIC topology, filled only when the host table reaches them;
//! - leaf 4 (Intel): cores per package and threads sharing each cache;
//! - leaf 0x8000_0008 ECX (AMD): core count.
//!
//! Leaf 1 ECX bit 31 tells the guest it runs on a hypervisor. Other leaves pass through
//! unchanged.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// CPUID leaf 0x8000_0001 EDX bit 26: 1 GiB pages (Page1GB).
pub const EXT_EDX_PAGE_1GB: u32 = 1 << 26;
/// CPUID leaf 1 ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID leaf 1 EDX bit 28: the logical processor count in EBX\[23:16\] is valid (HTT).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Level type "SMT" in leaf 0xB/0x1F ECX\[15:8\].
const LEVEL_TYPE_SMT: u32 = 1;
/// Level type "Core" in leaf 0xB/0x1F ECX\[15:8\].
const LEVEL_TYPE_CORE: u32 = 2;

/// Returns the number of bits needed to number `count` items (ceil(log2(count))).
fn id_bits(count: u32) -> u32 {
    match count {
        0 | 1 => 0,
        n => u32::BITS - (n - 1).leading_zeros(),
    }
}

/// Returns the highest standard leaf in `entries` (leaf 0 EAX), or 0.
fn max_basic_leaf(entries: &[kvm_cpuid_entry2]) -> u32 {
    entries
        .iter()
        .find(|entry| entry.function == 0)
        .map_or(0, |entry| entry.eax)
}

/// Returns whether leaf 0x8000_0001 EDX offers 1 GiB pages.
pub fn offers_1gib_pages(entries: &[kvm_cpuid_entry2]) -> bool {
    entries
        .iter()
        .find(|entry| entry.function == 0x8000_0001)
        .is_some_and(|entry| entry.edx & EXT_EDX_PAGE_1GB != 0)
}

/// Returns the guest physical address width from leaf 0x8000_0008 EAX\[7:0\], or 36 when the
/// leaf is missing (the architectural default).
pub fn phys_address_bits(entries: &[kvm_cpuid_entry2]) -> u8 {
    entries
        .iter()
        .find(|entry| entry.function == 0x8000_0008)
        .map_or(36, |entry| (entry.eax & 0xFF) as u8)
}

/// Builds the entries of one x2APIC topology leaf (0xB or 0x1F) for `cpus` single-thread
/// cores: subleaf 0 is the SMT level, subleaf 1 the core level, subleaf 2 the invalid level that
/// ends the list.
fn topology_leaf(function: u32, apic_id: u32, cpus: u32) -> [kvm_cpuid_entry2; 3] {
    let entry = |index: u32, eax: u32, ebx: u32, level_type: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level_type << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    [
        entry(0, 0, 1, LEVEL_TYPE_SMT),
        entry(1, id_bits(cpus), cpus, LEVEL_TYPE_CORE),
        entry(2, 0, 0, 0),
    ]
}

/// Returns the CPUID table of vCPU `index` out of `cpus`, from the host's supported table.
pub fn for_vcpu(supported: &[kvm_cpuid_entry2], index: u32, cpus: u32) -> Vec<kvm_cpuid_entry2> {
    let apic_id = index;
    let logical_count = 1u32 << id_bits(cpus);
    let max_leaf = max_basic_leaf(supported);
    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .iter()
        .filter(|entry| entry.function != 0xB && entry.function != 0x1F)
        .copied()
        .collect();

    for entry in &mut entries {
        match entry.function {
            1 => {
                entry.ebx = (entry.ebx & 0x0000_FFFF)
                    | ((apic_id & 0xFF) << 24)
                    | ((logical_count.min(255)) << 16);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                if cpus > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            4 if entry.eax & 0x1F != 0 => {
                // EAX[31:26]: cores per package - 1. EAX[25:14]: threads sharing this cache - 1,
                // which is every core for a level-3 cache and one thread below that.
                let cache_level = (entry.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 {
                    cpus.min(4096) - 1
                } else {
                    0
                };
                entry.eax = (entry.eax & 0x3FFF) | (sharing << 14) | ((cpus.min(64) - 1) << 26);
            }
            0x8000_0008 => {
                // ECX[7:0]: cores per package - 1; ECX[15:12]: APIC ID bits for the core number.
                entry.ecx =
                    (entry.ecx & !0xF0FF) | (id_bits(cpus) << 12) | ((cpus.min(256) - 1) & 0xFF);
            }
            _ => {}
        }
    }

    if max_leaf >= 0xB {
        entries.extend(topology_leaf(0xB, apic_id, cpus));
    }
    if max_leaf >= 0x1F {
        entries.extend(topology_leaf(0x1F, apic_id, cpus));
    }
    entries
}

/// Wraps `entries` for KVM_SET_CPUID2.
pub fn to_kvm(entries: &[kvm_cpuid_entry2]) -> Result<CpuId, vmm_sys_util::fam::Error> {
    CpuId::from_entries(entries)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn host_table() -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(0, 0, 0x1F, 0x6874_7541, 0x444D_4163, 0x6974_6E65),
            leaf(1, 0, 0x00A1_0F11, 0x0102_0800, 0x0120_2000, 0x078B_FBFF),
            // An Intel-style level-1 data cache and level-3 unified cache.
            leaf(4, 0, 0x0000_0121, 0, 0, 0),
            leaf(4, 3, 0x0000_0163, 0, 0, 0),
            leaf(0xB, 0, 0, 0, 0, 1),
            leaf(0x8000_0001, 0, 0, 0, 0, 0x23D3_FBFF),
            leaf(0x8000_0008, 0, 0x3030, 0, 0x7001, 0),
        ]
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|entry| entry.function == function && entry.index == index)
            .unwrap()
    }

    #[test]
    fn leaf1_carries_apic_id_and_count() {
        let table = for_vcpu(&host_table(), 2, 3);
        let leaf1 = find(&table, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 2);
        assert_eq!((leaf1.ebx >> 16) & 0xFF, 4);
        assert_eq!(leaf1.ebx & 0xFFFF, 0x0800);
        assert_ne!(leaf1.edx & LEAF1_EDX_HTT, 0);
        assert_ne!(leaf1.ecx & LEAF1_ECX_HYPERVISOR, 0);
    }

    #[test]
    fn single_cpu_clears_htt() {
        let table = for_vcpu(&host_table(), 0, 1);
        let leaf1 = find(&table, 1, 0);
        assert_eq!(leaf1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!((leaf1.ebx >> 16) & 0xFF, 1);
    }

    #[test]
    fn topology_leaves_describe_cores() {
        let table = for_vcpu(&host_table(), 5, 6);
        for function in [0xB, 0x1F] {
            let smt = find(&table, function, 0);
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
            assert_eq!(smt.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
            let core = find(&table, function, 1);
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
            let end = find(&table, function, 2);
            assert_eq!((end.eax, end.ebx, end.ecx, end.edx), (0, 0, 2, 5));
        }
        assert_eq!(table.iter().filter(|e| e.function == 0xB).count(), 3);
    }

    #[test]
    fn leaf_0x1f_only_when_host_reaches_it() {
        let mut host = host_table();
        host[0].eax = 0x1C;
        let table = for_vcpu(&host, 0, 2);
        assert!(table.iter().all(|entry| entry.function != 0x1F));
        assert_eq!(table.iter().filter(|e| e.function == 0xB).count(), 3);
    }

    #[test]
    fn cache_and_amd_core_counts() {
        let table = for_vcpu(&host_table(), 0, 4);
        let l1 = find(&table, 4, 0);
        assert_eq!(l1.eax >> 26, 3);
        assert_eq!((l1.eax >> 14) & 0xFFF, 0);
        assert_eq!(l1.eax & 0x3FFF, 0x121);
        let l3 = find(&table, 4, 3);
        assert_eq!((l3.eax >> 14) & 0xFFF, 3);
        let amd = find(&table, 0x8000_0008, 0);
        assert_eq!(amd.ecx & 0xFF, 3);
        assert_eq!((amd.ecx >> 12) & 0xF, 2);
        assert_eq!(amd.ecx & 0xF_0000, 0);
    }

    #[test]
    fn reads_page_and_address_features() {
        let host = host_table();
        assert!(!offers_1gib_pages(&host));
        assert_eq!(phys_address_bits(&host), 0x30);
        let mut with_1g = host.clone();
        with_1g[5].edx |= EXT_EDX_PAGE_1GB;
        assert!(offers_1gib_pages(&with_1g));
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(
            [1, 2, 3, 4, 5, 8, 9, 255].map(id_bits),
            [0, 1, 2, 2, 3, 3, 4, 8]
        );
    }
}
