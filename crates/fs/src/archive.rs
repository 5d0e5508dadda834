//! Tar streams to snapshot trees and back.
//!
//! Container engines hand out file trees as tar streams (Docker's archive endpoint, `kubectl exec
//! tar`). [`tar_to_tree`] stores such a stream in the repository as an ordinary tree, chunked and
//! deduplicated exactly like files read from disk, so a later backup of the same volume adds only
//! the changed chunks. [`tree_to_tar`] writes a stored tree back out as a tar stream. Both run in
//! bounded memory: small files are batched (at most [`BATCH_BYTES`]) and saved on all cores, large
//! files stream through the chunker.
//!
//! [`TreeAssembler`] builds a tree from `(path, node)` pairs in any order; adapters also use it to
//! store their object descriptions as small files.
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering::Relaxed;

use lifeboat_model::{FileName, Id, Node, NodeKind};
use lifeboat_repo::{RepoError, Repository};
use rayon::prelude::*;

use crate::assemble::{Limits, StreamingAssembler};
use crate::backup::Progress;
use crate::chunk::Chunker;
use crate::{FsError, ItemError};

/// Small files are collected up to this many bytes, then stored in parallel.
pub const BATCH_BYTES: usize = 16 << 20;
/// Files larger than this stream through the chunker instead of being batched.
const WHOLE_FILE_MAX: u64 = 16 << 20;
/// Blobs of one file fetched in parallel at once when writing a tar stream.
const BLOBS_IN_FLIGHT: usize = 8;

/// Builds a tree from nodes given by path, in any order, and stores it bottom-up.
///
/// Paths are relative, `/`-separated byte strings (`a/b/c`); the empty path is the root. Missing
/// parent directories are created with mode 0755. Adding the same path twice keeps the last node
/// (a file added where a directory was replaces the directory and everything in it, and the other
/// way round).
#[derive(Default)]
pub struct TreeAssembler {
    /// Directory path -> (its own node, its non-directory children by name).
    pub(crate) dirs: BTreeMap<Vec<u8>, DirEntries>,
}

/// A directory's own node and its non-directory children by name.
pub(crate) type DirEntries = (Node, BTreeMap<Vec<u8>, Node>);

pub(crate) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn dir_node(name: &[u8]) -> Node {
    let mut n = Node::new(FileName(name.to_vec()), NodeKind::Dir);
    n.mode = 0o755;
    n
}

impl TreeAssembler {
    pub fn new() -> Self {
        let mut t = TreeAssembler::default();
        t.dirs.insert(Vec::new(), (dir_node(b""), BTreeMap::new()));
        t
    }

    pub(crate) fn ensure_dir(&mut self, path: &[u8]) -> &mut DirEntries {
        if !self.dirs.contains_key(path) {
            let (parent, name) = split(path);
            // A directory replaces what was added at its path before.
            self.ensure_dir(parent).1.remove(name);
            self.dirs.insert(path.to_vec(), (dir_node(name), BTreeMap::new()));
        }
        self.dirs.get_mut(path).expect("just inserted")
    }

    /// Adds a node at `path`: a directory's metadata when `node.kind` is `Dir`, or, for a directory
    /// node that already has a stored subtree, that whole stored directory (grafted as it is).
    pub fn add(&mut self, path: &[u8], mut node: Node) {
        let (parent, name) = split(path);
        node.name = FileName(name.to_vec());
        if node.kind == NodeKind::Dir && node.subtree.is_none() {
            self.ensure_dir(path).0 = node;
        } else {
            // It replaces a directory added at its path before, with everything below.
            if !path.is_empty() && self.dirs.remove(path).is_some() {
                let mut below = path.to_vec();
                below.push(b'/');
                let gone: Vec<Vec<u8>> = self
                    .dirs
                    .range(below.clone()..)
                    .map(|(p, _)| p.clone())
                    .take_while(|p| p.starts_with(&below))
                    .collect();
                for p in gone {
                    self.dirs.remove(&p);
                }
            }
            self.ensure_dir(parent).1.insert(name.to_vec(), node);
        }
    }

    /// Adds a regular file with `data` as its content (stored now), mode 0600, owned by root.
    pub fn add_bytes(&mut self, chunker: &Chunker, path: &[u8], data: &[u8], mtime_ns: i64) -> Result<(), RepoError> {
        let mut n = Node::new(FileName::default(), NodeKind::File);
        n.mode = 0o600;
        n.size = data.len() as u64;
        n.mtime_ns = mtime_ns;
        n.content = chunker.save_slice(data)?;
        self.add(path, n);
        Ok(())
    }

    /// The non-directory node at `path`, if added.
    pub fn get_mut(&mut self, path: &[u8]) -> Option<&mut Node> {
        let (parent, name) = split(path);
        self.dirs.get_mut(parent)?.1.get_mut(name)
    }

