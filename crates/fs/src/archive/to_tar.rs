//! Stored trees out as tar streams: [`tree_to_tar`], [`tree_delta_to_tar`].
use std::collections::HashMap;
use std::io::{self, Read, Write};

use lifeboat_model::{Node, NodeKind};
use lifeboat_repo::{RepoError, Repository};
use rayon::prelude::*;

use crate::FsError;

/// Blobs of one file fetched in parallel at once when writing a tar stream.
const BLOBS_IN_FLIGHT: usize = 8;

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
