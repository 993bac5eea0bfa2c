//! The SEV-SNP and TDX part of [`crate::run_vm`]: which platform a run launches, and the launch
//! of a confidential plan through [`crate::coco`].
//!
//! A platform named on the command line must pass its host probe, or the run fails with the
//! probe's list of what the host lacks. `--platform auto` launches SEV-SNP or TDX only when the
//! file carries that platform and the host passes the probe; otherwise it launches native.
//!
//! The launched VM gets the native machine's devices, on the port bus, after the launch. For
//! SEV-SNP the backend's platform setup creates the in-kernel irqchip and the PIT, as for a native
//! VM. A TD gets KVM's split irqchip from the TDX backend and no PIT, because KVM creates a PIT
//! only next to an in-kernel PIC.
//!
//! NOTE: with the split irqchip there is no userspace I/O APIC, so COM1's interrupt line reaches
//! no vCPU in a TD and the guest must poll the UART. No hardware run of this path has been made.

use igvm_loader::plan::{Plan, Platform};
use kvm_bindings::kvm_cpuid_entry2;
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::coco::snp::SnpLaunchConfig;
use crate::coco::tdx::TdxLaunchConfig;
use crate::coco::{self, CocoError, LaunchedVm, PlatformSetup, SnpHost, TdxHost};
use crate::config::{GuestImage, PlatformRequest, VmConfig};
use crate::cpuid;
use crate::error::VmmError;
use crate::vm;

/// The backend a run uses, with the probed host for a confidential one.
#[derive(Debug)]
pub(crate) enum Backend {
    /// An ordinary KVM VM.
    Native,
    /// An SEV-SNP VM on a host that passed [`coco::probe_snp`].
    SevSnp(SnpHost),
    /// A TD on a host that passed [`coco::probe_tdx`].
    Tdx(TdxHost),
}

impl Backend {
    /// Returns the platform the backend launches.
    pub fn platform(&self) -> Platform {
        match self {
            Backend::Native => Platform::Native,
            Backend::SevSnp(_) => Platform::SevSnp,
            Backend::Tdx(_) => Platform::Tdx,
        }
    }
}

/// The host probes, replaceable in tests.
pub(crate) trait Probes {
    /// [`coco::probe_snp`].
    fn snp(&self) -> Result<SnpHost, CocoError>;
    /// [`coco::probe_tdx`].
    fn tdx(&self) -> Result<TdxHost, CocoError>;
}

/// The probes of this host.
pub(crate) struct HostProbes;

impl Probes for HostProbes {
    fn snp(&self) -> Result<SnpHost, CocoError> {
        coco::probe_snp()
    }

    fn tdx(&self) -> Result<TdxHost, CocoError> {
        coco::probe_tdx()
    }
}

