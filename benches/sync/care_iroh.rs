//! This engine as a contestant: two real nodes over iroh on loopback, each with its
//! SQLite home on disk (synchronous=FULL), so every figure includes durable storage.
//! Notes are written through the embedding API, which partitions them by month: the
//! catch-up team holds the same notes as the other contestants' single document, spread
//! over its month documents.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use automerge::ChangeHash;
use care::{
    DocId, Home, NetConfig, NewNote, Node, NodeOptions, NoteQuery, OpBody, PeerEvent, Role, TeamId,
};
use care_sync::{Replica, SyncEvent};
use tokio::sync::broadcast;

use crate::clock::SteppingClock;
use crate::cpu::process_cpu;
use crate::{Figures, SCENARIO_TIMEOUT, Size, median, median_count, quantile, workload};

/// 2025-11-01T00:00:00Z.
const START_MS: i64 = 1_761_955_200_000;
/// Ten visits a day.
const VISIT_STEP_MS: i64 = 144 * 60_000;
/// About a month.
const MONTH_MS: i64 = 31 * 86_400_000;

/// What a device that has caught up pays when it first reads what arrived: documents
/// received whole are stored as they came and loaded (and verified) on first use.
pub(crate) struct FirstReads {
    /// Reading the latest 50 notes right after catching up (median).
    pub latest_ms: f64,
    /// Then reading every note (median).
    pub all_ms: f64,
    /// From connecting until the device that caught up has read every note: the catch-up
    /// and both reads, per run (median).
    pub shown_ms: f64,
    /// CPU time both devices spent in that span, every thread (median).
    pub shown_cpu_ms: f64,
}

/// The catch-up of a device that meets only the team's circle node, which holds the
/// team sealed: it cannot read the documents, so everything the device gets was sealed
/// by the owner, and the device opens and checks it all.
pub(crate) struct ThroughCircle {
    /// The owner hands the circle node the team, sealed, until both are in sync (once,
    /// not timed with the catch-up).
    pub upload_ms: f64,
    /// A fresh device catches up from the circle node alone (median).
    pub catch_up_ms: f64,
    /// Bytes both ways in that catch-up (median).
    pub catch_up_bytes: usize,
    /// From connecting until it has read every note (median).
    pub shown_ms: f64,
    /// What the circle node stores of the team, in bytes.
    pub stored_bytes: usize,
}

/// What the checks on peer input cost, over every notes document of the catch-up team:
/// work a device does besides the catch-up figure (which stores documents unloaded).
pub(crate) struct Checks {
    /// Checking what the documents inflate to, before their first load (read, not
    /// inflated, where they are too small to pass the bound at deflate's greatest ratio).
    pub inflate_ms: f64,
    /// The documents' rules over every operation they hold, as a node's workers check them
    /// (on the operations saved, not on each change rebuilt from the loaded document).
    pub rules_ms: f64,
    /// The bounds of one sync message carrying every change of each document.
    pub message_ms: f64,
    /// Changes checked.
    pub changes: usize,
}

/// Times the checks of peer input on the owner's documents of the catch-up team.
pub(crate) fn checks(size: &Size) -> Result<Checks> {
    let root = tempfile::tempdir()?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let pair =
        runtime.block_on(prepare(&root.path().join("checks"), size.notes, VISIT_STEP_MS, 1))?;
    let home = Home::open(&pair.owner)?;
    let mut figures = Checks { inflate_ms: 0.0, rules_ms: 0.0, message_ms: 0.0, changes: 0 };
    for summary in home.store().docs(Some(pair.team))? {
        let Ok(kind) = summary.kind.parse::<care_core::DocKind>() else { continue };
        let bytes = home.store().doc_bytes(summary.id)?.context("a stored document")?;
        let started = Instant::now();
        care_sync::chunks::check_inflated_len(&bytes, care_sync::chunks::INFLATED_BYTES_MAX)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        figures.inflate_ms += started.elapsed().as_secs_f64() * 1000.0;
        let doc = automerge::Automerge::load(&bytes)?;
        let changes = doc.get_changes(&[]);
        let started = Instant::now();
        let rules = care_core::documents::ReceivedRules::new(pair.team, &kind);
        let ops = automerge::ReadDoc::stats(&doc).num_ops;
        care_sync::chunks::check_saved_rules(&rules, &bytes, ops)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        figures.rules_ms += started.elapsed().as_secs_f64() * 1000.0;
        figures.changes += changes.len();
        let message = automerge::sync::Message {
            heads: doc.get_heads(),
            need: Vec::new(),
            have: Vec::new(),
            changes: automerge::sync::ChunkList::from(
                changes.iter().map(|c| c.raw_bytes().to_vec()).collect::<Vec<_>>(),
            ),
            flags: None,
            version: automerge::sync::MessageVersion::V1,
        }
        .encode();
        let started = Instant::now();
        care_sync::message::check_sync_message(&message).map_err(|e| anyhow::anyhow!("{e}"))?;
        figures.message_ms += started.elapsed().as_secs_f64() * 1000.0;
    }
    Ok(figures)
}

