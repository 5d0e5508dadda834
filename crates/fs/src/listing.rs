//! Whether a receiver holds a stored tree, checked without holding either side in memory.
//!
//! A delta (only what changed since a base tree) is right only when the receiver holds the base
//! exactly. Before one is sent, the receiver's listing (type, permissions, owner, size and mtime
//! of every entry, as `stat` prints them) is reduced to a [`ListingDigest`], the base tree to
//! another, and the two compared. The digest is a count and an order-free sum of one 128-bit
//! hash per entry, so both sides stream in any order and in constant memory. Equal digests mean
//! equal listings (a collision needs 2^64 work on purpose, which whoever can write the receiver
//! has no reason to do: they could write the data itself); a listing does not look at contents,
//! so a file rewritten by hand with its size and mtime kept is not seen.
//!
//! What is compared, per entry below the top (the top itself is left out): files by permissions,
//! owner, size and mtime (whole seconds); directories by permissions and owner; symbolic links and
//! other entries by their type alone (link targets and times are not printed alike by every
//! `stat`).

use crate::FsError;
use lifeboat_model::{Node, NodeKind};
use lifeboat_repo::Repository;

/// What is compared of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub kind: NodeKind,
    /// Permission bits (`0o7777`).
    pub perms: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Relative to the top, `/`-separated, no leading `./`.
    pub path: &'a [u8],
}

/// A listing reduced to its number of entries and an order-free sum of their hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListingDigest {
    pub entries: u64,
    sum: u128,
}

impl ListingDigest {
    /// Adds one entry; the order of adds does not matter.
    pub fn add(&mut self, e: &Entry) {
        let mut h = blake3::Hasher::new();
        let (tag, fields): (u8, [u64; 5]) = match e.kind {
            NodeKind::File => (
                b'f',
                [e.perms as u64, e.uid as u64, e.gid as u64, e.size, e.mtime as u64],
            ),
            NodeKind::Dir => (b'd', [e.perms as u64, e.uid as u64, e.gid as u64, 0, 0]),
            NodeKind::Symlink => (b'l', [0; 5]),
            _ => (b'o', [0; 5]),
        };
        h.update(&[tag]);
        for f in fields {
            h.update(&f.to_le_bytes());
        }
        h.update(&(e.path.len() as u64).to_le_bytes());
        h.update(e.path);
        let bytes: [u8; 16] = h.finalize().as_bytes()[..16].try_into().expect("16 of 32 bytes");
        self.sum = self.sum.wrapping_add(u128::from_le_bytes(bytes));
        self.entries += 1;
    }
}

/// The `stat -c` format whose lines [`parse_stat_line`] reads: raw mode in hex, uid, gid, size,
/// mtime, name.
pub const STAT_FORMAT: &str = "%f %u %g %s %Y %n";

/// One line of `stat -c STAT_FORMAT` run on `./path` names (as `find .` gives them); `None` when
/// it is not such a line.
pub fn parse_stat_line(line: &[u8]) -> Option<Entry<'_>> {
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let at = rest.iter().position(|&b| b == b' ')?;
        let f = std::str::from_utf8(&rest[..at]).ok()?;
        rest = &rest[at + 1..];
        Some(f)
    };
    let mode = u32::from_str_radix(field()?, 16).ok()?;
    let uid = field()?.parse().ok()?;
    let gid = field()?.parse().ok()?;
    let size = field()?.parse().ok()?;
    let mtime = field()?.parse().ok()?;
    let path = rest.strip_prefix(b"./")?;
    let kind = match mode & 0o170000 {
        0o100000 => NodeKind::File,
        0o040000 => NodeKind::Dir,
        0o120000 => NodeKind::Symlink,
        0o010000 => NodeKind::Fifo,
        0o020000 => NodeKind::Chardev,
        0o060000 => NodeKind::Blockdev,
        0o140000 => NodeKind::Socket,
        _ => return None,
    };
    Some(Entry {
        kind,
        perms: mode & 0o7777,
        uid,
        gid,
        size,
        mtime,
        path,
    })
}

/// The digest of every entry below `root` (a directory node), read one directory at a time.
pub fn tree_digest(repo: &Repository, root: &Node) -> Result<ListingDigest, FsError> {
    fn walk(repo: &Repository, dir: &Node, path: &mut Vec<u8>, d: &mut ListingDigest) -> Result<(), FsError> {
        for c in crate::archive::children(repo, dir)? {
            let len = path.len();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&c.name.0);
            d.add(&Entry {
                kind: c.kind,
                perms: c.mode & 0o7777,
                uid: c.uid,
                gid: c.gid,
                size: c.size,
                mtime: c.mtime_ns.div_euclid(1_000_000_000),
                path,
            });
            if c.kind == NodeKind::Dir {
                walk(repo, &c, path, d)?;
            }
            path.truncate(len);
        }
        Ok(())
    }
    let mut d = ListingDigest::default();
    walk(repo, root, &mut Vec::new(), &mut d)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &[u8], size: u64) -> Entry<'_> {
        Entry {
            kind: NodeKind::File,
            perms: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime: 1_700_000_000,
            path,
        }
    }

    #[test]
    fn the_digest_does_not_depend_on_order_but_on_every_field() {
        let mut a = ListingDigest::default();
        let mut b = ListingDigest::default();
        a.add(&entry(b"x", 1));
        a.add(&entry(b"y/z", 2));
        b.add(&entry(b"y/z", 2));
        b.add(&entry(b"x", 1));
        assert_eq!(a, b);
        let mut c = ListingDigest::default();
        c.add(&entry(b"x", 1));
        c.add(&entry(b"y/z", 3));
        assert_ne!(a, c, "a size differs");
        let mut d = ListingDigest::default();
        d.add(&entry(b"x", 1));
        d.add(&Entry {
            mtime: 1,
            ..entry(b"y/z", 2)
        });
        assert_ne!(a, d, "an mtime differs");
        let mut e = ListingDigest::default();
        e.add(&entry(b"x", 1));
        assert_ne!(a, e, "an entry is missing");
        // Directories: their size and mtime are the file system's, not compared.
        let dir = |size, mtime| Entry {
            kind: NodeKind::Dir,
            size,
            mtime,
            ..entry(b"d", 0)
        };
        let (mut f, mut g) = (ListingDigest::default(), ListingDigest::default());
        f.add(&dir(4096, 5));
        g.add(&dir(60, 9));
        assert_eq!(f, g);
    }

    #[test]
    fn stat_lines_parse_with_spaces_in_names_and_refuse_anything_else() {
        let e = parse_stat_line(b"81a4 0 10 5 1700000000 ./a dir/with space.txt").unwrap();
        assert_eq!(e.kind, NodeKind::File);
        assert_eq!(
            (e.perms, e.uid, e.gid, e.size, e.mtime),
            (0o644, 0, 10, 5, 1_700_000_000)
        );
        assert_eq!(e.path, b"a dir/with space.txt");
        let d = parse_stat_line(b"41ed 0 0 4096 1 ./d").unwrap();
        assert_eq!((d.kind, d.perms), (NodeKind::Dir, 0o755));
        assert_eq!(parse_stat_line(b"a1ff 0 0 3 1 ./l").unwrap().kind, NodeKind::Symlink);
        for bad in [
            &b""[..],
            b"81a4 0 0 5",
            b"zz 0 0 5 1 ./a",
            b"81a4 0 0 5 1 /abs",
            b"81a4 x 0 5 1 ./a",
        ] {
            assert!(parse_stat_line(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
