//! The frames two devices exchange on a `care/sync/4` stream, their compact versioned
//! encoding, and the length prefix that delimits them on a byte stream.
//!
//! A frame on the wire is a 4-byte big-endian length, then that many bytes: one format
//! byte ([`FORMAT_VERSION`]) followed by the postcard encoding of a [`Frame`]. Decoding
//! checks the size before anything is allocated and every count after decoding, so a
//! peer's bytes can never panic the process or make it hold more than [`FRAME_BYTES_MAX`].

use bytes::Bytes;
use care_core::{ChangeSig, DocId, DocKind, Month, SIGNED_HEADS_MAX, Sealed, TeamId};
use serde::{Deserialize, Serialize};

/// The ALPN of the sync protocol; the trailing number is [`PROTOCOL_VERSION`].
pub const ALPN: &[u8] = b"care/sync/4";
/// The version of the sync protocol, announced in [`Frame::Hello`]. Version 2 signs every
/// change: [`Frame::Sync`], [`Frame::Snapshot`] and [`Frame::SnapshotPart`] carry the
/// signatures of the changes they hold. Version 3 hands a team's circle node its
/// documents sealed ([`Frame::Sealed`], [`Frame::SealedHeads`]), never in clear. Version 4
/// sends a whole document only to a device that asks for it ([`Frame::Offer`],
/// [`Frame::Want`]), so that a device receiving a document from one peer is not sent it
/// again by the others.
pub const PROTOCOL_VERSION: u32 = 4;
/// Largest encoded frame, in bytes (the length prefix not counted).
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// The first byte of every encoded frame: the version of this encoding.
pub const FORMAT_VERSION: u8 = 1;
/// Most teams one [`Frame::Hello`] may list.
pub const TEAMS_PER_HELLO_MAX: usize = 4096;
/// Most membership ops one [`Frame::Ops`] may carry (a team's history is sent in batches).
pub const OPS_PER_FRAME_MAX: usize = 4096;
/// Most documents one [`Frame::Heads`] may list: the most documents of one team that sync.
pub const DOCS_PER_FRAME_MAX: usize = 65_536;
/// Most heads one document may announce.
pub const HEADS_PER_DOC_MAX: usize = 4096;
/// Most change signatures one frame may carry (a document with more changes is sent in
/// more parts).
pub const SIGNATURES_PER_FRAME_MAX: usize = 65_536;
/// Bytes of each part of a whole document sent in parts ([`Frame::SnapshotPart`]): a
/// document larger than this is sent in parts, so that no document is ever too large to
/// transfer, and so that a device taking in a part (copying it, keeping it) does so
/// between live edits in a few milliseconds. Small under test, so that tests and the
/// simulation send parts.
pub const SNAPSHOT_PART_BYTES: usize = if cfg!(test) { 4 << 10 } else { 1 << 20 };
/// Largest whole document sent in parts, in bytes: what one connection may make the
/// receiver hold before the document is complete.
pub const SNAPSHOT_BYTES_MAX: usize = 128 << 20;
/// Most parts of one document.
pub const SNAPSHOT_PARTS_MAX: usize = SNAPSHOT_BYTES_MAX.div_ceil(SNAPSHOT_PART_BYTES);
/// Most sealed documents sent together for one document ([`Frame::Sealed`]).
pub const SEALED_PER_TRANSFER_MAX: u32 = 4096;
/// Longest reason in a [`Frame::Close`], in bytes.
pub const CLOSE_REASON_BYTES_MAX: usize = 1024;
/// Length of the big-endian length prefix before each frame on a stream, in bytes.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// One message of the sync protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// The first frame each side sends: the teams it shares with the other device.
    Hello {
        /// The sender's [`PROTOCOL_VERSION`].
        version: u32,
        /// One summary per team in which the receiver is a current device of a member.
        teams: Vec<TeamSummary>,
    },
    /// Signed membership ops of a team ([`care_core::SignedOp`] wire bytes).
    Ops {
        /// The team.
        team: TeamId,
        /// The ops, each in its wire form.
        ops: Vec<Vec<u8>>,
    },
    /// The heads of every document of a team that both devices may read.
    Heads {
        /// The team.
        team: TeamId,
        /// The documents the sender holds.
        docs: Vec<DocHeads>,
    },
    /// One Automerge sync message for one document.
    Sync {
        /// The team.
        team: TeamId,
        /// The document; always `kind.doc_id(team)`.
        doc: DocId,
        /// The document's kind.
        kind: DocKind,
        /// The encoded `automerge::sync::Message`.
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
        /// The signatures of the changes the message carries.
        signatures: Vec<ChangeSig>,
    },
    /// A whole saved document, for a peer that holds none of it.
    Snapshot {
        /// The team.
        team: TeamId,
        /// The document; always `kind.doc_id(team)`.
        doc: DocId,
        /// The document's kind.
        kind: DocKind,
        /// The output of `Automerge::save`.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        /// The signatures of every change of the document.
        signatures: Vec<ChangeSig>,
    },
    /// One part of a whole saved document larger than [`SNAPSHOT_PART_BYTES`], for a peer
    /// that holds none of it: the parts of one document come one after another, numbered
    /// from 0, and together are what [`Frame::Snapshot`] would carry.
    SnapshotPart {
        /// The team.
        team: TeamId,
        /// The document; always `kind.doc_id(team)`.
        doc: DocId,
        /// The document's kind.
        kind: DocKind,
        /// This part's number, from 0.
        index: u32,
        /// How many parts the document is sent in.
        total: u32,
        /// The part's bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        /// A share of the signatures of the document's changes (all parts together carry
        /// them all).
        signatures: Vec<ChangeSig>,
    },
    /// A sealed document, to or from the team's circle node, which holds no team key: one
    /// of `total` sent together for one document, numbered from 0.
    Sealed {
        /// The team.
        team: TeamId,
        /// The document; always `kind.doc_id(team)`.
        doc: DocId,
        /// The document's kind.
        kind: DocKind,
        /// This one's number, from 0.
        index: u32,
        /// How many are sent together.
        total: u32,
        /// The heads of the document the sender holds, sorted.
        heads: Vec<[u8; 32]>,
        /// The sealed document.
        sealed: Box<Sealed>,
    },
    /// The heads of one document the sender holds, after it took in sealed documents, or
    /// when the remote's are not known to it.
    SealedHeads {
        /// The team.
        team: TeamId,
        /// The document; always `kind.doc_id(team)`.
        doc: DocId,
        /// The document's kind.
        kind: DocKind,
        /// Its heads, sorted.
        heads: Vec<[u8; 32]>,
        /// The circle node asks for the whole document sealed, to replace the many sealed
        /// documents it holds of it.
        whole_wanted: bool,
    },
    /// The sender ends the session, and says why.
    Close {
        /// A sentence for people.
        reason: String,
    },
    /// The sender holds a document the receiver was last known to lack, at these heads:
    /// the receiver answers with [`Frame::Want`], unless the document is already on its
    /// way to it from another device.
    Offer {
        /// The team.
        team: TeamId,
        /// The document; always `kind.doc_id(team)`.
        doc: DocId,
        /// The document's kind.
        kind: DocKind,
        /// The heads the sender holds, sorted.
        heads: Vec<[u8; 32]>,
    },
    /// The receiver of an [`Frame::Offer`] asks for the whole document.
    Want {
        /// The team.
        team: TeamId,
        /// The document; always `kind.doc_id(team)`.
        doc: DocId,
        /// The document's kind.
        kind: DocKind,
    },
}

