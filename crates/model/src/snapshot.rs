use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::Id;

/// One recovery point: a named root tree plus where and when it was taken.
///
/// Guarantees: `tree` names a [`crate::Tree`] blob that was fully stored (with everything below it)
/// before the snapshot file was written. `kind` says which engine produced it (`files` for file trees;
/// later adapters use `docker`, `kube`, `etcd`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub kind: String,
    pub hostname: String,
    #[serde(default)]
    pub username: String,
    /// What was backed up (absolute paths for `files`).
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    pub tree: Id,
    /// The snapshot whose metadata let unchanged files be skipped, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    pub program_version: String,
    pub summary: SnapshotSummary,
}

/// Counters recorded with a snapshot when it is taken.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SnapshotSummary {
    pub files: u64,
    pub dirs: u64,
    pub other_nodes: u64,
    /// Files whose content was read (new or changed since the parent).
    pub files_read: u64,
    /// Files skipped because size, mtime, ctime and inode matched the parent.
    pub files_unchanged: u64,
    pub bytes_total: u64,
    pub bytes_read: u64,
    pub blobs_added: u64,
    /// Stored bytes added to the repository (after compression and encryption).
    pub bytes_added: u64,
    pub seconds: f64,
    /// Items that could not be backed up (listed when the backup ran); 0 for a complete snapshot.
    #[serde(default)]
    pub errors: u64,
}
