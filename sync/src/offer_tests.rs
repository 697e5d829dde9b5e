//! Whole documents go only where they are asked for: a device offered the same document
//! by two peers receives it once, asks the second when the first goes away or what the
//! first sent is refused, and a peer that asks, with the protocol's own frames, gets what
//! it may read and only once. Offers waiting on another peer are bounded.

use care_core::documents::plan;
use care_core::{DocKind, Section};

use super::*;
use crate::hub::{ConnId, Effect, Hub};

/// The volunteer's device, run by a hub, connected to the owner's and the advocate's
/// devices (sessions on their own), which both hold the team's plan.
struct Three {
    team: Team,
    hub: Hub,
    replica: MemoryReplica,
    /// The owner's and the advocate's sides, with their connection at the volunteer.
    peers: Vec<(Side, ConnId)>,
    /// Frames the volunteer's hub sent, per peer, not yet delivered.
    to_peer: Vec<Vec<Vec<u8>>>,
    /// Frames the peers sent the volunteer, not yet delivered.
    to_hub: Vec<Vec<Vec<u8>>>,
    /// Every frame the volunteer received, decoded, with the peer it came from.
    received: Vec<(usize, Frame)>,
}

impl Three {
    fn new() -> Three {
        let team = Team::new();
        // The owner writes the plan, and the advocate's device gets it from the owner's.
        let (mut owner, mut advocate) = (team.side(OWNER, ADVOCATE), team.side(ADVOCATE, OWNER));
        team.write_plan(&mut owner, OWNER, "Tea at 8.");
        connect(&team, &mut owner, &mut advocate);
        let with_volunteer = |side: Side| Side {
            session: Session::new(side.replica.device(), team.keys[VOLUNTEER].device_id()),
            replica: side.replica,
            events: Vec::new(),
            closed: None,
        };
        let (owner, advocate) = (with_volunteer(owner), with_volunteer(advocate));
        let volunteer = team.keys[VOLUNTEER].device_id();
        let mut replica = MemoryReplica::with_key(team.keys[VOLUNTEER].clone());
        replica.add_ops(team.id, &team.ops).expect("memory");
        let mut hub = Hub::new(volunteer);
        let mut peers = Vec::new();
        let mut to_hub = Vec::new();
        for mut side in [owner, advocate] {
            let peer = side.replica.device();
            let conn = hub.open(&mut replica, peer, volunteer, 0).expect("room");
            to_hub.push(side.start());
            peers.push((side, conn));
        }
        let mut three = Three {
            team,
            hub,
            replica,
            peers,
            to_peer: vec![Vec::new(), Vec::new()],
            to_hub,
            received: Vec::new(),
        };
        three.collect();
        three
    }

    /// Takes the hub's frames for each peer.
    fn collect(&mut self) {
        for effect in self.hub.take_effects() {
            if let Effect::Send { conn, frame } = effect {
                let peer = self.peers.iter().position(|(_, c)| *c == conn).expect("a peer");
                self.to_peer[peer].push(frame.to_vec());
            }
        }
    }

    /// Delivers one frame each way per peer, in turn, until quiet; frames to a peer in
    /// `cut` are dropped, as on a connection that is gone.
    fn run(&mut self, cut: Option<usize>) {
        for _ in 0..FRAMES_PER_EXCHANGE_MAX {
            let quiet = self.to_hub.iter().chain(&self.to_peer).all(Vec::is_empty);
            if quiet {
                return;
            }
            for peer in 0..self.peers.len() {
                if !self.to_hub[peer].is_empty() {
                    let frame = self.to_hub[peer].remove(0);
                    self.received.push((peer, Frame::decode(&frame).expect("a frame")));
                    let conn = self.peers[peer].1;
                    self.hub.frame(&mut self.replica, conn, &frame);
                    self.collect();
                }
                if !self.to_peer[peer].is_empty() {
                    let frame = self.to_peer[peer].remove(0);
                    if cut != Some(peer) {
                        let answer = self.peers[peer].0.receive(&frame);
                        self.to_hub[peer].extend(answer);
                    }
                }
            }
        }
        panic!("the exchange did not end");
    }