/// What a device says about one team in its [`Frame::Hello`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamSummary {
    /// The team.
    pub team: TeamId,
    /// A hash of the sorted hashes of the membership ops the sender holds.
    pub ops_hash: [u8; 16],
    /// A hash of the sorted (document id, heads) of the documents both devices may read.
    pub docs_hash: [u8; 16],
}

/// The heads of one document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocHeads {
    /// The document; always `kind.doc_id(team)`.
    pub id: DocId,
    /// The document's kind.
    pub kind: DocKind,
    /// The hashes of its head changes, sorted.
    pub heads: Vec<[u8; 32]>,
}

/// Bytes that are not a frame this device accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame is larger than [`FRAME_BYTES_MAX`].
    #[error("a frame of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge {
        /// The announced or actual length.
        len: usize,
        /// [`FRAME_BYTES_MAX`].
        max: usize,
    },
    /// The frame is empty.
    #[error("an empty frame")]
    Empty,
    /// The frame's format byte names an encoding this device does not know.
    #[error("the frame is in format version {0}; this device reads version {FORMAT_VERSION}")]
    UnknownFormat(u8),
    /// The bytes do not decode as a frame.
    #[error("the frame could not be decoded: {0}")]
    Malformed(String),
    /// The frame decodes but breaks a limit or a rule of the protocol.
    #[error("the frame is invalid: {0}")]
    Invalid(String),
}

