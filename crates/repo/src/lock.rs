//! Repository locks.
//!
//! Protocol (documented in docs/repository-format.md): every process that reads or adds data holds a
//! *shared* lock; `prune` and `forget` hold an *exclusive* one. To take a lock a process writes
//! `locks/ID` (sealed JSON: time, exclusive, hostname, pid, command), then lists `locks/`. If a lock
//! that conflicts with its own is present (exclusive vs anything), it removes its own file and waits
//! (up to `wait`) or fails naming the holder. A lock is refreshed (rewritten under a new name) every
//! 5 minutes while held; one older than 30 minutes, or held by a process that no longer exists on
//! this host, is stale and ignored (and removed). Because the file is written before the check, two
//! processes can never both conclude they may proceed.
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lifeboat_model::Id;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::backend::Backend;
use crate::crypto::{fill_random, MasterKey};
use crate::RepoError;

/// How often a held lock is refreshed.
pub const REFRESH: Duration = Duration::from_secs(300);
/// Age after which a lock that was not refreshed is stale.
pub const STALE: Duration = Duration::from_secs(1800);

/// The content of a lock file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub exclusive: bool,
    pub hostname: String,
    pub pid: u32,
    pub command: String,
}

impl LockInfo {
    fn describe(&self) -> String {
        format!(
            "{} lock held by `{}` (pid {} on {}) since {}",
            if self.exclusive { "an exclusive" } else { "a shared" },
            self.command,
            self.pid,
            self.hostname,
            self.time
        )
    }

    fn is_stale(&self) -> bool {
        let age = OffsetDateTime::now_utc() - self.time;
        if age > STALE {
            return true;
        }
        if self.hostname == crate::hostname() {
            return !process_alive(self.pid);
        }
        false
    }
}

fn process_alive(pid: u32) -> bool {
    match rustix::process::Pid::from_raw(pid as i32) {
        Some(p) => rustix::process::test_kill_process(p).is_ok() || pid == std::process::id(),
        None => false,
    }
}

struct Held {
    dir: String,
    name: Mutex<String>,
    stop: Mutex<bool>,
    cv: Condvar,
}

