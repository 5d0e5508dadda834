//! Storage backends: where the repository's files live.
//!
//! A backend stores opaque files under slash-separated relative paths (`config`, `keys/ID`,
//! `data/ab/ID`, ...). It knows nothing of encryption or formats. Guarantees every backend gives:
//! a [`Backend::write`] is atomic (a reader sees the whole file or none of it, also after `kill -9`);
//! [`Backend::list`] returns only complete files.

pub mod faulty;
mod local;
mod s3;

pub use faulty::FaultyBackend;

pub use local::LocalBackend;
pub use s3::S3Backend;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A failure of the storage underneath the repository.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The file does not exist. Not retryable.
    #[error("{location}: {path} does not exist")]
    NotFound { location: String, path: String },
    /// An I/O or protocol error while doing `op` on `path`; `retryable` tells whether trying again may help.
    #[error("{location}: cannot {op} {path}: {message}")]
    Io {
        location: String,
        op: &'static str,
        path: String,
        message: String,
        retryable: bool,
    },
    /// The repository location (path or URL) cannot be used at all.
    #[error("invalid repository location {location:?}: {reason}")]
    InvalidLocation { location: String, reason: String },
    /// The CA bundle named by `AWS_CA_BUNDLE` cannot be used (the error never quotes the file).
    #[error("{location}: cannot use the CA bundle {path} (AWS_CA_BUNDLE)")]
    CaBundle {
        location: String,
        path: String,
        #[source]
        source: CaBundleError,
    },
}

/// Why a CA bundle cannot be used. Never quotes the file's content.
#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error("cannot read it")]
    Read(#[source] std::io::Error),
    #[error("it is not a PEM file of certificates ({0})")]
    Malformed(&'static str),
    #[error("it holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    Empty,
    #[error("certificate {index} in it is not a usable CA certificate")]
    Unusable {
        index: usize,
        #[source]
        source: rustls::Error,
    },
}

impl BackendError {
    /// [`Retry::Later`](lifeboat_model::Retry) for an I/O or protocol error marked retryable (a
    /// timeout, a reset, an S3 5xx or 429), else [`Retry::AfterFix`](lifeboat_model::Retry).
    pub fn retry(&self) -> lifeboat_model::Retry {
        lifeboat_model::Retry::later_if(matches!(self, BackendError::Io { retryable: true, .. }))
    }

    /// True when the file was not found.
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }
}

/// A file in a listing: its path relative to the listed directory, its size in bytes and, where
/// the backend knows it, when the storage last wrote it (by the storage's own clock: the file
/// system's for a local directory, the server's `LastModified` for S3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// Where repository files are stored.
pub trait Backend: Send + Sync {
    /// The location as the user gave it (for messages).
    fn location(&self) -> &str;
    /// Prepares an empty repository location (directories, bucket). Idempotent.
    fn create(&self) -> Result<(), BackendError>;
    /// Reads a whole file.
    fn read(&self, path: &str) -> Result<Vec<u8>, BackendError>;
    /// Reads a whole file the caller expects to be `size` bytes (as an index or a listing says): a
    /// backend may refuse a larger file instead of reading it (S3 does, so a damaged or hostile
    /// server cannot make it allocate more). A shorter file is returned as it is, for the caller's
    /// checks to name the damage.
    fn read_sized(&self, path: &str, size: u64) -> Result<Vec<u8>, BackendError> {
        let _ = size;
        self.read(path)
    }
    /// Reads `len` bytes at `offset`; fewer bytes than asked is an error.
    fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError>;
    /// Writes a whole file atomically, replacing any file of that name.
    fn write(&self, path: &str, data: &[u8]) -> Result<(), BackendError>;
    /// Writes a whole file atomically like [`Backend::write`], but may return before the data is
    /// durable (its durability is [`Backend::sync`]'s job). For files that become reachable only
    /// through a file written after `sync` (packs, named by an index file).
    fn write_deferred(&self, path: &str, data: &[u8]) -> Result<(), BackendError> {
        self.write(path, data)
    }
    /// Returns once every earlier [`Backend::write_deferred`] is durable, or fails naming the file.
    fn sync(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Lists the files below `dir` (recursively), with paths relative to `dir`. A missing `dir` lists nothing.
    fn list(&self, dir: &str) -> Result<Vec<Listed>, BackendError>;
    /// Removes a file; removing a missing file is not an error.
    fn remove(&self, path: &str) -> Result<(), BackendError>;
    /// Whether a file exists.
    fn exists(&self, path: &str) -> Result<bool, BackendError>;
    /// Removes leftovers of interrupted writes, if the backend can have any. Only call this while
    /// holding an exclusive lock.
    fn remove_temporaries(&self) {}
    /// How long after a write its file may still be missing from [`Backend::list`]: lockers wait
    /// this long and list again. Zero for a local directory.
    fn listing_settle(&self) -> Duration {
        Duration::ZERO
    }
}

/// Opens the backend for a repository location: a local path, `s3://BUCKET/PREFIX` (endpoint from
/// `AWS_ENDPOINT_URL`, default AWS) or `s3:http(s)://HOST:PORT/BUCKET/PREFIX`.
/// S3 credentials come from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, region from `AWS_REGION`
/// or `AWS_DEFAULT_REGION` (default `us-east-1`); an https endpoint is verified against the built-in
/// web roots plus the CA certificates of the PEM file `AWS_CA_BUNDLE` names, if set.
pub fn open_location(location: &str) -> Result<Arc<dyn Backend>, BackendError> {
    if location.starts_with("s3:") {
        Ok(Arc::new(S3Backend::from_location(location)?))
    } else {
        Ok(Arc::new(LocalBackend::new(location)))
    }
}
