//! Live edits on a busy node (release mode: `cargo bench --bench busy`). One node (Ada's,
//! the team's owner) has three workers' devices connected: Bea and Cal edit live, Sam
//! comes online with a month of notes of about 50 MiB written offline. Bea writes a note,
//! waits until Cal's device has it (through Ada's node), and writes the next; the figure
//! is how long each note takes to reach Cal, first on a quiet node, then while Ada's node
//! receives Sam's 50 MiB and passes it on to Bea and Cal. Every device is a real node on
//! loopback with its SQLite home on disk.
//!
//! `-- --edits N` makes N live edits on the quiet node (100 by default): they all go into
//! one month, so 1,500 show what a month that grows costs each edit (it is compacted as it
//! grows).
//!
//! Without `--bench` (as `cargo test --workspace --all-targets` runs it) it is a smoke run
//! with a small document.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use care::{
    DocKind, Home, NetConfig, NewNote, Node, NodeOptions, NoteStream, PeerEvent, Role, SyncEvent,
    TeamId, Timestamp,
};
use tokio::sync::broadcast;

/// Longest the whole transfer may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest one edit may take to arrive.
const EDIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of each of Sam's notes: random letters, which do not compress.
const BIG_NOTE_BYTES: usize = 60 * 1024;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let (document_mib, mut quiet_edits) = if full { (50, 100) } else { (1, 5) };
    if let Some(at) = args.iter().position(|a| a == "--edits") {
        let given = args.get(at + 1).map(|n| n.parse::<usize>());
        quiet_edits = match given {
            Some(Ok(n)) if n > 0 => n,
            _ => bail!("--edits takes how many live edits the quiet node makes, above 0"),
        };
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(document_mib, quiet_edits))
}

async fn run(document_mib: usize, quiet_edits: usize) -> Result<()> {
    let dirs =
        [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let quiet = NodeOptions { dial_known_devices: false };
    let net = NetConfig::loopback();
    let ada = Node::start_with(Home::init(dirs[0].path(), "Ada")?, &net, quiet).await?;
    let team = ada.with_home(|h| h.create_team("Rosa's team")).await?;
    let mut devices = Vec::new();
    for (dir, name) in dirs[1..].iter().zip(["Bea", "Cal", "Sam"]) {
        let node = Node::start_with(Home::init(dir.path(), name)?, &net, quiet).await?;
        let ticket =
            ada.invite(&team.to_string(), Role::Worker, name, Duration::from_secs(600)).await?;
        node.join(&ticket).await?;
        devices.push(node);
    }
    let sam = devices.pop().context("Sam's device")?;
    let (bea, cal) = (&devices[0], &devices[1]);

    // Sam writes last month's notes offline: about `document_mib` MiB in one document.
    sam.shutdown().await;
    let mut home = Home::open(dirs[3].path())?;
    let last_month = Timestamp(home.now().as_millis() - 31 * 86_400_000);
    home.set_clock(Fixed(last_month));
    let big = DocKind::Notes { stream: NoteStream::Care, month: last_month.month() }.doc_id(team);
    let stored = |home: &Home| -> Result<u64> {
        Ok(home.store().doc_summary(big)?.map_or(0, |d| d.stored_bytes()))
    };
    let target = document_mib as u64 * 1024 * 1024;
    let (mut seed, mut notes) = (0x2545_f491_4f6c_dd1d_u64, 0);
    // Compaction shrinks what was written: write on until the compacted document is as big.
    while stored(&home)? < target {
        while stored(&home)? < target {
            let text: String = (0..BIG_NOTE_BYTES).map(|_| letter(&mut seed)).collect();
            let note = NewNote { text, ..NewNote::default() };
            home.team("")?.add_note(&note, Some(NoteStream::Care))?;
            notes += 1;
        }
        home.compact()?;
    }
    let bytes = stored(&home)?;
    println!("Sam's device holds {notes} notes of last month: {:.1} MiB stored", mib(bytes));
    drop(home);

    let mut cal_events = cal.events();
    let (quiet_ms, _) = edits(bea, &mut cal_events, team, quiet_edits, None).await?;

    // Sam comes online: Ada's node receives the document, then passes it to Bea and Cal.
    let sam = Node::start_with(Home::open(dirs[3].path())?, &net, quiet).await?;
    let started = Instant::now();
    sam.connect(&ada.addr()).await?;
    let transfer = async {
        loop {
            let mut held = 0;
            for node in [&ada, bea, cal] {
                if node.with_home(move |h| h.store().doc_summary(big)).await?.is_some() {
                    held += 1;
                }
            }
            if held == 3 {
                return anyhow::Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let busy = edits(bea, &mut cal_events, team, usize::MAX, Some(Box::pin(transfer)));
    let (busy_ms, transfer) = tokio::time::timeout(TRANSFER_TIMEOUT, busy)
        .await
        .context("the document did not reach every device in time")??;
    let transfer = transfer.context("the edits stopped before the transfer ended")?;
    println!(
        "Sam's {:.1} MiB document reached Ada's, Bea's and Cal's homes in {:.2} s",
        mib(bytes),
        transfer.as_secs_f64()
    );
    report("quiet node", quiet_ms);
    report("while Ada's node receives and passes on the document", busy_ms);
    sam.shutdown().await;
    for node in devices {
        node.shutdown().await;
    }
    ada.shutdown().await;
    Ok(())
}

/// Bea writes notes one after another until `count` are written or `until` finishes;
/// returns how long each took to reach Cal, in ms, and what `until` returned.
async fn edits(
    bea: &Node,
    cal_events: &mut broadcast::Receiver<PeerEvent>,
    team: TeamId,
    count: usize,
    mut until: Option<Until<'_>>,
) -> Result<(Vec<f64>, Option<Duration>)> {
    let mut times = Vec::new();
    let mut finished = None;
    let this_month = DocKind::Notes { stream: NoteStream::Care, month: month_now() }.doc_id(team);
    while times.len() < count {
        let started = Instant::now();
        let text = format!("live note {}", times.len());
        bea.with_home(move |h| h.team("")?.add_note(&NewNote { text, ..NewNote::default() }, None))
            .await?;
        let arrived = async {
            loop {
                match cal_events.recv().await {
                    Ok(PeerEvent::Sync { event: SyncEvent::DocChanged { doc, .. }, .. })
                        if doc == this_month =>
                    {
                        return Ok(());
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(e) => bail!("Cal's events ended: {e}"),
                }
            }
        };
        tokio::time::timeout(EDIT_TIMEOUT, arrived)
            .await
            .context("a live edit did not arrive")??;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        if let Some(until) = until.as_mut()
            && let Some(done) = futures_now(until)
        {
            finished = Some(done?);
            break;
        }
    }
    Ok((times, finished))
}

/// What the busy edits run until: the transfer reaching every device.
type Until<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Duration>> + Send + 'a>>;

/// The output of a future if it is ready now.
fn futures_now<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    match std::pin::Pin::new(future).poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

fn report(what: &str, mut times: Vec<f64>) {
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "live edit Bea -> Ada -> Cal, {what}: {} edits, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        times.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

fn month_now() -> care::Month {
    care::Clock::now(&care::SystemClock).month()
}

/// A clock stopped at one moment.
struct Fixed(Timestamp);

impl care::Clock for Fixed {
    fn now(&self) -> Timestamp {
        self.0
    }
}

/// A random lowercase letter (xorshift).
fn letter(seed: &mut u64) -> char {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    char::from(b'a' + (*seed % 26) as u8)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
