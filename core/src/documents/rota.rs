//! The rota ([`DocKind::Rota`]): one month of bookings, and who joined or declined each.
//!
//! Layout: `bookings/<entry id>` is a map with `start`, `end`, `title`, `needed`,
//! `created_by` and a `responses` map from member id to `{response, at}`. Responses of
//! different members never conflict; a member answering twice concurrently from two devices
//! keeps one answer, the same on every device.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ReadDoc};
use serde::{Deserialize, Serialize};

use super::access::Obj;
use super::{Author, DocError, check_text, open, ts, write, wrong_kind};
use crate::doc_kind::DocKind;
use crate::ids::{EntryId, MemberId, Month, Timestamp};

/// The longest booking title, in bytes.
pub const BOOKING_TITLE_BYTES_MAX: usize = 256;
/// The most people one booking may need.
pub const BOOKING_NEEDED_MAX: u32 = 50;

/// A booking about to be added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBooking {
    /// When the visit starts; it decides the month.
    pub start: Timestamp,
    /// When it ends; after `start`.
    pub end: Timestamp,
    /// What the visit is, e.g. "Morning visit".
    pub title: String,
    /// How many people it needs (at least 1).
    pub needed: u32,
}

/// A member's answer to a booking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Response {
    /// They will be there.
    Joined,
    /// They will not.
    Declined,
}

/// A string that is not `joined` or `declined`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a response; expected joined or declined")]
pub struct ParseResponseError(pub String);

/// A booking as stored, with everyone's responses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Booking {
    /// The booking's id.
    pub id: EntryId,
    /// When the visit starts.
    pub start: Timestamp,
    /// When it ends.
    pub end: Timestamp,
    /// What it is.
    pub title: String,
    /// How many people it needs.
    pub needed: u32,
    /// Who added it.
    pub created_by: MemberId,
    /// Each member's latest answer and when they gave it.
    pub responses: BTreeMap<MemberId, (Response, Timestamp)>,
}

impl Booking {
    /// How many members have joined.
    pub fn joined(&self) -> usize {
        self.responses.values().filter(|(response, _)| *response == Response::Joined).count()
    }

    /// Whether enough members have joined.
    pub fn is_covered(&self) -> bool {
        self.joined() >= self.needed as usize
    }
}

/// Adds a booking with id `id`; the id's month and the start's month must be this
/// document's month.
pub fn add_booking(
    doc: &mut Automerge,
    author: &Author,
    id: EntryId,
    booking: &NewBooking,
) -> Result<(), DocError> {
    check_booking(booking)?;
    let bookings = {
        let (bookings, month) = bookings_obj(doc)?;
        if id.month() != month || booking.start.month() != month {
            return Err(DocError::Invalid(format!(
                "The booking {id} starting in {} does not belong to this rota of {month}.",
                booking.start.month()
            )));
        }
        if bookings.opt_map(&id.to_string())?.is_some() {
            return Err(DocError::Invalid(format!("A booking with id {id} already exists.")));
        }
        bookings.id
    };
    write(doc, author, |tx| {
        let obj = tx.put_object(&bookings, id.to_string(), ObjType::Map)?;
        tx.put(&obj, "start", ts(booking.start))?;
        tx.put(&obj, "end", ts(booking.end))?;
        tx.put(&obj, "title", booking.title.as_str())?;
        tx.put(&obj, "needed", u64::from(booking.needed))?;
        tx.put(&obj, "created_by", author.member.to_string())?;
        tx.put_object(&obj, "responses", ObjType::Map)?;
        Ok(())
    })
}

/// The objects of booking `id`, for the audit: the booking, and each member's latest
/// answer (by member id); `None` when this rota has no such booking.
#[allow(clippy::type_complexity)]
pub fn booking_objects(
    doc: &Automerge,
    id: EntryId,
) -> Result<Option<(automerge::ObjId, Vec<(String, automerge::ObjId)>)>, DocError> {
    let (bookings, _) = bookings_obj(doc)?;
    let Some(booking) = bookings.opt_map(&id.to_string())? else {
        return Ok(None);
    };
    let answers = booking.map("responses")?.entries()?;
    Ok(Some((
        booking.id,
        answers.into_iter().map(|(member, answer)| (member, answer.id)).collect(),
    )))
}

/// Records the author's answer to booking `id`, replacing their earlier one.
pub fn respond(
    doc: &mut Automerge,
    author: &Author,
    id: EntryId,
    response: Response,
) -> Result<(), DocError> {
    let responses = {
        let (bookings, _) = bookings_obj(doc)?;
        let booking = bookings
            .opt_map(&id.to_string())?
            .ok_or_else(|| DocError::NotFound { what: "booking", id: id.to_string() })?;
        booking.map("responses")?.id
    };
    write(doc, author, |tx| {
        let obj = tx.put_object(&responses, author.member.to_string(), ObjType::Map)?;
        tx.put(&obj, "response", response.to_string())?;
        tx.put(&obj, "at", ts(author.at))?;
        Ok(())
    })
}

/// Every booking of this rota, sorted by start, then id.
pub fn bookings(doc: &Automerge) -> Result<Vec<Booking>, DocError> {
    let (root, _) = bookings_obj(doc)?;
    let mut all = root
        .entries()?
        .into_iter()
        .map(|(key, obj)| read_booking(&key, &obj))
        .collect::<Result<Vec<_>, _>>()?;
    all.sort_by_key(|booking| (booking.start, booking.id));
    Ok(all)
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Response::Joined => "joined",
            Response::Declined => "declined",
        })
    }
}

