//! Restoring file trees.
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use lifeboat_model::{Id, Node, NodeKind};
use lifeboat_repo::{RepoError, Repository};
use rayon::prelude::*;
use rustix::fs::{AtFlags, FileType, Gid, Mode, Timespec, Timestamps, Uid, CWD};

use crate::{FsError, ItemError, ItemErrors};

/// Live counters, for progress display while a restore runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub files: AtomicU64,
    pub dirs: AtomicU64,
    pub other: AtomicU64,
    pub bytes: AtomicU64,
}

/// The result of a restore.
#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreOutcome {
    pub files: u64,
    pub dirs: u64,
    pub other: u64,
    pub bytes: u64,
    /// Items that could not be restored (a file with damaged data is removed, never left with wrong bytes).
    pub errors: Vec<ItemError>,
    /// Device nodes left out ([`Specials::Drop`]), by path.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_devices: Vec<String>,
    /// Files and directories restored without their set-uid/set-gid bits ([`Specials::Drop`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub setid_removed: Vec<String>,
}

/// What a restore does with device nodes and set-uid/set-gid bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Specials {
    /// Recreate them as recorded (a `files` snapshot of this host restored to this host).
    #[default]
    Keep,
    /// Leave device nodes out and remove set-uid/set-gid bits: for a container's data restored to a
    /// host directory, where the container's device cgroup and namespaces no longer confine them
    /// (a block device node or a set-uid root shell from a container works on the host).
    Drop,
}

/// Set-uid and set-gid bits.
const SETID: u32 = 0o6000;

/// Blobs of one large file fetched in parallel at once.
const BLOBS_IN_FLIGHT: usize = 4;

struct Engine<'a> {
    repo: &'a Repository,
    progress: &'a Progress,
    errors: ItemErrors,
    /// (dev, inode) of hard-linked files -> the path restored first.
    links: Mutex<HashMap<(u64, u64), PathBuf>>,
    /// Hard links to create once every file exists: (link path, (dev, inode)).
    deferred_links: Mutex<Vec<(PathBuf, (u64, u64))>>,
    as_root: bool,
    specials: Specials,
    skipped_devices: Mutex<Vec<String>>,
    setid_removed: Mutex<Vec<String>>,
}

/// Restores the tree `root` into `target` (created if missing, mode 0700). Existing files of the
/// same names are replaced; nothing else in `target` is touched. Device nodes and set-id bits are
/// kept ([`Specials::Keep`]); see [`restore_with`].
pub fn restore(repo: &Repository, root: &Id, target: &Path, progress: &Progress) -> Result<RestoreOutcome, FsError> {
    restore_with(repo, root, target, progress, Specials::Keep)
}

/// [`restore`], with what to do with device nodes and set-id bits.
pub fn restore_with(
    repo: &Repository,
    root: &Id,
    target: &Path,
    progress: &Progress,
    specials: Specials,
) -> Result<RestoreOutcome, FsError> {
    let bad = |reason: String| FsError::BadTarget {
        path: target.to_path_buf(),
        reason,
    };
    match fs::symlink_metadata(target) {
        Ok(md) if !md.is_dir() => return Err(bad("exists and is not a directory".into())),
        Ok(_) => {}
        // 0700: until the restore is done (and after it), only the owner sees what it holds.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(target)
                .map_err(|e| bad(e.to_string()))?
        }
        Err(e) => return Err(bad(e.to_string())),
    }
    // Load the root first so a wrong or damaged snapshot fails before anything is written.
    let tree = repo.load_tree(root)?;
    let engine = Engine {
        repo,
        progress,
        errors: ItemErrors::default(),
        links: Mutex::new(HashMap::new()),
        deferred_links: Mutex::new(Vec::new()),
        as_root: rustix::process::geteuid().is_root(),
        specials,
        skipped_devices: Mutex::new(Vec::new()),
        setid_removed: Mutex::new(Vec::new()),
    };
    engine.entries(target, tree.nodes)?;
    engine.finish_links();
    let errors = engine.errors.into_sorted();
    let sorted = |m: Mutex<Vec<String>>| {
        let mut v = m.into_inner().expect("poisoned");
        v.sort();
        v
    };
    Ok(RestoreOutcome {
        files: progress.files.load(Relaxed),
        dirs: progress.dirs.load(Relaxed),
        other: progress.other.load(Relaxed),
        bytes: progress.bytes.load(Relaxed),
        errors,
        skipped_devices: sorted(engine.skipped_devices),
        setid_removed: sorted(engine.setid_removed),
    })
}

fn ts(ns: i64) -> Timespec {
    Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000),
    }
}

