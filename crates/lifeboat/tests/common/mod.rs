//! Helpers for end-to-end tests: run the real `lifeboat` binary, build source trees, compare trees.
#![allow(dead_code)]
pub mod api;
pub mod cdp;
pub mod lab;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const PASSWORD: &str = "test password";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lifeboat")
}

/// A command for the binary against `repo` with the test password.
pub fn cmd(repo: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("--repo").arg(repo).args(args);
    c.env("LIFEBOAT_PASSWORD", PASSWORD).env_remove("LIFEBOAT_REPO");
    c
}

pub fn run(repo: &str, args: &[&str]) -> Output {
    cmd(repo, args).output().expect("run lifeboat")
}

/// Runs and requires success; returns stdout.
pub fn ok(repo: &str, args: &[&str]) -> String {
    let o = run(repo, args);
    assert!(
        o.status.success(),
        "lifeboat {args:?} failed: {}\nstdout: {}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stdout).expect("utf-8")
}

pub fn json(repo: &str, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(repo, &a)).expect("json output")
}

pub fn spawn(repo: &str, args: &[&str]) -> Child {
    cmd(repo, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lifeboat")
}

/// Collects the lines `child` writes to its (piped) stderr, as they come, into the string returned.
pub fn stderr_log(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::BufRead;
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let l = log.clone();
    let err = child.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let mut g = l.lock().unwrap();
            g.push_str(&line);
            g.push('\n');
        }
    });
    log
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut ctr = 0u64;
    while out.len() < len {
        let mut h = blake3::Hasher::new();
        h.update(&seed.to_le_bytes());
        h.update(&ctr.to_le_bytes());
        let mut r = h.finalize_xof();
        let mut block = [0u8; 65536];
        r.fill(&mut block);
        out.extend_from_slice(&block);
        ctr += 1;
    }
    out.truncate(len);
    out
}

/// Writes a tree of `n` files of about `size` bytes each (half random, half text) under `dir`.
pub fn make_files(dir: &Path, seed: u64, n: usize, size: usize) {
    for i in 0..n {
        let sub = dir.join(format!("d{}", i % 7));
        fs::create_dir_all(&sub).unwrap();
        let data = if i % 2 == 0 {
            bytes(seed * 1000 + i as u64, size)
        } else {
            format!("line {i} of seed {seed}\n").repeat(size / 20 + 1).into_bytes()
        };
        fs::write(sub.join(format!("f{i}")), data).unwrap();
    }
}

/// Everything a restore must reproduce about one entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    pub content: Option<String>,
    pub target: Option<PathBuf>,
    pub rdev: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Index of the hard-link group (by first path), for files with several links.
    pub link_group: Option<String>,
}

/// Describes every entry below `root`, keyed by relative path. Directory mtimes are included.
pub fn describe(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(d) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names {
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p.clone());
            }
            all.push((p, md));
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, md) in all {
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "chardev"
        } else {
            "other"
        };
        let link_group = (ft.is_file() && md.nlink() > 1).then(|| {
            inodes
                .entry((md.dev(), md.ino()))
                .or_insert_with(|| rel.clone())
                .clone()
        });
        let mut xattrs: Vec<(String, Vec<u8>)> = xattr::list(&p)
            .map(|l| {
                l.map(|n| {
                    (
                        n.to_string_lossy().into_owned(),
                        xattr::get(&p, &n).unwrap().unwrap_or_default(),
                    )
                })
                .collect()
            })
            .unwrap_or_default();
        xattrs.sort();
        out.insert(
            rel,
            Entry {
                kind: kind.into(),
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                size: if ft.is_dir() { 0 } else { md.len() },
                content: ft
                    .is_file()
                    .then(|| blake3::hash(&fs::read(&p).unwrap()).to_hex().to_string()),
                target: ft.is_symlink().then(|| fs::read_link(&p).unwrap()),
                rdev: md.rdev(),
                xattrs,
                link_group,
            },
        );
    }
    out
}

/// Asserts that two trees are identical in content and metadata.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let da = describe(a);
    let db = describe(b);
    let ka: Vec<_> = da.keys().collect();
    let kb: Vec<_> = db.keys().collect();
    assert_eq!(ka, kb, "different entries in {} and {}", a.display(), b.display());
    for (k, ea) in &da {
        assert_eq!(ea, &db[k], "entry {k} differs");
    }
}

/// Where `backup files SRC` puts SRC inside a restore target.
pub fn restored(target: &Path, src: &Path) -> PathBuf {
    target.join(src.strip_prefix("/").unwrap())
}

/// Total bytes of the files below `dir`.
pub fn du(dir: &Path) -> u64 {
    describe(dir)
        .values()
        .map(|e| if e.kind == "file" { e.size } else { 0 })
        .sum()
}

pub fn pack_files(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in fs::read_dir(repo.join("data")).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if !p.file_name().unwrap().to_string_lossy().starts_with('.') {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Total bytes of the repository's pack files.
pub fn stored_bytes(repo: &Path) -> u64 {
    pack_files(repo).iter().map(|p| fs::metadata(p).unwrap().len()).sum()
}

/// A digest of every file in the repository (to prove a failed command changed nothing).
pub fn repo_state(repo: &Path) -> BTreeMap<String, String> {
    describe(repo)
        .into_iter()
        .filter_map(|(k, e)| e.content.map(|c| (k, c)))
        .collect()
}

/// The files below `dir` whose bytes contain `needle` (to prove a secret is stored encrypted only).
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_containing(&p, needle));
        } else if fs::read(&p).unwrap().windows(needle.len()).any(|w| w == needle) {
            out.push(p);
        }
    }
    out
}
