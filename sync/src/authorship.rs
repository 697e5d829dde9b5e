//! Who wrote a change, proven: every change but a document's deterministic first one must
//! come with a [`ChangeSig`] by the device its actor id names, and that device must have
//! had the right to write the document's kind in the team's membership as the signature
//! says the author saw it. Checked before a change is applied, stored or passed on, for
//! changes received one by one and for whole documents alike.

use std::collections::HashMap;
use std::sync::Arc;

use automerge::{ActorId, ChangeHash};
use care_core::{Access, ChangeSig, DeviceId, DocId, DocKind, Membership, OpHash, TeamId};

use crate::access::{TeamAccess, genesis_change};

/// Most distinct memberships (sets of heads) the changes of one message or document may be
/// signed under. Each is a replay of the log up to those heads; honest changes name the
/// few states of the log their authors wrote in, and a sender naming more is refused
/// before it can make this device replay the log over and over.
pub const SIGNED_MEMBERSHIPS_PER_CHECK_MAX: usize = 64;

/// Why a change's authorship does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorshipError {
    /// No signature came with the change.
    #[error("change {change} came without its author's signature")]
    Unsigned {
        /// The change's hash.
        change: ChangeHash,
    },
    /// The change's actor is not a device key, so no device can have signed it.
    #[error("change {change} is by an actor that is not a device")]
    NotADevice {
        /// The change's hash.
        change: ChangeHash,
    },
    /// The signature is not the actor's signature of this change in this document.
    #[error("the signature of change {change} does not verify for device {device}")]
    BadSignature {
        /// The change's hash.
        change: ChangeHash,
        /// The device its actor id names.
        device: DeviceId,
    },
    /// The signature names membership heads this device does not hold (or that do not
    /// replay), so the signer's right at that point cannot be checked.
    #[error("change {change} was signed under a membership this device does not hold")]
    UnknownMembership {
        /// The change's hash.
        change: ChangeHash,
    },
    /// At the point of the membership log the signer saw, it could not write this kind.
    #[error("change {change} is by device {device}, which could not write a {kind} document then")]
    MayNotWrite {
        /// The change's hash.
        change: ChangeHash,
        /// The signer.
        device: DeviceId,
        /// The document's kind.
        kind: DocKind,
    },
    /// The changes are signed under more distinct memberships than
    /// [`SIGNED_MEMBERSHIPS_PER_CHECK_MAX`].
    #[error("changes signed under more than {max} different memberships")]
    TooManyMemberships {
        /// [`SIGNED_MEMBERSHIPS_PER_CHECK_MAX`].
        max: usize,
    },
    /// A whole document came with signatures of changes it does not hold.
    #[error("{count} signatures of changes the document does not hold")]
    StraySignatures {
        /// How many.
        count: usize,
    },
}

/// Checks the authorship of `changes` (actor and hash) of `doc`, a `kind` document of
/// `team`, against `signatures` (any order; extra ones are ignored).
pub fn check_signed<'a>(
    access: &TeamAccess,
    team: TeamId,
    doc: DocId,
    kind: &DocKind,
    changes: impl IntoIterator<Item = (&'a ActorId, ChangeHash)>,
    signatures: &[ChangeSig],
) -> Result<(), AuthorshipError> {
    let by_hash: HashMap<[u8; 32], &ChangeSig> =
        signatures.iter().map(|sig| (sig.hash, sig)).collect();
    let mut genesis: Option<Option<ChangeHash>> = None;
    // Memberships by the heads signed under: a few per document.
    let mut at: HashMap<&[OpHash], Arc<Membership>> = HashMap::new();
    let mut signed: Vec<(DeviceId, &ChangeSig)> = Vec::new();
    let mut hashes: Vec<ChangeHash> = Vec::new();
    for (actor, change) in changes {
        let Some(sig) = by_hash.get(&change.0) else {
            // The deterministic first change is everyone's and no one's: it is known by
            // its hash, which every device computes.
            if *genesis.get_or_insert_with(|| genesis_change(team, kind).1) == Some(change) {
                continue;
            }
            return Err(AuthorshipError::Unsigned { change });
        };
        let device = DeviceId::from_slice(actor.to_bytes())
            .map_err(|_| AuthorshipError::NotADevice { change })?;
        let membership = match at.get(sig.membership.as_slice()) {
            Some(membership) => Arc::clone(membership),
            None if at.len() >= SIGNED_MEMBERSHIPS_PER_CHECK_MAX => {
                return Err(AuthorshipError::TooManyMemberships {
                    max: SIGNED_MEMBERSHIPS_PER_CHECK_MAX,
                });
            }
            None => {
                let membership = access
                    .membership_at(&sig.membership)
                    .ok_or(AuthorshipError::UnknownMembership { change })?;
                at.insert(&sig.membership, Arc::clone(&membership));
                membership
            }
        };
        if membership.access(device, kind) != Access::ReadWrite {
            return Err(AuthorshipError::MayNotWrite { change, device, kind: *kind });
        }
        signed.push((device, *sig));
        hashes.push(change);
    }
    // The signatures themselves, all at once: a batch costs about a seventh of checking
    // each alone.
    ChangeSig::verify_all(team, doc, &signed)
        .map_err(|i| AuthorshipError::BadSignature { change: hashes[i], device: signed[i].0 })
}

