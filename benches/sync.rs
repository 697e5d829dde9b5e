//! Sync benchmark (release mode: `cargo bench --bench sync`). Prints
//! catch-up, reconnect and live-edit figures for each contestant side by side: this
//! engine over iroh on loopback with its SQLite homes on disk, the in-memory Automerge
//! floor, and samod 0.16 over TCP on loopback.

#[path = "sync/care_iroh.rs"]
mod care_iroh;
#[path = "common/clock.rs"]
mod clock;
#[path = "common/cpu.rs"]
mod cpu;
#[path = "sync/floor.rs"]
mod floor;
#[path = "sync/samod_tcp.rs"]
mod samod_tcp;
#[path = "sync/workload.rs"]
mod workload;

use std::time::Duration;

use anyhow::Result;

/// Longest any one scenario may take before it gives up with an error.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(60);
/// The row every other row is compared with for the cost of a real transport.
const FLOOR: &str = "in-memory floor";
/// This engine's row.
const CARE: &str = "care / iroh + SQLite";
/// The row every other row is compared with as the existing library to beat.
const SAMOD: &str = "samod 0.16 / TCP";

/// How big a run is: full under `cargo bench`, a quick smoke run under `cargo test`.
#[derive(Debug)]
pub struct Size {
    /// Notes in the catch-up and live-edit document.
    notes: usize,
    /// Documents in the reconnect scenario.
    docs: usize,
    /// Notes in each reconnect document.
    doc_notes: usize,
    /// Repetitions of the catch-up and reconnect scenarios.
    runs: usize,
    /// Live edits measured, one after another.
    live_edits: usize,
}

/// One contestant's figures; times are medians over the runs.
#[derive(Debug)]
pub struct Figures {
    /// A fresh peer receives the whole notes document.
    catch_up_ms: f64,
    /// CPU time both sides spent in that catch-up, every thread (median).
    catch_up_cpu_ms: f64,
    /// Bytes exchanged, both ways, in one catch-up (median).
    catch_up_bytes: usize,
    /// Reconnect with every document unchanged, until all are known in sync.
    reconnect_ms: f64,
    /// Bytes exchanged, both ways, per document in one reconnect (median run).
    reconnect_bytes_per_doc: f64,
    /// Message rounds per document in a reconnect, where the contestant can tell.
    reconnect_round_trips: Option<f64>,
    /// One new note reaching the other side: median.
    live_p50_ms: f64,
    /// One new note reaching the other side: 90th percentile.
    live_p90_ms: f64,
}

fn main() -> Result<()> {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a smoke test.
    let full = std::env::args().any(|a| a == "--bench");
    let size = if full {
        Size { notes: 10_000, docs: 1_000, doc_notes: 10, runs: 5, live_edits: 30 }
    } else {
        Size { notes: 200, docs: 20, doc_notes: 10, runs: 2, live_edits: 5 }
    };
    println!(
        "care sync benchmark: {} notes of ~200 chars (one commit each); reconnect of {} documents \
         of {} notes; {} runs, {} live edits{}",
        size.notes,
        size.docs,
        size.doc_notes,
        size.runs,
        size.live_edits,
        if full { "" } else { ": smoke run" }
    );
    let floor = floor::run(&size)?;
    println!(
        "floor extras: load(save()) {:.1} ms for a {} KiB snapshot; reconnect sent {} messages \
         ({:.1} per document)",
        floor.load_save_ms,
        floor.snapshot_bytes / 1024,
        floor.reconnect_messages,
        floor.reconnect_messages as f64 / size.docs as f64
    );
    let samod = samod_tcp::run(&size)?;
    let (care, reads, circle) = care_iroh::run(&size)?;
    println!(
        "care extras: documents received whole are stored unloaded, checked by workers beside \
         the owner and kept as they loaded them; after catching up, reading the latest 50 notes \
         takes {:.1} ms, then all {} notes {:.1} ms; so the device shows every note {:.1} ms after \
         it connects, the two devices having spent {:.1} ms of CPU (the floor's catch-up alone: \
         {:.1} ms, {:.1} ms of CPU)",
        reads.latest_ms,
        size.notes,
        reads.all_ms,
        reads.shown_ms,
        reads.shown_cpu_ms,
        floor.figures.catch_up_ms,
        floor.figures.catch_up_cpu_ms
    );
    println!(
        "care through the circle node alone (it holds the team sealed, {} KiB): the owner \
         hands it the team in {:.1} ms (once); a fresh device catches up from it alone in \
         {:.1} ms ({} KiB; {} direct catch-up's {:.1} ms, {} samod's {:.1} ms) and shows \
         every note {:.1} ms after it connects",
        circle.stored_bytes / 1024,
        circle.upload_ms,
        circle.catch_up_ms,
        circle.catch_up_bytes / 1024,
        ratio(circle.catch_up_ms, care.catch_up_ms),
        care.catch_up_ms,
        ratio(circle.catch_up_ms, samod.catch_up_ms),
        samod.catch_up_ms,
        circle.shown_ms
    );
    let checks = care_iroh::checks(&size)?;
    println!(
        "care checks of peer input, over the same notes' {} changes (outside the catch-up \
         figure): inflate bound {:.1} ms and document rules {:.1} ms (as the workers check a \
         document received whole, on the operations it holds); bounds of one sync message \
         carrying them all {:.1} ms",
        checks.changes, checks.inflate_ms, checks.rules_ms, checks.message_ms
    );
    let rows = [(CARE, care), (FLOOR, floor.figures), (SAMOD, samod)];
    print_table(&rows);
    Ok(())
}

