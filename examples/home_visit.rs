//! The offline home visit, end to end, with real nodes on loopback: a circle node; Rosa's
//! team (Rosa, her daughter Fay, workers Wil and Val); Wil's visit with no network; the
//! same-room sync with Fay; the relay passing it on to Val, who was offline all along; a
//! new worker joining with a ticket; a removed worker refused, and the note she wrote
//! after her removal, passed on by Fay who had not heard of it, kept aside on every
//! device until Rosa accepts it. Run with `cargo run --release --example home_visit`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use care::{
    CircleConfig, CircleNode, Home, Medication, NetConfig, NewNote, Node, NodeOptions, NoteQuery,
    OpBody, PeerAddr, Role, Section, TeamId,
};

/// Longest the story waits for devices to agree at any step.
const SETTLE_MS: u64 = 30_000;

#[tokio::main]
async fn main() -> Result<()> {
    let dirs: Vec<tempfile::TempDir> =
        (0..6).map(|_| tempfile::tempdir()).collect::<std::io::Result<_>>()?;
    let mut steps: Vec<(&str, Duration)> = Vec::new();

    // 1. The circle's node: a relay server and an always-on store of the teams' documents,
    //    sealed: it holds no team key and reads none of them.
    let t = Instant::now();
    let config = CircleConfig {
        relay_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        net: NetConfig::loopback(),
        options: NodeOptions::default(),
    };
    let circle = CircleNode::start(Home::init(dirs[0].path(), "Circle relay")?, &config).await?;
    let url = circle.relay_url();
    println!("circle node up: relay server at {url}");
    let ticket = circle.invite(care::CIRCLE_TICKET_VALID_MS).await?;
    println!("  one-time circle ticket for Rosa's team {}…", &ticket.to_string()[..40]);
    steps.push(("circle node starts", t.elapsed()));

    // 2. Rosa's team: Rosa (the person supported), Fay (her daughter), Wil and Val.
    let t = Instant::now();
    let rosa = device(dirs[1].path(), "Rosa", &url).await?;
    let team = rosa.with_home(move |h| h.create_team("Rosa's team")).await?;
    rosa.with_home(move |h| {
        let mut t = h.team("")?;
        t.set_plan_section(Section::AboutMe, "Retired teacher; loves crosswords and the radio.")?;
        t.set_plan_section(Section::Medication, "Paracetamol 500mg at lunch if the knee hurts.")
    })
    .await?;
    let fay = device(dirs[2].path(), "Fay", &url).await?;
    let wil = device(dirs[3].path(), "Wil", &url).await?;
    let val = device(dirs[4].path(), "Val", &url).await?;
    for (node, name, role) in
        [(&fay, "Fay", Role::Advocate), (&wil, "Wil", Role::Worker), (&val, "Val", Role::Worker)]
    {
        let ticket = rosa.invite(&team.to_string(), role, name, Duration::from_secs(3600)).await?;
        node.join(&ticket).await?;
        println!("  {name} joins as {role}");
    }
    rosa.add_relay(&team.to_string(), &ticket).await?;
    println!("  Rosa adds the circle node to the team with the role relay");
    eventually("the circle node holds the team", || async {
        Ok(circle.node().with_home(move |h| h.sealed_documents(team)).await?.len() >= 3)
    })
    .await?;
    for node in [&fay, &wil, &val] {
        eventually("every device has the care plan", || async {
            Ok(node.with_home(move |h| h.team("")?.plan()).await?.len() >= 2)
        })
        .await?;
    }
    steps.push(("team of four set up, circle node added", t.elapsed()));

    // Everyone but Rosa goes offline; Val stays offline for the rest of the story.
    let val_device = val.addr().device;
    for node in [fay, wil, val] {
        node.shutdown().await;
    }

    // 3. Wil's home visit, with no network at all: the home is opened without a node.
    let t = Instant::now();
    {
        let mut home = Home::open(dirs[3].path())?;
        let mut team = home.team("")?;
        let plan = team.plan()?;
        println!("Wil at Rosa's door, no signal; the care plan on his phone:");
        for (section, text) in plan.iter().filter(|(_, text)| !text.is_empty()) {
            println!("  {section}: {text}");
        }
        team.add_note(
            &NewNote {
                text: "Lunch together, crossword done; knee sore after the stairs.".into(),
                mood: Some("cheerful".into()),
                ..NewNote::default()
            },
            None,
        )?;
        team.add_note(
            &NewNote {
                text: "Medication at lunch.".into(),
                medications: vec![Medication {
                    name: "paracetamol".into(),
                    dose: "500mg".into(),
                    given: true,
                }],
                ..NewNote::default()
            },
            None,
        )?;
        println!("  Wil writes a shift note and a medication record, saved on the phone");
    }
    steps.push(("offline visit: read the plan, write two notes", t.elapsed()));

    // 4. Same room: Fay arrives; their phones connect directly on the local network
    //    (loopback here: real LAN discovery by mDNS needs a network, see tests/lan.rs).
    let t = Instant::now();
    let room = NetConfig::loopback();
    let quiet = NodeOptions { dial_known_devices: false };
    let fay = Node::start_with(Home::open(dirs[2].path())?, &room, quiet).await?;
    let wil = Node::start_with(Home::open(dirs[3].path())?, &room, quiet).await?;
    let fay_addr = fay.addr();
    wil.connect(&PeerAddr { device: fay_addr.device, addrs: fay_addr.addrs, relay: None }).await?;
    eventually("Fay has Wil's notes", || async { Ok(note_texts(&fay, team).await?.len() == 2) })
        .await?;
    println!("same room: direct connection over the local network (loopback here), no relay");
    println!("  Fay's phone has Wil's two notes");
    steps.push(("same-room sync, Wil to Fay", t.elapsed()));
    wil.shutdown().await;
    fay.shutdown().await;

    // 5. That evening Fay's phone finds a network and reaches the circle node; Wil's is
    //    still off. Later Val, offline all this time, comes online and catches up.
    //    (Stopping a node is left out of the timings: it waits for the close of every
    //    connection, up to 3 s for dials to devices that were offline.)
    let t = Instant::now();
    let fay = device(dirs[2].path(), "Fay", &url).await?;
    eventually("the circle node has Wil's notes", || async {
        circle_holds(&circle, &fay, team).await
    })
    .await?;
    let fay_to_circle = t.elapsed();
    println!("Fay online in the evening: the circle node now holds Wil's notes, sealed");
    fay.shutdown().await;
    let t = Instant::now();
    let val = device(dirs[4].path(), "Val", &url).await?;
    eventually("Val has Wil's notes", || async { Ok(note_texts(&val, team).await?.len() == 2) })
        .await?;
    println!("  Val, offline all day, comes online later and gets them from the circle node");
    steps.push(("relay passes the visit on to Val", fay_to_circle + t.elapsed()));

    // 6. A new worker joins with a ticket and receives the history.
    let t = Instant::now();
    let nia = device(dirs[5].path(), "Nia", &url).await?;
    let ticket =
        rosa.invite(&team.to_string(), Role::Worker, "Nia", Duration::from_secs(3600)).await?;
    println!("Rosa invites Nia: {}…", &ticket.to_string()[..40]);
    nia.join(&ticket).await?;
    eventually("Nia has the history", || async { Ok(note_texts(&nia, team).await?.len() == 2) })
        .await?;
    println!("  Nia joins and receives the care plan and every note");
    steps.push(("new worker joins and catches up", t.elapsed()));

    // 7. Val leaves the team; her phone can no longer sync, even through the relay.
    let t = Instant::now();
    let member = val.with_home(move |h| h.profile().member).await;
    rosa.with_home(move |h| h.author_op(team, OpBody::RemoveMember { member })).await?;
    eventually("the circle node disconnects Val", || async {
        Ok(!circle.node().connected().contains(&val_device)
            && !rosa.connected().contains(&val_device))
    })
    .await?;
    let refused = t.elapsed();
    val.with_home(move |h| {
        h.team("")?.add_note(&NewNote { text: "after removal".into(), ..NewNote::default() }, None)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // The circle node holds what Rosa holds, and so nothing of Val's new note.
    if !circle_holds(&circle, &rosa, team).await? {
        bail!("a removed device's note reached the circle node");
    }
    println!("Rosa removes Val: the circle node and Rosa refuse her and her new note");
    steps.push(("removed worker disconnected by the circle node and Rosa", refused));

    // 8. Fay, offline since the evening, has not heard of the removal. Val meets her in
    //    the same room and Fay's phone takes Val's note; when it reaches the circle node it
    //    passes the note on, but no device that knows of the removal puts it in the
    //    record: it is kept aside, listed for Rosa with who wrote it and when, until she
    //    accepts it.
    let t = Instant::now();
    let fay = Node::start_with(Home::open(dirs[2].path())?, &room, quiet).await?;
    let fay_addr = fay.addr();
    val.connect(&PeerAddr { device: fay_addr.device, addrs: fay_addr.addrs, relay: None }).await?;
    eventually("Fay has Val's note", || async {
        Ok(note_texts(&fay, team).await?.iter().any(|t| t == "after removal"))
    })
    .await?;
    fay.shutdown().await;
    let fay = device(dirs[2].path(), "Fay", &url).await?;
    eventually("Rosa keeps Val's note aside", || async {
        Ok(rosa.with_home(move |h| h.team("")?.kept_aside()).await?.len() == 1)
    })
    .await?;
    let aside = rosa.with_home(move |h| h.team("")?.kept_aside()).await?;
    let entry = &aside[0];
    println!(
        "Fay, back online, passes on Val's note: kept aside on Rosa's phone, by {} ({}), {}",
        entry.audit.name.as_deref().unwrap_or("?"),
        entry.audit.role.map_or("?", |r| r.as_str()),
        entry.audit.what
    );
    if note_texts(&rosa, team).await?.iter().any(|t| t == "after removal") {
        bail!("a note kept aside is in Rosa's record");
    }
    let change: care::ChangeHash = entry.audit.change.parse()?;
    rosa.with_home(move |h| h.team("")?.accept_kept_aside(&[change])).await?;
    eventually("Nia reads Val's accepted note", || async {
        Ok(note_texts(&nia, team).await?.iter().any(|t| t == "after removal"))
    })
    .await?;
    println!("  Rosa accepts it; Nia's phone now shows it in the record");
    steps.push(("a removed worker's late note kept aside, then accepted", t.elapsed()));

    println!("\nlatest notes as each device sees them:");
    let online = [("Rosa", &rosa), ("Nia", &nia), ("Fay", &fay), ("Val", &val)];
    for (name, node) in online {
        println!("  {name}: {:?}", note_texts(node, team).await?);
    }
    let mut wil = Home::open(dirs[3].path())?;
    let mut texts: Vec<String> =
        wil.team("")?.notes(&NoteQuery::default())?.into_iter().map(|n| n.text).collect();
    texts.sort();
    println!("  Wil (offline now): {texts:?}");
    let sealed = circle.node().with_home(move |h| h.sealed_bytes(team)).await?;
    let words = ["after removal", "crossword done", "paracetamol"];
    let readable =
        sealed.iter().any(|b| words.iter().any(|w| b.windows(w.len()).any(|x| x == w.as_bytes())));
    if readable {
        bail!("the circle node stores a note's words");
    }
    println!(
        "  circle node: {} sealed documents, {} bytes, none of it readable there",
        sealed.len(),
        sealed.iter().map(Vec::len).sum::<usize>()
    );
    let traffic = circle.node().traffic();
    println!(
        "\ncircle node: {} devices admitted to its relay, {} refused; {} bytes sent, {} received",
        circle.admitted(),
        circle.refused(),
        traffic.bytes_sent,
        traffic.bytes_received
    );
    println!("\nhow long each step took:");
    for (step, took) in &steps {
        println!("  {:>8.1} ms  {step}", took.as_secs_f64() * 1000.0);
    }
    for node in [rosa, nia, fay, val] {
        node.shutdown().await;
    }
    circle.shutdown().await;
    Ok(())
}

/// A member's phone: its home, and its node using the circle's relay server.
async fn device(dir: &Path, name: &str, relay: &str) -> Result<Node> {
    let home = if dir.join(care::home::KEY_FILE).exists() {
        Home::open(dir)?
    } else {
        Home::init(dir, name)?
    };
    let config = NetConfig { relay: Some(relay.parse()?), ..NetConfig::loopback() };
    Ok(Node::start(home, &config).await?)
}

/// The texts of the notes a device holds of a team, sorted.
async fn note_texts(node: &Node, team: TeamId) -> Result<Vec<String>> {
    node.with_home(move |home| {
        let mut texts: Vec<String> = home
            .team(&team.to_string())?
            .notes(&NoteQuery::default())?
            .into_iter()
            .map(|n| n.text)
            .collect();
        texts.sort();
        Ok(texts)
    })
    .await
}

/// Polls `check` until it holds or `SETTLE_MS` pass.
async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_millis(SETTLE_MS);
    while !check().await.unwrap_or(false) {
        if Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Whether the circle node holds, sealed, every document `member` holds of `team`, at
/// the same heads (it cannot read them, only tell that it holds the same changes).
async fn circle_holds(circle: &CircleNode, member: &Node, team: TeamId) -> Result<bool> {
    let theirs = member.with_home(move |h| h.team(&team.to_string())?.documents()).await?;
    let sealed = circle.node().with_home(move |h| h.sealed_documents(team)).await?;
    Ok(!theirs.is_empty()
        && theirs.iter().all(|doc| sealed.iter().any(|s| s.id == doc.id && s.heads == doc.heads)))
}
