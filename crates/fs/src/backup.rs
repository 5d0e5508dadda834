//! Backing up file trees.
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use lifeboat_model::{FileName, Id, Node, NodeKind, Snapshot, SnapshotSummary, Tree, Xattr};
use lifeboat_repo::{RepoError, Repository};
use rayon::prelude::*;
use rustix::fs::{OFlags, SeekFrom};

use crate::chunk::Chunker;
use crate::{FsError, ItemError, ItemErrors};

/// Live counters, for progress display while a backup runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub files: AtomicU64,
    pub dirs: AtomicU64,
    pub other: AtomicU64,
    pub files_read: AtomicU64,
    pub files_unchanged: AtomicU64,
    /// Sum of the sizes of the files seen.
    pub bytes_total: AtomicU64,
    /// Bytes actually read from files.
    pub bytes_read: AtomicU64,
}

/// Which snapshot's metadata decides whether a file is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    /// The newest `files` snapshot of the same paths from this host.
    Auto,
    /// Read every file.
    None,
    /// This snapshot.
    Snapshot(Id),
}

/// What to back up.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub tags: Vec<String>,
    pub parent: Parent,
}

/// The result of a backup.
#[derive(Debug)]
pub struct BackupOutcome {
    pub snapshot_id: Id,
    pub snapshot: Snapshot,
    /// Items that could not be backed up; the snapshot holds everything else.
    pub errors: Vec<ItemError>,
}

/// A file's data blobs, and its data extents when it is sparse.
type FileContent = (Vec<Id>, Option<Vec<(u64, u64)>>);

/// Files up to this size are read whole and chunked in memory; larger ones are streamed.
const WHOLE_FILE_MAX: u64 = 16 << 20;

struct Engine<'a> {
    repo: &'a Repository,
    progress: &'a Progress,
    errors: ItemErrors,
    chunker: Chunker<'a>,
}

/// Makes a path absolute and removes `.` and `..` lexically (symlinks are not resolved, so a
/// symlink given as a path is stored as a symlink).
pub fn normalize(p: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(p)?;
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    Ok(out)
}