    /// Runs until quiet, except that the first peer the plan is asked of never hears of
    /// it (it never answers); returns that peer.
    fn run_until_asked(&mut self) -> usize {
        let is_want = |f: &Vec<u8>| matches!(Frame::decode(f), Ok(Frame::Want { .. }));
        let mut asked = None;
        for _ in 0..FRAMES_PER_EXCHANGE_MAX {
            if asked.is_none() {
                asked = self.to_peer.iter().position(|frames| frames.iter().any(is_want));
            }
            if asked.is_some() {
                self.run(asked);
                break;
            }
            let peer = self.to_hub.iter().position(|f| !f.is_empty()).expect("frames to come");
            let frame = self.to_hub[peer].remove(0);
            self.received.push((peer, Frame::decode(&frame).expect("a frame")));
            let conn = self.peers[peer].1;
            self.hub.frame(&mut self.replica, conn, &frame);
            self.collect();
            for (p, frames) in self.to_peer.iter_mut().enumerate() {
                if frames.iter().any(is_want) {
                    continue;
                }
                for frame in std::mem::take(frames) {
                    let answer = self.peers[p].0.receive(&frame);
                    self.to_hub[p].extend(answer);
                }
            }
        }
        let asked = asked.expect("the plan was asked for");
        assert!(self.whole_from().is_empty(), "nothing came whole yet");
        asked
    }

    /// The peers that sent the volunteer the plan whole.
    fn whole_from(&self) -> Vec<usize> {
        let whole = |f: &Frame| matches!(f, Frame::Snapshot { .. } | Frame::SnapshotPart { .. });
        self.received.iter().filter(|(_, f)| whole(f)).map(|(peer, _)| *peer).collect()
    }

    fn plan_heads(&self, side: Option<usize>) -> Option<Vec<automerge::ChangeHash>> {
        let doc = DocKind::Plan.doc_id(self.team.id);
        match side {
            Some(peer) => self.peers[peer].0.replica.doc(self.team.id, doc).map(|d| d.get_heads()),
            None => self.replica.doc(self.team.id, doc).map(|d| d.get_heads()),
        }
    }
}

#[test]
fn a_document_offered_by_two_peers_arrives_once() {
    let mut three = Three::new();
    three.run(None);
    assert_eq!(three.whole_from().len(), 1, "the plan came whole once: {:?}", three.whole_from());
    let offers = three.received.iter().filter(|(_, f)| matches!(f, Frame::Offer { .. })).count();
    assert_eq!(offers, 2, "both peers offered it");
    assert!(three.plan_heads(None).is_some());
    assert_eq!(three.plan_heads(None), three.plan_heads(Some(0)));
    // Both peers learn that the volunteer holds it, and the hub forgets the offer.
    for (side, conn) in &three.peers {
        assert!(side.session.in_sync(three.team.id), "{:?} in sync", side.replica.device());
        assert!(three.hub.session(*conn).is_some_and(|s| s.in_sync(three.team.id)));
    }
    for (side, _) in &three.peers {
        assert!(side.refusals().is_empty(), "{:?}", side.refusals());
    }
}

#[test]
fn an_offer_waiting_on_a_peer_that_goes_away_is_asked_for_from_the_other() {
    let mut three = Three::new();
    let first = three.run_until_asked();
    assert!(three.plan_heads(None).is_none(), "the other offer waits on the first peer");
    let conn = three.peers[first].1;
    three.hub.ended(&mut three.replica, conn, CloseReason::Failed);
    three.collect();
    three.run(Some(first));
    let other = 1 - first;
    assert_eq!(three.whole_from(), vec![other]);
    assert_eq!(three.plan_heads(None), three.plan_heads(Some(other)));
}

#[test]
fn an_offer_waiting_on_a_peer_that_never_sends_is_asked_for_after_the_wait() {
    let mut three = Three::new();
    let first = three.run_until_asked();
    let other = 1 - first;
    three.hub.tick(&mut three.replica, crate::hub::OFFER_WAIT_MS - 1);
    three.collect();
    assert!(three.to_peer[other].is_empty(), "still waiting");
    three.hub.tick(&mut three.replica, crate::hub::OFFER_WAIT_MS);
    three.collect();
    three.run(Some(first));
    assert_eq!(three.whole_from(), vec![other]);
    assert_eq!(three.plan_heads(None), three.plan_heads(Some(other)));
}

