//! Platform-neutral types shared by every Lifeboat crate.
//!
//! This crate holds data, not behaviour: identifiers ([`Id`]), snapshot records ([`Snapshot`]) and the
//! file-tree format ([`Tree`], [`Node`]) that the repository stores and the platform adapters produce.
//! Everything here serialises to JSON with `serde`; the exact encoding is part of the repository format
//! documented in `docs/repository-format.md`, so changing a field is a format change.
#![forbid(unsafe_code)]

pub mod hook;
mod id;
pub mod reach;
pub mod redact;
mod retry;
mod snapshot;
mod tree;

pub use id::{Id, ParseIdError};
pub use retry::Retry;
pub use snapshot::{Snapshot, SnapshotSummary, INCOMPLETE_TAG, QUARANTINE_TAG, SPLIT_BRAIN_TAG};
pub use tree::{FileName, Node, NodeKind, Tree, Xattr};
