//! Leaving with your data: a team's documents exported in open formats, Automerge's
//! standard binary format (any Automerge implementation loads it) or JSON.

use std::path::{Path, PathBuf};

use care_core::DocKind;
use care_core::membership::Access;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::team::Team;

/// The format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One `.json` file per document: the document's current state as plain JSON.
    Json,
    /// One `.automerge` file per document: the whole document with its history.
    Automerge,
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    /// Every file written, documents first, then `membership.json`.
    pub files: Vec<PathBuf>,
    /// How many documents were exported.
    pub documents: usize,
}

pub(crate) fn export_team(
    team: &mut Team<'_>,
    out: &Path,
    format: ExportFormat,
) -> Result<ExportReport> {
    std::fs::create_dir_all(out).map_err(|source| Error::Io { path: out.to_owned(), source })?;
    let mut report = ExportReport { files: Vec::new(), documents: 0 };
    let mut kinds: Vec<DocKind> =
        team.documents()?.iter().filter_map(|d| d.kind.parse().ok()).collect();
    kinds.sort();
    for kind in kinds {
        if team.access(&kind) == Access::None {
            continue;
        }
        let Some(doc) = team.load(kind)? else { continue };
        let stem = kind.to_string().replace('/', "-");
        let (path, bytes) = match format {
            ExportFormat::Automerge => (out.join(format!("{stem}.automerge")), doc.save()),
            ExportFormat::Json => {
                let json = serde_json::to_vec_pretty(&automerge::AutoSerde::from(doc))
                    .map_err(|e| Error::Invalid(format!("cannot export {kind} as JSON: {e}")))?;
                (out.join(format!("{stem}.json")), json)
            }
        };
        write_file(&path, &bytes)?;
        report.files.push(path);
        report.documents += 1;
    }
    let path = out.join("membership.json");
    let json = serde_json::to_vec_pretty(&membership_json(team))
        .expect("membership JSON is built from plain values");
    write_file(&path, &json)?;
    report.files.push(path);
    Ok(report)
}

fn membership_json(team: &Team<'_>) -> serde_json::Value {
    let membership = team.membership();
    let members: Vec<_> = membership
        .members()
        .map(|m| {
            serde_json::json!({
                "id": m.id.to_string(),
                "name": m.name,
                "role": m.role.to_string(),
                "hats": m.hats.iter().map(|h| h.name.clone()).collect::<Vec<_>>(),
                "devices": m.devices.iter().map(|(id, d)| serde_json::json!({
                    "id": id.to_string(),
                    "label": d.label,
                    "added_at_ms": d.added_at.as_millis(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "team": membership.team().to_string(),
        "name": membership.name(),
        "owner": membership.owner().to_string(),
        "members": members,
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| Error::Io { path: path.to_owned(), source })
}
