//! Writes an IGVM file for measurement benchmarks: `SIZE_MIB` MiB of pseudo-random 4 KiB page
//! data for SEV-SNP and TDX, an SEV-SNP guest policy and a KVM-form VMSA at the end. The same page
//! bytes, concatenated, go to `PAGES_OUT`, so a reference tool can hash them.
//!
//! Usage: `cargo run --release -p vmm --example bench_igvm -- SIZE_MIB IGVM_OUT PAGES_OUT`

use std::process::ExitCode;

use igvm::snp_defs::{SevFeatures, SevSelector, SevVmsa};
use igvm::{
    IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader, IgvmRevision,
};
use igvm_defs::{
    IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType, IGVM_VHS_SUPPORTED_PLATFORM,
};
use zerocopy::FromZeros;

/// First GPA of the page data.
const BASE_GPA: u64 = 0x10_0000;

fn vmsa() -> Box<SevVmsa> {
    let mut vmsa = SevVmsa::new_box_zeroed().unwrap_or_else(|_| std::process::abort());
    let flat = SevSelector {
        selector: 0x10,
        attrib: 0xC93,
        limit: 0xFFFF_FFFF,
        base: 0,
    };
    vmsa.es = flat;
    vmsa.ss = flat;
    vmsa.ds = flat;
    vmsa.fs = flat;
    vmsa.gs = flat;
    vmsa.cs = SevSelector {
        selector: 8,
        attrib: 0xC9B,
        ..flat
    };
    vmsa.efer = 0x1000;
    vmsa.cr0 = 0x31;
    vmsa.cr4 = 0x40;
    vmsa.xcr0 = 1;
    vmsa.rflags = 2;
    vmsa.rip = BASE_GPA;
    vmsa.pat = 0x0007_0406_0007_0406;
    vmsa.sev_features = SevFeatures::from_bits(1);
    vmsa
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, size, igvm_out, pages_out] = args.as_slice() else {
        return Err("usage: bench_igvm SIZE_MIB IGVM_OUT PAGES_OUT".into());
    };
    let size: u64 = size
        .parse()
        .map_err(|error| format!("SIZE_MIB {size:?}: {error}"))?;
    let pages = size * 256;

    // xorshift64: fast, reproducible page contents that no hash can shortcut.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut all_pages = Vec::with_capacity((pages * 4096) as usize);
    let mut directives = Vec::with_capacity(pages as usize + 1);
    for index in 0..pages {
        let mut data = Vec::with_capacity(4096);
        for _ in 0..512 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            data.extend_from_slice(&state.to_le_bytes());
        }
        all_pages.extend_from_slice(&data);
        directives.push(IgvmDirectiveHeader::PageData {
            gpa: BASE_GPA + index * 4096,
            compatibility_mask: 0b11,
            flags: IgvmPageDataFlags::new(),
            data_type: IgvmPageDataType::NORMAL,
            data,
        });
    }
    directives.push(IgvmDirectiveHeader::SnpVpContext {
        gpa: 0xFFFF_FFFF_F000,
        compatibility_mask: 0b01,
        vp_index: 0,
        vmsa: vmsa(),
    });
    let platform = |mask, platform_type| {
        IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
            compatibility_mask: mask,
            highest_vtl: 0,
            platform_type,
            platform_version: 1,
            shared_gpa_boundary: 0,
        })
    };
    let file = IgvmFile::new(
        IgvmRevision::V1,
        vec![
            platform(0b01, IgvmPlatformType::SEV_SNP),
            platform(0b10, IgvmPlatformType::TDX),
        ],
        vec![IgvmInitializationHeader::GuestPolicy {
            policy: 0x30000,
            compatibility_mask: 0b01,
        }],
        directives,
    )
    .map_err(|error| format!("building the file: {error}"))?;
    let mut bytes = Vec::new();
    file.serialize(&mut bytes)
        .map_err(|error| format!("serializing the file: {error}"))?;
    std::fs::write(igvm_out, &bytes).map_err(|error| format!("{igvm_out}: {error}"))?;
    std::fs::write(pages_out, &all_pages).map_err(|error| format!("{pages_out}: {error}"))?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench_igvm: {error}");
            ExitCode::FAILURE
        }
    }
}
