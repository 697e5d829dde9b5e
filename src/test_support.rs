//! What the crate's tests share: homes in temporary directories, and two homes' sessions
//! exchanging the protocol's own frames in memory.

use care_sync::{Effect, Hub};

use crate::error::{Error, Result};
use crate::home::Home;

/// Connects two homes and lets their sessions exchange frames until both are quiet.
pub(crate) fn sync(a: &mut Home, b: &mut Home) -> Result<()> {
    let (a_device, b_device) = (a.profile().device, b.profile().device);
    let (mut a_hub, mut b_hub) = (Hub::new(a_device), Hub::new(b_device));
    let refused = |e| Error::Invalid(format!("{e:?}"));
    let a_conn = a_hub.open(a, b_device, a_device, 0).map_err(refused)?;
    let b_conn = b_hub.open(b, a_device, a_device, 0).map_err(refused)?;
    loop {
        let mut moved = false;
        for effect in a_hub.take_effects() {
            if let Effect::Send { frame, .. } = effect {
                b_hub.frame(b, b_conn, &frame);
                moved = true;
            }
        }
        for effect in b_hub.take_effects() {
            if let Effect::Send { frame, .. } = effect {
                a_hub.frame(a, a_conn, &frame);
                moved = true;
            }
        }
        if !moved {
            return Ok(());
        }
    }
}

/// `n` temporary directories, removed with them.
pub(crate) fn temp_dirs(n: usize) -> Result<Vec<tempfile::TempDir>> {
    (0..n).map(|_| tempfile::tempdir().map_err(|e| Error::Invalid(e.to_string()))).collect()
}
