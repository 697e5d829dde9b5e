//! What the kernel counts, read from /proc: a process's CPU time, peak memory and open
//! descriptors, the machine's CPU time by state, and the bytes through loopback.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Clock ticks per second in /proc's CPU times: Linux's `USER_HZ`, 100 on every
/// architecture it reports to user space with.
const USER_HZ: f64 = 100.0;

/// The counters at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    at: Instant,
    /// CPU seconds (user + system) of the circle node's process.
    circle_cpu_s: f64,
    /// CPU seconds of this benchmark's process, which runs every device.
    devices_cpu_s: f64,
    /// The machine's CPU seconds, all cores: (busy, waiting for IO).
    machine_s: (f64, f64),
    /// Bytes through the loopback interface (each packet is counted once).
    loopback_bytes: u64,
}

/// What happened between two samples.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Interval {
    /// Wall time.
    pub wall_s: f64,
    /// CPU seconds used by the circle node.
    pub circle_cpu_s: f64,
    /// CPU seconds used by the devices' process.
    pub devices_cpu_s: f64,
    /// Busy CPU seconds of the whole machine (both cores, every process).
    pub machine_busy_s: f64,
    /// CPU seconds the machine sat idle waiting for IO (fsyncs).
    pub machine_iowait_s: f64,
    /// Bytes through loopback.
    pub loopback_bytes: u64,
}

impl Sample {
    /// Reads every counter now; `circle` is the circle node's process id.
    pub(crate) fn take(circle: u32) -> Result<Sample> {
        Ok(Sample {
            at: Instant::now(),
            circle_cpu_s: cpu_s(&proc_path(circle, "stat"))?,
            devices_cpu_s: cpu_s(&PathBuf::from("/proc/self/stat"))?,
            machine_s: machine_cpu_s()?,
            loopback_bytes: loopback_bytes()?,
        })
    }

    /// What changed since `earlier`.
    pub(crate) fn since(&self, earlier: &Sample) -> Interval {
        Interval {
            wall_s: self.at.duration_since(earlier.at).as_secs_f64(),
            circle_cpu_s: self.circle_cpu_s - earlier.circle_cpu_s,
            devices_cpu_s: self.devices_cpu_s - earlier.devices_cpu_s,
            machine_busy_s: self.machine_s.0 - earlier.machine_s.0,
            machine_iowait_s: self.machine_s.1 - earlier.machine_s.1,
            loopback_bytes: self.loopback_bytes - earlier.loopback_bytes,
        }
    }
}

impl Interval {
    /// The circle node's CPU use in percent of one core (200% is both cores).
    pub(crate) fn circle_percent(&self) -> f64 {
        percent(self.circle_cpu_s, self.wall_s)
    }

    /// The devices' process's CPU use in percent of one core.
    pub(crate) fn devices_percent(&self) -> f64 {
        percent(self.devices_cpu_s, self.wall_s)
    }

    /// The CPU use of every other process on the machine, in percent of one core: what
    /// competed with the benchmark for the two cores.
    pub(crate) fn others_percent(&self) -> f64 {
        let others_s = self.machine_busy_s - self.circle_cpu_s - self.devices_cpu_s;
        percent(others_s.max(0.0), self.wall_s)
    }

    /// The whole machine's CPU use in percent of one core (at most 200% here).
    pub(crate) fn machine_percent(&self) -> f64 {
        percent(self.machine_busy_s, self.wall_s)
    }

    /// The time the machine's cores waited for IO, in percent of one core.
    pub(crate) fn iowait_percent(&self) -> f64 {
        percent(self.machine_iowait_s, self.wall_s)
    }
}

/// A process's peak resident memory (`VmHWM`), in KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(proc_path(pid, "status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    let kib = line.split_whitespace().nth(1).context("an empty VmHWM")?;
    Ok(kib.parse()?)
}

/// This process's peak resident memory, in KiB.
pub(crate) fn own_peak_rss_kib() -> Result<u64> {
    peak_rss_kib(std::process::id())
}

/// How many file descriptors a process has open.
pub(crate) fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(proc_path(pid, "fd"))?.count())
}

fn percent(cpu_s: f64, wall_s: f64) -> f64 {
    if wall_s > 0.0 { 100.0 * cpu_s / wall_s } else { 0.0 }
}

fn proc_path(pid: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

/// User + system CPU seconds of every thread of a process, from its `stat` file.
fn cpu_s(stat: &PathBuf) -> Result<f64> {
    let text = std::fs::read_to_string(stat).with_context(|| format!("reading {stat:?}"))?;
    // The command name, in parentheses, may hold spaces: count fields after it.
    let rest = text.rsplit_once(')').context("a stat file without a command name")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (man 5 proc).
    let ticks: u64 = fields.get(11).context("no utime")?.parse::<u64>()?
        + fields.get(12).context("no stime")?.parse::<u64>()?;
    Ok(ticks as f64 / USER_HZ)
}

/// The machine's CPU seconds over all cores: (busy, waiting for IO).
fn machine_cpu_s() -> Result<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text.lines().find(|l| l.starts_with("cpu ")).context("no cpu line")?;
    let ticks: Vec<u64> =
        line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let [user, nice, system, _idle, iowait, irq, softirq, steal, ..] = ticks[..] else {
        bail!("a cpu line with fewer than 8 fields");
    };
    let busy = user + nice + system + irq + softirq + steal;
    Ok((busy as f64 / USER_HZ, iowait as f64 / USER_HZ))
}

/// Bytes received by the loopback interface, which equal the bytes sent through it.
fn loopback_bytes() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/dev")?;
    let line = text.lines().find(|l| l.trim_start().starts_with("lo:")).context("no lo")?;
    let fields = line.split_once(':').context("a malformed lo line")?.1;
    Ok(fields.split_whitespace().next().context("no lo bytes")?.parse()?)
}
