//! Automerge's sync protocol for a document both devices hold at the same heads, run on
//! the sync state alone, so that a device need not load a document only to learn that it
//! agrees.
//!
//! After a device sends a whole document, the receiver answers with a sync message saying
//! it now holds those heads. Applying that answer with Automerge would mean loading the
//! document, which for a year of notes costs more than the whole transfer; a circle node
//! serving many devices would load every document it passes on. The two functions here
//! do what [`SyncDoc`](automerge::sync::SyncDoc) does in that case and in no other: each
//! reports whether it applied, and when it did not, the caller loads the document and asks
//! Automerge.

use automerge::ChangeHash;
use automerge::sync::{BloomFilter, ChunkList, Have, Message, MessageFlags, MessageVersion, State};

/// Applies `message` to `state` as `receive_sync_message` would, for a document whose
/// heads are `ours` (sorted, as Automerge lists them), when the message carries no
/// changes, needs nothing and says the remote holds exactly `ours`. Returns whether it
/// applied; `state` is unchanged when it did not.
pub fn receive(state: &mut State, ours: &[ChangeHash], message: &Message) -> bool {
    let signals = |flags: MessageFlags| {
        flags.contains(MessageFlags::SYNC_RESET) || flags.contains(MessageFlags::READ_ONLY)
    };
    if ours.is_empty()
        || !message.changes.is_empty()
        || !message.need.is_empty()
        || message.heads != ours
        || message.flags.is_some_and(signals)
    {
        return false;
    }
    state.in_flight = false;
    if let Some(flags) = message.flags {
        let mut capabilities = vec![automerge::sync::Capability::MessageV2];
        if flags.contains(MessageFlags::SUPPORTS_SYNC_RESET) {
            capabilities.push(automerge::sync::Capability::SyncReset);
        }
        state.their_capabilities = Some(capabilities);
        state.peer_read_only = false;
    }
    // The remote holds every change this device has, so none of those sent is unseen.
    state.sent_hashes.clear();
    state.last_sent_heads.clone_from(&message.heads);
    state.shared_heads.clone_from(&message.heads);
    state.their_have = Some(message.have.clone());
    state.their_heads = Some(message.heads.clone());
    state.their_need = Some(Vec::new());
    true
}

/// Whether `generate_sync_message` would return nothing for a document whose heads are
/// `ours` (sorted): this device has already told the remote those heads, and either the
/// remote said it holds exactly them and needs nothing (so every change this device could
/// offer is one it has), or that message is still unanswered (Automerge waits for the
/// answer: a whole document just sent, say). `false` means Automerge must decide.
pub fn nothing_to_send(state: &State, ours: &[ChangeHash]) -> bool {
    // Automerge first asks for a reset if the remote's last sync point names a change it
    // lacks; a point within `ours` is held.
    let their_point_held = state
        .their_have
        .as_ref()
        .and_then(|have| have.first())
        .is_none_or(|have| have.last_sync.iter().all(|hash| ours.contains(hash)));
    let told = !ours.is_empty()
        && !state.needs_reset
        && state.have_responded
        && state.last_sent_heads == ours
        && their_point_held;
    let agreed = state.their_heads.as_deref() == Some(ours)
        && state.their_need.as_ref().is_none_or(Vec::is_empty);
    told && (agreed || state.in_flight)
}

/// The sync state after sending a whole document at `heads`: as if a sync message had
/// told the remote those heads and awaits its answer.
pub(crate) fn state_after_sending(heads: &[ChangeHash]) -> State {
    State {
        last_sent_heads: heads.to_vec(),
        have_responded: true,
        in_flight: true,
        ..State::default()
    }
}

