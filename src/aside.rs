//! Changes kept aside, for the members who decide on them: what a removed device wrote
//! that its removal did not know of, and what was built on it (see
//! [`mod@care_core::kept_aside`]). Each is listed with its audit (who, in which role, on
//! which device, when, and whether signature and right verify) and what it writes; a
//! member who manages the team lets one into the record with a signed
//! [`OpBody::AcceptChanges`].

use automerge::{Automerge, ChangeHash, PatchAction, Value};
use care_core::kept_aside::roots_to_accept;
use care_core::membership::Access;
use care_core::{DocId, DocKind, KeptAside, OpBody, kept_aside};
use serde::Serialize;

use crate::audit::{ChangeAudit, Made};
use crate::error::{Error, Result};
use crate::team::Team;

/// Longest description of what a change kept aside writes, in characters.
const WHAT_CHARS_MAX: usize = 300;

/// A change kept aside, out of the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AsideEntry {
    /// The document it is in, such as `notes/2026-11`.
    pub document: String,
    /// Whether it was written by a removed device after what its removal knew (else it
    /// is kept aside for being built on such a change).
    pub after_removal: bool,
    /// Who wrote it, when, and whether that verifies; `what` says what it writes.
    pub audit: ChangeAudit,
}

impl Team<'_> {
    /// Every change kept aside in the documents this device may read, by document, each
    /// after what it was built on.
    pub fn kept_aside(&mut self) -> Result<Vec<AsideEntry>> {
        let team = self.id();
        let mut out = Vec::new();
        // Without a removal that named what it held, nothing is kept aside anywhere.
        let membership = self.home.team_access(team)?;
        if membership.membership().cuts().is_empty() {
            return Ok(out);
        }
        for (id, kind) in self.readable_docs()? {
            let found = self.read_whole(kind, |doc| {
                let aside = kept_aside(doc, id, &kind, membership.membership());
                Ok(aside
                    .map(|aside| {
                        aside
                            .changes
                            .iter()
                            .map(|change| {
                                (change.hash, change.after_removal, what(doc, change.hash))
                            })
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default())
            })?;
            let changes = found.unwrap_or_default();
            if changes.is_empty() {
                continue;
            }
            let objects = changes.iter().map(|(hash, _, what)| (Made::Change(*hash), what.clone()));
            let audits = self.audit(kind, Some(objects.collect()))?;
            for ((_, after_removal, _), audit) in changes.into_iter().zip(audits) {
                out.push(AsideEntry { document: kind.to_string(), after_removal, audit });
            }
        }
        Ok(out)
    }

    /// Lets changes kept aside into the record, with every change kept aside that they were
    /// built on, by signing an [`OpBody::AcceptChanges`] per document. Needs the right to
    /// manage the team. Returns how many changes entered the record.
    pub fn accept_kept_aside(&mut self, changes: &[ChangeHash]) -> Result<usize> {
        let team = self.id();
        let mut left: Vec<ChangeHash> = changes.to_vec();
        let mut accepted = 0;
        for (id, kind) in self.readable_docs()? {
            if left.is_empty() {
                break;
            }
            let Some(aside) = self.aside_in(id, kind)? else {
                continue;
            };
            let here: Vec<ChangeHash> = left
                .iter()
                .copied()
                .filter(|hash| aside.changes.iter().any(|change| change.hash == *hash))
                .collect();
            if here.is_empty() {
                continue;
            }
            left.retain(|hash| !here.contains(hash));
            let roots = roots_to_accept(&aside, &here).unwrap_or_default();
            let before = aside.changes.len();
            for chunk in roots.chunks(care_core::membership::ACCEPTED_PER_OP_MAX) {
                let changes = chunk.iter().map(|hash| hash.0).collect();
                self.home.author_op(team, OpBody::AcceptChanges { doc: id, changes })?;
            }
            let after = self.aside_in(id, kind)?.map_or(0, |aside| aside.changes.len());
            accepted += before - after;
        }
        match left.first() {
            Some(hash) => Err(Error::NotFound { what: "change kept aside", id: hash.to_string() }),
            None => Ok(accepted),
        }
    }
}

impl Team<'_> {
    /// The documents of the team this device holds and may read.
    fn readable_docs(&self) -> Result<Vec<(DocId, DocKind)>> {
        Ok(self
            .documents()?
            .into_iter()
            .filter_map(|summary| Some((summary.id, summary.kind.parse::<DocKind>().ok()?)))
            .filter(|(_, kind)| self.access(kind) != Access::None)
            .collect())
    }

    /// What is kept aside of one document, under the membership this home holds now.
    fn aside_in(&mut self, id: DocId, kind: DocKind) -> Result<Option<KeptAside>> {
        let membership = self.home.team_access(self.id())?;
        let found =
            self.read_whole(kind, |doc| Ok(kept_aside(doc, id, &kind, membership.membership())))?;
        Ok(found.flatten())
    }
}

