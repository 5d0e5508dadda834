use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use lifeboat_model::{Id, Snapshot, Tree};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::backend::Backend;
use crate::crypto::{check_plaintext_size, file_id, fill_random, MasterKey, MAX_PLAINTEXT};
use crate::index::{IndexFile, IndexPack, Location, MemIndex};
use crate::keys::{KdfParams, KeySlot, SlotError};
use crate::lock::{self, LockGuard, LockTimings, LockWatch};
use crate::pack::{pack_path, BlobKind, PackBuilder};
use crate::RepoError;

/// The repository format version this program writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Packs are written once they hold this many stored bytes.
pub const DEFAULT_PACK_SIZE: u32 = 16 << 20;
/// An index file is written after this many packs (and at every flush).
const PACKS_PER_INDEX: usize = 8;

/// Repository-wide settings, stored encrypted in `config`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Config {
    pub version: u32,
    pub id: Id,
    /// Seed for the content-defined chunker's gear table (so chunk boundaries do not reveal content
    /// across repositories).
    pub chunker_seed: u64,
    pub chunk_min: u32,
    pub chunk_avg: u32,
    pub chunk_max: u32,
    pub pack_size: u32,
    pub compression: String,
}

/// Counters of what this process added to the repository.
#[derive(Debug, Default)]
pub struct WriteStats {
    pub blobs_added: AtomicU64,
    /// Plaintext bytes of the blobs added.
    pub raw_bytes_added: AtomicU64,
    /// Bytes of pack and index files written.
    pub bytes_written: AtomicU64,
}

/// A key slot as listed to users.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub current: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    pub hostname: String,
    pub username: String,
    pub memory_kib: u32,
    pub iterations: u32,
}

#[derive(Default)]
struct Writer {
    /// Builders not currently being filled by a thread.
    pool: Vec<PackBuilder>,
    /// Builders taken from the pool (being filled, or being written as a pack and indexed), plus
    /// running flushes. A flush waits until this is zero before it takes the pool, so every blob
    /// another backup was storing when this one skipped it is in a pack and an index file before
    /// this one's snapshot is written.
    active: usize,
    /// Blobs sealed into a builder but not yet in a written pack.
    in_flight: HashSet<Id>,
    /// Packs written but not yet handed to an index file write.
    unindexed: Vec<IndexPack>,
    /// Packs written by this handle and not yet listed in an index file on storage (`unindexed`
    /// plus those whose index file is being written). Their blobs are in the in-memory index;
    /// after a failed write they are dropped from it.
    pending: HashMap<Id, IndexPack>,
}

/// An open repository.
///
/// Thread-safe: blobs may be saved and loaded from many threads at once, and several backups may
/// share one handle (as in `serve`). Blobs saved are durable only after [`Repository::flush`]
/// (which [`Repository::commit_snapshot`] calls first).
///
/// Write sessions: a backup is everything saved between its `started` instant and its
/// [`Repository::commit_snapshot`]. When a pack or index write fails, the handle forgets
/// everything not yet listed in an index file on storage (blobs in flight, builders, written but
/// unindexed packs), and every backup that started before the failure refuses to commit: its
/// snapshot could name blobs stored nowhere. Later backups start from what storage holds.
///
/// Views: [`Repository::lock`] (and [`Repository::refresh_index`]) give the view a fresh
/// [`Repository::open`] would: when index files this handle loaded are gone (a `prune` by another
/// process replaced them), the in-memory index is rebuilt from the index files that exist.
/// How many snapshot files [`Repository::snapshots`] reads at once.
pub const SNAPSHOT_READERS: usize = 16;

pub struct Repository {
    backend: Arc<dyn Backend>,
    key: MasterKey,
    key_name: String,
    config: Config,
    index: RwLock<MemIndex>,
    loaded_index_files: Mutex<HashSet<String>>,
    damaged_index_files: Mutex<Vec<RepoError>>,
    writer: Mutex<Writer>,
    writer_cv: Condvar,
    /// The last failed write: when, and what.
    write_failure: Mutex<Option<(Instant, String)>>,
    /// The repository locks taken through this handle (released ones drop out).
    locks: Mutex<Vec<LockWatch>>,
    lock_timings: LockTimings,
    stats: WriteStats,
    /// Snapshots read through this handle, by id. A snapshot file never changes (its name is the
    /// hash of its content, checked on read), so one read once is never read again; one that is
    /// gone from the listing drops out.
    snapshot_cache: Mutex<HashMap<Id, Snapshot>>,
    /// The largest plaintext written or read ([`MAX_PLAINTEXT`]; smaller in tests).
    max_plaintext: usize,
}

/// What to do about a tree too large to store.
const TREE_ADVICE: &str = "the directory has too many entries (or files too large) for one tree: split it into several directories, or exclude part of it";
/// What to do about another blob or metadata file too large to store.
const OTHER_ADVICE: &str = "this is a bug in what produced it; please report it";

