//! `repo check`: verifies the repository's structure, and with `read_data` every stored byte.
//!
//! Structure: key slots parse, every index and snapshot file decrypts and hashes to its name, every
//! indexed pack exists with the indexed size, every tree of every snapshot loads and every blob it
//! references is indexed. `read_data` also reads every pack, checks its hash, its header against the
//! index, and decrypts and hashes every blob. Each problem names the file (and blob) concerned.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use lifeboat_model::{Id, NodeKind};
use serde::Serialize;

use crate::crypto::file_id;
use crate::index::IndexPack;
use crate::keys::KeySlot;
use crate::pack::{pack_path, parse_header};
use crate::{RepoError, Repository};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Data is lost or unreadable.
    Error,
    /// Harmless leftovers (for example packs of an interrupted backup, which `prune` removes).
    Warning,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// The repository file concerned (`data/ab/ID`, `index/ID`, `snapshots/ID`, `keys/ID`).
    pub file: String,
    pub message: String,
}

/// The outcome of a check.
#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    pub snapshots: usize,
    pub index_files: usize,
    pub packs: usize,
    pub blobs: usize,
    pub trees_checked: usize,
    pub packs_read: usize,
    pub bytes_read: u64,
    pub problems: Vec<Problem>,
}

impl CheckReport {
    pub fn errors(&self) -> usize {
        self.problems.iter().filter(|p| p.severity == Severity::Error).count()
    }
    fn error(&mut self, file: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            severity: Severity::Error,
            file: file.into(),
            message: message.into(),
        });
    }
}

/// Progress of a long check: packs read so far.
#[derive(Default)]
pub struct CheckProgress {
    pub packs_total: AtomicU64,
    pub packs_done: AtomicU64,
    pub bytes_done: AtomicU64,
}

/// The readable index files (name and packs) and the errors of the damaged ones.
pub type IndexFiles = (Vec<(String, Vec<IndexPack>)>, Vec<RepoError>);

/// Reads every index file in full. Returns the packs of all readable files and the damaged ones.
pub fn read_all_index_files(repo: &Repository) -> Result<IndexFiles, RepoError> {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for l in repo.backend().list("index")? {
        match repo.read_index_file(&l.name) {
            Ok(f) => ok.push((l.name, f.packs)),
            Err(RepoError::Backend(e)) if !e.is_not_found() => return Err(e.into()),
            Err(RepoError::Backend(_)) => continue,
            Err(e) => bad.push(e),
        }
    }
    Ok((ok, bad))
}

/// Walks every tree reachable from `roots`, calling `visit` for each blob id referenced (trees and
/// content) with the path where it was referenced. Trees that cannot be loaded are passed to
/// `on_error` with the path and the reason, and their subtrees are skipped.
pub fn walk_trees(
    repo: &Repository,
    roots: &[(String, Id)],
    mut visit: impl FnMut(&Id, &str),
    mut on_error: impl FnMut(&str, RepoError),
) -> usize {
    let mut seen: HashSet<Id> = HashSet::new();
    let mut stack: Vec<(String, Id)> = roots.to_vec();
    let mut trees = 0;
    while let Some((path, id)) = stack.pop() {
        visit(&id, &path);
        if !seen.insert(id) {
            continue;
        }
        let tree = match repo.load_tree(&id) {
            Ok(t) => t,
            Err(e) => {
                on_error(&path, e);
                continue;
            }
        };
        trees += 1;
        for n in &tree.nodes {
            let p = format!("{}/{}", path.trim_end_matches('/'), n.name.lossy());
            for c in &n.content {
                visit(c, &p);
            }
            if n.kind == NodeKind::Dir {
                if let Some(sub) = n.subtree {
                    stack.push((p, sub));
                }
            }
        }
    }
    trees
}

