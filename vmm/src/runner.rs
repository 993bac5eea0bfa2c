//! [`run_vm`]: load the image, build the VM, run the vCPU threads and wait for a stop.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use igvm::IgvmDirectiveHeader;
use igvm_loader::host::{HostDescription, PlatformChoice};
use igvm_loader::plan::{Plan, Platform, PAGE_SIZE_2M, PAGE_SIZE_4K};
use igvm_loader::{LoadOptions, ParsedFile};

use crate::config::{GuestImage, PlatformRequest, VmConfig};
use crate::console::{self, SerialConfig};
use crate::control::{HaltCheck, HaltDetector, Outcome, StopHandle, VcpuActivity};
use crate::error::VmmError;
use crate::exit::{StopReason, StopRequest};
use crate::machine::{self, MachineConfig};
use crate::memory::{self, GpaRange, HostLimits, MemoryLayout, IOAPIC_GPA, LOW_RAM_END};
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
/// Errors before the guest starts (a bad image, too little host memory, no KVM) and errors
/// inside a vCPU thread (a failing ioctl) are `Err`. Every way the guest itself stops is a
/// [`StopReason`].
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

    let kvm = vm::open_kvm()?;
    let max_cpus = vm::max_vcpus(&kvm).min(u32::from(devices::acpi::MAX_CPUS));
    if config.cpus == 0 || config.cpus > max_cpus {
        return Err(VmmError::CpuCount {
            requested: config.cpus,
            max: max_cpus,
        });
    }
    let cpus = config.cpus;
    let supported = vm::supported_cpuid(&kvm)?;
    let paging = PagingFeatures {
        phys_bits: cpuid::phys_address_bits(&supported),
        page_1gb: cpuid::offers_1gib_pages(&supported),
    };
    let mut layout = MemoryLayout::new(config.memory_bytes)?;
    layout.check_address_width(paging.phys_bits)?;
    HostLimits::read().check(config.memory_bytes)?;

    let plan = match &config.image {
        GuestImage::Plan(plan) => (**plan).clone(),
        GuestImage::Igvm(bytes) => load_native(bytes, &mut layout, &config, paging.phys_bits)?,
    };
    let contexts = native::vp_contexts(&plan, cpus)?;
    let extra = layout.extra_backing(native::plan_pages(&plan), paging.phys_bits)?;
    let guest_memory = memory::allocate(&layout, &extra)?;
    native::write_pages(&plan, &guest_memory)?;
    log::info!(
        "native launch: {} operations, {} vCPUs, {} of RAM",
        plan.operations.len(),
        cpus,
        memory::format_size(layout.ram_bytes())
    );

    let mut vm = Vm::new(kvm, guest_memory)?;
    let machine = machine::attach(
        &mut vm,
        &MachineConfig {
            layout: &layout,
            cpus: u16::try_from(cpus).unwrap_or(u16::MAX),
            serial: &config.serial,
            debugcon: &config.debugcon,
            host_only: &plan.host_only,
            event: &config.event,
            strict_corim: config.strict_corim,
        },
    )?;
    let mut vcpu_fds = Vec::new();
    for (index, context) in (0..cpus).zip(&contexts) {
        let fd = vm.create_vcpu(index, cpus)?;
        native::set_initial_state(&fd, index, context.as_ref())?;
        vcpu_fds.push(fd);
    }

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
    let activities: Vec<Arc<VcpuActivity>> = (0..cpus)
        .map(|_| Arc::new(VcpuActivity::default()))
        .collect();
    let mut threads: Vec<(u32, JoinHandle<()>)> = Vec::new();
    for ((index, fd), activity) in (0..cpus).zip(vcpu_fds).zip(&activities) {
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

/// Parses an IGVM file and loads it for the native platform on `layout`.
///
/// Pages the file places outside RAM (a firmware image below 4 GiB) are added to the memory
/// map handed to the loader, so that it accepts them. They stay out of `etc/e820`.
fn load_native(
    bytes: &[u8],
    layout: &mut MemoryLayout,
    config: &VmConfig,
    phys_bits: u8,
) -> Result<Plan, VmmError> {
    let parsed = igvm_loader::parse(bytes)?;
    let firmware = firmware_ranges(&parsed, layout, phys_bits)?;
    layout.set_firmware(firmware);

    let ram: Vec<(u64, u64)> = layout
        .ram()
        .iter()
        .map(|range| (range.start, range.len))
        .collect();
    let cpus = u16::try_from(config.cpus).unwrap_or(u16::MAX);
    let acpi_error = |error: devices::acpi::AcpiError| VmmError::Device {
        device: "the ACPI tables",
        message: error.to_string(),
    };
    let host = HostDescription {
        memory_map: layout.loader_memory_map(),
        vp_count: config.cpus,
        command_line: config.cmdline.clone(),
        mmio_ranges: vec![(LOW_RAM_END, IOAPIC_GPA - LOW_RAM_END)],
        madt: devices::acpi::madt(cpus).map_err(acpi_error)?,
        srat: devices::acpi::srat(cpus, &ram).map_err(acpi_error)?,
        slit: devices::acpi::slit(),
        pptt: devices::acpi::pptt(cpus).map_err(acpi_error)?,
    };

    let choice = match config.platform {
        PlatformRequest::Auto => PlatformChoice::Auto {
            host_supports: vec![Platform::Native],
        },
        PlatformRequest::Native => PlatformChoice::Exact(Platform::Native),
    };
    let options = LoadOptions {
        choice,
        host,
        relocation_base: None,
    };
    let plan = igvm_loader::load_parsed(&parsed, &options)?;
    log::info!("platform {} chosen", plan.platform);
    Ok(plan)
}

/// Returns the page ranges outside RAM that the native platform's PageData headers fill.
fn firmware_ranges(
    parsed: &ParsedFile,
    layout: &MemoryLayout,
    phys_bits: u8,
) -> Result<Vec<GpaRange>, VmmError> {
    let native_mask = parsed
        .platforms()
        .iter()
        .filter(|header| header.platform == Some(Platform::Native))
        .fold(0, |mask, header| mask | header.compatibility_mask);
    let pages = parsed.directives().flat_map(|(_, header)| {
        let (gpa, size) = match header {
            IgvmDirectiveHeader::PageData {
                gpa,
                compatibility_mask,
                flags,
                ..
            } if compatibility_mask & native_mask != 0 => {
                let size = if flags.is_2mb_page() {
                    PAGE_SIZE_2M
                } else {
                    PAGE_SIZE_4K
                };
                (*gpa, size)
            }
            _ => (0, 0),
        };
        (0..size / PAGE_SIZE_4K).filter_map(move |page| gpa.checked_add(page * PAGE_SIZE_4K))
    });
    Ok(layout.extra_backing(pages, phys_bits)?)
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