fn damaged(backend: &dyn Backend, path: &str, reason: impl ToString) -> RepoError {
    RepoError::Damaged {
        location: backend.location().to_string(),
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

impl Repository {
    /// Creates a new repository at an empty location, protected by `password`.
    pub fn init(backend: Arc<dyn Backend>, password: &[u8], kdf: KdfParams) -> Result<Repository, RepoError> {
        if backend.exists("config")? {
            return Err(RepoError::AlreadyExists {
                location: backend.location().to_string(),
            });
        }
        // Key slots without a config: an interrupted init (or a lost config). Adding a second slot
        // for another master key would make the location ambiguous; removing them could destroy
        // the only way to read data that exists. Refuse and say what is there.
        // (On S3 a bucket that does not exist yet lists as "not found": nothing there.)
        let slots = match backend.list("keys") {
            Ok(s) => s,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        if !slots.is_empty() {
            return Err(RepoError::InterruptedInit {
                location: backend.location().to_string(),
                slots: slots
                    .iter()
                    .map(|l| format!("keys/{}", l.name))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        backend.create()?;
        let key = MasterKey::generate();
        let mut seed = [0u8; 8];
        fill_random(&mut seed);
        let mut rid = [0u8; 32];
        fill_random(&mut rid);
        let config = Config {
            version: FORMAT_VERSION,
            id: Id(rid),
            chunker_seed: u64::from_le_bytes(seed),
            chunk_min: 512 << 10,
            chunk_avg: 1 << 20,
            chunk_max: 8 << 20,
            pack_size: DEFAULT_PACK_SIZE,
            compression: "zstd-1".into(),
        };
        let slot = KeySlot::create(&key, password, kdf);
        let mut name = [0u8; 32];
        fill_random(&mut name);
        let key_name = hex::encode(name);
        backend.write(
            &format!("keys/{key_name}"),
            &serde_json::to_vec_pretty(&slot).expect("serialisable"),
        )?;
        // The config is written last: its presence marks a complete repository.
        backend.write(
            "config",
            &key.seal(&serde_json::to_vec(&config).expect("serialisable"), false),
        )?;
        Ok(Repository::assemble(backend, key, key_name, config))
    }

    fn assemble(backend: Arc<dyn Backend>, key: MasterKey, key_name: String, config: Config) -> Repository {
        Repository {
            backend,
            key,
            key_name,
            config,
            index: RwLock::new(MemIndex::default()),
            loaded_index_files: Mutex::new(HashSet::new()),
            damaged_index_files: Mutex::new(Vec::new()),
            writer: Mutex::new(Writer::default()),
            writer_cv: Condvar::new(),
            write_failure: Mutex::new(None),
            locks: Mutex::new(Vec::new()),
            lock_timings: LockTimings::default(),
            stats: WriteStats::default(),
            snapshot_cache: Mutex::default(),
            max_plaintext: MAX_PLAINTEXT,
        }
    }

    /// Uses a smaller size limit for what is written and read (for tests of the limit).
    #[cfg(test)]
    fn with_max_plaintext(mut self, limit: usize) -> Repository {
        self.max_plaintext = limit;
        self
    }

    /// Refuses `len` bytes of plaintext when a reader would refuse them.
    fn check_size(&self, what: impl FnOnce() -> String, len: usize, advice: &'static str) -> Result<(), RepoError> {
        check_plaintext_size(len, self.max_plaintext).map_err(|limit| RepoError::TooLarge {
            location: self.location().to_string(),
            what: what(),
            size: len,
            limit,
            advice,
        })
    }

    /// Uses other lock timings (every process sharing the repository must agree on `stale`; for
    /// tests and special deployments).
    pub fn with_lock_timings(mut self, timings: LockTimings) -> Repository {
        self.lock_timings = timings;
        self
    }

    /// The lock timings in use.
    pub fn lock_timings(&self) -> LockTimings {
        self.lock_timings
    }

    /// Opens an existing repository with `password` and loads its index.
    pub fn open(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Repository, RepoError> {
        let location = backend.location().to_string();
        let config_bytes = match backend.read("config") {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Err(RepoError::NotARepository { location }),
            Err(e) => return Err(e.into()),
        };
        let slots = backend.list("keys")?;
        let mut damaged_slots = Vec::new();
        let mut opened = None;
        // The first slot whose key also opens the config wins: a slot that unwraps with this
        // password but belongs to another master key (an orphan of an interrupted init) is skipped.
        let mut config_error = None;
        for s in &slots {
            let path = format!("keys/{}", s.name);
            let bytes = backend.read(&path)?;
            let slot = match KeySlot::parse(&bytes) {
                Ok(slot) => slot,
                Err(e) => {
                    damaged_slots.push(format!("{path}: {e}"));
                    continue;
                }
            };
            match slot.unwrap(password) {
                Ok(k) => match k.open(&config_bytes) {
                    Ok(plain) => {
                        opened = Some((k, s.name.clone(), plain));
                        break;
                    }
                    Err(e) => {
                        config_error.get_or_insert(damaged(
                            &*backend,
                            "config",
                            format!("{e} (with the key of {path})"),
                        ));
                    }
                },
                Err(SlotError::WrongPassword) => continue,
                Err(e) => damaged_slots.push(format!("{path}: {e}")),
            }
        }
        let Some((key, key_name, plain)) = opened else {
            if let Some(e) = config_error {
                return Err(e);
            }
            if !damaged_slots.is_empty() {
                return Err(damaged(&*backend, "keys", damaged_slots.join("; ")));
            }
            return Err(RepoError::WrongPassword { location });
        };
        let config: Config = serde_json::from_slice(&plain).map_err(|e| damaged(&*backend, "config", e))?;
        if config.version != FORMAT_VERSION {
            return Err(RepoError::UnsupportedVersion {
                location,
                found: config.version,
                supported: FORMAT_VERSION,
            });
        }
        let repo = Repository::assemble(backend, key, key_name, config);
        repo.refresh_index()?;
        Ok(repo)
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn location(&self) -> &str {
        self.backend.location()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn key(&self) -> &MasterKey {
        &self.key
    }

    pub fn stats(&self) -> &WriteStats {
        &self.stats
    }

    /// Takes a shared (`exclusive = false`) or exclusive lock; see [`crate::lock`]. Once the lock
    /// is held the index is reloaded, so whatever finished while this process waited is seen, and
    /// whatever a prune removed meanwhile is forgotten. While the guard lives, packs and snapshots
    /// are written through this handle only while the lock holds ([`LockGuard::check`]).
    pub fn lock(&self, exclusive: bool, command: &str, wait: Duration) -> Result<LockGuard, RepoError> {
        let guard = lock::acquire_with(
            self.backend.clone(),
            &self.key,
            "locks",
            exclusive,
            command,
            wait,
            self.lock_timings,
        )?;
        self.locks.lock().expect("poisoned").push(guard.watch());
        self.refresh_index()?;
        Ok(guard)
    }

    /// Fails when a repository lock taken through this handle was lost.
    fn check_locks(&self, thorough: bool) -> Result<(), RepoError> {
        let watches: Vec<LockWatch> = {
            let mut locks = self.locks.lock().expect("poisoned");
            locks.retain(|w| w.check(false).is_some());
            locks.clone()
        };
        for w in watches {
            if let Some(r) = w.check(thorough) {
                r?;
            }
        }
        Ok(())
    }

    /// Whether the repository is still there and answers: its config file exists (a local
    /// repository whose disk went away lists as empty, so an empty listing alone proves nothing).
    /// One cheap request; reads nothing sealed.
    pub fn reachable(&self) -> Result<(), RepoError> {
        if self.backend.exists("config")? {
            Ok(())
        } else {
            Err(RepoError::NotARepository {
                location: self.location().to_string(),
            })
        }
    }

    /// Who holds the repository's locks (`locks/`) and, with `dr_dir`, the DR state lock of
    /// `dr/DR_DIR/lock` (see [`lock::holders`]): reads only.
    pub fn lock_holders(&self, dr_dir: Option<&str>) -> Result<Vec<String>, RepoError> {
        let dir = dr_dir.map_or_else(|| "locks".to_string(), |d| format!("dr/{d}/lock"));
        lock::holders(&*self.backend, &self.key, &dir)
    }

    /// Removes stale and unreadable lock files (with `all`, every lock file) from `locks/` and from
    /// the DR state's lock directories (`dr/.../lock/`). Returns what was removed.
    pub fn unlock(&self, all: bool) -> Result<Vec<lock::Unlocked>, RepoError> {
        let mut dirs = vec!["locks".to_string()];
        let mut dr: Vec<String> = self
            .backend
            .list("dr")?
            .into_iter()
            .filter_map(|l| l.name.rsplit_once("/lock/").map(|(d, _)| format!("dr/{d}/lock")))
            .collect();
        dr.sort();
        dr.dedup();
        dirs.extend(dr);
        let mut out = Vec::new();
        for d in dirs {
            out.extend(lock::unlock(&*self.backend, &self.key, &d, all, &self.lock_timings)?);
        }
        Ok(out)
    }

    // ----- DR state files ---------------------------------------------------------------------

    /// Writes the DR state file `dr/PATH` (sealed and compressed with the master key), replacing
    /// its earlier content. On a local repository the replacement is atomic (write, sync, rename);
    /// on S3 a PUT is atomic per object. Used for failover journals and app state, which change in
    /// place, unlike the content-addressed files.
    pub fn write_state(&self, path: &str, plain: &[u8]) -> Result<(), RepoError> {
        self.check_size(|| format!("state file dr/{path}"), plain.len(), OTHER_ADVICE)?;
        let sealed = self.key.seal(plain, true);
        self.backend.write(&format!("dr/{path}"), &sealed)?;
        Ok(())
    }

    /// Reads and decrypts `dr/PATH`; `None` when there is no such file.
    pub fn read_state(&self, path: &str) -> Result<Option<Vec<u8>>, RepoError> {
        let full = format!("dr/{path}");
        let bytes = match self.backend.read(&full) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        self.key
            .open_owned_limited(bytes, self.max_plaintext)
            .map(Some)
            .map_err(|e| damaged(&*self.backend, &full, e))
    }

    /// Removes the DR state file `dr/PATH`; one that is not there is not an error.
    pub fn remove_state(&self, path: &str) -> Result<(), RepoError> {
        match self.backend.remove(&format!("dr/{path}")) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The names of the state files under `dr/DIR` (relative to it).
    pub fn list_state(&self, dir: &str) -> Result<Vec<String>, RepoError> {
        Ok(self
            .backend
            .list(&format!("dr/{dir}"))?
            .into_iter()
            .map(|l| l.name)
            .collect())
    }

    /// Takes the exclusive lock of `dr/DIR/lock` (see [`lock::acquire_in`]): one holder at a time
    /// per directory, independent of the repository lock.
    pub fn lock_state(&self, dir: &str, command: &str, wait: Duration) -> Result<LockGuard, RepoError> {
        lock::acquire_in(
            self.backend.clone(),
            &self.key,
            &format!("dr/{dir}/lock"),
            true,
            command,
            wait,
        )
    }

    // ----- metadata files -------------------------------------------------------------------

    /// Reads and decrypts a content-addressed metadata file (`index/ID`, `snapshots/ID`), checking
    /// that its bytes hash to its name.
    pub fn read_named(&self, dir: &str, name: &str) -> Result<Vec<u8>, RepoError> {
        let path = format!("{dir}/{name}");
        let bytes = self.backend.read(&path)?;
        if file_id(&bytes).to_hex() != name {
            return Err(damaged(
                &*self.backend,
                &path,
                "content does not match its name (hash mismatch)",
            ));
        }
        self.key
            .open_owned_limited(bytes, self.max_plaintext)
            .map_err(|e| damaged(&*self.backend, &path, e))
    }

    fn write_named(&self, dir: &str, plain: &[u8]) -> Result<Id, RepoError> {
        self.check_size(|| format!("a file in {dir}/"), plain.len(), OTHER_ADVICE)?;
        let sealed = self.key.seal(plain, true);
        let id = file_id(&sealed);
        self.backend.write(&format!("{dir}/{id}"), &sealed)?;
        self.stats
            .bytes_written
            .fetch_add(sealed.len() as u64, Ordering::Relaxed);
        Ok(id)
    }

    /// Reads one index file.
    pub fn read_index_file(&self, name: &str) -> Result<IndexFile, RepoError> {
        let plain = self.read_named("index", name)?;
        serde_json::from_slice(&plain).map_err(|e| damaged(&*self.backend, &format!("index/{name}"), e))
    }

    /// Writes an index file listing `packs`.
    pub fn write_index_file(&self, packs: Vec<IndexPack>) -> Result<Id, RepoError> {
        // Every pack this index names must be durable before the index is.
        self.backend.sync()?;
        let file = IndexFile { version: 1, packs };
        let id = self.write_named("index", &serde_json::to_vec(&file).expect("serialisable"))?;
        self.loaded_index_files.lock().expect("poisoned").insert(id.to_hex());
        Ok(id)
    }

    /// Brings the in-memory index up to date with the index files on storage: loads those written
    /// since the last call (by this or other processes) and, when index files loaded earlier are
    /// gone (replaced by a prune), rebuilds it from the files that exist (plus this handle's packs
    /// not yet indexed), so no blob is located in a pack that was deleted.
    ///
    /// A damaged index file does not stop this: it is recorded (see
    /// [`Repository::damaged_index_files`]) and its blobs count as absent, so reads of them fail
    /// with [`RepoError::MissingBlob`] and backups store them again. It is read again at the next
    /// refresh, so a file that was repaired (or a read error that passed) is then used.
    pub fn refresh_index(&self) -> Result<(), RepoError> {
        let listed: Vec<String> = self.backend.list("index")?.into_iter().map(|l| l.name).collect();
        let vanished = {
            let loaded = self.loaded_index_files.lock().expect("poisoned");
            let now: HashSet<&String> = listed.iter().collect();
            loaded.iter().any(|n| !now.contains(n))
        };
        if vanished {
            return self.rebuild_index(listed);
        }
        let new: Vec<String> = {
            let loaded = self.loaded_index_files.lock().expect("poisoned");
            listed.into_iter().filter(|n| !loaded.contains(n)).collect()
        };
        let mut damaged_now = Vec::new();
        for name in new {
            match self.read_index_file(&name) {
                Ok(file) => {
                    self.index.write().expect("poisoned").add_file(&file);
                    self.loaded_index_files.lock().expect("poisoned").insert(name);
                }
                // Superseded by a prune that finished meanwhile: its packs are in the newer index.
                Err(RepoError::Backend(e)) if e.is_not_found() => continue,
                Err(e @ RepoError::Damaged { .. }) => damaged_now.push(e),
                Err(e) => return Err(e),
            }
        }
        *self.damaged_index_files.lock().expect("poisoned") = damaged_now;
        Ok(())
    }

    /// Replaces the in-memory index with one built from the index files `listed` and this handle's
    /// pending packs. Lookups wait meanwhile (this runs only after a prune replaced index files).
    fn rebuild_index(&self, listed: Vec<String>) -> Result<(), RepoError> {
        let mut index = self.index.write().expect("poisoned");
        let mut fresh = MemIndex::default();
        let mut loaded = HashSet::new();
        let mut damaged_now = Vec::new();
        for name in listed {
            match self.read_index_file(&name) {
                Ok(file) => {
                    fresh.add_file(&file);
                    loaded.insert(name);
                }
                Err(RepoError::Backend(e)) if e.is_not_found() => continue,
                Err(e @ RepoError::Damaged { .. }) => damaged_now.push(e),
                Err(e) => return Err(e),
            }
        }
        // Lock order: index, then writer (as in `write_pack`).
        for p in self.writer.lock().expect("poisoned").pending.values() {
            fresh.add_pack(&p.id, &p.blobs);
        }
        *index = fresh;
        *self.loaded_index_files.lock().expect("poisoned") = loaded;
        *self.damaged_index_files.lock().expect("poisoned") = damaged_now;
        Ok(())
    }

    /// Index files that could not be read (each error names its file).
    pub fn damaged_index_files(&self) -> Vec<String> {
        self.damaged_index_files
            .lock()
            .expect("poisoned")
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    /// Names of the index files loaded so far.
    pub fn index_file_names(&self) -> Vec<String> {
        self.loaded_index_files
            .lock()
            .expect("poisoned")
            .iter()
            .cloned()
            .collect()
    }

    // ----- blobs ----------------------------------------------------------------------------

    /// Whether the repository (or this process, pending a flush) holds the blob.
    pub fn has_blob(&self, id: &Id) -> bool {
        self.index.read().expect("poisoned").contains(id)
            || self.writer.lock().expect("poisoned").in_flight.contains(id)
    }

    /// Where a blob is stored, if it is in the index.
    pub fn locate(&self, id: &Id) -> Option<Location> {
        self.index.read().expect("poisoned").get(id)
    }

    /// Number of distinct blobs in the loaded index.
    pub fn blob_count(&self) -> usize {
        self.index.read().expect("poisoned").len()
    }

    /// Stores a blob unless the repository already has it. Returns its id and whether it was new.
    pub fn save_blob(&self, kind: BlobKind, data: &[u8]) -> Result<(Id, bool), RepoError> {
        let id = self.key.blob_id(data);
        self.save_blob_with_id(kind, id, data).map(|added| (id, added))
    }

    /// Like [`Repository::save_blob`] for a caller that already computed the id with
    /// [`MasterKey::blob_id`].
    ///
    /// A blob larger than a reader accepts is refused ([`RepoError::TooLarge`]) before anything is
    /// stored.
    pub fn save_blob_with_id(&self, kind: BlobKind, id: Id, data: &[u8]) -> Result<bool, RepoError> {
        let (name, advice) = match kind {
            BlobKind::Tree => ("tree", TREE_ADVICE),
            BlobKind::Data => ("data", OTHER_ADVICE),
        };
        self.check_size(|| format!("{name} blob {id}"), data.len(), advice)?;
        if self.index.read().expect("poisoned").contains(&id) {
            return Ok(false);
        }
        if !self.writer.lock().expect("poisoned").in_flight.insert(id) {
            return Ok(false);
        }
        let sealed = self.key.seal(data, true);
        self.stats.blobs_added.fetch_add(1, Ordering::Relaxed);
        self.stats
            .raw_bytes_added
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let mut builder = {
            let mut w = self.writer.lock().expect("poisoned");
            w.active += 1;
            w.pool.pop().unwrap_or_default()
        };
        builder.add(kind, id, sealed, data.len());
        let result = if builder.size() >= self.config.pack_size as usize {
            let r = self.write_pack(builder);
            self.end_active(None);
            r
        } else {
            self.end_active(Some(builder));
            Ok(())
        };
        result.map(|()| true)
    }

    /// Ends an `active` period, putting `builder` back into the pool in the same step.
    fn end_active(&self, builder: Option<PackBuilder>) {
        let mut w = self.writer.lock().expect("poisoned");
        if let Some(b) = builder {
            w.pool.push(b);
        }
        w.active -= 1;
        if w.active == 0 {
            self.writer_cv.notify_all();
        }
    }

    /// Writes a full pack (see [`Repository::write_pack_inner`]); on failure forgets everything
    /// not yet indexed on storage.
    fn write_pack(&self, builder: PackBuilder) -> Result<(), RepoError> {
        let r = self.write_pack_inner(builder);
        if let Err(e) = &r {
            self.forget_uncommitted(e);
        }
        r
    }

    /// Before writing, blobs that another process stored meanwhile (seen in its index files) are
    /// dropped, so concurrent backups of common data store it mostly once.
    fn write_pack_inner(&self, mut builder: PackBuilder) -> Result<(), RepoError> {
        self.check_locks(false)?;
        self.refresh_index()?;
        {
            let idx = self.index.read().expect("poisoned");
            let dropped: Vec<Id> = builder.ids().filter(|id| idx.contains(id)).collect();
            if !dropped.is_empty() {
                builder.retain(|id| !idx.contains(id));
                let mut w = self.writer.lock().expect("poisoned");
                for id in &dropped {
                    w.in_flight.remove(id);
                }
            }
        }
        if builder.is_empty() {
            return Ok(());
        }
        let (pack_id, bytes, entries) = builder.finish(&self.key);
        // Durable before any index names it: `write_index_file` syncs first.
        self.backend.write_deferred(&pack_path(&pack_id), &bytes)?;
        self.stats
            .bytes_written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let pack = IndexPack {
            id: pack_id,
            size: bytes.len() as u64,
            blobs: entries,
        };
        // Pending first, then the index (see `rebuild_index`).
        let to_index = {
            let mut w = self.writer.lock().expect("poisoned");
            w.pending.insert(pack_id, pack.clone());
            w.unindexed.push(pack.clone());
            if w.unindexed.len() >= PACKS_PER_INDEX {
                std::mem::take(&mut w.unindexed)
            } else {
                Vec::new()
            }
        };
        self.index.write().expect("poisoned").add_pack(&pack_id, &pack.blobs);
        {
            let mut w = self.writer.lock().expect("poisoned");
            for e in &pack.blobs {
                w.in_flight.remove(&e.id);
            }
        }
        if !to_index.is_empty() {
            self.index_pending(to_index)?;
        }
        Ok(())
    }

    /// Writes an index file for packs this handle wrote; they are then no longer pending.
    fn index_pending(&self, packs: Vec<IndexPack>) -> Result<(), RepoError> {
        let ids: Vec<Id> = packs.iter().map(|p| p.id).collect();
        self.write_index_file(packs)?;
        let mut w = self.writer.lock().expect("poisoned");
        for id in ids {
            w.pending.remove(&id);
        }
        Ok(())
    }

    /// After a failed write: forgets every blob not listed in an index file on storage (in flight,
    /// in builders, in written but unindexed packs), and records the failure so that backups that
    /// started before it do not commit.
    fn forget_uncommitted(&self, e: &RepoError) {
        *self.write_failure.lock().expect("poisoned") = Some((Instant::now(), e.to_string()));
        let mut index = self.index.write().expect("poisoned");
        let mut w = self.writer.lock().expect("poisoned");
        w.pool.clear();
        w.in_flight.clear();
        w.unindexed.clear();
        for (_, p) in w.pending.drain() {
            index.remove_pack(&p.id, &p.blobs);
        }
    }

    /// Fails when a write failed at or after `started`.
    fn check_no_failure_since(&self, started: Instant) -> Result<(), RepoError> {
        match &*self.write_failure.lock().expect("poisoned") {
            Some((at, reason)) if *at >= started => Err(RepoError::WriteFailed {
                location: self.location().to_string(),
                reason: reason.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Writes every pending blob into packs and every written pack into an index file. Waits first
    /// for other threads' builders (another backup sharing this handle may hold a blob this one
    /// skipped), so on return every blob saved through this handle before the call is in a pack
    /// listed by an index file on storage, or the call failed.
    pub fn flush(&self) -> Result<(), RepoError> {
        let builders = {
            let mut w = self.writer.lock().expect("poisoned");
            while w.active > 0 {
                w = self.writer_cv.wait(w).expect("poisoned");
            }
            w.active += 1;
            std::mem::take(&mut w.pool)
        };
        let result = (|| {
            for b in builders {
                if !b.is_empty() {
                    self.write_pack(b)?;
                }
            }
            let rest = std::mem::take(&mut self.writer.lock().expect("poisoned").unindexed);
            if !rest.is_empty() {
                if let Err(e) = self.index_pending(rest) {
                    self.forget_uncommitted(&e);
                    return Err(e);
                }
            }
            Ok(())
        })();
        self.end_active(None);
        result
    }

    /// Reads a blob, decrypts it and checks it hashes to `id`.
    pub fn load_blob(&self, id: &Id) -> Result<Vec<u8>, RepoError> {
        let loc = self.locate(id).ok_or_else(|| RepoError::MissingBlob {
            location: self.location().to_string(),
            id: *id,
        })?;
        let path = pack_path(&loc.pack);
        let sealed = self.backend.read_range(&path, loc.offset, loc.length as u64)?;
        self.open_blob_owned(id, &path, sealed)
    }

    /// Decrypts a sealed blob read from `path` and checks its id.
    pub fn open_blob(&self, id: &Id, path: &str, sealed: &[u8]) -> Result<Vec<u8>, RepoError> {
        self.open_blob_owned(id, path, sealed.to_vec())
    }

    /// Like [`Repository::open_blob`], decrypting in the given buffer.
    pub fn open_blob_owned(&self, id: &Id, path: &str, sealed: Vec<u8>) -> Result<Vec<u8>, RepoError> {
        let bad = |reason: String| RepoError::DamagedBlob {
            location: self.location().to_string(),
            id: *id,
            path: path.to_string(),
            reason,
        };
        let plain = self
            .key
            .open_owned_limited(sealed, self.max_plaintext)
            .map_err(|e| bad(e.to_string()))?;
        if self.key.blob_id(&plain) != *id {
            return Err(bad("content does not match its id".into()));
        }
        Ok(plain)
    }

    // ----- trees ----------------------------------------------------------------------------

    /// Stores a directory tree (sorted first). Returns its id and whether it was new.
    ///
    /// A tree whose JSON is larger than a reader accepts ([`MAX_PLAINTEXT`], roughly a million
    /// entries) is refused with [`RepoError::TooLarge`] before anything is stored, so the backup
    /// fails instead of committing a snapshot that `restore` and `check` could not read.
    pub fn save_tree(&self, tree: &Tree) -> Result<(Id, bool), RepoError> {
        let json = serde_json::to_vec(tree).expect("serialisable");
        self.check_size(
            || format!("a tree of {} entries", tree.nodes.len()),
            json.len(),
            TREE_ADVICE,
        )?;
        self.save_blob(BlobKind::Tree, &json)
    }

    pub fn load_tree(&self, id: &Id) -> Result<Tree, RepoError> {
        let plain = self.load_blob(id)?;
        serde_json::from_slice(&plain).map_err(|e| RepoError::DamagedBlob {
            location: self.location().to_string(),
            id: *id,
            path: "tree".into(),
            reason: format!("not a tree: {e}"),
        })
    }

    // ----- snapshots ------------------------------------------------------------------------

    /// Flushes pending data, then records a snapshot that no backup session produced (an import,
    /// a test fixture): unlike [`Repository::commit_snapshot`] it does not check for write
    /// failures since a start, only that the locks taken through this handle hold.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<Id, RepoError> {
        self.flush()?;
        self.check_locks(true)?;
        self.write_named("snapshots", &serde_json::to_vec(snap).expect("serialisable"))
    }

    /// Finishes a backup that started at `started`: flushes pending data, fills in the snapshot's
    /// `blobs_added`, `bytes_added` (what this repository handle wrote) and `seconds`, then records
    /// it. Returns the snapshot id.
    ///
    /// Refuses ([`RepoError::WriteFailed`]) when any write through this handle failed since
    /// `started`, and ([`RepoError::LockLost`]) when a lock taken through this handle was lost:
    /// in both cases blobs the snapshot names might be stored nowhere.
    pub fn commit_snapshot(&self, snap: &mut Snapshot, started: std::time::Instant) -> Result<Id, RepoError> {
        // Pending packs are written before the snapshot's figures are taken.
        self.flush()?;
        self.check_no_failure_since(started)?;
        self.check_locks(true)?;
        snap.summary.blobs_added = self.stats.blobs_added.load(Ordering::Relaxed);
        snap.summary.bytes_added = self.stats.bytes_written.load(Ordering::Relaxed);
        snap.summary.seconds = started.elapsed().as_secs_f64();
        self.write_named("snapshots", &serde_json::to_vec(snap).expect("serialisable"))
    }

    /// Reads one snapshot file.
    pub fn load_snapshot(&self, id: &Id) -> Result<Snapshot, RepoError> {
        let name = id.to_hex();
        let plain = self.read_named("snapshots", &name)?;
        serde_json::from_slice(&plain).map_err(|e| damaged(&*self.backend, &format!("snapshots/{name}"), e))
    }

    /// Every snapshot, oldest first. One listing, then only the snapshot files this handle has
    /// not read before, read by up to [`SNAPSHOT_READERS`] threads at once (on S3 each read is a
    /// round trip: a failover's look at 10,000 snapshots is not 10,000 sequential requests, and
    /// a long-lived `serve` reads each snapshot once).
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>, RepoError> {
        let mut ids = Vec::new();
        for l in self.backend.list("snapshots")? {
            let id: Id = l.name.parse().map_err(|_| {
                damaged(
                    &*self.backend,
                    &format!("snapshots/{}", l.name),
                    "not a snapshot file name",
                )
            })?;
            ids.push(id);
        }
        let missing: Vec<Id> = {
            let cache = self.snapshot_cache.lock().expect("poisoned");
            ids.iter().filter(|id| !cache.contains_key(id)).copied().collect()
        };
        let next = std::sync::atomic::AtomicUsize::new(0);
        let loaded: Vec<Result<Option<(Id, Snapshot)>, RepoError>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..SNAPSHOT_READERS.min(missing.len()))
                .map(|_| {
                    s.spawn(|| {
                        let mut got = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(id) = missing.get(i) else { break got };
                            got.push(match self.load_snapshot(id) {
                                Ok(snap) => Ok(Some((*id, snap))),
                                // Removed by a concurrent forget between list and read.
                                Err(RepoError::Backend(e)) if e.is_not_found() => Ok(None),
                                Err(e) => Err(e),
                            });
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("a snapshot reader panicked"))
                .collect()
        });
        let mut cache = self.snapshot_cache.lock().expect("poisoned");
        for r in loaded {
            if let Some((id, snap)) = r? {
                cache.insert(id, snap);
            }
        }
        let listed: HashSet<Id> = ids.iter().copied().collect();
        cache.retain(|id, _| listed.contains(id));
        let mut out: Vec<(Id, Snapshot)> = cache.iter().map(|(id, s)| (*id, s.clone())).collect();
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Finds a snapshot by `latest` or by a unique prefix of its id (at least 4 hex digits).
    pub fn find_snapshot(&self, query: &str) -> Result<(Id, Snapshot), RepoError> {
        let all = self.snapshots()?;
        if query == "latest" {
            return all
                .into_iter()
                .last()
                .ok_or_else(|| RepoError::SnapshotNotFound { query: query.into() });
        }
        if query.len() < 4 {
            return Err(RepoError::SnapshotNotFound { query: query.into() });
        }
        let q = query.to_ascii_lowercase();
        let mut hits: Vec<(Id, Snapshot)> = all.into_iter().filter(|(id, _)| id.to_hex().starts_with(&q)).collect();
        match hits.len() {
            0 => Err(RepoError::SnapshotNotFound { query: query.into() }),
            1 => Ok(hits.pop().expect("one")),
            _ => Err(RepoError::AmbiguousSnapshot {
                query: query.into(),
                candidates: hits.iter().map(|(id, _)| id.short()).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// Deletes a snapshot file (its data stays until `prune`).
    pub fn remove_snapshot(&self, id: &Id) -> Result<(), RepoError> {
        self.backend.remove(&format!("snapshots/{id}"))?;
        Ok(())
    }

    // ----- key slots ------------------------------------------------------------------------

    /// Adds a key slot for `password`; returns its id.
    pub fn add_key(&self, password: &[u8], kdf: KdfParams) -> Result<String, RepoError> {
        let slot = KeySlot::create(&self.key, password, kdf);
        let mut name = [0u8; 32];
        fill_random(&mut name);
        let name = hex::encode(name);
        self.backend.write(
            &format!("keys/{name}"),
            &serde_json::to_vec_pretty(&slot).expect("serialisable"),
        )?;
        Ok(name)
    }

    /// Lists key slots; damaged slot files are reported as errors.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>, RepoError> {
        let mut out = Vec::new();
        for l in self.backend.list("keys")? {
            let path = format!("keys/{}", l.name);
            let slot = KeySlot::parse(&self.backend.read(&path)?).map_err(|e| damaged(&*self.backend, &path, e))?;
            out.push(KeyInfo {
                current: l.name == self.key_name,
                id: l.name,
                created: slot.created,
                hostname: slot.hostname,
                username: slot.username,
                memory_kib: slot.params.memory_kib,
                iterations: slot.params.iterations,
            });
        }
        out.sort_by_key(|k| k.created);
        Ok(out)
    }

    /// Removes a key slot given by a unique id prefix. Refuses to remove the slot in use.
    pub fn remove_key(&self, prefix: &str) -> Result<String, RepoError> {
        let keys = self.list_keys()?;
        let hits: Vec<&KeyInfo> = keys
            .iter()
            .filter(|k| !prefix.is_empty() && k.id.starts_with(prefix))
            .collect();
        let k = match hits.as_slice() {
            [k] => *k,
            [] => return Err(RepoError::KeyNotFound { id: prefix.into() }),
            _ => {
                return Err(RepoError::KeyRemovalRefused {
                    id: prefix.into(),
                    reason: "the prefix matches several key slots".into(),
                })
            }
        };
        if k.current {
            return Err(RepoError::KeyRemovalRefused {
                id: k.id.clone(),
                reason:
                    "it is the key slot this password opened; open the repository with another password to remove it"
                        .into(),
            });
        }
        self.backend.remove(&format!("keys/{}", k.id))?;
        Ok(k.id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;
    use lifeboat_model::{FileName, Node, NodeKind};

    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn tree_of(n: usize) -> Tree {
        let mut tree = Tree::default();
        for i in 0..n {
            tree.nodes.push(Node::new(
                FileName::from(format!("file-{i:05}").as_str()),
                NodeKind::File,
            ));
        }
        tree.sort();
        tree
    }

    fn json_len(tree: &Tree) -> usize {
        serde_json::to_vec(tree).unwrap().len()
    }

    /// Finding 19: a tree a reader would refuse is refused when written, with its size, the limit
    /// and what to do; one exactly at the limit is stored and reads back.
    #[test]
    fn a_tree_over_the_size_limit_is_refused_at_write_and_one_at_the_limit_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let at = tree_of(200);
        let limit = json_len(&at);
        let repo = Repository::init(Arc::new(LocalBackend::new(dir.path())), b"pw", FAST)
            .unwrap()
            .with_max_plaintext(limit);

        let (id, added) = repo.save_tree(&at).unwrap();
        assert!(added);
        repo.flush().unwrap();
        assert_eq!(repo.load_tree(&id).unwrap(), at);

        let over = tree_of(201);
        let size = json_len(&over);
        assert!(size > limit);
        let blobs = repo.blob_count();
        let added_before = repo.stats().blobs_added.load(Ordering::Relaxed);
        match repo.save_tree(&over) {
            Err(e @ RepoError::TooLarge { .. }) => {
                let text = e.to_string();
                for part in [
                    size.to_string(),
                    limit.to_string(),
                    "split".to_string(),
                    "201 entries".to_string(),
                ] {
                    assert!(text.contains(&part), "{part} not in {text}");
                }
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // Nothing of it was stored or is pending.
        repo.flush().unwrap();
        assert_eq!(repo.blob_count(), blobs);
        assert_eq!(repo.stats().blobs_added.load(Ordering::Relaxed), added_before);
        let over_id = repo.key().blob_id(&serde_json::to_vec(&over).unwrap());
        assert!(!repo.has_blob(&over_id));
    }

    /// The same limit holds for every other write path with a read-side limit: data blobs, DR
    /// state files, snapshots.
    #[test]
    fn blobs_state_files_and_snapshots_over_the_size_limit_are_refused_at_write() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 4096;
        let repo = Repository::init(Arc::new(LocalBackend::new(dir.path())), b"pw", FAST)
            .unwrap()
            .with_max_plaintext(limit);
        let at = vec![7u8; limit];
        let over = vec![7u8; limit + 1];

        let (id, _) = repo.save_blob(BlobKind::Data, &at).unwrap();
        repo.flush().unwrap();
        assert_eq!(repo.load_blob(&id).unwrap(), at);
        assert!(matches!(
            repo.save_blob(BlobKind::Data, &over),
            Err(RepoError::TooLarge { size, .. }) if size == limit + 1
        ));
        assert!(!repo.has_blob(&repo.key().blob_id(&over)));

        repo.write_state("t/at", &at).unwrap();
        assert_eq!(repo.read_state("t/at").unwrap().unwrap(), at);
        assert!(matches!(
            repo.write_state("t/over", &over),
            Err(RepoError::TooLarge { .. })
        ));
        assert_eq!(repo.read_state("t/over").unwrap(), None);

        let before = repo.backend().list("snapshots").unwrap().len();
        assert!(matches!(
            repo.write_named("snapshots", &over),
            Err(RepoError::TooLarge { .. })
        ));
        assert_eq!(repo.backend().list("snapshots").unwrap().len(), before);
    }
}
