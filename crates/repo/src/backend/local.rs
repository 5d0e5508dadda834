use std::fs::{self, File};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use super::{Backend, BackendError, Listed};

/// A repository in a local directory.
///
/// Writes go to a hidden temporary file in the target directory, are synced, then renamed into
/// place, so a crash leaves either the old state or the complete file. Hidden files (names starting
/// with `.`) are never listed; `prune` removes leftovers of interrupted writes.
///
/// Files are created with mode 0600 and directories with 0700 (whatever the umask): key slots and
/// everything else are readable by the repository's owner only. A new directory is synced into its
/// parent before a file in it is reported written.
///
/// Deferred writes ([`Backend::write_deferred`], used for packs) are renamed into place unsynced and
/// handed to a background thread that syncs them while the caller goes on; [`Backend::sync`] waits
/// for that thread to catch up. The disk then writes packs while the next ones are being made.
pub struct LocalBackend {
    root: PathBuf,
    location: String,
    syncer: Mutex<Option<std::sync::mpsc::Sender<PathBuf>>>,
    synced: Arc<(Mutex<SyncState>, Condvar)>,
}

#[derive(Default)]
struct SyncState {
    queued: u64,
    done: u64,
    /// The first failure: (path, message).
    failed: Option<(String, String)>,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let location = root.display().to_string();
        LocalBackend {
            root,
            location,
            syncer: Mutex::new(None),
            synced: Arc::new((Mutex::new(SyncState::default()), Condvar::new())),
        }
    }

    /// Queues a renamed file for syncing, starting the syncing thread on first use.
    fn queue_sync(&self, path: PathBuf) {
        let mut tx = self.syncer.lock().expect("poisoned");
        let tx = tx.get_or_insert_with(|| {
            let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
            let state = self.synced.clone();
            std::thread::spawn(move || {
                for p in rx {
                    let r = File::open(&p).and_then(|f| f.sync_data());
                    if let Some(dir) = p.parent() {
                        sync_dir(dir);
                    }
                    let (m, cv) = &*state;
                    let mut st = m.lock().expect("poisoned");
                    st.done += 1;
                    if let Err(e) = r {
                        st.failed.get_or_insert((p.display().to_string(), e.to_string()));
                    }
                    cv.notify_all();
                }
            });
            tx
        });
        self.synced.0.lock().expect("poisoned").queued += 1;
        tx.send(path).expect("the syncing thread lives as long as the backend");
    }

    fn io(&self, op: &'static str, path: &str, e: std::io::Error) -> BackendError {
        if e.kind() == ErrorKind::NotFound {
            return BackendError::NotFound {
                location: self.location.clone(),
                path: path.to_string(),
            };
        }
        BackendError::Io {
            location: self.location.clone(),
            op,
            path: path.to_string(),
            message: e.to_string(),
            retryable: matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::TimedOut),
        }
    }

    /// Writes `data` to a hidden temporary file next to `path` and renames it into place; with
    /// `durable`, the file is synced before and its directory after the rename. Returns the path.
    fn write_atomic(&self, path: &str, data: &[u8], durable: bool) -> Result<PathBuf, BackendError> {
        let target = self.root.join(path);
        let dir = target.parent().unwrap_or(&self.root).to_path_buf();
        let mut rnd = [0u8; 8];
        crate::crypto::fill_random(&mut rnd);
        let tmp = dir.join(format!(".tmp-{}", hex::encode(rnd)));
        let write = |tmp: &Path| -> std::io::Result<()> {
            let mut f = match create_private(tmp) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    create_dirs(&dir)?;
                    create_private(tmp)?
                }
                Err(e) => return Err(e),
            };
            f.write_all(data)?;
            if durable {
                f.sync_data()?;
            }
            fs::rename(tmp, &target)?;
            if durable {
                sync_dir(&dir);
            }
            Ok(())
        };
        write(&tmp).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.io("write", path, e)
        })?;
        Ok(target)
    }

    fn walk_temporaries(&self) {
        fn walk(dir: &Path) {
            let Ok(rd) = fs::read_dir(dir) else { return };
            for e in rd.flatten() {
                let name = e.file_name();
                let p = e.path();
                if name.to_string_lossy().starts_with(".tmp-") {
                    let _ = fs::remove_file(&p);
                } else if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&p);
                }
            }
        }
        walk(&self.root);
    }
}