    /// Every non-directory node (for fix-ups such as hard-link counts).
    pub fn nodes_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        self.dirs.values_mut().flat_map(|(_, c)| c.values_mut())
    }

    /// Stores every directory, deepest first, and returns the root directory node with its subtree.
    pub fn finish(mut self, repo: &Repository) -> Result<Node, RepoError> {
        let mut paths: Vec<Vec<u8>> = self.dirs.keys().cloned().collect();
        // Deepest first: a directory's subdirectories are stored before it.
        paths.sort_by_key(|p| {
            std::cmp::Reverse(if p.is_empty() {
                0
            } else {
                p.iter().filter(|&&b| b == b'/').count() + 1
            })
        });
        let mut done: HashMap<Vec<u8>, Vec<Node>> = HashMap::new();
        for path in paths {
            let (node, children) = self.dirs.remove(&path).expect("listed");
            let mut nodes: Vec<Node> = children.into_values().collect();
            nodes.extend(done.remove(&path).unwrap_or_default());
            let node = crate::assemble::store_dir(repo, node, nodes)?;
            if path.is_empty() {
                return Ok(node);
            }
            done.entry(split(&path).0.to_vec()).or_default().push(node);
        }
        unreachable!("the root directory is always present")
    }
}

/// The whole content of a stored (non-sparse) file node: for the small documents adapters store.
pub fn read_file(repo: &Repository, n: &Node) -> Result<Vec<u8>, RepoError> {
    let mut out = Vec::with_capacity(n.size as usize);
    for id in &n.content {
        out.extend_from_slice(&repo.load_blob(id)?);
    }
    Ok(out)
}

/// The result of reading a tar stream into the repository.
#[derive(Debug)]
pub struct TarOutcome {
    /// The top directory (metadata of the stripped prefix entry, if the stream had one) with its subtree.
    pub root: Node,
    /// Entries that were skipped (unsafe paths, unknown types, dangling hard links).
    pub errors: Vec<ItemError>,
}

/// Cleans a tar path: drops `./` and empty components, strips `strip` leading components; `None`
/// for a path with `..` or one that lies above the stripped prefix.
fn clean_path(raw: &[u8], strip: usize) -> Option<Vec<u8>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => parts.push(c),
        }
    }
    if parts.len() < strip {
        return None;
    }
    Some(parts[strip..].join(&b'/'))
}

/// Reads a tar stream and stores its files as a tree, returning the top directory node.
///
/// `strip` leading path components are removed (an entry that *is* the stripped prefix gives the
/// root's metadata). Regular files, directories, symlinks, hard links, fifos and device nodes are
/// kept with mode, owner and mtime; hard links share content and a synthetic inode so a file
/// restore recreates them. Unsafe paths are refused and listed in [`TarOutcome::errors`]. A
/// truncated or malformed stream fails the whole call ([`FsError::BadSource`]).
pub fn tar_to_tree(
    repo: &Repository,
    reader: impl Read,
    strip: usize,
    source: &str,
    progress: &Progress,
) -> Result<TarOutcome, FsError> {
    tar_to_tree_with(repo, reader, strip, source, progress, Limits::default()).map(|(out, _)| out)
}

/// How [`tar_to_tree_with`] held the tree while it built it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssemblyStats {
    /// The most nodes held in memory at once.
    pub peak_nodes: usize,
    /// Directories read back because the stream came back to them.
    pub reopened: usize,
}