impl FromStr for Response {
    type Err = ParseResponseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "joined" => Ok(Response::Joined),
            "declined" => Ok(Response::Declined),
            _ => Err(ParseResponseError(s.chars().take(80).collect())),
        }
    }
}

fn bookings_obj(doc: &Automerge) -> Result<(Obj<'_, Automerge>, Month), DocError> {
    match open(doc)? {
        DocKind::Rota { month } => Ok((Obj::root(doc).map("bookings")?, month)),
        other => Err(wrong_kind("rota/YYYY-MM", other)),
    }
}

fn check_booking(booking: &NewBooking) -> Result<(), DocError> {
    check_text("booking title", &booking.title, BOOKING_TITLE_BYTES_MAX)?;
    if booking.end <= booking.start {
        return Err(DocError::Invalid("A booking must end after it starts.".into()));
    }
    if !(1..=BOOKING_NEEDED_MAX).contains(&booking.needed) {
        return Err(DocError::Invalid(format!(
            "A booking needs between 1 and {BOOKING_NEEDED_MAX} people."
        )));
    }
    Ok(())
}

fn read_booking<R: ReadDoc>(key: &str, obj: &Obj<'_, R>) -> Result<Booking, DocError> {
    let id = key
        .parse()
        .map_err(|_| DocError::malformed(obj.path.clone(), "the key is not a booking id"))?;
    let mut responses = BTreeMap::new();
    for (member, answer) in obj.map("responses")?.entries()? {
        let member = member
            .parse()
            .map_err(|_| DocError::malformed(answer.path.clone(), "the key is not a member id"))?;
        responses.insert(member, (answer.parse("response")?, answer.time("at")?));
    }
    Ok(Booking {
        id,
        start: obj.time("start")?,
        end: obj.time("end")?,
        title: obj.str("title")?,
        needed: obj.u32("needed")?,
        created_by: obj.parse("created_by")?,
        responses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::genesis;
    use crate::documents::test_support::*;

    fn kind() -> DocKind {
        DocKind::Rota { month: month() }
    }

    fn visit(start_minutes: i64, needed: u32) -> NewBooking {
        NewBooking {
            start: at(start_minutes),
            end: at(start_minutes + 60),
            title: "Morning visit".into(),
            needed,
        }
    }

    #[test]
    fn bookings_round_trip() {
        let mut doc = genesis(team(), &kind());
        let keeper = author_at(1, 0);
        add_booking(&mut doc, &keeper, entry(2), &visit(600, 1)).expect("adds");
        add_booking(&mut doc, &keeper, entry(1), &visit(300, 2)).expect("adds");
        respond(&mut doc, &author_at(2, 1), entry(1), Response::Joined).expect("responds");
        respond(&mut doc, &author_at(3, 2), entry(1), Response::Declined).expect("responds");
        let all = bookings(&doc).expect("reads");
        assert_eq!(all.iter().map(|b| b.id).collect::<Vec<_>>(), [entry(1), entry(2)]);
        let first = &all[0];
        assert_eq!((first.start, first.end, first.needed), (at(300), at(360), 2));
        assert_eq!(first.title, "Morning visit");
        assert_eq!(first.created_by, keeper.member);
        assert_eq!(first.responses[&author(2, 0).member], (Response::Joined, at(1)));
        assert_eq!(first.joined(), 1);
        assert!(!first.is_covered());
        respond(&mut doc, &author_at(3, 3), entry(1), Response::Joined).expect("responds");
        assert!(bookings(&doc).expect("reads")[0].is_covered());
        assert_eq!("declined".parse::<Response>(), Ok(Response::Declined));
    }

    #[test]
    fn bad_bookings_are_refused() {
        let mut doc = genesis(team(), &kind());
        let by = author_at(1, 0);
        let mut backwards = visit(60, 1);
        backwards.end = backwards.start;
        let next_month = NewBooking { start: month().next().start(), ..visit(0, 1) };
        for booking in [visit(60, 0), backwards, next_month] {
            let err = add_booking(&mut doc, &by, entry(1), &booking).expect_err("refused");
            assert!(matches!(err, DocError::Invalid(_)), "{err}");
        }
        let err = respond(&mut doc, &by, entry(1), Response::Joined).expect_err("unknown");
        assert!(matches!(err, DocError::NotFound { what: "booking", .. }), "{err}");
    }

    #[test]
    fn concurrent_responses_and_bookings_merge() {
        let mut a = genesis(team(), &kind());
        add_booking(&mut a, &author_at(1, 0), entry(1), &visit(60, 2)).expect("adds");
        let mut b = a.clone();
        respond(&mut a, &author_at(2, 1), entry(1), Response::Joined).expect("responds");
        respond(&mut b, &author_at(3, 2), entry(1), Response::Joined).expect("responds");
        add_booking(&mut b, &author_at(3, 3), entry(2), &visit(120, 1)).expect("adds");
        merge_both(&mut a, &mut b);
        for doc in [&a, &b] {
            let all = bookings(doc).expect("reads");
            assert_eq!(all.len(), 2);
            assert_eq!(all[0].joined(), 2);
            assert!(all[0].is_covered());
        }
    }
}
