//! The configuration of [`crate::run_vm`]: the guest image and the machine to run it on.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use igvm_loader::plan::{Plan, Platform};

use crate::console::{DebugconConfig, SerialConfig};
use crate::control::StopHandle;

/// Default guest RAM: 512 MiB.
pub const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;

/// Largest input file igvmm reads: an IGVM file's offsets are 32-bit, and everything `pack`
/// places (kernel, initrd, firmware) must end below 4 GiB of guest memory. The limit keeps a
/// stream such as /dev/zero from growing the buffer until memory runs out.
pub const MAX_INPUT_BYTES: u64 = 4 << 30;

/// Reads all of `reader`, or fails once it has given more than [`MAX_INPUT_BYTES`].
pub fn read_bounded(reader: impl Read) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(MAX_INPUT_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the input is larger than 4 GiB, the limit for IGVM files and packed images",
        ));
    }
    Ok(bytes)
}

/// Opens and reads the file at `path` with [`read_bounded`].
pub fn read_input_file(path: &Path) -> io::Result<Vec<u8>> {
    read_bounded(File::open(path)?)
}

/// The guest to run.
#[derive(Debug, Clone)]
pub enum GuestImage {
    /// The bytes of an IGVM file; the loader turns them into a plan for this machine.
    Igvm(Vec<u8>),
    /// An IGVM file mapped from disk, loaded as [`GuestImage::Igvm`] is. The file must not
    /// change while the VM runs (see [`MappedFile`]).
    IgvmFile(MappedFile),
    /// A plan built by the caller, run as it is. Its parameter areas are not filled from
    /// this machine.
    Plan(Box<Plan<'static>>),
}

impl GuestImage {
    /// Returns the bytes of an IGVM image, or `None` for a plan.
    pub fn igvm_bytes(&self) -> Option<&[u8]> {
        match self {
            GuestImage::Igvm(bytes) => Some(bytes),
            GuestImage::IgvmFile(file) => Some(file),
            GuestImage::Plan(_) => None,
        }
    }
}

/// The contents of a file, mapped read-only (`MAP_PRIVATE`) so that loading an IGVM file does
/// not copy its page data into the heap first. Clones share the mapping, which is removed when
/// the last clone is dropped.
///
/// igvmm requires that the file is not modified while it is mapped. Linux may show writes by
/// other processes in a private mapping, so the loaded pages and the measurement could differ.
/// A file truncated below its mapped size makes a read of the lost pages raise SIGBUS, which
/// ends the process.
///
/// Files that cannot be mapped are read into memory instead: pipes, devices, and files whose
/// size is 0 (procfs files report 0, and an empty file then reads as empty, which the loader
/// rejects as too short).
#[derive(Clone)]
pub struct MappedFile {
    contents: Arc<FileContents>,
}

/// The storage behind a [`MappedFile`].
enum FileContents {
    /// A private read-only mapping of `len` bytes, owned by this value.
    Mapped {
        address: NonNull<libc::c_void>,
        len: usize,
    },
    /// Bytes read from a file that could not be mapped.
    Read(Vec<u8>),
}

// SAFETY: the mapping is read-only, and `FileContents` only hands out shared slices of it. So
// it may move to and be read from any thread.
unsafe impl Send for FileContents {}
// SAFETY: as for `Send`: no method mutates the mapping.
unsafe impl Sync for FileContents {}

impl MappedFile {
    /// Maps the file at `path`, or reads it when it cannot be mapped.
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut file = File::open(path)?;
        let metadata = file.metadata()?;
        let len = usize::try_from(metadata.len())
            .map_err(|_| io::Error::other("the file is larger than the address space"))?;

        if !metadata.is_file() || len == 0 {
            return Ok(Self::from(read_bounded(&mut file)?));
        }