/// [`tar_to_tree`] with the given flush [`Limits`] (see [`crate::assemble`]), and how it went.
pub fn tar_to_tree_with(
    repo: &Repository,
    reader: impl Read,
    strip: usize,
    source: &str,
    progress: &Progress,
    limits: Limits,
) -> Result<(TarOutcome, AssemblyStats), FsError> {
    let chunker = Chunker::new(repo);
    let bad = |e: io::Error| FsError::BadSource {
        path: source.into(),
        reason: format!("reading the tar stream: {e}"),
    };
    let mut asm = StreamingAssembler::new(repo, limits);
    let mut errors = Vec::new();
    let mut links: Vec<(Vec<u8>, Vec<u8>, Node)> = Vec::new();

    // Small files are stored in batches by a second thread (on rayon's pool) while this one goes on
    // reading the stream: reading and storing overlap. At most one batch waits between them, and
    // each stored batch comes back at once (the reader takes it between entries), so a directory
    // waits only for the files of the batches in flight.
    let (tx, rx) = crossbeam_channel::bounded::<Pending>(1);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Vec<(Vec<u8>, Node)>>();
    let pool = BufferPool::default();
    let (read, saved) = std::thread::scope(|scope| {
        let pool = &pool;
        let chunker = &chunker;
        let saver = scope.spawn(move || -> Result<(), RepoError> {
            for batch in rx.iter() {
                // Cut every file, then store all chunks of the batch in one flat parallel pass
                // (one fork-join per batch, not one per file).
                let cuts: Vec<Vec<&[u8]>> = batch.par_iter().map(|(_, _, data)| chunker.cut(data)).collect();
                let flat: Vec<&[u8]> = cuts.iter().flatten().copied().collect();
                let ids: Vec<Id> = flat
                    .par_iter()
                    .map(|c| chunker.save_chunk(c))
                    .collect::<Result<_, _>>()?;
                let mut ids = ids.into_iter();
                let counts: Vec<usize> = cuts.iter().map(Vec::len).collect();
                drop(cuts);
                let mut done = Vec::with_capacity(batch.len());
                for ((path, mut node, data), n) in batch.into_iter().zip(counts) {
                    node.content = ids.by_ref().take(n).collect();
                    done.push((path, node));
                    pool.put(data);
                }
                if done_tx.send(done).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let read = read_entries(
            chunker,
            pool,
            reader,
            strip,
            progress,
            &tx,
            &done_rx,
            &mut asm,
            &mut errors,
            &mut links,
            &bad,
        );
        drop(tx);
        (read, saver.join().expect("the saver thread does not panic"))
    });
    // The saver's failure explains a stopped reader, so it comes first.
    saved?;
    read?;
    for batch in done_rx.try_iter() {
        for (path, node) in batch {
            asm.arrived(&path, node)?;
        }
    }

    // Hard links share their target's content and inode; every member gets the group's link count.
    let mut counts: HashMap<u64, u64> = HashMap::new();
    let mut members: Vec<Vec<u8>> = Vec::new();
    for (path, target, mut node) in links {
        let Some(t) = asm.get_mut(&target)?.filter(|t| t.kind == NodeKind::File).cloned() else {
            errors.push(ItemError {
                path: String::from_utf8_lossy(&path).into_owned(),
                error: "hard link to a file that is not in the archive".into(),
            });
            continue;
        };
        node.size = t.size;
        node.content = t.content;
        node.inode = t.inode;
        *counts.entry(t.inode).or_insert(1) += 1;
        members.push(target);
        members.push(path.clone());
        asm.add(&path, node)?;
    }
    for m in members {
        if let Some(n) = asm.get_mut(&m)?.filter(|n| n.kind == NodeKind::File) {
            n.nlink = counts.get(&n.inode).copied().unwrap_or(1);
        }
    }
    let stats = AssemblyStats {
        peak_nodes: asm.peak_nodes,
        reopened: asm.reopened,
    };
    let root = asm.finish()?;
    Ok((TarOutcome { root, errors }, stats))
}

/// Reusable file buffers: their memory is already initialised and mapped, so reading the next
/// file into one costs neither zeroing nor page faults. Holds at most [`POOL_BYTES`].
#[derive(Default)]
struct BufferPool(std::sync::Mutex<Vec<Vec<u8>>>);

const POOL_BYTES: usize = 64 << 20;

impl BufferPool {
    /// A buffer of exactly `len` bytes (contents unspecified).
    fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = self.0.lock().expect("poisoned").pop().unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0);
        } else {
            buf.truncate(len);
        }
        buf
    }

    fn put(&self, mut buf: Vec<u8>) {
        let mut pool = self.0.lock().expect("poisoned");
        let held: usize = pool.iter().map(Vec::len).sum();
        if pool.len() < 256 && held + buf.capacity() <= POOL_BYTES {
            // Keep the whole initialised length for the next `take`.
            let cap = buf.capacity();
            if buf.len() < cap {
                buf.resize(cap, 0);
            }
            pool.push(buf);
        }
    }
}

/// Small files waiting to be stored: (path, node, content).
type Pending = Vec<(Vec<u8>, Node, Vec<u8>)>;