/// The sync state after storing a whole document received at `heads`, and the sync
/// message that tells the remote so: both sides hold `heads`, and this side has nothing
/// since (an empty filter of changes after them).
pub(crate) fn answer_to_snapshot(heads: &[ChangeHash]) -> (State, Message) {
    let state = State {
        shared_heads: heads.to_vec(),
        last_sent_heads: heads.to_vec(),
        their_heads: Some(heads.to_vec()),
        have_responded: true,
        in_flight: true,
        ..State::default()
    };
    let message = Message {
        heads: heads.to_vec(),
        need: Vec::new(),
        have: vec![Have { last_sync: heads.to_vec(), bloom: BloomFilter::default() }],
        changes: ChunkList::empty(),
        flags: None,
        version: MessageVersion::V1,
    };
    (state, message)
}

#[cfg(test)]
mod tests {
    use automerge::sync::SyncDoc;
    use automerge::transaction::Transactable;
    use automerge::{ActorId, Automerge, ROOT};

    use super::*;

    fn doc(actor: u8, notes: usize) -> Automerge {
        let mut doc = Automerge::new().with_actor(ActorId::from([actor; 16]));
        for i in 0..notes {
            doc.transact(|tx| tx.put(ROOT, format!("note-{i}"), "tea")).expect("a change");
        }
        doc
    }

    fn heads(doc: &Automerge) -> Vec<ChangeHash> {
        doc.get_heads()
    }

    /// Runs Automerge's sync between `a` and `b` to the end, returning each side's state.
    fn sync_fully(a: &mut Automerge, b: &mut Automerge) -> (State, State) {
        let (mut sa, mut sb) = (State::new(), State::new());
        for _ in 0..20 {
            let to_b = a.generate_sync_message(&mut sa);
            let to_a = b.generate_sync_message(&mut sb);
            if to_b.is_none() && to_a.is_none() {
                return (sa, sb);
            }
            if let Some(m) = to_b {
                b.receive_sync_message(&mut sb, m).expect("b receives");
            }
            if let Some(m) = to_a {
                a.receive_sync_message(&mut sa, m).expect("a receives");
            }
        }
        panic!("sync did not finish");
    }

    #[test]
    fn an_agreeing_message_is_received_as_automerge_receives_it() {
        let mut a = doc(1, 5);
        let mut b = a.fork();
        let (mut sa, mut sb) = sync_fully(&mut a, &mut b);
        // A new session: `b` says where it is; `a` answers and so on, both ways.
        sa = State::decode(&sa.encode()).expect("decodes");
        sb = State::decode(&sb.encode()).expect("decodes");
        let message = b.generate_sync_message(&mut sb).expect("b speaks first in a session");
        let mut by_automerge = sa.clone();
        a.receive_sync_message(&mut by_automerge, message.clone()).expect("a receives");
        let mut by_state = sa.clone();
        assert!(receive(&mut by_state, &heads(&a), &message));
        assert_eq!(by_state.shared_heads, by_automerge.shared_heads);
        assert_eq!(by_state.last_sent_heads, by_automerge.last_sent_heads);
        assert_eq!(by_state.their_heads, by_automerge.their_heads);
        assert_eq!(by_state.their_need, by_automerge.their_need);
        assert_eq!(by_state.their_have, by_automerge.their_have);
        assert_eq!(by_state.sent_hashes, by_automerge.sent_hashes);
        assert_eq!(by_state.in_flight, by_automerge.in_flight);
        assert_eq!(by_state.their_capabilities, by_automerge.their_capabilities);
        // Automerge has not told `b` anything this session yet, so it answers; so must we.
        assert!(a.generate_sync_message(&mut by_automerge.clone()).is_some());
        assert!(!nothing_to_send(&by_state, &heads(&a)));
    }

    #[test]
    fn once_both_sides_have_spoken_nothing_is_sent_as_with_automerge() {
        let mut a = doc(1, 5);
        let mut b = a.fork();
        let (_, _) = sync_fully(&mut a, &mut b);
        let (mut sa, mut sb) = (State::new(), State::new());
        let to_b = a.generate_sync_message(&mut sa).expect("a opens");
        b.receive_sync_message(&mut sb, to_b).expect("b receives");
        let to_a = b.generate_sync_message(&mut sb).expect("b answers with its heads");
        let mut by_automerge = sa.clone();
        a.receive_sync_message(&mut by_automerge, to_a.clone()).expect("a receives");
        assert!(receive(&mut sa, &heads(&a), &to_a));
        assert_eq!(sa, by_automerge);
        assert!(a.generate_sync_message(&mut by_automerge).is_none());
        assert!(nothing_to_send(&sa, &heads(&a)));
    }

