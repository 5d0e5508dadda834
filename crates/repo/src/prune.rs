//! `prune`: removes data no snapshot references, and duplicate copies of blobs.
//!
//! The caller must hold the exclusive lock (so no backup runs meanwhile). Order of effects, chosen
//! so that a crash at any point leaves a consistent repository:
//! 1. read every index file and every snapshot's trees (any damage aborts: nothing is deleted when
//!    it is not certain what is referenced);
//! 2. copy the still-referenced blobs of partly used packs into new packs (each blob decrypted and
//!    verified before it is copied);
//! 3. write new index files describing exactly the packs that remain;
//! 4. delete the old index files;
//! 5. delete packs that are no longer indexed (unused, repacked, or left by interrupted backups).
//!
//! A crash before 4 leaves old and new index files side by side (duplicates are harmless); a crash
//! before 5 leaves unindexed packs, which the next prune deletes.
//!
//! Second line of defence (the first is the lock): a pack file younger than
//! [`PruneOptions::min_age`] on the storage's clock is never deleted nor repacked, whatever the
//! index, the snapshots and the locks say. A backup that runs beside a prune (its lock wrongly
//! judged stale, or a reader that holds no lock) writes only young packs, so they survive. Index
//! files are not spared: prune deletes an index file only after writing new ones that list every
//! pack it keeps, young ones included, so the deletion loses no location. (kopia keeps blobs
//! younger than 2 h in the same way; rustic delays deletion by `keep-delete`.)
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use lifeboat_model::Id;
use serde::Serialize;

use crate::check::{read_all_index_files, walk_trees};
use crate::index::IndexPack;
use crate::pack::{pack_path, PackBuilder};
use crate::{RepoError, Repository};

/// Blobs per index file written by prune.
const BLOBS_PER_INDEX: usize = 100_000;

/// The default of [`PruneOptions::min_age`].
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(2 * 3600);

/// How prune runs.
#[derive(Debug, Clone, Copy)]
pub struct PruneOptions {
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// Packs younger than this (storage clock) are kept as they are.
    pub min_age: Duration,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            min_age: DEFAULT_MIN_AGE,
        }
    }
}

/// What prune did (or would do, with `dry_run`).
#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    /// Packs kept whole because they are younger than the margin (indexed or not).
    pub packs_too_young: usize,
    pub snapshots: usize,
    pub packs_before: usize,
    pub packs_kept: usize,
    pub packs_repacked: usize,
    pub packs_deleted: usize,
    pub packs_unindexed_deleted: usize,
    pub packs_written: usize,
    pub blobs_used: usize,
    pub blobs_removed: usize,
    pub duplicates_removed: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Runs prune. See the module documentation for the protocol.
