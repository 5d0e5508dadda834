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

/// Tag of a snapshot that misses something it was to hold: an item could not be read (listed in
/// its manifest's `errors`; [`SnapshotSummary::errors`] counts them). Never a recovery point unless
/// an operator accepts it.
pub const INCOMPLETE_TAG: &str = "incomplete";
/// Tag of a snapshot taken of a site just before Lifeboat wrote a recovery point over it, because
/// the site may hold writes no other snapshot has (it was fenced while unreachable). Kept: never
/// removed by retention, never a recovery point.
pub const QUARANTINE_TAG: &str = "quarantine";
/// Added to [`QUARANTINE_TAG`] when the overwritten site ran the app when it was quarantined: both
/// sites were active (split brain).
pub const SPLIT_BRAIN_TAG: &str = "split-brain";

impl Snapshot {
    /// Whether everything it was to hold is in it: no item failed when it was taken.
    pub fn is_complete(&self) -> bool {
        self.summary.errors == 0 && !self.tags.iter().any(|t| t == INCOMPLETE_TAG)
    }

    /// Whether it is a quarantine snapshot (see [`QUARANTINE_TAG`]).
    pub fn is_quarantine(&self) -> bool {
        self.tags.iter().any(|t| t == QUARANTINE_TAG || t == SPLIT_BRAIN_TAG)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(tags: &[&str], errors: u64) -> Snapshot {
        Snapshot {
            time: OffsetDateTime::UNIX_EPOCH,
            kind: "docker".into(),
            hostname: "h".into(),
            username: String::new(),
            paths: vec![],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            tree: Id([0; 32]),
            parent: None,
            program_version: String::new(),
            summary: SnapshotSummary {
                errors,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_snapshot_with_errors_or_the_incomplete_tag_is_not_complete() {
        assert!(snap(&["app=x"], 0).is_complete());
        assert!(!snap(&["app=x"], 2).is_complete());
        assert!(!snap(&[INCOMPLETE_TAG], 0).is_complete());
        assert!(!snap(&[], 0).is_quarantine());
        assert!(snap(&[QUARANTINE_TAG], 0).is_quarantine());
        assert!(snap(&[SPLIT_BRAIN_TAG], 0).is_quarantine());
    }
}
