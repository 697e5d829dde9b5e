//! Circle relay scale benchmark (release mode: `cargo build --release -p care-cli`, then
//! `cargo bench --bench relay`). One circle node, run as its own process (the built
//! `care relay`), serves teams of five devices on loopback, in steps of more and more
//! teams. Per step, after the homes are built offline: every owner adds the circle node
//! and uploads a month of shift notes (upload); then, the owners offline, the four other
//! devices of every team come online at once, knowing no address of anyone, and catch
//! up from the circle node (catch-up). Every device must end holding every document at
//! its owner's heads, or the run fails. Prints each phase's time, per-device catch-up
//! times, the circle process's peak memory, CPU time and descriptors, the CPU use of
//! the devices' process and the machine, and the bytes moved; then, with every device
//! still connected and idle for five seconds, what holding the connections costs the
//! circle node; last, from the circle node's store after the step, what checking the
//! sealed documents it took in costs it (`relay/checks.rs`).
//!
//! `cargo bench --bench relay -- --teams 50,100` runs only those steps; `--waves 10` has
//! the devices of ten teams at a time catch up, one wave after another, so that how many
//! devices catch up at once stays the same while the teams the circle node holds grow
//! (all at once, the devices' side of this one machine saturates first). Without
//! `--bench` (as `cargo test --workspace --all-targets` runs it) it is a smoke run of two
//! teams.

#[path = "relay/checks.rs"]
mod checks;
#[path = "relay/circle.rs"]
mod circle;
#[path = "common/clock.rs"]
mod clock;
#[path = "relay/homes.rs"]
mod homes;
#[path = "relay/namespace.rs"]
mod namespace;
#[path = "relay/phases.rs"]
mod phases;
#[path = "relay/usage.rs"]
mod usage;
#[allow(dead_code, reason = "the notes' text is all this benchmark shares with `sync`")]
#[path = "sync/workload.rs"]
mod workload;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use circle::CircleProcess;
use phases::{CatchUp, Upload};
use usage::{Interval, Sample};

/// How big a run is: full under `cargo bench`, a quick smoke run under `cargo test`.
struct Size {
    /// Teams in each step, fewest first.
    steps: Vec<usize>,
    /// The step printed in full (else the largest).
    detailed: usize,
    /// Shift notes each team holds.
    notes: usize,
    /// Longest one phase of one step may take.
    phase_timeout: Duration,
    /// Teams whose devices catch up together, one wave after another; all at once if
    /// `None`.
    waves: Option<usize>,
}

/// Devices per team: the owner and four members.
const DEVICES_PER_TEAM: usize = 5;

/// One step's figures.
struct Step {
    teams: usize,
    upload: Upload,
    upload_usage: Interval,
    catch_up: CatchUp,
    catch_up_usage: Interval,
    /// The circle process's peak resident memory, in KiB.
    circle_peak_rss_kib: u64,
    /// Event lines the circle process printed.
    circle_events: usize,
    /// The circle node's checks of the sealed documents it holds, done again.
    checks: checks::Checked,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a smoke test.
    let full = args.iter().any(|a| a == "--bench");
    // Hundreds of nodes hold SQLite files, UDP sockets and relay connections.
    let descriptors = rlimit::increase_nofile_limit(u64::MAX)?;
    if full && let Some(status) = namespace::rerun_inside()? {
        std::process::exit(status.code().unwrap_or(1));
    }
    let mut size = if full {
        Size {
            // Up to 200 teams (1,000 devices): beyond 100 the devices' side of this one
            // machine, not the circle node, is what saturates (see the README).
            steps: vec![10, 25, 50, 100, 200],
            detailed: 100,
            notes: 300,
            phase_timeout: Duration::from_secs(300),
            waves: None,
        }
    } else {
        Size {
            steps: vec![2],
            detailed: 2,
            notes: 20,
            phase_timeout: Duration::from_secs(60),
            waves: None,
        }
    };
    if let Some(at) = args.iter().position(|a| a == "--teams") {
        let list = args.get(at + 1).context("--teams needs a list such as 50,100")?;
        size.steps = list.split(',').map(str::parse).collect::<Result<_, _>>()?;
    }
    if let Some(at) = args.iter().position(|a| a == "--waves") {
        let teams = args.get(at + 1).context("--waves needs a number of teams such as 10")?;
        size.waves = Some(teams.parse::<usize>()?.max(1));
    }
    let care = circle::care_binary()?;
    let most = size.steps.iter().copied().max().unwrap_or(0);
    println!(
        "care circle relay benchmark: teams of {DEVICES_PER_TEAM} devices, {} shift notes of \
         ~200 chars each; steps of {:?} teams; catch-up {}; {descriptors} descriptors \
         allowed; {}{}",
        size.notes,
        size.steps,
        size.waves.map_or("all at once".to_string(), |w| format!("in waves of {w} teams")),
        if namespace::inside() { "private network namespace" } else { "loopback" },
        if full { "" } else { "; smoke run" }
    );
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let root = tempfile::tempdir()?;
    let started = Instant::now();
    let built = homes::build(&root.path().join("built"), most, size.notes)?;
    println!(
        "built {most} teams' homes offline in {:.1} s (not timed)",
        started.elapsed().as_secs_f64()
    );
    print_step_header();
    let mut steps = Vec::new();
    for &teams in &size.steps {
        let dir = root.path().join(format!("step-{teams}"));
        let step = runtime.block_on(run_step(&care, &built[..teams], &dir, &size))?;
        print_step_line(&step);
        steps.push(step);
        // The step's homes are not needed again.
        std::fs::remove_dir_all(&dir)?;
    }
    if let Some(step) = steps.iter().find(|s| s.teams == size.detailed).or(steps.last()) {
        print_detailed(step, size.notes, size.waves);
    }
    println!(
        "this process (every device, whole run) peak RSS {:.0} MiB",
        mib(usage::own_peak_rss_kib()? * 1024)
    );
    Ok(())
}

