//! The bindings' boundary, from Rust: a panic inside becomes an error, and a
//! subscription delivers until it is closed or dropped, then never again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use care_bindings::{
    CareError, CareHome, ChangeListener, NewNote, NodeOptions, Part, Subscription, Update, guard,
};

/// Keeps every update, from whichever thread delivers it.
#[derive(Debug, Default)]
struct Recorder {
    updates: Mutex<Vec<Update>>,
}

impl ChangeListener for Recorder {
    fn on_update(&self, update: Update) {
        self.updates.lock().expect("not poisoned").push(update);
    }
}

impl Recorder {
    fn count(&self) -> usize {
        self.updates.lock().expect("not poisoned").len()
    }

    /// Waits until `count` updates have arrived; returns them.
    async fn wait_for(&self, count: usize) -> Vec<Update> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.count() < count {
            assert!(Instant::now() < deadline, "only {} of {count} updates arrived", self.count());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.updates.lock().expect("not poisoned").clone()
    }
}

fn note(text: &str) -> NewNote {
    NewNote {
        text: text.into(),
        medications: Vec::new(),
        mood: None,
        concern: false,
        visit_start_ms: None,
        visit_end_ms: None,
    }
}

#[tokio::test]
async fn a_panic_inside_becomes_an_internal_error() {
    let result: Result<(), CareError> = guard(async { panic!("the rota fell over") }).await;
    match result {
        Err(CareError::Internal(message)) => assert!(message.contains("the rota fell over")),
        other => panic!("expected an internal error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_panic_on_the_homes_thread_becomes_an_internal_error_and_the_home_goes_on() {
    // Every method of `CareHome` runs its work as a closure on the home's owner thread,
    // and awaits it inside `guard`: the same path, with a closure that panics.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let home = care::Home::init(dir.path(), "Rosa").expect("a new home");
    let owner = care_net::Owner::spawn(home).expect("the home's thread");
    let panicked: Result<(), CareError> = guard(async {
        owner.call(|_home| panic!("a bug in a write")).await.map_err(|_| unreachable_owner())
    })
    .await;
    assert!(matches!(panicked, Err(CareError::Internal(m)) if m.contains("a bug in a write")));
    // The home's thread survived and still answers.
    let team = owner.call(|home| home.create_team("Rosa's team")).await.expect("answers");
    assert!(team.is_ok());
    owner.stop().await;
}

fn unreachable_owner() -> CareError {
    CareError::NotRunning("the owner thread stopped".into())
}

#[tokio::test]
async fn a_closed_or_dropped_subscription_is_never_called_again() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let home = CareHome::open(dir.path().to_string_lossy().into(), Some("Rosa".into()))
        .await
        .expect("a new home");
    let team = home.create_team("Rosa's team".into()).await.expect("a team");

    let closed = Arc::new(Recorder::default());
    let dropped = Arc::new(Recorder::default());
    let kept = Arc::new(Recorder::default());
    let mut subscriptions: Vec<Arc<Subscription>> = Vec::new();
    for listener in [&closed, &dropped, &kept] {
        let listener: Arc<dyn ChangeListener> = listener.clone();
        let subscription = Arc::clone(&home).subscribe(listener).await.expect("subscribes");
        subscriptions.push(subscription);
    }
    for recorder in [&closed, &dropped, &kept] {
        let first = recorder.wait_for(1).await.remove(0);
        assert!(first.initial, "the first delivery is everything to render");
        assert!(first.changes.iter().any(|c| c.team_id == team && c.part == Part::Notes));
    }

    home.add_note(team.clone(), note("Tea at eight.")).await.expect("writes");
    for recorder in [&closed, &dropped, &kept] {
        let second = recorder.wait_for(2).await.remove(1);
        assert!(!second.initial);
        assert_eq!(second.changes.len(), 1);
        assert_eq!(
            (second.changes[0].team_id.as_str(), second.changes[0].part),
            (team.as_str(), Part::Notes)
        );
    }

    let kept_subscription = subscriptions.pop().expect("three");
    drop(subscriptions.pop().expect("the dropped one's handle"));
    subscriptions.pop().expect("the closed one's handle").close();
    home.add_note(team.clone(), note("A walk at ten.")).await.expect("writes");
    kept.wait_for(3).await;
    // The kept listener has heard of the write; the others never will.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!((closed.count(), dropped.count()), (2, 2));
    drop(kept_subscription);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_made_while_the_node_starts_and_stops_all_land() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let home = CareHome::open(dir.path().to_string_lossy().into(), Some("Rosa".into()))
        .await
        .expect("a new home");
    let team = home.create_team("Rosa's team".into()).await.expect("a team");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Writers that keep writing while the node starts and stops under them.
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (home, team, done) = (Arc::clone(&home), team.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                let mut written = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let text = format!("Writer {w}, visit {written}.");
                    home.add_note(team.clone(), note(&text)).await?;
                    written += 1;
                }
                Ok::<usize, CareError>(written)
            })
        })
        .collect();
    let options = NodeOptions { listen: "127.0.0.1:0".into(), lan: false };
    for _ in 0..3 {
        home.start(options.clone()).await.expect("starts");
        home.stop().await.expect("stops");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for writer in writers {
        written += writer.await.expect("the task ran").expect("a write during a switch lands");
    }
    assert!(written > 0);
    assert_eq!(home.notes(team, None, None).await.expect("reads").len(), written);
    home.close().await.expect("closes");
}