pub fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport, RepoError> {
    let dry_run = opts.dry_run;
    let backend = repo.backend();
    let mut report = PruneReport {
        dry_run,
        ..Default::default()
    };
    let (index_files, damaged) = read_all_index_files(repo)?;
    if let Some(e) = damaged.into_iter().next() {
        return Err(e);
    }
    let snaps = repo.snapshots()?;
    report.snapshots = snaps.len();
    let roots: Vec<(String, Id)> = snaps.iter().map(|(id, s)| (id.short(), s.tree)).collect();
    let mut used: HashSet<Id> = HashSet::new();
    let mut failure = None;
    walk_trees(
        repo,
        &roots,
        |id, _| {
            used.insert(*id);
        },
        |path, e| {
            failure.get_or_insert_with(|| RepoError::Damaged {
                location: repo.location().to_string(),
                path: format!("tree of snapshot {path}"),
                reason: format!(
                    "{e}; run `lifeboat repo check` (prune removes nothing while a snapshot is unreadable)"
                ),
            });
        },
    );
    if let Some(e) = failure {
        return Err(e);
    }
    report.blobs_used = used.len();

    // Unique packs (a pack may be listed by two index files after an interrupted prune).
    let mut packs: Vec<&IndexPack> = Vec::new();
    let mut seen_packs = HashSet::new();
    for (_, ps) in &index_files {
        for p in ps {
            if seen_packs.insert(p.id) {
                packs.push(p);
            }
        }
    }
    let listed = backend.list("data")?;
    report.packs_before = listed.len();
    report.bytes_before = listed.iter().map(|l| l.size).sum();
    // "Now" on the storage's clock, from below: the newest lock file (this prune's own lock was
    // written moments ago). A lower bound makes packs look younger, which errs on the side of
    // keeping them.
    let storage_now = backend
        .list("locks")?
        .iter()
        .filter_map(|l| l.modified)
        .max()
        .unwrap_or_else(SystemTime::now);
    let young: HashSet<Id> = listed
        .iter()
        .filter(|l| match l.modified {
            Some(m) => storage_now.duration_since(m).unwrap_or_default() < opts.min_age,
            None => !opts.min_age.is_zero(),
        })
        .filter_map(|l| l.name.rsplit('/').next()?.parse::<Id>().ok())
        .collect();

    // Keep young packs whole, then fully used packs, so duplicates are dropped from the partly
    // used ones.
    packs.sort_by_key(|p| {
        (
            !young.contains(&p.id),
            p.blobs.iter().any(|b| !used.contains(&b.id)),
            p.id,
        )
    });
    let mut kept_blob: HashSet<Id> = HashSet::new();
    let mut keep_packs = Vec::new();
    let mut repack: Vec<(&IndexPack, Vec<usize>)> = Vec::new();
    let mut delete_packs: Vec<Id> = Vec::new();
    for p in &packs {
        if young.contains(&p.id) {
            kept_blob.extend(p.blobs.iter().map(|b| b.id).filter(|id| used.contains(id)));
            report.packs_too_young += 1;
            keep_packs.push((*p).clone());
            continue;
        }
        let mut keep_here = Vec::new();
        for (i, b) in p.blobs.iter().enumerate() {
            if used.contains(&b.id) && kept_blob.insert(b.id) {
                keep_here.push(i);
            } else if used.contains(&b.id) {
                report.duplicates_removed += 1;
            } else {
                report.blobs_removed += 1;
            }
        }
        if keep_here.len() == p.blobs.len() {
            keep_packs.push((*p).clone());
        } else if keep_here.is_empty() {
            delete_packs.push(p.id);
        } else {
            repack.push((p, keep_here));
        }
    }
    if let Some(missing) = used.iter().find(|id| !kept_blob.contains(id)) {
        return Err(RepoError::MissingBlob {
            location: repo.location().to_string(),
            id: *missing,
        });
    }
    let indexed: HashSet<Id> = packs.iter().map(|p| p.id).collect();
    let unindexed: Vec<Id> = listed
        .iter()
        .filter_map(|l| l.name.rsplit('/').next()?.parse::<Id>().ok())
        .filter(|id| !indexed.contains(id))
        .collect();
    let young_unindexed = unindexed.iter().filter(|id| young.contains(id)).count();
    report.packs_too_young += young_unindexed;
    let unindexed: Vec<Id> = unindexed.into_iter().filter(|id| !young.contains(id)).collect();
    report.packs_kept = keep_packs.len();
    report.packs_repacked = repack.len();
    report.packs_deleted = delete_packs.len();
    report.packs_unindexed_deleted = unindexed.len();

    let sizes: HashMap<Id, u64> = listed
        .iter()
        .filter_map(|l| Some((l.name.rsplit('/').next()?.parse::<Id>().ok()?, l.size)))
        .collect();
    let kept_bytes: u64 = keep_packs.iter().map(|p| p.size).sum();
    if dry_run {
        let repack_bytes: u64 = repack
            .iter()
            .map(|(p, keep)| keep.iter().map(|&i| p.blobs[i].length as u64).sum::<u64>())
            .sum();
        report.bytes_after = kept_bytes + repack_bytes;
        return Ok(report);
    }

    // 2. Repack.
    let mut new_packs: Vec<IndexPack> = Vec::new();
    let mut builder = PackBuilder::default();
    let pack_size = repo.config().pack_size as usize;
    let flush = |builder: PackBuilder, new_packs: &mut Vec<IndexPack>| -> Result<(), RepoError> {
        if builder.is_empty() {
            return Ok(());
        }
        let (id, bytes, entries) = builder.finish(repo.key());
        backend.write(&pack_path(&id), &bytes)?;
        new_packs.push(IndexPack {
            id,
            size: bytes.len() as u64,
            blobs: entries,
        });
        Ok(())
    };
    for (p, keep) in &repack {
        let path = pack_path(&p.id);
        let bytes = backend.read_sized(&path, p.size)?;
        for &i in keep {
            let e = &p.blobs[i];
            let end = (e.offset + e.length as u64) as usize;
            let sealed = bytes.get(e.offset as usize..end).ok_or_else(|| RepoError::Damaged {
                location: repo.location().to_string(),
                path: path.clone(),
                reason: "shorter than its index says".into(),
            })?;
            repo.open_blob(&e.id, &path, sealed)?;
            builder.add(e.kind, e.id, sealed.to_vec(), e.raw_length as usize);
            if builder.size() >= pack_size {
                flush(std::mem::take(&mut builder), &mut new_packs)?;
            }
        }
    }
    flush(builder, &mut new_packs)?;
    report.packs_written = new_packs.len();

    // 3. New index files for exactly what remains.
    let mut remaining: Vec<IndexPack> = keep_packs;
    remaining.extend(new_packs);
    report.bytes_after = remaining.iter().map(|p| p.size).sum();
    let mut batch = Vec::new();
    let mut count = 0;
    for p in remaining {
        count += p.blobs.len();
        batch.push(p);
        if count >= BLOBS_PER_INDEX {
            repo.write_index_file(std::mem::take(&mut batch))?;
            count = 0;
        }
    }
    if !batch.is_empty() {
        repo.write_index_file(batch)?;
    }
    // 4. Old index files.
    for (name, _) in &index_files {
        backend.remove(&format!("index/{name}"))?;
    }
    // 5. Packs no longer indexed.
    for id in delete_packs
        .iter()
        .chain(repack.iter().map(|(p, _)| &p.id))
        .chain(unindexed.iter())
    {
        if sizes.contains_key(id) || indexed.contains(id) {
            backend.remove(&pack_path(id))?;
        }
    }
    backend.remove_temporaries();
    Ok(report)
}