/// The owner's device holds the plan and the health plan; the volunteer's asks with its
/// own frames.
#[test]
fn a_want_is_answered_once_and_only_for_what_the_asker_may_read() {
    let team = Team::new();
    let (mut owner, mut volunteer) = live_pair(&team, VOLUNTEER);
    let author = team.author_of(OWNER, 6_000);
    for (kind, section) in
        [(DocKind::Plan, Section::Routines), (DocKind::HealthPlan, Section::Medication)]
    {
        owner
            .replica
            .write(team.id, kind, |doc| plan::set_section(doc, &author, section, "At 8."))
            .expect("writes");
    }
    let want =
        |kind: DocKind| Frame::Want { team: team.id, doc: kind.doc_id(team.id), kind }.encode();
    let whole = |frames: &[Vec<u8>]| {
        frames
            .iter()
            .filter(|f| {
                matches!(Frame::decode(f), Ok(Frame::Snapshot { .. } | Frame::SnapshotPart { .. }))
            })
            .count()
    };
    let sent = owner.receive(&want(DocKind::HealthPlan));
    assert_eq!(whole(&sent), 0, "a volunteer may not read the health plan");
    assert!(
        owner.refusals().iter().any(|r| matches!(r, Refusal::MayNotRead { .. })),
        "{:?}",
        owner.refusals()
    );
    let sent = owner.receive(&want(DocKind::Plan));
    assert!(whole(&sent) >= 1, "the plan goes whole");
    for _ in 0..3 {
        let again = owner.receive(&want(DocKind::Plan));
        assert_eq!(whole(&again), 0, "asked again for the same: nothing more");
    }
    assert!(owner.closed.is_none());
    // Delivered, the plan is the owner's; the health plan never reached the volunteer.
    exchange(&team, &mut volunteer, &mut owner, sent, Vec::new());
    let heads = |s: &Side, kind: DocKind| {
        s.replica.doc(team.id, kind.doc_id(team.id)).map(|d| d.get_heads())
    };
    assert_eq!(heads(&volunteer, DocKind::Plan), heads(&owner, DocKind::Plan));
    assert!(heads(&volunteer, DocKind::HealthPlan).is_none());
}

/// An offer of a kind the receiver may not read is refused and not asked for; offers of
/// ever more documents make the receiver ask for no more than a team's documents.
#[test]
fn offers_the_receiver_may_not_read_are_refused_and_asking_is_bounded() {
    let team = Team::new();
    let (_owner, mut volunteer) = live_pair(&team, VOLUNTEER);
    let offer = |kind: DocKind| {
        let doc = kind.doc_id(team.id);
        Frame::Offer { team: team.id, doc, kind, heads: vec![[7; 32]] }.encode()
    };
    let asked = volunteer.receive(&offer(DocKind::HealthPlan));
    assert!(asked.is_empty(), "nothing asked");
    assert!(volunteer.refusals().iter().any(|r| matches!(r, Refusal::MayNotRead { .. })));
    let mut wants = 0;
    for month in 0..(crate::session::DOCS_PER_TEAM_MAX as u32 + 10) {
        let month = care_core::Month::new(1900 + (month / 12) as i32, (month % 12 + 1) as u8);
        let kind = DocKind::Rota { month: month.expect("a month") };
        let sent = volunteer.receive(&offer(kind));
        wants += sent.iter().filter(|f| matches!(Frame::decode(f), Ok(Frame::Want { .. }))).count();
    }
    assert_eq!(wants, crate::session::DOCS_PER_TEAM_MAX);
    assert!(volunteer.closed.is_none());
}

/// A change that arrived before one it depends on waits in the document, outside its
/// heads; the document sent whole holds what its heads say, without it, so that the
/// device it goes to reads the heads it loads (and does not refuse it).
#[test]
fn a_document_holding_a_change_that_waits_for_another_goes_whole_without_it() {
    let team = Team::new();
    let mut owner = team.side(OWNER, ADVOCATE);
    team.write_plan(&mut owner, OWNER, "Tea at 8.");
    team.write_plan(&mut owner, OWNER, "Tea at 9.");
    let doc = DocKind::Plan.doc_id(team.id);
    let changes = owner.replica.doc(team.id, doc).expect("held").get_changes(&[]);
    let last = changes.last().expect("a change").clone();
    let mut advocate = team.side(ADVOCATE, OWNER);
    let applied = advocate
        .replica
        .receive_changes(team.id, doc, DocKind::Plan, last.raw_bytes(), &[])
        .expect("memory");
    assert_eq!(applied, Ok(false), "the last change waits for the one before it");
    let bytes = advocate.replica.snapshot(team.id, doc).expect("memory").expect("held");
    let said = crate::chunks::whole_doc(&bytes).expect("reads").heads;
    let mut loaded = automerge::Automerge::load(&bytes).expect("loads").get_heads();
    loaded.sort();
    assert_eq!(said, loaded);
    assert!(!said.contains(&last.hash()));
}

#[test]
fn an_offer_waiting_on_a_peer_whose_document_is_refused_is_asked_for_from_the_other_at_once() {
    let mut three = Three::new();
    let first = three.run_until_asked();
    let other = 1 - first;
    // The peer asked answers with a whole plan that is not one.
    let (team, kind) = (three.team.id, DocKind::Plan);
    let bytes = b"not an automerge document".to_vec();
    let forged =
        Frame::Snapshot { team, doc: kind.doc_id(team), kind, bytes, signatures: vec![] }.encode();
    let conn = three.peers[first].1;
    three.hub.frame(&mut three.replica, conn, &forged);
    three.collect();
    let want = |f: &Vec<u8>| matches!(Frame::decode(f), Ok(Frame::Want { .. }));
    assert!(three.to_peer[other].iter().any(want), "asked of the other peer without a tick");
    three.run(Some(first));
    assert_eq!(three.whole_from(), vec![other]);
    assert_eq!(three.plan_heads(None), three.plan_heads(Some(other)));
}

