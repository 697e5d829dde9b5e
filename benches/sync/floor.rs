//! The in-memory floor: two Automerge documents exchanging encoded sync messages
//! directly, with no transport, storage or scheduling in between.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use automerge::sync::{Message, State, SyncDoc};
use automerge::{Automerge, ChangeHash};

use super::cpu::process_cpu;
use super::workload::{add_note, build_notes_doc, has_all};
use super::{Figures, SCENARIO_TIMEOUT, Size, median, median_count, quantile};

/// Message rounds (one message each way) after which an exchange is abandoned.
const ROUNDS_MAX: usize = 1_000;

/// What the in-memory floor measured, with the extra figures only it can give.
pub(crate) struct FloorReport {
    /// The figures shared with the other contestants.
    pub figures: Figures,
    /// Median time of `Automerge::load(save())` of the catch-up document.
    pub load_save_ms: f64,
    /// Size of the catch-up document's `save()`.
    pub snapshot_bytes: usize,
    /// Sync messages exchanged in one reconnect of all documents.
    pub reconnect_messages: usize,
}

/// Runs every floor scenario at `size`.
pub(crate) fn run(size: &Size) -> Result<FloorReport> {
    let source = build_notes_doc(size.notes, 1)?;
    let (catch_up_ms, catch_up_cpu_ms, catch_up_bytes, mut synced) = catch_up(&source, size.runs)?;
    let (load_save_ms, snapshot_bytes) = load_save(&source, size.runs)?;
    let (live_p50_ms, live_p90_ms) = live_edits(&mut synced, size)?;
    let reconnect = reconnect(size)?;
    Ok(FloorReport {
        figures: Figures {
            catch_up_ms,
            catch_up_cpu_ms,
            catch_up_bytes,
            reconnect_ms: reconnect.ms,
            reconnect_bytes_per_doc: reconnect.bytes as f64 / size.docs as f64,
            reconnect_round_trips: Some(reconnect.rounds_max as f64),
            live_p50_ms,
            live_p90_ms,
        },
        load_save_ms,
        snapshot_bytes,
        reconnect_messages: reconnect.messages,
    })
}

/// Two documents and the sync state each keeps for the other.
pub(crate) struct Pair {
    /// The side that writes.
    a: Automerge,
    /// The side that receives.
    b: Automerge,
    /// `a`'s state for `b`.
    a_state: State,
    /// `b`'s state for `a`.
    b_state: State,
}

/// What one exchange of sync messages cost.
#[derive(Default)]
struct Traffic {
    /// Encoded message bytes, both ways.
    bytes: usize,
    /// Messages, both ways.
    messages: usize,
    /// Rounds: a message from `a` and the answer from `b`, either possibly absent.
    rounds: usize,
    /// When `b` first held every head it was waiting for.
    arrived: Option<Instant>,
    /// The process's CPU time then.
    arrived_cpu: Option<Duration>,
}

impl Pair {
    /// Exchanges messages in turn (`a` then `b`, each generating after it has received)
    /// until neither side has anything to send, noting when `b` first holds all of `target`.
    fn exchange(&mut self, target: &[ChangeHash], deadline: Instant) -> Result<Traffic> {
        let mut traffic = Traffic::default();
        for _ in 0..ROUNDS_MAX {
            if Instant::now() > deadline {
                bail!("in-memory sync did not finish before its deadline");
            }
            let to_b = self.a.generate_sync_message(&mut self.a_state);
            let sent_to_b = to_b.is_some();
            if let Some(message) = to_b {
                let bytes = message.encode();
                traffic.bytes += bytes.len();
                traffic.messages += 1;
                self.b.receive_sync_message(&mut self.b_state, Message::decode(&bytes)?)?;
                if traffic.arrived.is_none() && has_all(&self.b, target) {
                    traffic.arrived = Some(Instant::now());
                    traffic.arrived_cpu = Some(process_cpu());
                }
            }
            let Some(message) = self.b.generate_sync_message(&mut self.b_state) else {
                if sent_to_b {
                    traffic.rounds += 1;
                    continue;
                }
                return Ok(traffic);
            };
            traffic.rounds += 1;
            let bytes = message.encode();
            traffic.bytes += bytes.len();
            traffic.messages += 1;
            self.a.receive_sync_message(&mut self.a_state, Message::decode(&bytes)?)?;
        }
        bail!("in-memory sync did not settle within {ROUNDS_MAX} rounds")
    }
}