/// Runs the check.
pub fn check(repo: &Repository, read_data: bool, progress: &CheckProgress) -> Result<CheckReport, RepoError> {
    let mut report = CheckReport::default();
    let backend = repo.backend();

    for l in backend.list("keys")? {
        let path = format!("keys/{}", l.name);
        if let Err(e) = KeySlot::parse(&backend.read(&path)?) {
            report.error(path, e.to_string());
        }
    }

    let (index_files, damaged) = read_all_index_files(repo)?;
    report.index_files = index_files.len() + damaged.len();
    for e in damaged {
        let (file, msg) = split_damaged(&e);
        report.error(file, msg);
    }
    // pack id -> (size, entries, index file)
    let mut packs: HashMap<Id, (&IndexPack, &str)> = HashMap::new();
    let mut blobs: HashSet<Id> = HashSet::new();
    for (name, ps) in &index_files {
        for p in ps {
            packs.entry(p.id).or_insert((p, name.as_str()));
            blobs.extend(p.blobs.iter().map(|b| b.id));
        }
    }
    report.packs = packs.len();
    report.blobs = blobs.len();

    let listed = backend.list("data")?;
    let mut on_disk: HashMap<Id, u64> = HashMap::new();
    for l in &listed {
        let name = l.name.rsplit('/').next().unwrap_or(&l.name);
        match name.parse::<Id>() {
            Ok(id) if format!("{}/{}", &name[..2], name) == l.name => {
                on_disk.insert(id, l.size);
            }
            _ => report.problems.push(Problem {
                severity: Severity::Warning,
                file: format!("data/{}", l.name),
                message: "not a pack file name; ignored".into(),
            }),
        }
    }
    let mut missing_packs = HashSet::new();
    for (id, (p, index_name)) in &packs {
        match on_disk.get(id) {
            None => {
                missing_packs.insert(*id);
                report.error(pack_path(id), format!("missing (listed in index/{index_name})"));
            }
            Some(size) if *size != p.size => report.error(
                pack_path(id),
                format!(
                    "size {} differs from the indexed size {} (truncated or damaged)",
                    size, p.size
                ),
            ),
            _ => {}
        }
    }
    for id in on_disk.keys() {
        if !packs.contains_key(id) {
            report.problems.push(Problem {
                severity: Severity::Warning,
                file: pack_path(id),
                message: "not in any index (left by an interrupted backup; `prune` removes it)".into(),
            });
        }
    }

    let snaps = backend.list("snapshots")?;
    let mut roots = Vec::new();
    for l in &snaps {
        let Ok(id) = l.name.parse::<Id>() else {
            report.error(format!("snapshots/{}", l.name), "not a snapshot file name");
            continue;
        };
        match repo.load_snapshot(&id) {
            Ok(s) => roots.push((format!("snapshot {}:", id.short()), s.tree)),
            Err(e) => {
                let (file, msg) = split_damaged(&e);
                report.error(file, msg);
            }
        }
    }
    report.snapshots = snaps.len();
    let mut tree_errors = Vec::new();
    let mut missing_refs = Vec::new();
    report.trees_checked = walk_trees(
        repo,
        &roots,
        |id, path| {
            if !blobs.contains(id) && missing_refs.len() < 1000 {
                missing_refs.push((path.to_string(), *id));
            }
        },
        |path, e| tree_errors.push((path.to_string(), e)),
    );
    for (path, id) in missing_refs {
        report.error("index", format!("{path} references blob {id}, which no index lists"));
    }
    for (path, e) in tree_errors {
        if !matches!(e, RepoError::MissingBlob { .. }) {
            report.error(blob_file(&e), format!("tree of {path}: {e}"));
        }
    }

    if read_data {
        read_all_packs(repo, &on_disk, &packs, progress, &mut report);
    }
    report
        .problems
        .sort_by(|a, b| (a.severity as u8, &a.file).cmp(&(b.severity as u8, &b.file)));
    Ok(report)
}

fn blob_file(e: &RepoError) -> String {
    match e {
        RepoError::DamagedBlob { path, .. } => path.clone(),
        RepoError::Backend(crate::BackendError::Io { path, .. }) => path.clone(),
        _ => "tree".into(),
    }
}

fn split_damaged(e: &RepoError) -> (String, String) {
    match e {
        RepoError::Damaged { path, reason, .. } => (path.clone(), reason.clone()),
        other => ("?".into(), other.to_string()),
    }
}

fn read_all_packs(
    repo: &Repository,
    on_disk: &HashMap<Id, u64>,
    indexed: &HashMap<Id, (&IndexPack, &str)>,
    progress: &CheckProgress,
    report: &mut CheckReport,
) {
    let ids: Vec<Id> = on_disk.keys().copied().collect();
    progress.packs_total.store(ids.len() as u64, Ordering::Relaxed);
    let next = AtomicUsize::new(0);
    let problems = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(8);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                let found = check_pack(repo, id, on_disk[id], indexed.get(id).map(|(p, _)| *p));
                progress.packs_done.fetch_add(1, Ordering::Relaxed);
                progress.bytes_done.fetch_add(on_disk[id], Ordering::Relaxed);
                problems.lock().expect("poisoned").extend(found);
            });
        }
    });
    report.packs_read = ids.len();
    report.bytes_read = progress.bytes_done.load(Ordering::Relaxed);
    report.problems.extend(problems.into_inner().expect("poisoned"));
}

fn check_pack(repo: &Repository, id: &Id, size: u64, indexed: Option<&IndexPack>) -> Vec<Problem> {
    let path = pack_path(id);
    let err = |message: String| Problem {
        severity: Severity::Error,
        file: path.clone(),
        message,
    };
    let bytes = match repo.backend().read_sized(&path, size) {
        Ok(b) => b,
        Err(e) => return vec![err(e.to_string())],
    };
    let mut out = Vec::new();
    if file_id(&bytes) != *id {
        out.push(err(
            "content does not match its name (hash mismatch: the file is damaged)".into(),
        ));
    }
    let header = match parse_header(repo.key(), &bytes) {
        Ok(h) => h,
        Err(e) => {
            out.push(err(format!("unreadable header: {e}")));
            return out;
        }
    };
    if let Some(ip) = indexed {
        if ip.blobs != header {
            out.push(err("header differs from the index".into()));
        }
    }
    for e in &header {
        let sealed = &bytes[e.offset as usize..(e.offset + e.length as u64) as usize];
        if let Err(x) = repo.open_blob(&e.id, &path, sealed) {
            out.push(err(format!("blob {}: {}", e.id, inner_reason(&x))));
        }
    }
    out
}

fn inner_reason(e: &RepoError) -> String {
    match e {
        RepoError::DamagedBlob { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}
