//! Intel TDX MRTD: the running SHA-384 that the TDX module extends for each `TDH.MEM.PAGE.ADD`
//! and `TDH.MR.EXTEND` before `TDH.MR.FINALIZE` (Intel TDX module base architecture
//! specification, MRTD).
//!
//! `TDH.MEM.PAGE.ADD` hashes a 128-byte record: the ASCII operation name `MEM.PAGE.ADD` padded to
//! 16 bytes, the GPA and 104 zero bytes. `TDH.MR.EXTEND` hashes a 384-byte record: `MR.EXTEND`
//! padded to 16 bytes, the GPA of the 256-byte chunk, 104 zero bytes and the chunk. KVM issues
//! PAGE.ADD for every page given to `KVM_TDX_INIT_MEM_REGION` and, with
//! `KVM_TDX_MEASURE_MEMORY_REGION`, sixteen MR.EXTENDs right after it, so one page adds one
//! PAGE.ADD record and optionally sixteen MR.EXTEND records, in that order.

use sha2::{Digest, Sha384};

use super::snp::DIGEST_LEN;

const PAGE_LEN: usize = 4096;
/// Bytes covered by one `TDH.MR.EXTEND`.
pub const EXTEND_CHUNK_LEN: usize = 256;
/// Length of the `MEM.PAGE.ADD` record.
pub const PAGE_ADD_RECORD_LEN: usize = 128;
/// Length of the `MR.EXTEND` record.
pub const MR_EXTEND_RECORD_LEN: usize = 384;
const EXTENDS_PER_PAGE: usize = PAGE_LEN / EXTEND_CHUNK_LEN;
/// The records of one measured page: PAGE.ADD followed by sixteen MR.EXTEND.
const MEASURED_PAGE_RECORDS_LEN: usize =
    PAGE_ADD_RECORD_LEN + EXTENDS_PER_PAGE * MR_EXTEND_RECORD_LEN;

const PAGE_ADD_NAME: &[u8; 16] = b"MEM.PAGE.ADD\0\0\0\0";
const MR_EXTEND_NAME: &[u8; 16] = b"MR.EXTEND\0\0\0\0\0\0\0";
/// Offset of the GPA inside both records.
const OFFSET_GPA: usize = 16;
/// Offset of the data inside an MR.EXTEND record.
const OFFSET_EXTEND_DATA: usize = 128;

/// Copies `bytes` into `buffer` at `offset`; the callers' offsets are constants inside the
/// record buffer, so nothing is ever cut off.
fn write_at(buffer: &mut [u8], offset: usize, bytes: &[u8]) {
    if let Some(target) = buffer.get_mut(offset..offset + bytes.len()) {
        target.copy_from_slice(bytes);
    }
}

/// The running TDX MRTD.
///
/// The records of one page are laid out once in a reusable buffer and hashed with a single
/// update, so measuring allocates nothing after creation.
#[derive(Clone)]
pub struct MrtdHasher {
    hasher: Sha384,
    /// PAGE.ADD record followed by sixteen MR.EXTEND records; names are filled in at creation.
    records: Box<[u8; MEASURED_PAGE_RECORDS_LEN]>,
    /// Number of PAGE.ADD operations so far.
    page_adds: u64,
    /// Number of pages that were also extended.
    pages_extended: u64,
    /// Number of bytes fed to SHA-384 so far.
    bytes_hashed: u64,
}

impl Default for MrtdHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MrtdHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MrtdHasher")
            .field("page_adds", &self.page_adds)
            .field("pages_extended", &self.pages_extended)
            .finish()
    }
}

impl MrtdHasher {
    /// Creates the hash of an empty TD.
    pub fn new() -> Self {
        let mut records = Box::new([0u8; MEASURED_PAGE_RECORDS_LEN]);
        write_at(&mut records[..], 0, PAGE_ADD_NAME);
        for chunk in 0..EXTENDS_PER_PAGE {
            let start = PAGE_ADD_RECORD_LEN + chunk * MR_EXTEND_RECORD_LEN;
            write_at(&mut records[..], start, MR_EXTEND_NAME);
        }
        Self {
            hasher: Sha384::new(),
            records,
            page_adds: 0,
            pages_extended: 0,
            bytes_hashed: 0,
        }
    }

    /// Records a `TDH.MEM.PAGE.ADD` of the page at `gpa` without extending its contents (an
    /// unmeasured page or a parameter area).
    pub fn add_page(&mut self, gpa: u64) {
        self.write_page_add(gpa);
        let (page_add, _) = self.records.split_at(PAGE_ADD_RECORD_LEN);
        self.hasher.update(page_add);
        self.page_adds += 1;
        self.bytes_hashed += PAGE_ADD_RECORD_LEN as u64;
    }

