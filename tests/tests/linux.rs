//! Linux kernels packed with `igvm_loader::linux::pack_kernel` and booted on igvmm.
//!
//! A stub kernel, a few hundred bytes of 64-bit code assembled here and wrapped as an ELF
//! vmlinux or as a bzImage, takes the kernel's place. It prints on COM1 what the boot shim
//! handed it (RSI, the segments, `boot_params`: e820 table, command line, initrd, RSDP) and
//! stops through the debug-exit port, so each test compares exact text.
//!
//! `debian_kernel_prints_banner` boots the kernel and initramfs that scripts/fetch-linux.sh
//! leaves in `linux-guest/` (or `$LINUX_GUEST`), when they are there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use iced_x86::code_asm::*;
use igvm_loader::linux::layout::FAILURE_EXIT_VALUE;
use igvm_loader::linux::table_loader::{self, FileRef, FileSource, Zone};
use igvm_loader::linux::{pack_kernel_with_layout, KernelPackOptions, PackedKernel};
use igvmm_tests::asm::{GuestAsm, Mode};
use igvmm_tests::harness::{boot, debug_exit, Outcome, VmConfig};
use igvmm_tests::layout::lapic::{
    BASE as LAPIC_BASE, ICR_HIGH as LAPIC_ICR_HIGH, ICR_INIT, ICR_LOW as LAPIC_ICR_LOW,
    ICR_STARTUP, SVR as LAPIC_SVR,
};
use sha2::{Digest, Sha256};
use vmm::{DebugconConfig, GuestImage, SharedBuffer, StopReason};

/// Physical address of the stub kernel (Linux's default `LOAD_PHYSICAL_ADDR`).
const KERNEL_GPA: u64 = 0x100_0000;
/// Stack of the stub, in RAM below the kernel.
const STUB_STACK_TOP: u64 = 0x80_0000;
/// What the stub writes to the debug-exit port when it has printed everything.
const STUB_EXIT_VALUE: u8 = 0x2a;
/// Virtual address Linux links the kernel at, for the ELF program header.
const KERNEL_VIRTUAL: u64 = 0xffff_ffff_8100_0000;