    #[test]
    fn after_a_whole_document_both_sides_agree_without_loading_it() {
        let mut a = doc(1, 5);
        let ours = heads(&a);
        let mut sa = state_after_sending(&ours);
        let (sb, answer) = answer_to_snapshot(&ours);

        // What Automerge on the sending side makes of the answer...
        let mut by_automerge = sa.clone();
        a.receive_sync_message(&mut by_automerge, answer.clone()).expect("a receives");
        assert!(a.generate_sync_message(&mut by_automerge).is_none(), "nothing more to say");
        // ... is what the state alone makes of it.
        assert!(receive(&mut sa, &ours, &answer));
        assert!(nothing_to_send(&sa, &ours));

        // The receiving side, loaded later, sends nothing either, and both go on from
        // the shared heads when a new change is made.
        let mut b = Automerge::load(&a.save()).expect("loads");
        let mut sb_loaded = sb.clone();
        assert!(b.generate_sync_message(&mut sb_loaded).is_none());
        assert!(nothing_to_send(&sb, &ours), "the answer told the sender our heads");
        a.transact(|tx| tx.put(ROOT, "later", "soup")).expect("a change");
        let update = a.generate_sync_message(&mut by_automerge).expect("a sends the change");
        assert_eq!(update.changes.iter().count(), 1, "only the new change");
        b.receive_sync_message(&mut sb_loaded, update).expect("b receives");
        assert_eq!(b.get_heads(), a.get_heads());
    }

    #[test]
    fn an_unanswered_whole_document_waits_for_its_answer_as_with_automerge() {
        // The sender of a whole document, before the answer comes: a live change to
        // another document has every session look at this one again.
        let a = doc(1, 5);
        let ours = heads(&a);
        let sa = state_after_sending(&ours);
        assert!(a.generate_sync_message(&mut sa.clone()).is_none(), "Automerge waits");
        assert!(nothing_to_send(&sa, &ours), "and so does the state alone");
        // Once it has more than it sent, it must speak: Automerge decides.
        let mut more = a.fork();
        more.transact(|tx| tx.put(ROOT, "later", "soup")).expect("a change");
        assert!(more.generate_sync_message(&mut sa.clone()).is_some());
        assert!(!nothing_to_send(&sa, &heads(&more)));
        // A remote whose last sync point names a change this device lacks is asked to
        // reset, in flight or not: Automerge decides.
        let other = doc(2, 1);
        let mut lost = sa.clone();
        lost.their_have =
            Some(vec![Have { last_sync: heads(&other), bloom: BloomFilter::default() }]);
        assert!(a.generate_sync_message(&mut lost.clone()).is_some(), "a reset");
        assert!(!nothing_to_send(&lost, &ours));
    }

    #[test]
    fn anything_else_is_left_to_automerge() {
        let a = doc(1, 5);
        let mut b = a.fork();
        b.transact(|tx| tx.put(ROOT, "later", "soup")).expect("a change");
        let mut sb = State::new();
        let from_b = b.generate_sync_message(&mut sb).expect("b speaks");
        let mut sa = State::new();
        assert!(!receive(&mut sa, &heads(&a), &from_b), "b is ahead");
        assert_eq!(sa, State::new(), "left unchanged");
        assert!(!nothing_to_send(&sa, &heads(&a)), "nothing heard from b yet");

        let mut with_changes = a.generate_sync_message(&mut State::new()).expect("a speaks");
        with_changes.changes = vec![a.save()].into();
        assert!(!receive(&mut State::new(), &heads(&a), &with_changes), "carries changes");
        assert!(!receive(&mut State::new(), &[], &from_b), "an empty document");
    }
}