/// Prints one line per contestant, then each contestant's times and bytes as ratios to
/// the samod row and to the floor row, when those rows are present. Any number of rows
/// may be given, in any order: a contestant such as care over iroh is one more row.
pub fn print_table(rows: &[(&str, Figures)]) {
    println!(
        "{:<20} {:>11} {:>8} {:>12} {:>13} {:>12} {:>7} {:>12} {:>12}",
        "contestant",
        "catch-up ms",
        "CPU ms",
        "catch-up KiB",
        "reconnect ms",
        "bytes/doc",
        "rounds",
        "live p50 ms",
        "live p90 ms"
    );
    for (name, f) in rows {
        let rounds = f.reconnect_round_trips.map_or("-".to_string(), |r| format!("{r:.0}"));
        println!(
            "{name:<20} {:>11.1} {:>8.1} {:>12.0} {:>13.1} {:>12.0} {rounds:>7} {:>12.2} {:>12.2}",
            f.catch_up_ms,
            f.catch_up_cpu_ms,
            f.catch_up_bytes as f64 / 1024.0,
            f.reconnect_ms,
            f.reconnect_bytes_per_doc,
            f.live_p50_ms,
            f.live_p90_ms
        );
    }
    for reference in [SAMOD, FLOOR] {
        let Some((_, base)) = rows.iter().find(|(name, _)| *name == reference) else { continue };
        println!("ratio to {reference}:");
        for (name, f) in rows {
            println!(
                "  {name:<20} catch-up {} time, {} CPU, {} bytes; reconnect {} time, {} bytes; \
                 live p50 {}, p90 {}",
                ratio(f.catch_up_ms, base.catch_up_ms),
                ratio(f.catch_up_cpu_ms, base.catch_up_cpu_ms),
                ratio(f.catch_up_bytes as f64, base.catch_up_bytes as f64),
                ratio(f.reconnect_ms, base.reconnect_ms),
                ratio(f.reconnect_bytes_per_doc, base.reconnect_bytes_per_doc),
                ratio(f.live_p50_ms, base.live_p50_ms),
                ratio(f.live_p90_ms, base.live_p90_ms)
            );
        }
    }
}

/// `value / base` as text, or a dash when the base is zero.
fn ratio(value: f64, base: f64) -> String {
    if base > 0.0 { format!("{:.2}x", value / base) } else { "-".to_string() }
}

/// The median of `samples`, in milliseconds.
fn median(samples: &mut [Duration]) -> f64 {
    quantile(samples, 0.5)
}

/// The median of `counts`; zero when empty.
fn median_count(counts: &mut [u64]) -> u64 {
    counts.sort_unstable();
    counts.get(counts.len() / 2).copied().unwrap_or(0)
}

/// The `q` quantile (nearest rank) of `samples`, in milliseconds; zero when empty.
fn quantile(samples: &mut [Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let index = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[index].as_secs_f64() * 1000.0
}