/// Fields of an entry that stamp who wrote it and when: the audit shows those, checked.
const STAMPS: [&str; 3] = ["device", "member", "written_at"];

/// What a change writes, in words: each value it sets (but the author's stamps) and each
/// text it adds, by path.
fn what(doc: &Automerge, hash: ChangeHash) -> String {
    let Some(meta) = doc.get_change_meta_by_hash(&hash) else {
        return "a change".into();
    };
    let mut parts = Vec::new();
    for patch in doc.diff(&meta.deps, &[hash]) {
        let at: Vec<String> = patch.path.iter().map(|(_, prop)| prop.to_string()).collect();
        let at = at.join("/");
        match patch.action {
            PatchAction::PutMap { key, value: (Value::Scalar(value), _), .. }
                if !STAMPS.contains(&key.as_str()) =>
            {
                parts.push(format!("{at}/{key} = {value}"));
            }
            PatchAction::SpliceText { value, .. } => {
                parts.push(format!("{at}: \"{}\"", value.make_string()));
            }
            _ => {}
        }
    }
    let what = if parts.is_empty() { "a change".to_owned() } else { parts.join(", ") };
    match what.char_indices().nth(WHAT_CHARS_MAX) {
        Some((end, _)) => format!("{}…", &what[..end]),
        None => what,
    }
}

#[cfg(test)]
mod tests {
    use care_core::membership::Role;
    use care_core::{MemberId, Op, SignedOp, TeamId};
    use care_sync::Replica;

    use super::*;
    use crate::home::Home;
    use crate::test_support::{add_member, sync, temp_dirs};

    /// Ada's team, with Dan and Eve as workers, every home holding its log; and Dan's
    /// member id.
    fn ada_dan_eve(dirs: &[tempfile::TempDir]) -> Result<(TeamId, MemberId, [Home; 3])> {
        let mut ada = Home::init(dirs[0].path(), "Ada")?;
        let mut dan = Home::init(dirs[1].path(), "Dan")?;
        let mut eve = Home::init(dirs[2].path(), "Eve")?;
        let team = ada.create_team("Rosa's team")?;
        let dan_id = add_member(&mut ada, team, &dan, Role::Worker)?;
        add_member(&mut ada, team, &eve, Role::Worker)?;
        for home in [&mut dan, &mut eve] {
            home.add_ops(team, &ada.signed_ops(team)?)?;
        }
        Ok((team, dan_id, [ada, dan, eve]))
    }

    use crate::test_support::{note_texts as texts, write_note as write};

    fn aside(home: &mut Home) -> Result<Vec<(String, bool, Option<String>)>> {
        let entries = home.team("")?.kept_aside()?;
        Ok(entries.into_iter().map(|e| (e.audit.change, e.after_removal, e.audit.name)).collect())
    }

    /// Dan is removed while offline. What he writes after, passed on by Eve (who has not
    /// heard of the removal, and builds on it), reaches Ada through the protocol's own
    /// frames and stays out of the record on both devices, listed alike, until Ada
    /// accepts it.
    #[test]
    fn a_removed_workers_later_notes_are_kept_aside_on_every_device_until_accepted() -> Result<()> {
        let dirs = temp_dirs(3)?;
        let (team, dan_id, [mut ada, mut dan, mut eve]) = ada_dan_eve(&dirs)?;
        write(&mut dan, "Dan: tea at 8.")?;
        sync(&mut ada, &mut dan)?;
        ada.author_op(team, OpBody::RemoveMember { member: dan_id })?;

        write(&mut dan, "Dan, after his removal.")?;
        sync(&mut dan, &mut eve)?;
        write(&mut eve, "Eve, on top of Dan's.")?;
        write(&mut ada, "Ada: walk at 3.")?;
        sync(&mut ada, &mut eve)?;

        let record = ["Ada: walk at 3.", "Dan: tea at 8."];
        assert_eq!(texts(&mut ada)?, record);
        assert_eq!(texts(&mut eve)?, record);
        let listed = aside(&mut ada)?;
        assert_eq!(listed, aside(&mut eve)?, "kept aside alike on both devices");
        let who: Vec<(bool, Option<&str>)> =
            listed.iter().map(|(_, root, name)| (*root, name.as_deref())).collect();
        assert_eq!(who, [(true, Some("Dan")), (false, Some("Eve"))]);
        let entries = ada.team("")?.kept_aside()?;
        assert!(entries[0].audit.what.contains("Dan, after his removal."), "{entries:?}");
        assert!(entries.iter().all(|e| e.audit.verified() && e.audit.kept_aside));

        // An export keeps every change, and its check with no home finds the same two
        // kept aside; the export people read holds the record.
        let out = dirs[0].path().join("export");
        ada.team("")?.export(&out, crate::ExportFormat::Automerge)?;
        let report = crate::verify_export(&out)?;
        assert_eq!((report.failure.is_none(), report.kept_aside), (true, 2), "{report:?}");
        let readable = dirs[0].path().join("json");
        ada.team("")?.export(&readable, crate::ExportFormat::Json)?;
        let json = std::fs::read_dir(&readable)
            .map_err(|e| Error::Invalid(e.to_string()))?
            .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
            .collect::<String>();
        assert!(json.contains("Dan: tea at 8.") && !json.contains("after his removal"));

        // Ada's next notes are written on the record (the second on the record kept from
        // the first), and reach Eve.
        write(&mut ada, "Ada: lunch.")?;
        write(&mut ada, "Ada: tea.")?;
        sync(&mut ada, &mut eve)?;
        let eve_reads = texts(&mut eve)?;
        assert!(["Ada: lunch.", "Ada: tea."].iter().all(|t| eve_reads.contains(&(*t).to_owned())));
        assert_eq!(texts(&mut ada)?, eve_reads);
        assert_eq!(aside(&mut eve)?.len(), 2);
        // Eve's own changes of that month form one chain, so her next note follows the
        // one kept aside, and is kept aside with it.
        write(&mut eve, "Eve, later.")?;
        sync(&mut ada, &mut eve)?;
        assert_eq!(aside(&mut ada)?.len(), 3);
        assert!(!texts(&mut ada)?.contains(&"Eve, later.".to_owned()));

        // Accepting Eve's first note brings Dan's, which it was built on, and her later
        // one, built on nothing else kept aside.
        let eves: ChangeHash = listed[1].0.parse().map_err(|_| Error::Invalid("hash".into()))?;
        assert_eq!(ada.team("")?.accept_kept_aside(&[eves])?, 3);
        sync(&mut ada, &mut eve)?;
        for home in [&mut ada, &mut eve] {
            assert_eq!(texts(home)?.len(), 7);
            assert_eq!(aside(home)?, []);
        }
        Ok(())
    }

