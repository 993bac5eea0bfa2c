//! SEV-SNP launch digest: the chain of `PAGE_INFO` hashes that the firmware computes for each
//! `SNP_LAUNCH_UPDATE` (AMD SEV-SNP firmware ABI specification, `SNP_LAUNCH_UPDATE` and the
//! `PAGE_INFO` structure).
//!
//! The digest starts as 48 zero bytes. For each page the firmware hashes a 0x70-byte `PAGE_INFO`
//! that contains the current digest, the SHA-384 of the page contents (NORMAL and VMSA pages only,
//! zeros otherwise), the page type and the GPA. The SHA-384 of that structure becomes the next
//! digest.

use std::sync::OnceLock;

use sha2::{Digest, Sha384};

/// Length of the SHA-384 digest in bytes.
pub const DIGEST_LEN: usize = 48;

/// Length of the firmware `PAGE_INFO` structure; it is also the value of its `length` field.
pub const PAGE_INFO_LEN: usize = 0x70;

const PAGE_LEN: usize = 4096;

/// Byte offsets inside `PAGE_INFO`.
const OFFSET_CONTENTS: usize = 48;
const OFFSET_LENGTH: usize = 96;
const OFFSET_PAGE_TYPE: usize = 98;
const OFFSET_GPA: usize = 104;

/// The firmware page type of an `SNP_LAUNCH_UPDATE`. The numbers are the firmware's and KVM's
/// (`KVM_SEV_SNP_PAGE_TYPE_*`; the VMSA type is issued by KVM itself at `LAUNCH_FINISH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SnpPageType {
    /// Measured page: the digest covers the SHA-384 of its contents.
    Normal = 1,
    /// A vCPU save area.
    Vmsa = 2,
    /// A page the firmware zeroes; measured with zero contents. igvmm never issues it.
    Zero = 3,
    /// Page whose contents are not measured (parameter areas, unmeasured page data).
    Unmeasured = 4,
    /// The secrets page, filled by the firmware.
    Secrets = 5,
    /// The CPUID page, checked by the firmware.
    Cpuid = 6,
}

impl SnpPageType {
    /// Returns the page type for a firmware page-type number, or `None` for an unknown number.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Normal),
            2 => Some(Self::Vmsa),
            3 => Some(Self::Zero),
            4 => Some(Self::Unmeasured),
            5 => Some(Self::Secrets),
            6 => Some(Self::Cpuid),
            _ => None,
        }
    }

    /// Whether the firmware hashes the page contents into `PAGE_INFO.CONTENTS`.
    pub fn measures_contents(self) -> bool {
        matches!(self, Self::Normal | Self::Vmsa)
    }
}

/// Returns the SHA-384 of a 4 KiB page of zeros.
pub fn zero_page_digest() -> &'static [u8; DIGEST_LEN] {
    static DIGEST: OnceLock<[u8; DIGEST_LEN]> = OnceLock::new();
    DIGEST.get_or_init(|| Sha384::digest([0u8; PAGE_LEN]).into())
}

/// The running SEV-SNP launch digest.
///
/// Feed it the pages in the order the firmware receives them. It allocates once, at creation.
#[derive(Clone)]
pub struct SnpLaunchDigest {
    /// The `PAGE_INFO` being built; bytes 0..48 always hold the current digest.
    page_info: [u8; PAGE_INFO_LEN],
    /// Scratch page used to zero-pad data shorter than 4 KiB.
    padded: Box<[u8; PAGE_LEN]>,
    /// Number of pages chained so far.
    pages: u64,
    /// Number of content bytes hashed so far (4096 per NORMAL or VMSA page).
    bytes_hashed: u64,
}

impl Default for SnpLaunchDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SnpLaunchDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnpLaunchDigest")
            .field("digest", &crate::measure::hex_upper(&self.digest()))
            .field("pages", &self.pages)
            .finish()
    }
}

impl SnpLaunchDigest {
    /// Creates the digest of an empty launch (48 zero bytes).
    pub fn new() -> Self {
        let mut page_info = [0u8; PAGE_INFO_LEN];
        let length = (PAGE_INFO_LEN as u16).to_le_bytes();
        page_info[OFFSET_LENGTH..OFFSET_LENGTH + 2].copy_from_slice(&length);
        Self {
            page_info,
            padded: Box::new([0u8; PAGE_LEN]),
            pages: 0,
            bytes_hashed: 0,
        }
    }

