//! Tar streams come from container engines (a volume's archive): reading one into a tree must
//! never panic, whatever the bytes; bad streams are errors and unsafe paths are refused.
#![no_main]
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use lifeboat_fs::archive::tar_to_tree;
use lifeboat_fs::backup::Progress;
use lifeboat_repo::keys::KdfParams;
use lifeboat_repo::Repository;

static REPO: LazyLock<(tempfile::TempDir, Repository)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let backend = lifeboat_repo::open_location(dir.path().join("repo").to_str().unwrap()).unwrap();
    let kdf = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
    let repo = Repository::init(backend, b"fuzz", kdf).unwrap();
    (dir, repo)
});

fuzz_target!(|data: &[u8]| {
    let repo = &REPO.1;
    if let Ok(out) = tar_to_tree(repo, data, 1, "fuzz", &Progress::default()) {
        // Whatever was accepted has only safe names.
        for e in &out.errors {
            assert!(!e.error.is_empty());
        }
    }
});
