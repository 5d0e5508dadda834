use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use lifeboat_model::{Id, Snapshot, Tree};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::backend::Backend;
use crate::crypto::{file_id, fill_random, MasterKey};
use crate::index::{IndexFile, IndexPack, Location, MemIndex};
use crate::keys::{KdfParams, KeySlot, SlotError};
use crate::lock::{self, LockGuard};
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
    /// Blobs sealed into a builder but not yet in a written pack.
    in_flight: HashSet<Id>,
    /// Packs written but not yet listed in an index file.
    unindexed: Vec<IndexPack>,
}

/// An open repository.
///
/// Thread-safe: blobs may be saved and loaded from many threads at once. Blobs saved are durable
/// only after [`Repository::flush`] (which [`Repository::save_snapshot`] calls first).
pub struct Repository {
    backend: Arc<dyn Backend>,
    key: MasterKey,
    key_name: String,
    config: Config,
    index: RwLock<MemIndex>,
    loaded_index_files: Mutex<HashSet<String>>,
    damaged_index_files: Mutex<Vec<RepoError>>,
    writer: Mutex<Writer>,
    stats: WriteStats,
}

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
            stats: WriteStats::default(),
        }
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
                Ok(k) => {
                    opened = Some((k, s.name.clone()));
                    break;
                }
                Err(SlotError::WrongPassword) => continue,
                Err(e) => damaged_slots.push(format!("{path}: {e}")),
            }
        }
        let Some((key, key_name)) = opened else {
            if !damaged_slots.is_empty() {
                return Err(damaged(&*backend, "keys", damaged_slots.join("; ")));
            }
            return Err(RepoError::WrongPassword { location });
        };
        let plain = key.open(&config_bytes).map_err(|e| damaged(&*backend, "config", e))?;
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
    /// is held the index is reloaded, so whatever finished while this process waited is seen.
    pub fn lock(&self, exclusive: bool, command: &str, wait: Duration) -> Result<LockGuard, RepoError> {
        let guard = lock::acquire(self.backend.clone(), &self.key, exclusive, command, wait)?;
        self.refresh_index()?;
        Ok(guard)
    }

    // ----- DR state files ---------------------------------------------------------------------

    /// Writes the DR state file `dr/PATH` (sealed and compressed with the master key), replacing
    /// its earlier content. On a local repository the replacement is atomic (write, sync, rename);
    /// on S3 a PUT is atomic per object. Used for failover journals and app state, which change in
    /// place, unlike the content-addressed files.
    pub fn write_state(&self, path: &str, plain: &[u8]) -> Result<(), RepoError> {
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
            .open_owned(bytes)
            .map(Some)
            .map_err(|e| damaged(&*self.backend, &full, e))
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
        self.key.open(&bytes).map_err(|e| damaged(&*self.backend, &path, e))
    }

    fn write_named(&self, dir: &str, plain: &[u8]) -> Result<Id, RepoError> {
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

    /// Loads index files written since the last call (by this or other processes).
    ///
    /// A damaged index file does not stop this: it is recorded (see
    /// [`Repository::damaged_index_files`]) and its blobs count as absent, so reads of them fail
    /// with [`RepoError::MissingBlob`] and backups store them again.
    pub fn refresh_index(&self) -> Result<(), RepoError> {
        let listed = self.backend.list("index")?;
        let new: Vec<String> = {
            let loaded = self.loaded_index_files.lock().expect("poisoned");
            listed
                .into_iter()
                .map(|l| l.name)
                .filter(|n| !loaded.contains(n))
                .collect()
        };
        for name in new {
            let file = match self.read_index_file(&name) {
                Ok(f) => f,
                // Superseded by a prune that finished meanwhile: its packs are in the newer index.
                Err(RepoError::Backend(e)) if e.is_not_found() => continue,
                Err(e @ RepoError::Damaged { .. }) => {
                    self.damaged_index_files.lock().expect("poisoned").push(e);
                    self.loaded_index_files.lock().expect("poisoned").insert(name);
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.index.write().expect("poisoned").add_file(&file);
            self.loaded_index_files.lock().expect("poisoned").insert(name);
        }
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
    pub fn save_blob_with_id(&self, kind: BlobKind, id: Id, data: &[u8]) -> Result<bool, RepoError> {
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
        let mut builder = self.writer.lock().expect("poisoned").pool.pop().unwrap_or_default();
        builder.add(kind, id, sealed, data.len());
        if builder.size() >= self.config.pack_size as usize {
            self.write_pack(builder)?;
        } else {
            self.writer.lock().expect("poisoned").pool.push(builder);
        }
        Ok(true)
    }

    /// Writes a full pack. Before writing, blobs that another process stored meanwhile (seen in
    /// its index files) are dropped, so concurrent backups of common data store it mostly once.
    fn write_pack(&self, mut builder: PackBuilder) -> Result<(), RepoError> {
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
        self.index.write().expect("poisoned").add_pack(&pack_id, &entries);
        let to_index = {
            let mut w = self.writer.lock().expect("poisoned");
            for e in &entries {
                w.in_flight.remove(&e.id);
            }
            w.unindexed.push(IndexPack {
                id: pack_id,
                size: bytes.len() as u64,
                blobs: entries,
            });
            if w.unindexed.len() >= PACKS_PER_INDEX {
                std::mem::take(&mut w.unindexed)
            } else {
                Vec::new()
            }
        };
        if !to_index.is_empty() {
            self.write_index_file(to_index)?;
        }
        Ok(())
    }

    /// Writes every pending blob into packs and every written pack into an index file.
    pub fn flush(&self) -> Result<(), RepoError> {
        let builders = std::mem::take(&mut self.writer.lock().expect("poisoned").pool);
        for b in builders {
            if !b.is_empty() {
                self.write_pack(b)?;
            }
        }
        let rest = std::mem::take(&mut self.writer.lock().expect("poisoned").unindexed);
        if !rest.is_empty() {
            self.write_index_file(rest)?;
        }
        Ok(())
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
        let plain = self.key.open_owned(sealed).map_err(|e| bad(e.to_string()))?;
        if self.key.blob_id(&plain) != *id {
            return Err(bad("content does not match its id".into()));
        }
        Ok(plain)
    }

    // ----- trees ----------------------------------------------------------------------------

    /// Stores a directory tree (sorted first). Returns its id and whether it was new.
    pub fn save_tree(&self, tree: &Tree) -> Result<(Id, bool), RepoError> {
        let json = serde_json::to_vec(tree).expect("serialisable");
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

    /// Flushes pending data, then records the snapshot. Returns the snapshot id.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<Id, RepoError> {
        self.flush()?;
        self.write_named("snapshots", &serde_json::to_vec(snap).expect("serialisable"))
    }

    /// Finishes a backup: flushes pending data, fills in the snapshot's `blobs_added`,
    /// `bytes_added` (what this repository handle wrote) and `seconds` (since `started`), then
    /// records it. Returns the snapshot id.
    pub fn commit_snapshot(&self, snap: &mut Snapshot, started: std::time::Instant) -> Result<Id, RepoError> {
        // Pending packs are written before the snapshot's figures are taken.
        self.flush()?;
        snap.summary.blobs_added = self.stats.blobs_added.load(Ordering::Relaxed);
        snap.summary.bytes_added = self.stats.bytes_written.load(Ordering::Relaxed);
        snap.summary.seconds = started.elapsed().as_secs_f64();
        self.save_snapshot(snap)
    }

    /// Reads one snapshot file.
    pub fn load_snapshot(&self, id: &Id) -> Result<Snapshot, RepoError> {
        let name = id.to_hex();
        let plain = self.read_named("snapshots", &name)?;
        serde_json::from_slice(&plain).map_err(|e| damaged(&*self.backend, &format!("snapshots/{name}"), e))
    }

    /// Every snapshot, oldest first.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>, RepoError> {
        let mut out = Vec::new();
        for l in self.backend.list("snapshots")? {
            let id: Id = l.name.parse().map_err(|_| {
                damaged(
                    &*self.backend,
                    &format!("snapshots/{}", l.name),
                    "not a snapshot file name",
                )
            })?;
            match self.load_snapshot(&id) {
                Ok(s) => out.push((id, s)),
                // Removed by a concurrent forget between list and read.
                Err(RepoError::Backend(e)) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            }
        }
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
