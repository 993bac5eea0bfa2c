//! [`run_vm`]: choose the backend, load the image, build the VM, run the vCPU threads and wait
//! for a stop.
//!
//! [`host_description`] and [`load_guest`] are the first steps of a native run on their own, so
//! that tests can inspect what the loader receives and what guest memory contains before the first
//! vCPU runs.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use igvm::IgvmDirectiveHeader;
use igvm_loader::host::{HostDescription, PlatformChoice};
use igvm_loader::plan::{HeaderRef, Plan, Platform, PAGE_SIZE_2M, PAGE_SIZE_4K};
use igvm_loader::{LoadOptions, ParsedFile};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::GuestMemoryMmap;

use crate::coco::CocoExits;
use crate::coco_run::{self, Backend};
use crate::config::{GuestImage, PlatformRequest, VmConfig};
use crate::console::{self, SerialConfig};
use crate::control::{HaltCheck, HaltDetector, Outcome, StopHandle, VcpuActivity};
use crate::error::VmmError;
use crate::exit::{StopReason, StopRequest};
use crate::machine::{self, Machine, MachineConfig};
use crate::memory::{
    self, GpaRange, HostLimits, MemoryError, MemoryLayout, IOAPIC_GPA, LOW_RAM_END,
};
use crate::terminal::RawModeGuard;
use crate::vcpu::{PagingFeatures, VcpuRunner};
use crate::vm::{self, Vm};
use crate::{cpuid, native, signals};

/// How often the coordinator looks at signals and vCPU activity.
const TICK: Duration = Duration::from_millis(100);
/// How long vCPU threads get to leave `KVM_RUN` after the stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval between repeated kicks while waiting for a vCPU thread to end.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

/// Runs a guest until it stops, and returns why it stopped.
///
/// Errors before the guest starts (a bad image, too little host memory, no KVM, a host that lacks
/// the requested confidential platform) and errors inside a vCPU thread (a failing ioctl) are
/// `Err`. Every way the guest itself stops is a [`StopReason`].
pub fn run_vm(config: VmConfig) -> Result<StopReason, VmmError> {
    signals::install_kick_handler().map_err(|message| VmmError::Signal {
        signal: "vCPU kick",
        message,
    })?;
    if config.handle_signals {
        signals::install_stop_handlers().map_err(|message| VmmError::Signal {
            signal: "SIGINT/SIGTERM",
            message,
        })?;
    }

    let backend = coco_run::choose_backend(&config, &coco_run::HostProbes)?;
    for option in config.coco.unused_on(backend.platform()) {
        log::warn!(
            "{option} does not apply to a {} launch and is ignored",
            backend.platform()
        );
    }

    let kvm = vm::open_kvm()?;
    let max_cpus = vm::max_vcpus(&kvm).min(u32::from(devices::acpi::MAX_CPUS));
    if config.cpus == 0 || config.cpus > max_cpus {
        return Err(VmmError::CpuCount {
            requested: config.cpus,
            max: max_cpus,
        });
    }
    let supported = vm::supported_cpuid(&kvm)?;
    let paging = PagingFeatures {
        phys_bits: cpuid::phys_address_bits(&supported),
        page_1gb: cpuid::offers_1gib_pages(&supported),
    };
    HostLimits::read().check(config.memory_bytes)?;

    match backend {
        Backend::Native => {
            let guest = load_guest(&config, paging.phys_bits)?;
            run_native(&config, kvm, guest, paging)
        }
        backend => {
            let platform = backend.platform();
            let guest = prepare_guest(&config, platform, paging.phys_bits)?;
            let launched =
                coco_run::launch(backend, &config, &guest.plan, guest.memory, &supported)?;
            log::info!(
                "{platform} launch: {} operations, {} vCPUs, {} of RAM, predicted measurement {}",
                guest.plan.operations.len(),
                config.cpus,
                memory::format_size(guest.layout.ram_bytes()),
                launched.predicted.digest_hex()
            );
            machine::check_corim_reference(
                &guest.plan.host_only,
                platform,
                &launched.predicted,
                config.strict_corim,
            )?;
            let mut vm = Vm::from_confidential(launched.kvm, launched.vm, launched.memory)?;
            let machine = attach_machine(&mut vm, &config, &guest.layout, &guest.plan)?;
            run_machine(
                &config,
                vm,
                &machine,
                launched.vcpus,
                paging,
                Some(launched.exits),
            )
        }
    }
}

