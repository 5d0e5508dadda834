//! Repository locks.
//!
//! Protocol (documented in docs/repository-format.md): every process that reads or adds data holds a
//! *shared* lock; `prune` and `forget` hold an *exclusive* one. To take a lock a process writes
//! `locks/ID` (sealed JSON: time, exclusive, hostname, boot id, PID namespace, pid, uid, command),
//! waits for the backend's listing to settle ([`Backend::listing_settle`]), then lists `locks/`. If a
//! lock that conflicts with its own is present (exclusive vs anything), it removes its own file and
//! waits (up to `wait`) or fails naming the holder. Because the file is written before the check,
//! two processes can never both conclude they may proceed.
//!
//! What this guarantees, and what it assumes:
//! - A lock is *stale* (ignored and removed) only when (a) its file was not rewritten for
//!   [`LockTimings::stale`], measured on the storage's own clock (the file's modification time
//!   against the one of the lock just written by the reader, so no two hosts' clocks are compared),
//!   or (b) its holder ran on this very kernel (same host name, boot id and PID namespace) and that
//!   PID no longer exists. A PID in another PID namespace, or owned by another user (`EPERM`), is
//!   never judged dead.
//! - A lock file that cannot be read is not ignored: taking a lock fails naming the file, and
//!   `lifeboat unlock` removes it.
//! - A holder rewrites its lock every [`LockTimings::refresh`]. When a rewrite fails, when its own
//!   lock file was removed by someone else, or when no rewrite succeeded for
//!   [`LockTimings::deadline`] by the wall clock (so a suspended process or a paused VM counts),
//!   the lock is *lost*: [`LockGuard::check`] fails, and the repository refuses to write packs or
//!   commit a snapshot under it.
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lifeboat_model::Id;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::backend::{Backend, Listed};
use crate::crypto::{fill_random, MasterKey};
use crate::RepoError;

/// How often a held lock is refreshed, by default.
pub const REFRESH: Duration = Duration::from_secs(300);
/// Age (on the storage's clock) after which a lock that was not refreshed is stale, by default.
pub const STALE: Duration = Duration::from_secs(1800);

/// The timings of the lock protocol. Every process sharing a repository must use the same `stale`;
/// the defaults are [`REFRESH`] and [`STALE`]; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTimings {
    /// How often a holder rewrites its lock.
    pub refresh: Duration,
    /// A lock not rewritten for this long (storage clock) is stale for others.
    pub stale: Duration,
}

impl Default for LockTimings {
    fn default() -> Self {
        LockTimings {
            refresh: REFRESH,
            stale: STALE,
        }
    }
}

impl LockTimings {
    /// A holder whose last successful refresh is older than this (wall clock) has lost its lock:
    /// three quarters of `stale`, so it stops well before others may judge its lock stale
    /// (restic uses the same margin).
    pub fn deadline(&self) -> Duration {
        self.stale * 3 / 4
    }
}

/// The content of a lock file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    /// When the holder wrote it, by the holder's clock (shown to people, never used to judge age).
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub exclusive: bool,
    pub hostname: String,
    pub pid: u32,
    pub command: String,
    /// The holder's kernel boot id (`/proc/sys/kernel/random/boot_id`); empty when unknown.
    #[serde(default)]
    pub boot_id: String,
    /// The holder's PID namespace (`/proc/self/ns/pid`, e.g. `pid:[4026531836]`); empty when unknown.
    #[serde(default)]
    pub pid_ns: String,
    /// The holder's user id.
    #[serde(default)]
    pub uid: Option<u32>,
}

fn read_link_or_file(path: &str, link: bool) -> String {
    let r = if link {
        std::fs::read_link(path).map(|p| p.to_string_lossy().into_owned())
    } else {
        std::fs::read_to_string(path)
    };
    r.map(|s| s.trim().to_string()).unwrap_or_default()
}

impl LockInfo {
    /// A lock description for this process.
    pub fn for_this_process(exclusive: bool, command: &str) -> LockInfo {
        LockInfo {
            time: OffsetDateTime::now_utc(),
            exclusive,
            hostname: crate::hostname(),
            pid: std::process::id(),
            command: command.to_string(),
            boot_id: read_link_or_file("/proc/sys/kernel/random/boot_id", false),
            pid_ns: read_link_or_file("/proc/self/ns/pid", true),
            uid: Some(rustix::process::getuid().as_raw()),
        }
    }

