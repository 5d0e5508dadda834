//! Safety properties of the repository, each shown with the real binary: concurrent backups,
//! prune beside a backup, kill -9 at random moments, corruption detection, bad input.
mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

fn init(dir: &Path) -> String {
    let repo = dir.join("repo").to_str().unwrap().to_string();
    ok(&repo, &["repo", "init"]);
    repo
}

fn restore_to(repo: &str, snap: &str, out: &Path) {
    ok(repo, &["restore", snap, "--to", &format!("files:{}", out.display())]);
}

/// A small xorshift generator so the "random" moments are reproducible from the seed printed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn two_concurrent_backups_both_succeed_and_common_data_is_stored_once() {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path());
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    make_files(&a.join("common"), 7, 16, 1 << 20);
    make_files(&b.join("common"), 7, 16, 1 << 20);
    make_files(&a.join("own"), 8, 4, 1 << 20);
    make_files(&b.join("own"), 9, 4, 1 << 20);
    let pa = spawn(&repo, &["--json", "backup", "files", a.to_str().unwrap()]);
    let pb = spawn(&repo, &["--json", "backup", "files", b.to_str().unwrap()]);
    let (oa, ob) = (pa.wait_with_output().unwrap(), pb.wait_with_output().unwrap());
    assert!(oa.status.success(), "{}", String::from_utf8_lossy(&oa.stderr));
    assert!(ob.status.success(), "{}", String::from_utf8_lossy(&ob.stderr));
    // Copies written by both at the very same moment are collapsed by prune (no age margin here).
    ok(&repo, &["prune", "--min-age", "0s"]);
    let stored: u64 = stored_bytes(Path::new(&repo));
    let unique = du(&a.join("common")) + du(&a.join("own")) + du(&b.join("own"));
    assert!(
        (stored as f64) < unique as f64 * 1.05,
        "stored {stored} bytes for {unique} bytes of distinct data"
    );
    let snaps = json(&repo, &["snapshots"]);
    for (i, src) in [&a, &b].iter().enumerate() {
        let id = snaps
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["paths"][0] == src.to_str().unwrap())
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let out = t.path().join(format!("out{i}"));
        restore_to(&repo, &id, &out);
        assert_same_tree(src, &restored(&out, src));
    }
    ok(&repo, &["repo", "check", "--read-data"]);
}

