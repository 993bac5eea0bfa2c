//! The SNP ID block and ID authentication structure that `SNP_LAUNCH_FINISH` takes, built from
//! an IGVM SnpIdBlock directive.
//!
//! Layouts follow the AMD SEV-SNP firmware ABI. The ID block is 96 bytes: `ld`, `family_id`,
//! `image_id`, `version`, `guest_svn` and `policy`. The ID authentication structure is 4096
//! bytes, with the key algorithms at 0 and 4, the ID block signature at 0x40, the ID public key
//! at 0x240, the ID key signature at 0x680 and the author public key at 0x880. A signature is R
//! (72 bytes) then S (72 bytes). A public key is the curve (u32) then Qx and Qy (72 bytes each).

use igvm::IgvmDirectiveHeader;
use igvm_defs::{IGVM_VHS_SNP_ID_BLOCK_PUBLIC_KEY, IGVM_VHS_SNP_ID_BLOCK_SIGNATURE};

use crate::plan::SnpIdBlock;

/// Size of the ID block.
pub const ID_BLOCK_SIZE: usize = 96;
/// Size of the ID authentication information structure.
pub const ID_AUTH_SIZE: usize = 4096;

const AUTH_ID_KEY_ALGO: usize = 0x0;
const AUTH_AUTHOR_KEY_ALGO: usize = 0x4;
const AUTH_ID_BLOCK_SIG: usize = 0x40;
const AUTH_ID_KEY: usize = 0x240;
const AUTH_ID_KEY_SIG: usize = 0x680;
const AUTH_AUTHOR_KEY: usize = 0x880;
/// Offset of S within a signature.
const SIGNATURE_S: usize = 0x48;
/// Offsets of Qx and Qy within a public key.
const KEY_QX: usize = 0x4;
const KEY_QY: usize = 0x4C;

fn put(buffer: &mut [u8], offset: usize, bytes: &[u8]) {
    if let Some(slot) = buffer.get_mut(offset..offset + bytes.len()) {
        slot.copy_from_slice(bytes);
    }
}

fn put_signature(buffer: &mut [u8], offset: usize, signature: &IGVM_VHS_SNP_ID_BLOCK_SIGNATURE) {
    put(buffer, offset, &signature.r_comp);
    put(buffer, offset + SIGNATURE_S, &signature.s_comp);
}

fn put_key(buffer: &mut [u8], offset: usize, key: &IGVM_VHS_SNP_ID_BLOCK_PUBLIC_KEY) {
    put(buffer, offset, &key.curve.to_le_bytes());
    put(buffer, offset + KEY_QX, &key.qx);
    put(buffer, offset + KEY_QY, &key.qy);
}

/// Builds the ID block and ID authentication structure from an SnpIdBlock directive and the
/// launch policy. Returns `None` for any other directive.
pub(crate) fn from_directive(directive: &IgvmDirectiveHeader, policy: u64) -> Option<SnpIdBlock> {
    let IgvmDirectiveHeader::SnpIdBlock {
        author_key_enabled,
        ld,
        family_id,
        image_id,
        version,
        guest_svn,
        id_key_algorithm,
        author_key_algorithm,
        id_key_signature,
        id_public_key,
        author_key_signature,
        author_public_key,
        ..
    } = directive
    else {
        return None;
    };

    let mut id_block = Vec::with_capacity(ID_BLOCK_SIZE);
    id_block.extend_from_slice(ld);
    id_block.extend_from_slice(family_id);
    id_block.extend_from_slice(image_id);
    id_block.extend_from_slice(&version.to_le_bytes());
    id_block.extend_from_slice(&guest_svn.to_le_bytes());
    id_block.extend_from_slice(&policy.to_le_bytes());

    let mut id_auth = vec![0u8; ID_AUTH_SIZE];
    put(
        &mut id_auth,
        AUTH_ID_KEY_ALGO,
        &id_key_algorithm.to_le_bytes(),
    );
    put(
        &mut id_auth,
        AUTH_AUTHOR_KEY_ALGO,
        &author_key_algorithm.to_le_bytes(),
    );
    put_signature(&mut id_auth, AUTH_ID_BLOCK_SIG, id_key_signature);
    put_key(&mut id_auth, AUTH_ID_KEY, id_public_key);
    put_signature(&mut id_auth, AUTH_ID_KEY_SIG, author_key_signature);
    put_key(&mut id_auth, AUTH_AUTHOR_KEY, author_public_key);

    Some(SnpIdBlock {
        id_block,
        id_auth,
        author_key_enabled: *author_key_enabled != 0,
    })
}
