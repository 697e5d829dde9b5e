//! What the crate's tests share: homes in temporary directories, and two homes' sessions
//! exchanging the protocol's own frames in memory.

use care_sync::{Effect, Frame, Hub, PeerEvent, Refusal, SyncEvent};

use crate::error::{Error, Result};
use crate::home::Home;

/// Connects two homes and lets their sessions exchange frames until both are quiet.
pub(crate) fn sync(a: &mut Home, b: &mut Home) -> Result<()> {
    exchange(a, b).map(|_| ())
}

/// What two homes' sessions exchanged: every frame each side sent, and what each
/// reported.
#[derive(Debug, Default)]
pub(crate) struct Exchanged {
    /// The frames `a` sent, then `b`.
    pub(crate) frames: [Vec<Vec<u8>>; 2],
    /// What `a` reported, then `b`.
    pub(crate) events: [Vec<SyncEvent>; 2],
}

impl Exchanged {
    /// The refusals side `side` (0: `a`, 1: `b`) reported.
    pub(crate) fn refusals(&self, side: usize) -> Vec<&Refusal> {
        self.events[side]
            .iter()
            .filter_map(|e| match e {
                SyncEvent::Refused { reason, .. } => Some(reason),
                _ => None,
            })
            .collect()
    }
}

/// [`sync`], keeping what was exchanged.
pub(crate) fn exchange(a: &mut Home, b: &mut Home) -> Result<Exchanged> {
    exchange_edited(a, b, Some)
}

/// [`exchange`], with every frame `a` sends passed through `edit` (an attacker's hand on
/// the wire): what it returns is sent instead, if anything.
pub(crate) fn exchange_edited(
    a: &mut Home,
    b: &mut Home,
    mut edit: impl FnMut(Frame) -> Option<Frame>,
) -> Result<Exchanged> {
    let (a_device, b_device) = (a.profile().device, b.profile().device);
    let (mut a_hub, mut b_hub) = (Hub::new(a_device), Hub::new(b_device));
    let refused = |e| Error::Invalid(format!("{e:?}"));
    let a_conn = a_hub.open(a, b_device, a_device, 0).map_err(refused)?;
    let b_conn = b_hub.open(b, a_device, a_device, 0).map_err(refused)?;
    let mut seen = Exchanged::default();
    loop {
        let mut moved = false;
        for effect in a_hub.take_effects() {
            match effect {
                Effect::Send { frame, .. } => {
                    moved = true;
                    let frame = frame.to_vec();
                    let edited = match Frame::decode(&frame) {
                        Ok(decoded) => edit(decoded).map(|f| f.encode()),
                        Err(_) => Some(frame),
                    };
                    let Some(frame) = edited else { continue };
                    b_hub.frame(b, b_conn, &frame);
                    seen.frames[0].push(frame);
                }
                Effect::Event(PeerEvent::Sync { event, .. }) => seen.events[0].push(event),
                _ => {}
            }
        }
        for effect in b_hub.take_effects() {
            match effect {
                Effect::Send { frame, .. } => {
                    let frame = frame.to_vec();
                    a_hub.frame(a, a_conn, &frame);
                    seen.frames[1].push(frame);
                    moved = true;
                }
                Effect::Event(PeerEvent::Sync { event, .. }) => seen.events[1].push(event),
                _ => {}
            }
        }
        if !moved {
            return Ok(seen);
        }
    }
}

/// `n` temporary directories, removed with them.
pub(crate) fn temp_dirs(n: usize) -> Result<Vec<tempfile::TempDir>> {
    (0..n).map(|_| tempfile::tempdir().map_err(|e| Error::Invalid(e.to_string()))).collect()
}

/// `owner` adds `home`'s person to `team` with `role`, and its device; returns the
/// member id.
pub(crate) fn add_member(
    owner: &mut Home,
    team: care_core::TeamId,
    home: &Home,
    role: care_core::Role,
) -> Result<care_core::MemberId> {
    use care_core::OpBody;
    let (member, device) = (home.profile().member, home.profile().device);
    let name = home.profile().name.clone();
    owner.author_op(team, OpBody::AddMember { member, name, role, hats: vec![] })?;
    owner.author_op(team, OpBody::AddDevice { member, device, label: "phone".into() })?;
    Ok(member)
}

/// Writes a care note in the home's one team.
pub(crate) fn write_note(home: &mut Home, text: &str) -> Result<()> {
    let note = crate::NewNote { text: text.into(), ..Default::default() };
    home.team("")?.add_note(&note, None)?;
    Ok(())
}

/// The texts of every note the home reads in its one team, sorted.
pub(crate) fn note_texts(home: &mut Home) -> Result<Vec<String>> {
    let notes = home.team("")?.notes(&crate::NoteQuery::default())?;
    let mut texts: Vec<String> = notes.into_iter().map(|n| n.text).collect();
    texts.sort();
    Ok(texts)
}
