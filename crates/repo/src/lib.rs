//! Lifeboat's backup repository: encrypted, compressed, deduplicated, crash-safe.
//!
//! The repository stores *blobs* (file chunks, trees, cluster objects) addressed by a keyed BLAKE3
//! hash of their plaintext, packed into write-once *pack files*, listed by *index files*, and named
//! by *snapshots*. Every byte at rest is encrypted with the master key, which is itself stored only
//! wrapped by password-derived keys (*key slots*). The format is in `docs/repository-format.md`.
//!
//! Guarantees: a crash at any point leaves a consistent repository (files are written atomically, in
//! the order packs, then index, then snapshot); concurrent backups are safe (shared locks) and
//! `prune` never runs beside them (exclusive lock). This crate knows nothing of platforms.
#![forbid(unsafe_code)]

pub mod backend;
pub mod check;
pub mod crypto;
pub mod forget;
pub mod index;
pub mod keys;
pub mod lock;
pub mod pack;
pub mod prune;
mod repository;

pub use backend::{open_location, Backend, BackendError};
pub use pack::BlobKind;
pub use repository::{Config, KeyInfo, Repository, WriteStats};

use lifeboat_model::Id;

/// Everything that can go wrong in the repository. Each variant names the repository location and
/// the file or blob concerned; none is retryable unless it wraps a retryable [`BackendError`].
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The storage failed (I/O, network, permissions).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// There is no repository at the location.
    #[error("no repository at {location} (create one with `lifeboat repo init`)")]
    NotARepository { location: String },
    /// `init` was asked where a repository already exists.
    #[error("a repository already exists at {location}")]
    AlreadyExists { location: String },
    /// No key slot opens with the password given.
    #[error("wrong password for the repository at {location}")]
    WrongPassword { location: String },
    /// A repository file cannot be read back as written.
    #[error("{location}: {path} is damaged: {reason}")]
    Damaged {
        location: String,
        path: String,
        reason: String,
    },
    /// A blob that something refers to is in no index.
    #[error("{location}: blob {id} is missing (not in any index)")]
    MissingBlob { location: String, id: Id },
    /// A blob's stored bytes do not decrypt or do not hash to its id.
    #[error("{location}: blob {id} in {path} is damaged: {reason}")]
    DamagedBlob {
        location: String,
        id: Id,
        path: String,
        reason: String,
    },
    /// Another process holds a conflicting lock.
    #[error("{location} is locked: {holder} (try again later, or pass --lock-wait SECONDS)")]
    Locked { location: String, holder: String },
    /// This process's lock was lost while it worked (its refresh failed or came too late, or another
    /// process removed its lock file): it must not write packs or commit a snapshot, because a
    /// `prune` may be running beside it. Retry the command.
    #[error("{location}: this process's lock was lost ({reason}); nothing more is written under it, retry")]
    LockLost { location: String, reason: String },
    /// A lock file cannot be read (torn or damaged): it may belong to a live holder, so nothing
    /// proceeds past it. `lifeboat unlock` removes it.
    #[error("{location}: lock file {path} cannot be read ({reason}); if no other lifeboat process runs, remove it with `lifeboat unlock`")]
    UnreadableLock {
        location: String,
        path: String,
        reason: String,
    },
    /// A write to the repository failed while this backup ran (in this process, possibly for another
    /// backup sharing the repository handle), so blobs it counted on may be stored nowhere: the
    /// snapshot is not committed. What was stored stays for the next backup to reuse.
    #[error("{location}: not committing the snapshot: a write to the repository failed while it was taken ({reason})")]
    WriteFailed { location: String, reason: String },
    /// `init` found key slots but no `config`: an earlier `init` was interrupted (or the config was
    /// lost). Nothing is overwritten.
    #[error("{location}: holds key slots ({slots}) but no config: an earlier `repo init` was interrupted or the config was lost; refusing to add another key; if this location held no data, remove its keys/ directory and run `repo init` again")]
    InterruptedInit { location: String, slots: String },
    /// The repository was written by a newer format version.
    #[error("{location}: repository format version {found} is not supported (this program reads version {supported})")]
    UnsupportedVersion {
        location: String,
        found: u32,
        supported: u32,
    },
    /// Something to be stored is larger than a reader accepts (see [`crypto::MAX_PLAINTEXT`]): it is
    /// refused before it is written, so no snapshot can name what `restore` and `check` could not
    /// read back. `advice` says what to change.
    #[error("{location}: refusing to store {what} of {size} bytes: more than the {limit} bytes the repository reads back; {advice}")]
    TooLarge {
        location: String,
        what: String,
        size: usize,
        limit: usize,
        advice: &'static str,
    },
    /// No snapshot matches what the user asked for.
    #[error("no snapshot matches {query:?}")]
    SnapshotNotFound { query: String },
    /// An id prefix matches several snapshots.
    #[error("{query:?} matches several snapshots: {candidates}")]
    AmbiguousSnapshot { query: String, candidates: String },
    /// A key slot operation named a slot that does not exist.
    #[error("no key slot {id:?}")]
    KeyNotFound { id: String },
    /// Removing this key slot would lock everyone out or remove the key in use.
    #[error("refusing to remove key slot {id}: {reason}")]
    KeyRemovalRefused { id: String, reason: String },
    /// A retention policy that would keep nothing or is malformed.
    #[error("invalid retention policy: {0}")]
    InvalidPolicy(String),
}

impl RepoError {
    /// Whether trying again may help: a retryable backend error, a lock another process holds, a
    /// lock or a write lost to a passing failure are [`lifeboat_model::Retry::Later`]; a wrong
    /// password, damage, a missing snapshot or a refused request need a fix first.
    pub fn retry(&self) -> lifeboat_model::Retry {
        match self {
            RepoError::Backend(e) => e.retry(),
            RepoError::Locked { .. } | RepoError::LockLost { .. } | RepoError::WriteFailed { .. } => {
                lifeboat_model::Retry::Later
            }
            _ => lifeboat_model::Retry::AfterFix,
        }
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// The user running this process.
pub fn username() -> String {
    std::env::var("USER").unwrap_or_else(|_| format!("uid{}", rustix::process::getuid().as_raw()))
}
