//! A team as seen from one home: its membership and typed access to its documents,
//! each read and write checked against this device's role.

use std::path::Path;

use automerge::{Automerge, ChangeHash};
use care_core::documents::{
    self, Author, Booking, DocError, NewBooking, NewNote, Promise, Response, ShiftNote, TeamInfo,
};
use care_core::membership::{Access, Membership, Role};
use care_core::{ChangeSig, DocKind, EntryId, Month, NoteStream, Section, TeamId, Timestamp};
use care_store::{DocSummary, UpdateError};
use care_sync::Change;

use crate::error::{Error, Result};
use crate::home::{Home, Purpose, random_bytes};
use crate::replica::to_stored;

/// Which notes `Team::notes` returns, newest first.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoteQuery {
    /// Only notes written at or after this moment.
    pub since: Option<Timestamp>,
    /// At most this many notes.
    pub limit: Option<usize>,
}

/// A team of this home, opened for reading and writing.
#[derive(Debug)]
pub struct Team<'h> {
    pub(crate) home: &'h mut Home,
    membership: Membership,
}

impl<'h> Team<'h> {
    pub(crate) fn new(home: &'h mut Home, membership: Membership) -> Team<'h> {
        Team { home, membership }
    }

    /// The team's id.
    pub fn id(&self) -> TeamId {
        self.membership.team()
    }

    /// The team's membership as this home knows it.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// This device's role in the team, if it is a current device of a member.
    pub fn my_role(&self) -> Option<Role> {
        self.membership.role_of_device(self.home.profile().device)
    }

    /// The documents of this team held here, from the store's summary table.
    pub fn documents(&self) -> Result<Vec<DocSummary>> {
        Ok(self.home.store.docs(Some(self.id()))?)
    }

    /// The documents of this team held here sealed (on the team's circle node, which
    /// holds them so and reads none).
    pub fn sealed_documents(&self) -> Result<Vec<care_store::SealedDocSummary>> {
        self.home.sealed_documents(self.id())
    }

    /// The team's name and circle.
    pub fn info(&mut self) -> Result<TeamInfo> {
        let info = self.read(DocKind::Team, documents::team_doc::team_info)?.flatten();
        Ok(info
            .unwrap_or_else(|| TeamInfo { name: self.membership.name().to_owned(), circle: None }))
    }

    /// Sets the team's name and circle.
    pub fn set_info(&mut self, info: &TeamInfo) -> Result<()> {
        self.write(DocKind::Team, |doc, author| {
            documents::team_doc::set_team_info(doc, author, info)
        })
    }

    /// The care plan sections this device may read, in their usual order.
    pub fn plan(&mut self) -> Result<Vec<(Section, String)>> {
        let mut sections = Vec::new();
        for kind in [DocKind::Plan, DocKind::HealthPlan] {
            if self.access(&kind) == Access::None {
                continue;
            }
            sections.extend(self.read(kind, documents::plan::sections)?.unwrap_or_default());
        }
        sections.sort_by_key(|(section, _)| *section);
        Ok(sections)
    }

    /// One care plan section's text (empty when never written); refused when this
    /// device's role may not read the document holding it.
    pub fn plan_section(&mut self, section: Section) -> Result<String> {
        let sections = self.read(section.doc_kind(), documents::plan::sections)?;
        let text = sections.unwrap_or_default().into_iter().find(|(s, _)| *s == section);
        Ok(text.map(|(_, text)| text).unwrap_or_default())
    }

    /// Replaces the text of one care plan section. Concurrent edits of the same section
    /// on other devices merge with this one character by character.
    pub fn set_plan_section(&mut self, section: Section, text: &str) -> Result<()> {
        self.write(section.doc_kind(), |doc, author| {
            documents::plan::set_section(doc, author, section, text)
        })
    }

    /// Writes a shift note, durably, and returns its id. Without a stream, the note
    /// goes to the care record when this role may write it, else to general notes.
    pub fn add_note(&mut self, note: &NewNote, stream: Option<NoteStream>) -> Result<EntryId> {
        let at = self.home.author().at;
        let stream = stream.unwrap_or(self.default_stream(at.month()));
        let id = EntryId::new(at.month(), random_bytes());
        let kind = DocKind::Notes { stream, month: id.month() };
        self.write_at(kind, at, |doc, author| documents::notes::add_note(doc, author, id, note))?;
        Ok(id)
    }

    /// Adds an amendment to a note; the original text is kept.
    pub fn amend_note(&mut self, id: EntryId, text: &str) -> Result<()> {
        let kind = self.note_kind(id)?;
        self.write(kind, |doc, author| documents::notes::amend_note(doc, author, id, text))
    }

    /// One note by id, from any stream this device may read.
    pub fn note(&mut self, id: EntryId) -> Result<ShiftNote> {
        let kind = self.note_kind(id)?;
        let note = self.read(kind, |doc| documents::notes::note(doc, id))?.flatten();
        note.ok_or_else(|| Error::NotFound { what: "note", id: id.to_string() })
    }

    /// The newest notes first. Only the months needed are loaded, so this does not
    /// grow with the team's whole history.
    pub fn notes(&mut self, query: &NoteQuery) -> Result<Vec<ShiftNote>> {
        let Some(limit) = query.limit else {
            return self.all_notes(query.since);
        };
        let since_month = query.since.map(Timestamp::month);
        let mut out = Vec::new();
        for month in self.months_with(|kind| matches!(kind, DocKind::Notes { .. }))? {
            if out.len() >= limit || since_month.is_some_and(|since| month < since) {
                break;
            }
            // Only the newest of each stream that can still be returned are read in full.
            let wanted = limit - out.len();
            let mut batch = Vec::new();
            for stream in [NoteStream::Care, NoteStream::General] {
                let kind = DocKind::Notes { stream, month };
                if self.access(&kind) != Access::None {
                    let latest =
                        |doc: &Automerge| documents::notes::latest(doc, query.since, wanted);
                    batch.extend(self.read(kind, latest)?.unwrap_or_default());
                }
            }
            batch.sort_by(|a, b| b.written_at.cmp(&a.written_at).then(b.id.cmp(&a.id)));
            out.extend(batch);
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Every note since `since` (or ever), newest first: the month documents read
    /// together, on several threads ([`Home::read_records`]).
    fn all_notes(&mut self, since: Option<Timestamp>) -> Result<Vec<ShiftNote>> {
        let since_month = since.map(Timestamp::month);
        let mut kinds = Vec::new();
        for month in self.months_with(|kind| matches!(kind, DocKind::Notes { .. }))? {
            if since_month.is_some_and(|since| month < since) {
                break;
            }
            for stream in [NoteStream::Care, NoteStream::General] {
                let kind = DocKind::Notes { stream, month };
                if self.access(&kind) != Access::None {
                    kinds.push(kind);
                }
            }
        }
        let read = |doc: &Automerge| documents::notes::latest(doc, since, usize::MAX);
        let read = self.home.read_records(self.id(), &kinds, read)?;
        let mut out: Vec<ShiftNote> = Vec::new();
        let mut month_started = 0;
        for (at, (kind, notes)) in kinds.iter().zip(read).enumerate() {
            out.extend(notes.transpose().map_err(|e| doc_error(kind, e))?.unwrap_or_default());
            // Each month's notes, of both streams, newest first.
            if kinds.get(at + 1).is_none_or(|next| next.month() != kind.month()) {
                out[month_started..]
                    .sort_by(|a, b| b.written_at.cmp(&a.written_at).then(b.id.cmp(&a.id)));
                month_started = out.len();
            }
        }
        Ok(out)
    }

    /// Adds a booking to the rota and returns its id.
    pub fn add_booking(&mut self, booking: &NewBooking) -> Result<EntryId> {
        let id = EntryId::new(booking.start.month(), random_bytes());
        let kind = DocKind::Rota { month: id.month() };
        self.write(kind, |doc, author| documents::rota::add_booking(doc, author, id, booking))?;
        Ok(id)
    }

    /// Joins or declines a booking.
    pub fn respond(&mut self, id: EntryId, response: Response) -> Result<()> {
        let kind = DocKind::Rota { month: id.month() };
        if self.read(kind, |_| Ok(()))?.is_none() {
            return Err(Error::NotFound { what: "booking", id: id.to_string() });
        }
        self.write(kind, |doc, author| documents::rota::respond(doc, author, id, response))
    }

    /// Bookings that start in `[from, to)`, earliest first.
    pub fn bookings(
        &mut self,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
    ) -> Result<Vec<Booking>> {
        let mut out = Vec::new();
        for month in self.months_with(|kind| matches!(kind, DocKind::Rota { .. }))? {
            let before_range = from.is_some_and(|from| month < from.month());
            let after_range = to.is_some_and(|to| month > to.month());
            if before_range || after_range {
                continue;
            }
            let bookings = self.read(DocKind::Rota { month }, documents::rota::bookings)?;
            out.extend(bookings.unwrap_or_default().into_iter().filter(|b| {
                from.is_none_or(|from| b.start >= from) && to.is_none_or(|to| b.start < to)
            }));
        }
        out.sort_by(|a, b| a.start.cmp(&b.start).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Writes a new promise (version 1 of its text) and returns its id.
    pub fn add_promise(&mut self, title: &str, text: &str) -> Result<EntryId> {
        let at = self.home.author().at;
        let id = EntryId::new(at.month(), random_bytes());
        self.write_at(DocKind::Promises, at, |doc, author| {
            documents::promises::add_promise(doc, author, id, title, text)
        })?;
        Ok(id)
    }

    /// Records that this person agrees to the latest version of a promise; returns
    /// the version number agreed to.
    pub fn agree(&mut self, id: EntryId) -> Result<u32> {
        self.write(DocKind::Promises, |doc, author| documents::promises::agree(doc, author, id))
    }

    /// The team's promises.
    pub fn promises(&mut self) -> Result<Vec<Promise>> {
        Ok(self.read(DocKind::Promises, documents::promises::promises)?.unwrap_or_default())
    }

    /// Loads a document and runs `f` on it, after checking this device may read it.
    /// `None` when this home holds no such document yet.
    pub fn read<R>(
        &mut self,
        kind: DocKind,
        f: impl FnOnce(&Automerge) -> Result<R, DocError>,
    ) -> Result<Option<R>> {
        self.require(&kind, Access::Read)?;
        match self.home.record(self.id(), kind)? {
            Some(record) => f(record).map(Some).map_err(|e| doc_error(&kind, e)),
            None => Ok(None),
        }
    }

    /// [`Team::read`] on the whole document, changes kept aside included.
    pub(crate) fn read_whole<R>(
        &mut self,
        kind: DocKind,
        f: impl FnOnce(&Automerge) -> Result<R, DocError>,
    ) -> Result<Option<R>> {
        self.require(&kind, Access::Read)?;
        match self.home.doc(self.id(), kind, Purpose::Read)? {
            Some(stored) => f(stored.doc()).map(Some).map_err(|e| doc_error(&kind, e)),
            None => Ok(None),
        }
    }

    /// Exports every document this device may read into `out`: see [`crate::export`].
    pub fn export(
        &mut self,
        out: &Path,
        format: crate::ExportFormat,
    ) -> Result<crate::ExportReport> {
        crate::export::export_team(self, out, format)
    }

    /// Makes sure a document exists here, creating it from its genesis if needed.
    pub(crate) fn ensure_doc(&mut self, kind: DocKind) -> Result<()> {
        self.require(&kind, Access::Read)?;
        self.home.doc(self.id(), kind, Purpose::Write)?;
        Ok(())
    }

    /// The access this device has to a kind of document.
    pub fn access(&self, kind: &DocKind) -> Access {
        self.membership.access(self.home.profile().device, kind)
    }

    /// The record of a document of a kind (without the changes kept aside), for export.
    pub(crate) fn load(&mut self, kind: DocKind) -> Result<Option<&Automerge>> {
        self.require(&kind, Access::Read)?;
        self.home.record(self.id(), kind)
    }

    fn write<R>(
        &mut self,
        kind: DocKind,
        f: impl FnOnce(&mut Automerge, &Author) -> Result<R, DocError>,
    ) -> Result<R> {
        let at = self.home.author().at;
        self.write_at(kind, at, f)
    }

    pub(crate) fn write_at<R>(
        &mut self,
        kind: DocKind,
        at: Timestamp,
        f: impl FnOnce(&mut Automerge, &Author) -> Result<R, DocError>,
    ) -> Result<R> {
        self.require(&kind, Access::ReadWrite)?;
        let mut author = self.home.author();
        author.at = at;
        let team = self.id();
        // Every change is signed under the membership as this device holds it now.
        let access = self.home.team_access(team)?;
        let membership = access.membership().heads().to_vec();
        let device = self.home.profile().device;
        self.home.doc(team, kind, Purpose::Write)?;
        let Home { store, docs, key, records, .. } = &mut *self.home;
        let doc_id = kind.doc_id(team);
        let stored =
            docs.get_mut(&doc_id).expect("the document was loaded into the cache just above");
        let sign = |hashes: &[ChangeHash]| {
            hashes
                .iter()
                .map(|h| to_stored(&ChangeSig::sign(key, team, doc_id, h.0, &membership)))
                .collect()
        };
        // Written on the record, never on changes kept aside.
        let on = (doc_id, &kind, access.membership(), device);
        let write = |doc: &mut Automerge| records.write(doc, on, |record| f(record, &author));
        let written = store.update_doc_signed(stored, write, sign).map_err(|e| match e {
            UpdateError::Store(e) => Error::Store(e),
            UpdateError::Rejected(e) => doc_error(&kind, e),
        })?;
        self.home.changed.push(Change::Doc { team, doc: kind.doc_id(team), kind });
        Ok(written)
    }

    fn require(&self, kind: &DocKind, need: Access) -> Result<()> {
        let have = self.access(kind);
        let allowed = match need {
            Access::None => true,
            Access::Read => have != Access::None,
            Access::ReadWrite => have == Access::ReadWrite,
        };
        if allowed {
            return Ok(());
        }
        let verb = if need == Access::ReadWrite { "write" } else { "read" };
        Err(Error::NotAllowed {
            role: self.my_role().map_or("none".to_owned(), |r| r.to_string()),
            action: format!("{verb} {}", kind_family(kind)),
        })
    }

    fn default_stream(&self, month: Month) -> NoteStream {
        let care = DocKind::Notes { stream: NoteStream::Care, month };
        if self.access(&care) == Access::ReadWrite { NoteStream::Care } else { NoteStream::General }
    }

    /// The notes document holding `id`: its month is in the id; the stream is the one
    /// this device may read that holds it.
    pub(crate) fn note_kind(&mut self, id: EntryId) -> Result<DocKind> {
        for stream in [NoteStream::Care, NoteStream::General] {
            let kind = DocKind::Notes { stream, month: id.month() };
            if self.access(&kind) == Access::None {
                continue;
            }
            if self.read(kind, |doc| documents::notes::note(doc, id))?.flatten().is_some() {
                return Ok(kind);
            }
        }
        Err(Error::NotFound { what: "note", id: id.to_string() })
    }

    /// The months, newest first, that have a document of the kinds `select` picks.
    fn months_with(&self, select: impl Fn(&DocKind) -> bool) -> Result<Vec<Month>> {
        let mut months: Vec<Month> = self
            .documents()?
            .iter()
            .filter_map(|d| d.kind.parse::<DocKind>().ok())
            .filter(|kind| select(kind))
            .filter_map(|kind| kind.month())
            .collect();
        months.sort_unstable_by(|a, b| b.cmp(a));
        months.dedup();
        Ok(months)
    }
}

fn doc_error(kind: &DocKind, source: DocError) -> Error {
    Error::Document { kind: kind.to_string(), source: Box::new(source) }
}

/// The kind without its month, for messages: "notes", "rota", "health-plan".
fn kind_family(kind: &DocKind) -> String {
    let name = kind.to_string();
    name.split('/').next().unwrap_or_default().to_owned()
}
