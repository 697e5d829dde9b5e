//! Leaving with your data: a team's documents exported in open formats, Automerge's
//! standard binary format (any Automerge implementation loads it) or JSON.
//!
//! An export in Automerge's format is also a record anyone can check with no home at
//! all ([`verify_export`], `care verify DIR`): beside each document it holds the
//! signatures of its changes (`*.signatures`), and the team's signed membership log
//! (`membership.ops`), named in `manifest.json`. The check names the first change whose
//! signature, or whose author's right at the point of the log it was signed under, fails.

use std::path::{Path, PathBuf};

use automerge::Automerge;
use care_core::membership::Access;
use care_core::{ChangeSig, DocKind, SignedOp, TeamId};
use care_sync::TeamAccess;
use care_sync::chunks::{INFLATED_BYTES_MAX, check_inflated_len};
use serde::{Deserialize, Serialize};

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
    /// Every file written, documents first, then `membership.json` (and, in Automerge's
    /// format, `membership.ops` and `manifest.json`).
    pub files: Vec<PathBuf>,
    /// How many documents were exported.
    pub documents: usize,
}

/// Names the files of a checkable export.
const MANIFEST: &str = "manifest.json";
/// The team's signed membership log, as postcard of the ops' wire forms.
const MEMBERSHIP_OPS: &str = "membership.ops";
/// Largest file of an export read back: a document is at most this, as on the wire.
const EXPORT_FILE_BYTES_MAX: u64 = care_sync::frame::SNAPSHOT_BYTES_MAX as u64;

/// What `manifest.json` says.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// The team.
    team: String,
    /// The membership log's file.
    membership: String,
    /// Each document: its kind and its two files.
    documents: Vec<ManifestDoc>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestDoc {
    kind: String,
    document: String,
    signatures: String,
}

/// What [`verify_export`] found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The team the export is of.
    pub team: TeamId,
    /// Documents checked.
    pub documents: usize,
    /// Changes checked, over all documents.
    pub changes: usize,
    /// Of those, the changes kept aside, out of the record (see [`mod@care_core::kept_aside`]).
    pub kept_aside: usize,
    /// The first thing that fails, if any.
    pub failure: Option<VerifyFailure>,
}

/// The first part of an export that does not verify.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyFailure {
    /// The document (its kind), or `membership` for the log.
    pub document: String,
    /// The change that fails, in hex, when one change is to blame.
    pub change: Option<String>,
    /// Why.
    pub why: String,
}

