//! How an app embeds Care Commons: open a home, start its node, subscribe to what
//! happens, and make changes through the node so they reach the team at once.
//!
//! Two devices on loopback: Ada (the person getting support) invites Bea (a care
//! worker); Bea's app shows Ada's care plan and notes as they arrive, then writes a
//! shift note that Ada's app sees. Run with `cargo run --example embed`.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use care::{Home, NetConfig, NewNote, Node, NoteQuery, PeerEvent, Role, Section};
use care_sync::SyncEvent;

#[tokio::main]
async fn main() -> Result<()> {
    let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);
    let started = Instant::now();

    // Ada's phone: a home with her team, and its node on the network.
    let mut home = Home::init(dirs.0.path(), "Ada")?;
    let team = home.create_team("Ada's team")?;
    home.team("")?.set_plan_section(Section::AboutMe, "I like tea at eight and the radio on.")?;
    let ada = Node::start(home, &NetConfig::loopback()).await?;
    let ticket =
        ada.invite(&team.to_string(), Role::Worker, "Bea", Duration::from_secs(3600)).await?;
    println!("Ada invites Bea with ticket {}…", &ticket.to_string()[..32]);

    // Bea's phone: a new home; the app renders every event of its node.
    let bea = Node::start(Home::init(dirs.1.path(), "Bea")?, &NetConfig::loopback()).await?;
    let mut events = bea.events();
    let render = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                PeerEvent::Connected { peer } => {
                    println!("  [Bea's app] connected to {}", peer.short())
                }
                PeerEvent::Sync { event: SyncEvent::DocChanged { kind, .. }, .. } => {
                    println!("  [Bea's app] {kind} updated");
                }
                PeerEvent::Sync { .. } => {}
                PeerEvent::Disconnected { peer, reason } => {
                    println!("  [Bea's app] {} disconnected: {reason}", peer.short());
                }
            }
        }
    });
    bea.join(&ticket).await?;
    wait_for("Bea to see the care plan", async || {
        let plan = bea.with_home(move |h| h.team("")?.plan()).await;
        plan.map(|plan| plan.iter().any(|(_, text)| !text.is_empty()))
    })
    .await?;
    let plan = bea.with_home(move |h| h.team("")?.plan()).await?;
    let about = plan.iter().find(|(s, _)| *s == Section::AboutMe).map(|(_, t)| t.as_str());
    println!("Bea reads the plan: {}", about.unwrap_or("(empty)"));

    // Bea writes a shift note; Ada's app sees it.
    let note = NewNote {
        text: "Tea at eight, radio on, all well.".into(),
        mood: Some("content".into()),
        ..NewNote::default()
    };
    bea.with_home(move |h| h.team("")?.add_note(&note, None)).await?;
    wait_for("Ada to see Bea's note", async || {
        let notes = ada.with_home(move |h| h.team("")?.notes(&NoteQuery::default())).await;
        notes.map(|notes| !notes.is_empty())
    })
    .await?;
    let latest = ada
        .with_home(move |h| h.team("")?.notes(&NoteQuery { limit: Some(1), since: None }))
        .await?;
    println!("Ada's app shows the latest note: {}", latest.first().map_or("", |n| n.text.as_str()));

    bea.shutdown().await;
    ada.shutdown().await;
    render.abort();
    println!("done in {} ms", started.elapsed().as_millis());
    Ok(())
}

/// Polls until `check` holds, for at most ten seconds.
async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> care::Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check().await.unwrap_or(false) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("timed out waiting for {what}")
}
