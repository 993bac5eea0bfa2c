//! TCG SP800-155 Event3 bodies, the platform-identity events that OVMF copies from fw_cfg
//! into the TPM or confidential-computing event log as unmeasured `EV_NO_ACTION` events.
//!
//! The layout is `TCG_Sp800_155_PlatformId_Event3` as edk2 declares it in
//! `MdePkg/Include/IndustryStandard/UefiTcgPlatform.h` (TCG PC Client Platform Firmware
//! Profile). All integers are little-endian, and edk2 calls the first one `VendorId`:
//!
//! ```text
//! Signature[16]                 "SP800-155 Event3"
//! u32 PlatformManufacturerId    IANA private enterprise number
//! ReferenceManifestGuid[16]
//! u8 size + PlatformManufacturerStr, PlatformModel, PlatformVersion, FirmwareManufacturerStr
//! u32 FirmwareManufacturerId
//! u8 size + FirmwareVersion
//! u32 RIMLocatorType, u32 RIMLocatorLength, RIMLocator[RIMLocatorLength]
//! u32 PlatformCertLocatorType, u32 PlatformCertLocatorLength, PlatformCertLocator[...]
//! ```
//!
//! Each string is stored with a NUL terminator, and its size byte counts the terminator, so an
//! empty string is `{1, 0}`. The builder always uses RIM locator type 0 (raw data: the locator
//! bytes are the reference manifest itself) and an empty platform certificate locator (type 0,
//! length 0).
//!
//! OVMF reads the events from the fw_cfg files `opt/org.tianocode/sp800155evt/0`, `/1`, ...
//! (see [`fw_cfg_file_name`]) and stores each in a GUID HOB, which limits one event to 65,504
//! bytes. [`build_event3`] rejects larger events.

use sha2::{Digest, Sha256};

/// Signature at the start of every Event3 body.
pub const EVENT3_SIGNATURE: [u8; 16] = *b"SP800-155 Event3";
/// Largest event OVMF accepts: a 64 KiB HOB, less its header and 8-byte rounding.
pub const MAX_EVENT3_SIZE: usize = 65_504;
/// RIM locator type: the locator holds the reference manifest itself.
pub const LOCATOR_TYPE_RAW_DATA: u32 = 0;
/// RIM locator type: the locator is a URI.
pub const LOCATOR_TYPE_URI: u32 = 1;
/// RIM locator type: the locator is a UEFI device path.
pub const LOCATOR_TYPE_DEVICE_PATH: u32 = 2;
/// RIM locator type: the locator is a UEFI variable (GUID and UCS-2 name).
pub const LOCATOR_TYPE_UEFI_VARIABLE: u32 = 3;
/// Largest string, NUL terminator included, that a one-byte size field describes.
const MAX_STRING_SIZE: usize = u8::MAX as usize;
/// Prefix of the fw_cfg file names OVMF reads events from.
pub const FW_CFG_FILE_PREFIX: &str = "opt/org.tianocode/sp800155evt/";

/// Returns the fw_cfg file name of event `index`; OVMF stops at the first missing index.
pub fn fw_cfg_file_name(index: u32) -> String {
    format!("{FW_CFG_FILE_PREFIX}{index}")
}

/// Error from building an Event3 body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Event3Error {
    /// A string does not fit its one-byte size field together with its NUL terminator.
    #[error(
        "SP800-155 field {field} is {len} bytes long; at most 254 fit with the NUL terminator"
    )]
    StringTooLong {
        /// Name of the field in the TCG structure.
        field: &'static str,
        /// Length of the string without the terminator.
        len: usize,
    },
    /// A string contains a NUL byte, which would end it early for parsers.
    #[error("SP800-155 field {field} contains a NUL byte")]
    StringContainsNul {
        /// Name of the field in the TCG structure.
        field: &'static str,
    },
    /// The event is larger than one OVMF HOB can carry.
    #[error("SP800-155 Event3 would be {size} bytes long; OVMF accepts at most 65504, so shorten the RIM locator")]
    EventTooLarge {
        /// Size the event would have.
        size: usize,
    },
}