/// A guest image loaded into freshly allocated guest memory, before any VM exists. `'a` is the
/// lifetime of the IGVM file's bytes, from which the plan borrows its page data.
#[derive(Debug)]
pub struct LoadedGuest<'a> {
    /// The plan the loader built (or a copy of the caller's plan).
    pub plan: Plan<'a>,
    /// Guest RAM around the 32-bit hole, with the firmware ranges the file fills.
    pub layout: MemoryLayout,
    /// Guest memory: RAM and the ranges outside RAM that the plan fills.
    pub memory: GuestMemoryMmap,
}

impl LoadedGuest<'_> {
    /// Copies the page data that the plan borrows, so that the guest outlives the image.
    pub fn into_owned(self) -> LoadedGuest<'static> {
        LoadedGuest {
            plan: self.plan.into_owned(),
            layout: self.layout,
            memory: self.memory,
        }
    }
}

/// Returns the host description that [`run_vm`] hands the loader for `memory_bytes` of RAM,
/// `cpus` vCPUs and `cmdline`, for a file that places no pages outside RAM.
pub fn host_description(
    memory_bytes: u64,
    cpus: u32,
    cmdline: &str,
) -> Result<HostDescription, VmmError> {
    let layout = MemoryLayout::new(memory_bytes)?;
    host_description_for(&layout, cpus, cmdline)
}

/// Returns the host description for `layout` (its loader memory map includes the firmware
/// ranges), `cpus` vCPUs and `cmdline`: the MMIO window below the I/O APIC and the ACPI tables
/// of the `devices` crate.
pub fn host_description_for(
    layout: &MemoryLayout,
    cpus: u32,
    cmdline: &str,
) -> Result<HostDescription, VmmError> {
    let ram: Vec<(u64, u64)> = layout
        .ram()
        .iter()
        .map(|range| (range.start, range.len))
        .collect();
    let acpi_cpus = u16::try_from(cpus).unwrap_or(u16::MAX);
    let acpi_error = |error: devices::acpi::AcpiError| VmmError::Device {
        device: "the ACPI tables",
        message: error.to_string(),
    };
    Ok(HostDescription {
        memory_map: layout.loader_memory_map(),
        vp_count: cpus,
        command_line: cmdline.to_string(),
        mmio_ranges: vec![(LOW_RAM_END, IOAPIC_GPA - LOW_RAM_END)],
        madt: devices::acpi::madt(acpi_cpus).map_err(acpi_error)?,
        srat: devices::acpi::srat(acpi_cpus, &ram).map_err(acpi_error)?,
        slit: devices::acpi::slit(),
        pptt: devices::acpi::pptt(acpi_cpus).map_err(acpi_error)?,
    })
}

/// Loads `config.image` for the native platform into fresh guest memory, exactly as [`run_vm`]
/// does before it creates the VM. `phys_bits` is the guest physical address width (KVM's, in
/// `run_vm`).
pub fn load_guest(config: &VmConfig, phys_bits: u8) -> Result<LoadedGuest<'_>, VmmError> {
    let guest = prepare_guest(config, Platform::Native, phys_bits)?;
    native::write_pages(&guest.plan, &guest.memory)?;
    Ok(guest)
}

/// Lays out guest RAM, loads the plan for `platform` and allocates memory for it, without
/// writing the plan's pages.
fn prepare_guest(
    config: &VmConfig,
    platform: Platform,
    phys_bits: u8,
) -> Result<LoadedGuest<'_>, VmmError> {
    let mut layout = MemoryLayout::new(config.memory_bytes)?;
    layout.check_address_width(phys_bits)?;
    let plan = match &config.image {
        GuestImage::Plan(plan) => (**plan).clone(),
        GuestImage::Igvm(bytes) => load_plan(bytes, &mut layout, config, platform, phys_bits)?,
        GuestImage::IgvmFile(file) => load_plan(file, &mut layout, config, platform, phys_bits)?,
    };
    let extra = layout.extra_backing(native::plan_pages(&plan), phys_bits)?;
    let memory = memory::allocate(&layout, &extra)?;
    Ok(LoadedGuest {
        plan,
        layout,
        memory,
    })
}