/// Removes whatever is at `path` (not a directory) so a new entry can take its place.
fn clear(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Engine<'_> {
    fn item_error(&self, path: &Path, e: impl ToString) {
        self.errors.push(path, e);
    }

    fn entries(&self, dir: &Path, nodes: Vec<Node>) -> Result<(), RepoError> {
        nodes.into_par_iter().try_for_each(|n| {
            let path = dir.join(OsStr::from_bytes(&n.name.0));
            if n.name.0.is_empty() || n.name.0.contains(&b'/') || n.name.0 == b"." || n.name.0 == b".." {
                self.item_error(&path, "refusing an unsafe file name from the snapshot");
                return Ok(());
            }
            self.entry(&path, n)
        })
    }

    fn entry(&self, path: &Path, n: Node) -> Result<(), RepoError> {
        let made = match n.kind {
            NodeKind::Dir => return self.dir(path, n),
            NodeKind::File => {
                if n.nlink > 1 {
                    let key = (n.dev, n.inode);
                    let mut links = self.links.lock().expect("poisoned");
                    if links.contains_key(&key) {
                        drop(links);
                        self.deferred_links
                            .lock()
                            .expect("poisoned")
                            .push((path.to_path_buf(), key));
                        return Ok(());
                    }
                    links.insert(key, path.to_path_buf());
                }
                self.file(path, &n)?
            }
            NodeKind::Symlink => {
                self.progress.other.fetch_add(1, Relaxed);
                let target = OsStr::from_bytes(n.target.as_ref().map(|t| t.0.as_slice()).unwrap_or(b""));
                clear(path).and_then(|_| std::os::unix::fs::symlink(target, path))
            }
            NodeKind::Chardev | NodeKind::Blockdev if self.specials == Specials::Drop => {
                self.skipped_devices
                    .lock()
                    .expect("poisoned")
                    .push(path.display().to_string());
                return Ok(());
            }
            NodeKind::Fifo | NodeKind::Chardev | NodeKind::Blockdev => {
                self.progress.other.fetch_add(1, Relaxed);
                let ft = match n.kind {
                    NodeKind::Fifo => FileType::Fifo,
                    NodeKind::Chardev => FileType::CharacterDevice,
                    _ => FileType::BlockDevice,
                };
                clear(path).and_then(|_| {
                    rustix::fs::mknodat(CWD, path, ft, Mode::from_raw_mode(n.mode & 0o777), n.rdev)
                        .map_err(io::Error::from)
                })
            }
            NodeKind::Socket => {
                // A socket only exists while its server runs; it is recorded, not recreated.
                self.progress.other.fetch_add(1, Relaxed);
                return Ok(());
            }
        };
        match made {
            Ok(()) => self.metadata(path, &n),
            Err(e) => self.item_error(path, e),
        }
        Ok(())
    }

    fn dir(&self, path: &Path, n: Node) -> Result<(), RepoError> {
        self.progress.dirs.fetch_add(1, Relaxed);
        if let Err(e) = fs::create_dir(path) {
            let is_dir = fs::symlink_metadata(path).map(|m| m.is_dir()).unwrap_or(false);
            if e.kind() != io::ErrorKind::AlreadyExists || !is_dir {
                let fixed =
                    e.kind() == io::ErrorKind::AlreadyExists && clear(path).and_then(|_| fs::create_dir(path)).is_ok();
                if !fixed {
                    self.item_error(path, e);
                    return Ok(());
                }
            }
        }
        // Owner write access while the children are created; the real mode is set afterwards.
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
        if let Some(sub) = n.subtree {
            match self.repo.load_tree(&sub) {
                Ok(t) => self.entries(path, t.nodes)?,
                Err(e @ (RepoError::DamagedBlob { .. } | RepoError::MissingBlob { .. })) => self.item_error(path, e),
                Err(e) => return Err(e),
            }
        }
        self.metadata(path, &n);
        Ok(())
    }

    /// Writes a file's content. Damaged data makes the file fail and be removed.
    fn file(&self, path: &Path, n: &Node) -> Result<io::Result<()>, RepoError> {
        self.progress.files.fetch_add(1, Relaxed);
        if let Err(e) = clear(path) {
            return Ok(Err(e));
        }
        let mut f = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        match self.write_content(&mut f, n) {
            Ok(Ok(())) => Ok(Ok(())),
            Ok(Err(e)) => {
                let _ = fs::remove_file(path);
                Ok(Err(e))
            }
            Err(e @ (RepoError::DamagedBlob { .. } | RepoError::MissingBlob { .. })) => {
                drop(f);
                let _ = fs::remove_file(path);
                Ok(Err(io::Error::other(format!(
                    "not restored, the repository data is damaged: {e}"
                ))))
            }
            Err(e) => {
                let _ = fs::remove_file(path);
                Err(e)
            }
        }
    }

    fn write_content(&self, f: &mut File, n: &Node) -> Result<io::Result<()>, RepoError> {
        // Destination ranges for the concatenated content: the extents of a sparse file, or [0, ∞).
        let whole = [(0u64, u64::MAX)];
        let extents: &[(u64, u64)] = n.extents.as_deref().unwrap_or(&whole);
        let mut ext = 0usize;
        let mut within = 0u64;
        for ids in n.content.chunks(BLOBS_IN_FLIGHT) {
            let blobs: Vec<Vec<u8>> = if ids.len() == 1 {
                vec![self.repo.load_blob(&ids[0])?]
            } else {
                ids.par_iter()
                    .map(|id| self.repo.load_blob(id))
                    .collect::<Result<_, _>>()?
            };
            for data in blobs {
                let mut rest = data.as_slice();
                while !rest.is_empty() {
                    let Some(&(off, len)) = extents.get(ext) else {
                        return Ok(Err(io::Error::other("content is longer than the recorded extents")));
                    };
                    if within >= len {
                        ext += 1;
                        within = 0;
                        continue;
                    }
                    let take = ((len - within) as usize).min(rest.len());
                    if n.extents.is_some() {
                        if let Err(e) = f.seek(SeekFrom::Start(off + within)) {
                            return Ok(Err(e));
                        }
                    }
                    if let Err(e) = f.write_all(&rest[..take]) {
                        return Ok(Err(e));
                    }
                    self.progress.bytes.fetch_add(take as u64, Relaxed);
                    within += take as u64;
                    rest = &rest[take..];
                }
            }
        }
        if n.extents.is_some() {
            if let Err(e) = f.set_len(n.size) {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    /// Extended attributes, owner, mode, times — in that order (chown clears setuid bits).
    fn metadata(&self, path: &Path, n: &Node) {
        for x in &n.xattrs {
            if let Err(e) = xattr::set(path, OsStr::from_bytes(&x.name.0), &x.value) {
                self.item_error(path, format!("extended attribute {}: {e}", x.name.lossy()));
            }
        }
        if self.as_root {
            if let Err(e) = rustix::fs::chownat(
                CWD,
                path,
                Some(Uid::from_raw(n.uid)),
                Some(Gid::from_raw(n.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            ) {
                self.item_error(path, format!("owner: {e}"));
            }
        }
        if n.kind != NodeKind::Symlink {
            let mut mode = n.mode;
            if self.specials == Specials::Drop && mode & SETID != 0 {
                mode &= !SETID;
                self.setid_removed
                    .lock()
                    .expect("poisoned")
                    .push(path.display().to_string());
            }
            if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
                self.item_error(path, format!("mode: {e}"));
            }
        }
        self.times(path, n);
    }

    fn times(&self, path: &Path, n: &Node) {
        let t = Timestamps {
            // Access times are not recorded (reading would change them); 0 means "use mtime".
            last_access: ts(if n.atime_ns != 0 { n.atime_ns } else { n.mtime_ns }),
            last_modification: ts(n.mtime_ns),
        };
        if let Err(e) = rustix::fs::utimensat(CWD, path, &t, AtFlags::SYMLINK_NOFOLLOW) {
            self.item_error(path, format!("times: {e}"));
        }
    }

    /// Creates the hard links deferred during the parallel pass. Adding a link changes the parent
    /// directory's mtime, which was already restored, so the parent's times are read before and put
    /// back after.
    fn finish_links(&self) {
        let deferred = std::mem::take(&mut *self.deferred_links.lock().expect("poisoned"));
        let links = self.links.lock().expect("poisoned");
        for (path, key) in deferred {
            let first = &links[&key];
            self.progress.files.fetch_add(1, Relaxed);
            let parent = path.parent().unwrap_or(Path::new("/"));
            let before = fs::symlink_metadata(parent).ok();
            if let Err(e) = clear(&path).and_then(|_| fs::hard_link(first, &path)) {
                self.item_error(&path, format!("hard link to {}: {e}", first.display()));
            }
            if let Some(md) = before {
                use std::os::unix::fs::MetadataExt;
                let t = Timestamps {
                    last_access: Timespec {
                        tv_sec: md.atime(),
                        tv_nsec: md.atime_nsec(),
                    },
                    last_modification: Timespec {
                        tv_sec: md.mtime(),
                        tv_nsec: md.mtime_nsec(),
                    },
                };
                let _ = rustix::fs::utimensat(CWD, parent, &t, AtFlags::SYMLINK_NOFOLLOW);
            }
        }
    }
}
