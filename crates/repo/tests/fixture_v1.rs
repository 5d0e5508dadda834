//! Format compatibility: a repository written by format version 1 (committed under
//! `tests/fixtures/v1`, password `lifeboat-fixture`) must stay readable, byte for byte.
//! If this test breaks, the change altered the on-disk format: bump the version instead.
use std::sync::Arc;

use lifeboat_model::{NodeKind, Tree};
use lifeboat_repo::backend::LocalBackend;
use lifeboat_repo::check::{check, CheckProgress};
use lifeboat_repo::Repository;

fn child(repo: &Repository, tree: &Tree, name: &str) -> Tree {
    let node = tree.find(name.as_bytes()).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(node.kind, NodeKind::Dir);
    repo.load_tree(&node.subtree.unwrap()).unwrap()
}

fn content(repo: &Repository, tree: &Tree, name: &str) -> Vec<u8> {
    let node = tree.find(name.as_bytes()).unwrap();
    let mut out = Vec::new();
    for id in &node.content {
        out.extend(repo.load_blob(id).unwrap());
    }
    out
}

#[test]
fn version_1_fixture_opens_and_reads_back_exactly() {
    let dir = manifest_dir().join("tests/fixtures/v1");
    let repo = Repository::open(Arc::new(LocalBackend::new(&dir)), b"lifeboat-fixture").unwrap();
    assert_eq!(repo.config().version, 1);
    let snaps = repo.snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    let (_, snap) = &snaps[0];
    assert_eq!(snap.kind, "files");
    assert_eq!(snap.paths, vec!["/tmp/lifeboat-fixture/src".to_string()]);
    let root = repo.load_tree(&snap.tree).unwrap();
    let src = child(
        &repo,
        &child(&repo, &child(&repo, &root, "tmp"), "lifeboat-fixture"),
        "src",
    );
    assert_eq!(content(&repo, &src, "hello.txt"), b"hello fixture\n");
    let sub = child(&repo, &src, "sub");
    let expected: Vec<u8> = (0..4000).flat_map(|_| 0u8..=255).collect();
    assert_eq!(content(&repo, &sub, "data.bin"), expected);
    let link = src.find(b"link").unwrap();
    assert_eq!(link.kind, NodeKind::Symlink);
    assert_eq!(link.target.as_ref().unwrap().0, b"hello.txt");
    let report = check(&repo, true, &CheckProgress::default()).unwrap();
    assert_eq!(report.errors(), 0, "{:?}", report.problems);
}

#[test]
fn version_1_fixture_refuses_a_wrong_password() {
    let dir = manifest_dir().join("tests/fixtures/v1");
    let err = Repository::open(Arc::new(LocalBackend::new(&dir)), b"nope")
        .err()
        .unwrap();
    assert!(err.to_string().contains("wrong password"), "{err}");
}

/// The package's directory: cargo's at run time (a test binary built from another checkout that
/// shares the target directory still reads this checkout's files), else the one it was built in.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}