/// Assembles the stub for `origin`: it prints `boot_params` and exits.
fn stub_kernel(origin: u64) -> Vec<u8> {
    let mut g = GuestAsm::new(Mode::Long).unwrap();
    g.a.mov(r15, rsi).unwrap();
    g.a.mov(rsp, STUB_STACK_TOP).unwrap();

    g.print("stub rsi=").unwrap();
    g.print_hex64(r15, 16).unwrap();
    g.a.mov(ax, cs).unwrap();
    g.a.movzx(eax, ax).unwrap();
    g.print(" cs=").unwrap();
    g.print_hex32(eax, 4).unwrap();
    g.a.mov(ax, ds).unwrap();
    g.a.movzx(eax, ax).unwrap();
    g.print(" ds=").unwrap();
    g.print_hex32(eax, 4).unwrap();
    g.a.pushfq().unwrap();
    g.a.pop(rax).unwrap();
    g.a.and(eax, 0x200).unwrap();
    g.print(" if=").unwrap();
    g.print_hex32(eax, 3).unwrap();

    g.print("\nloader=").unwrap();
    g.a.movzx(eax, byte_ptr(r15 + 0x210)).unwrap();
    g.print_hex32(eax, 2).unwrap();
    g.print(" version=").unwrap();
    g.a.movzx(eax, word_ptr(r15 + 0x206)).unwrap();
    g.print_hex32(eax, 4).unwrap();
    g.print(" code32_start=").unwrap();
    g.a.mov(eax, dword_ptr(r15 + 0x214)).unwrap();
    g.print_hex32(eax, 8).unwrap();
    g.print(" sentinel=").unwrap();
    g.a.movzx(eax, byte_ptr(r15 + 0x1ef)).unwrap();
    g.print_hex32(eax, 2).unwrap();

    // e820_entries at 0x1e8, then each 20-byte entry from 0x2d0.
    g.print("\ne820 ").unwrap();
    g.a.movzx(r13d, byte_ptr(r15 + 0x1e8)).unwrap();
    g.print_hex32(r13d, 2).unwrap();
    g.print("\n").unwrap();
    g.a.lea(r12, qword_ptr(r15 + 0x2d0)).unwrap();
    let mut next = g.a.create_label();
    let mut done = g.a.create_label();
    g.a.set_label(&mut next).unwrap();
    g.a.test(r13d, r13d).unwrap();
    g.a.jz(done).unwrap();
    g.print("e820 ").unwrap();
    g.a.mov(rax, qword_ptr(r12)).unwrap();
    g.print_hex64(rax, 16).unwrap();
    g.print(" ").unwrap();
    g.a.mov(rax, qword_ptr(r12 + 8)).unwrap();
    g.print_hex64(rax, 16).unwrap();
    g.print(" ").unwrap();
    g.a.mov(eax, dword_ptr(r12 + 16)).unwrap();
    g.print_hex32(eax, 8).unwrap();
    g.print("\n").unwrap();
    g.a.add(r12, 20).unwrap();
    g.a.dec(r13d).unwrap();
    g.a.jmp(next).unwrap();
    g.a.set_label(&mut done).unwrap();

    // cmd_line_ptr at 0x228.
    g.print("cmdline=").unwrap();
    g.a.mov(esi, dword_ptr(r15 + 0x228)).unwrap();
    g.call_puts().unwrap();

    // ramdisk_image at 0x218, ramdisk_size at 0x21c, then the first 16 bytes of the initrd.
    g.print("\ninitrd=").unwrap();
    g.a.mov(eax, dword_ptr(r15 + 0x218)).unwrap();
    g.print_hex32(eax, 8).unwrap();
    g.print(" ").unwrap();
    g.a.mov(eax, dword_ptr(r15 + 0x21c)).unwrap();
    g.print_hex32(eax, 8).unwrap();
    g.print(" ").unwrap();
    let mut no_initrd = g.a.create_label();
    g.a.cmp(dword_ptr(r15 + 0x21c), 0).unwrap();
    g.a.je(no_initrd).unwrap();
    g.a.mov(esi, dword_ptr(r15 + 0x218)).unwrap();
    g.a.mov(ebp, 16u32).unwrap();
    g.call_hexdump().unwrap();
    g.a.set_label(&mut no_initrd).unwrap();

    // acpi_rsdp_addr at 0x70: the address, the signature, and the signature of the table the
    // RSDP's XsdtAddress (offset 24) points to.
    g.print("\nrsdp=").unwrap();
    g.a.mov(r14, qword_ptr(r15 + 0x70)).unwrap();
    g.print_hex64(r14, 8).unwrap();
    g.print(" ").unwrap();
    for index in 0..8 {
        g.a.mov(al, byte_ptr(r14 + index)).unwrap();
        g.call_putc().unwrap();
    }
    g.print(" xsdt=").unwrap();
    g.a.mov(r13, qword_ptr(r14 + 24)).unwrap();
    for index in 0..4 {
        g.a.mov(al, byte_ptr(r13 + index)).unwrap();
        g.call_putc().unwrap();
    }
    g.print("\n").unwrap();
    g.exit(STUB_EXIT_VALUE).unwrap();
    g.assemble(origin).unwrap()
}

