//! The `igvmm inspect` subcommand: igvm-loader's file summary, the predicted launch measurement
//! of each measurable platform, and the decoded contents of each CoRIM, as text or JSON.

use std::fmt::Write as _;
use std::process::ExitCode;

use igvm::IgvmInitializationHeader;
use igvm_loader::corim::{self, CorimError, CorimReport, ReferenceMatch};
use igvm_loader::inspect::{summarize, CorimSummary, FileSummary};
use igvm_loader::measure::hex_upper;
use igvm_loader::plan::{HeaderRef, Platform};
use igvm_loader::ParsedFile;
use serde_json::{json, Map, Value};

use crate::cli::InspectArgs;
use crate::commands::measure::{platform_digests, PlatformDigest};
use crate::commands::run::read_image;
use crate::commands::write_stdout;

/// Runs the subcommand.
pub fn main(args: InspectArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let bytes = read_image(&args.file)?;
    let name = args.file.display();
    let summary = summarize(&bytes).map_err(|error| format!("{name}: {error}"))?;
    let parsed = igvm_loader::parse(&bytes).map_err(|error| format!("{name}: {error}"))?;
    let digests = platform_digests(&bytes);
    let corims = corim_details(&parsed, &summary, &digests);
    let output = if args.json {
        let value = report_json(&summary, &digests, &corims);
        format!("{}\n", serde_json::to_string_pretty(&value)?)
    } else {
        let mut text = summary.to_string();
        write_digests(&mut text, &digests)?;
        write_corims(&mut text, &corims)?;
        text
    };
    write_stdout(&output)?;
    Ok(ExitCode::SUCCESS)
}