/// Chooses the backend for `config`: the requested platform, or for `Auto` the strongest
/// platform that the image carries and the host passes the probe for.
///
/// A file that does not parse goes to the native backend, whose loader reports the error. A
/// caller's plan runs on its own platform, and an explicit request must name that platform.
pub(crate) fn choose_backend(config: &VmConfig, probes: &impl Probes) -> Result<Backend, VmmError> {
    let bytes = match &config.image {
        GuestImage::Plan(plan) => {
            let requested = match config.platform {
                PlatformRequest::Auto => plan.platform,
                PlatformRequest::Native => Platform::Native,
                PlatformRequest::SevSnp => Platform::SevSnp,
                PlatformRequest::Tdx => Platform::Tdx,
            };
            return match (requested, plan.platform) {
                (Platform::Native, Platform::Native) => Ok(Backend::Native),
                (Platform::SevSnp, Platform::SevSnp) => Ok(Backend::SevSnp(probes.snp()?)),
                (Platform::Tdx, Platform::Tdx) => Ok(Backend::Tdx(probes.tdx()?)),
                _ => Err(VmmError::PlanPlatform {
                    plan: plan.platform,
                    requested,
                }),
            };
        }
        GuestImage::Igvm(bytes) => bytes.as_slice(),
        GuestImage::IgvmFile(file) => file,
    };

    match config.platform {
        PlatformRequest::Native => Ok(Backend::Native),
        PlatformRequest::SevSnp => Ok(Backend::SevSnp(probes.snp()?)),
        PlatformRequest::Tdx => Ok(Backend::Tdx(probes.tdx()?)),
        PlatformRequest::Auto => {
            let carried: Vec<Platform> = match igvm_loader::parse(bytes) {
                Ok(parsed) => parsed
                    .platforms()
                    .iter()
                    .filter_map(|header| header.platform)
                    .collect(),
                Err(_) => Vec::new(),
            };
            if carried.contains(&Platform::SevSnp) {
                match probes.snp() {
                    Ok(host) => return Ok(Backend::SevSnp(host)),
                    Err(error) => log::info!("sev-snp not chosen: {error}"),
                }
            }
            if carried.contains(&Platform::Tdx) {
                match probes.tdx() {
                    Ok(host) => return Ok(Backend::Tdx(host)),
                    Err(error) => log::info!("tdx not chosen: {error}"),
                }
            }
            Ok(Backend::Native)
        }
    }
}

/// Launches `plan` on a host that passed its probe. `memory` is the shared half of guest memory
/// (one guest_memfd slot per region) and `supported_cpuid` the host's supported CPUID table,
/// from which every vCPU gets the same table as on a native VM.
pub(crate) fn launch(
    backend: Backend,
    config: &VmConfig,
    plan: &Plan,
    memory: GuestMemoryMmap,
    supported_cpuid: &[kvm_cpuid_entry2],
) -> Result<LaunchedVm, VmmError> {
    let vcpus = config.cpus;
    let cpuid: Vec<Vec<kvm_cpuid_entry2>> = (0..vcpus)
        .map(|index| cpuid::for_vcpu(supported_cpuid, index, vcpus))
        .collect();
    let options = &config.coco;
    let launched = match backend {
        Backend::SevSnp(host) => {
            let launch_config = SnpLaunchConfig {
                vcpus,
                cpuid,
                host_data: options.host_data.unwrap_or([0; 32]),
                strict_cpuid: options.strict_cpuid,
                supported_vmsa_features: None,
                supported_policy_bits: None,
            };
            coco::launch_snp(host, plan, memory, launch_config, full_irqchip_setup())?
        }
        Backend::Tdx(host) => {
            let launch_config = TdxLaunchConfig {
                vcpus,
                cpuid,
                debug: options.tdx_debug,
                mrconfigid: options.mrconfigid.unwrap_or([0; 48]),
                mrowner: options.mrowner.unwrap_or([0; 48]),
                mrownerconfig: options.mrownerconfig.unwrap_or([0; 48]),
                xfam: None,
            };
            // The TDX backend has enabled the split irqchip; nothing else to create.
            let setup: PlatformSetup<'_> = Box::new(|_| Ok(()));
            coco::launch_tdx(
                host,
                plan,
                memory,
                launch_config,
                options.quote_socket.as_deref(),
                setup,
            )?
        }
        Backend::Native => {
            return Err(VmmError::PlanPlatform {
                plan: plan.platform,
                requested: Platform::Native,
            })
        }
    };
    Ok(launched)
}