/// Parses an IGVM file and loads it for `platform` on `layout`. For the native platform an
/// `Auto` request lets the loader choose among the platforms the native backend runs.
///
/// Pages the file places outside RAM (a firmware image below 4 GiB) are added to the memory
/// map handed to the loader, so that it accepts them. They stay out of `etc/e820`.
fn load_plan<'f>(
    bytes: &'f [u8],
    layout: &mut MemoryLayout,
    config: &VmConfig,
    platform: Platform,
    phys_bits: u8,
) -> Result<Plan<'f>, VmmError> {
    let parsed = igvm_loader::parse(bytes)?;
    let firmware = firmware_ranges(&parsed, layout, platform, phys_bits)?;
    layout.set_firmware(firmware);

    let host = host_description_for(layout, config.cpus, &config.cmdline)?;
    let choice = match (platform, config.platform) {
        (Platform::Native, PlatformRequest::Auto) => PlatformChoice::Auto {
            host_supports: vec![Platform::Native],
        },
        (platform, _) => PlatformChoice::Exact(platform),
    };
    let options = LoadOptions {
        choice,
        host,
        relocation_base: None,
    };
    let plan = igvm_loader::load_parsed(&parsed, &options)?;
    log::info!("platform {} chosen", plan.platform);
    let receives_command_line = parsed
        .directives()
        .any(|(_, directive)| matches!(directive, IgvmDirectiveHeader::CommandLine(_)));
    if !config.cmdline.is_empty() && !receives_command_line {
        log::warn!(
            "--cmdline is ignored: the file has no CommandLine parameter (header 0x30E) to receive it"
        );
    }
    Ok(plan)
}

/// Returns the page ranges outside RAM that the PageData headers of `platform` fill. A page that
/// cannot be backed is an error that names its header.
fn firmware_ranges(
    parsed: &ParsedFile,
    layout: &MemoryLayout,
    platform: Platform,
    phys_bits: u8,
) -> Result<Vec<GpaRange>, VmmError> {
    let platform_mask = parsed
        .platforms()
        .iter()
        .filter(|header| header.platform == Some(platform))
        .fold(0, |mask, header| mask | header.compatibility_mask);
    let mut pages = Vec::new();
    // The first page outside RAM is the one reported, with the --memory that covers every such
    // page: the largest any page needs, or `None` once a page lies in the hole below 4 GiB.
    let mut outside_ram: Option<(HeaderRef, MemoryError)> = None;
    let mut memory_needed = Some(0);
    for (header, directive) in parsed.directives() {
        let IgvmDirectiveHeader::PageData {
            gpa,
            compatibility_mask,
            flags,
            ..
        } = directive
        else {
            continue;
        };
        if compatibility_mask & platform_mask == 0 {
            continue;
        }
        let size = if flags.is_2mb_page() {
            PAGE_SIZE_2M
        } else {
            PAGE_SIZE_4K
        };
        for offset in (0..size).step_by(PAGE_SIZE_4K as usize) {
            let Some(page) = gpa.checked_add(offset) else {
                continue;
            };
            match layout.check_image_page(page, phys_bits) {
                Ok(()) => pages.push(page),
                Err(
                    error @ MemoryError::OutsideRam {
                        memory_needed: page_needs,
                        ..
                    },
                ) => {
                    memory_needed = memory_needed
                        .zip(page_needs)
                        .map(|(so_far, this)| so_far.max(this));
                    outside_ram.get_or_insert((header, error));
                }
                Err(source) => return Err(VmmError::ImagePage { header, source }),
            }
        }
    }
    if let Some((header, mut source)) = outside_ram {
        if let MemoryError::OutsideRam {
            memory_needed: reported,
            ..
        } = &mut source
        {
            *reported = memory_needed;
        }
        return Err(VmmError::ImagePage { header, source });
    }
    Ok(layout.extra_backing(pages, phys_bits)?)
}

/// Runs a loaded native guest on a new VM.
fn run_native(
    config: &VmConfig,
    kvm: Kvm,
    guest: LoadedGuest,
    paging: PagingFeatures,
) -> Result<StopReason, VmmError> {
    let cpus = config.cpus;
    let contexts = native::vp_contexts(&guest.plan, cpus)?;
    log::info!(
        "native launch: {} operations, {} vCPUs, {} of RAM",
        guest.plan.operations.len(),
        cpus,
        memory::format_size(guest.layout.ram_bytes())
    );

    let mut vm = Vm::new(kvm, guest.memory)?;
    let machine = attach_machine(&mut vm, config, &guest.layout, &guest.plan)?;
    let mut vcpu_fds = Vec::new();
    for (index, context) in (0..cpus).zip(&contexts) {
        let fd = vm.create_vcpu(index, cpus)?;
        native::set_initial_state(&fd, index, context.as_ref())?;
        vcpu_fds.push(fd);
    }
    run_machine(config, vm, &machine, vcpu_fds, paging, None)
}

/// Creates the devices of the machine on `vm`.
fn attach_machine(
    vm: &mut Vm,
    config: &VmConfig,
    layout: &MemoryLayout,
    plan: &Plan,
) -> Result<Machine, VmmError> {
    machine::attach(
        vm,
        &MachineConfig {
            layout,
            cpus: u16::try_from(config.cpus).unwrap_or(u16::MAX),
            serial: &config.serial,
            debugcon: &config.debugcon,
            host_only: &plan.host_only,
            event: &config.event,
            strict_corim: config.strict_corim,
        },
    )
}

