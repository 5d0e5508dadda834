//! Tree building in bounded memory, for streams with millions of entries.
//!
//! [`TreeAssembler`] holds every node until [`TreeAssembler::finish`]. A volume's tar stream may
//! hold millions of files, and `serve` reads them with its watch beside it, so
//! [`StreamingAssembler`] stores directories as soon as the stream has left them: what it holds is
//! the open directories (the current path, those with files still being saved, and at most a
//! limit of others) rather than the whole volume. Tar streams list a directory's entries together
//! (depth first), which keeps reopening rare; an entry for a directory already stored reopens it
//! (its stored tree is read back, and stored again later), so any order gives the same tree.
//!
//! The bound: the largest single directory, plus the directories of the files in flight, plus
//! [`Limits`]. A single directory of a million entries is still held whole (it is one tree object).

use std::collections::{BTreeMap, HashMap};

use lifeboat_model::{Node, NodeKind};
use lifeboat_repo::{RepoError, Repository};

use super::assembler::store_dir;
use super::{split, TreeAssembler};

/// When to store the directories the stream has left.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open directories (beyond those that must stay open) before a flush.
    pub dirs: usize,
    /// Nodes added since the last flush before a flush.
    pub nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            dirs: 1024,
            nodes: 64 * 1024,
        }
    }
}

/// A [`TreeAssembler`] that stores left directories as it goes (see the module's docs).
pub struct StreamingAssembler<'r> {
    repo: &'r Repository,
    asm: TreeAssembler,
    /// Files on their way (being saved) per directory path, counted in every ancestor too: a
    /// directory with a count stays open.
    pending: HashMap<Vec<u8>, usize>,
    limits: Limits,
    dir_limit: usize,
    since_flush: usize,
    /// The most nodes held at once (for tests and benchmarks).
    pub peak_nodes: usize,
    held_nodes: usize,
    /// Directories stored again after a reopen (0 for a depth-first stream).
    pub reopened: usize,
}

impl<'r> StreamingAssembler<'r> {
    pub fn new(repo: &'r Repository, limits: Limits) -> Self {
        StreamingAssembler {
            repo,
            asm: TreeAssembler::new(),
            pending: HashMap::new(),
            limits,
            dir_limit: limits.dirs,
            since_flush: 0,
            peak_nodes: 0,
            held_nodes: 0,
            reopened: 0,
        }
    }

    /// Makes the directory at `path` (and its ancestors) open, reading back one already stored.
    fn open(&mut self, path: &[u8]) -> Result<(), RepoError> {
        if self.asm.dirs.contains_key(path) {
            return Ok(());
        }
        let (parent, name) = split(path);
        self.open(parent)?;
        let siblings = &mut self.asm.dirs.get_mut(parent).expect("just opened").1;
        match siblings.remove(name) {
            Some(mut stored) if stored.kind == NodeKind::Dir && stored.subtree.is_some() => {
                let sub = stored.subtree.take().expect("checked");
                if self.repo.locate(&sub).is_none() {
                    // Stored a moment ago: still in a pack being built, which only a flush makes
                    // readable (rare: a depth-first stream never comes back).
                    self.repo.flush()?;
                }
                let children: BTreeMap<Vec<u8>, Node> = self
                    .repo
                    .load_tree(&sub)?
                    .nodes
                    .into_iter()
                    .map(|c| (c.name.0.clone(), c))
                    .collect();
                self.held_nodes += children.len() + 1;
                self.reopened += 1;
                self.asm.dirs.insert(path.to_vec(), (stored, children));
            }
            _ => {
                // Nothing there, or something else than a directory, which a directory replaces.
                self.asm.ensure_dir(path);
                self.held_nodes += 1;
            }
        }
        Ok(())
    }

    /// Adds a node at `path` as [`TreeAssembler::add`] does.
    pub fn add(&mut self, path: &[u8], node: Node) -> Result<(), RepoError> {
        let dir = if node.kind == NodeKind::Dir && node.subtree.is_none() {
            path
        } else {
            split(path).0
        };
        self.open(dir)?;
        self.asm.add(path, node);
        self.held_nodes += 1;
        self.since_flush += 1;
        self.peak_nodes = self.peak_nodes.max(self.held_nodes);
        Ok(())
    }

    /// The non-directory node at `path`, reading back its directory if it was stored; makes no
    /// directory.
    pub fn get_mut(&mut self, path: &[u8]) -> Result<Option<&mut Node>, RepoError> {
        let dir = split(path).0;
        if !self.is_dir(dir)? {
            return Ok(None);
        }
        self.open(dir)?;
        Ok(self.asm.get_mut(path))
    }

    /// Whether `path` is a directory, open or stored.
    fn is_dir(&mut self, path: &[u8]) -> Result<bool, RepoError> {
        if self.asm.dirs.contains_key(path) {
            return Ok(true);
        }
        let (parent, name) = split(path);
        if !self.is_dir(parent)? {
            return Ok(false);
        }
        self.open(parent)?;
        Ok(self.asm.dirs[parent]
            .1
            .get(name)
            .is_some_and(|n| n.kind == NodeKind::Dir && n.subtree.is_some()))
    }

    /// A file at `path` is on its way: its directory stays open until [`Self::arrived`].
    pub fn expect(&mut self, path: &[u8]) {
        let mut dir = split(path).0;
        loop {
            *self.pending.entry(dir.to_vec()).or_default() += 1;
            if dir.is_empty() {
                break;
            }
            dir = split(dir).0;
        }
    }

