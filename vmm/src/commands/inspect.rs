//! The `igvmm inspect` subcommand: igvm-loader's file summary as text or JSON.

use std::process::ExitCode;

use igvm_loader::inspect::{summarize, FileSummary};
use igvm_loader::plan::HeaderRef;
use serde_json::{json, Value};

use crate::cli::InspectArgs;
use crate::commands::run::read_image;

/// Runs the subcommand.
pub fn main(args: InspectArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let bytes = read_image(&args.file)?;
    let summary = summarize(&bytes)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&summary))?);
    } else {
        print!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
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
