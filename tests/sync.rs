//! Sync between real homes over iroh on loopback: invitations, concurrent edits, when the
//! last sync is written, a month compacted beside live edits, a device that was offline,
//! a device outside the team, a removed device, spent tickets, and a peer that sends
//! garbage.

use std::path::Path;
use std::time::Duration;

mod common;

use anyhow::{Context, Result};
use care::{Home, NetConfig, NewNote, Node, NodeOptions, OpBody, PeerAddr, Role, Section, TeamId};
use care_net::{bind, endpoint_addr, framing};
use care_sync::Frame;
use common::{eventually, note_texts};

fn note(text: &str) -> NewNote {
    NewNote { text: text.into(), ..NewNote::default() }
}

async fn start(dir: &Path, name: &str) -> Result<Node> {
    let home = if dir.join(care::home::KEY_FILE).exists() {
        Home::open(dir)?
    } else {
        Home::init(dir, name)?
    };
    Ok(Node::start(home, &NetConfig::loopback()).await?)
}

/// A team owned by the first node, with the second joined as `role`.
async fn team_of_two(a: &Node, b: &Node, role: Role) -> Result<TeamId> {
    let team = a.with_home(move |h| h.create_team("Ada's team")).await?;
    let ticket = a.invite(&team.to_string(), role, "Bea", Duration::from_secs(600)).await?;
    let joined = b.join(&ticket).await?;
    assert_eq!(joined, team);
    Ok(team)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_join_and_concurrent_edits_converge() -> Result<()> {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let a = start(dirs[0].path(), "Ada").await?;
    let b = start(dirs[1].path(), "Bea").await?;
    let c = start(dirs[2].path(), "Cal").await?;
    let team = team_of_two(&a, &b, Role::Advocate).await?;
    a.with_home(move |h| h.team("")?.set_plan_section(Section::AboutMe, "I like the radio."))
        .await?;
    let ticket = a.invite(&team.to_string(), Role::Worker, "Cal", Duration::from_secs(600)).await?;
    c.join(&ticket).await?;

    // Everyone writes at once.
    a.with_home(move |h| h.team("")?.add_note(&note("from Ada"), None)).await?;
    b.with_home(move |h| h.team("")?.add_note(&note("from Bea"), None)).await?;
    c.with_home(move |h| h.team("")?.add_note(&note("from Cal"), None)).await?;
    let all = vec!["from Ada".to_owned(), "from Bea".to_owned(), "from Cal".to_owned()];
    for (name, node) in [("Ada", &a), ("Bea", &b), ("Cal", &c)] {
        eventually(&format!("{name} sees every note"), || async {
            Ok(note_texts(node, team).await? == all)
        })
        .await?;
    }
    let plan = c.with_home(move |h| h.team("")?.plan()).await?;
    assert!(plan.iter().any(|(s, t)| *s == Section::AboutMe && t == "I like the radio."));
    let members = c.with_home(move |h| h.membership(team).map(|m| m.members().count())).await?;
    assert_eq!(members, 3);
    for node in [a, b, c] {
        node.shutdown().await;
    }
    Ok(())
}

/// The last sync with a device is written when its session first finds the team in
/// sync and when the session ends, not at every live edit: each record is a write synced
/// to disk on the owner thread, which live edits wait behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_sync_is_recorded_when_a_session_settles_and_ends_not_at_every_edit() -> Result<()>
{
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    // One session: Bea's device dials Ada's after joining, and Ada's does not dial back
    // (two crossing dials would end one of the sessions, which is written).
    let one_way = NodeOptions { dial_known_devices: false };
    let net = NetConfig::loopback();
    let a = Node::start_with(Home::init(dirs[0].path(), "Ada")?, &net, one_way).await?;
    let b = Node::start_with(Home::init(dirs[1].path(), "Bea")?, &net, one_way).await?;
    let team = team_of_two(&a, &b, Role::Worker).await?;
    let bea = b.with_home(|h| h.profile().device).await;
    let last_sync = || a.with_home(move |h| h.last_sync(bea));
    eventually("Ada records a sync with Bea", || async { Ok(last_sync().await?.is_some()) })
        .await?;
    let settled = last_sync().await?;

    let mut written = Vec::new();
    for i in 0..5 {
        // The clock moves on between edits, so a record written at one would differ.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let text = format!("live note {i}");
        written.push(text.clone());
        b.with_home(move |h| h.team("")?.add_note(&note(&text), None)).await?;
        eventually("Ada has Bea's live note", || async {
            Ok(note_texts(&a, team).await? == written)
        })
        .await?;
        eventually("Ada and Bea are in sync again", || async {
            Ok(a.teams_in_sync().await?.get(&bea).is_some_and(|teams| teams.contains(&team)))
        })
        .await?;
    }
    assert_eq!(last_sync().await?, settled, "a live edit rewrote the last sync");

    b.shutdown().await;
    eventually("Ada records the session's end", || async { Ok(last_sync().await? > settled) })
        .await?;
    a.shutdown().await;
    Ok(())
}

/// A month written live grows past the compaction rule on both devices: each node's
/// upkeep thread compacts it beside the edits, and when the edits stop, both homes hold it
/// compacted (its changes since the last snapshot within the rule, not up to the
/// backstop), with the same heads and every note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_written_live_is_compacted_beside_the_edits_on_both_devices() -> Result<()> {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let a = start(dirs[0].path(), "Ada").await?;
    let b = start(dirs[1].path(), "Bea").await?;
    let team = team_of_two(&a, &b, Role::Worker).await?;
    let month = care::Clock::now(&care::SystemClock).month();
    let doc = care::DocKind::Notes { stream: care::NoteStream::Care, month }.doc_id(team);
    let mut written = Vec::new();
    for i in 0..120 {
        let text = format!("live note {i:03}: lunch eaten, a walk to the park, all well");
        written.push(text.clone());
        b.with_home(move |h| h.team("")?.add_note(&note(&text), None)).await?;
    }
    eventually("Ada has every note", || async { Ok(note_texts(&a, team).await? == written) })
        .await?;
    for (name, node) in [("Ada", &a), ("Bea", &b)] {
        eventually(&format!("{name}'s month is compacted"), || async {
            let Some(row) = month_row(node, doc).await? else { return Ok(false) };
            let rule = row.snapshot_bytes.max(care_store::COMPACT_MIN_BYTES);
            Ok(row.snapshot_bytes > 0 && row.incremental_bytes <= rule)
        })
        .await?;
        let problems =
            node.with_home(|h| Ok::<_, care::Error>(h.store().check()?.problems)).await?;
        assert!(problems.is_empty(), "{name}: {problems:?}");
    }
    let (at_a, at_b) = (month_row(&a, doc).await?, month_row(&b, doc).await?);
    assert_eq!(at_a.map(|r| r.heads), at_b.map(|r| r.heads));
    assert_eq!(note_texts(&b, team).await?, written);
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

/// The stored row of document `doc` in `node`'s home.
async fn month_row(node: &Node, doc: care::DocId) -> Result<Option<care_store::DocSummary>> {
    Ok(node.with_home(move |h| Ok::<_, care::Error>(h.store().doc_summary(doc)?)).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_offline_for_a_while_catches_up_both_ways() -> Result<()> {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let a = start(dirs[0].path(), "Ada").await?;
    let b = start(dirs[1].path(), "Bea").await?;
    let team = team_of_two(&a, &b, Role::Worker).await?;
    eventually("the worker has the team's documents", || async {
        Ok(b.with_home(move |h| h.team("").and_then(|t| t.documents()).map(|d| d.len() >= 3))
            .await?)
    })
    .await?;
    b.shutdown().await;

    // The worker's home visit, with no network: the home is opened without a node.
    {
        let mut home = Home::open(dirs[1].path())?;
        let mut t = home.team("")?;
        for i in 0..20 {
            t.add_note(&note(&format!("offline visit {i:02}")), None)?;
        }
    }
    a.with_home(move |h| h.team("")?.add_note(&note("written while Bea was away"), None)).await?;

    let b = start(dirs[1].path(), "Bea").await?;
    for (name, node) in [("Ada", &a), ("Bea", &b)] {
        eventually(&format!("{name} has all 21 notes"), || async {
            Ok(note_texts(node, team).await?.len() == 21)
        })
        .await?;
    }
    assert_eq!(note_texts(&a, team).await?, note_texts(&b, team).await?);
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_outside_the_team_receives_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let a = start(dir.path(), "Ada").await?;
    let team = a.with_home(move |h| h.create_team("Ada's team")).await?;
    a.with_home(move |h| h.team("")?.add_note(&note("private"), None)).await?;

    // A stranger dials the owner's device on the sync protocol and records every frame.
    let stranger = bind([42; 32], &NetConfig::loopback()).await?;
    let addr = a.addr();
    let target = endpoint_addr(addr.device, &addr.addrs, None).context("address")?;
    let conn = stranger.connect(target, care_sync::ALPN).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = Frame::Hello { version: care_sync::PROTOCOL_VERSION, teams: Vec::new() };
    framing::write_frame(&mut send, &hello.encode()).await?;
    let mut received = Vec::new();
    while let Ok(Ok(frame)) =
        tokio::time::timeout(Duration::from_millis(1_500), framing::read_frame(&mut recv)).await
    {
        received.push(frame);
    }
    let team_bytes = team.as_bytes();
    for frame in &received {
        assert!(
            !frame.windows(team_bytes.len()).any(|w| w == team_bytes),
            "a frame named the team"
        );
        match Frame::decode(frame)? {
            Frame::Hello { teams, .. } => {
                assert!(teams.is_empty(), "the Hello listed teams: {teams:?}")
            }
            // The session ends with a reason, which names no team (checked above); it
            // arrives unless the connection closes first.
            Frame::Close { .. } => {}
            other => panic!("a stranger was sent {other:?}"),
        }
    }
    assert!(received.len() <= 2, "a stranger got {} frames", received.len());
    stranger.close().await;
    a.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_is_disconnected_and_refused() -> Result<()> {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let a = start(dirs[0].path(), "Ada").await?;
    let b = start(dirs[1].path(), "Bea").await?;
    let team = team_of_two(&a, &b, Role::Worker).await?;
    b.with_home(move |h| h.team("")?.add_note(&note("before removal"), None)).await?;
    eventually("the owner has the worker's note", || async {
        Ok(note_texts(&a, team).await?.len() == 1)
    })
    .await?;

    let bea = b.with_home(move |h| h.profile().member).await;
    a.with_home(move |h| h.author_op(team, OpBody::RemoveMember { member: bea })).await?;
    eventually("the removed device is disconnected", || async {
        Ok(!a.connected().contains(&b.addr().device))
    })
    .await?;
    b.with_home(move |h| h.team("")?.add_note(&note("after removal"), None)).await?;
    // The removed device keeps trying; give it time, then check nothing arrived.
    b.connect(&PeerAddr { device: a.addr().device, addrs: a.addr().addrs, relay: None }).await.ok();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(note_texts(&a, team).await?, vec!["before removal".to_owned()]);
    assert!(!a.connected().contains(&b.addr().device));
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_and_expired_tickets_fail_clearly() -> Result<()> {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let a = start(dirs[0].path(), "Ada").await?;
    let b = start(dirs[1].path(), "Bea").await?;
    let c = start(dirs[2].path(), "Cal").await?;
    let team = a.with_home(move |h| h.create_team("Ada's team")).await?;
    let ticket = a.invite(&team.to_string(), Role::Worker, "", Duration::from_secs(600)).await?;
    b.join(&ticket).await?;
    let again = c.join(&ticket).await.expect_err("a used ticket must fail");
    assert!(again.to_string().contains("already used"), "{again}");
    let short = a.invite(&team.to_string(), Role::Worker, "", Duration::from_millis(1)).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let expired = c.join(&short).await.expect_err("an expired ticket must fail");
    assert!(expired.to_string().contains("expired"), "{expired}");
    assert!(c.with_home(move |h| h.teams()).await?.is_empty(), "a refused device holds no team");
    for node in [a, b, c] {
        node.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_close_that_connection_and_others_go_on() -> Result<()> {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let a = start(dirs[0].path(), "Ada").await?;
    let b = start(dirs[1].path(), "Bea").await?;
    let team = team_of_two(&a, &b, Role::Worker).await?;

    let vandal = bind([7; 32], &NetConfig::loopback()).await?;
    let addr = a.addr();
    let target = endpoint_addr(addr.device, &addr.addrs, None).context("address")?;
    for garbage in [vec![0xff; 64], vec![], b"\x01not a frame at all".to_vec()] {
        let conn = vandal.connect(target.clone(), care_sync::ALPN).await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        framing::write_frame(&mut send, &garbage).await?;
        // The node answers at most its (empty) Hello, then closes the connection.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while framing::read_frame(&mut recv).await.is_ok() {}
        })
        .await;
        assert!(closed.is_ok(), "the connection was not closed after garbage");
    }
    // An oversized length prefix is refused before anything is allocated.
    let conn = vandal.connect(target, care_sync::ALPN).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&u32::MAX.to_be_bytes()).await?;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while framing::read_frame(&mut recv).await.is_ok() {}
    })
    .await;
    assert!(closed.is_ok(), "the connection was not closed after an oversized frame");
    vandal.close().await;

    b.with_home(move |h| h.team("")?.add_note(&note("still syncing"), None)).await?;
    eventually("the owner still syncs with the worker", || async {
        Ok(note_texts(&a, team).await?.len() == 1)
    })
    .await?;
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

/// A device that connects and says nothing, or starts a Hello and never finishes it, is
/// disconnected once `HELLO_TIMEOUT_MS` has passed: it cannot hold a session open (the
/// keep-alives of its endpoint would otherwise keep the connection up for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_hello_timeout() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let a = start(dir.path(), "Ada").await?;
    let addr = a.addr();
    let target = endpoint_addr(addr.device, &addr.addrs, None).context("address")?;
    let lurker = bind([8; 32], &NetConfig::loopback()).await?;
    let limit = Duration::from_millis(care_net::service::HELLO_TIMEOUT_MS + 3_000);

    let silent = lurker.connect(target.clone(), care_sync::ALPN).await?;
    let half = lurker.connect(target, care_sync::ALPN).await?;
    let (mut send, _recv) = half.open_bi().await?;
    // The length of a 100-byte Hello, and then nothing.
    send.write_all(&100u32.to_be_bytes()).await?;
    let closed = tokio::time::timeout(limit, async {
        silent.closed().await;
        half.closed().await;
    })
    .await;
    assert!(closed.is_ok(), "a connection that sent no Hello was kept open");
    lurker.close().await;
    a.shutdown().await;
    Ok(())
}

/// A person's second device joins with a device ticket from their first: it becomes
/// another device of the same member, with the same role, and receives the team's notes.
/// Someone already in another team cannot use that ticket to become that person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_ticket_adds_a_device_to_its_issuer_only() -> Result<()> {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let a = start(dirs[0].path(), "Ada").await?;
    let b = start(dirs[1].path(), "Bea").await?;
    let team = team_of_two(&a, &b, Role::Worker).await?;
    a.with_home(move |h| h.team("")?.add_note(&note("tea at eight"), None)).await?;
    let bea = b.with_home(move |h| h.profile().member).await;

    // Cal already belongs to a team of her own: the ticket cannot make her Bea.
    let c = start(dirs[2].path(), "Cal").await?;
    c.with_home(move |h| h.create_team("Cal's team")).await?;
    let ticket = b.device_invite(&team.to_string(), Duration::from_secs(600)).await?;
    assert_eq!(ticket.device_of, Some(bea));
    assert!(c.join(&ticket).await.is_err(), "another person took the device ticket");
    c.shutdown().await;

    let phone_dir = tempfile::tempdir()?;
    let phone = start(phone_dir.path(), "Bea").await?;
    assert_eq!(phone.join(&ticket).await?, team);
    let phone_id = phone.with_home(move |h| h.profile().device).await;
    // Ada hears of the phone from Bea's device, which added it.
    eventually("Ada knows the phone", || async {
        let membership = a.with_home(move |h| h.membership(team)).await?;
        Ok(membership.member_of_device(phone_id).is_some())
    })
    .await?;
    let (member, role, devices) = a
        .with_home(move |h| {
            let membership = h.membership(team)?;
            let m = membership.member_of_device(phone_id).context("the phone is in the team")?;
            Ok::<_, anyhow::Error>((m.id, m.role, m.devices.len()))
        })
        .await?;
    assert_eq!((member, role, devices), (bea, Role::Worker, 2));
    eventually("the new phone shows the team's notes", || async {
        Ok(note_texts(&phone, team).await? == vec!["tea at eight".to_owned()])
    })
    .await?;
    for node in [a, b, phone] {
        node.shutdown().await;
    }
    Ok(())
}

/// A member's device that asks for everything and then reads nothing is dropped once
/// what is queued for it passes the node's bound, and the node says why; what it was
/// sent is never held beyond that bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_stops_reading_is_dropped_at_the_queue_bound() -> Result<()> {
    use care::{CloseReason, PeerEvent};
    use care_core::{DeviceKey, MemberId};
    use care_sync::{PROTOCOL_VERSION, TeamSummary};

    /// The bound under test: well below one month of the notes written here.
    const QUEUED_BYTES_MAX: u64 = 64 << 10;
    let dir = tempfile::tempdir()?;
    let config = NetConfig { queued_bytes_max: QUEUED_BYTES_MAX, ..NetConfig::loopback() };
    let node = Node::start(Home::init(dir.path(), "Ada")?, &config).await?;
    let team = node.with_home(move |h| h.create_team("Ada's team")).await?;
    // Notes of random letters, which do not compress: about 100 KiB.
    node.with_home(move |h| {
        let mut team = h.team("")?;
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..100 {
            let text: String = (0..1000)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    char::from(b'a' + (seed % 26) as u8)
                })
                .collect();
            team.add_note(&note(&text), None)?;
        }
        Ok::<_, care::Error>(())
    })
    .await?;
    let key = [8; 32];
    let device = DeviceKey::from_seed(key).device_id();
    let member = MemberId::from_bytes([8; 16]);
    node.with_home(move |h| {
        let body =
            OpBody::AddMember { member, name: "Wil".into(), role: Role::Worker, hats: vec![] };
        h.author_op(team, body)?;
        h.author_op(team, OpBody::AddDevice { member, device, label: "phone".into() })
    })
    .await?;
    let mut events = node.events();

    let worker = bind(key, &NetConfig::loopback()).await?;
    let addr = node.addr();
    let target = endpoint_addr(addr.device, &addr.addrs, None).context("address")?;
    let conn = worker.connect(target, care_sync::ALPN).await?;
    let (mut send, _recv) = conn.open_bi().await?;
    let summary = TeamSummary { team, ops_hash: [0; 16], docs_hash: [0; 16] };
    let hello = Frame::Hello { version: PROTOCOL_VERSION, teams: vec![summary] };
    framing::write_frame(&mut send, &hello.encode()).await?;
    // "I hold no document", and a Want of every document the node holds: it answers with
    // each whole.
    framing::write_frame(&mut send, &Frame::Heads { team, docs: vec![] }.encode()).await?;
    let held = node.with_home(move |h| h.store().docs(Some(team))).await?;
    for summary in held {
        let kind: care_core::DocKind = summary.kind.parse()?;
        let want = Frame::Want { team, doc: summary.id, kind };
        framing::write_frame(&mut send, &want.encode()).await?;
    }

    let reason = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(PeerEvent::Disconnected { peer, reason }) if peer == device => {
                    return Some(reason);
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
    .await?;
    assert_eq!(reason, Some(CloseReason::FellBehind(QUEUED_BYTES_MAX)));
    assert!(!node.connected().contains(&device));
    worker.close().await;
    node.shutdown().await;
    Ok(())
}