#[test]
fn prune_during_a_backup_never_deletes_what_the_backup_references() {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path());
    let src = t.path().join("src");
    // Something for prune to delete: an older snapshot of the same path, with other data.
    make_files(&src, 12, 10, 1 << 20);
    ok(&repo, &["backup", "files", src.to_str().unwrap()]);
    fs::remove_dir_all(&src).unwrap();
    make_files(&src, 11, 60, 1 << 20);
    let backup = spawn(&repo, &["backup", "files", src.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(150));
    // Without waiting, prune refuses clearly while the backup holds its lock ...
    let refused = run(&repo, &["prune"]);
    let waited = run(&repo, &["--lock-wait", "120", "forget", "--keep-last", "1", "--prune"]);
    let b = backup.wait_with_output().unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    if !refused.status.success() {
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("locked") && err.contains("backup files"), "{err}");
    }
    // ... and with --lock-wait it runs after the backup, keeping everything the backup references.
    assert!(waited.status.success(), "{}", String::from_utf8_lossy(&waited.stderr));
    let snaps = json(&repo, &["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    assert_eq!(snaps[0]["paths"][0], src.to_str().unwrap());
    ok(&repo, &["repo", "check", "--read-data"]);
    let out = t.path().join("out");
    restore_to(&repo, "latest", &out);
    assert_same_tree(&src, &restored(&out, &src));
}

#[test]
fn kill_9_during_backup_and_prune_leaves_a_consistent_repository() {
    let seed = std::env::var("LIFEBOAT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_u64);
    eprintln!("kill seed {seed} (set LIFEBOAT_KILL_SEED to replay)");
    let mut rng = Rng(seed);
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path());
    // Four rounds in the fast tier; scripts/test.sh runs eight (LIFEBOAT_KILL_ROUNDS).
    let rounds = std::env::var("LIFEBOAT_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4u64);
    let mut kept: Vec<(String, std::path::PathBuf)> = Vec::new();
    for round in 0..rounds {
        let src = t.path().join(format!("src{round}"));
        make_files(&src, 100 + round, 30, 700_000);
        // One complete snapshot of this round's data, which must survive everything after it.
        let id = json(&repo, &["backup", "files", src.to_str().unwrap()])["snapshot_id"]
            .as_str()
            .unwrap()
            .to_string();
        kept.push((id, src.clone()));
        // Change the data, then kill a backup of it at a random moment.
        make_files(&src.join("more"), 200 + round, 20, 700_000);
        let mut child = spawn(&repo, &["backup", "files", src.to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(rng.next() % 900));
        let _ = child.kill();
        let _ = child.wait();
        fs::remove_dir_all(src.join("more")).unwrap();
        // Kill a prune (after a forget that gives it work) at a random moment.
        if round % 2 == 1 {
            let junk = t.path().join(format!("junk{round}"));
            make_files(&junk, 300 + round, 10, 500_000);
            let jid = json(&repo, &["backup", "files", junk.to_str().unwrap()])["snapshot_id"]
                .as_str()
                .unwrap()
                .to_string();
            let o = run(&repo, &["forget", "--keep-last", "1000", "--dry-run"]);
            assert!(o.status.success());
            // Remove the junk snapshot by hand through forget's policy: keep only the others.
            fs::remove_file(Path::new(&repo).join("snapshots").join(&jid)).unwrap();
            let mut child = spawn(&repo, &["prune", "--min-age", "0s"]);
            std::thread::sleep(Duration::from_millis(rng.next() % 600));
            let _ = child.kill();
            let _ = child.wait();
        }
        let check = run(&repo, &["repo", "check"]);
        assert!(
            check.status.success(),
            "round {round}: check failed after kill -9:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    // A final prune cleans up leftovers, and every snapshot taken restores byte-identically.
    ok(&repo, &["prune", "--min-age", "0s"]);
    ok(&repo, &["repo", "check", "--read-data"]);
    for (i, (id, src)) in kept.iter().enumerate() {
        let out = t.path().join(format!("out{i}"));
        restore_to(&repo, id, &out);
        assert_same_tree(src, &restored(&out, src));
    }
}

fn flip_bit(path: &Path, at: u64) {
    let mut b = fs::read(path).unwrap();
    let i = (at as usize) % b.len();
    b[i] ^= 0x10;
    fs::write(path, b).unwrap();
}

#[test]
fn a_flipped_bit_in_a_pack_is_named_by_check_and_refused_by_restore() {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path());
    let src = t.path().join("src");
    make_files(&src, 21, 12, 1 << 20);
    ok(&repo, &["backup", "files", src.to_str().unwrap()]);
    // The largest pack holds file data (trees are small).
    let packs = pack_files(Path::new(&repo));
    let victim = packs
        .iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    flip_bit(&victim, 12345);
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();
    let check = run(&repo, &["repo", "check", "--read-data"]);
    assert!(!check.status.success());
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        out.contains(&name),
        "check does not name the damaged pack {name}:\n{out}"
    );
    // Restore fails, and no file is left with wrong bytes.
    let target = t.path().join("out");
    let r = run(
        &repo,
        &["restore", "latest", "--to", &format!("files:{}", target.display())],
    );
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("damaged"), "{err}");
    let got = describe(&restored(&target, &src));
    let want = describe(&src);
    let mut missing = 0;
    for (k, e) in &want {
        match got.get(k) {
            Some(g) if e.kind == "file" => assert_eq!(g.content, e.content, "{k} restored with wrong bytes"),
            Some(_) => {}
            None => missing += 1,
        }
    }
    assert!(missing >= 1, "the damaged file should have been refused");
}

#[test]
fn a_truncated_pack_and_damaged_metadata_files_are_named_by_check() {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path());
    let src = t.path().join("src");
    make_files(&src, 31, 8, 1 << 20);
    ok(&repo, &["backup", "files", src.to_str().unwrap()]);
    let r = Path::new(&repo);
    let pack = pack_files(r)
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let len = fs::metadata(&pack).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let index = fs::read_dir(r.join("index")).unwrap().next().unwrap().unwrap().path();
    flip_bit(&index, 77);
    let snap = fs::read_dir(r.join("snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    flip_bit(&snap, 40);
    let check = run(&repo, &["repo", "check"]);
    assert!(!check.status.success());
    let out = String::from_utf8_lossy(&check.stdout);
    for f in [&index, &snap] {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(out.contains(name), "check does not name {name}:\n{out}");
    }
    // The truncated pack is listed by no readable index any more (its index file is damaged):
    // it is reported as unindexed; with --read-data its damage is reported by name.
    let deep = run(&repo, &["repo", "check", "--read-data"]);
    let out = String::from_utf8_lossy(&deep.stdout);
    let pname = pack.file_name().unwrap().to_str().unwrap();
    assert!(
        out.contains(pname),
        "check --read-data does not name the truncated pack:\n{out}"
    );
    // prune refuses to run on a repository it cannot read completely, and deletes nothing.
    let before = repo_state(r);
    let p = run(&repo, &["prune"]);
    assert!(!p.status.success());
    assert_eq!(before, repo_state(r));
}

#[test]
fn wrong_password_missing_repository_and_missing_path_fail_cleanly_and_change_nothing() {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path());
    let src = t.path().join("src");
    make_files(&src, 41, 3, 1000);
    ok(&repo, &["backup", "files", src.to_str().unwrap()]);
    let before = repo_state(Path::new(&repo));

    let o = cmd(&repo, &["snapshots"])
        .env("LIFEBOAT_PASSWORD", "not it")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("wrong password"), "{err}");

    let o = cmd(&repo, &["backup", "files", src.to_str().unwrap()])
        .env("LIFEBOAT_PASSWORD", "not it")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));

    let nowhere = t.path().join("nowhere");
    let o = run(nowhere.to_str().unwrap(), &["snapshots"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no repository at"), "{err}");
    assert!(!nowhere.exists(), "a failed command created the repository directory");

    let o = run(
        &repo,
        &["backup", "files", t.path().join("does-not-exist").to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("does-not-exist") && err.contains("no such file"), "{err}");

    let o = run(&repo, &["restore", "ffffffff", "--to", "files:/tmp/x-never"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no snapshot matches"));

    let o = run(&repo, &["repo", "init"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));

    assert_eq!(
        before,
        repo_state(Path::new(&repo)),
        "a failed command changed the repository"
    );
}

#[test]
fn key_slots_can_be_added_listed_and_removed() {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path());
    let pwfile = t.path().join("new-pw");
    fs::write(&pwfile, "second password\n").unwrap();
    ok(
        &repo,
        &["repo", "key", "add", "--new-password-file", pwfile.to_str().unwrap()],
    );
    let keys = json(&repo, &["repo", "key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    let first = keys.as_array().unwrap().iter().find(|k| k["current"] == true).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The slot in use cannot be removed with its own password.
    assert!(!run(&repo, &["repo", "key", "remove", &first]).status.success());
    // The second password opens the repository and removes the first slot.
    let o = cmd(
        &repo,
        &[
            "--password-file",
            pwfile.to_str().unwrap(),
            "repo",
            "key",
            "remove",
            &first[..12],
        ],
    )
    .env_remove("LIFEBOAT_PASSWORD")
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&repo, &["snapshots"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong password"));
}

#[test]
fn forget_with_a_policy_then_prune_frees_space_and_keeps_the_rest_restorable() {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path());
    let src = t.path().join("src");
    for round in 0..4u64 {
        let _ = fs::remove_dir_all(&src);
        make_files(&src, 50 + round, 6, 500_000);
        ok(&repo, &["backup", "files", src.to_str().unwrap()]);
    }
    let before: u64 = stored_bytes(Path::new(&repo));
    let o = json(&repo, &["forget", "--keep-last", "1", "--prune", "--min-age", "0s"]);
    assert_eq!(
        o["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["keep"] == false)
            .count(),
        3
    );
    let after: u64 = stored_bytes(Path::new(&repo));
    assert!(after < before / 2, "prune freed too little: {before} -> {after}");
    assert!(
        !run(&repo, &["forget"]).status.success(),
        "an empty policy must be refused"
    );
    ok(&repo, &["repo", "check", "--read-data"]);
    let out = t.path().join("out");
    restore_to(&repo, "latest", &out);
    assert_same_tree(&src, &restored(&out, &src));
}

/// Finding 4, reproduced as a user would (review: 115 errors in `repo check` afterwards): a prune
/// started in another PID namespace (as from a container on the same host) beside a live backup.
/// The backup's lock must not be judged stale by its PID, and the margin keeps its packs anyway.
#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "needs root and unshare(1) for another PID namespace: run scripts/test.sh (--features lab)"
)]
fn a_prune_in_another_pid_namespace_beside_a_live_backup_deletes_nothing_it_needs() {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path());
    let src = t.path().join("src");
    make_files(&src.join("old"), 31, 8, 1 << 20);
    ok(&repo, &["backup", "files", src.to_str().unwrap()]);
    let locks = || fs::read_dir(Path::new(&repo).join("locks")).unwrap().count();
    let mut tries = 0;
    let (backup, pid) = loop {
        tries += 1;
        make_files(&src.join(format!("new{tries}")), 32, 60, 1 << 20);
        let mut backup = spawn(&repo, &["backup", "files", src.to_str().unwrap()]);
        // Once it holds its lock and has written its first pack ...
        let started = std::time::Instant::now();
        while locks() == 0 || pack_files(Path::new(&repo)).len() < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the backup never took its lock"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // ... it is suspended (as a paused VM or a SIGSTOP would): it stays mid-backup while the
        // prunes run.
        let pid = rustix::process::Pid::from_raw(backup.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
        // On a loaded machine it may have finished between the look and the stop: then there is
        // no live backup to race with, and another one (of new files) is started.
        if backup.try_wait().unwrap().is_none() && locks() > 0 {
            break (backup, pid);
        }
        rustix::process::kill_process(pid, rustix::process::Signal::CONT).ok();
        let _ = backup.wait();
        assert!(tries < 5, "every backup finished before it could be stopped");
    };
    for min_age in ["2h", "0s"] {
        let p = std::process::Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                bin(),
                "--repo",
                &repo,
                "prune",
                "--min-age",
                min_age,
            ])
            .env("LIFEBOAT_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&p.stderr);
        assert!(
            !p.status.success() && err.contains("backup files"),
            "prune (min age {min_age}) must wait for the live backup: {err}"
        );
    }
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    let b = backup.wait_with_output().unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    ok(&repo, &["repo", "check", "--read-data"]);
    let out = t.path().join("out");
    restore_to(&repo, "latest", &out);
    assert_same_tree(&src, &restored(&out, &src));
}

/// `lifeboat unlock` removes what a crashed holder left (an unreadable lock file here), names it,
/// and leaves live locks alone.
#[test]
fn unlock_removes_a_left_over_lock_and_names_it() {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path());
    fs::write(Path::new(&repo).join("locks").join("00deadbeef"), b"torn by a crash").unwrap();
    let src = t.path().join("src");
    make_files(&src, 5, 2, 1000);
    let o = run(&repo, &["backup", "files", src.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("lifeboat unlock"), "{err}");
    let removed = json(&repo, &["unlock"]);
    assert_eq!(removed.as_array().unwrap().len(), 1, "{removed}");
    assert_eq!(removed[0]["path"], "locks/00deadbeef");
    ok(&repo, &["backup", "files", src.to_str().unwrap()]);
}
