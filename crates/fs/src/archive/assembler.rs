//! [`TreeAssembler`]: a tree from `(path, node)` pairs in any order, stored bottom-up.
use std::collections::{BTreeMap, HashMap};

use lifeboat_model::{FileName, Node, NodeKind, Tree};
use lifeboat_repo::{RepoError, Repository};

use crate::chunk::Chunker;

/// Builds a tree from nodes given by path, in any order, and stores it bottom-up.
///
/// Paths are relative, `/`-separated byte strings (`a/b/c`); the empty path is the root. Missing
/// parent directories are created with mode 0755. Adding the same path twice keeps the last node
/// (a file added where a directory was replaces the directory and everything in it, and the other
/// way round).
#[derive(Default)]
pub struct TreeAssembler {
    /// Directory path -> (its own node, its non-directory children by name).
    pub(crate) dirs: BTreeMap<Vec<u8>, DirEntries>,
}

/// A directory's own node and its non-directory children by name.
pub(crate) type DirEntries = (Node, BTreeMap<Vec<u8>, Node>);

pub(crate) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn dir_node(name: &[u8]) -> Node {
    let mut n = Node::new(FileName(name.to_vec()), NodeKind::Dir);
    n.mode = 0o755;
    n
}

impl TreeAssembler {
    pub fn new() -> Self {
        let mut t = TreeAssembler::default();
        t.dirs.insert(Vec::new(), (dir_node(b""), BTreeMap::new()));
        t
    }

    pub(crate) fn ensure_dir(&mut self, path: &[u8]) -> &mut DirEntries {
        if !self.dirs.contains_key(path) {
            let (parent, name) = split(path);
            // A directory replaces what was added at its path before.
            self.ensure_dir(parent).1.remove(name);
            self.dirs.insert(path.to_vec(), (dir_node(name), BTreeMap::new()));
        }
        self.dirs.get_mut(path).expect("just inserted")
    }

    /// Adds a node at `path`: a directory's metadata when `node.kind` is `Dir`, or, for a directory
    /// node that already has a stored subtree, that whole stored directory (grafted as it is).
    pub fn add(&mut self, path: &[u8], mut node: Node) {
        let (parent, name) = split(path);
        node.name = FileName(name.to_vec());
        if node.kind == NodeKind::Dir && node.subtree.is_none() {
            self.ensure_dir(path).0 = node;
        } else {
            // It replaces a directory added at its path before, with everything below.
            if !path.is_empty() && self.dirs.remove(path).is_some() {
                let mut below = path.to_vec();
                below.push(b'/');
                let gone: Vec<Vec<u8>> = self
                    .dirs
                    .range(below.clone()..)
                    .map(|(p, _)| p.clone())
                    .take_while(|p| p.starts_with(&below))
                    .collect();
                for p in gone {
                    self.dirs.remove(&p);
                }
            }
            self.ensure_dir(parent).1.insert(name.to_vec(), node);
        }
    }

    /// Adds a regular file with `data` as its content (stored now), mode 0600, owned by root.
    pub fn add_bytes(&mut self, chunker: &Chunker, path: &[u8], data: &[u8], mtime_ns: i64) -> Result<(), RepoError> {
        let mut n = Node::new(FileName::default(), NodeKind::File);
        n.mode = 0o600;
        n.size = data.len() as u64;
        n.mtime_ns = mtime_ns;
        n.content = chunker.save_slice(data)?;
        self.add(path, n);
        Ok(())
    }

    /// The non-directory node at `path`, if added.
    pub fn get_mut(&mut self, path: &[u8]) -> Option<&mut Node> {
        let (parent, name) = split(path);
        self.dirs.get_mut(parent)?.1.get_mut(name)
    }

    /// Every non-directory node (for fix-ups such as hard-link counts).
    pub fn nodes_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        self.dirs.values_mut().flat_map(|(_, c)| c.values_mut())
    }

    /// Stores every directory, deepest first, and returns the root directory node with its subtree.
    pub fn finish(mut self, repo: &Repository) -> Result<Node, RepoError> {
        let mut paths: Vec<Vec<u8>> = self.dirs.keys().cloned().collect();
        // Deepest first: a directory's subdirectories are stored before it.
        paths.sort_by_key(|p| {
            std::cmp::Reverse(if p.is_empty() {
                0
            } else {
                p.iter().filter(|&&b| b == b'/').count() + 1
            })
        });
        let mut done: HashMap<Vec<u8>, Vec<Node>> = HashMap::new();
        for path in paths {
            let (node, children) = self.dirs.remove(&path).expect("listed");
            let mut nodes: Vec<Node> = children.into_values().collect();
            nodes.extend(done.remove(&path).unwrap_or_default());
            let node = store_dir(repo, node, nodes)?;
            if path.is_empty() {
                return Ok(node);
            }
            done.entry(split(&path).0.to_vec()).or_default().push(node);
        }
        unreachable!("the root directory is always present")
    }
}

/// Stores a directory with these children; returns its node with the subtree.
pub(crate) fn store_dir(repo: &Repository, mut node: Node, children: Vec<Node>) -> Result<Node, RepoError> {
    let mut tree = Tree { nodes: children };
    tree.sort();
    node.subtree = Some(repo.save_tree(&tree)?.0);
    Ok(node)
}
