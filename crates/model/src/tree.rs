use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Id;

/// A file name or link target as raw bytes (Unix names need not be UTF-8).
///
/// Serialises as a JSON string when the bytes are valid UTF-8, otherwise as `{"b64": "..."}`,
/// so every name survives a round trip exactly.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FileName(pub Vec<u8>);

impl FileName {
    /// The name for display (lossy for non-UTF-8 bytes).
    pub fn lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }
}

impl std::fmt::Debug for FileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.lossy())
    }
}

impl From<&str> for FileName {
    fn from(s: &str) -> Self {
        FileName(s.as_bytes().to_vec())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum NameRepr {
    Text(String),
    Raw { b64: String },
}

impl Serialize for FileName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(t) => s.serialize_str(t),
            Err(_) => NameRepr::Raw {
                b64: B64.encode(&self.0),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for FileName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NameRepr::deserialize(d)? {
            NameRepr::Text(t) => Ok(FileName(t.into_bytes())),
            NameRepr::Raw { b64 } => B64.decode(b64).map(FileName).map_err(serde::de::Error::custom),
        }
    }
}

/// What a [`Node`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Chardev,
    Blockdev,
    Socket,
}

/// An extended attribute (for example `security.selinux` or `user.comment`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: FileName,
    #[serde(with = "b64_bytes")]
    pub value: Vec<u8>,
}

mod b64_bytes {
    use super::*;
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s).map_err(serde::de::Error::custom)
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One entry of a directory: its metadata and where its content is.
///
/// Times are nanoseconds since the Unix epoch. `mode` holds the permission bits including
/// setuid/setgid/sticky (`st_mode & 0o7777`). For a file, `content` lists the data blobs in order;
/// when `extents` is present the file is sparse and `content` holds only the bytes of those
/// `(offset, length)` ranges, concatenated; everything else reads as zeros up to `size`.
/// `inode`, `dev` and `ctime_ns` serve change detection and hard-link grouping only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: FileName,
    #[serde(rename = "type")]
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    /// Not recorded by the `files` engine (0): restore then uses `mtime_ns`.
    #[serde(default)]
    pub atime_ns: i64,
    #[serde(default)]
    pub ctime_ns: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inode: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dev: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nlink: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extents: Option<Vec<(u64, u64)>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<FileName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
}

impl Node {
    /// A node of the given kind with every other field empty.
    pub fn new(name: FileName, kind: NodeKind) -> Self {
        Node {
            name,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            atime_ns: 0,
            ctime_ns: 0,
            size: 0,
            inode: 0,
            dev: 0,
            nlink: 0,
            rdev: 0,
            content: Vec::new(),
            extents: None,
            subtree: None,
            target: None,
            xattrs: Vec::new(),
        }
    }
}

/// The entries of one directory, sorted by name bytes (so equal directories serialise identically
/// and deduplicate).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Sorts the nodes by name; call before storing.
    pub fn sort(&mut self) {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// The node with this name, if any (expects a sorted tree).
    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.0.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_node() -> impl Strategy<Value = Node> {
        (
            proptest::collection::vec(any::<u8>(), 1..20),
            any::<u32>(),
            any::<i64>(),
            any::<u64>(),
            proptest::option::of(proptest::collection::vec((any::<u64>(), any::<u64>()), 0..4)),
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 1..10),
                    proptest::collection::vec(any::<u8>(), 0..10),
                ),
                0..3,
            ),
        )
            .prop_map(|(name, mode, mtime, size, extents, xattrs)| {
                let mut n = Node::new(FileName(name), NodeKind::File);
                n.mode = mode;
                n.mtime_ns = mtime;
                n.size = size;
                n.extents = extents;
                n.xattrs = xattrs
                    .into_iter()
                    .map(|(k, v)| Xattr {
                        name: FileName(k),
                        value: v,
                    })
                    .collect();
                n
            })
    }

    proptest! {
        #[test]
        fn tree_json_round_trip(nodes in proptest::collection::vec(arb_node(), 0..8)) {
            let mut t = Tree { nodes };
            t.sort();
            let json = serde_json::to_vec(&t).unwrap();
            let back: Tree = serde_json::from_slice(&json).unwrap();
            prop_assert_eq!(&back, &t);
            // Serialisation is deterministic: equal trees give equal bytes (and so equal blob ids).
            prop_assert_eq!(serde_json::to_vec(&back).unwrap(), json);
        }
    }

    #[test]
    fn non_utf8_names_survive() {
        let n = FileName(vec![0xff, b'a', 0x80]);
        let json = serde_json::to_string(&n).unwrap();
        assert!(json.contains("b64"));
        assert_eq!(serde_json::from_str::<FileName>(&json).unwrap(), n);
    }
}