/// Runs the vCPUs of a VM whose devices are attached until the guest stops: the console thread,
/// one thread per vCPU and the coordinator on this thread. `coco` handles the exits of an SEV-SNP
/// or TDX guest.
fn run_machine(
    config: &VmConfig,
    vm: Vm,
    machine: &Machine,
    vcpu_fds: Vec<VcpuFd>,
    paging: PagingFeatures,
    coco: Option<Arc<dyn CocoExits>>,
) -> Result<StopReason, VmmError> {
    // From here on the terminal may be in raw mode; the guard restores it on every return.
    let _raw_mode = match &config.serial {
        SerialConfig::Stdio => RawModeGuard::enter(std::os::fd::AsFd::as_fd(&std::io::stdin()))
            .map_err(|source| VmmError::Sink {
                what: "the terminal in raw mode".into(),
                source,
            })?,
        _ => None,
    };
    let stop = config.stop.clone();
    let console_thread = console::start_input(&config.serial, machine.serial.clone(), stop.clone())
        .map_err(|source| VmmError::Thread {
            name: "console".into(),
            source,
        })?;

    let (io_bus, mmio_bus) = vm.shared_buses();
    let activities: Vec<Arc<VcpuActivity>> = vcpu_fds
        .iter()
        .map(|_| Arc::new(VcpuActivity::default()))
        .collect();
    let mut threads: Vec<(u32, JoinHandle<()>)> = Vec::new();
    for ((index, fd), activity) in (0u32..).zip(vcpu_fds).zip(&activities) {
        let runner = VcpuRunner {
            index,
            fd,
            io_bus: io_bus.clone(),
            mmio_bus: mmio_bus.clone(),
            memory: vm.memory().clone(),
            stop: stop.clone(),
            activity: activity.clone(),
            run_size: vm.run_size(),
            paging,
            coco: coco.clone(),
        };
        match runner.spawn() {
            Ok(handle) => threads.push((index, handle)),
            Err(source) => {
                stop.fail(VmmError::Thread {
                    name: format!("vcpu{index}"),
                    source,
                });
                break;
            }
        }
    }

    coordinate(&stop, &threads, &activities, config.handle_signals);
    let join_error = stop_threads(threads);
    if let Some(console_thread) = console_thread {
        console_thread.join();
    }
    log::debug!(
        "port accesses that hit no device: {}; fw_cfg: {:?}",
        io_bus.unclaimed_accesses(),
        machine
            .fw_cfg
            .lock()
            .map(|device| device.stats())
            .unwrap_or_default()
    );
    drop(vm);

    match (stop.take_outcome(), join_error) {
        (_, Some(error)) => Err(error),
        (Some(Outcome::Stopped(reason)), None) => Ok(reason),
        (Some(Outcome::Failed(error)), None) => Err(error),
        (None, None) => Ok(StopReason::Requested(StopRequest::Caller)),
    }
}

/// Waits for a stop: a stop reason from any thread, a signal, or every vCPU halted.
fn coordinate(
    stop: &StopHandle,
    threads: &[(u32, JoinHandle<()>)],
    activities: &[Arc<VcpuActivity>],
    handle_signals: bool,
) {
    let mut detector = HaltDetector::new(activities.len());
    loop {
        if stop.wait(TICK) {
            return;
        }
        if handle_signals {
            if let Some(signal) = signals::take_stop_signal() {
                stop.stop(StopReason::Requested(StopRequest::Signal(signal)));
                return;
            }
        }
        match detector.tick(activities) {
            HaltCheck::Wait => {}
            HaltCheck::Kick => {
                for (_, thread) in threads {
                    signals::kick(thread);
                }
            }
            HaltCheck::AllHalted => {
                stop.stop(StopReason::AllHalted);
                return;
            }
        }
    }
}

/// Kicks the vCPU threads until they have left `KVM_RUN`, then joins them. Returns an error if
/// a thread did not end in time or panicked.
fn stop_threads(threads: Vec<(u32, JoinHandle<()>)>) -> Option<VmmError> {
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        let running: Vec<&(u32, JoinHandle<()>)> = threads
            .iter()
            .filter(|(_, thread)| !thread.is_finished())
            .collect();
        if running.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            // Dropping the handles detaches the threads; the process exit ends them.
            return running.first().map(|(index, _)| VmmError::VcpuHang(*index));
        }
        for (_, thread) in running {
            signals::kick(thread);
        }
        std::thread::sleep(KICK_INTERVAL);
    }
    let mut error = None;
    for (index, thread) in threads {
        if thread.join().is_err() {
            error.get_or_insert(VmmError::VcpuPanic(index));
        }
    }
    error
}
