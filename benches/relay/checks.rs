//! What the circle node's checks of the sealed documents it takes in cost: what it can
//! check without the content (the sealer's signature, the authors' right to write the
//! document's kind, each change's signature and its signer's right at the point of the
//! membership log it was signed under), done again here, after the step, over every
//! sealed document its store holds. Left out: the lookups of the sealer's role and of
//! the key it was given, a few map reads per document. The circle node did this work once for each as it
//! took it in (more for one sent twice), so this is a floor of what checking cost it:
//! its CPU without the checks is at most its measured CPU less this.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use automerge::{ActorId, ChangeHash};
use care::Home;
use care_core::{DocKind, Sealed};
use care_sync::access::check_authors;
use care_sync::authorship::check_signed;
use care_sync::{Replica, TeamAccess};

/// The checks of every sealed document a circle node holds, done again.
pub(crate) struct Checked {
    /// Sealed documents checked.
    pub sealed: usize,
    /// Change signatures among them.
    pub signatures: usize,
    /// Time the checks took, on this thread.
    pub time: Duration,
}

/// Checks again every sealed document the circle node whose home is `home` holds, as it
/// checked each when taking it in. Fails if one does not pass: the circle node took in
/// only what passed.
pub(crate) fn again(home: &Path) -> Result<Checked> {
    let home = Home::open(home).context("opening the circle node's home")?;
    let store = home.store();
    let mut checked = Checked { sealed: 0, signatures: 0, time: Duration::ZERO };
    for team in store.teams()? {
        let access = TeamAccess::from_ops(team, &home.ops(team)?)?;
        for summary in store.sealed_docs(team)? {
            let kind: DocKind = summary.kind.parse()?;
            let doc = summary.id;
            let seqs: Vec<i64> = store.sealed_rows(doc)?.iter().map(|r| r.seq).collect();
            let sealed: Vec<Sealed> = store
                .sealed_bytes(doc, &seqs)?
                .iter()
                .map(|bytes| postcard::from_bytes(bytes))
                .collect::<Result<_, _>>()?;
            let started = Instant::now();
            for sealed in &sealed {
                sealed.check(team, doc)?;
                let changes: Vec<(ActorId, Option<ChangeHash>)> = sealed
                    .changes
                    .iter()
                    .map(|c| (ActorId::from(c.actor.as_slice()), Some(ChangeHash(c.hash))))
                    .collect();
                check_authors(&access, team, &kind, &changes)
                    .map_err(|why| anyhow::anyhow!("a sealed {kind} document: {why}"))?;
                let signed = changes.iter().filter_map(|(actor, hash)| Some((actor, (*hash)?)));
                check_signed(&access, team, doc, &kind, signed, &sealed.signatures)?;
            }
            checked.time += started.elapsed();
            checked.sealed += sealed.len();
            checked.signatures += sealed.iter().map(|s| s.signatures.len()).sum::<usize>();
        }
    }
    Ok(checked)
}
