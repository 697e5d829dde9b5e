//! samod 0.16 over TCP on loopback: two repos with in-memory storage, the dialing side's
//! stream wrapped to count the bytes on the wire, TCP_NODELAY set on both ends.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use automerge::ChangeHash;
use samod::storage::InMemoryStorage;
use samod::{
    AcceptorHandle, BackoffConfig, DialError, Dialer, DialerHandle, DocHandle, DocumentId, Repo,
    RepoEvent, RepoObserver, Transport, Url,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::timeout_at;

use super::cpu::process_cpu;
use super::workload::{add_note, build_notes_doc, has_all};
use super::{Figures, SCENARIO_TIMEOUT, Size, median, median_count, quantile};

/// Pause between live edits, so each starts on a quiet connection.
const LIVE_GAP: Duration = Duration::from_millis(10);
/// How long the byte counter must stay still for an exchange to count as finished.
const QUIET: Duration = Duration::from_millis(200);
/// Poll interval while waiting for a connection to close or traffic to stop.
const POLL: Duration = Duration::from_millis(5);

/// Runs every samod scenario at `size`. Each repo has a thread of its own: the one that
/// holds the documents runs on a one-worker runtime, the one that dials on this thread.
pub(crate) fn run(size: &Size) -> Result<Figures> {
    let holder_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("samod-holder")
        .enable_all()
        .build()
        .context("starting the holder's tokio runtime")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the dialer's tokio runtime")?;
    let holder = holder_runtime.handle().clone();
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + SCENARIO_TIMEOUT;
        let (catch_up_ms, catch_up_cpu_ms, catch_up_bytes, live_p50_ms, live_p90_ms) =
            timeout_at(deadline, catch_up_and_live(size, &holder)).await.map_err(|_| {
                anyhow!("samod catch-up and live edits took over {SCENARIO_TIMEOUT:?}")
            })??;
        let deadline = tokio::time::Instant::now() + SCENARIO_TIMEOUT;
        let (reconnect_ms, reconnect_bytes) = timeout_at(deadline, reconnect(size, &holder))
            .await
            .map_err(|_| anyhow!("samod reconnect took over {SCENARIO_TIMEOUT:?}"))??;
        Ok(Figures {
            catch_up_ms,
            catch_up_cpu_ms,
            catch_up_bytes,
            reconnect_ms,
            reconnect_bytes_per_doc: reconnect_bytes as f64 / size.docs as f64,
            reconnect_round_trips: None,
            live_p50_ms,
            live_p90_ms,
        })
    })
}

/// A repo and a signal raised each time it has applied a sync message.
struct Peer {
    /// The repo.
    repo: Repo,
    /// Notified after every sync message this repo receives.
    received: Arc<Notify>,
    /// Where the repo's tasks run.
    runtime: Handle,
}

impl Peer {
    /// A repo with in-memory storage whose tasks run on `runtime`.
    async fn new(runtime: Handle) -> Self {
        let received = Arc::new(Notify::new());
        let repo = Repo::builder(runtime.clone())
            .with_storage(InMemoryStorage::new())
            .with_observer(ReceivedSignal(received.clone()))
            .load()
            .await;
        Peer { repo, received, runtime }
    }

    /// Waits until `handle`'s document holds every change in `heads`.
    async fn wait_for(&self, handle: &DocHandle, heads: &[ChangeHash]) -> Result<()> {
        loop {
            let notified = self.received.notified();
            if handle.with_document(|doc| has_all(doc, heads)) {
                return Ok(());
            }
            tokio::time::timeout(SCENARIO_TIMEOUT, notified)
                .await
                .map_err(|_| anyhow!("changes never arrived"))?;
        }
    }
}

/// An observer that raises a [`Notify`] when a sync message has been applied.
struct ReceivedSignal(Arc<Notify>);

impl RepoObserver for ReceivedSignal {
    fn observe(&self, event: &RepoEvent) {
        if let RepoEvent::SyncMessageReceived { .. } = event {
            self.0.notify_one();
        }
    }
}