/// Creates a new file readable and writable by its owner only.
fn create_private(path: &Path) -> std::io::Result<File> {
    File::options().write(true).create_new(true).mode(0o600).open(path)
}

/// Creates `dir` and its missing parents with mode 0700, syncing each new entry into its parent.
fn create_dirs(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent() {
                sync_dir(parent);
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> &str {
        &self.location
    }

    fn create(&self) -> Result<(), BackendError> {
        for d in ["", "keys", "snapshots", "index", "data", "locks"] {
            create_dirs(&self.root.join(d)).map_err(|e| self.io("create", d, e))?;
        }
        Ok(())
    }

    fn read(&self, path: &str) -> Result<Vec<u8>, BackendError> {
        fs::read(self.root.join(path)).map_err(|e| self.io("read", path, e))
    }

    fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let mut f = File::open(self.root.join(path)).map_err(|e| self.io("open", path, e))?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| self.io("seek", path, e))?;
        // read_to_end on a file reads into the spare capacity without zeroing it first.
        let mut buf = Vec::with_capacity(len as usize);
        let got = (&mut f).take(len).read_to_end(&mut buf);
        let got = got.and_then(|n| {
            if (n as u64) < len {
                Err(std::io::Error::from(ErrorKind::UnexpectedEof))
            } else {
                Ok(n)
            }
        });
        got.map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                BackendError::Io {
                    location: self.location.clone(),
                    op: "read",
                    path: path.to_string(),
                    message: format!("file is truncated (wanted {len} bytes at offset {offset})"),
                    retryable: false,
                }
            } else {
                self.io("read", path, e)
            }
        })?;
        Ok(buf)
    }

    fn write(&self, path: &str, data: &[u8]) -> Result<(), BackendError> {
        self.write_atomic(path, data, true).map(|_| ())
    }

    fn write_deferred(&self, path: &str, data: &[u8]) -> Result<(), BackendError> {
        let target = self.write_atomic(path, data, false)?;
        self.queue_sync(target);
        Ok(())
    }

    fn sync(&self) -> Result<(), BackendError> {
        let (m, cv) = &*self.synced;
        let mut st = m.lock().expect("poisoned");
        while st.done < st.queued {
            st = cv.wait(st).expect("poisoned");
        }
        match st.failed.take() {
            Some((path, message)) => Err(BackendError::Io {
                location: self.location.clone(),
                op: "sync",
                path,
                message,
                retryable: false,
            }),
            None => Ok(()),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<Listed>, BackendError> {
        let mut out = Vec::new();
        let base = self.root.join(dir);
        let mut stack = vec![(base, String::new())];
        while let Some((d, prefix)) = stack.pop() {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io("list", dir, e)),
            };
            for e in rd {
                let e = e.map_err(|e| self.io("list", dir, e))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let md = match e.metadata() {
                    Ok(m) => m,
                    Err(err) if err.kind() == ErrorKind::NotFound => continue,
                    Err(err) => return Err(self.io("list", dir, err)),
                };
                let rel = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                if md.is_dir() {
                    stack.push((e.path(), rel));
                } else {
                    out.push(Listed {
                        name: rel,
                        size: md.len(),
                        modified: md.modified().ok(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn remove(&self, path: &str) -> Result<(), BackendError> {
        match fs::remove_file(self.root.join(path)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io("remove", path, e)),
        }
    }

    /// Deletes hidden temporary files left by writes that were interrupted (kill -9, power loss).
    fn remove_temporaries(&self) {
        self.walk_temporaries()
    }

    fn exists(&self, path: &str) -> Result<bool, BackendError> {
        match fs::symlink_metadata(self.root.join(path)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io("stat", path, e)),
        }
    }
}