/// Runs one step on fresh copies of the first teams' homes and a fresh circle node.
async fn run_step(
    care: &Path,
    built: &[homes::TeamHomes],
    dir: &Path,
    size: &Size,
) -> Result<Step> {
    let teams = homes::copy(built, dir)?;
    let circle = CircleProcess::start(care, &dir.join("circle"), teams.len())?;
    let pid = circle.pid();

    let phase = phases::Circle { tickets: &circle.tickets, home: &circle.home, pid };

    let before = Sample::take(pid)?;
    let upload = phases::upload(&teams, &phase, size.phase_timeout).await?;
    for team in &teams {
        homes::hand_log_to_members(team)?;
    }
    let ready = Sample::take(pid)?;
    let catch_up = match size.waves {
        None => phases::catch_up(&teams, &upload.targets, &phase, size.phase_timeout, true).await?,
        Some(wave) => {
            let mut waves = Vec::new();
            let last = teams.len().div_ceil(wave);
            for (teams, targets) in teams.chunks(wave).zip(upload.targets.chunks(wave)) {
                let stay_idle = waves.len() + 1 == last;
                let timeout = size.phase_timeout;
                waves.push(phases::catch_up(teams, targets, &phase, timeout, stay_idle).await?);
            }
            CatchUp::one_after_another(waves)?
        }
    };

    let circle_peak_rss_kib = usage::peak_rss_kib(pid)?;
    let home = circle.home.clone();
    let circle_events = circle.stop()?;
    let checks = checks::again(&home)?;
    Ok(Step {
        teams: teams.len(),
        upload_usage: upload.end.since(&before),
        upload,
        catch_up_usage: catch_up.end.since(&ready),
        catch_up,
        circle_peak_rss_kib,
        circle_events,
        checks,
    })
}

fn print_step_header() {
    println!(
        "{:>5} {:>7} {:>8} {:>8} {:>8} {:>9} {:>6} {:>6} {:>6} {:>9} {:>8} {:>11} {:>8} {:>7} {:>7} {:>10} {:>11}",
        "teams",
        "devices",
        "upload s",
        "circle%",
        "checks s",
        "catchup s",
        "p50 s",
        "p95 s",
        "max s",
        "devices/s",
        "circle%",
        "circle ms/dev",
        "devices%",
        "others%",
        "iowait%",
        "circle MiB",
        "idle us/dev/s"
    );
}

/// One line per step: the upload's time and circle CPU, and the time the circle node's
/// checks of what it took in take when done again; then the catch-up's figures.
/// CPU is in percent of one core: the circle node (and its CPU milliseconds per device
/// caught up), the devices' process, every other process on the machine, and the
/// cores' time waiting for IO; last, the circle node's CPU per connected device per
/// second while every device stays connected and idle after the catch-up.
fn print_step_line(step: &Step) {
    let c = &step.catch_up;
    let mut times = c.per_device.clone();
    let u = &step.catch_up_usage;
    println!(
        "{:>5} {:>7} {:>8.2} {:>8.0} {:>8.2} {:>9.2} {:>6.2} {:>6.2} {:>6.2} {:>9.1} {:>8.0} {:>11.1} {:>8.0} {:>7.0} {:>7.0} {:>10.1} {:>11.0}",
        step.teams,
        step.teams * DEVICES_PER_TEAM,
        step.upload.wall.as_secs_f64(),
        step.upload_usage.circle_percent(),
        step.checks.time.as_secs_f64(),
        c.wall.as_secs_f64(),
        quantile_s(&mut times, 0.5),
        quantile_s(&mut times, 0.95),
        quantile_s(&mut times, 1.0),
        c.per_device.len() as f64 / c.wall.as_secs_f64(),
        u.circle_percent(),
        1000.0 * u.circle_cpu_s / c.per_device.len() as f64,
        u.devices_percent(),
        u.others_percent(),
        u.iowait_percent(),
        mib(step.circle_peak_rss_kib * 1024),
        idle_us_per_device_s(&c.idle, c.sessions.0),
    );
}