impl Frame {
    /// The format byte followed by the postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        // Sized first (a walk that copies nothing), so that a part of a large document is
        // written once, not copied again each time the buffer grows.
        let len =
            postcard::experimental::serialized_size(self).expect("every field type serialises");
        let mut out = Vec::with_capacity(1 + len);
        out.push(FORMAT_VERSION);
        // Writing into a Vec cannot fail, and every field type serialises.
        postcard::to_io(self, &mut out).expect("encoding a frame into a Vec cannot fail");
        out
    }

    /// Decodes and checks one frame (without its length prefix).
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        check_len(bytes.len())?;
        let (&format, body) = bytes.split_first().ok_or(FrameError::Empty)?;
        if format != FORMAT_VERSION {
            return Err(FrameError::UnknownFormat(format));
        }
        let frame: Frame =
            postcard::from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
        frame.validate().map_err(FrameError::Invalid)?;
        Ok(frame)
    }

    /// A short name of the frame's variant, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Ops { .. } => "Ops",
            Frame::Heads { .. } => "Heads",
            Frame::Sync { .. } => "Sync",
            Frame::Snapshot { .. } => "Snapshot",
            Frame::SnapshotPart { .. } => "SnapshotPart",
            Frame::Sealed { .. } => "Sealed",
            Frame::SealedHeads { .. } => "SealedHeads",
            Frame::Close { .. } => "Close",
            Frame::Offer { .. } => "Offer",
            Frame::Want { .. } => "Want",
        }
    }

    /// Checks counts, document ids and months.
    fn validate(&self) -> Result<(), String> {
        match self {
            Frame::Hello { teams, .. } => {
                bound("teams in a Hello", teams.len(), TEAMS_PER_HELLO_MAX)
            }
            Frame::Ops { ops, .. } => bound("ops in an Ops frame", ops.len(), OPS_PER_FRAME_MAX),
            Frame::Heads { team, docs } => {
                bound("documents in a Heads frame", docs.len(), DOCS_PER_FRAME_MAX)?;
                docs.iter().try_for_each(|d| {
                    bound("heads of a document", d.heads.len(), HEADS_PER_DOC_MAX)?;
                    check_doc(*team, d.id, &d.kind)
                })
            }
            Frame::Sync { team, doc, kind, signatures, .. }
            | Frame::Snapshot { team, doc, kind, signatures, .. } => {
                check_signatures(signatures)?;
                check_doc(*team, *doc, kind)
            }
            Frame::SnapshotPart { team, doc, kind, index, total, bytes, signatures } => {
                check_signatures(signatures)?;
                bound("parts of a document", *total as usize, SNAPSHOT_PARTS_MAX)?;
                bound("bytes in a part", bytes.len(), SNAPSHOT_PART_BYTES)?;
                if *total < 2 || index >= total {
                    return Err(format!("part {index} of {total}"));
                }
                check_doc(*team, *doc, kind)
            }
            Frame::Sealed { team, doc, kind, index, total, heads, sealed } => {
                bound(
                    "sealed documents sent together",
                    *total as usize,
                    SEALED_PER_TRANSFER_MAX as usize,
                )?;
                if *total == 0 || index >= total {
                    return Err(format!("sealed document {index} of {total}"));
                }
                bound("heads of a document", heads.len(), HEADS_PER_DOC_MAX)?;
                sealed.check_bounds().map_err(|e| e.to_string())?;
                check_signatures(&sealed.signatures)?;
                check_doc(*team, *doc, kind)
            }
            Frame::SealedHeads { team, doc, kind, heads, .. }
            | Frame::Offer { team, doc, kind, heads } => {
                bound("heads of a document", heads.len(), HEADS_PER_DOC_MAX)?;
                check_doc(*team, *doc, kind)
            }
            Frame::Want { team, doc, kind } => check_doc(*team, *doc, kind),
            Frame::Close { reason } => {
                bound("bytes in a close reason", reason.len(), CLOSE_REASON_BYTES_MAX)
            }
        }
    }
}

