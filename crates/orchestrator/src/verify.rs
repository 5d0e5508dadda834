//! Reading a recovery point whole before a site is touched with it.
//!
//! A failover, a failback or a hot-standby staging writes a snapshot over what a site holds. If a
//! blob of the snapshot is missing or damaged, the write would stop half way; so before anything
//! is written, every tree and every content blob the snapshot references is read, decrypted and
//! checked against its id (the subset of `repo check --read-data` that this snapshot needs). Read
//! only: nothing in the repository changes.
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use lifeboat_model::Id;
use lifeboat_repo::{check::walk_trees, Repository};

use crate::OrchestratorError;

/// What a verification read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Trees loaded.
    pub trees: usize,
    /// Distinct blobs (trees and content) read and checked.
    pub blobs: usize,
    /// Plaintext bytes of the blobs read.
    pub bytes: u64,
}

/// Reads every blob that snapshot `snapshot` references and checks it. The first problem found
/// fails the call with [`OrchestratorError::Damaged`], naming the path in the snapshot where the
/// blob is used.
pub fn recovery_point(repo: &Repository, snapshot: &Id) -> Result<Verified, OrchestratorError> {
    let id = *snapshot;
    let snap = repo.load_snapshot(&id)?;
    let damaged = |path: &str, source: lifeboat_repo::RepoError| OrchestratorError::Damaged {
        snapshot: id.short(),
        path: path.to_string(),
        source: Box::new(source),
    };
    let mut content: Vec<(Id, String)> = Vec::new();
    let mut seen: HashSet<Id> = HashSet::new();
    let mut tree_error = None;
    let trees = walk_trees(
        repo,
        &[(String::new(), snap.tree)],
        |blob, path| {
            if seen.insert(*blob) {
                content.push((*blob, path.to_string()));
            }
        },
        |path, e| {
            tree_error.get_or_insert((path.to_string(), e));
        },
    );
    if let Some((path, e)) = tree_error {
        return Err(damaged(if path.is_empty() { "/" } else { &path }, e));
    }
    // Every blob once (trees were read by the walk already; reading them again costs little).
    let next = AtomicUsize::new(0);
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let first: Mutex<Option<(String, lifeboat_repo::RepoError)>> = Mutex::new(None);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                if first.lock().expect("poisoned").is_some() {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((blob, path)) = content.get(i) else { break };
                match repo.load_blob(blob) {
                    Ok(b) => {
                        bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        first.lock().expect("poisoned").get_or_insert((path.clone(), e));
                        break;
                    }
                }
            });
        }
    });
    if let Some((path, e)) = first.into_inner().expect("poisoned") {
        return Err(damaged(&path, e));
    }
    Ok(Verified {
        trees,
        blobs: content.len(),
        bytes: bytes.into_inner(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn a_whole_recovery_point_is_read_and_a_flipped_bit_is_named_with_its_path() {
        let d = tempfile::tempdir().unwrap();
        let repo = testing::repo(d.path());
        let id = testing::snapshot(&repo, &vec![7u8; 100_000], 0, &[], 0);
        let v = recovery_point(&repo, &id).unwrap();
        assert_eq!((v.trees, v.blobs), (1, 2), "{v:?}");
        assert!(v.bytes >= 100_000, "{v:?}");
        let tree = repo.load_snapshot(&id).unwrap().tree;
        let blob = repo.load_tree(&tree).unwrap().nodes[0].content[0];
        testing::damage(&repo, d.path(), &blob);
        match recovery_point(&repo, &id) {
            Err(OrchestratorError::Damaged { snapshot, path, .. }) => {
                assert_eq!(snapshot, id.short());
                assert_eq!(path, "/f");
            }
            other => panic!("{other:?}"),
        }
    }
}
