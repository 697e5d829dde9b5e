//! Promises ([`DocKind::Promises`]): written agreements with versioned text and a record of
//! who agreed to which version, when.
//!
//! Layout: `promises/<entry id>` is a map with `title`, a `versions` list of
//! `{number, text, member, written_at}` and an `agreements` list of
//! `{member, device, version, text_hash, at}`.
//!
//! Each revision stores the number its writer saw next (highest so far + 1). Two revisions
//! made concurrently offline therefore share a number, and both are kept: the latest version
//! is the highest number, and among equals the last in list order (the same on every device).
//! The next revision numbers past them both. Because a number can repeat, an agreement also
//! records the BLAKE3 hash of the exact text agreed to.

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ReadDoc};
use serde::{Deserialize, Serialize};

use super::access::Obj;
use super::{Author, DocError, check_text, open, ts, write, wrong_kind};
use crate::doc_kind::DocKind;
use crate::ids::{DeviceId, EntryId, MemberId, Timestamp};

/// The longest promise title, in bytes.
pub const PROMISE_TITLE_BYTES_MAX: usize = 256;
/// The longest promise text, in bytes.
pub const PROMISE_TEXT_BYTES_MAX: usize = 64 * 1024;
/// The most versions one promise may have.
pub const PROMISE_VERSIONS_MAX: usize = 1000;

/// One version of a promise's text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromiseVersion {
    /// Its number, from 1; concurrent revisions may share one.
    pub number: u32,
    /// The text.
    pub text: String,
    /// Who wrote it.
    pub member: MemberId,
    /// When.
    pub written_at: Timestamp,
}

/// A member agreeing to one version of a promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agreement {
    /// Who agreed.
    pub member: MemberId,
    /// On which device.
    pub device: DeviceId,
    /// The version number agreed to.
    pub version: u32,
    /// The BLAKE3 hash of the exact text agreed to.
    pub text_hash: [u8; 32],
    /// When.
    pub at: Timestamp,
}

/// A promise with all its versions and agreements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promise {
    /// The promise's id.
    pub id: EntryId,
    /// Its title, e.g. "Getting Support Promise".
    pub title: String,
    /// Every version, in list order.
    pub versions: Vec<PromiseVersion>,
    /// Every agreement, in list order.
    pub agreements: Vec<Agreement>,
}

impl PromiseVersion {
    /// The BLAKE3 hash of this version's text, as recorded in agreements.
    pub fn text_hash(&self) -> [u8; 32] {
        *blake3::hash(self.text.as_bytes()).as_bytes()
    }
}

impl Promise {
    /// The latest version: the highest number, the last in list order among equals.
    pub fn latest(&self) -> Option<&PromiseVersion> {
        self.versions.iter().rev().max_by_key(|version| version.number)
    }

    /// The agreements to exactly the latest version's text.
    pub fn agreed_to_latest(&self) -> Vec<&Agreement> {
        let Some(latest) = self.latest() else {
            return Vec::new();
        };
        let hash = latest.text_hash();
        self.agreements
            .iter()
            .filter(|a| a.version == latest.number && a.text_hash == hash)
            .collect()
    }
}

/// Adds a promise with id `id`, whose first version is `text`.
pub fn add_promise(
    doc: &mut Automerge,
    author: &Author,
    id: EntryId,
    title: &str,
    text: &str,
) -> Result<(), DocError> {
    check_text("promise title", title, PROMISE_TITLE_BYTES_MAX)?;
    check_text("promise text", text, PROMISE_TEXT_BYTES_MAX)?;
    let promises = {
        let root = promises_obj(doc)?;
        if root.opt_map(&id.to_string())?.is_some() {
            return Err(DocError::Invalid(format!("A promise with id {id} already exists.")));
        }
        root.id
    };
    write(doc, author, |tx| {
        let obj = tx.put_object(&promises, id.to_string(), ObjType::Map)?;
        tx.put(&obj, "title", title)?;
        let versions = tx.put_object(&obj, "versions", ObjType::List)?;
        tx.put_object(&obj, "agreements", ObjType::List)?;
        let version = tx.insert_object(&versions, 0, ObjType::Map)?;
        put_version(tx, &version, author, 1, text)
    })
}