/// An encoded frame, ready to write behind its length prefix: the bytes [`Frame::encode`]
/// gives, in one or more pieces. A part of a whole document ([`PartRef`]) is three: its
/// fields, its share of the document's bytes (shared with every other part, and with
/// every connection the document goes to), and its signatures; so a device passing a
/// large document on to several others copies none of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded {
    pieces: Vec<Bytes>,
}

impl Encoded {
    /// Its length in bytes (the length prefix not counted).
    pub fn len(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its pieces, to write one after the other.
    pub fn into_pieces(self) -> Vec<Bytes> {
        self.pieces
    }

    /// Its bytes in one piece (a copy, when there are several).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.len());
        for piece in &self.pieces {
            bytes.extend_from_slice(piece);
        }
        bytes
    }

    /// Its [`Lane`], read from its first piece (which holds at least the frame's variant,
    /// team and document).
    pub fn lane(&self) -> Lane {
        self.pieces.first().map_or(Lane::Other, |first| Lane::of(first))
    }
}

impl From<Vec<u8>> for Encoded {
    fn from(bytes: Vec<u8>) -> Encoded {
        Encoded { pieces: vec![Bytes::from(bytes)] }
    }
}

/// A [`Frame::SnapshotPart`] whose bytes are a slice of the whole document, shared:
/// encoded as that frame is, without copying the part out of the document.
#[derive(Debug, Clone)]
pub struct PartRef {
    /// The team.
    pub team: TeamId,
    /// The document.
    pub doc: DocId,
    /// The document's kind.
    pub kind: DocKind,
    /// This part's number, from 0.
    pub index: u32,
    /// How many parts the document is sent in.
    pub total: u32,
    /// The part's bytes.
    pub bytes: Bytes,
}

impl PartRef {
    /// The frame, as [`Frame::encode`] gives it for the same [`Frame::SnapshotPart`] with
    /// `signatures`, in three pieces: the fields up to the part's bytes, those bytes
    /// (shared, not copied), and the signatures.
    pub fn encode(&self, signatures: &[ChangeSig]) -> Encoded {
        let PartRef { team, doc, kind, index, total, ref bytes } = *self;
        // Postcard writes an enum variant as its index then its fields, a struct as its
        // fields one after the other, and a byte field (`serde_bytes`) as its length
        // then its bytes.
        let fields = (SNAPSHOT_PART_VARIANT, team, doc, kind, index, total, bytes.len());
        let mut head = vec![FORMAT_VERSION];
        postcard::to_io(&fields, &mut head).expect("encoding into a Vec cannot fail");
        let tail = postcard::to_allocvec(signatures).expect("every field type serialises");
        Encoded { pieces: vec![Bytes::from(head), bytes.clone(), Bytes::from(tail)] }
    }
}