        // SAFETY: a new private read-only mapping of an open file at an address the kernel
        // picks; it overlaps no Rust object. The result is checked for MAP_FAILED below.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let address = NonNull::new(address).ok_or_else(|| io::Error::other("mmap returned 0"))?;
        let contents = FileContents::Mapped { address, len };

        // A file cut short before the mapping existed would raise SIGBUS on the first read of
        // the lost pages. Catch that here; later changes are the caller's to avoid.
        let len_now = file.metadata()?.len();
        if len_now != metadata.len() {
            drop(contents);
            return Err(io::Error::other(format!(
                "the file changed size from {} to {len_now} bytes while it was mapped; it must \
                 not be modified while igvmm loads it",
                metadata.len()
            )));
        }
        Ok(Self {
            contents: Arc::new(contents),
        })
    }
}

impl From<Vec<u8>> for MappedFile {
    fn from(bytes: Vec<u8>) -> Self {
        Self {
            contents: Arc::new(FileContents::Read(bytes)),
        }
    }
}

impl Deref for MappedFile {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &*self.contents {
            // SAFETY: `address..address + len` is a live read-only mapping that `FileContents`
            // owns until it is dropped, which the borrow of `self` prevents.
            FileContents::Mapped { address, len } => unsafe {
                std::slice::from_raw_parts(address.as_ptr().cast::<u8>(), *len)
            },
            FileContents::Read(bytes) => bytes,
        }
    }
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &*self.contents {
            FileContents::Mapped { .. } => "mapped",
            FileContents::Read(_) => "read",
        };
        f.debug_struct("MappedFile")
            .field("kind", &kind)
            .field("len", &self.len())
            .finish()
    }
}

