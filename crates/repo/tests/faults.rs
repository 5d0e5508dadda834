//! The repository under faults: failed writes, external prunes, lost locks, interrupted inits.
//! Each test is named after the failure it guards against (reliability review, findings 2, 3, 4,
//! 13, 14); faults come from `FaultyBackend`, and each test checks its faults were reached.
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lifeboat_model::{FileName, Id, Node, NodeKind, Snapshot, SnapshotSummary, Tree};
use lifeboat_repo::backend::faulty::{FaultyBackend, Op};
use lifeboat_repo::backend::LocalBackend;
use lifeboat_repo::check::{check, CheckProgress};
use lifeboat_repo::keys::KdfParams;
use lifeboat_repo::lock::LockTimings;
use lifeboat_repo::prune::{prune, PruneOptions};
use lifeboat_repo::{Backend, BlobKind, RepoError, Repository};

const FAST: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};
const PW: &[u8] = b"pw";

fn local(dir: &Path) -> Arc<dyn Backend> {
    Arc::new(LocalBackend::new(dir))
}

fn faulty(dir: &Path) -> Arc<FaultyBackend> {
    Arc::new(FaultyBackend::new(local(dir)))
}

/// Backs up `files` (name, content) as one snapshot tagged `tag`, each file one blob.
fn backup(repo: &Repository, files: &[(&str, &[u8])], tag: &str) -> Result<Id, RepoError> {
    let started = Instant::now();
    let mut tree = Tree::default();
    for (name, content) in files {
        let (id, _) = repo.save_blob(BlobKind::Data, content)?;
        let mut n = Node::new(FileName::from(*name), NodeKind::File);
        n.size = content.len() as u64;
        n.content = vec![id];
        tree.nodes.push(n);
    }
    tree.sort();
    let (root, _) = repo.save_tree(&tree)?;
    let mut snap = Snapshot {
        time: time::OffsetDateTime::now_utc(),
        kind: "files".into(),
        hostname: "h".into(),
        username: String::new(),
        paths: vec!["/t".into()],
        tags: vec![tag.into()],
        tree: root,
        parent: None,
        program_version: "test".into(),
        summary: SnapshotSummary::default(),
    };
    repo.commit_snapshot(&mut snap, started)
}

/// Reads every file of snapshot `id` back.
fn restore(repo: &Repository, id: &Id) -> Result<Vec<(String, Vec<u8>)>, RepoError> {
    let snap = repo.load_snapshot(id)?;
    let tree = repo.load_tree(&snap.tree)?;
    let mut out = Vec::new();
    for n in tree.nodes {
        let mut data = Vec::new();
        for c in &n.content {
            data.extend(repo.load_blob(c)?);
        }
        out.push((String::from_utf8_lossy(&n.name.0).into_owned(), data));
    }
    Ok(out)
}

/// `repo check --read-data` from a fresh handle: every error message.
fn check_errors(dir: &Path) -> Vec<String> {
    let repo = Repository::open(local(dir), PW).unwrap();
    let r = check(&repo, true, &CheckProgress::default()).unwrap();
    r.problems
        .iter()
        .filter(|p| format!("{:?}", p.severity) == "Error")
        .map(|p| format!("{}: {}", p.file, p.message))
        .collect()
}

fn no_margin() -> PruneOptions {
    PruneOptions {
        dry_run: false,
        min_age: Duration::ZERO,
    }
}

/// Finding 2: a pack write fails in a long-lived process; the next backup of the same content in
/// that process must store it again, not skip it as "in flight".
#[test]
fn a_failed_pack_write_is_not_trusted_by_the_next_backup_of_the_same_repository() {
    let d = tempfile::tempdir().unwrap();
    let f = faulty(d.path());
    let repo = Repository::init(f.clone(), PW, FAST).unwrap();
    f.fail_nth(Op::WriteDeferred, 1, "injected: no space left on device");
    let files: [(&str, &[u8]); 2] = [("a", b"alpha content"), ("b", b"beta content")];
    assert!(backup(&repo, &files, "one").is_err());
    let id = backup(&repo, &files, "two").expect("the second backup in the same process succeeds");
    f.assert_all_faults_hit();
    assert_eq!(check_errors(d.path()), Vec::<String>::new());
    assert_eq!(restore(&repo, &id).unwrap()[1].1, b"beta content");
}

