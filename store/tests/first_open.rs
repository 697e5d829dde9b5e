//! Several threads opening encrypted stores as the process's very first use of SQLite.
//!
//! SQLite marks itself initialised before it runs SQLCipher's own initialisation, so a
//! second thread could key its connection while SQLCipher was still setting up, and the
//! key was refused ("sqlcipher not initialized"). This runs in a process of its own, so
//! its opens really are the first. The race is narrow: before the fix, sixteen threads
//! keying plain rusqlite connections this way failed in 5 of 1,000 processes on a
//! two-core machine, so this test catches it only now and then.

use std::sync::{Arc, Barrier};

use care_store::{Store, StoreKey};

#[test]
fn encrypted_stores_opened_at_once_by_a_new_process_all_open() -> std::io::Result<()> {
    const THREADS: usize = 16;
    let dir = tempfile::tempdir()?;
    let start = Arc::new(Barrier::new(THREADS));
    let opens: Vec<_> = (0..THREADS)
        .map(|i| {
            let path = dir.path().join(format!("home-{i}.sqlite"));
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                Store::open_encrypted(&path, &StoreKey::from_bytes([i as u8 + 1; 32]))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let failures: Vec<String> = opens
        .into_iter()
        .filter_map(|t| {
            t.join().unwrap_or_else(|_| Err("the opening thread panicked".into())).err()
        })
        .collect();
    assert!(failures.is_empty(), "stores that did not open: {failures:#?}");
    Ok(())
}
