//! CoRIM documents and signatures in IGVM files (headers `IGVM_VHT_CORIM_DOCUMENT` 0x104 and
//! `IGVM_VHT_CORIM_SIGNATURE` 0x105).
//!
//! The document is a `tagged-unsigned-corim-map` (CBOR tag 501) and the signature a COSE_Sign1
//! (CBOR tag 18) over it with a detached payload (draft-ietf-rats-corim-10, sections 4.1 and 4.2).
//! igvmm never puts either into guest memory or the measurement. This module:
//!
//! - decodes both with ciborium and reports problems as typed errors and warnings
//!   ([`inspect`]);
//! - finds the launch-measurement reference value of the profile
//!   `tag:microsoft.com,2026:launch-measurement/v1`, as igvm 0.5's builder writes it, so callers
//!   can compare it with the predicted digest ([`CorimReport::compare`]);
//! - attaches the document to the signature as its payload ([`signed_corim_bytes`]);
//! - generates a launch-measurement CoRIM with igvm 0.5's builder ([`launch_measurement_corim`]);
//! - adds or replaces the CoRIM headers of a file without re-serializing the rest
//!   ([`add_or_replace`]) and reads them back ([`extract`]).

use ciborium::Value;
use igvm::{IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader};
use igvm_defs::IgvmPlatformType;

use crate::measure::hex_upper;
use crate::plan::Platform;

/// CBOR tag of `tagged-unsigned-corim-map`.
pub const TAG_UNSIGNED_CORIM: u64 = 501;
/// CBOR tag of a COSE_Sign1 structure.
pub const TAG_COSE_SIGN1: u64 = 18;
/// CBOR tag of `tagged-concise-mid-tag` (a CoMID, as a byte string that contains CBOR).
pub const TAG_COMID: u64 = 506;
/// The profile of launch-measurement CoRIMs written by igvm 0.5.
pub const LAUNCH_MEASUREMENT_PROFILE: &str = "tag:microsoft.com,2026:launch-measurement/v1";
/// IGVM variable header type of a CoRIM document.
pub const IGVM_VHT_CORIM_DOCUMENT: u32 = 0x104;
/// IGVM variable header type of a CoRIM signature.
pub const IGVM_VHT_CORIM_SIGNATURE: u32 = 0x105;
/// Named-information hash algorithm number of SHA-384 (RFC 6920).
pub const NI_SHA384: i64 = 7;

/// Deepest CBOR nesting accepted. CoRIM documents nest about a dozen levels.
const MAX_CBOR_DEPTH: usize = 64;

/// A reason why a CoRIM document, signature or file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorimError {
    /// The document or signature to embed has no bytes.
    #[error("the CoRIM {0} to embed is empty")]
    Empty(&'static str),
    /// The bytes are not one well-formed CBOR data item.
    #[error("the CoRIM {what} is not valid CBOR: {reason}")]
    InvalidCbor {
        /// `document` or `signature`.
        what: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// The document does not start with CBOR tag 501.
    #[error(
        "the CoRIM document must be a tagged-unsigned-corim-map (CBOR tag 501), found {found}"
    )]
    NotUnsignedCorim {
        /// A description of the document's first data item.
        found: String,
    },
    /// The tag 501 content is not a map.
    #[error("the CoRIM document's tag 501 must hold a map, found {found}")]
    NotCorimMap {
        /// A description of the tag's content.
        found: String,
    },
    /// The signature does not start with CBOR tag 18.
    #[error("the CoRIM signature must be a COSE_Sign1 (CBOR tag 18), found {found}")]
    NotCoseSign1 {
        /// A description of the signature's first data item.
        found: String,
    },
    /// The COSE_Sign1 is not an array of four items.
    #[error("the COSE_Sign1 must be an array of 4 items (protected, unprotected, payload, signature), found {found}")]
    MalformedCoseSign1 {
        /// A description of the tag's content.
        found: String,
    },
    /// The COSE_Sign1 already carries a payload that is not the document.
    #[error("the COSE_Sign1 carries a {len}-byte payload that differs from the CoRIM document")]
    PayloadMismatch {
        /// Length of the attached payload.
        len: usize,
    },
    /// The IGVM file could not be parsed.
    #[error("the IGVM file is invalid: {0}")]
    InvalidFile(String),
    /// The file has no platform header for the requested platform.
    #[error("the IGVM file has no {platform} platform header")]
    NoPlatform {
        /// The requested platform.
        platform: Platform,
    },
    /// A CoRIM header covers several platforms, so it cannot be replaced for one.
    #[error(
        "{header} header {index} has compatibility mask {mask:#x}, which covers more than the \
         platform mask {platform_mask:#x}; it cannot be replaced for one platform"
    )]
    SharedCorimHeader {
        /// `CoRIM document` or `CoRIM signature`.
        header: &'static str,
        /// Index among the variable headers.
        index: usize,
        /// Its compatibility mask.
        mask: u32,
        /// The mask to replace.
        platform_mask: u32,
    },
    /// The binary layout of the file is inconsistent.
    #[error("the IGVM file layout is invalid: {0}")]
    Layout(String),
    /// A header of a type this module does not know might refer to file data that must move.
    #[error(
        "variable header {index} has unknown type {header_type:#x}; adding CoRIM headers moves the \
         file data, and this header's file offsets cannot be updated"
    )]
    UnknownHeaderWithData {
        /// Index among the variable headers.
        index: usize,
        /// Its type.
        header_type: u32,
    },
    /// The result would exceed the 4 GiB that IGVM offsets can address.
    #[error("the IGVM file would exceed 4 GiB")]
    TooLarge,
    /// igvm 0.5's CoRIM builder failed.
    #[error("generating the launch-measurement CoRIM failed: {0}")]
    Generation(String),
}