impl Drop for FileContents {
    fn drop(&mut self) {
        if let FileContents::Mapped { address, len } = self {
            // SAFETY: the mapping was created by `MappedFile::open` with this address and
            // length, and no slice of it outlives this value.
            let result = unsafe { libc::munmap(address.as_ptr(), *len) };
            if result != 0 {
                log::debug!(
                    "munmap of a mapped file failed: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}

/// The platform to launch a guest on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformRequest {
    /// The strongest platform that the file carries and this host supports: SEV-SNP or TDX when
    /// the file has that platform and the host passes its probe, native otherwise.
    Auto,
    /// The native platform.
    Native,
    /// AMD SEV-SNP; fails when the host lacks it, never falls back to native.
    SevSnp,
    /// Intel TDX; fails when the host lacks it, never falls back to native.
    Tdx,
}

/// The launch options that only the SEV-SNP and TDX backends read. `None` and `false` are the
/// defaults of a launch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CocoOptions {
    /// SEV-SNP `HOST_DATA` for the attestation report (default all zeros).
    pub host_data: Option<[u8; 32]>,
    /// SEV-SNP: fail instead of retrying when the firmware corrects the CPUID page.
    pub strict_cpuid: bool,
    /// TDX MRCONFIGID (default all zeros).
    pub mrconfigid: Option<[u8; 48]>,
    /// TDX MROWNER (default all zeros).
    pub mrowner: Option<[u8; 48]>,
    /// TDX MROWNERCONFIG (default all zeros).
    pub mrownerconfig: Option<[u8; 48]>,
    /// TDX: set the DEBUG attribute.
    pub tdx_debug: bool,
    /// TDX: the Quote Generation Service socket. The TDX backend rejects it, because igvmm does
    /// not forward quotes.
    pub quote_socket: Option<PathBuf>,
}

impl CocoOptions {
    /// Returns the command-line names of the options that are set but that `platform` does not
    /// read.
    pub fn unused_on(&self, platform: Platform) -> Vec<&'static str> {
        let snp = [
            ("--host-data", self.host_data.is_some()),
            ("--strict-cpuid", self.strict_cpuid),
        ];
        let tdx = [
            ("--mrconfigid", self.mrconfigid.is_some()),
            ("--mrowner", self.mrowner.is_some()),
            ("--mrownerconfig", self.mrownerconfig.is_some()),
            ("--tdx-debug", self.tdx_debug),
            ("--quote-socket", self.quote_socket.is_some()),
        ];
        let unused: Vec<(&'static str, bool)> = match platform {
            Platform::SevSnp => tdx.to_vec(),
            Platform::Tdx => snp.to_vec(),
            Platform::Native | Platform::Vbs => snp.iter().chain(&tdx).copied().collect(),
        };
        unused
            .into_iter()
            .filter(|(_, given)| *given)
            .map(|(option, _)| option)
            .collect()
    }
}

/// The strings of the SP800-155 Event3 that carries the CoRIM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventStrings {
    /// Platform manufacturer.
    pub manufacturer: String,
    /// Platform model.
    pub model: String,
    /// Platform version.
    pub version: String,
}

impl Default for EventStrings {
    fn default() -> Self {
        Self {
            manufacturer: "igvmm".into(),
            model: "igvmm-kvm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// Everything [`crate::run_vm`] needs.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The guest.
    pub image: GuestImage,
    /// Guest RAM in bytes, a multiple of 4 KiB.
    pub memory_bytes: u64,
    /// Number of vCPUs.
    pub cpus: u32,
    /// The platform to launch on. A [`GuestImage::Plan`] runs on the plan's own platform, which
    /// an explicit request must name.
    pub platform: PlatformRequest,
    /// The command line for the IGVM CommandLine parameter.
    pub cmdline: String,
    /// The destination of COM1.
    pub serial: SerialConfig,
    /// The destination of the debug console on port 0x402.
    pub debugcon: DebugconConfig,
    /// Strings of the SP800-155 event.
    pub event: EventStrings,
    /// Whether a CoRIM that does not decode, whose event cannot be built, or whose reference
    /// value differs from the predicted measurement is an error instead of a warning.
    pub strict_corim: bool,
    /// Options of the SEV-SNP and TDX launches.
    pub coco: CocoOptions,
    /// Stops the VM from another thread; `run_vm` also fires it when the guest stops.
    pub stop: StopHandle,
    /// Whether SIGINT and SIGTERM stop the VM. Only the process's main program should set
    /// this, because the handlers stay installed for the life of the process.
    pub handle_signals: bool,
}

impl VmConfig {
    /// Returns a configuration for `image` with 512 MiB of RAM, one vCPU, automatic platform
    /// choice, no console, the debug console in the log and no signal handling.
    pub fn new(image: GuestImage) -> Self {
        Self {
            image,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            cpus: 1,
            platform: PlatformRequest::Auto,
            cmdline: String::new(),
            serial: SerialConfig::None,
            debugcon: DebugconConfig::Log,
            event: EventStrings::default(),
            strict_corim: false,
            coco: CocoOptions::default(),
            stop: StopHandle::new(),
            handle_signals: false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Writes `bytes` to a new file in the temporary directory and returns its path.
    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("igvmm-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn mapped_file_has_file_contents() {
        let bytes: Vec<u8> = (0..3 * 4096 + 5).map(|i| (i % 251) as u8).collect();
        let path = temp_file("mapped", &bytes);
        let file = MappedFile::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        // The mapping stays valid after the path is gone, and clones share it.
        let clone = file.clone();
        drop(file);
        assert_eq!(&clone[..], &bytes[..]);
        assert_eq!(
            format!("{clone:?}"),
            "MappedFile { kind: \"mapped\", len: 12293 }"
        );
    }

    #[test]
    fn mapped_file_reads_what_cannot_be_mapped() {
        let path = temp_file("empty", &[]);
        let empty = MappedFile::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(empty.is_empty());
        assert_eq!(
            format!("{empty:?}"),
            "MappedFile { kind: \"read\", len: 0 }"
        );

        let null = MappedFile::open(Path::new("/dev/null")).unwrap();
        assert!(null.is_empty());

        let missing = MappedFile::open(Path::new("/nonexistent/igvmm.igvm")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}