/// Wraps `code` as an ELF64 vmlinux with one PT_LOAD segment at [`KERNEL_GPA`], linked at
/// [`KERNEL_VIRTUAL`], with a physical entry point as Linux's `ENTRY(phys_startup_64)` gives.
fn elf_kernel(code: &[u8]) -> Vec<u8> {
    let mut file = vec![0u8; 0x1000];
    file[..4].copy_from_slice(b"\x7fELF");
    file[4] = 2; // 64-bit
    file[5] = 1; // little-endian
    file[6] = 1; // ELF version
    file[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    file[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    file[20..24].copy_from_slice(&1u32.to_le_bytes());
    file[24..32].copy_from_slice(&KERNEL_GPA.to_le_bytes());
    file[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    file[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    file[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    file[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let header = &mut file[64..120];
    header[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    header[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    header[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
    header[16..24].copy_from_slice(&KERNEL_VIRTUAL.to_le_bytes());
    header[24..32].copy_from_slice(&KERNEL_GPA.to_le_bytes());
    header[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    header[40..48].copy_from_slice(&(code.len() as u64).to_le_bytes());
    header[48..56].copy_from_slice(&0x20_0000u64.to_le_bytes());
    file.extend_from_slice(code);
    file
}

/// Wraps `code` as a bzImage: one setup sector after the boot sector, boot protocol 2.15,
/// relocatable with `pref_address` [`KERNEL_GPA`], and a protected-mode part whose 64-bit
/// entry point (offset 0x200) is `code`.
fn bzimage_kernel(code: &[u8], cmdline_size: u32) -> Vec<u8> {
    let mut image = vec![0u8; 1024];
    image[0x1f1] = 1; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x200] = 0xeb; // jmp short to the end of the header at 0x26c
    image[0x201] = 0x6a;
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 0x01; // LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    image[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    image[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
    image[0x234] = 1; // relocatable_kernel
    image[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
    image[0x238..0x23c].copy_from_slice(&cmdline_size.to_le_bytes());
    image[0x258..0x260].copy_from_slice(&KERNEL_GPA.to_le_bytes());
    image[0x260..0x264].copy_from_slice(&0x20_0000u32.to_le_bytes()); // init_size
                                                                      // The 32-bit entry at offset 0 is never used: fill it with int3.
    image.extend_from_slice(&[0xcc; 0x200]);
    image.extend_from_slice(code);
    image
}

fn initrd_bytes() -> Vec<u8> {
    let mut initrd = b"stub-initrd-0123".to_vec();
    initrd.extend((0..5000u32).map(|i| (i % 251) as u8));
    initrd
}

fn pack(kernel: Vec<u8>, initrd: Option<Vec<u8>>, command_line: &str) -> PackedKernel {
    pack_kernel_with_layout(&KernelPackOptions {
        kernel,
        initrd,
        command_line: command_line.to_string(),
    })
    .unwrap()
}

/// The e820 lines the stub prints for the default 128 MiB test machine.
const E820_128M: &str = "\
e820 07
e820 0000000000000000 0000000000008000 00000001
e820 0000000000008000 0000000000028000 00000002
e820 0000000000030000 0000000000010000 00000003
e820 0000000000040000 0000000000060000 00000001
e820 00000000000a0000 0000000000060000 00000002
e820 0000000000100000 0000000007f00000 00000001
e820 00000000feffc000 0000000000004000 00000002
";

fn run(packed: &PackedKernel, config: &VmConfig) -> Outcome {
    boot(&packed.igvm, config).unwrap()
}

#[test]
fn elf_stub_receives_boot_params() {
    let packed = pack(
        elf_kernel(&stub_kernel(KERNEL_GPA)),
        Some(initrd_bytes()),
        "console=ttyS0 stub=elf",
    );
    let (initrd_gpa, initrd_size) = packed.layout.initrd.unwrap();
    assert_eq!(initrd_gpa, 0x120_0000);
    let outcome = run(&packed, &VmConfig::default());
    let expected = format!(
        "stub rsi=000000000000a000 cs=0010 ds=0018 if=000\n\
         loader=ff version=0000 code32_start=00000000 sentinel=00\n\
         {E820_128M}\
         cmdline=console=ttyS0 stub=elf\n\
         initrd={initrd_gpa:08x} {initrd_size:08x} {}\n\
         rsdp=000f0000 RSD PTR  xsdt=XSDT\n",
        hex::encode(b"stub-initrd-0123")
    );
    assert_eq!(outcome.text(), expected);
    assert_eq!(outcome.stop, debug_exit(STUB_EXIT_VALUE));
}

#[test]
fn bzimage_stub_gets_command_line_override() {
    let packed = pack(
        bzimage_kernel(&stub_kernel(KERNEL_GPA + 0x200), 2048),
        Some(initrd_bytes()),
        "console=ttyS0 default",
    );
    assert_eq!(packed.layout.entry, KERNEL_GPA + 0x200);
    let config = VmConfig {
        cmdline: Some("console=ttyS0 from-run".to_string()),
        ..VmConfig::default()
    };
    let outcome = run(&packed, &config);
    let expected = format!(
        "stub rsi=000000000000a000 cs=0010 ds=0018 if=000\n\
         loader=ff version=020f code32_start=01000000 sentinel=00\n\
         {E820_128M}\
         cmdline=console=ttyS0 from-run\n\
         initrd=01200000 {:08x} {}\n\
         rsdp=000f0000 RSD PTR  xsdt=XSDT\n",
        initrd_bytes().len(),
        hex::encode(b"stub-initrd-0123")
    );
    assert_eq!(outcome.text(), expected);
    assert_eq!(outcome.stop, debug_exit(STUB_EXIT_VALUE));
}

#[test]
fn stub_without_initrd_on_two_cpus() {
    let packed = pack(elf_kernel(&stub_kernel(KERNEL_GPA)), None, "");
    let config = VmConfig {
        cpus: 2,
        memory: 256 << 20,
        ..VmConfig::default()
    };
    let outcome = run(&packed, &config);
    let text = outcome.text();
    // The shim and the stub run once, on the BSP; the AP waits for INIT/SIPI.
    assert_eq!(text.matches("stub rsi=").count(), 1, "{text}");
    assert!(
        text.contains("e820 0000000000100000 000000000ff00000 00000001\n"),
        "{text}"
    );
    assert!(
        text.contains("cmdline=\ninitrd=00000000 00000000 \n"),
        "{text}"
    );
    assert_eq!(outcome.stop, debug_exit(STUB_EXIT_VALUE));
}

#[test]
fn shim_reports_command_line_too_long() {
    let packed = pack(
        bzimage_kernel(&stub_kernel(KERNEL_GPA + 0x200), 16),
        None,
        "",
    );
    let command_line = "console=ttyS0 longer-than-16";
    let config = VmConfig {
        cmdline: Some(command_line.to_string()),
        ..VmConfig::default()
    };
    let outcome = run(&packed, &config);
    assert_eq!(
        outcome.text(),
        format!(
            "igvmm-linux-shim: the command line is {} characters but the kernel accepts at most 16\n",
            command_line.len()
        )
    );
    assert_eq!(outcome.stop, debug_exit(FAILURE_EXIT_VALUE));
}

#[test]
fn shim_reports_progress_on_debug_console() {
    let packed = pack(elf_kernel(&stub_kernel(KERNEL_GPA)), None, "console=ttyS0");
    let debugcon = SharedBuffer::new();
    let mut config = vmm::VmConfig::new(GuestImage::Igvm(packed.igvm));
    config.memory_bytes = 128 << 20;
    config.debugcon = DebugconConfig::Capture(debugcon.clone());
    let stop = config.stop.clone();
    let (sender, receiver) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = sender.send(vmm::run_vm(config));
    });
    let result = match receiver.recv_timeout(Duration::from_secs(60)) {
        Ok(result) => result,
        Err(error) => {
            stop.request_stop();
            panic!(
                "the VM did not stop: {error}; debug console: {}",
                debugcon.text()
            );
        }
    };
    thread.join().unwrap();
    assert_eq!(result.unwrap(), debug_exit(STUB_EXIT_VALUE));

    let tables = devices::acpi::build_fw_cfg_files(1).unwrap().tables.len();
    assert_eq!(
        debugcon.text(),
        format!(
            "igvmm-linux-shim: 7 e820 entries\n\
             igvmm-linux-shim: default command line, 13 characters\n\
             igvmm-linux-shim: \"etc/acpi/tables\" at 0x30000, {tables} bytes\n\
             igvmm-linux-shim: \"etc/acpi/rsdp\" at 0xf0000, 36 bytes\n\
             igvmm-linux-shim: RSDP at 0xf0000\n\
             igvmm-linux-shim: starting the kernel at 0x1000000\n"
        )
    );
}

/// fw_cfg files held in memory, for running the table loader on the host.
struct Files(Vec<(&'static str, Vec<u8>)>);

impl FileSource for Files {
    fn find(&mut self, name: &[u8]) -> Option<FileRef> {
        let index = self
            .0
            .iter()
            .position(|(file, _)| file.as_bytes() == name)?;
        Some(FileRef {
            key: index as u16,
            size: self.0[index].1.len() as u32,
        })
    }

    fn read(&mut self, file: FileRef, dest: &mut [u8]) -> bool {
        let data = &self.0[usize::from(file.key)].1;
        dest.copy_from_slice(&data[..dest.len()]);
        true
    }
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte))
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

/// Runs the shim's table loader on igvmm's own ACPI files and walks the result the way an OS
/// does: RSDP, XSDT, each table, FADT to DSDT.
#[test]
fn table_loader_links_igvmm_acpi_tables() {
    let acpi = devices::acpi::build_fw_cfg_files(4).unwrap();
    let mut files = Files(vec![
        ("etc/acpi/rsdp", acpi.rsdp.clone()),
        ("etc/acpi/tables", acpi.tables.clone()),
    ]);
    const HIGH: u64 = 0x30000;
    const FSEG: u64 = 0xf0000;
    let mut high_memory = vec![0u8; 0x10000];
    let mut fseg_memory = vec![0u8; 0x10000];
    {
        let mut high = Zone::new(HIGH, &mut high_memory);
        let mut fseg = Zone::new(FSEG, &mut fseg_memory);
        let placement =
            table_loader::run(&acpi.table_loader, &mut files, &mut high, &mut fseg).unwrap();
        assert_eq!(table_loader::find_rsdp(&placement, &high, &fseg), Ok(FSEG));
    }

    let memory_at = |gpa: u64, len: usize| -> Vec<u8> {
        let (zone, base) = if gpa >= FSEG {
            (&fseg_memory, FSEG)
        } else {
            (&high_memory, HIGH)
        };
        let offset = (gpa - base) as usize;
        zone[offset..offset + len].to_vec()
    };

    let rsdp = memory_at(FSEG, 36);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(checksum(&rsdp[..20]), 0, "RSDP checksum");
    assert_eq!(checksum(&rsdp), 0, "RSDP extended checksum");
    let xsdt_address = read_u64(&rsdp, 24);
    assert!((HIGH..HIGH + acpi.tables.len() as u64).contains(&xsdt_address));

    let table = |gpa: u64| -> Vec<u8> {
        let header = memory_at(gpa, 36);
        let length = u32::from_le_bytes(header[4..8].try_into().unwrap()) as usize;
        memory_at(gpa, length)
    };
    let xsdt = table(xsdt_address);
    assert_eq!(&xsdt[..4], b"XSDT");
    assert_eq!(checksum(&xsdt), 0, "XSDT checksum");
    let mut signatures = Vec::new();
    for entry in xsdt[36..].chunks_exact(8) {
        let address = u64::from_le_bytes(entry.try_into().unwrap());
        let body = table(address);
        let signature = String::from_utf8_lossy(&body[..4]).into_owned();
        assert_eq!(checksum(&body), 0, "{signature} checksum");
        if signature == "FACP" {
            // X_DSDT at offset 140 of the FADT.
            let dsdt = table(read_u64(&body, 140));
            assert_eq!(&dsdt[..4], b"DSDT");
            assert_eq!(checksum(&dsdt), 0, "DSDT checksum");
        }
        if signature == "APIC" {
            // One 8-byte Processor Local APIC structure (type 0) per CPU after the 44-byte
            // MADT header.
            let mut offset = 44;
            let mut count = 0;
            while offset + 2 <= body.len() {
                if body[offset] == 0 {
                    count += 1;
                }
                offset += usize::from(body[offset + 1]).max(1);
            }
            assert_eq!(count, 4, "local APICs in the MADT");
        }
        signatures.push(signature);
    }
    signatures.sort();
    assert_eq!(signatures, vec!["APIC", "FACP"]);
}

/// Returns the folder where scripts/fetch-linux.sh leaves the Debian kernel and initramfs:
/// `$LINUX_GUEST`, or `linux-guest/` in the repository.
fn linux_guest_dir() -> PathBuf {
    match std::env::var_os("LINUX_GUEST") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../linux-guest"),
    }
}

/// A stand-in CoRIM document that igvmm serves as `opt/igvm/corim`; the initramfs prints its
/// SHA-256. It is CBOR tag 501 (unsigned CoRIM) around `{0: "igvmm-linux-test"}`, which igvmm
/// accepts with a warning when `strict_corim` is off.
const TEST_CORIM: &[u8] = b"\xd9\x01\xf5\xa1\x00\x70igvmm-linux-test";

#[test]
fn debian_kernel_prints_banner() {
    let dir = linux_guest_dir();
    let (Ok(kernel), Ok(initrd)) = (
        std::fs::read(dir.join("vmlinux")),
        std::fs::read(dir.join("initrd.img")),
    ) else {
        eprintln!(
            "skipped: {} has no vmlinux and initrd.img; run scripts/fetch-linux.sh to fetch them",
            dir.display()
        );
        return;
    };

    let packed = pack(
        kernel,
        Some(initrd),
        "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 rdinit=/init",
    );
    let file = igvm_loader::corim::add_or_replace(
        &packed.igvm,
        igvm_loader::builder::NATIVE_COMPATIBILITY_MASK,
        TEST_CORIM,
        None,
    )
    .unwrap();
    let config = VmConfig {
        memory: 512 << 20,
        timeout: Duration::from_secs(300),
        ..VmConfig::default()
    };

    let outcome = boot(&file, &config).unwrap();
    let text = outcome.text();
    assert!(
        text.contains("Linux version"),
        "no kernel banner; stop: {}; serial output:\n{text}",
        outcome.stop
    );
    if let StopReason::KvmFailure(report) = &outcome.stop {
        if report.summary.contains("KVM_EXIT_INTERNAL_ERROR") {
            eprintln!(
                "skipped the rest: the kernel printed its banner, then KVM stopped it with {} \
                 (this host's kvm_pvm cannot run Linux)",
                report.summary
            );
            return;
        }
    }

    let expected = format!(
        "{}  /sys/firmware/qemu_fw_cfg/by_name/opt/igvm/corim/raw",
        hex::encode(Sha256::digest(TEST_CORIM))
    );
    assert!(
        text.contains(&expected),
        "no CoRIM hash line {expected:?}; stop: {}; serial output:\n{text}",
        outcome.stop
    );
    // igvmm's ACPI tables offer no power-off, so `poweroff -f` ends with every vCPU halted.
    assert_eq!(
        outcome.stop,
        StopReason::AllHalted,
        "the kernel did not power off cleanly: {}",
        outcome.stop
    );
}

/// Where the SMP stub copies its real-mode AP start-up code: usable RAM below 1 MiB in the
/// shim's e820 map, as a SIPI vector requires. The AP starts with CS = 0x5000, IP = 0.
const AP_TRAMPOLINE_GPA: u64 = 0x5_0000;
/// Offset in the trampoline's segment of the byte an AP sets once it has printed.
const AP_FLAG_OFFSET: u32 = 0x1000;
/// Offset in the trampoline's segment of the AP's stack top.
const AP_STACK_OFFSET: u32 = 0x2000;

/// Assembles the AP start-up code: print the APIC ID from CPUID, set the flag, halt.
fn ap_trampoline() -> Vec<u8> {
    let mut g = GuestAsm::new(Mode::Real).unwrap();
    g.a.mov(ax, cs).unwrap();
    g.a.mov(ds, ax).unwrap();
    g.a.mov(ss, ax).unwrap();
    g.a.mov(sp, AP_STACK_OFFSET).unwrap();
    g.a.mov(eax, 1u32).unwrap();
    g.a.cpuid().unwrap();
    g.a.shr(ebx, 24).unwrap();
    g.print("ap apic=").unwrap();
    g.print_hex32(ebx, 2).unwrap();
    g.print("\n").unwrap();
    g.a.mov(byte_ptr(AP_FLAG_OFFSET), 1u32).unwrap();
    g.halt_forever().unwrap();
    g.assemble(0).unwrap()
}

/// Assembles a stub that starts the application processors as Linux does. It follows
/// `acpi_rsdp_addr` to the XSDT and the MADT. For every enabled local APIC entry other than its
/// own, it sends INIT and a start-up IPI through its local APIC. Each AP runs [`ap_trampoline`],
/// and the stub waits for it before it starts the next. At the end it prints the count.
fn smp_stub_kernel(origin: u64) -> Vec<u8> {
    const FLAG_GPA: u64 = AP_TRAMPOLINE_GPA + AP_FLAG_OFFSET as u64;

    let trampoline = ap_trampoline();
    let mut g = GuestAsm::new(Mode::Long).unwrap();
    let mut trampoline_bytes = g.a.create_label();
    g.a.mov(r15, rsi).unwrap();
    g.a.mov(rsp, STUB_STACK_TOP).unwrap();
    g.a.cld().unwrap();
    g.a.lea(rsi, ptr(trampoline_bytes)).unwrap();
    g.a.mov(rdi, AP_TRAMPOLINE_GPA).unwrap();
    g.a.mov(ecx, trampoline.len() as u32).unwrap();
    g.a.rep().movsb().unwrap();

    // r12d is this CPU's APIC ID, and r9d counts the CPUs running.
    g.a.mov(eax, 1u32).unwrap();
    g.a.cpuid().unwrap();
    g.a.shr(ebx, 24).unwrap();
    g.a.mov(r12d, ebx).unwrap();
    g.a.mov(r9d, 1u32).unwrap();
    g.a.mov(rdi, LAPIC_BASE).unwrap();
    g.a.mov(dword_ptr(rdi + LAPIC_SVR), 0x1ffu32).unwrap();

    // The XSDT's entries start at offset 36; find the one whose signature is "APIC".
    let mut no_madt = g.a.create_label();
    let mut next_table = g.a.create_label();
    let mut found = g.a.create_label();
    g.a.mov(r14, qword_ptr(r15 + 0x70)).unwrap();
    g.a.mov(r13, qword_ptr(r14 + 24)).unwrap();
    g.a.mov(r10d, dword_ptr(r13 + 4)).unwrap();
    g.a.add(r10, r13).unwrap();
    g.a.add(r13, 36).unwrap();
    g.a.set_label(&mut next_table).unwrap();
    g.a.cmp(r13, r10).unwrap();
    g.a.jae(no_madt).unwrap();
    g.a.mov(rax, qword_ptr(r13)).unwrap();
    g.a.add(r13, 8).unwrap();
    g.a.cmp(dword_ptr(rax), u32::from_le_bytes(*b"APIC"))
        .unwrap();
    g.a.jne(next_table).unwrap();
    g.a.jmp(found).unwrap();
    g.a.set_label(&mut no_madt).unwrap();
    g.print("no MADT\n").unwrap();
    g.exit(1).unwrap();

    // MADT entries start at offset 44: type, length, then for type 0 the processor ID, the
    // APIC ID and the flags (bit 0: enabled).
    g.a.set_label(&mut found).unwrap();
    let mut next_entry = g.a.create_label();
    let mut skip = g.a.create_label();
    let mut done = g.a.create_label();
    let mut wait_ap = g.a.create_label();
    g.a.mov(r14d, dword_ptr(rax + 4)).unwrap();
    g.a.add(r14, rax).unwrap();
    g.a.lea(r13, qword_ptr(rax + 44)).unwrap();
    g.a.set_label(&mut next_entry).unwrap();
    g.a.cmp(r13, r14).unwrap();
    g.a.jae(done).unwrap();
    g.a.movzx(r10d, byte_ptr(r13 + 1)).unwrap();
    g.a.test(r10d, r10d).unwrap();
    g.a.jz(done).unwrap();
    g.a.cmp(byte_ptr(r13), 0).unwrap();
    g.a.jne(skip).unwrap();
    g.a.test(byte_ptr(r13 + 4), 1).unwrap();
    g.a.jz(skip).unwrap();
    g.a.movzx(r11d, byte_ptr(r13 + 3)).unwrap();
    g.print("madt lapic=").unwrap();
    g.print_hex32(r11d, 2).unwrap();
    g.print("\n").unwrap();
    g.a.cmp(r11d, r12d).unwrap();
    g.a.je(skip).unwrap();
    g.a.mov(rdx, FLAG_GPA).unwrap();
    g.a.mov(byte_ptr(rdx), 0u32).unwrap();
    g.a.mov(rdi, LAPIC_BASE).unwrap();
    g.a.mov(eax, r11d).unwrap();
    g.a.shl(eax, 24).unwrap();
    g.a.mov(dword_ptr(rdi + LAPIC_ICR_HIGH), eax).unwrap();
    g.a.mov(dword_ptr(rdi + LAPIC_ICR_LOW), ICR_INIT).unwrap();
    g.a.mov(dword_ptr(rdi + LAPIC_ICR_HIGH), eax).unwrap();
    g.a.mov(
        dword_ptr(rdi + LAPIC_ICR_LOW),
        ICR_STARTUP | (AP_TRAMPOLINE_GPA >> 12) as u32,
    )
    .unwrap();
    g.a.set_label(&mut wait_ap).unwrap();
    g.a.pause().unwrap();
    g.a.cmp(byte_ptr(rdx), 1).unwrap();
    g.a.jne(wait_ap).unwrap();
    g.a.inc(r9d).unwrap();
    g.a.set_label(&mut skip).unwrap();
    g.a.add(r13, r10).unwrap();
    g.a.jmp(next_entry).unwrap();

    g.a.set_label(&mut done).unwrap();
    g.print("cpus up=").unwrap();
    g.print_hex32(r9d, 2).unwrap();
    g.print("\n").unwrap();
    g.exit(STUB_EXIT_VALUE).unwrap();
    g.a.set_label(&mut trampoline_bytes).unwrap();
    g.a.db(&trampoline).unwrap();
    g.assemble(origin).unwrap()
}

#[test]
fn stub_starts_aps_from_madt() {
    let packed = pack(elf_kernel(&smp_stub_kernel(KERNEL_GPA)), None, "");
    let config = VmConfig {
        cpus: 3,
        memory: 256 << 20,
        ..VmConfig::default()
    };
    let outcome = run(&packed, &config);
    assert_eq!(
        outcome.text(),
        "madt lapic=00\n\
         madt lapic=01\n\
         ap apic=01\n\
         madt lapic=02\n\
         ap apic=02\n\
         cpus up=03\n"
    );
    assert_eq!(outcome.stop, debug_exit(STUB_EXIT_VALUE));
}

#[test]
fn small_memory_names_needed_size() {
    let packed = pack(
        elf_kernel(&stub_kernel(KERNEL_GPA)),
        Some(initrd_bytes()),
        "",
    );
    let config = VmConfig {
        memory: 8 << 20,
        ..VmConfig::default()
    };
    let error = boot(&packed.igvm, &config).unwrap_err().to_string();
    // The first page above 8 MiB is the kernel's at 16 MiB. The initrd's last page, just above
    // 18 MiB, sets the --memory that covers every page.
    assert!(
        error.contains("the image places a page at GPA 0x1000000, outside guest RAM"),
        "{error}"
    );
    assert!(
        error.contains("; run with --memory 19M or more;"),
        "{error}"
    );
}
