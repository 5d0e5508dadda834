//! File-tree backup and restore on top of the Lifeboat repository.
//!
//! [`backup::backup`] turns one or more paths into a snapshot: every regular file, directory,
//! symlink, hard link, fifo, device node and socket with its mode, owner, times and extended
//! attributes (SELinux labels included); sparse files are stored without their holes. Work is
//! spread over all cores (rayon): directories and files in parallel, and the chunks of a large file
//! compressed and encrypted in parallel. Files whose size, mtime, ctime and inode match the parent
//! snapshot are not read again.
//!
//! [`restore::restore`] writes a snapshot's tree back into a directory, in parallel, with all the
//! metadata; any blob that fails to decrypt or verify makes that file fail (and be removed) rather
//! than be written with wrong bytes.
#![forbid(unsafe_code)]

pub mod archive;
pub mod backup;
pub mod chunk;
pub mod listing;
pub mod restore;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lifeboat_repo::RepoError;

/// Errors of the file engine.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A path given to back up does not exist or cannot be examined. Nothing was written.
    #[error("cannot back up {path}: {reason}")]
    BadSource { path: PathBuf, reason: String },
    /// The restore target cannot be used. Nothing was written.
    #[error("cannot restore into {path}: {reason}")]
    BadTarget { path: PathBuf, reason: String },
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// One item that failed while the rest went on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ItemError {
    pub path: String,
    pub error: String,
}

/// Collects the per-item failures of a parallel walk.
#[derive(Default)]
pub(crate) struct ItemErrors(Mutex<Vec<ItemError>>);

impl ItemErrors {
    pub(crate) fn push(&self, path: &Path, e: impl ToString) {
        self.0.lock().expect("poisoned").push(ItemError {
            path: path.display().to_string(),
            error: e.to_string(),
        });
    }

    /// The failures, sorted by path.
    pub(crate) fn into_sorted(self) -> Vec<ItemError> {
        let mut v = self.0.into_inner().expect("poisoned");
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }
}