    /// Chains one 4 KiB page.
    ///
    /// For NORMAL and VMSA pages `contents` is the page: `None` or a short slice is zero-padded to
    /// 4 KiB, and bytes past 4 KiB are ignored. For the other types the firmware measures zero
    /// contents, so `contents` is ignored.
    pub fn update_page(&mut self, page_type: SnpPageType, gpa: u64, contents: Option<&[u8]>) {
        let contents_digest: [u8; DIGEST_LEN] = if page_type.measures_contents() {
            match contents {
                None | Some([]) => *zero_page_digest(),
                Some(bytes) if bytes.len() >= PAGE_LEN => {
                    Sha384::digest(bytes.get(..PAGE_LEN).unwrap_or_default()).into()
                }
                Some(bytes) => {
                    self.padded.fill(0);
                    if let Some(prefix) = self.padded.get_mut(..bytes.len()) {
                        prefix.copy_from_slice(bytes);
                    }
                    Sha384::digest(&self.padded[..]).into()
                }
            }
        } else {
            [0u8; DIGEST_LEN]
        };
        self.update_with_contents_digest(page_type, gpa, &contents_digest);
    }

    /// Chains one page whose contents digest the caller has already computed (with
    /// [`page_digests`]); counts it as 4 KiB hashed when the type measures contents.
    pub fn update_with_contents_digest(
        &mut self,
        page_type: SnpPageType,
        gpa: u64,
        contents_digest: &[u8; DIGEST_LEN],
    ) {
        if page_type.measures_contents() {
            self.bytes_hashed += PAGE_LEN as u64;
        }
        self.page_info[OFFSET_CONTENTS..OFFSET_CONTENTS + DIGEST_LEN]
            .copy_from_slice(contents_digest);
        self.page_info[OFFSET_PAGE_TYPE] = page_type as u8;
        self.page_info[OFFSET_GPA..OFFSET_GPA + 8].copy_from_slice(&gpa.to_le_bytes());
        let next: [u8; DIGEST_LEN] = Sha384::digest(self.page_info).into();
        self.page_info[..DIGEST_LEN].copy_from_slice(&next);
        self.pages += 1;
    }

    /// Returns the current launch digest.
    pub fn digest(&self) -> [u8; DIGEST_LEN] {
        let mut digest = [0u8; DIGEST_LEN];
        digest.copy_from_slice(&self.page_info[..DIGEST_LEN]);
        digest
    }

    /// Returns the number of pages chained so far.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Returns the number of page-content bytes hashed so far.
    pub fn bytes_hashed(&self) -> u64 {
        self.bytes_hashed
    }
}