/// A CoRIM problem that does not stop igvmm from serving the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorimWarning {
    /// The document has no profile (key 3).
    NoProfile,
    /// The document's profile is not the launch-measurement profile.
    OtherProfile(String),
    /// No reference value for the platform's launch measurement was found.
    NoLaunchMeasurement,
    /// More than one launch-measurement reference value was found; the first is used.
    SeveralLaunchMeasurements(usize),
    /// A CoMID tag could not be decoded.
    UndecodableComid(usize),
    /// The COSE_Sign1 already carries a payload (it is not detached).
    AttachedPayload,
}

impl std::fmt::Display for CorimWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CorimWarning::NoProfile => write!(f, "the CoRIM has no profile"),
            CorimWarning::OtherProfile(profile) => {
                write!(
                    f,
                    "the CoRIM profile is {profile:?}, not {LAUNCH_MEASUREMENT_PROFILE:?}"
                )
            }
            CorimWarning::NoLaunchMeasurement => {
                write!(f, "the CoRIM has no launch-measurement reference value")
            }
            CorimWarning::SeveralLaunchMeasurements(count) => write!(
                f,
                "the CoRIM has {count} launch-measurement reference values; the first is used"
            ),
            CorimWarning::UndecodableComid(index) => {
                write!(f, "CoMID tag {index} of the CoRIM could not be decoded")
            }
            CorimWarning::AttachedPayload => {
                write!(
                    f,
                    "the COSE_Sign1 carries an attached payload instead of a detached one"
                )
            }
        }
    }
}

/// A launch-measurement reference value found in a CoMID reference triple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchReference {
    /// The environment's vendor (`AMD`, `Intel`, `Microsoft`).
    pub vendor: String,
    /// The environment's model (`SEV-SNP`, `TDX`, `VBS`).
    pub model: String,
    /// The measurement key (`MEASUREMENT` or `MRTD`).
    pub mkey: String,
    /// The named-information hash algorithm number.
    pub algorithm: i64,
    /// The digest bytes.
    pub digest: Vec<u8>,
}

/// The result of [`inspect`] on a CoRIM document and signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorimReport {
    /// The CoRIM id (key 0), when it is text.
    pub id: Option<String>,
    /// The profile (key 3), when it is text.
    pub profile: Option<String>,
    /// Launch-measurement reference values, in document order.
    pub references: Vec<LaunchReference>,
    /// Whether a COSE_Sign1 signature accompanies the document.
    pub signed: bool,
    /// Problems that do not prevent use.
    pub warnings: Vec<CorimWarning>,
}

/// The result of comparing a CoRIM reference value with a predicted digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceMatch {
    /// The reference value equals the prediction.
    Match,
    /// The reference value differs.
    Mismatch {
        /// The reference digest.
        reference: Vec<u8>,
    },
    /// The document has no reference value for this platform.
    NoReference,
}

impl CorimReport {
    /// Returns the reference value for `platform`, matched by vendor and model.
    pub fn reference_for(&self, platform: Platform) -> Option<&LaunchReference> {
        let (vendor, model, _) = platform_identity(platform)?;
        self.references
            .iter()
            .find(|reference| reference.vendor == vendor && reference.model == model)
    }

    /// Compares the reference value for `platform` with a predicted digest.
    pub fn compare(&self, platform: Platform, predicted: &[u8]) -> ReferenceMatch {
        match self.reference_for(platform) {
            None => ReferenceMatch::NoReference,
            Some(reference) if reference.digest == predicted => ReferenceMatch::Match,
            Some(reference) => ReferenceMatch::Mismatch {
                reference: reference.digest.clone(),
            },
        }
    }
}

impl std::fmt::Display for ReferenceMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReferenceMatch::Match => write!(f, "the CoRIM reference value matches"),
            ReferenceMatch::Mismatch { reference } => write!(
                f,
                "the CoRIM reference value {} differs from the predicted measurement",
                hex_upper(reference)
            ),
            ReferenceMatch::NoReference => {
                write!(f, "the CoRIM has no reference value for this platform")
            }
        }
    }
}

/// Returns `(vendor, model, mkey)` of the launch-measurement profile for a platform.
fn platform_identity(platform: Platform) -> Option<(&'static str, &'static str, &'static str)> {
    match platform {
        Platform::SevSnp => Some(("AMD", "SEV-SNP", "MEASUREMENT")),
        Platform::Tdx => Some(("Intel", "TDX", "MRTD")),
        Platform::Vbs => Some(("Microsoft", "VBS", "MEASUREMENT")),
        Platform::Native => None,
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Integer(_) => "an integer".into(),
        Value::Bytes(bytes) => format!("a {}-byte string", bytes.len()),
        Value::Float(_) => "a float".into(),
        Value::Text(_) => "a text string".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Null => "null".into(),
        Value::Tag(tag, _) => format!("CBOR tag {tag}"),
        Value::Array(items) => format!("an array of {} items", items.len()),
        Value::Map(entries) => format!("a map of {} entries", entries.len()),
        _ => "an unknown CBOR value".into(),
    }
}

fn decode(what: &'static str, bytes: &[u8]) -> Result<Value, CorimError> {
    // Reject trailing bytes: the header must hold exactly one data item.
    let len = item_len(bytes, 0).map_err(|reason| CorimError::InvalidCbor { what, reason })?;
    if len != bytes.len() {
        return Err(CorimError::InvalidCbor {
            what,
            reason: format!("{} trailing bytes after the data item", bytes.len() - len),
        });
    }
    ciborium::de::from_reader_with_recursion_limit(bytes, MAX_CBOR_DEPTH).map_err(|error| {
        CorimError::InvalidCbor {
            what,
            reason: error.to_string(),
        }
    })
}

fn map_get(map: &[(Value, Value)], key: i64) -> Option<&Value> {
    map.iter().find_map(|(k, v)| match k {
        Value::Integer(integer) if i128::from(*integer) == i128::from(key) => Some(v),
        _ => None,
    })
}