/// A fresh peer receives `source`; returns the median time, CPU time and bytes, and
/// the synced pair of the last run.
fn catch_up(source: &Automerge, runs: usize) -> Result<(f64, f64, usize, Pair)> {
    let deadline = Instant::now() + SCENARIO_TIMEOUT;
    let target = source.get_heads();
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    let mut bytes = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let mut pair = Pair {
            a: source.clone(),
            b: Automerge::new(),
            a_state: State::new(),
            b_state: State::new(),
        };
        let (started, started_cpu) = (Instant::now(), process_cpu());
        let traffic = pair.exchange(&target, deadline)?;
        let (Some(arrived), Some(arrived_cpu)) = (traffic.arrived, traffic.arrived_cpu) else {
            bail!("the fresh peer never caught up")
        };
        times.push(arrived - started);
        cpu.push(arrived_cpu - started_cpu);
        bytes.push(traffic.bytes as u64);
        last = Some(pair);
    }
    let Some(pair) = last else { bail!("no catch-up runs") };
    Ok((median(&mut times), median(&mut cpu), median_count(&mut bytes) as usize, pair))
}

/// `Automerge::load(save())` of `source`: median time and snapshot size.
fn load_save(source: &Automerge, runs: usize) -> Result<(f64, usize)> {
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let saved = source.save();
        let loaded = Automerge::load(&saved)?;
        times.push(started.elapsed());
        bytes = saved.len();
        if loaded.get_heads() != source.get_heads() {
            bail!("load(save()) lost changes");
        }
    }
    Ok((median(&mut times), bytes))
}

/// One new note on `a` at a time, timed until it is on `b`: p50 and p90.
fn live_edits(pair: &mut Pair, size: &Size) -> Result<(f64, f64)> {
    let deadline = Instant::now() + SCENARIO_TIMEOUT;
    let mut times = Vec::new();
    for k in 0..size.live_edits {
        let started = Instant::now();
        add_note(&mut pair.a, size.notes + k)?;
        let target = pair.a.get_heads();
        let traffic = pair.exchange(&target, deadline)?;
        let Some(arrived) = traffic.arrived else { bail!("a live edit never arrived") };
        times.push(arrived - started);
    }
    Ok((quantile(&mut times, 0.5), quantile(&mut times, 0.9)))
}

/// What a reconnect of all documents cost.
struct Reconnect {
    /// Median time.
    ms: f64,
    /// Bytes of one run, all documents.
    bytes: usize,
    /// Messages of one run, all documents.
    messages: usize,
    /// The most rounds any document needed.
    rounds_max: usize,
}

/// `size.docs` synced documents of `size.doc_notes` notes, nothing changed, each side
/// starting from the sync state it saved after the previous full sync.
fn reconnect(size: &Size) -> Result<Reconnect> {
    let deadline = Instant::now() + SCENARIO_TIMEOUT;
    let mut docs = Vec::with_capacity(size.docs);
    for d in 0..size.docs {
        let source = build_notes_doc(size.doc_notes, (d % 200) as u8 + 2)?;
        let mut pair =
            Pair { a: source, b: Automerge::new(), a_state: State::new(), b_state: State::new() };
        pair.exchange(&[], deadline)?;
        let saved = (pair.a_state.encode(), pair.b_state.encode());
        docs.push((pair, saved));
    }
    let mut times = Vec::new();
    let mut last = Traffic::default();
    for _ in 0..size.runs {
        let mut total = Traffic::default();
        let started = Instant::now();
        for (pair, (a_saved, b_saved)) in docs.iter_mut() {
            pair.a_state = State::decode(a_saved)?;
            pair.b_state = State::decode(b_saved)?;
            let traffic = pair.exchange(&[], deadline)?;
            total.bytes += traffic.bytes;
            total.messages += traffic.messages;
            total.rounds = total.rounds.max(traffic.rounds);
        }
        times.push(started.elapsed());
        last = total;
    }
    Ok(Reconnect {
        ms: median(&mut times),
        bytes: last.bytes,
        messages: last.messages,
        rounds_max: last.rounds,
    })
}