/// Returns the SHA-384 of each page in `pages`, as [`SnpLaunchDigest::update_page`] computes it
/// for a NORMAL page: `None` or a short slice is zero-padded to 4 KiB, bytes past 4 KiB are
/// ignored.
///
/// The pages are independent, so they are hashed on up to `threads` threads; only the chain of
/// `PAGE_INFO` hashes is sequential. The result is one allocation, whatever the page count.
pub fn page_digests(pages: &[Option<&[u8]>], threads: usize) -> Vec<[u8; DIGEST_LEN]> {
    let mut digests = vec![[0u8; DIGEST_LEN]; pages.len()];
    let threads = threads.clamp(1, pages.len().max(1));
    let chunk = pages.len().div_ceil(threads).max(1);
    let hash_chunk = |pages: &[Option<&[u8]>], digests: &mut [[u8; DIGEST_LEN]]| {
        let mut padded = [0u8; PAGE_LEN];
        for (page, digest) in pages.iter().zip(digests.iter_mut()) {
            *digest = match page {
                None | Some([]) => *zero_page_digest(),
                Some(bytes) if bytes.len() >= PAGE_LEN => {
                    Sha384::digest(bytes.get(..PAGE_LEN).unwrap_or_default()).into()
                }
                Some(bytes) => {
                    padded.fill(0);
                    if let Some(prefix) = padded.get_mut(..bytes.len()) {
                        prefix.copy_from_slice(bytes);
                    }
                    Sha384::digest(padded).into()
                }
            };
        }
    };
    if threads == 1 {
        hash_chunk(pages, &mut digests);
        return digests;
    }
    std::thread::scope(|scope| {
        for (pages, digests) in pages.chunks(chunk).zip(digests.chunks_mut(chunk)) {
            scope.spawn(move || hash_chunk(pages, digests));
        }
    });
    digests
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// Builds `PAGE_INFO` field by field, independently of the running buffer above.
    fn page_info(prev: &[u8; 48], contents: &[u8; 48], page_type: u8, gpa: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(prev);
        bytes.extend_from_slice(contents);
        bytes.extend_from_slice(&0x70u16.to_le_bytes());
        bytes.push(page_type);
        bytes.push(0);
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&gpa.to_le_bytes());
        bytes
    }

    #[test]
    fn page_info_chain_matches_field_layout() {
        let mut page = vec![0u8; 4096];
        page[0] = 0xAB;
        page[4095] = 0xCD;
        let mut chain = SnpLaunchDigest::new();
        chain.update_page(SnpPageType::Normal, 0x1000, Some(&page));
        chain.update_page(SnpPageType::Unmeasured, 0x2000, Some(&page));

        let first: [u8; 48] = {
            let contents: [u8; 48] = Sha384::digest(&page).into();
            let info = page_info(&[0; 48], &contents, 1, 0x1000);
            assert_eq!(info.len(), 0x70);
            Sha384::digest(&info).into()
        };
        let second: [u8; 48] = Sha384::digest(page_info(&first, &[0; 48], 4, 0x2000)).into();
        assert_eq!(chain.digest(), second);
        assert_eq!(chain.pages(), 2);
        assert_eq!(chain.bytes_hashed(), 4096);
    }

    #[test]
    fn short_page_is_zero_padded() {
        let mut short = SnpLaunchDigest::new();
        short.update_page(SnpPageType::Normal, 0, Some(&[1, 2, 3]));
        let mut full_page = vec![0u8; 4096];
        full_page[..3].copy_from_slice(&[1, 2, 3]);
        let mut full = SnpLaunchDigest::new();
        full.update_page(SnpPageType::Normal, 0, Some(&full_page));
        assert_eq!(short.digest(), full.digest());
    }

    #[test]
    fn empty_page_hashes_as_zero_page() {
        let mut empty = SnpLaunchDigest::new();
        empty.update_page(SnpPageType::Normal, 0x5000, None);
        let mut zeros = SnpLaunchDigest::new();
        zeros.update_page(SnpPageType::Normal, 0x5000, Some(&[0u8; 4096]));
        assert_eq!(empty.digest(), zeros.digest());
        let expected: [u8; 48] = Sha384::digest([0u8; 4096]).into();
        assert_eq!(zero_page_digest(), &expected);
    }

    #[test]
    fn parallel_page_digests_match_sequential() {
        let data: Vec<Vec<u8>> = (0..37u8)
            .map(|seed| vec![seed; 4096 - usize::from(seed)])
            .collect();
        let mut pages: Vec<Option<&[u8]>> = data.iter().map(|page| Some(page.as_slice())).collect();
        pages.push(None);
        let sequential = page_digests(&pages, 1);
        assert_eq!(page_digests(&pages, 4), sequential);
        assert_eq!(page_digests(&pages, 64), sequential);
        let mut chain = SnpLaunchDigest::new();
        chain.update_page(SnpPageType::Normal, 0, pages[5]);
        let mut from_digest = SnpLaunchDigest::new();
        from_digest.update_with_contents_digest(SnpPageType::Normal, 0, &sequential[5]);
        assert_eq!(chain.digest(), from_digest.digest());
        assert_eq!(sequential[37], *zero_page_digest());
        assert!(page_digests(&[], 4).is_empty());
    }

    #[test]
    fn page_type_numbers_round_trip() {
        for value in 0u8..=8 {
            match SnpPageType::from_u8(value) {
                Some(page_type) => assert_eq!(page_type as u8, value),
                None => assert!(value == 0 || value > 6),
            }
        }
    }
}