/// Appends a new version of promise `id` and returns its number.
pub fn revise_promise(
    doc: &mut Automerge,
    author: &Author,
    id: EntryId,
    text: &str,
) -> Result<u32, DocError> {
    check_text("promise text", text, PROMISE_TEXT_BYTES_MAX)?;
    let promise = promise(doc, id)?;
    if promise.versions.len() >= PROMISE_VERSIONS_MAX {
        return Err(DocError::Invalid(format!(
            "The promise {id} already has {PROMISE_VERSIONS_MAX} versions."
        )));
    }
    let number = promise.latest().map_or(1, |latest| latest.number.saturating_add(1));
    let versions = promise_obj(doc, id)?.list("versions")?.id;
    write(doc, author, |tx| {
        let end = tx.length(&versions);
        let version = tx.insert_object(&versions, end, ObjType::Map)?;
        put_version(tx, &version, author, number, text)?;
        Ok(number)
    })
}

/// Records that the author agrees to the latest version of promise `id`; returns its number.
pub fn agree(doc: &mut Automerge, author: &Author, id: EntryId) -> Result<u32, DocError> {
    let promise = promise(doc, id)?;
    let latest = promise
        .latest()
        .ok_or_else(|| DocError::malformed(format!("promises/{id}/versions"), "it is empty"))?;
    let (number, hash) = (latest.number, latest.text_hash());
    let agreements = promise_obj(doc, id)?.list("agreements")?.id;
    write(doc, author, |tx| {
        let end = tx.length(&agreements);
        let obj = tx.insert_object(&agreements, end, ObjType::Map)?;
        tx.put(&obj, "member", author.member.to_string())?;
        tx.put(&obj, "device", author.device.to_string())?;
        tx.put(&obj, "version", u64::from(number))?;
        tx.put(&obj, "text_hash", hash.to_vec())?;
        tx.put(&obj, "at", ts(author.at))?;
        Ok(number)
    })
}

/// The promise `id`; [`DocError::NotFound`] when there is none.
pub fn promise(doc: &Automerge, id: EntryId) -> Result<Promise, DocError> {
    read_promise(id, &promise_obj(doc, id)?)
}

/// Every promise, sorted by id (ids begin with the month they were made in).
pub fn promises(doc: &Automerge) -> Result<Vec<Promise>, DocError> {
    let mut all = promises_obj(doc)?
        .entries()?
        .into_iter()
        .map(|(key, obj)| {
            let id = key.parse().map_err(|_| {
                DocError::malformed(obj.path.clone(), "the key is not a promise id")
            })?;
            read_promise(id, &obj)
        })
        .collect::<Result<Vec<_>, _>>()?;
    all.sort_by_key(|promise| promise.id);
    Ok(all)
}

fn promises_obj(doc: &Automerge) -> Result<Obj<'_, Automerge>, DocError> {
    match open(doc)? {
        DocKind::Promises => Obj::root(doc).map("promises"),
        other => Err(wrong_kind("promises", other)),
    }
}

/// The objects of promise `id`, for the audit: the promise, each version and each
/// agreement, in list order; `None` when there is no such promise.
#[allow(clippy::type_complexity)]
pub fn promise_objects(
    doc: &Automerge,
    id: EntryId,
) -> Result<Option<(automerge::ObjId, Vec<automerge::ObjId>, Vec<automerge::ObjId>)>, DocError> {
    let Some(promise) = promises_obj(doc)?.opt_map(&id.to_string())? else {
        return Ok(None);
    };
    let ids = |key| -> Result<Vec<automerge::ObjId>, DocError> {
        Ok(promise.list(key)?.items()?.into_iter().map(|o| o.id).collect())
    };
    Ok(Some((promise.id.clone(), ids("versions")?, ids("agreements")?)))
}

fn promise_obj(doc: &Automerge, id: EntryId) -> Result<Obj<'_, Automerge>, DocError> {
    promises_obj(doc)?
        .opt_map(&id.to_string())?
        .ok_or_else(|| DocError::NotFound { what: "promise", id: id.to_string() })
}

fn put_version(
    tx: &mut automerge::transaction::Transaction<'_>,
    obj: &automerge::ObjId,
    author: &Author,
    number: u32,
    text: &str,
) -> Result<(), DocError> {
    tx.put(obj, "number", u64::from(number))?;
    tx.put(obj, "text", text)?;
    tx.put(obj, "member", author.member.to_string())?;
    tx.put(obj, "written_at", ts(author.at))?;
    Ok(())
}