/// The owner's and the advocate's devices, crafting `Offer` frames, offer the
/// volunteer's hub the same documents of three teams: more than [`OFFERS_WAITING_MAX`]
/// of them. What the first peer was asked for and never sent, the second's offers of it
/// wait on, up to the bound; past it they are asked for at once, and after
/// [`OFFER_WAIT_MS`] the waiting ones are asked for too.
///
/// [`OFFERS_WAITING_MAX`]: crate::hub::OFFERS_WAITING_MAX
/// [`OFFER_WAIT_MS`]: crate::hub::OFFER_WAIT_MS
#[test]
fn offers_waiting_on_another_peer_are_bounded_and_past_the_bound_asked_for_at_once() {
    use crate::hub::{OFFER_WAIT_MS, OFFERS_WAITING_MAX};
    use crate::session::DOCS_PER_TEAM_MAX;

    let teams = [Team::new_named("Ana's team"), Team::new_named("Bo's team"), Team::new()];
    let keys = teams[0].keys.clone();
    let replica_of = |device: usize| {
        let mut replica = MemoryReplica::with_key(keys[device].clone());
        for team in &teams {
            replica.add_ops(team.id, &team.ops).expect("memory");
        }
        replica
    };
    let volunteer = keys[VOLUNTEER].device_id();
    let mut replica = replica_of(VOLUNTEER);
    let mut hub = Hub::new(volunteer);
    let mut peers = Vec::new();
    for device in [OWNER, ADVOCATE] {
        let mut side = Side {
            session: Session::new(keys[device].device_id(), volunteer),
            replica: replica_of(device),
            events: Vec::new(),
            closed: None,
        };
        let conn = hub.open(&mut replica, side.replica.device(), volunteer, 0).expect("room");
        let mut to_hub = side.start();
        // The handshake, until quiet.
        for _ in 0..FRAMES_PER_EXCHANGE_MAX {
            for frame in std::mem::take(&mut to_hub) {
                hub.frame(&mut replica, conn, &frame);
            }
            let to_peer = sent_to(&mut hub, conn);
            if to_peer.is_empty() {
                break;
            }
            for frame in to_peer {
                to_hub.extend(side.receive(&frame));
            }
        }
        assert!(hub.session(conn).is_some_and(|s| teams.iter().all(|t| s.in_sync(t.id))));
        peers.push((side, conn));
    }

    let offers: Vec<Vec<u8>> = teams
        .iter()
        .flat_map(|team| {
            (0..DOCS_PER_TEAM_MAX as u32).map(move |month| {
                let month =
                    care_core::Month::new(1900 + (month / 12) as i32, (month % 12 + 1) as u8);
                let kind = DocKind::Rota { month: month.expect("a month") };
                let doc = kind.doc_id(team.id);
                Frame::Offer { team: team.id, doc, kind, heads: vec![[7; 32]] }.encode()
            })
        })
        .collect();
    assert!(offers.len() > OFFERS_WAITING_MAX);
    let wants = |frames: &[Vec<u8>]| {
        frames.iter().filter(|f| matches!(Frame::decode(f), Ok(Frame::Want { .. }))).count()
    };
    // The owner's device offers every document and is asked for each; it never sends.
    let (first, second) = (peers[0].1, peers[1].1);
    let mut asked_first = Vec::new();
    for offer in &offers {
        hub.frame(&mut replica, first, offer);
        asked_first.extend(sent_to(&mut hub, first));
    }
    assert_eq!(wants(&asked_first), offers.len());
    // The advocate's device offers the same: up to the bound they wait on the first.
    let mut asked_second = Vec::new();
    for offer in &offers {
        hub.frame(&mut replica, second, offer);
        asked_second.extend(sent_to(&mut hub, second));
    }
    assert_eq!(wants(&asked_second), offers.len() - OFFERS_WAITING_MAX);
    assert_eq!(hub.next_deadline(), Some(OFFER_WAIT_MS));
    // The wait over, the offers that waited are asked for too.
    hub.tick(&mut replica, OFFER_WAIT_MS);
    asked_second.extend(sent_to(&mut hub, second));
    assert_eq!(wants(&asked_second), offers.len());
    assert!(hub.session(first).is_some() && hub.session(second).is_some(), "both still open");
}

/// The frames `hub` sent on `conn` since its effects were last taken; its other effects
/// are dropped.
fn sent_to(hub: &mut Hub, conn: ConnId) -> Vec<Vec<u8>> {
    hub.take_effects()
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Send { conn: to, frame } if to == conn => Some(frame.to_vec()),
            _ => None,
        })
        .collect()
}