/// The reading side of [`tar_to_tree`]: walks the stream, hands small files to the saver in
/// batches, stores large files itself (streaming), records everything else in `asm`, takes back
/// the saver's stored batches between entries and lets `asm` store the directories left.
#[allow(clippy::too_many_arguments)]
fn read_entries(
    chunker: &Chunker,
    pool: &BufferPool,
    reader: impl Read,
    strip: usize,
    progress: &Progress,
    tx: &crossbeam_channel::Sender<Pending>,
    done: &crossbeam_channel::Receiver<Vec<(Vec<u8>, Node)>>,
    asm: &mut StreamingAssembler,
    errors: &mut Vec<ItemError>,
    links: &mut Vec<(Vec<u8>, Vec<u8>, Node)>,
    bad: &dyn Fn(io::Error) -> FsError,
) -> Result<(), FsError> {
    let mut batch: Pending = Vec::new();
    let mut batch_bytes = 0usize;
    let mut next_inode = 1u64;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path_bytes().into_owned();
        let Some(path) = clean_path(&raw, strip) else {
            if clean_path(&raw, 0).is_some_and(|p| p.split(|&b| b == b'/').count() < strip) {
                continue; // a directory above the prefix
            }
            errors.push(ItemError {
                path: String::from_utf8_lossy(&raw).into_owned(),
                error: "refusing an unsafe path in the tar stream".into(),
            });
            continue;
        };
        let h = entry.header();
        let kind = match h.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => NodeKind::File,
            tar::EntryType::Directory => NodeKind::Dir,
            tar::EntryType::Symlink => NodeKind::Symlink,
            tar::EntryType::Link => NodeKind::File,
            tar::EntryType::Char => NodeKind::Chardev,
            tar::EntryType::Block => NodeKind::Blockdev,
            tar::EntryType::Fifo => NodeKind::Fifo,
            other => {
                errors.push(ItemError {
                    path: String::from_utf8_lossy(&raw).into_owned(),
                    error: format!("unsupported tar entry type {other:?}"),
                });
                continue;
            }
        };
        let mut node = Node::new(FileName::default(), kind);
        node.mode = h.mode().map_err(bad)? & 0o7777;
        node.uid = h.uid().map_err(bad)? as u32;
        node.gid = h.gid().map_err(bad)? as u32;
        node.mtime_ns = (h.mtime().map_err(bad)? as i64).saturating_mul(1_000_000_000);
        if matches!(kind, NodeKind::Chardev | NodeKind::Blockdev) {
            let major = h.device_major().map_err(bad)?.unwrap_or(0) as u64;
            let minor = h.device_minor().map_err(bad)?.unwrap_or(0) as u64;
            node.rdev = ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & !0xff) << 12) | ((major & !0xfff) << 32);
        }
        if path.is_empty() && kind != NodeKind::Dir {
            errors.push(ItemError {
                path: String::from_utf8_lossy(&raw).into_owned(),
                error: "the archive's top entry is not a directory".into(),
            });
            continue;
        }
        if h.entry_type() == tar::EntryType::Link {
            let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
            match clean_path(&target, strip) {
                Some(t) if !t.is_empty() => links.push((path, t, node)),
                _ => errors.push(ItemError {
                    path: String::from_utf8_lossy(&raw).into_owned(),
                    error: "hard link to a path outside the archive".into(),
                }),
            }
            continue;
        }
        // The directory the stream is in: it and its ancestors stay open.
        let here = if kind == NodeKind::Dir {
            path.clone()
        } else {
            split(&path).0.to_vec()
        };
        match kind {
            NodeKind::Dir => {
                progress.dirs.fetch_add(1, Relaxed);
                asm.add(&path, node)?;
            }
            NodeKind::Symlink => {
                progress.other.fetch_add(1, Relaxed);
                node.target = Some(FileName(
                    entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default(),
                ));
                asm.add(&path, node)?;
            }
            NodeKind::File => {
                let size = entry.size();
                node.size = size;
                node.inode = next_inode;
                node.nlink = 1;
                next_inode += 1;
                progress.files.fetch_add(1, Relaxed);
                progress.files_read.fetch_add(1, Relaxed);
                progress.bytes_total.fetch_add(size, Relaxed);
                if size <= WHOLE_FILE_MAX {
                    let mut data = pool.take(size as usize);
                    entry.read_exact(&mut data).map_err(bad)?;
                    progress.bytes_read.fetch_add(data.len() as u64, Relaxed);
                    batch_bytes += data.len();
                    asm.expect(&path);
                    batch.push((path, node, data));
                    if batch_bytes >= BATCH_BYTES || batch.len() >= 4096 {
                        if tx.send(std::mem::take(&mut batch)).is_err() {
                            return Ok(()); // the saver failed; its error is reported
                        }
                        batch_bytes = 0;
                    }
                } else {
                    let ids = chunker
                        .save_stream(&mut entry, &|n| {
                            progress.bytes_read.fetch_add(n, Relaxed);
                        })?
                        .map_err(bad)?;
                    node.content = ids;
                    asm.add(&path, node)?;
                }
            }
            _ => {
                progress.other.fetch_add(1, Relaxed);
                asm.add(&path, node)?;
            }
        }
        for stored in done.try_iter() {
            for (path, node) in stored {
                asm.arrived(&path, node)?;
            }
        }
        asm.tick(&here)?;
    }
    if !batch.is_empty() {
        let _ = tx.send(batch);
    }
    Ok(())
}

/// What the loader thread of [`tree_to_tar`] hands to the writer, in archive order.
enum Item {
    /// An entry; for a hard link already written, `link` names the first path.
    Entry {
        path: Vec<u8>,
        node: Box<Node>,
        link: Option<Vec<u8>>,
    },
    /// The next piece of the current file's content.
    Data(Vec<u8>),
}

/// Pieces of content queued between the loader and the writer (bounds memory to about this many blobs).
const QUEUE: usize = 16;

/// The largest piece of zeros sent for a hole of a sparse file.
const ZERO_PIECE: u64 = 1 << 20;

/// Writes the tree below `root` (a directory node with a subtree) as a tar stream whose entries lie
/// under `prefix` (the root itself is the entry `prefix/`). Ownership and modes are numeric; hard
/// links are written once and linked after. Returns the number of content bytes written.
///
/// A loader thread reads and decrypts blobs (several in parallel) ahead of the writer, so loading
/// and sending overlap. A damaged or missing blob fails the call with the repository's error: the
/// stream then ends early, and the receiver must treat the transfer as failed.
pub fn tree_to_tar(repo: &Repository, root: &Node, prefix: &str, writer: impl VecWrite) -> Result<u64, FsError> {
    tree_delta_to_tar(repo, root, None, prefix, writer)
}

/// As [`tree_to_tar`], but with `base` (the tree the receiver holds now) only what differs from
/// it: entries [`unchanged`] in `base` are left out (a directory whose subtree is unchanged, with
/// everything below it). What `base` has and `root` does not is not in the stream: see
/// [`removed_paths`].
pub fn tree_delta_to_tar(
    repo: &Repository,
    root: &Node,
    base: Option<&Node>,
    prefix: &str,
    writer: impl VecWrite,
) -> Result<u64, FsError> {
    let (tx, rx) = crossbeam_channel::bounded::<Result<Item, RepoError>>(QUEUE);
    let top = prefix.trim_end_matches('/').as_bytes().to_vec();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut links = HashMap::new();
            if let Err(e) = load_entry(repo, &tx, &mut links, top, root, base) {
                let _ = tx.send(Err(e));
            }
        });
        // The receiver goes with the writer: if writing fails, the loader's sends fail and it stops.
        write_tar(rx, prefix, writer)
    })
}