    /// A worker who signs an acceptance anyway, past the checks of the local API, and
    /// sends it in the protocol's own frames, lets nothing in: the receiver does not store
    /// the op, and on both devices the change stays aside.
    #[test]
    fn an_acceptance_forged_by_a_worker_lets_nothing_in() -> Result<()> {
        let dirs = temp_dirs(3)?;
        let (team, dan_id, [mut ada, mut dan, mut eve]) = ada_dan_eve(&dirs)?;
        ada.author_op(team, OpBody::RemoveMember { member: dan_id })?;
        write(&mut dan, "Dan, after his removal.")?;
        sync(&mut dan, &mut eve)?;
        sync(&mut ada, &mut eve)?;
        let listed = ada.team("")?.kept_aside()?;
        assert_eq!(listed.len(), 1);
        let hash: ChangeHash =
            listed[0].audit.change.parse().map_err(|_| Error::Invalid("hash".into()))?;
        let doc = DocKind::Notes { stream: care_core::NoteStream::Care, month: eve.now().month() }
            .doc_id(team);
        let preds = eve.membership(team)?.heads().to_vec();
        let body = OpBody::AcceptChanges { doc, changes: vec![hash.0] };
        let op = Op { team: Some(team), preds, at: eve.now(), body };
        let forged = SignedOp::sign(&eve.key, &op);
        eve.add_ops(team, std::slice::from_ref(&forged))?;
        sync(&mut ada, &mut eve)?;
        assert!(!ada.signed_ops(team)?.contains(&forged), "Ada stored the forged acceptance");
        for home in [&mut ada, &mut eve] {
            assert_eq!(home.team("")?.kept_aside()?.len(), 1);
            assert!(!texts(home)?.contains(&"Dan, after his removal.".to_owned()));
        }
        Ok(())
    }

    /// Only a member who manages the team may accept; a change not kept aside is named.
    #[test]
    fn only_a_manager_accepts_and_only_what_is_kept_aside() -> Result<()> {
        let dirs = temp_dirs(2)?;
        let mut ada = Home::init(dirs[0].path(), "Ada")?;
        let mut eve = Home::init(dirs[1].path(), "Eve")?;
        let team = ada.create_team("Rosa's team")?;
        add_member(&mut ada, team, &eve, Role::Worker)?;
        eve.add_ops(team, &ada.signed_ops(team)?)?;
        write(&mut ada, "Ada: walk at 3.")?;
        let unknown = ChangeHash([7; 32]);
        let err = ada.team("")?.accept_kept_aside(&[unknown]);
        assert!(matches!(err, Err(Error::NotFound { .. })), "{err:?}");
        let doc = care_core::DocId::from_bytes([1; 16]);
        let body = OpBody::AcceptChanges { doc, changes: vec![[7; 32]] };
        let err = eve.author_op(team, body);
        assert!(matches!(err, Err(Error::Refused(_))), "{err:?}");
        Ok(())
    }
}