/// Error from parsing an Event3 body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Event3ParseError {
    /// The body ends inside a field.
    #[error("SP800-155 Event3 ends inside field {field}")]
    Truncated {
        /// Name of the field in the TCG structure.
        field: &'static str,
    },
    /// The body does not start with "SP800-155 Event3".
    #[error("SP800-155 Event3 signature is missing")]
    InvalidSignature,
    /// A string has size 0 or does not end with its NUL terminator.
    #[error("SP800-155 field {field} does not end with a NUL terminator")]
    MissingNul {
        /// Name of the field in the TCG structure.
        field: &'static str,
    },
    /// A string is not UTF-8.
    #[error("SP800-155 field {field} is not UTF-8")]
    InvalidUtf8 {
        /// Name of the field in the TCG structure.
        field: &'static str,
    },
    /// Bytes follow the platform certificate locator.
    #[error("SP800-155 Event3 has {count} bytes after its last field")]
    TrailingBytes {
        /// Number of extra bytes.
        count: usize,
    },
}

/// Values of an Event3 that the builder takes from the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event3Fields<'a> {
    /// IANA private enterprise number of the platform manufacturer.
    pub platform_manufacturer_id: u32,
    /// Platform manufacturer name.
    pub platform_manufacturer: &'a str,
    /// Platform model name.
    pub platform_model: &'a str,
    /// Platform version.
    pub platform_version: &'a str,
    /// Firmware manufacturer name.
    pub firmware_manufacturer: &'a str,
    /// IANA private enterprise number of the firmware manufacturer.
    pub firmware_manufacturer_id: u32,
    /// Firmware version.
    pub firmware_version: &'a str,
    /// The reference manifest (for example a signed CoRIM), embedded as a raw-data locator.
    pub rim_locator: &'a [u8],
}

/// An Event3 body decoded field by field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event3 {
    /// IANA private enterprise number of the platform manufacturer.
    pub platform_manufacturer_id: u32,
    /// GUID of the reference manifest, in EFI_GUID byte order.
    pub reference_manifest_guid: [u8; 16],
    /// Platform manufacturer name, without the terminator.
    pub platform_manufacturer: String,
    /// Platform model name, without the terminator.
    pub platform_model: String,
    /// Platform version, without the terminator.
    pub platform_version: String,
    /// Firmware manufacturer name, without the terminator.
    pub firmware_manufacturer: String,
    /// IANA private enterprise number of the firmware manufacturer.
    pub firmware_manufacturer_id: u32,
    /// Firmware version, without the terminator.
    pub firmware_version: String,
    /// Kind of RIM locator (`LOCATOR_TYPE_*`).
    pub rim_locator_type: u32,
    /// RIM locator bytes.
    pub rim_locator: Vec<u8>,
    /// Kind of platform certificate locator.
    pub platform_cert_locator_type: u32,
    /// Platform certificate locator bytes.
    pub platform_cert_locator: Vec<u8>,
}

/// Derives the ReferenceManifestGuid from the locator bytes.
///
/// The GUID is the first 16 bytes of SHA-256 of `locator`, read as an EFI_GUID in memory
/// order (Data1, Data2 and Data3 little-endian). The RFC 4122 version nibble is set to 5 (the
/// high nibble of Data3, byte 7) and the variant to 0b10 (the top bits of `Data4[0]`, byte 8).
/// Its text form therefore reads `xxxxxxxx-xxxx-5xxx-[89ab]xxx-xxxxxxxxxxxx`, and the same
/// manifest always gives the same GUID. It is not an RFC 4122 name-based UUID: those hash a
/// namespace and the name with SHA-1.
pub fn reference_manifest_guid(locator: &[u8]) -> [u8; 16] {
    let digest = Sha256::digest(locator);
    let mut guid = [0u8; 16];
    for (slot, byte) in guid.iter_mut().zip(digest.iter()) {
        *slot = *byte;
    }
    let [.., data3_high, data4_first, _, _, _, _, _, _, _] = &mut guid;
    *data3_high = (*data3_high & 0x0F) | 0x50;
    *data4_first = (*data4_first & 0x3F) | 0x80;
    guid
}