/// Returns the SEV-SNP platform setup: the in-kernel irqchip and the PIT, as on a native VM.
fn full_irqchip_setup() -> PlatformSetup<'static> {
    Box::new(|fd: &VmFd| {
        vm::create_irqchip_and_pit(fd)
            .map_err(|(operation, error)| CocoError::kvm(operation, error))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::demo;

    /// Probes that fail with a fixed list and count the calls.
    #[derive(Default)]
    struct FailingProbes {
        calls: RefCell<Vec<&'static str>>,
    }

    impl Probes for FailingProbes {
        fn snp(&self) -> Result<SnpHost, CocoError> {
            self.calls.borrow_mut().push("snp");
            Err(CocoError::HostLacks {
                platform: "SEV-SNP",
                missing: vec!["KVM_CAP_VM_TYPES is 0x1 (no KVM_X86_SNP_VM, bit 4)".into()],
            })
        }

        fn tdx(&self) -> Result<TdxHost, CocoError> {
            self.calls.borrow_mut().push("tdx");
            Err(CocoError::HostLacks {
                platform: "TDX",
                missing: vec!["KVM_CAP_VM_TYPES is 0x1 (no KVM_X86_TDX_VM, bit 5)".into()],
            })
        }
    }

    fn conformance(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/conformance")
            .join(name);
        std::fs::read(&path).unwrap()
    }

    fn config(image: Vec<u8>, platform: PlatformRequest) -> VmConfig {
        let mut config = VmConfig::new(GuestImage::Igvm(image));
        config.platform = platform;
        config
    }

    #[test]
    fn auto_probes_only_carried_platforms() {
        let probes = FailingProbes::default();
        let backend = choose_backend(
            &config(demo::image().unwrap(), PlatformRequest::Auto),
            &probes,
        )
        .unwrap();
        assert_eq!(backend.platform(), Platform::Native);
        assert!(probes.calls.borrow().is_empty());

        let probes = FailingProbes::default();
        let snp_file = conformance("tiny-qemu-snp-native.igvm");
        let backend = choose_backend(&config(snp_file, PlatformRequest::Auto), &probes).unwrap();
        assert_eq!(backend.platform(), Platform::Native);
        assert_eq!(*probes.calls.borrow(), ["snp"]);

        let probes = FailingProbes::default();
        let tdx_file = conformance("tiny-tdp-synthetic.igvm");
        let backend = choose_backend(&config(tdx_file, PlatformRequest::Auto), &probes).unwrap();
        assert_eq!(backend.platform(), Platform::Native);
        assert_eq!(*probes.calls.borrow(), ["tdx"]);
    }

    #[test]
    fn named_platform_never_falls_back() {
        let probes = FailingProbes::default();
        let file = conformance("tiny-qemu-snp-native.igvm");
        let error =
            choose_backend(&config(file.clone(), PlatformRequest::SevSnp), &probes).unwrap_err();
        assert_eq!(
            error.to_string(),
            "this host cannot run SEV-SNP guests: KVM_CAP_VM_TYPES is 0x1 (no KVM_X86_SNP_VM, bit 4)"
        );
        let error =
            choose_backend(&config(file.clone(), PlatformRequest::Tdx), &probes).unwrap_err();
        assert!(error
            .to_string()
            .starts_with("this host cannot run TDX guests"));

        let backend = choose_backend(&config(file, PlatformRequest::Native), &probes).unwrap();
        assert_eq!(backend.platform(), Platform::Native);
        assert_eq!(*probes.calls.borrow(), ["snp", "tdx"]);
    }

    #[test]
    fn plan_platform_must_match_request() {
        let file = conformance("tiny-tdp-synthetic.igvm");
        let plan = igvm_loader::measure::plan_for_measurement(&file, Platform::Tdx, 1).unwrap();
        let mut config = VmConfig::new(GuestImage::Plan(Box::new(plan.into_owned())));
        config.platform = PlatformRequest::Native;
        let probes = FailingProbes::default();
        let error = choose_backend(&config, &probes).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the plan is for the tdx platform, but native was requested"
        );
        assert!(probes.calls.borrow().is_empty());

        // Auto runs the plan on its own platform, which this host lacks.
        config.platform = PlatformRequest::Auto;
        let error = choose_backend(&config, &probes).unwrap_err();
        assert!(error
            .to_string()
            .starts_with("this host cannot run TDX guests"));
        assert_eq!(*probes.calls.borrow(), ["tdx"]);
    }
}
