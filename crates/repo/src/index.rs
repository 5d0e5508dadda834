//! The index: which pack holds which blob.
//!
//! Index files (`index/ID`, sealed JSON `{"version":1,"packs":[{"id","size","blobs":[BlobEntry...]}]}`)
//! are written after the packs they describe, so every pack an index names exists. A blob may be
//! listed more than once (two concurrent backups stored it); any copy may be used, `prune` keeps one.
use std::collections::HashMap;

use lifeboat_model::Id;
use serde::{Deserialize, Serialize};

use crate::pack::{BlobEntry, BlobKind};

/// The content of one index file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct IndexFile {
    pub version: u32,
    pub packs: Vec<IndexPack>,
}

/// One pack as listed in an index file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexPack {
    pub id: Id,
    pub size: u64,
    pub blobs: Vec<BlobEntry>,
}

/// Where a blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: Id,
    pub kind: BlobKind,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
}

#[derive(Clone, Copy)]
struct Compact {
    pack: u32,
    kind: BlobKind,
    offset: u64,
    length: u32,
    raw_length: u32,
}

/// The in-memory index of every blob the repository holds (first copy wins).
#[derive(Default)]
pub struct MemIndex {
    packs: Vec<Id>,
    pack_pos: HashMap<Id, u32>,
    blobs: HashMap<Id, Compact>,
}

impl MemIndex {
    /// Adds the blobs of one pack. Blobs already known keep their first location.
    pub fn add_pack(&mut self, pack: &Id, entries: &[BlobEntry]) {
        let pos = *self.pack_pos.entry(*pack).or_insert_with(|| {
            self.packs.push(*pack);
            (self.packs.len() - 1) as u32
        });
        self.blobs.reserve(entries.len());
        for e in entries {
            self.blobs.entry(e.id).or_insert(Compact {
                pack: pos,
                kind: e.kind,
                offset: e.offset,
                length: e.length,
                raw_length: e.raw_length,
            });
        }
    }

    /// Removes the blobs of `entries` located in `pack` (a pack that turned out not to be stored).
    /// A blob whose first location is another pack stays.
    pub fn remove_pack(&mut self, pack: &Id, entries: &[BlobEntry]) {
        let Some(&pos) = self.pack_pos.get(pack) else { return };
        for e in entries {
            if self.blobs.get(&e.id).is_some_and(|c| c.pack == pos) {
                self.blobs.remove(&e.id);
            }
        }
    }

    /// Adds every pack of an index file.
    pub fn add_file(&mut self, file: &IndexFile) {
        for p in &file.packs {
            self.add_pack(&p.id, &p.blobs);
        }
    }

    pub fn get(&self, id: &Id) -> Option<Location> {
        self.blobs.get(id).map(|c| Location {
            pack: self.packs[c.pack as usize],
            kind: c.kind,
            offset: c.offset,
            length: c.length,
            raw_length: c.raw_length,
        })
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    /// Number of distinct blobs.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Whether a pack is known.
    pub fn has_pack(&self, id: &Id) -> bool {
        self.pack_pos.contains_key(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, offset: u64) -> BlobEntry {
        BlobEntry {
            kind: BlobKind::Data,
            id: Id([n; 32]),
            offset,
            length: 10,
            raw_length: 8,
        }
    }

    #[test]
    fn first_copy_wins() {
        let mut idx = MemIndex::default();
        idx.add_pack(&Id([1; 32]), &[entry(7, 0)]);
        idx.add_pack(&Id([2; 32]), &[entry(7, 50), entry(8, 0)]);
        assert_eq!(idx.get(&Id([7; 32])).unwrap().pack, Id([1; 32]));
        assert_eq!(idx.get(&Id([8; 32])).unwrap().pack, Id([2; 32]));
        assert_eq!(idx.len(), 2);
    }

    #[test]
    fn file_json_round_trip() {
        let f = IndexFile {
            version: 1,
            packs: vec![IndexPack {
                id: Id([3; 32]),
                size: 99,
                blobs: vec![entry(1, 0), entry(2, 10)],
            }],
        };
        let back: IndexFile = serde_json::from_slice(&serde_json::to_vec(&f).unwrap()).unwrap();
        assert_eq!(back, f);
    }
}
