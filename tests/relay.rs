//! The circle's relay node over iroh on loopback: members never online at the same time
//! converge through it, a restart of it loses nothing, a device of a team that did not
//! add it gets nothing, two devices that know no address of each other sync through
//! its relay server, and a removed worker's late note passed on through it is kept aside.
//! The circle node holds every team's documents sealed, and reads none of them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

mod common;

use anyhow::{Context, Result, bail};
use care::{
    CircleConfig, CircleNode, Home, NetConfig, NewNote, Node, NodeOptions, PeerAddr, Role, TeamId,
};
use care_net::{bind, endpoint_addr, framing};
use care_sync::Frame;
use common::{SETTLE_MS, eventually, note_texts};

fn note(text: &str) -> NewNote {
    NewNote { text: text.into(), ..NewNote::default() }
}

fn open_or_init(dir: &Path, name: &str) -> Result<Home> {
    Ok(if dir.join(care::home::KEY_FILE).exists() {
        Home::open(dir)?
    } else {
        Home::init(dir, name)?
    })
}

/// A device whose endpoint uses the circle's relay server.
async fn start(dir: &Path, name: &str, relay: &str, options: NodeOptions) -> Result<Node> {
    let config = NetConfig { relay: Some(relay.parse()?), ..NetConfig::loopback() };
    Ok(Node::start_with(open_or_init(dir, name)?, &config, options).await?)
}

