//! Decrypted metadata (index files, snapshots, trees) is parsed from JSON: never panic, and what
//! parses re-serialises to something that parses to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat_model::{Snapshot, Tree};
use lifeboat_repo::index::IndexFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = serde_json::from_slice::<Tree>(data) {
        let again: Tree = serde_json::from_slice(&serde_json::to_vec(&t).unwrap()).unwrap();
        assert_eq!(again, t);
    }
    let _ = serde_json::from_slice::<Snapshot>(data);
    let _ = serde_json::from_slice::<IndexFile>(data);
});
