//! The benchmarks' clock: notes written at a steady pace through a year, as a team
//! writes them, rather than all at the moment the benchmark runs.

use std::sync::atomic::{AtomicI64, Ordering};

use care::{Clock, Timestamp};

/// A clock that moves on by a fixed step each time it is read.
pub(crate) struct SteppingClock {
    now_ms: AtomicI64,
    step_ms: i64,
}

impl SteppingClock {
    /// Starts at `start_ms` and moves on by `step_ms` at every reading.
    pub(crate) fn new(start_ms: i64, step_ms: i64) -> SteppingClock {
        SteppingClock { now_ms: AtomicI64::new(start_ms), step_ms }
    }
}

impl Clock for SteppingClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now_ms.fetch_add(self.step_ms, Ordering::Relaxed))
    }
}