/// The circle node, on fixed addresses when restarted.
async fn start_circle(
    dir: &Path,
    relay_listen: SocketAddr,
    listen: SocketAddr,
    options: NodeOptions,
) -> Result<CircleNode> {
    let net = NetConfig { listen, ..NetConfig::loopback() };
    let config = CircleConfig { relay_listen, net, options };
    Ok(CircleNode::start(open_or_init(dir, "Circle relay")?, &config).await?)
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn has_note(node: &Node, team: TeamId, text: &str) -> Result<bool> {
    Ok(note_texts(node, team).await?.iter().any(|t| t == text))
}

/// Whether the circle node holds, sealed, every document `member` holds of `team`, at
/// the same heads: it cannot read them, only tell that it holds the same changes.
async fn circle_holds(circle: &CircleNode, member: &Node, team: TeamId) -> Result<bool> {
    let theirs = member.with_home(move |h| h.team(&team.to_string())?.documents()).await?;
    let sealed = circle.node().with_home(move |h| h.sealed_documents(team)).await?;
    Ok(!theirs.is_empty()
        && theirs.iter().all(|doc| sealed.iter().any(|s| s.id == doc.id && s.heads == doc.heads)))
}

/// A team owned by `a`, with `b` joined as a worker and the circle node added.
async fn team_with_relay(a: &Node, b: &Node, circle: &CircleNode) -> Result<TeamId> {
    let team = a.with_home(move |h| h.create_team("Rosa's team")).await?;
    let ticket = a.invite(&team.to_string(), Role::Worker, "Bea", Duration::from_secs(600)).await?;
    b.join(&ticket).await?;
    a.add_relay(&team.to_string(), &circle.invite(care::CIRCLE_TICKET_VALID_MS).await?).await?;
    let relay = circle.device();
    eventually("the worker knows the circle node", || async {
        Ok(b.with_home(move |h| h.membership(team)).await?.member_of_device(relay).is_some())
    })
    .await?;
    eventually("the circle node holds the team's documents", || async {
        Ok(circle.node().with_home(move |h| h.sealed_documents(team)).await?.len() >= 3)
    })
    .await?;
    Ok(team)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_never_online_together_converge_through_the_circle_node() -> Result<()> {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let circle =
        start_circle(dirs[2].path(), any_port(), any_port(), NodeOptions::default()).await?;
    let url = circle.relay_url();
    let opts = NodeOptions::default();
    let a = start(dirs[0].path(), "Ada", &url, opts).await?;
    let b = start(dirs[1].path(), "Bea", &url, opts).await?;
    let team = team_with_relay(&a, &b, &circle).await?;
    b.shutdown().await;

    // Day: Ada writes while Bea is away, then goes offline herself.
    a.with_home(move |h| h.team("")?.add_note(&note("day: lunch and a walk"), None)).await?;
    eventually("the circle node has the day note", || async {
        circle_holds(&circle, &a, team).await
    })
    .await?;
    a.shutdown().await;

    // Night: Bea comes online, reads the day note, writes hers, and leaves.
    let b = start(dirs[1].path(), "Bea", &url, opts).await?;
    eventually("Bea has the day note", || async {
        has_note(&b, team, "day: lunch and a walk").await
    })
    .await?;
    b.with_home(move |h| h.team("")?.add_note(&note("night: slept well"), None)).await?;
    eventually("the circle node has the night note", || async {
        circle_holds(&circle, &b, team).await
    })
    .await?;
    b.shutdown().await;

    // Next morning Ada sees it.
    let a = start(dirs[0].path(), "Ada", &url, opts).await?;
    eventually("Ada has the night note", || async {
        has_note(&a, team, "night: slept well").await
    })
    .await?;
    assert!(circle_holds(&circle, &a, team).await?);
    a.shutdown().await;
    circle.shutdown().await;

    // The circle node holds what it passed on sealed only: nothing in clear, and no
    // note's words in what it stores, read through its store's own key.
    let home = Home::open(dirs[2].path())?;
    assert!(home.store().docs(Some(team))?.is_empty(), "the circle node holds a document");
    let stored = home.sealed_bytes(team)?;
    assert!(!stored.is_empty());
    for text in ["day: lunch and a walk", "night: slept well"] {
        let found = stored.iter().any(|b| b.windows(text.len()).any(|w| w == text.as_bytes()));
        assert!(!found, "the circle node stores {text}");
    }
    drop(home);

    // Every home's store is encrypted at rest: no file of any device, nor of the circle
    // node, holds a note's words.
    for dir in &dirs {
        for text in ["day: lunch and a walk", "night: slept well"] {
            assert!(!holds(dir.path(), text.as_bytes())?, "{text} in {}", dir.path().display());
        }
    }
    Ok(())
}

/// Whether any file under `dir` holds `needle`. A file that goes while it is read (a
/// write-ahead log a closing connection removes) holds nothing any more.
fn holds(dir: &Path, needle: &[u8]) -> Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let found = if path.is_dir() {
            holds(&path, needle)?
        } else {
            match std::fs::read(&path) {
                Ok(bytes) => bytes.windows(needle.len()).any(|w| w == needle),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(e.into()),
            }
        };
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circle_node_restart_loses_nothing() -> Result<()> {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let circle =
        start_circle(dirs[2].path(), any_port(), any_port(), NodeOptions::default()).await?;
    let url = circle.relay_url();
    let relay_listen: SocketAddr =
        url.trim_start_matches("http://").trim_end_matches('/').parse()?;
    let listen = *circle.node().addr().addrs.first().context("the circle node's address")?;
    let opts = NodeOptions::default();
    let a = start(dirs[0].path(), "Ada", &url, opts).await?;
    let b = start(dirs[1].path(), "Bea", &url, opts).await?;
    let team = team_with_relay(&a, &b, &circle).await?;
    b.shutdown().await;

    a.with_home(move |h| h.team("")?.add_note(&note("before the restart"), None)).await?;
    eventually("the circle node has the first note", || async {
        circle_holds(&circle, &a, team).await
    })
    .await?;
    circle.shutdown().await;
    a.with_home(move |h| h.team("")?.add_note(&note("while the circle node was down"), None))
        .await?;

    let circle = start_circle(dirs[2].path(), relay_listen, listen, NodeOptions::default()).await?;
    eventually("the restarted circle node has both notes", || async {
        Ok(note_texts(&a, team).await?.len() == 2 && circle_holds(&circle, &a, team).await?)
    })
    .await?;
    a.shutdown().await;

    let b = start(dirs[1].path(), "Bea", &url, opts).await?;
    eventually("Bea has both notes from the circle node", || async {
        Ok(note_texts(&b, team).await?.len() == 2)
    })
    .await?;
    b.shutdown().await;
    circle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_of_a_team_that_did_not_add_the_circle_gets_nothing() -> Result<()> {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let circle =
        start_circle(dirs[2].path(), any_port(), any_port(), NodeOptions::default()).await?;
    let url = circle.relay_url();
    let opts = NodeOptions::default();
    let a = start(dirs[0].path(), "Ada", &url, opts).await?;
    let team = a.with_home(move |h| h.create_team("Rosa's team")).await?;
    let ticket = circle.invite(care::CIRCLE_TICKET_VALID_MS).await?;
    a.add_relay(&team.to_string(), &ticket).await?;
    a.with_home(move |h| h.team("")?.add_note(&note("private"), None)).await?;
    eventually("the circle node has the note", || async { circle_holds(&circle, &a, team).await })
        .await?;

    // A device of another team, using the same relay server, connects to the circle node.
    let x = start(dirs[1].path(), "Xan", &url, opts).await?;
    let other = x.with_home(move |h| h.create_team("Another team")).await?;
    // Rosa's circle ticket served Rosa's team: another team cannot use it again.
    let reused = x.add_relay(&other.to_string(), &ticket).await;
    assert!(
        matches!(&reused, Err(care::Error::CircleRefused(why)) if why.contains("already used")),
        "{reused:?}"
    );
    let addr = circle.node().addr();
    x.connect(&PeerAddr { device: addr.device, addrs: addr.addrs.clone(), relay: None }).await?;

    // And a stranger dials the circle node on the sync protocol and records every frame.
    let stranger =
        bind([42; 32], &NetConfig { relay: Some(url.parse()?), ..NetConfig::loopback() }).await?;
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
    for frame in &received {
        assert!(!frame.windows(16).any(|w| w == team.as_bytes()), "a frame named the team");
        match Frame::decode(frame)? {
            Frame::Hello { teams, .. } => assert!(teams.is_empty(), "the Hello listed {teams:?}"),
            Frame::Close { .. } => {}
            other => panic!("a stranger was sent {other:?}"),
        }
    }
    assert!(received.len() <= 2, "a stranger got {} frames", received.len());
    stranger.close().await;

    let teams: Vec<TeamId> =
        x.with_home(move |h| h.teams()).await?.into_iter().map(|t| t.id).collect();
    assert_eq!(teams, vec![other], "the outsider holds only its own team");
    let held = x.with_home(move |h| h.store().docs(Some(team))).await?;
    assert!(held.is_empty(), "the outsider holds documents of the team: {held:?}");
    eventually("the relay server refused the outsiders", || async { Ok(circle.refused() > 0) })
        .await?;
    x.shutdown().await;
    a.shutdown().await;
    circle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_with_no_address_of_each_other_sync_through_the_relay_server() -> Result<()> {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    // Nobody dials on their own: the only session is the one made below.
    let quiet = NodeOptions { dial_known_devices: false };
    let circle = start_circle(dirs[2].path(), any_port(), any_port(), quiet).await?;
    let url = circle.relay_url();
    let a = start(dirs[0].path(), "Ada", &url, quiet).await?;
    let b = start(dirs[1].path(), "Bea", &url, quiet).await?;
    let team = team_with_relay(&a, &b, &circle).await?;
    a.shutdown().await;
    b.shutdown().await;

    // Restarted on new ports, each knows the other only by device id and the relay URL.
    let a = start(dirs[0].path(), "Ada", &url, quiet).await?;
    let b = start(dirs[1].path(), "Bea", &url, quiet).await?;
    a.with_home(move |h| h.team("")?.add_note(&note("through the relay"), None)).await?;
    let ada = PeerAddr { device: a.addr().device, addrs: Vec::new(), relay: Some(url.parse()?) };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(SETTLE_MS);
    while b.connect(&ada).await.is_err() {
        if tokio::time::Instant::now() > deadline {
            bail!("Bea never reached Ada through the relay server");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually("Bea has Ada's note", || async { has_note(&b, team, "through the relay").await })
        .await?;
    assert!(!circle.node().connected().contains(&a.addr().device), "the circle node synced");
    a.shutdown().await;
    b.shutdown().await;
    circle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_who_joined_earlier_learn_the_circle_relay_from_the_team() -> Result<()> {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let circle =
        start_circle(dirs[0].path(), any_port(), any_port(), NodeOptions::default()).await?;
    let url = circle.relay_url();
    let rosa = start(dirs[1].path(), "Rosa", &url, NodeOptions::default()).await?;
    // Bea joins before there is a circle node, with no relay configured at all.
    let bea = Node::start(Home::init(dirs[2].path(), "Bea")?, &NetConfig::loopback()).await?;
    let team = rosa.with_home(move |h| h.create_team("Rosa's team")).await?;
    let mut ticket =
        rosa.invite(&team.to_string(), Role::Worker, "Bea", Duration::from_secs(600)).await?;
    ticket.relay = None;
    bea.join(&ticket).await?;
    assert_eq!(bea.with_home(move |h| h.circle_relay()).await?, None);

    rosa.add_relay(&team.to_string(), &circle.invite(care::CIRCLE_TICKET_VALID_MS).await?).await?;
    eventually("Bea uses the circle relay named by the team", || async {
        Ok(bea.with_home(move |h| h.circle_relay()).await?.as_deref() == Some(url.as_str()))
    })
    .await?;
    let info = bea.with_home(move |h| h.team("")?.info()).await?;
    assert_eq!(info.circle.as_deref(), Some(url.as_str()));
    for node in [rosa, bea] {
        node.shutdown().await;
    }
    circle.shutdown().await;
    Ok(())
}

/// When the owner removes a worker, the circle's relay server drops the worker's
/// connection as soon as the circle node learns of the removal, and refuses it after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_is_dropped_by_the_relay_server_at_once() -> Result<()> {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let circle =
        start_circle(dirs[2].path(), any_port(), any_port(), NodeOptions::default()).await?;
    let url = circle.relay_url();
    let a = start(dirs[0].path(), "Ada", &url, NodeOptions::default()).await?;
    let b = start(dirs[1].path(), "Bea", &url, NodeOptions::default()).await?;
    let team = team_with_relay(&a, &b, &circle).await?;
    // Bea's endpoint connects to its home relay once it is admitted: restart it so that
    // it does now.
    b.shutdown().await;
    let b = start(dirs[1].path(), "Bea", &url, NodeOptions::default()).await?;
    let bea = b.addr().device;
    eventually("Bea is connected to the circle", || async {
        Ok(circle.node().connected().contains(&bea))
    })
    .await?;
    assert_eq!(circle.disconnected(), 0);

    let member = a
        .with_home(move |h| {
            let membership = h.membership(team)?;
            Ok::<_, anyhow::Error>(membership.member_of_device(bea).context("Bea is in")?.id)
        })
        .await?;
    a.with_home(move |h| h.author_op(team, care::OpBody::RemoveMember { member })).await?;
    eventually("the relay server drops Bea's connection", || async {
        Ok(circle.disconnected() >= 1)
    })
    .await?;
    a.shutdown().await;
    b.shutdown().await;
    circle.shutdown().await;
    Ok(())
}

/// The hashes of the changes `node` keeps aside in its one team.
async fn kept_aside(node: &Node) -> Result<Vec<String>> {
    let listed = node.with_home(|h| h.team("")?.kept_aside()).await?;
    Ok(listed.into_iter().map(|entry| entry.audit.change).collect())
}

/// Bea is removed while Cal is away. The note Bea writes after her removal reaches Cal in
/// the same room, who has not heard of it; when Cal is back online it passes through the
/// circle node, which holds it sealed and cannot read it, and neither Ada nor Cal once
/// told of the removal has it in the record: it is kept aside, alike on both, until Ada
/// accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_workers_late_note_through_the_circle_node_is_kept_aside_until_accepted()
-> Result<()> {
    let dirs =
        [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let circle =
        start_circle(dirs[2].path(), any_port(), any_port(), NodeOptions::default()).await?;
    let url = circle.relay_url();
    let opts = NodeOptions::default();
    let a = start(dirs[0].path(), "Ada", &url, opts).await?;
    let b = start(dirs[1].path(), "Bea", &url, opts).await?;
    let team = team_with_relay(&a, &b, &circle).await?;
    let c = start(dirs[3].path(), "Cal", &url, opts).await?;
    let ticket = a.invite(&team.to_string(), Role::Worker, "Cal", Duration::from_secs(600)).await?;
    c.join(&ticket).await?;
    b.with_home(move |h| h.team("")?.add_note(&note("Bea: tea at 8"), None)).await?;
    for node in [&a, &c] {
        eventually("every device has Bea's note", || async {
            has_note(node, team, "Bea: tea at 8").await
        })
        .await?;
    }
    eventually("the circle node has Bea's note", || async {
        circle_holds(&circle, &b, team).await
    })
    .await?;
    c.shutdown().await;

    let bea = b.addr().device;
    let member = a
        .with_home(move |h| {
            let membership = h.membership(team)?;
            Ok::<_, anyhow::Error>(membership.member_of_device(bea).context("Bea is in")?.id)
        })
        .await?;
    a.with_home(move |h| h.author_op(team, care::OpBody::RemoveMember { member })).await?;
    b.with_home(move |h| h.team("")?.add_note(&note("Bea, after her removal"), None)).await?;

    // Same room: Cal's phone, off the network, meets Bea's.
    let quiet = NodeOptions { dial_known_devices: false };
    let c = Node::start_with(Home::open(dirs[3].path())?, &NetConfig::loopback(), quiet).await?;
    let cal = c.addr();
    b.connect(&PeerAddr { device: cal.device, addrs: cal.addrs, relay: None }).await?;
    eventually("Cal has Bea's late note", || async {
        has_note(&c, team, "Bea, after her removal").await
    })
    .await?;
    c.shutdown().await;
    b.shutdown().await;

    // Cal back online: the note goes on, and stays out of every record.
    let c = start(dirs[3].path(), "Cal", &url, opts).await?;
    for node in [&a, &c] {
        eventually("the late note is kept aside", || async {
            Ok(kept_aside(node).await?.len() == 1)
        })
        .await?;
        assert!(!has_note(node, team, "Bea, after her removal").await?);
        assert!(has_note(node, team, "Bea: tea at 8").await?);
    }
    let listed = kept_aside(&a).await?;
    assert_eq!(listed, kept_aside(&c).await?);
    eventually("the circle node holds the late note, sealed", || async {
        circle_holds(&circle, &a, team).await
    })
    .await?;

    let change: care::ChangeHash = listed[0].parse()?;
    a.with_home(move |h| h.team("")?.accept_kept_aside(&[change])).await?;
    for node in [&c] {
        eventually("the accepted note is in the record", || async {
            has_note(node, team, "Bea, after her removal").await
        })
        .await?;
    }
    for node in [a, c] {
        node.shutdown().await;
    }
    circle.shutdown().await;
    Ok(())
}