/// Runs the three scenarios and returns this engine's figures.
pub(crate) fn run(size: &Size) -> Result<(Figures, FirstReads, ThroughCircle)> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let root = tempfile::tempdir()?;
        let fresh = prepare(&root.path().join("catch-up"), size.notes, VISIT_STEP_MS, 1).await?;
        let (catch_up_ms, catch_up_cpu_ms, catch_up_bytes, first_reads) =
            catch_up(&fresh, &root.path().join("runs"), size.runs).await?;
        let circle = through_circle(&fresh, &root.path().join("circle"), size.runs).await?;
        let step = MONTH_MS / size.doc_notes as i64;
        let many =
            prepare(&root.path().join("reconnect"), size.docs * size.doc_notes, step, 1).await?;
        sync_fully(&many).await?;
        let (reconnect_ms, bytes_per_doc, rounds) = reconnect(&many, size.runs).await?;
        let (live_p50_ms, live_p90_ms) =
            live(&fresh, &root.path().join("live"), size.live_edits).await?;
        let figures = Figures {
            catch_up_ms,
            catch_up_cpu_ms,
            catch_up_bytes,
            reconnect_ms,
            reconnect_bytes_per_doc: bytes_per_doc,
            reconnect_round_trips: Some(rounds),
            live_p50_ms,
            live_p90_ms,
        };
        Ok((figures, first_reads, circle))
    })
}

/// Two homes: the owner's, holding a team with `notes` notes written `step_ms` apart and
/// compacted, and a worker's that is already a member but holds no document.
struct Pair {
    owner: std::path::PathBuf,
    worker: std::path::PathBuf,
    team: TeamId,
    notes: usize,
    /// When the last note was written.
    last_ms: i64,
}

async fn prepare(dir: &Path, notes: usize, step_ms: i64, seed: u8) -> Result<Pair> {
    let owner = dir.join("owner");
    let worker = dir.join("worker");
    let mut home = Home::init(&owner, "Ada")?;
    home.set_clock(SteppingClock::new(START_MS, step_ms));
    let team = home.create_team("Benchmark team")?;
    {
        let mut t = home.team(&team.to_string())?;
        for i in 0..notes {
            let note =
                NewNote { text: workload::note_text(i + usize::from(seed)), ..NewNote::default() };
            t.add_note(&note, None)?;
        }
    }
    let mut other = Home::init(&worker, "Bea")?;
    let member = other.profile().member;
    let device = other.profile().device;
    home.author_op(
        team,
        OpBody::AddMember { member, name: "Bea".into(), role: Role::Worker, hats: Vec::new() },
    )?;
    home.author_op(team, OpBody::AddDevice { member, device, label: "phone".into() })?;
    let ops = home.ops(team)?;
    other.add_ops(team, &ops)?;
    home.compact()?;
    let last_ms = home.now().as_millis();
    Ok(Pair { owner, worker, team, notes, last_ms })
}

/// A node for a home, talking only to the device it is told to connect to, with its
/// clock at the time of the pair's last note: the workloads spread their notes over years
/// ahead of the machine's clock, and a device refuses documents of months far ahead of
/// its own.
async fn node_at(dir: &Path, pair: &Pair) -> Result<Node> {
    let options = NodeOptions { dial_known_devices: false };
    let mut home = Home::open(dir)?;
    home.set_clock(SteppingClock::new(pair.last_ms, 0));
    Ok(Node::start_with(home, &NetConfig::loopback(), options).await?)
}

async fn heads(node: &Node) -> Result<BTreeMap<DocId, Vec<ChangeHash>>> {
    let docs = node.with_home(move |h| h.store().docs(None)).await?;
    Ok(docs.into_iter().map(|d| (d.id, d.heads)).collect())
}

/// What one catch-up took.
struct Settled {
    /// From connecting until the worker reported the team in sync.
    elapsed: Duration,
    /// CPU time both nodes spent meanwhile.
    cpu: Duration,
    /// Bytes both ways.
    bytes: u64,
}

/// Connects the worker to the owner and waits until the worker's session reports the
/// team in sync (its documents at the owner's heads, durably stored).
async fn connect_and_settle(owner: &Node, worker: &Node, team: TeamId) -> Result<Settled> {
    let target = heads(owner).await?;
    let mut events = worker.events();
    let (started, started_cpu) = (Instant::now(), process_cpu());
    worker.connect(&owner.addr()).await?;
    wait_in_sync(&mut events, team).await?;
    let (elapsed, cpu) = (started.elapsed(), process_cpu() - started_cpu);
    if heads(worker).await? != target {
        bail!("the worker reported the team in sync without the owner's heads");
    }
    let traffic = worker.traffic();
    Ok(Settled { elapsed, cpu, bytes: traffic.bytes_sent + traffic.bytes_received })
}