    /// The file announced by [`Self::expect`] arrived as `node`.
    pub fn arrived(&mut self, path: &[u8], node: Node) -> Result<(), RepoError> {
        self.add(path, node)?;
        let mut dir = split(path).0;
        loop {
            if let Some(n) = self.pending.get_mut(dir) {
                *n -= 1;
                if *n == 0 {
                    self.pending.remove(dir);
                }
            }
            if dir.is_empty() {
                break;
            }
            dir = split(dir).0;
        }
        Ok(())
    }

    /// Stores left directories when the limits say so; `here` is the directory the stream is in
    /// (it and its ancestors stay open).
    pub fn tick(&mut self, here: &[u8]) -> Result<(), RepoError> {
        if self.asm.dirs.len() <= self.dir_limit && self.since_flush <= self.limits.nodes {
            return Ok(());
        }
        let inside = |p: &[u8]| p.is_empty() || here == p || (here.starts_with(p) && here.get(p.len()) == Some(&b'/'));
        let mut left: Vec<Vec<u8>> = self
            .asm
            .dirs
            .keys()
            .filter(|p| !inside(p) && !self.pending.contains_key(p.as_slice()))
            .cloned()
            .collect();
        // Deepest first: a directory's open subdirectories are stored before it.
        left.sort_by_key(|p| std::cmp::Reverse(p.iter().filter(|&&b| b == b'/').count()));
        for path in left {
            let (node, children) = self.asm.dirs.remove(&path).expect("listed");
            self.held_nodes = self.held_nodes.saturating_sub(children.len() + 1);
            let stored = store_dir(self.repo, node, children.into_values().collect())?;
            let (parent, name) = split(&path);
            self.asm
                .dirs
                .get_mut(parent)
                .expect("a parent stays open while a child is")
                .1
                .insert(name.to_vec(), stored);
            self.held_nodes += 1;
        }
        self.dir_limit = self.limits.dirs.max(2 * self.asm.dirs.len());
        self.since_flush = 0;
        Ok(())
    }

    /// Stores what is still open and returns the root directory node with its subtree.
    pub fn finish(self) -> Result<Node, RepoError> {
        self.asm.finish(self.repo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::tar_to_tree_with;
    use crate::archive::tests::repo;
    use crate::backup::Progress;
    use proptest::prelude::*;

    /// An entry of a generated stream.
    #[derive(Debug, Clone)]
    enum E {
        Dir(String),
        File(String, Vec<u8>),
        /// A hard link to the file entry this many files back (if there is one).
        Link(String, usize),
    }

    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut files: Vec<String> = Vec::new();
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o640);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            match e {
                E::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{p}/"), std::io::empty()).unwrap();
                }
                E::File(p, data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, p, data.as_slice()).unwrap();
                    files.push(p.clone());
                }
                E::Link(p, back) => {
                    let Some(t) = files.len().checked_sub(back + 1).map(|i| files[i].clone()) else {
                        continue;
                    };
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, p, &t).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn build(repo: &Repository, tar: &[u8], limits: Limits) -> (Node, usize, crate::archive::AssemblyStats) {
        let (out, stats) = tar_to_tree_with(repo, tar, 0, "test", &Progress::default(), limits).unwrap();
        (out.root, out.errors.len(), stats)
    }

    const NEVER: Limits = Limits {
        dirs: usize::MAX,
        nodes: usize::MAX,
    };
    const ALWAYS: Limits = Limits { dirs: 0, nodes: 0 };

    fn entry() -> impl Strategy<Value = E> {
        let name = "[a-c]{1,2}(/[a-c]{1,2}){0,3}";
        prop_oneof![
            name.prop_map(E::Dir),
            (name, proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(p, d)| E::File(p, d)),
            (name, 0usize..4).prop_map(|(p, b)| E::Link(p, b)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Storing directories early (and reading them back when the stream returns to them)
        /// gives the very tree that holding everything gives, in any entry order.
        #[test]
        fn flushing_at_every_entry_gives_the_same_tree(entries in proptest::collection::vec(entry(), 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let repo = repo(dir.path());
            let tar = tar_of(&entries);
            let (held, held_errors, _) = build(&repo, &tar, NEVER);
            let (flushed, flushed_errors, _) = build(&repo, &tar, ALWAYS);
            prop_assert_eq!(held.subtree, flushed.subtree);
            prop_assert_eq!(held_errors, flushed_errors);
        }
    }

    /// Regression (review finding 19): the whole tree of a volume was held until the stream ended.
    #[test]
    fn a_depth_first_stream_of_many_directories_is_held_a_few_directories_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let mut entries = Vec::new();
        for d in 0..300 {
            entries.push(E::Dir(format!("d{d:03}")));
            for f in 0..200 {
                entries.push(E::File(format!("d{d:03}/f{f:03}"), Vec::new()));
            }
        }
        let total = entries.len();
        let tar = tar_of(&entries);
        let (held, _, all) = build(&repo, &tar, NEVER);
        let (flushed, _, some) = build(&repo, &tar, Limits { dirs: 8, nodes: 1000 });
        assert_eq!(held.subtree, flushed.subtree);
        eprintln!("{total} entries: held whole {all:?}, flushed {some:?}");
        assert!(all.peak_nodes >= total, "{all:?}");
        // The files of the batches in flight (4096 per batch) keep their directories open.
        assert!(some.peak_nodes < total / 3, "{some:?} of {total}");
        assert_eq!(some.reopened, 0, "a depth-first stream never returns to a directory");
    }
}