/// Whether a receiver holding `base` at a path already has `n` there: same kind, content,
/// metadata and (directories) subtree. Hard-linked files never count as unchanged.
pub fn unchanged(n: &Node, base: &Node) -> bool {
    n.kind == base.kind
        && (n.mode, n.uid, n.gid, n.mtime_ns, n.size, n.rdev)
            == (base.mode, base.uid, base.gid, base.mtime_ns, base.size, base.rdev)
        && n.content == base.content
        && n.extents == base.extents
        && n.subtree == base.subtree
        && n.target == base.target
        && n.xattrs == base.xattrs
        && !(n.kind == NodeKind::File && (n.nlink > 1 || base.nlink > 1))
}

/// The children of a directory node, by name (none for other nodes).
pub(crate) fn children(repo: &Repository, n: &Node) -> Result<Vec<Node>, RepoError> {
    match (n.kind, n.subtree) {
        (NodeKind::Dir, Some(sub)) => Ok(repo
            .load_tree(&sub)?
            .nodes
            .into_iter()
            .filter(|c| !(c.name.0.is_empty() || c.name.0.contains(&b'/') || c.name.0 == b"." || c.name.0 == b".."))
            .collect()),
        _ => Ok(Vec::new()),
    }
}

/// Paths (relative, `/`-separated) that a receiver holding `base` must remove before it takes the
/// stream of [`tree_delta_to_tar`] to hold `root`: what is gone, and what changed kind (a file that
/// became a directory). Parents come before what is below them; below a removed path nothing is
/// listed.
pub fn removed_paths(repo: &Repository, root: &Node, base: &Node) -> Result<Vec<Vec<u8>>, FsError> {
    fn walk(repo: &Repository, n: &Node, base: &Node, path: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), RepoError> {
        if n.subtree == base.subtree {
            return Ok(());
        }
        let now = children(repo, n)?;
        let now: HashMap<&[u8], &Node> = now.iter().map(|c| (c.name.0.as_slice(), c)).collect();
        for b in children(repo, base)? {
            let mut p = path.to_vec();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&b.name.0);
            match now.get(b.name.0.as_slice()) {
                Some(c) if c.kind == b.kind => {
                    if c.kind == NodeKind::Dir {
                        walk(repo, c, &b, &p, out)?;
                    }
                }
                _ => out.push(p),
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(repo, root, base, b"", &mut out)?;
    Ok(out)
}

/// Sends `node` (and everything below it) to the writer, leaving out what is [`unchanged`] in
/// `base`. Stops quietly when the writer is gone.
fn load_entry(
    repo: &Repository,
    tx: &crossbeam_channel::Sender<Result<Item, RepoError>>,
    links: &mut HashMap<(u64, u64), Vec<u8>>,
    path: Vec<u8>,
    n: &Node,
    base: Option<&Node>,
) -> Result<bool, RepoError> {
    if base.is_some_and(|b| unchanged(n, b)) {
        return Ok(true);
    }
    let mut link = None;
    if n.kind == NodeKind::File && n.nlink > 1 {
        match links.get(&(n.dev, n.inode)) {
            Some(first) => link = Some(first.clone()),
            None => {
                links.insert((n.dev, n.inode), path.clone());
            }
        }
    }
    let data = n.kind == NodeKind::File && link.is_none();
    if tx
        .send(Ok(Item::Entry {
            path: path.clone(),
            node: Box::new(n.clone()),
            link,
        }))
        .is_err()
    {
        return Ok(false);
    }
    if data {
        // A sparse file goes out in full, its holes as zeros, streamed: never more than a blob
        // and a piece of zeros in memory, whatever the file's size.
        let sparse = n.extents.is_some();
        let mut ext = n.extents.as_deref().unwrap_or_default().iter().copied();
        let (mut at, mut left) = ext.next().unwrap_or((0, 0));
        // Bytes of a sparse file sent so far.
        let mut pos = 0u64;
        let send = |d: Vec<u8>| tx.send(Ok(Item::Data(d))).is_ok();
        let zeros = |pos: &mut u64, to: u64| -> bool {
            while *pos < to {
                let len = (to - *pos).min(ZERO_PIECE);
                if !send(vec![0u8; len as usize]) {
                    return false;
                }
                *pos += len;
            }
            true
        };
        for ids in n.content.chunks(BLOBS_IN_FLIGHT) {
            let loaded: Vec<Vec<u8>> = ids.par_iter().map(|id| repo.load_blob(id)).collect::<Result<_, _>>()?;
            for blob in loaded {
                if !sparse {
                    if !send(blob) {
                        return Ok(false);
                    }
                    continue;
                }
                let mut rest = blob.as_slice();
                while !rest.is_empty() {
                    while left == 0 {
                        (at, left) = ext.next().unwrap_or((0, u64::MAX));
                    }
                    let take = (left as usize).min(rest.len());
                    // Extents in order and within the size; anything else is cut, as before.
                    let start = at.max(pos).min(n.size);
                    let end = (at + take as u64).min(n.size);
                    if !zeros(&mut pos, start) {
                        return Ok(false);
                    }
                    if end > start {
                        let from = (start - at) as usize;
                        if !send(rest[from..from + (end - start) as usize].to_vec()) {
                            return Ok(false);
                        }
                        pos = end;
                    }
                    (at, left, rest) = (at + take as u64, left - take as u64, &rest[take..]);
                }
            }
        }
        if sparse && !zeros(&mut pos, n.size) {
            return Ok(false);
        }
    }
    if n.kind == NodeKind::Dir {
        let before = match base {
            Some(b) if b.kind == NodeKind::Dir => children(repo, b)?,
            _ => Vec::new(),
        };
        let before: HashMap<&[u8], &Node> = before.iter().map(|b| (b.name.0.as_slice(), b)).collect();
        for c in children(repo, n)? {
            let mut child = path.clone();
            child.push(b'/');
            child.extend_from_slice(&c.name.0);
            let was = before.get(c.name.0.as_slice()).copied();
            if !load_entry(repo, tx, links, child, &c, was)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Reads the content pieces of one file from the loader, up to `left` bytes.
struct DataReader<'a> {
    rx: &'a crossbeam_channel::Receiver<Result<Item, RepoError>>,
    cur: Vec<u8>,
    pos: usize,
    left: u64,
}

impl Read for DataReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(Item::Data(d))) => (self.cur, self.pos) = (d, 0),
                Ok(Err(e)) => return Err(io::Error::other(e)),
                Ok(Ok(Item::Entry { .. })) | Err(_) => {
                    return Err(io::Error::other("file content is shorter than its recorded size"))
                }
            }
        }
        let n = (self.cur.len() - self.pos).min(buf.len()).min(self.left as usize);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        self.left -= n as u64;
        Ok(n)
    }
}

