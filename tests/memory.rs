//! Memory per connection, measured: a member of the team sends the largest frames it may,
//! one after another, and the receiving device's peak resident memory grows by a few
//! frames' worth, not by all it was sent. Its own test binary, so that nothing else runs
//! in the process whose peak is read.

use std::time::Duration;

// Only `eventually` of the shared helpers is needed here.
#[allow(dead_code)]
mod common;

use anyhow::{Context, Result, bail};
use care::{DocKind, Home, NetConfig, Node, OpBody, Role};
use care_core::{DeviceKey, MemberId};
use care_net::{bind, endpoint_addr, framing};
use care_sync::{FRAME_BYTES_MAX, Frame, PROTOCOL_VERSION, TeamSummary};
use common::eventually;

/// Largest frames sent.
const FRAMES_SENT: usize = 8;
/// Most the process's peak may grow by: the frames a connection reads ahead of its
/// session, the one being handled, and the sender's own buffers, with room to spare;
/// well below the `FRAMES_SENT` frames sent (the run measured here grew by about 150 MiB).
const PEAK_GROWTH_MAX_BYTES: usize = 5 * FRAME_BYTES_MAX;

/// The process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss() -> Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    let kib: usize = line.split_whitespace().nth(1).context("a number")?.parse()?;
    Ok(kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_frames_a_member_may_send_do_not_pile_up() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = Node::start(Home::init(dir.path(), "Ada")?, &NetConfig::loopback()).await?;
    let team = node.with_home(move |h| h.create_team("Ada's team")).await?;
    // A worker's device whose key the test holds: a member who misbehaves.
    let key = [7; 32];
    let device = DeviceKey::from_seed(key).device_id();
    let member = MemberId::from_bytes([7; 16]);
    node.with_home(move |h| {
        h.author_op(
            team,
            OpBody::AddMember { member, name: "Wil".into(), role: Role::Worker, hats: vec![] },
        )?;
        h.author_op(team, OpBody::AddDevice { member, device, label: "phone".into() })
    })
    .await?;

    let worker = bind(key, &NetConfig::loopback()).await?;
    let addr = node.addr();
    let target = endpoint_addr(addr.device, &addr.addrs, None).context("address")?;
    let conn = worker.connect(target, care_sync::ALPN).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let summary = TeamSummary { team, ops_hash: [0; 16], docs_hash: [0; 16] };
    let hello = Frame::Hello { version: PROTOCOL_VERSION, teams: vec![summary] };
    framing::write_frame(&mut send, &hello.encode()).await?;
    // Read what the node answers, so its writes never wait on us.
    let reader = tokio::spawn(async move { while framing::read_frame(&mut recv).await.is_ok() {} });
    eventually("the node admits the worker", || async { Ok(node.connected().contains(&device)) })
        .await?;

    // The largest sync frame: a message of garbage for the plan, which the worker may read.
    let kind = DocKind::Plan;
    let overhead = Frame::Sync {
        team,
        doc: kind.doc_id(team),
        kind,
        message: Vec::new(),
        signatures: Vec::new(),
    }
    .encode()
    .len();
    let message = vec![0x42; FRAME_BYTES_MAX - overhead - 8];
    let frame = Frame::Sync { team, doc: kind.doc_id(team), kind, message, signatures: Vec::new() }
        .encode();
    if frame.len() > FRAME_BYTES_MAX {
        bail!("the test frame is {} bytes, over the limit", frame.len());
    }
    let before = peak_rss()?;
    for _ in 0..FRAMES_SENT {
        framing::write_frame(&mut send, &frame).await?;
    }
    let _ = send.finish();
    // Wait until the node has handled them all (it refuses each for that document).
    eventually("the node has read every frame", || async {
        // The Hello, then every large frame.
        Ok(node.traffic().frames_received > FRAMES_SENT as u64)
    })
    .await?;
    let grown = peak_rss()?.saturating_sub(before);
    println!(
        "{FRAMES_SENT} frames of {} MiB sent; the process's peak grew by {} MiB",
        FRAME_BYTES_MAX >> 20,
        grown >> 20
    );
    assert!(
        grown <= PEAK_GROWTH_MAX_BYTES,
        "the peak grew by {} MiB for {FRAMES_SENT} frames of {} MiB",
        grown >> 20,
        FRAME_BYTES_MAX >> 20
    );
    reader.abort();
    worker.close().await;
    node.shutdown().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