    /// One line naming the holder.
    pub fn describe(&self) -> String {
        format!(
            "{} lock held by `{}` (pid {} on {}) since {}",
            if self.exclusive { "an exclusive" } else { "a shared" },
            self.command,
            self.pid,
            self.hostname,
            self.time
        )
    }

    /// True only when the holder ran on this kernel, in this PID namespace, and its PID is gone.
    fn holder_is_gone_from_this_kernel(&self) -> bool {
        let me = LockInfo::for_this_process(false, "");
        if self.hostname != me.hostname
            || self.boot_id.is_empty()
            || self.boot_id != me.boot_id
            || self.pid_ns.is_empty()
            || self.pid_ns != me.pid_ns
        {
            return false;
        }
        if self.pid == std::process::id() {
            return false;
        }
        match rustix::process::Pid::from_raw(self.pid as i32) {
            // ESRCH: no such process. EPERM (another user's process) and anything else: alive.
            Some(p) => rustix::process::test_kill_process(p) == Err(rustix::io::Errno::SRCH),
            None => false,
        }
    }
}

/// Why a lock counts as stale, if it does. `reference` is a recent time on the storage's clock.
fn staleness(info: &LockInfo, listed: &Listed, reference: Option<SystemTime>, t: &LockTimings) -> Option<String> {
    if let (Some(m), Some(r)) = (listed.modified, reference) {
        if let Ok(age) = r.duration_since(m) {
            if age > t.stale {
                return Some(format!("not refreshed for {} s (storage clock)", age.as_secs()));
            }
        }
    } else {
        // A backend without modification times: fall back to the holder's clock.
        let age = OffsetDateTime::now_utc() - info.time;
        if age > t.stale {
            return Some(format!("written {} s ago by its holder's clock", age.whole_seconds()));
        }
    }
    if info.holder_is_gone_from_this_kernel() {
        return Some(format!("process {} no longer exists on this host", info.pid));
    }
    None
}

struct HeldState {
    /// The current lock file's name in `dir`.
    name: String,
    /// Wall-clock time of the last successful write of the lock file.
    last_ok: SystemTime,
    /// Set once the lock is known to be lost (its file removed by someone else).
    lost: Option<String>,
    /// The last refresh failure, for messages.
    last_error: Option<String>,
    stop: bool,
}

struct Held {
    dir: String,
    timings: LockTimings,
    state: Mutex<HeldState>,
    cv: Condvar,
}

/// A held lock; released (its file removed) when dropped.
pub struct LockGuard {
    backend: Arc<dyn Backend>,
    held: Arc<Held>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

/// A handle to watch a held lock from elsewhere (the repository keeps one per lock it took, to
/// refuse writes under a lost lock). Does not keep the lock.
#[derive(Clone)]
pub struct LockWatch {
    backend: Arc<dyn Backend>,
    held: std::sync::Weak<Held>,
}

impl LockWatch {
    /// `None` when the lock was released; otherwise what [`LockGuard::check`] says.
    pub fn check(&self, thorough: bool) -> Option<Result<(), RepoError>> {
        let held = self.held.upgrade()?;
        Some(check_held(&*self.backend, &held, thorough))
    }
}

fn check_held(backend: &dyn Backend, held: &Held, thorough: bool) -> Result<(), RepoError> {
    let lost = |reason: String| RepoError::LockLost {
        location: backend.location().to_string(),
        reason,
    };
    let name = {
        let st = held.state.lock().expect("lock poisoned");
        if let Some(r) = &st.lost {
            return Err(lost(r.clone()));
        }
        let since = SystemTime::now().duration_since(st.last_ok).unwrap_or_default();
        if since > held.timings.deadline() {
            return Err(lost(format!(
                "its lock file was last written {} s ago, longer than the {} s a holder may go without \
                 refreshing it (the process was suspended or the storage failed{})",
                since.as_secs(),
                held.timings.deadline().as_secs(),
                st.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            )));
        }
        st.name.clone()
    };
    if thorough {
        let path = format!("{}/{name}", held.dir);
        match backend.exists(&path) {
            Ok(true) => {}
            Ok(false) => {
                let reason = format!("its lock file {path} was removed by another process");
                held.state.lock().expect("lock poisoned").lost = Some(reason.clone());
                return Err(lost(reason));
            }
            Err(e) => return Err(lost(format!("cannot confirm its lock file {path} exists: {e}"))),
        }
    }
    Ok(())
}

impl LockGuard {
    /// Fails when the lock is lost (see the module documentation). With `thorough`, also confirms
    /// on the storage that the lock file still exists (one request).
    pub fn check(&self, thorough: bool) -> Result<(), RepoError> {
        check_held(&*self.backend, &self.held, thorough)
    }