async fn catch_up(
    pair: &Pair,
    runs_dir: &Path,
    runs: usize,
) -> Result<(f64, f64, usize, FirstReads)> {
    let (mut times, mut cpu, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    let (mut latest, mut all, mut shown, mut shown_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let dir = runs_dir.join(run.to_string());
        copy_dir(&pair.owner, &dir.join("owner"))?;
        copy_dir(&pair.worker, &dir.join("worker"))?;
        let owner = node_at(&dir.join("owner"), pair).await?;
        let worker = node_at(&dir.join("worker"), pair).await?;
        let settled = connect_and_settle(&owner, &worker, pair.team).await?;
        times.push(settled.elapsed);
        cpu.push(settled.cpu);
        bytes.push(settled.bytes);
        let reads_cpu = process_cpu();
        let team = pair.team.to_string();
        let read = async |limit| {
            let started = Instant::now();
            let query = NoteQuery { since: None, limit };
            let team = team.clone();
            let notes = worker.with_home(move |h| h.team(&team)?.notes(&query)).await?;
            anyhow::Ok((started.elapsed(), notes.len()))
        };
        let (latest_time, _) = read(Some(50)).await?;
        let (all_time, count) = read(None).await?;
        if count != pair.notes {
            bail!("the worker reads {count} notes after catching up, not {}", pair.notes);
        }
        latest.push(latest_time);
        all.push(all_time);
        shown.push(settled.elapsed + latest_time + all_time);
        shown_cpu.push(settled.cpu + (process_cpu() - reads_cpu));
        worker.shutdown().await;
        owner.shutdown().await;
    }
    let reads = FirstReads {
        latest_ms: median(&mut latest),
        all_ms: median(&mut all),
        shown_ms: median(&mut shown),
        shown_cpu_ms: median(&mut shown_cpu),
    };
    Ok((median(&mut times), median(&mut cpu), median_count(&mut bytes) as usize, reads))
}

/// The owner adds a circle node and hands it the team (sealed); then, with the owner
/// offline, a fresh worker catches up from the circle node alone, `runs` times.
async fn through_circle(pair: &Pair, dir: &Path, runs: usize) -> Result<ThroughCircle> {
    let (owner_dir, worker_dir, circle_dir) =
        (dir.join("owner"), dir.join("worker"), dir.join("circle"));
    copy_dir(&pair.owner, &owner_dir)?;
    copy_dir(&pair.worker, &worker_dir)?;
    {
        // As the circle handshake would: the circle node joins with the role relay and
        // takes the team's log; the worker learns of it.
        let mut owner = Home::open(&owner_dir)?;
        owner.set_clock(SteppingClock::new(pair.last_ms, 0));
        let mut circle = Home::init(&circle_dir, "Circle")?;
        let (member, device) = (circle.profile().member, circle.profile().device);
        let name = "Circle".to_owned();
        owner.author_op(
            pair.team,
            OpBody::AddMember { member, name, role: Role::Relay, hats: Vec::new() },
        )?;
        owner.author_op(pair.team, OpBody::AddDevice { member, device, label: "relay".into() })?;
        let ops = owner.ops(pair.team)?;
        circle.add_ops(pair.team, &ops)?;
        Home::open(&worker_dir)?.add_ops(pair.team, &ops)?;
    }
    let target = {
        let owner = Home::open(&owner_dir)?;
        owner.store().docs(None)?.into_iter().map(|d| (d.id, d.heads)).collect::<BTreeMap<_, _>>()
    };
    let owner = node_at(&owner_dir, pair).await?;
    let circle = node_at(&circle_dir, pair).await?;
    let mut events = owner.events();
    let started = Instant::now();
    owner.connect(&circle.addr()).await?;
    wait_in_sync(&mut events, pair.team).await?;
    let upload_ms = started.elapsed().as_secs_f64() * 1000.0;
    let team = pair.team;
    let stored_bytes: usize =
        circle.with_home(move |h| h.sealed_bytes(team)).await?.iter().map(Vec::len).sum();
    owner.shutdown().await;
    circle.shutdown().await;

    let (mut times, mut bytes, mut shown) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let run_dir = dir.join(format!("run-{run}"));
        copy_dir(&circle_dir, &run_dir.join("circle"))?;
        copy_dir(&worker_dir, &run_dir.join("worker"))?;
        let circle = node_at(&run_dir.join("circle"), pair).await?;
        let worker = node_at(&run_dir.join("worker"), pair).await?;
        let mut events = worker.events();
        let started = Instant::now();
        worker.connect(&circle.addr()).await?;
        wait_in_sync(&mut events, pair.team).await?;
        let elapsed = started.elapsed();
        if heads(&worker).await? != target {
            bail!("the worker reported the team in sync without the owner's heads");
        }
        let traffic = worker.traffic();
        let query = NoteQuery { since: None, limit: None };
        let team = pair.team.to_string();
        let notes = worker.with_home(move |h| h.team(&team)?.notes(&query)).await?;
        if notes.len() != pair.notes {
            bail!(
                "the worker reads {} notes through the circle node, not {}",
                notes.len(),
                pair.notes
            );
        }
        shown.push(started.elapsed());
        times.push(elapsed);
        bytes.push(traffic.bytes_sent + traffic.bytes_received);
        worker.shutdown().await;
        circle.shutdown().await;
    }
    Ok(ThroughCircle {
        upload_ms,
        catch_up_ms: median(&mut times),
        catch_up_bytes: median_count(&mut bytes) as usize,
        shown_ms: median(&mut shown),
        stored_bytes,
    })
}