/// [`check_signed`] for every change of a whole document, which must come with the
/// signatures of its changes and no others.
pub fn check_signed_document(
    access: &TeamAccess,
    team: TeamId,
    doc: DocId,
    kind: &DocKind,
    loaded: &automerge::Automerge,
    signatures: &[ChangeSig],
) -> Result<(), AuthorshipError> {
    let changes = crate::chunks::changes_of(loaded);
    check_signed(access, team, doc, kind, changes.iter().map(|(a, h)| (a, *h)), signatures)?;
    let held: std::collections::HashSet<[u8; 32]> = changes.iter().map(|(_, h)| h.0).collect();
    let stray = signatures.iter().filter(|sig| !held.contains(&sig.hash)).count();
    if stray > 0 {
        return Err(AuthorshipError::StraySignatures { count: stray });
    }
    Ok(())
}

/// Most signatures kept for changes received ahead of what they depend on.
pub const PENDING_SIGNATURES_MAX: usize = 65_536;

/// Signatures of changes received before the changes they depend on. Automerge holds
/// such a change back until its dependencies arrive, and it then enters the document
/// with a later message, whose signatures do not include it: its own came earlier, and
/// are kept here until then (at most [`PENDING_SIGNATURES_MAX`]; past it the oldest
/// are dropped, and a change that then arrives without its signature is asked for again).
#[derive(Debug, Default)]
pub struct PendingSignatures {
    held: HashMap<[u8; 32], ChangeSig>,
    order: std::collections::VecDeque<[u8; 32]>,
}

impl PendingSignatures {
    /// The signatures of the changes `new` (just applied), from `received` (the message's)
    /// or from those kept; the changes without one (the deterministic first change) are
    /// left out.
    pub fn take_for(&mut self, new: &[ChangeHash], received: &[ChangeSig]) -> Vec<ChangeSig> {
        let by_hash: HashMap<[u8; 32], &ChangeSig> =
            received.iter().map(|sig| (sig.hash, sig)).collect();
        new.iter()
            .filter_map(|hash| {
                by_hash.get(&hash.0).map(|sig| (*sig).clone()).or_else(|| self.held.remove(&hash.0))
            })
            .collect()
    }

    /// The signature kept for the change `hash`, if any: a change held back can still be
    /// offered to other devices by Automerge, and goes with its signature.
    pub fn get(&self, hash: &ChangeHash) -> Option<&ChangeSig> {
        self.held.get(&hash.0)
    }

    /// Keeps the signatures, among `received` (checked), of the changes not applied yet
    /// (`applied` says which are).
    pub fn keep_unapplied(
        &mut self,
        received: &[ChangeSig],
        applied: impl Fn(&ChangeHash) -> bool,
    ) {
        for sig in received {
            if applied(&ChangeHash(sig.hash)) || self.held.contains_key(&sig.hash) {
                continue;
            }
            while self.held.len() >= PENDING_SIGNATURES_MAX {
                match self.order.pop_front() {
                    Some(oldest) => self.held.remove(&oldest),
                    None => break,
                };
            }
            self.order.push_back(sig.hash);
            self.held.insert(sig.hash, sig.clone());
        }
        // Hashes taken since are skipped when their turn to go comes.
        if self.order.len() > 2 * PENDING_SIGNATURES_MAX {
            self.order.retain(|hash| self.held.contains_key(hash));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use care_core::{DeviceKey, OpHash};

    fn sig(n: u8) -> ChangeSig {
        let (team, doc) = (TeamId::from_bytes([1; 16]), DocId::from_bytes([2; 16]));
        ChangeSig::sign(
            &DeviceKey::from_seed([3; 32]),
            team,
            doc,
            [n; 32],
            &[OpHash::from_bytes([4; 32])],
        )
    }

    /// A change held back for its dependency gets its signature from the earlier message
    /// once it enters the document; one already applied is not kept.
    #[test]
    fn a_change_held_back_keeps_its_signature_until_it_enters() {
        let mut pending = PendingSignatures::default();
        let first = vec![sig(1), sig(2)];
        // Change 1 applied, change 2 held back.
        let taken = pending.take_for(&[ChangeHash([1; 32])], &first);
        assert_eq!(taken, vec![sig(1)]);
        pending.keep_unapplied(&first, |h| *h == ChangeHash([1; 32]));
        assert_eq!(pending.held.len(), 1, "only the change held back");
        // Its dependency arrives: both enter, each with its signature.
        let taken = pending.take_for(&[ChangeHash([3; 32]), ChangeHash([2; 32])], &[sig(3)]);
        assert_eq!(taken, vec![sig(3), sig(2)]);
        assert!(pending.held.is_empty());
    }

    #[test]
    fn pending_signatures_are_bounded() {
        let mut pending = PendingSignatures::default();
        let many: Vec<ChangeSig> = (0..=PENDING_SIGNATURES_MAX)
            .map(|i| {
                let mut s = sig(0);
                s.hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
                s
            })
            .collect();
        pending.keep_unapplied(&many, |_| false);
        assert_eq!(pending.held.len(), PENDING_SIGNATURES_MAX);
        assert!(!pending.held.contains_key(&many[0].hash), "the oldest went first");
    }
}
