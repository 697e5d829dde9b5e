//! A private network namespace for the full run: only loopback, used by nothing but
//! this benchmark, so the loopback byte counters count its traffic alone and its ports
//! meet no other program's. Made with `unshare -n` and `ip`, as the LAN test does.

use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result};

/// Set in the benchmark re-run inside the namespace.
const INSIDE_ENV: &str = "CARE_RELAY_BENCH_NAMESPACE";
/// Brings loopback up in the new namespace, then becomes the benchmark again.
const SCRIPT: &str = "ip link set lo up && exec \"$0\" \"$@\"";

/// Whether this process runs in the private namespace.
pub(crate) fn inside() -> bool {
    std::env::var_os(INSIDE_ENV).is_some()
}

/// Re-runs this benchmark, with the same arguments, in a private network namespace and
/// returns its exit status; `None` when already inside one, or when none can be made
/// (without `unshare`, `ip` or the right to use them: the run then goes on here).
pub(crate) fn rerun_inside() -> Result<Option<ExitStatus>> {
    if inside() {
        return Ok(None);
    }
    let usable = Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        println!("(no private network namespace: loopback bytes include other programs')");
        return Ok(None);
    }
    let status = Command::new("unshare")
        .args(["-n", "sh", "-c", SCRIPT])
        .arg(std::env::current_exe()?)
        .args(std::env::args().skip(1))
        .env(INSIDE_ENV, "1")
        .status()
        .context("re-running the benchmark in a private network namespace")?;
    Ok(Some(status))
}