pub(crate) fn export_team(
    team: &mut Team<'_>,
    out: &Path,
    format: ExportFormat,
) -> Result<ExportReport> {
    std::fs::create_dir_all(out).map_err(|source| Error::Io { path: out.to_owned(), source })?;
    let mut report = ExportReport { files: Vec::new(), documents: 0 };
    let mut manifest = Manifest {
        team: team.id().to_string(),
        membership: MEMBERSHIP_OPS.into(),
        documents: Vec::new(),
    };
    let mut kinds: Vec<DocKind> =
        team.documents()?.iter().filter_map(|d| d.kind.parse().ok()).collect();
    kinds.sort();
    for kind in kinds {
        if team.access(&kind) == Access::None {
            continue;
        }
        let stem = kind.to_string().replace('/', "-");
        let (path, bytes) = match format {
            // The whole document, changes kept aside included: `care verify` checks every
            // change, and works out the record as every device does.
            ExportFormat::Automerge => {
                let Some(doc) = team.read_whole(kind, |doc| Ok(doc.save()))? else { continue };
                let team_id = team.id();
                let signatures = crate::replica::stored_signatures_of(
                    &team.home.store,
                    kind.doc_id(team_id),
                    None,
                )?;
                let sig_file = format!("{stem}.signatures");
                let sig_bytes =
                    postcard::to_stdvec(&signatures).expect("encoding into a Vec cannot fail");
                write_file(&out.join(&sig_file), &sig_bytes)?;
                report.files.push(out.join(&sig_file));
                manifest.documents.push(ManifestDoc {
                    kind: kind.to_string(),
                    document: format!("{stem}.automerge"),
                    signatures: sig_file,
                });
                (out.join(format!("{stem}.automerge")), doc)
            }
            // The record, as people read it.
            ExportFormat::Json => {
                let Some(doc) = team.load(kind)? else { continue };
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
    if format == ExportFormat::Automerge {
        let ops: Vec<Vec<u8>> =
            team.home.signed_ops(team.id())?.iter().map(SignedOp::to_bytes).collect();
        let path = out.join(MEMBERSHIP_OPS);
        write_file(&path, &postcard::to_stdvec(&ops).expect("encoding into a Vec cannot fail"))?;
        report.files.push(path);
        let path = out.join(MANIFEST);
        let json = serde_json::to_vec_pretty(&manifest).expect("the manifest is plain values");
        write_file(&path, &json)?;
        report.files.push(path);
    }
    Ok(report)
}

/// Checks an export in Automerge's format with no home: the membership log replays, and
/// every change of every document is signed by its author's device, which could write
/// that kind of document at the point of the log it signed under, and keeps the
/// document's rules. Stops at the first failure and names it (the change, where one is
/// to blame). `Err` only when the export cannot be read at all.
pub fn verify_export(dir: &Path) -> Result<VerifyReport> {
    let manifest: Manifest = serde_json::from_slice(&read_file(&dir.join(MANIFEST))?)
        .map_err(|e| Error::Invalid(format!("{MANIFEST} does not read: {e}")))?;
    let team: TeamId = manifest
        .team
        .parse()
        .map_err(|e| Error::Invalid(format!("{MANIFEST} names no team: {e}")))?;
    let mut report = VerifyReport { team, documents: 0, changes: 0, kept_aside: 0, failure: None };
    let fail = |document: &str, change: Option<String>, why: String| {
        Some(VerifyFailure { document: document.to_owned(), change, why })
    };
    let access = match read_ops(&dir.join(file_name(&manifest.membership)?))
        .and_then(|ops| TeamAccess::from_ops(team, &ops).map_err(|e| e.to_string()))
    {
        Ok(access) => access,
        Err(why) => {
            report.failure = fail("membership", None, why);
            return Ok(report);
        }
    };
    for entry in &manifest.documents {
        let kind: DocKind = entry
            .kind
            .parse()
            .map_err(|e| Error::Invalid(format!("{MANIFEST} names a document kind: {e}")))?;
        let bytes = read_file(&dir.join(file_name(&entry.document)?))?;
        let sig_bytes = read_file(&dir.join(file_name(&entry.signatures)?))?;
        report.documents += 1;
        match verify_document(&access, team, &kind, &bytes, &sig_bytes) {
            Ok((changes, kept_aside)) => {
                report.changes += changes;
                report.kept_aside += kept_aside;
            }
            Err((change, why)) => {
                report.failure = fail(&entry.kind, change, why);
                return Ok(report);
            }
        }
    }
    Ok(report)
}

/// Checks one exported document; `Ok` is how many changes it holds and how many of them
/// are kept aside, `Err` the change to blame (if one is) and why.
fn verify_document(
    access: &TeamAccess,
    team: TeamId,
    kind: &DocKind,
    bytes: &[u8],
    sig_bytes: &[u8],
) -> std::result::Result<(usize, usize), (Option<String>, String)> {
    check_inflated_len(bytes, INFLATED_BYTES_MAX).map_err(|e| (None, e.to_string()))?;
    let doc = Automerge::load(bytes).map_err(|e| (None, format!("it does not load: {e}")))?;
    let signatures: Vec<ChangeSig> = postcard::from_bytes(sig_bytes)
        .map_err(|e| (None, format!("its signatures do not read: {e}")))?;
    let id = kind.doc_id(team);
    care_sync::authorship::check_signed_document(access, team, id, kind, &doc, &signatures)
        .map_err(|e| (blamed_change(&e), e.to_string()))?;
    // The signatures are checked above, once, for the change to blame.
    care_sync::access::check_saved_authors_and_rules(access, team, kind, &doc, bytes)
        .map_err(|why| (None, why))?;
    let kept_aside = care_core::kept_aside(&doc, id, kind, access.membership());
    Ok((doc.get_changes_meta(&[]).len(), kept_aside.map_or(0, |aside| aside.changes.len())))
}

/// The change an authorship failure is about.
fn blamed_change(error: &care_sync::AuthorshipError) -> Option<String> {
    use care_sync::AuthorshipError as E;
    match error {
        E::Unsigned { change }
        | E::NotADevice { change }
        | E::BadSignature { change, .. }
        | E::UnknownMembership { change }
        | E::MayNotWrite { change, .. } => Some(change.to_string()),
        _ => None,
    }
}

/// The membership ops of an export.
fn read_ops(path: &Path) -> std::result::Result<Vec<SignedOp>, String> {
    let bytes = read_file(path).map_err(|e| e.to_string())?;
    let ops: Vec<Vec<u8>> =
        postcard::from_bytes(&bytes).map_err(|e| format!("{MEMBERSHIP_OPS} does not read: {e}"))?;
    ops.iter().map(|op| SignedOp::from_bytes(op).map_err(|e| e.to_string())).collect()
}

/// A file named by the manifest: a plain name inside the export, never a path out of it.
fn file_name(name: &str) -> Result<&str> {
    let plain = !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..";
    if plain {
        Ok(name)
    } else {
        Err(Error::Invalid(format!("{MANIFEST} names a file `{name}` outside the export")))
    }
}

/// Reads a file of an export, refusing one larger than any document may be.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    let io = |source| Error::Io { path: path.to_owned(), source };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > EXPORT_FILE_BYTES_MAX {
        return Err(Error::Invalid(format!(
            "{} is {len} bytes, more than an exported file may be ({EXPORT_FILE_BYTES_MAX})",
            path.display()
        )));
    }
    std::fs::read(path).map_err(io)
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