fn as_map(value: &Value) -> Option<&[(Value, Value)]> {
    match value {
        Value::Map(entries) => Some(entries),
        _ => None,
    }
}

fn as_array(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

fn as_text(value: &Value) -> Option<&str> {
    match value {
        Value::Text(text) => Some(text),
        _ => None,
    }
}

/// Decodes a CoRIM document and, when given, its COSE_Sign1 signature.
///
/// Errors mean igvmm cannot treat the bytes as a CoRIM; warnings describe content that the
/// launch-measurement profile does not expect.
pub fn inspect(document: &[u8], signature: Option<&[u8]>) -> Result<CorimReport, CorimError> {
    let value = decode("document", document)?;
    let map = match &value {
        Value::Tag(TAG_UNSIGNED_CORIM, inner) => {
            as_map(inner).ok_or_else(|| CorimError::NotCorimMap {
                found: describe(inner),
            })?
        }
        other => {
            return Err(CorimError::NotUnsignedCorim {
                found: describe(other),
            })
        }
    };

    let mut warnings = Vec::new();
    let id = map_get(map, 0).and_then(as_text).map(str::to_owned);
    let profile = map_get(map, 3).and_then(as_text).map(str::to_owned);
    match &profile {
        None => warnings.push(CorimWarning::NoProfile),
        Some(profile) if profile != LAUNCH_MEASUREMENT_PROFILE => {
            warnings.push(CorimWarning::OtherProfile(profile.clone()))
        }
        Some(_) => {}
    }

    let mut references = Vec::new();
    let tags = map_get(map, 1).and_then(as_array).unwrap_or_default();
    for (index, tag) in tags.iter().enumerate() {
        let Value::Tag(TAG_COMID, content) = tag else {
            continue;
        };
        let comid = match content.as_ref() {
            Value::Bytes(bytes) => match decode("document", bytes) {
                Ok(value) => value,
                Err(_) => {
                    warnings.push(CorimWarning::UndecodableComid(index));
                    continue;
                }
            },
            other => other.clone(),
        };
        collect_references(&comid, &mut references);
    }
    if references.is_empty() {
        warnings.push(CorimWarning::NoLaunchMeasurement);
    } else if references.len() > 1 {
        warnings.push(CorimWarning::SeveralLaunchMeasurements(references.len()));
    }

    if let Some(signature) = signature {
        if cose_payload(signature)?.is_some() {
            warnings.push(CorimWarning::AttachedPayload);
        }
    }

    Ok(CorimReport {
        id,
        profile,
        references,
        signed: signature.is_some(),
        warnings,
    })
}

/// Collects the reference values of a CoMID: triples (key 4), reference triples (key 0), each
/// `[environment, [measurement-map]]`.
fn collect_references(comid: &Value, references: &mut Vec<LaunchReference>) {
    let Some(comid) = as_map(comid) else {
        return;
    };
    let Some(triples) = map_get(comid, 4).and_then(as_map) else {
        return;
    };
    let Some(reference_triples) = map_get(triples, 0).and_then(as_array) else {
        return;
    };
    for triple in reference_triples {
        let Some([environment, measurements]) = as_array(triple).and_then(|t| t.get(..2)) else {
            continue;
        };
        let class = as_map(environment)
            .and_then(|env| map_get(env, 0))
            .and_then(as_map);
        let vendor = class.and_then(|c| map_get(c, 1)).and_then(as_text);
        let model = class.and_then(|c| map_get(c, 2)).and_then(as_text);
        let (Some(vendor), Some(model)) = (vendor, model) else {
            continue;
        };
        for measurement in as_array(measurements).unwrap_or_default() {
            let Some(measurement) = as_map(measurement) else {
                continue;
            };
            let Some(mkey) = map_get(measurement, 0).and_then(as_text) else {
                continue;
            };
            let digests = map_get(measurement, 1)
                .and_then(as_map)
                .and_then(|mval| map_get(mval, 2))
                .and_then(as_array)
                .unwrap_or_default();
            for digest in digests {
                let Some([Value::Integer(algorithm), Value::Bytes(bytes)]) =
                    as_array(digest).and_then(|d| d.get(..2))
                else {
                    continue;
                };
                let Ok(algorithm) = i64::try_from(i128::from(*algorithm)) else {
                    continue;
                };
                references.push(LaunchReference {
                    vendor: vendor.to_owned(),
                    model: model.to_owned(),
                    mkey: mkey.to_owned(),
                    algorithm,
                    digest: bytes.clone(),
                });
            }
        }
    }
}

/// The byte ranges of a COSE_Sign1's four items inside its encoding.
struct CoseLayout {
    /// Start and end of the payload item.
    payload: (usize, usize),
}

/// Parses the outer structure of a COSE_Sign1 and returns its layout.
fn cose_layout(signature: &[u8]) -> Result<CoseLayout, CorimError> {
    let value = decode("signature", signature)?;
    match &value {
        Value::Tag(TAG_COSE_SIGN1, inner) => match inner.as_ref() {
            Value::Array(items) if items.len() == 4 => {}
            other => {
                return Err(CorimError::MalformedCoseSign1 {
                    found: describe(other),
                })
            }
        },
        other => {
            return Err(CorimError::NotCoseSign1 {
                found: describe(other),
            })
        }
    }
    let malformed = |reason: String| CorimError::InvalidCbor {
        what: "signature",
        reason,
    };
    // The tag head, then the array head; both were validated by the decoder above.
    let (_, tag_len) = head(signature).map_err(malformed)?;
    let rest = signature.get(tag_len..).unwrap_or_default();
    let (_, array_len) = head(rest).map_err(malformed)?;
    let mut offset = tag_len + array_len;
    let mut items = [(0usize, 0usize); 4];
    for item in &mut items {
        let len = item_len(signature.get(offset..).unwrap_or_default(), 0).map_err(malformed)?;
        *item = (offset, offset + len);
        offset += len;
    }
    Ok(CoseLayout { payload: items[2] })
}

/// Returns the attached payload of a COSE_Sign1, or `None` when it is detached (nil).
fn cose_payload(signature: &[u8]) -> Result<Option<Vec<u8>>, CorimError> {
    let layout = cose_layout(signature)?;
    let payload = signature
        .get(layout.payload.0..layout.payload.1)
        .unwrap_or_default();
    match decode("signature", payload)? {
        Value::Null => Ok(None),
        Value::Bytes(bytes) => Ok(Some(bytes)),
        other => Err(CorimError::MalformedCoseSign1 {
            found: format!("a payload that is {}", describe(&other)),
        }),
    }
}

/// Returns the signed CoRIM: the COSE_Sign1 with `document` as its payload when there is a
/// signature, otherwise the document itself.
///
/// Only the payload item changes; the tag, protected and unprotected headers and the signature
/// keep their bytes. A signature whose payload is already attached is returned unchanged when the
/// payload equals the document, and rejected otherwise.
pub fn signed_corim_bytes(
    document: &[u8],
    signature: Option<&[u8]>,
) -> Result<Vec<u8>, CorimError> {
    let Some(signature) = signature else {
        return Ok(document.to_vec());
    };
    if let Some(payload) = cose_payload(signature)? {
        if payload == document {
            return Ok(signature.to_vec());
        }
        return Err(CorimError::PayloadMismatch { len: payload.len() });
    }
    let layout = cose_layout(signature)?;
    let mut signed = Vec::with_capacity(signature.len() + document.len() + 9);
    signed.extend_from_slice(signature.get(..layout.payload.0).unwrap_or_default());
    write_head(&mut signed, 2, document.len() as u64);
    signed.extend_from_slice(document);
    signed.extend_from_slice(signature.get(layout.payload.1..).unwrap_or_default());
    Ok(signed)
}

/// Writes a CBOR head with the shortest argument encoding.
fn write_head(out: &mut Vec<u8>, major: u8, value: u64) {
    let major = major << 5;
    if value < 24 {
        out.push(major | value as u8);
    } else if let Ok(value) = u8::try_from(value) {
        out.extend_from_slice(&[major | 24, value]);
    } else if let Ok(value) = u16::try_from(value) {
        out.push(major | 25);
        out.extend_from_slice(&value.to_be_bytes());
    } else if let Ok(value) = u32::try_from(value) {
        out.push(major | 26);
        out.extend_from_slice(&value.to_be_bytes());
    } else {
        out.push(major | 27);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// A decoded CBOR head: major type and argument (`None` for indefinite length).
type Head = (u8, Option<u64>);

/// Decodes the head of the data item at the start of `bytes`; returns it and its length.
fn head(bytes: &[u8]) -> Result<(Head, usize), String> {
    let first = *bytes.first().ok_or("unexpected end of data")?;
    let major = first >> 5;
    let info = first & 0x1F;
    let argument_len = match info {
        0..=23 => return Ok(((major, Some(u64::from(info))), 1)),
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        31 if matches!(major, 2..=5) => return Ok(((major, None), 1)),
        _ => {
            return Err(format!(
                "invalid additional information {info} for major type {major}"
            ))
        }
    };
    let argument = bytes
        .get(1..1 + argument_len)
        .ok_or("unexpected end of data")?;
    let value = argument
        .iter()
        .fold(0u64, |value, byte| (value << 8) | u64::from(*byte));
    Ok(((major, Some(value)), 1 + argument_len))
}

/// Returns the encoded length of the data item at the start of `bytes`.
fn item_len(bytes: &[u8], depth: usize) -> Result<usize, String> {
    if depth > MAX_CBOR_DEPTH {
        return Err(format!("nesting deeper than {MAX_CBOR_DEPTH} levels"));
    }
    let ((major, argument), head_len) = head(bytes)?;
    let rest = |offset: usize| bytes.get(offset..).unwrap_or_default();
    let length = match (major, argument) {
        (0 | 1 | 7, Some(_)) => head_len,
        (2 | 3, Some(len)) => {
            let len = usize::try_from(len).map_err(|_| "string length overflows")?;
            head_len.checked_add(len).ok_or("string length overflows")?
        }
        (2 | 3, None) => {
            let mut offset = head_len;
            loop {
                if rest(offset).first() == Some(&0xFF) {
                    break offset + 1;
                }
                let ((chunk_major, chunk_len), chunk_head) = head(rest(offset))?;
                let chunk_len = chunk_len.ok_or("nested indefinite-length string")?;
                if chunk_major != major {
                    return Err("string chunk of another major type".into());
                }
                let chunk_len = usize::try_from(chunk_len).map_err(|_| "chunk length overflows")?;
                offset = offset
                    .checked_add(chunk_head)
                    .and_then(|o| o.checked_add(chunk_len))
                    .ok_or("chunk length overflows")?;
            }
        }
        (4 | 5, Some(count)) => {
            let items = if major == 5 {
                count.checked_mul(2).ok_or("map size overflows")?
            } else {
                count
            };
            let mut offset = head_len;
            for _ in 0..items {
                if offset > bytes.len() {
                    break;
                }
                offset += item_len(rest(offset), depth + 1)?;
            }
            offset
        }
        (4 | 5, None) => {
            let mut offset = head_len;
            loop {
                if rest(offset).first() == Some(&0xFF) {
                    break offset + 1;
                }
                if offset >= bytes.len() {
                    return Err("unexpected end of data".into());
                }
                offset += item_len(rest(offset), depth + 1)?;
            }
        }
        (6, Some(_)) => head_len + item_len(rest(head_len), depth + 1)?,
        _ => return Err(format!("invalid major type {major}")),
    };
    if length > bytes.len() {
        return Err("unexpected end of data".into());
    }
    Ok(length)
}

/// Returns the compatibility mask of the platform header for `platform`.
pub fn platform_mask(file: &IgvmFile, platform: Platform) -> Result<u32, CorimError> {
    let wanted = match platform {
        Platform::Native => IgvmPlatformType::NATIVE,
        Platform::SevSnp => IgvmPlatformType::SEV_SNP,
        Platform::Tdx => IgvmPlatformType::TDX,
        Platform::Vbs => IgvmPlatformType::VSM_ISOLATION,
    };
    file.platforms()
        .iter()
        .find_map(|header| match header {
            IgvmPlatformHeader::SupportedPlatform(info) if info.platform_type == wanted => {
                Some(info.compatibility_mask)
            }
            _ => None,
        })
        .ok_or(CorimError::NoPlatform { platform })
}

fn parse_file(file: &[u8]) -> Result<IgvmFile, CorimError> {
    IgvmFile::new_from_binary(file, None)
        .map_err(|error| CorimError::InvalidFile(error.to_string()))
}

/// A CoRIM document and its signature, when there is one.
pub type CorimPair = (Vec<u8>, Option<Vec<u8>>);

/// Returns the CoRIM document and signature of `platform` in an IGVM file, if it has them.
pub fn extract(file: &[u8], platform: Platform) -> Result<Option<CorimPair>, CorimError> {
    let parsed = parse_file(file)?;
    let mask = platform_mask(&parsed, platform)?;
    let mut document = None;
    let mut signature = None;
    for header in parsed.initializations() {
        match header {
            IgvmInitializationHeader::CorimDocument {
                compatibility_mask,
                document: bytes,
            } if compatibility_mask & mask != 0 => document = Some(bytes.clone()),
            IgvmInitializationHeader::CorimSignature {
                compatibility_mask,
                signature: bytes,
            } if compatibility_mask & mask != 0 => signature = Some(bytes.clone()),
            _ => {}
        }
    }
    Ok(document.map(|document| (document, signature)))
}

/// Generates a launch-measurement CoRIM for `platform` with igvm 0.5's builder
/// (`IgvmSerializer::add_corim`), endorsing `svn`.
///
/// The builder takes the digest from igvm 0.5's own measurement of the file. When `digest` is
/// given (for example igvmm's prediction for a KVM launch), it replaces that value in both places
/// the document carries it (the reference value and the endorsement condition).
pub fn launch_measurement_corim(
    file: &[u8],
    platform: Platform,
    svn: u64,
    digest: Option<&[u8]>,
) -> Result<Vec<u8>, CorimError> {
    use igvm::corim::launch_measurement::{LaunchMeasurement, MeasurementKind};

    let platform_type = match platform {
        Platform::SevSnp => IgvmPlatformType::SEV_SNP,
        Platform::Tdx => IgvmPlatformType::TDX,
        Platform::Vbs => IgvmPlatformType::VSM_ISOLATION,
        Platform::Native => {
            return Err(CorimError::Generation(
                "the native platform has no launch measurement".into(),
            ))
        }
    };
    let parsed = parse_file(file)?;
    platform_mask(&parsed, platform)?;
    let generation = |error: igvm::Error| CorimError::Generation(error.to_string());
    let mut serializer = igvm::IgvmSerializer::new(&parsed).map_err(generation)?;
    let igvm_digest = serializer
        .measurement_for(platform_type)
        .map(|measurement| measurement.digest.clone())
        .ok_or(CorimError::NoPlatform { platform })?;

    let mut endorsement = LaunchMeasurement::for_platform(platform_type)
        .map_err(|error| CorimError::Generation(error.to_string()))?;
    endorsement
        .set_measurement(MeasurementKind::Launch)
        .map_err(|error| CorimError::Generation(error.to_string()))?;
    endorsement
        .endorse(svn)
        .with(MeasurementKind::Launch)
        .and_then(|triple| triple.finish())
        .map_err(|error| CorimError::Generation(error.to_string()))?;
    let mut document = serializer
        .add_corim(platform_type, endorsement.build())
        .map_err(generation)?
        .to_vec();

    if let Some(digest) = digest {
        if digest.len() != igvm_digest.len() {
            return Err(CorimError::Generation(format!(
                "the digest is {} bytes, but {platform} uses {}",
                digest.len(),
                igvm_digest.len()
            )));
        }
        let replaced = replace_all(&mut document, &igvm_digest, digest);
        if replaced != 2 {
            return Err(CorimError::Generation(format!(
                "expected the builder's digest twice in the document, found it {replaced} times"
            )));
        }
    }
    Ok(document)
}

/// Adds a launch-measurement CoRIM endorsing `svn` for every SEV-SNP and TDX platform of `file`
/// (`igvmm pack --corim-auto`), and returns the new file.
///
/// The reference value is igvmm's prediction: the MRTD for TDX, and for SEV-SNP the digest of a
/// KVM launch with one vCPU. When the file's VMSA cannot be launched on KVM, the SEV-SNP value is
/// the file digest instead and a warning says so. A CoRIM the file already has for the platform
/// is replaced.
pub fn with_launch_corims(file: &[u8], svn: u64) -> Result<Vec<u8>, CorimError> {
    use crate::measure::{self, SnpMode};

    let parsed = parse_file(file)?;
    let mut output = file.to_vec();
    for platform in [Platform::SevSnp, Platform::Tdx] {
        let Ok(mask) = platform_mask(&parsed, platform) else {
            continue;
        };
        let plan = measure::plan_for_measurement(file, platform, 1)
            .map_err(|error| CorimError::Generation(error.to_string()))?;
        let prediction = match platform {
            Platform::Tdx => measure::measure_tdx(&plan),
            _ => measure::measure_snp(
                &plan,
                SnpMode::KvmLaunch {
                    vcpus: 1,
                    cpuid_1_eax: 0,
                },
            )
            .or_else(|error| {
                log::warn!(
                    "{error}; the SEV-SNP CoRIM carries the file digest, which a KVM launch \
                     does not reproduce"
                );
                measure::measure_snp(&plan, SnpMode::FileDigest)
            }),
        }
        .map_err(|error| CorimError::Generation(error.to_string()))?;
        let document = launch_measurement_corim(file, platform, svn, Some(&prediction.digest))?;
        output = add_or_replace(&output, mask, &document, None)?;
        log::info!(
            "added a launch-measurement CoRIM for {platform} with reference value {}",
            prediction.digest_hex()
        );
    }
    Ok(output)
}

/// Replaces every occurrence of `from` with `to` (same length); returns the count.
fn replace_all(haystack: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    let mut count = 0;
    let mut offset = 0;
    while let Some(window) = haystack.get(offset..offset + from.len()) {
        if window == from {
            if let Some(target) = haystack.get_mut(offset..offset + from.len()) {
                target.copy_from_slice(to);
            }
            count += 1;
            offset += from.len();
        } else {
            offset += 1;
        }
    }
    count
}

/// One variable header of an IGVM file, located in the file's bytes.
#[derive(Debug, Clone, Copy)]
struct RawHeader {
    /// Header type with the optional bit.
    header_type: u32,
    /// Start of the header (its type field) in the file.
    start: usize,
    /// Length of the body.
    body_len: usize,
    /// Start of the next header.
    end: usize,
}

impl RawHeader {
    fn kind(&self) -> u32 {
        self.header_type & !IGVM_VHT_OPTIONAL
    }
}

/// `IGVM_VHT_OPTIONAL_BIT`: set on headers a loader may ignore.
const IGVM_VHT_OPTIONAL: u32 = 1 << 31;
const IGVM_MAGIC: u32 = 0x4D56_4749;
/// Offsets of fields in the fixed header.
const FIXED_VARIABLE_OFFSET: usize = 8;
const FIXED_VARIABLE_SIZE: usize = 12;
const FIXED_TOTAL_SIZE: usize = 16;
const FIXED_CHECKSUM: usize = 20;
/// Header types whose body has a `file_offset` field, with its offset in the body.
const FILE_OFFSET_FIELDS: &[(u32, usize)] = &[
    (0x301, 12),                   // IGVM_VHT_PARAMETER_AREA
    (0x302, 12),                   // IGVM_VHT_PAGE_DATA
    (0x304, 12),                   // IGVM_VHT_VP_CONTEXT
    (IGVM_VHT_CORIM_DOCUMENT, 4),  // IGVM_VHS_CORIM_DATA
    (IGVM_VHT_CORIM_SIGNATURE, 4), // IGVM_VHS_CORIM_DATA
];
/// Header types known to carry no file offset.
const HEADERS_WITHOUT_DATA: &[u32] = &[
    0x1, 0x101, 0x102, 0x103, 0x106, 0x107, 0x303, 0x305, 0x306, 0x307, 0x308, 0x309, 0x30A, 0x30B,
    0x30C, 0x30D, 0x30E, 0x30F, 0x310, 0x311, 0x312, 0x313,
];
/// Size of an `IGVM_VHS_CORIM_DATA` header with its type and length.
const CORIM_HEADER_LEN: usize = 8 + 16;

fn read_u32(bytes: &[u8], offset: usize) -> Result<u32, CorimError> {
    bytes
        .get(offset..offset + 4)
        .and_then(|field| field.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| CorimError::Layout(format!("the file ends before offset {offset:#x}")))
}

fn write_u32(bytes: &mut [u8], offset: usize, value: u32) -> Result<(), CorimError> {
    let field = bytes
        .get_mut(offset..offset + 4)
        .ok_or_else(|| CorimError::Layout(format!("offset {offset:#x} is outside the file")))?;
    field.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

fn walk_headers(file: &[u8]) -> Result<(usize, usize, Vec<RawHeader>), CorimError> {
    if read_u32(file, 0)? != IGVM_MAGIC {
        return Err(CorimError::Layout(
            "the file does not start with the IGVM magic".into(),
        ));
    }
    let start = read_u32(file, FIXED_VARIABLE_OFFSET)? as usize;
    let size = read_u32(file, FIXED_VARIABLE_SIZE)? as usize;
    let end = start
        .checked_add(size)
        .filter(|end| *end <= file.len())
        .ok_or_else(|| CorimError::Layout("the variable headers extend past the file".into()))?;
    let mut headers = Vec::new();
    let mut offset = start;
    while offset < end {
        let header_type = read_u32(file, offset)?;
        let body_len = read_u32(file, offset + 4)? as usize;
        let next = (offset + 8)
            .checked_add(body_len)
            .map(|next| next.next_multiple_of(8))
            .filter(|next| *next <= end)
            .ok_or_else(|| {
                CorimError::Layout(format!(
                    "variable header at {offset:#x} extends past the headers"
                ))
            })?;
        headers.push(RawHeader {
            header_type,
            start: offset,
            body_len,
            end: next,
        });
        offset = next;
    }
    Ok((start, end, headers))
}

fn corim_mask(file: &[u8], header: &RawHeader) -> Result<u32, CorimError> {
    read_u32(file, header.start + 8)
}

/// Rejects an empty document or signature, which no CoRIM header should carry.
fn check_not_empty(document: &[u8], signature: Option<&[u8]>) -> Result<(), CorimError> {
    if document.is_empty() {
        return Err(CorimError::Empty("document"));
    }
    if signature.is_some_and(<[u8]>::is_empty) {
        return Err(CorimError::Empty("signature"));
    }
    Ok(())
}

/// Adds or replaces the CoRIM document (and signature) of the platform whose compatibility mask
/// is `platform_mask`, and leaves every other header's bytes unchanged apart from the file
/// offsets that move.
///
/// The new headers take the place of the old document, or follow the last initialization header.
/// The payloads are appended to the file data. When the variable header section changes size,
/// the file data moves with it and the `file_offset` fields of page data, parameter area, VP
/// context and CoRIM headers are updated; a file with header types this function does not know
/// is then rejected. A payload of a removed header is dropped when it ends the file, otherwise it
/// stays as unreferenced bytes. The checksum and sizes in the fixed header are recomputed.
pub fn add_or_replace(
    file: &[u8],
    platform_mask: u32,
    document: &[u8],
    signature: Option<&[u8]>,
) -> Result<Vec<u8>, CorimError> {
    check_not_empty(document, signature)?;
    // Validate the whole file with the igvm crate first, so the byte walk below reads a valid file.
    let parsed = parse_file(file)?;
    let known_mask = parsed.platforms().iter().any(|header| match header {
        IgvmPlatformHeader::SupportedPlatform(info) => info.compatibility_mask == platform_mask,
    });
    if !known_mask {
        return Err(CorimError::Layout(format!(
            "no platform header has compatibility mask {platform_mask:#x}"
        )));
    }

    let (headers_start, headers_end, headers) = walk_headers(file)?;
    let mut kept: Vec<RawHeader> = Vec::new();
    let mut removed_payloads: Vec<(usize, usize)> = Vec::new();
    let mut insert_at: Option<usize> = None;
    let mut last_init: Option<usize> = None;
    let mut last_platform: Option<usize> = None;
    for (index, header) in headers.iter().enumerate() {
        let kind = header.kind();
        if kind == IGVM_VHT_CORIM_DOCUMENT || kind == IGVM_VHT_CORIM_SIGNATURE {
            let mask = corim_mask(file, header)?;
            if mask == platform_mask {
                if kind == IGVM_VHT_CORIM_DOCUMENT && insert_at.is_none() {
                    insert_at = Some(kept.len());
                }
                let offset = read_u32(file, header.start + 12)? as usize;
                let size = read_u32(file, header.start + 16)? as usize;
                removed_payloads.push((offset, offset.saturating_add(size)));
                continue;
            }
            if mask & platform_mask != 0 {
                return Err(CorimError::SharedCorimHeader {
                    header: if kind == IGVM_VHT_CORIM_DOCUMENT {
                        "CoRIM document"
                    } else {
                        "CoRIM signature"
                    },
                    index,
                    mask,
                    platform_mask,
                });
            }
        }
        if (0x101..=0x200).contains(&kind) {
            last_init = Some(kept.len());
        }
        if (0x1..=0x100).contains(&kind) {
            last_platform = Some(kept.len());
        }
        kept.push(*header);
    }
    let insert_at = insert_at
        .or(last_init.map(|index| index + 1))
        .or(last_platform.map(|index| index + 1))
        .unwrap_or(0);

    let new_count = if signature.is_some() { 2 } else { 1 };
    let kept_len: usize = kept.iter().map(|h| h.end - h.start).sum();
    let new_headers_len = kept_len + new_count * CORIM_HEADER_LEN;
    let old_headers_len = headers_end - headers_start;
    let shift = new_headers_len as i64 - old_headers_len as i64;

    if shift != 0 {
        for (index, header) in kept.iter().enumerate() {
            let kind = header.kind();
            let known = FILE_OFFSET_FIELDS.iter().any(|(t, _)| *t == kind)
                || HEADERS_WITHOUT_DATA.contains(&kind);
            if !known {
                return Err(CorimError::UnknownHeaderWithData {
                    index,
                    header_type: header.header_type,
                });
            }
        }
    }

    // The file data: everything after the old headers, with a removed payload that ends the file
    // cut off.
    let mut data_end = file.len();
    removed_payloads.sort_unstable();
    for (start, end) in removed_payloads.iter().rev() {
        if *end == data_end && *start >= headers_end {
            data_end = *start;
        }
    }
    let data = file.get(headers_end..data_end).unwrap_or_default();

    let mut output = Vec::with_capacity(file.len() + document.len() + 64);
    output.extend_from_slice(file.get(..headers_start).unwrap_or_default());
    let new_data_start = headers_start + new_headers_len;
    let document_offset = new_data_start + data.len();
    let signature_offset = document_offset + document.len();
    let new_len = signature_offset + signature.map_or(0, <[u8]>::len);
    if u32::try_from(new_len).is_err() {
        return Err(CorimError::TooLarge);
    }

    let write_corim = |output: &mut Vec<u8>, header_type: u32, offset: usize, size: usize| {
        output.extend_from_slice(&header_type.to_le_bytes());
        output.extend_from_slice(&16u32.to_le_bytes());
        output.extend_from_slice(&platform_mask.to_le_bytes());
        output.extend_from_slice(&(offset as u32).to_le_bytes());
        output.extend_from_slice(&(size as u32).to_le_bytes());
        output.extend_from_slice(&0u32.to_le_bytes());
    };
    for (index, header) in kept.iter().enumerate() {
        if index == insert_at {
            write_corim(
                &mut output,
                IGVM_VHT_CORIM_DOCUMENT,
                document_offset,
                document.len(),
            );
            if let Some(signature) = signature {
                write_corim(
                    &mut output,
                    IGVM_VHT_CORIM_SIGNATURE,
                    signature_offset,
                    signature.len(),
                );
            }
        }
        let position = output.len();
        output.extend_from_slice(file.get(header.start..header.end).unwrap_or_default());
        if shift != 0 {
            if let Some((_, field)) = FILE_OFFSET_FIELDS.iter().find(|(t, _)| *t == header.kind()) {
                let field_offset = position + 8 + field;
                if field + 4 <= header.body_len {
                    let old = read_u32(&output, field_offset)?;
                    if old != 0 {
                        let moved = i64::from(old) + shift;
                        let moved = u32::try_from(moved).map_err(|_| CorimError::TooLarge)?;
                        write_u32(&mut output, field_offset, moved)?;
                    }
                }
            }
        }
    }
    if insert_at >= kept.len() {
        write_corim(
            &mut output,
            IGVM_VHT_CORIM_DOCUMENT,
            document_offset,
            document.len(),
        );
        if let Some(signature) = signature {
            write_corim(
                &mut output,
                IGVM_VHT_CORIM_SIGNATURE,
                signature_offset,
                signature.len(),
            );
        }
    }
    output.extend_from_slice(data);
    output.extend_from_slice(document);
    if let Some(signature) = signature {
        output.extend_from_slice(signature);
    }

    write_u32(&mut output, FIXED_VARIABLE_SIZE, new_headers_len as u32)?;
    let total_size = output.len() as u32;
    write_u32(&mut output, FIXED_TOTAL_SIZE, total_size)?;
    write_u32(&mut output, FIXED_CHECKSUM, 0)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(
        output
            .get(..headers_start + new_headers_len)
            .unwrap_or_default(),
    );
    let checksum = crc.finalize();
    write_u32(&mut output, FIXED_CHECKSUM, checksum)?;
    Ok(output)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn encode(value: &Value) -> Vec<u8> {
        let mut bytes = Vec::new();
        ciborium::into_writer(value, &mut bytes).unwrap();
        bytes
    }

    fn detached_signature() -> Vec<u8> {
        encode(&Value::Tag(
            TAG_COSE_SIGN1,
            Box::new(Value::Array(vec![
                Value::Bytes(vec![0xA1, 0x01, 0x38, 0x22]),
                Value::Map(vec![]),
                Value::Null,
                Value::Bytes(vec![0x55; 96]),
            ])),
        ))
    }

    #[test]
    fn item_len_walks_nested_items() {
        let value = Value::Tag(
            501,
            Box::new(Value::Map(vec![(
                Value::Integer(1.into()),
                Value::Array(vec![
                    Value::Text("x".repeat(300)),
                    Value::Bytes(vec![1; 70000]),
                ]),
            )])),
        );
        let bytes = encode(&value);
        assert_eq!(item_len(&bytes, 0).unwrap(), bytes.len());
        assert!(item_len(&bytes[..bytes.len() - 1], 0).is_err());
    }

    #[test]
    fn item_len_rejects_deep_nesting() {
        let bytes = vec![0x81; 200];
        assert!(item_len(&bytes, 0).is_err());
    }

    #[test]
    fn signed_bytes_attach_document_as_payload() {
        let document = encode(&Value::Tag(501, Box::new(Value::Map(vec![]))));
        let signature = detached_signature();
        let signed = signed_corim_bytes(&document, Some(&signature)).unwrap();

        let expected = encode(&Value::Tag(
            TAG_COSE_SIGN1,
            Box::new(Value::Array(vec![
                Value::Bytes(vec![0xA1, 0x01, 0x38, 0x22]),
                Value::Map(vec![]),
                Value::Bytes(document.clone()),
                Value::Bytes(vec![0x55; 96]),
            ])),
        ));
        assert_eq!(signed, expected);
        assert_eq!(cose_payload(&signed).unwrap(), Some(document.clone()));
        // Attaching again is a no-op; another document is rejected.
        assert_eq!(
            signed_corim_bytes(&document, Some(&signed)).unwrap(),
            signed
        );
        let other = encode(&Value::Tag(
            501,
            Box::new(Value::Map(vec![(
                Value::Integer(0.into()),
                Value::Text("other".into()),
            )])),
        ));
        assert_eq!(
            signed_corim_bytes(&other, Some(&signed)).unwrap_err(),
            CorimError::PayloadMismatch {
                len: document.len()
            }
        );
    }

    #[test]
    fn unsigned_corim_is_the_document() {
        let document = encode(&Value::Tag(501, Box::new(Value::Map(vec![]))));
        assert_eq!(signed_corim_bytes(&document, None).unwrap(), document);
    }

    #[test]
    fn rejects_untagged_document_and_signature() {
        let untagged = encode(&Value::Map(vec![]));
        assert_eq!(
            inspect(&untagged, None).unwrap_err(),
            CorimError::NotUnsignedCorim {
                found: "a map of 0 entries".into()
            }
        );
        let document = encode(&Value::Tag(501, Box::new(Value::Map(vec![]))));
        let wrong_tag = encode(&Value::Tag(98, Box::new(Value::Array(vec![]))));
        assert_eq!(
            inspect(&document, Some(&wrong_tag)).unwrap_err(),
            CorimError::NotCoseSign1 {
                found: "CBOR tag 98".into()
            }
        );
        let short = encode(&Value::Tag(18, Box::new(Value::Array(vec![Value::Null]))));
        assert!(matches!(
            inspect(&document, Some(&short)).unwrap_err(),
            CorimError::MalformedCoseSign1 { .. }
        ));
        assert!(matches!(
            inspect(&[0xD9, 0x01], None).unwrap_err(),
            CorimError::InvalidCbor { .. }
        ));
    }

    #[test]
    fn empty_corim_warns() {
        let document = encode(&Value::Tag(501, Box::new(Value::Map(vec![]))));
        let report = inspect(&document, None).unwrap();
        assert_eq!(
            report.warnings,
            [CorimWarning::NoProfile, CorimWarning::NoLaunchMeasurement]
        );
        assert_eq!(
            report.compare(Platform::SevSnp, &[0; 48]),
            ReferenceMatch::NoReference
        );
    }

    #[test]
    fn replace_all_counts_occurrences() {
        let mut bytes = b"abcXYZabcXYZab".to_vec();
        assert_eq!(replace_all(&mut bytes, b"XYZ", b"123"), 2);
        assert_eq!(bytes, b"abc123abc123ab");
    }
}