/// A peer listening on 127.0.0.1 and handing each accepted stream to its repo.
struct Listener {
    /// The address to dial.
    addr: SocketAddr,
    /// The repo's acceptor, to see how many connections are open.
    acceptor: AcceptorHandle,
    /// The accept loop.
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Starts accepting connections for `peer`.
    async fn start(peer: &Peer) -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let acceptor = peer
            .repo
            .make_acceptor(Url::parse(&format!("tcp://{addr}"))?)
            .map_err(|e| anyhow!("{e}"))?;
        let accepting = acceptor.clone();
        let task = peer.runtime.spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else { return };
            while let Ok((stream, _)) = listener.accept().await {
                if stream.set_nodelay(true).is_err() || accepting.accept_tokio_io(stream).is_err() {
                    return;
                }
            }
        });
        Ok(Listener { addr, acceptor, task })
    }

    /// Waits until no connection is open.
    async fn wait_closed(&self) -> Result<()> {
        let deadline = Instant::now() + SCENARIO_TIMEOUT;
        while self.acceptor.connection_count() > 0 {
            if Instant::now() > deadline {
                bail!("a samod connection did not close");
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Dials a loopback address with TCP_NODELAY, counting the bytes both ways.
struct LoopbackDialer {
    /// Where to connect.
    addr: SocketAddr,
    /// Bytes read and written on every stream this dialer opened.
    bytes: Arc<AtomicU64>,
}

impl LoopbackDialer {
    /// Dials `addr` from `peer`; returns the dialer's handle and its byte counter.
    fn dial(peer: &Peer, addr: SocketAddr) -> Result<(DialerHandle<io::Error>, Arc<AtomicU64>)> {
        let bytes = Arc::new(AtomicU64::new(0));
        let dialer = Arc::new(LoopbackDialer { addr, bytes: bytes.clone() });
        let backoff = BackoffConfig { max_retries: Some(0), ..BackoffConfig::default() };
        let handle = peer.repo.dial(backoff, dialer).map_err(|e| anyhow!("{e}"))?;
        Ok((handle, bytes))
    }
}

impl Dialer for LoopbackDialer {
    type Error = io::Error;

    fn url(&self) -> Url {
        Url::parse(&format!("tcp://{}", self.addr)).expect("a socket address makes a valid URL")
    }

    fn connect(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Transport, DialError<io::Error>>> + Send>> {
        let addr = self.addr;
        let bytes = self.bytes.clone();
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await.map_err(DialError::transient)?;
            stream.set_nodelay(true).map_err(DialError::transient)?;
            Ok(Transport::from_tokio_io(Counted { inner: stream, bytes }))
        })
    }
}

/// A stream that adds every byte read or written to a shared counter.
struct Counted {
    /// The TCP stream.
    inner: TcpStream,
    /// Bytes so far, both directions.
    bytes: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.bytes.fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = &polled {
            self.bytes.fetch_add(*written as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A fresh repo finds the `size.notes` document held by another, `size.runs` times; the
/// last one then receives `size.live_edits` new notes one at a time. Returns catch-up
/// median ms, median CPU ms (both repos, every thread) and median bytes, and live edit
/// p50 and p90 ms.
async fn catch_up_and_live(
    size: &Size,
    holder_runtime: &Handle,
) -> Result<(f64, f64, usize, f64, f64)> {
    let source = build_notes_doc(size.notes, 1)?;
    let target = source.get_heads();
    let holder = Peer::new(holder_runtime.clone()).await;
    let held = holder.repo.create(source).await.map_err(|e| anyhow!("{e}"))?;
    let listener = Listener::start(&holder).await?;
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    let mut bytes_seen = Vec::new();
    let mut connected: Option<(Peer, DialerHandle<io::Error>, DocHandle)> = None;
    for _ in 0..size.runs {
        if let Some((peer, dialer, _)) = connected.take() {
            close(&dialer, &listener).await?;
            peer.repo.stop().await;
        }
        let fresh = Peer::new(Handle::current()).await;
        let (started, started_cpu) = (Instant::now(), process_cpu());
        let (dialer, bytes) = LoopbackDialer::dial(&fresh, listener.addr)?;
        let found = find(&fresh.repo, held.document_id().clone()).await?;
        fresh.wait_for(&found, &target).await?;
        times.push(started.elapsed());
        cpu.push(process_cpu() - started_cpu);
        bytes_seen.push(settled(&bytes).await?);
        connected = Some((fresh, dialer, found));
    }
    let Some((writer, dialer, written)) = connected else { bail!("no catch-up runs") };
    let mut live = Vec::new();
    for k in 0..size.live_edits {
        tokio::time::sleep(LIVE_GAP).await;
        let started = Instant::now();
        let heads = written.with_document(|doc| {
            add_note(doc, size.notes + k)?;
            anyhow::Ok(doc.get_heads())
        })?;
        holder.wait_for(&held, &heads).await?;
        live.push(started.elapsed());
    }
    close(&dialer, &listener).await?;
    writer.repo.stop().await;
    holder.repo.stop().await;
    Ok((
        median(&mut times),
        median(&mut cpu),
        median_count(&mut bytes_seen) as usize,
        quantile(&mut live, 0.5),
        quantile(&mut live, 0.9),
    ))
}

/// Two repos share `size.docs` documents of `size.doc_notes` notes after a first full
/// sync; the dialing side reconnects `size.runs` times with nothing changed. Returns the
/// median ms until every document is known in sync both ways, and the median bytes of a run.
async fn reconnect(size: &Size, holder_runtime: &Handle) -> Result<(f64, u64)> {
    let holder = Peer::new(holder_runtime.clone()).await;
    let mut ids = Vec::with_capacity(size.docs);
    for d in 0..size.docs {
        let doc = build_notes_doc(size.doc_notes, (d % 200) as u8 + 2)?;
        let handle = holder.repo.create(doc).await.map_err(|e| anyhow!("{e}"))?;
        ids.push(handle.document_id().clone());
    }
    let listener = Listener::start(&holder).await?;
    let other = Peer::new(Handle::current()).await;
    let (dialer, _) = LoopbackDialer::dial(&other, listener.addr)?;
    dialer.established().await.map_err(|e| anyhow!("{e}"))?;
    let mut finds = JoinSet::new();
    for id in ids {
        let repo = other.repo.clone();
        finds.spawn(async move { find(&repo, id).await });
    }
    let mut handles = Vec::with_capacity(size.docs);
    while let Some(found) = finds.join_next().await {
        handles.push(found??);
    }
    all_in_sync(&dialer, &handles).await?;
    close(&dialer, &listener).await?;

    let mut times = Vec::new();
    let mut bytes_seen = Vec::new();
    for _ in 0..size.runs {
        let started = Instant::now();
        let (dialer, bytes) = LoopbackDialer::dial(&other, listener.addr)?;
        all_in_sync(&dialer, &handles).await?;
        times.push(started.elapsed());
        bytes_seen.push(settled(&bytes).await?);
        close(&dialer, &listener).await?;
    }
    other.repo.stop().await;
    holder.repo.stop().await;
    Ok((median(&mut times), median_count(&mut bytes_seen)))
}

/// Finds `id` through `repo`.
async fn find(repo: &Repo, id: DocumentId) -> Result<DocHandle> {
    let found = repo.find(id.clone()).await.map_err(|e| anyhow!("{e}"))?;
    found.with_context(|| format!("samod did not find document {id}"))
}

/// Waits until the dialer is connected and, for every handle, each side has the other's
/// changes on that connection.
async fn all_in_sync(dialer: &DialerHandle<io::Error>, handles: &[DocHandle]) -> Result<()> {
    dialer.established().await.map_err(|e| anyhow!("{e}"))?;
    let conn = dialer.connection_id().context("an established dialer has no connection")?;
    let mut waits = JoinSet::new();
    for handle in handles {
        let theirs = handle.we_have_their_changes(conn);
        let ours = handle.they_have_our_changes(conn);
        waits.spawn(async move {
            theirs.await;
            ours.await;
        });
    }
    while let Some(done) = waits.join_next().await {
        done?;
    }
    Ok(())
}

/// Closes `dialer` and waits until the listening side has dropped the connection.
async fn close(dialer: &DialerHandle<io::Error>, listener: &Listener) -> Result<()> {
    dialer.close();
    listener.wait_closed().await
}

/// Waits until `bytes` has not moved for [`QUIET`]; returns its value.
async fn settled(bytes: &AtomicU64) -> Result<u64> {
    let deadline = Instant::now() + SCENARIO_TIMEOUT;
    let mut last = bytes.load(Ordering::Relaxed);
    let mut still_since = Instant::now();
    loop {
        tokio::time::sleep(POLL).await;
        let now = bytes.load(Ordering::Relaxed);
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() >= QUIET {
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!("traffic never stopped");
        }
    }
}
