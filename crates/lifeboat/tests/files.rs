//! `backup files` / `restore --to files:` end to end: every kind of entry and its metadata survives.
mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;

fn sh(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(cmd).status().unwrap().success()
}

/// Builds a source tree with every kind of entry. Returns whether a SELinux label could be set.
fn rich_tree(src: &Path) -> bool {
    fs::create_dir_all(src.join("dir/nested")).unwrap();
    fs::write(src.join("plain.txt"), b"hello lifeboat\n").unwrap();
    fs::write(src.join("dir/nested/big.bin"), bytes(1, 3 << 20)).unwrap();
    fs::write(src.join("dir/empty"), b"").unwrap();
    fs::write(src.join("name with spaces & ünïcødé"), b"x").unwrap();
    fs::set_permissions(src.join("plain.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(src.join("setuid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(src.join("dir/nested"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::hard_link(src.join("plain.txt"), src.join("dir/hardlink")).unwrap();
    symlink("plain.txt", src.join("link")).unwrap();
    symlink("/nonexistent/target", src.join("dangling")).unwrap();
    assert!(sh(&format!("mkfifo '{}'", src.join("fifo").display())));
    assert!(sh(&format!("mknod '{}' c 1 3", src.join("null").display())));
    // Sparse: 64 MiB with two small data regions.
    let sparse = src.join("sparse.img");
    let f = fs::File::create(&sparse).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_at(b"start", 0).unwrap();
    f.write_at(&bytes(2, 100_000), 40 << 20).unwrap();
    drop(f);
    xattr::set(src.join("plain.txt"), "user.comment", b"a note").unwrap();
    xattr::set(src.join("dir"), "user.dir", b"\x00\xffbinary").unwrap();
    // Owners other than root.
    std::os::unix::fs::chown(src.join("plain.txt"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(src.join("link"), Some(4321), Some(8765)).unwrap();
    // SELinux labels need a kernel with SELinux; elsewhere the attribute cannot be set at all.
    let selinux = xattr::set(
        src.join("dir/empty"),
        "security.selinux",
        b"system_u:object_r:container_file_t:s0\0",
    )
    .is_ok();
    // Times last (after every change inside the directories).
    assert!(sh(&format!(
        "touch -h -d '2001-02-03 04:05:06.123456789' '{}' '{}' '{}'",
        src.join("link").display(),
        src.join("dir/nested").display(),
        src.join("plain.txt").display()
    )));
    selinux
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "needs root (device nodes, other owners): run scripts/test.sh (--features lab)"
)]
fn round_trip_keeps_every_entry_and_its_metadata() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let selinux = rich_tree(&src);
    let repo = t.path().join("repo");
    let repo = repo.to_str().unwrap();
    ok(repo, &["repo", "init"]);
    let b = json(repo, &["backup", "files", src.to_str().unwrap()]);
    assert_eq!(b["errors"].as_array().unwrap().len(), 0, "{b}");
    // Holes are not read or stored: far less than the 64 MiB apparent size was read.
    assert!(b["bytes_read"].as_u64().unwrap() < 8 << 20, "{b}");
    let out = t.path().join("out");
    let r = json(
        repo,
        &["restore", "latest", "--to", &format!("files:{}", out.display())],
    );
    assert_eq!(r["errors"].as_array().unwrap().len(), 0, "{r}");
    assert_same_tree(&src, &restored(&out, &src));
    // The restored sparse file is sparse again.
    let md = fs::metadata(restored(&out, &src).join("sparse.img")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        md.blocks() * 512 < 4 << 20,
        "restored sparse file uses {} blocks",
        md.blocks()
    );
    if !selinux {
        eprintln!("note: this kernel has no SELinux; security.selinux was not exercised here");
    }
    ok(repo, &["repo", "check", "--read-data"]);
}

#[test]
fn unchanged_files_are_not_read_again_and_changes_add_only_their_chunks() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_files(&src, 3, 40, 300_000);
    fs::write(src.join("large.bin"), bytes(9, 12 << 20)).unwrap();
    let repo = t.path().join("repo");
    let repo = repo.to_str().unwrap();
    ok(repo, &["repo", "init"]);
    let first = json(repo, &["backup", "files", src.to_str().unwrap()]);
    assert_eq!(first["files_read"], 41);
    let second = json(repo, &["backup", "files", src.to_str().unwrap()]);
    assert_eq!(second["files_read"], 0, "{second}");
    assert_eq!(second["files_unchanged"], 41);
    assert_eq!(second["bytes_read"], 0);
    // Change 4 KiB in the middle of the large file: only the chunk(s) around it are added.
    let f = fs::OpenOptions::new().write(true).open(src.join("large.bin")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_at(&[0xAB; 4096], 6 << 20).unwrap();
    drop(f);
    let third = json(repo, &["backup", "files", src.to_str().unwrap()]);
    assert_eq!(third["files_read"], 1, "{third}");
    let added = third["bytes_added"].as_u64().unwrap();
    assert!(added < 3 * (8 << 20) / 2, "added {added} bytes for a 4 KiB change");
    assert!(added < first["bytes_added"].as_u64().unwrap() / 2);
    let out = t.path().join("out");
    ok(
        repo,
        &["restore", "latest", "--to", &format!("files:{}", out.display())],
    );
    assert_same_tree(&src, &restored(&out, &src));
}

#[test]
fn snapshots_show_and_json_outputs() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_files(&src, 4, 5, 1000);
    let repo = t.path().join("repo");
    let repo = repo.to_str().unwrap();
    ok(repo, &["repo", "init"]);
    let b = json(repo, &["backup", "files", "--tag", "nightly", src.to_str().unwrap()]);
    let id = b["snapshot_id"].as_str().unwrap().to_string();
    let list = json(repo, &["snapshots"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["tags"][0], "nightly");
    let show = json(repo, &["show", &id[..8], "--recursive"]);
    let paths: Vec<&str> = show["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(paths.iter().any(|p| p.ends_with("/d0/f0")), "{paths:?}");
    let human = ok(repo, &["snapshots"]);
    assert!(human.contains(&id[..8]));
}