    /// Records a `TDH.MEM.PAGE.ADD` of the page at `gpa` followed by the sixteen `TDH.MR.EXTEND`s
    /// of its contents. `None` or a short slice is zero-padded to 4 KiB; bytes past 4 KiB are
    /// ignored.
    pub fn add_measured_page(&mut self, gpa: u64, contents: Option<&[u8]>) {
        self.write_page_add(gpa);
        let contents = contents.unwrap_or_default();
        for chunk in 0..EXTENDS_PER_PAGE {
            let record = PAGE_ADD_RECORD_LEN + chunk * MR_EXTEND_RECORD_LEN;
            let chunk_offset = chunk * EXTEND_CHUNK_LEN;
            let chunk_gpa = gpa.wrapping_add(chunk_offset as u64);
            write_at(
                &mut self.records[..],
                record + OFFSET_GPA,
                &chunk_gpa.to_le_bytes(),
            );

            let data_start = record + OFFSET_EXTEND_DATA;
            let source = contents
                .get(chunk_offset..)
                .map(|rest| rest.get(..EXTEND_CHUNK_LEN).unwrap_or(rest))
                .unwrap_or_default();
            if let Some(data) = self
                .records
                .get_mut(data_start..data_start + EXTEND_CHUNK_LEN)
            {
                data.fill(0);
            }
            write_at(&mut self.records[..], data_start, source);
        }
        self.hasher.update(&self.records[..]);
        self.page_adds += 1;
        self.pages_extended += 1;
        self.bytes_hashed += MEASURED_PAGE_RECORDS_LEN as u64;
    }

    fn write_page_add(&mut self, gpa: u64) {
        write_at(&mut self.records[..], OFFSET_GPA, &gpa.to_le_bytes());
    }

    /// Returns the number of `TDH.MEM.PAGE.ADD` operations recorded.
    pub fn page_adds(&self) -> u64 {
        self.page_adds
    }

    /// Returns the number of pages whose contents were extended.
    pub fn pages_extended(&self) -> u64 {
        self.pages_extended
    }

    /// Returns the number of bytes fed to SHA-384.
    pub fn bytes_hashed(&self) -> u64 {
        self.bytes_hashed
    }

    /// Returns the MRTD of the operations recorded so far.
    pub fn digest(&self) -> [u8; DIGEST_LEN] {
        self.hasher.clone().finalize().into()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn page_add_record(gpa: u64) -> Vec<u8> {
        let mut record = b"MEM.PAGE.ADD".to_vec();
        record.resize(16, 0);
        record.extend_from_slice(&gpa.to_le_bytes());
        record.resize(128, 0);
        record
    }

    fn mr_extend_record(gpa: u64, data: &[u8]) -> Vec<u8> {
        let mut record = b"MR.EXTEND".to_vec();
        record.resize(16, 0);
        record.extend_from_slice(&gpa.to_le_bytes());
        record.resize(128, 0);
        record.extend_from_slice(data);
        assert_eq!(record.len(), 384);
        record
    }

    #[test]
    fn records_match_module_layout() {
        let page: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let mut mrtd = MrtdHasher::new();
        mrtd.add_page(0x8000);
        mrtd.add_measured_page(0x9000, Some(&page));

        let mut reference = Sha384::new();
        reference.update(page_add_record(0x8000));
        reference.update(page_add_record(0x9000));
        for chunk in 0..16u64 {
            let start = (chunk * 256) as usize;
            reference.update(mr_extend_record(
                0x9000 + chunk * 256,
                &page[start..start + 256],
            ));
        }
        let expected: [u8; 48] = reference.finalize().into();
        assert_eq!(mrtd.digest(), expected);
        assert_eq!(mrtd.page_adds(), 2);
        assert_eq!(mrtd.pages_extended(), 1);
        assert_eq!(mrtd.bytes_hashed(), 128 + 128 + 16 * 384);
    }

    #[test]
    fn short_and_empty_pages_extend_zeros() {
        let mut short = MrtdHasher::new();
        short.add_measured_page(0x1000, Some(&[7u8; 300]));
        let mut padded = vec![0u8; 4096];
        padded[..300].fill(7);
        let mut full = MrtdHasher::new();
        full.add_measured_page(0x1000, Some(&padded));
        assert_eq!(short.digest(), full.digest());

        let mut empty = MrtdHasher::new();
        empty.add_measured_page(0x1000, None);
        let mut zeros = MrtdHasher::new();
        zeros.add_measured_page(0x1000, Some(&[0u8; 4096]));
        assert_eq!(empty.digest(), zeros.digest());
    }

    #[test]
    fn buffer_reuse_does_not_leak_previous_page() {
        let mut reused = MrtdHasher::new();
        reused.add_measured_page(0x1000, Some(&[0xFFu8; 4096]));
        reused.add_measured_page(0x2000, Some(&[1u8; 10]));

        let mut fresh_tail = vec![0u8; 4096];
        fresh_tail[..10].fill(1);
        let mut reference = MrtdHasher::new();
        reference.add_measured_page(0x1000, Some(&[0xFFu8; 4096]));
        reference.add_measured_page(0x2000, Some(&fresh_tail));
        assert_eq!(reused.digest(), reference.digest());
    }
}