/// Finding 2: the index write (or the sync before it) fails after the pack was written; the
/// blobs must not stay "indexed" in memory only.
#[test]
fn a_failed_index_write_is_retried_or_the_packs_are_not_trusted() {
    for op in [Op::Sync, Op::Write] {
        let d = tempfile::tempdir().unwrap();
        let f = faulty(d.path());
        let repo = Repository::init(f.clone(), PW, FAST).unwrap();
        f.fail_nth(op, 1, "injected: index write refused");
        let files: [(&str, &[u8]); 1] = [("a", b"alpha content")];
        match backup(&repo, &files, "one") {
            Err(RepoError::Backend(e)) => assert!(e.to_string().contains("injected"), "{e}"),
            other => panic!("{op:?}: expected the injected failure, got {other:?}"),
        }
        let id = backup(&repo, &files, "two").unwrap();
        f.assert_all_faults_hit();
        assert_eq!(check_errors(d.path()), Vec::<String>::new(), "{op:?}");
        assert_eq!(restore(&repo, &id).unwrap()[0].1, b"alpha content");
    }
}

/// Finding 2, race: backup B holds a shared blob in a pack being written (slowly, then failing)
/// when backup A, sharing the handle, skips that blob and commits. A must not commit a snapshot
/// naming a blob that ends up stored nowhere.
#[test]
fn two_concurrent_backups_in_one_process_never_commit_a_snapshot_before_its_blobs_are_indexed() {
    let d = tempfile::tempdir().unwrap();
    let f = faulty(d.path());
    let repo = Arc::new(Repository::init(f.clone(), PW, FAST).unwrap());
    let shared: &[u8] = b"a config file both apps have";
    let mut big = vec![0u8; 17 << 20];
    lifeboat_repo::crypto::fill_random(&mut big); // incompressible: over the pack size once sealed
    f.delay(Op::WriteDeferred, Duration::from_millis(600));
    f.fail_nth(Op::WriteDeferred, 1, "injected: connection reset");
    let (tx, rx) = std::sync::mpsc::channel();
    let b = {
        let repo = repo.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            repo.save_blob(BlobKind::Data, shared).unwrap();
            tx.send(()).unwrap();
            // Fills the builder holding `shared` past the pack size: written (slowly) at once.
            let r = repo.save_blob(BlobKind::Data, &big);
            (started, r.map(|_| ()))
        })
    };
    rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let a = backup(&repo, &[("shared", shared)], "a");
    let (_, b_result) = b.join().unwrap();
    assert!(b_result.is_err(), "backup B's pack write failed");
    match a {
        Err(RepoError::WriteFailed { reason, .. }) => assert!(reason.contains("injected"), "{reason}"),
        other => panic!("backup A must refuse to commit, got {other:?}"),
    }
    f.assert_all_faults_hit();
    assert_eq!(check_errors(d.path()), Vec::<String>::new());
    // After the failure, the same handle works again.
    let id = backup(&repo, &[("shared", shared)], "again").unwrap();
    assert_eq!(restore(&repo, &id).unwrap()[0].1, shared);
}

/// Finding 3: a long-lived handle, a prune by another process, then a lock and a backup of
/// content that was pruned: it must be stored again.
#[test]
fn a_lock_after_an_external_prune_forgets_deleted_blobs() {
    let d = tempfile::tempdir().unwrap();
    let long_lived = Repository::init(local(d.path()), PW, FAST).unwrap();
    let s1 = backup(&long_lived, &[("toggle", b"AAAA")], "s1").unwrap();
    backup(&long_lived, &[("toggle", b"BBBB")], "s2").unwrap();
    let other = Repository::open(local(d.path()), PW).unwrap();
    {
        let _l = other.lock(true, "prune", Duration::ZERO).unwrap();
        other.remove_snapshot(&s1).unwrap();
        let r = prune(&other, &no_margin()).unwrap();
        assert!(r.packs_deleted >= 1, "{r:?}");
    }
    let _l = long_lived.lock(false, "backup", Duration::ZERO).unwrap();
    let s3 = backup(&long_lived, &[("toggle", b"AAAA")], "s3").unwrap();
    assert_eq!(check_errors(d.path()), Vec::<String>::new());
    assert_eq!(restore(&long_lived, &s3).unwrap()[0].1, b"AAAA");
}