/// A CoRIM document of the file, decoded and compared with the predictions.
#[derive(Debug)]
pub struct CorimDetail {
    /// The document's header.
    pub header: HeaderRef,
    /// Names of the platforms its compatibility mask covers.
    pub platforms: Vec<&'static str>,
    /// Whether a COSE_Sign1 signature covers it.
    pub signed: bool,
    /// The decoded document, or why it does not decode.
    pub report: Result<CorimReport, CorimError>,
    /// For each measurable platform it covers and each prediction for that platform: the
    /// platform, the kind of prediction and the comparison with the reference value.
    pub comparisons: Vec<(Platform, &'static str, ReferenceMatch)>,
}

/// Decodes every CoRIM document of the file with its signature, and compares its reference
/// values with the predicted measurements of the platforms it covers.
pub fn corim_details(
    parsed: &ParsedFile,
    summary: &FileSummary,
    digests: &[PlatformDigest],
) -> Vec<CorimDetail> {
    summary
        .corim
        .iter()
        .map(|corim| corim_detail(parsed, corim, digests))
        .collect()
}

fn corim_detail(
    parsed: &ParsedFile,
    corim: &CorimSummary,
    digests: &[PlatformDigest],
) -> CorimDetail {
    let mask = corim.compatibility_mask;
    let mut document: &[u8] = &[];
    let mut signature: Option<&[u8]> = None;
    for (header, init) in parsed.initializations() {
        match init {
            IgvmInitializationHeader::CorimDocument {
                document: bytes, ..
            } if header == corim.header => {
                document = bytes;
            }
            IgvmInitializationHeader::CorimSignature {
                compatibility_mask,
                signature: bytes,
            } if compatibility_mask & mask != 0 && signature.is_none() => {
                signature = Some(bytes);
            }
            _ => {}
        }
    }
    let report = corim::inspect(document, signature);

    let covered: Vec<Platform> = parsed
        .platforms()
        .iter()
        .filter(|header| header.compatibility_mask & mask != 0)
        .filter_map(|header| header.platform)
        .collect();
    let mut comparisons = Vec::new();
    if let Ok(report) = &report {
        for digest in digests {
            if !covered.contains(&digest.platform) {
                continue;
            }
            if let Ok(measurement) = &digest.result {
                let comparison = report.compare(digest.platform, &measurement.digest);
                comparisons.push((digest.platform, digest.kind, comparison));
            }
        }
    }
    CorimDetail {
        header: corim.header,
        platforms: corim.platforms.clone(),
        signed: corim.signed(),
        report,
        comparisons,
    }
}

fn write_digests(text: &mut String, digests: &[PlatformDigest]) -> std::fmt::Result {
    writeln!(text, "predicted measurements (1 vCPU):")?;
    if digests.is_empty() {
        writeln!(text, "  none (no sev-snp or tdx platform)")?;
    }
    for digest in digests {
        match &digest.result {
            Ok(measurement) => {
                writeln!(
                    text,
                    "  {:<8} {:<11} {}",
                    digest.platform.name(),
                    digest.kind,
                    measurement.digest_hex()
                )?;
                // The notes explain where a KVM launch differs from the file digest.
                for note in &measurement.notes {
                    writeln!(text, "    note: {note}")?;
                }
            }
            Err(error) => writeln!(
                text,
                "  {:<8} {:<11} unavailable: {error}",
                digest.platform.name(),
                digest.kind
            )?,
        }
    }
    Ok(())
}

fn write_corims(text: &mut String, corims: &[CorimDetail]) -> std::fmt::Result {
    if corims.is_empty() {
        return Ok(());
    }
    writeln!(text, "CoRIM contents:")?;
    for detail in corims {
        let platforms = detail.platforms.join(", ");
        let signed = if detail.signed { "signed" } else { "unsigned" };
        let report = match &detail.report {
            Ok(report) => report,
            Err(error) => {
                writeln!(text, "  {platforms}: {signed}, does not decode: {error}")?;
                continue;
            }
        };
        writeln!(
            text,
            "  {platforms}: {signed}, decodes, profile {}",
            report.profile.as_deref().unwrap_or("none")
        )?;
        for reference in &report.references {
            writeln!(
                text,
                "    reference {} {} {}: {}",
                reference.vendor,
                reference.model,
                reference.mkey,
                hex_upper(&reference.digest)
            )?;
        }
        for (platform, kind, comparison) in &detail.comparisons {
            writeln!(
                text,
                "    {platform} {kind}: {}",
                comparison_name(comparison)
            )?;
        }
        for warning in &report.warnings {
            writeln!(text, "    warning: {warning}")?;
        }
    }
    Ok(())
}

/// Returns `match`, `mismatch` or `no-reference`.
fn comparison_name(comparison: &ReferenceMatch) -> &'static str {
    match comparison {
        ReferenceMatch::Match => "match",
        ReferenceMatch::Mismatch { .. } => "mismatch",
        ReferenceMatch::NoReference => "no-reference",
    }
}

fn digests_json(digests: &[PlatformDigest]) -> Value {
    let entries: Vec<Value> = digests
        .iter()
        .map(|digest| {
            let (value, notes, error) = match &digest.result {
                Ok(measurement) => (
                    Some(measurement.digest_hex()),
                    measurement.notes.iter().map(ToString::to_string).collect(),
                    None,
                ),
                Err(error) => (None, Vec::<String>::new(), Some(error.to_string())),
            };
            json!({
                "platform": digest.platform.name(),
                "kind": digest.kind,
                "digest": value,
                "notes": notes,
                "error": error,
            })
        })
        .collect();
    Value::Array(entries)
}

/// Returns [`to_json`] of the summary with the predicted measurements and, in each CoRIM
/// entry, the decoded document and its comparisons.
pub fn report_json(
    summary: &FileSummary,
    digests: &[PlatformDigest],
    corims: &[CorimDetail],
) -> Value {
    let mut value = to_json(summary);
    if let Value::Object(fields) = &mut value {
        fields.insert("predicted_measurements".into(), digests_json(digests));
        if let Some(Value::Array(entries)) = fields.get_mut("corim") {
            for (entry, detail) in entries.iter_mut().zip(corims) {
                if let Value::Object(entry) = entry {
                    add_corim_json(entry, detail);
                }
            }
        }
    }
    value
}