fn print_detailed(step: &Step, notes: usize, waves: Option<usize>) {
    let (up, cu) = (&step.upload, &step.catch_up);
    let mut per_team = up.per_team.clone();
    let mut per_device = cu.per_device.clone();
    println!(
        "\n{} teams, {} devices, {notes} notes per team:",
        step.teams,
        step.teams * DEVICES_PER_TEAM
    );
    println!(
        "upload: {} owners add the circle node and sync their teams to it in {:.2} s; a team \
         is held by the circle node after p50 {:.2} s, p95 {:.2} s, max {:.2} s",
        step.teams,
        up.wall.as_secs_f64(),
        quantile_s(&mut per_team, 0.5),
        quantile_s(&mut per_team, 0.95),
        quantile_s(&mut per_team, 1.0),
    );
    print_usage(&step.upload_usage, up.bytes, "the owners");
    println!(
        "catch-up: {} devices come online {} and all hold their team's documents after \
         {:.2} s ({:.1} devices/s); per device p50 {:.2} s, p95 {:.2} s, max {:.2} s; \
         sessions open at the end{}: {} with the circle node, {} between members",
        cu.per_device.len(),
        waves.map_or("at once".to_string(), |w| format!("in waves of {w} teams' devices")),
        cu.wall.as_secs_f64(),
        cu.per_device.len() as f64 / cu.wall.as_secs_f64(),
        quantile_s(&mut per_device, 0.5),
        quantile_s(&mut per_device, 0.95),
        quantile_s(&mut per_device, 1.0),
        if waves.is_some() { " (of the last wave)" } else { "" },
        cu.sessions.0,
        cu.sessions.1,
    );
    print_usage(&step.catch_up_usage, cu.bytes, "the devices");
    println!(
        "idle after: with every device still connected ({} sessions with the circle node, {} \
         between members), the circle node used {:.2} s of CPU in {:.1} s: {:.0} us per \
         connected device per second; loopback {:.2} MiB",
        cu.sessions.0,
        cu.sessions.1,
        cu.idle.circle_cpu_s,
        cu.idle.wall_s,
        idle_us_per_device_s(&cu.idle, cu.sessions.0),
        mib(cu.idle.loopback_bytes),
    );
    print_checks(step);
    println!(
        "circle process: peak RSS {:.1} MiB, {} descriptors open at the end, {} events printed",
        mib(step.circle_peak_rss_kib * 1024),
        cu.circle_fds,
        step.circle_events
    );
}

/// What checking the sealed documents it took in cost the circle node, against its CPU
/// per device over the upload and the catch-up.
fn print_checks(step: &Step) {
    let devices = step.catch_up.per_device.len().max(1) as f64;
    let cpu_s = step.upload_usage.circle_cpu_s + step.catch_up_usage.circle_cpu_s;
    let checks_s = step.checks.time.as_secs_f64();
    println!(
        "checks: the circle node holds {} sealed documents with {} change signatures; checking \
         them again as it did when taking them in (sealer, authors, signatures, each signer's \
         right) takes {:.2} s, {:.0}% of its CPU in the upload ({:.2} s). Over the upload and \
         the catch-up it spent {:.1} ms of CPU per device caught up with the checks, about \
         {:.1} ms without them",
        step.checks.sealed,
        step.checks.signatures,
        checks_s,
        100.0 * checks_s / step.upload_usage.circle_cpu_s.max(f64::EPSILON),
        step.upload_usage.circle_cpu_s,
        1000.0 * cpu_s / devices,
        1000.0 * (cpu_s - checks_s) / devices,
    );
}

fn print_usage(u: &Interval, (sent, received): (u64, u64), who: &str) {
    println!(
        "  CPU: circle node {:.1} s ({:.0}% of one core), devices' process {:.1} s ({:.0}%), \
         other processes {:.0}%; machine {:.0}% busy of 200%, {:.0}% waiting for IO",
        u.circle_cpu_s,
        u.circle_percent(),
        u.devices_cpu_s,
        u.devices_percent(),
        u.others_percent(),
        u.machine_percent(),
        u.iowait_percent(),
    );
    println!(
        "  bytes: sync frames sent by {who} {:.2} MiB, received {:.2} MiB; loopback {:.2} MiB",
        mib(sent),
        mib(received),
        mib(u.loopback_bytes),
    );
}

/// The circle node's CPU while idle, in microseconds per device connected to it per
/// second.
fn idle_us_per_device_s(idle: &Interval, devices: usize) -> f64 {
    if devices == 0 || idle.wall_s <= 0.0 {
        return 0.0;
    }
    1e6 * idle.circle_cpu_s / devices as f64 / idle.wall_s
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The `q` quantile (nearest rank) of `samples`, in seconds; zero when empty.
fn quantile_s(samples: &mut [Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let index = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[index].as_secs_f64()
}