/// A writer that can also take whole buffers by value, so large data need not be copied.
pub trait VecWrite: Write {
    /// Writes all of `data` (the default copies it through [`Write::write_all`]).
    fn write_vec(&mut self, data: Vec<u8>) -> io::Result<()> {
        self.write_all(&data)
    }
}

impl VecWrite for Vec<u8> {}

impl<W: VecWrite + ?Sized> VecWrite for &mut W {
    fn write_vec(&mut self, data: Vec<u8>) -> io::Result<()> {
        (**self).write_vec(data)
    }
}

/// Writes a regular file's header, its content pieces by value, and the padding to 512 bytes.
fn write_file_direct<W: VecWrite>(
    rx: &crossbeam_channel::Receiver<Result<Item, RepoError>>,
    w: &mut W,
    h: &tar::Header,
    size: u64,
) -> io::Result<()> {
    w.write_all(h.as_bytes())?;
    let mut left = size;
    while left > 0 {
        let piece = match rx.recv() {
            Ok(Ok(Item::Data(d))) => d,
            Ok(Err(e)) => return Err(io::Error::other(e)),
            Ok(Ok(Item::Entry { .. })) | Err(_) => {
                return Err(io::Error::other("file content is shorter than its recorded size"))
            }
        };
        if piece.len() as u64 > left {
            return Err(io::Error::other("file content is longer than its recorded size"));
        }
        left -= piece.len() as u64;
        w.write_vec(piece)?;
    }
    let pad = (512 - (size % 512) as usize) % 512;
    w.write_all(&[0u8; 512][..pad])
}

