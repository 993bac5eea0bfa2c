//! SNP-only directives: the ID block layout and the guest policy.

use igvm::{IgvmDirectiveHeader, IgvmInitializationHeader};
use igvm_defs::{IGVM_VHS_SNP_ID_BLOCK_PUBLIC_KEY, IGVM_VHS_SNP_ID_BLOCK_SIGNATURE};

use super::fixtures::*;
use crate::builder::IgvmBuilder;
use crate::error::LoadError;
use crate::host::PlatformChoice;
use crate::load::load;
use crate::plan::{HeaderRef, Platform};

const SNP: u32 = 0x1;

fn signature(r: u8, s: u8) -> Box<IGVM_VHS_SNP_ID_BLOCK_SIGNATURE> {
    Box::new(IGVM_VHS_SNP_ID_BLOCK_SIGNATURE {
        r_comp: [r; 72],
        s_comp: [s; 72],
    })
}

fn key(curve: u32, qx: u8, qy: u8) -> Box<IGVM_VHS_SNP_ID_BLOCK_PUBLIC_KEY> {
    Box::new(IGVM_VHS_SNP_ID_BLOCK_PUBLIC_KEY {
        curve,
        reserved: 0,
        qx: [qx; 72],
        qy: [qy; 72],
    })
}

fn snp_file(with_policy: bool) -> Vec<u8> {
    let mut builder = IgvmBuilder::new();
    builder.platform(Platform::SevSnp, SNP, 0).unwrap();
    if with_policy {
        builder.initialization(IgvmInitializationHeader::GuestPolicy {
            policy: 0x3_0000,
            compatibility_mask: SNP,
        });
    }
    builder.pages(0x1000, &[1]).unwrap();
    builder.directive(IgvmDirectiveHeader::SnpIdBlock {
        compatibility_mask: SNP,
        author_key_enabled: 1,
        reserved: [0; 3],
        ld: [0x11; 48],
        family_id: [0x22; 16],
        image_id: [0x33; 16],
        version: 1,
        guest_svn: 7,
        id_key_algorithm: 1,
        author_key_algorithm: 1,
        id_key_signature: signature(0xA1, 0xA2),
        id_public_key: key(2, 0xB1, 0xB2),
        author_key_signature: signature(0xC1, 0xC2),
        author_public_key: key(2, 0xD1, 0xD2),
    });
    builder.build().unwrap()
}

fn snp_options() -> crate::load::LoadOptions {
    options(PlatformChoice::Exact(Platform::SevSnp), host_512m())
}

#[test]
fn id_block_uses_firmware_layout() {
    let file = snp_file(true);
    let plan = load(&file, &snp_options()).unwrap();
    assert_eq!(plan.guest_policy, Some(0x3_0000));
    let block = plan.snp_id_block.unwrap();
    assert!(block.author_key_enabled);

    let id = &block.id_block;
    assert_eq!(id.len(), 96);
    assert_eq!(id[..48], [0x11; 48]);
    assert_eq!(id[48..64], [0x22; 16]);
    assert_eq!(id[64..80], [0x33; 16]);
    assert_eq!(id[80..84], 1u32.to_le_bytes());
    assert_eq!(id[84..88], 7u32.to_le_bytes());
    assert_eq!(id[88..96], 0x3_0000u64.to_le_bytes());

    let auth = &block.id_auth;
    assert_eq!(auth.len(), 4096);
    assert_eq!(auth[0..4], 1u32.to_le_bytes());
    assert_eq!(auth[4..8], 1u32.to_le_bytes());
    assert!(auth[8..0x40].iter().all(|b| *b == 0));
    // ID block signature: R then S, in a 512-byte field.
    assert_eq!(auth[0x40..0x88], [0xA1; 72]);
    assert_eq!(auth[0x88..0xD0], [0xA2; 72]);
    assert!(auth[0xD0..0x240].iter().all(|b| *b == 0));
    // ID public key: curve, Qx, Qy, in a 0x404-byte field.
    assert_eq!(auth[0x240..0x244], 2u32.to_le_bytes());
    assert_eq!(auth[0x244..0x28C], [0xB1; 72]);
    assert_eq!(auth[0x28C..0x2D4], [0xB2; 72]);
    assert!(auth[0x2D4..0x680].iter().all(|b| *b == 0));
    // ID key signature by the author key, then the author public key.
    assert_eq!(auth[0x680..0x6C8], [0xC1; 72]);
    assert_eq!(auth[0x6C8..0x710], [0xC2; 72]);
    assert_eq!(auth[0x880..0x884], 2u32.to_le_bytes());
    assert_eq!(auth[0x884..0x8CC], [0xD1; 72]);
    assert_eq!(auth[0x8CC..0x914], [0xD2; 72]);
    assert!(auth[0x914..].iter().all(|b| *b == 0));
}

#[test]
fn id_block_needs_guest_policy() {
    assert_eq!(
        load(&snp_file(false), &snp_options()).unwrap_err(),
        LoadError::IdBlockWithoutPolicy {
            header: HeaderRef {
                header_type: 0x30B,
                index: 1
            }
        }
    );
}

#[test]
fn second_guest_policy_is_rejected() {
    let mut builder = IgvmBuilder::new();
    builder.platform(Platform::SevSnp, SNP, 0).unwrap();
    for policy in [0x3_0000, 0x2_0000] {
        builder.initialization(IgvmInitializationHeader::GuestPolicy {
            policy,
            compatibility_mask: SNP,
        });
    }
    assert_eq!(
        load(&builder.build().unwrap(), &snp_options()).unwrap_err(),
        LoadError::DuplicateHeader {
            header: HeaderRef {
                header_type: 0x101,
                index: 1
            },
            first: HeaderRef {
                header_type: 0x101,
                index: 0
            }
        }
    );
}
