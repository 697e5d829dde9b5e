//! What a scenario costs in CPU: the time every thread of this process spent running,
//! those that have ended included. Both sides of each contestant run in this process,
//! so a catch-up's CPU is what both devices spent on it together.

use std::time::Duration;

use rustix::time::{ClockId, clock_gettime};

/// CPU time this process has used so far, all its threads together.
pub(crate) fn process_cpu() -> Duration {
    let now = clock_gettime(ClockId::ProcessCPUTime);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    Duration::from_secs(u64::try_from(now.tv_sec).unwrap_or(0)) + Duration::from_nanos(nanos)
}