/// A held lock; released (its file removed) when dropped.
pub struct LockGuard {
    backend: Arc<dyn Backend>,
    held: Arc<Held>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

fn write_lock(backend: &dyn Backend, key: &MasterKey, dir: &str, info: &LockInfo) -> Result<String, RepoError> {
    let mut rnd = [0u8; 32];
    fill_random(&mut rnd);
    let name = Id(rnd).to_hex();
    let sealed = key.seal(&serde_json::to_vec(info).expect("serialisable"), false);
    backend.write(&format!("{dir}/{name}"), &sealed)?;
    Ok(name)
}

/// Reads every lock other than `own`; removes stale locks of dead local processes.
fn others(backend: &dyn Backend, key: &MasterKey, dir: &str, own: &str) -> Result<Vec<LockInfo>, RepoError> {
    let lock_path = |name: &str| format!("{dir}/{name}");
    let mut out = Vec::new();
    for l in backend.list(dir)? {
        if l.name == own {
            continue;
        }
        let bytes = match backend.read(&lock_path(&l.name)) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        let info: LockInfo = match key.open(&bytes).ok().and_then(|p| serde_json::from_slice(&p).ok()) {
            Some(i) => i,
            // An unreadable lock file (torn by a crash on a backend without atomic writes, or damaged)
            // cannot hold anything: treat it as stale.
            None => continue,
        };
        if info.is_stale() {
            let _ = backend.remove(&lock_path(&l.name));
            continue;
        }
        out.push(info);
    }
    Ok(out)
}

/// Takes a repository lock (in `locks/`), waiting up to `wait` for conflicting locks to go away.
pub fn acquire(
    backend: Arc<dyn Backend>,
    key: &MasterKey,
    exclusive: bool,
    command: &str,
    wait: Duration,
) -> Result<LockGuard, RepoError> {
    acquire_in(backend, key, "locks", exclusive, command, wait)
}

/// Takes a lock among the lock files of `dir` only, by the same protocol: locks in different
/// directories never conflict. DR operations use one directory per app, so two failovers of one
/// app exclude each other while other apps and backups go on.
pub fn acquire_in(
    backend: Arc<dyn Backend>,
    key: &MasterKey,
    dir: &str,
    exclusive: bool,
    command: &str,
    wait: Duration,
) -> Result<LockGuard, RepoError> {
    let start = Instant::now();
    let mut info = LockInfo {
        time: OffsetDateTime::now_utc(),
        exclusive,
        hostname: crate::hostname(),
        pid: std::process::id(),
        command: command.to_string(),
    };
    loop {
        info.time = OffsetDateTime::now_utc();
        let name = write_lock(&*backend, key, dir, &info)?;
        let conflicts: Vec<LockInfo> = others(&*backend, key, dir, &name)?
            .into_iter()
            .filter(|o| exclusive || o.exclusive)
            .collect();
        if conflicts.is_empty() {
            let held = Arc::new(Held {
                dir: dir.to_string(),
                name: Mutex::new(name),
                stop: Mutex::new(false),
                cv: Condvar::new(),
            });
            let refresher = {
                let (backend, held, key, info) = (backend.clone(), held.clone(), key.clone(), info.clone());
                std::thread::spawn(move || refresh_loop(&*backend, &key, info, &held))
            };
            return Ok(LockGuard {
                backend,
                held,
                refresher: Some(refresher),
            });
        }
        backend.remove(&format!("{dir}/{name}"))?;
        if start.elapsed() >= wait {
            return Err(RepoError::Locked {
                location: backend.location().to_string(),
                holder: conflicts[0].describe(),
            });
        }
        let mut j = [0u8; 1];
        fill_random(&mut j);
        std::thread::sleep(Duration::from_millis(500 + 4 * j[0] as u64));
    }
}

fn refresh_loop(backend: &dyn Backend, key: &MasterKey, mut info: LockInfo, held: &Held) {
    let mut stop = held.stop.lock().expect("lock poisoned");
    // `stop` is checked before every wait: the guard may be dropped before this thread first runs.
    while !*stop {
        let (s, timeout) = held.cv.wait_timeout(stop, REFRESH).expect("lock poisoned");
        stop = s;
        if !*stop && timeout.timed_out() {
            info.time = OffsetDateTime::now_utc();
            if let Ok(new) = write_lock(backend, key, &held.dir, &info) {
                let mut name = held.name.lock().expect("lock poisoned");
                let old = std::mem::replace(&mut *name, new);
                let _ = backend.remove(&format!("{}/{old}", held.dir));
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        *self.held.stop.lock().expect("lock poisoned") = true;
        self.held.cv.notify_all();
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        let name = self.held.name.lock().expect("lock poisoned").clone();
        let _ = self.backend.remove(&format!("{}/{name}", self.held.dir));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;

    fn setup() -> (tempfile::TempDir, Arc<dyn Backend>, MasterKey) {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()));
        backend.create().unwrap();
        (dir, backend, MasterKey::generate())
    }

    /// Regression: a guard dropped before its refresher thread first waited left the refresher
    /// asleep for the whole refresh period, so every short command hung for 5 minutes on exit.
    #[test]
    fn lock_guard_dropped_at_once_releases_without_waiting_for_the_refresh_period() {
        let (_d, backend, key) = setup();
        for _ in 0..50 {
            drop(acquire(backend.clone(), &key, false, "test", Duration::ZERO).unwrap());
        }
        assert!(backend.list("locks").unwrap().is_empty());
    }

    #[test]
    fn exclusive_conflicts_with_shared_and_names_the_holder() {
        let (_d, backend, key) = setup();
        let a = acquire(backend.clone(), &key, false, "backup files", Duration::ZERO).unwrap();
        let b = acquire(backend.clone(), &key, false, "restore", Duration::ZERO).unwrap();
        match acquire(backend.clone(), &key, true, "prune", Duration::ZERO) {
            Err(RepoError::Locked { holder, .. }) => assert!(holder.contains("shared lock held by")),
            other => panic!("expected Locked, got {:?}", other.map(|_| ())),
        }
        drop((a, b));
        let x = acquire(backend.clone(), &key, true, "prune", Duration::ZERO).unwrap();
        assert!(acquire(backend.clone(), &key, false, "backup files", Duration::ZERO).is_err());
        drop(x);
    }

    #[test]
    fn locks_in_different_directories_do_not_conflict() {
        let (_d, backend, key) = setup();
        let a = acquire_in(
            backend.clone(),
            &key,
            "dr/shop/web/lock",
            true,
            "failover",
            Duration::ZERO,
        )
        .unwrap();
        let b = acquire_in(
            backend.clone(),
            &key,
            "dr/shop/db/lock",
            true,
            "failover",
            Duration::ZERO,
        )
        .unwrap();
        let repo = acquire(backend.clone(), &key, true, "prune", Duration::ZERO).unwrap();
        match acquire_in(
            backend.clone(),
            &key,
            "dr/shop/web/lock",
            true,
            "failover",
            Duration::ZERO,
        ) {
            Err(RepoError::Locked { holder, .. }) => assert!(holder.contains("`failover`"), "{holder}"),
            other => panic!("expected Locked, got {:?}", other.map(|_| ())),
        }
        drop((a, b, repo));
        assert!(backend.list("dr/shop/web/lock").unwrap().is_empty());
    }
}
