//! LAN discovery: two devices in the same room, no internet and no server, find each
//! other by mDNS from a ticket that carries no address, join and sync both ways; a device
//! without LAN discovery, given the same kind of ticket, fails clearly.
//!
//! Multicast never leaves a private network namespace: the parent test re-runs this
//! binary on the `lan_child` test inside `unshare -n`, where only loopback exists, with
//! `CARE_LAN_CHILD` set. Without `unshare`, `ip` (iproute2) or the right to use them the
//! test prints why and passes, unless `CARE_LAN_REQUIRED` is set.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use anyhow::{Context, Result, bail, ensure};
use care::{Home, JoinTicket, NetConfig, NewNote, Node, Role};
use common::{SETTLE_MS, eventually, note_texts};

/// Longest the test waits for discovery, a join, or a note to arrive.
/// Longest the child process may run before it is killed.
const CHILD_TIMEOUT_MS: u64 = 120_000;
/// Set in the child, which runs inside the network namespace, to the parent's namespace.
const CHILD_ENV: &str = "CARE_LAN_CHILD";
/// Set to make a missing `unshare` or `ip` a failure instead of a skip.
const REQUIRED_ENV: &str = "CARE_LAN_REQUIRED";
/// Printed by the child once it has checked its namespace is new and holds only loopback.
const INSIDE_MARKER: &str = "inside a private network namespace";
/// Prepares loopback for multicast, then becomes the child test.
const NAMESPACE_SCRIPT: &str = "ip link set lo up && ip link set lo multicast on \
    && ip route add 224.0.0.0/4 dev lo && exec \"$0\" \"$@\"";

#[test]
fn devices_on_one_lan_find_each_other_without_addresses() -> Result<()> {
    if let Err(reason) = namespaces_available() {
        ensure!(std::env::var_os(REQUIRED_ENV).is_none(), "{REQUIRED_ENV} is set: {reason}");
        println!("skipped: cannot make a private network namespace: {reason}");
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let mut child = Command::new("unshare")
        .args(["-n", "sh", "-c", NAMESPACE_SCRIPT])
        .arg(&exe)
        .args(["--exact", "lan_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, network_namespace()?)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the child in a network namespace")?;
    let stdout = read_all(child.stdout.take().context("child stdout")?);
    let stderr = read_all(child.stderr.take().context("child stderr")?);
    let deadline = Instant::now() + Duration::from_millis(CHILD_TIMEOUT_MS);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().map_err(|_| anyhow::anyhow!("the stdout reader panicked"))?;
    let stderr = stderr.join().map_err(|_| anyhow::anyhow!("the stderr reader panicked"))?;
    println!("--- child output ---\n{stdout}{stderr}--- end of child output ---");
    let Some(status) = status else { bail!("the child ran longer than {CHILD_TIMEOUT_MS} ms") };
    ensure!(status.success(), "the child failed ({status}); its output is above");
    ensure!(stdout.contains(INSIDE_MARKER), "the child test did not run; its output is above");
    Ok(())
}

/// The two devices in the room, and one without LAN discovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lan_child() -> Result<()> {
    let Ok(parent) = std::env::var(CHILD_ENV) else { return Ok(()) };
    let (namespace, interfaces) = (network_namespace()?, interfaces()?);
    ensure!(
        namespace != parent && interfaces == ["lo"],
        "refusing to send multicast outside a private namespace \
         ({namespace}, parent's {parent}, interfaces {interfaces:?})"
    );
    println!("{INSIDE_MARKER}: {namespace} (parent's {parent}), interfaces {interfaces:?}");
    let lan = NetConfig { lan: true, ..NetConfig::loopback() };
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let a = start(dirs[0].path(), "Ada", &lan).await?;
    let team = a.with_home(move |h| h.create_team("Ada's team")).await?;
    a.with_home(move |h| h.team("")?.add_note(&note("from Ada"), None)).await?;
    println!("Ada listens at {:?}", a.addr().addrs);

    // Without LAN discovery, a ticket with no address leads nowhere.
    let c = start(dirs[2].path(), "Cal", &NetConfig::loopback()).await?;
    let ticket = without_addrs(a.invite(&team.to_string(), Role::Worker, "Cal", valid()).await?);
    let started = Instant::now();
    let refused = tokio::time::timeout(Duration::from_millis(SETTLE_MS), c.join(&ticket))
        .await
        .context("a join with no address and no LAN discovery did not fail in time")?;
    let Err(error) = refused else { bail!("a device without LAN discovery joined") };
    println!("without LAN discovery the join failed in {:?}: {error}", started.elapsed());
    ensure!(
        c.with_home(move |h| h.teams()).await?.is_empty(),
        "a device that failed to join holds a team"
    );
    c.shutdown().await;

    // With it, the same kind of ticket is enough.
    let b = start(dirs[1].path(), "Bea", &lan).await?;
    let ticket = without_addrs(a.invite(&team.to_string(), Role::Worker, "Bea", valid()).await?);
    let started = Instant::now();
    let joined = tokio::time::timeout(Duration::from_millis(SETTLE_MS), b.join(&ticket))
        .await
        .context("discovery and join took too long")??;
    ensure!(joined == team, "joined {joined}, not {team}");
    let join_took = started.elapsed();
    eventually("Bea has Ada's note", || async { Ok(note_texts(&b, team).await? == ["from Ada"]) })
        .await?;
    let sync_took = started.elapsed();
    println!("discovery + join took {join_took:?}; Ada's note arrived after {sync_took:?}");

    let started = Instant::now();
    b.with_home(move |h| h.team("")?.add_note(&note("from Bea"), None)).await?;
    eventually("Ada has Bea's note", || async {
        Ok(note_texts(&a, team).await? == ["from Ada", "from Bea"])
    })
    .await?;
    println!("Bea's note reached Ada in {:?}", started.elapsed());
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

/// Whether this machine lets the test make a network namespace and set up its loopback.
fn namespaces_available() -> std::result::Result<(), String> {
    let probe = Command::new("unshare")
        .args(["-n", "ip", "link", "set", "lo", "up"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run `unshare` (util-linux): {e}"))?;
    if probe.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&probe.stderr);
    Err(format!("`unshare -n ip link set lo up` failed ({}): {}", probe.status, stderr.trim()))
}

/// The identity of this process's network namespace, such as `net:[4026531840]`.
fn network_namespace() -> Result<String> {
    let link = std::fs::read_link("/proc/self/ns/net").context("reading the network namespace")?;
    Ok(link.to_string_lossy().into_owned())
}

/// The network interfaces of this process's network namespace (`/sys/class/net` would
/// show the namespace sysfs was mounted in).
fn interfaces() -> Result<Vec<String>> {
    let table = std::fs::read_to_string("/proc/self/net/dev").context("listing interfaces")?;
    let mut names: Vec<String> = table
        .lines()
        .filter_map(|line| line.split_once(':').map(|(name, _)| name.trim().to_owned()))
        .collect();
    names.sort();
    Ok(names)
}

fn read_all(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

async fn start(dir: &Path, name: &str, config: &NetConfig) -> Result<Node> {
    Ok(Node::start(Home::init(dir, name)?, config).await?)
}

fn note(text: &str) -> NewNote {
    NewNote { text: text.into(), ..NewNote::default() }
}

fn valid() -> Duration {
    Duration::from_secs(600)
}

/// The ticket with its addresses removed: the device must be found some other way.
fn without_addrs(ticket: JoinTicket) -> JoinTicket {
    JoinTicket { addrs: vec![], ..ticket }
}
