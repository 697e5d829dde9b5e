//! The order a connection's writer sends what the owner queued for it.
//!
//! A device passing a large document on sends it as parts of 1 MiB each
//! (`care_sync::frame::SNAPSHOT_PART_BYTES`), queued all at once; a live edit queued
//! behind them would wait until every part is written, which on a phone's uplink is
//! seconds. So a sync message of another document (a live edit) goes ahead of parts
//! still queued, and waits for one part at most. Nothing else moves: a sync message of
//! the document whose parts are queued, and every other frame (ops, heads, a close), keep
//! their place, so the remote receives each document's parts, and everything but live
//! edits, in the order the session sent them. The remote's session holds a document's
//! parts apart from other frames (`Session::on_snapshot_part`), so a live edit between
//! two parts is handled as any other.

use std::collections::VecDeque;

use care_core::DocId;
use care_sync::Lane;

use crate::owner::Outgoing;

/// What the owner queued for one connection and the writer has not yet written.
#[derive(Debug, Default)]
pub(crate) struct Lanes {
    queued: VecDeque<(Outgoing, Lane)>,
}

impl Lanes {
    /// Queues what the owner sent, after everything queued before.
    pub(crate) fn push(&mut self, outgoing: Outgoing) {
        let lane = match &outgoing {
            Outgoing::Frame(frame) => frame.lane(),
            Outgoing::Close(_) => Lane::Other,
        };
        self.queued.push_back((outgoing, lane));
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// What to write next: the first queued, unless parts come first and a sync message
    /// of another document follows them (before any other frame); then that message.
    pub(crate) fn next(&mut self) -> Option<Outgoing> {
        let mut parts_of: Vec<DocId> = Vec::new();
        let mut ahead = None;
        for (at, (_, lane)) in self.queued.iter().enumerate() {
            match lane {
                Lane::Part(doc) => {
                    if !parts_of.contains(doc) {
                        parts_of.push(*doc);
                    }
                }
                Lane::Sync(doc) if at > 0 && !parts_of.contains(doc) => {
                    ahead = Some(at);
                    break;
                }
                Lane::Sync(_) | Lane::Other => break,
            }
        }
        let at = ahead.unwrap_or(0);
        self.queued.remove(at).map(|(outgoing, _)| outgoing)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use care_core::{DocKind, TeamId};
    use care_sync::{Frame, PartRef};

    use super::*;

    fn team() -> TeamId {
        TeamId::from_bytes([1; 16])
    }

    fn part(kind: DocKind, index: u32) -> Outgoing {
        let doc = kind.doc_id(team());
        let bytes = Bytes::from(vec![index as u8; 8]);
        let part = PartRef { team: team(), doc, kind, index, total: 3, bytes };
        Outgoing::Frame(part.encode(&[]))
    }

    fn sync(kind: DocKind, n: u8) -> Outgoing {
        let doc = kind.doc_id(team());
        let message = vec![n];
        Outgoing::Frame(
            Frame::Sync { team: team(), doc, kind, message, signatures: vec![] }.encode().into(),
        )
    }

    fn heads() -> Outgoing {
        Outgoing::Frame(Frame::Heads { team: team(), docs: vec![] }.encode().into())
    }

    fn written(lanes: &mut Lanes) -> Vec<Outgoing> {
        std::iter::from_fn(|| lanes.next()).collect()
    }

    #[test]
    fn a_live_edit_goes_ahead_of_parts_of_other_documents_only() {
        let (plan, team_doc) = (DocKind::Plan, DocKind::Team);
        let mut lanes = Lanes::default();
        for outgoing in
            [part(plan, 0), part(plan, 1), sync(team_doc, 1), sync(plan, 2), part(plan, 2)]
        {
            lanes.push(outgoing);
        }
        lanes.push(sync(team_doc, 3));
        // The edit of the team document goes first; the plan's sync message waits for
        // the plan's parts before it; the next edit of the team document goes ahead of
        // the plan's last part.
        let expected = [
            sync(team_doc, 1),
            part(plan, 0),
            part(plan, 1),
            sync(plan, 2),
            sync(team_doc, 3),
            part(plan, 2),
        ];
        assert_eq!(written(&mut lanes), expected);
    }

    #[test]
    fn nothing_but_a_live_edit_moves() {
        let plan = DocKind::Plan;
        let mut lanes = Lanes::default();
        let queued = [
            part(plan, 0),
            heads(),
            sync(DocKind::Team, 1),
            Outgoing::Close("bye".into()),
            part(plan, 1),
        ];
        for outgoing in queued.clone() {
            lanes.push(outgoing);
        }
        // The heads frame stops the edit behind it from going ahead of the part.
        assert_eq!(written(&mut lanes), queued.to_vec());
        assert!(lanes.is_empty());
    }
}
