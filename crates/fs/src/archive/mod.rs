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
//!
//! The module is four files: `assembler` (trees from paths), `streaming` (the same in bounded
//! memory, for streams of millions of entries), `from_tar` (tar streams into the repository) and
//! `to_tar` (stored trees out as tar streams).
use lifeboat_model::Node;
use lifeboat_repo::{RepoError, Repository};

mod assembler;
mod from_tar;
mod streaming;
mod to_tar;

pub(crate) use assembler::split;
pub use assembler::TreeAssembler;
pub use from_tar::{tar_to_tree, tar_to_tree_with, AssemblyStats, TarOutcome, BATCH_BYTES};
pub use streaming::{Limits, StreamingAssembler};
pub(crate) use to_tar::children;
pub use to_tar::{removed_paths, tree_delta_to_tar, tree_to_tar, unchanged, VecWrite};

/// The whole content of a stored (non-sparse) file node: for the small documents adapters store.
pub fn read_file(repo: &Repository, n: &Node) -> Result<Vec<u8>, RepoError> {
    let mut out = Vec::with_capacity(n.size as usize);
    for id in &n.content {
        out.extend_from_slice(&repo.load_blob(id)?);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backup::Progress;
    use crate::chunk::Chunker;
    use crate::FsError;
    use from_tar::clean_path;
    use lifeboat_model::{FileName, NodeKind};
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn clean_path_strips_and_refuses_escapes() {
        assert_eq!(clean_path(b"v/a/b", 1), Some(b"a/b".to_vec()));
        assert_eq!(clean_path(b"./v/./a//b/", 1), Some(b"a/b".to_vec()));
        assert_eq!(clean_path(b"v", 1), Some(Vec::new()));
        assert_eq!(clean_path(b"v/../etc/passwd", 1), None);
        assert_eq!(clean_path(b"", 1), None);
    }

    /// A new repository in `dir` with a quick key derivation (tests only).
    pub(crate) fn repo(dir: &std::path::Path) -> Repository {
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
