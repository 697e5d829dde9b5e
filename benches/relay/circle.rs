//! The circle node as its own process: the built `care relay`, so that its memory, CPU
//! time and descriptors are its own and can be read from /proc.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};
use care::CircleTicket;

/// A running `care relay`.
pub(crate) struct CircleProcess {
    child: Child,
    /// Its one-time tickets, one per team, as it printed them.
    pub tickets: Vec<CircleTicket>,
    /// Its home directory.
    pub home: PathBuf,
    /// Counts the event lines it prints after its ticket, so its stdout never fills.
    events: Option<JoinHandle<usize>>,
}

impl CircleProcess {
    /// Starts `care --home HOME relay --listen 127.0.0.1:0 --tickets TEAMS --json` and
    /// reads its tickets.
    pub(crate) fn start(care: &Path, home: &Path, teams: usize) -> Result<CircleProcess> {
        let mut child = Command::new(care)
            .arg("--home")
            .arg(home)
            .args(["--json", "relay", "--listen", "127.0.0.1:0", "--tickets", &teams.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", care.display()))?;
        let mut stdout = BufReader::new(child.stdout.take().context("the relay's stdout")?);
        let mut first = String::new();
        stdout.read_line(&mut first)?;
        if first.is_empty() {
            let status = child.wait()?;
            bail!("`care relay` printed no ticket and exited with {status}");
        }
        let printed: serde_json::Value = serde_json::from_str(&first)
            .with_context(|| format!("`care relay` printed {first:?}, not JSON"))?;
        let tickets = printed["tickets"]
            .as_array()
            .context("`care relay` printed no tickets")?
            .iter()
            .map(|t| Ok(t.as_str().context("a ticket is not a string")?.parse::<CircleTicket>()?))
            .collect::<Result<Vec<_>>>()?;
        let events = Some(std::thread::spawn(move || count_lines(stdout)));
        Ok(CircleProcess { child, tickets, home: home.to_owned(), events })
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it (its figures must have been read before) and returns how many events it
    /// printed.
    pub(crate) fn stop(mut self) -> Result<usize> {
        self.child.kill()?;
        self.child.wait()?;
        let events = self.events.take().context("the relay's output reader")?;
        events.join().map_err(|_| anyhow::anyhow!("the relay's output reader panicked"))
    }
}

impl Drop for CircleProcess {
    /// A step that failed leaves no circle node behind (nor its hold on our output).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `care` binary built in the same target directory as this benchmark: built by
/// `cargo build --release -p care-cli` for `cargo bench`, and by `cargo test
/// --workspace --all-targets` for the smoke run.
pub(crate) fn care_binary() -> Result<PathBuf> {
    // This benchmark runs as target/<profile>/deps/relay-<hash>.
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(Path::parent).context("the benchmark's directory")?;
    let care = profile_dir.join("care");
    if !care.exists() {
        let profile = profile_dir.file_name().unwrap_or_default().to_string_lossy();
        let flag = if profile == "release" { " --release" } else { "" };
        bail!(
            "{} is missing: the circle node runs as the `care` binary; build it first with \
             `cargo build{flag} -p care-cli`",
            care.display()
        );
    }
    Ok(care)
}

fn count_lines(stdout: BufReader<ChildStdout>) -> usize {
    stdout.lines().map_while(Result::ok).count()
}