/// Builds an Event3 body with RIM locator type 0 (raw data) holding `fields.rim_locator`, a
/// ReferenceManifestGuid from [`reference_manifest_guid`] and no platform certificate.
pub fn build_event3(fields: &Event3Fields<'_>) -> Result<Vec<u8>, Event3Error> {
    let strings = [
        ("PlatformManufacturerStr", fields.platform_manufacturer),
        ("PlatformModel", fields.platform_model),
        ("PlatformVersion", fields.platform_version),
        ("FirmwareManufacturerStr", fields.firmware_manufacturer),
        ("FirmwareVersion", fields.firmware_version),
    ];
    for (field, value) in strings {
        validate_string(field, value)?;
    }

    // Fixed fields: signature, two IDs, GUID, five size bytes and four locator words.
    let fixed: usize = 16 + 4 + 16 + 5 + 4 + 4 * 4;
    let size = strings
        .iter()
        .fold(fixed, |size, (_, value)| {
            size.saturating_add(value.len() + 1)
        })
        .saturating_add(fields.rim_locator.len());
    if size > MAX_EVENT3_SIZE {
        return Err(Event3Error::EventTooLarge { size });
    }
    // The size check bounds the locator far below 4 GiB.
    let locator_len =
        u32::try_from(fields.rim_locator.len()).map_err(|_| Event3Error::EventTooLarge { size })?;

    let mut event = Vec::with_capacity(size);
    event.extend_from_slice(&EVENT3_SIGNATURE);
    event.extend_from_slice(&fields.platform_manufacturer_id.to_le_bytes());
    event.extend_from_slice(&reference_manifest_guid(fields.rim_locator));
    push_string(&mut event, fields.platform_manufacturer);
    push_string(&mut event, fields.platform_model);
    push_string(&mut event, fields.platform_version);
    push_string(&mut event, fields.firmware_manufacturer);
    event.extend_from_slice(&fields.firmware_manufacturer_id.to_le_bytes());
    push_string(&mut event, fields.firmware_version);
    event.extend_from_slice(&LOCATOR_TYPE_RAW_DATA.to_le_bytes());
    event.extend_from_slice(&locator_len.to_le_bytes());
    event.extend_from_slice(fields.rim_locator);
    event.extend_from_slice(&LOCATOR_TYPE_RAW_DATA.to_le_bytes());
    event.extend_from_slice(&0u32.to_le_bytes());
    Ok(event)
}

fn validate_string(field: &'static str, value: &str) -> Result<(), Event3Error> {
    if value.bytes().any(|byte| byte == 0) {
        return Err(Event3Error::StringContainsNul { field });
    }
    if value.len() >= MAX_STRING_SIZE {
        return Err(Event3Error::StringTooLong {
            field,
            len: value.len(),
        });
    }
    Ok(())
}

/// Appends the size byte, the string and its NUL terminator. The caller checked the length.
fn push_string(event: &mut Vec<u8>, value: &str) {
    let size = u8::try_from(value.len() + 1).unwrap_or(u8::MAX);
    event.push(size);
    event.extend_from_slice(value.as_bytes());
    event.push(0);
}

/// Decodes an Event3 body field by field, rejecting truncation, strings without their NUL
/// terminator and trailing bytes.
pub fn parse_event3(bytes: &[u8]) -> Result<Event3, Event3ParseError> {
    let mut reader = Reader { rest: bytes };
    if reader.take(16, "Signature")? != EVENT3_SIGNATURE {
        return Err(Event3ParseError::InvalidSignature);
    }
    let platform_manufacturer_id = reader.u32("PlatformManufacturerId")?;

    let mut reference_manifest_guid = [0u8; 16];
    reference_manifest_guid.copy_from_slice(reader.take(16, "ReferenceManifestGuid")?);
    let platform_manufacturer = reader.string("PlatformManufacturerStr")?;
    let platform_model = reader.string("PlatformModel")?;
    let platform_version = reader.string("PlatformVersion")?;
    let firmware_manufacturer = reader.string("FirmwareManufacturerStr")?;
    let firmware_manufacturer_id = reader.u32("FirmwareManufacturerId")?;
    let firmware_version = reader.string("FirmwareVersion")?;

    let rim_locator_type = reader.u32("RIMLocatorType")?;
    let rim_locator_len = reader.u32("RIMLocatorLength")?;
    let rim_locator = reader
        .take(rim_locator_len as usize, "RIMLocator")?
        .to_vec();
    let platform_cert_locator_type = reader.u32("PlatformCertLocatorType")?;
    let platform_cert_locator_len = reader.u32("PlatformCertLocatorLength")?;
    let platform_cert_locator = reader
        .take(platform_cert_locator_len as usize, "PlatformCertLocator")?
        .to_vec();

    if !reader.rest.is_empty() {
        return Err(Event3ParseError::TrailingBytes {
            count: reader.rest.len(),
        });
    }
    Ok(Event3 {
        platform_manufacturer_id,
        reference_manifest_guid,
        platform_manufacturer,
        platform_model,
        platform_version,
        firmware_manufacturer,
        firmware_manufacturer_id,
        firmware_version,
        rim_locator_type,
        rim_locator,
        platform_cert_locator_type,
        platform_cert_locator,
    })
}

