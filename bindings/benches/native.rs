//! The work `bindings/python/bench.py` times through the bindings, timed here through
//! the Rust API on the same machine, for its comparison: a durable `note add`, and
//! listing the latest 50 of 10,000 notes. A note add is timed twice: called directly on
//! a `Home`, and posted from async code to the home's owner thread and awaited, as an
//! async Rust app (or the bindings) reaches a running node's home. Prints the figures,
//! then one JSON line.

use std::time::{Duration, Instant};

use care::{Home, NewNote, NoteQuery};

/// Notes added and timed (after as many untimed).
const ADDS: usize = 200;
/// Notes the team holds when listing is timed.
const NOTES: usize = 10_000;
/// Listings timed.
const LISTS: usize = 50;

fn main() -> Result<(), care::Error> {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs a smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let (adds, notes, lists) = if full { (ADDS, NOTES, LISTS) } else { (5, 60, 2) };
    let (_dir, mut home, team) = fresh_home()?;
    let mut team = home.team(&team)?;

    let mut add_times = Vec::with_capacity(adds);
    for i in 0..2 * adds {
        let started = Instant::now();
        team.add_note(&note(i), None)?;
        if i >= adds {
            add_times.push(started.elapsed());
        }
    }
    for i in 2 * adds..notes {
        team.add_note(&note(i), None)?;
    }
    let query = NoteQuery { since: None, limit: Some(50) };
    let mut list_times = Vec::with_capacity(lists);
    for _ in 0..lists + 5 {
        let started = Instant::now();
        let latest = team.notes(&query)?;
        list_times.push(started.elapsed());
        assert_eq!(latest.len(), 50);
    }
    list_times.drain(..5);
    drop(home);

    let mut posted_times = posted_adds(adds)?;
    let (add_p50, add_p95) = (percentile(&mut add_times, 50), percentile(&mut add_times, 95));
    let (posted_p50, posted_p95) =
        (percentile(&mut posted_times, 50), percentile(&mut posted_times, 95));
    let list_p50 = percentile(&mut list_times, 50);
    println!("rust: note add, durable, direct: p50 {add_p50:.3} ms, p95 {add_p95:.3} ms");
    println!(
        "rust: note add, durable, on the owner thread: p50 {posted_p50:.3} ms, p95 {posted_p95:.3} ms"
    );
    println!("rust: latest 50 of {notes} notes: p50 {list_p50:.3} ms");
    println!(
        "{{\"note_add_p50_ms\": {add_p50:.4}, \"note_add_p95_ms\": {add_p95:.4}, \
         \"posted_note_add_p50_ms\": {posted_p50:.4}, \"posted_note_add_p95_ms\": {posted_p95:.4}, \
         \"list_50_p50_ms\": {list_p50:.4}}}"
    );
    Ok(())
}

/// A new home in a temporary directory (removed with it), with one team.
fn fresh_home() -> Result<(tempfile::TempDir, Home, String), care::Error> {
    let dir = tempfile::tempdir().map_err(|e| care::Error::Invalid(e.to_string()))?;
    let mut home = Home::init(dir.path(), "Rosa")?;
    let team = home.create_team("Rosa's team")?.to_string();
    Ok((dir, home, team))
}

/// The `i`th note written.
fn note(i: usize) -> NewNote {
    NewNote { text: format!("Visit {i}: tea, toast and a walk."), ..NewNote::default() }
}

/// Times note adds posted from async code to the home's owner thread.
fn posted_adds(adds: usize) -> Result<Vec<Duration>, care::Error> {
    let (_dir, home, team) = fresh_home()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(care::Error::Thread)?;
    let times = runtime.block_on(async {
        let owner = care_net::Owner::spawn(home).map_err(care::Error::Thread)?;
        let mut times = Vec::with_capacity(adds);
        for i in 0..2 * adds {
            let team = team.clone();
            let started = Instant::now();
            owner.call(move |home| home.team(&team)?.add_note(&note(i), None)).await??;
            if i >= adds {
                times.push(started.elapsed());
            }
        }
        owner.stop().await;
        Ok::<_, care::Error>(times)
    })?;
    Ok(times)
}

/// The `p`th percentile, in milliseconds.
fn percentile(times: &mut [Duration], p: usize) -> f64 {
    times.sort();
    let at = (times.len() * p / 100).min(times.len() - 1);
    times[at].as_secs_f64() * 1e3
}