/// The index of [`Frame::SnapshotPart`] among the frame's variants.
const SNAPSHOT_PART_VARIANT: u32 = 5;
/// The index of [`Frame::Sync`] among the frame's variants.
const SYNC_VARIANT: u32 = 3;

/// What a connection's writer may reorder, read from an encoded frame's first bytes
/// without decoding the rest (see [`Lane::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A part of a whole document ([`Frame::SnapshotPart`]).
    Part(DocId),
    /// A sync message of one document ([`Frame::Sync`]): a live edit, which may go
    /// ahead of parts of other documents.
    Sync(DocId),
    /// Any other frame: kept in its place.
    Other,
}

impl Lane {
    /// The lane of an encoded frame (as [`Frame::encode`] gives it); a frame it cannot
    /// read is [`Lane::Other`].
    pub fn of(frame: &[u8]) -> Lane {
        let Some((&FORMAT_VERSION, rest)) = frame.split_first() else { return Lane::Other };
        // Both variants begin with the team, then the document.
        match postcard::take_from_bytes::<(u32, TeamId, DocId)>(rest) {
            Ok(((SNAPSHOT_PART_VARIANT, _, doc), _)) => Lane::Part(doc),
            Ok(((SYNC_VARIANT, _, doc), _)) => Lane::Sync(doc),
            _ => Lane::Other,
        }
    }
}

/// Returns an error when `len` is larger than [`FRAME_BYTES_MAX`].
pub fn length_prefix(len: usize) -> Result<[u8; LENGTH_PREFIX_BYTES], FrameError> {
    check_len(len)?;
    let len = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max: FRAME_BYTES_MAX })?;
    Ok(len.to_be_bytes())
}

/// Reads a length prefix; checks it against [`FRAME_BYTES_MAX`] before the caller
/// allocates a buffer for the frame.
pub fn read_length_prefix(prefix: [u8; LENGTH_PREFIX_BYTES]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    check_len(len)?;
    Ok(len)
}

/// A frame encoded with its length prefix, ready to write to a stream.
pub fn encode_with_prefix(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let body = frame.encode();
    let mut out = length_prefix(body.len())?.to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

fn check_len(len: usize) -> Result<(), FrameError> {
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge { len, max: FRAME_BYTES_MAX });
    }
    Ok(())
}

/// At most [`SIGNATURES_PER_FRAME_MAX`] signatures, each naming at most
/// [`SIGNED_HEADS_MAX`] membership heads.
fn check_signatures(signatures: &[ChangeSig]) -> Result<(), String> {
    bound("change signatures", signatures.len(), SIGNATURES_PER_FRAME_MAX)?;
    signatures.iter().try_for_each(|s| {
        bound("membership heads of a signature", s.membership.len(), SIGNED_HEADS_MAX)
    })
}

fn bound(what: &str, count: usize, max: usize) -> Result<(), String> {
    if count > max {
        return Err(format!("{count} {what}, more than {max}"));
    }
    Ok(())
}

