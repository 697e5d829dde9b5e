//! Helpers shared by the integration tests that run real nodes.

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, bail};
use care::{Node, NoteQuery, TeamId};

/// Longest any test waits for devices to agree.
pub(crate) const SETTLE_MS: u64 = 30_000;

/// The texts of every note a device can read in a team, sorted (none if it lacks it).
pub(crate) async fn note_texts(node: &Node, team: TeamId) -> Result<Vec<String>> {
    node.with_home(move |home| {
        let mut team = home.team(&team.to_string())?;
        let mut texts: Vec<String> =
            team.notes(&NoteQuery::default())?.into_iter().map(|n| n.text).collect();
        texts.sort();
        Ok(texts)
    })
    .await
}

/// Polls `check` until it holds or [`SETTLE_MS`] have passed; a timeout names the last
/// error the check returned, if it did not simply answer no.
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_millis(SETTLE_MS);
    loop {
        let failed = match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => None,
            Err(e) => Some(e),
        };
        if tokio::time::Instant::now() > deadline {
            match failed {
                Some(e) => bail!("timed out waiting until {what}; the last check failed: {e:#}"),
                None => bail!("timed out waiting until {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
