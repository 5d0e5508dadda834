//! Tar streams into the repository: [`tar_to_tree`].
use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::atomic::Ordering::Relaxed;

use lifeboat_model::{FileName, Id, Node, NodeKind};
use lifeboat_repo::{RepoError, Repository};
use rayon::prelude::*;

use super::streaming::{Limits, StreamingAssembler};
use crate::backup::Progress;
use crate::chunk::Chunker;
use crate::{FsError, ItemError};

use super::split;

/// Small files are collected up to this many bytes, then stored in parallel.
pub const BATCH_BYTES: usize = 16 << 20;
/// Files larger than this stream through the chunker instead of being batched.
const WHOLE_FILE_MAX: u64 = 16 << 20;

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
pub(super) fn clean_path(raw: &[u8], strip: usize) -> Option<Vec<u8>> {
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

/// [`tar_to_tree`] with the given flush [`Limits`] (see [`super::StreamingAssembler`]), and how it went.
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