/// A document id must be the one its team and kind derive, and a month must exist.
fn check_doc(team: TeamId, doc: DocId, kind: &DocKind) -> Result<(), String> {
    if let Some(month) = kind.month()
        && Month::new(month.year(), month.number()) != Some(month)
    {
        return Err(format!("the document kind names a month that does not exist: {month}"));
    }
    if kind.doc_id(team) != doc {
        return Err(format!("document {doc} is not the {kind} document of team {team}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use care_core::NoteStream;
    use proptest::prelude::*;

    fn team() -> TeamId {
        TeamId::from_bytes([3; 16])
    }

    fn owned_signatures(frame: &Frame) -> &[ChangeSig] {
        match frame {
            Frame::SnapshotPart { signatures, .. } => signatures,
            _ => &[],
        }
    }

    /// Byte fields are read and written as one slice: the same bytes on the wire as a
    /// sequence of `u8`, so devices of either kind read each other's frames.
    #[test]
    fn byte_fields_keep_their_wire_form() {
        #[derive(Serialize)]
        struct AsSequence(Vec<u8>);
        #[derive(Serialize)]
        struct AsBytes(#[serde(with = "serde_bytes")] Vec<u8>);
        for len in [0, 1, 127, 128, 300, 70_000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sequence = postcard::to_stdvec(&AsSequence(bytes.clone())).expect("encodes");
            assert_eq!(postcard::to_stdvec(&AsBytes(bytes)).expect("encodes"), sequence);
        }
    }

    fn kind_strategy() -> impl Strategy<Value = DocKind> {
        let month = (2000..2100i32, 1..=12u8).prop_map(|(y, m)| Month::new(y, m));
        prop_oneof![
            Just(DocKind::Team),
            Just(DocKind::Plan),
            Just(DocKind::HealthPlan),
            Just(DocKind::Promises),
            month.clone().prop_filter_map("valid", |m| m.map(|month| DocKind::Rota { month })),
            (month, any::<bool>()).prop_filter_map("valid", |(m, general)| {
                let stream = if general { NoteStream::General } else { NoteStream::Care };
                m.map(|month| DocKind::Notes { stream, month })
            }),
        ]
    }

    fn frame_strategy() -> impl Strategy<Value = Frame> {
        let bytes = proptest::collection::vec(any::<u8>(), 0..64);
        let summary = (any::<[u8; 16]>(), any::<[u8; 16]>())
            .prop_map(|(ops_hash, docs_hash)| TeamSummary { team: team(), ops_hash, docs_hash });
        let sig = (
            any::<[u8; 32]>(),
            proptest::collection::vec(any::<[u8; 32]>(), 0..3),
            any::<[u8; 32]>(),
        )
            .prop_map(|(hash, heads, half)| ChangeSig {
                hash,
                membership: heads.into_iter().map(care_core::OpHash::from_bytes).collect(),
                signature: care_core::Signature([half, half].concat().try_into().expect("64")),
            });
        let sigs = proptest::collection::vec(sig, 0..3);
        let heads = (kind_strategy(), proptest::collection::vec(any::<[u8; 32]>(), 0..4))
            .prop_map(|(kind, heads)| DocHeads { id: kind.doc_id(team()), kind, heads });
        prop_oneof![
            (any::<u32>(), proptest::collection::vec(summary, 0..4))
                .prop_map(|(version, teams)| Frame::Hello { version, teams }),
            proptest::collection::vec(bytes.clone(), 0..4)
                .prop_map(|ops| Frame::Ops { team: team(), ops }),
            proptest::collection::vec(heads, 0..4)
                .prop_map(|docs| Frame::Heads { team: team(), docs }),
            (kind_strategy(), bytes.clone(), sigs.clone()).prop_map(
                |(kind, message, signatures)| {
                    Frame::Sync {
                        team: team(),
                        doc: kind.doc_id(team()),
                        kind,
                        message,
                        signatures,
                    }
                }
            ),
            (kind_strategy(), bytes.clone(), sigs.clone()).prop_map(|(kind, bytes, signatures)| {
                Frame::Snapshot { team: team(), doc: kind.doc_id(team()), kind, bytes, signatures }
            }),
            (kind_strategy(), bytes, 0u32..3, sigs).prop_map(|(kind, bytes, index, signatures)| {
                Frame::SnapshotPart {
                    team: team(),
                    doc: kind.doc_id(team()),
                    kind,
                    index,
                    total: 3,
                    bytes,
                    signatures,
                }
            }),
            "[a-z ]{0,40}".prop_map(|reason| Frame::Close { reason }),
            (kind_strategy(), proptest::collection::vec(any::<[u8; 32]>(), 0..4)).prop_map(
                |(kind, heads)| Frame::Offer {
                    team: team(),
                    doc: kind.doc_id(team()),
                    kind,
                    heads
                }
            ),
            kind_strategy().prop_map(|kind| Frame::Want {
                team: team(),
                doc: kind.doc_id(team()),
                kind
            }),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip(frame in frame_strategy()) {
            prop_assert_eq!(Frame::decode(&frame.encode()), Ok(frame));
        }

        /// A frame's lane, read from its first bytes, is its kind and document.
        #[test]
        fn a_frame_lane_names_its_kind_and_document(frame in frame_strategy()) {
            let expected = match &frame {
                Frame::SnapshotPart { doc, .. } => Lane::Part(*doc),
                Frame::Sync { doc, .. } => Lane::Sync(*doc),
                _ => Lane::Other,
            };
            prop_assert_eq!(Lane::of(&frame.encode()), expected);
        }

        /// A part encoded from the whole document's bytes is the frame of that part, byte
        /// for byte.
        #[test]
        fn a_borrowed_part_encodes_as_its_frame(frame in frame_strategy(), pad in 0usize..8) {
            let Frame::SnapshotPart { team, doc, kind, index, total, bytes, signatures } = frame
            else {
                return Ok(());
            };
            let mut whole = vec![7; pad];
            whole.extend_from_slice(&bytes);
            let shared = Bytes::from(whole).slice(pad..);
            let part = PartRef { team, doc, kind, index, total, bytes: shared };
            let owned = Frame::SnapshotPart { team, doc, kind, index, total, bytes, signatures };
            let encoded = part.encode(owned_signatures(&owned));
            prop_assert_eq!(encoded.lane(), Lane::Part(doc));
            prop_assert_eq!(encoded.to_vec(), owned.encode());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Frame::decode(&bytes);
            let mut framed = vec![FORMAT_VERSION];
            framed.extend_from_slice(&bytes);
            let _ = Frame::decode(&framed);
        }

        #[test]
        fn truncated_frames_are_errors(frame in frame_strategy(), cut in 0usize..64) {
            let bytes = frame.encode();
            let cut = cut.min(bytes.len().saturating_sub(1));
            let _ = Frame::decode(&bytes[..cut]);
        }
    }

    #[test]
    fn limits_and_versions_are_checked() {
        assert!(matches!(Frame::decode(&[]), Err(FrameError::Empty)));
        assert!(matches!(Frame::decode(&[9, 0]), Err(FrameError::UnknownFormat(9))));
        let huge = vec![0; FRAME_BYTES_MAX + 1];
        assert!(matches!(Frame::decode(&huge), Err(FrameError::TooLarge { .. })));
        assert!(read_length_prefix(u32::MAX.to_be_bytes()).is_err());
        assert_eq!(read_length_prefix(length_prefix(10).expect("small")), Ok(10));
        let wrong_id = Frame::Snapshot {
            team: team(),
            doc: DocKind::Plan.doc_id(team()),
            kind: DocKind::HealthPlan,
            bytes: vec![],
            signatures: vec![],
        };
        assert!(matches!(Frame::decode(&wrong_id.encode()), Err(FrameError::Invalid(_))));
        let many = Frame::Ops { team: team(), ops: vec![vec![]; OPS_PER_FRAME_MAX + 1] };
        assert!(matches!(Frame::decode(&many.encode()), Err(FrameError::Invalid(_))));
        let sig = ChangeSig {
            hash: [1; 32],
            membership: vec![care_core::OpHash::from_bytes([2; 32]); SIGNED_HEADS_MAX + 1],
            signature: care_core::Signature([3; 64]),
        };
        let kind = DocKind::Plan;
        let (doc, message) = (kind.doc_id(team()), vec![]);
        let wide = Frame::Sync { team: team(), doc, kind, message, signatures: vec![sig] };
        assert!(matches!(Frame::decode(&wide.encode()), Err(FrameError::Invalid(_))));
        let framed = encode_with_prefix(&Frame::Close { reason: "bye".into() }).expect("small");
        assert_eq!(&framed[..4], &((framed.len() - 4) as u32).to_be_bytes());
    }
}