/// Finding 3: a prune repacks a partly used pack; a long-lived handle reads the kept blob from
/// its new pack after taking a lock.
#[test]
fn a_restore_after_an_external_prune_reads_repacked_blobs_from_their_new_pack() {
    let d = tempfile::tempdir().unwrap();
    let long_lived = Repository::init(local(d.path()), PW, FAST).unwrap();
    let s1 = backup(&long_lived, &[("x", b"only in s1"), ("y", b"in both")], "s1").unwrap();
    let s2 = backup(&long_lived, &[("y", b"in both")], "s2").unwrap();
    let other = Repository::open(local(d.path()), PW).unwrap();
    {
        let _l = other.lock(true, "prune", Duration::ZERO).unwrap();
        other.remove_snapshot(&s1).unwrap();
        let r = prune(&other, &no_margin()).unwrap();
        assert_eq!(r.packs_repacked, 1, "{r:?}");
    }
    let _l = long_lived.lock(false, "restore", Duration::ZERO).unwrap();
    assert_eq!(restore(&long_lived, &s2).unwrap()[0].1, b"in both");
}

fn age_packs(dir: &Path, by: Duration) {
    fn walk(p: &Path, t: SystemTime) {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), t);
            } else {
                std::fs::File::options()
                    .write(true)
                    .open(e.path())
                    .unwrap()
                    .set_modified(t)
                    .unwrap();
            }
        }
    }
    walk(&dir.join("data"), SystemTime::now() - by);
}

/// Finding 4: whatever the index and the locks say, prune keeps packs younger than its margin:
/// indexed but unreferenced ones (a live backup's, before its snapshot) and unindexed ones.
#[test]
fn prune_keeps_packs_younger_than_its_margin() {
    let d = tempfile::tempdir().unwrap();
    let f = faulty(d.path());
    let repo = Repository::init(f.clone(), PW, FAST).unwrap();
    let s1 = backup(&repo, &[("a", b"forgotten")], "s1").unwrap();
    // A backup whose index write fails leaves an unindexed pack, like a backup still running.
    f.fail_nth(Op::Write, 1, "injected");
    assert!(backup(&repo, &[("b", b"in flight")], "s2").is_err());
    f.assert_all_faults_hit();
    repo.remove_snapshot(&s1).unwrap();
    let packs = || {
        std::fs::read_dir(d.path().join("data"))
            .unwrap()
            .flat_map(|e| std::fs::read_dir(e.unwrap().path()).unwrap())
            .count()
    };
    assert_eq!(packs(), 2);
    let pruner = Repository::open(local(d.path()), PW).unwrap();
    let _l = pruner.lock(true, "prune", Duration::ZERO).unwrap();
    let r = prune(&pruner, &PruneOptions::default()).unwrap();
    assert_eq!(
        (r.packs_too_young, r.packs_deleted, r.packs_unindexed_deleted),
        (2, 0, 0),
        "{r:?}"
    );
    assert_eq!(packs(), 2);
    age_packs(d.path(), Duration::from_secs(3 * 3600));
    let r = prune(&pruner, &PruneOptions::default()).unwrap();
    assert_eq!(
        (r.packs_too_young, r.packs_deleted, r.packs_unindexed_deleted),
        (0, 1, 1),
        "{r:?}"
    );
    assert_eq!(packs(), 0);
}

/// Finding 4: a backup whose lock can no longer be refreshed stops before it commits.
#[test]
fn a_backup_whose_lock_refresh_fails_stops_before_committing() {
    let d = tempfile::tempdir().unwrap();
    let f = faulty(d.path());
    let repo = Repository::init(f.clone(), PW, FAST)
        .unwrap()
        .with_lock_timings(LockTimings {
            refresh: Duration::from_millis(50),
            stale: Duration::from_millis(400),
        });
    let _l = repo.lock(false, "backup files", Duration::ZERO).unwrap();
    f.fail_from(Op::Exists, 1, "injected: storage unreachable");
    std::thread::sleep(Duration::from_millis(500));
    match backup(&repo, &[("a", b"data")], "late") {
        Err(RepoError::LockLost { .. }) => {}
        other => panic!("expected LockLost, got {other:?}"),
    }
    f.assert_all_faults_hit();
    assert!(
        repo.snapshots().unwrap().is_empty(),
        "no snapshot committed under a lost lock"
    );
}