fn add_corim_json(entry: &mut Map<String, Value>, detail: &CorimDetail) {
    entry.insert("signed".into(), json!(detail.signed));
    let report = match &detail.report {
        Ok(report) => report,
        Err(error) => {
            entry.insert("decoded".into(), json!(false));
            entry.insert("decode_error".into(), json!(error.to_string()));
            return;
        }
    };

    let references: Vec<Value> = report
        .references
        .iter()
        .map(|reference| {
            json!({
                "vendor": reference.vendor,
                "model": reference.model,
                "mkey": reference.mkey,
                "algorithm": reference.algorithm,
                "digest": hex_upper(&reference.digest),
            })
        })
        .collect();
    let comparisons: Vec<Value> = detail
        .comparisons
        .iter()
        .map(|(platform, kind, comparison)| {
            json!({
                "platform": platform.name(),
                "kind": kind,
                "result": comparison_name(comparison),
            })
        })
        .collect();
    let warnings: Vec<String> = report.warnings.iter().map(ToString::to_string).collect();

    entry.insert("decoded".into(), json!(true));
    entry.insert("decode_error".into(), Value::Null);
    entry.insert("id".into(), json!(report.id));
    entry.insert("profile".into(), json!(report.profile));
    entry.insert("references".into(), Value::Array(references));
    entry.insert("comparisons".into(), Value::Array(comparisons));
    entry.insert("warnings".into(), json!(warnings));
}

fn header_json(header: &HeaderRef) -> Value {
    json!({ "type": header.header_type, "index": header.index })
}

/// Returns the summary as a JSON object with the same fields as [`FileSummary`].
pub fn to_json(summary: &FileSummary) -> Value {
    let platforms: Vec<Value> = summary
        .platforms
        .iter()
        .map(|platform| {
            json!({
                "header": header_json(&platform.header),
                "platform_type": platform.platform_type,
                "compatibility_mask": platform.compatibility_mask,
                "shared_gpa_boundary": platform.shared_gpa_boundary,
                "highest_vtl": platform.highest_vtl,
            })
        })
        .collect();
    let parameter_areas: Vec<Value> = summary
        .parameter_areas
        .iter()
        .map(|area| {
            let parameters: Vec<Value> = area
                .parameters
                .iter()
                .map(|(kind, offset)| json!({ "kind": kind.name(), "offset": offset }))
                .collect();
            let inserts: Vec<Value> = area
                .inserts
                .iter()
                .map(|(gpa, mask)| json!({ "gpa": gpa, "compatibility_mask": mask }))
                .collect();
            json!({
                "header": header_json(&area.header),
                "area_index": area.area_index,
                "size": area.size,
                "parameters": parameters,
                "inserts": inserts,
            })
        })
        .collect();
    let vp_contexts: Vec<Value> = summary
        .vp_contexts
        .iter()
        .map(|context| {
            json!({
                "header": header_json(&context.header),
                "format": context.format,
                "compatibility_mask": context.compatibility_mask,
                "vp_index": context.vp_index,
                "entry": context.entry,
                "mode": context.mode.name(),
            })
        })
        .collect();
    let corim: Vec<Value> = summary
        .corim
        .iter()
        .map(|document| {
            json!({
                "header": header_json(&document.header),
                "compatibility_mask": document.compatibility_mask,
                "platforms": document.platforms,
                "size": document.size,
                "sha256": document.sha256,
                "signature_size": document.signature_size,
            })
        })
        .collect();
    let skipped: Vec<Value> = summary.skipped_headers.iter().map(header_json).collect();
    json!({
        "format_version": summary.format_version,
        "version_string": summary.version_string,
        "platforms": platforms,
        "header_counts": summary.header_counts,
        "page_data_bytes": summary.page_data_bytes,
        "page_data_file_bytes": summary.page_data_file_bytes,
        "parameter_areas": parameter_areas,
        "vp_contexts": vp_contexts,
        "corim": corim,
        "skipped_headers": skipped,
    })
}