    /// A handle that watches this lock without holding it.
    pub fn watch(&self) -> LockWatch {
        LockWatch {
            backend: self.backend.clone(),
            held: Arc::downgrade(&self.held),
        }
    }
}

fn write_lock(backend: &dyn Backend, key: &MasterKey, dir: &str, info: &LockInfo) -> Result<String, RepoError> {
    let mut rnd = [0u8; 32];
    fill_random(&mut rnd);
    let name = Id(rnd).to_hex();
    let sealed = key.seal(&serde_json::to_vec(info).expect("serialisable"), false);
    backend.write(&format!("{dir}/{name}"), &sealed)?;
    Ok(name)
}

/// The holders of the lock files in `dir` as they describe themselves (one line each, or why a
/// file does not read), without judging staleness and without writing anything: for status
/// views. A file removed between listing and reading is left out.
pub fn holders(backend: &dyn Backend, key: &MasterKey, dir: &str) -> Result<Vec<String>, RepoError> {
    let mut out = Vec::new();
    for l in backend.list(dir)? {
        let Some(info) = read_info(backend, key, dir, &l.name)? else {
            continue;
        };
        out.push(info.map_or_else(
            |e| format!("an unreadable lock file {} ({e})", l.name),
            |i| i.describe(),
        ));
    }
    Ok(out)
}

/// The lock file `dir/name` read and opened: `None` when it went meanwhile; the inner error when
/// it does not open or parse.
fn read_info(
    backend: &dyn Backend,
    key: &MasterKey,
    dir: &str,
    name: &str,
) -> Result<Option<Result<LockInfo, String>>, RepoError> {
    let bytes = match backend.read(&format!("{dir}/{name}")) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(Some(key.open(&bytes).map_err(|e| e.to_string()).and_then(|p| {
        serde_json::from_slice::<LockInfo>(&p).map_err(|e| e.to_string())
    })))
}

/// A lock file as found by a listing.
struct Found {
    name: String,
    info: Result<LockInfo, String>,
    stale: Option<String>,
}

/// Reads every lock file of `dir` other than `own`, judging staleness against `own`'s
/// modification time (the storage's clock).
fn scan(
    backend: &dyn Backend,
    key: &MasterKey,
    dir: &str,
    own: &str,
    t: &LockTimings,
) -> Result<Vec<Found>, RepoError> {
    let listed = backend.list(dir)?;
    let reference = listed
        .iter()
        .find(|l| l.name == own)
        .and_then(|l| l.modified)
        .or_else(|| listed.iter().filter_map(|l| l.modified).max());
    let mut out = Vec::new();
    for l in &listed {
        if l.name == own {
            continue;
        }
        let Some(info) = read_info(backend, key, dir, &l.name)? else {
            continue;
        };
        let stale = match &info {
            Ok(i) => staleness(i, l, reference, t),
            Err(_) => None,
        };
        out.push(Found {
            name: l.name.clone(),
            info,
            stale,
        });
    }
    Ok(out)
}

/// The live locks of `dir` other than `own`; stale ones are removed, an unreadable one is an error.
fn others(
    backend: &dyn Backend,
    key: &MasterKey,
    dir: &str,
    own: &str,
    t: &LockTimings,
) -> Result<Vec<LockInfo>, RepoError> {
    let mut out = Vec::new();
    for f in scan(backend, key, dir, own, t)? {
        match (f.info, f.stale) {
            (Err(reason), _) => {
                return Err(RepoError::UnreadableLock {
                    location: backend.location().to_string(),
                    path: format!("{dir}/{}", f.name),
                    reason,
                })
            }
            (Ok(_), Some(_)) => backend.remove(&format!("{dir}/{}", f.name))?,
            (Ok(info), None) => out.push(info),
        }
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
    acquire_with(backend, key, dir, exclusive, command, wait, LockTimings::default())
}

/// [`acquire_in`] with explicit timings.
pub fn acquire_with(
    backend: Arc<dyn Backend>,
    key: &MasterKey,
    dir: &str,
    exclusive: bool,
    command: &str,
    wait: Duration,
    timings: LockTimings,
) -> Result<LockGuard, RepoError> {
    let start = Instant::now();
    let mut info = LockInfo::for_this_process(exclusive, command);
    let conflicting =
        |others: Vec<LockInfo>| -> Vec<LockInfo> { others.into_iter().filter(|o| exclusive || o.exclusive).collect() };
    loop {
        info.time = OffsetDateTime::now_utc();
        let name = write_lock(&*backend, key, dir, &info)?;
        let written = SystemTime::now();
        let result = (|| -> Result<Vec<LockInfo>, RepoError> {
            let mut conflicts = conflicting(others(&*backend, key, dir, &name, &timings)?);
            // A listing may lag writes: look again once it has settled, so two lockers that each
            // missed the other's file in the first listing see it in the second.
            let settle = backend.listing_settle();
            if conflicts.is_empty() && !settle.is_zero() {
                std::thread::sleep(settle);
                conflicts = conflicting(others(&*backend, key, dir, &name, &timings)?);
            }
            Ok(conflicts)
        })();
        let conflicts = match result {
            Ok(c) => c,
            Err(e) => {
                let _ = backend.remove(&format!("{dir}/{name}"));
                return Err(e);
            }
        };
        if conflicts.is_empty() {
            let held = Arc::new(Held {
                dir: dir.to_string(),
                timings,
                state: Mutex::new(HeldState {
                    name,
                    last_ok: written,
                    lost: None,
                    last_error: None,
                    stop: false,
                }),
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
    let mut st = held.state.lock().expect("lock poisoned");
    // `stop` is checked before every wait: the guard may be dropped before this thread first runs.
    while !st.stop {
        // After a failed refresh, try again sooner.
        let period = if st.last_error.is_some() {
            held.timings.refresh.min(Duration::from_secs(10))
        } else {
            held.timings.refresh
        };
        let (s, timeout) = held.cv.wait_timeout(st, period).expect("lock poisoned");
        st = s;
        if st.stop || !timeout.timed_out() || st.lost.is_some() {
            continue;
        }
        let old = st.name.clone();
        drop(st);
        // The own file must still be there: if another process removed it (judging it stale), the
        // lock is lost for good, whatever a new file would say.
        enum Outcome {
            Refreshed(String),
            Failed(String),
            Lost(String),
        }
        let outcome = match backend.exists(&format!("{}/{old}", held.dir)) {
            Ok(false) => Outcome::Lost(format!(
                "its lock file {}/{old} was removed by another process",
                held.dir
            )),
            Err(e) => Outcome::Failed(e.to_string()),
            Ok(true) => {
                info.time = OffsetDateTime::now_utc();
                match write_lock(backend, key, &held.dir, &info) {
                    Ok(new) => Outcome::Refreshed(new),
                    Err(e) => Outcome::Failed(e.to_string()),
                }
            }
        };
        if let Outcome::Refreshed(_) = &outcome {
            let _ = backend.remove(&format!("{}/{old}", held.dir));
        }
        st = held.state.lock().expect("lock poisoned");
        match outcome {
            Outcome::Refreshed(new) => {
                st.name = new;
                st.last_ok = SystemTime::now();
                st.last_error = None;
            }
            Outcome::Failed(m) => st.last_error = Some(m),
            Outcome::Lost(m) => st.lost = Some(m),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.held.state.lock().expect("lock poisoned").stop = true;
        self.held.cv.notify_all();
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        let name = self.held.state.lock().expect("lock poisoned").name.clone();
        let _ = self.backend.remove(&format!("{}/{name}", self.held.dir));
    }
}

/// A lock file removed (or that would be removed) by [`unlock`].
#[derive(Debug, Clone, Serialize)]
pub struct Unlocked {
    /// The lock file's path in the repository.
    pub path: String,
    /// Its holder, or why it could not be read.
    pub holder: String,
    /// Why it was removed: stale (and why), unreadable, or asked for with `all`.
    pub reason: String,
}

/// Removes the stale and unreadable lock files of `dir` (with `all`, every lock file: only for a
/// person who knows no holder runs). Returns what was removed. Staleness is judged as when taking
/// a lock, against a probe file written for the purpose (the storage's clock).
pub fn unlock(
    backend: &dyn Backend,
    key: &MasterKey,
    dir: &str,
    all: bool,
    t: &LockTimings,
) -> Result<Vec<Unlocked>, RepoError> {
    let probe = write_lock(backend, key, dir, &LockInfo::for_this_process(false, "unlock"))?;
    let found = scan(backend, key, dir, &probe, t);
    let _ = backend.remove(&format!("{dir}/{probe}"));
    let mut out = Vec::new();
    for f in found? {
        let (holder, reason) = match (&f.info, &f.stale) {
            (Err(e), _) => (format!("unreadable ({e})"), "unreadable".to_string()),
            (Ok(i), Some(why)) => (i.describe(), format!("stale: {why}")),
            (Ok(i), None) if all => (i.describe(), "removed by request (--all)".to_string()),
            (Ok(_), None) => continue,
        };
        let path = format!("{dir}/{}", f.name);
        backend.remove(&path)?;
        out.push(Unlocked { path, holder, reason });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::faulty::{FaultyBackend, Op};
    use crate::backend::LocalBackend;

    fn setup() -> (tempfile::TempDir, Arc<dyn Backend>, MasterKey) {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()));
        backend.create().unwrap();
        (dir, backend, MasterKey::generate())
    }

    /// Writes a lock file as another process would, with `info`.
    fn plant(backend: &dyn Backend, key: &MasterKey, info: &LockInfo) -> String {
        write_lock(backend, key, "locks", info).unwrap()
    }

    fn set_mtime(dir: &std::path::Path, name: &str, ago: Duration) {
        let f = std::fs::File::options()
            .write(true)
            .open(dir.join("locks").join(name))
            .unwrap();
        f.set_modified(SystemTime::now() - ago).unwrap();
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

    /// Finding 4: a process in another PID namespace (a container sharing the host name) has a PID
    /// this process cannot see; it must not be taken for dead.
    #[test]
    fn a_backup_in_another_pid_namespace_is_not_taken_for_dead() {
        let (_d, backend, key) = setup();
        let mut info = LockInfo::for_this_process(false, "backup files");
        info.pid_ns = "pid:[1]".into(); // not ours
        info.pid = 999_999_999; // no such PID here
        plant(&*backend, &key, &info);
        match acquire(backend.clone(), &key, true, "prune", Duration::ZERO) {
            Err(RepoError::Locked { holder, .. }) => assert!(holder.contains("backup files"), "{holder}"),
            other => panic!("expected Locked, got {:?}", other.map(|_| ())),
        }
        // The same PID in this very namespace is gone: that lock is stale.
        let (_d2, backend2, key2) = setup();
        let mut info = LockInfo::for_this_process(false, "backup files");
        info.pid = 999_999_999;
        plant(&*backend2, &key2, &info);
        drop(acquire(backend2.clone(), &key2, true, "prune", Duration::ZERO).unwrap());
    }

    #[test]
    fn another_users_live_process_is_not_taken_for_dead() {
        // PID 1 exists on every Linux system; for a non-root user kill(1, 0) is EPERM, for root Ok:
        // alive either way.
        let (_d, backend, key) = setup();
        let mut info = LockInfo::for_this_process(false, "backup files");
        info.pid = 1;
        plant(&*backend, &key, &info);
        assert!(acquire(backend.clone(), &key, true, "prune", Duration::ZERO).is_err());
    }

    /// Finding 4, clock variant: the holder's clock is 31 minutes behind the pruner's (its lock
    /// says it was written long ago), but the storage wrote the file just now: not stale.
    #[test]
    fn a_prune_on_a_host_thirty_minutes_ahead_waits_for_the_backup() {
        let (_d, backend, key) = setup();
        let mut info = LockInfo::for_this_process(false, "backup files");
        info.hostname = "other-host".into();
        info.time = OffsetDateTime::now_utc() - time::Duration::minutes(31);
        plant(&*backend, &key, &info);
        assert!(matches!(
            acquire(backend.clone(), &key, true, "prune", Duration::ZERO),
            Err(RepoError::Locked { .. })
        ));
    }

    #[test]
    fn a_lock_not_rewritten_for_longer_than_stale_on_the_storage_clock_is_stale() {
        let (d, backend, key) = setup();
        let mut info = LockInfo::for_this_process(false, "backup files");
        info.hostname = "other-host".into();
        let name = plant(&*backend, &key, &info);
        set_mtime(d.path(), &name, STALE + Duration::from_secs(60));
        drop(acquire(backend.clone(), &key, true, "prune", Duration::ZERO).unwrap());
        assert!(
            !backend.exists(&format!("locks/{name}")).unwrap(),
            "the stale lock is removed"
        );
    }

    #[test]
    fn an_unreadable_lock_is_refused_and_unlock_removes_it() {
        let (_d, backend, key) = setup();
        backend.write("locks/0000", b"torn").unwrap();
        match acquire(backend.clone(), &key, true, "prune", Duration::ZERO) {
            Err(RepoError::UnreadableLock { path, .. }) => assert_eq!(path, "locks/0000"),
            other => panic!("expected UnreadableLock, got {:?}", other.map(|_| ())),
        }
        assert_eq!(
            backend.list("locks").unwrap().len(),
            1,
            "the refused locker left nothing behind"
        );
        let live = acquire(backend.clone(), &key, false, "backup files", Duration::ZERO);
        assert!(live.is_err());
        let removed = unlock(&*backend, &key, "locks", false, &LockTimings::default()).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].reason, "unreadable");
        drop(acquire(backend.clone(), &key, true, "prune", Duration::ZERO).unwrap());
    }

    #[test]
    fn unlock_keeps_live_locks_unless_told_all_and_names_what_it_removes() {
        let (_d, backend, key) = setup();
        let mut info = LockInfo::for_this_process(false, "backup files");
        info.hostname = "other-host".into();
        plant(&*backend, &key, &info);
        assert!(unlock(&*backend, &key, "locks", false, &LockTimings::default())
            .unwrap()
            .is_empty());
        let removed = unlock(&*backend, &key, "locks", true, &LockTimings::default()).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(removed[0].holder.contains("`backup files`") && removed[0].holder.contains("other-host"));
        assert!(backend.list("locks").unwrap().is_empty());
    }

    /// Finding 4: a holder whose lock refresh keeps failing loses its lock by the deadline.
    #[test]
    fn a_lock_whose_refresh_fails_is_lost_by_its_deadline() {
        let (_d, inner, key) = setup();
        let faulty = Arc::new(FaultyBackend::new(inner));
        let backend: Arc<dyn Backend> = faulty.clone();
        let t = LockTimings {
            refresh: Duration::from_millis(50),
            stale: Duration::from_millis(400),
        };
        let guard = acquire_with(backend.clone(), &key, "locks", false, "backup files", Duration::ZERO, t).unwrap();
        guard.check(true).unwrap();
        faulty.fail_from(Op::Write, 1, "injected: storage refuses writes");
        std::thread::sleep(Duration::from_millis(500));
        match guard.check(false) {
            Err(RepoError::LockLost { reason, .. }) => assert!(reason.contains("injected"), "{reason}"),
            other => panic!("expected LockLost, got {other:?}"),
        }
        faulty.assert_all_faults_hit();
    }

    /// Finding 4: a holder whose lock file was removed (judged stale by another process) knows.
    #[test]
    fn a_lock_removed_by_another_process_is_lost() {
        let (_d, backend, key) = setup();
        let guard = acquire(backend.clone(), &key, false, "backup files", Duration::ZERO).unwrap();
        for l in backend.list("locks").unwrap() {
            backend.remove(&format!("locks/{}", l.name)).unwrap();
        }
        assert!(matches!(guard.check(true), Err(RepoError::LockLost { .. })));
        assert!(
            matches!(guard.check(false), Err(RepoError::LockLost { .. })),
            "lost stays lost"
        );
    }

    /// Finding 4: on a backend whose listing lags writes, two exclusive lockers never both proceed.
    #[test]
    fn two_lockers_on_a_lagging_listing_never_both_proceed() {
        let (_d, inner, key) = setup();
        let faulty = Arc::new(FaultyBackend::new(inner));
        faulty.set_listing_lag(Duration::from_millis(150));
        let backend: Arc<dyn Backend> = faulty.clone();
        for _ in 0..10 {
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let both = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (backend, key, barrier, held, both) = (
                        backend.clone(),
                        key.clone(),
                        barrier.clone(),
                        held.clone(),
                        both.clone(),
                    );
                    std::thread::spawn(move || {
                        barrier.wait();
                        if let Ok(g) = acquire(backend, &key, true, "prune", Duration::ZERO) {
                            if held.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
                                both.store(true, std::sync::atomic::Ordering::SeqCst);
                            }
                            std::thread::sleep(Duration::from_millis(300));
                            held.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                            drop(g);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert!(
                !both.load(std::sync::atomic::Ordering::SeqCst),
                "two exclusive holders at once"
            );
        }
    }
}
