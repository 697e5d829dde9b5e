//! Crash safety: a child process writes shift notes through the library and reports
//! each one as saved once `add_note` returns; it is killed with SIGKILL at random
//! moments. Every note it reported must be there after reopening, and the store must
//! pass its integrity check.
//!
//! The child is this same test binary, re-run on the `crash_child` test with
//! `CARE_CRASH_CHILD` naming the home. Replay a run with `CARE_CRASH_SEED=N`.

use std::io::{BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use care::{EntryId, Home, NewNote};

/// How many times the writer is killed per run.
const KILLS: usize = 24;
/// Longest a writer runs before it is killed.
const RUN_MS_MAX: u64 = 400;

#[test]
fn acknowledged_notes_survive_sigkill() -> Result<()> {
    let seed =
        std::env::var("CARE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos());
            nanos as u64 ^ u64::from(std::process::id())
        });
    println!("crash test seed {seed} (replay with CARE_CRASH_SEED={seed})");
    let mut rng = seed.max(1);
    let dir = tempfile::tempdir()?;
    let team = Home::init(dir.path(), "Worker")?.create_team("Crash team")?;
    let mut acknowledged: Vec<EntryId> = Vec::new();
    for round in 0..KILLS {
        let run_ms = 20 + next(&mut rng) % RUN_MS_MAX;
        let saved = run_and_kill(dir.path(), round, Duration::from_millis(run_ms))?;
        acknowledged.extend(saved);
        let mut home = Home::open(dir.path()).context("reopening after a kill")?;
        let mut team = home.team(&team.to_string())?;
        for id in &acknowledged {
            let note = team.note(*id).with_context(|| format!("seed {seed}: note {id} lost"))?;
            assert!(note.text.starts_with("visit"), "seed {seed}: note {id} damaged");
        }
        let report = home.doctor()?;
        assert!(report.problems.is_empty(), "seed {seed}: {:?}", report.problems);
    }
    println!("{} acknowledged notes survived {KILLS} kills", acknowledged.len());
    assert!(acknowledged.len() > KILLS, "the writer should have saved notes between kills");
    Ok(())
}

/// The writer: adds notes until killed, printing each id once it is saved.
#[test]
fn crash_child() -> Result<()> {
    let Ok(dir) = std::env::var("CARE_CRASH_CHILD") else { return Ok(()) };
    let mut home = Home::open(Path::new(&dir))?;
    let mut team = home.team("")?;
    for i in 0.. {
        let note = NewNote {
            text: format!("visit {i}: {}", "tea and a chat. ".repeat(8)),
            ..NewNote::default()
        };
        let id = team.add_note(&note, None)?;
        println!("saved {id}");
    }
    Ok(())
}

fn run_and_kill(home: &Path, round: usize, run_for: Duration) -> Result<Vec<EntryId>> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("CARE_CRASH_CHILD", home)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stdout).read_to_string(&mut text);
        // A line cut short by the kill was never acknowledged: keep complete lines only.
        let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
        complete
            .lines()
            .filter_map(|line| line.strip_prefix("saved ").and_then(|id| id.parse().ok()))
            .collect::<Vec<EntryId>>()
    });
    std::thread::sleep(run_for);
    child.kill().with_context(|| format!("killing writer {round}"))?; // SIGKILL on unix
    child.wait()?;
    reader.join().map_err(|_| anyhow::anyhow!("the reader thread panicked"))
}

/// xorshift64: a small seeded generator, so a failing run can be replayed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