fn read_promise<R: ReadDoc>(id: EntryId, obj: &Obj<'_, R>) -> Result<Promise, DocError> {
    let versions = obj.list("versions")?.items()?;
    let agreements = obj.list("agreements")?.items()?;
    Ok(Promise {
        id,
        title: obj.str("title")?,
        versions: versions.iter().map(read_version).collect::<Result<_, _>>()?,
        agreements: agreements.iter().map(read_agreement).collect::<Result<_, _>>()?,
    })
}

fn read_version<R: ReadDoc>(obj: &Obj<'_, R>) -> Result<PromiseVersion, DocError> {
    Ok(PromiseVersion {
        number: obj.u32("number")?,
        text: obj.str("text")?,
        member: obj.parse("member")?,
        written_at: obj.time("written_at")?,
    })
}

fn read_agreement<R: ReadDoc>(obj: &Obj<'_, R>) -> Result<Agreement, DocError> {
    Ok(Agreement {
        member: obj.parse("member")?,
        device: obj.parse("device")?,
        version: obj.u32("version")?,
        text_hash: obj.hash("text_hash")?,
        at: obj.time("at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::genesis;
    use crate::documents::test_support::*;

    const TITLE: &str = "Getting Support Promise";

    #[test]
    fn promises_round_trip() {
        let mut doc = genesis(team(), &DocKind::Promises);
        let owner = author_at(1, 0);
        add_promise(&mut doc, &owner, entry(1), TITLE, "We listen.").expect("adds");
        assert_eq!(agree(&mut doc, &author_at(2, 1), entry(1)).expect("agrees"), 1);
        assert_eq!(
            revise_promise(&mut doc, &owner, entry(1), "We listen and act.").expect("revises"),
            2
        );
        assert_eq!(agree(&mut doc, &author_at(3, 2), entry(1)).expect("agrees"), 2);
        let all = promises(&doc).expect("reads");
        assert_eq!(all.len(), 1);
        let promise = &all[0];
        assert_eq!(promise.title, TITLE);
        let latest = promise.latest().expect("has versions");
        assert_eq!((latest.number, latest.text.as_str()), (2, "We listen and act."));
        assert_eq!(promise.versions[0].member, owner.member);
        let agreed: Vec<MemberId> = promise.agreed_to_latest().iter().map(|a| a.member).collect();
        assert_eq!(agreed, [author(3, 0).member]);
        assert_eq!(promise.agreements[0].version, 1);
        assert_eq!(promise.agreements[0].text_hash, promise.versions[0].text_hash());
        let err = agree(&mut doc, &owner, entry(9)).expect_err("unknown");
        assert!(matches!(err, DocError::NotFound { what: "promise", .. }), "{err}");
    }

    #[test]
    fn concurrent_revisions_both_survive() {
        let mut a = genesis(team(), &DocKind::Promises);
        add_promise(&mut a, &author_at(1, 0), entry(1), TITLE, "We listen.").expect("adds");
        let mut b = a.clone();
        revise_promise(&mut a, &author_at(1, 1), entry(1), "We listen well.").expect("revises");
        revise_promise(&mut b, &author_at(2, 2), entry(1), "We listen, always.").expect("revises");
        agree(&mut b, &author_at(2, 3), entry(1)).expect("agrees");
        merge_both(&mut a, &mut b);
        let promise = promise(&a, entry(1)).expect("reads");
        assert_eq!(promise, super::promise(&b, entry(1)).expect("reads"));
        let numbers: Vec<u32> = promise.versions.iter().map(|v| v.number).collect();
        assert_eq!(numbers, [1, 2, 2]);
        assert_eq!(promise.agreements.len(), 1);
        let agreed_text = promise
            .versions
            .iter()
            .find(|v| v.text_hash() == promise.agreements[0].text_hash)
            .expect("the agreed text is one of the versions");
        assert_eq!(agreed_text.text, "We listen, always.");
        assert_eq!(
            revise_promise(&mut a, &author_at(1, 4), entry(1), "Merged.").expect("revises"),
            3
        );
    }
}