/// Backs up `opts.paths` into a new snapshot.
///
/// Fails before writing anything when a path does not exist. Files that vanish or cannot be read
/// during the backup are listed in [`BackupOutcome::errors`] and left out; the snapshot then records
/// the number of errors in its summary.
pub fn backup(repo: &Repository, opts: &BackupOptions, progress: &Progress) -> Result<BackupOutcome, FsError> {
    let started = Instant::now();
    let mut paths = Vec::new();
    for p in &opts.paths {
        let abs = normalize(p).map_err(|e| FsError::BadSource {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        fs::symlink_metadata(&abs).map_err(|e| FsError::BadSource {
            path: p.clone(),
            reason: if e.kind() == io::ErrorKind::NotFound {
                "no such file or directory".into()
            } else {
                e.to_string()
            },
        })?;
        paths.push(abs);
    }
    paths.sort();
    paths.dedup();
    // A path inside another given path is already covered.
    let paths: Vec<PathBuf> = paths
        .iter()
        .filter(|p| !paths.iter().any(|q| q != *p && p.starts_with(q)))
        .cloned()
        .collect();
    let path_strings: Vec<String> = paths.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let hostname = lifeboat_repo::hostname();

    let parent = match opts.parent {
        Parent::None => None,
        Parent::Snapshot(id) => Some((id, repo.load_snapshot(&id)?)),
        Parent::Auto => repo
            .snapshots()?
            .into_iter()
            .rev()
            .find(|(_, s)| s.kind == "files" && s.hostname == hostname && s.paths == path_strings),
    };
    let parent_root = match &parent {
        Some((_, s)) => Some(repo.load_tree(&s.tree)?),
        None => None,
    };

    let engine = Engine {
        repo,
        progress,
        errors: ItemErrors::default(),
        chunker: Chunker::new(repo),
    };
    let rel: Vec<Vec<OsString>> = paths
        .iter()
        .map(|p| p.components().skip(1).map(|c| c.as_os_str().to_owned()).collect())
        .collect();
    let root = engine.build_level(Path::new("/"), &rel, parent_root.as_ref())?;

    let errors = engine.errors.into_sorted();
    let summary = SnapshotSummary {
        files: progress.files.load(Relaxed),
        dirs: progress.dirs.load(Relaxed),
        other_nodes: progress.other.load(Relaxed),
        files_read: progress.files_read.load(Relaxed),
        files_unchanged: progress.files_unchanged.load(Relaxed),
        bytes_total: progress.bytes_total.load(Relaxed),
        bytes_read: progress.bytes_read.load(Relaxed),
        blobs_added: 0,
        bytes_added: 0,
        seconds: 0.0,
        errors: errors.len() as u64,
    };
    let mut snapshot = Snapshot {
        time: time::OffsetDateTime::now_utc(),
        kind: "files".into(),
        hostname,
        username: lifeboat_repo::username(),
        paths: path_strings,
        tags: opts.tags.clone(),
        tree: root,
        parent: parent.map(|(id, _)| id),
        program_version: concat!("lifeboat ", env!("CARGO_PKG_VERSION")).into(),
        summary,
    };
    let snapshot_id = repo.commit_snapshot(&mut snapshot, started)?;
    Ok(BackupOutcome {
        snapshot_id,
        snapshot,
        errors,
    })
}

fn name_of(n: &OsString) -> FileName {
    FileName(n.as_bytes().to_vec())
}

fn node_from_metadata(name: FileName, md: &fs::Metadata) -> Node {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_file() {
        NodeKind::File
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_char_device() {
        NodeKind::Chardev
    } else if ft.is_block_device() {
        NodeKind::Blockdev
    } else {
        NodeKind::Socket
    };
    let mut n = Node::new(name, kind);
    n.mode = md.mode() & 0o7777;
    n.uid = md.uid();
    n.gid = md.gid();
    n.mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
    n.ctime_ns = md.ctime() * 1_000_000_000 + md.ctime_nsec();
    n.inode = md.ino();
    n.dev = md.dev();
    if kind != NodeKind::Dir {
        n.nlink = md.nlink();
    }
    if kind == NodeKind::File {
        n.size = md.len();
    }
    if matches!(kind, NodeKind::Chardev | NodeKind::Blockdev) {
        n.rdev = md.rdev();
    }
    n
}

/// A file is unchanged when its type, size, mtime, ctime and inode equal the parent's node.
fn unchanged(parent: Option<&Node>, n: &Node) -> Option<Node> {
    let p = parent?;
    (p.kind == NodeKind::File
        && p.size == n.size
        && p.mtime_ns == n.mtime_ns
        && p.ctime_ns == n.ctime_ns
        && p.inode == n.inode)
        .then(|| p.clone())
}

/// Reads the `(offset, length)` ranges of a sparse file that hold data.
fn data_extents(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = rustix::fs::seek(file, SeekFrom::Hole(data))?.min(size);
        out.push((data, hole - data));
        pos = hole;
    }
    Ok(out)
}

/// Reads the data ranges of a sparse file one after the other.
struct ExtentReader<'a> {
    file: &'a File,
    extents: &'a [(u64, u64)],
    index: usize,
    within: u64,
}

impl Read for ExtentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(&(off, len)) = self.extents.get(self.index) {
            if self.within >= len {
                self.index += 1;
                self.within = 0;
                continue;
            }
            let want = ((len - self.within) as usize).min(buf.len());
            let n = self.file.read_at(&mut buf[..want], off + self.within)?;
            if n == 0 {
                // The file shrank while being read.
                self.index = self.extents.len();
                return Ok(0);
            }
            self.within += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

fn open_for_reading(path: &Path) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let fd = match rustix::fs::open(path, flags | OFlags::NOATIME, rustix::fs::Mode::empty()) {
        Ok(fd) => fd,
        // O_NOATIME is only allowed for the file's owner (or with CAP_FOWNER).
        Err(rustix::io::Errno::PERM) => rustix::fs::open(path, flags, rustix::fs::Mode::empty())?,
        Err(e) => return Err(e.into()),
    };
    Ok(File::from(fd))
}

impl Engine<'_> {
    fn item_error(&self, path: &Path, e: impl ToString) {
        self.errors.push(path, e);
    }

    /// Builds the tree for one level of the path hierarchy leading to the selected paths.
    /// `rel` holds the remaining components of each selected path below `dir`.
    fn build_level(&self, dir: &Path, rel: &[Vec<OsString>], parent: Option<&Tree>) -> Result<Id, RepoError> {
        let mut groups: BTreeMap<OsString, Vec<Vec<OsString>>> = BTreeMap::new();
        for r in rel {
            if let Some((first, rest)) = r.split_first() {
                groups.entry(first.clone()).or_default().push(rest.to_vec());
            }
        }
        let nodes: Vec<Option<Node>> = groups
            .into_par_iter()
            .map(|(name, rests)| -> Result<Option<Node>, RepoError> {
                let path = dir.join(&name);
                let fname = name_of(&name);
                let pnode = parent.and_then(|t| t.find(&fname.0));
                if rests.iter().any(|r| r.is_empty()) {
                    return self.entry(&path, fname, pnode);
                }
                // An intermediate directory: its own metadata, and only the selected children.
                let md = match fs::symlink_metadata(&path) {
                    Ok(md) => md,
                    Err(e) => {
                        self.item_error(&path, e);
                        return Ok(None);
                    }
                };
                let mut node = node_from_metadata(fname, &md);
                node.xattrs = self.xattrs(&path);
                let sub = self.parent_subtree(pnode);
                node.subtree = Some(self.build_level(&path, &rests, sub.as_ref())?);
                Ok(Some(node))
            })
            .collect::<Result<_, _>>()?;
        let mut tree = Tree {
            nodes: nodes.into_iter().flatten().collect(),
        };
        tree.sort();
        Ok(self.repo.save_tree(&tree)?.0)
    }

    fn parent_subtree(&self, pnode: Option<&Node>) -> Option<Tree> {
        let p = pnode.filter(|p| p.kind == NodeKind::Dir)?;
        self.repo.load_tree(&p.subtree?).ok()
    }

    fn xattrs(&self, path: &Path) -> Vec<Xattr> {
        let names = match xattr::list(path) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => return Vec::new(),
            Err(e) => {
                self.item_error(path, format!("extended attributes: {e}"));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for name in names {
            match xattr::get(path, &name) {
                Ok(Some(value)) => out.push(Xattr {
                    name: FileName(name.as_bytes().to_vec()),
                    value,
                }),
                Ok(None) => {}
                Err(e) => self.item_error(path, format!("extended attribute {}: {e}", name.to_string_lossy())),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Backs up one directory entry (recursively for directories).
    fn entry(&self, path: &Path, name: FileName, parent: Option<&Node>) -> Result<Option<Node>, RepoError> {
        let md = match fs::symlink_metadata(path) {
            Ok(md) => md,
            Err(e) => {
                self.item_error(path, e);
                return Ok(None);
            }
        };
        let mut node = node_from_metadata(name, &md);
        node.xattrs = self.xattrs(path);
        match node.kind {
            NodeKind::Dir => {
                self.progress.dirs.fetch_add(1, Relaxed);
                let sub = self.parent_subtree(parent);
                node.subtree = Some(self.dir(path, sub.as_ref())?);
            }
            NodeKind::File => {
                self.progress.files.fetch_add(1, Relaxed);
                self.progress.bytes_total.fetch_add(node.size, Relaxed);
                if let Some(p) = unchanged(parent, &node).filter(|p| p.content.iter().all(|id| self.repo.has_blob(id)))
                {
                    node.content = p.content;
                    node.extents = p.extents;
                    self.progress.files_unchanged.fetch_add(1, Relaxed);
                } else {
                    match self.file(path, &md) {
                        Ok(Ok((content, extents))) => {
                            node.content = content;
                            node.extents = extents;
                            self.progress.files_read.fetch_add(1, Relaxed);
                        }
                        Ok(Err(e)) => {
                            self.item_error(path, e);
                            return Ok(None);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            NodeKind::Symlink => match fs::read_link(path) {
                Ok(t) => {
                    self.progress.other.fetch_add(1, Relaxed);
                    node.target = Some(FileName(t.as_os_str().as_bytes().to_vec()));
                }
                Err(e) => {
                    self.item_error(path, e);
                    return Ok(None);
                }
            },
            _ => {
                self.progress.other.fetch_add(1, Relaxed);
            }
        }
        Ok(Some(node))
    }

    /// Backs up a directory's entries in parallel and stores its tree.
    fn dir(&self, path: &Path, parent: Option<&Tree>) -> Result<Id, RepoError> {
        let mut names: Vec<OsString> = match fs::read_dir(path) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            Err(e) => {
                self.item_error(path, format!("cannot list directory: {e}"));
                Vec::new()
            }
        };
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let nodes: Vec<Option<Node>> = names
            .into_par_iter()
            .map(|name| {
                let fname = name_of(&name);
                let pnode = parent.and_then(|t| t.find(&fname.0));
                self.entry(&path.join(&name), fname, pnode)
            })
            .collect::<Result<_, _>>()?;
        let tree = Tree {
            nodes: nodes.into_iter().flatten().collect(),
        };
        Ok(self.repo.save_tree(&tree)?.0)
    }

    /// Reads a file into blobs. The outer error is fatal (repository), the inner one is this file's.
    fn file(&self, path: &Path, md: &fs::Metadata) -> Result<io::Result<FileContent>, RepoError> {
        let file = match open_for_reading(path) {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        let size = md.len();
        let extents = if size > 0 && md.blocks() * 512 < size {
            match data_extents(&file, size) {
                Ok(x) => Some(x),
                Err(e) => return Ok(Err(e)),
            }
        } else {
            None
        };
        if extents.is_none() && size <= WHOLE_FILE_MAX {
            return self.whole_file(&file, size);
        }
        let reader: Box<dyn Read + Send + '_> = match &extents {
            Some(x) => Box::new(ExtentReader {
                file: &file,
                extents: x,
                index: 0,
                within: 0,
            }),
            None => Box::new(&file),
        };
        let ids = self.chunk_and_save(reader)?;
        Ok(ids.map(|ids| (ids, extents)))
    }

    /// Reads a file of known, moderate size into one buffer and chunks it in place (no copies of
    /// the chunks, no chunker buffer). Cut points are identical to the streaming chunker's.
    fn whole_file(&self, mut file: &File, size: u64) -> Result<io::Result<FileContent>, RepoError> {
        let mut buf = Vec::with_capacity(size as usize + 1);
        if let Err(e) = file.read_to_end(&mut buf) {
            return Ok(Err(e));
        }
        self.progress.bytes_read.fetch_add(buf.len() as u64, Relaxed);
        Ok(Ok((self.chunker.save_slice(&buf)?, None)))
    }

    /// Splits a stream into content-defined chunks and stores them, several in parallel.
    fn chunk_and_save(&self, reader: Box<dyn Read + Send + '_>) -> Result<io::Result<Vec<Id>>, RepoError> {
        self.chunker.save_stream(reader, &|n| {
            self.progress.bytes_read.fetch_add(n, Relaxed);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn normalize_is_lexical_and_absolute() {
        assert_eq!(normalize(Path::new("/a/./b/../c")).unwrap(), PathBuf::from("/a/c"));
        assert!(normalize(Path::new("rel")).unwrap().is_absolute());
    }

    #[test]
    fn sparse_extents_and_reader_return_only_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.set_len(32 << 20).unwrap();
        f.write_at(b"head", 0).unwrap();
        f.write_at(b"middle", 20 << 20).unwrap();
        f.sync_all().unwrap();
        let x = data_extents(&f, 32 << 20).unwrap();
        // Filesystems allocate in blocks: each extent covers its bytes, and the holes are left out.
        assert!(x.len() >= 2 && x.iter().map(|e| e.1).sum::<u64>() < 1 << 20, "{x:?}");
        assert!(x.iter().any(|&(o, l)| o <= 20 << 20 && o + l >= (20 << 20) + 6));
        let mut data = Vec::new();
        ExtentReader {
            file: &f,
            extents: &x,
            index: 0,
            within: 0,
        }
        .read_to_end(&mut data)
        .unwrap();
        assert_eq!(data.len() as u64, x.iter().map(|e| e.1).sum::<u64>());
        assert!(data.windows(6).any(|w| w == b"middle"));
    }

    #[test]
    fn unchanged_needs_equal_size_times_and_inode() {
        let mut a = Node::new(FileName::from("f"), NodeKind::File);
        a.size = 10;
        a.mtime_ns = 5;
        a.ctime_ns = 6;
        a.inode = 7;
        assert!(unchanged(Some(&a), &a).is_some());
        for change in [
            |n: &mut Node| n.size += 1,
            |n: &mut Node| n.mtime_ns += 1,
            |n: &mut Node| n.ctime_ns += 1,
            |n: &mut Node| n.inode += 1,
        ] {
            let mut b = a.clone();
            change(&mut b);
            assert!(unchanged(Some(&a), &b).is_none());
        }
        assert!(unchanged(None, &a).is_none());
    }
}