/// The writing side of [`tree_to_tar`].
fn write_tar(
    rx: crossbeam_channel::Receiver<Result<Item, RepoError>>,
    prefix: &str,
    writer: impl VecWrite,
) -> Result<u64, FsError> {
    let io_err = |e: io::Error| match e.downcast::<RepoError>() {
        Ok(r) => FsError::Repo(r),
        Err(e) => FsError::BadTarget {
            path: prefix.into(),
            reason: format!("writing the tar stream: {e}"),
        },
    };
    let mut b = tar::Builder::new(writer);
    b.mode(tar::HeaderMode::Complete);
    let mut bytes = 0u64;
    while let Ok(item) = rx.recv() {
        let (path, n, link) = match item? {
            Item::Entry { path, node, link } => (path, node, link),
            Item::Data(_) => return Err(io_err(io::Error::other("content without an entry"))),
        };
        let mut h = tar::Header::new_gnu();
        h.set_mode(n.mode);
        h.set_uid(n.uid as u64);
        h.set_gid(n.gid as u64);
        h.set_mtime(n.mtime_ns.div_euclid(1_000_000_000).max(0) as u64);
        h.set_size(0);
        let p = std::str::from_utf8(&path)
            .map_err(|_| io_err(io::Error::other("a non-UTF-8 name cannot go into this tar stream")))?;
        let r = match (n.kind, link) {
            (NodeKind::Dir, _) => {
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, format!("{p}/"), io::empty())
            }
            (NodeKind::File, Some(first)) => {
                h.set_entry_type(tar::EntryType::Link);
                b.append_link(&mut h, p, String::from_utf8_lossy(&first).as_ref())
            }
            (NodeKind::File, None) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(n.size);
                bytes += n.size;
                if h.set_path(p).is_ok() {
                    // The name fits the header: the blobs go to the writer as they are (no copy).
                    h.set_cksum();
                    write_file_direct(&rx, b.get_mut(), &h, n.size)
                } else {
                    let reader = DataReader {
                        rx: &rx,
                        cur: Vec::new(),
                        pos: 0,
                        left: n.size,
                    };
                    b.append_data(&mut h, p, reader)
                }
            }
            (NodeKind::Symlink, _) => {
                h.set_entry_type(tar::EntryType::Symlink);
                let t = n.target.as_ref().map(|t| t.lossy().into_owned()).unwrap_or_default();
                b.append_link(&mut h, p, t)
            }
            (NodeKind::Fifo | NodeKind::Chardev | NodeKind::Blockdev, _) => {
                h.set_entry_type(match n.kind {
                    NodeKind::Fifo => tar::EntryType::Fifo,
                    NodeKind::Chardev => tar::EntryType::Char,
                    _ => tar::EntryType::Block,
                });
                let major = ((n.rdev >> 8) & 0xfff) | ((n.rdev >> 32) & !0xfff);
                let minor = (n.rdev & 0xff) | ((n.rdev >> 12) & !0xff);
                h.set_device_major(major as u32)
                    .and_then(|_| h.set_device_minor(minor as u32))
                    .and_then(|_| b.append_data(&mut h, p, io::empty()))
            }
            (NodeKind::Socket, _) => Ok(()),
        };
        r.map_err(io_err)?;
    }
    b.finish().map_err(io_err)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_strips_and_refuses_escapes() {
        assert_eq!(clean_path(b"v/a/b", 1), Some(b"a/b".to_vec()));
        assert_eq!(clean_path(b"./v/./a//b/", 1), Some(b"a/b".to_vec()));
        assert_eq!(clean_path(b"v", 1), Some(Vec::new()));
        assert_eq!(clean_path(b"v/../etc/passwd", 1), None);
        assert_eq!(clean_path(b"", 1), None);
    }

    fn repo(dir: &std::path::Path) -> Repository {
        let backend = lifeboat_repo::open_location(dir.to_str().unwrap()).unwrap();
        let kdf = lifeboat_repo::keys::KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        Repository::init(backend, b"pw", kdf).unwrap()
    }

    fn sample_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(999);
            h.set_gid(998);
            h.set_mtime(1_700_000_000);
            h.set_size(data.len() as u64);
            match link {
                Some(t) => b.append_link(&mut h, path, t).unwrap(),
                None => b.append_data(&mut h, path, data).unwrap(),
            }
        };
        add("vol/", tar::EntryType::Directory, 0o700, b"", None);
        add("vol/small.txt", tar::EntryType::Regular, 0o644, b"hello", None);
        let big: Vec<u8> = (0..20u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        add("vol/deep/dir/big.bin", tar::EntryType::Regular, 0o600, &big, None);
        add("vol/hard", tar::EntryType::Link, 0o644, b"", Some("vol/small.txt"));
        add("vol/sym", tar::EntryType::Symlink, 0o777, b"", Some("small.txt"));
        // The tar crate refuses to write `..`; a hostile stream has it anyway.
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"vol/../escape");
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(1);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn tar_round_trip_keeps_files_links_and_owners() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(&dir.path().join("repo"));
        let input = sample_tar();
        let out = tar_to_tree(&repo, input.as_slice(), 1, "test", &Progress::default()).unwrap();
        repo.flush().unwrap();
        assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
        assert!(out.errors[0].path.contains("escape"));
        assert_eq!(out.root.mode, 0o700);

        let mut written = Vec::new();
        tree_to_tar(&repo, &out.root, "again", &mut written).unwrap();
        let mut seen = BTreeMap::new();
        for e in tar::Archive::new(written.as_slice()).entries().unwrap() {
            let mut e = e.unwrap();
            let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            let link = e.link_name_bytes().map(|l| String::from_utf8(l.into_owned()).unwrap());
            seen.insert(path, (h.entry_type(), h.mode().unwrap(), h.uid().unwrap(), data, link));
        }
        let original: Vec<u8> = (0..20u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert_eq!(seen["again/"].1, 0o700);
        // Hard links: the first in name order carries the data, the other links to it.
        assert_eq!(seen["again/hard"].3, b"hello");
        assert_eq!(seen["again/hard"].2, 999);
        assert_eq!(seen["again/small.txt"].0, tar::EntryType::Link);
        assert_eq!(seen["again/small.txt"].4.as_deref(), Some("again/hard"));
        assert!(seen["again/deep/dir/big.bin"].3 == original);
        assert_eq!(seen["again/sym"].4.as_deref(), Some("small.txt"));
        assert!(!seen.keys().any(|k| k.contains("escape")));

        // The same stream again stores nothing new: every chunk deduplicates.
        let before = repo.stats().blobs_added.load(Relaxed);
        tar_to_tree(&repo, input.as_slice(), 1, "test", &Progress::default()).unwrap();
        assert_eq!(repo.stats().blobs_added.load(Relaxed), before);
    }

    #[test]
    fn sparse_files_are_written_in_full() {
        // Holes smaller and larger than one piece of zeros (the stream never holds the file).
        // (size, extents, content)
        type Case = (u64, Vec<(u64, u64)>, &'static [u8]);
        let cases: [Case; 3] = [
            (10_000, vec![(100, 3), (9_000, 2)], b"abcde"),
            (3_600_000, vec![(0, 2), (2_500_000, 1)], b"xyz"),
            (5 << 20, vec![(3 << 20, 4)], b"tail"),
        ];
        for (size, extents, content) in cases {
            let dir = tempfile::tempdir().unwrap();
            let repo = repo(&dir.path().join("repo"));
            let chunker = Chunker::new(&repo);
            let mut asm = TreeAssembler::new();
            let mut n = Node::new(FileName::default(), NodeKind::File);
            n.mode = 0o644;
            n.size = size;
            n.extents = Some(extents.clone());
            n.content = chunker.save_slice(content).unwrap();
            asm.add(b"holes", n);
            let root = asm.finish(&repo).unwrap();
            repo.flush().unwrap();
            let mut out = Vec::new();
            tree_to_tar(&repo, &root, "v", &mut out).unwrap();
            let mut ar = tar::Archive::new(out.as_slice());
            let mut e = ar.entries().unwrap().nth(1).unwrap().unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            let mut want = vec![0u8; size as usize];
            let mut rest = content;
            for (at, len) in extents {
                want[at as usize..(at + len) as usize].copy_from_slice(&rest[..len as usize]);
                rest = &rest[len as usize..];
            }
            assert!(data == want, "size {size}");
        }
    }

    #[test]
    fn truncated_tar_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(&dir.path().join("repo"));
        let input = sample_tar();
        let cut = &input[..input.len() / 2];
        assert!(matches!(
            tar_to_tree(&repo, cut, 1, "test", &Progress::default()),
            Err(FsError::BadSource { .. })
        ));
    }

    #[test]
    fn split_parent_and_name() {
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
    }

    /// A tar of `files` (path, content; a path ending in `/` is a directory) under `vol/`.
    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in [("", &b""[..])].iter().chain(files) {
            let mut h = tar::Header::new_gnu();
            let dir = path.is_empty() || path.ends_with('/');
            h.set_entry_type(if dir {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            h.set_mode(if dir { 0o755 } else { 0o644 });
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, format!("vol/{path}"), *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_delta_holds_what_changed_and_with_the_removals_turns_the_old_tree_into_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(&dir.path().join("repo"));
        let big: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let v1 = tar_of(&[
            ("a.txt", b"one"),
            ("dirfile", b"a file"),
            ("gone.txt", b"bye"),
            ("keep/", b""),
            ("keep/big.bin", &big),
        ]);
        let v2 = tar_of(&[
            ("a.txt", b"two"),
            ("dirfile/", b""),
            ("dirfile/x", b"now a directory"),
            ("keep/", b""),
            ("keep/big.bin", &big),
            ("new.txt", b"hello"),
        ]);
        let tree = |t: &[u8]| tar_to_tree(&repo, t, 1, "test", &Progress::default()).unwrap().root;
        let (old, new) = (tree(&v1), tree(&v2));
        repo.flush().unwrap();

        let removed = removed_paths(&repo, &new, &old).unwrap();
        assert_eq!(removed, [b"dirfile".to_vec(), b"gone.txt".to_vec()]);
        let mut delta = Vec::new();
        let bytes = tree_delta_to_tar(&repo, &new, Some(&old), ".", &mut delta).unwrap();
        assert_eq!(bytes, 3 + 15 + 5, "only the changed files' content");
        let names: Vec<String> = tar::Archive::new(delta.as_slice())
            .entries()
            .unwrap()
            .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.contains("big.bin")), "{names:?}");
        // Identical trees: nothing to send, nothing to remove.
        let mut none = Vec::new();
        assert_eq!(tree_delta_to_tar(&repo, &new, Some(&new), ".", &mut none).unwrap(), 0);
        assert!(removed_paths(&repo, &new, &new).unwrap().is_empty());

        // Applied to the old files, the removals and the delta give the new files.
        let unpack = |t: &[u8], to: &std::path::Path| {
            let mut a = tar::Archive::new(t);
            a.set_preserve_mtime(true);
            a.unpack(to).unwrap();
        };
        let (got, want) = (dir.path().join("got"), dir.path().join("want"));
        unpack(&v1, &got);
        for r in &removed {
            let p = got.join("vol").join(std::str::from_utf8(r).unwrap());
            if p.is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
        unpack(&delta, &got.join("vol"));
        unpack(&v2, &want);
        let files = |root: &std::path::Path| -> BTreeMap<String, Vec<u8>> {
            let mut out = BTreeMap::new();
            let mut stack = vec![root.to_path_buf()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).unwrap() {
                    let p = e.unwrap().path();
                    let rel = p.strip_prefix(root).unwrap().display().to_string();
                    if p.is_dir() {
                        out.insert(rel + "/", Vec::new());
                        stack.push(p);
                    } else {
                        out.insert(rel, std::fs::read(&p).unwrap());
                    }
                }
            }
            out
        };
        assert!(
            files(&got) == files(&want),
            "{:?}\n{:?}",
            files(&got).keys(),
            files(&want).keys()
        );
    }
}