async fn sync_fully(pair: &Pair) -> Result<()> {
    let owner = node_at(&pair.owner, pair).await?;
    let worker = node_at(&pair.worker, pair).await?;
    connect_and_settle(&owner, &worker, pair.team).await?;
    worker.shutdown().await;
    owner.shutdown().await;
    Ok(())
}

/// Reconnects two devices that agree on everything; returns the median time until the
/// worker's session reports the team in sync, bytes per document, and round trips.
async fn reconnect(pair: &Pair, runs: usize) -> Result<(f64, f64, f64)> {
    let (mut times, mut bytes, mut frames) = (Vec::new(), Vec::new(), Vec::new());
    let mut docs = 0;
    for _ in 0..runs {
        let owner = node_at(&pair.owner, pair).await?;
        let worker = node_at(&pair.worker, pair).await?;
        docs = heads(&worker).await?.len();
        let mut events = worker.events();
        let started = Instant::now();
        worker.connect(&owner.addr()).await?;
        wait_in_sync(&mut events, pair.team).await?;
        times.push(started.elapsed());
        let traffic = worker.traffic();
        bytes.push(traffic.bytes_sent + traffic.bytes_received);
        frames.push(traffic.frames_sent.max(traffic.frames_received));
        worker.shutdown().await;
        owner.shutdown().await;
    }
    let per_doc = median_count(&mut bytes) as f64 / docs.max(1) as f64;
    Ok((median(&mut times), per_doc, median_count(&mut frames) as f64))
}

async fn wait_in_sync(events: &mut broadcast::Receiver<PeerEvent>, team: TeamId) -> Result<()> {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(PeerEvent::Sync { event: SyncEvent::TeamInSync { team: t }, .. })
                    if t == team =>
                {
                    return Ok(());
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => bail!("the node stopped"),
            }
        }
    };
    tokio::time::timeout(SCENARIO_TIMEOUT, wait).await.context("no TeamInSync in time")?
}

/// One new note at a time, from the owner to the connected worker, until the worker has
/// stored it; returns p50 and p90 in milliseconds.
async fn live(pair: &Pair, dir: &Path, edits: usize) -> Result<(f64, f64)> {
    copy_dir(&pair.owner, &dir.join("owner"))?;
    copy_dir(&pair.worker, &dir.join("worker"))?;
    let owner = node_at(&dir.join("owner"), pair).await?;
    let worker = node_at(&dir.join("worker"), pair).await?;
    connect_and_settle(&owner, &worker, pair.team).await?;
    let mut events = worker.events();
    let mut samples = Vec::with_capacity(edits);
    for i in 0..edits {
        let note = NewNote { text: workload::note_text(i), ..NewNote::default() };
        let started = Instant::now();
        let id = owner.with_home(move |h| h.team("")?.add_note(&note, None)).await?;
        let month = id.month();
        let arrived = async {
            loop {
                match events.recv().await {
                    Ok(PeerEvent::Sync { event: SyncEvent::DocChanged { kind, .. }, .. })
                        if kind.month() == Some(month) =>
                    {
                        return Ok(());
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => bail!("the node stopped"),
                }
            }
        };
        tokio::time::timeout(SCENARIO_TIMEOUT, arrived)
            .await
            .context("a live edit did not arrive")??;
        samples.push(started.elapsed());
    }
    worker.shutdown().await;
    owner.shutdown().await;
    Ok((quantile(&mut samples, 0.5), quantile(&mut samples, 0.9)))
}

/// Copies a home directory (its key and SQLite files).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}
