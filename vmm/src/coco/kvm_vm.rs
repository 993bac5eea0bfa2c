//! The part of a real confidential VM that SEV-SNP and TDX share: the VM fd, guest_memfd slots
//! with their shared mappings, the vCPU fds and the VMM's platform setup.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use kvm_bindings::{kvm_create_guest_memfd, kvm_enable_cap, kvm_userspace_memory_region2};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::ffi::KVM_MEM_GUEST_MEMFD;
use super::memory::{GmemBacking, GmemSlot, GuestRange, KvmPrivateMemory, PrivateMemoryOps};
use super::{CocoError, PlatformSetup};

/// A confidential VM under construction on a real host.
pub struct KvmCocoVm<'a> {
    /// `/dev/kvm`.
    pub kvm: Kvm,
    /// The VM, once created.
    pub vm: Option<Arc<VmFd>>,
    /// Guest memory.
    pub backing: GmemBacking,
    /// guest_memfds created but not bound to a slot yet.
    guest_memfds: Vec<Option<OwnedFd>>,
    /// The vCPUs, in index order.
    pub vcpus: Vec<VcpuFd>,
    /// The VMM's platform setup, run once before the first vCPU.
    setup: Option<PlatformSetup<'a>>,
}

impl<'a> KvmCocoVm<'a> {
    /// Starts a VM on `kvm` whose shared memory is `shared`.
    pub fn new(kvm: Kvm, shared: GuestMemoryMmap, setup: PlatformSetup<'a>) -> Self {
        Self {
            kvm,
            vm: None,
            backing: GmemBacking {
                shared,
                slots: Vec::new(),
            },
            guest_memfds: Vec::new(),
            vcpus: Vec::new(),
            setup: Some(setup),
        }
    }

    /// Returns the VM, or an error before `KVM_CREATE_VM`.
    pub fn vm(&self) -> Result<&Arc<VmFd>, CocoError> {
        self.vm.as_ref().ok_or(CocoError::Io {
            operation: "using the VM before KVM_CREATE_VM".into(),
            source: std::io::Error::from_raw_os_error(libc::EBADF),
        })
    }

    /// Returns vCPU `index`.
    pub fn vcpu(&self, index: u32) -> Result<&VcpuFd, CocoError> {
        self.vcpus.get(index as usize).ok_or(CocoError::Io {
            operation: format!("using vCPU {index} before creating it"),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        })
    }

    /// `KVM_CREATE_VM`.
    pub fn create_vm(&mut self, vm_type: u64) -> Result<(), CocoError> {
        let vm = self
            .kvm
            .create_vm_with_type(vm_type)
            .map_err(|error| CocoError::kvm(format!("KVM_CREATE_VM type {vm_type}"), error))?;
        self.vm = Some(Arc::new(vm));
        Ok(())
    }

    /// `KVM_ENABLE_CAP` on the VM.
    pub fn enable_cap(&mut self, cap: u32, arg: u64) -> Result<(), CocoError> {
        let mut request = kvm_enable_cap {
            cap,
            ..Default::default()
        };
        request.args[0] = arg;
        self.vm()?
            .enable_cap(&request)
            .map_err(|error| CocoError::kvm(format!("KVM_ENABLE_CAP {cap}"), error))
    }

    /// `KVM_CREATE_GUEST_MEMFD`.
    pub fn create_guest_memfd(&mut self, size: u64) -> Result<u32, CocoError> {
        let fd = self
            .vm()?
            .create_guest_memfd(kvm_create_guest_memfd {
                size,
                flags: 0,
                ..Default::default()
            })
            .map_err(|error| {
                CocoError::kvm(format!("KVM_CREATE_GUEST_MEMFD of {size:#x} bytes"), error)
            })?;
        // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        self.guest_memfds.push(Some(fd));
        Ok(self.guest_memfds.len() as u32 - 1)
    }

    /// `KVM_SET_USER_MEMORY_REGION2` binding guest_memfd `guest_memfd` and the shared mapping.
    pub fn set_user_memory_region2(
        &mut self,
        slot: u32,
        gpa: u64,
        size: u64,
        guest_memfd: u32,
        guest_memfd_offset: u64,
    ) -> Result<(), CocoError> {
        let host = self
            .backing
            .shared
            .get_host_address(GuestAddress(gpa))
            .map_err(|_| CocoError::OutsideMemory { gpa, size })?;
        let fd = self
            .guest_memfds
            .get_mut(guest_memfd as usize)
            .and_then(Option::take)
            .ok_or(CocoError::Io {
                operation: format!("binding guest_memfd {guest_memfd} a second time"),
                source: std::io::Error::from_raw_os_error(libc::EBADF),
            })?;
        let region = kvm_userspace_memory_region2 {
            slot,
            flags: KVM_MEM_GUEST_MEMFD,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host as u64,
            guest_memfd_offset,
            guest_memfd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `userspace_addr..+size` is one region of the VMM's shared mapping, which stays
        // mapped as long as the VM exists because it moves into the launched VM. The slot list
        // owns the guest_memfd from here on.
        unsafe { self.vm()?.set_user_memory_region2(region) }.map_err(|error| {
            CocoError::kvm(format!("KVM_SET_USER_MEMORY_REGION2 slot {slot}"), error)
        })?;
        self.backing.slots.push(GmemSlot {
            range: GuestRange { gpa, size },
            fd,
        });
        Ok(())
    }

    /// Writes bytes into shared guest memory.
    pub fn write_shared(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), CocoError> {
        self.backing
            .shared
            .write_slice(bytes, GuestAddress(gpa))
            .map_err(|_| CocoError::GuestWrite {
                gpa,
                len: bytes.len(),
            })
    }

    /// Runs the VMM's platform setup once.
    pub fn setup_platform(&mut self) -> Result<(), CocoError> {
        let vm = self.vm()?.clone();
        match self.setup.take() {
            Some(setup) => setup(&vm),
            None => Ok(()),
        }
    }

    /// `KVM_CREATE_VCPU`.
    pub fn create_vcpu(&mut self, index: u32) -> Result<(), CocoError> {
        if index as usize != self.vcpus.len() {
            return Err(CocoError::Io {
                operation: format!("creating vCPU {index} out of order"),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        let vcpu = self
            .vm()?
            .create_vcpu(u64::from(index))
            .map_err(|error| CocoError::kvm(format!("KVM_CREATE_VCPU {index}"), error))?;
        self.vcpus.push(vcpu);
        Ok(())
    }

    /// Returns the slot ranges and the private-memory handle for the running VM.
    pub fn into_runtime(
        self,
    ) -> Result<(Kvm, Vec<VcpuFd>, GuestMemoryMmap, KvmPrivateMemory), CocoError> {
        let vm = self.vm()?.clone();
        let shared = self.backing.shared.clone();
        Ok((
            self.kvm,
            self.vcpus,
            shared,
            KvmPrivateMemory {
                vm,
                backing: self.backing,
            },
        ))
    }
}

impl PrivateMemoryOps for KvmCocoVm<'_> {
    fn set_memory_attributes(&self, gpa: u64, size: u64, attributes: u64) -> Result<(), CocoError> {
        self.vm()?
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