/// Finding 14: an init interrupted before its config was written leaves a key slot; a second
/// init must not add another slot for another master key.
#[test]
fn init_after_an_interrupted_init_leaves_an_openable_repository() {
    let d = tempfile::tempdir().unwrap();
    Repository::init(local(d.path()), PW, FAST).unwrap();
    std::fs::remove_file(d.path().join("config")).unwrap();
    match Repository::init(local(d.path()), PW, FAST) {
        Err(RepoError::InterruptedInit { slots, .. }) => assert!(slots.starts_with("keys/"), "{slots}"),
        other => panic!("expected InterruptedInit, got {:?}", other.map(|_| ())),
    }
    assert_eq!(std::fs::read_dir(d.path().join("keys")).unwrap().count(), 1);
}

/// Finding 14: a slot that unwraps with the password but belongs to another master key (an orphan)
/// does not make `open` fail, whichever order the slots are listed in.
#[test]
fn an_orphan_key_slot_for_the_same_password_does_not_break_open() {
    for _ in 0..8 {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        Repository::init(local(a.path()), PW, FAST).unwrap();
        Repository::init(local(b.path()), PW, FAST).unwrap();
        for e in std::fs::read_dir(b.path().join("keys")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), a.path().join("keys").join(e.file_name())).unwrap();
        }
        Repository::open(local(a.path()), PW).unwrap();
    }
}

/// Finding 13: repository files, key slots included, are for their owner only, whatever the umask.
#[test]
fn repository_files_are_readable_by_their_owner_only() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("repo");
    let repo = Repository::init(local(&root), PW, FAST).unwrap();
    backup(&repo, &[("a", b"x")], "t").unwrap();
    let mut seen = HashSet::new();
    fn walk(p: &Path, seen: &mut HashSet<String>) {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let is_dir = p.is_dir();
        assert_eq!(mode, if is_dir { 0o700 } else { 0o600 }, "{}", p.display());
        seen.insert(if is_dir { "dir".into() } else { "file".into() });
        if is_dir {
            for e in std::fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), seen);
            }
        }
    }
    walk(&root, &mut seen);
    assert_eq!(seen.len(), 2);
}

/// Finding 19: a failover read every snapshot file, one after the other, once or twice. A handle
/// reads each snapshot file once; one removed by another process drops out; one that cannot be
/// read is an error, and the next call tries it again.
#[test]
fn snapshots_are_read_once_per_handle_and_removed_ones_drop_out() {
    let d = tempfile::tempdir().unwrap();
    let f = faulty(d.path());
    let repo = Repository::init(f.clone(), PW, FAST).unwrap();
    let ids: Vec<Id> = (0..20)
        .map(|i| backup(&repo, &[("a", format!("content {i}").as_bytes())], &format!("t{i}")).unwrap())
        .collect();
    let reads = || f.calls(Op::Read);
    let before = reads();
    assert_eq!(repo.snapshots().unwrap().len(), 20);
    assert_eq!(reads() - before, 20, "each snapshot file read once");
    let before = reads();
    let again = repo.snapshots().unwrap();
    assert_eq!(reads(), before, "nothing read again");
    assert_eq!(
        again.iter().map(|(id, _)| *id).collect::<HashSet<_>>(),
        ids.iter().copied().collect()
    );
    // Another process forgets one.
    let other = Repository::open(f.clone(), PW).unwrap();
    other.remove_snapshot(&ids[3]).unwrap();
    let now = repo.snapshots().unwrap();
    assert_eq!(now.len(), 19);
    assert!(!now.iter().any(|(id, _)| *id == ids[3]));
    // A new one, whose read fails once: an error, then read on the next call.
    let new = backup(&other, &[("a", b"late")], "late").unwrap();
    f.fail_nth(Op::Read, 1, "injected: read refused");
    assert!(repo.snapshots().is_err());
    f.assert_all_faults_hit();
    let now = repo.snapshots().unwrap();
    assert_eq!(now.len(), 20);
    assert!(now.iter().any(|(id, _)| *id == new));
}