/// Cursor over the bytes of an event.
struct Reader<'a> {
    /// Bytes not read yet.
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], Event3ParseError> {
        if len > self.rest.len() {
            return Err(Event3ParseError::Truncated { field });
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, Event3ParseError> {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(self.take(4, field)?);
        Ok(u32::from_le_bytes(bytes))
    }

    fn string(&mut self, field: &'static str) -> Result<String, Event3ParseError> {
        let size = self.take(1, field)?.first().copied().unwrap_or(0);
        let bytes = self.take(usize::from(size), field)?;
        let Some((0, text)) = bytes.split_last() else {
            return Err(Event3ParseError::MissingNul { field });
        };
        String::from_utf8(text.to_vec()).map_err(|_| Event3ParseError::InvalidUtf8 { field })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn fields(locator: &[u8]) -> Event3Fields<'_> {
        Event3Fields {
            platform_manufacturer_id: 11129,
            platform_manufacturer: "igvmm",
            platform_model: "igvmm KVM",
            platform_version: "0.1.0",
            firmware_manufacturer: "",
            firmware_manufacturer_id: 0,
            firmware_version: "IGVM",
            rim_locator: locator,
        }
    }

    /// Formats a GUID stored in EFI_GUID byte order as text.
    fn guid_text(guid: &[u8; 16]) -> String {
        format!(
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
            u32::from_le_bytes(guid[0..4].try_into().unwrap()),
            u16::from_le_bytes(guid[4..6].try_into().unwrap()),
            u16::from_le_bytes(guid[6..8].try_into().unwrap()),
            guid[8],
            guid[9],
            guid[10..]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )
    }

    #[test]
    fn guid_from_sha256() {
        // SHA-256("abc") starts ba7816bf 8f01cfea 414140de 5dae2223.
        let guid = reference_manifest_guid(b"abc");
        assert_eq!(
            guid,
            [
                0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0x5a, 0x81, 0x41, 0x40, 0xde, 0x5d, 0xae,
                0x22, 0x23
            ]
        );
        assert_eq!(guid_text(&guid), "bf1678ba-018f-5acf-8141-40de5dae2223");
        assert_ne!(reference_manifest_guid(b"abd"), guid);
    }

    #[test]
    fn event_layout_byte_by_byte() {
        let event = build_event3(&fields(b"\xD2\x84corim")).unwrap();
        let mut expected = Vec::new();
        expected.extend_from_slice(b"SP800-155 Event3");
        expected.extend_from_slice(&11129u32.to_le_bytes());
        expected.extend_from_slice(&reference_manifest_guid(b"\xD2\x84corim"));
        expected.extend_from_slice(b"\x06igvmm\0");
        expected.extend_from_slice(b"\x0Aigvmm KVM\0");
        expected.extend_from_slice(b"\x060.1.0\0");
        expected.extend_from_slice(b"\x01\0");
        expected.extend_from_slice(&0u32.to_le_bytes());
        expected.extend_from_slice(b"\x05IGVM\0");
        expected.extend_from_slice(&0u32.to_le_bytes());
        expected.extend_from_slice(&7u32.to_le_bytes());
        expected.extend_from_slice(b"\xD2\x84corim");
        expected.extend_from_slice(&[0; 8]);
        assert_eq!(event, expected);
    }

    #[test]
    fn parse_round_trip() {
        let locator = vec![0xA5; 1000];
        let event = build_event3(&fields(&locator)).unwrap();
        let parsed = parse_event3(&event).unwrap();
        assert_eq!(parsed.platform_manufacturer_id, 11129);
        assert_eq!(
            parsed.reference_manifest_guid,
            reference_manifest_guid(&locator)
        );
        assert_eq!(parsed.platform_manufacturer, "igvmm");
        assert_eq!(parsed.platform_model, "igvmm KVM");
        assert_eq!(parsed.platform_version, "0.1.0");
        assert_eq!(parsed.firmware_manufacturer, "");
        assert_eq!(parsed.firmware_manufacturer_id, 0);
        assert_eq!(parsed.firmware_version, "IGVM");
        assert_eq!(parsed.rim_locator_type, LOCATOR_TYPE_RAW_DATA);
        assert_eq!(parsed.rim_locator, locator);
        assert_eq!(parsed.platform_cert_locator_type, 0);
        assert!(parsed.platform_cert_locator.is_empty());
    }

    #[test]
    fn size_limit() {
        let overhead = build_event3(&fields(&[])).unwrap().len();
        let largest = vec![1u8; MAX_EVENT3_SIZE - overhead];
        assert_eq!(
            build_event3(&fields(&largest)).unwrap().len(),
            MAX_EVENT3_SIZE
        );
        let too_large = vec![1u8; MAX_EVENT3_SIZE - overhead + 1];
        assert_eq!(
            build_event3(&fields(&too_large)),
            Err(Event3Error::EventTooLarge {
                size: MAX_EVENT3_SIZE + 1
            })
        );
    }

    #[test]
    fn string_limits() {
        let longest = "m".repeat(254);
        let mut event_fields = fields(b"x");
        event_fields.platform_model = &longest;
        let event = build_event3(&event_fields).unwrap();
        assert_eq!(parse_event3(&event).unwrap().platform_model, longest);

        let too_long = "m".repeat(255);
        event_fields.platform_model = &too_long;
        assert_eq!(
            build_event3(&event_fields),
            Err(Event3Error::StringTooLong {
                field: "PlatformModel",
                len: 255
            })
        );
        event_fields.platform_model = "a\0b";
        assert_eq!(
            build_event3(&event_fields),
            Err(Event3Error::StringContainsNul {
                field: "PlatformModel"
            })
        );
    }

    #[test]
    fn parse_rejects_bad_bodies() {
        let event = build_event3(&fields(b"rim")).unwrap();
        for len in 0..event.len() {
            assert!(
                matches!(
                    parse_event3(&event[..len]),
                    Err(Event3ParseError::Truncated { .. })
                        | Err(Event3ParseError::MissingNul { .. })
                ),
                "truncated at {len}"
            );
        }
        assert_eq!(
            parse_event3(&event[..10]),
            Err(Event3ParseError::Truncated { field: "Signature" })
        );

        let mut event2 = event.clone();
        event2[15] = b'2';
        assert_eq!(
            parse_event3(&event2),
            Err(Event3ParseError::InvalidSignature)
        );

        let mut padded = event.clone();
        padded.extend_from_slice(&[0; 3]);
        assert_eq!(
            parse_event3(&padded),
            Err(Event3ParseError::TrailingBytes { count: 3 })
        );

        // The platform manufacturer string starts at offset 36: replace its terminator.
        let mut unterminated = event.clone();
        unterminated[36 + 6] = b'!';
        assert_eq!(
            parse_event3(&unterminated),
            Err(Event3ParseError::MissingNul {
                field: "PlatformManufacturerStr"
            })
        );

        let mut huge_locator = event.clone();
        let locator_len_offset = event.len() - 8 - 3 - 4;
        huge_locator[locator_len_offset..locator_len_offset + 4]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            parse_event3(&huge_locator),
            Err(Event3ParseError::Truncated {
                field: "RIMLocator"
            })
        );
    }

    #[test]
    fn file_names() {
        assert_eq!(fw_cfg_file_name(0), "opt/org.tianocode/sp800155evt/0");
        assert_eq!(fw_cfg_file_name(12), "opt/org.tianocode/sp800155evt/12");
    }
}
