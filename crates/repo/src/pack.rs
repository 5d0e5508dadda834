//! Pack files: write-once containers of sealed blobs.
//!
//! Layout: `blob_1 || ... || blob_n || sealed header || header length (u32, little endian)`.
//! Each blob is a sealed envelope; the header is a sealed envelope of the JSON
//! `{"blobs":[BlobEntry...]}` listing every blob with its offset and length in the pack.
//! A pack's file name is the BLAKE3 hash of its bytes.
use lifeboat_model::Id;
use serde::{Deserialize, Serialize};

use crate::crypto::{file_id, MasterKey};

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    /// File content or any other opaque data (cluster objects, snapshots of databases ...).
    Data,
    /// A serialised [`lifeboat_model::Tree`].
    Tree,
}

/// One blob inside a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobEntry {
    #[serde(rename = "type")]
    pub kind: BlobKind,
    pub id: Id,
    pub offset: u64,
    /// Stored (sealed) length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

#[derive(Serialize, Deserialize)]
struct Header {
    blobs: Vec<BlobEntry>,
}

/// Collects sealed blobs until the pack is big enough to write.
#[derive(Default)]
pub struct PackBuilder {
    blobs: Vec<(BlobEntry, Vec<u8>)>,
    size: usize,
}

impl PackBuilder {
    pub fn add(&mut self, kind: BlobKind, id: Id, sealed: Vec<u8>, raw_length: usize) {
        let entry = BlobEntry {
            kind,
            id,
            offset: 0,
            length: sealed.len() as u32,
            raw_length: raw_length as u32,
        };
        self.size += sealed.len();
        self.blobs.push((entry, sealed));
    }

    /// Stored bytes collected so far.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Ids of the blobs collected so far.
    pub fn ids(&self) -> impl Iterator<Item = Id> + '_ {
        self.blobs.iter().map(|(e, _)| e.id)
    }

    /// Drops the blobs for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&Id) -> bool) {
        self.blobs.retain(|(e, _)| keep(&e.id));
        self.size = self.blobs.iter().map(|(_, b)| b.len()).sum();
    }

    /// Assembles the pack file: returns its id, bytes and entries (with offsets).
    pub fn finish(self, key: &MasterKey) -> (Id, Vec<u8>, Vec<BlobEntry>) {
        let mut bytes = Vec::with_capacity(self.size + 64 * self.blobs.len() + 64);
        let mut entries = Vec::with_capacity(self.blobs.len());
        for (mut e, b) in self.blobs {
            e.offset = bytes.len() as u64;
            bytes.extend_from_slice(&b);
            entries.push(e);
        }
        let header = key.seal(
            &serde_json::to_vec(&Header { blobs: entries.clone() }).expect("serialisable"),
            true,
        );
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        (file_id(&bytes), bytes, entries)
    }
}

/// Reads the header of a whole pack file and checks that every entry lies inside the blob area.
pub fn parse_header(key: &MasterKey, pack: &[u8]) -> Result<Vec<BlobEntry>, String> {
    if pack.len() < 4 {
        return Err(format!("too short to be a pack ({} bytes)", pack.len()));
    }
    let hlen = u32::from_le_bytes(pack[pack.len() - 4..].try_into().expect("4 bytes")) as usize;
    if hlen + 4 > pack.len() {
        return Err(format!("header length {hlen} exceeds the file ({} bytes)", pack.len()));
    }
    let area = pack.len() - 4 - hlen;
    let plain = key
        .open(&pack[area..pack.len() - 4])
        .map_err(|e| format!("header: {e}"))?;
    let header: Header = serde_json::from_slice(&plain).map_err(|e| format!("header: {e}"))?;
    for e in &header.blobs {
        if e.offset + e.length as u64 > area as u64 {
            return Err(format!("blob {} lies outside the blob area", e.id.short()));
        }
    }
    Ok(header.blobs)
}

/// The backend path of a pack: `data/XX/ID`, XX being the first two hex digits.
pub fn pack_path(id: &Id) -> String {
    let h = id.to_hex();
    format!("data/{}/{}", &h[..2], h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_parse() {
        let k = MasterKey::generate();
        let mut b = PackBuilder::default();
        for i in 0..10u8 {
            let data = vec![i; 100 + i as usize];
            b.add(BlobKind::Data, k.blob_id(&data), k.seal(&data, true), data.len());
        }
        let (id, bytes, entries) = b.finish(&k);
        assert_eq!(id, file_id(&bytes));
        let parsed = parse_header(&k, &bytes).unwrap();
        assert_eq!(parsed, entries);
        for e in &parsed {
            let blob = &bytes[e.offset as usize..(e.offset + e.length as u64) as usize];
            assert_eq!(k.blob_id(&k.open(blob).unwrap()), e.id);
        }
    }

    #[test]
    fn truncated_pack_is_rejected() {
        let k = MasterKey::generate();
        let mut b = PackBuilder::default();
        b.add(BlobKind::Data, Id::default(), k.seal(b"abc", false), 3);
        let (_, bytes, _) = b.finish(&k);
        for cut in [1, 5, bytes.len() - 1] {
            assert!(parse_header(&k, &bytes[..bytes.len() - cut]).is_err());
        }
    }
}
